"""Recipes for the server: setup, deploy, rollback, prune; the file sync and the
builds they use. Read-only views (status, history, disk) are in onevps.views.

Each app changes with the zero-downtime switch of onevps.switch; every other
container keeps its ID and start time, and the deploy prints proof.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Sequence

from . import disk, nginx, provision, prune, remote, ship as shipping, sleep, state, switch, tenants, tiers, watch
from .commands import compose_cmd, docker_cmd, shell
from .errors import CommandFailed, OnevpsError
from .registry import SHARED_SERVICES, App
from .timeline import Timeline
from .server import (Ctx, app_ref, container_name, inspect, proof, require_docker_on_server, sleeping,
                     slot_name, snapshot, tier_ref)

SHARED_SYNC = remote.SHARED_DIRS


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

def sync(srv: Ctx, dirs: tuple[str, ...]) -> remote.SyncPlan:
    local = remote.local_files(srv.project.root, dirs)
    remote_now = remote.remote_hashes(srv.run, srv.rs.vps_path, dirs)
    plan = remote.plan_sync(local, remote_now)
    remote.apply_sync(srv.conn, srv.run, srv.rs.vps_path, local, plan)
    srv.say(f"==> sent {len(plan.send)} changed file(s), {plan.bytes} bytes"
            + (f"; deleted {len(plan.delete)}" if plan.delete else "")
            + (" (dry run: nothing sent)" if srv.run.dry_run else ""))
    return plan


def server_env_text(srv: Ctx) -> str:
    """VPS_ENV_FILE's text, then each app's own Redis password and ChromaDB token, derived
    from its secrets (onevps.tenants): what compose on the server interpolates."""
    text = srv.local.vps_env_file.read_text(encoding="utf-8")  # type: ignore[union-attr]
    derived = tenants.derived(srv.rs, srv.reg.names())
    if not derived:
        return text
    lines = "".join(f"{key}={value}\n" for key, value in derived.items())
    return (text if text.endswith("\n") or not text else text + "\n") + ENV_MARK + lines


# Starts the part of the server's .env that fab writes (never edit it there: it is rewritten).
ENV_MARK = ("# --- written by fab: each app's own Redis password and ChromaDB token, derived from\n"
            "# --- REDIS_PASSWORD and CHROMA_TOKEN above (onevps/isolation.py); rewritten on every deploy\n")


def sync_env(srv: Ctx) -> bool:
    """Upload VPS_ENV_FILE (and the apps' derived secrets) as the server's .env (mode 600) when it differs."""
    text = server_env_text(srv)
    target = f"{srv.rs.vps_path}/.env"
    if not remote.put_text_if_changed(srv.conn, srv.run, target, text, mode="600", step="read the server's .env"):
        return False
    srv.say(f"==> uploaded {srv.local.vps_env_file.name} as {target} (mode 600)")
    return True


# ------------------------------------------------------------------ builds --

def send_wheels(srv: Ctx) -> remote.SyncPlan:
    """The ML tier's staged wheels (dockerfiles/ml/wheels/, part of its tag) to the server, before it
    builds that tier: only those missing there or different (sha256); wheels placed by hand stay."""
    local = remote.local_files(srv.project.root, (remote.WHEEL_DIR,), wheels=True)
    remote_now = remote.remote_hashes(srv.run, srv.rs.vps_path, (remote.WHEEL_DIR,))
    plan = remote.plan_sync(local, remote_now)
    plan.delete = []
    remote.apply_sync(srv.conn, srv.run, srv.rs.vps_path, local, plan)
    if plan.send:
        srv.say(f"==> sent {len(plan.send)} file(s) of {remote.WHEEL_DIR} for the ML tier build, {plan.bytes:,} bytes"
                + (" (dry run: nothing sent)" if srv.run.dry_run else ""))
    return plan


def tier_present(srv: Ctx, tier: str) -> bool:
    ref = tier_ref(srv, tier)
    return ref in srv.planned or bool(inspect(srv, "{{.Id}}", ref, kind="image"))


def ensure_tier(srv: Ctx, tier: str, force: bool = False) -> None:
    if tier == "ml":
        ensure_tier(srv, "base")
    if not force and tier_present(srv, tier):
        return
    if tier == "ml":
        send_wheels(srv)
    srv.say(f"==> building the {tier} tier on the server: {tier_ref(srv, tier)}")
    srv.run.run(compose_cmd.build_tier(srv.vps, srv.rs, tier), f"build the {tier} tier on the server",
                hide=False)


def tiers_in_use(srv: Ctx) -> list[str]:
    """The tiers the server needs, in build order: base (every app and the waker run on it), and
    ml when an app is built on it (a stack without ML apps never gets the ~1.5 GB tier)."""
    used = {"base"} | {app.tier for app in srv.reg.apps}
    return [t for t in tiers.TIER_ORDER if t in used]


def missing_tiers(srv: Ctx, wanted: set[str]) -> list[str]:
    """Tiers (in build order) the apps need that are not on the server yet."""
    if "ml" in wanted:
        wanted = wanted | {"base"}
    return [t for t in tiers.TIER_ORDER if t in wanted and not tier_present(srv, t)]


def require_room(srv: Ctx, tiers_to_build: list[str], what: str) -> None:
    disk.require_room(srv.run, srv.rs.build_free_mb, tiers_to_build, what)


def build_app(srv: Ctx, app: App) -> str | None:
    """Build the app's layer on the server; returns the new image ID."""
    ensure_tier(srv, app.tier)
    srv.say(f"==> building {app.name} on the server (its tier is reused)")
    srv.run.run(compose_cmd.build_apps(srv.vps, srv.rs, [app.name]), f"build {app.name} on the server",
                hide=False)
    return inspect(srv, "{{.Id}}", app_ref(srv, app.name), kind="image")


# ----------------------------------------------------------------- recipes --

def shared_running(srv: Ctx) -> bool:
    """Every shared service has a running container (one `docker ps`)."""
    res = srv.run.run(docker_cmd.running_services(srv.rs.project_name), "list running services",
                      check=False, mutates=False)
    return res.ok and set(SHARED_SERVICES) <= set(res.stdout.split())


def ensure_shared(srv: Ctx, recreate_changed: bool = False) -> None:
    """Shared services up. Deploys leave running ones alone (and skip Compose when all
    run); `fab setup` also recreates a shared service whose compose entry changed (a short restart)."""
    if not recreate_changed and shared_running(srv):
        return
    srv.run.run(compose_cmd.up(srv.vps, srv.rs, SHARED_SERVICES, timeout=srv.rs.up_timeout,
                               remove_orphans=False, no_recreate=not recreate_changed),
                "start the shared services", hide=True)


def reload_nginx_if_changed(srv: Ctx, plan: remote.SyncPlan) -> None:
    """Test and reload the running nginx when its files changed. An nginx made by an onevps
    before sleep-state moved to sleep.STATE_DIR (it was /run/onevps) cannot take the new
    routes (their access log is there): refused with the one step that mends it."""
    if any(rel.startswith("nginx/") for rel in plan.send + plan.delete):
        name = container_name(srv, "nginx")
        if inspect(srv, "{{.State.Running}}", name) == "true":
            mounts = inspect(srv, "{{range .Mounts}}{{.Destination}} {{end}}", name)
            if mounts is not None and sleep.STATE_DIR not in mounts.split():
                raise OnevpsError(f"nginx on the server has no {sleep.STATE_DIR} (an older onevps's container), "
                                  "which the new nginx files need; nothing was reloaded",
                                  "run `fab setup` once (it recreates nginx and the waker from the new compose "
                                  "file: a few seconds' restart), then deploy again")
            srv.run.run(compose_cmd.exec_in(srv.vps, srv.rs, "nginx", nginx.reload_argv()),
                        "test and reload nginx on the server", hint="the old nginx configuration is still serving")
            srv.say("==> nginx: new configuration tested with `nginx -t` and reloaded")


def deploy_app(srv: Ctx, app: App, action: str = "deploy", image: str | None = None, watch_after: bool = False,
               why: str | None = None, wake: bool = False) -> dict:
    """Deploy (build) or roll back (given image) one app; returns its journal entry. With
    watch_after, the new version is watched after the switch and rolled back should it fail.
    A sleeping app gets the new image and sleeps on, unless wake."""
    entry, reason = _deploy_one(srv, app, action, image, watch_after, why, wake)
    if reason:
        previous = entry["previous_image"]
        srv.say(f"==> the new {app.name} failed its watch: {reason}; rolling back to {previous[:19]}")
        try:
            _deploy_one(srv, app, "rollback", previous, False, f"automatic, after the watch: {reason}", wake)
        except OnevpsError as exc:
            raise OnevpsError(f"the new {app.name} failed the watch after the switch ({reason}) and the "
                              f"rollback to {previous[:19]} failed too: {exc.what}",
                              f"the new version may still serve: check `fab status`, then "
                              f"`fab rollback --app={app.name}`") from None
        raise OnevpsError(f"the new {app.name} failed the watch after the switch ({reason}); "
                          f"it was rolled back to {previous[:19]}",
                          f"read `fab logs --app={app.name}`, fix the app and deploy again")
    return entry


def _deploy_one(srv: Ctx, app: App, action: str, image: str | None, watch_after: bool,
                why: str | None, wake: bool = False) -> tuple[dict, str | None]:
    """One app's deploy or rollback, journaled: (its journal entry, why the watch failed or None)."""
    started = time.monotonic()
    # A slot an earlier switch left serving goes first, before `latest` moves (the app's
    # container starts with what it names: the slot's image); then what runs is known.
    switch.clear_leftover_slot(srv, app)
    before = snapshot(srv)
    previous = inspect(srv, "{{.Image}}", container_name(srv, app.name))
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "user": state.whoami(),
             "commit": git_commit(srv.project.root), "app": app.name, "action": action,
             "previous_image": previous, "image": image, "result": "failed"}
    if why:
        entry["why"] = why
    srv.timeline.switched = None  # set once the old container has stopped (switch.stop_primary)
    with state.journal(srv.run, srv.rs, entry, started, srv.timeline):
        try:
            srv.lap("checks")
            if image is None:
                image = entry["image"] = build_app(srv, app)
            else:
                srv.run.run(docker_cmd.tag(image, app_ref(srv, app.name)), f"point {app.name}:latest at {image[:19]}")
            srv.lap("build")
            if srv.run.dry_run:
                srv.say(f"[dry-run] would replace the container of {app.name} "
                        f"({(previous or 'none')[:19]} -> new image); no other container would change")
                entry["result"] = "dry-run"
                return entry, None
            entry["result"] = _switch_to(srv, app, image, wake)
            for line in proof(before, snapshot(srv), {container_name(srv, app.name), slot_name(srv, app.name)}):
                srv.say(line)
            srv.lap("cleanup")
            if srv.timeline.switched is not None:
                entry["switched_after"] = srv.timeline.switched
            reason = watch_new(srv, app) if watch_after and previous and entry["result"] == "ok" else None
            if reason:
                # The journal says why; deploy_app rolls back. `latest` goes back at once, so
                # that no `compose up` starts the failed version should the rollback not get far.
                entry.update(result="rolled-back", error=f"the watch after the switch: {reason}")
                _point_latest_back(srv, app, entry, previous)
            return entry, reason
        except OnevpsError as exc:
            # The journal gets what failed, never a command line (it could hold a secret).
            entry["error"] = exc.step if isinstance(exc, CommandFailed) else exc.what
            if srv.timeline.switched is None:  # the old container still serves: `latest` names it again
                _point_latest_back(srv, app, entry, previous)
            raise


