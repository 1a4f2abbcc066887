"""Issue #5 guarantees on the running test stack: least privilege, secrets,
exposure, and data that survives restarts of every kind tested here."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from onevps import tiers
from onevps.registry import SHARED

from .conftest import docker, http, inv, project_containers

pytestmark = pytest.mark.docker


def by_service(settings) -> dict[str, dict]:
    return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in project_containers(settings)}


def compose(settings, *args: str) -> str:
    return docker("compose", "--project-name", settings.project_name, "--file", str(settings.compose_file), *args)


def test_every_container_runs_with_least_privilege(stack_up, settings, reg):
    containers = by_service(settings)
    assert set(containers) == set(SHARED) | set(reg.names())
    for name, c in containers.items():
        host = c["HostConfig"]
        assert host["CapDrop"] == ["ALL"], name
        assert "no-new-privileges:true" in (host["SecurityOpt"] or []), name
        assert host["Memory"] > 0, f"{name} has no memory limit"
        assert c["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    for app in reg.apps:
        c = containers[app.name]
        assert c["Config"]["User"] == "app" and c["HostConfig"]["ReadonlyRootfs"] is True, app.name
        assert c["HostConfig"]["NanoCpus"] > 0 and not c["HostConfig"]["CapAdd"], app.name
        assert compose(settings, "exec", "-T", app.name, "id", "-u").strip() == "10001"
        # The root file system really is read-only; /tmp is scratch space.
        res = compose(settings, "exec", "-T", app.name, "sh", "-c",
                      "touch /app/x 2>/dev/null && echo writable || echo read-only; touch /tmp/x && echo tmp-ok")
        assert res.split() == ["read-only", "tmp-ok"], app.name
    assert containers["nginx"]["HostConfig"]["ReadonlyRootfs"] is True


def test_redis_requires_the_password(stack_up, settings):
    assert compose(settings, "exec", "-T", "redis", "sh", "-c", "env -u REDISCLI_AUTH redis-cli ping").strip() \
        .startswith("NOAUTH")
    assert compose(settings, "exec", "-T", "redis", "redis-cli", "ping").strip() == "PONG"


def test_the_secret_is_in_no_image(stack_up, settings, reg):
    secret = os.environ["REDIS_PASSWORD"]
    refs = [tiers.image(settings, a.name) for a in reg.apps] + [tiers.tier_image(settings, t) for t in tiers.TIER_ORDER]
    for ref in refs:
        assert secret not in docker("image", "inspect", ref), ref
        assert secret not in docker("history", "--no-trunc", ref), ref


def test_the_secret_is_in_no_task_output(stack_up, settings):
    secret = os.environ["REDIS_PASSWORD"]
    for args in (["status"], ["settings", "--show-defaults"], ["up"]):
        res = inv(*args)
        assert res.returncode == 0, res.stderr
        assert secret not in res.stdout + res.stderr, args


def test_from_the_host_only_nginx_answers(stack_up, settings):
    """Nothing but nginx is published: the services' own ports are closed on the host's loopback."""
    for port in (6379, 8000, 11434, 80, 443):
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"something answers on 127.0.0.1:{port}"
    assert http(settings, "kb", "/health").status == 200  # while nginx does


def _write_everything(settings, tag: str) -> None:
    assert http(settings, "api-gw", f"/kv/survive-{tag}", "POST", {"value": tag}).status == 200
    assert http(settings, "kb", "/documents", "POST",
                {"id": f"survive-{tag}", "text": f"persistent marker {tag} in chroma"}).status == 201
    pulled = compose(settings, "exec", "-T", "ollama", "ollama", "pull", f"survive-{tag}:latest")
    assert "success" in pulled


def _read_everything(settings, tag: str) -> None:
    res = http(settings, "api-gw", f"/kv/survive-{tag}")
    assert res.status == 200 and res.json()["value"] == tag
    res = http(settings, "kb", f"/search?q=persistent+marker+{tag}&k=1")
    assert res.status == 200 and res.json()["results"][0]["id"] == f"survive-{tag}"
    assert f"survive-{tag}:latest" in compose(settings, "exec", "-T", "ollama", "ollama", "list")


def test_data_survives_kill_and_down_up(stack_up, settings):
    tag = uuid.uuid4().hex[:10]
    _write_everything(settings, tag)
    for service in ("redis", "chromadb", "ollama"):
        compose(settings, "kill", service)
    res = inv("up")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    _read_everything(settings, tag)
    res = inv("down")
    assert res.returncode == 0, res.stderr
    assert not project_containers(settings)
    res = inv("up")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    _read_everything(settings, tag)
