"""http.client over a unix socket: how tests, benchmarks and a shell in the waker's
container talk to the Docker proxy (or the engine). The proxy itself does not use it."""

from __future__ import annotations

import http.client
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTPConnection to the server listening on the unix socket `path`."""

    def __init__(self, path: str, timeout: float = 60.0):
        super().__init__("docker", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock
