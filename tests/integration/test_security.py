"""Issue #5 guarantees on the running test stack: least privilege, secrets,
exposure, and data that survives restarts of every kind tested here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from onevps import config, tiers
from onevps.registry import SHARED_SERVICES

from tests import loadgen
from tests.unit import rawhttp

from .conftest import docker, http, inv, oom_lines, project_containers, report, run_state, temp_bytes, well_behaved

pytestmark = [pytest.mark.docker, pytest.mark.stack]


def by_service(settings) -> dict[str, dict]:
    return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in project_containers(settings)}


def compose(settings, *args: str) -> str:
    return docker("compose", "--project-name", settings.project_name, "--file", str(config.REPO.compose_file), *args)


def test_every_container_runs_with_least_privilege(stack_up, settings, reg):
    containers = by_service(settings)
    assert set(containers) == set(SHARED_SERVICES) | set(reg.names())
    for name, c in containers.items():
        host = c["HostConfig"]
        assert host["CapDrop"] == ["ALL"], name
        assert "no-new-privileges:true" in (host["SecurityOpt"] or []), name
        assert host["Memory"] > 0, f"{name} has no memory limit"
        assert c["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    for app in reg.apps:
        c = containers[app.name]
        assert c["Config"]["User"] == "app" and c["HostConfig"]["ReadonlyRootfs"] is True, app.name
        assert c["HostConfig"]["NanoCpus"] > 0 and not c["HostConfig"]["CapAdd"], app.name
        assert compose(settings, "exec", "-T", app.name, "id", "-u").strip() == "10001"
        # The root file system really is read-only; /tmp is scratch space.
        res = compose(settings, "exec", "-T", app.name, "sh", "-c",
                      "touch /app/x 2>/dev/null && echo writable || echo read-only; touch /tmp/x && echo tmp-ok")
        assert res.split() == ["read-only", "tmp-ok"], app.name
    assert containers["nginx"]["HostConfig"]["ReadonlyRootfs"] is True


# The process limit (pids_limit) of each shared service: the setting that names it.
PIDS_SETTING = {"nginx": "nginx_pids_limit", "redis": "redis_pids_limit", "chromadb": "chroma_pids_limit",
                "chroma-auth": "chroma_auth_pids_limit", "ollama": "ollama_pids_limit",
                "waker": "waker_pids_limit", "docker-proxy": "docker_proxy_pids_limit"}

# Started inside an app with `compose exec`: threads until the kernel refuses one (or 5,000).
THREAD_BOMB = """
import threading
hold, n = threading.Event(), 0
try:
    while n < 5000:
        threading.Thread(target=hold.wait, daemon=True).start()
        n += 1
    print(n, "all started")
except RuntimeError as exc:
    print(n, "refused:", exc)
