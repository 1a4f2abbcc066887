"""What a deploy keeps on the server under VPS_PATH/.onevps: the deploy lock
(one deploy at a time) and the journal (one JSON line per deploy or rollback)."""

from __future__ import annotations

import getpass
import json
import posixpath
import socket
import time
from contextlib import contextmanager
from typing import Iterator

from .commands import shell
from .config import Settings
from .errors import OnevpsError
from .remote import STATE_DIR
from .runner import Runner
from .timeline import Timeline


def lock_dir(settings: Settings) -> str:
    return posixpath.join(settings.vps_path, STATE_DIR, "deploy.lock")


def journal_file(settings: Settings) -> str:
    return posixpath.join(settings.vps_path, STATE_DIR, "journal.jsonl")


def whoami() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


# --------------------------------------------------------------------- lock --

def acquire_lock(runner: Runner, settings: Settings, what: str) -> None:
    """mkdir is atomic: exactly one deploy gets the lock; the other is told who holds it."""
    holder = json.dumps({"holder": whoami(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "what": what})
    path = lock_dir(settings)
    if runner.dry_run:
        runner.say(f"[dry-run] take the deploy lock {path}")
        return
    res = runner.run(shell.take_lock(path, holder), "take the deploy lock", check=False)
    if res.ok:
        return
    if not runner.run(shell.is_dir(path), "is the deploy lock held", check=False, mutates=False).ok:
        # Not held: the lock could not be made (permissions, a full disk); say why.
        reason = (res.stderr or res.stdout).strip().splitlines()
        raise OnevpsError(f"cannot take the deploy lock {path}: {reason[-1] if reason else f'exit {res.exited}'}",
                          f"VPS_USER must be able to write {settings.vps_path}: run `fab setup` as that user "
                          "(it hands VPS_PATH over), and check the server's free space")
    info = runner.run(shell.cat(f"{path}/holder"), "read the deploy lock", check=False, mutates=False)
    try:
        data = json.loads(info.stdout)
        who = f"{data['holder']} since {data['since']} ({data.get('what', '')})"
    except (ValueError, KeyError):
        who = "an unknown holder"
    raise OnevpsError(f"another deploy is running: the deploy lock is held by {who}",
                      "wait for it to finish, or run `fab unlock` if it is stale")


def relabel_lock(runner: Runner, settings: Settings, what: str) -> None:
    """Say what the held lock is doing now (e.g. watching the new version): `fab status` shows it."""
    if runner.dry_run:
        return
    try:
        since = json.loads(read_lock(runner, settings) or "{}")["since"]  # when the lock was taken
    except (ValueError, KeyError, TypeError):
        since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    holder = json.dumps({"holder": whoami(), "since": since, "what": what})
    runner.run(shell.write_file_line(f"{lock_dir(settings)}/holder", holder), "relabel the deploy lock", check=False)


def lock_line(runner: Runner, settings: Settings) -> str | None:
    """"deploy lock: held by ... since ... (what)", or None when no deploy holds it."""
    text = read_lock(runner, settings)
    if text is None:
        return None
    try:
        data = json.loads(text)
        return f"deploy lock: held by {data['holder']} since {data['since']} ({data.get('what', '')})"
    except (ValueError, KeyError):
        return "deploy lock: held by an unknown holder"


def release_lock(runner: Runner, settings: Settings) -> None:
    if runner.dry_run:
        return
    runner.run(shell.rm_rf(lock_dir(settings)), "release the deploy lock", check=False)


def read_lock(runner: Runner, settings: Settings) -> str | None:
    res = runner.run(shell.cat(f"{lock_dir(settings)}/holder"), "read the deploy lock", check=False, mutates=False)
    return res.stdout.strip() if res.ok else None


@contextmanager
def deploy_lock(runner: Runner, settings: Settings, what: str) -> Iterator[None]:
    """`with deploy_lock(run, rs, "deploy kb"):` the block runs holding the lock; it is
    released however the block ends."""
    acquire_lock(runner, settings, what)
    try:
        yield
    finally:
        release_lock(runner, settings)


# ------------------------------------------------------------------ journal --

def append_journal(runner: Runner, settings: Settings, entry: dict) -> None:
    if runner.dry_run:
        return
    line = json.dumps(entry, sort_keys=True)
    runner.run(shell.append_line(journal_file(settings), line), "write the deploy journal")


def read_journal(runner: Runner, settings: Settings) -> list[dict]:
    res = runner.run(shell.cat(journal_file(settings)), "read the deploy journal", check=False, mutates=False)
    entries = []
    for line in res.stdout.splitlines() if res.ok else []:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


@contextmanager
def journal(runner: Runner, settings: Settings, entry: dict, started: float,
            timeline: Timeline | None = None) -> Iterator[dict]:
    """`with journal(run, rs, entry, started) as entry:` the entry goes in the journal however
    the block ends, with the seconds since started (time.monotonic) and the timeline's steps."""
    try:
        yield entry
    finally:
        entry["seconds"] = round(time.monotonic() - started, 1)
        if timeline is not None:
            entry["steps"] = timeline.take()
        append_journal(runner, settings, entry)
