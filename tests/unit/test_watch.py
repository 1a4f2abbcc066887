"""The watch after a deploy's switch: judge() on every branch, watch() against a recording
server (canned `docker logs` and `docker inspect` answers) and a fake clock, its settings."""

from __future__ import annotations

import json

import pytest

from onevps import config, watch
from onevps.accesslog import Summary
from onevps.commands import docker_cmd
from onevps.errors import ConfigError
from onevps.project import Project

from .recording import ROOT, Server, ctx

NEW = "10.9.0.140"  # the new version's address
OLD = "10.9.0.12"


def summary(requests: int = 0, errors: int = 0) -> Summary:
    return Summary(app="kb", requests=requests, errors=errors, p50=None, p95=None, seconds=30.0)


# ------------------------------------------------------------------ judge --

@pytest.mark.parametrize("state", ["running 0 0 healthy", "running 0 0 ", "running 0 0 starting", "running healthy",
                                   "running "])
def test_a_running_version_without_5xx_is_fine(state):
    assert watch.judge(summary(100, 0), state, 5.0, 20) is None


@pytest.mark.parametrize("state, reason", [
    (None, "the new kb is gone (no container to inspect)"),
    ("", "the new kb is gone (no container to inspect)"),
    ("exited 1 0 ", "the new kb turned unhealthy (exited 1)"),
    ("exited 137 0 unhealthy", "the new kb turned unhealthy (exited 137)"),
    ("exited ", "the new kb turned unhealthy (exited)"),  # STATE_HEALTH: no exit code
    ("restarting 1 2 ", "the new kb turned unhealthy (restarting)"),
    ("dead 0 0 ", "the new kb turned unhealthy (dead)"),
    ("running 0 0 unhealthy", "the new kb turned unhealthy (its health check fails)"),
    ("running unhealthy", "the new kb turned unhealthy (its health check fails)"),
])
def test_an_unwell_container_fails_the_watch(state, reason):
    assert watch.judge(summary(100, 0), state, 5.0, 20) == reason


def test_a_restart_during_the_watch_fails_it():
    assert watch.judge(summary(), "running 0 1 starting", 5.0, 20, restarts=1) == \
        "the new kb restarted during the watch (1x)"


def test_a_5xx_share_above_the_threshold_fails_the_watch():
    assert watch.judge(summary(40, 7), "running 0 0 healthy", 5.0, 20) == \
        "the new kb answered 7 of 40 requests (17.5%) with 5xx, above DEPLOY_WATCH_5XX=5%"
    assert watch.judge(summary(1000, 26), "running healthy", 2.5, 20) == \
        "the new kb answered 26 of 1000 requests (2.6%) with 5xx, above DEPLOY_WATCH_5XX=2.5%"


def test_the_share_must_pass_the_threshold_over_enough_requests():
    assert watch.judge(summary(40, 2), "running 0 0 healthy", 5.0, 20) is None  # exactly 5%: not above
    assert watch.judge(summary(19, 19), "running 0 0 healthy", 5.0, 20) is None  # too few to judge
    assert watch.judge(summary(20, 2), "running 0 0 healthy", 5.0, 20) is not None  # 10% of 20
    assert watch.judge(summary(20, 20), "running 0 0 healthy", 100.0, 20) is None  # 100: never on 5xx


def test_health_is_judged_before_the_share():
    assert "exited 3" in watch.judge(summary(40, 40), "exited 3 0 ", 5.0, 20)


def test_read_state():
    assert watch.read_state("running 0 2 healthy") == watch.State("running", "0", 2, "healthy")
    assert watch.read_state("exited 1 0 ") == watch.State("exited", "1", 0, "")
    assert watch.read_state("running starting") == watch.State("running", "", 0, "starting")
    assert watch.read_state("") == watch.State("missing")
    assert watch.read_state("running 0 0 ").word == "running"


# ------------------------------------------------------------------ watch --

