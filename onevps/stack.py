"""Recipes for the local stack: build tiers and apps, up, down, status.

Each recipe reads like a list of named steps; every command comes from
onevps.commands and runs through onevps.runner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

from invoke.context import Context

from . import commands, config, nginx, registry as registry_mod, sleep, tenants, tiers
from .config import Settings
from .errors import CommandFailed, OnevpsError, confirm
from .project import Project
from .registry import PRIVATE, SHARED, SHARED_SERVICES, Registry
from .runner import Runner, require_docker


def compose_env(project: Project, settings: Settings) -> dict[str, str]:
    """Everything compose interpolates: validated settings, tier tags, and each app's own
    Redis password and ChromaDB token (derived from the settings, onevps.tenants)."""
    return {**settings.compose_env(), **tiers.tag_env(project, settings), **app_secrets(project, settings)}


def app_secrets(project: Project, settings: Settings) -> dict[str, str]:
    """The apps' derived secrets; {} when the compose file cannot be read (the task then
    reports that file's problem on its own)."""
    try:
        names = registry_mod.load(project.compose_file).names()
    except OnevpsError:
        return {}
    return tenants.derived(settings, names)


def make_runner(ctx: Context, project: Project, settings: Settings, dry_run: bool = False) -> Runner:
    """A runner whose environment carries the settings and tier tags.

    Outside build inputs are staged first, so the tags cover them.
    """
    for tier in tiers.TIER_ORDER:
        staged = tiers.stage_inputs(project, settings, tier)
        if staged:
            print(f"==> staged for the {tier} tier: {', '.join(staged)}")
    return Runner(ctx, env=compose_env(project, settings), dry_run=dry_run)


def load_registry(project: Project) -> Registry:
    return registry_mod.load(project.compose_file)


# ------------------------------------------------------------------ images --

def image_labels(runner: Runner, ref: str) -> dict[str, str] | None:
    """The image's labels, or None when the image does not exist."""
    res = runner.run(commands.image_labels(ref), f"inspect {ref}", check=False, mutates=False)
    if not res.ok:
        return None
    return json.loads(res.stdout or "null") or {}


def build_tier(runner: Runner, project: Project, settings: Settings, tier: str) -> None:
    if tier == "ml":
        ensure_tier(runner, project, settings, "base")
    ref = tiers.tier_image(project, settings, tier)
    runner.say(f"==> building the {tier} tier: {ref}")
    runner.run(commands.build_tier(project, settings, tier), f"build the {tier} tier", hide=False,
               hint=f"read the build output above; fix dockerfiles/{tier}/ and run `inv build-{tier}`")


def ensure_tier(runner: Runner, project: Project, settings: Settings, tier: str) -> bool:
    """Build the tier when its content-tagged image is missing. True if built."""
    if tier == "ml":
        ensure_tier(runner, project, settings, "base")
    if image_labels(runner, tiers.tier_image(project, settings, tier)) is not None:
        return False
    build_tier(runner, project, settings, tier)
    return True


def build_apps(runner: Runner, project: Project, settings: Settings, reg: Registry, names: Sequence[str],
               no_cache: bool = False) -> None:
    if not names:
        return
    for tier in tiers.TIER_ORDER:
        if any(reg.get(n).tier == tier for n in names):
            ensure_tier(runner, project, settings, tier)
    runner.say(f"==> building app images: {', '.join(names)}")
    runner.run(commands.build_apps(project, settings, names, no_cache=no_cache), "build app images", hide=False,
               hint="read the build output above; fix the app and run `inv build --app NAME`")


def build_all(runner: Runner, project: Project, settings: Settings, reg: Registry) -> None:
    """Every image, in tier order: base -> ml -> apps."""
    build_tier(runner, project, settings, "base")
    build_tier(runner, project, settings, "ml")
    build_apps(runner, project, settings, reg, reg.names())


def stale_apps(runner: Runner, project: Project, settings: Settings, reg: Registry) -> list[str]:
    """Apps whose image is missing or was built on another tier version."""
    stale = []
    for app in reg.apps:
        labels = image_labels(runner, tiers.image(settings, app.name))
        if labels is None or labels.get("onevps.tier.image") != tiers.tier_image(project, settings, app.tier):
            stale.append(app.name)
    return stale


# ------------------------------------------------------------------- state --

@dataclass(frozen=True)
class Row:
    name: str
    tier: str
    address: str
    url: str
    state: str


def _parse_ps(text: str) -> dict[str, dict]:
    text = text.strip()
    if not text:
        return {}
    if text.startswith("["):
        items = json.loads(text)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {item.get("Service", ""): item for item in items}


def _state(item: dict | None) -> str:
    if not item:
        return "not created"
    state = item.get("State", "?")
    health = item.get("Health") or ""
    if state == "exited":
        return f"exited ({item.get('ExitCode', '?')})"
    return f"{state} ({health})" if health else state


