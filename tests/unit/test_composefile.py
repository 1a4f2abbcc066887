import os
import stat
from pathlib import Path

import pytest

from onevps import composefile
from onevps.errors import ComposeFileError

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = sorted((ROOT / "compose").glob("*.yml"))


def test_there_are_compose_files():
    assert COMPOSE_FILES


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_golden_round_trip_is_byte_identical(path):
    text = path.read_text()
    assert composefile.dumps(composefile.loads(text)) == text


def test_round_trip_keeps_comments_anchors_and_quotes():
    text = (
        "# head comment\n"
        "x-app: &app\n"
        "  restart: unless-stopped  # inline\n"
        "\n"
        "services:\n"
        "  a:\n"
        "    <<: *app\n"
        "    ports:\n"
        "      - \"127.0.0.1:80:80\"\n"
        "    command: ['a', \"b\"]\n"
    )
    data = composefile.loads(text)
    assert data["services"]["a"]["restart"] == "unless-stopped"  # merged from the anchor
    assert composefile.dumps(data) == text


def test_syntax_error_names_file_and_line():
    with pytest.raises(ComposeFileError) as err:
        composefile.loads("services:\n  a:\n    image: x\n   bad: [\n", name="compose/x.yml")
    assert "compose/x.yml line" in err.value.message
    assert "\n" not in err.value.message


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ComposeFileError, match="does not exist"):
        composefile.load(tmp_path / "nope.yml")


def test_atomic_write_replaces_and_keeps_mode(tmp_path):
    path = tmp_path / "f.yml"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    composefile.atomic_write(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f.yml"]  # no temp file left


def test_atomic_write_failure_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.yml"
    path.write_text("old\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        composefile.atomic_write(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.yml"]


def test_atomic_write_with_a_mode_is_private_from_its_first_byte(tmp_path, monkeypatch):
    """A file holding secrets (mode=0o600) is never readable by others, not even for a moment:
    the temp file is 600 when the text is written, and the final file is 600 when it appears."""
    path = tmp_path / ".env"
    seen = []
    real_replace = os.replace

    def watch(src, dst):
        seen.append(stat.S_IMODE(os.stat(src).st_mode))  # the mode the file has when it appears
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watch)
    composefile.atomic_write(path, "REDIS_PASSWORD=x\n", mode=0o600)
    assert seen == [0o600] and stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)  # an existing file that others could read becomes private too
    composefile.atomic_write(path, "REDIS_PASSWORD=y\n", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_compose_file_that_is_a_folder_or_not_utf8_is_one_line(tmp_path):
    folder = tmp_path / "docker-compose.yml"
    folder.mkdir()
    with pytest.raises(ComposeFileError, match=r"is a folder, not a file"):
        composefile.load(folder)
    latin = tmp_path / "latin.yml"
    latin.write_bytes(b"services:\n  caf\xe9: {}\n")
    with pytest.raises(ComposeFileError, match=r"is not UTF-8 text \(byte 15\)"):
        composefile.load(latin)
