"""The waker's HTTP/1.1 (dockerfiles/waker/onevps_waker_http.py) on raw sockets and
http.client: keep-alive, chunked and Content-Length bodies, Expect: 100-continue,
HTTP/1.0, streamed answers, HEAD, WebSocket handshakes, malformed requests; the
fakes (Docker API, app) are tests/unit/waker_fakes.py's."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import select
import socket
import threading
from dataclasses import replace
from urllib.parse import urlsplit

import pytest

from . import rawhttp
from .rawhttp import read_until_closed
from .waker_fakes import CID, DEADLINE, fake_world, until, waker, waker_served, wh

KB = {"X-Onevps-App": "kb", "Host": "kb.example.com"}


@pytest.fixture
def world():
    """(fake, settings, said): see waker_fakes.fake_world."""
    with fake_world() as made:
        yield made


def awake(world):
    fake, settings, said = world
    fake.running, fake.ready_at = True, 0.0
    return fake, waker.Waker(settings, said.append)


def raw(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=DEADLINE)


def test_one_connection_carries_chunked_sized_and_empty_bodies(world):
    fake, w = awake(world)
    chunked = [b"first part;", b"x" * 70000, b"last"]
    with waker_served(w) as url:
        conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=DEADLINE)
        conn.request("POST", "/a?q=1", body=iter(chunked), headers=KB, encode_chunked=True)
        first = conn.getresponse()
        a = json.loads(first.read())
        local = conn.sock.getsockname()
        conn.request("PUT", "/b", body=b"sized body", headers=KB)
        b = json.loads(conn.getresponse().read())
        conn.request("DELETE", "/c", headers=KB)
        c = json.loads(conn.getresponse().read())
        same = conn.sock.getsockname() == local
        conn.close()
    assert first.status == 200 and first.getheader("connection") is None
    assert a == {"method": "POST", "path": "/a", "query": "q=1", "sha256": hashlib.sha256(b"".join(chunked)).hexdigest(),
                 "host": "kb.example.com", "xff": None, "hop": None}
    assert (b["method"], b["sha256"]) == ("PUT", hashlib.sha256(b"sized body").hexdigest())
    assert (c["method"], c["sha256"]) == ("DELETE", hashlib.sha256(b"").hexdigest())
    assert same, "the three requests went over one kept-alive connection"


def exchange(world, data: bytes) -> tuple[bytes, bytes]:
    """(head, the rest) of what the waker sends back, until it closes, to raw request bytes."""
    fake, w = awake(world)
    with waker_served(w) as url, raw(url) as sock:
        answer = rawhttp.exchange(sock, data)  # a refusal may come before all is sent
    head, _, rest = answer.partition(b"\r\n\r\n")
    return head, rest


def test_a_chunked_body_with_extensions_and_trailers(world):
    head, body = exchange(world, b"POST /t HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: kb\r\nTransfer-Encoding: chunked\r\n"
                          b"Connection: close\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head.lower()
    assert json.loads(body)["sha256"] == hashlib.sha256(b"hello world").hexdigest()


def test_expect_100_continue_is_answered_before_the_body(world):
    fake, w = awake(world)
    with waker_served(w) as url, raw(url) as sock:
        sock.sendall(b"POST /e HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: kb\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        interim = sock.recv(100)
        sock.sendall(b"body")
        answer = read_until_closed(sock)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["sha256"] == hashlib.sha256(b"body").hexdigest()


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
def test_a_streamed_answer_is_relayed_chunked_or_until_close(world, version):
    fake, w = awake(world)
    with waker_served(w) as url, raw(url) as sock:
        sock.sendall(b"GET /stream " + version + b"\r\nHost: kb\r\nX-Onevps-App: kb\r\n\r\n")
        if version == b"HTTP/1.1":  # kept open: read the chunked answer's end
            answer = b""
            while not answer.endswith(b"0\r\n\r\n"):
                data = sock.recv(65536)
                assert data, answer  # closed before the last chunk
                answer += data
        else:
            answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"x-app: kb" in head.lower()
    if version == b"HTTP/1.1":
        assert b"transfer-encoding: chunked" in head.lower() and b"connection: close" not in head.lower()
        assert body.replace(b"\r\n", b"").replace(b"4one,", b"").replace(b"4two,", b"").replace(b"5three", b"") == b"0"
    else:
        assert b"connection: close" in head.lower() and b"transfer-encoding" not in head.lower()
        assert body == b"one,two,three"


def test_head_is_forwarded_without_a_body(world):
    first, rest = exchange(world, b"HEAD /h HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: kb\r\n\r\n"
                           b"GET /_onevps/state HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 "), first
    assert b"content-length: " in first.lower()
    assert rest.startswith(b"HTTP/1.1 200 "), "no body after HEAD: the next answer follows at once"
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["apps"]["kb"]["state"] == "awake"


@pytest.mark.parametrize("app,code", [("kb", 1013), ("nope", 1011)])
def test_a_websocket_handshake_wakes_the_app_and_is_closed_with_try_again(world, app, code):
    fake, settings, said = world
    fake.flag.touch()
    key = base64.b64encode(b"0123456789abcdef")
    with waker_served(waker.Waker(settings, said.append)) as url, raw(url) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: " + app.encode() + b"\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
        answer = read_until_closed(sock)
    head, _, frame = answer.partition(b"\r\n\r\n")
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: " + accept in head
    assert frame == b"\x88\x02" + code.to_bytes(2, "big")
    started = [c for c in fake.calls if c.endswith("/start")]
    assert started == ([f"POST /containers/{CID}/start"] if app == "kb" else [])


APP = b"Host: kb\r\nX-Onevps-App: kb\r\n"


@pytest.mark.parametrize("request_bytes,status", [
    (b"NOT HTTP AT ALL\r\n\r\n", 400), (b"GET / HTTP/2.0\r\n\r\n", 400), (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + APP + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),  # found while streamed
    (b"POST / HTTP/1.1\r\n" + APP + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + APP + b"X-A: one\nX-Injected: two\r\n\r\n", 400),  # bare LF in a value
    (b"GET / HTTP/1.1\r\n" + APP + b"X-A: one\rX-Injected: two\r\n\r\n", 400),  # bare CR in a value
    (b"GET / HTTP/1.1\r\n" + APP + b"X-A: one\0two\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + APP + b"X\nA: one\r\n\r\n", 400),  # bare LF in a name
    (b"GET /a\rb HTTP/1.1\r\n" + APP + b"\r\n", 400), (b"GET /a\nb HTTP/1.1\r\n" + APP + b"\r\n", 400),
    (b"GET /a\0b HTTP/1.1\r\n" + APP + b"\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + APP + b"Content-Length: %d\r\n\r\n" % (20 * 1024 * 1024 + 1), 413),  # nginx's 20m
])
def test_a_malformed_request_is_refused_and_closed(world, request_bytes, status):
    head, _ = exchange(world, request_bytes)
    assert head.startswith(b"HTTP/1.1 %d " % status) and b"connection: close" in head.lower(), head
    assert world[0].calls == []


def test_a_chunked_body_over_the_limit_is_413_and_never_reaches_the_app_whole(world, monkeypatch):
    """A chunked body is streamed to the app as it comes: once its chunks pass MAX_BODY the
    app's connection is cut before the last chunk (the app never has a whole request) and the
    client gets 413."""
    monkeypatch.setattr(wh, "MAX_BODY", 100)
    fake, w = awake(world)
    with waker_served(w) as url, raw(url) as sock:
        answer = rawhttp.exchange(sock, b"POST /big HTTP/1.1\r\n" + APP + b"Transfer-Encoding: chunked\r\n\r\n"
                                  b"50\r\n" + b"a" * 80 + b"\r\n50\r\n" + b"b" * 80 + b"\r\n0\r\n\r\n")
        until(lambda: fake.cut == ["/big"])
    assert answer.startswith(b"HTTP/1.1 413 ") and fake.answered == [], answer[:300]


@pytest.mark.parametrize("body", [b"Content-Length: 10\r\n\r\nabc", b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel"])
def test_a_body_that_stops_coming_is_408_and_closed(world, monkeypatch, body):
    monkeypatch.setattr(wh, "IDLE", 0.3)
    fake, w = awake(world)
    with waker_served(w) as url, raw(url) as sock:
        answer = rawhttp.exchange(sock, b"POST /slow HTTP/1.1\r\n" + APP + body)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer.lower(), answer[:300]


BIG = 768 * 1024  # more than TCP takes in unread, less than LINGER_BYTES: still being sent when the 413 comes


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_gets_its_413_every_time(world, monkeypatch, chunked):
    """413 from the declared Content-Length (or once the chunks pass MAX_BODY), the rest of the body
    unread: the lingering close reads and drops it, so even a strict client (plain http.client
    raises when a send fails) sends it whole and reads the 413. Without it: a reset."""
    monkeypatch.setattr(wh, "MAX_BODY", 1000)
    monkeypatch.setattr(wh, "LINGER_SECONDS", DEADLINE)  # only the byte bound: no race with a busy clock
    fake, w = awake(world)
    with waker_served(w) as url:
        for _ in range(50):
            conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=DEADLINE)
            try:
                conn.request("POST", "/big", body=iter([b"x" * 32768] * (BIG // 32768)) if chunked else b"x" * BIG,
                             headers=KB)
                res = conn.getresponse()
                assert (res.status, res.getheader("connection")) == (413, "close")
                assert json.loads(res.read())["message"] == "Request Entity Too Large: body over 1000 bytes"
            finally:
                conn.close()
    assert fake.calls == []


def test_a_client_that_sends_on_and_on_is_cut_off_after_linger_bytes(world, monkeypatch):
    """The lingering read is bounded: past LINGER_BYTES the waker closes, the client's send fails,
    and the 413 still waits in its socket."""
    monkeypatch.setattr(wh, "LINGER_SECONDS", DEADLINE)  # the byte bound is the one that ends it
    fake, w = awake(world)
    chunk, sent, cap = b"x" * 65536, 0, 64 * wh.LINGER_BYTES  # cap: a failure bound, never reached when it works
    with waker_served(w) as url, raw(url) as sock:
        assert rawhttp.send(sock, b"POST /big HTTP/1.1\r\n" + APP + b"Content-Length: %d\r\n\r\n" % (wh.MAX_BODY + 1))
        while sent < cap and rawhttp.send(sock, chunk):
            sent += len(chunk)
        answer = read_until_closed(sock)
    assert wh.LINGER_BYTES <= sent < cap, "the waker read and dropped LINGER_BYTES, then closed"
    assert rawhttp.status_of(answer) == 413 and fake.calls == []


def test_a_client_that_sends_nothing_more_is_closed_after_linger_seconds(world, monkeypatch):
    """The lingering read is bounded in time too: a client that declares a body, never sends it and
    never closes is closed. Seen from the client: a byte it sends then meets a reset (POLLERR, and
    POLLHUP once the kernel has marked the connection closed: poll may come between the two)."""
    monkeypatch.setattr(wh, "LINGER_SECONDS", 0.2)
    lingered, linger = threading.Event(), wh.linger

    async def observed(reader, writer) -> None:
        await linger(reader, writer)
        lingered.set()

    monkeypatch.setattr(wh, "linger", observed)
    fake, w = awake(world)
    with waker_served(w) as url, raw(url) as sock:
        assert rawhttp.send(sock, b"POST /big HTTP/1.1\r\n" + APP + b"Content-Length: %d\r\n\r\n" % (wh.MAX_BODY + 1))
        assert rawhttp.status_of(read_until_closed(sock)) == 413  # the answer, then EOF (its write side shut)
        assert lingered.wait(DEADLINE), "the lingering read never ended"
        rawhttp.send(sock, b"x")  # to a closed socket (or unread there when it closes): a reset comes back
        poller = select.poll()
        poller.register(sock, select.POLLHUP | select.POLLERR)
        assert [event for _, event in poller.poll(DEADLINE * 1000) if event & (select.POLLHUP | select.POLLERR)]


def test_an_app_that_sends_no_answer_is_504(world, monkeypatch):
    monkeypatch.setattr(waker, "ANSWER_WAIT", 0.3)
    head, body = exchange(world, b"GET /hang HTTP/1.1\r\n" + APP + b"Connection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504 "), head
    assert "did not answer in time" in json.loads(body)["message"]


def test_an_answer_that_stalls_closes_the_connection(world, monkeypatch):
    monkeypatch.setattr(wh, "IDLE", 0.3)
    head, body = exchange(world, b"GET /stall HTTP/1.1\r\n" + APP + b"\r\n")  # kept alive, were it not stalled
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower(), head
    assert body == b"4\r\none,\r\n", "the part sent, then the connection closed without the last chunk"


class Recorder:
    """A StreamWriter's writing end: what was written, call by call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_body_is_written_apart_from_its_head():
    """No concatenated copy of a (large) body: the same object goes to write()."""
    body = b"x" * 100_000

    async def scenario() -> tuple[Recorder, Recorder]:
        answered = Recorder()
        await wh.respond(answered, wh.Request("GET", b"/", b"HTTP/1.1", []), 200, body)
        reader, sent = asyncio.StreamReader(), Recorder()
        reader.feed_data(b"HTTP/1.1 204 No Content\r\n\r\n")
        reader.feed_eof()

        async def connect():
            return reader, sent
        answer = await wh.open_answer(connect, "POST", b"/up", [(b"Host", b"app")], body)
        assert answer.status == 204
        return answered, sent

    answered, sent = asyncio.run(scenario())
    assert answered.writes[-1] is body and answered.writes[0].startswith(b"HTTP/1.1 200 ")
    assert sent.writes[-1] is body and sent.writes[0].endswith(b"Content-Length: 100000\r\n\r\n")


