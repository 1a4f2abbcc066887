"""onevps's least-privilege Docker API proxy (issue 15): stdlib only, Python 3.11.

Listens on a UNIX socket and forwards only these calls (optionally under a
/vX.YY prefix) to the real engine; everything else is answered 403 JSON
without reaching it, and one line `denied: METHOD PATH: why` goes to stderr:
  GET|HEAD /_ping   GET /version
  GET  /containers/json            forced to the project's app containers
  GET  /containers/{id}/json       whitelisted fields only, never Config.Env
  POST /containers/{id}/start
  POST /containers/{id}/stop?t=N   N <= 120
  GET  /containers/{id}/logs       stdout, stderr, timestamps, tail <= 200; no follow
An app container has label com.docker.compose.project=$ONEVPS_PROJECT, a
non-empty onevps.tier, and the labels compose puts on a container it creates
(container-number, config-hash; not a slot, not a one-off): a plain `docker
run` of an app image inherits the image's labels but is no app. {id} (a name or an id) is resolved to the full Id with
the engine's inspect, checked, and the call forwarded by that Id: a name swap
cannot retarget it. No upgrades (attach/exec), no request bodies.

Design: the policy is the pure `decide()`, then `app_problem()` on the
inspected container (both in onevps_dockerpolicy.py beside this file).
Threads (ThreadingUnixStreamServer), not asyncio: the callers are few (the
waker), every allowed call is short and bounded; calls with a large answer
(logs, list) run BIG_AT_ONCE at a time, so memory stays bounded too. One call per connection:
the request's head is read (no body is ever accepted), the engine's answer
read whole (the proxy asks it for `Connection: close`) and sent with
Content-Length and `Connection: close`. A 403 or a 400 is answered before what
the client still sends (a body) is read: its connection then closes the way
nginx's lingering_close does (`linger`), so the answer reaches the client
instead of being lost to a reset. No http.server or http.client: the
little HTTP this needs is here, which keeps the process small (it runs all
the time). Small and obvious code is what a security boundary needs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus

from onevps_dockerpolicy import MAX_ANSWER, PASS_HEADERS, app_problem, decide, filter_answer, forward_target

ENGINE_TIMEOUT = 180.0
MAX_LINE = 8192  # bytes of a request line or a header line
MAX_HEADERS = 100
LINGER_BYTES = 1 << 20  # what a lingering close reads and drops at most...
LINGER_SECONDS = 2.0  # ...and for how long: a client that sends on and on is cut off
# Calls whose answer can be large (logs up to MAX_ANSWER, a list) hold a few copies of it
# until it is sent: at most this many at once, so twelve 4 MiB log reads cannot take
# the proxy past its 48m limit (issue 24, attack 6). Others wait up to BIG_WAIT seconds,
# then get 503 with Retry-After. Small calls (inspect, start, stop) are not held back.
BIG_ROUTES = ("logs", "list")
BIG_AT_ONCE = 2
BIG_WAIT = 30.0


class BadRequest(Exception):
    """A request this proxy cannot read as HTTP/1.x."""


class Headers(list):
    """A request's headers in order, duplicates kept: (name, value) pairs."""

    def items(self) -> list[tuple[str, str]]:
        return list(self)

    def get(self, name: str, default: str | None = None) -> str | None:
        return next((v for k, v in self if k.lower() == name.lower()), default)


def read_request(rfile) -> tuple[str, str, Headers]:
    """(method, target, headers) of a request's head; EOFError when the client sent nothing."""
    line = rfile.readline(MAX_LINE + 1)
    if not line:
        raise EOFError
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(line) > MAX_LINE or len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not parts[0].isalpha():
        raise BadRequest("malformed request line")
    headers = Headers()
    while len(headers) <= MAX_HEADERS:
        line = rfile.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return parts[0], parts[1], headers
        name, colon, value = line.decode("latin-1").partition(":")
        if len(line) > MAX_LINE or not colon or not name or name != name.strip():
            raise BadRequest("malformed header line")
        headers.append((name, value.strip()))
    raise BadRequest("too many headers")


def parse_answer(raw: bytes | bytearray) -> tuple[int, dict, bytes]:
    """(status, the headers passed on, body) of an engine's whole answer (it closed the connection);
    the body is the one copy made of `raw`'s."""
    end = raw.find(b"\r\n\r\n")
    lines = bytes(raw[:end]).decode("latin-1").split("\r\n") if end >= 0 else [""]
    status = lines[0].split(" ", 2)
    if end < 0 or len(status) < 2 or not status[0].startswith("HTTP/1.") or not status[1].isdigit():
        raise ValueError("malformed engine answer")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = dechunk(raw, end + 4)
    elif headers.get("content-length", "").isdigit():
        body = bytes(raw[end + 4:end + 4 + int(headers["content-length"])])
    else:
        body = bytes(raw[end + 4:])
    return int(status[1]), {h: headers[h.lower()] for h in PASS_HEADERS if headers.get(h.lower())}, body


