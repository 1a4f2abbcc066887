"""The shared test server: this machine over a real sshd on 127.0.0.1, its stack a
Compose project of its own (onevps-server). test_deploy, test_secrets and
test_sleep all run on it, so one server is set up and deployed once.

Every `fab` or `inv` task those tests run goes through `task()`, which runs the
real command line through recording_cli.py and checks that no secret value was
seen anywhere (see leakcheck.py): the server's settings carry unique secret
values made for this run, so every deploy, rollback, backup and failure of
those tests is also a leak test.

Tests run in the order test_deploy, test_secrets, test_sleep (conftest.py
groups the modules); each leaves the server serving (an app it changed is
deployed back or its change undone), so a module also runs alone:
`pytest tests/integration/test_sleep.py`.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from onevps import config, registry, tiers
from onevps.project import Project

from . import leakcheck
from .conftest import LOAD_TEST_RATE, SHELLISH_QUOTED, clear_compose_project, copy_repo, docker, http
from .leakcheck import Run, check, cli
from .sshd import SshdError, local_sshd

PROJECT = os.environ.get("ONEVPS_TEST_SERVER_PROJECT", "onevps-server")
SSH_PORT = int(os.environ.get("ONEVPS_TEST_SSH_PORT", "2223"))
DOMAIN = "onevps.test"
NETWORK_PREFIX = os.environ.get("ONEVPS_TEST_SERVER_NETWORK_PREFIX", "172.27.0")


class Server:
    """Where the server's nginx answers on 127.0.0.1 (what conftest.http takes)."""
    domain = DOMAIN
    http_port = int(os.environ.get("ONEVPS_TEST_SERVER_HTTP_PORT", "18280"))
    https_port = int(os.environ.get("ONEVPS_TEST_SERVER_HTTPS_PORT", "18643"))


SECRETS = leakcheck.SECRETS
SERVER_ENV = "".join(f"{k}={v}\n" for k, v in LOAD_TEST_RATE.items()) + f"""\
OLLAMA_MODEL={SHELLISH_QUOTED}
COMPOSE_PROJECT_NAME={PROJECT}
HTTP_PORT={Server.http_port}
HTTPS_PORT={Server.https_port}
NETWORK_PREFIX={NETWORK_PREFIX}
CHROMA_SUBNET={os.environ.get("ONEVPS_TEST_SERVER_CHROMA_SUBNET", "172.27.1.0/28")}
IMAGE_NAMESPACE={PROJECT}
REDIS_PASSWORD={SECRETS["REDIS_PASSWORD"]}
CHROMA_TOKEN={SECRETS["CHROMA_TOKEN"]}
LEAKCHECK_API_KEY={SECRETS["LEAKCHECK_API_KEY"]}
DOMAIN={DOMAIN}
ACME_EMAIL=ops@{DOMAIN}
DEPLOY_WATCH=2
WAKE_TIMEOUT=60
"""
leakcheck.configure(project=PROJECT, server_env=SERVER_ENV)

_state: dict = {}


def _sshd(workdir: Path):
    try:
        ctx = local_sshd(workdir, SSH_PORT)
        key = ctx.__enter__()
    except SshdError as exc:
        pytest.fail(f"the server tests need a local sshd; they never skip: {exc}", pytrace=False)
    pid = int((workdir / "sshd.pid").read_text().split()[0])
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        assert str(workdir / "sshd_config").encode() in fh.read(), "sshd.pid names another process"
    return ctx, {"key": key, "pid": pid}


