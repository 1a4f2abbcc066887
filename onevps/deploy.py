"""Recipes for the server: setup, deploy, rollback, status, history.

Each app changes with the zero-downtime switch of onevps.switch; every other
container keeps its ID and start time, and the deploy prints proof.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable

from . import commands, nginx, remote, switch, tiers
from .errors import CommandFailed, OnevpsError
from .registry import SHARED_SERVICES, App
from .server import (Ctx, app_ref, container_name, inspect, proof, require_docker_on_server, slot_name,
                     snapshot, tier_ref)
from .stack import columns


def git_commit(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


# --------------------------------------------------------------------- sync --

def sync(c: Ctx, dirs: tuple[str, ...]) -> remote.SyncPlan:
    local = remote.local_files(c.local.root, dirs)
    remote_now = remote.remote_hashes(c.run, c.rs.vps_path, dirs)
    plan = remote.plan_sync(local, remote_now)
    remote.apply_sync(c.conn, c.run, c.rs.vps_path, local, plan)
    c.say(f"==> sent {len(plan.send)} changed file(s), {plan.bytes} bytes"
          + (f"; deleted {len(plan.delete)}" if plan.delete else "")
          + (" (dry run: nothing sent)" if c.run.dry_run else ""))
    return plan


def sync_env(c: Ctx) -> bool:
    """Upload VPS_ENV_FILE as the server's .env (mode 600) when it differs."""
    text = c.local.vps_env_file.read_text(encoding="utf-8")  # type: ignore[union-attr]
    target = f"{c.rs.vps_path}/.env"
    current = c.run.run(["cat", target], "read the server's .env", check=False, mutates=False)
    if current.ok and current.stdout == text:
        return False
    remote.put_text(c.conn, c.run, target, text, mode="600")
    c.say(f"==> uploaded {c.local.vps_env_file.name} as {target} (mode 600)")
    return True


# ------------------------------------------------------------------ builds --

def send_wheels(c: Ctx) -> remote.SyncPlan:
    """The ML tier's staged wheels (dockerfiles/ml/wheels/, part of its tag) to the server, before it
    builds that tier: only those missing there or different (sha256); wheels placed by hand stay."""
    local = remote.local_files(c.local.root, (remote.WHEEL_DIR,), wheels=True)
    remote_now = remote.remote_hashes(c.run, c.rs.vps_path, (remote.WHEEL_DIR,))
    plan = remote.plan_sync(local, remote_now)
    plan.delete = []
    remote.apply_sync(c.conn, c.run, c.rs.vps_path, local, plan)
    if plan.send:
        c.say(f"==> sent {len(plan.send)} file(s) of {remote.WHEEL_DIR} for the ML tier build, {plan.bytes:,} bytes"
              + (" (dry run: nothing sent)" if c.run.dry_run else ""))
    return plan


def tier_present(c: Ctx, tier: str) -> bool:
    ref = tier_ref(c, tier)
    return ref in c.planned or bool(inspect(c, "{{.Id}}", ref, kind="image"))


def ensure_tier(c: Ctx, tier: str, force: bool = False) -> None:
    if tier == "ml":
        ensure_tier(c, "base")
    if not force and tier_present(c, tier):
        return
    if tier == "ml":
        send_wheels(c)
    c.say(f"==> building the {tier} tier on the server: {tier_ref(c, tier)}")
    c.run.run(commands.build_tier(c.rs, tier), f"build the {tier} tier on the server", hide=False)


def missing_tiers(c: Ctx, wanted: set[str]) -> list[str]:
    """Tiers (in build order) the apps need that are not on the server yet."""
    if "ml" in wanted:
        wanted = wanted | {"base"}
    return [t for t in tiers.TIER_ORDER if t in wanted and not tier_present(c, t)]


def require_room(c: Ctx, tiers_to_build: list[str], what: str) -> None:
    from . import disk

    disk.require_room(c.run, int(c.rs.raw["BUILD_FREE_MB"]), tiers_to_build, what)


def build_app(c: Ctx, app: App) -> str | None:
    """Build the app's layer on the server; returns the new image ID."""
    ensure_tier(c, app.tier)
    c.say(f"==> building {app.name} on the server (its tier is reused)")
    c.run.run(commands.build_apps(c.rs, [app.name]), f"build {app.name} on the server", hide=False)
    return inspect(c, "{{.Id}}", app_ref(c, app.name), kind="image")


# ----------------------------------------------------------------- recipes --

