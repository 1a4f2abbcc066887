"""`inv new-app` / `inv remove-app`: add or remove an app, all or nothing.

The compose file is edited with a ruamel.yaml round trip: the new service is
inserted after the last app of its tier and the comment that followed that
app moves below the new entry, so `git diff compose/` shows exactly the new
entry. Every file is prepared in memory and validated first; then all are
written atomically. If a write fails, the files already written are put
back, so either every file changes or none does.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import CommentMark
from ruamel.yaml.mergevalue import MergeValue
from ruamel.yaml.tokens import CommentToken

from . import commands, composefile, isolation, nginx, registry as registry_mod, sleep, tiers
from .config import Settings
from .settings_keys import _domain
from .errors import OnevpsError
from .project import Project
from .registry import TIERS, Registry

TEMPLATE_DIR = Path("templates/app")
APP_ANCHOR_KEY = "x-app"
# The defaults block each tier's apps merge (`<<: *app` / `<<: *ml-app`).
TIER_ANCHOR_KEYS = {"base": "x-app", "ml": "x-ml-app"}
# The environment every app shares, merged into each app's own (`<<: *app-env`).
ENV_ANCHOR_KEY = "x-app-env"
DOMAIN_LABEL = "onevps.domain"

_ENTRY = """\
{name}:
  image: ${{IMAGE_NAMESPACE:-onevps}}/{name}:latest
  build:
    context: ../apps/{name}
    dockerfile: ../../dockerfiles/app.Dockerfile
    args:
      APP_NAME: {name}
      APP_TIER: {tier}
      TIER_IMAGE: ${{IMAGE_NAMESPACE:-onevps}}/{tier}:${{{tag_var}:-latest}}
  labels:
    onevps.tier: {tier}{domain_label}{sleep_label}
  environment:
    REDIS_URL: redis://{name}:${{{redis_var}:-}}@${{NETWORK_PREFIX:-172.20.0}}.4:6379/0
    REDIS_KEY_PREFIX: "{name}:"
    CHROMA_TOKEN: ${{{chroma_var}:-}}
    CHROMA_TENANT: app-{name}
  networks:
    app-network:
      ipv4_address: ${{NETWORK_PREFIX:-172.20.0}}.{host}
"""


# ------------------------------------------------------------ compose edits --

def _own_keys(node: Any) -> list:
    return [k for k, _ in node.non_merged_items()]


def _last_leaf(node: CommentedMap) -> tuple[CommentedMap, Any]:
    """The innermost last key of a mapping: where ruamel keeps the comment
    (and blank lines) that follow the mapping in the file."""
    while True:
        key = _own_keys(node)[-1]
        child = node[key]
        if isinstance(child, CommentedMap) and _own_keys(child):
            node = child
            continue
        return node, key


def _after_comment(node: CommentedMap) -> CommentToken | None:
    leaf, key = _last_leaf(node)
    items = leaf.ca.items.get(key)
    return items[2] if items and len(items) > 2 else None


def _set_after_comment(node: CommentedMap, token: CommentToken | None) -> None:
    leaf, key = _last_leaf(node)
    items = leaf.ca.items.setdefault(key, [None, None, None, None])
    items[2] = token


def _blank_line() -> CommentToken:
    return CommentToken("\n\n", CommentMark(0))


def entry_text(name: str, tier: str, host: int, domain: str | None = None, sleep_after: int | None = None) -> str:
    domain_label = f'\n    {DOMAIN_LABEL}: "{domain}"' if domain else ""  # quoted: stays a string
    sleep_label = f'\n    {sleep.SLEEP_LABEL}: "{sleep.duration_text(sleep_after)}"' if sleep_after else ""
    tag_var = tiers.tag_key(tier)
    return _ENTRY.format(name=name, tier=tier, host=host, tag_var=tag_var, domain_label=domain_label,
                         sleep_label=sleep_label, redis_var=isolation.env_name("redis", name),
                         chroma_var=isolation.env_name("chroma", name))


def _merge(node: CommentedMap, anchor: CommentedMap) -> None:
    """`<<: *anchor` as the node's first key."""
    merge = MergeValue()
    merge.append(anchor)
    merge.merge_pos = 0
    node.add_yaml_merge(merge)


