"""The app registry, read from the compose file (the one source of truth).

An app is a compose service carrying the label `onevps.tier` (base or ml).
Its static address is `${NETWORK_PREFIX:-172.20.0}.<host>` on app-network.
nginx routes, the index page and every task's notion of "the apps" come from
here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import composefile, isolation, sleep, tiers
from .errors import ComposeFileError, OnevpsError

NETWORK = "app-network"
TIERS = tiers.TIER_ORDER
TIER_LABEL = "onevps.tier"
REDIS_PREFIXES_LABEL = "onevps.redis_prefixes"
CHROMA_LEGACY_LABEL = "onevps.chroma_legacy"

# Shared services and their fixed host numbers on app-network.
SHARED = {"nginx": 2, "chroma-auth": 3, "redis": 4, "ollama": 5, sleep.WAKER: 7}
# Shared services with no address on app-network: ChromaDB's server sits on
# the private network chroma-private, behind its token gate chroma-auth; the
# Docker API proxy the waker uses is on no network at all.
PRIVATE = ("chromadb", sleep.DOCKER_PROXY)
# Every shared service, in the order they are listed.
SHARED_SERVICES = (*SHARED, *PRIVATE)
# Services that build image tiers; never run.
TIER_SERVICES = {t.name: t.service for t in tiers.TIERS}

# Address pools (last octet). Base apps start at .10, ML apps at .20; the
# base pool continues at .30 so that 15+ base apps never collide with ML.
# .128-.254 stay free for deploy slots.
POOLS: dict[str, tuple[int, ...]] = {
    "base": tuple(range(10, 20)) + tuple(range(30, 100)),
    "ml": tuple(range(20, 30)),
}

# A deploy starts the new version at host + SLOT_OFFSET (.138-.227).
SLOT_OFFSET = 128

# Names an app may not take: shared services, tier builders, and names that
# would be confusing as a subdomain or image name.
RESERVED = frozenset(SHARED_SERVICES) | frozenset(TIER_SERVICES.values()) | frozenset(
    {"base", "ml", "www", "localhost", "default", "app", "apps", "onevps", "tiers", "certbot", "certs"}
)

DNS_LABEL = re.compile(r"\A[a-z]([a-z0-9-]{0,61}[a-z0-9])?\Z")
# Valid DNS labels that YAML reads as something other than a string.
YAML_KEYWORDS = frozenset({"null", "true", "false"})
_ADDRESS = re.compile(r"^\$\{NETWORK_PREFIX(?::?-[0-9.]*)?\}\.(\d{1,3})$")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be an app name, or None when it can."""
    if not name:
        return "an app name cannot be empty"
    if len(name) > 63:
        return f"app name {name!r} is {len(name)} characters long; at most 63 fit in a DNS label"
    if name != name.lower():
        return f"app name {name!r} has uppercase letters; use lowercase (DNS names are lowercase)"
    if "_" in name:
        return f"app name {name!r} has '_'; use '-' (it must be a DNS label)"
    if name[0].isdigit() or name[0] == "-":
        return f"app name {name!r} must start with a letter"
    if name.endswith("-"):
        return f"app name {name!r} must not end with '-'"
    if not DNS_LABEL.match(name):
        return f"app name {name!r} may hold only a-z, 0-9 and '-' (a DNS label)"
    if name in RESERVED:
        return f"app name {name!r} is reserved (shared service or tool name)"
    if name in YAML_KEYWORDS:
        return f"app name {name!r} reads as a YAML keyword in the compose file; choose another"
    return None