hold.set()
"""


def test_every_container_has_its_process_limit(stack_up, settings, reg):
    containers = by_service(settings)
    for name, c in containers.items():
        if name in PIDS_SETTING:
            want = getattr(settings, PIDS_SETTING[name])
        else:
            want = settings.ml_app_pids_limit if reg.get(name).tier == "ml" else settings.app_pids_limit
        assert c["HostConfig"]["PidsLimit"] == want, (name, c["HostConfig"]["PidsLimit"], want)


def test_a_thread_bomb_in_an_app_stops_at_its_limit_and_other_apps_serve_on(stack_up, settings):
    """Attack 7 of issue 24: 1,500 threads started in an app without error. Now the kernel
    refuses threads past APP_PIDS_LIMIT; a keep-alive GET+POST client of another app sees
    no failure meanwhile, and the bombed app answers again once the bomb is gone."""
    with loadgen.Load(int(settings.http_port), f"portfolio.{settings.domain}", threads=2) as load:
        out = compose(settings, "exec", "-T", "api-gw", "python3", "-c", THREAD_BOMB)
    n, verdict = out.split()[0], out.split()[1]
    assert verdict == "refused:", out
    assert 0 < int(n) < settings.app_pids_limit, out
    print(f"\nthread bomb in api-gw: {out.strip()}; portfolio meanwhile: {load.summary()}")
    assert load.failed == 0 and load.total_of("POST") > 0, load.summary()
    assert http(settings, "api-gw", "/health").status == 200


def test_nginx_starts_every_time_its_state_volume_is_never_hidden(stack_up, settings):
    """Issue 24, item 7: nginx's /var/run tmpfs (a link to /run in its image) sometimes hid
    the sleep-state volume mounted at /run/onevps and nginx failed to start ([emerg] open()
    ... access.log). The volume now sits at /var/lib/onevps; 12 restarts, 12 clean starts."""
    nginx = by_service(settings)["nginx"]["Id"]
    for i in range(12):
        since = docker("inspect", "--format", "{{.State.StartedAt}}", nginx).strip()
        docker("restart", "--time", "5", nginx)
        deadline = time.monotonic() + 120
        while not _ok_health(settings):
            state = docker("inspect", "--format", "{{.State.Status}} {{.State.StartedAt}}", nginx).strip()
            assert time.monotonic() < deadline, f"restart {i + 1}: nginx does not answer ({state})"
            time.sleep(0.5)
        logs = subprocess.run(["docker", "logs", "--since", since, nginx], capture_output=True, text=True,
                              timeout=60)
        assert "[emerg]" not in logs.stdout + logs.stderr, f"restart {i + 1}:\n{logs.stderr[-2000:]}"
    assert docker("inspect", "--format", "{{.RestartCount}}", nginx).strip() == "0"


def _ok_health(settings) -> bool:
    try:
        return http(settings, None, "/nginx-health", timeout=5).status == 200
    except OSError:
        return False


def test_redis_requires_the_password(stack_up, settings):
    assert compose(settings, "exec", "-T", "redis", "sh", "-c", "env -u REDISCLI_AUTH redis-cli ping").strip() \
        .startswith("NOAUTH")
    assert compose(settings, "exec", "-T", "redis", "redis-cli", "ping").strip() == "PONG"


CHROMA_PROBE = """
import json, os, sys, urllib.error, urllib.request
url = os.environ["CHROMA_URL"] + "/api/v2/heartbeat"
out = []
for headers in json.loads(sys.argv[1]):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            out.append(r.status)
    except urllib.error.HTTPError as e:
        out.append(e.code)
print(json.dumps(out))
"""


def test_chromadb_requires_the_token(stack_up, settings):
    """Apps reach ChromaDB only through chroma-auth, and only with CHROMA_TOKEN."""
    token = os.environ["CHROMA_TOKEN"]
    tries = [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"X-Chroma-Token": token[:-1]},
             {"Authorization": f"Bearer {token}"}, {"X-Chroma-Token": token}]
    statuses = json.loads(compose(settings, "exec", "-T", "portfolio", "python", "-c", CHROMA_PROBE, json.dumps(tries)))
    assert statuses == [401, 401, 401, 200, 200]


# Run in api-gw with its own REDIS_URL (user api-gw): what Redis answers to each attempt on
# another app's keys and to admin commands: redis-py's error class (NoPermissionError is
# Redis's NOPERM) and the first words of the message, or "ok".
REDIS_PROBE = r"""
import json, os, sys
import redis
r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
other = sys.argv[1]
tries = {
    "own SET": lambda: r.set("api-gw:isolation-probe", "mine"),
    "own GET": lambda: r.get("api-gw:isolation-probe"),
    "GET": lambda: r.get(other),
    "SET": lambda: r.set(other, "overwritten"),
    "DEL": lambda: r.delete(other),
    "KEYS": lambda: r.keys("*"),
    "SCAN": lambda: r.scan(0, match="*"),
    "RANDOMKEY": lambda: r.randomkey(),
    "CONFIG GET": lambda: r.config_get("requirepass"),
    "CONFIG SET": lambda: r.config_set("maxmemory", "1"),
    "FLUSHALL": lambda: r.flushall(),
    "FLUSHDB": lambda: r.flushdb(),
    "EVAL on the key": lambda: r.eval("return redis.call('GET', KEYS[1])", 1, other),
    "EVAL naming no key": lambda: r.eval("return redis.call('GET', ARGV[1])", 0, other),
    "ACL LIST": lambda: r.acl_list(),
    "AUTH as kb": lambda: r.execute_command("AUTH", "kb", os.environ["REDIS_URL"].split(":")[2].split("@")[0]),
}
out = {}
for name, call in tries.items():
    try:
        value = call()
        out[name] = "ok" if name.startswith("own") or name == "AUTH as kb" else f"ok: {value!r}"
    except redis.exceptions.RedisError as e:
        out[name] = f"{type(e).__name__}: {' '.join(str(e).split()[:8])}"
