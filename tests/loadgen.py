"""A small steady load through nginx, for the deploy tests and benchmarks.

Threads send GET requests to http://127.0.0.1:<port><path> with the Host
header of one app and count every answer that is not a 200 (and every
exception) as a failed request.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter


class Load:
    def __init__(self, port: int, host: str, path: str = "/health", threads: int = 3, timeout: float = 30):
        self.url, self.host, self.timeout = f"http://127.0.0.1:{port}{path}", host, timeout
        self.stop = threading.Event()
        self.status: Counter = Counter()
        self.versions: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.seconds = 0.0

    def _one(self) -> tuple[object, str | None, str | None]:
        req = urllib.request.Request(self.url, headers={"Host": self.host})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:
                body = res.read()
                try:
                    version = json.loads(body).get("version")
                except (ValueError, AttributeError):
                    version = None
                return res.status, version, None
        except urllib.error.HTTPError as err:
            return err.code, None, f"{err.code}: {err.read()[:80]!r}"
        except Exception as exc:  # noqa: BLE001 - every failure counts
            return "exception", None, repr(exc)

    def _run(self) -> None:
        while not self.stop.is_set():
            status, version, error = self._one()
            with self._lock:
                self.status[status] += 1
                if version is not None:
                    self.versions.append(version)
                if error:
                    self.errors.append(error)

    def __enter__(self) -> "Load":
        self._t0 = time.monotonic()
        for t in self.threads:
            t.start()
        time.sleep(1)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1)
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        self.seconds = time.monotonic() - self._t0

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.status.items() if code != 200)

    @property
    def total(self) -> int:
        return sum(self.status.values())
