"""`inv top` on the real test stack: its request and 5xx counts for an app are what nginx
logged in its one-minute window (all of this test's requests, and any other test's), its
memory figures match the engine's own reading taken just before and after, its limits are
the compose file's, and the table shows a row per container."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from onevps import accesslog
from onevps.topdata import parse_mem_usage

from .conftest import ROOT, docker, http, inv, project_containers

pytestmark = [pytest.mark.docker, pytest.mark.stack]

APP = "api-gw"
# Memory moves while we read it. Idle, a container moves by a few kB to 0.5 MiB in 5 s
# (measured on the test stack), but each health check runs a process inside the container
# every 5-10 s (the apps' `python -c ...`: ~12 MiB while it runs, counted by docker stats and
# the cgroup alike) that one reading may catch and another miss. So top's figure must lie
# within the before/after readings widened by 16 MiB + 5%: a unit error (KiB for MiB: 1024x)
# or an ML app's figure (~350 MiB) on a small app (~35 MiB) still falls outside.
SLACK_BYTES, SLACK_SHARE = 16 * 2**20, 0.05


def top_json(*args: str) -> dict:
    res = inv("top", "--json", *args, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return json.loads(res.stdout)


def nginx_requests(settings, app: str, since: datetime) -> list[accesslog.Request]:
    """What nginx logged for the app since `since` (the test counts its own log lines)."""
    name = f"{settings.project_name}-nginx-1"
    lines = docker("logs", name)
    return [r for r in accesslog.parse(lines) if r.host == f"{app}.{settings.domain}" and r.time >= since]


def send_traffic(settings, mark: str) -> tuple[int, int]:
    """20 answered 200 (a key stored, then read), 5 answered 404 (a missing key), 5 answered 502
    by the app (its upstream, nginx's port 8000, refuses), each path carrying `mark` (nginx logs
    no query string): (requests, 5xx)."""
    statuses = [http(settings, APP, f"/kv/top-{mark}", "POST", {"value": mark}).status]
    statuses += [http(settings, APP, f"/kv/top-{mark}").status for _ in range(19)]
    statuses += [http(settings, APP, f"/kv/top-missing-{mark}").status for _ in range(5)]
    statuses += [http(settings, APP, f"/proxy/nginx/top-{mark}").status for _ in range(5)]
    assert statuses == [200] * 20 + [404] * 5 + [502] * 5, statuses
    return 30, 5


def engine_memory(settings) -> dict[str, tuple[int | None, int | None]]:
    """container name -> (used, limit) as `docker stats --no-stream` reads them."""
    out = docker("stats", "--no-stream", "--format", "{{json .}}")
    items = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {i["Name"]: parse_mem_usage(i["MemUsage"]) for i in items if i["Name"].startswith(settings.project_name + "-")}


def cgroup_memory(container: str) -> int:
    """The container's memory as its own cgroup sees it from inside (v1 or v2), counted as
    `docker stats` counts it: usage less inactive page cache."""
    script = ("if [ -r /sys/fs/cgroup/memory.current ]; then cat /sys/fs/cgroup/memory.current; "
              "grep '^inactive_file ' /sys/fs/cgroup/memory.stat; else cat /sys/fs/cgroup/memory/memory.usage_in_bytes; "
              "grep '^total_inactive_file ' /sys/fs/cgroup/memory/memory.stat; fi")
    out = docker("exec", container, "sh", "-c", script).split()
    usage, inactive = int(out[0]), int(out[-1]) if len(out) > 2 else 0
    return usage - inactive if inactive < usage else usage


def within(value: int, readings: list[int]) -> bool:
    low, high = min(readings), max(readings)
    slack = SLACK_BYTES + SLACK_SHARE * high
    return low - slack <= value <= high + slack


def expected_limits(settings, reg) -> dict[str, int]:
    """Every service's memory limit as the settings give it to the compose file."""
    return {"nginx": settings.nginx_mem_limit, "redis": settings.redis_mem_limit,
            "chromadb": settings.chroma_mem_limit, "chroma-auth": settings.chroma_auth_mem_limit,
            "ollama": settings.ollama_mem_limit, "waker": settings.waker_mem_limit,
            "docker-proxy": settings.docker_proxy_mem_limit,
            **{a.name: settings.ml_app_mem_limit if a.tier == "ml" else settings.app_mem_limit for a in reg.apps}}