print(json.dumps(out))
"""


def test_an_apps_redis_user_reaches_only_its_own_keys(stack_up, settings, reg):
    """Each app has its own Redis user (issue 24): api-gw's cannot read, write, list or delete
    kb's keys, nor run admin commands, nor log in as kb with its own password."""
    key, value = f"kb:isolation-{uuid.uuid4().hex[:8]}", f"kb-only-{uuid.uuid4().hex}"
    assert compose(settings, "exec", "-T", "redis", "redis-cli", "SET", key, value).strip() == "OK"
    got = json.loads(compose(settings, "exec", "-T", "api-gw", "python", "-c", REDIS_PROBE, key))
    print(f"\napi-gw's Redis user against {key}: {got}")
    assert got.pop("own SET") == "ok" and got.pop("own GET") == "ok"
    assert got.pop("AUTH as kb").startswith("AuthenticationError: invalid username-password pair")  # no other's
    # refused inside the script too, by the same key rules
    assert got.pop("EVAL naming no key").startswith("ResponseError: The user executing the script can't access")
    assert all(answer.startswith("NoPermissionError: ") for answer in got.values()), got
    # kb's key is untouched, and Redis has exactly one user per app (and its own `default`).
    assert compose(settings, "exec", "-T", "redis", "redis-cli", "GET", key).strip() == value
    users = compose(settings, "exec", "-T", "redis", "redis-cli", "ACL", "USERS").split()
    assert sorted(users) == sorted(["default", *reg.names()])
    compose(settings, "exec", "-T", "redis", "redis-cli", "DEL", key, "api-gw:isolation-probe")


def test_each_app_gets_only_its_own_credentials(stack_up, settings, reg):
    """No app container holds REDIS_PASSWORD or the master CHROMA_TOKEN; each holds its own."""
    containers = by_service(settings)
    masters = (os.environ["REDIS_PASSWORD"], os.environ["CHROMA_TOKEN"])
    tokens = set()
    for app in reg.names():
        env = dict(e.split("=", 1) for e in containers[app]["Config"]["Env"])
        assert not any(m in "\n".join(env.values()) for m in masters), app
        assert env["REDIS_URL"].startswith(f"redis://{app}:") and env["REDIS_KEY_PREFIX"] == f"{app}:"
        assert env["CHROMA_TENANT"] == f"app-{app}" and len(env["CHROMA_TOKEN"]) == 64
        tokens.add(env["CHROMA_TOKEN"])
    assert len(tokens) == len(reg.names())


# Run in an app: the status chroma-auth gives its own token for each path (argv: JSON list).
CHROMA_PATHS_PROBE = r"""
import json, os, sys, urllib.error, urllib.request
out = []
for path in json.loads(sys.argv[1]):
    req = urllib.request.Request(os.environ["CHROMA_URL"] + path, headers={"X-Chroma-Token": os.environ["CHROMA_TOKEN"]})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            out.append(r.status)
    except urllib.error.HTTPError as e:
        out.append(e.code)
print(json.dumps(out))
"""


