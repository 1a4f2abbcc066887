"""The one reader of backup archives: it checks them and it writes them (issue 24, item 5).

`fab restore` used to check an archive with Python's tarfile and unpack it with GNU tar,
and the two disagree: a header with a bad checksum ends tarfile's reading while GNU tar
skips it and goes on, so members hidden behind it were written without being checked.
Here the same code does both, so nothing is written that was not checked:

- `check_outer` / `check_volume` run on the machine that runs `fab`, before it connects;
- `main` runs the same file in a throw-away helper container on the server
  (`python3 /backup/tarcheck.py unpack|check|restore ...`, standard library only; fab
  restore sends it into the restore folder): it unpacks the
  outer archive and replaces each volume's data from its archive.

An archive is refused when, after its last member, anything but zero bytes follows (a
damaged or crafted header hides data there); when a member is absolute, leaves the folder,
is a device or FIFO, carries setuid/setgid, or passes through a link the archive itself
made (`a -> .` then `a/up -> ..`), or is a link pointing out; also by tarfile's "data"
filter (PEP 706) where the Python has it (the helper's may be older: the rules above are
checked here either way, and the writing is done here, not by tarfile.extractall).

A volume's new data is written in full to a folder inside the volume first; only then is
its old data moved aside and the new moved in, so a refused or failed restore leaves the
volume as it was.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tarfile

NEW = ".onevps-restore-new"  # inside the volume: the new data while it is written
OLD = ".onevps-restore-old"  # inside the volume: the old data while it is swapped out
CHUNK = 1 << 20
_DATA_FILTER = getattr(tarfile, "data_filter", None)  # Python 3.11.4+; Debian 12's 3.11.2 lacks it


class Refused(Exception):
    """The archive is not restored: `member` (its name) and why."""

    def __init__(self, member: str, why: str):
        super().__init__(f"{member[:80]!r} ({why})")
        self.member, self.why = member, why


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def _rest_is_zero(tar: tarfile.TarFile) -> bool:
    """Whether only zero bytes follow the last member tarfile read (the end-of-archive blocks)."""
    fileobj = tar.fileobj
    fileobj.seek(tar.offset)
    while True:
        block = fileobj.read(CHUNK)
        if not block:
            return True
        if block.count(0) != len(block):
            return False


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def _through_links(start: tuple[str, ...], target: str, links: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    """Walk target (a path, relative to start) one part at a time, as the kernel would: the
    first folder on the way that is a link the archive made, or None. `..` is taken lexically,
    which is only right when no folder on the way is a link: that is what this checks."""
    at = start
    parts = [p for p in target.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        at = at[:-1] if part == ".." else at + (part,)
        if at in links and i < len(parts) - 1:
            return at
    return None


def _check(m: tarfile.TarInfo, root: str, links: set[tuple[str, ...]]) -> None:
    """One member against the rules (root: the real path it is unpacked under); raises Refused."""
    if m.name.startswith("/"):
        raise Refused(m.name, "an absolute path")
    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise Refused(m.name, "a device, FIFO or other special file")
    if m.mode & (stat.S_ISUID | stat.S_ISGID):
        raise Refused(m.name, "a setuid or setgid file")
    parts = tuple(_parts(m.name))
    if ".." in parts:  # `tar -C /data .` never writes one
        raise Refused(m.name, "a path outside the destination")
    if parts and parts[0] in (NEW, OLD):
        raise Refused(m.name, "the name of a folder restore uses")
    through = [parts[:i] for i in range(1, len(parts)) if parts[:i] in links]
    if m.islnk():
        if ".." in _parts(m.linkname):
            raise Refused(m.name, "a link pointing outside the destination")
        target = tuple(_parts(m.linkname))
        through += [target[:i] for i in range(1, len(target) + 1) if target[:i] in links]
    elif m.issym():
        hop = _through_links(parts[:-1], m.linkname, links)
        through += [hop] if hop else []
    if through:
        raise Refused(m.name, f"goes through the link {'/'.join(through[0])} the archive made")
    path = os.path.join(root, *parts)
    if not _inside(root, path):
        raise Refused(m.name, "a path outside the destination")
    if m.issym() or m.islnk():
        if m.linkname.startswith("/"):
            raise Refused(m.name, "an absolute link")
        base = os.path.dirname(path) if m.issym() else root
        if not _inside(root, os.path.join(base, m.linkname)):
            raise Refused(m.name, "a link pointing outside the destination")
    if _DATA_FILTER is not None:  # PEP 706's rules too, where this Python has them (3.11.4+)
        try:
            _DATA_FILTER(m, root)
        except tarfile.FilterError as exc:
            raise Refused(m.name, str(exc).split(" (", 1)[0]) from None


def members(tar: tarfile.TarFile, dest: str, strict: dict[str, str] | None = None) -> list[tarfile.TarInfo]:
    """Every member of tar, checked for unpacking into dest; raises Refused.

    strict: the only names allowed, each with its kind ("file" or "dir"): the outer archive,
    which holds only what `fab backup` writes."""
    root = os.path.realpath(dest)
    out: list[tarfile.TarInfo] = []
    links: set[tuple[str, ...]] = set()
    for m in tar:
        if strict is not None:
            kind = strict.get(m.name)
            if kind is None or not (m.isdir() if kind == "dir" else m.isfile()):
                raise Refused(m.name, "not written by `fab backup`")
        _check(m, root, links)
        if m.issym():
            links.add(tuple(_parts(m.name)))
        out.append(m)
    if not _rest_is_zero(tar):
        raise Refused(f"after {out[-1].name if out else 'the start'}", "data after the end of the archive: "
                      "a damaged or crafted header")
    return out


def check_outer(path: str, strict: dict[str, str], dest: str) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "r:") as tar:
        return members(tar, dest, strict)


def check_volume(fileobj, dest: str) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=fileobj, mode="r:gz") as tar:
        return members(tar, dest)


def unpack(path: str, folder: str, strict: dict[str, str]) -> None:
    """The outer archive's files into folder (mode 600: it holds the server's .env)."""
    owner = os.stat(folder)  # the SSH user's, who reads .env from here and removes the folder
    with tarfile.open(path, "r:") as tar:
        for m in members(tar, folder, strict):
            target = os.path.join(folder, *_parts(m.name))
            if m.isdir():
                os.makedirs(target, mode=0o700, exist_ok=True)
            else:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(tar.extractfile(m), out, CHUNK)
            os.chown(target, owner.st_uid, owner.st_gid)


def _parent(root: str, parts: list[str]) -> str:
    """The member's folder under root, made as needed; no part of it may be a link."""
    path = root
    for part in parts[:-1]:
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise Refused("/".join(parts), "goes through a link")
        if not os.path.isdir(path):
            os.mkdir(path, 0o700)
    return path


