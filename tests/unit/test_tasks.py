"""The thin task layer: help on every task and flag, one-line errors."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Collection, MockContext, Result

import tasks
from onevps import runner as runner_mod
from onevps.errors import CommandFailed, OnevpsError
from onevps.runner import Runner

ROOT = Path(__file__).resolve().parents[2]
INV = [sys.executable, "-m", "invoke"]


def run_inv(*args, env=None):
    return subprocess.run([*INV, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def collection_tasks():
    return Collection.from_module(tasks).tasks


def test_every_task_has_a_docstring_and_every_flag_has_help():
    for name, t in collection_tasks().items():
        assert (t.body.__doc__ or "").strip(), f"{name} has no help"
        params = [p for p in inspect.signature(t.body).parameters if p != "c"]
        for param in params:
            assert param.replace("_", "-") in t.help or param in t.help, f"{name} --{param} has no help"


def test_list_shows_every_task_with_help():
    res = run_inv("--list")
    assert res.returncode == 0
    for name in ["build-base", "build-ml", "build", "up", "down", "status", "logs", "restart", "routes", "check"]:
        line = next((l for l in res.stdout.splitlines() if l.strip().startswith(name + " ")), None)
        assert line and len(line.split()) > 1, f"{name} missing from --list"


def test_user_mistake_is_one_line_without_traceback():
    res = run_inv("restart")
    assert res.returncode == 1
    assert res.stderr.strip() == "error: no app given (hint: use `inv restart --app NAME`)"
    assert "Traceback" not in res.stderr + res.stdout


def test_broken_env_is_one_line_naming_the_key(tmp_path):
    env_file = tmp_path / "broken.env"
    env_file.write_text("HTTP_PORT=eighty\n")
    res = run_inv("status", env={"ONEVPS_ENV_FILE": str(env_file)})
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: HTTP_PORT='eighty' (broken.env line 1) must be a port number 1-65535 "
        "(hint: fix HTTP_PORT; see .env.example)"]


def test_unknown_app_lists_the_known_ones(tmp_path):
    res = run_inv("build", "--app", "nope", env={"ONEVPS_ENV_FILE": str(tmp_path / "none.env"),
                                                   "PATH": "/nonexistent"})
    assert res.returncode == 1
    assert "unknown app 'nope'" in res.stderr and "portfolio" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_docker_is_one_clear_line(tmp_path):
    res = run_inv("status", env={"PATH": str(tmp_path), "ONEVPS_ENV_FILE": str(tmp_path / "none.env")})
    assert res.returncode == 1
    assert res.stderr.strip().startswith("error: the docker command is not installed")


def test_check_passes_on_the_repository():
    res = run_inv("check", env={"ONEVPS_ENV_FILE": "/nonexistent.env"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok: 7 apps (4 base, 3 ml)")


# --- the runner, with invoke's MockContext (no process is started) ---------

def test_runner_quotes_once_and_passes_env():
    ctx = MockContext(run={"docker compose ps --format 'a b'": Result("out", exited=0)})
    r = Runner(ctx, env={"X": "1"})
    res = r.run(["docker", "compose", "ps", "--format", "a b"], "list")
    assert res.ok and res.stdout == "out"
    assert ctx.run.call_args.kwargs["env"] == {"X": "1"}


def test_runner_failure_names_the_step_and_shows_output():
    ctx = MockContext(run=Result(stderr="no such service: kb\n", exited=1))
    with pytest.raises(CommandFailed) as err:
        Runner(ctx).run(["docker", "compose", "up", "kb"], "start kb", hint="check the name")
    assert err.value.message.splitlines()[0] == "error: start kb failed (exit 1): docker compose up kb"
    assert "no such service: kb" in err.value.message
    assert err.value.message.endswith("(hint: check the name)")


def test_dry_run_prints_and_does_not_run(capsys):
    ctx = MockContext()  # any run would raise NotImplementedError
    res = Runner(ctx, dry_run=True).run(["docker", "compose", "down"], "stop")
    assert res.ok
    assert capsys.readouterr().out == "[dry-run] docker compose down\n"


def test_require_docker_reports_a_stopped_engine(monkeypatch):
    monkeypatch.setattr(runner_mod.shutil, "which", lambda _: "/usr/bin/docker")
    ctx = MockContext(run={"docker info --format '{{.ServerVersion}}'": Result(exited=1)})
    with pytest.raises(OnevpsError, match="Docker engine is not reachable"):
        runner_mod.require_docker(Runner(ctx))


def test_up_refuses_a_missing_or_placeholder_secret(tmp_path):
    token = {"CHROMA_TOKEN": "a-good-token-0123456789"}
    for env, expected in (({"REDIS_PASSWORD": "", **token}, "error: REDIS_PASSWORD is not set in .env"),
                          ({"REDIS_PASSWORD": "change-me", **token},
                           "error: REDIS_PASSWORD in .env is still the .env.example placeholder"),
                          ({"REDIS_PASSWORD": "a-good-secret-0123456789", "CHROMA_TOKEN": "change-me"},
                           "error: CHROMA_TOKEN in .env is still the .env.example placeholder")):
        res = run_inv("up", env={"ONEVPS_ENV_FILE": str(tmp_path / "none.env"), **env})
        assert res.returncode == 1
        assert res.stderr.startswith(expected) and "token_urlsafe" in res.stderr
        assert "Traceback" not in res.stderr


def test_settings_never_prints_a_secret(tmp_path):
    res = run_inv("settings", env={"ONEVPS_ENV_FILE": str(tmp_path / "none.env"),
                                   "REDIS_PASSWORD": "s3cret-value-0123456789",
                                   "CHROMA_TOKEN": "t0ken-value-0123456789"})
    assert res.returncode == 0
    assert "s3cret-value" not in res.stdout and "REDIS_PASSWORD=(set, hidden)" in res.stdout
    assert "t0ken-value" not in res.stdout and "CHROMA_TOKEN=(set, hidden)" in res.stdout