def dechunk(data: bytes | bytearray, i: int = 0) -> bytes:
    """The data of the chunked body that starts at data[i]."""
    out = []
    while True:
        end = data.index(b"\r\n", i)
        size = int(data[i:end].split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        i = end + 4 + size


def linger(sock: socket.socket) -> None:
    """nginx's lingering close, for an answer sent before the request was read whole (its body
    unread). Closing a socket with unread data resets the connection: the client's next send
    fails (EPIPE) and, over TCP, the reset can destroy the answer in the client's receive
    buffer. So: shut the write side (the client reads the answer, then EOF), then read and
    drop what the client still sends, LINGER_BYTES and LINGER_SECONDS at most, until it
    closes; the caller then closes. One small scratch buffer: nothing discarded is kept."""
    scratch, left = memoryview(bytearray(65536)), LINGER_BYTES
    deadline = time.monotonic() + LINGER_SECONDS
    try:
        sock.shutdown(socket.SHUT_WR)
        while left > 0 and (wait := deadline - time.monotonic()) > 0:
            sock.settimeout(wait)
            got = sock.recv_into(scratch, min(left, len(scratch)))
            if not got:
                return  # the client closed: a clean close, no reset
            left -= got
    except OSError:  # the client reset the connection, or the time is up (TimeoutError)
        pass


def engine_call(engine: str, method: str, target: str) -> tuple[int, dict, bytes]:
    """(status, passed headers, body) of one call to the real engine; no client headers pass."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ENGINE_TIMEOUT)
        sock.connect(engine)
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode())
        raw = bytearray()
        while data := sock.recv(65536):
            raw += data
            if len(raw) > MAX_ANSWER + MAX_LINE * MAX_HEADERS:
                raise OSError("engine answer too large")
    status, headers, body = parse_answer(raw)
    if len(body) > MAX_ANSWER:
        raise OSError("engine answer too large")
    return status, headers, body


def engine_inspect(engine: str, ref: str):
    status, _, body = engine_call(engine, "GET", f"/containers/{ref}/json")
    return json.loads(body) if status == 200 else None


class Handler(socketserver.StreamRequestHandler):
    """One call per connection: read, decide, forward or deny, answer (Connection: close)."""

    timeout = 30  # a client that sends nothing does not hold a thread

    def handle(self) -> None:
        self.command, self.headers = "GET", Headers()
        try:
            self.command, self.path, self.headers = read_request(self.rfile)
        except BadRequest as err:
            self.answer(400, {"Content-Type": "application/json"},
                        json.dumps({"message": f"onevps docker proxy: {err}"}).encode())
            return linger(self.connection)  # the rest of the request is unread
        except (EOFError, OSError):
            return  # the client went away, or sent nothing in time
        self.handle_call()

    def handle_call(self) -> None:
        path, _, query = self.path.partition("?")
        cfg = self.server.cfg
        decision = decide(self.command, path, query, self.headers, cfg.project)
        if not decision.allowed:
            return self.deny(path, decision.why)
        if decision.route not in BIG_ROUTES:
            return self.forward(path, decision)
        if not self.server.big_calls.acquire(timeout=BIG_WAIT):
            print(f"busy: {self.command} {_printable(path)}: {BIG_AT_ONCE} large answers in progress",
                  file=sys.stderr, flush=True)
            return self.answer(503, {"Content-Type": "application/json", "Retry-After": "1"},
                               json.dumps({"message": "onevps docker proxy: busy, try again"}).encode())
        try:
            self.forward(path, decision)
        finally:
            self.server.big_calls.release()

    def forward(self, path: str, decision) -> None:
        """The allowed call, to the engine (by full Id for a container) and its answer, filtered."""
        cfg = self.server.cfg
        try:
            container_id = None
            if decision.container_ref is not None:
                info = engine_inspect(cfg.engine, decision.container_ref)
                problem = app_problem(info, cfg.project)
                if problem:
                    return self.deny(path, problem)
                container_id = info["Id"]
            target = forward_target(decision, container_id)
            status, headers, body = engine_call(cfg.engine, self.command, target)
            body = filter_answer(decision.route, status, body, cfg.project)
        except (OSError, ValueError) as err:
            print(f"error: {self.command} {_printable(path)}: engine: {type(err).__name__}", file=sys.stderr, flush=True)
            return self.answer(502, {"Content-Type": "application/json"},
                               json.dumps({"message": "onevps docker proxy: the engine failed"}).encode())
        self.answer(status, headers, body)

    def deny(self, path: str, why: str) -> None:
        """403, then a lingering close: a denied request's body (the policy allows none) is unread."""
        print(f"denied: {_printable(self.command)} {_printable(path)}: {why}", file=sys.stderr, flush=True)
        body = json.dumps({"message": f"onevps docker proxy: denied: {why}"}).encode()
        self.answer(403, {"Content-Type": "application/json"}, body)
        linger(self.connection)

    def answer(self, status: int, headers: dict, body: bytes) -> None:
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items()),
                 f"Content-Length: {len(body)}", "Connection: close"]
        self.wfile.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
        if body and self.command != "HEAD":
            self.wfile.write(body)  # apart from the head: no second copy of a large body


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() and c != " " else f"\\x{ord(c):02x}" for c in text[:200])


