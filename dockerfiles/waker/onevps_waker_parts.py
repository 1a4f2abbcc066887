"""The waker's pure parts (durations, nginx's log lines, Docker's container
lists, when an app may sleep), its settings and its state per app, and the
reader of nginx's access log. Standard library only."""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from onevps_waker_http import HOP_BY_HOP

SLEEP_LABEL = "onevps.sleep_after"
SERVICE_LABEL = "com.docker.compose.service"
PROJECT_LABEL = "com.docker.compose.project"
LOG_MAX = 1 << 20  # the access log is truncated past this many bytes
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def parse_duration(text: str) -> float:
    """Seconds in "15m", "90s", "2h", "1d" or "45" (seconds), as onevps.sleep.parse_duration
    writes and checks them; ValueError otherwise."""
    m = _DURATION.fullmatch(str(text).strip().lower())
    if not m:
        raise ValueError(f"{text!r} is not a duration (15m, 90s, 2h, 1d or 45)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def access_line(line: str) -> tuple[str, float] | None:
    """(app, epoch seconds) of one line of nginx's `log_format onevps`; None for anything else."""
    try:
        d = json.loads(line)
        return str(d["host"]).split(".", 1)[0].lower(), datetime.fromisoformat(d["time"]).timestamp()
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def should_sleep(now: float, last_activity: float, sleep_after: float, connections: int) -> bool:
    """Idle for sleep_after seconds and no connection open."""
    return connections == 0 and now - last_activity >= sleep_after


def forwardable(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """headers without the hop-by-hop ones (and those Connection names) and Content-Length
    (the body's framing is set anew); Host and X-Forwarded-* stay."""
    named = {t.strip().lower() for k, v in headers if k.lower() == b"connection" for t in v.split(b",")}
    drop = HOP_BY_HOP | named | {b"content-length"}
    return [(k, v) for k, v in headers if k.lower() not in drop]


def demux_logs(raw: bytes) -> str:
    """Docker's log stream (8-byte frame headers unless the container has a TTY) as text."""
    out, i = [], 0
    while len(raw) - i >= 8 and raw[i] in (0, 1, 2) and raw[i + 1:i + 4] == b"\0\0\0":
        size = struct.unpack(">I", raw[i + 4:i + 8])[0]
        out.append(raw[i + 8:i + 8 + size])
        i += 8 + size
    return (b"".join(out) + raw[i:]).decode("utf-8", "replace")


def wants_page(method: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """A browser's GET (Accept names text/html): it may get the "waking up" page."""
    return method == "GET" and any(k.lower() == b"accept" and b"text/html" in v for k, v in headers)


def container_app(c: dict, network_suffix: str = "app-network") -> tuple[str, str, float, bool, str] | None:
    """(service, id, sleep_after, running, ip) of a listed container with a valid sleep label."""
    labels = c.get("Labels") or {}
    try:
        after = parse_duration(labels[SLEEP_LABEL])
    except (KeyError, ValueError):
        return None
    return labels.get(SERVICE_LABEL, ""), c["Id"], after, c.get("State") == "running", network_ip(c, network_suffix)


def starting(c: dict) -> bool:
    """A listed container that runs but has not passed its first Docker health check yet."""
    return c.get("State") == "running" and "(health: starting)" in str(c.get("Status", ""))


def network_ip(c: dict, network_suffix: str = "app-network") -> str:
    """A listed or inspected container's IP on the network whose name ends with network_suffix."""
    nets = (c.get("NetworkSettings") or {}).get("Networks") or {}
    return next((n.get("IPAddress") or "" for name, n in nets.items() if name.endswith(network_suffix)), "")


def _at_least_one(raw) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError(raw)
    return value


@dataclass
class Settings:
    """The waker's environment (see from_env)."""

    project: str = ""
    proxy_socket: str = "/run/onevps-docker/docker.sock"
    state_dir: Path = Path("/var/lib/onevps")
    wake_timeout: float = 60.0
    sleep_check_every: float = 5.0
    app_port: int = 8000
    activity_port: int = 8001
    app_host: str = ""  # "" = the container's IP on app-network (tests: 127.0.0.1)
    # The peers served (nginx; 127.0.0.1 for the health check): anyone else is reset unread.
    clients: frozenset[str] = frozenset({"127.0.0.1"})
    max_connections: int = 128  # at once; past it 503 + Retry-After (about 0.3 MiB each at worst)
    max_held: int = 100  # requests waiting for wakes, all apps together; past it 503 + Retry-After

    @classmethod
    def from_env(cls, env: dict) -> "Settings":
        """ONEVPS_PROJECT, ONEVPS_PROXY_SOCKET, ONEVPS_STATE_DIR, WAKE_TIMEOUT, SLEEP_CHECK_EVERY,
        APP_PORT, ACTIVITY_PORT, APP_HOST, WAKER_CLIENTS (addresses, comma-separated, besides
        127.0.0.1), WAKER_MAX_CONNECTIONS, WAKER_MAX_HELD; ValueError naming the bad one."""
        d = cls()
        out = {"project": env.get("ONEVPS_PROJECT", d.project), "app_host": env.get("APP_HOST", d.app_host),
               "proxy_socket": env.get("ONEVPS_PROXY_SOCKET", d.proxy_socket),
               "state_dir": Path(env.get("ONEVPS_STATE_DIR", str(d.state_dir))),
               "clients": d.clients | {a.strip() for a in env.get("WAKER_CLIENTS", "").split(",") if a.strip()}}
        for key, name, kind in (("wake_timeout", "WAKE_TIMEOUT", parse_duration),
                                ("sleep_check_every", "SLEEP_CHECK_EVERY", parse_duration),
                                ("app_port", "APP_PORT", int), ("activity_port", "ACTIVITY_PORT", int),
                                ("max_connections", "WAKER_MAX_CONNECTIONS", _at_least_one),
                                ("max_held", "WAKER_MAX_HELD", _at_least_one)):
            try:
                out[key] = kind(env.get(name, getattr(d, key)))
            except ValueError:
                raise ValueError(f"{name}={env.get(name)!r} is not valid (a number)") from None
        return cls(**out)


@dataclass
class App:
    """One sleep-enabled app as the waker knows it."""

    name: str
    id: str
    sleep_after: float
    ip: str = ""
    state: str = "awake"  # sleeping | awake | waking | stopping | stopped
    wakes: int = 0
    last_wake_seconds: float = 0.0
    last_activity: float = 0.0  # epoch seconds; the log, the app and wakes move it on
    held: int = 0  # requests waiting for it
    wake_task: asyncio.Task | None = None
    stop_task: asyncio.Task | None = None

    def view(self, now: float) -> dict:
        return {"state": self.state, "sleep_after": self.sleep_after, "idle": round(now - self.last_activity, 3),
                "wakes": self.wakes, "last_wake_seconds": round(self.last_wake_seconds, 3)}



class AccessLog:
    """nginx's activity log: read on from where the last read ended, truncated past LOG_MAX."""

    def __init__(self, path: Path, say) -> None:
        self.path, self.say, self.offset, self.warned = path, say, 0, False

    def read(self) -> dict[str, float]:
        """{app: time of its last new line}."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.offset = 0 if size < self.offset else self.offset
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except FileNotFoundError:
            return {}
        data = data[:data.rfind(b"\n") + 1]  # a line nginx is still writing waits for the next read
        self.offset += len(data)
        last: dict[str, float] = {}
        for hit in filter(None, map(access_line, data.decode("utf-8", "replace").splitlines())):
            last[hit[0]] = max(last.get(hit[0], 0.0), hit[1])
        if self.offset > LOG_MAX:
            try:
                os.truncate(self.path, 0)
                self.offset = 0
            except OSError as exc:
                if not self.warned:
                    self.say(f"cannot truncate {self.path} ({exc}): it grows")
                self.warned = True
        return last
