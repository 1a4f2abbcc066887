"""Fakes for the waker's tests (test_waker, test_waker_http): the waker's modules
loaded from dockerfiles/waker, a fake Docker API on a unix socket and a fake app on
127.0.0.1 (both under uvicorn), and the waker's own server in a thread."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import shutil
import struct
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import uvicorn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "dockerfiles" / "waker"))  # the waker imports its modules from beside it
waker = importlib.import_module("onevps_waker")
parts = importlib.import_module("onevps_waker_parts")
wh = importlib.import_module("onevps_waker_http")

CID = "c0ffee" * 10 + "abcd"
DEADLINE = 120.0  # seconds a condition may take on a busy machine before the test fails


def frame(stream: int, text: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(text)) + text


def listed(running: bool, label: str = "1s", ip: str = "10.9.0.7") -> dict:
    return {"Id": CID, "State": "running" if running else "exited",
            "Labels": {parts.SLEEP_LABEL: label, parts.SERVICE_LABEL: "kb"},
            "NetworkSettings": {"Networks": {"other": {"IPAddress": "10.1.1.1"},
                                             "p_app-network": {"IPAddress": ip if running else ""}}}}


async def asgi_respond(send, status: int, body: bytes | dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A whole ASGI answer (JSON for a dict), for the fakes."""
    if isinstance(body, dict):
        body, headers = json.dumps(body).encode(), [(b"content-type", b"application/json"), *headers]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def asgi_body(receive) -> bytes | None:
    """The whole body; None when the connection ended before it (as Starlette's ClientDisconnect)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


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
        self.answered: list[str] = []  # paths of the requests answered whole (their body complete)
        self.cut: list[str] = []  # paths of the requests whose connection ended inside the body

    async def docker(self, scope, receive, send):
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/containers/json":
            return await asgi_respond(send, 200, json.dumps([listed(self.running)]).encode())
        self.calls.append(f"{method} {path}")
        if path.endswith("/start"):
            self.running, self.ready_at = True, time.monotonic() + self.start_delay
        elif path.endswith("/stop"):
            self.flag_at_stop.append(self.flag.exists())
            await asyncio.sleep(self.stop_delay)
            self.running, self.ready_at = False, float("inf")
        elif path.endswith("/logs"):
            body = frame(1, b"fake app: starting\n") + frame(2, b"fake app: cannot import main\n")
            return await asgi_respond(send, 200, body)
        elif path.endswith("/json"):
            return await asgi_respond(send, 200, listed(self.running))
        await asgi_respond(send, 204, b"")

    async def app(self, scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            up = self.running and self.healthy and time.monotonic() >= self.ready_at
            return await asgi_respond(send, 200 if up else 503, b"")
        if scope["path"] == "/activity":
            self.activity_asked += 1
            if self.activity_asked == 2 and self.on_second_activity:
                self.on_second_activity(self)
            return await asgi_respond(send, 200, dict(self.activity))
        if scope["path"] in ("/hang", "/stall"):  # no head / a head and one part, then nothing until the waker hangs up
            if scope["path"] == "/stall":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"one,", "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if scope["path"] == "/stream":  # no Content-Length: uvicorn sends it chunked
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"kb")]})
            for part in (b"one,", b"two,", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            return await send({"type": "http.response.body", "body": b""})
        if not self.running:  # a request forwarded before the wake
            return await asgi_respond(send, 500, {"message": "asleep"})
        body = await asgi_body(receive)
        if body is None:
            self.cut.append(scope["path"])
            return
        self.answered.append(scope["path"])
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        await asgi_respond(send, 200, {"method": scope["method"], "path": scope["path"],
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


@contextmanager
def waker_served(w):
    """The waker's own server (onevps_waker_http.serve) on 127.0.0.1 in a thread, with its
    settings' clients and connection bound; yields its URL."""
    ready, port = threading.Event(), []

    async def main() -> None:
        stop = asyncio.Event()
        server = await wh.serve(w.handle, "127.0.0.1", 0, w.s.clients, w.s.max_connections)
        port.append((server.sockets[0].getsockname()[1], asyncio.get_running_loop(), stop))
        ready.set()
        await stop.wait()
        server.close()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(DEADLINE)
    number, loop, stop = port[0]
    try:
        yield f"http://127.0.0.1:{number}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(DEADLINE)


@contextmanager
def fake_world():
    """A fake Docker API on a unix socket, a fake app, a state dir; yields (fake, settings, said)."""
    base = Path(tempfile.mkdtemp(prefix="h15wk"))  # short: a unix socket path has 107 bytes at most
    (base / "state" / "asleep").mkdir(parents=True)
    fake = Fake(base / "state" / "asleep" / "kb")
    with served(fake.docker, uds=str(base / "docker.sock")), served(fake.app, host="127.0.0.1", port=0) as app:
        settings = parts.Settings(proxy_socket=str(base / "docker.sock"), state_dir=base / "state", wake_timeout=20,
                                  sleep_check_every=3600, app_port=port_of(app), activity_port=port_of(app),
                                  app_host="127.0.0.1")
        yield fake, settings, []
    shutil.rmtree(base)
