"""HTTP/1.1 on asyncio streams for the waker (standard library only): the server
that holds requests (keep-alive, bodies by Content-Length or chunked, Expect:
100-continue; a refused request's connection closed the lingering way), one-request
client connections (to the apps over TCP, to the Docker proxy over its unix socket)
and the relay of an answer back.

Memory is bounded whatever a client or an app sends (issue 24): a request's body
is never held, it stays in the client's socket until the app is awake and is then
streamed to it (READ bytes at a time); a head is MAX_HEAD bytes at most; the server
takes only its allowed clients (nginx) and at most max_connections at once; an
answer the waker reads itself (/health, /activity, the Docker proxy's) is read up
to a size limit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from dataclasses import dataclass
from http import HTTPStatus

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
                        b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
MAX_HEAD = 64 * 1024  # bytes of a head (start line + headers), and of a chunk-size line
MAX_BODY = 20 * 1024 * 1024  # bytes of a request body: the most NGINX_MAX_BODY may be (settings_keys.WAKER_MAX_BODY)
IDLE = 75.0  # seconds a kept-alive connection may wait for its next request; one body read or relay step too
READ = 64 * 1024
LINGER_BYTES = 1 << 20  # what a lingering close reads and drops at most...
LINGER_SECONDS = 2.0  # ...and for how long: a client that sends on and on is cut off
HEX = frozenset(b"0123456789abcdefABCDEF")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# What a failed connection, a broken or malformed message or a timeout raises.
FAILURES = (OSError, EOFError, ValueError, asyncio.LimitOverrunError)
CONTROL = (b"\r", b"\n", b"\0")  # never inside a target, a header name or a header value


class BadMessage(ValueError):
    """A request or answer that is not HTTP/1.x as this reads it; `status` is the answer to it."""

    status = 400


def refusal(exc: BadMessage) -> dict:
    """The JSON answer to a request refused for what it sent (its status is exc.status)."""
    return {"message": f"{HTTPStatus(exc.status).phrase}: {exc}"}


class TooLarge(BadMessage):
    """A request body over MAX_BODY."""

    status = 413


class SlowClient(BadMessage):
    """A request body that did not come within IDLE seconds."""

    status = 408


_BUSY = b'{"message": "the waker has too many connections, try again"}'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY))


def has_control(text: bytes) -> bool:
    return any(c in text for c in CONTROL)


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a header (name in lower case), or None."""
    return next((v for k, v in headers if k.lower() == name), None)


def tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """The comma-separated tokens of every such header, lower case."""
    return {t.strip().lower() for k, v in headers if k.lower() == name for t in v.split(b",")}


