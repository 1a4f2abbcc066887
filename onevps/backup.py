"""`fab backup` / `fab restore`: the data volumes and the server's .env.

A backup is one tar file (mode 600: it holds the .env's secrets) with:
    volumes/<volume>.tar.gz   one per data volume (Redis, ChromaDB, Ollama, certificates)
    env                       the server's .env
    manifest.json             project, volumes, time
Redis and ChromaDB are paused (not stopped) while their volumes are read,
so the copy is consistent and the pause lasts only as long as the copy.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
import tempfile
import time
from pathlib import Path

from . import remote, tarcheck
from .commands import compose_cmd, docker_cmd, shell
from .errors import CommandFailed, OnevpsError
from .server import Ctx, container_name, inspect, tier_ref

VOLUMES = ("redis-data", "chroma-data", "ollama-data", "nginx-certs")
PAUSED = ("redis", "chromadb")  # databases: paused while copied
STATEFUL = ("redis", "chromadb", "ollama", "nginx")


def volume_name(srv: Ctx, volume: str) -> str:
    return f"{srv.rs.project_name}_{volume}"


def _helper(srv: Ctx, volume: str | None, backup_dir: str, argv: list[str], writable: bool = False) -> list[str]:
    """A throw-away container with the volume (if any) at /data and the backup folder at /backup.

    It uses the base tier image, which every server that ran `fab setup` has.
    """
    return docker_cmd.volume_helper(volume_name(srv, volume) if volume else None, backup_dir,
                                    tier_ref(srv, "base"), argv, writable)


EXTRACTOR = "tarcheck.py"  # onevps/tarcheck.py, sent into the restore folder


def _extractor(*args: str) -> list[str]:
    """onevps.tarcheck, the code that checked the archive here, run in the helper: it writes."""
    return ["python3", f"/backup/{EXTRACTOR}", *args]


def backup(srv: Ctx, local_dir: Path) -> Path | None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = posixpath.join(srv.rs.vps_path, "backups")
    work = posixpath.join(root, stamp)
    archive = posixpath.join(root, f"{srv.rs.project_name}-{stamp}.tar")
    present = [v for v in VOLUMES if inspect(srv, "{{.Name}}", volume_name(srv, v), kind="volume")]
    if not present:
        raise OnevpsError(f"no data volumes of project {srv.rs.project_name} on the server", "deploy first")
    srv.run.run(shell.private_dir(work, "volumes"), "create the backup folder")
    paused = [s for s in PAUSED if inspect(srv, "{{.State.Running}}", container_name(srv, s)) == "true"]
    try:
        if paused:
            srv.run.run(compose_cmd.pause(srv.vps, srv.rs, paused),
                        "pause the databases for a consistent copy")
        for volume in present:
            srv.say(f"==> copying volume {volume_name(srv, volume)}")
            srv.run.run(_helper(srv, volume, work, ["sh", "-c", f"tar -czf /backup/volumes/{volume}.tar.gz -C /data ."]),
                        f"copy volume {volume}")
    finally:
        if paused:
            srv.run.run(compose_cmd.unpause(srv.vps, srv.rs, paused), "unpause the databases")
    manifest = json.dumps({"project": srv.rs.project_name, "volumes": present, "time": stamp})
    srv.run.run(shell.write_backup(srv.rs.vps_path, work, manifest, archive), "write the backup archive")
    if srv.run.dry_run:
        return None
    local_dir.mkdir(parents=True, exist_ok=True)
    target = local_dir / posixpath.basename(archive)
    # The archive holds the server's .env: private from its first byte, never a moment readable.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file of the same name keeps its mode through O_CREAT
    with os.fdopen(fd, "wb") as fh:
        srv.conn.get(archive, fh)
    srv.say(f"==> backup on the server: {archive}")
    return target


def check_archive(path: Path) -> dict:
    """The archive's manifest; a file that is not an onevps backup is one clear line."""
    if not path.is_file():
        raise OnevpsError(f"{path} does not exist", "give the path `fab backup` printed")
    try:
        with tarfile.open(path) as tar:
            names = set(tar.getnames())
            member = tar.extractfile("./manifest.json")
            manifest = json.loads(member.read()) if member else {}
    except (tarfile.TarError, KeyError, ValueError, OSError):
        raise OnevpsError(f"{path} is not an onevps backup archive", "give a file made by `fab backup`") from None
    # The manifest is data from a file: trust none of it. Volume names go into commands on the
    # server, so only the volumes onevps backs up are accepted (an unknown one is refused, not run).
    volumes = manifest.get("volumes") if isinstance(manifest, dict) else None
    if not isinstance(volumes, list) or not all(isinstance(v, str) for v in volumes):
        raise OnevpsError(f"{path} is not an onevps backup archive (its manifest lists no volumes)",
                          "give a file made by `fab backup`")
    unknown = [v for v in volumes if v not in VOLUMES]
    if unknown or len(set(volumes)) != len(volumes):
        shown = ", ".join(repr(v[:40]) for v in unknown) or "a volume twice"
        raise OnevpsError(f"{path} names volumes onevps does not back up ({shown}); nothing was restored",
                          f"give a file made by `fab backup` (its volumes are among {', '.join(VOLUMES)})")
    missing = [v for v in volumes if f"./volumes/{v}.tar.gz" not in names]
    if missing or "./env" not in names:
        raise OnevpsError(f"{path} is incomplete (missing {', '.join(missing) or 'env'})", "use another backup")
    check_members(path, volumes)
    return manifest


