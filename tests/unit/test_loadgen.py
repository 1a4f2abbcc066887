"""tests/loadgen.py against a tiny in-process HTTP/1.1 keep-alive server, and the
deploy benchmark's pure summary functions."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import loadgen

HOST = "app.test"
DEADLINE = 120.0  # seconds a condition or a socket operation may take on a busy machine before the test fails
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "deploy.py"


class Handler(BaseHTTPRequestHandler):
    """GET answers {"version": "t1"}; POST answers the body's receipt. server.mode changes that."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.accepted += 1

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, code: int, payload: dict, close: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")  # and close_connection: closed after the answer
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.hosts.add(self.headers["Host"])
        self._answer(500 if self.server.mode == "get-500" else 200, {"status": "ok", "version": "t1"})
        if self.server.mode == "close-idle":
            self.close_connection = True  # closed after the answer, without a "Connection: close"

    def do_POST(self) -> None:
        if self.server.mode == "early-413":  # refused from the head, closed with the body unread: a reset
            return self._answer(413, {"message": "too large"}, close=True)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.mode == "close-after-post":
            self.close_connection = True  # read the body, then close without an answer
            return
        digest = "0" * 64 if self.server.mode == "bad-hash" else hashlib.sha256(body).hexdigest()
        self._answer(200, {"bytes": len(body), "sha256": digest, "version": "t1"})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode, self.accepted, self.hosts = "ok", 0, set()
        self.lock = threading.Lock()
        self.closed = threading.Event()  # set once the server has closed a connection

    def shutdown_request(self, request) -> None:
        super().shutdown_request(request)
        self.closed.set()


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def load(server: Server, mode: str, enough: Callable[[loadgen.Load], bool], **kw) -> loadgen.Load:
    """A 2-thread load that runs until enough(load) holds (counts, not seconds: a busy machine is slow)."""
    server.mode = mode
    with loadgen.Load(server.server_address[1], HOST, threads=2, timeout=DEADLINE, settle=0, **kw) as run:
        assert wait_until(lambda: enough(run), DEADLINE), run.summary()
    return run


def test_a_healthy_app_gets_gets_and_posts_on_one_keepalive_connection_per_thread(server):
    run = load(server, "ok", lambda r: r.total_of("GET") > 10 and r.total_of("POST") > 10 and server.accepted == 2)
    get, post = run.by_method["GET"], run.by_method["POST"]
    assert run.failed == 0, run.summary()
    assert set(get) == {200} and set(post) == {200}
    assert get[200] > 10 and post[200] > 10
    assert run.total == get[200] + post[200] == run.status[200]
    assert set(run.versions) == {"t1"} and len(run.versions) == get[200]
    assert run.connections == 2 and server.accepted == 2  # keep-alive: one connection per thread
    assert server.hosts == {HOST}
    assert run.errors == []
    assert run.summary().startswith(f"0 failed of {run.total} requests in ")
    assert len(run.latencies) == run.total and all(t > 0 for t in run.latencies)
    assert f"(p99 {run.p99 * 1000:.0f} ms)" in run.summary()


def test_the_p99_is_the_nearest_rank_of_every_request():
    run = loadgen.Load(1, HOST)
    assert run.p99 == 0.0  # no request yet
    run.latencies = [i / 1000 for i in range(1, 201)]  # 1..200 ms
    assert run.p99 == 0.198 and run.percentile(50) == 0.100 and run.percentile(100) == 0.200
    run.latencies = [0.5]
    assert run.p99 == 0.5


def test_get_only(server):
    run = load(server, "ok", lambda r: r.total_of("GET") > 10, post_path=None)
    assert run.failed == 0 and run.by_method["GET"][200] > 10
    assert run.total_of("POST") == 0 and "POST" not in run.summary()