def test_top_json_counts_what_nginx_logged_and_reads_memory_as_the_engine(stack_up, settings, reg):
    mark = secrets.token_hex(4)
    sent, errors = send_traffic(settings, mark)
    before = engine_memory(settings)
    inside_before = {c["Name"].lstrip("/"): cgroup_memory(c["Id"]) for c in project_containers(settings)
                     if c["State"]["Running"]}
    called = datetime.now(timezone.utc)
    data = top_json("--minutes", "1")
    returned = datetime.now(timezone.utc)
    after = engine_memory(settings)
    inside_after = {name: cgroup_memory(name) for name in inside_before}

    rows = {r["name"]: r for r in data["rows"]}
    assert data["window"]["minutes"] == 1 and data["window"]["seconds"] == 60
    # top's window is the minute before it read the log, at some moment between `called` and
    # `returned`; other tests may have sent the app requests just before ours. Every request
    # logged after returned - 60 s is surely in it, none before called - 60 s is (1 s of slack
    # each way for the log's and docker's clocks), and ours, all of them, are.
    minute, slack = timedelta(seconds=60), timedelta(seconds=1)
    maybe = nginx_requests(settings, APP, called - minute - slack)
    surely = [r for r in maybe if r.time >= returned - minute + slack]
    ours = [r for r in surely if mark in r.uri]
    assert len(ours) == sent and sum(r.is_5xx for r in ours) == errors, ours
    assert len(surely) <= rows[APP]["requests"] <= len(maybe), (rows[APP], len(surely), len(maybe))
    assert sum(r.is_5xx for r in surely) <= rows[APP]["errors"] <= sum(r.is_5xx for r in maybe), rows[APP]
    assert rows[APP]["requests_per_min"] == rows[APP]["requests"]  # a one-minute window
    assert rows[APP]["p50_ms"] is not None and rows[APP]["p95_ms"] >= rows[APP]["p50_ms"]
    assert data["totals"]["requests"] == sum(r["requests"] or 0 for r in data["rows"])

    limits = expected_limits(settings, reg)
    running = [r for r in data["rows"] if r["state"] == "running"]
    assert {r["container"] for r in running} == set(inside_before)
    for row in running:
        assert row["memory_limit"] == limits[row["name"]], row  # exactly the compose file's
        engine = [before[row["container"]], after[row["container"]]]
        if all(limit for _, limit in engine):  # the engine reads the container's cgroup
            assert row["memory_source"] == "docker stats", row
            assert all(limit == row["memory_limit"] for _, limit in engine), (row, engine)
            readings = [used for used, _ in engine]
        else:  # "0B / 0B": it reads none (as on these machines): top reads the cgroup itself
            assert row["memory_source"] == "cgroup", row
            readings = [inside_before[row["container"]], inside_after[row["container"]]]
        assert row["memory"] is not None and within(row["memory"], readings), (row, readings)
    assert data["rows"] == sorted(data["rows"], key=lambda r: (r["memory"] is None, -(r["memory"] or 0), r["name"]))
    assert data["totals"]["memory"] == sum(r["memory"] or 0 for r in data["rows"])


def test_top_table_shows_a_row_per_running_container(stack_up, settings):
    res = inv("top", "--minutes", "1", timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0].split()[:5] == ["NAME", "KIND", "STATE", "MEMORY", "LIMIT"], lines[0]
    services = {c["Config"]["Labels"]["com.docker.compose.service"] for c in project_containers(settings)
                if c["State"]["Running"]}
    rows = [line.split() for line in lines[1:] if line.strip() and not line.startswith(("TOTAL", "requests:"))]
    assert {r[0] for r in rows if r[2] == "running"} == services, (rows, services)
    total = next(line for line in lines if line.startswith("TOTAL"))
    assert f"{len(services)}/{len(rows)} running" in total, total
    assert "\x1b[" not in res.stdout  # not a terminal: no screen codes


def test_top_refuses_a_bad_window(stack_up):
    res = inv("top", "--minutes", "0", timeout=120)
    assert res.returncode == 1 and "--minutes=0" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_top_reads_alike_with_debians_docker_cli(stack_up, settings):
    """Debian 12's docker.io CLI (20.10, /usr/bin/docker) and the current one print what top reads alike."""
    if not Path("/usr/bin/docker").exists():
        pytest.fail("/usr/bin/docker (Debian's docker.io) is missing: apt-get install docker.io")
    env = {**os.environ, "PATH": "/usr/bin:" + os.environ["PATH"]}
    res = subprocess.run([sys.executable, "-m", "invoke", "top", "--json", "--minutes", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    old, new = json.loads(res.stdout), top_json("--minutes", "1")

    def fixed(data: dict) -> set:
        return {(r["name"], r["kind"], r["state"], r["memory_limit"], r["restarts"], r["image_created"], r["disk"],
                 r["memory_source"], r["memory"] is None) for r in data["rows"]}

    assert fixed(old) == fixed(new)
