"""The server context (Ctx) of a `fab` task, the names of things on the server,
and small read-only questions about it (inspect, is Docker there, a snapshot
of the project's containers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fabric import Connection

from . import config, remote, sleep, tiers
from . import timeline as timeline_mod
from .commands import compose_cmd, docker_cmd
from .config import Settings
from .errors import OnevpsError
from .project import Project
from .registry import Registry
from .registry import load as load_registry
from .session import ShellSession


@dataclass
class Ctx:
    """Everything one server task needs."""

    local: Settings  # this machine's settings
    project: Project  # this machine's files: sources, tags
    rs: Settings  # the server's settings
    reg: Registry
    conn: Connection
    run: remote.RemoteRunner
    tags: dict[str, str]  # BASE_TAG / ML_TAG from the local files
    # Images a dry run of `fab ship` would have put on the server: later steps of the
    # same dry run count them as present (so it plans no tier build the real run skips).
    planned: set[str] = field(default_factory=set)
    timeline: timeline_mod.Timeline = field(default_factory=timeline_mod.Timeline)

    @property
    def vps(self) -> Project:
        """The project's files on the server, under VPS_PATH: what compose runs with there."""
        return remote.server_project(self.rs)

    def say(self, msg: str) -> None:
        self.run.say(msg)

    def lap(self, step: str) -> None:
        """The seconds since the last lap go to step; printed as a timeline line."""
        self.say(timeline_mod.line(step, self.timeline.lap(step)))


def open_ctx(project: Project, local: Settings, connection: object | None, dry_run: bool,
             secrets: bool = False) -> Ctx:
    rs = remote.remote_settings(project, local)
    if secrets:  # tasks that (re)start containers on the server
        config.require_secrets(rs, where=str(local.vps_env_file.name if local.vps_env_file else ".env"))
    server = remote.server_from(local, connection)
    conn = remote.connect(server)
    for tier in tiers.TIER_ORDER:
        tiers.stage_inputs(project, local, tier)
    tags = tiers.tag_env(project, rs)  # the server builds with its own .env (TORCH_INDEX_URL, ...)
    runner = remote.RemoteRunner(ShellSession(conn), env=tags, dry_run=dry_run)  # one shell, every command
    return Ctx(local, project, rs, load_registry(project.compose_file), conn, runner, tags)


# -------------------------------------------------------------------- names --

def tier_ref(srv: Ctx, tier: str) -> str:
    return f"{srv.rs.image_namespace}/{tier}:{srv.tags[tiers.tag_key(tier)]}"


def app_ref(srv: Ctx, name: str) -> str:
    return f"{srv.rs.image_namespace}/{name}:latest"


def container_name(srv: Ctx, name: str) -> str:
    return f"{srv.rs.project_name}-{name}-1"


def slot_name(srv: Ctx, name: str) -> str:
    return f"{srv.rs.project_name}-{name}-next"


def sleeping(srv: Ctx) -> set[str]:
    """Apps asleep on the server (sleep.asleep)."""
    return sleep.asleep(srv.run, srv.rs.project_name)


# ------------------------------------------------------------- questions --

def inspect(srv: Ctx, fmt: str, *refs: str, kind: str = "container") -> str | None:
    res = srv.run.run(docker_cmd.inspect(fmt, *refs, kind=kind), f"inspect {' '.join(refs)}",
                      check=False, mutates=False)
    return res.stdout.strip() if res.ok else None


def docker_denied(user: str, hint: str) -> OnevpsError:
    """The one line for a user that may not use Docker on the server."""
    return OnevpsError(f"VPS_USER {user} may not use Docker (permission denied on /var/run/docker.sock)", hint)


def require_docker_on_server(srv: Ctx) -> None:
    info = srv.run.run(docker_cmd.docker_info(), "docker info", check=False, mutates=False)
    if not info.ok:
        if "permission denied" in (info.stderr + info.stdout).lower():
            user = getattr(srv.conn, "user", None) or srv.rs.vps_user
            raise docker_denied(user, "run `fab setup` (adds it to the docker group)")
        raise OnevpsError(f"Docker does not answer on {srv.rs.vps_host or 'the server'}", "run `fab setup` first")
    if not srv.run.run(compose_cmd.compose_version(), "docker compose version", check=False, mutates=False).ok:
        raise OnevpsError("Docker Compose v2 is missing on the server", "run `fab setup` first")


def snapshot(srv: Ctx) -> dict[str, tuple[str, str]]:
    """Every container of the project: name -> (ID, start time)."""
    ids = srv.run.run(docker_cmd.project_containers(srv.rs.project_name), "list containers",
                      mutates=False).stdout.split()
    if not ids:
        return {}
    out = srv.run.run(docker_cmd.inspect("{{.Name}} {{.Id}} {{.State.StartedAt}}", *ids),
                      "inspect containers", mutates=False).stdout
    snap = {}
    for line in out.splitlines():
        name, cid, started = line.split()
        snap[name.lstrip("/")] = (cid, started)
    return snap


def proof(before: dict, after: dict, replaced: set[str]) -> list[str]:
    """Lines proving every other container kept its ID and start time."""
    lines, moved = [], []
    for name in sorted(before):
        if name in replaced:
            continue
        same = after.get(name) == before[name]
        lines.append(f"  {'unchanged' if same else 'CHANGED  '}  {name}  id {before[name][0][:12]}  started {before[name][1]}")
        if not same:
            moved.append(name)
    if moved:
        raise OnevpsError(f"containers changed that should not have: {', '.join(moved)}",
                          "check `fab status`; another process may be managing them")
    return [f"{len(lines)} other containers kept their ID and start time:"] + lines
