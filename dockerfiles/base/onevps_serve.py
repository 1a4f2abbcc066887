"""uvicorn, with a shutdown that fails no request already on its way to it.

    python -m onevps_serve main:app --host 0.0.0.0 --port 8000 ...

takes every option of `uvicorn`; only its graceful shutdown (SIGTERM, as
`docker stop` sends) changes. uvicorn alone closes its listening socket with
connections still queued in the kernel, which the kernel then resets, and it
closes connections whose request it has not read yet: in both cases nginx has
already sent the request, so it cannot retry a POST elsewhere (a 502). Here:

1. the connections the kernel has queued are accepted and served;
2. the listening socket closes: a new connection is refused, which nginx
   retries on the app's other server for every method (nothing was sent);
3. a short pause lets the requests on the connections just taken arrive;
4. then uvicorn's own graceful shutdown: the requests in flight complete.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

from uvicorn import server as uvicorn_server
from uvicorn.main import main

GRACE = 0.3  # seconds for a request on a connection just accepted to arrive
_uvicorn_shutdown = uvicorn_server.Server.shutdown


def _accept_queued(loop: asyncio.AbstractEventLoop, srv: asyncio.base_events.Server) -> None:
    """Accept what the kernel has queued on srv's listening sockets and serve it."""
    for listening in srv.sockets or ():
        sock = socket.socket(fileno=os.dup(listening.fileno()))  # a second handle, closed below
        sock.setblocking(False)
        try:
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                conn.setblocking(False)
                loop.create_task(loop.connect_accepted_socket(srv._protocol_factory, conn))
        finally:
            sock.close()


async def shutdown(self: uvicorn_server.Server, sockets: list[socket.socket] | None = None) -> None:
    loop = asyncio.get_running_loop()
    for srv in self.servers:
        _accept_queued(loop, srv)
        srv.close()
    await asyncio.sleep(GRACE)
    await _uvicorn_shutdown(self, sockets)


uvicorn_server.Server.shutdown = shutdown  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "uvicorn"
    sys.exit(main())
