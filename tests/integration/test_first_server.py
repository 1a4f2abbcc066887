"""A user's first server, for real: a fresh bare Debian 12 server (systemd,
sshd, nothing of Docker: tests/integration/bare.py) reached over SSH at its own
address, and a temporary copy of the repository as the user's machine.

    a. fab setup --ship   installs Docker from Debian (DOCKER_INSTALL=distro: Docker's
                          repository is out of reach here), copies this machine's Compose v2
                          plugin, ships the tier and upstream images (nothing can be pulled)
    b. fab deploy --all   builds every app's layer on the server and starts it
    c. every app answers 200 through the server's own nginx on <server ip>:80
    d. fab setup --ship   again: changes nothing
    e. a non-root user with sudo: fab setup adds it to the docker group; fab status works

The whole conversation (commands and outputs, secrets replaced) is written to
<pytest tmp>/first-server*/transcript.txt and printed at the end, for the README.
Only the server's own address is contacted (it is this test's container).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from onevps import config, tiers
from onevps.project import Project

from . import bare
from .conftest import LOAD_TEST_RATE, ROOT, copy_repo

pytestmark = [pytest.mark.docker, pytest.mark.bare, pytest.mark.ordered]

SERVER_NAME = "onevps-first-server"
PROJECT = f"onevps-first-{secrets.token_hex(3)}"  # a compose project of its own (on its own server anyway)
DOMAIN = "onevps.test"
SERVER_NAMESPACE = "onevps-first"  # differs from the local namespace: ship renames the tiers
VPS_PATH = "/srv/onevps"
PLUGIN = "/usr/local/lib/docker/cli-plugins/docker-compose"

# ---- The tools' wording this test relies on: all of it, in one place. ----------------------------
SAYS = {
    # a. Docker from the distribution, Compose v2 copied, images shipped
    "docker_from_distro": re.compile(r"==> installing .*DOCKER_INSTALL=distro.*docker\.io"),
    "docker_installed": re.compile(r"==> Docker: \S+ installed"),
    "compose_copied": re.compile(r"==> Compose v2: installed by copying this machine's plugin"),
    "shipped": re.compile(r"shipped (\d+) image\(s\) \(([^)]+)\) in ([\d.]+) s; (\d+) already there"),
    # d. a second run: every step says it had nothing to do
    "docker_present": re.compile(r"==> Docker: \S+ already installed"),
    "compose_present": re.compile(r"==> Compose v2: \S+ already installed"),
    "host_unchanged": re.compile(r"==> Docker host: ready, nothing changed"),
    "files_unchanged": re.compile(r"sent 0 changed file\(s\), 0 bytes"),
    "did_something": re.compile(r"==> installing|==> building|Compose v2: installed|writing /etc/docker"),
    # e. the deploy user
    "added_to_group": re.compile(r"==> deploy added to the docker group"),
}


# ------------------------------------------------------------------ helpers --

class FirstServer:
    """The user's machine (a repo copy + env) and the bare server, with a transcript."""

    def __init__(self, base: Path, server: bare.BareServer, key: Path, pubkey: str):
        self.base, self.server, self.key, self.pubkey = base, server, key, pubkey
        self.root = base / "onevps"
        self.secrets = {"REDIS_PASSWORD": secrets.token_urlsafe(24), "CHROMA_TOKEN": secrets.token_urlsafe(24)}
        self.server_env = (
            f"COMPOSE_PROJECT_NAME={PROJECT}\nBIND_ADDRESS=0.0.0.0\nHTTP_PORT=80\nHTTPS_PORT=443\n"
            f"DOMAIN={DOMAIN}\nACME_EMAIL=ops@{DOMAIN}\nIMAGE_NAMESPACE={SERVER_NAMESPACE}\nDEPLOY_WATCH=2\n"
            + "".join(f"{k}={v}\n" for k, v in {**self.secrets, **LOAD_TEST_RATE}.items())
            # The ML tier's tag covers the builder's torch settings: the server names the shipped
            # tier as built here (CI sets TORCH_INDEX_URL for its local wheel; a user's machine
            # and server usually both keep the default).
            + "".join(f"{k}={os.environ[k]}\n" for k in ("TORCH_INDEX_URL", "TORCH_CUDA") if os.environ.get(k)))
        self.env = {"VPS_HOST": server.ip, "VPS_PORT": "22", "VPS_USER": "root", "VPS_SSH_KEY": str(key),
                    "VPS_PATH": VPS_PATH, "VPS_ENV_FILE": ".env.server", "DOCKER_INSTALL": "distro"}
        self.transcript: list[str] = []
        self.file = base / "transcript.txt"

    def redact(self, text: str) -> str:
        for name, value in self.secrets.items():
            text = text.replace(value, f"<{name}>")
        return text

    def note(self, text: str) -> None:
        self.transcript.append(self.redact(text.rstrip("\n")))
        self.file.write_text("\n".join(self.transcript) + "\n")

    def fab(self, *args: str, user: str = "root", timeout: float = 1500) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env, "VPS_USER": user}
        shown = " ".join(f"{k}={env[k]}" for k in ("VPS_HOST", "VPS_USER", "DOCKER_INSTALL"))
        self.note(f"$ {shown} fab {shlex.join(args)}")
        t0 = time.monotonic()
        res = subprocess.run([str(Path(sys.executable).with_name("fab")), *args], cwd=self.root, env=env,
                             capture_output=True, text=True, timeout=timeout)
        self.note(res.stdout + (res.stderr and f"[stderr]\n{res.stderr}"))
        self.note(f"# exit {res.returncode}, {time.monotonic() - t0:.0f} s\n")
        return res

    def ssh(self, command: str, user: str = "root", timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(bare.ssh_argv(self.server, user, command, key=self.key), capture_output=True,
                              text=True, timeout=timeout)

    def on_server(self, command: str, user: str = "root") -> str:
        res = self.ssh(command, user)
        assert res.returncode == 0, f"on the server ({user}): {command}: {res.stdout}{res.stderr}"
        return res.stdout

    def get(self, app: str, path: str) -> tuple[int, bytes]:
        """HTTP to the server's own address, port 80, Host <app>.<DOMAIN>; no redirects followed."""
        req = urllib.request.Request(f"http://{self.server.ip}{path}", headers={"Host": f"{app}.{DOMAIN}"})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=30) as res:
                return res.status, res.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def say(name: str, out: str) -> re.Match:
    m = SAYS[name].search(out)
    assert m, f"the output does not say {name} ({SAYS[name].pattern!r}):\n{out[-3000:]}"
    return m


