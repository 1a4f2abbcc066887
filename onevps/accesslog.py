"""nginx's access log (nginx/nginx.conf, `log_format onevps`): one JSON object a
line, parsed into Requests and summarised per app over a time window (requests,
5xx, p50/p95 latency). Pure: the lines come from `docker logs` elsewhere.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

# nginx lists every upstream a request tried: "a, b" (next upstream), "a : b" (internal redirect).
_UPSTREAM_SEP = re.compile(r",\s*|\s+:\s+")


@dataclass(frozen=True)
class Request:
    """One request as nginx logged it. status is what nginx answered the client."""

    time: datetime  # when nginx finished it (timezone-aware, ms)
    host: str
    method: str
    uri: str  # the path only, no query string
    status: int
    request_time: float  # seconds, nginx's whole handling of it
    upstream_addr: str  # as logged: "" (nginx answered itself), "ip:port" or a list
    upstream_status: str
    upstream_response_time: str
    upstream_connect_time: str
    bytes_sent: int
    request_length: int

    @property
    def app(self) -> str:
        """The app: the first label of the host (kb.example.com: kb)."""
        return self.host.split(".", 1)[0].lower()

    @property
    def upstream(self) -> str:
        """The upstream that gave the answer (the last one tried); "" when none."""
        tried = [a for a in _UPSTREAM_SEP.split(self.upstream_addr.strip()) if a and a != "-"]
        return tried[-1] if tried else ""

    @property
    def is_5xx(self) -> bool:
        return 500 <= self.status <= 599


def parse_line(line: str) -> Request | None:
    """A Request from one line of the JSON log; None for anything else (error-log lines,
    the image's start-up messages, a truncated line)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        d = json.loads(text)
        return Request(
            time=datetime.fromisoformat(d["time"]), host=str(d["host"]), method=str(d["method"]),
            uri=str(d["uri"]), status=int(d["status"]), request_time=float(d["request_time"]),
            upstream_addr=str(d.get("upstream_addr", "")), upstream_status=str(d.get("upstream_status", "")),
            upstream_response_time=str(d.get("upstream_response_time", "")),
            upstream_connect_time=str(d.get("upstream_connect_time", "")),
            bytes_sent=int(d.get("bytes_sent", 0)), request_length=int(d.get("request_length", 0)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def parse(text: str) -> list[Request]:
    """Every request in `docker logs` output, in order; other lines are skipped."""
    return [r for r in map(parse_line, text.splitlines()) if r is not None]


def answered_by(requests: Iterable[Request], address: str) -> list[Request]:
    """The requests an upstream at address answered ("172.20.0.138" or "172.20.0.138:8000")."""
    return [r for r in requests if r.upstream and (r.upstream == address or r.upstream.rsplit(":", 1)[0] == address)]


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (share 0.95: p95) of values; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True)
class Summary:
    """One app's requests over a window of `seconds`."""

    app: str
    requests: int
    errors: int  # answered 5xx
    p50: float | None  # request_time, seconds; None without requests
    p95: float | None
    seconds: float

    @property
    def share(self) -> float:
        """The 5xx share, 0-1 (0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def per_minute(self) -> float:
        return self.requests * 60 / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors_per_minute(self) -> float:
        return self.errors * 60 / self.seconds if self.seconds > 0 else 0.0


def _in_window(requests: Iterable[Request], start: datetime | None, end: datetime | None) -> list[Request]:
    return [r for r in requests if (start is None or r.time >= start) and (end is None or r.time <= end)]


def _span(requests: Sequence[Request], start: datetime | None, end: datetime | None) -> float:
    """The window's length: start to end, or the requests' own span where either is open."""
    first = start or min((r.time for r in requests), default=None)
    last = end or max((r.time for r in requests), default=None)
    return max(0.0, (last - first).total_seconds()) if first and last else 0.0


def summary_of(app: str, requests: Iterable[Request], start: datetime | None = None,
               end: datetime | None = None) -> Summary:
    """All the given requests (in the window) counted as app's."""
    chosen = _in_window(requests, start, end)
    times = [r.request_time for r in chosen]
    return Summary(app=app, requests=len(chosen), errors=sum(r.is_5xx for r in chosen),
                   p50=percentile(times, 0.50), p95=percentile(times, 0.95),
                   seconds=_span(chosen, start, end))


def summarise(requests: Iterable[Request], start: datetime | None = None,
              end: datetime | None = None) -> dict[str, Summary]:
    """Per app (the host's first label), over the window start..end (either open), sorted by app."""
    by_app: dict[str, list[Request]] = {}
    for r in _in_window(requests, start, end):
        by_app.setdefault(r.app, []).append(r)
    return {app: summary_of(app, rs, start, end) for app, rs in sorted(by_app.items())}