def _point_latest_back(srv: Ctx, app: App, entry: dict, previous: str | None) -> None:
    """`latest` goes back to the previous image, so no later `compose up` starts a failed build."""
    if previous and entry.get("image") and entry["image"] != previous and not srv.run.dry_run:
        srv.run.run(docker_cmd.tag(previous, app_ref(srv, app.name)), "point latest back at the previous image",
                    check=False)


def watch_new(srv: Ctx, app: App) -> str | None:
    """DEPLOY_WATCH seconds of the new version's health and 5xx share (nginx's log), holding the
    lock (`fab status` says so); the reason it failed, or None."""
    seconds = srv.rs.deploy_watch
    if seconds <= 0:
        return None
    state.relabel_lock(srv.run, srv.rs, f"deploy {app.name}: watching the new version for {seconds} s")
    srv.say(f"==> watching the new {app.name} for {seconds} s: its health and its share of 5xx answers "
            f"(over DEPLOY_WATCH_5XX={srv.rs.deploy_watch_5xx:g}% rolls back; --no-watch skips this)")
    reason = watch.watch(srv, app.name, container_name(srv, app.name), seconds, srv.rs.deploy_watch_5xx,
                         srv.say, srv.rs.address(app.host))
    if reason and app.sleep_after and app.name in sleeping(srv):  # stopped by the waker, not by a failure
        srv.say(f"==> the new {app.name} fell asleep while watched (no request for "
                f"{sleep.duration_text(app.sleep_after)}); its next request wakes it")
        reason = None
    srv.lap("watch")
    return reason