def failed(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}\n{res.stdout[-4000:]}\n[stderr]\n{res.stderr[-3000:]}"


def compose_services() -> dict:
    return YAML(typ="safe").load((ROOT / "compose" / "docker-compose.yml").read_text())["services"]


def apps() -> list[str]:
    """Services built from apps/ (the compose file's apps)."""
    return [n for n, s in compose_services().items()
            if isinstance(s.get("build"), dict) and "apps/" in str(s["build"].get("context", ""))]


def upstream_images() -> list[str]:
    """Images the always-on shared services run as they are (no build, no profile)."""
    return sorted({s["image"] for s in compose_services().values()
                   if "build" not in s and not s.get("profiles") and "$" not in str(s.get("image", "$"))})


def local_plugin() -> Path:
    for d in ("~/.docker/cli-plugins", "/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins",
              "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins"):
        p = Path(d).expanduser() / "docker-compose"
        if p.is_file():
            return p
    pytest.fail("this machine has no Compose v2 plugin file to copy (see .ci/run)", pytrace=False)


# ------------------------------------------------------------------ fixture --

@pytest.fixture(scope="module")
def first(tmp_path_factory, tier_images, settings):
    problem = bare.problem()
    if problem:
        pytest.fail(f"the first-server test needs a bare server; it never skips: {problem}", pytrace=False)
    base = tmp_path_factory.mktemp("first-server")
    copy_repo(base / "onevps")  # staged wheels come along: the ML tier's tag covers them
    key, pub = bare.make_key(base / "ssh")
    with bare.bare_server(SERVER_NAME, pub, key=key) as server:
        fs = FirstServer(base, server, key, pub)
        (fs.root / ".env.server").write_text(fs.server_env)
        # The local tier images `fab ship` sends: the session built them (onevps-test namespace);
        # the copy must name the same content tags, or ship would start a long local build.
        here = Project(fs.root)
        local = config.load(here, environ={**os.environ, **fs.env})
        for tier in tiers.TIER_ORDER:
            tiers.stage_inputs(here, local, tier)  # as fab does before naming the tags
        for tier in tiers.TIER_ORDER:
            ref = tiers.tier_image(here, local, tier)
            if subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode != 0:
                pytest.fail(f"the {tier} tier image {ref} that fab ship would send is not on this machine "
                            f"(the session built {settings.image_namespace}/{tier} with other settings)", pytrace=False)
        fs.note(f"# a bare Debian 12 server: container {server.name}, {server.ip}; "
                f"sshd answered {server.ready_seconds} s after it started")
        fs.note(f"$ cat .env.server   # the server's settings\n{fs.server_env}")
        yield fs