def ensure_shared(c: Ctx, recreate_changed: bool = False) -> None:
    """Shared services up. Deploys leave running ones alone; `fab setup` also
    recreates a shared service whose compose entry changed (a short restart)."""
    flags = [] if recreate_changed else ["--no-recreate"]
    c.run.run(commands.compose(c.rs, "up", "--detach", "--no-build", *flags, "--wait",
                               "--wait-timeout", str(c.rs.up_timeout), *SHARED_SERVICES),
              "start the shared services", hide=True)


def reload_nginx_if_changed(c: Ctx, plan: remote.SyncPlan) -> None:
    if any(rel.startswith("nginx/") for rel in plan.send + plan.delete):
        if inspect(c, "{{.State.Running}}", container_name(c, "nginx")) == "true":
            c.run.run(commands.exec_in(c.rs, "nginx", nginx.reload_argv()), "test and reload nginx on the server",
                      hint="the old nginx configuration is still serving")
            c.say("==> nginx: new configuration tested with `nginx -t` and reloaded")


def deploy_app(c: Ctx, app: App, action: str = "deploy", image: str | None = None) -> dict:
    """Deploy (build) or roll back (given image) one app; returns its journal entry."""
    started = time.monotonic()
    before = snapshot(c)
    previous = inspect(c, "{{.Image}}", container_name(c, app.name))
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": remote.whoami(),
             "commit": git_commit(c.local.root), "app": app.name, "action": action,
             "previous_image": previous, "image": image, "result": "failed"}
    try:
        if image is None:
            image = build_app(c, app)
            entry["image"] = image
        else:
            c.run.run(commands.docker("tag", image, app_ref(c, app.name)), f"point {app.name}:latest at {image[:19]}")
        if c.run.dry_run:
            c.say(f"[dry-run] would replace the container of {app.name} "
                  f"({(previous or 'none')[:19]} -> new image); no other container would change")
            entry["result"] = "dry-run"
            return entry
        # A slot an earlier switch left serving goes first (after the app is healthy at its
        # address); then the app's container may already run this very image.
        switch.clear_leftover_slot(c, app)
        if image and image == inspect(c, "{{.Image}}", container_name(c, app.name)):
            c.say(f"==> {app.name} already runs this image ({image[:19]}); nothing to switch")
            entry["result"] = "ok (unchanged)"
        else:
            c.run.run(commands.docker("tag", image, f"{c.rs.image_namespace}/{app.name}:deploy-{time.strftime('%Y%m%d%H%M%S')}"),
                      "keep the image for rollback")
            switch.switch(c, app, image)
            entry["result"] = "ok"
        after = snapshot(c)
        for line in proof(before, after, {container_name(c, app.name), slot_name(c, app.name)}):
            c.say(line)
        return entry
    except OnevpsError as exc:
        # The journal gets what failed, never a command line (it could hold a secret).
        entry["error"] = exc.step if isinstance(exc, CommandFailed) else exc.what
        if previous and entry.get("image") and entry["image"] != previous and not c.run.dry_run:
            # `latest` goes back to what runs, so no later `compose up` starts the failed build.
            c.run.run(commands.docker("tag", previous, app_ref(c, app.name)), "point latest back at the running image",
                      check=False)
        raise
    finally:
        entry["seconds"] = round(time.monotonic() - started, 1)
        remote.append_journal(c.run, c.rs, entry)


def locked(c: Ctx, what: str, body: Callable[[], None]) -> None:
    remote.acquire_lock(c.run, c.rs, what)
    try:
        body()
    finally:
        remote.release_lock(c.run, c.rs)


def deploy(c: Ctx, app: str | None = None, tier: str | None = None, every: bool = False) -> None:
    chosen = [a for a in (app, tier, every) if a]
    if len(chosen) != 1:
        raise OnevpsError("say what to deploy", "use exactly one of --app=NAME, --tier=base|ml, --all")
    if tier and tier not in tiers.TIER_ORDER:
        raise OnevpsError(f"unknown tier {tier!r}", "use --tier=base or --tier=ml")
    apps = [c.reg.get(app)] if app else (c.reg.by_tier(tier) if tier == "ml" else list(c.reg.apps))
    require_docker_on_server(c)
    what = f"deploy {app or ('tier ' + tier if tier else 'all')}"

    def body() -> None:
        # Room first: a refused build leaves the server's files as they were.
        forced = list(("base", "ml") if tier == "base" else ("ml",)) if tier else []
        require_room(c, forced or missing_tiers(c, {a.tier for a in apps}),
                     f"building {len(apps)} app{'s' if len(apps) != 1 else ''}")
        shared = SHARED_SYNC
        dirs = shared + tuple(f"apps/{a.name}" for a in apps)
        plan = sync(c, dirs)
        env_changed = sync_env(c)
        if env_changed:
            c.say("note: the server's .env changed; apps pick it up as they are deployed")
        for t in forced:
            ensure_tier(c, t, force=True)
        ensure_shared(c)
        reload_nginx_if_changed(c, plan)
        for a in apps:
            c.say(f"==> {a.name}")
            deploy_app(c, a)
        if c.rs.raw["PRUNE_ON_DEPLOY"] == "on":
            prune_server(c)

    locked(c, what, body)