def add_service(data: Any, reg: Registry, name: str, tier: str, host: int, domain: str | None = None,
                sleep_after: int | None = None) -> None:
    """Insert the app's service into the loaded compose data (in place)."""
    services = data["services"]
    anchor_key = TIER_ANCHOR_KEYS[tier] if isinstance(data.get(TIER_ANCHOR_KEYS[tier]), CommentedMap) else APP_ANCHOR_KEY
    anchor = data.get(anchor_key)
    if not isinstance(anchor, CommentedMap):
        raise OnevpsError(f"the compose file has no `{APP_ANCHOR_KEY}: &app` block to merge into new apps",
                          "restore it with `git checkout -- compose/`")
    env_anchor = data.get(ENV_ANCHOR_KEY)
    if not isinstance(env_anchor, CommentedMap):
        raise OnevpsError(f"the compose file has no `{ENV_ANCHOR_KEY}: &app-env` block to merge into new apps' "
                          "environment", "restore it from the repository (`git checkout -- compose/`)")
    entry = composefile.loads(entry_text(name, tier, host, domain, sleep_after))[name]
    _merge(entry, anchor)
    _merge(entry["environment"], env_anchor)

    same_tier = reg.by_tier(tier)
    previous = (same_tier or list(reg.apps) or [None])[-1]
    keys = list(services)
    prev_key = previous.name if previous else keys[-1]
    prev_node = services[prev_key]
    token = _after_comment(prev_node)
    _set_after_comment(prev_node, _blank_line())
    _set_after_comment(entry, token)
    services.insert(keys.index(prev_key) + 1, name, entry)


def _has_comment(token: CommentToken | None) -> bool:
    return bool(token and token.value.strip())


def remove_service(data: Any, name: str) -> None:
    """Remove the app's service. Comments around it stay: the section header
    above it (kept by the previous service) and any header below it."""
    services = data["services"]
    keys = list(services)
    index = keys.index(name)
    removed = _after_comment(services[name])
    del services[name]
    if index == 0:
        return
    previous = services[keys[index - 1]]
    kept = _after_comment(previous)
    if _has_comment(removed) and _has_comment(kept):
        assert kept is not None and removed is not None
        merged = kept.value.rstrip("\n") + "\n" + removed.value
        _set_after_comment(previous, CommentToken(merged, CommentMark(0)))
    elif _has_comment(removed) or kept is None:
        _set_after_comment(previous, removed)


# ------------------------------------------------------------------ the plan --

@dataclass
class Plan:
    """Every file change of one operation, prepared and validated in memory."""

    writes: dict[Path, str] = field(default_factory=dict)  # absolute path -> new text ("\n" line endings)
    hand_kept: set[Path] = field(default_factory=set)  # of writes: edited by people (the compose file)
    new_dirs: list[Path] = field(default_factory=list)  # created wholesale (from a staging copy)
    remove_dirs: list[Path] = field(default_factory=list)
    staging: Path | None = None

    def describe(self, root: Path) -> list[str]:
        lines = [f"create {p.relative_to(root)}/" for p in self.new_dirs]
        lines += [f"update {p.relative_to(root)}" for p in self.writes]
        lines += [f"delete {p.relative_to(root)}/" for p in self.remove_dirs]
        return lines


def _render_template(root: Path, name: str, tier: str, target: Path) -> None:
    template = root / TEMPLATE_DIR
    if not template.is_dir():
        raise OnevpsError(f"the app template {TEMPLATE_DIR}/ is missing", "restore it with `git checkout -- templates/`")
    for src in sorted(template.rglob("*")):
        if src.is_dir() or "__pycache__" in src.parts or src.name == ".pytest_cache":
            continue
        dst = target / src.relative_to(template)
        dst.parent.mkdir(parents=True, exist_ok=True)
        text = src.read_text(encoding="utf-8")
        dst.write_text(text.replace("__APP_NAME__", name).replace("__APP_TIER__", tier), encoding="utf-8")


def _validate(compose_text: str, expect: Callable[[Registry], None]) -> Registry:
    data = composefile.loads(compose_text, name="the new compose file")
    if composefile.dumps(data) != compose_text:
        raise OnevpsError("internal error: the new compose file does not round-trip",
                          "nothing was changed; please report this")
    reg = registry_mod.from_data(data)
    problems = registry_mod.problems(reg)
    if problems:
        raise OnevpsError(f"the new compose file would be inconsistent: {'; '.join(problems)}",
                          "nothing was changed")
    expect(reg)
    return reg


def _planned_writes(project: Project, compose_text: str, expect: Callable[[Registry], None]) -> Plan:
    """Validate the new compose text; plan it and the nginx files it renders."""
    new_reg = _validate(compose_text, expect)
    plan = Plan()
    plan.writes[project.compose_file] = compose_text
    plan.hand_kept.add(project.compose_file)
    for rel, text in nginx.rendered_files(new_reg).items():
        plan.writes[project.root / rel] = text
    return plan


def _known_problems(project: Project, reg: Registry) -> None:
    """Refuse to edit on top of a repository that is already inconsistent."""
    in_compose = set(reg.names())
    folders = set(registry_mod.app_dirs(project.root))
    for name in sorted(folders - in_compose):
        raise OnevpsError(f"apps/{name} has no compose entry",
                          f"repair first: delete apps/{name} or add its entry by hand, then `inv check`")
    for name in sorted(in_compose - folders):
        raise OnevpsError(f"app {name} is in the compose file but apps/{name} is missing",
                          f"repair first: restore apps/{name} with git or `inv remove-app {name}`")


def plan_new_app(project: Project, name: str, tier: str = "base", domain: str | None = None,
                 sleep_after: str | None = None) -> Plan:
    root = project.root
    problem = registry_mod.name_problem(name)
    if problem:
        raise OnevpsError(problem, "use a DNS label: a-z, 0-9 and '-', starting with a letter, at most 63")
    if tier not in TIERS:
        raise OnevpsError(f"unknown tier {tier!r}", f"use one of: {', '.join(TIERS)}")
    if domain is not None:
        try:
            domain = _domain(domain)
        except ValueError as exc:
            raise OnevpsError(f"--domain {domain!r} {exc}", "give a host name such as blog.example.com") from None
    try:
        sleep_seconds = sleep.parse_duration(sleep_after) if sleep_after is not None else None
    except ValueError as exc:
        raise OnevpsError(f"--sleep-after: {exc}", "for example --sleep-after 15m") from None
    compose_path = project.compose_file
    data = composefile.load(compose_path)
    reg = registry_mod.from_data(data, name=str(compose_path))
    if name in reg.services:
        what = "an app" if name in reg.names() else "a shared service"
        raise OnevpsError(f"{name!r} is already {what} in the compose file", "choose another name")
    if (root / "apps" / name).exists():
        raise OnevpsError(f"apps/{name} exists but has no compose entry",
                          f"repair first: delete apps/{name} or add its entry by hand, then `inv check`")
    _known_problems(project, reg)
    host = reg.next_free_host(tier)
    if host is None:
        raise OnevpsError(f"the {tier} address pool is full ({len(registry_mod.POOLS[tier])} apps)",
                          "remove an unused app with `inv remove-app NAME`")

    add_service(data, reg, name, tier, host, domain, sleep_seconds)
    compose_text = composefile.dumps(data)

    def expect(new: Registry) -> None:
        app = new.get(name)
        if (app.tier, app.host, app.domain, app.sleep_after) != (tier, host, domain, sleep_seconds) \
                or new.names().count(name) != 1:
            raise OnevpsError("internal error: the new entry did not read back as written", "nothing was changed")

    plan = _planned_writes(project, compose_text, expect)
    plan.staging = Path(tempfile.mkdtemp(prefix=f".new-app-{name}-", dir=root / "apps"))
    try:
        _render_template(root, name, tier, plan.staging)
    except BaseException:
        shutil.rmtree(plan.staging, ignore_errors=True)
        raise
    plan.new_dirs.append(root / "apps" / name)
    return plan


