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
An app container has label com.docker.compose.project=$ONEVPS_PROJECT and a
non-empty onevps.tier. {id} (a name or an id) is resolved to the full Id with
the engine's inspect, checked, and the call forwarded by that Id: a name swap
cannot retarget it. No upgrades (attach/exec), no request bodies.

Design: the policy is the pure `decide()`, then `app_problem()` on the
inspected container (both in onevps_dockerpolicy.py beside this file).
Threads (ThreadingUnixStreamServer + http.server), not asyncio: the stdlib's HTTP server and client are blocking, the callers are
few (the waker), every allowed call is short and bounded, and answers are
read whole and sent with Content-Length and `Connection: close`. Small and
obvious code is what a security boundary needs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import socketserver
import stat
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from onevps_dockerpolicy import MAX_ANSWER, PASS_HEADERS, app_problem, decide, filter_answer, forward_target

ENGINE_TIMEOUT = 180.0


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the engine's, or this proxy's for its callers)."""

    def __init__(self, path: str, timeout: float = ENGINE_TIMEOUT):
        super().__init__("docker", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def engine_call(engine: str, method: str, target: str) -> tuple[int, dict, bytes]:
    """(status, passed headers, body) of one call to the real engine; no client headers pass."""
    conn = UnixHTTPConnection(engine)
    try:
        conn.request(method, target, headers={"Host": "docker"})
        res = conn.getresponse()
        body = res.read(MAX_ANSWER + 1)
        if len(body) > MAX_ANSWER:
            raise OSError("engine answer too large")
        return res.status, {h: res.getheader(h) for h in PASS_HEADERS if res.getheader(h)}, body
    finally:
        conn.close()


def engine_inspect(engine: str, ref: str):
    status, _, body = engine_call(engine, "GET", f"/containers/{ref}/json")
    return json.loads(body) if status == 200 else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that sends nothing does not hold a thread

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # every method goes through the policy
            return self.handle_call
        raise AttributeError(name)

    def log_message(self, format, *args) -> None:
        """Quiet: only denied calls and engine failures are logged."""

    def handle_expect_100(self) -> bool:
        return True

    def handle_call(self) -> None:
        path, _, query = self.path.partition("?")
        cfg = self.server.cfg
        decision = decide(self.command, path, query, self.headers, cfg.project)
        if not decision.allowed:
            return self.deny(path, decision.why)
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
        except (OSError, ValueError, http.client.HTTPException) as err:
            print(f"error: {self.command} {_printable(path)}: engine: {type(err).__name__}", file=sys.stderr, flush=True)
            return self.answer(502, {"Content-Type": "application/json"},
                               json.dumps({"message": "onevps docker proxy: the engine failed"}).encode())
        self.answer(status, headers, body)

    def deny(self, path: str, why: str) -> None:
        print(f"denied: {_printable(self.command)} {_printable(path)}: {why}", file=sys.stderr, flush=True)
        self.drain()
        body = json.dumps({"message": f"onevps docker proxy: denied: {why}"}).encode()
        self.answer(403, {"Content-Type": "application/json"}, body)

    def drain(self) -> None:
        """Read (and drop) a small body so the 403 reaches the client."""
        length = self.headers.get("Content-Length", "0").strip()
        if length.isdigit() and 0 < int(length) <= 1 << 20 and not self.headers.get("Transfer-Encoding"):
            self.rfile.read(int(length))

    def answer(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


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
    def __init__(self, cfg: Config):
        self.cfg = cfg
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
