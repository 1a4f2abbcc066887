#!/usr/bin/env python3
"""Draw the chart of a `benchmarks/deploy.py --json` result (not a test).

    .venv/bin/python benchmarks/deploy_chart.py RESULT.json [OUT.png]

Left: seconds per run. For `fab deploy`: until traffic moved to the new
version (the old one stopped) and the whole command; for plain `docker compose
up -d --force-recreate`: the command, and until the app answered /health again.
Right: failed requests per method (GET, POST with a body) under the same
keep-alive load, out of how many. OUT defaults to RESULT with .png; matplotlib
is a dev dependency (pyproject.toml).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (label, way, field of a run, colour)
SERIES = (
    ("fab deploy: traffic moved", "fab_deploy", "switched", "#2a7ab9"),
    ("fab deploy: whole command", "fab_deploy", "seconds", "#9cc3e4"),
    ("compose: command", "plain_compose", "seconds", "#e0a458"),
    ("compose: /health back", "plain_compose", "healthy_after", "#c0504d"),
)
WAYS = (("fab deploy", "fab_deploy"), ("plain compose", "plain_compose"))


def seconds_panel(ax, runs: dict) -> None:
    for i, (label, way, field, colour) in enumerate(SERIES):
        values = [r[field] for r in runs.get(way, []) if r.get(field) is not None]
        if not values:
            continue
        ax.scatter([i] * len(values), values, color=colour, alpha=0.7, s=22, zorder=3)
        median = statistics.median(values)
        ax.hlines(median, i - 0.3, i + 0.3, color="black", linewidth=2, zorder=4)
        ax.annotate(f"{median:.1f} s", (i + 0.32, median), va="center", fontsize=8)
    ax.axhline(8, color="grey", linestyle="--", linewidth=1)
    ax.annotate("goal: 8 s", (-0.45, 8.2), fontsize=8, color="grey")
    ax.set_xticks(range(len(SERIES)), [s[0].replace(": ", ":\n") for s in SERIES], fontsize=8)
    ax.set_ylabel("seconds (each dot a run; bar: median)")
    ax.set_ylim(bottom=0)


def failures_panel(ax, summary: dict) -> None:
    labels, failed, colours = [], [], []
    for name, way in WAYS:
        for method, colour in (("GET", "#2a7ab9" if way == "fab_deploy" else "#e0a458"),
                               ("POST", "#1b4f7a" if way == "fab_deploy" else "#c0504d")):
            figures = summary.get(way, {}).get(method, {"failed": 0, "requests": 0})
            labels.append(f"{name}\n{method}\n(of {figures['requests']:,})")
            failed.append(figures["failed"])
            colours.append(colour)
    bars = ax.bar(range(len(labels)), failed, color=colours)
    for bar, value in zip(bars, failed):
        ax.annotate(str(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=9)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("failed requests (non-2xx, socket errors)")


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else src.with_suffix(".png")
    try:
        data = json.loads(src.read_text())
        summary, runs = data["summary"], data["runs"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read {src} as a benchmarks/deploy.py --json result: {exc}", file=sys.stderr)
        return 1
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    seconds_panel(left, runs)
    failures_panel(right, summary)
    fig.suptitle(f"{summary['fab_deploy']['runs']} code-only deploys of {summary['app']} under "
                 f"{summary['threads']} keep-alive GET+POST threads, and as many plain compose recreates",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
