"""uvicorn, with a shutdown that fails no request already on its way to it.

    python -m onevps_serve main:app --host 0.0.0.0 --port 8000 ...

takes every option of `uvicorn`; only its graceful shutdown (SIGTERM, as
`docker stop` sends) changes. uvicorn alone closes its listening socket with
connections still in the kernel (handshakes under way, connections queued),
which the kernel then resets, and it closes connections whose request it has
not read yet: in each case nginx has already sent the request, so it cannot
retry a POST elsewhere (a 502). Here:

1. the listening socket stops taking new connections: a socket filter drops
   every new SYN (a client sends it again a second later), while handshakes
   under way complete;
2. after a moment, the connections the kernel has queued are accepted and
   served;
3. the listening socket closes: from now on a new connection is refused,
   which nginx retries on the app's other server for every method (nothing
   was sent);
4. it waits (2 s at most) until every connection has brought its first
   request, so uvicorn closes none that carries one;
5. then uvicorn's own graceful shutdown: the requests in flight complete.

It also answers GET /activity on ONEVPS_ACTIVITY_HOST:ONEVPS_ACTIVITY_PORT
(0.0.0.0:8001; port 0: off) for the waker (dockerfiles/waker), as JSON:
{"connections": open HTTP connections, "idle": seconds since the last request
started or ended (0 while one is in flight), "requests": total}. Requests for
/health (the healthcheck, the waker's probes) are not activity. It answers
from a request's head alone, so its connection closes the lingering way
(`_linger`): a body sent along never turns the answer into a reset.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import json
import struct
import sys
import time
from functools import partial

from uvicorn import server as uvicorn_server
from uvicorn.main import main

HANDSHAKES = 0.05  # seconds for handshakes under way to complete once new SYNs are dropped
FIRST_REQUEST = 2.0  # seconds at most for the connections just taken to bring their request
SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>
# Classic BPF over the TCP header: drop a segment with SYN and without ACK (a new
# connection), pass every other one (handshakes under way, data, FIN, RST).
NO_NEW_CONNECTIONS = [
    (0x30, 0, 0, 13),          # ldb [13]: the TCP flags
    (0x45, 2, 0, 0x10),        # jset ACK: pass
    (0x45, 0, 1, 0x02),        # jset SYN: drop, else pass
    (0x06, 0, 0, 0),           # ret 0: drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret all: pass
]
_FILTER = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in NO_NEW_CONNECTIONS))
_uvicorn_shutdown = uvicorn_server.Server.shutdown
_uvicorn_startup = uvicorn_server.Server.startup
NOT_ACTIVITY = "/health"  # the healthcheck's and the waker's probes
ACTIVITY_READ = 2.0  # seconds at most for an activity request to arrive
LINGER_BYTES = 1 << 20  # what a lingering close reads and drops at most...
LINGER_SECONDS = 2.0  # ...and for how long


def _handles(srv: asyncio.base_events.Server) -> list[socket.socket]:
    """A second handle on each of srv's listening sockets (the caller closes them)."""
    handles = []
    for listening in srv.sockets or ():
        sock = socket.socket(fileno=os.dup(listening.fileno()))
        sock.setblocking(False)
        handles.append(sock)
    return handles


def _refuse_new(sock: socket.socket) -> None:
    """New SYNs are dropped from now on; connections under way and queued are not touched."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                        struct.pack("HL", len(NO_NEW_CONNECTIONS), ctypes.addressof(_FILTER)))
    except OSError:  # no socket filters here (not Linux): the queue is still drained below
        pass


def _accept_queued(loop: asyncio.AbstractEventLoop, srv: asyncio.base_events.Server, sock: socket.socket) -> None:
    """Accept what the kernel has queued on sock and serve it with srv's protocol."""
    while True:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        loop.create_task(loop.connect_accepted_socket(srv._protocol_factory, conn))


