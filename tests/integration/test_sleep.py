"""Issue 15: sleeping apps, on the shared test server (server.py: this machine
over a local sshd, its own Compose project), where an app is added for them: an app with a short onevps.sleep_after goes to sleep;
its first GET and first POST (body intact) are answered by it; 50 concurrent
first requests start it once; a request in flight keeps it awake; the waker's
Docker access is limited to starting, stopping and inspecting apps; `fab
status` says sleeping; a deploy and a rollback of a sleeping app leave it
asleep on the new image. Issue 24: held 19 MiB uploads to a sleeping app never
kill the waker, no app container reaches it, and a slow reader of a 700 MiB
answer never kills nginx (this server's nginx is the stack's, and sleepy is the
test app that can send such an answer).

The waker and docker-proxy are the real services of the compose file (the
code in dockerfiles/waker/), nginx is the stack's nginx.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import docker, oom_lines, report, run_state, temp_bytes, well_behaved
from .leakcheck import has_secret
from .server import DOMAIN, NETWORK_PREFIX, PROJECT, Server, fab, inv

pytestmark = [pytest.mark.docker, pytest.mark.server, pytest.mark.ordered]

HTTP_PORT = Server.http_port
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
from fastapi.responses import StreamingResponse

APP_VERSION = os.getenv("APP_VERSION", "dev")
app = FastAPI()


@app.get("/health")
def health() -> dict:
    return {"status": "ok", "app": "sleepy", "version": APP_VERSION}


@app.post("/api/echo")
async def echo(request: Request) -> dict:
    digest, size = hashlib.sha256(), 0
    async for chunk in request.stream():  # a 19 MiB body is never held whole
        digest.update(chunk)
        size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest(), "version": APP_VERSION}


@app.get("/api/big")
async def big(mib: int = 1) -> StreamingResponse:
    """mib MiB of answer, made as it is sent (the slow-reader attack of issue 24)."""
    mib, part = min(mib, 1024), b"x" * (1 << 20)

    async def parts():
        for _ in range(mib):
            yield part
    return StreamingResponse(parts(), media_type="application/octet-stream", headers={"content-length": str(mib << 20)})


@app.get("/api/slow")
async def slow(seconds: float = 1.0) -> dict:
    await asyncio.sleep(min(seconds, 30))
    return {"slept": seconds}
'''


@pytest.fixture(scope="module")
def server(vps):
    """The shared test server with the app `sleepy` added as a user adds one: `inv new-app
    sleepy --sleep-after 4s` (its code replaced by MAIN_PY), then `fab deploy --app=sleepy`."""
    if not (vps["root"] / "apps" / APP).exists():
        res = inv(vps, "new-app", APP, "--sleep-after", SLEEP_AFTER)
        assert res.returncode == 0, res.output
    (vps["root"] / "apps" / APP / "main.py").write_text(MAIN_PY)
    res = fab(vps, "deploy", f"--app={APP}")
    assert res.returncode == 0, res.output
    return vps


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
    return subprocess.run(["docker", "exec", WAKER, "test", "-e", f"/var/lib/onevps/asleep/{APP}"]).returncode == 0


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
    assert "Env" not in json.loads(text)["Config"] and "REDIS_URL" not in text and not has_secret(text)
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


# --------------------------------------------- issue 24: the waker under attack --

def portfolio_client(settings, requests: int | str) -> subprocess.Popen:
    """The well-behaved client (conftest.well_behaved) on the server's stack."""
    return well_behaved(settings, PROJECT, f"{NETWORK_PREFIX}.2", DOMAIN, requests)


def test_held_19mb_uploads_to_a_sleeping_app_are_streamed_and_the_waker_is_never_killed(server, settings):
    """The attack: six concurrent 19 MiB POSTs to a sleeping app got 502 and the waker (96m)
    was OOM-killed: it held every body in memory while the app woke. Now the bodies wait in
    nginx's temp files and reach the app streamed: all six are answered by the app with
    the right receipt, the waker keeps running (same start, no restart, not OOM-killed, no
    new OOM line in the kernel's log) and a well-behaved client on another app fails
    nothing meanwhile."""
    wait_asleep()
    before, oom_before = run_state(WAKER), oom_lines()
    bodies = [bytes([n]) * (19 * 1024 * 1024) for n in range(6)]
    client = portfolio_client(settings, "stdin")  # running before the attack starts
    try:
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda body: request("POST", "/api/echo", body), bodies))
    finally:
        results = report(client)
    peak = docker("exec", WAKER, "sh", "-c", "cat /sys/fs/cgroup/memory.peak 2>/dev/null "
                  "|| cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes").strip()  # cgroup v2, or v1
    print(f"\nsix 19 MiB uploads to sleeping {APP}: {[status for status, _ in answers]}; the waker's memory peak "
          f"{int(peak) / 2**20:.1f} MiB (limit 96m); the well-behaved client: {results['summary']}")
    for body, (status, answer) in zip(bodies, answers):
        assert status == 200, answer[:300]
        assert json.loads(answer)["sha256"] == hashlib.sha256(body).hexdigest()
    assert run_state(WAKER) == before  # same start, no restart, not OOM-killed
    assert oom_lines() == oom_before
    assert results["failed"] == 0 and results["total"] > 0, results["summary"]


