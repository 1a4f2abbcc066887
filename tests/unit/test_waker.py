"""The waker (dockerfiles/waker/onevps_waker.py): its pure parts, then end to end in
process against a fake Docker API on a unix socket and a fake app on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from onevps import sleep

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("onevps_waker", ROOT / "dockerfiles" / "waker" / "onevps_waker.py")
waker = importlib.util.module_from_spec(spec)
sys.modules["onevps_waker"] = waker  # dataclasses look their module up there
spec.loader.exec_module(waker)

CID = "c0ffee" * 10 + "abcd"
DEADLINE = 30.0  # seconds a condition may take on a busy machine before the test fails


# --- pure parts ---------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [("15m", 900), ("90s", 90), ("2h", 7200), ("1d", 86400), ("45", 45),
                                          (" 1.5S ", 1.5)])
def test_parse_duration(text, seconds):
    assert waker.parse_duration(text) == seconds


def test_the_waker_reads_every_duration_onevps_writes():
    for seconds in (1, 59, 90, 900, 3600, 5400, 86400, 30 * 86400):
        assert waker.parse_duration(sleep.duration_text(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "m", "15 m", "1w", "-5", "abc", "15mm"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        waker.parse_duration(text)


def test_access_line():
    line = json.dumps({"time": "2026-11-26T10:00:01.500+00:00", "host": "KB.example.com", "method": "GET",
                       "uri": "/", "status": 200, "request_time": 0.01})
    assert waker.access_line(line) == ("kb", 1795687201.5)
    for bad in ["", "nginx: starting", "{", '{"host": "kb"}', '{"time": "x", "host": "kb"}', "[1]"]:
        assert waker.access_line(bad) is None


@pytest.mark.parametrize("idle,connections,sleeps", [(900, 0, True), (1000, 0, True), (899.9, 0, False),
                                                     (1000, 1, False), (0, 0, False)])
def test_should_sleep(idle, connections, sleeps):
    assert waker.should_sleep(10_000.0, 10_000.0 - idle, 900, connections) is sleeps


def test_forwardable_drops_hop_by_hop_and_keeps_host_and_forwarded():
    headers = [(b"Host", b"kb.example.com"), (b"Connection", b"keep-alive, X-Secret-Hop"), (b"Keep-Alive", b"5"),
               (b"Transfer-Encoding", b"chunked"), (b"TE", b"trailers"), (b"Upgrade", b"h2c"),
               (b"Content-Length", b"3"), (b"x-secret-hop", b"1"), (b"X-Forwarded-For", b"1.2.3.4"),
               (b"X-Forwarded-Proto", b"https"), (b"Proxy-Authorization", b"x"), (b"Cookie", b"a=1")]
    assert waker.forwardable(headers) == [(b"Host", b"kb.example.com"), (b"X-Forwarded-For", b"1.2.3.4"),
                                          (b"X-Forwarded-Proto", b"https"), (b"Cookie", b"a=1")]


def frame(stream: int, text: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(text)) + text


def test_demux_logs():
    assert waker.demux_logs(frame(1, b"out 1\n") + frame(2, b"err \xff\n")) == "out 1\nerr \ufffd\n"
    assert waker.demux_logs(b"tty line\n") == "tty line\n"


def test_wants_page():
    assert waker.wants_page("GET", [(b"Accept", b"text/html,application/xhtml+xml")])
    assert not waker.wants_page("POST", [(b"accept", b"text/html")])
    assert not waker.wants_page("GET", [(b"accept", b"application/json")])


def listed(running: bool, label: str = "1s", ip: str = "10.9.0.7") -> dict:
    return {"Id": CID, "State": "running" if running else "exited",
            "Labels": {waker.SLEEP_LABEL: label, waker.SERVICE_LABEL: "kb"},
            "NetworkSettings": {"Networks": {"other": {"IPAddress": "10.1.1.1"},
                                             "p_app-network": {"IPAddress": ip if running else ""}}}}


def test_container_app():
    assert waker.container_app(listed(True)) == ("kb", CID, 1.0, True, "10.9.0.7")
    assert waker.container_app(listed(False, "15m")) == ("kb", CID, 900.0, False, "")
    assert waker.container_app(listed(True, "soon")) is None


def test_settings_from_env():
    s = waker.Settings.from_env({"WAKE_TIMEOUT": "2m", "SLEEP_CHECK_EVERY": "1", "APP_PORT": "9000",
                                 "ONEVPS_STATE_DIR": "/x", "ONEVPS_PROJECT": "p"})
    assert (s.wake_timeout, s.sleep_check_every, s.app_port, s.state_dir, s.project) == (120, 1, 9000, Path("/x"), "p")
    assert waker.Settings.from_env({}).proxy_socket == "/run/onevps-docker/docker.sock"
    with pytest.raises(ValueError, match="WAKE_TIMEOUT"):
        waker.Settings.from_env({"WAKE_TIMEOUT": "soon"})


def log_line(host: str, when: str) -> str:
    return json.dumps({"time": when, "host": host, "method": "GET", "uri": "/", "status": 200}) + "\n"


def test_access_log_is_read_incrementally_and_truncated(tmp_path, monkeypatch):
    path, said = tmp_path / "access.log", []
    log = waker.AccessLog(path, said.append)
    assert log.read() == {}
    path.write_text(log_line("kb.x", "2026-01-01T00:00:01+00:00") + log_line("kb.x", "2026-01-01T00:00:03+00:00")
                    + log_line("ml.x", "2026-01-01T00:00:02+00:00") + '{"time": "2026-01-01T00:00:09')
    assert log.read() == {"kb": 1767225603.0, "ml": 1767225602.0}
    with path.open("a") as f:
        f.write('+00:00", "host": "kb.x"}\n')
    assert log.read() == {"kb": 1767225609.0}, "the half-written line is read once complete"
    assert log.read() == {}
    monkeypatch.setattr(waker, "LOG_MAX", 10)
    with path.open("a") as f:
        f.write(log_line("ml.x", "2026-01-01T00:00:10+00:00"))
    assert log.read() == {"ml": 1767225610.0}
    assert path.stat().st_size == 0 and log.offset == 0
    path.write_text(log_line("kb.x", "2026-01-01T00:00:11+00:00"))
    assert log.read() == {"kb": 1767225611.0}


# --- end to end: a fake Docker API (unix socket) and a fake app (127.0.0.1) ---

class Fake:
    """One sleep-enabled app "kb": its container as the Docker API shows it, and the app itself."""

    def __init__(self, flag: Path, running: bool = False, healthy: bool = True) -> None:
        self.flag, self.running, self.healthy = flag, running, healthy
        self.calls: list[str] = []
        self.flag_at_stop: list[bool] = []
        self.ready_at = 0.0 if running else float("inf")
        self.start_delay, self.stop_delay = 0.3, 0.0
        self.activity = {"connections": 0, "idle": 1000.0, "requests": 7}
        self.activity_asked = 0
        self.on_second_activity = None

    async def docker(self, scope, receive, send):
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/containers/json":
            return await waker.respond(send, 200, json.dumps([listed(self.running)]).encode())
        self.calls.append(f"{method} {path}")
        if path.endswith("/start"):
            self.running, self.ready_at = True, time.monotonic() + self.start_delay
        elif path.endswith("/stop"):
            self.flag_at_stop.append(self.flag.exists())
            await asyncio.sleep(self.stop_delay)
            self.running, self.ready_at = False, float("inf")
        elif path.endswith("/logs"):
            body = frame(1, b"fake app: starting\n") + frame(2, b"fake app: cannot import main\n")
            return await waker.respond(send, 200, body)
        elif path.endswith("/json"):
            return await waker.respond(send, 200, listed(self.running))
        await waker.respond(send, 204, b"")

    async def app(self, scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            up = self.running and self.healthy and time.monotonic() >= self.ready_at
            return await waker.respond(send, 200 if up else 503, b"")
        if scope["path"] == "/activity":
            self.activity_asked += 1
            if self.activity_asked == 2 and self.on_second_activity:
                self.on_second_activity(self)
            return await waker.respond(send, 200, dict(self.activity))
        if not self.running:  # a request forwarded before the wake
            return await waker.respond(send, 500, {"message": "asleep"})
        body = await waker.read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        await waker.respond(send, 200, {"method": scope["method"], "path": scope["path"],
                                        "query": scope["query_string"].decode(),
                                        "sha256": hashlib.sha256(body).hexdigest(), "host": headers.get("host"),
                                        "xff": headers.get("x-forwarded-for"), "hop": headers.get("x-hop")})


@contextmanager
def served(app, **config):
    """app under uvicorn in a thread; yields the server (started)."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", interface="asgi3", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    until(lambda: server.started)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(DEADLINE)