class Activity:
    """The app's requests as the activity port tells them: in flight, the last one's time, the total."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.total = 0
        self.last = time.monotonic()

    def wrap(self, app):
        """app, counting its HTTP and WebSocket requests (except /health)."""
        async def tracked(scope, receive, send):
            if scope["type"] not in ("http", "websocket") or scope.get("path") == NOT_ACTIVITY:
                return await app(scope, receive, send)
            self.in_flight += 1
            self.total += 1
            self.last = time.monotonic()
            try:
                return await app(scope, receive, send)
            finally:
                self.in_flight -= 1
                self.last = time.monotonic()
        return tracked

    def answer(self, state: object) -> dict:
        idle = 0.0 if self.in_flight else time.monotonic() - self.last
        return {"connections": len(getattr(state, "connections", ())), "idle": round(idle, 3),
                "requests": self.total}


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """nginx's lingering close after an answer sent with the request's body unread: closing with
    unread data sends a TCP reset, which can destroy the answer before the client read it. The
    write side is shut (the client reads the answer, then EOF), what the client still sends is
    read and dropped (LINGER_BYTES, LINGER_SECONDS at most) until it closes; the caller closes."""
    left = LINGER_BYTES
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_SECONDS):
            while left > 0 and (data := await reader.read(min(left, 65536))):
                left -= len(data)
    except OSError:  # a reset, or the time is up (TimeoutError is an OSError)
        pass


async def _answer_activity(activity: Activity, state: object,
                           reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One request on the activity port: GET /activity gets the JSON, anything else 404."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ACTIVITY_READ)
        found = head.split(b"\r\n", 1)[0].split(b" ")[:2] == [b"GET", b"/activity"]
        body = json.dumps(activity.answer(state) if found else {"message": "only GET /activity here"}).encode()
        status = b"200 OK" if found else b"404 Not Found"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        await _linger(reader, writer)  # only the head was read
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        writer.close()


def _activity_address() -> tuple[str, int]:
    """Where the activity port listens (ONEVPS_ACTIVITY_HOST, ONEVPS_ACTIVITY_PORT; port 0: off)."""
    port = os.environ.get("ONEVPS_ACTIVITY_PORT", "8001")
    return os.environ.get("ONEVPS_ACTIVITY_HOST", "0.0.0.0"), int(port) if port.isdigit() else 0


async def startup(self: uvicorn_server.Server, sockets: list[socket.socket] | None = None) -> None:
    host, port = _activity_address()
    activity = Activity()
    if port:
        self.config.loaded_app = activity.wrap(self.config.loaded_app)
    await _uvicorn_startup(self, sockets)
    if port and self.started:
        try:
            self.activity_server = await asyncio.start_server(
                partial(_answer_activity, activity, self.server_state), host, port)
        except OSError as exc:  # the app serves on; only the waker goes without its answers
            uvicorn_server.logger.warning("activity port %s:%d: %s", host, port, exc)


async def shutdown(self: uvicorn_server.Server, sockets: list[socket.socket] | None = None) -> None:
    loop = asyncio.get_running_loop()
    activity_server = getattr(self, "activity_server", None)
    if activity_server is not None:
        activity_server.close()
    handles = [(srv, sock) for srv in self.servers for sock in _handles(srv)]
    for _, sock in handles:
        _refuse_new(sock)
    await asyncio.sleep(HANDSHAKES)
    for srv, sock in handles:
        _accept_queued(loop, srv, sock)
        sock.close()
    for srv in self.servers:
        srv.close()
    deadline = loop.time() + FIRST_REQUEST
    while _waiting(self.server_state) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    await _uvicorn_shutdown(self, sockets)


def _waiting(state: object) -> int:
    """Connections that have not brought a request yet (uvicorn's shutdown would close them)."""
    return sum(1 for c in list(getattr(state, "connections", ()))
               if getattr(getattr(c, "conn", None), "their_http_version", "") is None)


uvicorn_server.Server.startup = startup  # type: ignore[method-assign]
uvicorn_server.Server.shutdown = shutdown  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "uvicorn"
    sys.exit(main())