def test_a_head_too_large_is_400():
    async def scenario() -> bytes:
        server = await wh.serve(lambda request, writer: None, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (wh.MAX_HEAD + 10) + b"\r\n\r\n")
        answer = await reader.read()
        writer.close()
        server.close()
        return answer

    assert asyncio.run(scenario()).startswith(b"HTTP/1.1 400 ")


# --- issue 24: nothing a client or an app sends can exhaust the waker ------------------

def test_only_its_clients_are_served_anyone_else_is_reset_unread(world):
    """WAKER_CLIENTS: nginx's address (and 127.0.0.1). From anywhere else (an app container)
    neither /_onevps/state nor a request naming an app gets a byte back."""
    fake, settings, said = world
    fake.running, fake.ready_at = True, 0.0
    w = waker.Waker(replace(settings, clients=frozenset({"10.255.255.2"})), said.append)
    with waker_served(w) as url:
        for request in (b"GET /_onevps/state HTTP/1.1\r\nHost: w\r\n\r\n",
                        b"GET / HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: kb\r\n\r\n"):
            with raw(url) as sock:
                assert rawhttp.exchange(sock, request) == b""
    assert fake.answered == [] and fake.calls == []
    w = waker.Waker(replace(settings, clients=frozenset({"10.255.255.2", "127.0.0.1"})), said.append)
    with waker_served(w) as url, raw(url) as sock:
        assert rawhttp.status_of(rawhttp.exchange(sock, b"GET /_onevps/state HTTP/1.0\r\n\r\n")) == 200