REACH_WAKER = r'''
import json, socket, sys
out = []
for request in (b"GET /_onevps/state HTTP/1.1\r\nHost: waker\r\n\r\n",
                b"GET /health HTTP/1.1\r\nHost: sleepy\r\nX-Onevps-App: sleepy\r\n\r\n"):
    got = b""
    try:
        with socket.create_connection((sys.argv[1], 8080), timeout=30) as s:
            s.sendall(request)
            while data := s.recv(65536):
                got += data
    except OSError as exc:
        got += f"<{type(exc).__name__}>".encode()
    out.append(got.decode("latin-1"))
print(json.dumps(out))
'''


def test_no_app_container_reaches_the_waker(server):
    """From an app container, GET /_onevps/state listed every sleeping app and a request
    with X-Onevps-App woke that app and was answered by it, past nginx. Now the waker
    resets every connection that is not nginx's before reading a byte of it."""
    portfolio = f"{PROJECT}-portfolio-1"
    res = subprocess.run(["docker", "exec", portfolio, "python", "-c", REACH_WAKER, f"{NETWORK_PREFIX}.7"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    # Reset (or closed, when nothing had come yet) without a byte of an answer.
    assert len(got) == 2 and set(got) <= {"", "<ConnectionResetError>", "<BrokenPipeError>"}, got
    status, body = request("GET", "/health")  # through nginx it is served
    assert status == 200 and json.loads(body)["app"] == APP


ANSWER_TEMP = "/var/cache/nginx/proxy_temp"  # where nginx spools answers


def test_a_slow_reader_of_a_700mib_answer_is_bounded_and_nginx_is_never_killed(server, settings):
    """The attack: a client asked an app for a 700 MiB download and read nothing; nginx spooled
    the answer into a tmpfs counted against its memory and was OOM-killed. Now it spools to
    files on the nginx-buffers volume, at most NGINX_MAX_TEMP_FILE (256m) for one answer,
    and then reads the app only as fast as the client reads. The client here takes 64 KiB
    every 2 s (so nginx's send_timeout does not end the attack early); once nginx's temp file
    is full, a well-behaved client fails nothing, nginx keeps running (same start, no
    restart, not OOM-killed, no new OOM line), and the slow client still gets every byte."""
    nginx = f"{PROJECT}-nginx-1"
    assert request("GET", "/health")[0] == 200  # awake: the answer comes from the app, not the waker
    before = run_state(nginx)
    oom_before, size, bound = oom_lines(), 700 << 20, 256 << 20
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(300)
    sock.connect(("127.0.0.1", HTTP_PORT))
    sock.sendall(f"GET /api/big?mib=700 HTTP/1.1\r\nHost: {APP}.{DOMAIN}\r\nConnection: close\r\n\r\n".encode())
    got, stop = bytearray(), threading.Event()

    def trickle() -> None:
        while not stop.wait(2):
            got.extend(sock.recv(64 * 1024))

    reader = threading.Thread(target=trickle, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while (spooled := temp_bytes(nginx, ANSWER_TEMP)) < bound - (8 << 20):
            assert time.monotonic() < deadline, f"nginx spooled {spooled:,} bytes of the answer"
            time.sleep(0.5)
        run = report(portfolio_client(settings, 1500))
        still = temp_bytes(nginx, ANSWER_TEMP)
    finally:
        stop.set()
        reader.join()
    total = len(got)
    head, _, _ = bytes(got[:65536]).partition(b"\r\n\r\n")
    del got[:]
    while data := sock.recv(1 << 20):
        total += len(data)
    sock.close()
    print(f"\na slow reader of a 700 MiB answer: nginx spooled {spooled:,} bytes of it ({still:,} after the "
          f"well-behaved run; NGINX_MAX_TEMP_FILE 256m); the well-behaved client: {run['summary']}")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert spooled <= bound and still <= bound
    assert run["failed"] == 0 and run["total"] >= 1500, run["summary"]
    assert run_state(nginx) == before  # same start, no restart, not OOM-killed
    assert oom_lines() == oom_before
    assert total - len(head) - 4 == size  # every byte of the answer, after its head
