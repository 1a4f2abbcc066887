"""The waker (dockerfiles/waker/onevps_waker*.py): its pure parts, then end to end in
process (its own asyncio HTTP server) against a fake Docker API on a unix socket and a
fake app on 127.0.0.1, both under uvicorn (tests/unit/waker_fakes.py); its HTTP/1.1
handling on raw sockets is test_waker_http's."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from onevps import sleep

from .waker_fakes import CID, DEADLINE, fake_world, frame, listed, parts, until, waker, waker_served, wh


# --- pure parts ---------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [("15m", 900), ("90s", 90), ("2h", 7200), ("1d", 86400), ("45", 45),
                                          (" 1.5S ", 1.5)])
def test_parse_duration(text, seconds):
    assert parts.parse_duration(text) == seconds


def test_the_waker_reads_every_duration_onevps_writes():
    for seconds in (1, 59, 90, 900, 3600, 5400, 86400, 30 * 86400):
        assert parts.parse_duration(sleep.duration_text(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "m", "15 m", "1w", "-5", "abc", "15mm"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parts.parse_duration(text)


def test_access_line():
    line = json.dumps({"time": "2026-11-26T10:00:01.500+00:00", "host": "KB.example.com", "method": "GET",
                       "uri": "/", "status": 200, "request_time": 0.01})
    assert parts.access_line(line) == ("kb", 1795687201.5)
    for bad in ["", "nginx: starting", "{", '{"host": "kb"}', '{"time": "x", "host": "kb"}', "[1]"]:
        assert parts.access_line(bad) is None


@pytest.mark.parametrize("idle,connections,sleeps", [(900, 0, True), (1000, 0, True), (899.9, 0, False),
                                                     (1000, 1, False), (0, 0, False)])
def test_should_sleep(idle, connections, sleeps):
    assert parts.should_sleep(10_000.0, 10_000.0 - idle, 900, connections) is sleeps


def test_forwardable_drops_hop_by_hop_and_keeps_host_and_forwarded():
    headers = [(b"Host", b"kb.example.com"), (b"Connection", b"keep-alive, X-Secret-Hop"), (b"Keep-Alive", b"5"),
               (b"Transfer-Encoding", b"chunked"), (b"TE", b"trailers"), (b"Upgrade", b"h2c"),
               (b"Content-Length", b"3"), (b"x-secret-hop", b"1"), (b"X-Forwarded-For", b"1.2.3.4"),
               (b"X-Forwarded-Proto", b"https"), (b"Proxy-Authorization", b"x"), (b"Cookie", b"a=1")]
    assert parts.forwardable(headers) == [(b"Host", b"kb.example.com"), (b"X-Forwarded-For", b"1.2.3.4"),
                                          (b"X-Forwarded-Proto", b"https"), (b"Cookie", b"a=1")]



def test_demux_logs():
    assert parts.demux_logs(frame(1, b"out 1\n") + frame(2, b"err \xff\n")) == "out 1\nerr \ufffd\n"
    assert parts.demux_logs(b"tty line\n") == "tty line\n"


def test_wants_page():
    assert parts.wants_page("GET", [(b"Accept", b"text/html,application/xhtml+xml")])
    assert not parts.wants_page("POST", [(b"accept", b"text/html")])
    assert not parts.wants_page("GET", [(b"accept", b"application/json")])



def test_container_app():
    assert parts.container_app(listed(True)) == ("kb", CID, 1.0, True, "10.9.0.7")
    assert parts.container_app(listed(False, "15m")) == ("kb", CID, 900.0, False, "")
    assert parts.container_app(listed(True, "soon")) is None


def test_settings_from_env():
    s = parts.Settings.from_env({"WAKE_TIMEOUT": "2m", "SLEEP_CHECK_EVERY": "1", "APP_PORT": "9000",
                                 "ONEVPS_STATE_DIR": "/x", "ONEVPS_PROJECT": "p"})
    assert (s.wake_timeout, s.sleep_check_every, s.app_port, s.state_dir, s.project) == (120, 1, 9000, Path("/x"), "p")
    assert parts.Settings.from_env({}).proxy_socket == "/run/onevps-docker/docker.sock"
    with pytest.raises(ValueError, match="WAKE_TIMEOUT"):
        parts.Settings.from_env({"WAKE_TIMEOUT": "soon"})
    bounded = parts.Settings.from_env({"WAKER_CLIENTS": "172.20.0.2, 10.0.0.2", "WAKER_MAX_CONNECTIONS": "7",
                                       "WAKER_MAX_HELD": "3"})
    assert (bounded.clients, bounded.max_connections, bounded.max_held) == (
        {"127.0.0.1", "172.20.0.2", "10.0.0.2"}, 7, 3)
    assert parts.Settings.from_env({}).clients == {"127.0.0.1"}  # no one else unless named
    for key in ("WAKER_MAX_CONNECTIONS", "WAKER_MAX_HELD"):
        for bad in ("0", "-1", "many"):
            with pytest.raises(ValueError, match=key):
                parts.Settings.from_env({key: bad})


def log_line(host: str, when: str) -> str:
    return json.dumps({"time": when, "host": host, "method": "GET", "uri": "/", "status": 200}) + "\n"


def test_access_log_is_read_incrementally_and_truncated(tmp_path, monkeypatch):
    path, said = tmp_path / "access.log", []
    log = parts.AccessLog(path, said.append)
    assert log.read() == {}
    path.write_text(log_line("kb.x", "2026-01-01T00:00:01+00:00") + log_line("kb.x", "2026-01-01T00:00:03+00:00")
                    + log_line("ml.x", "2026-01-01T00:00:02+00:00") + '{"time": "2026-01-01T00:00:09')
    assert log.read() == {"kb": 1767225603.0, "ml": 1767225602.0}
    with path.open("a") as f:
        f.write('+00:00", "host": "kb.x"}\n')
    assert log.read() == {"kb": 1767225609.0}, "the half-written line is read once complete"
    assert log.read() == {}
    monkeypatch.setattr(parts, "LOG_MAX", 10)
    with path.open("a") as f:
        f.write(log_line("ml.x", "2026-01-01T00:00:10+00:00"))
    assert log.read() == {"ml": 1767225610.0}
    assert path.stat().st_size == 0 and log.offset == 0
    path.write_text(log_line("kb.x", "2026-01-01T00:00:11+00:00"))
    assert log.read() == {"kb": 1767225611.0}


# --- end to end: a fake Docker API (unix socket) and a fake app (127.0.0.1) ---

@pytest.fixture
def world():
    """(fake, settings, said): see waker_fakes.fake_world."""
    with fake_world() as made:
        yield made


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
    with waker_served(w) as url:
        answers = asyncio.run(fifty_first_requests(url))
        state = httpx.get(f"{url}/_onevps/state", timeout=DEADLINE).json()
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
    with waker_served(w) as base:
        url = f"{base}/x"
        ok = httpx.post(url, content=b"abc", headers={"X-Onevps-App": "kb"}, timeout=DEADLINE)
        unknown = httpx.get(url, headers={"X-Onevps-App": "nope"}, timeout=DEADLINE)
    assert ok.status_code == 200 and ok.json()["sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert unknown.status_code == 404 and "nope" in unknown.json()["message"]
    assert not [c for c in fake.calls if c.endswith("/start")]


def test_a_wake_that_never_gets_healthy_is_503_and_the_app_logs_are_printed(world):
    fake, settings, said = world
    fake.healthy = False
    fake.flag.touch()
    settings.wake_timeout = 0.5
    w = waker.Waker(settings, said.append)
    with waker_served(w) as url:
        r = httpx.post(f"{url}/x", content=b"body", headers={"X-Onevps-App": "kb"},
                       timeout=DEADLINE)
        until(lambda: any(c.endswith("/stop") for c in fake.calls))
    assert r.status_code == 503 and r.headers["retry-after"]
    assert "body" not in r.text and "cannot import" not in r.text
    assert "kb did not wake in 0.5 s; its last 50 log lines:" in said
    assert "kb | fake app: cannot import main" in said and "kb | fake app: starting" in said
    assert fake.flag.exists(), "it sleeps again: the next request wakes it anew"


def test_a_wake_ends_at_wake_timeout_even_when_a_cancellation_is_lost(world):
    """Python 3.11's wait_for can swallow the cancellation a timeout sends (when the awaited call
    completes as it arrives). A health probe that swallows every cancellation stands for it: the
    wake still ends at WAKE_TIMEOUT with a 503, instead of holding the request for ever."""
    fake, settings, said = world
    fake.healthy = False
    fake.flag.touch()
    settings.wake_timeout = 0.5
    w = waker.Waker(settings, said.append)

    async def swallowing_probe(app):
        try:
            await asyncio.sleep(1.0)  # longer than WAKE_TIMEOUT: the timeout's cancellation lands here
        except asyncio.CancelledError:
            pass  # and is lost
        return False

    w.healthy = swallowing_probe
    with waker_served(w) as url:
        r = httpx.post(f"{url}/x", content=b"body", headers={"X-Onevps-App": "kb"}, timeout=DEADLINE)
    assert r.status_code == 503 and r.headers["retry-after"]
    assert "kb did not wake in 0.5 s; its last 50 log lines:" in said


def test_a_browser_gets_the_waking_page_when_the_wake_is_slow(world, monkeypatch):
    fake, settings, said = world
    fake.flag.touch()
    fake.start_delay = 0.5  # the wake is slower than the browser waits
    monkeypatch.setattr(waker, "BROWSER_WAIT", 0.05)
    w = waker.Waker(settings, said.append)
    with waker_served(w) as base:
        url = f"{base}/"
        page = httpx.get(url, headers={"X-Onevps-App": "kb", "Accept": "text/html"}, timeout=DEADLINE)
        until(lambda: not fake.flag.exists())
        after = httpx.get(url, headers={"X-Onevps-App": "kb", "Accept": "text/html"}, timeout=DEADLINE)
    assert page.status_code == 503 and b"http-equiv=refresh" in page.content
    assert after.status_code == 200 and after.json()["path"] == "/"


def test_a_held_request_whose_client_went_away_is_dropped(world):
    fake, settings, said = world
    fake.flag.touch()
    fake.start_delay = float("inf")  # healthy only once the test says so
    w = waker.Waker(settings, said.append)
    forwarded = []
    forward = w.forward
    w.forward = lambda app, request, writer: forwarded.append(request.path) or forward(app, request, writer)
    with waker_served(w) as base:
        with socket.create_connection((urlsplit(base).hostname, urlsplit(base).port), timeout=DEADLINE) as sock:
            sock.sendall(b"POST /gone HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: kb\r\nContent-Length: 2\r\n\r\nab")
            until(lambda: f"POST /containers/{CID}/start" in fake.calls)
        until(lambda: "a client went away while kb woke: its request dropped" in said)
        fake.ready_at = 0.0
        after = httpx.post(f"{base}/after", content=b"cd", headers={"X-Onevps-App": "kb"}, timeout=DEADLINE)
    assert after.status_code == 200 and after.json()["path"] == "/after"
    assert forwarded == ["/after"], "the request of the client that went away never reached the app"


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
             "Labels": {parts.SERVICE_LABEL: "blog"}}

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
        async with asyncio.timeout(DEADLINE):
            while not fake.calls:
                await asyncio.sleep(0.01)
        server = await wh.serve(w.handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/late"
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            r = await client.post(url, content=b"late body", headers={"X-Onevps-App": "kb"})
        await asyncio.gather(*sleeping)
        server.close()
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