def test_a_500_counts_as_failed(server):
    run = load(server, "get-500", lambda r: r.total_of("GET") > 0 and r.total_of("POST") > 0)
    assert run.failed == run.failed_of("GET") == run.by_method["GET"][500] > 0
    assert run.failed_of("POST") == 0 and run.total_of("POST") > 0
    assert run.versions == []
    assert run.errors[0].startswith("GET /health: 500: b'{")
    assert "500: " in run.summary()


def test_a_post_whose_echo_does_not_match_counts_as_failed(server):
    run = load(server, "bad-hash", lambda r: r.total_of("GET") > 0 and r.total_of("POST") > 0)
    assert set(run.by_method["POST"]) == {loadgen.BAD_ECHO}
    assert run.failed == run.failed_of("POST") == run.total_of("POST") > 0
    assert run.failed_of("GET") == 0
    assert "is no receipt of" in run.errors[0]


def test_a_connection_closed_after_the_post_was_read_is_a_socket_error(server):
    run = load(server, "close-after-post", lambda r: r.total_of("GET") > 0 and r.failed > loadgen.MAX_ERRORS)
    assert set(run.by_method["POST"]) == {"RemoteDisconnected"}
    assert run.failed == run.failed_of("POST") > 0
    assert run.failed_of("GET") == 0 and run.total_of("GET") > 0  # a new connection after each failure
    assert run.errors[0].startswith("POST /api/echo: RemoteDisconnected(")
    assert len(run.errors) == loadgen.MAX_ERRORS < run.failed


def wait_until(condition, seconds: float = DEADLINE) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_an_idle_connection_the_server_closed_is_not_reused(server):
    server.mode = "close-idle"
    client = loadgen.Client(server.server_address[1], HOST, timeout=DEADLINE)
    status, data, error = client.request("GET", "/health")
    assert (status, error) == (200, None)
    sock = client.conn.sock
    assert sock is not None  # no "Connection: close": kept for the next request
    assert server.closed.wait(DEADLINE) and wait_until(lambda: loadgen.peer_closed(sock))
    status, data, error = client.request("GET", "/health")  # sent on the old socket, this would fail
    assert (status, error) == (200, None)
    assert client.reconnects == 1 and client.connections == 2
    client.close()


def test_a_connection_in_use_is_not_reported_closed(server):
    client = loadgen.Client(server.server_address[1], HOST, timeout=DEADLINE)
    assert client.request("GET", "/health")[0] == 200
    assert not loadgen.peer_closed(client.conn.sock)
    assert client.request("POST", "/api/echo", loadgen.post_body(1))[0] == 200
    assert client.connections == 1 and client.reconnects == 0
    client.close()


BIG = 8 * 1024 * 1024  # far more than TCP takes in unread: the client is still sending when the 413 comes


def test_an_early_answer_counts_as_itself_not_as_a_socket_error(server):
    """A server that refuses a POST from its head and closes with the body unread resets the
    connection: the client's send fails (EPIPE, ECONNRESET), the 413 waits in its socket. It is
    counted as the 413 it is; a send failure with no answer behind it stays an error (below)."""
    server.mode = "early-413"
    client = loadgen.Client(server.server_address[1], HOST, timeout=DEADLINE)
    for _ in range(20):
        status, data, error = client.request("POST", "/api/echo", b"x" * BIG)
        assert status == 413, error
        assert json.loads(data) == {"message": "too large"} and error.startswith("POST /api/echo: 413: ")
    assert client.connections == 20 and client.conn.sock is None  # Connection: close each time
    client.close()


def test_refused_connections_count_per_exception_class():
    srv = Server()
    port = srv.server_address[1]
    srv.server_close()  # nobody listens there now
    client = loadgen.Client(port, HOST, timeout=DEADLINE)
    status, _, error = client.request("GET", "/health")
    assert status == "ConnectionRefusedError" and error.startswith("GET /health: ConnectionRefusedError(")


