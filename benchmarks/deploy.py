#!/usr/bin/env python3
"""Benchmark a code-only deploy of one app under load (not a test).

Needs a server that `fab setup` + `fab deploy --all` prepared (VPS_* in .env
or the environment) whose nginx is reachable on 127.0.0.1 (on these machines:
a local sshd, see README "Measured"). Steps, under the same steady load
through nginx to the app:

  A. `fab deploy --app=APP` after a code-only change (a comment line):
     wall time of the deploy, requests sent, requests failed;
  B. the same new image switched in by plain `docker compose up -d APP`
     (force-recreate) on the server: requests sent, requests failed.

The code change is undone at the end (a second deploy puts it back).

    .venv/bin/python benchmarks/deploy.py --app portfolio [--json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onevps import config, remote  # noqa: E402
from tests.loadgen import Load  # noqa: E402


def fab(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    res = subprocess.run([str(Path(sys.executable).with_name("fab")), *args], cwd=ROOT,
                         capture_output=True, text=True)
    return time.monotonic() - t0, res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--app", default="portfolio", help="the app to deploy (default portfolio)")
    ap.add_argument("--threads", type=int, default=4, help="load threads (default 4)")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()

    local = config.load()
    server = remote.remote_settings(config.REPO, local)
    host = f"{args.app}.{server.domain}"
    main_py = ROOT / "apps" / args.app / "main.py"
    original = main_py.read_text()
    result: dict = {"app": args.app, "threads": args.threads}
    try:
        main_py.write_text(original + f"\n# benchmark change {time.time()}\n")
        with Load(server.http_port, host, threads=args.threads) as load:
            seconds, res = fab("deploy", f"--app={args.app}")
        if res.returncode != 0:
            print(res.stdout[-2000:], res.stderr, file=sys.stderr)
            return 1
        result["fab_deploy"] = {"deploy_seconds": round(seconds, 1), "requests": load.total,
                                "failed": load.failed, "errors": load.errors[:3]}

        conn = remote.connect(remote.server_from(local))
        argv = ["docker", "compose", "--project-name", server.project_name, "--file",
                f"{server.vps_path}/compose/docker-compose.yml", "--env-file", f"{server.vps_path}/.env",
                "up", "--detach", "--no-deps", "--no-build", "--force-recreate", args.app]
        with Load(server.http_port, host, threads=args.threads) as load:
            t0 = time.monotonic()
            out = conn.run(shlex.join(argv), hide=True, warn=True)
            plain_seconds = time.monotonic() - t0
            time.sleep(15)  # the app comes back; requests meanwhile fail
        result["plain_compose_up"] = {"command_seconds": round(plain_seconds, 1), "requests": load.total,
                                      "failed": load.failed, "exit": out.exited, "errors": load.errors[:3]}
    finally:
        main_py.write_text(original)
        fab("deploy", f"--app={args.app}")  # back to the committed code, zero-downtime again
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        a, b = result["fab_deploy"], result["plain_compose_up"]
        print(f"fab deploy --app={args.app}: {a['deploy_seconds']} s, {a['failed']} failed of {a['requests']} requests")
        print(f"docker compose up -d {args.app}: {b['failed']} failed of {b['requests']} requests "
              f"(same load, {args.threads} threads, over {b['command_seconds']} s + 15 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