def prune_server(c: Ctx) -> None:
    from . import prune

    prune.prune(c.run, c.rs, c.reg, int(c.rs.raw["PRUNE_KEEP"]), int(c.rs.raw["PRUNE_CACHE_MB"]), tags=c.tags)


SHARED_SYNC = remote.SHARED_DIRS


def rollback(c: Ctx, app: str) -> None:
    target_app = c.reg.get(app)
    require_docker_on_server(c)

    def body() -> None:
        # What serves now: a deploy slot left running by a switch that stopped before its
        # step 3 serves instead of the app's own container.
        slot = slot_name(c, app)
        serving = slot if inspect(c, "{{.State.Running}}", slot) == "true" else container_name(c, app)
        current = inspect(c, "{{.Image}}", serving)
        history = [e for e in remote.read_journal(c.run, c.rs)
                   if e.get("app") == app and str(e.get("result", "")).startswith("ok") and e.get("image")]
        candidates = [e["image"] for e in reversed(history) if e["image"] != current]
        candidates += [e["previous_image"] for e in reversed(history) if e.get("previous_image")
                       and e["previous_image"] != current]
        target = next((img for img in candidates if inspect(c, "{{.Id}}", img, kind="image")), None)
        if not target:
            raise OnevpsError(f"no earlier image of {app} is on the server", "see `fab history --app=" + app + "`")
        c.say(f"==> rolling {app} back to {target[:19]} (no rebuild)")
        deploy_app(c, target_app, action="rollback", image=target)

    locked(c, f"rollback {app}", body)


def setup(c: Ctx, ship: bool = False, swap: str | None = None) -> None:
    """Make the server ready, idempotently: Docker and Compose v2 (onevps.provision),
    VPS_PATH, the files, .env, the tiers (shipped from here with ship), shared services."""
    from . import provision

    c.say(f"==> checking the server {c.rs.vps_host or ''}".rstrip())
    report = provision.provision(provision.CtxHost(c), c.local.raw["DOCKER_INSTALL"], c.rs.vps_path, swap=swap)
    if c.run.dry_run and not report.docker_usable:
        c.say("[dry-run] Docker is not ready on the server yet: the files, tiers and shared services are "
              "planned by a dry run once `fab setup` has prepared Docker")
        return
    if ship:
        from . import ship as shipping

        shipped = shipping.ship(c, tiers=True, upstream=True)
        if c.run.dry_run:
            c.planned |= set(shipped.shipped)
    to_build = missing_tiers(c, set(tiers.TIER_ORDER))
    require_room(c, to_build, "setting up the server")
    state = f"{c.rs.vps_path}/{remote.STATE_DIR}"
    if not c.run.run(["test", "-d", state], f"is there a {state}", check=False, mutates=False).ok:
        c.run.run(["mkdir", "-p", state], f"create {state}")
    sync(c, remote.SHARED_DIRS + ("apps",))
    sync_env(c)
    if "ml" in to_build and (warning := provision.memory_warning(report.memory)):
        c.say(warning)
    for tier in tiers.TIER_ORDER:
        ensure_tier(c, tier)
    c.say("==> starting the shared services (a changed entry is applied now)")
    ensure_shared(c, recreate_changed=True)
    c.say("==> the server is ready; next: fab deploy --all")


# ------------------------------------------------------------ read-only views --