def parse_headers(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    out = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name or b"\t" in name or has_control(line):
            raise BadMessage("malformed header line")
        out.append((name, value.strip()))
    return out


def body_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """A request's body length: Content-Length, 0 without one, None when chunked."""
    if header(headers, b"transfer-encoding") is not None:
        if tokens(headers, b"transfer-encoding") != {b"chunked"} or header(headers, b"content-length") is not None:
            raise BadMessage("unsupported Transfer-Encoding")
        return None
    lengths = {v for k, v in headers if k.lower() == b"content-length"}
    if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
        raise BadMessage("bad Content-Length")
    length = int(lengths.pop()) if lengths else 0
    if length > MAX_BODY:
        raise TooLarge(f"body over {MAX_BODY} bytes")
    return length


async def read_head(reader: asyncio.StreamReader) -> list[bytes] | None:
    """A message's head as lines (start line first); None at a clean end of the stream."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadMessage("the stream ended inside a head") from None
    except asyncio.LimitOverrunError:
        raise BadMessage("head too large") from None
    return raw.lstrip(b"\r\n")[:-4].split(b"\r\n")


async def read_chunks(reader: asyncio.StreamReader, idle: float | None = None, limit: int | None = None):
    """The data of a chunked body, chunk by chunk (extensions and trailers dropped): each
    chunk within `idle` seconds; TooLarge once the total would pass `limit` bytes."""
    total = 0
    while True:
        async with asyncio.timeout(idle):
            size = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
            if not size or not set(size) <= HEX or len(size) > 15:
                raise BadMessage("bad chunk size")
            total += int(size, 16)
            if limit is not None and total > limit:
                raise TooLarge(f"body over {limit} bytes")
            if int(size, 16) == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            data = await reader.readexactly(int(size, 16))
            if await reader.readexactly(2) != b"\r\n":
                raise BadMessage("a chunk does not end with CRLF")
        yield data


@dataclass
class Request:
    """One request as the server read it: its head; its body is read by `stream` (once)."""

    method: str
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    length: int | None = 0  # the body's length; None: chunked
    reader: asyncio.StreamReader | None = None  # the client's connection
    writer: asyncio.StreamWriter | None = None
    idle: float = IDLE  # seconds each piece of the body may take
    done: bool = True  # the body was read whole (or there is none): the connection may carry another request
    error: BadMessage | None = None  # what went wrong with the body, as the client sent it

    def __post_init__(self) -> None:
        self.done = self.length == 0

    async def stream(self):
        """The body's data as the client sends it (chunked framing removed), READ bytes at
        most a piece, each piece within `idle` seconds: SlowClient (408) when it stops
        coming, TooLarge (413) past MAX_BODY, BadMessage when it is malformed or cut off.
        Nothing of it is kept here."""
        if self.done:
            return
        try:
            if b"100-continue" in tokens(self.headers, b"expect") and self.version == b"HTTP/1.1":
                self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if self.length is None:
                async for data in read_chunks(self.reader, self.idle, MAX_BODY):
                    yield data
            else:
                left = self.length
                while left:
                    async with asyncio.timeout(self.idle):
                        data = await self.reader.read(min(left, READ))
                    if not data:
                        raise BadMessage("the stream ended inside a body")
                    left -= len(data)
                    yield data
        except TimeoutError:
            self.error = SlowClient(f"the body did not come within {self.idle:g} s")
            raise self.error from None
        except asyncio.IncompleteReadError:
            self.error = BadMessage("the stream ended inside a body")
            raise self.error from None
        except BadMessage as exc:
            self.error = exc
            raise
        self.done = True

    async def client_gone(self, every: float = 0.25) -> None:
        """Returns once the client closed its connection. Its body may still wait unread in
        the reader (so not at_eof(): the end of the stream has come, `_eof`, CPython's
        StreamReader since 3.4); a body too large for the reader's buffer hides the end
        until the wake is over. A client that only half-closes looks gone too: nginx and
        browsers never do."""
        while self.reader is None or not (self.reader.at_eof() or getattr(self.reader, "_eof", False)):
            await asyncio.sleep(every)

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("latin-1")

    @property
    def keep_alive(self) -> bool:
        """The connection may carry another request: the client wants it and the body was read whole."""
        connection = tokens(self.headers, b"connection")
        wanted = b"close" not in connection if self.version == b"HTTP/1.1" else b"keep-alive" in connection
        return wanted and self.done

    @property
    def websocket(self) -> bool:
        return b"websocket" in tokens(self.headers, b"upgrade")


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       idle: float | None = None) -> Request | None:
    """The next request's head (its body is left to Request.stream), within `idle` seconds
    (IDLE); None when the client closed the connection or stayed idle too long. BadMessage
    (TooLarge for a Content-Length over MAX_BODY) when the head is not one to forward."""
    idle = IDLE if idle is None else idle
    try:
        async with asyncio.timeout(idle):  # not wait_for: see open_answer
            lines = await read_head(reader)
    except TimeoutError:
        return None
    if lines is None:
        return None
    parts = lines[0].split(b" ")
    if (len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[0].isalpha() or not parts[1]
            or has_control(parts[1])):
        raise BadMessage("malformed request line")
    headers = parse_headers(lines[1:])
    return Request(parts[0].decode("ascii"), parts[1], parts[2], headers, body_length(headers), reader, writer, idle)


def head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """An answer's status line and headers."""
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    lines = [b"HTTP/1.1 %d %s" % (status, reason.encode()), *(k + b": " + v for k, v in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def respond(writer: asyncio.StreamWriter, request: Request, status: int, body: bytes | dict,
                  headers: list[tuple[bytes, bytes]] = ()) -> bool:
    """A whole answer (JSON for a dict); whether the connection stays open."""
    if isinstance(body, dict):
        body, headers = json.dumps(body).encode(), [(b"content-type", b"application/json"), *headers]
    keep = request.keep_alive
    framing = [(b"content-length", b"%d" % len(body))] + ([] if keep else [(b"connection", b"close")])
    writer.write(head(status, [*headers, *framing]))
    if body and request.method != "HEAD":
        writer.write(body)
    await writer.drain()
    return keep


def websocket_close(key: bytes, code: int) -> bytes:
    """The 101 answer to a WebSocket handshake and at once a close frame with `code`."""
    accept = base64.b64encode(hashlib.sha1(key.strip() + WS_GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + b"\x88\x02" + code.to_bytes(2, "big"))


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """nginx's lingering close, for an answer sent before the request was read whole (a 400,
    413 or 408: its body, or the rest of it, unread). Closing a socket with unread data sends a
    TCP reset, which fails the client's send and can destroy the answer in its receive buffer.
    So: shut the write side (the client reads the answer, then EOF), then read and drop what
    the client still sends, LINGER_BYTES and LINGER_SECONDS at most, until it closes; the
    caller then closes. The reader holds at most 2 * its limit (MAX_HEAD) bytes: nothing
    discarded is buffered beyond that."""
    left = LINGER_BYTES
    try:
        if writer.can_write_eof():
            writer.write_eof()  # after what is queued: the answer goes out whole first
        async with asyncio.timeout(LINGER_SECONDS):
            while left > 0 and (data := await reader.read(min(left, READ))):
                left -= len(data)
    except FAILURES:  # the client reset the connection, or the time is up (TimeoutError)
        pass


async def serve(handle, host: str, port: int, clients: frozenset[str] = frozenset(),
                max_connections: int = 0) -> asyncio.Server:
    """A listening server: each connection's requests, one after another, go to
    `await handle(request, writer)`, which answers and says whether to keep the connection.
    Only peers whose address is in `clients` (when given) are served: any other connection
    is reset before a byte of it is read. Past `max_connections` (when given) at once, a
    connection gets a 503 with Retry-After and is closed (the lingering way; past as many
    again being turned away, reset at once: memory stays bounded in a flood)."""
    active = refusing = 0

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active, refusing
        peer = writer.get_extra_info("peername")
        if clients and (not isinstance(peer, tuple) or peer[0] not in clients):
            writer.transport.abort()
            return
        if max_connections and active >= max_connections:
            if refusing >= max_connections:
                writer.transport.abort()
                return
            refusing += 1
            try:
                writer.write(BUSY)
                await linger(reader, writer)
            finally:
                refusing -= 1
                writer.close()
            return
        active += 1
        try:
            while True:
                try:
                    request = await read_request(reader, writer)
                except BadMessage as exc:
                    bad = Request("GET", b"/", b"HTTP/1.0", [])
                    await respond(writer, bad, exc.status, refusal(exc))
                    await linger(reader, writer)  # answered before the request was read whole
                    break
                if request is None:
                    break
                keep = await handle(request, writer)
                if not request.done:  # answered without its body (or the body failed): never read on
                    await linger(reader, writer)
                    break
                if not keep:
                    break
        except FAILURES:
            pass  # the client went away, or an app's answer broke off after its head was sent
        finally:
            active -= 1
            writer.close()

    return await asyncio.start_server(connection, host, port, limit=MAX_HEAD, reuse_address=True)


# --- the client side: one request per connection --------------------------------

@dataclass
class Answer:
    """An answer whose head is read; its body is read from `reader`."""

    status: int
    headers: list[tuple[bytes, bytes]]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    length: int | None  # the body's length; None: chunked; -1: until the connection closes

    async def chunks(self):
        """The body's data as it comes (chunked framing removed)."""
        if self.length is None:
            async for chunk in read_chunks(self.reader):
                yield chunk
            return
        left = self.length
        while left:
            data = await self.reader.read(READ if left < 0 else min(left, READ))
            if not data:
                if left > 0:
                    raise BadMessage("the answer ended before its Content-Length")
                return
            left = left if left < 0 else left - len(data)
            yield data

    async def read(self, limit: int) -> bytes:
        """The whole body; BadMessage past `limit` bytes (nothing more is read)."""
        out, total = [], 0
        async for chunk in self.chunks():
            total += len(chunk)
            if total > limit:
                raise BadMessage(f"an answer over {limit} bytes")
            out.append(chunk)
        return b"".join(out)

    def close(self) -> None:
        self.writer.close()


def answer_length(method: str, status: int, headers: list[tuple[bytes, bytes]]) -> int | None:
    if method == "HEAD" or status in (204, 304) or status < 200:
        return 0
    if header(headers, b"transfer-encoding") is not None:
        return None if tokens(headers, b"transfer-encoding") & {b"chunked"} else -1
    length = header(headers, b"content-length")
    if length is None:
        return -1
    if not length.isdigit():
        raise BadMessage("bad Content-Length in an answer")
    return int(length)


async def send_body(writer: asyncio.StreamWriter, body: "bytes | Request") -> None:
    """A request's body to an app: bytes whole, or a client's Request streamed piece by
    piece (chunked framing anew when the client chunked it); each write within IDLE seconds."""
    if isinstance(body, bytes):
        writer.write(body)
        return await writer.drain()
    async for data in body.stream():
        writer.write(b"%x\r\n%s\r\n" % (len(data), data) if body.length is None else data)
        async with asyncio.timeout(IDLE):
            await writer.drain()
    if body.length is None:
        writer.write(b"0\r\n\r\n")
    async with asyncio.timeout(IDLE):
        await writer.drain()


async def open_answer(connect, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: "bytes | Request" = b"", connect_timeout: float = 10.0,
                      answer_wait: float | None = None) -> Answer:
    """Send one request on a new connection (`await connect()` opens it; Connection: close),
    its body bytes or a client's Request streamed (see send_body), and read the answer's
    head within `answer_wait` seconds of the body's end (informational 1xx answers skipped).
    An app that stops reading the body and closes may have answered already (a 413, a 401):
    that answer is read. A failure of the client's body is raised as it is (Request.error)."""
    # asyncio.timeout, never wait_for: Python 3.11's wait_for loses a cancellation that
    # arrives as the awaited call completes, and so would a caller's own timeout (a wake
    # held a request for ever, seen beside CPU burners); asyncio.timeout keeps it.
    async with asyncio.timeout(connect_timeout):
        reader, writer = await connect()
    try:
        streamed = isinstance(body, Request)
        sized = bool(body) if not streamed else body.length != 0
        sized = sized or method in ("POST", "PUT", "PATCH")
        framing = [b"Transfer-Encoding: chunked"] if streamed and body.length is None else \
            [b"Content-Length: %d" % (body.length if streamed else len(body))] if sized else []
        lines = [method.encode() + b" " + target + b" HTTP/1.1", *(k + b": " + v for k, v in headers),
                 b"Connection: close", *framing]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        try:
            await send_body(writer, body)
        except (OSError, TimeoutError):
            pass  # the app stopped reading the body: its answer may be there already
        async with asyncio.timeout(answer_wait):
            while True:
                lines = await read_head(reader)
                parts = (lines or [b""])[0].split(b" ", 2)
                if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                    raise BadMessage("malformed status line")
                status, answer_headers = int(parts[1]), parse_headers(lines[1:])
                if status >= 200 or status == 101:
                    return Answer(status, answer_headers, reader, writer, answer_length(method, status, answer_headers))
    except BaseException:
        writer.close()
        raise


async def fetch(connect, method: str, target: str, headers: list[tuple[bytes, bytes]],
                timeout: float, limit: int) -> tuple[int, bytes]:
    """(status, body) of one whole call within `timeout` seconds; BadMessage when the
    answer's body passes `limit` bytes."""
    async with asyncio.timeout(timeout):
        answer = await open_answer(connect, method, target.encode("latin-1"), headers, connect_timeout=timeout)
        try:
            return answer.status, await answer.read(limit)
        finally:
            answer.close()


async def relay(answer: Answer, request: Request, writer: asyncio.StreamWriter) -> bool:
    """An app's answer to the client, streamed: hop-by-hop headers dropped, framed anew;
    whether the client's connection stays open."""
    keep, chunked = request.keep_alive, False
    kept = [(k, v) for k, v in answer.headers if k.lower() not in HOP_BY_HOP]
    if answer.length is None or answer.length < 0:  # chunked or until close: framed anew
        kept = [(k, v) for k, v in kept if k.lower() != b"content-length"]
        if request.version == b"HTTP/1.1":
            kept, chunked = [*kept, (b"transfer-encoding", b"chunked")], True
        else:
            keep = False
    writer.write(head(answer.status, kept + ([] if keep else [(b"connection", b"close")])))
    chunks = answer.chunks() if answer.length != 0 else None  # HEAD, 204, 304: the app's Content-Length stays
    while chunks is not None:  # each step (read from the app, write to the client) within IDLE seconds
        async with asyncio.timeout(IDLE):
            data = await anext(chunks, None)
            if data is None:
                break
            writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)  # a chunk is READ bytes at most
            await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")
    await writer.drain()
    return keep