def start(tmp_path_factory, project: Path, settings) -> dict:
    """The server, set up (`fab setup`) with every app deployed (`fab deploy --all`), both watched."""
    base = tmp_path_factory.mktemp("server")
    ctx, sshd = _sshd(base / "sshd")
    _state["sshd"] = ctx
    copy = base / "onevps"
    copy_repo(copy)
    for name in (".env.vps", ".env.local"):  # the server's settings; what the local `inv` tasks read
        (copy / name).write_text(SERVER_ENV)
        (copy / name).chmod(0o600)
    clear_compose_project(PROJECT)
    # The "server" shares this machine's engine: it gets the session's tier images under the tags
    # its own settings give them, as a server that ran `fab setup` before has them. (Building torch
    # there would need PyTorch's index, out of reach here.)
    server_settings = config.load(Project(copy), environ={}, env_file=copy / ".env.vps", warn=lambda msg: None)
    tags = tiers.tag_env(Project(copy), server_settings)
    for tier, tag in (("base", tags["BASE_TAG"]), ("ml", tags["ML_TAG"])):
        docker("tag", tiers.tier_image(project, settings, tier), f"{PROJECT}/{tier}:{tag}")
        docker("tag", tiers.tier_image(project, settings, tier), f"{PROJECT}/{tier}:latest")
    app = registry.load(copy / "compose" / "docker-compose.yml").get("portfolio")
    vps = base / "vps"
    repo = {
        "root": copy, "vps": vps, "base": base, "sshd": sshd,
        "env": {"VPS_HOST": "127.0.0.1", "VPS_PORT": str(SSH_PORT), "VPS_USER": "root",
                "VPS_SSH_KEY": str(sshd["key"]), "VPS_PATH": str(vps), "VPS_ENV_FILE": ".env.vps",
                "TORCH_WHEEL_DIR": "", "DEPLOY_TIMEOUT": "120"},
        "slot_ip": server_settings.address(app.slot_host),
        "slot_env": vps / ".onevps" / "portfolio.slot.env",
    }
    _state["repo"] = repo
    setup = task(repo, "fab", "setup", scenario="first setup")
    assert setup.returncode == 0, setup.output
    first = task(repo, "fab", "deploy", "--all", scenario="first deploy of everything")
    assert first.returncode == 0, first.output
    repo["first_runs"] = (setup, first)
    return repo


def stop() -> None:
    """The server's stack, containers and image names go; its sshd stops (only ours, by its PID)."""
    repo = _state.pop("repo", None)
    if repo is not None:
        compose = repo["vps"] / "compose" / "docker-compose.yml"
        if compose.exists():
            subprocess.run(["docker", "compose", "-p", PROJECT, "-f", str(compose), "--env-file",
                            str(repo["vps"] / ".env"), "--profile", "*", "down", "--volumes", "--remove-orphans"],
                           capture_output=True)
        clear_compose_project(PROJECT)
        # `docker system df` names an image by one of its tags: stray ones would mislead `inv disk`.
        refs = docker("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={PROJECT}/*").split()
        if refs:
            subprocess.run(["docker", "image", "rm", "--force", *refs], capture_output=True)
    ctx = _state.pop("sshd", None)
    if ctx is not None:
        ctx.__exit__(None, None, None)


def task(repo, prog: str, *args: str, scenario: str | None = None, env: dict | None = None, **kw) -> Run:
    """`fab`/`inv` ARGS on the server's copy, watched, and checked for leaks (fails the test on one)."""
    return check(repo, cli(repo, prog, *args, scenario=scenario or " ".join((prog, *args)), env=env, **kw))


def fab(repo, *args: str, env: dict | None = None, **kw) -> Run:
    return task(repo, "fab", *args, env=env, **kw)


def inv(repo, *args: str, env: dict | None = None, **kw) -> Run:
    return task(repo, "inv", *args, env=env, **kw)


def set_version(repo, app: str, version: str) -> None:
    """Change the app's code: its default APP_VERSION."""
    path = repo["root"] / "apps" / app / "main.py"
    text = path.read_text()
    new = re.sub(r'os\.getenv\("APP_VERSION", "[^"]*"\)', f'os.getenv("APP_VERSION", "{version}")', text)
    assert new != text or f'"{version}"' in text
    path.write_text(new)


def served_version(app: str = "portfolio") -> str:
    res = http(Server, app, "/health")
    assert res.status == 200, res
    return res.json()["version"]
