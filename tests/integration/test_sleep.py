"""Issue 15: sleeping apps, on a real "server" (this machine over a local sshd,
its own Compose project): an app with a short onevps.sleep_after goes to sleep;
its first GET and first POST (body intact) are answered by it; 50 concurrent
first requests start it once; a request in flight keeps it awake; the waker's
Docker access is limited to starting, stopping and inspecting apps; `fab
status` says sleeping; a deploy and a rollback of a sleeping app leave it
asleep on the new image.

The waker and docker-proxy are the real services of the compose file (the
code in dockerfiles/waker/), nginx is the stack's nginx.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from onevps import config, tiers
from onevps.project import Project

from .conftest import clear_compose_project, copy_repo, docker
from .sshd import sshd_or_fail

pytestmark = [pytest.mark.docker, pytest.mark.server, pytest.mark.ordered]

SSH_PORT = int(os.environ.get("ONEVPS_TEST_SLEEP_SSH_PORT", "2232"))
# A second checkout runs these beside the first with its own ONEVPS_TEST_SLEEP_* name, ports and subnets.
PROJECT = os.environ.get("ONEVPS_TEST_SLEEP_PROJECT", "onevps-sleep")
HTTP_PORT = int(os.environ.get("ONEVPS_TEST_SLEEP_HTTP_PORT", "18680"))
DOMAIN = "onevps.test"
SERVER_ENV = f"""\
COMPOSE_PROJECT_NAME={PROJECT}
HTTP_PORT={HTTP_PORT}
HTTPS_PORT={os.environ.get("ONEVPS_TEST_SLEEP_HTTPS_PORT", "18681")}
NETWORK_PREFIX={os.environ.get("ONEVPS_TEST_SLEEP_NETWORK_PREFIX", "172.22.0")}
CHROMA_SUBNET={os.environ.get("ONEVPS_TEST_SLEEP_CHROMA_SUBNET", "172.22.1.0/28")}
IMAGE_NAMESPACE={PROJECT}
REDIS_PASSWORD=sleep-test-secret-0123456789
CHROMA_TOKEN=sleep-test-chroma-token-0123456789
DOMAIN={DOMAIN}
DEPLOY_WATCH=0
WAKE_TIMEOUT=60
"""
SLEEP_AFTER = "4s"
APP = "sleepy"
CONTAINER = f"{PROJECT}-{APP}-1"
WAKER = f"{PROJECT}-waker-1"
# The app the test deploys: /health, a receipt for any body, and a slow answer.
MAIN_PY = '''\
import asyncio
import hashlib
import os

from fastapi import FastAPI, Request

APP_VERSION = os.getenv("APP_VERSION", "dev")
app = FastAPI()


@app.get("/health")
def health() -> dict:
    return {"status": "ok", "app": "sleepy", "version": APP_VERSION}


@app.post("/api/echo")
async def echo(request: Request) -> dict:
    body = await request.body()
    return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "version": APP_VERSION}


@app.get("/api/slow")
async def slow(seconds: float = 1.0) -> dict:
    await asyncio.sleep(min(seconds, 30))
    return {"slept": seconds}
'''


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with sshd_or_fail(tmp_path_factory.mktemp("sshd"), SSH_PORT, "the sleep tests") as client_key:
        yield client_key


def _tool(name: str, repo: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name(name)), *args], cwd=repo["root"],
                          env={**os.environ, **repo["env"]}, capture_output=True, text=True, timeout=timeout)


def fab(repo: dict, *args: str) -> subprocess.CompletedProcess:
    return _tool("fab", repo, *args)


@pytest.fixture(scope="module")
def server(tmp_path_factory, built_images, settings, project, sshd):
    """A copy with the app `sleepy` (inv new-app --sleep-after 4s), set up and deployed."""
    base = tmp_path_factory.mktemp("sleep")
    copy = base / "onevps"
    copy_repo(copy)
    (copy / ".env.vps").write_text(SERVER_ENV)
    clear_compose_project(PROJECT)
    repo = {"root": copy, "vps": base / "vps", "env": {
        "VPS_HOST": "127.0.0.1", "VPS_PORT": str(SSH_PORT), "VPS_USER": "root", "VPS_SSH_KEY": str(sshd),
        "VPS_PATH": str(base / "vps"), "VPS_ENV_FILE": ".env.vps", "TORCH_WHEEL_DIR": "", "DEPLOY_TIMEOUT": "120"}}
    res = _tool("inv", repo, "new-app", APP, "--sleep-after", SLEEP_AFTER)
    assert res.returncode == 0, res.stdout + res.stderr
    (copy / "apps" / APP / "main.py").write_text(MAIN_PY)
    # The session's tier images under the tags the server's settings give them (as test_deploy).
    server_settings = config.load(Project(copy), environ={}, env_file=copy / ".env.vps")
    for tier, tag in tiers.tag_env(Project(copy), server_settings).items():
        name = "base" if tier == "BASE_TAG" else "ml"
        docker("tag", tiers.tier_image(project, settings, name), f"{PROJECT}/{name}:{tag}")
    for args in (("setup",), ("deploy", f"--app={APP}")):
        res = fab(repo, *args)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    yield repo
    compose = base / "vps" / "compose" / "docker-compose.yml"
    if compose.exists():
        subprocess.run(["docker", "compose", "-p", PROJECT, "-f", str(compose), "down", "--volumes",
                        "--remove-orphans"], capture_output=True)
    clear_compose_project(PROJECT)
    refs = docker("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={PROJECT}/*").split()
    if refs:
        subprocess.run(["docker", "image", "rm", *refs], capture_output=True)


# ----------------------------------------------------------------- helpers --

def request(method: str, path: str, body: bytes | None = None, timeout: float = 90) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=timeout)
    try:
        headers = {"Host": f"{APP}.{DOMAIN}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def post_checked(n: int) -> bool:
    """A POST whose body must reach the app intact (its receipt says so)."""
    body = json.dumps({"n": n, "pad": "x" * (1000 + n)}).encode()
    status, answer = request("POST", "/api/echo", body)
    return status == 200 and json.loads(answer)["sha256"] == hashlib.sha256(body).hexdigest()


def running() -> bool:
    return docker("inspect", "--format", "{{.State.Running}}", CONTAINER).strip() == "true"


def flagged() -> bool:
    return subprocess.run(["docker", "exec", WAKER, "test", "-e", f"/run/onevps/asleep/{APP}"]).returncode == 0


def wait_asleep(within: float = 60) -> None:
    deadline = time.monotonic() + within
    while running() or not flagged():
        assert time.monotonic() < deadline, f"{APP} did not fall asleep within {within} s: " + waker_log()[-2000:]
        time.sleep(0.5)


def waker_log() -> str:
    res = subprocess.run(["docker", "logs", WAKER], capture_output=True, text=True)
    return res.stdout + res.stderr


def starts_since(since: str) -> int:
    out = subprocess.run(["docker", "events", "--since", since, "--until", str(int(time.time()) + 1),
                          "--filter", f"container={CONTAINER}", "--filter", "event=start",
                          "--format", "{{.Status}}"], capture_output=True, text=True, timeout=30).stdout
    return len(out.split())


# ------------------------------------------------------------------- tests --

def test_an_idle_app_falls_asleep_and_fab_status_says_so(server):
    assert request("GET", "/health")[0] == 200
    wait_asleep()
    assert docker("inspect", "--format", "{{.State.Status}}", CONTAINER).strip() == "exited"
    assert f"{APP} asleep after" in waker_log()
    status = fab(server, "status")
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if line.startswith(CONTAINER))
    assert row.split()[1] == "sleeping", status.stdout
    assert next(line for line in status.stdout.splitlines() if line.startswith(WAKER)).split()[1] == "running"


def test_a_first_post_and_a_first_get_are_answered_by_the_app(server):
    wait_asleep()
    assert post_checked(1)  # the body reached the woken app intact
    assert running()
    assert "woke sleepy in" in waker_log()
    wait_asleep()
    status, body = request("GET", "/health")
    assert status == 200 and json.loads(body)["app"] == APP


def test_50_concurrent_first_requests_start_it_once_and_all_get_200(server):
    wait_asleep()
    since = str(int(time.time()) - 1)
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda n: post_checked(n) if n % 2 else request("GET", "/health")[0] == 200,
                                range(50)))
    assert results.count(True) == 50, results
    assert starts_since(since) == 1, waker_log()[-2000:]


def test_a_request_in_flight_keeps_the_app_awake(server):
    wait_asleep()
    stayed: list[bool] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            stayed.append(running())
            time.sleep(0.5)

    status, _ = request("GET", "/health")  # wakes it
    assert status == 200
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # 10 s: past sleep_after (4 s), and a sleep check (every 5 s) comes after that
        status, body = request("GET", "/api/slow?seconds=10")
    finally:
        done.set()
        watcher.join()
    assert status == 200 and json.loads(body) == {"slept": 10.0}
    assert len(stayed) > 5 and all(stayed), stayed
    wait_asleep()  # and once idle, it sleeps


PROXY_CALL = r'''
import json, sys
sys.path.insert(0, "/opt/onevps/waker")
from onevps_unixhttp import UnixHTTPConnection
out = {}
for method, path in json.loads(sys.argv[1]):
    c = UnixHTTPConnection("/run/onevps-docker/docker.sock", timeout=30); c.request(method, path, body=b"" if method == "POST" else None)
    r = c.getresponse(); out[method + " " + path] = [r.status, r.read().decode()]
print(json.dumps(out))
'''


def test_the_waker_reaches_docker_only_to_start_stop_and_inspect_apps(server):
    redis = f"{PROJECT}-redis-1"
    calls = [("GET", f"/containers/{CONTAINER}/json"), ("POST", "/containers/create"),
             ("POST", f"/containers/{CONTAINER}/exec"), ("POST", f"/containers/{redis}/stop"),
             ("GET", f"/containers/{redis}/json"), ("DELETE", f"/containers/{CONTAINER}"),
             ("POST", "/images/create?fromImage=alpine"), ("GET", "/info"),
             ("POST", f"/containers/{CONTAINER}/kill")]
    res = subprocess.run(["docker", "exec", WAKER, "python", "-c", PROXY_CALL, json.dumps(calls)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    answers = json.loads(res.stdout)
    status, text = answers[f"GET /containers/{CONTAINER}/json"]
    assert status == 200 and json.loads(text)["Name"] == f"/{CONTAINER}"
    assert "Env" not in json.loads(text)["Config"] and "REDIS_URL" not in text and "sleep-test-secret" not in text
    refused = {call: answer[0] for call, answer in answers.items() if call != f"GET /containers/{CONTAINER}/json"}
    assert set(refused.values()) == {403}, refused
    assert docker("inspect", "--format", "{{.State.Running}}", redis).strip() == "true"  # untouched
    # The waker has no Docker socket of its own.
    mounts = json.loads(docker("inspect", "--format", "{{json .Mounts}}", WAKER))
    assert not any("docker.sock" in m.get("Source", "") for m in mounts), mounts


def test_a_deploy_and_a_rollback_of_a_sleeping_app_leave_it_asleep_on_the_new_image(server):
    wait_asleep()
    main = server["root"] / "apps" / APP / "main.py"
    main.write_text(MAIN_PY.replace('os.getenv("APP_VERSION", "dev")', 'os.getenv("APP_VERSION", "v2")'))
    res = fab(server, "deploy", f"--app={APP}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert f"{APP} is asleep: it keeps sleeping" in res.stdout
    assert not running() and flagged()
    latest = docker("image", "inspect", "--format", "{{.Id}}", f"{PROJECT}/{APP}:latest").strip()
    assert docker("inspect", "--format", "{{.Image}}", CONTAINER).strip() == latest
    res = fab(server, "rollback", f"--app={APP}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert not running() and flagged()
    status, body = request("GET", "/health")  # wakes the version the rollback put back
    assert status == 200 and json.loads(body)["version"] == "dev"
