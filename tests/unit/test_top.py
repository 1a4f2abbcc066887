"""`inv top` / `fab top` from recorded Docker output: parsing (both CLIs' forms), rows, the
window math, sorting, totals, the table and JSON, the commands of a refresh, --watch."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import pytest

from onevps import top, topdata
from onevps.commands import top as top_cmd
from onevps.errors import OnevpsError
from onevps.registry import App, Registry
from onevps.runner import Runner

from .recording import Server, ctx
from .test_recipes import server_settings

NOW = datetime(2026, 11, 26, 21, 0, 0, tzinfo=timezone.utc)
REG = Registry(apps=(App("kb", "base", 12), App("api-gw", "base", 13, domain="gw.example.org"),
                     App("embedder", "ml", 20)), services=(), hosts={})

# `docker stats --no-stream --format '{{json .}}'`: the 20.10 and 28.x CLIs print the same
# keys and units (binary, "MiB"). The engine of these machines reads no cgroup: "0B / 0B".
STATS = "\n".join([
    '{"BlockIO":"0B / 0B","CPUPerc":"0.15%","Container":"aaaaaaaaaaaa","ID":"aaaaaaaaaaaa","MemPerc":"13.75%",'
    '"MemUsage":"35.21MiB / 256MiB","Name":"p-kb-1","NetIO":"1kB / 2kB","PIDs":"3"}',
    '{"BlockIO":"0B / 0B","CPUPerc":"2.50%","Container":"bbbbbbbbbbbb","ID":"bbbbbbbbbbbb","MemPerc":"34.6%",'
    '"MemUsage":"354.3MiB / 1GiB","Name":"p-embedder-1","NetIO":"0B / 0B","PIDs":"9"}',
    '{"BlockIO":"0B / 0B","CPUPerc":"0.00%","Container":"cccccccccccc","ID":"cccccccccccc","MemPerc":"0.00%",'
    '"MemUsage":"0B / 0B","Name":"p-nginx-1","NetIO":"0B / 0B","PIDs":"0"}',
])


def container(cid: str, service: str, state: str = "running", app: bool = True, memory: int = 268435456,
              restarts: int = 0, pid: int = 100, image: str = "sha256:img-kb") -> dict:
    labels = {"com.docker.compose.project": "p", "com.docker.compose.service": service}
    if app:
        labels["onevps.tier"] = "base"
    return {"Id": cid * 5 + "x" * 4, "Name": f"/p-{service}-1", "State": state, "Pid": pid if state == "running" else 0,
            "RestartCount": restarts, "Image": image, "Labels": labels, "Memory": memory, "NanoCpus": 0}


CONTAINERS = [
    container("aaaaaaaaaaaa", "kb", restarts=2),
    container("bbbbbbbbbbbb", "embedder", memory=2**30, image="sha256:img-embedder"),
    container("cccccccccccc", "nginx", app=False, pid=4242, image="sha256:img-nginx"),
    container("dddddddddddd", "api-gw", state="exited", image="sha256:img-gw"),
    container("eeeeeeeeeeee", "redis", app=False, memory=0, pid=0, state="restarting", image="sha256:img-redis"),
]
INSPECT = "\n".join(json.dumps(c) for c in CONTAINERS) + "\n"
CREATED = ('{"Id":"sha256:img-kb","Created":"2026-11-25T21:00:00.123456789Z"}\n'
           '{"Id":"sha256:img-nginx","Created":"2026-11-26T20:00:00Z"}\n')
CGROUP = "4242 v1 10485760 2097152\n"  # nginx: 10 MiB in use, 2 MiB of it inactive page cache
DF = json.dumps({"Images": [{"ID": "sha256:img-kb", "UniqueSize": "4.2MB"},
                            {"ID": "sha256:img-embedder", "UniqueSize": "12kB"}]})


def log_line(host: str, status: int = 200, seconds: float = 0.010, at: str = "2026-11-26T20:58:00.000+00:00") -> str:
    return json.dumps({"time": at, "host": host, "method": "GET", "uri": "/", "status": status,
                       "request_time": seconds, "upstream_addr": "10.9.0.12:8000", "upstream_status": str(status),
                       "upstream_response_time": str(seconds), "upstream_connect_time": "0.000",
                       "bytes_sent": 100, "request_length": 80})


LOG = "\n".join([log_line("kb.example.com", seconds=s) for s in (0.010, 0.020, 0.030, 0.040)]
                + [log_line("kb.example.com", status=502, seconds=0.5)]
                + [log_line("gw.example.org", status=404)]  # api-gw's extra domain
                + [log_line("127.0.0.1"), log_line("kb.elsewhere.test", status=404)]  # no app's host
                + ["2026/11/26 20:58:00 [notice] 1#1: start worker process 30"])


# ------------------------------------------------------------------ parsing --

@pytest.mark.parametrize("text, expected", [
    ("35.21MiB", int(35.21 * 2**20)), ("1GiB", 2**30), ("1.5GiB", int(1.5 * 2**30)), ("512KiB", 512 * 1024),
    ("0B", 0), ("100kB", 100_000), ("2MB", 2_000_000), (" 12.5MiB ", int(12.5 * 2**20)),
    ("--", None), ("", None), ("12.5 parsecs", None)])
def test_memory_figures_in_both_unit_systems(text, expected):
    assert topdata.parse_memory(text) == expected


def test_mem_usage_splits_used_and_limit():
    assert topdata.parse_mem_usage("35.21MiB / 256MiB") == (int(35.21 * 2**20), 256 * 2**20)
    assert topdata.parse_mem_usage("-- / --") == (None, None)


def test_stats_without_a_cgroup_reading_give_no_figure():
    readings = topdata.parse_stats(STATS + "\nnot json\n")
    assert readings["aaaaaaaaaaaa"] == (int(35.21 * 2**20), 0.15)
    assert readings["bbbbbbbbbbbb"] == (int(354.3 * 2**20), 2.5)
    assert readings["cccccccccccc"] == (None, None)  # "0B / 0B": no reading, not zero bytes


def test_cgroup_lines_count_as_docker_stats_does():
    used = topdata.parse_cgroup("4242 v1 10485760 2097152\n77 v2 5000 9000\n88 v2 3000\nbroken line\n")
    assert used == {4242: 8388608, 77: 5000, 88: 3000}  # less inactive cache, unless it is larger


def test_image_age_from_dockers_nanosecond_times():
    assert topdata.age_seconds("2026-11-25T21:00:00.123456789Z", NOW) == 86399
    assert topdata.age_seconds("2026-11-26T20:00:00Z", NOW) == 3600
    assert topdata.age_seconds("garbage", NOW) is None and topdata.age_seconds(None, NOW) is None
    assert [topdata.age_text(s) for s in (59, 61, 7200, 86400 * 3, None)] == ["59s", "1m", "2h", "3d", "-"]


# ------------------------------------------------------------------ traffic --

def test_requests_per_app_over_the_whole_window():
    per_app, other = topdata.traffic(LOG, REG, "example.com", minutes=5)
    kb = per_app["kb"]
    assert (kb.requests, kb.errors, kb.seconds) == (5, 1, 300)
    assert kb.per_minute == 1.0 and kb.errors_per_minute == 0.2  # 5 in 5 minutes, not in their own span
    assert (kb.p50, kb.p95) == (0.030, 0.5)
    assert per_app["api-gw"].requests == 1  # its extra domain
    assert other == 2  # 127.0.0.1 and another domain: no app; the error-log line is no request


def test_an_app_without_requests_shows_zero_and_services_show_none():
    rows = topdata.build_rows(CONTAINERS, {}, {}, {}, NOW)
    kb = next(r for r in rows if r.name == "kb")
    topdata.add_traffic(kb, None, 5)
    assert (kb.requests, kb.errors, kb.requests_per_min, kb.p50_ms) == (0, 0, 0.0, None)
    assert next(r for r in rows if r.name == "nginx").requests is None


# --------------------------------------------------------------------- rows --

def reading() -> dict:
    rows = topdata.build_rows(CONTAINERS, topdata.parse_stats(STATS), topdata.parse_created(CREATED),
                              {"sha256:img-kb": 4_200_000}, NOW, cgroup=topdata.parse_cgroup(CGROUP))
    per_app, other = topdata.traffic(LOG, REG, "example.com", 5)
    for row in rows:
        if row.kind == "app":
            topdata.add_traffic(row, per_app.get(row.name), 5)
    return topdata.report(rows, 5, other, NOW)


def test_rows_sorted_by_memory_with_the_columns_filled():
    data = reading()
    assert [r["name"] for r in data["rows"]] == ["embedder", "kb", "nginx", "api-gw", "redis"]
    kb = data["rows"][1]
    assert kb["memory"] == int(35.21 * 2**20) and kb["memory_limit"] == 256 * 2**20 and kb["cpu"] == 0.15
    assert kb["memory_source"] == "docker stats" and kb["restarts"] == 2 and kb["image_age_seconds"] == 86399
    assert kb["disk"] == 4_200_000 and kb["requests"] == 5 and kb["p95_ms"] == 500.0
    nginx = data["rows"][2]
    assert (nginx["kind"], nginx["memory"], nginx["memory_source"], nginx["cpu"]) == ("service", 8388608, "cgroup", None)
    redis = data["rows"][4]
    assert (redis["state"], redis["memory"], redis["memory_limit"]) == ("restarting", None, None)  # 0: no limit


def test_totals_add_up_the_rows():
    data = reading()
    t = data["totals"]
    assert t["memory"] == int(35.21 * 2**20) + int(354.3 * 2**20) + 8388608
    assert t["cpu"] == 2.65 and t["requests"] == 6 and t["errors"] == 1
    assert (t["containers"], t["running"]) == (5, 3)
    assert data["window"] == {"minutes": 5, "seconds": 300, "until": "2026-11-26T21:00:00+00:00",
                              "other_requests": 2}


def test_two_containers_of_one_service_are_told_apart_by_name():
    twin = dict(CONTAINERS[0], Id="f" * 64, Name="/p-kb-run-1")
    names = topdata.names_of([CONTAINERS[0], twin, CONTAINERS[2]])
    assert sorted(names.values()) == ["nginx", "p-kb-1", "p-kb-run-1"]


def test_a_source_names_the_sleeping_apps():
    src = top.Source(Runner(recorded()), "p", REG, "example.com", hint="", sleeping=lambda: {"api-gw"})  # type: ignore[arg-type]
    states = {r["name"]: r["state"] for r in top.collect(src, 5, now=NOW)["rows"]}
    assert states["api-gw"] == "sleeping" and states["redis"] == "restarting"


def test_sleeping_apps_are_marked_by_the_hook():
    rows = topdata.build_rows(CONTAINERS, {}, {}, {}, NOW)
    topdata.mark_sleeping(rows, {"api-gw", "kb"})
    states = {r.name: r.state for r in rows}
    assert states["api-gw"] == "sleeping" and states["kb"] == "running"  # a running app is awake


def test_the_table_and_the_json():
    data = reading()
    lines = topdata.render(data).splitlines()
    assert lines[0].split()[:6] == ["NAME", "KIND", "STATE", "MEMORY", "LIMIT", "CPU%"]
    assert [line.split()[0] for line in lines[1:6]] == ["embedder", "kb", "nginx", "api-gw", "redis"]
    assert lines[2].split()[:6] == ["kb", "app", "running", "35.2", "MiB", "256.0"]
    assert "1.0" in lines[2].split() and "30 ms" in lines[2] and "500 ms" in lines[2] and "4.2 MB" in lines[2]
    assert lines[6].startswith("TOTAL") and "3/5 running" in lines[6] and "2.65" in lines[6]
    assert "last 5 min" in lines[7] and "2 for other hosts" in lines[7]
    assert json.loads(top.text_of(data, as_json=True)) == data
    assert "\n" not in top.text_of(data, as_json=True, compact=True)


# ------------------------------------------------------------ one refresh --

def recorded() -> Server:
    return (Server().when(["docker", "ps"], "\n".join(c["Id"] for c in CONTAINERS) + "\n")
            .when(["docker", "container", "inspect"], INSPECT).when(["docker", "stats"], STATS)
            .when(["sh", "-c"], CGROUP).when(["docker", "image", "inspect"], CREATED)
            .when(["docker", "system", "df"], DF).when(["docker", "logs"], LOG))


def test_a_refresh_reads_docker_a_few_times_and_the_rest_once():
    server = recorded()
    src = top.Source(Runner(server), "p", REG, "example.com", hint="start it")  # type: ignore[arg-type]
    data = top.collect(src, 5, now=NOW)
    first = [" ".join(a[:3]) for a in server.argvs]
    assert first == ["docker ps --all", "docker container inspect", "docker stats --no-stream",
                     "sh -c " + top_cmd.CGROUP_MEMORY, "docker image inspect", "docker system df", "docker logs --since"]
    stats_argv, logs_argv = server.argvs[2], server.argvs[-1]
    assert stats_argv[-3:] == [c["Id"] for c in CONTAINERS[:3]]  # the running ones, at once
    assert server.argvs[3][4:] == ["4242"]  # only the one docker stats could not read
    assert logs_argv == ["docker", "logs", "--since", "300s", CONTAINERS[2]["Id"]]
    assert data["rows"][0]["disk"] == 12_000 and data["rows"][1]["requests"] == 5
    server.argvs.clear()
    top.collect(src, 5, now=NOW)  # --watch: image times and disk bytes are kept
    assert [a[1] for a in server.argvs] == ["ps", "container", "stats", "-c", "logs"]


def test_a_project_without_containers_is_one_line():
    src = top.Source(Runner(Server()), "p", REG, "example.com", hint="start it: `inv up`")  # type: ignore[arg-type]
    with pytest.raises(OnevpsError, match="no containers of project p"):
        top.collect(src, 5)


# ------------------------------------------------------------------ --watch --

class Screen(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def interrupted_after(n: int):
    calls = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) >= n:
            raise KeyboardInterrupt

    return sleep, calls


@pytest.mark.parametrize("tty", [True, False])
def test_watch_refreshes_until_ctrl_c(tty):
    screen, readings = Screen(tty), iter(["one", "two", "three"])
    sleep, calls = interrupted_after(2)
    top.watch(lambda: next(readings), 1.5, screen, tty=screen.isatty(), sleep=sleep)  # returns: no exception
    assert calls == [1.5, 1.5]
    if tty:
        assert screen.getvalue() == f"{top.CLEAR}one\n{top.CLEAR}two\n"
    else:
        assert screen.getvalue() == "one\n\ntwo\n\n" and "\x1b" not in screen.getvalue()


def test_watch_stops_quietly_when_ctrl_c_fails_a_docker_command():
    def refresh() -> str:
        top.signal.getsignal(top.signal.SIGINT)(2, None)  # Ctrl-C while docker runs...

    def failing() -> str:
        try:
            refresh()
        except KeyboardInterrupt:
            pass  # ...invoke passes it to docker and returns its failure
        raise OnevpsError("read memory and CPU failed (exit 130)")

    screen = Screen(False)
    top.watch(failing, 2, screen, tty=False, sleep=lambda s: None)
    assert screen.getvalue() == ""


def test_watch_passes_on_a_real_error():
    def failing() -> str:
        raise OnevpsError("no containers of project p", "start it")

    with pytest.raises(OnevpsError, match="no containers"):
        top.watch(failing, 2, Screen(False), tty=False, sleep=lambda s: None)


# -------------------------------------------------------------------- fab top --

def test_fab_top_reads_the_servers_project_over_ssh():
    server = recorded().when(["docker", "info"], "20.10.24\n")
    srv = ctx(server, server_settings(), reg=REG)
    top.on_server(srv, 1, as_json=True)
    out = json.loads(srv.run.out.getvalue())
    assert out["window"]["seconds"] == 60 and out["rows"][0]["name"] == "embedder"
    commands = server.commands()
    assert commands[:2] == ["docker info --format '{{.ServerVersion}}'",
                            "docker compose version --short"]
    assert commands[2] == "docker ps --all --quiet --filter label=com.docker.compose.project=p"
    assert commands[-2] == f"docker logs --since 60s {CONTAINERS[2]['Id']}"
    assert commands[-1] == "docker exec p-waker-1 ls -1 /var/lib/onevps/asleep"  # which stopped apps sleep
