#!/usr/bin/env python3
"""Benchmark code-only deploys of one app under a GET+POST load (not a test).

    .venv/bin/python benchmarks/deploy.py --app portfolio [--runs 10] [--threads 4] [--json]

Needs a server that `fab setup` + `fab deploy --all` prepared (VPS_* in .env
or the environment, the server's settings in VPS_ENV_FILE) whose nginx is
reachable on 127.0.0.1 at the server's HTTP_PORT (on these machines: a local
sshd, see README "Measured"), and an app that answers GET /health with its
"version" and POST /api/echo with the receipt of the body (as portfolio
does). The load (tests/loadgen.py) runs through nginx to the app: THREADS
keep-alive connections, each alternating GET and POST; every non-2xx answer,
bad receipt and socket error counts as failed. Two ways, under the same load:

  A. --runs times `fab deploy --app=APP` (with --no-watch when `fab deploy
     --help` lists it) after a code-only change (a comment line at the end of
     apps/APP/main.py, different every run): the command's wall time, its
     `[timeline] STEP SECONDS s` lines if it prints any, requests and failed
     per method;
  B. --runs times plain `docker compose up -d --no-deps --no-build
     --force-recreate APP` on the server over SSH: the command's wall time,
     the seconds until /health answers 200 again, requests and failed per
     method (the load runs until the app answers again, plus a second).

Then it prints a table (median, p90, min and max of the seconds; requests and
failed per method) or, with --json, every figure. At the end apps/APP/main.py
is restored and deployed again, so the server runs the committed code.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onevps import config, remote  # noqa: E402
from onevps.errors import OnevpsError  # noqa: E402
from tests.loadgen import METHODS, Client, Load  # noqa: E402

TIMELINE = re.compile(r"^\s*\[timeline\]\s+(?P<step>\S(?:.*?\S)?)\s+(?P<seconds>\d+(?:\.\d+)?)\s*s\s*$")
SWITCHED = re.compile(r"traffic moved to the new version after (?P<seconds>\d+(?:\.\d+)?) s")
HEALTHY_WITHIN = 180  # seconds a plainly recreated app gets to answer /health again


def fab(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    """Run `fab ARGS` in this checkout: (wall seconds, result)."""
    t0 = time.monotonic()
    res = subprocess.run([str(Path(sys.executable).with_name("fab")), *args], cwd=ROOT,
                         capture_output=True, text=True)
    return time.monotonic() - t0, res


def deploy_flags() -> list[str]:
    """["--no-watch"] if this checkout's `fab deploy` has a watch to skip, else []."""
    res = fab("deploy", "--help")[1]
    return ["--no-watch"] if re.search(r"--no-watch|--\[no-\]watch", res.stdout) else []


def compose_recreate_argv(server: config.Settings, app: str) -> list[str]:
    """Plain Compose's way to put the app's image in place: recreate its container."""
    return ["docker", "compose", "--project-name", server.project_name, "--file",
            f"{server.vps_path}/compose/docker-compose.yml", "--env-file", f"{server.vps_path}/.env",
            "up", "--detach", "--no-deps", "--no-build", "--force-recreate", app]


def parse_timeline(text: str) -> dict[str, float]:
    """Seconds per step from `[timeline] STEP 1.42 s` lines (a step seen twice is summed)."""
    steps: dict[str, float] = {}
    for line in text.splitlines():
        m = TIMELINE.match(line)
        if m:
            steps[m["step"]] = round(steps.get(m["step"], 0.0) + float(m["seconds"]), 3)
    return steps


def stats(values: list[float]) -> dict[str, float]:
    """Median, p90 (nearest rank), min and max; {} for no values."""
    if not values:
        return {}
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p90": ordered[math.ceil(0.9 * len(ordered)) - 1],
            "min": ordered[0], "max": ordered[-1]}


def load_figures(load: Load) -> dict:
    """Requests and failed per method, and the first errors, of a finished load."""
    figures: dict = {m: {"requests": load.total_of(m), "failed": load.failed_of(m)} for m in METHODS}
    figures["errors"] = load.errors[:5]
    return figures


def deploy_run(main_py: Path, original: str, n: int, app: str, flags: list[str]) -> dict:
    """One code-only `fab deploy` under the running load."""
    main_py.write_text(original + f"\n# benchmark change {n} {time.time()}\n")
    seconds, res = fab("deploy", f"--app={app}", *flags)
    switched = SWITCHED.search(res.stdout)
    return {"seconds": round(seconds, 2), "exit": res.returncode, "timeline": parse_timeline(res.stdout),
            "switched": float(switched["seconds"]) if switched else None,
            "output": "" if res.returncode == 0 else (res.stdout[-2000:] + res.stderr[-2000:])}


def wait_healthy(port: int, host: str, within: float) -> float | None:
    """Seconds until GET /health through nginx answers 200, or None if it did not within `within`."""
    t0 = time.monotonic()
    client = Client(port, host, timeout=5)
    try:
        while time.monotonic() - t0 < within:
            if client.request("GET", "/health")[0] == 200:
                return time.monotonic() - t0
            time.sleep(0.1)
    finally:
        client.close()
    return None


def plain_run(conn, server: config.Settings, app: str, host: str) -> dict:
    """One plain compose recreate, timed until the command ends and until the app answers again."""
    t0 = time.monotonic()
    out = conn.run(shlex.join(compose_recreate_argv(server, app)), hide=True, warn=True)
    seconds = time.monotonic() - t0
    back = wait_healthy(server.http_port, host, HEALTHY_WITHIN)
    output = "" if out.exited == 0 else (out.stdout[-2000:] + out.stderr[-2000:])
    if back is None:
        output += f"{app} did not answer GET /health with 200 within {HEALTHY_WITHIN} s of the recreate"
    return {"seconds": round(seconds, 2), "exit": out.exited, "timeline": {},
            "healthy_after": None if back is None else round(seconds + back, 2), "output": output}


