"""A small steady load through nginx, for the deploy tests and benchmarks.

Each thread keeps ONE keep-alive HTTP/1.1 connection (stdlib http.client) to
127.0.0.1:<port>, with the Host header of one app, and alternates on it:

- GET <path> (default /health; the "version" of its JSON answers is collected
  in `versions`);
- POST <post_path> (default /api/echo) with a JSON body of about 400 bytes,
  different every time; the app must answer 2xx with the body's "bytes" and
  "sha256", and a receipt that does not match counts as failed ("bad echo").
  `post_path=None` loads with GETs only.

Every answer that is not 2xx, every bad echo and every exception (refused,
reset, EOF after the request was sent, timeout...) counts as a failed request,
per method and under its status code or exception class name. A request is
never retried; after an exception its connection is closed and the next
request opens a new one. A server may answer before it has read a request's
body (a 413, a 403) and close: sending the rest then fails (EPIPE, ECONNRESET)
while its answer waits in the socket; that answer is read and counted as what
it is, and only a send failure with no answer behind it counts as the
exception.

Like every HTTP/1.1 client library (urllib3, browsers), a connection the
server closed while it was idle is not reused: before each request the
socket is polled without blocking, and if it is readable (the server's FIN,
or bytes nobody asked for) the connection is replaced by a new one
(`reconnects` counts these). A server that closes a connection just as a
request goes out on it still fails that request, as it would for any client.

`resend_on_idle_close=True` (for what reloads nginx: `fab certs`) adds what
browsers do when a server closes an idle keep-alive connection just as a
request goes out on it, as nginx does to every idle connection on a reload:
a request whose *reused* connection ended with no byte of an answer is sent
once more on a new connection (`resent` counts these; anything else still
fails). The deploy tests never use it: a deploy does not reload nginx.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import select
import socket
import threading
import time
from collections import Counter

MAX_ERRORS = 50  # error strings kept; every failure is counted either way
BAD_ECHO = "bad echo"  # the key of a 2xx POST answer whose receipt does not match the body
METHODS = ("GET", "POST")


def post_body(n: int) -> bytes:
    """A contact-form-like JSON body of about 400 bytes, different every time."""
    return json.dumps({
        "name": "Load Tester", "email": "load@example.com", "subject": f"message {n}",
        "message": "Hello! This is a steady load checking that a deploy fails no request. " * 4,
        "nonce": os.urandom(16).hex(),
    }).encode()


def peer_closed(sock: socket.socket | None) -> bool:
    """True if an idle connection must not carry another request: no socket, or readable now."""
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def is_failure(key: object) -> bool:
    """A status key that is not a 2xx code: another code, an exception class, a bad echo."""
    return not (isinstance(key, int) and 200 <= key < 300)


def failed_count(counts: Counter) -> int:
    """Requests in `counts` (status key -> number) that failed."""
    return sum(n for key, n in counts.items() if is_failure(key))


def format_counts(counts: Counter) -> str:
    """'200: 812, 502: 2' sorted by key."""
    return ", ".join(f"{key}: {n}" for key, n in sorted(counts.items(), key=lambda kv: str(kv[0])))


class Client:
    """One keep-alive connection to address:port (127.0.0.1, or a test's own server) for one Host;
    one request at a time, never retried."""

    def __init__(self, port: int, host: str, timeout: float = 30, resend_on_idle_close: bool = False,
                 address: str = "127.0.0.1"):
        self.conn = http.client.HTTPConnection(address, port, timeout=timeout)
        self.host = host
        self.resend_on_idle_close = resend_on_idle_close
        self.connections = 0  # connections opened
        self.reconnects = 0  # idle connections found closed by the server, replaced before use
        self.resent = 0  # requests sent again after their reused connection closed with no answer
        self._used = False  # the open connection has carried a request already

    def _ready(self) -> None:
        if self.conn.sock is not None and peer_closed(self.conn.sock):
            self.conn.close()
            self.reconnects += 1
        if self.conn.sock is None:
            self.conn.connect()
            self.connections += 1
            self._used = False

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int | str, bytes, str | None]:
        """(status code or exception class name, answer body, error text or None)."""
        headers = {"Host": self.host}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            self._ready()
            reused = self._used
            try:
                res = self._send(method, path, body, headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not (self.resend_on_idle_close and reused):
                    raise
                self.conn.close()  # closed before a status line came: once more, on a new connection
                self.resent += 1
                self._ready()
                res = self._send(method, path, body, headers)
            data = res.read()
        except Exception as exc:  # noqa: BLE001 - every failure counts
            self.conn.close()
            self._used = False
            return type(exc).__name__, b"", f"{method} {path}: {exc!r}"
        self._used = not res.will_close
        if res.will_close:
            self.conn.close()
        if is_failure(res.status):
            return res.status, data, f"{method} {path}: {res.status}: {data[:80]!r}"
        return res.status, data, None

    def _send(self, method: str, path: str, body: bytes | None, headers: dict) -> http.client.HTTPResponse:
        """The request sent and the answer's status line and headers read (not its body). A send
        that fails may have met an early answer: http.client still reads it (the request counts as
        sent from endheaders on); with none there, the send's own error is raised."""
        try:
            self.conn.request(method, path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError) as sent:
            try:
                return self.conn.getresponse()
            except (OSError, http.client.HTTPException):
                raise sent from None
        return self.conn.getresponse()

    def close(self) -> None:
        self.conn.close()


def json_of(data: bytes) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def check_echo(status: int | str, data: bytes, body: bytes) -> str | None:
    """Why a 2xx answer to a POST of `body` is not its receipt, or None if it is."""
    if is_failure(status):
        return None
    receipt = json_of(data)
    if receipt.get("bytes") == len(body) and receipt.get("sha256") == hashlib.sha256(body).hexdigest():
        return None
    return f"{status} but {data[:120]!r} is no receipt of {len(body)} bytes sha256 {hashlib.sha256(body).hexdigest()[:12]}"


class Load:
    """`with Load(port, host) as load:` loads the app for the block's duration (plus `settle` s each side)."""

    def __init__(self, port: int, host: str, path: str = "/health", threads: int = 3, timeout: float = 30,
                 post_path: str | None = "/api/echo", settle: float = 1.0, resend_on_idle_close: bool = False,
                 address: str = "127.0.0.1"):
        self.port, self.host, self.path, self.post_path = port, host, path, post_path
        self.address = address
        self.resend_on_idle_close = resend_on_idle_close
        self.resent = 0  # requests sent again after a reused connection closed with no answer
        self.timeout, self.settle = timeout, settle
        self.stop = threading.Event()
        self.by_method: dict[str, Counter] = {m: Counter() for m in METHODS}
        self.versions: list[str] = []
        self.errors: list[str] = []
        self.connections = 0  # connections opened, summed as the threads end
        self.reconnects = 0  # idle connections the server had closed, replaced before use
        self.seconds = 0.0
        self.latencies: list[float] = []  # seconds from sending a request to its whole answer, every request
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _get(self, client: Client) -> None:
        t0 = time.monotonic()
        status, data, error = client.request("GET", self.path)
        took = time.monotonic() - t0
        version = None if is_failure(status) else json_of(data).get("version")
        self._count("GET", status, error, version, took)

    def _post(self, client: Client, n: int) -> None:
        body = post_body(n)
        t0 = time.monotonic()
        status, data, error = client.request("POST", self.post_path, body)
        took = time.monotonic() - t0
        bad = check_echo(status, data, body)
        if bad:
            status, error = BAD_ECHO, f"POST {self.post_path}: {bad}"
        self._count("POST", status, error, None, took)

    def _count(self, method: str, status: int | str, error: str | None, version: object, took: float) -> None:
        with self._lock:
            self.by_method[method][status] += 1
            self.latencies.append(took)
            if isinstance(version, str):
                self.versions.append(version)
            if error and len(self.errors) < MAX_ERRORS:
                self.errors.append(error)

    def _run(self, index: int) -> None:
        client = Client(self.port, self.host, self.timeout, self.resend_on_idle_close, self.address)
        n = index  # threads start on alternate methods
        while not self.stop.is_set():
            if self.post_path and n % 2:
                self._post(client, n)
            else:
                self._get(client)
            n += 1
        client.close()
        with self._lock:
            self.connections += client.connections
            self.reconnects += client.reconnects
            self.resent += client.resent

    def __enter__(self) -> "Load":
        self._t0 = time.monotonic()
        for t in self.threads:
            t.start()
        time.sleep(self.settle)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(self.settle)
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.timeout + 30)
        self.seconds = time.monotonic() - self._t0

    @property
    def status(self) -> Counter:
        """Requests of every method by status code, exception class name or BAD_ECHO."""
        with self._lock:
            return sum(self.by_method.values(), Counter())

    @property
    def failed(self) -> int:
        return failed_count(self.status)

    @property
    def total(self) -> int:
        return sum(self.status.values())

    def percentile(self, p: float) -> float:
        """The p-th percentile of the requests' latencies in seconds (nearest rank; 0 with none)."""
        with self._lock:
            ranked = sorted(self.latencies)
        if not ranked:
            return 0.0
        return ranked[max(0, math.ceil(p / 100 * len(ranked)) - 1)]

    @property
    def p99(self) -> float:
        return self.percentile(99)

    def failed_of(self, method: str) -> int:
        with self._lock:
            return failed_count(self.by_method[method])

    def total_of(self, method: str) -> int:
        with self._lock:
            return sum(self.by_method[method].values())

    def summary(self) -> str:
        """One line for assertion messages: totals, counts per method, the first errors."""
        with self._lock:
            counts = {m: Counter(c) for m, c in self.by_method.items()}
        parts = [f"{m} {sum(c.values())} ({format_counts(c)})" for m, c in counts.items() if c]
        first = " | ".join(self.errors[:3])
        failed = sum(failed_count(c) for c in counts.values())
        total = sum(sum(c.values()) for c in counts.values())
        return (f"{failed} failed of {total} requests in {self.seconds:.1f} s (p99 {self.p99 * 1000:.0f} ms) "
                f"on {self.connections} "
                f"connection(s), {self.reconnects} reconnect(s) after an idle close"
                + (f", {self.resent} resent after a close with no answer" if self.resend_on_idle_close else "")
                + f": {'; '.join(parts)}"
                + (f"; first errors: {first}" if first else ""))


