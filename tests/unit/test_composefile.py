import os
import stat
import tempfile
from pathlib import Path

import pytest

from onevps import composefile, config
from onevps.errors import ComposeFileError, ConfigError

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


def test_a_compose_file_that_cannot_be_read_is_one_line(tmp_path):
    """Other OSErrors than "missing" and "a folder": a parent that is a file (NotADirectoryError),
    a symlink loop (ELOOP). Each is one line naming the file. (No permission: see test_bad_input,
    which runs the task as an unprivileged user; root reads any file.)"""
    parent_is_a_file = tmp_path / "compose"
    parent_is_a_file.write_text("not a folder\n")
    loop = tmp_path / "loop.yml"
    loop.symlink_to(loop.name)
    for path, reason in ((parent_is_a_file / "docker-compose.yml", "Not a directory"),
                         (loop, "Too many levels of symbolic links")):
        with pytest.raises(ComposeFileError) as err:
            composefile.load(path)
        assert err.value.message.startswith(f"error: cannot read {path}: {reason}")
        assert "\n" not in err.value.message


def test_a_permission_error_is_one_line(tmp_path, monkeypatch):
    """The PermissionError branch, provoked directly (tests run as root, which reads a 000 file)."""
    path = tmp_path / "docker-compose.yml"
    path.write_text("services: {}\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(composefile, "open", denied, raising=False)  # the module's open(), not builtins
    with pytest.raises(ComposeFileError) as err:
        composefile.load(path)
    assert err.value.message == (f"error: cannot read {path}: Permission denied "
                                 "(hint: check the file's permissions)")


LF_TEXT = "# head\nservices:\n  a:\n    image: x  # inline\n\nvolumes:\n  data:\n"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("bom", [False, True], ids=["", "bom"])
@pytest.mark.parametrize("final_newline", [True, False], ids=["", "no-final-newline"])
def test_style_is_detected_and_reapplied_exactly(tmp_path, newline, bom, final_newline):
    """load() reads any style as the LF text; Style.of(file).apply(LF text) gives back the exact bytes."""
    text = LF_TEXT if final_newline else LF_TEXT.rstrip("\n")
    stored = ("\ufeff" if bom else "") + text.replace("\n", newline)
    path = tmp_path / "docker-compose.yml"
    path.write_bytes(stored.encode("utf-8"))
    assert composefile.read_exact(path) == stored
    data = composefile.load(path)
    assert composefile.dumps(data) == LF_TEXT  # what gets edited: the LF round trip
    style = composefile.Style.of(stored)
    assert style == composefile.Style(newline=newline, bom=bom, final_newline=final_newline)
    assert style.apply(composefile.dumps(data)) == stored
    composefile.atomic_write(path, style.apply(composefile.dumps(data)))
    assert path.read_bytes() == stored.encode("utf-8")  # atomic_write translates nothing


def test_style_of_lf_text_changes_nothing():
    assert composefile.Style.of(LF_TEXT) == composefile.Style()
    assert composefile.Style().apply(LF_TEXT) == LF_TEXT


class _ModeWatch:
    """Records the mode (and size) of atomic_write's temp file at each step: right after it
    is created (still empty), after the text is written (fsync) and when it is renamed."""

    def __init__(self, monkeypatch):
        self.seen: list[tuple[str, int, int]] = []
        real_mkstemp, real_fsync, real_replace = tempfile.mkstemp, os.fsync, os.replace

        def mkstemp(*args, **kwargs):
            fd, name = real_mkstemp(*args, **kwargs)
            self._record("created", os.fstat(fd))
            return fd, name

        def fsync(fd):
            self._record("written", os.fstat(fd))
            return real_fsync(fd)

        def replace(src, dst):
            self._record("renamed", os.stat(src))
            return real_replace(src, dst)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def _record(self, step, st):
        self.seen.append((step, stat.S_IMODE(st.st_mode), st.st_size))


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_atomic_write_secret_is_600_at_every_step(tmp_path, monkeypatch, umask):
    """mode=0o600: the temp file is 600 before its first byte, while it holds the text and
    when it is renamed into place, whatever the umask; the final file is 600."""
    watch = _ModeWatch(monkeypatch)
    path = tmp_path / ".env"
    old = os.umask(umask)
    try:
        composefile.atomic_write(path, "REDIS_PASSWORD=x\n", mode=0o600)
    finally:
        os.umask(old)
    steps = [(step, mode) for step, mode, _ in watch.seen]
    assert steps == [("created", 0o600), ("written", 0o600), ("renamed", 0o600)]
    assert watch.seen[0][2] == 0 and watch.seen[1][2] > 0  # 600 before the first byte
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_atomic_write_without_a_mode_keeps_the_usual_modes(tmp_path, monkeypatch):
    """A file without mode=: a new one ends 644, an existing one keeps its mode; the temp
    file is still 600 while the text is written (the mode is set just before the rename)."""
    watch = _ModeWatch(monkeypatch)
    path = tmp_path / "apps.conf.template"
    composefile.atomic_write(path, "upstream x {}\n")
    assert [(s, m) for s, m, _ in watch.seen] == [("created", 0o600), ("written", 0o600), ("renamed", 0o644)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.chmod(path, 0o664)
    composefile.atomic_write(path, "upstream y {}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


def test_create_env_file_is_600_from_its_first_byte(tmp_path, monkeypatch):
    """The local .env (first run of `inv up`): never readable by others, not even its temp file."""
    (tmp_path / ".env.example").write_text("# settings\nREDIS_PASSWORD=change-me\nCHROMA_TOKEN=change-me\n")
    watch = _ModeWatch(monkeypatch)
    old = os.umask(0)  # the most permissive umask: the mode must not come from it
    try:
        made = config.create_env_file(tmp_path)
    finally:
        os.umask(old)
    assert made == tmp_path / ".env"
    assert [(s, m) for s, m, _ in watch.seen] == [("created", 0o600), ("written", 0o600), ("renamed", 0o600)]
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    assert "change-me" not in made.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env", ".env.example"]  # no temp file left


def test_create_env_file_with_a_bad_example_is_one_line(tmp_path):
    (tmp_path / ".env.example").mkdir()
    with pytest.raises(ConfigError) as err:
        config.create_env_file(tmp_path)
    assert err.value.message.startswith(f"error: {tmp_path / '.env.example'} is a folder, not a file")
    (tmp_path / ".env.example").rmdir()
    (tmp_path / ".env.example").write_bytes(b"DOMAIN=caf\xe9\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 10\)"):
        config.create_env_file(tmp_path)
    assert not (tmp_path / ".env").exists()