def until(condition, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def port_of(server) -> int:
    return server.servers[0].sockets[0].getsockname()[1]


@pytest.fixture
def world():
    """A fake Docker API on a unix socket, a fake app, a state dir; yields (fake, settings, said)."""
    base = Path(tempfile.mkdtemp(prefix="h15wk"))  # short: a unix socket path has 107 bytes at most
    (base / "state" / "asleep").mkdir(parents=True)
    fake = Fake(base / "state" / "asleep" / "kb")
    with served(fake.docker, uds=str(base / "docker.sock")), served(fake.app, host="127.0.0.1", port=0) as app:
        settings = waker.Settings(proxy_socket=str(base / "docker.sock"), state_dir=base / "state", wake_timeout=20,
                                  sleep_check_every=3600, app_port=port_of(app), activity_port=port_of(app),
                                  app_host="127.0.0.1")
        yield fake, settings, []
    shutil.rmtree(base)


async def fifty_first_requests(url: str) -> list[tuple[bytes, httpx.Response]]:
    headers = {"X-Onevps-App": "kb", "Host": "kb.example.com", "X-Forwarded-For": "203.0.113.9",
               "Connection": "keep-alive, X-Hop", "X-Hop": "secret-hop"}
    async with httpx.AsyncClient(base_url=url, timeout=DEADLINE, limits=httpx.Limits(max_connections=60)) as client:
        async def one(i: int):
            body = os.urandom(i * 4099) if i % 2 else b""
            method = "POST" if i % 2 else "GET"
            return body, await client.request(method, f"/items/{i}?q={i}", content=body or None, headers=headers)
        return await asyncio.gather(*(one(i) for i in range(50)))


def test_fifty_first_requests_start_it_once_and_all_are_answered_intact(world):
    fake, settings, said = world
    fake.flag.touch()
    w = waker.Waker(settings, said.append)
    with served(w, host="127.0.0.1", port=0) as server:
        answers = asyncio.run(fifty_first_requests(f"http://127.0.0.1:{port_of(server)}"))
        state = httpx.get(f"http://127.0.0.1:{port_of(server)}/_onevps/state").json()
    assert [c for c in fake.calls if c.endswith("/start")] == [f"POST /containers/{CID}/start"]
    for i, (body, r) in enumerate(answers):
        assert r.status_code == 200, r.text
        got = r.json()
        assert got == {"method": "POST" if i % 2 else "GET", "path": f"/items/{i}", "query": f"q={i}",
                       "sha256": hashlib.sha256(body).hexdigest(), "host": "kb.example.com",
                       "xff": "203.0.113.9", "hop": None}
    assert not fake.flag.exists()
    woke = [line for line in said if line.startswith("woke kb in ")]
    assert len(woke) == 1 and woke[0].endswith(" requests held)"), said
    assert state["apps"]["kb"]["state"] == "awake" and state["apps"]["kb"]["wakes"] == 1


def test_an_awake_app_is_forwarded_to_and_an_unknown_one_is_404(world):
    fake, settings, said = world
    fake.running, fake.ready_at = True, 0.0
    w = waker.Waker(settings, said.append)
    with served(w, host="127.0.0.1", port=0) as server:
        url = f"http://127.0.0.1:{port_of(server)}/x"
        ok = httpx.post(url, content=b"abc", headers={"X-Onevps-App": "kb"})
        unknown = httpx.get(url, headers={"X-Onevps-App": "nope"})
    assert ok.status_code == 200 and ok.json()["sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert unknown.status_code == 404 and "nope" in unknown.json()["message"]
    assert not [c for c in fake.calls if c.endswith("/start")]


def test_a_wake_that_never_gets_healthy_is_503_and_the_app_logs_are_printed(world):
    fake, settings, said = world
    fake.healthy = False
    fake.flag.touch()
    settings.wake_timeout = 0.5
    w = waker.Waker(settings, said.append)
    with served(w, host="127.0.0.1", port=0) as server:
        r = httpx.post(f"http://127.0.0.1:{port_of(server)}/x", content=b"body", headers={"X-Onevps-App": "kb"},
                       timeout=DEADLINE)
        until(lambda: any(c.endswith("/stop") for c in fake.calls))
    assert r.status_code == 503 and r.headers["retry-after"]
    assert "body" not in r.text and "cannot import" not in r.text
    assert "kb did not wake in 0.5 s; its last 50 log lines:" in said
    assert "kb | fake app: cannot import main" in said and "kb | fake app: starting" in said
    assert fake.flag.exists(), "it sleeps again: the next request wakes it anew"


def test_a_browser_gets_the_waking_page_when_the_wake_is_slow(world, monkeypatch):
    fake, settings, said = world
    fake.flag.touch()
    fake.start_delay = 0.5  # the wake is slower than the browser waits
    monkeypatch.setattr(waker, "BROWSER_WAIT", 0.05)
    w = waker.Waker(settings, said.append)
    with served(w, host="127.0.0.1", port=0) as server:
        url = f"http://127.0.0.1:{port_of(server)}/"
        page = httpx.get(url, headers={"X-Onevps-App": "kb", "Accept": "text/html"})
        until(lambda: not fake.flag.exists())
        after = httpx.get(url, headers={"X-Onevps-App": "kb", "Accept": "text/html"})
    assert page.status_code == 503 and b"http-equiv=refresh" in page.content
    assert after.status_code == 200 and after.json()["path"] == "/"


async def sleep_round(w) -> None:
    await asyncio.gather(*await w.check_sleep())


def test_an_idle_app_with_no_connection_is_put_to_sleep_flag_first(world):
    fake, settings, said = world
    fake.running, fake.ready_at = True, 0.0
    w = waker.Waker(settings, said.append)
    asyncio.run(sleep_round(w))
    assert fake.calls == [f"POST /containers/{CID}/stop"] and fake.flag_at_stop == [True]
    assert fake.flag.exists() and w.apps["kb"].state == "sleeping"
    assert any(line.startswith("kb asleep after ") and line.endswith(" s idle") for line in said), said


@pytest.mark.parametrize("busy", [{"connections": 1}, {"idle": 0.2}, None])
def test_an_app_with_an_open_connection_a_recent_request_or_no_activity_answer_stays_awake(world, busy):
    fake, settings, said = world
    fake.running, fake.ready_at = True, 0.0
    if busy is None:  # an app not served by onevps_serve: what answers there is no activity answer
        fake.activity = {"status": "ok"}
    fake.activity.update(busy or {})
    w = waker.Waker(settings, said.append)
    asyncio.run(sleep_round(w))
    assert fake.calls == [] and not fake.flag.exists() and w.apps["kb"].state == "awake"


def test_no_app_sleeps_while_an_app_is_still_starting(world, monkeypatch):
    """`inv up` or a deploy under way (an app's Docker health still "starting"): sleeping waits."""
    fake, settings, said = world
    fake.running, fake.ready_at = True, 0.0
    w = waker.Waker(settings, said.append)
    other = {"Id": "f" * 64, "State": "running", "Status": "Up 2 seconds (health: starting)",
             "Labels": {waker.SERVICE_LABEL: "blog"}}

    async def apps() -> list[dict]:
        return [listed(fake.running), other]

    monkeypatch.setattr(w.docker, "apps", apps)
    asyncio.run(sleep_round(w))
    assert fake.calls == [] and not fake.flag.exists() and w.starting == ["f" * 12]
    other["Status"] = "Up 9 seconds (healthy)"
    asyncio.run(sleep_round(w))
    assert fake.calls == [f"POST /containers/{CID}/stop"]


def test_a_request_between_the_flag_and_the_stop_keeps_it_awake(world):
    fake, settings, said = world
    fake.running, fake.ready_at = True, 0.0
    fake.on_second_activity = lambda f: f.activity.update(requests=8)
    w = waker.Waker(settings, said.append)
    asyncio.run(sleep_round(w))
    assert fake.activity_asked == 2 and fake.calls == [] and not fake.flag.exists()
    assert w.apps["kb"].state == "awake"


def test_a_request_during_the_stop_waits_and_wakes_it_again(world):
    fake, settings, said = world
    fake.running, fake.ready_at, fake.stop_delay = True, 0.0, 0.5
    w = waker.Waker(settings, said.append)

    async def scenario():
        sleeping = await w.check_sleep()
        while not fake.calls:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=w), timeout=DEADLINE) as client:
            r = await client.post("http://kb.example.com/late", content=b"late body", headers={"X-Onevps-App": "kb"})
        await asyncio.gather(*sleeping)
        return r

    r = asyncio.run(scenario())
    assert r.status_code == 200 and r.json()["sha256"] == hashlib.sha256(b"late body").hexdigest()
    assert fake.calls == [f"POST /containers/{CID}/stop", f"POST /containers/{CID}/start"]
    assert not fake.flag.exists() and w.apps["kb"].state == "awake"


def test_reconcile_removes_the_flag_of_a_running_app_and_leaves_a_stopped_one(world):
    fake, settings, said = world
    fake.running = True
    fake.flag.touch()
    w = waker.Waker(settings, said.append)
    asyncio.run(w.refresh())
    assert not fake.flag.exists() and w.apps["kb"].state == "awake"
    fake.running = False
    asyncio.run(w.refresh())
    assert not fake.flag.exists() and w.apps["kb"].state == "stopped" and fake.calls == []
