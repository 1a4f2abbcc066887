"""The pure half of `inv top` / `fab top` (onevps.top runs the commands): Docker's
output parsed, one Row per container, nginx's requests per app over the window,
sorting, totals, the table and the JSON object. No I/O here.

Memory used: `docker stats`' MemUsage (binary units, "12.5MiB / 256MiB"); where the
engine reads no cgroup ("0B / 0B") the container's own memory cgroup, read the way
`docker stats` counts it (usage minus inactive page cache). Limit: `docker inspect`'s
HostConfig.Memory (exact bytes). Disk: the bytes only the container's image holds.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from . import accesslog, disk as disk_mod
from .registry import Registry

MEMORY_SOURCE = ("docker stats (MemUsage), or the container's memory cgroup where the engine reads none "
                 "(each row's memory_source); limit: docker inspect (HostConfig.Memory)")
DISK_SOURCE = "docker system df --verbose (UniqueSize: the bytes only the container's image holds)"
TIER_LABEL = "onevps.tier"
SERVICE_LABEL = "com.docker.compose.service"

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
          "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_MEM = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|kB|B)\s*$")


@dataclass
class Row:
    name: str  # the compose service (the container's name when two share one)
    kind: str  # "app" (label onevps.tier) or "service"
    state: str  # running, exited, restarting, ... (sleeping: mark_sleeping)
    memory: int | None  # bytes used; None: not running, or no reading
    memory_limit: int | None  # bytes; None: no limit
    cpu: float | None  # percent of one CPU
    restarts: int
    image_created: str | None
    image_age_seconds: int | None
    disk: int | None  # bytes only its image holds
    requests: int | None = None  # apps only: in the window
    errors: int | None = None  # answered 5xx
    requests_per_min: float | None = None
    errors_per_min: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    container: str = ""
    memory_source: str | None = None  # "docker stats" or "cgroup"


# ------------------------------------------------------------------ parsing --

def parse_memory(text: str) -> int | None:
    """One side of MemUsage ("12.5MiB", "1.2GiB", "0B", SI units too) in bytes; None for "--"."""
    match = _MEM.match(text or "")
    return int(float(match.group(1)) * _UNITS[match.group(2)]) if match else None


def parse_mem_usage(text: str) -> tuple[int | None, int | None]:
    """docker stats' "12.5MiB / 256MiB" -> (used, limit) in bytes."""
    used, _, limit = (text or "").partition("/")
    return parse_memory(used), parse_memory(limit)


def parse_percent(text: str) -> float | None:
    try:
        return float((text or "").strip().rstrip("%"))
    except ValueError:
        return None


def json_lines(text: str) -> list[dict]:
    """One JSON object a line (a `{{json ...}}` format); other lines are skipped."""
    items = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            items.append(item)
    return items


def parse_stats(text: str) -> dict[str, tuple[int | None, float | None]]:
    """`docker stats --format '{{json .}}'` -> short ID (12) -> (memory used, CPU %).
    "0B / 0B" (a running container always has a limit) means the engine read no cgroup: None."""
    readings = {}
    for item in json_lines(text):
        used, limit = parse_mem_usage(str(item.get("MemUsage", "")))
        if not limit:
            used = None
        cpu = parse_percent(str(item.get("CPUPerc", ""))) if used is not None else None
        readings[str(item.get("ID", ""))[:12]] = (used, cpu)
    return readings


def parse_cgroup(text: str) -> dict[int, int]:
    """commands.top.cgroup_memory's lines -> PID -> bytes used: the cgroup's usage less its
    inactive page cache, as `docker stats` counts it."""
    used = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit() and parts[2].isdigit():
            usage = int(parts[2])
            inactive = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
            used[int(parts[0])] = usage - inactive if inactive < usage else usage
    return used


def parse_created(text: str) -> dict[str, str]:
    """Image ID -> its Created time."""
    return {str(i.get("Id")): str(i.get("Created")) for i in json_lines(text) if i.get("Id")}