@dataclass(frozen=True)
class Config:
    project: str
    socket_path: str
    engine: str
    mode: int
    gid: int | None


class ProxyServer(socketserver.ThreadingUnixStreamServer):
    # The listen backlog (socketserver's default is 5): a UNIX socket's connect past a full
    # backlog fails at once with EAGAIN for a non-blocking client (the waker's asyncio, or
    # any client with a timeout); twelve calls at once were refused that way.
    request_queue_size = 128

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.big_calls = threading.BoundedSemaphore(BIG_AT_ONCE)
        super().__init__(cfg.socket_path, Handler, bind_and_activate=True)

    def server_bind(self) -> None:
        """Bind under a umask, so the socket is never wider than cfg.mode, then chmod/chown it."""
        remove_stale_socket(self.cfg.socket_path)
        old = os.umask(0o777 & ~self.cfg.mode)
        try:
            self.socket.bind(self.cfg.socket_path)
        finally:
            os.umask(old)
        if self.cfg.gid is not None:
            os.chown(self.cfg.socket_path, -1, self.cfg.gid)
        os.chmod(self.cfg.socket_path, self.cfg.mode)
        self.server_address = self.cfg.socket_path

    def handle_error(self, request, client_address) -> None:
        """One line, no traceback (e.g. a client that hung up before its answer)."""
        print(f"error: a call failed: {sys.exc_info()[0].__name__}", file=sys.stderr, flush=True)


def remove_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse anything else in the way."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SystemExit(f"error: {path} exists and is not a socket; remove it or set ONEVPS_PROXY_SOCKET")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SystemExit(f"error: another process listens on {path}; stop it first")


ENV_HELP = """environment:
  ONEVPS_PROJECT            (required) the Compose project whose app containers may be driven
  ONEVPS_PROXY_SOCKET       the socket to listen on (default /run/onevps-docker/docker.sock);
                            a stale socket file there is replaced at start
  ONEVPS_PROXY_SOCKET_MODE  its permissions, octal (default 0660); created under a umask, never wider
  ONEVPS_PROXY_SOCKET_GID   optional: the numeric group the socket belongs to
  DOCKER_SOCKET             the real engine's socket (default /var/run/docker.sock)"""


def load_config(env) -> Config:
    project = env.get("ONEVPS_PROJECT", "").strip()
    if not project:
        raise SystemExit("error: ONEVPS_PROJECT is not set: the Compose project whose apps the proxy may drive")
    raw_mode = env.get("ONEVPS_PROXY_SOCKET_MODE", "0660").strip()
    if not re.fullmatch(r"0?[0-7]{3}", raw_mode):
        raise SystemExit(f"error: ONEVPS_PROXY_SOCKET_MODE={raw_mode!r} is not an octal mode like 0660")
    raw_gid = env.get("ONEVPS_PROXY_SOCKET_GID", "").strip()
    if raw_gid and not raw_gid.isdigit():
        raise SystemExit(f"error: ONEVPS_PROXY_SOCKET_GID={raw_gid!r} is not a numeric group id")
    return Config(project, env.get("ONEVPS_PROXY_SOCKET", "/run/onevps-docker/docker.sock"),
                  env.get("DOCKER_SOCKET", "/var/run/docker.sock"), int(raw_mode, 8), int(raw_gid) if raw_gid else None)


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="onevps_dockerproxy", description=__doc__, epilog=ENV_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    cfg = load_config(os.environ)
    server = ProxyServer(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5})
    serving.start()
    print(f"onevps docker proxy: {cfg.socket_path} -> {cfg.engine} (project {cfg.project})", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()  # stop accepting; calls in flight finish (server_close joins them)
    server.server_close()
    serving.join()
    if os.path.exists(cfg.socket_path):
        os.unlink(cfg.socket_path)
    print("onevps docker proxy: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
