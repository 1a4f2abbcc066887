"""The server: an SSH connection (fabric), its settings, and file sync.

Commands for the server are the same argv lists as locally (onevps.commands),
run through a fabric Connection. Environment variables travel as an `env
K=V ...` prefix, because sshd drops SSH env requests unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import io
import json
import posixpath
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from fabric import Connection
from paramiko.ssh_exception import AuthenticationException, NoValidConnectionsError, SSHException

from . import config
from .config import Settings
from .errors import CommandFailed, OnevpsError
from .runner import Result, Runner

# What `fab setup` and `fab deploy` keep in step on the server, relative to the
# repository root. Wheels are left out of that sync: the ML tier's staged wheels
# (WHEEL_DIR, ~200 MB for torch) are sent only when the server builds that tier
# (`local_files(..., wheels=True)`), and wheels put on the server by hand are
# never deleted.
SHARED_DIRS = ("compose", "nginx", "dockerfiles")
WHEEL_DIR = "dockerfiles/ml/wheels"
EXCLUDE_SUFFIXES = (".whl", ".pyc")
EXCLUDE_PARTS = ("__pycache__", ".pytest_cache", ".hypothesis")
STATE_DIR = ".onevps"  # lock, journal, on the server under VPS_PATH


@dataclass(frozen=True)
class Server:
    host: str
    user: str
    port: int
    key: Path | None

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def server_from(settings: Settings, connection: object | None = None) -> Server:
    """The server from `fab -H` (a Connection) or from VPS_* settings."""
    if isinstance(connection, Connection) and connection.host:
        return Server(connection.host, connection.user or settings.vps_user, int(connection.port or 22),
                      settings.vps_ssh_key)
    if not settings.vps_host:
        raise OnevpsError("no server given", "set VPS_HOST in .env or use `fab -H user@host TASK`")
    return Server(settings.vps_host, settings.vps_user, settings.vps_port, settings.vps_ssh_key)


def connect(server: Server, timeout: int = 10) -> Connection:
    """Open the SSH connection; an unreachable host or failed login is one line."""
    kwargs: dict = {"look_for_keys": server.key is None, "allow_agent": server.key is None}
    if server.key:
        kwargs["key_filename"] = str(server.key)
    conn = Connection(server.host, user=server.user, port=server.port, connect_timeout=timeout,
                      connect_kwargs=kwargs)
    try:
        conn.open()
    except AuthenticationException:
        raise OnevpsError(f"SSH login to {server.label} was refused",
                          "check VPS_USER and VPS_SSH_KEY (or your SSH agent)") from None
    except (NoValidConnectionsError, ConnectionError, socket.timeout, TimeoutError, socket.gaierror, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise OnevpsError(f"cannot reach {server.label}: {reason}",
                          "check VPS_HOST/VPS_PORT and that the server is up and runs sshd") from None
    except SSHException as exc:
        raise OnevpsError(f"SSH to {server.label} failed: {exc}", "check the server's sshd") from None
    return conn


def remote_settings(local: Settings) -> Settings:
    """The server's settings: VPS_ENV_FILE read as the server's .env, rooted at VPS_PATH."""
    env_file = local.vps_env_file
    if env_file is None or not env_file.is_file():
        raise OnevpsError(f"VPS_ENV_FILE {env_file} does not exist",
                          "create it (copy .env.example) with the server's settings")
    server = config.load(root=local.root, environ={}, env_file=env_file)
    root = Path(local.vps_path)
    return dataclasses.replace(server, root=root, env_file=root / ".env",
                               vps_host=local.vps_host, vps_user=local.vps_user, vps_port=local.vps_port,
                               vps_path=local.vps_path, vps_ssh_key=local.vps_ssh_key)


class RemoteRunner(Runner):
    """Runs argv on the server; env vars go in an `env K=V` prefix."""

    def run(self, argv: Sequence[str], step: str, *, hide: bool = True, check: bool = True,
            hint: str | None = None, env: Mapping[str, str] | None = None,
            mutates: bool = True) -> Result:
        merged = {**self.env, **(env or {})}
        if leaked := sorted(k for k in merged if config.is_secret(k)):
            # The prefix is part of the command line (ps, logs): secrets travel in files.
            raise OnevpsError(f"refusing to put {', '.join(leaked)} on the server's command line",
                              "this is a bug in onevps; please report it")
        prefix = ["env", *[f"{k}={v}" for k, v in sorted(merged.items())]] if merged else []
        saved, self.env = self.env, {}
        try:
            return super().run([*prefix, *argv], step, hide=hide, check=check, hint=hint, env={},
                               mutates=mutates)
        finally:
            self.env = saved


# ------------------------------------------------------------------- sync --

def local_files(root: Path, dirs: Iterable[str], wheels: bool = False) -> dict[str, Path]:
    """Files to send, keyed by their POSIX path relative to the repository root.

    `wheels=True` keeps the .whl files (for WHEEL_DIR before an ML tier build)."""
    files: dict[str, Path] = {}
    for top in dirs:
        base = root / top
        if not base.exists():
            continue
        for path in sorted(base.rglob("*")):
            excluded = path.suffix in EXCLUDE_SUFFIXES and not (wheels and path.suffix == ".whl")
            if path.is_dir() or excluded or any(p in EXCLUDE_PARTS for p in path.parts):
                continue
            files[path.relative_to(root).as_posix()] = path
    return files


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def remote_hashes(runner: Runner, root: str, dirs: Iterable[str]) -> dict[str, str]:
    """sha256 of every file under the given folders on the server."""
    script = '{ cd "$1" 2>/dev/null || exit 0; } && shift && for d in "$@"; do [ -d "$d" ] && find "$d" -type f -print0; done | xargs -0 -r sha256sum'
    res = runner.run(["sh", "-c", script, "sh", root, *dirs], "read the server's file hashes", mutates=False)
    hashes = {}
    for line in res.stdout.splitlines():
        digest, _, rel = line.partition("  ")
        if rel:
            hashes[rel] = digest
    return hashes


@dataclass
class SyncPlan:
    send: list[str]
    delete: list[str]
    bytes: int


def _excluded(rel: str) -> bool:
    return rel.endswith(EXCLUDE_SUFFIXES) or any(p in rel.split("/") for p in EXCLUDE_PARTS)


def plan_sync(local: dict[str, Path], remote: dict[str, str]) -> SyncPlan:
    """What to send (new or changed) and delete (gone locally; never excluded files
    such as wheels placed on the server by hand). `remote` covers the same folders."""
    send = [rel for rel, path in local.items() if remote.get(rel) != sha256(path)]
    delete = [rel for rel in remote if rel not in local and not _excluded(rel)]
    return SyncPlan(send=sorted(send), delete=sorted(delete), bytes=sum(local[r].stat().st_size for r in send))


def apply_sync(conn: Connection, runner: Runner, root: str, local: dict[str, Path], plan: SyncPlan) -> None:
    """Send changed files (each to a temp name, then mv: atomic) and delete removed ones."""
    if runner.dry_run:
        for rel in plan.send:
            runner.say(f"[dry-run] send {rel} ({local[rel].stat().st_size} bytes)")
        for rel in plan.delete:
            runner.say(f"[dry-run] delete {rel} on the server")
        return
    folders = sorted({posixpath.dirname(posixpath.join(root, rel)) for rel in plan.send})
    if folders:
        runner.run(["mkdir", "-p", *folders], "create folders on the server")
    for rel in plan.send:
        target = posixpath.join(root, rel)
        tmp = f"{target}.onevps-tmp"
        try:
            conn.put(str(local[rel]), tmp)
        except (OSError, SSHException) as exc:
            raise CommandFailed(f"upload of {rel} failed: {exc}",
                                "check free space and permissions on the server, and that sshd offers SFTP") from None
        mode = "755" if local[rel].stat().st_mode & 0o111 else "644"
        runner.run(["sh", "-c", 'chmod "$1" "$2" && mv -f "$2" "$3"', "sh", mode, tmp, target], f"place {rel}")
    if plan.delete:
        runner.run(["rm", "-f", *[posixpath.join(root, rel) for rel in plan.delete]], "delete removed files")


def put_text(conn: Connection, runner: Runner, target: str, text: str, mode: str = "600") -> None:
    """Write a small file on the server atomically with the given mode."""
    if runner.dry_run:
        runner.say(f"[dry-run] write {target} (mode {mode}, {len(text.encode())} bytes)")
        return
    tmp = f"{target}.onevps-tmp"
    # A new, empty file of mode 600 first (a leftover temp file keeps no other mode): the
    # text, which may hold secrets, is never readable by others, not even for a moment.
    runner.run(["sh", "-c", 'rm -f "$1" && umask 077 && : > "$1"', "sh", tmp], f"prepare {target}")
    try:
        conn.put(io.BytesIO(text.encode()), tmp)
    except (OSError, SSHException) as exc:
        raise CommandFailed(f"upload of {target} failed: {exc}",
                            "check free space and permissions on the server, and that sshd offers SFTP") from None
    runner.run(["sh", "-c", 'chmod "$1" "$2" && mv -f "$2" "$3"', "sh", mode, tmp, target], f"place {target}")


# ------------------------------------------------------------ lock, journal --

def lock_dir(settings: Settings) -> str:
    return posixpath.join(settings.vps_path, STATE_DIR, "deploy.lock")


def journal_file(settings: Settings) -> str:
    return posixpath.join(settings.vps_path, STATE_DIR, "journal.jsonl")


def whoami() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def acquire_lock(runner: Runner, settings: Settings, what: str) -> None:
    """mkdir is atomic: exactly one deploy gets the lock; the other is told who holds it."""
    holder = json.dumps({"holder": whoami(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "what": what})
    path = lock_dir(settings)
    script = 'mkdir -p "$(dirname "$1")" && mkdir "$1" && printf "%s\\n" "$2" > "$1/holder"'
    if runner.dry_run:
        runner.say(f"[dry-run] take the deploy lock {path}")
        return
    res = runner.run(["sh", "-c", script, "sh", path, holder], "take the deploy lock", check=False)
    if res.ok:
        return
    if not runner.run(["test", "-d", path], "is the deploy lock held", check=False, mutates=False).ok:
        # Not held: the lock could not be made (permissions, a full disk); say why.
        reason = (res.stderr or res.stdout).strip().splitlines()
        raise OnevpsError(f"cannot take the deploy lock {path}: {reason[-1] if reason else f'exit {res.exited}'}",
                          f"VPS_USER must be able to write {settings.vps_path}: run `fab setup` as that user "
                          "(it hands VPS_PATH over), and check the server's free space")
    info = runner.run(["cat", f"{path}/holder"], "read the deploy lock", check=False, mutates=False)
    try:
        data = json.loads(info.stdout)
        who = f"{data['holder']} since {data['since']} ({data.get('what', '')})"
    except (ValueError, KeyError):
        who = "an unknown holder"
    raise OnevpsError(f"another deploy is running: the deploy lock is held by {who}",
                      "wait for it to finish, or run `fab unlock` if it is stale")


def release_lock(runner: Runner, settings: Settings) -> None:
    if runner.dry_run:
        return
    runner.run(["rm", "-rf", lock_dir(settings)], "release the deploy lock", check=False)


def read_lock(runner: Runner, settings: Settings) -> str | None:
    res = runner.run(["cat", f"{lock_dir(settings)}/holder"], "read the deploy lock", check=False, mutates=False)
    return res.stdout.strip() if res.ok else None


def append_journal(runner: Runner, settings: Settings, entry: dict) -> None:
    if runner.dry_run:
        return
    line = json.dumps(entry, sort_keys=True)
    path = journal_file(settings)
    runner.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && printf "%s\\n" "$2" >> "$1"', "sh", path, line],
               "write the deploy journal")


def read_journal(runner: Runner, settings: Settings) -> list[dict]:
    res = runner.run(["cat", journal_file(settings)], "read the deploy journal", check=False, mutates=False)
    entries = []
    for line in res.stdout.splitlines() if res.ok else []:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def quote(argv: Sequence[str]) -> str:
    return shlex.join(argv)