def age_seconds(created: str | None, now: datetime) -> int | None:
    """Seconds from Docker's RFC 3339 time (nanoseconds, Z) to now."""
    if not created:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", created.replace("Z", "+00:00"))
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return max(0, int((now - stamp).total_seconds()))


# ------------------------------------------------------------------ traffic --

def app_hosts(reg: Registry, domain: str) -> dict[str, str]:
    """Host name -> app, as nginx routes them: NAME.DOMAIN and the app's extra domain."""
    hosts = {f"{a.name}.{domain}".lower(): a.name for a in reg.apps}
    hosts.update({a.domain.lower(): a.name for a in reg.apps if a.domain})
    return hosts


def traffic(log_text: str, reg: Registry, domain: str, minutes: float) -> tuple[dict[str, accesslog.Summary], int]:
    """Per app, its requests in nginx's log lines of the window (rates per minute over the
    whole window, not the requests' own span); and the count of requests for no app's host."""
    hosts = app_hosts(reg, domain)
    by_app: dict[str, list[accesslog.Request]] = {}
    other = 0
    for request in accesslog.parse(log_text):
        app = hosts.get(request.host.lower())
        if app is None:
            other += 1
        else:
            by_app.setdefault(app, []).append(request)
    seconds = minutes * 60
    return {app: dataclasses.replace(accesslog.summary_of(app, rs), seconds=seconds)
            for app, rs in by_app.items()}, other


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def add_traffic(row: Row, summary: accesslog.Summary | None, minutes: float) -> None:
    """An app's request columns (zero without requests; shared services keep None)."""
    summary = summary or accesslog.Summary(row.name, 0, 0, None, None, minutes * 60)
    row.requests, row.errors = summary.requests, summary.errors
    row.requests_per_min = round(summary.per_minute, 2)
    row.errors_per_min = round(summary.errors_per_minute, 2)
    row.p50_ms, row.p95_ms = _ms(summary.p50), _ms(summary.p95)


# --------------------------------------------------------------------- rows --

def names_of(containers: list[dict]) -> dict[str, str]:
    """Container ID -> its row name: the compose service, or the container's name when two share one."""
    own = {c["Id"]: c["Name"].lstrip("/") for c in containers}
    service = {c["Id"]: (c.get("Labels") or {}).get(SERVICE_LABEL) or own[c["Id"]] for c in containers}
    shared = {name for name in service.values() if list(service.values()).count(name) > 1}
    return {cid: own[cid] if name in shared else name for cid, name in service.items()}


def _memory(c: dict, stats: dict[str, tuple[int | None, float | None]],
            cgroup: dict[int, int]) -> tuple[int | None, float | None, str | None]:
    """(memory, CPU %, where the memory figure came from) of one container."""
    if c.get("State") != "running":
        return None, None, None
    memory, cpu = stats.get(c["Id"][:12], (None, None))
    if memory is not None:
        return memory, cpu, "docker stats"
    pid = int(c.get("Pid") or 0)
    return (cgroup[pid], None, "cgroup") if pid in cgroup else (None, None, None)


def build_rows(containers: list[dict], stats: dict[str, tuple[int | None, float | None]],
               created: dict[str, str | None], disk: dict[str, int], now: datetime,
               cgroup: dict[int, int] | None = None) -> list[Row]:
    """One row per container (request columns empty: add_traffic fills the apps')."""
    names = names_of(containers)
    rows = []
    for c in containers:
        memory, cpu, source = _memory(c, stats, cgroup or {})
        when = created.get(c.get("Image", ""))
        rows.append(Row(
            name=names[c["Id"]], kind="app" if TIER_LABEL in (c.get("Labels") or {}) else "service",
            state=str(c.get("State", "?")), memory=memory, memory_limit=int(c.get("Memory") or 0) or None,
            cpu=cpu, restarts=int(c.get("RestartCount") or 0), image_created=when,
            image_age_seconds=age_seconds(when, now), disk=disk.get(c.get("Image", "")),
            container=c["Name"].lstrip("/"), memory_source=source))
    return rows


