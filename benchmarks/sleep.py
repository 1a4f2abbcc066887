#!/usr/bin/env python3
"""Benchmark sleeping apps on the 21-app stack (not a test).

    .venv/bin/python benchmarks/sleep.py [--wakes 20] [--json]

In a copy of this checkout (its own Compose project, ports and subnet, like
benchmarks/stack21.py): grow to 21 apps (15 base, 6 ML), give every app the
label onevps.sleep_after=SLEEP_AFTER, `inv up`, then measure:

 1. memory of the whole stack (`docker stats`, every container of the
    project) with every app awake (each app's /health asked through nginx
    every second keeps it awake), then with the 15 base apps asleep (only the
    ML apps asked), then with all 21 asleep;
 2. wake time of a base app and of an ML app: --wakes times, wait until it
    sleeps, then one GET /health through nginx, timed until its answer;
 3. failed first requests: --rounds times 50 concurrent first requests (25 GET,
    25 POST with a body checked by its sha256 receipt) to a sleeping
    portfolio.

Figures go to benchmarks/results/sleep.json (and are printed).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack21  # noqa: E402  (its copy, grow and docker helpers)

from onevps import composefile, registry  # noqa: E402

ROOT = stack21.ROOT
RESULTS = ROOT / "benchmarks" / "results"
BIN = stack21.BIN
SLEEP_AFTER = "5s"
ENV = {**stack21.LOCAL_ENV, "COMPOSE_PROJECT_NAME": "onevps-sleepbench", "IMAGE_NAMESPACE": "onevps-sleepbench",
       "HTTP_PORT": "18780", "HTTPS_PORT": "18781", "NETWORK_PREFIX": "172.23.0", "CHROMA_SUBNET": "172.23.1.0/28",
       "DOMAIN": "localhost"}
PROJECT = ENV["COMPOSE_PROJECT_NAME"]
PORT = int(ENV["HTTP_PORT"])
say = stack21.say


def get(app: str, path: str = "/health", body: bytes | None = None, timeout: float = 120) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    try:
        headers = {"Host": f"{app}.localhost"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        res = conn.getresponse()
        return res.status, res.read()
    except OSError as exc:
        return 0, str(exc).encode()
    finally:
        conn.close()


def every_app_sleeps(repo: Path) -> list[str]:
    """Put onevps.sleep_after on every app's compose entry; re-render the routes."""
    path = repo / "compose" / "docker-compose.yml"
    data = composefile.load(path)
    names = registry.from_data(data).names()
    for name in names:
        data["services"][name]["labels"]["onevps.sleep_after"] = SLEEP_AFTER
    composefile.atomic_write(path, composefile.dumps(data))
    stack21.run([str(BIN / "inv"), "routes"], repo, ENV, "inv routes")
    return names


def memory_mib(repo: Path) -> dict[str, float]:
    """MiB per running container of the project, as `inv top --json` reads it (docker stats, or the
    container's memory cgroup where the engine reports none: see README "inv top")."""
    data = json.loads(stack21.run([str(BIN / "inv"), "top", "--json", "--minutes", "1"], repo, ENV, "inv top"))
    return {r["name"]: round(r["memory"] / 2**20, 1) for r in data["rows"]
            if r["state"] == "running" and r["memory"] is not None}


def running_apps(names: list[str], healthy: bool = False) -> set[str]:
    """The apps whose container runs (with healthy: and has passed its Docker health check)."""
    out = stack21.docker("ps", "--filter", f"label=com.docker.compose.project={PROJECT}",
                         *(["--filter", "health=healthy"] if healthy else []), "--format", "{{.Names}}")
    return {n for n in names if f"{PROJECT}-{n}-1" in out.split()}


class Toucher:
    """Asks each app in `apps` for /health through nginx every second, one thread per app (a
    slow wake of one app must not leave the others untouched): keeps them awake."""

    def __init__(self, names: list[str]) -> None:
        self.apps: set[str] = set()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(name,), daemon=True) for name in names]
        for thread in self.threads:
            thread.start()

    def loop(self, name: str) -> None:
        while not self.stop.is_set():
            if name in self.apps:
                get(name)
            self.stop.wait(1)


