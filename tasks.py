"""onevps tasks for your own machine: `inv --list` shows them all.

Thin on purpose: each task loads the settings, picks a recipe from the
onevps package and prints its result. User errors print one line and exit
non-zero (onevps.errors.OnevpsError is an invoke Exit).
"""

import os

from invoke import task
from invoke.exceptions import Exit

from onevps import checks, commands, config, nginx, sleep, stack, swarm
from onevps import disk as disk_mod
from onevps import prune as prune_mod
from onevps import top as top_mod
from onevps.errors import OnevpsError, number_flag
from onevps.runner import Runner, require_docker


def _positional_help(name, usage):
    """`inv TASK --help` reaches a positional argument as its value: answer it."""
    if name in ("-h", "--help"):
        print(f"usage: {usage}\n(`inv --help {usage.split()[1]}` describes every flag)")
        raise SystemExit(0)


def _setup(c):
    settings = config.load()
    return settings, stack.load_registry(config.REPO), stack.make_runner(c, config.REPO, settings)


@task
def build_base(c):
    """Build the base tier image (python:3.11-slim + fastapi, uvicorn, httpx, ...)."""
    settings, _, runner = _setup(c)
    require_docker(runner)
    stack.build_tier(runner, config.REPO, settings, "base")


@task
def build_ml(c):
    """Build the ML tier image (base tier + torch CPU, sentence-transformers, ...)."""
    settings, _, runner = _setup(c)
    require_docker(runner)
    stack.build_tier(runner, config.REPO, settings, "ml")


@task(help={"app": "Build only this app's image (its tier is built first if missing).",
            "no-cache": "With --app: rebuild the app layer without the build cache."})
def build(c, app=None, no_cache=False):
    """Build images in tier order: base -> ml -> every app (or just --app NAME)."""
    settings, reg, runner = _setup(c)
    names = [reg.get(app).name] if app else None
    require_docker(runner)
    if names:
        stack.build_apps(runner, config.REPO, settings, reg, names, no_cache=no_cache)
    else:
        stack.build_all(runner, config.REPO, settings, reg)


@task(help={"build": "Rebuild every app image first (tiers are rebuilt only when they changed).",
            "app": "Build and start just this app (shared services are started if not running)."})
def up(c, build=False, app=None):
    """Start the whole stack, build what is missing, wait until healthy, print the URLs."""
    created = config.create_env_file(config.REPO_ROOT) if not os.environ.get("ONEVPS_ENV_FILE") else None
    if created:
        print(f"==> first run: wrote {created.name} from .env.example with new random secrets (REDIS_PASSWORD, CHROMA_TOKEN; mode 600)")
    settings, reg, runner = _setup(c)
    rows = stack.up(runner, config.REPO, settings, reg, rebuild=build, app=app)
    print(stack.table(rows))


@task(help={"volumes": "Also delete the data volumes (Redis, ChromaDB, Ollama, certificates). Data is lost."})
def down(c, volumes=False):
    """Stop and remove the stack's containers (data volumes are kept)."""
    settings, _, runner = _setup(c)
    require_docker(runner)
    runner.run(commands.down(config.REPO, settings, volumes=volumes), "stop the stack", hide=False)


@task
def status(c):
    """Show every app and shared service: tier, address, URL, state."""
    settings, reg, runner = _setup(c)
    print(stack.table(stack.status(runner, config.REPO, settings, reg)))


@task(help={"app": "Only this app or shared service (default: all).",
            "follow": "Keep printing new lines (Ctrl-C to stop).",
            "tail": "How many recent lines to show per container (default 100)."})
def logs(c, app=None, follow=False, tail="100"):
    """Show container logs."""
    lines = number_flag("tail", tail)
    settings, reg, runner = _setup(c)
    services = stack.service_names(reg, app)
    require_docker(runner)
    runner.run(commands.logs(config.REPO, settings, services, follow=follow, tail=int(lines)),
               "show logs", hide=False, mutates=False)


@task(help={"app": "The app to restart (required)."})
def restart(c, app=None):
    """Restart one app's container and wait until it is healthy again."""
    if not app:
        raise OnevpsError("no app given", "use `inv restart --app NAME`")
    settings, reg, runner = _setup(c)
    stack.restart(runner, config.REPO, settings, reg, app)


@task
def routes(c):
    """Regenerate the nginx routes and index page from the compose file's apps; reload a running nginx."""
    settings, reg, runner = _setup(c)
    changed = nginx.write(config.REPO.root, reg)
    print("\n".join(f"wrote {p}" for p in changed) or "nginx routes already up to date")
    if changed and stack.reload_nginx(runner, config.REPO, settings):
        print("nginx: new routes tested with `nginx -t` and reloaded")


@task
def check(c):
    """Check that apps/, the compose file and nginx agree and addresses are unique."""
    config.load()  # the settings are checked first
    print(checks.run(config.REPO))


@task(help={"show-defaults": "Also list keys left at their default."})
def settings(c, show_defaults=False):
    """Print the effective settings (.env + environment + defaults)."""
    s = config.load()
    for key in config.KEYS:
        value = s.raw.get(key.name, "")
        if show_defaults or value != key.default:
            shown = "(set, hidden)" if key.name in config.SECRET_KEYS and value else value
            print(f"{key.name}={shown}")


@task(help={"name": "The app's name: a DNS label (a-z, 0-9, '-'), also its subdomain and image name.",
            "tier": "Image tier: base (web stack) or ml (adds torch, sentence-transformers, ...). Default: base.",
            "domain": "An extra host name nginx routes to this app (besides NAME.<DOMAIN>).",
            "sleep-after": "Let the app sleep after this long without a request (90s, 15m, 2h; label "
                           "onevps.sleep_after); its next request wakes it. Default: always awake.",
            "dry-run": "Show what would change; change nothing."})
