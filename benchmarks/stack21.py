#!/usr/bin/env python3
"""Benchmark the 21-app stack (15 base + 6 ML apps) end to end (not a test).

    .venv/bin/python benchmarks/stack21.py [--deploys 20] [--json]

Everything runs in a copy of this checkout in a temporary folder, under its
own Compose projects, ports and subnets, so a stack started with `make up`
is never touched. Steps, each printed as it runs:

 1. grow the copy to 21 apps with `inv new-app` (11 more base, 3 more ML);
 2. `inv build` (tier images already built under another namespace with the
    same content tag are reused by tagging: same content, same tag);
 3. `inv disk --json`: total image disk, the unlayered total, the savings
    ratio, the largest app layer;
 4. `inv down`, then `inv up` timed until every container is healthy
    (images already built);
 5. requests per second through nginx against straight to one app: the same
    load script (stdlib http.client, keep-alive, N threads) run inside another
    app's container with `docker exec`, alternating the two targets;
 6. a local sshd plays the server: `fab setup`, `fab deploy --all`, then
    --deploys code-only deploys of one app (a comment line changes), each
    timed, with the bytes of the server's images (the union of their layer
    folders, measured with du) and Docker's build cache after every deploy;
 7. the figures go to benchmarks/results/stack21.json and, when matplotlib is
    installed (`pip install -e '.[bench]'`), a chart to
    benchmarks/results/stack21.png.

Needs Docker, Compose v2 and OpenSSH's sshd, like `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onevps import config, registry, tiers  # noqa: E402
from tests.integration.sshd import local_sshd  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
LOCAL_ENV = {
    "COMPOSE_PROJECT_NAME": "onevps-bench", "IMAGE_NAMESPACE": "onevps-bench",
    "BIND_ADDRESS": "127.0.0.1", "HTTP_PORT": "18480", "HTTPS_PORT": "18843",
    "NETWORK_PREFIX": "172.26.0", "CHROMA_SUBNET": "172.26.1.0/28", "UP_TIMEOUT": "900",
    "REDIS_PASSWORD": secrets.token_urlsafe(24), "CHROMA_TOKEN": secrets.token_urlsafe(24),
    # One load generator, one client address, hundreds of requests a second: past nginx's
    # per-client rate (README, Security), raised here as in the tests.
    "NGINX_RATE_PER_CLIENT": "100000", "NGINX_BURST_PER_CLIENT": "100000",
}
SERVER_ENV = {
    "NGINX_RATE_PER_CLIENT": "100000", "NGINX_BURST_PER_CLIENT": "100000",
    "COMPOSE_PROJECT_NAME": "onevps-bench-vps", "IMAGE_NAMESPACE": "onevps-bench-vps",
    "HTTP_PORT": "18580", "HTTPS_PORT": "18943", "NETWORK_PREFIX": "172.25.0",
    "CHROMA_SUBNET": "172.25.1.0/28", "DOMAIN": "bench.test",
}
SSH_PORT = 2224

# The load script run inside an app container: stdlib only, one keep-alive
# connection per thread, counts 200s and everything else.
LOAD = r"""
import http.client, json, sys, threading, time
host, port, host_header, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seconds, threads = float(sys.argv[5]), int(sys.argv[6])
ok, bad = [0] * threads, [0] * threads
def worker(i):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            conn.request("GET", path, headers={"Host": host_header})
            res = conn.getresponse(); res.read()
            if res.status == 200: ok[i] += 1
            else: bad[i] += 1
        except Exception:
            bad[i] += 1; conn.close(); conn = http.client.HTTPConnection(host, port, timeout=10)
workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
t0 = time.monotonic()
for w in workers: w.start()
for w in workers: w.join()
elapsed = time.monotonic() - t0
print(json.dumps({"ok": sum(ok), "failed": sum(bad), "seconds": round(elapsed, 2), "rps": round(sum(ok) / elapsed, 1)}))
"""


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], cwd: Path, env: dict[str, str], what: str, timeout: float = 3600) -> str:
    res = subprocess.run(argv, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"error: {what} failed (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res.stdout


def docker(*args: str) -> str:
    return run(["docker", *args], ROOT, {}, "docker " + " ".join(args[:3]))


def reuse_tiers(repo: Path, env: dict[str, str]) -> None:
    """Tag tier images that exist under any namespace with this content tag."""
    project = config.Project(repo)
    settings = config.load(project, environ={**os.environ, **env})
    tags = tiers.tag_env(project, settings)
    have = docker("images", "--format", "{{.Repository}}:{{.Tag}}").split()
    for tier, tag in (("base", tags["BASE_TAG"]), ("ml", tags["ML_TAG"])):
        source = next((ref for ref in have if ref.endswith(f"/{tier}:{tag}")), None)
        if source:
            for t in (tag, "latest"):
                docker("tag", source, f"{env['IMAGE_NAMESPACE']}/{tier}:{t}")
            say(f"reusing {source} as the {tier} tier")


def layer_bytes(namespace: str) -> int:
    """Bytes on disk of every image of the namespace: the union of their layer folders."""
    ids = sorted(set(docker("images", "--quiet", "--no-trunc", "--filter", f"reference={namespace}/*").split()))
    folders: set[str] = set()
    for image in json.loads(docker("image", "inspect", *ids)) if ids else []:
        data = image.get("GraphDriver", {}).get("Data") or {}
        for key in ("UpperDir", "LowerDir"):
            folders.update(p for p in (data.get(key) or "").split(":") if p)
    if not folders:
        return 0
    out = subprocess.run(["du", "-s", "-B1", "--total", *sorted(folders)], capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def build_cache_bytes() -> int:
    from onevps.disk import parse_size

    for line in docker("system", "df", "--format", "{{json .}}").splitlines():
        item = json.loads(line)
        if item.get("Type") == "Build Cache":
            return parse_size(item.get("Size", "0B"))
    return 0


def load_inside(project: str, from_app: str, host: str, port: int, host_header: str, seconds: int,
                threads: int) -> dict:
    container = f"{project}-{from_app}-1"
    out = docker("exec", container, "python", "-c", LOAD, host, str(port), host_header, "/health",
                 str(seconds), str(threads))
    return json.loads(out)


def grow_to_21(repo: Path, env: dict[str, str]) -> None:
    inv = [str(BIN / "inv")]
    for i in range(11):
        run([*inv, "new-app", f"site{i:02d}"], repo, env, f"inv new-app site{i:02d}")
    for i in range(3):
        run([*inv, "new-app", f"model{i}", "--tier", "ml"], repo, env, f"inv new-app model{i}")
    out = run([*inv, "check"], repo, env, "inv check")
    if not out.startswith("ok: 21 apps (15 base, 6 ml)"):
        raise SystemExit(f"error: expected 21 apps, inv check said: {out.strip()}")


def local_figures(repo: Path, args, result: dict) -> None:
    env = LOCAL_ENV
    inv = [str(BIN / "inv")]
    reuse_tiers(repo, env)
    say("inv build (every image of the 21 apps)")
    t0 = time.monotonic()
    run([*inv, "build"], repo, env, "inv build")
    result["build_seconds"] = round(time.monotonic() - t0, 1)

    say("inv disk --json")
    disk = json.loads(run([*inv, "disk", "--json"], repo, env, "inv disk"))
    own = {a["app"]: a["own"] for a in disk["apps"]}
    result["disk"] = {"on_disk_bytes": disk["on_disk"], "unlayered_bytes": disk["unlayered"],
                      "savings_ratio": disk["savings_ratio"], "base_tier_bytes": disk["tiers"]["base"],
                      "ml_tier_own_bytes": disk["tiers"]["ml_own"], "largest_app_layer": max(own.items(),
                                                                                          key=lambda kv: kv[1]),
                      "apps": len(disk["apps"])}

    say("inv down, then inv up timed until every container is healthy")
    run([*inv, "down"], repo, env, "inv down")
    t0 = time.monotonic()
    run([*inv, "up"], repo, env, "inv up")
    result["up_seconds"] = round(time.monotonic() - t0, 1)

    say(f"requests per second: nginx vs straight to portfolio ({args.rounds} rounds of {args.seconds} s each)")
    prefix = env["NETWORK_PREFIX"]
    reg = registry.load(repo / "compose" / "docker-compose.yml")
    target = reg.get("portfolio")
    runs: dict[str, list[dict]] = {"nginx": [], "direct": []}
    for _ in range(args.rounds):
        runs["nginx"].append(load_inside(env["COMPOSE_PROJECT_NAME"], "api-gw", f"{prefix}.2", 80,
                                         "portfolio.localhost", args.seconds, args.threads))
        runs["direct"].append(load_inside(env["COMPOSE_PROJECT_NAME"], "api-gw", target.address(prefix), 8000,
                                          "portfolio", args.seconds, args.threads))
    result["rps"] = {k: {"mean": round(statistics.mean(r["rps"] for r in v), 1), "runs": v} for k, v in runs.items()}
    result["rps"]["threads"] = args.threads
    run([*inv, "down", "--volumes"], repo, env, "inv down")


def deploy_figures(repo: Path, work: Path, args, result: dict) -> None:
    env_file = repo / ".env.vps"
    server_secrets = {"REDIS_PASSWORD": "bench-redis-secret-0123456789", "CHROMA_TOKEN": "bench-chroma-token-0123456789"}
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**SERVER_ENV, **server_secrets}.items()))
    ns = SERVER_ENV["IMAGE_NAMESPACE"]
    reuse_tiers(repo, {**LOCAL_ENV, "IMAGE_NAMESPACE": ns})
    fab = [str(BIN / "fab")]
    with local_sshd(work / "sshd", SSH_PORT) as key:
        env = {**LOCAL_ENV, "VPS_HOST": "127.0.0.1", "VPS_PORT": str(SSH_PORT), "VPS_USER": "root",
               "VPS_SSH_KEY": str(key), "VPS_PATH": str(work / "vps"), "VPS_ENV_FILE": ".env.vps",
               "DEPLOY_TIMEOUT": "300", "TORCH_WHEEL_DIR": ""}  # tiers are reused: no wheels to send
        try:
            say("fab setup, fab deploy --all (the 21 apps on the server)")
            run([*fab, "setup"], repo, env, "fab setup")
            run([*fab, "deploy", "--all"], repo, env, "fab deploy --all")
            main_py = repo / "apps" / args.app / "main.py"
            original = main_py.read_text()
            seconds, images, cache = [], [], []
            for i in range(1, args.deploys + 1):
                main_py.write_text(original + f"\n# benchmark deploy {i}\n")
                t0 = time.monotonic()
                run([*fab, "deploy", f"--app={args.app}"], repo, env, f"fab deploy {i}")
                seconds.append(round(time.monotonic() - t0, 1))
                images.append(layer_bytes(ns))
                cache.append(build_cache_bytes())
                say(f"deploy {i}: {seconds[-1]} s, server images {images[-1] / 1e6:,.1f} MB, "
                    f"build cache {cache[-1] / 1e6:,.1f} MB")
            main_py.write_text(original)
            result["deploys"] = {"app": args.app, "seconds": seconds, "image_bytes": images, "build_cache_bytes": cache,
                                 "growth_percent": round(100 * (images[-1] - images[0]) / images[0], 2)}
        finally:
            compose = work / "vps" / "compose" / "docker-compose.yml"
            if compose.exists():
                subprocess.run(["docker", "compose", "-p", SERVER_ENV["COMPOSE_PROJECT_NAME"], "-f", str(compose),
                                "--env-file", str(work / "vps" / ".env"), "--profile", "*", "down", "--volumes",
                                "--remove-orphans"], capture_output=True)


def chart(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed (pip install -e '.[bench]'): no chart")
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    d = result["disk"]
    ax = axes[0]
    bars = ax.bar(["unlayered", "tiered (on disk)"], [d["unlayered_bytes"] / 1e9, d["on_disk_bytes"] / 1e9],
                  color=["#bbbbbb", "#2a7ab9"])
    ax.axhline(2.5, color="#d62728", linestyle="--", linewidth=1, label="goal 2.5 GB")
    ax.bar_label(bars, fmt="%.2f GB")
    ax.set_title(f"Image disk, 21 apps ({d['savings_ratio']}x)")
    ax.set_ylabel("GB")
    ax.legend()
    ax = axes[1]
    r = result["rps"]
    bars = ax.bar(["through nginx", "straight to app"], [r["nginx"]["mean"], r["direct"]["mean"]],
                  color=["#2a7ab9", "#bbbbbb"])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_title(f"Requests per second ({r['threads']} threads)")
    ax = axes[2]
    dep = result["deploys"]
    xs = range(1, len(dep["image_bytes"]) + 1)
    ax.plot(xs, [b / 1e9 for b in dep["image_bytes"]], marker="o", markersize=3, label="server images")
    ax.set_ylim(0, max(dep["image_bytes"]) / 1e9 * 1.2)
    ax.set_title(f"Disk over {len(dep['image_bytes'])} deploys of {dep['app']} ({dep['growth_percent']:+}%)")
    ax.set_xlabel("deploy")
    ax.set_ylabel("GB")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return True


def machine() -> dict:
    info = json.loads(docker("info", "--format", "{{json .}}"))
    return {"cpus": os.cpu_count(), "memory_gib": round(info.get("MemTotal", 0) / 2**30, 1),
            "docker": info.get("ServerVersion"), "os": info.get("OperatingSystem"),
            "storage_driver": info.get("Driver")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deploys", type=int, default=20, help="successive deploys of one app (default 20)")
    ap.add_argument("--app", default="portfolio", help="the app deployed again and again (default portfolio)")
    ap.add_argument("--seconds", type=int, default=10, help="length of each load run (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="load runs per target, alternating (default 3)")
    ap.add_argument("--threads", type=int, default=4, help="load threads (default 4)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = ap.parse_args()

    result: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="onevps-bench-") as tmp:
        work = Path(tmp)
        repo = work / "onevps"
        # Staged wheels come along (hard-linked): the ML tier's content tag covers them.
        shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".env", "results"),
            copy_function=lambda src, dst: os.link(src, dst) if src.endswith(".whl") else shutil.copy2(src, dst))
        if (ROOT / ".env").exists():  # proxy CA, wheel folder: the developer's build inputs
            shutil.copy(ROOT / ".env", repo / ".env")
        say("growing a copy of this checkout to 21 apps")
        grow_to_21(repo, LOCAL_ENV)
        try:
            local_figures(repo, args, result)
        finally:
            subprocess.run([str(BIN / "inv"), "down", "--volumes"], cwd=repo, env={**os.environ, **LOCAL_ENV},
                           capture_output=True)
        deploy_figures(repo, work, args, result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stack21.json").write_text(json.dumps(result, indent=2) + "\n")
    drew = chart(result, RESULTS / "stack21.png")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    d, r, dep = result["disk"], result["rps"], result["deploys"]
    print(f"image disk, 21 apps: {d['on_disk_bytes'] / 1e9:.2f} GB on disk, {d['unlayered_bytes'] / 1e9:.2f} GB "
          f"unlayered, savings {d['savings_ratio']}x; largest app layer {d['largest_app_layer'][0]} "
          f"{d['largest_app_layer'][1] / 1e3:.1f} kB")
    print(f"inv up to every container healthy (images built): {result['up_seconds']} s")
    print(f"requests/s through nginx {r['nginx']['mean']}, straight to the app {r['direct']['mean']} "
          f"({r['threads']} threads, {args.rounds} x {args.seconds} s each)")
    print(f"code-only deploy of {dep['app']}: first {dep['seconds'][0]} s, median {statistics.median(dep['seconds'])} s; "
          f"server images after deploy 1 {dep['image_bytes'][0] / 1e6:,.1f} MB, after deploy {len(dep['seconds'])} "
          f"{dep['image_bytes'][-1] / 1e6:,.1f} MB ({dep['growth_percent']:+}%)")
    print(f"figures: {RESULTS / 'stack21.json'}" + (f", chart: {RESULTS / 'stack21.png'}" if drew else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