def test_an_apps_chroma_token_reaches_only_its_own_collections(stack_up, settings):
    """kb stores a document in its own tenant; api-gw's token cannot list or read it (403),
    while reaching its own tenant; onevps's master token sees kb's collection there."""
    doc = {"id": f"iso-{uuid.uuid4().hex[:8]}", "text": "only kb may read this"}
    assert http(settings, "kb", "/documents", "POST", doc).status in (200, 201)
    collections = "/api/v2/tenants/app-kb/databases/default_database/collections"
    # onevps's master token, from chroma-auth's own environment to curl's stdin (on no command line).
    listed = json.loads(compose(settings, "exec", "-T", "chroma-auth", "sh", "-c",
                                'printf "X-Chroma-Token: %s\\n" "$CHROMA_TOKEN" | curl -fsS -H @- "http://127.0.0.1:8000$1"',
                                "sh", collections))
    assert listed, "kb's collection is not in its tenant"
    name, kb_collection = listed[0]["name"], listed[0]["id"]
    paths = [collections, f"{collections}/{name}", f"{collections}/{kb_collection}/count",
             "/api/v2/tenants/app-kb", "/api/v2/tenants/default_tenant/databases/default_database/collections",
             "/api/v2/tenants/app-api-gw/databases/default_database/collections", "/api/v2/heartbeat"]
    got = json.loads(compose(settings, "exec", "-T", "api-gw", "python", "-c", CHROMA_PATHS_PROBE, json.dumps(paths)))
    print(f"\napi-gw's Chroma token: {dict(zip(paths, got))}")
    assert got == [403, 403, 403, 403, 403, 200, 200]
    assert json.loads(compose(settings, "exec", "-T", "kb", "python", "-c", CHROMA_PATHS_PROBE,
                              json.dumps(paths[:3])))[:3] == [200, 200, 200]


def test_chromadb_itself_is_only_on_its_private_network(stack_up, settings):
    containers = by_service(settings)
    nets = containers["chromadb"]["NetworkSettings"]["Networks"]
    assert list(nets) == [f"{settings.project_name}_chroma-private"]
    private = json.loads(docker("network", "inspect", f"{settings.project_name}_chroma-private"))[0]
    assert private["Internal"] is True
    assert private["IPAM"]["Config"][0]["Subnet"] == settings.raw["CHROMA_SUBNET"]
    on_private = {c["Name"] for c in private["Containers"].values()}
    assert on_private == {containers["chromadb"]["Name"].lstrip("/"), containers["chroma-auth"]["Name"].lstrip("/")}
    # From an app, the server's name does not even resolve, and its private address does not answer.
    address = nets[f"{settings.project_name}_chroma-private"]["IPAddress"]
    probe = ("import socket\n"
             "try:\n    socket.gethostbyname('chromadb'); print('resolves')\nexcept OSError: print('unknown')\n"
             f"s = socket.socket(); s.settimeout(3)\nprint('open' if s.connect_ex(('{address}', 8000)) == 0 else 'closed')\n")
    assert compose(settings, "exec", "-T", "portfolio", "python", "-c", probe).split() == ["unknown", "closed"]


def test_the_secrets_are_in_no_image(stack_up, settings, project, reg):
    refs = [tiers.image(settings, a.name) for a in reg.apps] + [tiers.tier_image(project, settings, t)
                                                               for t in tiers.TIER_ORDER]
    for key in ("REDIS_PASSWORD", "CHROMA_TOKEN"):
        secret = os.environ[key]
        for ref in refs:
            assert secret not in docker("image", "inspect", ref), (key, ref)
            assert secret not in docker("history", "--no-trunc", ref), (key, ref)