def new_app(c, name, tier="base", domain=None, sleep_after=None, dry_run=False):
    """Add an app: apps/NAME from the template, its compose entry and its nginx route (all or nothing)."""
    _positional_help(name, "inv new-app NAME [--tier base|ml] [--domain HOST] [--sleep-after 15m] [--dry-run]")
    settings = config.load()
    print("\n".join(stack.new_app(c, config.REPO, settings, name, tier, domain, dry_run, sleep_after)))


@task(help={"name": "The app to remove.",
            "yes": "Do not ask for confirmation.",
            "dry-run": "Show what would change; change nothing."})
def remove_app(c, name, yes=False, dry_run=False):
    """Remove an app: its folder, compose entry and nginx route (asks first)."""
    _positional_help(name, "inv remove-app NAME [--yes] [--dry-run]")
    settings = config.load()
    print("\n".join(stack.remove_app(c, config.REPO, settings, name, yes, dry_run)))


@task(help={"json": "Print the report as JSON (for scripts).",
            "budget": "Budget for each app's own layers, in MB (default 5)."})
def disk(c, json=False, budget="5"):
    """Image disk use: unique/shared bytes per image, on disk vs unlayered, app layers vs budget."""
    import json as json_mod

    budget_bytes = disk_mod.budget_bytes(budget)
    settings, reg, runner = _setup(c)
    require_docker(runner)
    data = disk_mod.report(runner, config.REPO, settings, reg, budget_bytes)
    print(json_mod.dumps(data, indent=2) if json else disk_mod.render(data))
    disk_mod.check_budget(data)


@task(help={"keep": "How many images of each app to keep for rollback (default 3).",
            "cache-limit": "Trim the build cache down to this many MB (default 2000).",
            "dry-run": "List what would be removed and the room it would free; remove nothing."})
def prune(c, keep="3", cache_limit="2000", dry_run=False):
    """Remove old app images (keeping the newest N), unused tier images, dangling images, excess build cache."""
    keep_n, cache_mb = number_flag("keep", keep, minimum=1), number_flag("cache-limit", cache_limit)
    settings = config.load()
    reg = stack.load_registry(config.REPO)
    runner = stack.make_runner(c, config.REPO, settings, dry_run=dry_run)
    require_docker(runner)
    prune_mod.prune(runner, config.REPO, settings, reg, int(keep_n), int(cache_mb))


TOP_HELP = {
    "minutes": "Count requests, 5xx and p50/p95 latency over the last N minutes of nginx's log (default 5).",
    "json": "Print one JSON object (rows, totals, the window) instead of the table.",
    "watch": "Refresh in place every --interval seconds until Ctrl-C.",
    "interval": "Seconds between refreshes with --watch (default 2).",
}


@task(help=TOP_HELP)
def top(c, minutes="5", json=False, watch=False, interval="2"):
    """Every app and shared service, largest memory first: state, memory/limit, CPU %, requests/min, 5xx/min, p50/p95, restarts, image age, disk (the bytes only its image holds)."""
    window = number_flag("minutes", minutes, minimum=1)
    every = number_flag("interval", interval, minimum=0.5, whole=False) if watch else None
    settings = config.load()
    runner = Runner(c)  # plain docker reads: no compose environment, nothing staged
    require_docker(runner)
    src = top_mod.Source(runner, settings.project_name, stack.load_registry(config.REPO), settings.domain,
                         hint="start it: `inv up`", sleeping=lambda: sleep.asleep(runner, settings.project_name))
    top_mod.show(src, window, as_json=json, every=every)


# ------------------------------------------------------------------ swarm --

def _only(services):
    return [s.strip() for s in services.split(",") if s.strip()] if services else None


@task
def swarm_check(c):
    """List what Docker Swarm ignores or rejects in the compose file, and the fix onevps applies to each."""
    checked = swarm.check(config.REPO, config.load())
    print(swarm.report(checked.findings, checked.refused))
    if checked.refused:
        raise Exit(code=1)


@task(help={"services": "Comma-separated services to put in the stack (default: every service without a profile).",
            "stdout": "Print the stack file instead of writing compose/swarm/docker-stack.yml."})
def swarm_render(c, services=None, stdout=False):
    """Render the Swarm stack file (and its nginx routes) from compose/docker-compose.yml, written atomically."""
    settings = config.load()
    rendered = swarm.render(config.REPO, settings, _only(services))
    if stdout:
        print(rendered.stack, end="")
        return
    changed = swarm.write(config.REPO, rendered)
    print("\n".join(f"wrote {p}" for p in changed) or "the stack file is already up to date")


@task(help={"app": "Build and roll out just this app (the stack must be deployed already).",
            "services": "Comma-separated services to put in the stack (default: every service without a profile).",
            "dry-run": "Print the commands that would change something; change nothing."})
def swarm_deploy(c, app=None, services=None, dry_run=False):
    """On this machine's swarm: build, tag (and push to REGISTRY), render, `docker stack deploy`, wait; report a rollback."""
    settings, reg, runner = _setup(c)
    if app:
        reg.get(app)
    config.require_secrets(settings)
    runner.dry_run = dry_run
    require_docker(runner)
    target = swarm.LocalTarget(runner, config.REPO, settings, reg)
    result = swarm.deploy(runner, config.REPO, settings, reg, target, app=app, only=_only(services))
    print("\n".join(f"{svc}: {outcome}" for svc, outcome in result.outcome.items()))


@task
def swarm_status(c):
    """Every service of the stack on this machine's swarm: replicas, image, last update."""
    settings, _, runner = _setup(c)
    require_docker(runner)
    print(stack.columns(swarm.status_rows(runner, settings)))