def test_past_max_connections_a_connection_gets_503_with_retry_after_and_the_others_go_on(world):
    fake, settings, said = world
    fake.running, fake.ready_at = True, 0.0
    w = waker.Waker(replace(settings, max_connections=2), said.append)
    with waker_served(w) as url:
        first, second = raw(url), raw(url)
        try:
            first.sendall(b"GET /one HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: kb\r\n\r\n")
            assert rawhttp.status_of(first.recv(65536)) == 200  # both are taken in
            with raw(url) as third:
                busy = read_until_closed(third)
            assert rawhttp.status_of(busy) == 503 and b"retry-after: 5" in busy.lower(), busy
            second.sendall(b"GET /two HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: kb\r\nConnection: close\r\n\r\n")
            assert rawhttp.status_of(read_until_closed(second)) == 200
        finally:
            first.close()
            second.close()
        until(lambda: fake.answered == ["/one", "/two"])
        with raw(url) as again:  # the slots are free again
            again.sendall(b"GET /three HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: kb\r\nConnection: close\r\n\r\n")
            assert rawhttp.status_of(read_until_closed(again)) == 200


def test_past_max_held_a_request_for_a_sleeping_app_gets_503_with_retry_after(world):
    fake, settings, said = world
    fake.flag.touch()
    fake.start_delay = float("inf")  # the wake goes on until the test ends
    w = waker.Waker(replace(settings, max_held=1), said.append)
    with waker_served(w) as url, raw(url) as held:
        held.sendall(b"GET /held HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: kb\r\n\r\n")
        until(lambda: w.held() == 1)
        with raw(url) as sock:
            answer = rawhttp.exchange(sock, b"POST /more HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: kb\r\n"
                                      b"Content-Length: 5\r\n\r\nhello")
        assert rawhttp.status_of(answer) == 503 and b"retry-after: 5" in answer.lower(), answer
        assert "1 requests already wait for sleeping apps: one for kb got 503" in said


