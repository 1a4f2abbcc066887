#!/usr/bin/env python3
"""What the Docker API proxy (dockerfiles/waker/onevps_dockerproxy.py) adds
to a call (not a test).

    .venv/bin/python benchmarks/dockerproxy.py [--calls 200] [--cycles 5] [--json]

Starts the proxy as a local process in front of /var/run/docker.sock and one
throwaway container (h15px-bench-app, the python:3.11-slim stand-in, labelled
as an app of the project h15px-bench); then times the same calls straight to
the engine and through the proxy: /_ping, the app's inspect, the list, and
--cycles stop+start cycles of the app. Prints median and p95 in milliseconds
(or every figure with --json), then removes the container and stops the proxy.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
PROXY = ROOT / "dockerfiles" / "waker" / "onevps_dockerproxy.py"
sys.path.insert(0, str(PROXY.parent))
from onevps_unixhttp import UnixHTTPConnection  # noqa: E402
ENGINE = "/var/run/docker.sock"
NAME = "h15px-bench-app"
# Prints "ready" once its SIGTERM handler is set: a stop sent before that waits the full t.
SERVE = ["python", "-c", "import signal, sys; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
         "print('ready', flush=True); signal.pause()"]
LIST = "/containers/json?all=1&filters=" + quote(json.dumps({"label": ["com.docker.compose.project=h15px-bench",
                                                                        "onevps.tier"]}))


def timed(sock: str, method: str, target: str, expect: tuple[int, ...]) -> float:
    start = time.perf_counter()
    conn = UnixHTTPConnection(sock, timeout=120)
    conn.request(method, target)
    res = conn.getresponse()
    res.read()
    conn.close()
    if res.status not in expect:
        sys.exit(f"error: {method} {target} answered {res.status}")
    return (time.perf_counter() - start) * 1000


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.95))], 2)}


READY = [1]  # "ready" lines the app's log should hold


def wait_ready() -> None:
    while subprocess.run(["docker", "logs", NAME], capture_output=True, text=True).stdout.count("ready") < READY[0]:
        time.sleep(0.05)


def measure(proxy_sock: str, calls: int, cycles: int) -> dict:
    out = {}
    for label, method, target, expect in (("ping", "GET", "/_ping", (200,)),
                                          ("inspect", "GET", f"/containers/{NAME}/json", (200,)),
                                          ("list", "GET", LIST, (200,))):
        for via, sock in (("engine", ENGINE), ("proxy", proxy_sock)):
            out[f"{label} via {via}"] = summary([timed(sock, method, target, expect) for _ in range(calls)])
    for via, sock in (("engine", ENGINE), ("proxy", proxy_sock)):
        stops, starts = [], []
        for _ in range(cycles):
            wait_ready()
            stops.append(timed(sock, "POST", f"/containers/{NAME}/stop?t=10", (204,)))
            starts.append(timed(sock, "POST", f"/containers/{NAME}/start", (204,)))
            READY[0] += 1
        out[f"stop via {via}"], out[f"start via {via}"] = summary(stops), summary(starts)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="calls per read-only kind and path (default 200)")
    parser.add_argument("--cycles", type=int, default=5, help="stop+start cycles per path (default 5)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args()
    run_dir = tempfile.mkdtemp(prefix="h15px-bench-")
    sock = os.path.join(run_dir, "docker.sock")
    subprocess.run(["docker", "rm", "--force", NAME], capture_output=True)
    subprocess.run(["docker", "run", "--detach", "--name", NAME, "--label", "h15px=bench",
                    "--label", "com.docker.compose.project=h15px-bench", "--label", "com.docker.compose.service=app",
                    "--label", "onevps.tier=base",
                    "python:3.11-slim", *SERVE], check=True, capture_output=True)
    proxy = subprocess.Popen([sys.executable, str(PROXY)], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "ONEVPS_PROJECT": "h15px-bench", "ONEVPS_PROXY_SOCKET": sock})
    try:
        proxy.stderr.readline()  # the start line: the socket listens
        figures = measure(sock, args.calls, args.cycles)
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=60)
        subprocess.run(["docker", "rm", "--force", NAME], capture_output=True)
        os.rmdir(run_dir)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for what, s in figures.items():
            print(f"{what:<20} median {s['median_ms']:>8.2f} ms   p95 {s['p95_ms']:>8.2f} ms   (n={s['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
