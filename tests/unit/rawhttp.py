"""Client sides for the socket-level tests, written for servers that may answer early.

A server may refuse a request (400, 403, 413...) from its head alone and close
before it has read the body. The client's sending of the rest then fails
(EPIPE, ECONNRESET) while the answer already waits in its receive buffer; and a
server that closes with unread data resets the connection, so the end of the
answer can read as ECONNRESET instead of EOF. A client must read the answer it
was given either way: these helpers do (raw sockets, and http.client, which
raises on the send but can still read the answer after it).
"""

from __future__ import annotations

import http.client
import socket

SEND_FAILURES = (BrokenPipeError, ConnectionResetError)  # the server closed (or reset) before it had everything


def send(sock: socket.socket, *parts: bytes) -> bool:
    """Send the parts in order; False if the server closed before it had them all."""
    try:
        for part in parts:
            sock.sendall(part)
    except SEND_FAILURES:
        return False
    return True


def read_until_closed(sock: socket.socket) -> bytes:
    """All the server sent until it closed: EOF, or a reset after its answer (a close with unread data)."""
    out = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def exchange(sock: socket.socket, *parts: bytes) -> bytes:
    """Send the parts (a failed send is an early answer, not an error), then read the answer whole."""
    send(sock, *parts)
    return read_until_closed(sock)


def status_of(answer: bytes) -> int | None:
    """The status code of an answer's status line, or None."""
    parts = answer.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit() else None


def getresponse(conn: http.client.HTTPConnection, method: str, target: str, **request) -> http.client.HTTPResponse:
    """conn.request(...) then conn.getresponse(), the answer read even when sending the body failed:
    http.client counts the request as sent from its head on, so getresponse() reads what came."""
    try:
        conn.request(method, target, **request)
    except SEND_FAILURES:
        pass  # answered early and closed: the answer is still to be read
    return conn.getresponse()