def wait_until(check, within: float, what: str) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > within:
            raise SystemExit(f"error: {what} did not happen within {within} s")
        time.sleep(0.5)
    return time.monotonic() - t0


def phase(label: str, repo: Path, names: list[str], result: dict) -> None:
    time.sleep(5)  # settle
    mem = memory_mib(repo)
    result["memory"][label] = {"total_mib": round(sum(mem.values()), 1), "running": len(running_apps(names)),
                               "containers": mem}
    say(f"{label}: {sum(mem.values()):,.1f} MiB over {len(mem)} running containers")


def wake_times(app: str, n: int, names: list[str]) -> list[float]:
    seconds = []
    for i in range(n):
        wait_until(lambda: app not in running_apps(names), 120, f"{app} falling asleep")
        time.sleep(0.5)
        t0 = time.monotonic()
        status, body = get(app)
        if status != 200:
            raise SystemExit(f"error: waking {app} answered {status}: {body[:300]!r}")
        seconds.append(round(time.monotonic() - t0, 3))
        say(f"  woke {app} in {seconds[-1]:.2f} s ({i + 1} of {n})")
    return seconds


def first_requests(app: str, rounds: int, names: list[str]) -> dict:
    failed, total = {"GET": 0, "POST": 0}, {"GET": 0, "POST": 0}

    def one(n: int) -> tuple[str, bool]:
        if n % 2:
            body = json.dumps({"n": n, "pad": "x" * n}).encode()
            status, answer = get(app, "/api/echo", body)
            ok = status == 200 and json.loads(answer).get("sha256") == hashlib.sha256(body).hexdigest()
            return "POST", ok
        return "GET", get(app)[0] == 200

    for _ in range(rounds):
        wait_until(lambda: app not in running_apps(names), 120, f"{app} falling asleep")
        time.sleep(0.5)
        with ThreadPoolExecutor(50) as pool:
            for method, ok in pool.map(one, range(50)):
                total[method] += 1
                failed[method] += 0 if ok else 1
    return {"requests": total, "failed": failed}


def stats(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2),
            "p95": round(ordered[max(0, round(0.95 * len(ordered)) - 1)], 2), "max": round(ordered[-1], 2)}


def measure(repo: Path, args, result: dict) -> None:
    names = every_app_sleeps(repo)
    result["apps"] = names
    reg = registry.load(repo / "compose" / "docker-compose.yml")
    base, ml = [a.name for a in reg.by_tier("base")], [a.name for a in reg.by_tier("ml")]
    stack21.reuse_tiers(repo, ENV)
    say("inv up: 21 apps + the shared services")
    stack21.run([str(BIN / "inv"), "up"], repo, ENV, "inv up")
    toucher = Toucher(names)
    toucher.apps = set(names)
    try:
        # Every app awake and healthy (the ML apps have loaded their models), then settled.
        wait_until(lambda: running_apps(names, healthy=True) == set(names), 300, "every app awake and healthy")
        time.sleep(20)
        phase("all awake", repo, names, result)
        toucher.apps = set(ml)
        say("letting the 15 base apps fall asleep")
        wait_until(lambda: not running_apps(base), 180, "the base apps falling asleep")
        phase("base apps asleep", repo, names, result)
        toucher.apps = set()
        say("letting every app fall asleep")
        wait_until(lambda: not running_apps(names), 180, "every app falling asleep")
        phase("all asleep", repo, names, result)
    finally:
        toucher.stop.set()
    for label, app in (("base", args.base_app), ("ml", args.ml_app)):
        say(f"{args.wakes} wakes of {app} ({label} tier)")
        result["wake"][label] = {"app": app, "seconds": wake_times(app, args.wakes, names)}
        result["wake"][label].update(stats(result["wake"][label]["seconds"]))
    say(f"{args.rounds} x 50 concurrent first requests to portfolio")
    result["first_requests"] = first_requests("portfolio", args.rounds, names)