def main(argv: list[str]) -> int:
    """`python3 loadgen.py ADDRESS PORT HOST REQUESTS [THREADS]`: the well-behaved client of the
    attack tests, run in a container of its own (its own address): keep-alive GET+POST until
    REQUESTS answers (REQUESTS "stdin": until its standard input closes, for as long as an
    attack lasts; it prints "running" once its first answer came), then one JSON line: total,
    failed, status counts, p99 (ms), first errors."""
    address, port, host = argv[0], int(argv[1]), argv[2]
    wanted = None if argv[3] == "stdin" else int(argv[3])
    threads = int(argv[4]) if len(argv) > 4 else 2
    closed = threading.Event()
    if wanted is None:
        import sys
        threading.Thread(target=lambda: (sys.stdin.buffer.read(), closed.set()), daemon=True).start()
    with Load(port, host, threads=threads, settle=0, address=address) as load:
        said = wanted is not None
        while not closed.is_set() and (wanted is None or load.total < wanted) \
                and any(t.is_alive() for t in load.threads):
            if not said and load.total:
                print("running", flush=True)  # "stdin" mode: an attack may start now
                said = True
            time.sleep(0.05)
    print(json.dumps({"total": load.total, "failed": load.failed, "p99_ms": round(load.p99 * 1000, 1),
                      "status": {str(k): v for k, v in load.status.items()}, "errors": load.errors[:5],
                      "summary": load.summary()}))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