def test_the_secrets_are_in_no_task_output(stack_up, settings):
    for args in (["status"], ["settings", "--show-defaults"], ["up"]):
        res = inv(*args)
        assert res.returncode == 0, res.stderr
        for key in ("REDIS_PASSWORD", "CHROMA_TOKEN"):
            assert os.environ[key] not in res.stdout + res.stderr, (key, args)


def test_from_the_host_only_nginx_answers(stack_up, settings):
    """Nothing but nginx is published: the services' own ports are closed on the host's loopback."""
    for port in (6379, 8000, 11434, 80, 443):
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"something answers on 127.0.0.1:{port}"
    assert http(settings, "kb", "/health").status == 200  # while nginx does


def _write_everything(settings, tag: str) -> None:
    assert http(settings, "api-gw", f"/kv/survive-{tag}", "POST", {"value": tag}).status == 200
    assert http(settings, "kb", "/documents", "POST",
                {"id": f"survive-{tag}", "text": f"persistent marker {tag} in chroma"}).status == 201
    pulled = compose(settings, "exec", "-T", "ollama", "ollama", "pull", f"survive-{tag}:latest")
    assert "success" in pulled


def _read_everything(settings, tag: str) -> None:
    res = http(settings, "api-gw", f"/kv/survive-{tag}")
    assert res.status == 200 and res.json()["value"] == tag
    res = http(settings, "kb", f"/search?q=persistent+marker+{tag}&k=1")
    assert res.status == 200 and res.json()["results"][0]["id"] == f"survive-{tag}"
    assert f"survive-{tag}:latest" in compose(settings, "exec", "-T", "ollama", "ollama", "list")


def test_data_survives_kill_and_down_up(stack_up, settings):
    tag = uuid.uuid4().hex[:10]
    _write_everything(settings, tag)
    for service in ("redis", "chromadb", "chroma-auth", "ollama"):
        compose(settings, "kill", service)
    res = inv("up")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    _read_everything(settings, tag)
    res = inv("down")
    assert res.returncode == 0, res.stderr
    assert not project_containers(settings)
    res = inv("up")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    _read_everything(settings, tag)


# ------------------------------------------------------ Docker engine restart --

