"""`fab restore` trusts no archive: the manifest's volume names go into commands on
the server, so only the volumes onevps backs up are accepted (no Docker, no server)."""

import io
import json
import tarfile

import pytest

from onevps import backup
from onevps.errors import OnevpsError


def volume_tar(members=None) -> bytes:
    """A volume's archive as `tar -czf - -C /data .` makes it; members: TarInfo -> data."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        top = tarfile.TarInfo(".")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        for info, data in (members or [(tarfile.TarInfo("./appendonly.aof"), b"SET k v")]):
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def archive(tmp_path, volumes, files=None, manifest=None, extra=None):
    """An archive as `fab backup` writes it (extra: more outer members, TarInfo -> data)."""
    path = tmp_path / "onevps-backup.tar"
    with tarfile.open(path, "w") as tar:
        for name in (".", "./volumes"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        entries = {"./env": b"REDIS_PASSWORD=x\n",
                   "./manifest.json": json.dumps(manifest if manifest is not None else
                                                 {"project": "p", "volumes": volumes, "time": "t"}).encode()}
        for name in files if files is not None else volumes:
            entries[f"./volumes/{name}.tar.gz"] = volume_tar()
        items = [(tarfile.TarInfo(name), data) for name, data in entries.items()] + list(extra or [])
        for info, data in items:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("member", [
    tarfile.TarInfo("../../etc/cron.d/x"),     # a path leaving the folder it is unpacked in
    tarfile.TarInfo("/etc/cron.d/x"),           # an absolute path
    tarfile.TarInfo("./volumes/extra.sh"),      # a file fab backup never writes
    link("./volumes/redis-data.tar.gz.lnk", "/etc/shadow"),
])
def test_an_archive_with_a_member_fab_backup_never_writes_is_refused(tmp_path, member):
    path = archive(tmp_path, ["redis-data"], extra=[(member, b"* * * * * root touch /tmp/pwned\n")])
    with pytest.raises(OnevpsError) as err:
        backup.check_archive(path)
    assert "not written by `fab backup`" in err.value.message and "nothing was restored" in err.value.message
    assert "\n" not in err.value.message


def with_volume(tmp_path, volume, members):
    """An archive as `fab backup` writes it, with one volume's archive holding `members`."""
    path = tmp_path / "crafted.tar"
    with tarfile.open(archive(tmp_path, [volume])) as src, tarfile.open(path, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else b""
            if m.name == f"./volumes/{volume}.tar.gz":
                data = volume_tar(members)
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    return path


@pytest.mark.parametrize("member, why", [
    ((tarfile.TarInfo("./../../etc/cron.d/x"), b"x"), "outside the destination"),
    ((tarfile.TarInfo("/etc/cron.d/x"), b"x"), "absolute path"),
    ((link("./escape", "/etc/shadow"), b""), "absolute"),
    ((link("./escape", "../../etc/shadow"), b""), "outside the destination"),
    ((link("./hard", "../outside", tarfile.LNKTYPE), b""), "outside the destination"),
])
def test_a_volume_archive_whose_members_leave_the_volume_is_refused(tmp_path, member, why):
    path = with_volume(tmp_path, "redis-data", [(tarfile.TarInfo("./dump.rdb"), b"ok"), member])
    with pytest.raises(OnevpsError) as err:
        backup.check_archive(path)
    assert "volumes/redis-data.tar.gz:" in err.value.message and why in err.value.message.lower()
    assert "nothing was restored" in err.value.message and "\n" not in err.value.message


def test_a_volume_archive_with_links_inside_the_volume_is_accepted(tmp_path):
    """Let's Encrypt keeps live/ as relative links into archive/: those are fine."""
    path = with_volume(tmp_path, "nginx-certs", [(tarfile.TarInfo("./archive/privkey1.pem"), b"key"),
                                                  (link("./live/privkey.pem", "../archive/privkey1.pem"), b"")])
    assert backup.check_archive(path)["volumes"] == ["nginx-certs"]


def test_a_real_archive_is_accepted(tmp_path):
    assert backup.check_archive(archive(tmp_path, ["redis-data", "chroma-data"]))["volumes"] == ["redis-data",
                                                                                                   "chroma-data"]


@pytest.mark.parametrize("volumes", [
    ["redis-data; touch /tmp/pwned"],        # a command smuggled into a volume name
    ["../../etc"],                            # a path
    ["other-volume"],                         # a volume onevps does not back up
    ["redis-data", "redis-data"],             # twice
])
def test_a_crafted_manifest_is_refused_in_one_line(tmp_path, volumes):
    with pytest.raises(OnevpsError) as err:
        backup.check_archive(archive(tmp_path, volumes))
    message = err.value.message
    assert "names volumes onevps does not back up" in message and "nothing was restored" in message
    assert "\n" not in message


@pytest.mark.parametrize("manifest", [{"volumes": "redis-data"}, {"volumes": [1]}, ["redis-data"], {}])
def test_a_manifest_without_a_list_of_names_is_not_a_backup(tmp_path, manifest):
    with pytest.raises(OnevpsError, match="is not an onevps backup archive"):
        backup.check_archive(archive(tmp_path, [], manifest=manifest))


def test_fab_restore_of_a_crafted_archive_is_one_line_before_any_connection(tmp_path):
    """Refused before fab even connects (the server given is unreachable): nothing runs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    crafted = archive(tmp_path, ["redis-data; touch /tmp/pwned"])
    member = tmp_path / "member"
    member.mkdir()
    cron = archive(member, ["redis-data"], extra=[(tarfile.TarInfo("../../etc/cron.d/x"), b"* * * * * root id\n")])
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "VPS_HOST": "127.0.0.1", "VPS_PORT": "1", "VPS_ENV_FILE": ".env.example"}
    for path, expected in ((crafted, "names volumes onevps does not back up"),
                           (cron, "holds '../../etc/cron.d/x' (not written by `fab backup`)")):
        res = subprocess.run([str(Path(sys.executable).with_name("fab")), "restore", str(path), "--yes"], cwd=root,
                             env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "nothing was restored" in lines[0], res.stderr
        assert "cannot reach" not in res.stderr and res.stdout == ""
