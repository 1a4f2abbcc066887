"""`fab ship`'s transfer: ONE `docker save` here, streamed over the open SSH
connection into `docker load` on the server (no tarball on disk on either
side), with progress lines; a failure on either end is one line."""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from paramiko.ssh_exception import SSHException

from .. import disk
from ..commands.transfer import load_argv, save_argv
from ..errors import CommandFailed, OnevpsError
from ..server import Ctx

CHUNK = 1 << 20  # bytes read from `docker save` and sent at a time
PROGRESS_SECONDS = 2.0


class Channel(Protocol):
    def sendall(self, data: bytes) -> None: ...
    def shutdown_write(self) -> None: ...
    def exit_status_ready(self) -> bool: ...
    def recv_exit_status(self) -> int: ...
    def recv_ready(self) -> bool: ...
    def recv(self, n: int) -> bytes: ...
    def recv_stderr_ready(self) -> bool: ...
    def recv_stderr(self, n: int) -> bytes: ...


class TransferFailed(Exception):
    def __init__(self, reason: str, sent: int):
        super().__init__(reason)
        self.reason, self.sent = reason, sent


@dataclass
class Streamed:
    sent: int
    exit_status: int
    stdout: str
    stderr: str


def progress_line(count: int, sent: int, total: int, seconds: float) -> str:
    rate = sent / seconds if seconds > 0 else 0
    return f"    shipping {count} image(s): {disk.human(sent)} of ~{disk.human(total)}, {disk.human(rate)}/s"


def stream(source, channel: Channel, total: int, count: int, say: Callable[[str], None],
           clock: Callable[[], float] = time.monotonic, chunk: int = CHUNK) -> Streamed:
    """Copy `source` (a file-like, e.g. `docker save` stdout) into `channel` (remote
    `docker load`'s stdin), printing progress every PROGRESS_SECONDS or 10%.
    (A 10% line needs half that time since the last line: no bursts of lines.)
    Raises TransferFailed when the server side ends or the connection drops mid-stream."""
    out, err = bytearray(), bytearray()

    def drain() -> None:
        while channel.recv_ready():
            data = channel.recv(65536)
            if not data:
                break
            out.extend(data)
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(65536)
            if not data:
                break
            err.extend(data)

    start = last = clock()
    sent, tenth = 0, 0
    while True:
        data = source.read(chunk)
        if not data:
            break
        if channel.exit_status_ready():  # docker load ended before the stream did
            drain()
            reason = last_line(err.decode(errors="replace")) or last_line(out.decode(errors="replace"))
            raise TransferFailed(reason or f"docker load ended early (exit {channel.recv_exit_status()})", sent)
        try:
            channel.sendall(data)
        except (OSError, EOFError) as exc:
            drain()
            reason = last_line(err.decode(errors="replace"))
            if not reason and channel.exit_status_ready():
                reason = f"docker load ended early (exit {channel.recv_exit_status()})"
            raise TransferFailed(reason or f"connection lost: {exc}", sent) from None
        sent += len(data)
        drain()
        now = clock()
        step = min(9, sent * 10 // total) if total else 0
        if now - last >= PROGRESS_SECONDS or (step > tenth and now - last >= PROGRESS_SECONDS / 2):
            say(progress_line(count, sent, total, now - start))
            last, tenth = now, step
    try:
        channel.shutdown_write()
    except (OSError, EOFError):
        pass
    status = channel.recv_exit_status()
    drain()
    return Streamed(sent, status, out.decode(errors="replace"), err.decode(errors="replace"))


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def failure_hint(reason: str) -> str:
    if "no space left" in reason.lower():
        return "`fab prune` removes old images and build cache on the server (`fab disk` shows the use), then ship again"
    return ("images loaded before the failure stay whole on the server (docker load is atomic per image); "
            "check the connection and the server's disk (`fab disk`), then run `fab ship` again")


def remote_prefix(c: Ctx) -> list[str]:
    """The prefix the server's runner puts before docker commands (none unless it grew one, e.g. `sudo -n`)."""
    prefix = getattr(c.run, "docker_prefix", None)
    return list(prefix() if callable(prefix) else prefix or [])


def open_load(c: Ctx) -> Channel:
    """A new SSH session on c's connection running `docker load` (as the server's runner would)."""
    transport = c.conn.client.get_transport() if c.conn.client else None
    if transport is None or not transport.is_active():
        raise OnevpsError("the SSH connection to the server is closed", "run `fab ship` again")
    command = shlex.join(load_argv(remote_prefix(c)))
    try:
        channel = transport.open_session()
        channel.exec_command(command)
    except (SSHException, OSError, EOFError) as exc:
        raise CommandFailed(f"cannot start `{command}` on the server over SSH: {str(exc) or type(exc).__name__}",
                            "the connection dropped or the server's sshd refused another session (MaxSessions "
                            "in sshd_config); run `fab ship` again") from None
    return channel


def start_save(argv: list[str]) -> subprocess.Popen:
    try:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise OnevpsError(f"cannot run {argv[0]} here: {exc.strerror}", "install the Docker client") from None


def transfer(c: Ctx, refs: list[str], total: int, open_channel: Callable[[Ctx], Channel] = open_load,
             start: Callable[[list[str]], subprocess.Popen] = start_save) -> Streamed:
    """Stream `docker save REFS` here into `docker load` on the server; one line when either fails."""
    channel = open_channel(c)
    proc = start(save_argv(refs))
    try:
        streamed = stream(proc.stdout, channel, total, len(refs), c.say)
    except TransferFailed as exc:
        proc.kill()
        proc.wait()
        raise CommandFailed(f"docker load on the server failed after {disk.human(exc.sent)}: {exc.reason}",
                            failure_hint(exc.reason)) from None
    finally:
        if proc.stdout:
            proc.stdout.close()
    save_err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    save_status = proc.wait()
    if save_status != 0:
        raise CommandFailed(f"docker save here failed (exit {save_status}): {last_line(save_err) or '?'}",
                            "check the local images (`docker images`) and run `fab ship` again")
    if streamed.exit_status != 0:
        reason = last_line(streamed.stderr) or last_line(streamed.stdout) or f"exit {streamed.exit_status}"
        raise CommandFailed(f"docker load on the server failed (exit {streamed.exit_status}): {reason}",
                            failure_hint(reason))
    return streamed
