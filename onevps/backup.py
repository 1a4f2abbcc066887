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
import time
from pathlib import Path

from . import commands
from .server import Ctx, inspect, tier_ref
from .errors import CommandFailed, OnevpsError

VOLUMES = ("redis-data", "chroma-data", "ollama-data", "nginx-certs")
PAUSED = ("redis", "chromadb")  # databases: paused while copied
STATEFUL = ("redis", "chromadb", "ollama", "nginx")


def volume_name(c: Ctx, volume: str) -> str:
    return f"{c.rs.project_name}_{volume}"


def _helper(c: Ctx, volume: str, backup_dir: str, script: str, writable: bool) -> list[str]:
    """A throw-away container with the volume at /data and the backup folder at /backup.

    It uses the base tier image, which every server that ran `fab setup` has.
    """
    mode = "" if writable else ":ro"
    return commands.docker("run", "--rm", "--network", "none",
                           "--volume", f"{volume_name(c, volume)}:/data{mode}",
                           "--volume", f"{backup_dir}:/backup",
                           tier_ref(c, "base"), "sh", "-c", script)


def backup(c: Ctx, local_dir: Path) -> Path | None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = posixpath.join(c.rs.vps_path, "backups")
    work = posixpath.join(root, stamp)
    archive = posixpath.join(root, f"{c.rs.project_name}-{stamp}.tar")
    present = [v for v in VOLUMES if inspect(c, "{{.Name}}", volume_name(c, v), kind="volume")]
    if not present:
        raise OnevpsError(f"no data volumes of project {c.rs.project_name} on the server", "deploy first")
    c.run.run(["sh", "-c", 'umask 077 && mkdir -p "$1/volumes"', "sh", work], "create the backup folder")
    paused = [s for s in PAUSED if inspect(c, "{{.State.Running}}", f"{c.rs.project_name}-{s}-1") == "true"]
    try:
        if paused:
            c.run.run(commands.compose(c.rs, "pause", *paused), "pause the databases for a consistent copy")
        for volume in present:
            c.say(f"==> copying volume {volume_name(c, volume)}")
            c.run.run(_helper(c, volume, work, f"tar -czf /backup/volumes/{volume}.tar.gz -C /data .", False),
                      f"copy volume {volume}")
    finally:
        if paused:
            c.run.run(commands.compose(c.rs, "unpause", *paused), "unpause the databases")
    manifest = json.dumps({"project": c.rs.project_name, "volumes": present, "time": stamp})
    c.run.run(["sh", "-c", 'umask 077 && cp "$1/.env" "$2/env" && printf "%s\\n" "$3" > "$2/manifest.json" && '
               'tar -cf "$4" -C "$2" . && chmod 600 "$4" && rm -rf "$2"',
               "sh", c.rs.vps_path, work, manifest, archive], "write the backup archive")
    if c.run.dry_run:
        return None
    local_dir.mkdir(parents=True, exist_ok=True)
    target = local_dir / posixpath.basename(archive)
    # The archive holds the server's .env: private from its first byte, never a moment readable.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file of the same name keeps its mode through O_CREAT
    with os.fdopen(fd, "wb") as fh:
        c.conn.get(archive, fh)
    c.say(f"==> backup on the server: {archive}")
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


def check_members(path: Path, volumes: list[str]) -> None:
    """Every member stays inside the archive: the outer archive holds only what `fab backup`
    writes (folders and plain files, no links); each volume's archive holds no absolute path,
    no `..` leaving the volume, no link pointing out of it and no device file
    (Python's tarfile.data_filter decides, the rules of PEP 706)."""
    def refuse(member: str, why: str) -> OnevpsError:
        return OnevpsError(f"{path} holds {member[:80]!r} ({why}); nothing was restored",
                           "give a file made by `fab backup`")

    try:
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if not ((m.name in FOLDERS and m.isdir()) or (m.name in FILES and m.isfile())):
                    raise refuse(m.name, "not written by `fab backup`")
            for volume in volumes:
                inner = tar.extractfile(f"./volumes/{volume}.tar.gz")
                with tarfile.open(fileobj=inner, mode="r:gz") as data:
                    for m in data:
                        if m.name.startswith("/"):  # data_filter would strip it; tar would too: refuse
                            raise refuse(f"volumes/{volume}.tar.gz:{m.name}", "an absolute path")
                        try:
                            tarfile.data_filter(m, "/data")
                        except tarfile.FilterError as exc:
                            raise refuse(f"volumes/{volume}.tar.gz:{m.name}", str(exc).split(" (", 1)[0]) from None
    except (tarfile.TarError, OSError, EOFError):
        raise OnevpsError(f"{path} is not an onevps backup archive (a volume's archive does not read)",
                          "give a file made by `fab backup`") from None


def restore(c: Ctx, archive: Path, with_env: bool = False) -> None:
    manifest = check_archive(archive)
    root = posixpath.join(c.rs.vps_path, "backups")
    work = posixpath.join(root, f"restore-{time.strftime('%Y%m%d-%H%M%S')}")
    remote_archive = posixpath.join(root, archive.name)
    c.run.run(["sh", "-c", 'umask 077 && mkdir -p "$1"', "sh", work], "create the restore folder")
    if not c.run.dry_run:
        try:
            c.conn.put(str(archive), remote_archive)
        except OSError as exc:
            raise CommandFailed(f"upload of {archive.name} failed: {exc}", "check free space on the server") from None
    c.run.run(["tar", "-xf", remote_archive, "-C", work], "unpack the archive on the server")
    c.say(f"==> stopping {', '.join(STATEFUL)} while their data is replaced")
    c.run.run(commands.compose(c.rs, "stop", *STATEFUL), "stop the stateful services")
    try:
        for volume in manifest["volumes"]:
            c.say(f"==> restoring volume {volume_name(c, volume)}")
            c.run.run(commands.docker("volume", "create", volume_name(c, volume)), f"create volume {volume}")
            c.run.run(_helper(c, volume, work, "find /data -mindepth 1 -delete && "
                              f"tar -xzf /backup/volumes/{volume}.tar.gz -C /data", True),
                      f"restore volume {volume}")
        if with_env:
            c.run.run(["sh", "-c", 'umask 077 && rm -f "$2/.env.onevps-tmp" && cp "$1/env" "$2/.env.onevps-tmp" && '
                       'mv -f "$2/.env.onevps-tmp" "$2/.env"', "sh", work, c.rs.vps_path],
                      "restore the server's .env")
    finally:
        c.run.run(commands.compose(c.rs, "up", "--detach", "--no-build", "--wait", "--wait-timeout",
                                   str(c.rs.up_timeout), *STATEFUL), "start the stateful services again")
        c.run.run(["rm", "-rf", work], "remove the restore folder", check=False)
    c.say(f"==> restored {len(manifest['volumes'])} volume(s) from {archive.name} (made {manifest.get('time')})")
