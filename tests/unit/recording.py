"""A recording server for unit tests: it stands in for the SSH connection (fabric's
put/get) and for invoke's context (run), records every command in order and answers
each from rules. No SSH, no Docker.

    server = Server().when("inspect", "running healthy\\n").when(["docker", "run"], code=1)
    srv = ctx(server, settings)            # an onevps.server.Ctx over it
    deploy.rollback(srv, "kb")
    assert_golden("rollback", server.lines())

Rules are tried newest first; the first that matches answers. A rule matches a
command by a substring of the joined command line, by an argv prefix (a list), or
by a function of the argv; it answers (exit code, stdout, stderr) or a function
of the argv returning that triple.
"""

from __future__ import annotations

import io
import os
import shlex
import time
from pathlib import Path
from typing import Callable, Union

from onevps import remote
from onevps.commands.docker import WAIT_READY
from onevps.config import Settings
from onevps.project import Project
from onevps.runner import Result
from onevps.server import Ctx
from onevps.timeline import Timeline

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "recipes"
REGENERATE = "regenerate with: ONEVPS_UPDATE_GOLDEN=1 pytest tests/unit/test_recipes.py (then read the diff)"
# The shared wait script stands in many recipes: their goldens name it, and its text is
# compared once (wait-script.sh). Replaced exactly as it stands on a command line.
WAIT_SCRIPT = "<WAIT_SCRIPT>"
WAIT_ARG = shlex.quote(WAIT_READY)

Answer = tuple[int, str, str]
Match = Union[str, list, Callable[[list[str]], bool]]


class Server:
    """Commands in order (argvs), uploads (files), answers from rules."""

    def __init__(self) -> None:
        self.rules: list[tuple[Match, Answer | Callable[[list[str]], Answer]]] = []
        self.argvs: list[list[str]] = []
        self.events: list[str] = []  # commands and uploads/downloads, in order
        self.files: dict[str, bytes] = {}
        self.prefix = ""  # RemoteRunner's `env K=V ... ` prefix (the tier tags), left out of lines()

    def when(self, match: Match, out: str = "", code: int = 0, err: str = "",
             answer: Callable[[list[str]], Answer] | None = None) -> "Server":
        self.rules.append((match, answer or (code, out, err)))
        return self

    @staticmethod
    def _matches(match: Match, argv: list[str]) -> bool:
        if isinstance(match, str):
            return match in shlex.join(argv)
        if isinstance(match, list):
            return argv[:len(match)] == match
        return match(argv)

    def answer(self, argv: list[str]) -> Answer:
        argv = bare(argv)
        for match, answer in reversed(self.rules):
            if self._matches(match, argv):
                return answer(argv) if callable(answer) else answer
        return 0, "", ""

    # invoke's Context.run, as onevps.runner.Runner calls it
    def run(self, command: str, **kw) -> Result:
        argv = shlex.split(command)
        self.argvs.append(argv)
        self.events.append(command.replace("\n", "\\n"))  # a script's lines stay on one line
        exited, stdout, stderr = self.answer(argv)
        out = kw.get("out_stream")
        if out is not None and not kw.get("hide"):
            out.write(stdout)
        return Result(argv, exited, stdout, stderr)

    # fabric's Connection.put / get
    def put(self, local, target: str) -> None:
        data = local.read() if hasattr(local, "read") else Path(local).read_bytes()
        self.files[target] = data
        self.events.append(f"# put {target}")

    def get(self, source: str, local) -> None:
        self.events.append(f"# get {source}")

    def lines(self) -> list[str]:
        """Every command (shlex-joined) and upload, in order; a header names the prefix every
        command carries (left out of each line)."""
        head = [f"# every command runs as: {self.prefix}COMMAND"] if self.prefix else []
        return head + [e[len(self.prefix):] if self.prefix and e.startswith(self.prefix) else e for e in self.events]

    def commands(self) -> list[str]:
        return [shlex.join(a) for a in self.argvs]


def bare(argv: list[str]) -> list[str]:
    """argv without RemoteRunner's `env K=V ...` prefix."""
    if argv[:1] != ["env"]:
        return argv
    rest = argv[1:]
    while rest and "=" in rest[0] and not rest[0].startswith("-"):
        rest = rest[1:]
    return rest


def ctx(server: Server, rs: Settings, local: Settings | None = None, reg=None, tags: dict | None = None,
        dry_run: bool = False, project: Project | None = None) -> Ctx:
    """An onevps.server.Ctx whose connection and runner are the recording server (this
    machine's files: the repository, unless `project` says otherwise)."""
    tags = tags or {}
    server.prefix = shlex.join(["env", *[f"{k}={v}" for k, v in sorted(tags.items())]]) + " " if tags else ""
    run = remote.RemoteRunner(server, env=tags, dry_run=dry_run, out=io.StringIO())  # type: ignore[arg-type]
    here = project or Project(ROOT)
    now = time.monotonic()  # the tests fix it: the timeline's steps are 0.0
    return Ctx(local=local or rs, project=here, rs=rs, reg=reg, conn=server,  # type: ignore[arg-type]
               run=run, tags=tags, timeline=Timeline(start=now, mark=now))


def assert_golden(name: str, lines: list[str]) -> None:
    """lines equal tests/golden/recipes/<name>.txt (one command a line), the wait script named
    WAIT_SCRIPT there; ONEVPS_UPDATE_GOLDEN=1 rewrites it."""
    assert not any(WAIT_SCRIPT in line for line in lines), f"a command says {WAIT_SCRIPT} itself"
    compare(f"{name}.txt", "".join(line.replace(WAIT_ARG, WAIT_SCRIPT) + "\n" for line in lines))


def compare(file: str, text: str, what: str = "the commands") -> None:
    """text equals tests/golden/recipes/<file>; ONEVPS_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / file
    if os.environ.get("ONEVPS_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing; {REGENERATE}"
    assert text == path.read_text(), f"{path.stem}: {what} differ from {path.name}; {REGENERATE}"
