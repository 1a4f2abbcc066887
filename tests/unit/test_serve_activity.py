"""onevps_serve's activity port (dockerfiles/base/onevps_serve.py): a plain ASGI app
served by `python -m onevps_serve` in a subprocess on 127.0.0.1, random ports."""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 30.0  # seconds a condition may take on a busy machine before the test fails
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
    end = time.monotonic() + deadline
    while True:
        got = condition()
        if got:
            return got
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def activity(port: int) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/activity", timeout=5).json()
    except httpx.HTTPError:
        return None


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
    first = activity(act)
    assert first["connections"] == 0 and first["requests"] == 0
    later = until(lambda: (a := activity(act))["idle"] > first["idle"] and a)
    assert later["requests"] == 0
    slow = threading.Thread(target=httpx.get, args=(f"http://127.0.0.1:{port}/slow",), kwargs={"timeout": DEADLINE})
    slow.start()
    busy = until(lambda: (a := activity(act))["connections"] == 1 and a)
    assert busy == {"connections": 1, "idle": 0.0, "requests": 1}
    release.touch()
    slow.join()
    done = until(lambda: (a := activity(act))["connections"] == 0 and a)
    assert done["requests"] == 1
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    assert until(lambda: activity(act)["connections"] == 0 and activity(act))["requests"] == 1, "/health is no activity"
    assert httpx.get(f"http://127.0.0.1:{act}/other").status_code == 404


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
