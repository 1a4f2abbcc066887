"""onevps tasks for the server, over SSH: `fab --list` shows them all.

The server comes from .env (VPS_HOST, VPS_USER, VPS_PORT, VPS_PATH,
VPS_SSH_KEY) or from `fab -H user@host`. Thin on purpose: the recipes live in
onevps.deploy (read-only views in onevps.views); user errors print one line
and exit non-zero.
"""

from pathlib import Path

from fabric import task

from onevps import backup as recipes_backup, certs as recipes_certs, config, deploy as recipes
from onevps import disk as recipes_disk
from onevps import provision as recipes_provision
from onevps import ship as recipes_ship
from onevps import top as recipes_top
from onevps import commands, server, state, views
from onevps.errors import OnevpsError, confirm, number_flag
from onevps.registry import SHARED_SERVICES
from onevps.registry import load as load_registry
from onevps.swarm import cluster as swarm_cluster
from onevps.swarm import server as swarm_server


def _ctx(c, dry_run=False, secrets=False):
    return server.open_ctx(config.REPO, config.load(), c, dry_run, secrets=secrets)


def _manager_ctx(c, dry_run=False, secrets=False):
    """The swarm's manager: `fab -H`, else SWARM_MANAGER, else VPS_HOST."""
    local = config.load()
    return server.open_ctx(config.REPO, local, swarm_cluster.manager_connection(local, c), dry_run, secrets=secrets)


def _check_target(app=None, tier=None):
    """Refuse an unknown app or tier before connecting to anything."""
    config.load()  # the settings are checked first
    if app and app not in SHARED_SERVICES:
        load_registry(config.REPO.compose_file).get(app)
    if tier is not None and tier not in ("base", "ml"):
        raise OnevpsError(f"unknown tier {tier!r}", "use --tier=base or --tier=ml")


@task(help={"ship": "Send the upstream images and the tiers from this machine over SSH instead of pulling and "
                    "building them on the server.",
            "swap": "Make sure a swap file /swapfile of this SIZE (e.g. 2G) exists and is on (idempotent; "
                    "added to /etc/fstab once).",
            "dry-run": "Print every remote command that would change something (apt packages, files written); "
                       "change nothing."})
def setup(c, ship=False, swap=None, dry_run=False):
    """Make a bare Debian/Ubuntu server ready: Docker + Compose v2 (DOCKER_INSTALL), log rotation, docker group, VPS_PATH, files, .env (mode 600), tiers."""
    if swap is not None:
        recipes_provision.parse_size(swap)  # a bad size is refused before connecting
    recipes.setup(_ctx(c, dry_run, secrets=True), ship=ship, swap=swap)


@task(help={"app": "Deploy just this app.",
            "tier": "Rebuild this tier (base or ml) on the server and redeploy its apps one at a time.",
            "all": "Deploy every app, one at a time.",
            "no-watch": "Skip the watch after the switch (without it: DEPLOY_WATCH seconds of health and "
                        "5xx share, and a failing new version is rolled back by itself).",
            "wake": "Start a sleeping app with its new version now (without it: it sleeps on and the new "
                    "version wakes on its next request).",
            "dry-run": "Print every remote command and which containers would change; change nothing."})
def deploy(c, app=None, tier=None, all=False, no_watch=False, wake=False, dry_run=False):
    """Send what changed, build only the app's layer on the server, swap its container with zero failed requests."""
    _check_target(app, tier)
    recipes.deploy(_ctx(c, dry_run, secrets=True), app=app, tier=tier, every=all, watch_after=not no_watch,
                   wake=wake)


@task(help={"app": "The app to roll back (required).",
            "dry-run": "Print what would happen; change nothing."})
def rollback(c, app=None, dry_run=False):
    """Return an app to its previous image (no rebuild), with the same zero-failure switch."""
    if not app:
        raise OnevpsError("no app given", "use `fab rollback --app=NAME`")
    _check_target(app)
    recipes.rollback(_ctx(c, dry_run, secrets=True), app)


