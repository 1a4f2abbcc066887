"""Bad input everywhere: every inv and fab task, fed a malformed .env, an
unknown app or tier, a bad flag, a missing Docker or an unreachable host,
answers with one clear line on stderr, exits non-zero, and changes nothing.

No Docker and no server are needed: PATH holds no docker, and the "server"
is a closed port on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WATCHED = ("compose", "nginx", "apps", "templates", "dockerfiles/base/Dockerfile", "dockerfiles/ml/Dockerfile")

INV_TASKS = [
    ["build-base"], ["build-ml"], ["build"], ["up"], ["down"], ["status"], ["logs"], ["restart", "--app", "kb"],
    ["routes"], ["check"], ["settings"], ["new-app", "blog"], ["remove-app", "kb", "--yes"],
    ["swarm-check"], ["swarm-render"], ["swarm-deploy"], ["swarm-status"],
]
FAB_TASKS = [
    ["setup"], ["deploy", "--app=kb"], ["deploy", "--all"], ["rollback", "--app=kb"], ["history"], ["status"],
    ["logs", "--app=kb"], ["unlock"], ["backup"], ["disk"], ["prune"], ["swarm-deploy"], ["swarm-status"],
    ["setup", "--ship"], ["ship", "--upstream"], ["ship", "--tiers", "--dry-run"],
]


def snapshot() -> dict[str, str]:
    out = {}
    for rel in WATCHED:
        path = ROOT / rel
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts)
        for f in files:
            out[str(f.relative_to(ROOT))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def before():
    return snapshot()


@pytest.fixture
def unchanged(before):
    yield
    assert snapshot() == before, "a refused command changed a file"


def run(tool: str, args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    nodocker = tmp_path / "bin"
    nodocker.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VPS_", "ONEVPS_", "REDIS_", "HTTP", "DOMAIN"))}
    full = {**base, "PATH": str(nodocker),  # nothing on PATH: no docker (commands run via /bin/bash)
            "ONEVPS_ENV_FILE": str(tmp_path / "absent.env"), **env}
    exe = [sys.executable, "-m", "invoke"] if tool == "inv" else [str(Path(sys.executable).with_name("fab"))]
    return subprocess.run([*exe, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def one_line(res: subprocess.CompletedProcess, starts: str) -> str:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert lines[0].startswith(starts), lines[0]
    return lines[0]


SERVER_SECRETS = "REDIS_PASSWORD=a-good-server-secret-0123456789\nCHROMA_TOKEN=a-good-server-token-0123456789\n"
LOCAL_SECRETS = {"REDIS_PASSWORD": "a-good-local-secret-0123456789", "CHROMA_TOKEN": "a-good-local-token-0123456789"}


def server_env(tmp_path: Path) -> dict[str, str]:
    env_file = tmp_path / "server.env"
    env_file.write_text(SERVER_SECRETS)
    return {"VPS_HOST": "127.0.0.1", "VPS_PORT": "1", "VPS_ENV_FILE": str(env_file)}


@pytest.mark.parametrize("tool, args", [("inv", a) for a in INV_TASKS] + [("fab", a) for a in FAB_TASKS],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_malformed_env_is_one_line_naming_the_key(tool, args, tmp_path, unchanged):
    bad = tmp_path / "bad.env"
    bad.write_text("# settings\nHTTP_PORT=eighty\n")
    line = one_line(run(tool, args, {"ONEVPS_ENV_FILE": str(bad)}, tmp_path), "error: HTTP_PORT='eighty'")
    assert "bad.env line 2" in line


@pytest.mark.parametrize("tool, args", [
    ("inv", ["build", "--app", "nope"]), ("inv", ["restart", "--app", "nope"]), ("inv", ["logs", "--app", "nope"]),
    ("inv", ["up", "--app", "nope"]), ("inv", ["remove-app", "nope", "--yes"]),
    ("fab", ["deploy", "--app=nope"]), ("fab", ["rollback", "--app=nope"]), ("fab", ["logs", "--app=nope"]),
    ("fab", ["history", "--app=nope"]), ("inv", ["swarm-deploy", "--app", "nope"]), ("fab", ["ship", "--app=nope"]),
    ("fab", ["swarm-deploy", "--app=nope"]),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_unknown_app_lists_the_known_ones(tool, args, tmp_path, unchanged):
    env = {**LOCAL_SECRETS, **server_env(tmp_path)}
    line = one_line(run(tool, args, env, tmp_path), "error: unknown app 'nope'")
    assert "known apps: portfolio, chatbot, kb" in line


@pytest.mark.parametrize("tool, args", [("inv", ["new-app", "blog", "--tier", "gpu"]),
                                        ("fab", ["deploy", "--tier=gpu"])],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_unknown_tier(tool, args, tmp_path, unchanged):
    one_line(run(tool, args, server_env(tmp_path), tmp_path), "error: unknown tier 'gpu'")


@pytest.mark.parametrize("tool, args", [("inv", ["up", "--bogus"]), ("inv", ["new-app"]),
                                        ("fab", ["deploy", "--bogus"]), ("fab", ["restore"])],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_flags(tool, args, tmp_path, unchanged):
    res = run(tool, args, {}, tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.parametrize("args", [["build-base"], ["build-ml"], ["build"], ["down"], ["status"], ["logs"],
                                  ["restart", "--app", "kb"], ["swarm-status"]], ids=" ".join)
def test_missing_docker(args, tmp_path, unchanged):
    one_line(run("inv", args, {}, tmp_path), "error: the docker command is not installed")


def test_up_without_docker_after_the_secret_check(tmp_path, unchanged):
    one_line(run("inv", ["up"], LOCAL_SECRETS, tmp_path),
             "error: the docker command is not installed")


@pytest.mark.parametrize("args", FAB_TASKS, ids=" ".join)
def test_unreachable_host(args, tmp_path, unchanged):
    line = one_line(run("fab", args, server_env(tmp_path), tmp_path), "error: cannot reach root@127.0.0.1:1")
    assert "check VPS_HOST/VPS_PORT" in line


def test_no_server_configured(tmp_path, unchanged):
    env_file = tmp_path / "server.env"
    env_file.write_text(SERVER_SECRETS)
    one_line(run("fab", ["status"], {"VPS_ENV_FILE": str(env_file)}, tmp_path), "error: no server given")


def test_missing_server_env_file(tmp_path, unchanged):
    one_line(run("fab", ["status"], {"VPS_HOST": "127.0.0.1", "VPS_ENV_FILE": str(tmp_path / "nope.env")}, tmp_path),
             "error: VPS_ENV_FILE")


REDIS_PLACEHOLDER = ("REDIS_PASSWORD=change-me\nCHROMA_TOKEN=a-good-server-token-0123456789\n",
                     "error: REDIS_PASSWORD in server.env is still the .env.example placeholder")
CHROMA_MISSING = ("REDIS_PASSWORD=a-good-server-secret-0123456789\n", "error: CHROMA_TOKEN is not set in server.env")


@pytest.mark.parametrize("args, case", [
    (["setup"], REDIS_PLACEHOLDER), (["deploy", "--app=kb"], REDIS_PLACEHOLDER),
    (["rollback", "--app=kb"], REDIS_PLACEHOLDER), (["swarm-deploy"], REDIS_PLACEHOLDER),
    (["setup"], CHROMA_MISSING), (["deploy", "--app=kb"], CHROMA_MISSING),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v[1].split()[1])
def test_a_bad_server_secret_is_refused_before_connecting(args, case, tmp_path, unchanged):
    """(server .env text, the one line expected) for each task that starts containers on the server."""
    env_text, expected = case
    env_file = tmp_path / "server.env"
    env_file.write_text(env_text)
    line = one_line(run("fab", args, {"VPS_HOST": "127.0.0.1", "VPS_PORT": "1", "VPS_ENV_FILE": str(env_file)},
                        tmp_path), expected)
    assert "token_urlsafe" in line


@pytest.mark.parametrize("tool, args, starts", [
    ("inv", ["logs", "--tail", "abc"], "error: --tail=abc is not a whole number"),
    ("inv", ["prune", "--keep", "0"], "error: --keep=0 is not a whole number of at least 1"),
    ("inv", ["prune", "--cache-limit", "lots"], "error: --cache-limit=lots is not a whole number"),
    ("inv", ["disk", "--budget", "0"], "error: --budget=0 is not a positive number of MB"),
    ("fab", ["logs", "--app=kb", "--tail=x"], "error: --tail=x is not a whole number"),
    ("fab", ["disk", "--budget=nope"], "error: --budget=nope is not a positive number of MB"),
    ("fab", ["setup", "--swap=lots"], "error: --swap"),
    ("fab", ["ship"], "error: nothing to ship"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_a_bad_number_flag_is_one_line(tool, args, starts, tmp_path, unchanged):
    one_line(run(tool, args, server_env(tmp_path), tmp_path), starts)


# ------------------------------------ files that cannot be read (issue 12) --
#
# The compose file and .env as a folder, not UTF-8, behind a file where a folder
# should be, a symlink loop, or without read permission: every task that reads
# them answers with one line naming the file. The compose file sits at a fixed
# place in the repository, so those tests run on a copy (compose/, nginx/, apps/,
# templates/, tasks.py, onevps/, .env.example) in a folder every user may enter.
#
# The tests run as root, and root reads a file of mode 000. The "no permission"
# cases therefore run the task as user nobody (setpriv), and skip when that is
# not possible; the unit tests provoke the PermissionError branch directly.

NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]
COPIED = ("compose", "nginx", "apps", "templates", "onevps")
UNREADABLE_TASKS = [["check"], ["new-app", "blog"], ["remove-app", "kb", "--yes"], ["swarm-render"]]


def _tree(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


def _as_nobody_prefix(tmp_path: Path, cwd: Path) -> list[str]:
    """The argv prefix that runs a command as nobody, or [] when already not root; skips when impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: a mode-000 file is readable by root")
    probe = subprocess.run([setpriv, *NOBODY, sys.executable, "-c", "import invoke, onevps"], cwd=cwd,
                           env={**os.environ, "HOME": str(cwd)}, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot run python as user nobody here: {probe.stderr.strip()[-200:]}")
    return [setpriv, *NOBODY]


@pytest.fixture
def repo_copy(tmp_path):
    """A copy of the repository in a folder anyone may enter (for the runs as nobody)."""
    copy = Path(tempfile.mkdtemp(prefix="onevps-copy-")).resolve()
    try:
        for sub in COPIED:
            shutil.copytree(ROOT / sub, copy / sub, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        for name in ("tasks.py", ".env.example"):
            shutil.copy2(ROOT / name, copy / name)
        (copy / "empty.env").touch()
        for p in [copy, *copy.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        probe = subprocess.run([sys.executable, "-c", "import onevps.config as c; print(c.REPO_ROOT)"],
                               cwd=copy, env={**os.environ, "PYTHONPATH": str(copy)},
                               capture_output=True, text=True, timeout=60)
        if Path(probe.stdout.strip()) != copy:  # never let these tests touch the real repository
            pytest.skip(f"the copy's onevps package is not the one imported ({probe.stdout.strip()})")
        yield copy
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def run_in(copy: Path, args: list[str], tmp_path: Path, env: dict[str, str] | None = None,
           prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """`inv ARGS` in the copy: no docker on PATH; settings from the copy's empty.env unless env says otherwise."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VPS_", "ONEVPS_", "REDIS_", "HTTP", "DOMAIN"))}
    full = {**base, "PATH": str(copy / "no-bin"), "PYTHONPATH": str(copy), "HOME": str(copy),
            "ONEVPS_ENV_FILE": str(copy / "empty.env"), **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run([*(prefix or []), sys.executable, "-m", "invoke", *args], cwd=copy, env=full,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _break_compose(copy: Path, how: str) -> str:
    """Make the copy's compose file unreadable in one way; return the line's expected start (after the path)."""
    path = copy / "compose" / "docker-compose.yml"
    if how == "folder":
        path.unlink()
        path.mkdir()
        return " is a folder, not a file (hint: restore it with `git checkout -- compose/`)"
    if how == "not-utf8":
        path.write_bytes(path.read_bytes().replace(b"# ", b"# caf\xe9 ", 1))
        return " is not UTF-8 text (byte "
    if how == "parent-is-a-file":
        shutil.rmtree(copy / "compose")
        (copy / "compose").write_text("not a folder\n")
        return ": Not a directory (hint: check the file's permissions)"
    if how == "symlink-loop":
        path.unlink()
        path.symlink_to(path.name)
        return ": Too many levels of symbolic links (hint: check the file's permissions)"
    assert how == "no-permission"
    os.chmod(path, 0o000)
    return ": Permission denied (hint: check the file's permissions)"


@pytest.mark.parametrize("how", ["folder", "not-utf8", "parent-is-a-file", "symlink-loop", "no-permission"])
def test_an_unreadable_compose_file_is_one_line_naming_it(repo_copy, tmp_path, how):
    prefix = _as_nobody_prefix(tmp_path, repo_copy) if how == "no-permission" else []
    expected = _break_compose(repo_copy, how)
    path = repo_copy / "compose" / "docker-compose.yml"
    starts = f"error: {path} is" if how in ("folder", "not-utf8") else f"error: cannot read {path}"
    before = _tree(repo_copy)
    for args in UNREADABLE_TASKS:
        line = one_line(run_in(repo_copy, args, tmp_path, prefix=prefix), starts)
        assert expected in line, (args, line)
    assert _tree(repo_copy) == before


def test_a_compose_file_with_a_bom_and_crlf_is_read(repo_copy, tmp_path):
    path = repo_copy / "compose" / "docker-compose.yml"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    res = run_in(repo_copy, ["check"], tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("ok: 7 apps"), res


ENV_TASKS = [("inv", ["check"]), ("inv", ["new-app", "blog"]), ("inv", ["up"]), ("fab", ["status"])]


@pytest.mark.parametrize("how", ["folder", "not-utf8"])
def test_an_unreadable_env_file_is_one_line_naming_it(tmp_path, unchanged, how):
    env_file = tmp_path / "my.env"
    if how == "folder":
        env_file.mkdir()
        expected = f"error: {env_file} is a folder, not a file (hint: make it a file of KEY=value lines"
    else:
        env_file.write_bytes(b"# r\xe9glages\nHTTP_PORT=8080\n")
        expected = f"error: {env_file} is not UTF-8 text (byte 3) (hint: save it as UTF-8)"
    for tool, args in ENV_TASKS:
        one_line(run(tool, args, {"ONEVPS_ENV_FILE": str(env_file)}, tmp_path), expected)


def test_an_unreadable_server_env_file_is_one_line_naming_it(tmp_path, unchanged):
    env_file = tmp_path / "server.env"
    env_file.write_bytes(SERVER_SECRETS.encode() + b"DOMAIN=caf\xe9.example\n")
    for args in (["setup"], ["deploy", "--app=kb"]):
        one_line(run("fab", args, {"VPS_HOST": "127.0.0.1", "VPS_PORT": "1", "VPS_ENV_FILE": str(env_file)},
                     tmp_path), f"error: {env_file} is not UTF-8 text")


def test_an_env_file_without_read_permission_is_one_line(repo_copy, tmp_path):
    prefix = _as_nobody_prefix(tmp_path, repo_copy)
    env_file = repo_copy / "private.env"
    env_file.write_text("HTTP_PORT=8080\n")
    os.chmod(env_file, 0o000)
    for args in (["check"], ["new-app", "blog"]):
        line = one_line(run_in(repo_copy, args, tmp_path, {"ONEVPS_ENV_FILE": str(env_file)}, prefix),
                        f"error: cannot read {env_file}: Permission denied")
        assert line.endswith("(hint: check the file's permissions)")


def test_an_env_file_with_a_bom_reads_its_first_key(tmp_path, unchanged):
    """A BOM (Windows editors) is skipped, as docker compose does: the first key is HTTP_PORT, not '\\ufeffHTTP_PORT'."""
    env_file = tmp_path / "bom.env"
    env_file.write_bytes(b"\xef\xbb\xbfHTTP_PORT=eighty\r\n")
    line = one_line(run("inv", ["check"], {"ONEVPS_ENV_FILE": str(env_file)}, tmp_path), "error: HTTP_PORT='eighty'")
    assert "bom.env line 1" in line


def test_inv_up_first_run_env_example_folder_is_one_line(repo_copy, tmp_path):
    shutil.rmtree(repo_copy / ".env.example", ignore_errors=True)
    (repo_copy / ".env.example").unlink(missing_ok=True)
    (repo_copy / ".env.example").mkdir()
    res = run_in(repo_copy, ["up"], tmp_path, {"ONEVPS_ENV_FILE": None})
    one_line(res, f"error: {repo_copy / '.env.example'} is a folder, not a file")
    assert not (repo_copy / ".env").exists()


def test_inv_up_first_run_writes_a_private_env(repo_copy, tmp_path):
    """The first `inv up` writes .env with mode 600 (then stops: no docker here)."""
    res = run_in(repo_copy, ["up"], tmp_path, {"ONEVPS_ENV_FILE": None})
    assert "first run: wrote .env" in res.stdout, res
    one_line(res, "error: ")  # the copy has no docker and no dockerfiles/
    env_file = repo_copy / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "change-me" not in env_file.read_text()
    assert not [p.name for p in repo_copy.iterdir() if p.name.startswith(".env.") and p.name != ".env.example"]
