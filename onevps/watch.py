"""The watch after a deploy's switch: for DEPLOY_WATCH seconds onevps reads the new
version's state and its answers in nginx's access log; the first sign of trouble
(unhealthy, restarted, gone, or a 5xx share above DEPLOY_WATCH_5XX over enough
requests) is the reason to roll back. judge() decides; watch() gathers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from . import accesslog
from .accesslog import Summary
from .commands import docker_cmd
from .server import Ctx, container_name, inspect

# A container's status, exit code, restarts and health: "running 0 0 healthy", "exited 1 0 ".
STATE = "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
MIN_REQUESTS = 20  # fewer answers than this never fail the watch on their 5xx share
POLL = 1.0  # seconds between looks
REPORT_EVERY = 5.0  # seconds between progress lines
_HEALTH = ("healthy", "unhealthy", "starting")


@dataclass(frozen=True)
class State:
    """A container's state as STATE (or docker_cmd.STATE_HEALTH) prints it."""

    status: str  # running, exited, restarting, paused, dead, ...
    exit_code: str = ""
    restarts: int = 0
    health: str = ""  # healthy, unhealthy, starting; "" without a health check

    @property
    def word(self) -> str:
        """One word for a progress line: the health, else the status."""
        return self.health or self.status


def read_state(text: str) -> State:
    """The State in the output of `docker inspect --format STATE` (or STATE_HEALTH)."""
    words = text.split()
    numbers = [w for w in words[1:] if w.isdigit()]
    health = next((w for w in words[1:] if w in _HEALTH), "")
    return State(status=words[0] if words else "missing", exit_code=numbers[0] if numbers else "",
                 restarts=int(numbers[1]) if len(numbers) > 1 else 0, health=health)


def judge(summary: Summary, health_state: str | None, threshold: float, min_requests: int = MIN_REQUESTS,
          *, restarts: int = 0) -> str | None:
    """None while the new version is fine, else why not, in one line.

    health_state: the container's `docker inspect --format STATE` (or STATE_HEALTH) output,
    None when there is no such container; restarts: how often it restarted during the watch;
    threshold: DEPLOY_WATCH_5XX in percent; summary: the requests the new version answered.
    """
    app = summary.app
    if health_state is None or not health_state.strip():
        return f"the new {app} is gone (no container to inspect)"
    state = read_state(health_state)
    if state.status != "running":
        code = f" {state.exit_code}" if state.status == "exited" and state.exit_code else ""
        return f"the new {app} turned unhealthy ({state.status}{code})"
    if state.health == "unhealthy":
        return f"the new {app} turned unhealthy (its health check fails)"
    if restarts > 0:
        return f"the new {app} restarted during the watch ({restarts}x)"
    if summary.requests >= min_requests and summary.share * 100 > threshold:
        return (f"the new {app} answered {summary.errors} of {summary.requests} requests "
                f"({summary.share * 100:.1f}%) with 5xx, above DEPLOY_WATCH_5XX={threshold:g}%")
    return None


@dataclass
class LogWindow:
    """nginx's log lines since the watch began, read a poll at a time (`docker logs
    --timestamps --since`): each poll asks from the last timestamp seen on, and the lines
    at that very timestamp already counted are skipped (--since includes it)."""

    address: str  # only requests this upstream answered count
    last: str = ""  # the newest docker timestamp seen (fixed width: compares as text)
    at_last: set[str] = field(default_factory=set)
    requests: list[accesslog.Request] = field(default_factory=list)

    def since(self, elapsed: float) -> str:
        """Where the next poll starts: the last timestamp, or the watch's start by the server's clock."""
        return self.last or f"{max(elapsed, 0.001):.3f}s"

    def feed(self, text: str) -> None:
        for line in text.splitlines():
            stamp, _, rest = line.partition(" ")
            if stamp < self.last or (stamp == self.last and line in self.at_last):
                continue
            if stamp > self.last:
                self.last, self.at_last = stamp, set()
            self.at_last.add(line)
            request = accesslog.parse_line(rest)
            if request is not None:
                self.requests.extend(accesslog.answered_by([request], self.address))


def _progress(app: str, summary: Summary, state: State, elapsed: float, seconds: float) -> str:
    return (f"watching {app}: {summary.requests} requests, {summary.errors} 5xx, {state.word} "
            f"({elapsed:.0f} s of {seconds:g} s)")


def watch(srv: Ctx, app_name: str, container: str, seconds: float, threshold: float,
          say: Callable[[str], None], address: str, *, nginx: str | None = None,
          min_requests: int = MIN_REQUESTS, now: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Watch the new version (container, answering nginx at address) for `seconds`:
    every POLL s its state and the requests it answered since the start (nginx's log),
    a progress line every REPORT_EVERY s. The first reason judge() gives, or None."""
    if seconds <= 0:
        return None
    if srv.run.dry_run:
        say(f"[dry-run] watch {app_name} for {seconds:g} s")
        return None
    nginx = nginx or container_name(srv, "nginx")
    log, start, first_restarts = LogWindow(address), now(), None
    next_report, warned = start + REPORT_EVERY, False
    while True:
        elapsed = now() - start
        res = srv.run.run(docker_cmd.logs_since(nginx, log.since(elapsed)), f"read {nginx}'s log",
                          check=False, mutates=False)
        if res.ok:
            log.feed(res.stdout)
        elif not warned:
            say(f"warning: cannot read {nginx}'s log (exit {res.exited}); watching {app_name}'s health only")
            warned = True
        text = inspect(srv, STATE, container)
        state = read_state(text or "")
        first_restarts = state.restarts if first_restarts is None else first_restarts
        summary = accesslog.summary_of(app_name, log.requests)
        reason = judge(summary, text, threshold, min_requests, restarts=state.restarts - first_restarts)
        if reason:
            return reason
        elapsed = now() - start
        if elapsed >= seconds:
            say(_progress(app_name, summary, state, min(elapsed, seconds), seconds))
            return None
        if now() >= next_report:
            say(_progress(app_name, summary, state, elapsed, seconds))
            next_report += REPORT_EVERY
        sleep(min(POLL, seconds - elapsed))
