"""`fab swarm-deploy` and `fab swarm-status`: the stack on the server's swarm.

Renders with the server's settings, sends compose/ (stack file included),
nginx/, dockerfiles/ and the apps, builds on the server through compose,
tags by content (pushes with REGISTRY), `docker stack deploy` with the
server's settings, waits; Swarm rolls a failed update back by itself.
"""

from __future__ import annotations

import posixpath
from typing import Mapping, Sequence

from .. import config, remote, state, tenants
from ..commands.swarm import with_env_lines
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

    def feed(self, argv: Sequence[str], step: str, stdin: str | None):
        """argv on the server, reading stdin (from a private file there)."""
        return tenants.server_input(self.ctx, argv, step, stdin)

    def command(self, argv: list[str]) -> tuple[list[str], Mapping[str, str]]:
        """Secrets stay off the command line and out of any shell's parsing: the settings
        (VPS_ENV_FILE, read here as for every other task, uploaded as the server's .env) go
        to a private file of literal KEY=value lines that the command reads, then removes."""
        values = config.env_file_values(self.ctx.local.vps_env_file)  # type: ignore[arg-type]
        values.update(tenants.derived(self.ctx.rs, self.ctx.reg.names()))  # each app's own secrets
        target = posixpath.join(self.ctx.rs.vps_path, remote.STATE_DIR, "stack.env")
        remote.put_text(self.ctx.conn, self.ctx.run, target, config.literal_env_text(values, "the server's settings"),
                        mode="600")
        return with_env_lines(target, argv), {}


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