@task(help={"app": "Only this app's deploys."})
def history(c, app=None):
    """Show the deploy journal: time, user, git commit, app, image, result."""
    _check_target(app)
    print(views.history(_ctx(c), app))


@task
def status(c):
    """Every container on the server: state, health, image age, memory."""
    print(views.status(_ctx(c)))


@task(help={"app": "The app (or shared service) whose logs to show (required).",
            "follow": "Keep printing new lines (Ctrl-C to stop).",
            "tail": "How many recent lines to show (default 100)."})
def logs(c, app=None, follow=False, tail="100"):
    """Show an app's container logs on the server."""
    lines = number_flag("tail", tail)
    if not app:
        raise OnevpsError("no app given", "use `fab logs --app=NAME`")
    _check_target(app)
    ctx = _ctx(c)
    name = app if app in SHARED_SERVICES else ctx.reg.get(app).name
    ctx.run.run(commands.logs(ctx.vps, ctx.rs, [name], follow=follow, tail=int(lines)), "show logs",
                hide=False, mutates=False)


@task
def unlock(c):
    """Break a stale deploy lock on purpose (names who held it)."""
    ctx = _ctx(c)
    holder = state.read_lock(ctx.run, ctx.rs)
    if holder is None:
        print("no deploy lock is held")
        return
    state.release_lock(ctx.run, ctx.rs)
    print(f"removed the deploy lock held by {holder}")


@task(help={"dest": "Local folder the archive is downloaded to (default: backups/).",
            "dry-run": "Print every remote command; change nothing."})
def backup(c, dest="backups", dry_run=False):
    """Archive the data volumes (Redis, ChromaDB, Ollama, certificates) and .env on the server; download it."""
    ctx = _ctx(c, dry_run)
    path = recipes_backup.backup(ctx, config.REPO_ROOT / dest if not dest.startswith("/") else Path(dest))
    if path:
        print(f"downloaded {path} ({path.stat().st_size} bytes, mode 600: it holds the server's secrets)")


@task(help={"archive": "The archive `fab backup` downloaded.",
            "env": "Also put back the server's .env from the archive.",
            "yes": "Do not ask for confirmation.",
            "dry-run": "Print every remote command; change nothing."})
def restore(c, archive, env=False, yes=False, dry_run=False):
    """Put a backup back: replaces the data volumes on the server (stops the stateful services meanwhile)."""
    if archive in ("-h", "--help"):
        print("usage: fab restore ARCHIVE [--env] [--yes] [--dry-run]\n(`fab --help restore` describes every flag)")
        return
    path = Path(archive)
    recipes_backup.check_archive(path)
    if not yes and not dry_run and not confirm(f"Replace the server's data with {path.name}?",
                                               "replace the server's data"):
        print("nothing restored")
        return
    ctx = _ctx(c, dry_run)
    with state.deploy_lock(ctx.run, ctx.rs, f"restore {path.name}"):
        recipes_backup.restore(ctx, path, with_env=env)


@task(help={"no-schedule": "Do not install the daily renewal job.",
            "dry-run": "Print every remote command; change nothing."})
def certs(c, no_schedule=False, dry_run=False):
    """Obtain or renew Let's Encrypt certificates for every app's domain (HTTP-01 via nginx), then reload nginx."""
    ctx = _ctx(c, dry_run, secrets=True)

    with state.deploy_lock(ctx.run, ctx.rs, "certs"):
        recipes.sync_env(ctx)
        recipes_certs.certs(ctx, schedule=not no_schedule)


@task(help={"dry-run": "List what would be removed and the room it would free; remove nothing."})
def prune(c, dry_run=False):
    """On the server: remove old app images (keeping PRUNE_KEEP each), unused tiers, dangling images, excess cache."""
    ctx = _ctx(c, dry_run)
    with state.deploy_lock(ctx.run, ctx.rs, "prune"):
        recipes.prune_server(ctx)


