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
inspected container. Threads (ThreadingUnixStreamServer + http.server), not
asyncio: the stdlib's HTTP server and client are blocking, the callers are
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
from urllib.parse import parse_qsl, urlencode

PROJECT_LABEL = "com.docker.compose.project"
TIER_LABEL = "onevps.tier"
SERVICE_LABEL = "com.docker.compose.service"
SLOT_LABEL = "onevps.slot"
ONEOFF_LABEL = "com.docker.compose.oneoff"
MAX_PATH = 256
MAX_QUERY = 2048
MAX_ANSWER = 16 * 1024 * 1024
MAX_LOG_TAIL = 200
MAX_STOP_TIMEOUT = 120
ENGINE_TIMEOUT = 180.0
VERSION_PREFIX = re.compile(r"/v[0-9]{1,2}\.[0-9]{1,3}(?=/)")
CONTAINER_ROUTE = re.compile(r"/containers/([A-Za-z0-9][A-Za-z0-9_.-]*)/(json|start|stop|logs)")
FULL_ID = re.compile(r"[0-9a-f]{64}")
PATH_CHARS = re.compile(r"[A-Za-z0-9/_.-]*")
SAFE_NAME = re.compile(r"[A-Za-z_]{1,32}")
PLAIN_ROUTES = {("GET", "/_ping"): "ping", ("HEAD", "/_ping"): "ping",
                ("GET", "/version"): "version", ("GET", "/containers/json"): "list"}
CONTAINER_ROUTES = {("GET", "json"): "inspect", ("POST", "start"): "start",
                    ("POST", "stop"): "stop", ("GET", "logs"): "logs"}
LIST_FILTER_KEYS = frozenset({"id", "name", "label", "status", "health", "network"})
QUERY_RULES = {  # per route: parameter -> bool, an int maximum, "off" (only false, dropped), "json"
    "ping": {}, "version": {}, "inspect": {}, "start": {}, "stop": {"t": MAX_STOP_TIMEOUT},
    "logs": {"stdout": bool, "stderr": bool, "timestamps": bool, "tail": MAX_LOG_TAIL, "follow": "off"},
    "list": {"all": bool, "limit": 10000, "filters": "json"}}
BOOLS = frozenset({"0", "1", "true", "false", "True", "False"})
FALSE = frozenset({"", "0", "false", "False"})
PATH_RULES = ((lambda p: len(p) > MAX_PATH, "path too long"), (lambda p: "\x00" in p, "NUL in path"),
              (lambda p: "%" in p, "percent-encoding in path"),
              (lambda p: not p.startswith("/") or not PATH_CHARS.fullmatch(p), "unexpected character in path"),
              (lambda p: "//" in p, "empty path segment"), (lambda p: ".." in p, "'..' in path"))
PASS_HEADERS = ("Content-Type", "Api-Version", "Ostype", "Docker-Experimental")


class Denied(Exception):
    """A call the policy refuses; the message is the why (never client data)."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str
    route: str = ""              # ping, version, list, inspect, start, stop, logs
    prefix: str = ""             # the /vX.YY version prefix, kept when forwarding
    endpoint: str = ""           # the path after the prefix, or the container action (json, start...)
    container_ref: str | None = None  # name or id to resolve before forwarding
    rewrite: str = ""            # the query string to forward (already rewritten)


def split_path(path: str) -> tuple[str, str]:
    """(version prefix, the rest) of a request path, or Denied."""
    for broken, why in PATH_RULES:
        if broken(path):
            raise Denied(why)
    m = VERSION_PREFIX.match(path)
    return (m.group(0), path[m.end():]) if m else ("", path)


def parse_query(query: str) -> dict[str, str]:
    """The query's parameters (each at most once), or Denied."""
    if len(query) > MAX_QUERY:
        raise Denied("query too long")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, max_num_fields=16)
    except ValueError:
        raise Denied("malformed query") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise Denied(f"query parameter {_name(key)} given twice")
        if "\x00" in key or "\x00" in value:
            raise Denied("NUL in query")
        params[key] = value
    return params


def _name(key: str) -> str:
    return repr(key) if SAFE_NAME.fullmatch(key) else "(unprintable)"


def check_headers(headers) -> None:
    """No upgrade/hijack, no request body of any kind."""
    for name, value in headers.items():
        name = name.lower()
        if name == "upgrade" or (name == "connection" and "upgrade" in value.lower()):
            raise Denied("connection upgrade (attach/exec/hijack) is not allowed")
        if name == "transfer-encoding":
            raise Denied("request bodies are not allowed (Transfer-Encoding)")
        if name == "content-length" and value.strip() != "0":
            raise Denied("request bodies are not allowed")


def rewrite_query(route: str, params: dict[str, str], project: str) -> str:
    """The query string forwarded for a route (QUERY_RULES), or Denied."""
    rules = QUERY_RULES[route]
    for key, value in params.items():
        rule = rules.get(key)
        if rule is None:
            raise Denied(f"query parameter {_name(key)} is not allowed here")
        if rule is bool and value not in BOOLS:
            raise Denied(f"query parameter {_name(key)} must be a boolean")
        if rule == "off" and value not in FALSE:
            raise Denied(f"{key} is not allowed")
        if isinstance(rule, int) and not (value.isdigit() and len(value) <= 5 and int(value) <= rule):
            raise Denied(f"query parameter {_name(key)} must be an integer 0..{rule}")
    out = {key: value for key, value in params.items() if rules[key] != "off"}
    if route == "logs":
        out.setdefault("tail", str(MAX_LOG_TAIL))
    if route == "list":
        out["filters"] = merge_filters(out.get("filters", ""), project)
    return urlencode(out)