def containers(runner: Runner, project: Project, settings: Settings) -> dict[str, dict]:
    res = runner.run(commands.ps(project, settings), "list containers", mutates=False)
    return _parse_ps(res.stdout)


# What the URL column says of the shared services other than nginx.
_SHARED_NOTE = {"chroma-auth": "(internal)", "redis": "(internal)", "ollama": "(internal)",
                sleep.WAKER: "(internal: wakes sleeping apps)", "chromadb": "(private, via chroma-auth)",
                sleep.DOCKER_PROXY: "(no network: the waker's Docker API)"}


def rows(settings: Settings, reg: Registry, ps: dict[str, dict], asleep: Iterable[str] = ()) -> list[Row]:
    """One row per service; an app in `asleep` (its flag set, its container stopped) is `sleeping`."""
    port = "" if settings.http_port == 80 else f":{settings.http_port}"
    out = [
        Row("nginx", "-", settings.address(SHARED["nginx"]), f"http://{settings.domain}{port}/", _state(ps.get("nginx"))),
    ]
    for svc in [*(s for s in SHARED if s != "nginx"), *PRIVATE]:
        address = settings.address(SHARED[svc]) if svc in SHARED else "-"
        out.append(Row(svc, "-", address, _SHARED_NOTE.get(svc, "(internal)"), _state(ps.get(svc))))
    for app in reg.apps:
        state = "sleeping" if app.name in asleep else _state(ps.get(app.name))
        out.append(Row(app.name, app.tier, app.address(settings.network_prefix), settings.app_url(app.name), state))
    return out


def columns(rows: Sequence[Sequence[object]]) -> str:
    """Rows (the first is the header) as left-aligned columns two spaces apart."""
    widths = [max(len(str(x)) for x in col) for col in zip(*rows)]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def table(items: Iterable[Row]) -> str:
    header = ("APP", "TIER", "ADDRESS", "URL", "STATE")
    return columns([header, *[(r.name, r.tier, r.address, r.url, r.state) for r in items]])


def unhealthy(ps: dict[str, dict], services: Iterable[str]) -> list[str]:
    bad = []
    for svc in services:
        item = ps.get(svc)
        if not item or item.get("State") != "running" or item.get("Health") not in (None, "", "healthy"):
            bad.append(svc)
    return bad


# ----------------------------------------------------------------- recipes --

def check_routes(project: Project, reg: Registry) -> None:
    drift = nginx.drift(project.root, reg)
    if drift:
        raise OnevpsError(f"nginx routes drifted from the compose file: {'; '.join(drift)}",
                          "run `inv routes` to regenerate them, then `inv check`")


def up(runner: Runner, project: Project, settings: Settings, reg: Registry, rebuild: bool = False,
       app: str | None = None) -> list[Row]:
    """Build what is missing, start everything, wait until healthy.

    With `app`: build that app (its code may have changed) and start just it,
    plus any shared service that is not running yet; other apps are untouched.
    """
    only = reg.get(app).name if app else None
    config.require_secrets(settings)
    require_docker(runner)
    problems = registry_mod.problems(reg)
    if problems:
        raise OnevpsError(f"the compose file is inconsistent: {'; '.join(problems)}", "fix it, then `inv check`")
    check_routes(project, reg)
    if only:
        build_apps(runner, project, settings, reg, [only])
        services = list(SHARED_SERVICES) + [only]
        runner.say(f"==> starting {only} (and any shared service not yet running)")
    else:
        for tier in tiers.TIER_ORDER:
            ensure_tier(runner, project, settings, tier)
        todo = reg.names() if rebuild else stale_apps(runner, project, settings, reg)
        build_apps(runner, project, settings, reg, todo)
        asleep = sleep.asleep(runner, settings.project_name)
        awake = [n for n in reg.names() if n not in asleep]
        services = list(SHARED_SERVICES) + awake
        runner.say(f"==> starting {len(awake)} apps and {len(SHARED_SERVICES)} shared services "
                   f"(waiting up to {settings.up_timeout}s for health checks)"
                   + (f"; {len(asleep)} sleeping app(s) sleep on: {', '.join(sorted(asleep))}" if asleep else ""))
    try:
        # Everything starts at once; as soon as Redis and chroma-auth are healthy, each app
        # gets its own Redis user and ChromaDB token (onevps.tenants), while the apps still
        # start (their health checks use neither); then wait for the rest.
        runner.run(commands.up(project, settings, services, remove_orphans=not only, wait=False),
                   "start the stack", hide=False)
        runner.run(commands.up(project, settings, list(tenants.SERVICES), remove_orphans=False),
                   "wait for Redis and chroma-auth", hide=False)
        tenants.sync(tenants.local_compose(runner, project, settings), runner.say, settings, reg,
                     dry_run=runner.dry_run)
        runner.run(commands.up(project, settings, services, remove_orphans=not only), "wait for the stack",
                   hide=False)
    except CommandFailed as exc:
        ps = containers(runner, project, settings)
        bad = unhealthy(ps, services)
        runner.say(table(rows(settings, reg, ps)))
        for svc in bad[:5]:
            res = runner.run(commands.logs(project, settings, [svc], tail=15), f"logs of {svc}", check=False,
                             mutates=False)
            runner.say(f"--- last log lines of {svc} ---\n{res.stdout.strip() or '(no output)'}")
        raise OnevpsError(f"the stack did not become healthy: {', '.join(bad) or 'see above'}",
                          "read the log lines above; `inv logs --app NAME` shows more") from exc
    reload_nginx(runner, project, settings)  # picks up route changes in a running nginx
    return status(runner, project, settings, reg)


