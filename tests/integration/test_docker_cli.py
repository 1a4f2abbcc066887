"""The local tasks that read Docker's output work with every Docker CLI setup can install.

Each task runs twice against the running test stack: with PATH as it is
(Docker's current CLI, /usr/local/bin/docker) and with /usr/bin first (Debian
12's docker.io 20.10, the oldest CLI onevps supports). They must exit 0, print
real values (the apps, their sizes as Docker reports them) and agree.
`inv swarm-status` is checked the same way in test_swarm_cli.py, which runs last:
a swarm turned on and off again under the running test stack is left out of
the middle of the run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from onevps import disk, tiers

from .conftest import ROOT, docker

pytestmark = [pytest.mark.docker, pytest.mark.stack]

CLIS = {"current": os.environ["PATH"], "debian-20.10": "/usr/bin:" + os.environ["PATH"]}


def inv(path: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PATH": path})


def ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def client_version(path: str) -> str:
    res = subprocess.run(["docker", "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True,
                         env={**os.environ, "PATH": path}, timeout=60)
    return res.stdout.strip()


def test_the_two_clis_are_what_the_test_says():
    versions = {name: client_version(path) for name, path in CLIS.items()}
    assert versions["debian-20.10"].startswith(disk.MIN_DOCKER_VERSION + "."), versions
    assert int(versions["current"].split(".")[0]) > 20, versions


@pytest.fixture(scope="module")
def reports(stack_up, settings):
    """`inv disk --json` with each CLI (a budget no app exceeds: the report must exit 0)."""
    return {name: json.loads(ok(inv(path, "disk", "--json", "--budget", "100000"))) for name, path in CLIS.items()}


@pytest.mark.parametrize("cli", CLIS)
def test_inv_disk_reports_docker_sizes(cli, reports, settings, project, reg):
    data = reports[cli]
    assert [a["app"] for a in data["apps"]] == reg.names()
    sizes = {}
    for tier in tiers.TIER_ORDER:
        sizes[tier] = int(docker("image", "inspect", "--format", "{{.Size}}",
                                 tiers.tier_image(project, settings, tier)))
    assert data["tiers"] == {"base": sizes["base"], "ml_own": sizes["ml"] - sizes["base"]}
    for app in data["apps"]:
        assert app["image"] == int(docker("image", "inspect", "--format", "{{.Size}}",
                                          tiers.image(settings, app["app"])))
        assert 0 < app["own"] < app["image"]
    # The per-image rows come from `docker system df` (human sizes, 3 significant digits).
    # (one row per image, named by one of its tags; older tier images of the namespace may be there too)
    for tier in tiers.TIER_ORDER:
        rows = [r for r in data["images"] if r["image"].startswith(f"{settings.image_namespace}/{tier}:")
                and abs(r["size"] - sizes[tier]) <= sizes[tier] * 0.01]
        assert rows, (tier, sizes[tier], data["images"])
        if tier == "ml":
            assert max(r["shared"] for r in rows) > 1_000_000_000  # torch: shared with the ML apps
    assert data["on_disk"] < data["unlayered"] and data["savings_ratio"] > 1


def test_both_clis_give_the_same_disk_report(reports):
    assert reports["current"] == reports["debian-20.10"]


@pytest.mark.parametrize("cli", CLIS)
def test_inv_disk_text(cli, stack_up, reports, settings):
    out = ok(inv(CLIS[cli], "disk", "--budget", "100000"))
    data = reports[cli]
    assert f"base tier {disk.human(data['tiers']['base'])}, ML tier's own layers {disk.human(data['tiers']['ml_own'])}" in out
    for app in data["apps"]:
        assert f"{app['app']:<18} {app['tier']:<4}  {disk.human(app['own']):>10}" in out
    assert f"savings {data['savings_ratio']}x" in out


@pytest.mark.parametrize("cli", CLIS)
def test_inv_prune_dry_run(cli, stack_up, settings, reg):
    out = ok(inv(CLIS[cli], "prune", "--dry-run"))
    assert "[dry-run] docker image prune --force" in out
    assert "[dry-run] docker builder prune --force --keep-storage 2000mb" in out
    summary = next(line for line in out.splitlines() if line.startswith("==> ") and "to remove" in line)
    kept = int(re.search(r"; kept (\d+);", summary).group(1))
    assert kept >= len(reg.apps) + 2  # every app's latest and both current tiers
    assert "removing " not in out  # a dry run removes nothing


@pytest.mark.parametrize("cli", CLIS)
def test_inv_status(cli, stack_up, settings, reg):
    out = ok(inv(CLIS[cli], "status"))
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    for app in reg.apps:
        assert lines[app.name].rstrip().endswith("running (healthy)"), lines[app.name]
        assert settings.app_url(app.name) in lines[app.name]