# ------------------------------------------------------------------- tests --

def test_a_setup_ship_installs_docker_from_debian_and_ships_the_images(first):
    pre = first.ssh("command -v docker || command -v dockerd")
    assert pre.returncode != 0, f"the bare server already has Docker: {pre.stdout}"
    # Look first: the dry run lists the install and changes nothing.
    res = first.fab("setup", "--ship", "--dry-run")
    assert res.returncode == 0, failed(res)
    assert "apt packages docker.io" in res.stdout and "[dry-run]" in res.stdout, res.stdout
    assert first.ssh("command -v docker || command -v dockerd").returncode != 0, "the dry run installed Docker"
    assert first.ssh(f"test -e {VPS_PATH} || test -e {PLUGIN}").returncode != 0, "the dry run changed files"
    res = first.fab("setup", "--ship")
    assert res.returncode == 0, failed(res)
    out = res.stdout
    say("docker_from_distro", out)
    say("docker_installed", out)
    say("compose_copied", out)
    shipped = say("shipped", out)
    assert int(shipped.group(1)) > 0 and float(shipped.group(3)) > 0, shipped.group(0)
    # The real effects on the server:
    assert first.on_server("dpkg-query -W -f '${Status}' docker.io") == "install ok installed"
    assert first.on_server("docker info --format '{{.ServerVersion}}'").startswith("20.10")
    assert first.on_server("systemctl is-enabled docker").strip() == "enabled"
    assert first.on_server(f"sha256sum {PLUGIN}").split()[0] == \
        hashlib.sha256(local_plugin().read_bytes()).hexdigest()
    assert first.on_server("docker compose version").startswith("Docker Compose version v2")
    have = set(first.on_server("docker images --format '{{.Repository}}:{{.Tag}}'").split())
    here = Project(first.root)
    local = config.load(here, environ={**os.environ, **first.env})
    want = {f"{SERVER_NAMESPACE}/{t}:{tiers.content_tag(here, local, t)}" for t in tiers.TIER_ORDER}
    want |= {f"{SERVER_NAMESPACE}/{t}:latest" for t in tiers.TIER_ORDER} | set(upstream_images())
    assert not want - have, f"missing on the server: {sorted(want - have)}; it has {sorted(have)}"
    assert first.on_server(f"stat -c %a {VPS_PATH}/.env").strip() == "600"


def test_b_deploy_all(first):
    res = first.fab("deploy", "--all")
    assert res.returncode == 0, failed(res)


def test_c_every_app_answers_through_the_servers_nginx(first):
    names = apps()
    assert len(names) >= 7, names
    lines = []
    for app in names:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = first.get(app, "/health")
            except OSError as exc:
                status, body = 0, str(exc).encode()
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert status == 200, (app, status, body[:300])
        assert f'"app":"{app}"' in body.decode().replace(" ", ""), (app, body[:300])
        lines.append(f"{app}.{DOMAIN} -> {status} {body[:120].decode(errors='replace')}")
    first.note(f"$ curl -H 'Host: <app>.{DOMAIN}' http://{first.server.ip}/health   # each app\n"
               + "\n".join(lines) + "\n")