def nginx_running(runner: Runner, project: Project, settings: Settings) -> bool:
    res = runner.run(commands.ps(project, settings), "list containers", check=False, mutates=False)
    item = _parse_ps(res.stdout).get("nginx") if res.ok else None
    return bool(item) and item.get("State") == "running"


def reload_nginx(runner: Runner, project: Project, settings: Settings) -> bool:
    """Re-render nginx's config in the running container, `nginx -t`, reload.

    Returns False when nginx is not running (it renders at start). A failing
    `nginx -t` keeps the old configuration and raises.
    """
    if not nginx_running(runner, project, settings):
        return False
    runner.run(commands.exec_in(project, settings, "nginx", nginx.reload_argv()), "test and reload nginx",
               hint="the old nginx configuration is still serving; fix the route and run `inv routes`")
    return True


def status(runner: Runner, project: Project, settings: Settings, reg: Registry) -> list[Row]:
    require_docker(runner)
    return rows(settings, reg, containers(runner, project, settings), sleep.asleep(runner, settings.project_name))


def restart(runner: Runner, project: Project, settings: Settings, reg: Registry, app: str) -> None:
    reg.get(app)
    require_docker(runner)
    runner.say(f"==> restarting {app}")
    runner.run(commands.restart(project, settings, [app]), f"restart {app}")
    runner.run(commands.up(project, settings, [app]) , f"wait for {app} to be healthy", hide=False,
               hint=f"`inv logs --app {app}` shows why")


def service_names(reg: Registry, app: str | None) -> list[str]:
    if app is None:
        return []
    if app in SHARED_SERVICES:
        return [app]
    return [reg.get(app).name]


# -------------------------------------------------------- new-app / remove-app --

def _compose_check(ctx: Context, project: Project, settings: Settings):
    """A `run` for apps.compose_validates, or None when Docker is absent."""
    import shutil

    if shutil.which("docker") is None:
        return None
    runner = Runner(ctx, env=compose_env(project, settings))
    if not runner.run(commands.compose_version(), "docker compose version", check=False, mutates=False).ok:
        return None

    def run(argv: list[str]) -> tuple[int, str]:
        res = runner.run(argv, "docker compose config", check=False, mutates=False)
        return res.exited, res.stderr + res.stdout

    return run


def new_app(ctx: Context, project: Project, settings: Settings, name: str, tier: str, domain: str | None,
            dry_run: bool = False, sleep_after: str | None = None) -> list[str]:
    from . import apps

    plan = apps.plan_new_app(project, name, tier, domain, sleep_after)
    try:
        check = _compose_check(ctx, project, settings)
        if check:
            apps.compose_validates(project, settings, plan, check)
        if dry_run:
            return ["[dry-run] would " + line for line in plan.describe(project.root)]
        apps.apply(plan)
    finally:
        apps.discard(plan)
    app = registry_mod.load(project.compose_file).get(name)
    lines = [f"created apps/{name}/ from templates/app/",
             f"added service {name} ({tier} tier) at {app.address(settings.network_prefix)} "
             f"to {project.compose_file.relative_to(project.root)}",
             f"added nginx route {name}.{settings.domain}" + (f" and {app.domain}" if app.domain else "")
             + (f"; it sleeps after {sleep.duration_text(app.sleep_after)} without a request and wakes on the next"
                if app.sleep_after else ""),
             f"next: inv up --app {name}    (builds and starts just this app; then {settings.app_url(name)})"]
    if not check:
        lines.insert(0, "note: Docker is not available, so `docker compose config` did not check the new file")
    return lines


def remove_app(ctx: Context, project: Project, settings: Settings, name: str, yes: bool,
               dry_run: bool = False) -> list[str]:
    from . import apps

    plan = apps.plan_remove_app(project, name)
    check = _compose_check(ctx, project, settings)
    if check:
        apps.compose_validates(project, settings, plan, check)
    changes = plan.describe(project.root)
    if dry_run:
        return ["[dry-run] would " + line for line in changes]
    if not yes and not confirm(f"Remove app {name}? This deletes apps/{name}/ and its compose entry.",
                               f"remove {name}"):
        return ["nothing removed"]
    apps.apply(plan)
    return [f"removed app {name}: " + "; ".join(changes),
            f"its container (if any) goes with the next `inv up` (--remove-orphans) or `docker compose rm -sf {name}`"]