def _switch_to(srv: Ctx, app: App, image: str | None, wake: bool = False) -> str:
    """The app's container runs image (kept for rollback under a deploy-STAMP tag); the journal's result."""
    # A slot an earlier switch left serving went first (_deploy_one); the app's container
    # may already run this very image.
    if image and image == inspect(srv, "{{.Image}}", container_name(srv, app.name)) and entry_current(srv, app):
        srv.say(f"==> {app.name} already runs this image ({image[:19]}) and its compose entry; nothing to switch")
        return "ok (unchanged)"
    kept = f"{srv.rs.image_namespace}/{app.name}:deploy-{time.strftime('%Y%m%d%H%M%S')}"
    srv.run.run(docker_cmd.tag(image, kept), "keep the image for rollback")  # type: ignore[arg-type]
    return switch.switch(srv, app, image, wake)  # type: ignore[arg-type]


def entry_current(srv: Ctx, app: App) -> bool:
    """The app's container was made from its compose entry as it is now (Compose's config hash):
    a changed label, limit or variable needs the switch even when the image is the same."""
    res = srv.run.run(compose_cmd.config_hash(srv.vps, srv.rs, app.name), f"hash {app.name}'s compose entry",
                      check=False, mutates=False)
    want = res.stdout.split()[1:2] if res.ok else []
    have = inspect(srv, '{{index .Config.Labels "com.docker.compose.config-hash"}}', container_name(srv, app.name))
    return bool(want) and want[0] == have