def merge_filters(raw: str, project: str) -> str:
    """The client's list filters (JSON) AND the proxy's: project + onevps.tier."""
    try:
        client = json.loads(raw) if raw else {}
    except ValueError:
        raise Denied("filters is not JSON") from None
    if not isinstance(client, dict):
        raise Denied("filters is not a JSON object")
    merged: dict[str, list[str]] = {}
    for key, value in client.items():
        if key not in LIST_FILTER_KEYS:
            raise Denied("a list filter is not allowed (allowed: " + ", ".join(sorted(LIST_FILTER_KEYS)) + ")")
        if isinstance(value, dict):  # the older form {"label": {"a=b": true}}
            value = [k for k, on in value.items() if on is True]
        if not isinstance(value, list) or not all(isinstance(v, str) and "\x00" not in v for v in value):
            raise Denied("a list filter must be a list of strings")
        merged[key] = list(value)
    labels = merged.setdefault("label", [])
    for required in (f"{PROJECT_LABEL}={project}", TIER_LABEL):
        if required not in labels:
            labels.append(required)
    return json.dumps(merged, separators=(",", ":"), sort_keys=True)


def decide(method: str, path: str, query: str, headers, project: str) -> Decision:
    """Whether a call may pass, and how it is forwarded. Pure: no I/O."""
    try:
        prefix, rest = split_path(path)
        check_headers(headers)
        params = parse_query(query)
        route, endpoint, ref = PLAIN_ROUTES.get((method, rest)), rest, None
        m = CONTAINER_ROUTE.fullmatch(rest)
        if route is None and m:
            route, endpoint, ref = CONTAINER_ROUTES.get((method, m.group(2))), m.group(2), m.group(1)
        if route is None:
            raise Denied("not an allowed endpoint")
        rewrite = rewrite_query(route, params, project)
    except Denied as err:
        return Decision(False, str(err))
    return Decision(True, "allowed", route, prefix, endpoint, ref, rewrite)


def forward_target(decision: Decision, container_id: str | None = None) -> str:
    """The path and query sent to the engine: a container call names the resolved full Id."""
    path = decision.endpoint if container_id is None else f"/containers/{container_id}/{decision.endpoint}"
    return decision.prefix + path + (f"?{decision.rewrite}" if decision.rewrite else "")


def app_problem(info, project: str) -> str | None:
    """Why an inspected container is not one of the project's app containers."""
    if not isinstance(info, dict) or not FULL_ID.fullmatch(str(info.get("Id", ""))):
        return "no such container"
    return labels_problem((info.get("Config") or {}).get("Labels") or {}, project)


def labels_problem(labels: dict, project: str) -> str | None:
    """Why a container with these labels is not one of the project's app containers."""
    if labels.get(PROJECT_LABEL) != project or not labels.get(TIER_LABEL):
        return "not an app container of this project"
    # Image labels reach every container made from the image (an app image carries the
    # compose project, service and tier): a deploy slot (`docker run`, label onevps.slot)
    # or a one-off `compose run` container looks like the app; neither is it.
    if not labels.get(SERVICE_LABEL) or labels.get(SLOT_LABEL) or labels.get(ONEOFF_LABEL, "False") != "False":
        return "not an app's own container (a deploy slot or a one-off)"
    return None


def _ip_addresses(networks) -> dict:
    return {name: {"IPAddress": (net or {}).get("IPAddress", "")}
            for name, net in (networks or {}).items()}


def filter_inspect(info: dict) -> dict:
    """The whitelisted fields of an inspect answer (never Config.Env)."""
    out = {key: info.get(key) for key in ("Id", "Name", "Created", "State", "RestartCount", "Image")}
    config = info.get("Config") or {}
    out["Config"] = {"Image": config.get("Image"), "Labels": config.get("Labels") or {}}
    out["NetworkSettings"] = {"Networks": _ip_addresses((info.get("NetworkSettings") or {}).get("Networks"))}
    return out


def filter_list(entries, project: str) -> list:
    """The project's app containers of a list answer, whitelisted fields only."""
    out = []
    for entry in entries if isinstance(entries, list) else []:
        labels = entry.get("Labels") or {}
        if labels_problem(labels, project):
            continue
        networks = _ip_addresses((entry.get("NetworkSettings") or {}).get("Networks"))
        out.append({**{key: entry.get(key) for key in ("Id", "Names", "Image", "Created", "State", "Status")},
                    "Labels": labels, "NetworkSettings": {"Networks": networks}})
    return out


class UnixHTTPConnection(http.client.HTTPConnection):
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


def filter_answer(route: str, status: int, body: bytes, project: str) -> bytes:
    if status != 200 or route not in ("inspect", "list"):
        return body
    data = json.loads(body)
    kept = filter_inspect(data) if route == "inspect" else filter_list(data, project)
    return json.dumps(kept).encode()


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