@task(help={"json": "Print the report as JSON (for scripts).",
            "budget": "Budget for each app's own layers, in MB (default 5)."})
def disk(c, json=False, budget="5"):
    """On the server: image disk use (unique/shared per image, on disk vs unlayered, savings), app layers vs budget."""
    budget_bytes = recipes_disk.budget_bytes(budget)  # a bad budget is refused before connecting
    views.disk(_ctx(c), budget_bytes, json)


@task(help={"minutes": "Count requests, 5xx and p50/p95 latency over the last N minutes of nginx's log (default 5).",
            "json": "Print one JSON object (rows, totals, the window) instead of the table.",
            "watch": "Refresh in place every --interval seconds until Ctrl-C.",
            "interval": "Seconds between refreshes with --watch (default 2)."})
def top(c, minutes="5", json=False, watch=False, interval="2"):
    """On the server: every app and shared service, largest memory first: state, memory/limit, CPU %, requests/min, 5xx/min, p50/p95, restarts, image age, disk (the bytes only its image holds)."""
    window = number_flag("minutes", minutes, minimum=1)  # bad flags are refused before connecting
    every = number_flag("interval", interval, minimum=0.5, whole=False) if watch else None
    recipes_top.on_server(_ctx(c), window, as_json=json, every=every)


@task(help={"app": "Build and roll out just this app (the stack must be deployed already).",
            "services": "Comma-separated services to put in the stack (default: every service without a profile).",
            "dry-run": "Print every remote command that would change something; change nothing."})
def swarm_deploy(c, app=None, services=None, dry_run=False):
    """On the server's swarm: send the files, build, tag (push to REGISTRY), `docker stack deploy`, wait; Swarm rolls back a failure."""
    _check_target(app)
    only = [s.strip() for s in services.split(",") if s.strip()] if services else None
    result = swarm_server.deploy_on_server(_manager_ctx(c, dry_run, secrets=True), app, only)
    print("\n".join(f"{svc}: {outcome}" for svc, outcome in result.outcome.items()))


@task
def swarm_status(c):
    """Every service of the stack on the server's swarm: replicas, image, last update."""
    print(swarm_server.status_on_server(_manager_ctx(c)))


@task(help={"ship": "Send the tiers, the upstream images and the registry's image to the manager from this machine "
                    "over SSH instead of pulling and building them there.",
            "swap": "Make sure every server has a swap file /swapfile of this SIZE (e.g. 2G).",
            "dry-run": "Print every remote command that would change something on each server; change nothing."})
def swarm_setup(c, ship=False, swap=None, dry_run=False):
    """Make SWARM_MANAGER and SWARM_WORKERS one swarm: fab setup's steps, swarm init/join, node labels, a registry (idempotent)."""
    if swap is not None:
        recipes_provision.parse_size(swap)
    swarm_cluster.setup(config.REPO, config.load(), dry_run=dry_run, ship=ship, swap=swap)


@task
def swarm_nodes(c):
    """The swarm's nodes: role, state, availability, address, onevps labels and the services running there."""
    print(swarm_cluster.show_nodes(config.REPO, config.load()))


@task(help={"tiers": "Ship the base and ML tier images (built here first when missing).",
            "upstream": "Ship the upstream images the compose file runs (nginx, redis, chroma, ollama...).",
            "app": "Ship this app's image (built here first when missing).",
            "dry-run": "List what would be shipped (name, size) and what is already there; send nothing."})
def ship(c, tiers=False, upstream=False, app=None, dry_run=False):
    """Send images from this machine to the server over SSH (one docker save | docker load); skips what it has."""
    if not (tiers or upstream or app):
        raise OnevpsError("nothing to ship", "choose at least one of --tiers, --upstream, --app NAME")
    _check_target(app)
    if app in SHARED_SERVICES:
        raise OnevpsError(f"{app} is a shared service, not an app", "use --upstream to ship the shared services' images")
    recipes_ship.ship(_ctx(c, dry_run), tiers=tiers, upstream=upstream, app=app)
