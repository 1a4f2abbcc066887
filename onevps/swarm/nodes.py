"""The servers of a swarm, as data: who they are (SWARM_MANAGER, SWARM_WORKERS),
what their engines say, what `fab swarm-setup` must do with each, and the
`fab swarm-nodes` table. Pure: no SSH, no Docker."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..config import Settings
from ..errors import OnevpsError
from ..remote import Server

MANAGER_LABELS = ("onevps.data=true",)  # Redis, ChromaDB, Ollama, nginx, the registry stay here
WORKER_LABELS = ("onevps.apps=true",)  # the apps run here
SWARM_LABEL = "onevps.swarm"  # = COMPOSE_PROJECT_NAME on every node onevps joined
APPS_CONSTRAINT = "node.labels.onevps.apps == true"
SPREAD_LABEL = "node.labels.onevps.node"  # each node's own name: apps spread over the nodes
SWARM_PORT = 2377


@dataclass(frozen=True)
class Node:
    role: str  # "manager" or "worker"
    server: Server

    @property
    def label(self) -> str:
        return f"{self.role} {self.server.user}@{self.server.host}"


def parse_node(spec: str, settings: Settings) -> Server:
    """[user@]host[:port] (checked by the settings) as a Server; user and port default to VPS_*."""
    user, _, rest = spec.rpartition("@")
    host, port = rest, settings.vps_port
    if rest.count(":") == 1:
        host, raw_port = rest.split(":")
        port = int(raw_port)
    return Server(host, user or settings.vps_user, port, settings.vps_ssh_key)


def nodes(settings: Settings) -> list[Node]:
    """The manager first, then the workers; the manager is SWARM_MANAGER or VPS_HOST."""
    if settings.swarm_manager:
        manager = parse_node(settings.swarm_manager, settings)
    elif settings.vps_host:
        manager = Server(settings.vps_host, settings.vps_user, settings.vps_port, settings.vps_ssh_key)
    else:
        raise OnevpsError("no swarm manager given", "set SWARM_MANAGER (or VPS_HOST) in .env")
    out = [Node("manager", manager)]
    for spec in settings.swarm_workers:
        server = parse_node(spec, settings)
        if (server.host, server.port) == (manager.host, manager.port):
            raise OnevpsError(f"SWARM_WORKERS names the manager {manager.host} as a worker", "list it only once")
        out.append(Node("worker", server))
    return out


def advertise_address(settings: Settings) -> str:
    """The manager's address the workers reach: SWARM_ADVERTISE_ADDR, else SWARM_MANAGER's (VPS_HOST's) IP."""
    if settings.swarm_advertise_addr:
        return settings.swarm_advertise_addr
    host = nodes(settings)[0].server.host
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise OnevpsError(f"the swarm manager is given by name ({host}); the workers need its address",
                          "set SWARM_ADVERTISE_ADDR to the manager's (private) IP address") from None


def own_registry(settings: Settings) -> str:
    """The registry the nodes pull from: REGISTRY, or with workers the one onevps runs on the manager
    (address:port); "" for one node without a registry."""
    if settings.registry:
        return settings.registry
    if settings.swarm_workers:
        return f"{advertise_address(settings)}:{settings.swarm_registry_port}"
    return ""


def with_registry(settings: Settings) -> Settings:
    """The settings with REGISTRY set to the registry the nodes pull from (own_registry)."""
    registry = own_registry(settings)
    return settings if registry == settings.registry else dataclasses.replace(settings, registry=registry)


# ------------------------------------------------------------ engine state --

@dataclass(frozen=True)
class SwarmState:
    """`docker info`'s .Swarm of one engine ("" state: no Docker yet)."""

    state: str  # inactive, pending, active, locked, error, or ""
    node_id: str = ""
    manager: bool = False
    managers: tuple[str, ...] = ()  # addresses of the managers it knows (host:2377)
    nodes: int = 0  # managers only: how many nodes the swarm has

    @property
    def active(self) -> bool:
        return self.state in ("active", "pending", "locked", "error")


def parse_swarm(text: str) -> SwarmState:
    """`docker info --format '{{json .Swarm}}'`; empty or broken text: no engine."""
    try:
        data = json.loads(text or "{}") or {}
    except ValueError:
        data = {}
    managers = tuple(m.get("Addr", "") for m in data.get("RemoteManagers") or [] if isinstance(m, dict))
    return SwarmState(str(data.get("LocalNodeState") or ""), str(data.get("NodeID") or ""),
                      bool(data.get("ControlAvailable")), managers,
                      int(data.get("Nodes") or 0))


def manager_plan(state: SwarmState, labels: Mapping[str, str], project: str, label: str) -> str:
    """"init" (no swarm yet), "ours" (onevps's swarm, or a one-node swarm to adopt), or an error."""
    if not state.active:
        return "init"
    if not state.manager:
        raise OnevpsError(f"the swarm manager {label} is a worker of another swarm",
                          "leave it there first (`docker swarm leave` on it) or name that swarm's manager")
    if labels.get(SWARM_LABEL) == project or state.nodes <= 1:
        return "ours"
    owner = labels.get(SWARM_LABEL)
    raise OnevpsError(f"the swarm manager {label} is already in another swarm "
                      f"({state.nodes} nodes, {'made for ' + owner if owner else 'not made by onevps'})",
                      "use a server outside that swarm, or leave it first (`docker swarm leave --force`)")


def worker_plan(state: SwarmState, manager_addr: str, manager_nodes: Sequence[str], label: str) -> str:
    """"join", "joined" (already in our swarm) or an error (in another swarm)."""
    if not state.active:
        return "join"
    if state.node_id in manager_nodes or f"{manager_addr}:{SWARM_PORT}" in state.managers:
        return "joined"
    raise OnevpsError(f"the {label} is already in another swarm",
                      "leave it first (`docker swarm leave` on it), then run fab swarm-setup again")


def join_body(manager_addr: str, advertise: str, token: str) -> str:
    """The body of `POST /swarm/join` (it holds the token: sent as a file, never shown)."""
    return json.dumps({"ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": advertise, "DataPathAddr": advertise,
                       "RemoteAddrs": [f"{manager_addr}:{SWARM_PORT}"], "JoinToken": token})


def route_source(text: str) -> str:
    """The `src` address of `ip -4 -o route get ADDR`."""
    words = text.split()
    if "src" in words and words.index("src") + 1 < len(words):
        return words[words.index("src") + 1]
    raise OnevpsError(f"cannot tell this server's own address from `ip route get`: {text.strip()[:120]!r}",
                      "check its network settings")


def labels_for(role: str, name: str, project: str) -> list[str]:
    """The node labels onevps sets: its swarm, its role's, and its own name (apps spread by it)."""
    return [f"{SWARM_LABEL}={project}", *(MANAGER_LABELS if role == "manager" else WORKER_LABELS),
            f"onevps.node={name}"]


def missing_labels(wanted: Sequence[str], have: Mapping[str, str]) -> list[str]:
    return [label for label in wanted if have.get(label.split("=", 1)[0]) != label.split("=", 1)[1]]


def same_arch(arches: Mapping[str, str]) -> None:
    """Every server of one swarm runs the same architecture (the images are built once)."""
    first, want = next(iter(arches.items()))
    for label, arch in arches.items():
        if arch != want:
            raise OnevpsError(f"the {label} is {arch} but the {first} is {want}: the images are built once, "
                              "for one architecture", "use servers of the same architecture in one swarm")


# ------------------------------------------------------------ the table --

@dataclass(frozen=True)
class NodeRow:
    name: str
    role: str
    state: str
    availability: str
    address: str
    labels: str
    tasks: str


def node_rows(inspected: Sequence[Mapping], tasks: Mapping[str, list[str]]) -> list[NodeRow]:
    """One row per node of `docker node inspect`, with the tasks running there (by hostname)."""
    rows = []
    for node in inspected:
        spec, desc, status = node.get("Spec") or {}, node.get("Description") or {}, node.get("Status") or {}
        name = desc.get("Hostname", node.get("ID", "?")[:12])
        labels = spec.get("Labels") or {}
        role = spec.get("Role", "?") + (" (leader)" if (node.get("ManagerStatus") or {}).get("Leader") else "")
        rows.append(NodeRow(name, role, status.get("State", "?"), spec.get("Availability", "?"),
                            status.get("Addr", "?"),
                            ",".join(f"{k}={v}" for k, v in sorted(labels.items())
                                     if k.startswith("onevps.") and k != "onevps.node") or "-",
                            ", ".join(sorted(tasks.get(name, []))) or "-"))
    return sorted(rows, key=lambda r: (not r.role.startswith("manager"), r.name))


def parse_tasks(text: str, stack: str) -> dict[str, list[str]]:
    """`docker stack ps` lines (name, node, state) -> node -> running tasks of the stack."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[2].startswith("Running"):
            continue
        name = parts[0].strip()
        if name.startswith(f"{stack}_"):
            name = name[len(stack) + 1:]
        out.setdefault(parts[1].strip(), []).append(name)
    return out
