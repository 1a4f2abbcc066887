"""`inv top` / `fab top`: what every app and shared service costs, one table sorted by memory.

One refresh runs `docker ps`, `docker container inspect` (all the project's containers
at once), `docker stats --no-stream` (the running ones at once) and `docker logs --since`
of nginx; image creation times and disk bytes (`docker system df --verbose`) are read
once and kept across --watch refreshes. Where the engine gives no memory reading, one
shell command reads the containers' memory cgroups. Formats: onevps.commands.top.
The rows, the table and the JSON: onevps.topdata.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, TextIO

from . import disk as disk_mod, sleep
from .commands import docker_cmd
from .commands import top as top_cmd
from .errors import OnevpsError
from .registry import Registry
from .runner import Runner
from .server import Ctx, require_docker_on_server
from .topdata import (SERVICE_LABEL, add_traffic, build_rows, json_lines, mark_sleeping, parse_cgroup,
                      parse_created, parse_stats, render, report, traffic)

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen


# --------------------------------------------------------------- collecting --

@dataclass
class Source:
    """Where top reads (a runner here or over SSH, the project's name, apps and DOMAIN), and
    what it keeps between refreshes: image creation times, and the disk bytes (read once)."""

    runner: Runner
    project_name: str
    reg: Registry
    domain: str
    hint: str  # what to do when the project has no container
    created: dict[str, str | None] = field(default_factory=dict)
    disk: dict[str, int] | None = None
    # The apps put to sleep (issue 15's flag files), asked at each refresh: their stopped
    # containers show as "sleeping" (topdata.mark_sleeping). None yet.
    sleeping: Callable[[], Iterable[str]] = lambda: ()


def _read(src: Source, argv: list[str], step: str) -> str:
    """A read whose failure leaves its columns empty (a container gone between two commands)."""
    res = src.runner.run(argv, step, check=False, mutates=False)
    return res.stdout if res.ok or res.stdout.strip() else ""


def _containers(src: Source) -> list[dict]:
    ids = src.runner.run(docker_cmd.project_containers(src.project_name), "list the project's containers",
                         mutates=False).stdout.split()
    if not ids:
        raise OnevpsError(f"no containers of project {src.project_name}", src.hint)
    return [c for c in json_lines(_read(src, top_cmd.containers(ids), "inspect the containers")) if c.get("Id")]


def _cached_reads(src: Source, images: set[str]) -> None:
    """Image creation times not seen yet; the disk bytes on the first refresh."""
    missing = sorted(i for i in images if i and i not in src.created)
    if missing:
        found = parse_created(_read(src, top_cmd.images_created(missing), "inspect the images"))
        src.created.update({i: found.get(i) for i in missing})  # one that is gone is not asked again
    if src.disk is None:
        df = _read(src, docker_cmd.system_df(), "read docker's disk usage")
        src.disk = disk_mod.unique_sizes(df) if df.strip() else {}


def _memory_reads(src: Source, containers: list[dict]) -> tuple[dict, dict[int, int]]:
    """docker stats of the running containers; their memory cgroups where it read none."""
    running = [c for c in containers if c.get("State") == "running"]
    if not running:
        return {}, {}
    stats = parse_stats(_read(src, top_cmd.stats([c["Id"] for c in running]), "read memory and CPU"))
    pids = [int(c.get("Pid") or 0) for c in running if stats.get(c["Id"][:12], (None,))[0] is None]
    pids = [p for p in pids if p > 0]
    if not pids:
        return stats, {}
    return stats, parse_cgroup(_read(src, top_cmd.cgroup_memory(pids), "read the containers' memory cgroups"))


def collect(src: Source, minutes: float, now: datetime | None = None) -> dict:
    """One reading of the project: topdata.report() of its rows."""
    containers = _containers(src)
    stats, cgroup = _memory_reads(src, containers)
    _cached_reads(src, {c.get("Image", "") for c in containers})
    when = now or datetime.now(timezone.utc)
    rows = build_rows(containers, stats, src.created, src.disk or {}, when, cgroup)
    nginx = [c for c in containers if (c.get("Labels") or {}).get(SERVICE_LABEL) == "nginx"
             and c.get("State") == "running"]
    log = _read(src, top_cmd.logs_window(nginx[0]["Id"], int(minutes * 60)), "read nginx's access log") if nginx else ""
    per_app, other = traffic(log, src.reg, src.domain, minutes)
    for row in rows:
        if row.kind == "app":
            add_traffic(row, per_app.get(row.name), minutes)
    return report(mark_sleeping(rows, src.sleeping()), minutes, other, when)


# ----------------------------------------------------------------- printing --

def text_of(data: dict, as_json: bool, compact: bool = False) -> str:
    if as_json:
        return json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=2)
    return render(data)


def watch(refresh: Callable[[], str], interval: float, out: TextIO, tty: bool,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Print refresh() every interval seconds until Ctrl-C (then return quietly). On a
    terminal each reading replaces the last (ANSI clear); elsewhere they follow each other."""
    stopped: list[bool] = []

    def on_interrupt(signum: int, frame: object) -> None:
        stopped.append(True)  # a docker command interrupted under invoke fails instead of raising
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        while True:
            try:
                text = refresh()
            except OnevpsError:
                if stopped:
                    return
                raise
            if stopped:
                return
            out.write((CLEAR if tty else "") + text + "\n" + ("" if tty else "\n"))
            out.flush()
            sleep(interval)
    except KeyboardInterrupt:
        return
    finally:
        signal.signal(signal.SIGINT, previous)


def show(src: Source, minutes: float, as_json: bool = False, every: float | None = None,
         out: TextIO | None = None) -> None:
    """`top` once, or every `every` seconds until Ctrl-C."""
    stream = out or sys.stdout
    if every is None:
        stream.write(text_of(collect(src, minutes), as_json) + "\n")
        return
    watch(lambda: text_of(collect(src, minutes), as_json, compact=True), every, stream,
          tty=stream.isatty())


def on_server(srv: Ctx, minutes: float, as_json: bool = False, every: float | None = None) -> None:
    """`fab top`: the same table for the server's project, read over SSH."""
    require_docker_on_server(srv)
    src = Source(srv.run, srv.rs.project_name, srv.reg, srv.rs.domain, hint="deploy first: `fab deploy --all`",
                 sleeping=lambda: sleep.asleep(srv.run, srv.rs.project_name))
    show(src, minutes, as_json, every, out=srv.run.out)  # type: ignore[arg-type]