def test_a_body_stays_in_the_clients_socket_until_the_app_is_awake_then_reaches_it_whole(world):
    """The waker reads no byte of a held request's body past its reader's buffer: a client
    sending a body far larger than that finishes sending only once the app is awake."""
    fake, settings, said = world
    fake.flag.touch()
    fake.start_delay = float("inf")
    w = waker.Waker(settings, said.append)
    body = bytes(range(256)) * (16 * 4096)  # 16 MiB
    sent = threading.Event()
    with waker_served(w) as url, raw(url) as sock:
        def send() -> None:
            rawhttp.send(sock, b"POST /up HTTP/1.1\r\nHost: kb\r\nX-Onevps-App: kb\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            rawhttp.send(sock, body)
            sent.set()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        until(lambda: f"POST /containers/{CID}/start" in fake.calls)
        assert not sent.wait(1.0), "the waker took in a 16 MiB body while the app slept"
        fake.ready_at = 0.0  # healthy now
        answer = read_until_closed(sock)
        sender.join(DEADLINE)
    assert rawhttp.status_of(answer) == 200, answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["sha256"] == hashlib.sha256(body).hexdigest()


def test_an_answer_read_by_the_waker_itself_is_read_up_to_its_limit():
    """An app whose /health (or the Docker proxy, whose answer) never ends: the waker stops
    reading at the limit (BadMessage: the app is not healthy) instead of holding it all."""
    async def scenario() -> tuple[str, int]:
        wrote = [0]

        async def endless(reader, writer) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                while True:
                    writer.write(b"10000\r\n" + b"x" * 65536 + b"\r\n")
                    wrote[0] += 65536
                    await writer.drain()
            except OSError:
                writer.close()

        server = await asyncio.start_server(endless, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await wh.fetch(lambda: asyncio.open_connection("127.0.0.1", port), "GET", "/health", [], DEADLINE, 1 << 20)
        except wh.BadMessage as exc:
            return str(exc), wrote[0]
        finally:
            server.close()
        return "no error", wrote[0]

    error, wrote = asyncio.run(scenario())
    assert error == f"an answer over {1 << 20} bytes"
    assert wrote < 64 << 20  # it stopped: the endless server's writes were bounded by the waker's reading
