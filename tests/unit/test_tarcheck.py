"""onevps.tarcheck: the one code that checks a backup archive and writes it (issue 24, item 5).
Crafted archives are refused before anything is written; a volume is replaced only once its
new data is whole. No Docker: the helper runs this same file on the server."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from onevps import tarcheck
from tests.tarcraft import HIDDEN, bad_checksum, blocks, info, volume_tar

def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root: kind, mode, owner, content's sha256 or link target."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = ("link", os.readlink(path))
        elif path.is_dir():
            what = ("dir",)
        else:
            what = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        out[str(path.relative_to(root))] = (*what, oct(st.st_mode), st.st_uid, st.st_gid)
    return out


@pytest.fixture
def volume(tmp_path):
    """A volume with data in it, as the helper sees it at /data."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "dump.rdb").write_bytes(b"old data")
    (data / "sub" / "kept.txt").write_text("old")
    return data


def write(tmp_path, payload: bytes) -> str:
    path = tmp_path / "volume.tar.gz"
    path.write_bytes(payload)
    return str(path)


def test_a_volume_is_replaced_by_the_archive_with_modes_and_links(tmp_path, volume):
    archive = write(tmp_path, volume_tar([
        (info("./appendonly.aof", mode=0o600), b"SET k v"),
        (info("./archive", tarfile.DIRTYPE, 0o700), b""),
        (info("./archive/privkey1.pem", mode=0o640), b"key"),
        (info("./live", tarfile.DIRTYPE, 0o755), b""),
        (info("./live/privkey.pem", tarfile.SYMTYPE, 0o777, linkname="../archive/privkey1.pem"), b""),
        (info("./hard.aof", tarfile.LNKTYPE, 0o600, linkname="./appendonly.aof"), b""),
    ]))
    tarcheck.restore(archive, str(volume))
    assert sorted(p.name for p in volume.iterdir()) == ["appendonly.aof", "archive", "hard.aof", "live"]
    assert (volume / "appendonly.aof").read_bytes() == b"SET k v"
    assert oct((volume / "appendonly.aof").stat().st_mode & 0o7777) == "0o600"
    assert oct((volume / "archive").stat().st_mode & 0o7777) == "0o700"
    assert (volume / "live" / "privkey.pem").read_bytes() == b"key"
    assert os.readlink(volume / "live" / "privkey.pem") == "../archive/privkey1.pem"
    assert (volume / "hard.aof").stat().st_ino == (volume / "appendonly.aof").stat().st_ino
    assert oct(volume.stat().st_mode & 0o7777) == "0o755"  # the archive's "." member


@pytest.mark.parametrize("tail, hidden", [
    # A header with a bad checksum: tarfile stops reading there, GNU tar skips it and went on
    # to create a world-writable character device and a link to /etc/shadow (the attack).
    (bad_checksum("./junk") + blocks(HIDDEN), "dev-null"),
    (b"\x01" * 512 + blocks(HIDDEN), "dev-null"),  # garbage, then members
])
def test_members_hidden_behind_a_bad_header_are_refused_and_nothing_is_written(tmp_path, volume, tail, hidden):
    payload = volume_tar([(info("./dump.rdb"), b"new")], tail=tail)
    archive = write(tmp_path, payload)
    listed = subprocess.run(["tar", "-tzvf", archive], capture_output=True, text=True)
    assert hidden in listed.stdout  # GNU tar sees what tarfile does not: the archive is the attack
    before = tree(volume)
    with pytest.raises(tarcheck.Refused) as err:
        tarcheck.restore(archive, str(volume))
    assert "data after the end of the archive" in err.value.why
    assert tree(volume) == before  # byte-identical, no folder left behind