def plan_remove_app(project: Project, name: str) -> Plan:
    root = project.root
    compose_path = project.compose_file
    data = composefile.load(compose_path)
    reg = registry_mod.from_data(data, name=str(compose_path))
    if name in registry_mod.SHARED_SERVICES or name in registry_mod.TIER_SERVICES.values():
        raise OnevpsError(f"{name!r} is a shared service, not an app", "only apps can be removed")
    reg.get(name)  # unknown app -> lists the known ones
    remove_service(data, name)
    compose_text = composefile.dumps(data)

    def expect(new: Registry) -> None:
        if name in new.names() or len(new.apps) != len(reg.apps) - 1:
            raise OnevpsError("internal error: the entry did not go away", "nothing was changed")

    plan = _planned_writes(project, compose_text, expect)
    if (root / "apps" / name).exists():
        plan.remove_dirs.append(root / "apps" / name)
    return plan


def discard(plan: Plan) -> None:
    if plan.staging:
        shutil.rmtree(plan.staging, ignore_errors=True)


def apply(plan: Plan) -> None:
    """Write every file of the plan; on any failure put everything back.

    A file that exists keeps its line endings (CRLF stays CRLF); the compose file,
    kept by hand, also its BOM and a missing newline at the end (composefile.Style),
    so `git diff` shows only the lines that changed. Generated files (nginx) get
    no BOM and a final newline, as `inv check` expects. A failure writes back the
    exact text that was there.
    """
    originals: dict[Path, str | None] = {
        p: (composefile.read_exact(p) if p.exists() else None) for p in plan.writes
    }
    trash: list[tuple[Path, Path]] = []
    created: list[Path] = []
    written: list[Path] = []
    try:
        for target in plan.new_dirs:
            assert plan.staging is not None
            plan.staging.rename(target)  # same folder: atomic
            plan.staging = None
            created.append(target)
        for target in plan.remove_dirs:
            hidden = target.with_name(f".removed-{target.name}")
            if hidden.exists():
                shutil.rmtree(hidden)
            target.rename(hidden)
            trash.append((target, hidden))
        for path, text in plan.writes.items():
            old = originals[path]
            if old is not None:
                style = composefile.Style.of(old)
                if path not in plan.hand_kept:
                    style = composefile.Style(newline=style.newline)
                text = style.apply(text)
            if old != text:
                composefile.atomic_write(path, text)
                written.append(path)
    except BaseException:
        for path in written:
            old = originals[path]
            if old is None:
                path.unlink(missing_ok=True)
            else:
                composefile.atomic_write(path, old)
        for target, hidden in trash:
            hidden.rename(target)
        for target in created:
            shutil.rmtree(target, ignore_errors=True)
        discard(plan)
        raise
    for _, hidden in trash:
        shutil.rmtree(hidden, ignore_errors=True)


def compose_validates(project: Project, settings: Settings, plan: Plan,
                      run: Callable[[list[str]], tuple[int, str]]) -> None:
    """`docker compose config --quiet` on the new compose file, before it replaces the old one.

    The candidate is written next to the real file (relative paths resolve the
    same) and always removed. `run(argv) -> (exit code, output)`.
    """
    text = plan.writes.get(project.compose_file)
    if text is None:
        return
    candidate = project.compose_file.with_name(".docker-compose.candidate.yml")
    try:
        composefile.atomic_write(candidate, text)
        code, output = run(commands.config_check(project, settings, candidate))
    finally:
        candidate.unlink(missing_ok=True)
    if code != 0:
        detail = " ".join(output.strip().splitlines()[-3:])
        raise OnevpsError(f"docker compose rejects the new compose file: {detail}", "nothing was changed")