def _restart_docker_engine() -> None:
    """Restart the Docker engine the way this machine runs it: systemd when it
    manages docker, else the dockerd whose PID is in /var/run/docker.pid (as
    .ci/run starts it), started again the same way."""
    if subprocess.run(["systemctl", "is-active", "--quiet", "docker"], capture_output=True).returncode == 0:
        subprocess.run(["systemctl", "restart", "docker"], check=True, timeout=300)
    else:
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        os.kill(pid, 15)
        deadline = time.monotonic() + 120
        while Path(f"/proc/{pid}").exists():
            assert time.monotonic() < deadline, f"dockerd (PID {pid}) did not stop within 120 s"
            time.sleep(0.5)
        with open("/var/log/dockerd.log", "ab") as log:
            subprocess.Popen(["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "the Docker engine did not come back within 120 s"
        time.sleep(1)


def _wait_healthy(settings, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {c["Config"]["Labels"]["com.docker.compose.service"]:
                  (c["State"]["Status"], (c["State"].get("Health") or {}).get("Status", "none"))
                  for c in project_containers(settings)}
        if states and all(s == ("running", "healthy") for s in states.values()):
            return
        assert time.monotonic() < deadline, f"not healthy after an engine restart: {states}"
        time.sleep(3)


def test_data_survives_a_docker_engine_restart(stack_up, settings, reg):
    """Every container comes back by its restart policy (no `inv up`), healthy
    and with its data; the apps answer through nginx again."""
    tag = uuid.uuid4().hex[:10]
    _write_everything(settings, tag)
    before = {c["Config"]["Labels"]["com.docker.compose.service"]: c["Id"] for c in project_containers(settings)}
    _restart_docker_engine()
    _wait_healthy(settings)
    after = {c["Config"]["Labels"]["com.docker.compose.service"]: c["Id"] for c in project_containers(settings)}
    assert after == before  # the same containers, restarted by the engine
    _read_everything(settings, tag)
    for app in reg.names():
        assert http(settings, app, "/health").status == 200, app


# ------------------------------------------------ the one door under hostile traffic --
# Issue 24, item 1. The attacker is this machine (127.0.0.1: Docker's gateway address at
# nginx); the well-behaved client is tests/loadgen.py in a container of its own on
# app-network (its own address), sending keep-alive GET+POST to portfolio through nginx.

ATTACK_BODY = 20 * 1024 * 1024  # NGINX_MAX_BODY's default, 20m: the largest body nginx takes


def well_behaved_run(settings, requests: int = 3000) -> dict:
    """The well-behaved client's run on the test stack (conftest.well_behaved)."""
    return report(well_behaved(settings, settings.project_name, settings.address(2), settings.domain, requests))


def nginx_state(settings) -> str:
    return run_state(by_service(settings)["nginx"]["Id"])


def open_held(settings, n: int, length: int, sent: int, path: str = "/kv/held") -> list[socket.socket]:
    """n connections, each with a POST head saying `length` and `sent` bytes of its body, held."""
    host = "api-gw"
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}.{settings.domain}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()
    chunk = b"x" * (1024 * 1024)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", int(settings.http_port)), timeout=120)
        socks.append(s)
        assert rawhttp.send(s, head), "nginx closed a held connection before its body"
        left = sent
        while left:
            part = chunk[:min(left, len(chunk))]
            assert rawhttp.send(s, part), "nginx closed a held connection during its body"
            left -= len(part)
    return socks


BODY_TEMP = "/var/cache/nginx/client_temp"  # where nginx and chroma-auth spool request bodies


def spooled(nginx: str) -> int:
    """Bytes of request bodies nginx holds in its temp files."""
    return temp_bytes(nginx, BODY_TEMP)


def test_held_20mb_uploads_go_to_disk_and_nginx_is_never_killed(stack_up, settings):
    """The attack: 14 connections each sent nearly all of a 20 MiB POST and held it. nginx
    kept the bodies in a tmpfs counted against its 256m and was OOM-killed, every connection
    cut. Now they sit in files on the nginx-buffers volume (nginx's open temp files hold them
    all), nginx keeps running (same start, no restart, not OOM-killed, no new OOM line in the
    kernel's log) and the well-behaved client sees no failure. The attacker sends a byte a
    connection now and then, as a slow client may, so nginx's body timeout does not end the
    attack before it is measured."""
    before, oom_before = nginx_state(settings), oom_lines()
    nginx = by_service(settings)["nginx"]["Id"]
    held = open_held(settings, 14, ATTACK_BODY, ATTACK_BODY - 4096)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(2):
            for s in held:
                rawhttp.send(s, b"x")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        # Sent is not yet read: wait until nginx has taken the bodies in, however slow the machine.
        want, deadline = 14 * (ATTACK_BODY - 4096 - 64 * 1024), time.monotonic() + 300
        while (held_bytes := spooled(nginx)) < want:
            assert time.monotonic() < deadline, f"nginx took in {held_bytes:,} of {want:,} bytes"
            time.sleep(0.5)
        run = well_behaved_run(settings)
        still = spooled(nginx)
    finally:
        stop.set()
        trickler.join()
        for s in held:
            s.close()
    print(f"\n14 held 20 MiB uploads: {held_bytes:,} bytes in nginx's temp files on the volume "
          f"({still:,} after the well-behaved run); the well-behaved client: {run['summary']}")
    assert still >= want  # the attack lasted the whole run
    assert run["failed"] == 0 and run["total"] >= 3000, run["summary"]
    assert nginx_state(settings) == before  # same start, no restart, not OOM-killed
    assert oom_lines() == oom_before
    assert http(settings, "portfolio", "/health").status == 200


def logged(settings, since: str, method: str, uri: str) -> Counter:
    """The statuses nginx logged (its JSON access log) for METHOD URI since the time given."""
    res = subprocess.run(["docker", "logs", "--since", since, by_service(settings)["nginx"]["Id"]],
                         capture_output=True, text=True, timeout=120)
    out: Counter = Counter()
    for line in res.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("method") == method and entry.get("uri") == uri:
            out[entry["status"]] += 1
    return out


def test_a_client_over_a_limit_gets_413_or_429_or_is_cut_off_and_the_others_do_not_notice(stack_up, settings):
    """NGINX_MAX_BODY: 413 before the body is read. NGINX_CONN_PER_CLIENT: requests from one
    address past that many in progress get 429. NGINX_CLIENT_TIMEOUT: a body that stops
    coming ends in 408 (nginx logs it and closes the connection without an answer). Meanwhile the well-behaved
    client, at its own address, fails nothing. The settings reach nginx (its rendered
    conf.d/00-limits.conf)."""
    nginx = by_service(settings)["nginx"]["Id"]
    rendered = docker("exec", nginx, "cat", "/etc/nginx/conf.d/00-limits.conf")
    for line in (f"client_max_body_size {settings.nginx_max_body};",
                 f"limit_conn onevps_conn {settings.nginx_conn_per_client};",
                 f"rate={settings.nginx_rate_per_client}r/s;", f"burst={settings.nginx_burst_per_client} nodelay;",
                 f"client_body_timeout {settings.nginx_client_timeout}s;",
                 f"proxy_max_temp_file_size {settings.nginx_max_temp_file};"):
        assert line in rendered, line
    before = nginx_state(settings)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))

    with socket.create_connection(("127.0.0.1", int(settings.http_port)), timeout=120) as s:
        answer = rawhttp.exchange(s, (f"POST /kv/big HTTP/1.1\r\nHost: api-gw.{settings.domain}\r\n"
                                      f"Content-Length: {ATTACK_BODY + 1}\r\n\r\n").encode(), b"x" * 65536)
    assert rawhttp.status_of(answer) == 413, answer[:200]

    # NGINX_CONN_PER_CLIENT + 5 requests whose bodies stop after one byte: that many stay in
    # progress, the 5 others get 429; all of them end when NGINX_CLIENT_TIMEOUT has passed.
    over = 5
    path = f"/kv/held-{uuid.uuid4().hex}"  # this test's requests alone in nginx's log
    held = open_held(settings, settings.nginx_conn_per_client + over, 10, 1, path)
    try:
        with ThreadPoolExecutor(len(held)) as pool:
            reads = [pool.submit(rawhttp.read_until_closed, s) for s in held]
            run = well_behaved_run(settings, 1000)
            answers = Counter(rawhttp.status_of(r.result()) for r in reads)
    finally:
        for s in held:
            s.close()
    statuses = logged(settings, since, "POST", path)
    print(f"\none client over its limits: 413 for a body over NGINX_MAX_BODY; held requests logged {dict(statuses)}, "
          f"answered {dict(answers)}; the well-behaved client: {run['summary']}")
    assert statuses == {429: over, 408: settings.nginx_conn_per_client}, statuses
    assert answers[429] == over, answers  # the 429s were answered; the timed-out ones were closed
    assert run["failed"] == 0, run["summary"]
    assert nginx_state(settings) == before