def test_post_bodies_are_a_few_hundred_bytes_and_differ():
    a, b = loadgen.post_body(1), loadgen.post_body(1)
    assert 300 <= len(a) <= 600 and a != b
    assert json.loads(a)["email"] == "load@example.com"


# ------------------------------------------------- benchmarks/deploy.py --

@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_deploy", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stats_median_p90_min_max(bench):
    assert bench.stats([5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 7.0, 8.0, 9.0]) == {
        "median": 5.5, "p90": 9.0, "min": 1.0, "max": 10.0}
    assert bench.stats([2.0]) == {"median": 2.0, "p90": 2.0, "min": 2.0, "max": 2.0}
    assert bench.stats([]) == {}


def test_timeline_lines_are_parsed_and_other_lines_ignored(bench):
    out = ("deploying portfolio\n  [timeline] connect 0.31 s\n  [timeline] build 1.42 s\n"
           "[timeline] health check 0.8s\n  [timeline] build 0.08 s\nbuild 9 s\n")
    assert bench.parse_timeline(out) == {"connect": 0.31, "build": 1.5, "health check": 0.8}
    assert bench.parse_timeline("no timeline here\n") == {}


def test_table_shows_both_ways_with_requests_and_failures_per_method(bench):
    runs = [{"seconds": s, "GET": {"requests": 100, "failed": 0}, "POST": {"requests": 90, "failed": f},
             "timeline": {"build": b}} for s, f, b in ((6.0, 0, 1.4), (8.0, 2, 1.6), (7.0, 0, 1.5))]
    plain = [{"seconds": 3.0, "GET": {"requests": 50, "failed": 40}, "POST": {"requests": 45, "failed": 30},
              "timeline": {}}]
    result = bench.summarize({"app": "portfolio", "threads": 4, "fab_deploy": runs, "plain_compose": plain})
    assert result["fab_deploy"]["seconds"] == {"median": 7.0, "p90": 8.0, "min": 6.0, "max": 8.0}
    assert result["fab_deploy"]["GET"] == {"requests": 300, "failed": 0}
    assert result["fab_deploy"]["POST"] == {"requests": 270, "failed": 2}
    assert result["fab_deploy"]["timeline"] == {"build": 1.5}
    assert "timeline" not in result["plain_compose"]
    text = bench.table(result)
    lines = text.splitlines()
    fab_line = next(line for line in lines if line.startswith("fab deploy"))
    plain_line = next(line for line in lines if line.startswith("docker compose"))
    assert fab_line.split()[-9:] == ["3", "7.0", "8.0", "6.0", "8.0", "300", "0", "270", "2"]
    assert plain_line.split()[-9:] == ["1", "3.0", "3.0", "3.0", "3.0", "50", "40", "45", "30"]
    assert "build 1.5" in text


def test_resend_on_idle_close_sends_once_more_only_on_a_reused_connection(server):
    """A reused connection closed with no answer: the request goes once more on a new connection
    (as browsers do on an nginx reload); on a new connection, or a second time, it fails."""
    server.mode = "close-after-post"  # every POST: read, then the connection closes without an answer
    client = loadgen.Client(server.server_address[1], HOST, timeout=DEADLINE, resend_on_idle_close=True)
    assert client.request("POST", "/api/echo", b"{}")[0] == "RemoteDisconnected"  # a new connection
    assert client.resent == 0
    assert client.request("GET", "/health")[0] == 200  # the connection now carried a request
    status, _, error = client.request("POST", "/api/echo", b"{}")
    assert status == "RemoteDisconnected" and error.startswith("POST /api/echo")  # the resend failed too
    assert client.resent == 1 and client.connections == 3
    plain = loadgen.Client(server.server_address[1], HOST, timeout=DEADLINE)
    assert plain.request("GET", "/health")[0] == 200
    assert plain.request("POST", "/api/echo", b"{}")[0] == "RemoteDisconnected" and plain.resent == 0
    client.close()
    plain.close()
