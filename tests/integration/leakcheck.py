"""Secrets never leak (issue 12): the watch every task on the shared test server
runs under (server.task), and where it looks. With unique secret values in the
server's settings, a value must appear in none of:

- the task's stdout and stderr;
- the commands it sent: every argv onevps ran, every command string sent over
  SSH and every local process it started (recording_cli.py records them);
- the argv of any process on the server while it ran: /proc/*/cmdline scanned
  continuously and `ps -ww -eo args` every 0.1 s (the server is this machine,
  reached over a real sshd on 127.0.0.1), and, deterministically, the command
  lines the server's containers were started with (`docker inspect`: Path,
  Args, Entrypoint, Cmd, health check), which `ps` shows while they start;
- the server's files under VPS_PATH other than `.env` (journal, lock holder,
  compose files...; a backup archive only in its `env` member), walked after
  every task; the deploy slot's env file must be gone after every task, and
  whenever it or the server's `.env` is read by a command it is mode 600.

A value is shown in the failure messages as <SECRET:NAME>, with where it was
seen.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from onevps import config, isolation, registry

from .conftest import docker

RECORDER = Path(__file__).with_name("recording_cli.py")
PROJECT = ""  # the server's Compose project and settings: configure()
SERVER_ENV = ""


def configure(project: str, server_env: str) -> None:
    global PROJECT, SERVER_ENV
    PROJECT, SERVER_ENV = project, server_env


# Fresh values for every run, easy to spot, valid secrets (16+ of A-Za-z0-9_-).
SECRETS = {
    "REDIS_PASSWORD": "leakcheck-redis-" + secrets.token_urlsafe(24),
    "CHROMA_TOKEN": "leakcheck-chroma-" + secrets.token_urlsafe(24),
    # A key onevps does not know (a warning names it) but that is named like a secret.
    "LEAKCHECK_API_KEY": "leakcheck-apikey-" + secrets.token_urlsafe(24),
}
# Values of broken secrets, for the rejected-secret paths (they must not show either).
BROKEN = {
    "url-unsafe": "leakcheck+broken/url+" + secrets.token_urlsafe(18),  # characters a URL cannot take
    "unterminated": "leakcheck-broken-quote-" + secrets.token_urlsafe(18),  # an unterminated quote
    "colon": "leakcheck-broken-colon-" + secrets.token_urlsafe(18),  # `KEY: value`, no `=`
}
# Each example app's own Redis password and Chroma token, derived from the two above (issue 24):
# secrets like them, written below the settings in the server's .env and nowhere else.
DERIVED = isolation.derived_env(registry.load(config.REPO.compose_file).names(), SECRETS["REDIS_PASSWORD"],
                                SECRETS["CHROMA_TOKEN"])
ALL_VALUES = {**SECRETS, **{f"broken {k}": v for k, v in BROKEN.items()}, **DERIVED}


# -------------------------------------------------------------- masking --

def mask(text: str) -> str:
    for name, value in ALL_VALUES.items():
        text = text.replace(value, f"<SECRET:{name}>")
    return text


def has_secret(text: str | bytes) -> bool:
    if isinstance(text, bytes):
        return any(v.encode() in text for v in ALL_VALUES.values())
    return any(v in text for v in ALL_VALUES.values())


def lines_with_secrets(text: str, where: str) -> list[str]:
    return [f"{where}: {mask(line)[:600]}" for line in text.splitlines() if has_secret(line)]


# ------------------------------------------------------- the process list --

class Watch:
    """While a task runs: every process's argv (/proc/*/cmdline, continuously,
    and `ps -ww -eo args` every 0.1 s) checked for the secrets, and the mode of
    the deploy slot's env file (and its upload temp file) whenever it exists."""

    def __init__(self, watched_files: list[Path]):
        self.watched_files = watched_files
        self.leaks: set[str] = set()
        self.modes: set[tuple[str, int]] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._scan_proc, daemon=True),
                         threading.Thread(target=self._sample_ps, daemon=True)]
        self._values = [v.encode() for v in ALL_VALUES.values()]

    def __enter__(self) -> "Watch":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _scan_proc(self) -> None:
        me = str(os.getpid())
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or entry.name == me:
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                        raw = fh.read()
                except OSError:
                    continue
                if any(v in raw for v in self._values):
                    args = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
                    self.leaks.add(f"argv of process {entry.name} (/proc): {mask(args)[:600]}")
            for path in self.watched_files:
                try:
                    self.modes.add((str(path), stat.S_IMODE(os.stat(path).st_mode)))
                except OSError:
                    pass
            self._stop.wait(0.02)

    def _sample_ps(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
            self.samples += 1
            for line in out.splitlines():
                if has_secret(line):
                    self.leaks.add(f"ps -ww -eo args: {mask(line)[:600]}")
            self._stop.wait(0.1)



def drop_ssh_connections(sshd) -> list[int]:
    """Kill the sshd processes serving the connections of the sshd started here
    (its children and their sshd children), as a dropped network would end them.
    The commands they ran are left alone; nothing else is touched."""
    def children(pid: int) -> list[int]:
        res = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        return [int(p) for p in res.stdout.split()]

    def is_sshd(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip().startswith("sshd")
        except OSError:
            return False

    serving = [p for p in children(sshd["pid"]) if is_sshd(p)]
    serving += [c for p in serving for c in children(p) if is_sshd(c)]
    for pid in serving:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return serving



# ------------------------------------------------------- running a task --

@dataclass(repr=False)
class Run:
    scenario: str
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    records: list[dict]
    watch: Watch
    started: str  # UTC, as docker writes State.StartedAt (to the second)
    dropped: list[int] = field(default_factory=list)

    def __repr__(self) -> str:  # what pytest shows of it: no raw output
        return f"Run({self.scenario!r}, {' '.join(self.argv)!r}, exit {self.returncode})"

    @property
    def output(self) -> str:
        return mask(self.stdout[-3000:] + "\n--- stderr ---\n" + self.stderr[-3000:])

    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    @property
    def err(self) -> str:
        """stderr without warnings (the server's settings name an unknown key on purpose)."""
        return "\n".join(line for line in self.stderr.splitlines() if not line.startswith("warning: ")).strip()


_counter = itertools.count()


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False


def server_runs(sshd, matches) -> bool:
    """Whether the sshd started here runs a command whose command line matches."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                raw = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if matches(raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")) \
                    and descends_from(int(entry.name), sshd["pid"]):
                return True
    return False


def watch(repo) -> Watch:
    slot = repo["slot_env"]
    return Watch([slot, slot.with_name(slot.name + ".onevps-tmp")])


def cli(repo, prog: str, *args: str, scenario: str, env: dict | None = None, drop_when=None,
        watching: Watch | None = None, timeout: float = 900) -> Run:
    """Run `fab`/`inv` ARGS through recording_cli.py in the repository copy, watched (see Watch).
    drop_when(command line) -> bool: drop the SSH connections as soon as the server runs a
    matching command (so the drop lands while that command runs)."""
    if watching is None:
        with watch(repo) as watching:
            return cli(repo, prog, *args, scenario=scenario, env=env, drop_when=drop_when, watching=watching,
                       timeout=timeout)
    record = repo["base"] / f"record-{next(_counter):03d}.jsonl"
    record.touch()
    if prog == "fab":
        full_env = {**os.environ, **repo["env"]}
    else:  # the local tasks read .env.local: the session's own settings and secrets stay out
        local_keys = {line.split("=", 1)[0] for line in SERVER_ENV.splitlines()}
        full_env = {k: v for k, v in os.environ.items() if k not in local_keys and not config.is_secret(k)}
        full_env["ONEVPS_ENV_FILE"] = str(repo["root"] / ".env.local")
    full_env.update(env or {})
    full_env["ONEVPS_RECORD_FILE"] = str(record)
    dropped: list[int] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    proc = subprocess.Popen([sys.executable, str(RECORDER), prog, *args], cwd=repo["root"], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if drop_when is not None:
        def dropper() -> None:
            while proc.poll() is None:
                if server_runs(repo["sshd"], drop_when):
                    dropped.extend(drop_ssh_connections(repo["sshd"]))
                    return
                time.sleep(0.005)

        thread = threading.Thread(target=dropper, daemon=True)
        thread.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its PID
        out, err = proc.communicate()
    if drop_when is not None:
        thread.join(timeout=30)
    records = [json.loads(line) for line in record.read_text().splitlines()]
    record.with_suffix(".out").write_text(mask(out) + "\n--- stderr ---\n" + mask(err))  # kept for a look later
    run = Run(scenario, [prog, *args], proc.returncode, out, err, records, watching, started, dropped)
    assert records and records[0]["kind"] == "start", f"{scenario}: the recorder did not start:\n{run.output}"
    assert records[0]["onevps"].startswith(str(repo["root"])), records[0]  # the copy's code ran
    return run


def cli_many(repo, calls: list[tuple], scenario: str) -> list[Run]:
    """Several independent tasks at once, (prog, args, env) each, under one Watch; then checked."""
    with watch(repo) as watching, ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(cli, repo, prog, *args, scenario=scenario, env=env, watching=watching)
                   for prog, args, env in calls]
        runs = [f.result() for f in futures]
    found = {id(run): leaks(repo, run) for run in runs}  # every task's, then one failure naming them all
    assert not any(found.values()), "secret values seen:\n  " + "\n  ".join(sum(found.values(), [])) + "".join(
        f"\n\ntask output of {run}:\n{run.output}" for run in runs if found[id(run)])
    assert watching.samples > 0, "the process list was never sampled"
    return runs


# ------------------------------------------------------ where to look --

def archive_leaks(path: Path, where: str) -> list[str]:
    """A backup archive holds the server's .env by design (member ./env, the archive
    600); nothing else in it (the volumes' files included) may hold a secret."""
    found = []
    if stat.S_IMODE(path.stat().st_mode) != 0o600:
        found.append(f"{where}: backup archive of mode {oct(stat.S_IMODE(path.stat().st_mode))}, not 0o600")
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if not member.isfile() or member.name == "./env":
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith(".gz"):
                data = gzip.decompress(data)
            if has_secret(data):
                found.append(f"{where}: member {member.name} of {path.name} holds a secret")
    return found


def server_file_leaks(repo, where: str) -> list[str]:
    root = repo["vps"]
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if rel == ".env":
            continue
        if rel.startswith(".onevps/") and ".slot.env" in rel:
            found.append(f"{where}: the deploy slot's env file is still on the server after the task: {rel}")
            continue
        if rel.startswith("backups/") and rel.endswith(".tar"):
            found += archive_leaks(path, f"{where}: server file {rel}")
            continue
        data = path.read_bytes()
        if has_secret(data):
            text = data.decode("utf-8", "replace")
            found += lines_with_secrets(text, f"{where}: server file {rel}") or [f"{where}: server file {rel}"]
    return found


def container_command_leaks(where: str, since: str) -> list[str]:
    """The command lines the project's containers (and deploy slots) started since `since`
    were started with: what `ps` shows while they start (an entrypoint, then the program
    until it renames itself)."""
    ids = set(docker("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={PROJECT}").split())
    ids |= set(docker("ps", "--all", "--quiet", "--filter", f"name=^{PROJECT}-").split())
    if not ids:
        return []
    fmt = ("{{.State.StartedAt}} {{.Name}} {{json .Path}} {{json .Args}} {{json .Config.Entrypoint}} "
           "{{json .Config.Cmd}} {{json .Config.Healthcheck}}")
    out = subprocess.run(["docker", "inspect", "--format", fmt, *sorted(ids)], capture_output=True, text=True).stdout
    return [f"{where}: command line of container {mask(line.split(' ', 1)[1])[:600]}"
            for line in out.splitlines() if line[:19] >= since and has_secret(line)]


def leaks(repo, run: Run) -> list[str]:
    where = f"[{run.scenario}] {' '.join(run.argv)}"
    found = lines_with_secrets(run.stdout, f"{where}: stdout") + lines_with_secrets(run.stderr, f"{where}: stderr")
    for rec in run.records:
        text = json.dumps(rec)
        if has_secret(text):
            found.append(f"{where}: recorded {rec['kind']} command: {mask(text)[:600]}")
        for env_file in rec.get("env_files", []) if rec.get("runner") == "RemoteRunner" else []:
            if env_file["mode"] is not None and env_file["mode"] != 0o600:
                found.append(f"{where}: {env_file['path']} was mode {oct(env_file['mode'])} when "
                             f"`{rec.get('step')}` read it (not 0o600)")
    found += sorted(run.watch.leaks)
    found += [f"{where}: {path} existed with mode {oct(mode)} (not 0o600)"
              for path, mode in sorted(run.watch.modes) if mode != 0o600]
    found += server_file_leaks(repo, where)
    found += container_command_leaks(where, run.started)
    return found


def check(repo, run: Run) -> Run:
    """Fail with every place a secret was seen during and after `run`."""
    found = leaks(repo, run)
    assert not found, "secret values seen:\n  " + "\n  ".join(found) + "\n\ntask output:\n" + run.output
    assert run.watch.samples > 0, "the process list was never sampled"
    return run


def assert_slot_env_file_used(repo, run: Run) -> None:
    """The slot read its environment from the 600 file (mode taken as the command was sent)."""
    runs = [r for r in run.records if r["kind"] == "runner" and "onevps.slot=next" in r["argv"]]
    assert runs, run.output
    for rec in runs:
        assert rec["env_files"] == [{"path": str(repo["slot_env"]), "mode": 0o600}], rec["env_files"]
        assert "--env" not in rec["argv"] and "-e" not in rec["argv"], mask(json.dumps(rec["argv"]))