def deploy(srv: Ctx, app: str | None = None, tier: str | None = None, every: bool = False,
           watch_after: bool = True, wake: bool = False) -> None:
    chosen = [a for a in (app, tier, every) if a]
    if len(chosen) != 1:
        raise OnevpsError("say what to deploy", "use exactly one of --app=NAME, --tier=base|ml, --all")
    if tier and tier not in tiers.TIER_ORDER:
        raise OnevpsError(f"unknown tier {tier!r}", "use --tier=base or --tier=ml")
    apps = [srv.reg.get(app)] if app else (srv.reg.by_tier(tier) if tier == "ml" else list(srv.reg.apps))
    srv.lap("connect")
    require_docker_on_server(srv)
    with state.deploy_lock(srv.run, srv.rs, f"deploy {app or ('tier ' + tier if tier else 'all')}"):
        _deploy_apps(srv, apps, tier, watch_after, wake)
    # After the lock: the next deploy need not wait for it, and it is no part of the switch.
    if srv.rs.prune_on_deploy:
        prune_server(srv)
        srv.lap("prune")
    srv.say(done_line(srv.timeline, len(apps)))


def done_line(tl: Timeline, apps: int) -> str:
    switched = f"; traffic moved to the new version after {tl.switched:.1f} s" if apps == 1 and tl.switched else ""
    return f"==> done in {tl.total():.1f} s{switched}"


def _deploy_apps(srv: Ctx, apps: list[App], tier: str | None, watch_after: bool, wake: bool = False) -> None:
    """Under the lock: room, files, .env, forced tiers, shared services, each app, prune."""
    # Room first: a refused build leaves the server's files as they were.
    forced = list(tiers.rebuilt_with(tier)) if tier else []
    require_room(srv, forced or missing_tiers(srv, {a.tier for a in apps}),
                 f"building {len(apps)} app{'s' if len(apps) != 1 else ''}")
    srv.lap("checks")
    plan = sync(srv, SHARED_SYNC + tuple(f"apps/{a.name}" for a in apps))
    if sync_env(srv):
        srv.say("note: the server's .env changed; apps pick it up as they are deployed")
    srv.lap("send")
    for t in forced:
        ensure_tier(srv, t, force=True)
    if forced:
        srv.lap("build")
    ensure_shared(srv)
    tenants.server_sync(srv)
    reload_nginx_if_changed(srv, plan)
    srv.lap("services")
    for a in apps:
        srv.say(f"==> {a.name}")
        if len(apps) > 1:
            state.relabel_lock(srv.run, srv.rs, f"deploy {a.name} ({apps.index(a) + 1} of {len(apps)})")
        deploy_app(srv, a, watch_after=watch_after, wake=wake)


