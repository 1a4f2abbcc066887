"""`inv swarm-status` with every Docker CLI setup can install (see test_docker_cli.py):
Docker's current CLI and Debian 12's 20.10, on a single-node swarm holding one
service labelled as a service of the test stack.

This module's name sorts it after every other integration module on purpose:
it turns swarm mode on (and off again) under the running test stack, and the
other modules should run on an engine that never was in a swarm.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from onevps import tiers

from .conftest import docker
from .test_docker_cli import CLIS, inv, ok

pytestmark = [pytest.mark.docker, pytest.mark.cluster]

PROBE = "probe"  # the one service this module puts on a swarm


@pytest.fixture(scope="module")
def swarm_probe(stack_up, settings, project):
    """One service labelled as a service of the test stack, on a single-node swarm (left again only if this
    module started the swarm and nothing else runs on it)."""
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}").split()
    started = state[0] == "inactive"
    if started:
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    elif state != ["active", "true"]:
        pytest.fail(f"this engine is in a swarm but not as a manager ({' '.join(state)})", pytrace=False)
    name = f"{settings.project_name}_{PROBE}"
    image = tiers.tier_image(project, settings, "base")
    subprocess.run(["docker", "service", "rm", name], capture_output=True)
    docker("service", "create", "--detach", "--no-resolve-image", "--name", name,
           "--label", f"com.docker.stack.namespace={settings.project_name}", image, "sleep", "3600")
    deadline = time.monotonic() + 120
    while docker("service", "ls", "--filter", f"name={name}", "--format", "{{.Replicas}}").strip() != "1/1":
        assert time.monotonic() < deadline, docker("service", "ps", "--no-trunc", name)
        time.sleep(1)
    yield image
    subprocess.run(["docker", "service", "rm", name], capture_output=True)
    if started and not docker("service", "ls", "--quiet").strip():
        subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True)


@pytest.mark.parametrize("cli", CLIS)
def test_inv_swarm_status(cli, swarm_probe):
    out = ok(inv(CLIS[cli], "swarm-status"))
    lines = out.splitlines()
    assert lines[0].split() == ["SERVICE", "REPLICAS", "IMAGE", "LAST", "UPDATE"]
    assert lines[1].split() == [PROBE, "1/1", swarm_probe, "-"]