class Clock:
    """A fake clock: sleep() moves now() on; nothing waits."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def line(stamp: str, status: int = 200, upstream: str = NEW + ":8000", uri: str = "/") -> str:
    entry = {"time": "2026-01-01T12:00:00.000+00:00", "host": "kb.example.com", "method": "GET", "uri": uri,
             "status": status, "request_time": 0.005, "upstream_addr": upstream, "upstream_status": str(status),
             "upstream_response_time": "0.005", "upstream_connect_time": "0.000", "bytes_sent": 200,
             "request_length": 90}
    return f"2026-01-01T12:00:{stamp}Z {json.dumps(entry)}"


def stamp(i: int) -> str:
    return f"{i // 1000:02d}.{i % 1000:09d}"  # fixed width, as docker prints it


def settings() -> config.Settings:
    return config.load(Project(ROOT), environ={"COMPOSE_PROJECT_NAME": "p", "NETWORK_PREFIX": "10.9.0"},
                       env_file=ROOT / ".env.example")


class Feed:
    """Answers `docker logs --since X`: the lines of `batches[poll]` (each poll a batch, the last
    repeats); records the --since values asked for."""

    def __init__(self, batches: list[list[str]]) -> None:
        self.batches, self.since, self.polls = batches, [], 0

    def __call__(self, argv: list[str]):
        self.since.append(argv[argv.index("--since") + 1])
        batch = self.batches[min(self.polls, len(self.batches) - 1)]
        self.polls += 1
        return 0, "".join(x + "\n" for x in batch), "2026/01/01 12:00:00 [error] 1#1: not a request\n"


def run_watch(server: Server, seconds: float = 30, threshold: float = 5.0, dry_run: bool = False):
    clock, said = Clock(), []
    srv = ctx(server, settings(), dry_run=dry_run)
    reason = watch.watch(srv, "kb", "p-kb-next", seconds, threshold, said.append, NEW,
                         now=clock.now, sleep=clock.sleep)
    return reason, said, clock


def test_a_quiet_healthy_version_passes_after_the_seconds_with_progress_lines():
    server = Server().when(["docker", "logs"], answer=Feed([[]])).when("inspect", "running 0 0 healthy\n")
    reason, said, clock = run_watch(server, seconds=12)
    assert reason is None
    assert clock.t - 1000.0 == 12 and all(s <= 1.0 for s in clock.slept)
    assert said == ["watching kb: 0 requests, 0 5xx, healthy (5 s of 12 s)",
                    "watching kb: 0 requests, 0 5xx, healthy (10 s of 12 s)",
                    "watching kb: 0 requests, 0 5xx, healthy (12 s of 12 s)"]
    logs = [a for a in server.argvs if a[:2] == ["docker", "logs"]]
    assert logs[0] == ["docker", "logs", "--timestamps", "--since", "0.001s", "p-nginx-1"]
    assert ["docker", "container", "inspect", "--format", watch.STATE, "p-kb-next"] in server.argvs


def test_5xx_from_the_new_version_fail_the_watch_and_the_old_ones_do_not_count():
    old = [line(stamp(i), 502, upstream=OLD + ":8000") for i in range(50)]  # the old version, during the move
    ok = [line(stamp(100 + i)) for i in range(15)]
    bad = [line(stamp(200 + i), 500, uri="/boom") for i in range(5)]
    feed = Feed([old, old + ok, ok + bad])  # each poll from the last timestamp on: repeats are skipped
    server = Server().when(["docker", "logs"], answer=feed).when("inspect", "running 0 0 healthy\n")
    reason, said, clock = run_watch(server)
    assert reason == "the new kb answered 5 of 20 requests (25.0%) with 5xx, above DEPLOY_WATCH_5XX=5%"
    assert feed.polls == 3 and said == []
    assert feed.since == ["0.001s", f"2026-01-01T12:00:{stamp(49)}Z", f"2026-01-01T12:00:{stamp(114)}Z"]


def test_lines_at_the_last_timestamp_are_counted_once():
    same = stamp(7)  # --since includes its own timestamp: the next poll sees these lines again
    first = [line(same, 500), line(same, 500, uri="/a")]
    feed = Feed([first, first + [line(same, 500, uri="/b")]])
    server = Server().when(["docker", "logs"], answer=feed).when("inspect", "running 0 0 healthy\n")
    clock = Clock()
    reason = watch.watch(ctx(server, settings()), "kb", "p-kb-next", 30, 5.0, lambda m: None, NEW,
                         min_requests=3, now=clock.now, sleep=clock.sleep)
    assert reason == "the new kb answered 3 of 3 requests (100.0%) with 5xx, above DEPLOY_WATCH_5XX=5%"
    assert feed.polls == 2


def test_an_exited_version_fails_at_once():
    server = Server().when(["docker", "logs"], answer=Feed([[]])).when("inspect", "exited 1 0 \n")
    reason, said, clock = run_watch(server)
    assert reason == "the new kb turned unhealthy (exited 1)" and clock.slept == []


def test_a_gone_version_fails():
    server = Server().when(["docker", "logs"], answer=Feed([[]])).when("inspect", code=1, err="No such object")
    assert run_watch(server)[0] == "the new kb is gone (no container to inspect)"


def test_a_restart_between_two_looks_fails_the_watch():
    states = iter(["running 0 0 healthy\n", "running 0 0 healthy\n", "running 0 1 starting\n"])
    server = Server().when(["docker", "logs"], answer=Feed([[]])).when(
        "inspect", answer=lambda argv: (0, next(states), ""))
    reason, said, clock = run_watch(server)
    assert reason == "the new kb restarted during the watch (1x)" and len(clock.slept) == 2


def test_an_unreadable_nginx_log_warns_once_and_still_watches_health():
    server = Server().when(["docker", "logs"], code=1, err="No such container: p-nginx-1").when(
        "inspect", "running 0 0 healthy\n")
    reason, said, clock = run_watch(server, seconds=3)
    assert reason is None
    assert said == ["warning: cannot read p-nginx-1's log (exit 1); watching kb's health only",
                    "watching kb: 0 requests, 0 5xx, healthy (3 s of 3 s)"]


def test_no_watch_when_off_or_dry_run():
    server = Server()
    reason, said, clock = run_watch(server, seconds=0)
    assert (reason, said, server.argvs) == (None, [], [])
    reason, said, clock = run_watch(server, dry_run=True)
    assert (reason, said, server.argvs, clock.slept) == (None, ["[dry-run] watch kb for 30 s"], [], [])


def test_the_log_argv():
    assert docker_cmd.logs_since("p-nginx-1", "2.5s") == ["docker", "logs", "--timestamps", "--since", "2.5s",
                                                          "p-nginx-1"]


# --------------------------------------------------------------- settings --

def test_watch_settings_defaults_and_values(tmp_path):
    s = config.load(Project(tmp_path), environ={})
    assert (s.deploy_watch, s.deploy_watch_5xx) == (30, 5.0)
    s = config.load(Project(tmp_path), environ={"DEPLOY_WATCH": "0", "DEPLOY_WATCH_5XX": "2.5%"})
    assert (s.deploy_watch, s.deploy_watch_5xx, s.raw["DEPLOY_WATCH_5XX"]) == (0, 2.5, "2.5")
    assert config.load(Project(tmp_path), environ={"DEPLOY_WATCH_5XX": "100"}).deploy_watch_5xx == 100.0


@pytest.mark.parametrize("key, value, why", [
    ("DEPLOY_WATCH", "-1", "must be a whole number of 0 or more (0: off)"),
    ("DEPLOY_WATCH", "30s", "must be a whole number of 0 or more (0: off)"),
    ("DEPLOY_WATCH_5XX", "101", "must be a percentage 0-100 such as 5 or 2.5"),
    ("DEPLOY_WATCH_5XX", "-1", "must be a percentage 0-100 such as 5 or 2.5"),
    ("DEPLOY_WATCH_5XX", "five", "must be a percentage 0-100 such as 5 or 2.5"),
    ("DEPLOY_WATCH_5XX", "nan", "must be a percentage 0-100 such as 5 or 2.5"),
])
def test_bad_watch_settings_are_one_line_naming_the_key(tmp_path, key, value, why):
    with pytest.raises(ConfigError) as err:
        config.load(Project(tmp_path), environ={key: value})
    assert err.value.what == f"{key}={value!r} (environment variable) {why}"