@dataclass(frozen=True)
class App:
    name: str
    tier: str
    host: int  # last octet of the static address
    domain: str | None = None  # an extra host name (label onevps.domain)
    sleep_after: int | None = None  # seconds idle before the waker stops it (label onevps.sleep_after)
    # Existing data it keeps reading (onevps.isolation.Legacy): Redis key prefixes from before
    # per-app users (label onevps.redis_prefixes, comma-separated), and Chroma's default tenant
    # (label onevps.chroma_legacy: "true").
    redis_prefixes: tuple[str, ...] = ()
    chroma_legacy: bool = False
    # What is wrong with its own credentials in its environment, if anything.
    credentials_problem: str | None = field(default=None, compare=False)

    def address(self, network_prefix: str) -> str:
        return f"{network_prefix}.{self.host}"

    @property
    def slot_host(self) -> int:
        """Host number of the app's deploy slot (nginx's backup server)."""
        return self.host + SLOT_OFFSET


@dataclass(frozen=True)
class Registry:
    apps: tuple[App, ...]
    services: tuple[str, ...]  # every service name in the compose file
    hosts: dict[str, int]  # every service with a static address -> host

    def get(self, name: str) -> App:
        for app in self.apps:
            if app.name == name:
                return app
        known = ", ".join(a.name for a in self.apps) or "none"
        raise OnevpsError(f"unknown app {name!r}", f"known apps: {known}")

    def legacy(self) -> isolation.Legacy:
        """The apps' grants to data from before per-app users (checked by isolation)."""
        owners = [a.name for a in self.apps if a.chroma_legacy]
        return isolation.Legacy(redis_prefixes={a.name: a.redis_prefixes for a in self.apps if a.redis_prefixes},
                                chroma_owner=owners[0] if owners else None)

    def names(self) -> list[str]:
        return [a.name for a in self.apps]

    def by_tier(self, tier: str) -> list[App]:
        return [a for a in self.apps if a.tier == tier]

    def next_free_host(self, tier: str) -> int | None:
        taken = set(self.hosts.values())
        for host in POOLS[tier]:
            if host not in taken:
                return host
        return None


def _static_host(name: str, service: Any) -> int | None:
    networks = service.get("networks") if isinstance(service, dict) else None
    if not isinstance(networks, dict) or not isinstance(networks.get(NETWORK), dict):
        return None
    raw = networks[NETWORK].get("ipv4_address")
    if raw is None:
        return None
    match = _ADDRESS.match(str(raw))
    if not match or not 1 <= int(match.group(1)) <= 254:
        raise ComposeFileError(
            f"service {name}: ipv4_address {raw!r} is not of the form ${{NETWORK_PREFIX:-172.20.0}}.N",
            "write the address as ${NETWORK_PREFIX:-172.20.0}.N with N from its tier's pool",
        )
    return int(match.group(1))


def _sleep_after(name: str, svc_name: str, labels: dict) -> int | None:
    raw = labels.get(sleep.SLEEP_LABEL)
    if raw is None or raw == "":
        return None
    try:
        return sleep.parse_duration(raw)
    except ValueError as exc:
        raise ComposeFileError(f"{name}: app {svc_name} has {sleep.SLEEP_LABEL}: {exc}",
                               f"fix the label, or remove it to keep {svc_name} always awake") from None


def from_data(data: Any, name: str = "compose file") -> Registry:
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ComposeFileError(f"{name} has no `services:` mapping", "restore it with git")
    apps: list[App] = []
    hosts: dict[str, int] = {}
    for svc_name, service in data["services"].items():
        svc_name = str(svc_name)
        if not isinstance(service, dict):
            raise ComposeFileError(f"{name}: service {svc_name} is not a mapping", "fix it by hand")
        host = _static_host(svc_name, service)
        if host is not None:
            hosts[svc_name] = host
        labels = service.get("labels") or {}
        if isinstance(labels, list):  # ["key=value", ...] form
            labels = dict(str(item).split("=", 1) for item in labels if "=" in str(item))
        tier = labels.get(TIER_LABEL) if isinstance(labels, dict) else None
        if tier is None or tier == "":  # "": a service run from a tier image that is no app (the waker)
            continue
        if tier not in TIERS:
            raise ComposeFileError(
                f"{name}: app {svc_name} has {TIER_LABEL}={tier!r}", "use base or ml"
            )
        if host is None:
            raise ComposeFileError(
                f"{name}: app {svc_name} has no static address on {NETWORK}",
                f"add networks: {{{NETWORK}: {{ipv4_address: ...}}}}",
            )
        domain = labels.get("onevps.domain") if isinstance(labels, dict) else None
        prefixes = str(labels.get(REDIS_PREFIXES_LABEL) or "")
        apps.append(App(name=svc_name, tier=str(tier), host=host, domain=str(domain) if domain else None,
                        sleep_after=_sleep_after(name, svc_name, labels),
                        redis_prefixes=tuple(p.strip() for p in prefixes.split(",") if p.strip()),
                        chroma_legacy=str(labels.get(CHROMA_LEGACY_LABEL, "")).lower() == "true",
                        credentials_problem=_credentials_problem(svc_name, service.get("environment"))))
    return Registry(apps=tuple(apps), services=tuple(str(s) for s in data["services"]), hosts=hosts)


