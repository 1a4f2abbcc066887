"""`fab swarm-setup` and `fab swarm-nodes`: servers become one swarm.

swarm-setup, idempotent: reach every server and look first (architecture,
swarm state, an outside REGISTRY answering), refusing in one line before
anything changes; then the manager gets `fab setup`'s steps (Docker, Compose,
files, .env, tiers; no Compose services: the stack runs them) and each worker
the provisioning part; `docker swarm init` on the manager, each worker joins
with the token (read over SSH, sent to its engine's API in a mode-600 file,
never shown); node labels; with workers and no REGISTRY, the registry on the
manager (onevps.swarm.registry).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import urllib.error
import urllib.request
from typing import Iterator, Sequence

from fabric import Connection

from .. import deploy as recipes, provision, remote
from ..commands import nodes as cmd, shell
from ..commands.host import as_root
from ..config import Settings
from ..errors import OnevpsError, register_secrets
from ..project import Project
from ..server import Ctx, open_ctx
from ..stack import columns
from . import registry as own
from .nodes import (Node, SwarmState, advertise_address, join_body, labels_for, manager_plan, missing_labels, node_rows,
                    nodes, parse_swarm, parse_tasks, route_source, same_arch, worker_plan)


def manager_connection(local: Settings, connection: object | None) -> object | None:
    """The manager to connect to: `fab -H` (a Connection with a host) first, else SWARM_MANAGER, else
    None (VPS_HOST)."""
    if isinstance(connection, Connection) and connection.host:
        return connection
    if local.swarm_manager:
        s = nodes(local)[0].server
        return Connection(s.host, user=s.user, port=s.port)
    return None


@contextlib.contextmanager
def connected(project: Project, local: Settings, members: Sequence[Node], dry_run: bool,
              secrets_: bool = True) -> Iterator[list[Ctx]]:
    """A Ctx per node (the manager's checks the secrets); one that cannot be reached is one line
    naming it, before anything changed; every connection is closed afterwards."""
    ctxs: list[Ctx] = []
    try:
        for node in members:
            s = node.server
            conn = Connection(s.host, user=s.user, port=s.port)
            try:
                ctxs.append(open_ctx(project, local, conn, dry_run, secrets=secrets_ and node.role == "manager"))
            except OnevpsError as exc:
                raise OnevpsError(f"swarm {node.role}: {exc.what}", exc.hint) from None
        yield ctxs
    finally:
        for c in ctxs:
            with contextlib.suppress(Exception):
                c.conn.close()


def look(c: Ctx) -> tuple[str, SwarmState]:
    """A server's architecture and its engine's swarm state (no engine yet: state "")."""
    arch = c.run.run(cmd.uname_m(), "read the architecture", mutates=False).stdout.strip()
    res = c.run.run(cmd.swarm_json(), "read the swarm state", check=False, mutates=False)
    return arch, parse_swarm(res.stdout if res.ok else "")


def node_labels(c: Ctx, node_id: str) -> dict[str, str]:
    res = c.run.run(cmd.node_inspect(node_id), "read the node's labels", check=False, mutates=False)
    return dict(((parse_inspect(res.stdout) or [{}])[0].get("Spec") or {}).get("Labels") or {}) if res.ok else {}


def parse_inspect(text: str) -> list[dict]:
    """`docker node ls|inspect --format '{{json .}}'`: one object per line."""
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def check_outside_registry(registry: str) -> None:
    """An outside REGISTRY must answer `GET /v2/` (200, or 401: it wants a login)."""
    url = f"https://{registry.split('/')[0]}/v2/"
    try:
        urllib.request.urlopen(url, timeout=10)  # noqa: S310 - https only
    except urllib.error.HTTPError as exc:
        if exc.code in (200, 401):
            return
        raise OnevpsError(f"REGISTRY {registry} answers {url} with HTTP {exc.code}, not a registry's 200 or 401",
                          "check REGISTRY (host[:port][/path] of a Docker registry)") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OnevpsError(f"REGISTRY {registry} does not answer ({url}: {reason})",
                          "check REGISTRY and that the registry is up; empty REGISTRY: onevps runs one on the manager")


# ------------------------------------------------------------------ setup --

def setup(project: Project, local: Settings, dry_run: bool = False, ship: bool = False, swap: str | None = None) -> None:
    """`fab swarm-setup` (see the module's docstring)."""
    members = nodes(local)
    workers = members[1:]
    advertise = advertise_address(local)
    outside = remote.remote_settings(project, local).registry  # REGISTRY of the server's settings
    if outside:
        check_outside_registry(outside)
    elif workers and (others := [n.label for n in members if n.server.user != "root"]):
        raise OnevpsError(f"the registry onevps runs for the workers keeps its certificates under /etc, which "
                          f"needs root on every server, but {', '.join(others)} logs in as another user",
                          "name root@ in SWARM_MANAGER/SWARM_WORKERS (or VPS_USER=root), or set REGISTRY "
                          "to a registry of your own")
    with connected(project, local, members, dry_run) as ctxs:
        mc, wcs = ctxs[0], ctxs[1:]
        rs = mc.rs
        plans = _plan(mc, wcs, members, advertise)
        mc.say(f"==> swarm: manager {members[0].server.host} ({plans[0]}), "
               + (", ".join(f"worker {n.server.host} ({p})" for n, p in zip(workers, plans[1:])) or "no workers"))
        registry = f"{advertise}:{local.swarm_registry_port}" if workers and not rs.registry else ""
        _prepare(mc, wcs, members, ship, swap, registry)
        if dry_run and not _docker_ready(mc):
            mc.say("[dry-run] the swarm itself is planned once Docker runs on the servers")
            return
        manager_id = _init(mc, plans[0], advertise)
        _label(mc, manager_id, labels_for("manager", _hostname(mc), rs.project_name))
        _join(mc, wcs, workers, plans[1:], advertise)
        if registry:
            own.ensure(mc, wcs, advertise, local.swarm_registry_port)
        if not dry_run:
            mc.say(table(mc))
        mc.say("==> the swarm is ready; next: fab swarm-deploy")


def _plan(mc: Ctx, wcs: Sequence[Ctx], members: Sequence[Node], advertise: str) -> list[str]:
    """Look at every server, refuse what cannot work (nothing has changed yet)."""
    seen = [look(c) for c in (mc, *wcs)]
    same_arch({n.label: arch for n, (arch, _) in zip(members, seen)})
    mstate = seen[0][1]
    labels = node_labels(mc, mstate.node_id) if mstate.active and mstate.manager else {}
    plans = [manager_plan(mstate, labels, mc.rs.project_name, members[0].label)]
    known: list[str] = []
    if plans[0] == "ours":
        res = mc.run.run(cmd.node_ls(), "list the swarm's nodes", check=False, mutates=False)
        known = [n.get("ID", "") for n in parse_inspect(res.stdout)]
    for node, (_, state) in zip(members[1:], seen[1:]):
        plans.append(worker_plan(state, advertise, known, node.label))
    return plans


def _prepare(mc: Ctx, wcs: Sequence[Ctx], members: Sequence[Node], ship: bool, swap: str | None,
             registry: str) -> None:
    """`fab setup` on the manager (without Compose services); Docker on each worker."""
    mc.say(f"==> {members[0].label}: fab setup's steps")
    recipes.setup(mc, ship=ship, swap=swap, swarm_extra=[cmd.REGISTRY_IMAGE] if registry else [])
    for node, c in zip(members[1:], wcs):
        c.say(f"==> {node.label}: Docker")
        provision.provision(provision.CtxHost(c), c.local.docker_install, c.rs.vps_path, swap=swap)
    for c in (mc, *wcs):
        for tool in ("curl", "openssl"):
            if not c.run.run(cmd.command_exists(tool), f"is {tool} there", check=False, mutates=False).ok:
                c.run.run(as_root(["apt-get", "install", "-y", "-q", tool], _is_root(c)), f"install {tool}")


def _docker_ready(c: Ctx) -> bool:
    return c.run.run(cmd.swarm_json(), "docker info", check=False, mutates=False).ok


def _is_root(c: Ctx) -> bool:
    return (c.conn.user or c.rs.vps_user) == "root"


def _hostname(c: Ctx) -> str:
    return c.run.run(["hostname"], "read the host name", mutates=False).stdout.strip()


def _init(mc: Ctx, plan: str, advertise: str) -> str:
    """`docker swarm init` when there is no swarm yet; the manager's node ID."""
    if plan == "init":
        mc.say(f"==> docker swarm init --advertise-addr {advertise}")
        mc.run.run(cmd.swarm_init(advertise), "docker swarm init",
                   hint="check SWARM_ADVERTISE_ADDR is an address of the manager")
    else:
        mc.say("==> swarm: the manager is in onevps's swarm already")
    return parse_swarm(mc.run.run(cmd.swarm_json(), "read the swarm state", mutates=False).stdout).node_id or "self"


def _label(mc: Ctx, node_id: str, wanted: Sequence[str]) -> None:
    todo = missing_labels(wanted, node_labels(mc, node_id))
    if todo:
        mc.run.run(cmd.node_label_add(node_id, todo), f"label node {node_id[:12]}")
        mc.say(f"==> labelled node {node_id[:12]}: {', '.join(todo)}")


def _join(mc: Ctx, wcs: Sequence[Ctx], workers: Sequence[Node], plans: Sequence[str], advertise: str) -> None:
    """Each worker not in the swarm joins; every worker gets its labels."""
    token = ""
    for node, c, plan in zip(workers, wcs, plans):
        if plan == "join":
            if not token:
                token = mc.run.run(cmd.join_token(), "read the join token", mutates=False).stdout.strip()
                register_secrets([token])  # masked everywhere from here on
            _join_one(c, node, advertise, token)
        state = parse_swarm(c.run.run(cmd.swarm_json(), "read the swarm state", mutates=False).stdout)
        if plan == "join" and state.state != "active" and not c.run.dry_run:
            raise OnevpsError(f"the {node.label} did not join the swarm (its state: {state.state or 'unknown'})",
                              f"check that it reaches {advertise} on TCP 2377, 7946 and UDP 7946, 4789")
        _label(mc, state.node_id or node.server.host, labels_for("worker", _hostname(c), mc.rs.project_name))


def _join_one(c: Ctx, node: Node, advertise: str, token: str) -> None:
    src = route_source(c.run.run(cmd.route_source(advertise), "find this server's address", mutates=False).stdout)
    c.say(f"==> {node.label} joins the swarm at {advertise}:2377 (advertising {src})")
    body = f"/tmp/onevps-swarm-join-{secrets.token_hex(6)}.json"  # mode 600 from its first byte
    remote.put_text(c.conn, c.run, body, join_body(advertise, src, token), mode="600")
    try:
        res = c.run.run(cmd.join_via_api(body), "join the swarm", check=False)
    finally:
        c.run.run(shell.rm_f(body), "remove the join file", check=False)
    if c.run.dry_run:
        return
    answer, _, status = res.stdout.rstrip("\n").rpartition("\n")
    if not res.ok or status.strip() != "200":
        why = join_error(answer) or res.stderr.strip() or f"exit {res.exited}, HTTP {status.strip() or '-'}"
        raise OnevpsError(f"the {node.label} could not join the swarm: {why[:200]}",
                          f"check that it reaches {advertise} on TCP 2377, 7946 and UDP 7946, 4789")


def join_error(answer: str) -> str:
    """The engine's error message in a `POST /swarm/join` answer ({"message": ...})."""
    try:
        return str((json.loads(answer) or {}).get("message") or "")
    except (ValueError, AttributeError):
        return answer.strip()


# ------------------------------------------------------------------ nodes --

def table(mc: Ctx) -> str:
    """NODE, ROLE, STATE, AVAILABILITY, ADDRESS, LABELS, RUNNING: what `fab swarm-nodes` prints."""
    listed = mc.run.run(cmd.node_ls(), "list the swarm's nodes", mutates=False,
                        hint="is this server a swarm manager? run `fab swarm-setup`")
    ids = [n.get("ID", "") for n in parse_inspect(listed.stdout)]
    inspected = parse_inspect(mc.run.run(cmd.node_inspect(*ids), "inspect the nodes", mutates=False).stdout)
    tasks = parse_tasks(mc.run.run(cmd.stack_tasks(mc.rs.project_name), "what runs where", check=False,
                                   mutates=False).stdout, mc.rs.project_name)
    rows = node_rows(inspected, tasks)
    return columns([("NODE", "ROLE", "STATE", "AVAILABILITY", "ADDRESS", "LABELS", "RUNNING")]
                   + [(r.name, r.role, r.state, r.availability, r.address, r.labels, r.tasks) for r in rows])


def show_nodes(project: Project, local: Settings) -> str:
    """`fab swarm-nodes`: the table, read on the manager."""
    with connected(project, local, nodes(local)[:1], False, secrets_=False) as ctxs:
        return table(ctxs[0])
