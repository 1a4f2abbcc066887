"""Bad input everywhere: every inv and fab task, fed a malformed .env, an
unknown app or tier, a bad flag, a missing Docker or an unreachable host,
answers with one clear line on stderr, exits non-zero, and changes nothing.

No Docker and no server are needed: PATH holds no docker, and the "server"
is a closed port on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
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
