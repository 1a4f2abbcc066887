"""Issue #3's scale test: grow a copy of the repository to 15 base + 6 ML apps
with `inv new-app`, bring all 26 containers up on this machine, and reach
every app through nginx on 127.0.0.1.

Runs in a temporary copy (its own Compose project, ports and subnet), so the
repository and the other test stack are untouched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from onevps import config, registry
from onevps.project import Project
from onevps.registry import SHARED, SHARED_SERVICES

from .conftest import copy_repo, docker, http

pytestmark = [pytest.mark.docker, pytest.mark.stack]

SCALE_ENV = {
    "COMPOSE_PROJECT_NAME": "onevps-scale",
    "HTTP_PORT": "18180",
    "HTTPS_PORT": "18543",
    "NETWORK_PREFIX": "172.28.0",
    "CHROMA_SUBNET": "172.28.1.0/28",
    "TORCH_WHEEL_DIR": "",  # tiers are already built by the session; nothing to stage
}


def inv_in(repo, *args, timeout=1800):
    env = {**os.environ, **SCALE_ENV}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def scale_repo(tmp_path_factory, built_images):
    repo = tmp_path_factory.mktemp("scale") / "onevps"
    copy_repo(repo)
    yield repo
    inv_in(repo, "down", "--volumes")


def memory_mib(settings_project: str) -> dict[str, float]:
    out = docker("stats", "--no-stream", "--format", "{{json .}}")
    usage = {}
    for line in out.splitlines():
        item = json.loads(line)
        if not item["Name"].startswith(settings_project + "-"):
            continue
        used = item["MemUsage"].split("/")[0].strip()
        match = re.fullmatch(r"([0-9.]+)\s*(B|KiB|MiB|GiB)", used)
        assert match, f"docker stats: no memory figure for {item['Name']}: {line}"
        number, unit = float(match.group(1)), match.group(2)
        usage[item["Name"]] = number * {"B": 1 / 1048576, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]
    return usage


def test_new_app_grows_to_21_apps_and_all_26_containers_serve(scale_repo, settings):
    for i in range(11):
        res = inv_in(scale_repo, "new-app", f"site{i:02d}")
        assert res.returncode == 0, res.stderr
    for i in range(3):
        res = inv_in(scale_repo, "new-app", f"model{i}", "--tier", "ml")
        assert res.returncode == 0, res.stderr
    res = inv_in(scale_repo, "check")
    assert res.returncode == 0 and res.stdout.startswith("ok: 21 apps (15 base, 6 ml)"), res.stdout + res.stderr

    s = config.load(Project(scale_repo), environ={**os.environ, **SCALE_ENV})
    reg = registry.load(Project(scale_repo).compose_file)
    assert len(reg.by_tier("base")) == 15 and len(reg.by_tier("ml")) == 6
    assert len(set(reg.hosts.values())) == len(reg.hosts)  # every static address is unique
    assert len([n for n in reg.hosts if n in reg.names() or n in SHARED]) == 26  # (certbot only runs on demand)

    res = inv_in(scale_repo, "up")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    ids = docker("ps", "--quiet", "--filter", f"label=com.docker.compose.project={s.project_name}").split()
    assert len(ids) == 21 + len(SHARED_SERVICES)

    for app in reg.apps:
        res = http(s, app.name, "/health")
        assert res.status == 200, (app.name, res)
        assert res.json()["app"] == app.name and res.json()["tier"] == app.tier

    usage = memory_mib(s.project_name)
    assert len(usage) == 21 + len(SHARED_SERVICES)
    report = {"containers": len(usage), "total_mib": round(sum(usage.values()), 1),
              "per_container_mib": {k: round(v, 1) for k, v in sorted(usage.items())}}
    print("\n21-app stack memory (docker stats):", json.dumps(report, indent=2))
    out = os.environ.get("ONEVPS_SCALE_REPORT")
    if out:
        with open(out, "w") as fh:
            json.dump(report, fh, indent=2)

    # Each of the 21 apps got its own Redis user (inv new-app wrote its credentials into its
    # entry, inv up set the user); inv remove-app and the next up take one away again.
    redis = f"{s.project_name}-redis-1"
    assert sorted(docker("exec", redis, "redis-cli", "ACL", "USERS").split()) == sorted(["default", *reg.names()])
    res = inv_in(scale_repo, "remove-app", "site10", "--yes")
    assert res.returncode == 0, res.stderr
    res = inv_in(scale_repo, "up", "--app", "site00")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    users = docker("exec", redis, "redis-cli", "ACL", "USERS").split()
    assert "site10" not in users and sorted(users) == sorted(["default", *(n for n in reg.names() if n != "site10")])
    tokens = docker("exec", f"{s.project_name}-chroma-auth-1", "cat", "/etc/nginx/onevps/tokens.map")
    apps_with_tokens = sorted(line.split()[1].strip('";') for line in tokens.splitlines() if line.startswith('"'))
    assert apps_with_tokens == sorted(n for n in reg.names() if n != "site10")  # (the tokens stay unshown)