# What `fab backup` writes, and nothing else: the server unpacks these.
FOLDERS = (".", "./volumes")
FILES = ("./env", "./manifest.json") + tuple(f"./volumes/{v}.tar.gz" for v in VOLUMES)
STRICT = {**{name: "dir" for name in FOLDERS}, **{name: "file" for name in FILES}}


def check_members(path: Path, volumes: list[str]) -> None:
    """Every member stays inside the archive, checked by onevps.tarcheck, the same code that
    unpacks it on the server: the outer archive holds only what `fab backup` writes (folders
    and plain files, no links); each volume's archive holds no absolute path, no `..` leaving
    the volume, no link pointing out of it or through a link it made, no device file, no
    setuid/setgid file and nothing after its end."""
    def refuse(member: str, why: str) -> OnevpsError:
        return OnevpsError(f"{path} holds {member[:80]!r} ({why}); nothing was restored",
                           "give a file made by `fab backup`")

    where = tempfile.mkdtemp(prefix="onevps-check-")
    try:
        tarcheck.check_outer(str(path), STRICT, os.path.join(where, "restore"))
        with tarfile.open(path) as tar:
            for volume in volumes:
                inner = tar.extractfile(f"./volumes/{volume}.tar.gz")
                try:
                    tarcheck.check_volume(inner, os.path.join(where, volume))
                except tarcheck.Refused as exc:
                    raise refuse(f"volumes/{volume}.tar.gz:{exc.member}", exc.why) from None
    except tarcheck.Refused as exc:
        raise refuse(exc.member, exc.why) from None
    except (tarfile.TarError, OSError, EOFError):
        raise OnevpsError(f"{path} is not an onevps backup archive (a volume's archive does not read)",
                          "give a file made by `fab backup`") from None
    finally:
        os.rmdir(where)


def restore(srv: Ctx, archive: Path, with_env: bool = False) -> None:
    """Checked here first (check_archive); on the server the helper checks again with the same
    code and writes: the archive unpacked, every volume's archive checked before the services
    stop, each volume's new data complete before its old data goes. A failure cleans up."""
    manifest = check_archive(archive)
    volumes = manifest["volumes"]
    root = posixpath.join(srv.rs.vps_path, "backups")
    work = posixpath.join(root, f"restore-{time.strftime('%Y%m%d-%H%M%S')}")
    srv.run.run(shell.private_dir(work), "create the restore folder")
    try:
        remote.put_text(srv.conn, srv.run, posixpath.join(work, EXTRACTOR),
                        Path(tarcheck.__file__).read_text(encoding="utf-8"), mode="600")
        if not srv.run.dry_run:
            try:
                srv.conn.put(str(archive), posixpath.join(work, "archive.tar"))
            except OSError as exc:
                raise CommandFailed(f"upload of {archive.name} failed: {exc}",
                                    "check free space on the server") from None
        srv.run.run(_helper(srv, None, work, _extractor("unpack", "/backup/archive.tar", "/backup",
                                                        *[f"{k}:{v}" for k, v in STRICT.items()])),
                    "unpack the archive on the server", hint=REFUSED_HINT)
        for volume in volumes:
            srv.run.run(_helper(srv, None, work, _extractor("check", f"/backup/volumes/{volume}.tar.gz")),
                        f"check the archive of volume {volume}", hint=REFUSED_HINT)
        srv.say(f"==> stopping {', '.join(STATEFUL)} while their data is replaced")
        srv.run.run(compose_cmd.stop(srv.vps, srv.rs, STATEFUL), "stop the stateful services")
        try:
            for volume in volumes:
                srv.say(f"==> restoring volume {volume_name(srv, volume)}")
                srv.run.run(docker_cmd.volume_create(volume_name(srv, volume)), f"create volume {volume}")
                srv.run.run(_helper(srv, volume, work, _extractor("restore", f"/backup/volumes/{volume}.tar.gz",
                                                                  "/data"), writable=True),
                            f"restore volume {volume}", hint="the volume keeps its data from before this restore")
            if with_env:
                srv.run.run(shell.restore_env(work, srv.rs.vps_path), "restore the server's .env")
        finally:
            srv.run.run(compose_cmd.up(srv.vps, srv.rs, STATEFUL, timeout=srv.rs.up_timeout,
                                       remove_orphans=False),
                        "start the stateful services again")
    finally:
        srv.run.run(shell.rm_rf(work), "remove the restore folder", check=False)
    srv.say(f"==> restored {len(volumes)} volume(s) from {archive.name} (made {manifest.get('time')})")


REFUSED_HINT = "nothing was restored; give a file made by `fab backup`"
