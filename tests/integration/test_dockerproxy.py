"""The Docker API proxy (dockerfiles/waker/onevps_dockerproxy.py) in front of
the REAL engine, run as a real container (the python:3.11-slim stand-in, its
folder bind-mounted read-only, /var/run/docker.sock mounted, no network), with
throwaway containers: an app of the project, a shared service of the same
project, an app of another project. Allowed calls work and change what they
should; denied calls get 403 and change nothing; the app's environment never
leaves the proxy. Needs no test stack: only its own h15px* containers (ONEVPS_TEST_PROXY_PROJECT)."""

from __future__ import annotations

import importlib
import json
import os
import secrets
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from .conftest import ROOT, docker, docker_problem

sys.path.insert(0, str(ROOT / "dockerfiles" / "waker"))
UnixHTTPConnection = importlib.import_module("onevps_unixhttp").UnixHTTPConnection

pytestmark = [pytest.mark.docker, pytest.mark.stack]

PROXY_DIR = ROOT / "dockerfiles" / "waker"
IMAGE = "python:3.11-slim"
# A second checkout runs this module beside the first with its own ONEVPS_TEST_PROXY_PROJECT.
PROJECT = os.environ.get("ONEVPS_TEST_PROXY_PROJECT", "h15px")
MARK = PROJECT  # every container this module creates carries this label
SECRET = f"{PROJECT}-secret-" + secrets.token_hex(16)
STARTED = f"{PROJECT}-app-started"
# PID 1 with a SIGTERM handler: a stop is quick, and it prints a line to find in the logs.
SERVE = ["python", "-c", "import signal, sys; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
         f"print({STARTED!r}, flush=True); signal.pause()"]
# What compose puts on each container it creates (besides what the app image carries).
BY_COMPOSE = {"com.docker.compose.container-number": "1", "com.docker.compose.config-hash": "9f86d081884c7d65",
              "com.docker.compose.oneoff": "False"}
CONTAINERS = {
    f"{PROJECT}-app": {"com.docker.compose.project": PROJECT, "com.docker.compose.service": "app",
                       "onevps.tier": "base", **BY_COMPOSE},
    f"{PROJECT}-shared": {"com.docker.compose.project": PROJECT, "com.docker.compose.service": "shared"},
    f"{PROJECT}-notier": {"com.docker.compose.project": PROJECT, "com.docker.compose.service": "notier",
                     "onevps.tier": ""},
    f"{PROJECT}-otherapp": {"com.docker.compose.project": f"{PROJECT}-other", "com.docker.compose.service": "app",
                       "onevps.tier": "base"},
    # The app's deploy slot: `docker run` of the app image (its labels) + onevps.slot.
    f"{PROJECT}-app-next": {"com.docker.compose.project": PROJECT, "com.docker.compose.service": "app",
                       "onevps.tier": "base", "onevps.slot": "next"},
}
# An app image as compose builds it: its labels name the project, the service and the tier.
# A plain `docker run` of it (PLAIN_RUN, no label of its own) inherits them (issue 24, attack 6).
APP_IMAGE = f"{PROJECT}-appimage:latest"
APP_IMAGE_DOCKERFILE = (f"FROM {IMAGE}\nLABEL {MARK}=\"\" com.docker.compose.project={PROJECT} "
                        "com.docker.compose.service=app com.docker.compose.version=2.40.3 onevps.tier=base\n")
PLAIN_RUN = f"{PROJECT}-app-run"
PROXY_MEMORY = "48m"


def call(sock: str, method: str, target: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(sock, timeout=60)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def inspect(name: str) -> dict:
    return json.loads(docker("inspect", name))[0]


def remove_ours() -> None:
    ids = docker("ps", "--all", "--quiet", "--filter", f"label={MARK}").split()
    ids += docker("ps", "--all", "--quiet", "--filter", f"name={PROJECT}-created",
                  "--filter", f"name={PROJECT}-renamed").split()
    if ids:
        subprocess.run(["docker", "rm", "--force", "--volumes", *ids], capture_output=True, timeout=120)
    subprocess.run(["docker", "image", "rm", APP_IMAGE], capture_output=True, timeout=120)


def wait_for(check, what: str, tries: int = 600) -> None:
    for _ in range(tries):
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"gave up waiting for {what}; proxy log:\n{proxy_log()}")


