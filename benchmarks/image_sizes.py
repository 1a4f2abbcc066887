#!/usr/bin/env python3
"""Measure image sizes: each tier, each app's own layers, and the savings.

Run after `inv build` (uses the settings in .env / the environment):

    .venv/bin/python benchmarks/image_sizes.py [--json]

Sizes come from `docker image inspect` (.Size, uncompressed bytes on disk).
An app's own layers = its image size minus its tier image's size (the app
image begins with exactly the tier's layers; the tests check that).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onevps import config, registry, tiers  # noqa: E402

MB = 1_000_000


def size(ref: str) -> int:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", ref],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def main() -> int:
    s = config.load()
    reg = registry.load(config.REPO.compose_file)
    tier_size = {t: size(tiers.tier_image(config.REPO, s, t)) for t in tiers.TIER_ORDER}
    apps = []
    for app in reg.apps:
        total = size(tiers.image(s, app.name))
        apps.append({"app": app.name, "tier": app.tier, "image": total, "own": total - tier_size[app.tier]})
    on_disk = tier_size["ml"] + sum(a["own"] for a in apps)  # ml contains base
    unlayered = sum(a["image"] for a in apps)
    report = {
        "tiers": {"base": tier_size["base"], "ml_total": tier_size["ml"],
                  "ml_own": tier_size["ml"] - tier_size["base"]},
        "apps": apps,
        "on_disk": on_disk,
        "unlayered": unlayered,
        "savings_ratio": round(unlayered / on_disk, 2),
    }
    if "--json" in sys.argv:
        print(json.dumps(report, indent=2))
        return 0
    print(f"base tier            {tier_size['base'] / MB:10.1f} MB")
    print(f"ml tier (own layers) {(tier_size['ml'] - tier_size['base']) / MB:10.1f} MB  (total {tier_size['ml'] / MB:.1f} MB)")
    for a in apps:
        print(f"  {a['app']:<18} {a['tier']:<4} own layers {a['own'] / 1000:9.1f} kB   image {a['image'] / MB:8.1f} MB")
    print(f"on disk (shared)     {on_disk / MB:10.1f} MB")
    print(f"unlayered (sum)      {unlayered / MB:10.1f} MB")
    print(f"savings ratio        {report['savings_ratio']:10.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
