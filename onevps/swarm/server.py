"""`fab swarm-deploy` and `fab swarm-status`: the stack on the server's swarm.

Renders with the server's settings, sends compose/ (stack file included),
nginx/, dockerfiles/ and the apps, builds on the server through compose,
tags by content (pushes with REGISTRY), `docker stack deploy` reading the
server's .env, waits; Swarm rolls a failed update back by itself.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .. import remote, state
from ..commands.swarm import with_env_file
from ..deploy import build_app, missing_tiers, require_room, sync, sync_env
from ..server import Ctx, require_docker_on_server
from ..stack import columns
from .convert import STACK_FILE
from .deploy import DeployResult, deploy
from .status import status_rows


class ServerTarget:
    """The server: files go over SSH, builds run there, its shell reads the compose variables from its .env."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.stack_file = f"{ctx.rs.vps_path}/{STACK_FILE.as_posix()}"

    def upload(self) -> None:
        sync(self.ctx, remote.SHARED_DIRS + ("apps",))

    def build(self, apps: Sequence[str]) -> None:
        for name in apps:
            build_app(self.ctx, self.ctx.reg.get(name))

    def command(self, argv: list[str]) -> tuple[list[str], Mapping[str, str]]:
        """Secrets stay off the command line: the server's shell exports its .env first."""
        return with_env_file(f"{self.ctx.rs.vps_path}/.env", argv), {}


def deploy_on_server(ctx: Ctx, app: str | None = None, only: list[str] | None = None) -> DeployResult:
    """`fab swarm-deploy`: the stack (or one app of it) on the server's swarm, under the deploy lock."""
    require_docker_on_server(ctx)
    target = ctx.reg.get(app) if app else None
    with state.deploy_lock(ctx.run, ctx.rs, f"swarm-deploy {app or 'stack'}"):
        apps = [target] if target else list(ctx.reg.apps)
        require_room(ctx, missing_tiers(ctx, {a.tier for a in apps}), "building for the swarm")
        sync_env(ctx)
        # The server's values with the local files (rendered here, then sent).
        return deploy(ctx.run, ctx.project, ctx.rs, ctx.reg, ServerTarget(ctx), app=target.name if target else None,
                      only=only)


def status_on_server(ctx: Ctx) -> str:
    """`fab swarm-status`: SERVICE, REPLICAS, IMAGE, LAST UPDATE on the server's swarm."""
    require_docker_on_server(ctx)
    return columns(status_rows(ctx.run, ctx.rs))
