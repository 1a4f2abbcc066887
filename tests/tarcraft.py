"""Crafted tar archives for the restore tests (unit and integration): members as
`tar -czf - -C /data .` writes them, and the attacks of issue 24 (a bad-checksum header
hiding members, a setuid member, a link chain)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile

UID, GID = os.getuid(), os.getgid()


def info(name: str, kind=tarfile.REGTYPE, mode=0o644, linkname="", **extra) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.mode, m.linkname, m.uid, m.gid, m.mtime = kind, mode, linkname, UID, GID, 1_700_000_000
    for key, value in extra.items():
        setattr(m, key, value)
    return m


def volume_tar(members, tail: bytes = b"") -> bytes:
    """A volume's archive as `tar -czf - -C /data .` makes it, then `tail` (raw tar blocks)
    spliced in before the end-of-archive blocks; members: (TarInfo, data)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info(".", tarfile.DIRTYPE, 0o755))
        for m, data in members:
            m.size = len(data) if m.isfile() else 0
            tar.addfile(m, io.BytesIO(data) if m.isfile() else None)
        end = raw.tell()
    body = raw.getvalue()
    return gzip_bytes(body[:end] + tail + body[end:])


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def blocks(members) -> bytes:
    """Raw tar blocks of members, no end-of-archive."""
    raw = io.BytesIO()
    tar = tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT)
    for m, data in members:
        m.size = len(data) if m.isfile() else 0
        tar.addfile(m, io.BytesIO(data) if m.isfile() else None)
    return raw.getvalue()[:tar.offset]


def bad_checksum(name: str) -> bytes:
    """One header block whose checksum is wrong (tarfile stops there; GNU tar skips it)."""
    block = bytearray(blocks([(info(name), b"")])[:512])
    block[148:156] = b"0000000\0"
    return bytes(block)


HIDDEN = [(info("./dev-null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), b""),
          (info("./shadow", tarfile.SYMTYPE, 0o777, linkname="/etc/shadow"), b"")]


def crafted_volumes() -> dict[str, bytes]:
    """The volume archives of the attacks of issue 24 (item 4 of "What fell"), by name."""
    return {
        "a bad-checksum header hiding a device and a link to /etc/shadow":
            volume_tar([(info("./dump.rdb"), b"new")], tail=bad_checksum("./junk") + blocks(HIDDEN)),
        "a setuid member": volume_tar([(info("./su", mode=0o4755), b"\x7fELF")]),
        "a link chain": volume_tar([(info("./a", tarfile.SYMTYPE, 0o777, linkname="."), b""),
                                    (info("./a/up", tarfile.SYMTYPE, 0o777, linkname=".."), b"")]),
    }


def backup_archive(path, volume: str, inner: bytes) -> None:
    """An archive as `fab backup` writes it, holding one volume's archive `inner`."""
    entries = [(info(".", tarfile.DIRTYPE, 0o700), b""), (info("./volumes", tarfile.DIRTYPE, 0o700), b""),
               (info("./env", mode=0o600), b"DOMAIN=localhost\n"),
               (info("./manifest.json", mode=0o600),
                ('{"project": "p", "volumes": ["%s"], "time": "t"}' % volume).encode()),
               (info(f"./volumes/{volume}.tar.gz", mode=0o600), inner)]
    with tarfile.open(path, "w") as tar:
        for m, data in entries:
            m.size = len(data) if m.isfile() else 0
            tar.addfile(m, io.BytesIO(data) if m.isfile() else None)
