"""What Docker Swarm does with each compose key, and what onevps does about it.

Two tables. KEYS maps every service key onevps knows to its action: kept as
it is, converted (into what), dropped (why) or refused (why). RULES are the
findings `inv swarm-check` reports, in its order: what `docker stack deploy`
really does (tried with CLI 28.2 against engine 20.10.24) and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OnevpsError

KEEP, CONVERT, DROP, REFUSE = "kept", "converted", "dropped", "refused"


@dataclass(frozen=True)
class Rule:
    """What Swarm does with a compose construct, and what onevps does about it."""

    swarm: str  # "rejects" (deploy fails), "ignores" (silently or with a warning), "differs"
    what: str
    fix: str


@dataclass(frozen=True)
class Key:
    """One service key: onevps's action, the finding it raises, and into what or why."""

    action: str  # KEEP, CONVERT, DROP or REFUSE
    finding: str | None = None  # a key of RULES, noted for every service using the key
    how: str = ""  # CONVERT: into what; DROP and REFUSE: why (REFUSE: the error, then its hint)
    hint: str = ""


RULES: dict[str, Rule] = {
    "build": Rule("ignores", "build: (warning: Ignoring unsupported options: build)",
                  "swarm-deploy builds the image through compose, tags it by content (s-<id>), pushes it "
                  "to REGISTRY; the stack file names that tag"),
    "container_name": Rule("ignores", "container_name: (a service has many tasks; names are <stack>_<service>.N.<id>)",
                           "dropped; other services find it by service name"),
    "ipv4_address": Rule("ignores", "networks.*.ipv4_address: silently ignored, tasks get any address",
                         "dropped; addresses in environment values become service names "
                         "(${NETWORK_PREFIX}.4 -> redis), nginx asks Docker's DNS"),
    "ipam": Rule("differs", "network subnets: bridge subnets may clash with overlay networks on other nodes",
                 "every network becomes an overlay; subnets from SWARM_SUBNET (one /24 each) or Docker's pool"),
    "depends_on": Rule("ignores", "depends_on: silently ignored, services start in any order",
                       "dropped; nginx resolves apps per request, apps retry, health checks gate updates"),
    "mem_limit": Rule("rejects", "mem_limit: deploy fails (\"Set resource limits using deploy.resources\")",
                      "deploy.resources.limits.memory"),
    "memswap_limit": Rule("rejects", "memswap_limit: not in the 3.x schema", "dropped"),
    "mem_reservation": Rule("rejects", "mem_reservation: not in the 3.x schema",
                            "deploy.resources.reservations.memory"),
    "cpus": Rule("rejects", "cpus: not in the 3.x schema (\"Additional property cpus is not allowed\")",
                 "deploy.resources.limits.cpus"),
    "pids_limit": Rule("rejects", "pids_limit: not in the 3.x schema (\"Additional property pids_limit is not allowed\"); "
                       "its place, deploy.resources.limits.pids (3.9), takes no ${VAR} (\"must be a integer\")",
                       "deploy.resources.limits.pids with the setting's number written in (stack file 3.9; "
                       "services have it since Docker 20.10, API 1.41); a new value takes effect at the next "
                       "swarm-deploy"),
    "restart": Rule("ignores", "restart: (warning: Ignoring unsupported options: restart)",
                    "deploy.restart_policy (unless-stopped/always -> any, on-failure, no -> none)"),
    "security_opt": Rule("ignores", "security_opt: (warning) no-new-privileges is NOT applied to tasks",
                         "dropped: Swarm services have no equivalent; apps keep a non-root user, "
                         "cap_drop ALL and a read-only root file system"),
    "cap_add": Rule("differs", "cap_add/cap_drop: applied by engines >= 20.10 (API 1.41); older ones ignore them",
                    "kept; swarm-deploy refuses an engine older than 20.10"),
    "profiles": Rule("rejects", "profiles: not in the 3.x schema (\"Additional property profiles is not allowed\")",
                     "services with a profile (tier builders, certbot) are left out: run them with compose"),
    "sleep": Rule("differs", "sleeping apps: the waker stops idle app containers and starts them on demand; "
                  "Swarm would start a stopped task again at once",
                  "the waker and docker-proxy are left out: apps never sleep in Swarm mode"),
    "tmpfs": Rule("ignores", "tmpfs: silently ignored, a read-only container then cannot write /tmp",
                  "volumes of type tmpfs at the same paths"),
    "ports": Rule("differs", "ports: the host address (BIND_ADDRESS) is ignored: Swarm publishes on every "
                  "interface; the routing mesh (ingress) needs IPVS and hides the client's address",
                  "published in host mode (client address kept, no IPVS); firewall the port if BIND_ADDRESS "
                  "was meant to hide it; the service updates stop-first (one port per node)"),
    "bind": Rule("differs", "bind mounts (../nginx/...): the path must exist on whichever node runs the task",
                 "read-only files and folders become Swarm configs named by content (a change is a new "
                 "config, so the service rolls); writable bind mounts are refused"),
    "volume": Rule("differs", "named volumes are local to one node: a task moved elsewhere starts empty",
                   "the service is pinned to the manager (placement constraint) and updates stop-first, "
                   "so two tasks never share its data"),
    "pull_policy": Rule("rejects", "pull_policy: not in the 3.x schema", "dropped (--resolve-image decides)"),
    "interpolation": Rule("rejects", "${VAR:+alt} interpolation: invalid interpolation format",
                          "refused: write the value without :+ (or leave the service to compose)"),
    "unknown": Rule("rejects", "a key onevps does not carry over: outside the 3.x schema (the deploy fails) "
                    "or ignored by Swarm", "dropped: check that the service does without it"),
}

