"""`fab restore` trusts no archive: the manifest's volume names go into commands on
the server, so only the volumes onevps backs up are accepted (no Docker, no server)."""

import io
import json
import tarfile

import pytest

from onevps import backup
from onevps.errors import OnevpsError


def archive(tmp_path, volumes, files=None, manifest=None):
    path = tmp_path / "onevps-backup.tar"
    with tarfile.open(path, "w") as tar:
        entries = {"./env": b"REDIS_PASSWORD=x\n",
                   "./manifest.json": json.dumps(manifest if manifest is not None else
                                                 {"project": "p", "volumes": volumes, "time": "t"}).encode()}
        for name in files if files is not None else volumes:
            entries[f"./volumes/{name}.tar.gz"] = b"data"
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


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