def _write(tar: tarfile.TarFile, checked: list[tarfile.TarInfo], root: str) -> None:
    """The checked members under root, as tar would write them, with their numeric owner and
    their mode less setuid/setgid/sticky and group/other write (as PEP 706's data filter)."""
    folders = []
    for m in checked:
        parts = _parts(m.name)
        target = os.path.join(_parent(root, parts), parts[-1]) if parts else root
        mode = stat.S_IMODE(m.mode) & 0o755
        if m.isdir():
            if os.path.islink(target):
                raise Refused(m.name, "goes through a link")
            if not os.path.isdir(target):
                os.mkdir(target, 0o700)
            folders.append((target, m, mode))
            continue
        if os.path.lexists(target) and not os.path.isdir(target) or os.path.islink(target):
            os.unlink(target)  # a later member of the same name wins, as with tar
        if m.isfile():
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(tar.extractfile(m), out, CHUNK)
                os.fchown(out.fileno(), m.uid, m.gid)
                os.fchmod(out.fileno(), mode)
            os.utime(target, (m.mtime, m.mtime))
        elif m.issym():
            os.symlink(m.linkname, target)
            os.lchown(target, m.uid, m.gid)
        else:  # a hard link to a member written before
            os.link(os.path.join(root, *_parts(m.linkname)), target, follow_symlinks=False)
    for target, m, mode in reversed(folders):  # deepest first; a folder's own mode last
        os.chown(target, m.uid, m.gid)
        os.chmod(target, mode)
        os.utime(target, (m.mtime, m.mtime))


def restore(archive: str, data: str) -> None:
    """The volume at data gets the archive's contents; its old data stays until the new is whole."""
    new, old = os.path.join(data, NEW), os.path.join(data, OLD)
    if os.path.lexists(old):
        raise Refused(OLD, "a restore of this volume stopped midway: its old data is there; "
                           "move it back by hand or remove it, then restore again")
    if os.path.lexists(new):
        shutil.rmtree(new)  # what an interrupted restore left; the live data was never touched
    with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
        checked = members(tar, new)  # every member, before anything is written
        os.mkdir(new, 0o700)
        try:
            _write(tar, checked, new)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
    top, was = os.stat(new), os.stat(data)
    os.mkdir(old, 0o700)
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        for name in os.listdir(data):
            if name not in (NEW, OLD):
                os.rename(os.path.join(data, name), os.path.join(old, name))
                moved_out.append(name)
        for name in os.listdir(new):
            os.rename(os.path.join(new, name), os.path.join(data, name))
            moved_in.append(name)
        os.chown(data, top.st_uid, top.st_gid)
        os.chmod(data, stat.S_IMODE(top.st_mode))
    except BaseException:  # put the old data back as it was; the new goes
        for name in moved_in:
            os.rename(os.path.join(data, name), os.path.join(new, name))
        for name in moved_out:
            os.rename(os.path.join(old, name), os.path.join(data, name))
        os.chown(data, was.st_uid, was.st_gid)
        os.chmod(data, stat.S_IMODE(was.st_mode))
        os.rmdir(old)
        shutil.rmtree(new, ignore_errors=True)
        raise
    os.rmdir(new)
    shutil.rmtree(old)


def main(argv: list[str]) -> int:
    """unpack ARCHIVE FOLDER NAME:KIND... | check VOLUME_ARCHIVE | restore VOLUME_ARCHIVE DATA."""
    try:
        if argv[0] == "unpack":
            unpack(argv[1], argv[2], dict(a.rsplit(":", 1) for a in argv[3:]))
        elif argv[0] == "check":
            with open(argv[1], "rb") as raw:
                check_volume(raw, "/nonexistent/onevps-restore-check")
        elif argv[0] == "restore":
            restore(argv[1], argv[2])
        else:
            print(f"unknown command {argv[0]!r}", file=sys.stderr)
            return 2
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    except (tarfile.TarError, OSError, EOFError, OverflowError, ValueError) as exc:
        print(f"cannot restore from the archive: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