# Every service key onevps knows. The kept keys are written in this order.
KEYS: dict[str, Key] = {
    "command": Key(KEEP), "entrypoint": Key(KEEP), "user": Key(KEEP), "working_dir": Key(KEEP),
    "read_only": Key(KEEP), "init": Key(KEEP), "stop_signal": Key(KEEP), "stop_grace_period": Key(KEEP),
    "healthcheck": Key(KEEP), "logging": Key(KEEP), "labels": Key(KEEP),
    "cap_add": Key(KEEP, "cap_add"), "cap_drop": Key(KEEP, "cap_add"),
    "ulimits": Key(KEEP), "sysctls": Key(KEEP), "hostname": Key(KEEP), "extra_hosts": Key(KEEP),
    "dns": Key(KEEP), "dns_search": Key(KEEP), "secrets": Key(KEEP), "expose": Key(KEEP),
    "image": Key(CONVERT, how="built apps: the registry's repository with tag ${TAG_<APP>:-latest}"),
    "build": Key(CONVERT, "build", "an image swarm-deploy builds, tags by content and pushes"),
    "environment": Key(CONVERT, how="a map; static addresses become service names"),
    "networks": Key(CONVERT, how="a list of overlay networks (addresses dropped)"),
    "ports": Key(CONVERT, "ports", "published in host mode"),
    "volumes": Key(CONVERT, how="named volumes kept; read-only bind mounts become configs"),
    "tmpfs": Key(CONVERT, "tmpfs", "volumes of type tmpfs"),
    "restart": Key(CONVERT, "restart", "deploy.restart_policy"),
    "mem_limit": Key(CONVERT, "mem_limit", "deploy.resources.limits.memory"),
    "mem_reservation": Key(CONVERT, "mem_reservation", "deploy.resources.reservations.memory"),
    "cpus": Key(CONVERT, "cpus", "deploy.resources.limits.cpus"),
    "pids_limit": Key(CONVERT, "pids_limit", "deploy.resources.limits.pids, the setting's number"),
    "deploy": Key(CONVERT, how="merged over the deploy: block onevps writes (the compose file wins)"),
    "profiles": Key(CONVERT, "profiles", "the service is left out of the stack"),
    "configs": Key(CONVERT, how="replaced by configs made from the read-only bind mounts"),
    "memswap_limit": Key(DROP, "memswap_limit", "not in the 3.x schema"),
    "container_name": Key(DROP, "container_name", "a service has many tasks"),
    "depends_on": Key(DROP, "depends_on", "Swarm starts services in any order"),
    "security_opt": Key(DROP, "security_opt", "Swarm services have no equivalent"),
    "pull_policy": Key(DROP, "pull_policy", "--resolve-image decides"),
    "cpu_shares": Key(DROP, how="no Swarm equivalent"), "cpu_quota": Key(DROP, how="no Swarm equivalent"),
    "cpuset": Key(DROP, how="no Swarm equivalent"),
    # its path would be read relative to the stack file, and silently missed
    "env_file": Key(REFUSE, how="is not carried into the stack file",
                    hint="put the variables under environment: (values from .env as ${VAR})"),
}
UNKNOWN = Key(DROP, "unknown", "not carried over")

KEPT = tuple(name for name, key in KEYS.items() if key.action == KEEP)


def check_keys(name: str, service: dict) -> tuple[list[str], list[OnevpsError]]:
    """The findings one service's keys raise (keys of RULES), and the keys onevps refuses."""
    notes: list[str] = []
    refused: list[OnevpsError] = []
    for key in service:
        if key.startswith("x-"):
            continue
        entry = KEYS.get(key, UNKNOWN)
        if entry.action == REFUSE:
            refused.append(OnevpsError(f"service {name}: {key} {entry.how}", entry.hint))
        elif entry.finding and entry.finding not in notes:
            notes.append(entry.finding)
    return notes, refused
