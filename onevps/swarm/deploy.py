"""Deploy the stack: build, tag by content, push (with REGISTRY), write the
stack file, `docker stack deploy`, wait for the rolling update and report a
rollback. Where it runs is a Target: this machine (LocalTarget, `inv`) or the
server (swarm.server.ServerTarget, `fab`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

from .. import stack as local_stack, tenants
from ..commands.docker import image_inspect
from ..commands.swarm import (compose_networks_argv, push_argv, service_logs_argv, service_ps_argv,
                              stack_deploy_argv, swarm_state_argv, tag_argv)
from ..config import Settings
from ..errors import OnevpsError
from ..project import Project
from ..registry import Registry
from ..runner import Result, Runner
from .convert import ROUTES_FILE, STACK_FILE, tag_var
from .nodes import with_registry
from .render import Rendered, render, write
from .status import ServiceState, service_states, wait

SETTLED = ("completed", "created", "unchanged", "dry-run")


class Target(Protocol):
    """Where `docker stack deploy` runs."""

    stack_file: str  # the stack file's path there

    def upload(self) -> None:
        """Send the rendered files (stack file included) there."""

    def build(self, apps: Sequence[str]) -> None:
        """Build these apps' images there (through compose)."""

    def command(self, argv: list[str]) -> tuple[list[str], Mapping[str, str]]:
        """argv and the environment that hand `docker stack deploy` the compose variables."""

    def feed(self, argv: Sequence[str], step: str, stdin: str | None) -> Result:
        """argv there, reading stdin (the apps' Redis users and ChromaDB tokens, onevps.tenants)."""


class LocalTarget:
    """This machine: the compose variables travel in the environment of the command."""

    def __init__(self, runner: Runner, project: Project, settings: Settings, reg: Registry):
        self.runner, self.project, self.settings, self.reg = runner, project, settings, reg
        self.stack_file = str(project.root / STACK_FILE)
        self.env = local_stack.compose_env(project, settings)

    def upload(self) -> None:
        """Nothing to send: the files are here."""

    def build(self, apps: Sequence[str]) -> None:
        local_stack.build_apps(self.runner, self.project, self.settings, self.reg, apps)

    def command(self, argv: list[str]) -> tuple[list[str], Mapping[str, str]]:
        return argv, self.env

    def feed(self, argv: Sequence[str], step: str, stdin: str | None) -> Result:
        return self.runner.run(argv, step, stdin=stdin)


@dataclass
class DeployResult:
    stack_file: Path
    outcome: dict[str, str]
    tags: dict[str, str]


def content_tag(image_id: str) -> str:
    """A deploy tag from an image ID: the same build gives the same tag (no needless update)."""
    return "s-" + image_id.split(":")[-1][:12]


def image_repo(settings: Settings, app: str) -> str:
    registry = f"{settings.registry}/" if settings.registry else ""
    return f"{registry}{settings.image_namespace}/{app}"


def require_manager(runner: Runner) -> str:
    """This engine must be a Swarm manager on 20.10 or newer; returns the engine version."""
    res = runner.run(swarm_state_argv(), "docker info", check=False, mutates=False)
    if not res.ok:
        raise OnevpsError("the Docker engine is not reachable (`docker info` failed)",
                          "start it and check you may use it")
    state, control, version = (res.stdout.split() + ["", "", ""])[:3]
    if state != "active":
        raise OnevpsError("this Docker engine is not part of a swarm",
                          "run `docker swarm init --advertise-addr <this server's address>` first (see README, Swarm)")
    if control != "true":
        raise OnevpsError("this Docker engine is a swarm worker; stacks are deployed from a manager",
                          "run the deploy on a manager node")
    major = version.split(".")[0]
    if major.isdigit() and int(major) < 20:
        raise OnevpsError(f"Docker engine {version} applies no cap_drop/cap_add to Swarm services",
                          "upgrade the engine to 20.10 or newer")
    return version


def image_id(runner: Runner, ref: str) -> str | None:
    res = runner.run(image_inspect(ref, "{{.Id}}"), f"inspect {ref}", check=False, mutates=False)
    return res.stdout.strip() if res.ok and res.stdout.strip() else None


def tag_images(runner: Runner, settings: Settings, apps: Sequence[str], current: Mapping[str, ServiceState],
               rebuild: Sequence[str]) -> dict[str, str]:
    """Each app's deploy tag: its fresh build (rebuild) or the tag it runs now.

    A fresh build is tagged `s-<image id>` (and pushed with REGISTRY); an app
    not being deployed keeps the image its service runs, so `--app` touches
    one service only.
    """
    tags: dict[str, str] = {}
    for app in apps:
        running = current.get(app)
        if app not in rebuild and running and ":" in running.image.rsplit("/", 1)[-1]:
            tags[tag_var(app)] = running.image.rsplit(":", 1)[1]
            continue
        local = f"{settings.image_namespace}/{app}:latest"
        iid = image_id(runner, local)
        if iid is None:
            if runner.dry_run:
                tags[tag_var(app)] = "latest"
                continue
            raise OnevpsError(f"no image {local} to deploy", f"build it first: `inv build --app {app}`")
        tag = content_tag(iid)
        target = f"{image_repo(settings, app)}:{tag}"
        runner.run(tag_argv(local, target), f"tag {app} as {tag}")
        if settings.registry:
            runner.say(f"==> pushing {target}")
            runner.run(push_argv(target), f"push {target}", hide=False,
                       hint=f"log in first: `docker login {settings.registry.split('/')[0]}`")
        tags[tag_var(app)] = tag
    return tags


