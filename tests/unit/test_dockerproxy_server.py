"""The Docker API proxy (dockerfiles/waker/onevps_dockerproxy.py) as a server:
end to end against a fake engine on a unix socket (its own HTTP: malformed
requests, duplicate headers, every framing of the engine's answers), then the
process itself (stale socket, mode, SIGTERM). Its policy: test_dockerproxy."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest

from . import rawhttp
from .test_dockerproxy import APP_ID, CONTAINERS, FILE, P, SECRET, SHARED_ID, UnixHTTPConnection, pol, px

DEADLINE = 120.0  # seconds a socket operation may take on a busy machine before the test fails

# --- end to end against a fake engine ----------------------------------------------------

class FakeEngine(BaseHTTPRequestHandler):
    """Records every call; resolves containers by name or full Id; ignores filters (the proxy must not rely on them)."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.calls.append((self.command, self.path))
        path = urlsplit(self.path).path
        path = path.split("/", 2)[2] if path.startswith("/v1.") else path.lstrip("/")
        if path == "_ping":
            return self.reply(200, b"OK", "text/plain")
        if path == "containers/json":
            return self.reply(200, json.dumps([
                {"Id": c["Id"], "Names": [c["Name"]], "Labels": c["Config"]["Labels"], "Command": "x",
                 "State": "running", "NetworkSettings": c["NetworkSettings"]} for c in CONTAINERS.values()]).encode())
        parts = path.split("/")
        found = [c for n, c in CONTAINERS.items() if len(parts) == 3 and parts[1] in (n, c["Id"])]
        if not found:
            return self.reply(404, b'{"message":"No such container"}')
        if parts[2] == "logs":
            return self.reply(200, b"line one\nline two\n", "application/vnd.docker.raw-stream")
        self.reply(200, json.dumps(found[0]).encode())

    def do_POST(self):
        self.server.calls.append((self.command, self.path))
        self.reply(204, b"")

    do_DELETE = do_PUT = do_HEAD = do_POST

    def reply(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(server):
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    return server


@pytest.fixture
def proxy_stand(tmp_path):
    """(settings, the engine's calls, the proxy server) for a test that reaches into the server."""
    engine = socketserver.ThreadingUnixStreamServer(str(tmp_path / "engine.sock"), FakeEngine)
    engine.calls = []
    cfg = px.Config(P, str(tmp_path / "run" / "proxy.sock"), str(tmp_path / "engine.sock"), 0o660, None)
    proxy = _serve(px.ProxyServer(cfg))
    _serve(engine)
    yield cfg, engine.calls, proxy
    proxy.shutdown()
    proxy.server_close()
    engine.shutdown()
    engine.server_close()


@pytest.fixture
def stand(proxy_stand):
    cfg, calls, _ = proxy_stand
    return cfg, calls


def call(sock, method, target, headers=None, body=None, chunked=False):
    """(status, body) of one call; a deny answered before the body was sent is read all the same."""
    conn = UnixHTTPConnection(sock, timeout=DEADLINE)
    try:
        res = rawhttp.getresponse(conn, method, target, body=body, headers=headers or {}, encode_chunked=chunked)
        return res.status, res.read()
    finally:
        conn.close()


DENIED_E2E = [
    ("POST", "/containers/create", None, None),
    ("POST", "/v1.41/containers/h15-blog-1/exec", None, None),
    ("POST", "/images/create?fromImage=alpine", None, None),
    ("DELETE", "/containers/h15-blog-1?force=1", None, None),
    ("POST", "/containers/h15-blog-1/kill", None, None),
    ("POST", "/containers/h15-blog-1/../create", None, None),
    ("POST", "/containers/h15-blog-1%2Fkill/start", None, None),
    ("POST", "/containers/h15-blog-1/start", {"Upgrade": "tcp", "Connection": "Upgrade"}, None),
    ("POST", "/containers/h15-blog-1/start", {"Content-Type": "application/json"}, b'{"x":1}'),
    ("GET", "/info", None, None),
    ("FROB", "/_ping", None, None),
]


def test_denied_calls_never_reach_the_engine(stand, capsys):
    cfg, calls = stand
    for method, target, headers, body in DENIED_E2E:
        status, answer = call(cfg.socket_path, method, target, headers, body)
        assert status == 403, (method, target, answer)
        assert json.loads(answer)["message"].startswith("onevps docker proxy: denied: ")
    status, _ = call(cfg.socket_path, "POST", "/containers/h15-blog-1/start", body=iter([b"x"]), chunked=True)
    assert status == 403
    assert calls == []
    err = capsys.readouterr().err
    assert "denied: POST /containers/create: not an allowed endpoint" in err
    assert "denied: FROB /_ping: not an allowed endpoint" in err
    assert len([line for line in err.splitlines() if line.startswith("denied: ")]) == len(DENIED_E2E) + 1
    assert "fromImage" not in err and "alpine" not in err


@pytest.mark.parametrize("name", ["h15-redis-1", "other-blog-1", SHARED_ID, "nothing-here"])
@pytest.mark.parametrize("method,action", [("POST", "start"), ("POST", "stop"), ("GET", "json"), ("GET", "logs")])
def test_non_app_containers_are_only_looked_up(stand, capsys, name, method, action):
    cfg, calls = stand
    status, _ = call(cfg.socket_path, method, f"/containers/{name}/{action}")
    assert status == 403
    assert calls == [("GET", f"/containers/{name}/json")]
    assert f"denied: {method} /containers/{name}/{action}: " in capsys.readouterr().err


@pytest.mark.parametrize("target,forwarded", [
    ("/containers/h15-blog-1/start", f"/containers/{APP_ID}/start"),
    ("/v1.41/containers/h15-blog-1/stop?t=3", f"/v1.41/containers/{APP_ID}/stop?t=3"),
    (f"/containers/{APP_ID}/stop", f"/containers/{APP_ID}/stop"),
])
def test_allowed_calls_arrive_by_id(stand, target, forwarded):
    cfg, calls = stand
    status, _ = call(cfg.socket_path, "POST", target)
    assert status == 204
    assert calls[-1] == ("POST", forwarded) and len(calls) == 2


def test_inspect_answers_the_whitelist(stand):
    cfg, calls = stand
    status, answer = call(cfg.socket_path, "GET", "/v1.41/containers/h15-blog-1/json")
    assert status == 200 and SECRET not in answer.decode()
    assert json.loads(answer) == pol.filter_inspect(CONTAINERS["h15-blog-1"])
    assert calls[-1] == ("GET", f"/v1.41/containers/{APP_ID}/json")


def test_list_is_forced_to_the_projects_apps(stand):
    cfg, calls = stand
    status, answer = call(cfg.socket_path, "GET", '/containers/json?all=1&filters={"status":["exited"]}')
    assert status == 200
    assert [c["Id"] for c in json.loads(answer)] == [APP_ID]
    sent = parse_qs(urlsplit(calls[-1][1]).query)
    assert json.loads(sent["filters"][0]) == {
        "label": [f"com.docker.compose.project={P}", "onevps.tier"], "status": ["exited"]}
    assert sent["all"] == ["1"]


def test_logs_ping_and_head(stand):
    cfg, calls = stand
    assert call(cfg.socket_path, "GET", "/containers/h15-blog-1/logs?stdout=1") == (200, b"line one\nline two\n")
    assert calls[-1] == ("GET", f"/containers/{APP_ID}/logs?stdout=1&tail=200")
    assert call(cfg.socket_path, "GET", "/_ping") == (200, b"OK")
    assert call(cfg.socket_path, "HEAD", "/v1.41/_ping") == (204, b"")
    assert calls[-1] == ("HEAD", "/v1.41/_ping")


def test_large_answers_are_given_a_few_at_once_and_a_call_past_them_gets_503(proxy_stand, monkeypatch, capsys):
    """Issue 24, attack 6: twelve log reads of ~3 MB at once took the proxy past its memory
    limit. A call with a large answer (logs, list) takes one of BIG_AT_ONCE slots; with all
    of them taken it waits BIG_WAIT, then gets 503 with Retry-After. Small calls go on."""
    cfg, calls, proxy = proxy_stand
    monkeypatch.setattr(px, "BIG_WAIT", 0.05)
    for _ in range(px.BIG_AT_ONCE):  # every slot taken, as by calls in progress
        assert proxy.big_calls.acquire(timeout=DEADLINE)
    try:
        for target in ("/containers/h15-blog-1/logs?stdout=1", "/containers/json"):
            conn = UnixHTTPConnection(cfg.socket_path, timeout=DEADLINE)
            try:
                res = rawhttp.getresponse(conn, "GET", target)
                assert (res.status, res.getheader("Retry-After")) == (503, "1"), target
                assert json.loads(res.read())["message"] == "onevps docker proxy: busy, try again"
            finally:
                conn.close()
        assert call(cfg.socket_path, "GET", "/containers/h15-blog-1/json")[0] == 200  # not held back
        assert call(cfg.socket_path, "POST", "/containers/h15-blog-1/start")[0] == 204
        assert not any(target.startswith(("/containers/json", f"/containers/{APP_ID}/logs")) for _, target in calls)
    finally:
        for _ in range(px.BIG_AT_ONCE):
            proxy.big_calls.release()
    assert call(cfg.socket_path, "GET", "/containers/h15-blog-1/logs?stdout=1") == (200, b"line one\nline two\n")
    assert "busy: GET /containers/h15-blog-1/logs: 2 large answers in progress" in capsys.readouterr().err


def test_a_large_answer_gives_its_slot_back_when_the_engine_fails(proxy_stand, tmp_path):
    cfg, _, proxy = proxy_stand
    broken = px.Config(P, cfg.socket_path, str(tmp_path / "no-engine.sock"), 0o660, None)
    proxy.cfg = broken
    for _ in range(px.BIG_AT_ONCE + 1):
        assert call(cfg.socket_path, "GET", "/containers/h15-blog-1/logs?stdout=1")[0] == 502
    # Every slot is free again: the last handler gives its slot back just after its answer
    # went out, so wait for it (a leaked slot never comes: the wait ends in failure).
    for _ in range(px.BIG_AT_ONCE):
        assert proxy.big_calls.acquire(timeout=DEADLINE)


def test_a_burst_of_connections_waits_in_the_backlog_instead_of_being_refused(tmp_path):
    """A UNIX socket's connect past a full listen backlog fails at once (EAGAIN) for a client
    with a timeout or asyncio: with socketserver's default of 5, twelve log reads at once
    were refused so. Here nothing accepts: 64 connections must still get in."""
    cfg = px.Config(P, str(tmp_path / "run" / "proxy.sock"), str(tmp_path / "engine.sock"), 0o660, None)
    proxy = px.ProxyServer(cfg)  # bound and listening, never serving
    clients = []
    try:
        for _ in range(64):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(c)
            c.settimeout(DEADLINE)
            c.connect(cfg.socket_path)
    finally:
        for c in clients:
            c.close()
        proxy.server_close()


def connect(sock_path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(DEADLINE)
    sock.connect(sock_path)
    return sock


def raw_call(sock_path: str, *data: bytes) -> bytes:
    """The whole answer to raw request bytes (a send cut short by an early answer is no error)."""
    with connect(sock_path) as sock:
        return rawhttp.exchange(sock, *data)


@pytest.mark.parametrize("data", [b"GARBAGE\r\n\r\n", b"GET /_ping HTTP/2\r\n\r\n", b"GET /_ping HTTP/1.1\r\nNo colon\r\n\r\n",
                                  b"GET /_ping HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n",
                                  b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"])
def test_a_malformed_request_is_400_and_never_reaches_the_engine(stand, data):
    cfg, calls = stand
    answer = raw_call(cfg.socket_path, data)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer, answer[:200]
    assert calls == []


def test_every_duplicate_header_is_checked(stand):
    cfg, calls = stand
    answer = raw_call(cfg.socket_path, b"POST /containers/h15-blog-1/start HTTP/1.1\r\nContent-Length: 0\r\n"
                                       b"Content-Length: 5\r\n\r\nhello")
    assert answer.startswith(b"HTTP/1.1 403 ") and calls == []


BIG = 512 * 1024  # over what a unix socket buffers, under LINGER_BYTES: still being sent when the 403 comes
START = "/containers/h15-blog-1/start"


@pytest.mark.parametrize("chunked", [False, True])
def test_a_denied_call_with_a_body_gets_its_403_every_time(stand, monkeypatch, chunked):
    """Denied from its head, answered before its body is read: the lingering close reads the body
    and drops it, so even a strict client (plain http.client raises when a send fails, the
    race CI met) sends it whole and reads the 403. Without it: EPIPE."""
    monkeypatch.setattr(px, "LINGER_SECONDS", DEADLINE)  # only the byte bound: no race with a busy clock
    cfg, calls = stand
    why = "request bodies are not allowed" + (" (Transfer-Encoding)" if chunked else "")
    for _ in range(50):
        conn = UnixHTTPConnection(cfg.socket_path, timeout=DEADLINE)
        try:
            conn.request("POST", START, body=iter([b"x" * 32768] * (BIG // 32768)) if chunked else b"x" * BIG)
            res = conn.getresponse()
            assert (res.status, json.loads(res.read())) == (403, {"message": f"onevps docker proxy: denied: {why}"})
        finally:
            conn.close()
    assert calls == []


def test_a_client_that_sends_on_and_on_is_cut_off_after_linger_bytes(stand, monkeypatch):
    """The lingering read is bounded: past LINGER_BYTES the proxy closes, the client's send fails,
    and the 403 still waits in its socket."""
    monkeypatch.setattr(px, "LINGER_SECONDS", DEADLINE)  # the byte bound is the one that ends it
    cfg, calls = stand
    chunk, sent, cap = b"x" * 65536, 0, 64 * px.LINGER_BYTES  # cap: a failure bound, never reached when it works
    with connect(cfg.socket_path) as sock:
        assert rawhttp.send(sock, f"POST {START} HTTP/1.1\r\nContent-Length: {1 << 40}\r\n\r\n".encode())
        while sent < cap and rawhttp.send(sock, chunk):
            sent += len(chunk)
        answer = rawhttp.read_until_closed(sock)
    assert px.LINGER_BYTES <= sent < cap, "the proxy read and dropped LINGER_BYTES, then closed"
    assert rawhttp.status_of(answer) == 403 and calls == []


def test_a_client_that_sends_nothing_more_is_closed_after_linger_seconds(stand, monkeypatch):
    """The lingering read is bounded in time too: a client that declares a body, never sends it
    and never closes is closed (POLLHUP: the proxy closed its end, not only shut its writing)."""
    monkeypatch.setattr(px, "LINGER_SECONDS", 0.2)
    cfg, _ = stand
    with connect(cfg.socket_path) as sock:
        assert rawhttp.send(sock, f"POST {START} HTTP/1.1\r\nContent-Length: 10\r\n\r\n".encode())
        assert rawhttp.status_of(rawhttp.read_until_closed(sock)) == 403  # the answer, then EOF (SHUT_WR)
        poller = select.poll()
        poller.register(sock, select.POLLHUP)
        assert [event for _, event in poller.poll(DEADLINE * 1000) if event & select.POLLHUP]


@pytest.mark.parametrize("raw,body", [
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOKtrailing", b"OK"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
     b"5;x=1\r\nline \r\n4\r\none\n\r\n0\r\n\r\n", b"line one\n"),
    (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", b"until close"),
])
def test_engine_answers_are_read_in_every_framing(raw, body):
    assert px.parse_answer(raw) == (200, {"Content-Type": "text/plain"}, body)


@pytest.mark.parametrize("raw", [b"", b"HTTP/1.1 200 OK\r\n", b"SSH-2.0\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n"])
def test_a_broken_engine_answer_is_an_error(raw):
    with pytest.raises(ValueError):
        px.parse_answer(raw)


class BigEngine(socketserver.StreamRequestHandler):
    """An engine whose every answer has a body of server.size bytes."""

    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        size = self.server.size
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % size)
        self.wfile.write(b"x" * size)


@pytest.mark.parametrize("mib,fits", [(3, True), (5, False)])
def test_an_engine_answer_over_4_mib_is_refused(tmp_path, mib, fits):
    """The proxy holds an answer whole, in a few copies: 4 MiB keeps them far below its 48m mem_limit."""
    engine = socketserver.UnixStreamServer(str(tmp_path / "big.sock"), BigEngine)
    engine.size = mib * 1024 * 1024
    _serve(engine)
    try:
        if fits:
            assert px.engine_call(str(tmp_path / "big.sock"), "GET", "/_ping")[2] == b"x" * engine.size
        else:
            with pytest.raises(OSError, match="too large"):
                px.engine_call(str(tmp_path / "big.sock"), "GET", "/_ping")
    finally:
        engine.shutdown()
        engine.server_close()


class Written(list):
    def write(self, data):
        self.append(data)


@pytest.mark.parametrize("method,sent", [("GET", True), ("HEAD", False)])
def test_an_answer_body_is_written_apart_from_its_head(method, sent):
    """No concatenated copy of a body of up to MAX_ANSWER bytes: the same object goes to write()."""
    handler, body = object.__new__(px.Handler), b"y" * 100_000
    handler.command, handler.wfile = method, Written()
    handler.answer(200, {"Content-Type": "text/plain"}, body)
    assert handler.wfile[0].startswith(b"HTTP/1.1 200 OK\r\n") and handler.wfile[0].endswith(b"\r\n\r\n")
    assert b"Content-Length: 100000\r\n" in handler.wfile[0]
    assert handler.wfile[1:] == ([body] if sent else []) and (not sent or handler.wfile[1] is body)


def test_the_socket_mode(stand):
    cfg, _ = stand
    assert stat.S_IMODE(os.stat(cfg.socket_path).st_mode) == 0o660


# --- the process: stale socket, mode, SIGTERM --------------------------------------------

def test_process_replaces_a_stale_socket_and_stops_on_sigterm(tmp_path):
    sock_path = tmp_path / "proxy.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # a socket file nobody listens on
    env = {**os.environ, "ONEVPS_PROJECT": P, "ONEVPS_PROXY_SOCKET": str(sock_path),
           "DOCKER_SOCKET": str(tmp_path / "no-engine.sock"), "ONEVPS_PROXY_SOCKET_MODE": "0600"}
    proc = subprocess.Popen([sys.executable, str(FILE)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        started = proc.stderr.readline()
        assert "onevps docker proxy: " in started, started
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        status, answer = call(str(sock_path), "GET", "/_ping")
        assert status == 502 and b"engine failed" in answer  # no engine there: a clear 502
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not sock_path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_process_refuses_to_replace_a_live_socket_or_a_file(tmp_path):
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(tmp_path / "live.sock"))
    live.listen()
    (tmp_path / "file.sock").write_text("not a socket")
    try:
        for name, message in (("live.sock", "another process listens"), ("file.sock", "is not a socket")):
            env = {**os.environ, "ONEVPS_PROJECT": P, "ONEVPS_PROXY_SOCKET": str(tmp_path / name)}
            res = subprocess.run([sys.executable, str(FILE)], env=env, capture_output=True, text=True, timeout=60)
            assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr
    finally:
        live.close()
    assert (tmp_path / "file.sock").read_text() == "not a socket"


def test_help_explains_the_settings():
    res = subprocess.run([sys.executable, str(FILE), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for name in ("ONEVPS_PROJECT", "ONEVPS_PROXY_SOCKET", "ONEVPS_PROXY_SOCKET_MODE", "DOCKER_SOCKET"):
        assert name in res.stdout
