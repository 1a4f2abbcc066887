"""The server: an SSH connection (fabric), its settings, and file sync.

Commands for the server are the same argv lists as locally (onevps.commands),
run through a fabric Connection. Environment variables travel as an `env
K=V ...` prefix, because sshd drops SSH env requests unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import posixpath
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from fabric import Connection
from paramiko.ssh_exception import AuthenticationException, NoValidConnectionsError, SSHException

from . import config, tiers
from .commands import shell
from .config import Settings
from .errors import CommandFailed, OnevpsError, redact
from .project import Project
from .runner import Result, Runner

# What `fab setup` and `fab deploy` keep in step on the server, relative to the
# repository root. Wheels are left out of that sync: the ML tier's staged wheels
# (WHEEL_DIR, ~200 MB for torch) are sent only when the server builds that tier
# (`local_files(..., wheels=True)`), and wheels put on the server by hand are
# never deleted.
SHARED_DIRS = ("compose", "nginx", "dockerfiles")
WHEEL_DIR = tiers.WHEEL_DIR
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


def server_project(settings: Settings) -> Project:
    """The project's files on the server: under VPS_PATH."""
    return Project(Path(settings.vps_path))


def remote_settings(project: Project, local: Settings) -> Settings:
    """The server's settings: VPS_ENV_FILE (paths in it against the project here) read as
    the server's .env, which compose on the server reads from VPS_PATH/.env."""
    env_file = local.vps_env_file
    if env_file is None or not env_file.is_file():
        raise OnevpsError(f"VPS_ENV_FILE {env_file} does not exist",
                          "create it (copy .env.example) with the server's settings")
    server = config.load(project, environ={}, env_file=env_file)
    return dataclasses.replace(server, env_file=server_project(local).env_file,
                               vps_host=local.vps_host, vps_user=local.vps_user, vps_port=local.vps_port,
                               vps_path=local.vps_path, vps_ssh_key=local.vps_ssh_key,
                               # which servers make the swarm is said here, like VPS_HOST
                               swarm_manager=local.swarm_manager, swarm_workers=local.swarm_workers,
                               swarm_advertise_addr=local.swarm_advertise_addr,
                               swarm_registry_port=local.swarm_registry_port)


class RemoteRunner(Runner):
    """Runs argv on the server; env vars go in an `env K=V` prefix."""

    def run(self, argv: Sequence[str], step: str, *, hide: bool = True, check: bool = True,
            hint: str | None = None, env: Mapping[str, str] | None = None,
            mutates: bool = True) -> Result:
        merged = {**self.env, **(env or {})}
        command = shell.with_env(merged, argv)
        if any(redact(str(a)) != str(a) for a in command):
            # The whole command line (the `env K=V` prefix too) shows in the server's ps:
            # a secret value never goes there, it travels in files.
            keys = sorted(k for k, v in merged.items() if redact(str(v)) != str(v))
            raise OnevpsError(f"refusing to put {', '.join(keys) or 'a secret value'} on the server's command line",
                              "this is a bug in onevps; please report it")
        saved, self.env = self.env, {}
        try:
            return super().run(command, step, hide=hide, check=check, hint=hint, env={}, mutates=mutates)
        except (EOFError, SSHException):  # the connection dropped as the command was being sent
            raise CommandFailed(f"{step}: the SSH connection to the server was lost",
                                "check that the server is up, then run the task again "
                                "(`fab unlock` if it says the deploy lock is held)",
                                step=f"{step}: the SSH connection was lost") from None
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
    res = runner.run(shell.file_hashes(root, list(dirs)), "read the server's file hashes", mutates=False)
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
        runner.run(shell.mkdir_p(*folders), "create folders on the server")
    for rel in plan.send:
        target = posixpath.join(root, rel)
        tmp = f"{target}.onevps-tmp"
        try:
            conn.put(str(local[rel]), tmp)
        except (OSError, SSHException) as exc:
            raise CommandFailed(f"upload of {rel} failed: {exc}",
                                "check free space and permissions on the server, and that sshd offers SFTP") from None
        mode = "755" if local[rel].stat().st_mode & 0o111 else "644"
        runner.run(shell.place(mode, tmp, target), f"place {rel}")
    if plan.delete:
        runner.run(shell.rm_f(*[posixpath.join(root, rel) for rel in plan.delete]), "delete removed files")


def put_text_if_changed(conn: Connection, runner: Runner, target: str, text: str, mode: str = "600",
                        step: str | None = None, make_folder: bool = False) -> bool:
    """put_text unless the server's file already holds exactly TEXT (make_folder: its folder is
    created first, when writing); True when it was written."""
    current = runner.run(shell.cat(target), step or f"read {target}", check=False, mutates=False)
    if current.ok and current.stdout == text:
        return False
    if make_folder:
        runner.run(shell.mkdir_p(posixpath.dirname(target)), f"create the folder of {target}")
    put_text(conn, runner, target, text, mode=mode)
    return True


def put_text(conn: Connection, runner: Runner, target: str, text: str, mode: str = "600") -> None:
    """Write a small file on the server atomically with the given mode."""
    if runner.dry_run:
        runner.say(f"[dry-run] write {target} (mode {mode}, {len(text.encode())} bytes)")
        return
    tmp = f"{target}.onevps-tmp"
    # A new, empty file of mode 600 first (a leftover temp file keeps no other mode): the
    # text, which may hold secrets, is never readable by others, not even for a moment.
    runner.run(shell.empty_private_file(tmp), f"prepare {target}")
    try:
        conn.put(io.BytesIO(text.encode()), tmp)
    except (OSError, SSHException) as exc:
        raise CommandFailed(f"upload of {target} failed: {exc}",
                            "check free space and permissions on the server, and that sshd offers SFTP") from None
    runner.run(shell.place(mode, tmp, target), f"place {target}")