def proxy_log() -> str:
    res = subprocess.run(["docker", "logs", f"{PROJECT}-proxy"], capture_output=True, text=True, timeout=60)
    return res.stdout + res.stderr


def _pings(sock: str) -> bool:
    try:
        return call(sock, "GET", "/_ping") == (200, b"OK")
    except OSError:
        return False


@pytest.fixture(scope="module")
def sock(tmp_path_factory):
    """The proxy's socket (host path), the proxy and the throwaway containers running."""
    problem = docker_problem()
    if problem:
        pytest.fail(f"integration tests need Docker: {problem}. They never skip; "
                    "`make unit` runs the tests that need no Docker.", pytrace=False)
    run_dir = tmp_path_factory.mktemp(f"{PROJECT}-proxy")
    remove_ours()
    try:
        for name, labels in CONTAINERS.items():
            label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
            docker("run", "--detach", "--name", name, "--label", MARK, *label_args,
                   "--env", f"SECRET_X={SECRET}", IMAGE, *SERVE)
        build = subprocess.run(["docker", "build", "--quiet", "--tag", APP_IMAGE, "-"], input=APP_IMAGE_DOCKERFILE,
                               capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, build.stderr
        docker("run", "--detach", "--name", PLAIN_RUN, "--env", f"SECRET_X={SECRET}", APP_IMAGE, *SERVE)
        labels = inspect(PLAIN_RUN)["Config"]["Labels"]
        assert labels["com.docker.compose.project"] == PROJECT and labels["onevps.tier"] == "base", labels
        docker("run", "--detach", "--name", f"{PROJECT}-proxy", "--label", MARK, "--network", "none",
               "--memory", PROXY_MEMORY,  # the compose file's default DOCKER_PROXY_MEM_LIMIT
               "--volume", f"{PROXY_DIR}:/srv:ro",
               "--volume", "/var/run/docker.sock:/var/run/docker.sock",
               "--volume", f"{run_dir}:/run/onevps-docker",
               "--env", f"ONEVPS_PROJECT={PROJECT}", IMAGE, "python", "/srv/onevps_dockerproxy.py")
        path = str(run_dir / "docker.sock")
        wait_for(lambda: _pings(path), "the proxy's /_ping")
        wait_for(lambda: STARTED in docker("logs", f"{PROJECT}-app"), "the app's first line")
        yield path
    finally:
        remove_ours()


def test_the_socket_is_0660(sock):
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660


def test_list_shows_only_the_projects_apps(sock):
    status, body = call(sock, "GET", "/containers/json?all=1")
    assert status == 200
    assert [c["Names"] for c in json.loads(body)] == [[f"/{PROJECT}-app"]]
    assert SECRET not in body.decode()
    # A client's filters narrow the list; they never widen it.
    wider = quote(json.dumps({"label": [f"com.docker.compose.project={PROJECT}-other"]}))
    assert call(sock, "GET", f"/containers/json?all=1&filters={wider}") == (200, b"[]")


def test_inspect_of_the_app_never_shows_its_environment(sock):
    status, body = call(sock, "GET", f"/containers/{PROJECT}-app/json")
    assert status == 200
    answer = json.loads(body)
    assert answer["Id"] == inspect(f"{PROJECT}-app")["Id"]
    assert answer["Config"]["Labels"]["onevps.tier"] == "base" and answer["State"]["Running"] is True
    assert SECRET not in body.decode() and "Env" not in body.decode()


def test_stop_then_start_the_app(sock):
    status, body = call(sock, "GET", "/version")
    assert status == 200
    prefix = "/v" + json.loads(body)["ApiVersion"]
    assert call(sock, "POST", f"{prefix}/containers/{PROJECT}-app/stop?t=10")[0] == 204
    assert inspect(f"{PROJECT}-app")["State"]["Running"] is False
    assert call(sock, "POST", f"/containers/{PROJECT}-app/start")[0] == 204
    assert inspect(f"{PROJECT}-app")["State"]["Running"] is True
    assert call(sock, "POST", f"/containers/{PROJECT}-app/start")[0] == 304  # already started: the engine's answer


def test_logs_of_the_app(sock):
    status, body = call(sock, "GET", f"/containers/{PROJECT}-app/logs?stdout=1&stderr=1&tail=20")
    assert status == 200 and STARTED.encode() in body


CREATE_BODY = json.dumps({"Image": IMAGE, "Cmd": ["true"], "Labels": {MARK: ""}}).encode()
DENIED = [  # (method, target, body, extra headers, the why in the proxy's log)
    ("POST", f"/containers/create?name={PROJECT}-created", CREATE_BODY, {"Content-Type": "application/json"},
     "request bodies are not allowed"),
    ("POST", f"/containers/create?name={PROJECT}-created", None, None, "not an allowed endpoint"),
    ("POST", f"/containers/{PROJECT}-app/exec", json.dumps({"Cmd": ["env"], "AttachStdout": True}).encode(),
     {"Content-Type": "application/json"}, "request bodies are not allowed"),
    ("POST", f"/containers/{PROJECT}-app/exec", None, None, "not an allowed endpoint"),
    ("POST", "/images/create?fromImage=busybox&tag=latest", None, None, "not an allowed endpoint"),
    ("DELETE", f"/containers/{PROJECT}-app?force=1", None, None, "not an allowed endpoint"),
    ("POST", f"/containers/{PROJECT}-app/kill", None, None, "not an allowed endpoint"),
    ("POST", f"/containers/{PROJECT}-app/restart", None, None, "not an allowed endpoint"),
    ("POST", f"/containers/{PROJECT}-app/rename?name={PROJECT}-renamed", None, None, "not an allowed endpoint"),
    ("POST", f"/containers/{PROJECT}-app/attach?stream=1&stdout=1", None,
     {"Upgrade": "tcp", "Connection": "Upgrade"}, "connection upgrade"),
    ("GET", f"/containers/{PROJECT}-app/archive?path=/etc/hostname", None, None, "not an allowed endpoint"),
    ("GET", f"/containers/{PROJECT}-app/export", None, None, "not an allowed endpoint"),
    ("POST", f"/containers/{PROJECT}-app/update", None, None, "not an allowed endpoint"),
    ("GET", "/volumes", None, None, "not an allowed endpoint"),
    ("POST", "/volumes/create", None, None, "not an allowed endpoint"),
    ("GET", "/networks", None, None, "not an allowed endpoint"),
    ("POST", "/networks/create", None, None, "not an allowed endpoint"),
    ("GET", "/info", None, None, "not an allowed endpoint"),
    ("GET", "/secrets", None, None, "not an allowed endpoint"),
    ("POST", "/swarm/init", None, None, "not an allowed endpoint"),
    ("POST", f"/containers/{PROJECT}-app/../{PROJECT}-shared/stop", None, None, "'..' in path"),
    ("POST", f"/containers/{PROJECT}-shared%2F/stop", None, None, "percent-encoding in path"),
    ("GET", f"/containers/{PROJECT}-app/logs?follow=1&stdout=1", None, None, "follow is not allowed"),
] + [
    (method, f"/containers/{name}/{action}", None, None, why)
    for name, why in ((f"{PROJECT}-shared", "not an app container"), (f"{PROJECT}-notier", "not an app container"),
                      (f"{PROJECT}-otherapp", "not an app container"), (f"{PROJECT}-nothing", "no such container"),
                      (f"{PROJECT}-app-next", "not an app's own container"),
                      (PLAIN_RUN, "not an app's own container (not created by compose"))
    for method, action in (("POST", "stop"), ("POST", "start"), ("GET", "json"), ("GET", "logs"))
]


def snapshot() -> dict:
    """What a denied call might have changed: our containers, their state, their execs; the names we'd see."""
    ids = docker("ps", "--all", "--quiet", "--filter", f"label={MARK}").split()
    return {
        "containers": sorted((c["Id"], c["Name"], c["State"]["Running"], c["State"]["StartedAt"],
                              c["RestartCount"], tuple(c["ExecIDs"] or ())) for c in json.loads(docker("inspect", *ids))),
        "created": docker("ps", "--all", "--quiet", "--filter", f"name={PROJECT}-created",
                          "--filter", f"name={PROJECT}-renamed"),
        "volumes": docker("volume", "ls", "--quiet", "--filter", f"name={PROJECT}"),
        "networks": docker("network", "ls", "--quiet", "--filter", f"name={PROJECT}"),
    }


def test_denied_calls_are_refused_and_change_nothing(sock):
    before = snapshot()
    assert len(before["containers"]) == len(CONTAINERS) + 2  # and the proxy, and the plain run (the MARK of its image)
    for method, target, body, headers, _ in DENIED:
        status, answer = call(sock, method, target, body, headers)
        assert status == 403, (method, target, answer)
        assert json.loads(answer)["message"].startswith("onevps docker proxy: denied: ")
    assert snapshot() == before
    log = proxy_log()
    for method, target, _, _, why in DENIED:
        assert f"denied: {method} {target.split('?')[0]}: {why}" in log, (method, target, log)
    assert SECRET not in log and "busybox" not in log and f"{PROJECT}-renamed" not in log


LOG_LINE = 16_000  # characters; 200 lines (the proxy's largest tail) make ~3.2 MB


def test_twelve_large_log_reads_at_once_leave_the_proxy_standing(sock):
    """Issue 24, attack 6: twelve concurrent reads of ~3 MB of logs (under the 4 MiB answer
    limit) OOM-killed the proxy at its 48m. Now at most two large answers are made at once;
    the others wait (or, past 30 s, get 503 busy). Every reader gets the whole log or 503."""
    docker("exec", f"{PROJECT}-app", "python", "-c",
           f"out = open('/proc/1/fd/1', 'w')\nfor i in range(200): out.write('%03d ' % i + 'x' * {LOG_LINE} + '\\n')\n"
           "out.close()")
    answers: list = []

    def read() -> None:
        try:
            answers.append(call(sock, "GET", f"/containers/{PROJECT}-app/logs?stdout=1&tail=200"))
        except OSError as exc:
            answers.append((type(exc).__name__, b""))

    readers = [threading.Thread(target=read) for _ in range(12)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    statuses = sorted(str(status) for status, _ in answers)
    assert all(status in (200, 503) for status, _ in answers), " ".join(statuses) + "\n" + proxy_log()[-1500:]
    full = [body for status, body in answers if status == 200]
    assert full and all(len(body) > 200 * LOG_LINE and b"199 xxx" in body for body in full), \
        [len(body) for body in full]
    state = inspect(f"{PROJECT}-proxy")["State"]
    assert state["Running"] is True and state["OOMKilled"] is False, (state, proxy_log()[-2000:])
    assert _pings(sock)
    print(f"\n12 log reads of {len(full[0]):,} bytes at once: {statuses}")


def test_sigterm_stops_the_proxy_cleanly(sock):
    """Last: it stops the proxy."""
    docker("stop", "--time", "30", f"{PROJECT}-proxy")
    state = inspect(f"{PROJECT}-proxy")["State"]
    assert (state["Running"], state["ExitCode"]) == (False, 0), proxy_log()
    assert not Path(sock).exists()
    assert "onevps docker proxy: stopped" in proxy_log()
