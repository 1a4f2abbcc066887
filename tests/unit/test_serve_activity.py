"""onevps_serve's activity port (dockerfiles/base/onevps_serve.py): a plain ASGI app
served by `python -m onevps_serve` in a subprocess on 127.0.0.1, random ports."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from . import rawhttp

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 120.0  # seconds a condition may take on a busy machine before the test fails
TINY_APP = '''
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":  # answers once the test creates the file
        while not os.path.exists(os.environ["RELEASE"]):
            await asyncio.sleep(0.02)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(condition, deadline: float = DEADLINE):
    """condition()'s first true value, asked every 20 ms; fails after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        got = condition()
        if got:
            return got
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def activity(port: int) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/activity", timeout=DEADLINE).json()
    except httpx.HTTPError:
        return None


def activity_when(port: int, wanted) -> dict:
    """The first activity answer for which wanted(answer) holds (an answer that failed is asked again)."""
    return until(lambda: (a := activity(port)) is not None and wanted(a) and a)


@pytest.fixture
def served(tmp_path):
    """(app port, activity port, release file, process) of the tiny app under onevps_serve."""
    (tmp_path / "tiny.py").write_text(TINY_APP)
    port, act = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'dockerfiles' / 'base'}{os.pathsep}{tmp_path}",
           "ONEVPS_ACTIVITY_HOST": "127.0.0.1", "ONEVPS_ACTIVITY_PORT": str(act), "RELEASE": str(tmp_path / "go")}
    proc = subprocess.Popen([sys.executable, "-m", "onevps_serve", "tiny:app", "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "warning"], env=env, cwd=tmp_path)
    try:
        until(lambda: activity(act))
        yield port, act, tmp_path / "go", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_activity_counts_an_open_request_and_idle_grows(served):
    port, act, release, _ = served
    first = activity_when(act, lambda a: True)
    assert first["connections"] == 0 and first["requests"] == 0
    later = activity_when(act, lambda a: a["idle"] > first["idle"])
    assert later["requests"] == 0
    slow = threading.Thread(target=httpx.get, args=(f"http://127.0.0.1:{port}/slow",), kwargs={"timeout": DEADLINE})
    slow.start()
    # The connection is counted once accepted, the request once uvicorn has parsed it: wait for the
    # request (what the assertion needs); the connection is open then, the request in flight.
    busy = activity_when(act, lambda a: a["requests"] == 1)
    assert busy == {"connections": 1, "idle": 0.0, "requests": 1}
    release.touch()
    slow.join()
    done = activity_when(act, lambda a: a["connections"] == 0)
    assert done["requests"] == 1
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=DEADLINE).status_code == 200  # counted or not by now
    assert activity_when(act, lambda a: a["connections"] == 0)["requests"] == 1, "/health is no activity"
    assert httpx.get(f"http://127.0.0.1:{act}/other", timeout=DEADLINE).status_code == 404


BIG = 768 * 1024  # more than TCP takes in unread, less than LINGER_BYTES: still being sent when the answer comes


def test_a_request_with_a_body_gets_its_answer_every_time(served):
    """The activity port answers from the head alone; its lingering close reads the body and drops
    it, so even a strict client (plain http.client raises when a send fails) sends it whole and
    reads the 404. Without it: a reset."""
    _, act, _, _ = served
    for _ in range(50):
        conn = http.client.HTTPConnection("127.0.0.1", act, timeout=DEADLINE)
        try:
            conn.request("POST", "/activity", body=b"x" * BIG)
            res = conn.getresponse()
            assert (res.status, json.loads(res.read())) == (404, {"message": "only GET /activity here"})
        finally:
            conn.close()


def test_a_client_that_sends_on_and_on_is_cut_off(served):
    """The lingering read is bounded (1 MiB, 2 s): the port closes, the client's send fails, and
    the 404 still waits in its socket."""
    _, act, _, _ = served
    chunk, sent, cap = b"x" * 65536, 0, 64 << 20  # cap: a failure bound, never reached when it works
    with socket.create_connection(("127.0.0.1", act), timeout=DEADLINE) as sock:
        assert rawhttp.send(sock, b"POST /activity HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
        while sent < cap and rawhttp.send(sock, chunk):
            sent += len(chunk)
        answer = rawhttp.read_until_closed(sock)
    assert sent < cap, "the activity port never closed"
    assert rawhttp.status_of(answer) == 404

def test_the_activity_port_closes_with_the_server(served):
    port, act, _, proc = served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(DEADLINE) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{act}/activity")


def test_an_activity_port_in_use_leaves_the_app_serving(tmp_path):
    (tmp_path / "tiny.py").write_text(TINY_APP)
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        act = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'dockerfiles' / 'base'}{os.pathsep}{tmp_path}",
               "ONEVPS_ACTIVITY_HOST": "127.0.0.1", "ONEVPS_ACTIVITY_PORT": str(act)}
        proc = subprocess.Popen([sys.executable, "-m", "onevps_serve", "tiny:app", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        try:
            until(lambda: _answers(f"http://127.0.0.1:{port}/"))
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode in (0, -signal.SIGTERM)
    assert f"activity port 127.0.0.1:{act}" in err


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