def summarize(result: dict) -> dict:
    """Per way: runs, stats of the seconds, requests and failed per method, median step times."""
    summary: dict = {"app": result["app"], "threads": result["threads"]}
    for way in ("fab_deploy", "plain_compose"):
        runs = result.get(way, [])
        entry: dict = {"runs": len(runs), "seconds": stats([r["seconds"] for r in runs])}
        for m in METHODS:
            entry[m] = {k: sum(r[m][k] for r in runs) for k in ("requests", "failed")}
        steps = {step: stats([r["timeline"][step] for r in runs if step in r["timeline"]])["median"]
                 for step in dict.fromkeys(s for r in runs for s in r["timeline"])}
        if steps:
            entry["timeline"] = steps
        switched = [r["switched"] for r in runs if r.get("switched") is not None]
        if switched:
            entry["switched"] = stats(switched)
        back = [r["healthy_after"] for r in runs if r.get("healthy_after") is not None]
        if back:
            entry["healthy_after"] = stats(back)
        summary[way] = entry
    return summary


def table(summary: dict) -> str:
    """The summary as a few lines of text."""
    app = summary["app"]
    head = (f"{'':34}{'runs':>5}{'median':>8}{'p90':>7}{'min':>7}{'max':>7}"
            f"{'GET req':>10}{'failed':>8}{'POST req':>10}{'failed':>8}")
    lines = [f"{app}: {summary['threads']} keep-alive load threads, each alternating GET and POST; seconds of "
             "the command (fab deploy: until it ends; compose: until `up` returns)", head]
    for way, label in (("fab_deploy", f"fab deploy --app={app}"), ("plain_compose", f"docker compose up -d {app}")):
        e = summary.get(way)
        if not e or not e["runs"]:
            continue
        s = e["seconds"]
        lines.append(f"{label:34}{e['runs']:>5}{s['median']:>8.1f}{s['p90']:>7.1f}{s['min']:>7.1f}{s['max']:>7.1f}"
                     f"{e['GET']['requests']:>10}{e['GET']['failed']:>8}{e['POST']['requests']:>10}"
                     f"{e['POST']['failed']:>8}")
    switched = summary.get("fab_deploy", {}).get("switched")
    if switched:
        lines.append(f"fab deploy: the new version served all traffic, the old one stopped, after "
                     f"{switched['median']:.1f} s (median), {switched['p90']:.1f} s (p90), {switched['max']:.1f} s (max)")
    fab_steps = summary.get("fab_deploy", {}).get("timeline")
    if fab_steps:
        lines.append("fab deploy timeline, median s: " + ", ".join(f"{k} {v:.2f}" for k, v in fab_steps.items()))
    back = summary.get("plain_compose", {}).get("healthy_after")
    if back:
        lines.append(f"plain compose: /health answered 200 again after {back['median']:.1f} s (median), "
                     f"{back['max']:.1f} s (max)")
    return "\n".join(lines)


def measure(args: argparse.Namespace, result: dict) -> bool:
    """Both ways, --runs times each, into `result`; False if a deploy or recreate failed."""
    local = config.load()
    server = remote.remote_settings(config.REPO, local)
    host = f"{args.app}.{server.domain}"
    main_py = ROOT / "apps" / args.app / "main.py"
    original, flags = main_py.read_text(), deploy_flags()
    result["deploy_flags"] = flags
    try:
        for n in range(args.runs):
            with Load(server.http_port, host, threads=args.threads) as load:
                run = deploy_run(main_py, original, n, args.app, flags)
            result["fab_deploy"].append({**run, **load_figures(load)})
            if run["exit"] != 0:
                return False
        conn = remote.connect(remote.server_from(local))
        for _ in range(args.runs):
            with Load(server.http_port, host, threads=args.threads) as load:
                run = plain_run(conn, server, args.app, host)
            result["plain_compose"].append({**run, **load_figures(load)})
            if run["exit"] != 0 or run["healthy_after"] is None:
                return False
    finally:
        main_py.write_text(original)
        seconds, res = fab("deploy", f"--app={args.app}", *flags)  # back to the committed code
        result["restore"] = {"seconds": round(seconds, 2), "exit": res.returncode}
    return result["restore"]["exit"] == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--app", default="portfolio", help="the app to deploy (default portfolio)")
    ap.add_argument("--runs", type=int, default=10, help="deploys, and plain recreates, each (default 10)")
    ap.add_argument("--threads", type=int, default=4, help="load threads (default 4)")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()
    if args.runs < 1 or args.threads < 1:
        ap.error("--runs and --threads must be at least 1")
    result: dict = {"app": args.app, "threads": args.threads, "fab_deploy": [], "plain_compose": []}
    try:
        ok = measure(args, result)
    except OnevpsError as exc:
        print(exc, file=sys.stderr)  # already "error: ..."
        return 1
    summary = summarize(result)
    if args.json:
        print(json.dumps({"summary": summary, "runs": result}, indent=2))
    else:
        print(table(summary))
    if not ok:
        failed = [r for r in result["fab_deploy"] + result["plain_compose"] if r["output"]]
        print(f"error: a step failed; {failed[-1]['output'] if failed else result.get('restore')}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