def chart(result: dict, path: Path) -> bool:
    """Memory per phase (stacked: shared services, base apps, ML apps) and wake times; False
    without matplotlib (extra `bench`)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (mem, wake) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    phases = list(result["memory"])
    ml = {f"model{i}" for i in range(3)} | {"embedder", "classify", "summary"}
    bottom = [0.0] * len(phases)
    for label, pick, colour in (("shared services", lambda n: n not in result["apps"], "#9cc3e4"),
                                ("base apps", lambda n: n in result["apps"] and n not in ml, "#2a7ab9"),
                                ("ML apps", lambda n: n in ml, "#c0504d")):
        values = [sum(v for n, v in result["memory"][p]["containers"].items() if pick(n)) for p in phases]
        mem.bar(phases, values, bottom=bottom, color=colour, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, total in enumerate(bottom):
        mem.annotate(f"{total:,.0f} MiB", (i, total), ha="center", va="bottom", fontsize=9)
    mem.axhline(1024, color="grey", linestyle="--", linewidth=1)
    mem.axhline(0.3 * 1024, color="grey", linestyle=":", linewidth=1)
    mem.set_ylabel("memory of the stack (MiB)")
    mem.legend(fontsize=8)
    names = [f"{f['app']}\n({label})" for label, f in result["wake"].items()]
    wake.boxplot([f["seconds"] for f in result["wake"].values()], labels=names)
    wake.axhline(2, color="grey", linestyle="--", linewidth=1)
    wake.set_ylabel(f"seconds to the first answer ({len(next(iter(result['wake'].values()))['seconds'])} wakes)")
    fig.suptitle("21 apps on one machine: memory awake and asleep; time to wake", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wakes", type=int, default=20, help="wakes timed per app (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of 50 concurrent first requests (default 3)")
    ap.add_argument("--base-app", default="site00", help="the base app whose wakes are timed (default site00)")
    ap.add_argument("--ml-app", default="embedder",
                    help="the ML app whose wakes are timed (default embedder: sentence-transformers, model loaded "
                         "at start)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = ap.parse_args()
    result: dict = {"machine": stack21.machine(), "date": time.strftime("%Y-%m-%d"), "sleep_after": SLEEP_AFTER,
                    "memory": {}, "wake": {}}
    with tempfile.TemporaryDirectory(prefix="onevps-sleepbench-") as tmp:
        repo = Path(tmp) / "onevps"
        shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".env", "results"),
            copy_function=lambda src, dst: os.link(src, dst) if src.endswith(".whl") else shutil.copy2(src, dst))
        if (ROOT / ".env").exists():
            shutil.copy(ROOT / ".env", repo / ".env")
        say("growing a copy of this checkout to 21 apps")
        stack21.grow_to_21(repo, ENV)
        try:
            measure(repo, args, result)
        finally:
            subprocess.run([str(BIN / "inv"), "down", "--volumes"], cwd=repo, env={**os.environ, **ENV},
                           capture_output=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sleep.json").write_text(json.dumps(result, indent=2) + "\n")
    drew = chart(result, RESULTS / "sleep.png")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for label, figures in result["memory"].items():
        print(f"memory, {label}: {figures['total_mib']:,.1f} MiB ({figures['running']} apps running)")
    for label, figures in result["wake"].items():
        print(f"wake of {figures['app']} ({label}): p50 {figures['p50']} s, p95 {figures['p95']} s, "
              f"max {figures['max']} s over {len(figures['seconds'])}")
    fr = result["first_requests"]
    print(f"first requests: GET {fr['failed']['GET']} of {fr['requests']['GET']} failed, "
          f"POST {fr['failed']['POST']} of {fr['requests']['POST']} failed")
    print(f"figures: {RESULTS / 'sleep.json'}" + (f", chart: {RESULTS / 'sleep.png'}" if drew else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