@pytest.mark.parametrize("member, why", [
    ((info("./su", mode=0o4755), b"\x7fELF"), "setuid or setgid"),
    ((info("./sg", mode=0o2755), b"\x7fELF"), "setuid or setgid"),
    ((info("./null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), b""), "device"),
    ((info("./fifo", tarfile.FIFOTYPE, 0o644), b""), "device"),
    ((info("./shadow", tarfile.SYMTYPE, 0o777, linkname="/etc/shadow"), b""), "absolute link"),
    ((info("./up", tarfile.SYMTYPE, 0o777, linkname="../../etc"), b""), "outside the destination"),
    ((info("./hard", tarfile.LNKTYPE, 0o644, linkname="../outside"), b""), "outside the destination"),
    ((info("../../etc/cron.d/x"), b"x"), "outside the destination"),
    ((info("/etc/cron.d/x"), b"x"), "absolute path"),
])
def test_a_member_that_breaks_a_rule_is_refused_and_nothing_is_written(tmp_path, volume, member, why):
    archive = write(tmp_path, volume_tar([(info("./dump.rdb"), b"new"), member]))
    before = tree(volume)
    with pytest.raises(tarcheck.Refused) as err:
        tarcheck.restore(archive, str(volume))
    assert why in err.value.why
    assert tree(volume) == before


def test_a_link_chain_through_links_the_archive_made_is_refused(tmp_path, volume):
    """`a -> .` then `a/up -> ..`: each link alone stays inside; through the first, the second
    points out of the volume (GNU tar left it so)."""
    archive = write(tmp_path, volume_tar([
        (info("./a", tarfile.SYMTYPE, 0o777, linkname="."), b""),
        (info("./a/up", tarfile.SYMTYPE, 0o777, linkname=".."), b""),
    ]))
    before = tree(volume)
    with pytest.raises(tarcheck.Refused) as err:
        tarcheck.restore(archive, str(volume))
    assert err.value.member == "./a/up" and "goes through the link a the archive made" == err.value.why
    assert tree(volume) == before


def test_a_write_that_fails_midway_leaves_the_volume_as_it_was(tmp_path, volume, monkeypatch):
    archive = write(tmp_path, volume_tar([(info("./one"), b"1"), (info("./two"), b"2")]))
    real = shutil.copyfileobj
    calls = []

    def full_disk(src, dst, length=0):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst, length)

    monkeypatch.setattr(tarcheck.shutil, "copyfileobj", full_disk)
    before = tree(volume)
    with pytest.raises(OSError):
        tarcheck.restore(archive, str(volume))
    assert tree(volume) == before


def test_an_earlier_restore_stopped_midway_is_named_and_nothing_is_touched(tmp_path, volume):
    (volume / tarcheck.OLD).mkdir()
    archive = write(tmp_path, volume_tar([(info("./dump.rdb"), b"new")]))
    before = tree(volume)
    assert tarcheck.main(["restore", archive, str(volume)]) == 3
    assert tree(volume) == before


def test_the_helper_command_line_says_refused_in_one_line(tmp_path, volume, capsys):
    archive = write(tmp_path, volume_tar([(info("./su", mode=0o4755), b"x")]))
    assert tarcheck.main(["check", archive]) == 3
    assert capsys.readouterr().err == "refused: './su' (a setuid or setgid file)\n"
    assert tarcheck.main(["check", str(tmp_path / "missing.tar.gz")]) == 3
    assert capsys.readouterr().err.startswith("cannot restore from the archive: ")


def test_unpack_writes_only_the_names_fab_backup_writes_private(tmp_path):
    outer = tmp_path / "backup.tar"
    with tarfile.open(outer, "w") as tar:
        for m, data in [(info(".", tarfile.DIRTYPE, 0o755), b""), (info("./env", mode=0o644), b"A=1\n")]:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    folder = tmp_path / "work"
    folder.mkdir()
    tarcheck.unpack(str(outer), str(folder), {".": "dir", "./env": "file"})
    assert (folder / "env").read_bytes() == b"A=1\n" and oct((folder / "env").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "other").mkdir()
    with pytest.raises(tarcheck.Refused, match="not written by `fab backup`"):
        tarcheck.unpack(str(outer), str(tmp_path / "other"), {".": "dir"})
    assert list((tmp_path / "other").iterdir()) == []


@pytest.mark.parametrize("members, member, why", [
    # the staging folders' names: the swap would move the live data away for good
    ([(info(f"./{tarcheck.NEW}", tarfile.DIRTYPE, 0o755), b"")], f"./{tarcheck.NEW}", "the name of a folder"),
    ([(info(f"./{tarcheck.OLD}/x"), b"x")], f"./{tarcheck.OLD}/x", "the name of a folder"),
    # `..` in a name, lexically inside
    ([(info("./a/../b"), b"x")], "./a/../b", "outside the destination"),
    # a link whose target walks through a link the archive made: b -> ., c -> b/.. is the
    # volume's parent once b is a link
    ([(info("./b", tarfile.SYMTYPE, 0o777, linkname="."), b""),
      (info("./c", tarfile.SYMTYPE, 0o777, linkname="b/.."), b"")], "./c", "goes through the link b"),
    # a hard link through `..` (x/../b/../live: the live data outside the staging folder)
    ([(info("./b", tarfile.SYMTYPE, 0o777, linkname="."), b""), (info("./x", tarfile.DIRTYPE, 0o755), b""),
      (info("./h", tarfile.LNKTYPE, 0o644, linkname="x/../b/../live"), b"")], "./h", "outside the destination"),
])
def test_names_and_link_targets_that_could_reach_out_are_refused(tmp_path, volume, members, member, why):
    archive = write(tmp_path, volume_tar(members))
    before = tree(volume)
    with pytest.raises(tarcheck.Refused) as err:
        tarcheck.restore(archive, str(volume))
    assert (err.value.member, why in err.value.why) == (member, True), err.value
    assert tree(volume) == before


def test_a_swap_that_fails_midway_puts_the_old_data_back(tmp_path, volume, monkeypatch):
    archive = write(tmp_path, volume_tar([(info("./one"), b"1"), (info("./two"), b"2")]))
    before = tree(volume)
    real, calls = os.rename, []

    def rename(src, dst):
        if os.path.dirname(src).endswith(tarcheck.NEW) and calls.append(1) is None and len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(tarcheck.os, "rename", rename)
    with pytest.raises(OSError):
        tarcheck.restore(archive, str(volume))
    assert tree(volume) == before


def test_a_header_the_writer_cannot_apply_is_one_line(tmp_path, volume, capsys):
    archive = write(tmp_path, volume_tar([(info("./big-owner", uid=2 ** 40), b"x")]))
    before = tree(volume)
    assert tarcheck.main(["restore", archive, str(volume)]) == 3
    assert capsys.readouterr().err.startswith("cannot restore from the archive: ")
    assert tree(volume) == before