def _credentials_problem(app: str, environment: Any) -> str | None:
    """Why the app's entry does not give it its own Redis user and ChromaDB token, or None.
    Its REDIS_URL must name user <app> with the variable of <app>'s password, and its
    CHROMA_TOKEN the variable of <app>'s token (onevps.isolation.env_name)."""
    if isinstance(environment, list):
        environment = dict(str(item).split("=", 1) for item in environment if "=" in str(item))
    env = environment if isinstance(environment, dict) else {}
    try:
        redis_var, chroma_var = isolation.env_name("redis", app), isolation.env_name("chroma", app)
    except isolation.IsolationError:
        return None  # name_problem reports the name
    url, token = str(env.get("REDIS_URL") or ""), str(env.get("CHROMA_TOKEN") or "")
    if not url.startswith(f"redis://{app}:${{{redis_var}") or not token.startswith(f"${{{chroma_var}"):
        return (f"app {app} does not get its own Redis user and ChromaDB token: its environment needs "
                f"REDIS_URL: redis://{app}:${{{redis_var}:-}}@... and CHROMA_TOKEN: ${{{chroma_var}:-}} "
                "(see any app in the compose file)")
    return None


def load(compose_file: Path) -> Registry:
    return from_data(composefile.load(compose_file), name=str(compose_file))


def problems(registry: Registry) -> list[str]:
    """Everything wrong with the registry itself (addresses, names, pools)."""
    found: list[str] = []
    by_host: dict[int, list[str]] = {}
    for svc, host in registry.hosts.items():
        by_host.setdefault(host, []).append(svc)
    for host, names in sorted(by_host.items()):
        if len(names) > 1:
            found.append(f"address .{host} is used by {', '.join(names)}")
    for svc, host in SHARED.items():
        if svc not in registry.services:
            found.append(f"shared service {svc} is missing from the compose file")
        elif registry.hosts.get(svc) != host:
            found.append(f"shared service {svc} must be at .{host}, found .{registry.hosts.get(svc)}")
    for svc in PRIVATE:
        if svc not in registry.services:
            found.append(f"shared service {svc} is missing from the compose file")
        elif svc in registry.hosts:
            found.append(f"shared service {svc} must not have an address on {NETWORK} (it is reached through a gateway)")
    for app in registry.apps:
        problem = name_problem(app.name)
        if problem:
            found.append(problem)
        if app.host not in POOLS[app.tier]:
            found.append(f"app {app.name} ({app.tier}) is at .{app.host}, outside the {app.tier} pool")
        if app.credentials_problem:
            found.append(app.credentials_problem)
    owners = [a.name for a in registry.apps if a.chroma_legacy]
    if len(owners) > 1:
        found.append(f"only one app may keep Chroma's default tenant ({CHROMA_LEGACY_LABEL}); found {', '.join(owners)}")
    try:
        registry.legacy().check([a.name for a in registry.apps if not name_problem(a.name)])
    except isolation.IsolationError as exc:
        found.append(str(exc))
    return found


def app_dirs(root: Path) -> Iterable[str]:
    apps = root / "apps"
    if not apps.is_dir():
        return []
    return sorted(p.name for p in apps.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
