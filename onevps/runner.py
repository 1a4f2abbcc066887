"""The one place commands run: locally (invoke Context) or on the server
(fabric Connection, a Context subclass). argv lists are quoted here, and
only here. A failing command becomes one clear error naming the step.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from invoke.context import Context
from invoke.runners import Runner as InvokeRunner

from . import commands
from .errors import CommandFailed, OnevpsError, output_ends, redact

_TAIL_LINES = 20

# invoke reads a command's output 1000 bytes at a time: 9 MB (five busy minutes of nginx's
# log, `inv top`) took 10.5 s that way, 1.1 s 64 kB at a time (as onevps.session reads the
# server's). A read returns what is there, so streamed output is not held back.
InvokeRunner.read_chunk_size = 65536


@dataclass
class Result:
    argv: list[str]
    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exited == 0


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class RedactingStream:
    """A text stream that masks secret values (errors.redact) line by line before
    passing them on: what a streamed command prints (hide=False) goes through it."""

    def __init__(self, target: object):
        self.target = target
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self.target.write(redact(done + "\n"))  # type: ignore[attr-defined]
            output_ends("\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.target.write(redact(self._pending))  # type: ignore[attr-defined]
            output_ends(self._pending)
            self._pending = ""
        self.target.flush()  # type: ignore[attr-defined]


@dataclass
class Runner:
    ctx: Context
    env: Mapping[str, str] = field(default_factory=dict)
    dry_run: bool = False
    out: object = None  # default: sys.stdout at the time of printing

    def say(self, message: str) -> None:
        """Print one message; secret values are masked (errors.redact)."""
        print(redact(message), file=self.out or sys.stdout, flush=True)  # type: ignore[arg-type]

    def run(self, argv: Sequence[str], step: str, *, hide: bool = True, check: bool = True,
            hint: str | None = None, env: Mapping[str, str] | None = None,
            mutates: bool = True, stdin: str | None = None) -> Result:
        """Run argv; raise CommandFailed naming `step` when it fails and check is set.

        hide=False streams the output (long builds show their progress).
        With dry_run, commands that change something are printed, not run.
        stdin: text the command reads on its standard input (closed after it), the way
        to hand a command anything secret.
        """
        argv = [str(a) for a in argv]
        command = shlex.join(argv)
        if self.dry_run and mutates:
            self.say(f"[dry-run] {command}")
            return Result(argv, 0, "", "")
        merged = {**self.env, **(env or {})}
        streams = {} if hide else {"out_stream": RedactingStream(sys.stdout), "err_stream": RedactingStream(sys.stderr)}
        try:
            if stdin is not None:
                res = _with_input(argv, merged, stdin)
            else:
                res = self.ctx.run(command, env=merged, hide=hide, warn=True, in_stream=False, pty=False, **streams)
        except OSError as exc:  # the program itself cannot start
            raise CommandFailed(f"{step}: cannot run {argv[0]}: {exc.strerror}", hint,
                                step=f"{step}: cannot run {argv[0]}") from None
        finally:
            for stream in streams.values():
                stream.flush()
        result = Result(argv, res.exited, res.stdout or "", res.stderr or "")
        if check and not result.ok:
            detail = _tail(result.stderr or result.stdout) if hide else ""
            shown = shlex.join(a if "\n" not in a else "<script>" for a in argv)  # keep it to one line
            what = f"{step} failed (exit {result.exited}): {shown}"
            if detail:
                what += "\n" + "\n".join("    " + line for line in detail.splitlines())
            # CommandFailed masks secret values in all of it (errors.redact).
            raise CommandFailed(what, hint, output=result.stdout + result.stderr,
                                step=f"{step} failed (exit {result.exited})")
        return result


def _with_input(argv: list[str], env: Mapping[str, str], stdin: str) -> Result:
    """argv with stdin as its standard input, its output captured. Not through invoke, which
    hands a command its input a byte at a time (100 bytes a second: a 3 kB input took 30 s)."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env={**os.environ, **env})
    return Result(argv, done.returncode, done.stdout, done.stderr)


def require_docker(runner: Runner) -> None:
    """Docker client, engine and Compose v2 must answer; one clear line if not."""
    if shutil.which("docker") is None:
        raise OnevpsError("the docker command is not installed",
                          "install Docker Engine and the Compose v2 plugin (see README, Prerequisites)")
    info = runner.run(commands.docker_info(), "docker info", check=False, mutates=False)
    if not info.ok:
        raise OnevpsError("the Docker engine is not reachable (`docker info` failed)",
                          "start it, e.g. `sudo systemctl start docker`, and check you may use it")
    version = runner.run(commands.compose_version(), "docker compose version", check=False, mutates=False)
    if not version.ok:
        raise OnevpsError("Docker Compose v2 is missing (`docker compose version` failed)",
                          "install the docker-compose-plugin package (see README, Prerequisites)")
