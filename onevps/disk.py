"""`inv disk`: what the images take on disk, and what layering saves.

Per image, Docker's own accounting (`docker system df -v`): its unique bytes
(layers no other image has) and shared bytes. For the stack: the bytes on
disk (the tiers once, plus every app's own layers) against what the same
images would take unlayered (the sum of their full sizes), and each app's
own layers against a budget.

Docker's output is read only in forms every supported CLI prints alike:
`--format '{{json .}}'` templates (not `--format json`, which the 20.10 CLI
prints as the word "json") and Go templates naming fields 20.10 has.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass

from . import tiers
from .commands import docker_cmd, shell
from .config import Settings
from .errors import OnevpsError
from .project import Project
from .registry import Registry
from .runner import Runner

# The oldest Docker (CLI and engine) onevps supports: Debian 12's docker.io.
# Ubuntu 24.04's docker.io and Docker's current release work too.
MIN_DOCKER_VERSION = "20.10"

_UNITS = {"": 1, "B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kKMGT]?B?)\s*$")


def parse_size(text: str) -> int:
    """Docker's human sizes ("185.5MB", "14.07kB", "0B") to bytes (SI units, as Docker prints them)."""
    if (text or "").strip() in ("N/A", "-1"):  # Docker prints N/A for a size it did not compute
        return 0
    match = _SIZE.match(text or "0B")
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclass
class ImageRow:
    image: str
    size: int
    unique: int
    shared: int


@dataclass
class AppRow:
    app: str
    tier: str
    image: int  # the whole image
    own: int  # its layers above the tier
    over_budget: bool
    largest: list[str]


def docker_json(text: str, argv: list[str]) -> object:
    """Docker's output as JSON; output that is not JSON is one error line naming the command."""
    try:
        return json.loads(text)
    except ValueError:
        shown = repr(" ".join(text.split())[:60]) if text.strip() else "nothing"
        raise OnevpsError(f"`{shlex.join(argv)}` printed no JSON (it printed {shown})",
                          f"onevps needs Docker {MIN_DOCKER_VERSION} or newer; check `docker version`") from None


def df_argv() -> list[str]:
    """Docker's disk accounting per image, as one JSON object (same with the 20.10 and 28.x CLIs)."""
    return docker_cmd.system_df()


def df_images(df_json: str, argv: list[str] | None = None) -> list[dict]:
    """The "Images" entries of `docker system df --verbose --format '{{json .}}'`; sizes stay strings."""
    data = docker_json(df_json, argv or df_argv())
    images = data.get("Images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise OnevpsError(f"`{shlex.join(argv or df_argv())}` printed JSON without an Images list",
                          f"onevps needs Docker {MIN_DOCKER_VERSION} or newer; check `docker version`")
    return images


def _size_field(item: dict, key: str) -> int:
    try:
        return parse_size(str(item.get(key, "0B")))
    except ValueError:
        raise OnevpsError(f"docker system df: {key} {item.get(key)!r} of {item.get('ID', '?')[:19]} is not a size",
                          f"onevps needs Docker {MIN_DOCKER_VERSION} or newer; check `docker version`") from None


def image_rows(df_json: str, namespace: str) -> list[ImageRow]:
    rows = []
    for item in df_images(df_json):
        repo, tag = item.get("Repository", ""), item.get("Tag", "")
        if not repo.startswith(namespace + "/"):
            continue
        rows.append(ImageRow(f"{repo}:{tag}", _size_field(item, "Size"), _size_field(item, "UniqueSize"),
                             _size_field(item, "SharedSize")))
    return sorted(rows, key=lambda r: r.image)


def unique_sizes(df_json: str) -> dict[str, int]:
    """Image ID -> the bytes only that image holds (what removing it frees)."""
    return {item.get("ID", ""): _size_field(item, "UniqueSize") for item in df_images(df_json)}


def _image_size(runner: Runner, ref: str) -> int:
    res = runner.run(docker_cmd.image_inspect(ref, "{{.Size}}"), f"inspect {ref}", check=False, mutates=False)
    if not res.ok:
        raise OnevpsError(f"image {ref} is missing", "build it first: `inv build`")
    return int(res.stdout.strip())


def _files(runner: Runner, ref: str, roots: str) -> dict[str, int]:
    res = runner.run(docker_cmd.list_files(ref, roots.split()),
                     f"list the files of {ref}", check=False, mutates=False)
    files = {}
    for line in res.stdout.splitlines():
        size, _, path = line.partition(" ")
        if size.isdigit():
            files[path] = int(size)
    return files


def largest_files(runner: Runner, ref: str, tier_ref: str, count: int = 5) -> list[str]:
    """The biggest files the app adds over its tier: its /app folder and any extra packages."""
    roots = "/app /usr/local/lib /usr/lib/python3"
    tier_files = _files(runner, tier_ref, roots)
    added = {p: s for p, s in _files(runner, ref, roots).items()
             if p.startswith("/app/") or tier_files.get(p) != s}
    top = sorted(added.items(), key=lambda kv: kv[1], reverse=True)[:count]
    return [f"{path} ({human(size)})" for path, size in top]