# From inside an app: N connections to chroma-auth, each a POST with the app's own token
# (to its own tenant) and nearly all of a large body, then small held POSTs up to LIMIT in progress, and one
# request more (its status printed); all held (a byte now and then) until standard input closes.
HELD_AT_CHROMA_AUTH = r"""
import os, socket, sys, threading
n, length = int(sys.argv[1]), int(sys.argv[2])
head = (f"POST /api/v2/tenants/{os.environ['CHROMA_TENANT']}/databases/default_database/collections HTTP/1.1\r\n"
        f"Host: chroma-auth\r\nX-Chroma-Token: {os.environ['CHROMA_TOKEN']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()
socks, part = [], b"x" * (1 << 20)
for _ in range(n):
    s = socket.create_connection((os.environ["CHROMA_URL"].split("//")[1].split(":")[0], 8000), timeout=120)
    s.sendall(head)
    left = length - 4096
    while left:
        left -= s.send(part[:min(left, len(part))])
    socks.append(s)
for _ in range(int(sys.argv[3]) - n):  # more in progress, up to chroma-auth's limit per app: small bodies, held
    s = socket.create_connection((os.environ["CHROMA_URL"].split("//")[1].split(":")[0], 8000), timeout=120)
    s.sendall(head.replace(b"Content-Length: %d" % length, b"Content-Length: 100000") + b"x")
    socks.append(s)
def one_more() -> str:  # the status of one request more (chroma-auth may still be reading held heads: asked again)
    with socket.create_connection((os.environ["CHROMA_URL"].split("//")[1].split(":")[0], 8000), timeout=120) as s:
        s.sendall(f"GET /api/v2/heartbeat HTTP/1.1\r\nHost: chroma-auth\r\nX-Chroma-Token: {os.environ['CHROMA_TOKEN']}"
                  "\r\nConnection: close\r\n\r\n".encode())
        got = b""
        while b"\r\n" not in got and (data := s.recv(64)):
            got += data
        return got.split(b" ")[1].decode()
over = next((status for status in (one_more() for _ in range(100)) if status == "429"), "never 429")
print("held", over, flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
while not stop.wait(2):
    for s in socks:
        s.send(b"x")
"""


