"""One shell on the server for every command of a task, over one SSH channel.

Each command over its own SSH channel costs a channel, a new shell and the
wait for its exit status: 0.3-0.5 s on these machines, for `rm -f`; a deploy
runs ~40 of them. Here one `sh` reads the commands from its stdin, one at a
time: each runs with stdin from /dev/null, its stdout and stderr come back on
the channel's two streams, and a line with a marker unknown to the command
(random per session, numbered per command) and the exit code ends each
stream. Anything that interrupts a command (Ctrl-C, a lost connection) closes
that shell, so no later command can take its end for its own; the next
command gets a new shell.

The command text travels on the shell's stdin, never on a command line, and is
the same `env K=V argv...` line fabric would run (quoted once, in
onevps.runner). `ShellSession.run` answers like invoke's `Context.run`
(exited, stdout, stderr), so onevps.runner.Runner runs on it unchanged.
"""

from __future__ import annotations

import secrets
import select
from dataclasses import dataclass
from typing import IO

from fabric import Connection

CHUNK = 65536
KEEPALIVE = 15  # seconds between SSH keepalives while a command runs


@dataclass
class Answer:
    exited: int
    stdout: str
    stderr: str


class _Stream:
    """One of the channel's streams: bytes until the end marker, passed on as they come."""

    def __init__(self, end: bytes, echo: IO[str] | None) -> None:
        self.data, self.end, self.echo, self.sent = bytearray(), end, echo, 0
        self.done_at: int | None = None

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        at = self.data.find(self.end, max(0, self.sent - len(self.end)))
        if at >= 0 and self.data.find(b"\n", at + len(self.end)) >= 0:
            self.done_at = at
        # Pass on what can no longer be part of the marker.
        upto = at if at >= 0 else max(self.sent, len(self.data) - len(self.end))
        if self.echo is not None and upto > self.sent:
            self.echo.write(bytes(self.data[self.sent:upto]).decode("utf-8", "replace"))
        self.sent = max(self.sent, upto)

    def text(self) -> str:
        return bytes(self.data[:self.done_at]).decode("utf-8", "replace")

    def code(self) -> int:
        tail = bytes(self.data[self.done_at + len(self.end):]).split(b"\n", 1)[0]  # type: ignore[operator]
        return int(tail.strip() or b"255")


class ShellSession:
    """`run(command, hide=..., out_stream=..., err_stream=...)` in one shell on the server."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.token = secrets.token_hex(8)
        self.count = 0  # each command's end marker is its own: a stale one never ends another
        self.channel = None

    def __getattr__(self, name: str):  # put/get/sftp and the rest: the connection's own
        return getattr(self.conn, name)

    def _open(self):
        if self.channel is None or self.channel.closed or self.channel.exit_status_ready():
            self.conn.open()
            transport = self.conn.client.get_transport()
            transport.set_keepalive(KEEPALIVE)  # a dead connection is noticed, not waited on forever
            channel = transport.open_session()
            channel.exec_command("exec sh")
            self.channel = channel
        return self.channel

    def run(self, command: str, hide: bool = True, out_stream: IO[str] | None = None,
            err_stream: IO[str] | None = None, **_: object) -> Answer:
        try:
            return self._run(command, hide, out_stream, err_stream)
        except OSError as exc:  # the transport went away under us (paramiko's "Socket is closed")
            self.close()
            raise EOFError(str(exc)) from None
        except BaseException:  # Ctrl-C, a failed decode...: this shell may still run the command
            self.close()
            raise

    def _run(self, command: str, hide: bool, out_stream: IO[str] | None, err_stream: IO[str] | None) -> Answer:
        channel = self._open()
        self.count += 1
        mark = f"__onevps_end_{self.token}_{self.count}"
        channel.sendall(f"{command} </dev/null; __rc=$?; printf '\\n{mark} %s\\n' \"$__rc\"; "
                        f"printf '\\n{mark} %s\\n' \"$__rc\" >&2\n".encode())
        end = f"\n{mark} ".encode()
        out = _Stream(end, None if hide else out_stream)
        err = _Stream(end, None if hide else err_stream)
        while out.done_at is None or err.done_at is None:
            select.select([channel], [], [], 1.0)
            progressed = False
            while channel.recv_ready():
                out.feed(channel.recv(CHUNK))
                progressed = True
            while channel.recv_stderr_ready():
                err.feed(channel.recv_stderr(CHUNK))
                progressed = True
            if not progressed and (channel.closed or channel.exit_status_ready() or channel.eof_received
                                   or not channel.get_transport().is_active()):
                self.close()
                raise EOFError("the server's shell ended")
        return Answer(out.code(), out.text(), err.text())

    def close(self) -> None:
        """Close this shell (a command it still runs gets a hangup); the next run opens a new one."""
        channel, self.channel = self.channel, None
        if channel is not None:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - a dead channel is closed enough
                pass