def report(runner: Runner, project: Project, settings: Settings, reg: Registry, budget: int,
           tags: dict[str, str] | None = None) -> dict:
    """`tags` (BASE_TAG, ML_TAG): the tier tags to report on; default: the ones this
    checkout's files give (a server passes the tags its deploys use, as prune does)."""
    tags = tags or tiers.tag_env(project, settings)
    tier_ref = {t: tiers.image(settings, t, tags[tiers.tag_key(t)]) for t in tiers.TIER_ORDER}
    tier_size = {t: _image_size(runner, tier_ref[t]) for t in tiers.TIER_ORDER}
    apps: list[AppRow] = []
    for app in reg.apps:
        ref = tiers.image(settings, app.name)
        size = _image_size(runner, ref)
        own = size - tier_size[app.tier]
        over = own > budget
        largest = largest_files(runner, ref, tier_ref[app.tier]) if over else []
        apps.append(AppRow(app.name, app.tier, size, own, over, largest))
    df = runner.run(df_argv(), "read docker's disk usage", mutates=False)
    uses_ml = any(a.tier == "ml" for a in apps)
    on_disk = (tier_size["ml"] if uses_ml else tier_size["base"]) + sum(a.own for a in apps)
    unlayered = sum(a.image for a in apps)
    return {
        "images": [asdict(r) for r in image_rows(df.stdout, settings.image_namespace)],
        "tiers": {"base": tier_size["base"], "ml_own": tier_size["ml"] - tier_size["base"]},
        "apps": [asdict(a) for a in apps],
        "on_disk": on_disk,
        "unlayered": unlayered,
        "savings_ratio": round(unlayered / on_disk, 2) if on_disk else 0,
        "budget": budget,
        "over_budget": [a.app for a in apps if a.over_budget],
    }


def budget_bytes(budget_mb: object) -> int:
    try:
        value = float(str(budget_mb))
    except ValueError:
        value = 0
    if value <= 0:
        raise OnevpsError(f"--budget={budget_mb} is not a positive number of MB", "use e.g. --budget 5")
    return int(value * 1_000_000)


def check_budget(data: dict) -> None:
    """Over budget: one error line naming each app and its largest files."""
    if data["over_budget"]:
        largest = "; ".join(f"{a['app']}: {', '.join(a['largest'][:3]) or '?'}" for a in data["apps"]
                            if a["over_budget"])
        raise OnevpsError(f"over the {data['budget'] / 1e6:g} MB budget: {', '.join(data['over_budget'])} "
                          f"(largest files: {largest})", "move big dependencies into a tier or trim the app")


def render(data: dict) -> str:
    lines = ["IMAGE                                   SIZE        UNIQUE      SHARED"]
    for r in data["images"]:
        lines.append(f"{r['image']:<38}  {human(r['size']):>10}  {human(r['unique']):>10}  {human(r['shared']):>10}")
    lines.append("")
    lines.append(f"base tier {human(data['tiers']['base'])}, ML tier's own layers {human(data['tiers']['ml_own'])}")
    lines.append(f"APP{'':<15} TIER  OWN LAYERS  (budget {human(data['budget'])})")
    for a in data["apps"]:
        mark = "  OVER BUDGET" if a["over_budget"] else ""
        lines.append(f"{a['app']:<18} {a['tier']:<4}  {human(a['own']):>10}{mark}")
        lines.extend(f"    {f}" for f in a["largest"])
    lines.append("")
    lines.append(f"on disk {human(data['on_disk'])}, unlayered {human(data['unlayered'])}, "
                 f"savings {data['savings_ratio']}x")
    return "\n".join(lines)


# ------------------------------------------------------- room for a build --

# Room a tier build takes on top of BUILD_FREE_MB, while it runs: the layers
# being written, BuildKit's cache and pip's downloads. About twice the final
# tier (base 186 MB, ML's own layers 1.4 GB; README "Measured").
TIER_BUILD_MB = {"base": 500, "ml": 3500}


def docker_free_mb(runner: Runner) -> tuple[str, int]:
    """The Docker data folder and the megabytes free on its file system."""
    root = runner.run(docker_cmd.root_dir(), "find Docker's data folder",
                      mutates=False).stdout.strip() or "/var/lib/docker"
    res = runner.run(shell.free_mb(root), f"read the free space of {root}", mutates=False)
    return root, parse_df_available(res.stdout)


def parse_df_available(df_output: str) -> int:
    """`df -P -m PATH` -> available megabytes (POSIX format: the 4th field of the last line)."""
    lines = [line for line in df_output.splitlines() if line.strip()]
    fields = lines[-1].split() if len(lines) >= 2 else []
    if len(fields) < 6 or not fields[3].isdigit():
        raise OnevpsError(f"cannot read the free space from df: {df_output.strip()[:80]!r}",
                          "check that `df -P -m` works on the server")
    return int(fields[3])


def needed_mb(headroom_mb: int, tiers_to_build: list[str]) -> int:
    return headroom_mb + sum(TIER_BUILD_MB[t] for t in tiers_to_build)


def require_room(runner: Runner, headroom_mb: int, tiers_to_build: list[str], what: str,
                 where: str = "the server") -> None:
    """Refuse a build that would fill the disk, before it starts."""
    root, free = docker_free_mb(runner)
    need = needed_mb(headroom_mb, tiers_to_build)
    if free < need:
        tiers_note = f", including the {' and '.join(tiers_to_build)} tier" if tiers_to_build else ""
        raise OnevpsError(
            f"only {free:,} MB free on {where}'s Docker disk ({root}); {what} needs about {need:,} MB{tiers_note}",
            "`fab prune` removes old images and build cache (`fab prune --dry-run` shows how much it frees); "
            "or make room on the server")
    runner.say(f"==> {free:,} MB free on {where}'s Docker disk ({root}); {what} needs about {need:,} MB")