def prune_server(srv: Ctx) -> None:
    prune.prune(srv.run, srv.project, srv.rs, srv.reg, srv.rs.prune_keep, srv.rs.prune_cache_mb,
                tags=srv.tags)


def rollback(srv: Ctx, app: str) -> None:
    target_app = srv.reg.get(app)
    require_docker_on_server(srv)
    with state.deploy_lock(srv.run, srv.rs, f"rollback {app}"):
        target = rollback_target(srv, app)
        srv.say(f"==> rolling {app} back to {target[:19]} (no rebuild)")
        deploy_app(srv, target_app, action="rollback", image=target)
    srv.say(done_line(srv.timeline, 1))


def rollback_target(srv: Ctx, app: str) -> str:
    """The newest image of the app in the journal that is not what serves now and is still on the server."""
    # What serves now: a deploy slot left running by a switch that stopped before its
    # step 3 serves instead of the app's own container.
    slot = slot_name(srv, app)
    serving = slot if inspect(srv, "{{.State.Running}}", slot) == "true" else container_name(srv, app)
    current = inspect(srv, "{{.Image}}", serving)
    history = [e for e in state.read_journal(srv.run, srv.rs)
               if e.get("app") == app and str(e.get("result", "")).startswith("ok") and e.get("image")]
    candidates = [e["image"] for e in reversed(history) if e["image"] != current]
    candidates += [e["previous_image"] for e in reversed(history) if e.get("previous_image")
                   and e["previous_image"] != current]
    target = next((img for img in candidates if inspect(srv, "{{.Id}}", img, kind="image")), None)
    if not target:
        raise OnevpsError(f"no earlier image of {app} is on the server", "see `fab history --app=" + app + "`")
    return target


def setup(srv: Ctx, ship: bool = False, swap: str | None = None, swarm_extra: Sequence[str] | None = None) -> None:
    """Make the server ready, idempotently: Docker and Compose v2 (onevps.provision),
    VPS_PATH, the files, .env, the tiers (shipped from here with ship), shared services.
    swarm_extra (a swarm's manager): ship these images too and start no Compose services
    (the stack runs them)."""
    srv.say(f"==> checking the server {srv.rs.vps_host or ''}".rstrip())
    report = provision.provision(provision.CtxHost(srv), srv.local.docker_install, srv.rs.vps_path, swap=swap)
    used = tiers_in_use(srv)
    if srv.run.dry_run and not report.docker_usable:
        srv.say("[dry-run] Docker is not ready on the server yet: the files, tiers and shared services are "
                "planned by a dry run once `fab setup` has prepared Docker")
        return
    if ship:
        shipped = shipping.ship(srv, tiers=used, upstream=True, extra=swarm_extra or ())
        if srv.run.dry_run:
            srv.planned |= set(shipped.shipped)
    to_build = missing_tiers(srv, set(used))
    require_room(srv, to_build, "setting up the server")
    state_dir = f"{srv.rs.vps_path}/{remote.STATE_DIR}"
    if not srv.run.run(shell.is_dir(state_dir), f"is there a {state_dir}", check=False, mutates=False).ok:
        srv.run.run(shell.mkdir_p(state_dir), f"create {state_dir}")
    sync(srv, remote.SHARED_DIRS + ("apps",))
    sync_env(srv)
    if "ml" in to_build and (warning := provision.memory_warning(report.memory)):
        srv.say(warning)
    for tier in used:
        ensure_tier(srv, tier)
    if swarm_extra is not None:
        return
    srv.say("==> starting the shared services (a changed entry is applied now)")
    ensure_shared(srv, recreate_changed=True)
    tenants.server_sync(srv)
    srv.say("==> the server is ready; next: fab deploy --all")