def status(c: Ctx) -> str:
    ids = c.run.run(commands.docker("ps", "--all", "--quiet", "--filter",
                                    f"label=com.docker.compose.project={c.rs.project_name}"),
                    "list containers", mutates=False).stdout.split()
    if not ids:
        return f"no containers of project {c.rs.project_name} on the server (run `fab deploy --all`)"
    fmt = "{{.Name}}\t{{.State.Status}}\t{{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}}\t{{.Image}}"
    rows = [line.split("\t") for line in c.run.run(commands.docker("inspect", "--format", fmt, *ids),
                                                    "inspect containers", mutates=False).stdout.splitlines()]
    created = {}
    images = sorted({r[3] for r in rows})
    out = c.run.run(commands.docker("image", "inspect", "--format", "{{.Id}} {{.Created}}", *images),
                    "inspect images", check=False, mutates=False).stdout
    for line in out.splitlines():
        iid, _, when = line.partition(" ")
        created[iid] = when
    mem = {}
    stats = c.run.run(commands.docker("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *ids),
                      "read memory use", check=False, mutates=False).stdout
    for line in stats.splitlines():
        name, _, usage = line.partition("\t")
        mem[name] = usage.split("/")[0].strip()
    table = [("CONTAINER", "STATE", "HEALTH", "IMAGE AGE", "MEMORY")]
    for name, state, health, image in sorted(rows):
        table.append((name.lstrip("/"), state, health, _age(created.get(image, "")), mem.get(name.lstrip("/"), "-")))
    return columns(table)


def _age(created: str) -> str:
    from datetime import datetime, timezone

    if not created:
        return "-"
    try:
        stamp = datetime.fromisoformat(created.replace("Z", "+00:00").split(".")[0] + "+00:00")
    except ValueError:
        return "-"
    seconds = int((datetime.now(timezone.utc) - stamp).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def history(c: Ctx, app: str | None = None) -> str:
    if app:
        c.reg.get(app)
    entries = [e for e in remote.read_journal(c.run, c.rs) if not app or e.get("app") == app]
    if not entries:
        return "no deploys recorded yet" + (f" for {app}" if app else "")
    table = [("TIME", "USER", "COMMIT", "APP", "ACTION", "IMAGE", "SECONDS", "RESULT")]
    for e in entries:
        table.append((e.get("time", "?"), e.get("user", "?"), e.get("commit", "?"), e.get("app", "?"),
                      e.get("action", "?"), (e.get("image") or "-").replace("sha256:", "")[:12],
                      str(e.get("seconds", "-")), e.get("result", "?")))
    return columns(table)


def disk(c: Ctx, budget: int, as_json: bool) -> None:
    """`fab disk`: `inv disk` for the server's images (budget in bytes), plus the free space."""
    import json

    from . import disk as disk_mod

    require_docker_on_server(c)
    data = disk_mod.report(c.run, c.rs, c.reg, budget, tags=c.tags)
    root, free = disk_mod.docker_free_mb(c.run)
    data["docker_root"], data["free_mb"] = root, free
    if as_json:
        c.say(json.dumps(data, indent=2))
    else:
        c.say(disk_mod.render(data))
        c.say(f"free on the server's Docker disk ({root}): {free:,} MB")
    disk_mod.check_budget(data)


# ------------------------------------------------------------------- swarm --

def swarm_deploy(c: Ctx, app: str | None = None, only: list[str] | None = None) -> object:
    """`fab swarm-deploy`: the stack on the server's swarm (see onevps.swarm).

    Renders with the server's settings, sends compose/ (stack file included),
    nginx/, dockerfiles/ and the apps, builds on the server through compose,
    tags by content (pushes with REGISTRY), `docker stack deploy` reading the
    server's .env, waits; Swarm rolls a failed update back by itself.
    """
    import dataclasses

    from . import swarm

    require_docker_on_server(c)
    target = c.reg.get(app) if app else None

    def upload() -> None:
        sync(c, remote.SHARED_DIRS + ("apps",))

    def build(names) -> None:
        for name in names:
            build_app(c, c.reg.get(name))

    result = []

    def body() -> None:
        apps = [target] if target else list(c.reg.apps)
        require_room(c, missing_tiers(c, {a.tier for a in apps}), "building for the swarm")
        sync_env(c)
        result.append(swarm.deploy(c.run, dataclasses.replace(c.rs, root=c.local.root), c.reg,
                            app=target.name if target else None, only=only, build=build, upload=upload,
                            stack_file=f"{c.rs.vps_path}/{swarm.STACK_FILE.as_posix()}",
                            wrap=lambda argv: swarm.with_env_file(f"{c.rs.vps_path}/.env", argv)))

    locked(c, f"swarm-deploy {app or 'stack'}", body)
    return result[0]


def swarm_status(c: Ctx) -> str:
    from . import swarm

    require_docker_on_server(c)
    return columns(swarm.status_rows(c.run, c.rs))