def test_held_uploads_from_an_app_go_to_disk_and_chroma_auth_is_never_killed(stack_up, settings):
    """chroma-auth (64m) buffered request bodies in a tmpfs counted against its memory, and
    takes bodies up to 64m: one app holding three 60 MiB uploads, with its own valid
    token, OOM-killed it, and no app could reach ChromaDB until it restarted. Now the
    bodies sit in files on the chroma-auth-buffers volume: chroma-auth keeps running (same
    start, no restart, not OOM-killed, no new OOM line) and another app's requests
    through it are answered meanwhile. A body reaches ChromaDB only once whole (these never).
    Past 32 requests in progress from one app, the next gets 429 (its disk use is bounded)."""
    auth = by_service(settings)["chroma-auth"]["Id"]
    before, oom_before, length = run_state(auth), oom_lines(), 60 << 20
    attacker = subprocess.Popen(
        ["docker", "compose", "--project-name", settings.project_name, "--file", str(config.REPO.compose_file),
         "exec", "-T", "api-gw", "python", "-c", HELD_AT_CHROMA_AUTH, "3", str(length), "32"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held_line = attacker.stdout.readline().split()
        assert held_line[:1] == ["held"], held_line
        assert held_line[1:] == ["429"], held_line  # one request more than its 32 in progress
        want, deadline = 3 * (length - 4096 - (1 << 20)), time.monotonic() + 300
        while (held := spooled(auth)) < want:
            assert time.monotonic() < deadline, f"chroma-auth took in {held:,} of {want:,} bytes"
            time.sleep(0.5)
        token = os.environ["CHROMA_TOKEN"]
        others = json.loads(compose(settings, "exec", "-T", "portfolio", "python", "-c", CHROMA_PROBE,
                                    json.dumps([{"X-Chroma-Token": token}] * 20)))
    finally:
        attacker.communicate(timeout=120)  # closes its standard input: the held uploads end
    print(f"\nthree held 60 MiB uploads to chroma-auth from an app: {held:,} bytes in its temp files on the "
          f"volume; another app's 20 requests through it: {others}")
    assert others == [200] * 20
    assert run_state(auth) == before  # same start, no restart, not OOM-killed
    assert oom_lines() == oom_before