def mark_sleeping(rows: Iterable[Row], asleep: Iterable[str]) -> list[Row]:
    """Apps put to sleep (the names in asleep) that are not running show as "sleeping"."""
    names = set(asleep)
    for row in rows:
        if row.name in names and row.state != "running":
            row.state = "sleeping"
    return list(rows)


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    """Largest memory first; rows without a reading last; then by name."""
    return sorted(rows, key=lambda r: (r.memory is None, -(r.memory or 0), r.name))


def _total(values: Iterable[float | int | None]) -> float | int:
    return sum(v for v in values if v is not None)


def totals(rows: list[Row]) -> dict:
    return {
        "memory": _total(r.memory for r in rows),
        "cpu": round(_total(r.cpu for r in rows), 2),
        "requests": _total(r.requests for r in rows),
        "errors": _total(r.errors for r in rows),
        "requests_per_min": round(_total(r.requests_per_min for r in rows), 2),
        "errors_per_min": round(_total(r.errors_per_min for r in rows), 2),
        "disk": _total(r.disk for r in rows),
        "containers": len(rows),
        "running": sum(r.state == "running" for r in rows),
    }


def report(rows: list[Row], minutes: float, other_requests: int, until: datetime) -> dict:
    """The whole reading: rows sorted by memory, totals, the window."""
    ordered = sort_rows(rows)
    return {
        "window": {"minutes": minutes, "seconds": int(minutes * 60), "until": until.isoformat(timespec="seconds"),
                   "other_requests": other_requests},
        "rows": [dataclasses.asdict(r) for r in ordered],
        "totals": totals(ordered),
        "sources": {"memory": MEMORY_SOURCE, "disk": DISK_SOURCE, "requests": "nginx's JSON access log"},
    }


# ---------------------------------------------------------------- rendering --

def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _num(value: float | None, fmt: str = "{:.1f}", unit: str = "") -> str:
    return "-" if value is None else fmt.format(value) + unit


def age_text(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


HEADER = ("NAME", "KIND", "STATE", "MEMORY", "LIMIT", "CPU%", "REQ/MIN", "5XX/MIN", "P50", "P95",
          "RESTARTS", "IMAGE AGE", "DISK")


def _cells(r: dict) -> tuple[str, ...]:
    disk = "-" if r["disk"] is None else disk_mod.human(r["disk"])
    return (r["name"], r["kind"], r["state"], mib(r["memory"]), mib(r["memory_limit"]), _num(r["cpu"], "{:.2f}"),
            _num(r["requests_per_min"]), _num(r["errors_per_min"]), _num(r["p50_ms"], "{:.0f}", " ms"),
            _num(r["p95_ms"], "{:.0f}", " ms"), str(r["restarts"]), age_text(r["image_age_seconds"]), disk)


def render(data: dict) -> str:
    """The table: a row per container, largest memory first, then the totals."""
    t, w = data["totals"], data["window"]
    total = ("TOTAL", "", f"{t['running']}/{t['containers']} running", mib(t["memory"]), "", f"{t['cpu']:.2f}",
             f"{t['requests_per_min']:.1f}", f"{t['errors_per_min']:.1f}", "", "", "", "", disk_mod.human(t["disk"]))
    lines = [_columns([HEADER, *[_cells(r) for r in data["rows"]], total])]
    lines.append(f"requests: the last {w['minutes']:g} min of nginx's access log ({t['requests']} for apps, "
                 f"{w['other_requests']} for other hosts), until {w['until']}")
    return "\n".join(lines)


def _columns(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned text columns, right-aligned figures, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    left = {0, 1, 2}
    return "\n".join("  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
                     .rstrip() for row in rows)