def deploy(runner: Runner, project: Project, settings: Settings, reg: Registry, target: Target,
           app: str | None = None, only: Iterable[str] | None = None) -> DeployResult:
    """Build, tag, (push), render, `docker stack deploy`, wait; raise on a rollback.

    `project` holds the local files, `settings` the target's values (the server's
    for fab); `target` sends, builds and runs the deploy there.
    """
    only = list(only) if only is not None else None
    outside = bool(settings.registry)  # an outside registry resolves digests; onevps's own: content tags
    settings = with_registry(settings)
    if app is not None:
        reg.get(app)
        if only is not None and app not in only:
            raise OnevpsError(f"--app {app} is not among the services to deploy", "add it or drop the selection")
    stack = settings.project_name
    require_manager(runner)
    before = service_states(runner, stack)
    if app and not before:
        raise OnevpsError(f"stack {stack} is not deployed yet, so there is nothing to update {app} in",
                          "deploy the whole stack first: swarm-deploy without --app")
    rendered = render(project, settings, only)
    _refuse_compose_networks(runner, stack, rendered)
    # The stack file holds no tags (they travel as variables), so it is
    # written, and sent with the sources, before anything is built.
    _write(runner, project, rendered)
    target.upload()
    todo = [app] if app else list(rendered.apps)
    if todo:
        target.build(todo)
    tags = tag_images(runner, settings, rendered.apps, before, rebuild=todo)
    runner.say(f"==> docker stack deploy {stack} ({len(rendered.services)} services"
               + (f"; updating {app}" if app else "") + ")")
    argv, env = target.command(stack_deploy_argv(target.stack_file, stack, bool(settings.registry), resolve=outside))
    runner.run(argv, "docker stack deploy", env={**env, **tags}, hint="the services keep running their previous version")
    outcome = wait(runner, stack, before, [app] if app else list(rendered.services), settings.deploy_timeout + 60)
    bad = {s: o for s, o in outcome.items() if o not in SETTLED}
    # Each app's own Redis user and ChromaDB token, in the services the stack runs now
    # (an app's first calls before this are refused; its health check does not use them).
    # After a rollback too: the apps that run need them; the rollback stays the error.
    try:
        tenants.sync(tenants.swarm_exec(runner, stack, target.feed), runner.say, settings, reg,
                     dry_run=runner.dry_run)
    except OnevpsError as exc:
        if not bad:
            raise
        runner.say(f"warning: {exc.message}")
    if bad:
        _report_rollback(runner, stack, bad)
    return DeployResult(project.root / STACK_FILE, outcome, tags)


def _refuse_compose_networks(runner: Runner, stack: str, rendered: Rendered) -> None:
    """A Compose project of the stack's name holding networks the stack needs must go first."""
    held = runner.run(compose_networks_argv(stack), "list Compose networks", check=False, mutates=False)
    clash = sorted(set(held.stdout.split()) & {f"{stack}_{n}" for n in rendered.networks}) if held.ok else []
    if clash:
        raise OnevpsError(f"the Compose stack {stack} still holds {', '.join(clash)}, which the Swarm stack needs",
                          "stop it first (`inv down`, on a server `docker compose -p "
                          f"{stack} down`); its volumes stay and the Swarm stack reuses them (same names)")


def _write(runner: Runner, project: Project, rendered: Rendered) -> None:
    if runner.dry_run:
        runner.say(f"[dry-run] would write {STACK_FILE} and {ROUTES_FILE} ({len(rendered.services)} services)")
        return
    for rel in write(project, rendered):
        runner.say(f"==> wrote {rel}")


def _report_rollback(runner: Runner, stack: str, bad: Mapping[str, str]) -> None:
    """Each failed service's tasks and last log lines, then the error."""
    for svc in bad:
        ps = runner.run(service_ps_argv(f"{stack}_{svc}"), f"tasks of {svc}", check=False, mutates=False)
        logs = runner.run(service_logs_argv(f"{stack}_{svc}"), f"logs of {svc}", check=False, mutates=False)
        runner.say(f"--- tasks of {svc} ---\n{ps.stdout.strip()}\n--- last log lines of {svc} ---\n"
                   f"{(logs.stdout + logs.stderr).strip() or '(no output)'}")
    what = "; ".join(f"{s}: {o}" for s, o in bad.items())
    raise OnevpsError(f"the update failed and Swarm rolled it back, the previous version keeps serving ({what})",
                      "read the task errors and log lines above, fix the app and deploy again")