def test_d_setup_again_changes_nothing(first):
    before = first.on_server("docker ps -q --no-trunc | sort; docker images -q --no-trunc | sort -u")
    res = first.fab("setup", "--ship")
    assert res.returncode == 0, failed(res)
    out = res.stdout
    for name in ("docker_present", "compose_present", "host_unchanged", "files_unchanged"):
        say(name, out)
    assert not SAYS["did_something"].search(out), SAYS["did_something"].search(out).group(0)
    shipped = say("shipped", out)
    assert shipped.group(1) == "0" and int(shipped.group(4)) > 0, shipped.group(0)
    assert first.on_server("docker ps -q --no-trunc | sort; docker images -q --no-trunc | sort -u") == before


def test_e_a_sudo_user_is_added_to_the_docker_group_and_can_run_fab(first):
    bare.add_sudo_user(first.server, first.pubkey, "deploy")
    assert "docker" not in first.on_server("id -nG deploy").split()
    res = first.fab("setup", user="deploy")
    assert res.returncode == 0, failed(res)
    say("added_to_group", res.stdout)
    assert "docker" in first.on_server("id -nG deploy").split()
    assert first.on_server("docker info --format '{{.ServerVersion}}'", user="deploy").strip()  # no sudo
    res = first.fab("status", user="deploy")
    assert res.returncode == 0, failed(res)
    for app in apps() + ["nginx", "redis"]:
        assert f"{PROJECT}-{app}-1" in res.stdout, (app, res.stdout)
    first.note(f"# fab status as deploy listed {res.stdout.count(PROJECT + '-')} containers of {PROJECT}")
    # The server was set up as root first: the deploy user now owns all of VPS_PATH (lock, journal,
    # files) and deploys an app like root did.
    assert first.on_server(f"find {VPS_PATH} ! -user deploy -print -quit").strip() == ""
    res = first.fab("deploy", "--app=portfolio", user="deploy")
    assert res.returncode == 0, failed(res)
    status, body = first.get("portfolio", "/health")
    assert status == 200 and b"portfolio" in body, (status, body[:300])
    print(f"\n---- transcript ({first.file}) ----\n" + first.file.read_text())


def test_f_a_sleeping_app_sleeps_through_an_engine_restart(first):
    """kb gets onevps.sleep_after (deployed like any change), falls asleep; `systemctl restart
    docker` on the server leaves it asleep (flag kept, container stopped); its next request wakes it."""
    compose = first.root / "compose" / "docker-compose.yml"
    text = compose.read_text()
    entry = text.index("\n  kb:\n")
    at = text.index("      onevps.tier: base\n", entry) + len("      onevps.tier: base\n")
    compose.write_text(text[:at] + '      onevps.sleep_after: "3s"\n' + text[at:])
    res = subprocess.run([str(Path(sys.executable).with_name("inv")), "routes"], cwd=first.root,
                         env={**os.environ, **first.env}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    res = first.fab("deploy", "--app=kb")
    assert res.returncode == 0, failed(res)
    kb, waker = f"{PROJECT}-kb-1", f"{PROJECT}-waker-1"

    def asleep() -> bool:
        state = first.ssh(f"docker inspect --format '{{{{.State.Running}}}}' {kb}; "
                          f"docker exec {waker} test -e /var/lib/onevps/asleep/kb && echo flagged").stdout.split()
        return state == ["false", "flagged"]

    deadline = time.monotonic() + 90
    while not asleep():
        assert time.monotonic() < deadline, first.ssh(f"docker logs {waker} 2>&1 | tail -20").stdout
        time.sleep(1)
    first.on_server("systemctl restart docker")
    deadline = time.monotonic() + 120
    while first.ssh(f"docker inspect --format '{{{{.State.Health.Status}}}}' {waker}").stdout.strip() != "healthy":
        assert time.monotonic() < deadline, "the waker did not come back after the engine restart"
        time.sleep(1)
    assert asleep()  # the engine restarted every other container; kb stayed asleep
    status, body = first.get("kb", "/health")
    assert status == 200 and b'"kb"' in body.replace(b" ", b""), (status, body[:300])
    log = first.ssh(f"docker logs {waker} 2>&1 | grep -E 'asleep|woke' | tail -3").stdout
    first.note(f"# kb slept through `systemctl restart docker`; its next request woke it:\n{log}")
