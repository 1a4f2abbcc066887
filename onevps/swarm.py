"""Docker Swarm: the same compose sources, deployed as a stack.

Three parts, each usable alone:

* `render()` turns compose/docker-compose.yml into a stack file for
  `docker stack deploy` (compose file format 3.8). Pure and deterministic: the
  same compose file, nginx files and settings give the same bytes. Variables
  such as `${REDIS_PASSWORD:?...}` stay variables (docker stack deploy fills
  them in from the environment), so no secret is ever written to the file.
* `findings()` lists what Swarm ignores or rejects in the compose file and
  what onevps does about it (`inv swarm-check`); render() applies exactly
  these fixes.
* `deploy()` / `status()`: build, tag by content, push (with REGISTRY), write
  the stack file, `docker stack deploy`, wait for the rolling update and
  report a rollback. The local (`inv`) and server (`fab`) tasks share them.

What `docker stack deploy` really does with compose keys was tried on the
engine these tools support (Docker 20.10 engine, CLI 20.10-28): see KEY_RULES.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import commands, composefile, nginx
from .config import Settings
from .errors import ComposeFileError, OnevpsError
from .registry import TIER_LABEL, Registry, from_data
from .runner import Runner

STACK_DIR = Path("compose/swarm")  # generated, git-ignored, sent to the server with compose/
STACK_FILE = STACK_DIR / "docker-stack.yml"
ROUTES_FILE = STACK_DIR / "nginx-apps.conf.template"
REPLICAS_LABEL = "onevps.replicas"
STACK_VERSION = "3.8"
APP_MONITOR = "15s"  # after each new task: a crash or failed health check in this window rolls back
SERVICE_MONITOR = "10s"

# Compose keys copied into the stack file unchanged (Swarm honours them).
KEPT = ("command", "entrypoint", "user", "working_dir", "read_only", "init", "stop_signal",
        "stop_grace_period", "healthcheck", "logging", "labels", "cap_add", "cap_drop", "ulimits",
        "sysctls", "hostname", "extra_hosts", "dns", "dns_search", "secrets", "expose")
# Compose keys render() turns into something else (handled below, one by one).
CONVERTED = ("image", "build", "environment", "networks", "ports", "volumes", "tmpfs", "restart",
             "mem_limit", "memswap_limit", "mem_reservation", "cpus", "cpu_shares", "cpu_quota",
             "cpuset", "profiles", "container_name", "depends_on", "security_opt", "deploy",
             "pull_policy", "configs")


@dataclass(frozen=True)
class Rule:
    """What Swarm does with a compose key, and what onevps does about it."""

    swarm: str  # "rejects" (deploy fails), "ignores" (silently or with a warning), "differs"
    what: str
    fix: str


# Tried with `docker stack deploy` (CLI 28.2 against engine 20.10.24).
KEY_RULES: dict[str, Rule] = {
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
    "restart": Rule("ignores", "restart: (warning: Ignoring unsupported options: restart)",
                    "deploy.restart_policy (unless-stopped/always -> any, on-failure, no -> none)"),
    "security_opt": Rule("ignores", "security_opt: (warning) no-new-privileges is NOT applied to tasks",
                         "dropped: Swarm services have no equivalent; apps keep a non-root user, "
                         "cap_drop ALL and a read-only root file system"),
    "cap_add": Rule("differs", "cap_add/cap_drop: applied by engines >= 20.10 (API 1.41); older ones ignore them",
                    "kept; swarm-deploy refuses an engine older than 20.10"),
    "profiles": Rule("rejects", "profiles: not in the 3.x schema (\"Additional property profiles is not allowed\")",
                     "services with a profile (tier builders, certbot) are left out: run them with compose"),
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

_ADDRESS = re.compile(r"\$\{NETWORK_PREFIX(?::?-[0-9.]*)?\}\.(\d{1,3})")
_PLUS_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?\+")


@dataclass(frozen=True)
class Finding:
    key: str
    services: tuple[str, ...]
    rule: Rule


@dataclass
class Rendered:
    stack: str  # the stack file's text
    routes: str  # nginx routes for Swarm (the stack's nginx config)
    services: tuple[str, ...]  # services in the stack
    apps: tuple[str, ...]  # apps in the stack
    findings: list[Finding] = field(default_factory=list)


# ------------------------------------------------------------------ helpers --

def plain(node: Any) -> Any:
    """ruamel's round-trip nodes (with merged `<<:` keys) as plain dicts/lists/scalars."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain(v) for v in node]
    if node is None:
        return None
    if isinstance(node, bool) or type(node).__name__ == "ScalarBoolean":
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return str(node)


def tag_var(app: str) -> str:
    """The variable that carries an app's image tag: portfolio -> TAG_PORTFOLIO, api-gw -> TAG_API_GW."""
    return "TAG_" + app.upper().replace("-", "_")


def content_tag(image_id: str) -> str:
    """A deploy tag from an image ID: the same build gives the same tag (no needless update)."""
    return "s-" + image_id.split(":")[-1][:12]


def _labels(service: dict) -> dict[str, str]:
    labels = service.get("labels") or {}
    if isinstance(labels, list):
        labels = dict(str(item).split("=", 1) for item in labels if "=" in str(item))
    return {str(k): str(v) for k, v in labels.items()}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _restart_policy(value: str | None) -> dict:
    value = (value or "no").strip()
    if value in ("always", "unless-stopped"):
        return {"condition": "any", "delay": "5s"}
    if value.startswith("on-failure"):
        return {"condition": "on-failure", "delay": "5s"}
    return {"condition": "none"}


def _subnets(settings: Settings, network_names: Sequence[str]) -> dict[str, str]:
    if not settings.swarm_subnet:
        return {}
    pool = ipaddress.IPv4Network(settings.swarm_subnet)
    slices = list(pool.subnets(new_prefix=24)) if pool.prefixlen < 24 else [pool]
    if len(slices) < len(network_names):
        raise OnevpsError(f"SWARM_SUBNET={settings.swarm_subnet} holds {len(slices)} /24 network(s) but the "
                          f"compose file has {len(network_names)} ({', '.join(network_names)})",
                          f"give SWARM_SUBNET a /{24 - (len(network_names) - 1).bit_length()} or larger")
    return {name: str(net) for name, net in zip(network_names, slices)}


# ----------------------------------------------------------------- renderer --

class _Render:
    def __init__(self, settings: Settings, data: Any, only: Iterable[str] | None, compose_dir: Path,
                 stack_dir: Path):
        self.settings = settings
        self.data = plain(data)
        self.reg: Registry = from_data(data)
        self.compose_dir = compose_dir
        self.stack_dir = stack_dir
        self.only = set(only) if only is not None else None
        self.found: dict[str, list[str]] = {}
        self.configs: dict[str, dict] = {}
        self.volumes_used: list[str] = []
        self.networks_used: list[str] = []
        # host number on app-network -> the service there (for address -> name rewriting)
        self.by_host = {host: svc for svc, host in self.reg.hosts.items()}

    def note(self, key: str, service: str) -> None:
        names = self.found.setdefault(key, [])
        if service not in names:
            names.append(service)

    def rel(self, path: Path) -> str:
        """A path as the stack file must write it: relative to the stack file's folder."""
        return Path(_relpath(path, self.stack_dir)).as_posix()

    # -- one service --------------------------------------------------------

    def service(self, name: str, svc: dict, routes_text: str) -> dict:
        app = TIER_LABEL in _labels(svc)
        if "env_file" in svc:  # its path would be read relative to the stack file, and silently missed
            raise OnevpsError(f"service {name}: env_file is not carried into the stack file",
                              "put the variables under environment: (values from .env as ${VAR})")
        for key in svc:
            if key.startswith("x-"):
                continue
            if key in ("mem_limit", "memswap_limit", "mem_reservation", "cpus", "restart", "security_opt",
                       "container_name", "depends_on", "build", "tmpfs", "pull_policy"):
                self.note(key, name)
            elif key in ("cap_add", "cap_drop"):
                self.note("cap_add", name)
            elif key not in KEPT and key not in CONVERTED:
                self.note("unknown", name)
        out: dict[str, Any] = {"image": self.image(name, svc, app)}
        for key in KEPT:
            if key in svc:
                out[key] = svc[key]
        env = self.environment(name, svc.get("environment"))
        if env:
            out["environment"] = env
        volumes, configs, stateful = self.volumes(name, svc, routes_text)
        if volumes:
            out["volumes"] = volumes
        if configs:
            out["configs"] = configs
        ports = self.ports(name, svc.get("ports") or [])
        if ports:
            out["ports"] = ports
        out["networks"] = self.networks(name, svc)
        out["deploy"] = self.deploy(name, svc, app, stateful=stateful, published=bool(ports))
        for key, value in out.items():
            if _PLUS_INTERPOLATION.search(json.dumps(value)):
                self.note("interpolation", name)
                raise OnevpsError(f"service {name}: {key} uses ${{VAR:+...}}, which docker stack deploy "
                                  "cannot interpolate", KEY_RULES["interpolation"].fix)
        return out

    def image(self, name: str, svc: dict, app: bool) -> str:
        image = str(svc.get("image") or "")
        if not image:
            raise ComposeFileError(f"service {name} has no image:", "Swarm runs images only; add image: NAME:TAG")
        if "build" not in svc and not app:
            return image  # an upstream image (nginx, redis, ...)
        repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        registry = f"{self.settings.registry}/" if self.settings.registry else ""
        return f"{registry}{repo}:${{{tag_var(name)}:-latest}}"

    def environment(self, name: str, env: Any) -> dict | None:
        if env is None:
            return None
        if isinstance(env, list):
            env = dict(str(item).split("=", 1) if "=" in str(item) else (str(item), None) for item in env)
        out = {}
        for key, value in env.items():
            if isinstance(value, str) and _ADDRESS.search(value):
                self.note("ipv4_address", name)
                value = _ADDRESS.sub(lambda m: self._host_name(name, key, int(m.group(1))), value)
            out[key] = value
        return out

    def _host_name(self, service: str, key: str, host: int) -> str:
        target = self.by_host.get(host)
        if target is None:
            raise ComposeFileError(f"service {service}: {key} points at .{host}, which no service holds",
                                   "fix the address in the compose file")
        return target

    def volumes(self, name: str, svc: dict, routes_text: str) -> tuple[list, list, bool]:
        """(volumes, configs, stateful) of one service."""
        out: list[Any] = []
        configs: list[dict] = []
        stateful = False
        for item in svc.get("volumes") or []:
            source, target, ro = _parse_volume(item)
            if source is None:  # anonymous volume
                out.append(item)
            elif source.startswith((".", "/", "~")):
                self.note("bind", name)
                if source == "/dev/null" or not ro:
                    raise OnevpsError(f"service {name}: the writable bind mount {source}:{target} cannot move "
                                      "between nodes", "use a named volume, or leave the service to compose")
                configs.extend(self.config_mounts(name, source, target, routes_text))
            else:
                self.note("volume", name)
                stateful = True
                if source not in self.volumes_used:
                    self.volumes_used.append(source)
                out.append(f"{source}:{target}" + (":ro" if ro else ""))
        for path in svc.get("tmpfs") or []:
            out.append({"type": "tmpfs", "target": str(path)})
        return out, configs, stateful

    def config_mounts(self, name: str, source: str, target: str, routes_text: str) -> list[dict]:
        path = (self.compose_dir / source).resolve()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files = [path]
        else:
            raise OnevpsError(f"service {name}: bind mount source {source} does not exist",
                              "restore it or fix the compose file")
        mounts = []
        root = self.settings.root.resolve()
        for file in files:
            inside = PurePosixPath(target) / file.relative_to(path).as_posix() if path.is_dir() else PurePosixPath(target)
            rel = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.as_posix()
            if rel == nginx.ROUTES_FILE.as_posix():  # the static-address routes: Swarm gets its own
                content, source_path = routes_text.encode(), self.settings.root / ROUTES_FILE
                rel = ROUTES_FILE.as_posix()
            else:
                content, source_path = file.read_bytes(), file
            # Config names are at most 64 characters with the stack's prefix;
            # the hash covers path and content, so a change is a new config.
            digest = hashlib.sha256(rel.encode() + b"\0" + content).hexdigest()[:10]
            key = f"{_slug(PurePosixPath(rel).name)[:24].strip('-')}-{digest}"
            entry: dict[str, Any] = {"file": self.rel(source_path)}
            self.configs[key] = entry
            mount: dict[str, Any] = {"source": key, "target": str(inside)}
            if file.stat().st_mode & 0o111:
                mount["mode"] = 0o555  # entrypoint scripts must stay executable
            mounts.append(mount)
        return mounts

    def ports(self, name: str, ports: list) -> list[dict]:
        out = []
        for item in ports:
            if isinstance(item, dict):
                target, published = item.get("target"), item.get("published")
                protocol = item.get("protocol", "tcp")
            else:
                spec, _, protocol = str(item).partition("/")
                protocol = protocol or "tcp"
                parts = _split_port(spec)
                target = parts[-1]
                published = parts[-2] if len(parts) >= 2 else None
            self.note("ports", name)
            entry = {"target": _int_or_text(target), "published": _int_or_text(published), "protocol": protocol,
                     "mode": "host"}
            if published is None:
                del entry["published"]
            out.append(entry)
        return out

    def networks(self, name: str, svc: dict) -> list[str]:
        nets = svc.get("networks")
        if nets is None:
            names = ["default"]
        elif isinstance(nets, dict):
            names = list(nets)
            if any(isinstance(v, dict) and "ipv4_address" in v for v in nets.values()):
                self.note("ipv4_address", name)
        else:
            names = [str(n) for n in nets]
        for n in names:
            if n not in self.networks_used:
                self.networks_used.append(n)
        return names

    def deploy(self, name: str, svc: dict, app: bool, stateful: bool, published: bool) -> dict:
        existing = dict(svc.get("deploy") or {})
        labels = _labels(svc)
        replicas = labels.get(REPLICAS_LABEL, "1")
        if not str(replicas).isdigit() or int(replicas) < 1:
            raise ComposeFileError(f"service {name}: label {REPLICAS_LABEL}={replicas!r}",
                                   "use a whole number of at least 1")
        if (stateful or published) and int(replicas) > 1:
            raise ComposeFileError(f"service {name}: {REPLICAS_LABEL}={replicas} but it keeps data in a volume "
                                   "or publishes a port", "only apps without volumes or ports can have replicas")
        out: dict[str, Any] = {"mode": "replicated", "replicas": int(replicas), "endpoint_mode": "dnsrr"}
        limits = {}
        if "cpus" in svc:
            limits["cpus"] = str(svc["cpus"])
        if "mem_limit" in svc:
            limits["memory"] = str(svc["mem_limit"])
        resources: dict[str, Any] = {}
        if limits:
            resources["limits"] = limits
        if "mem_reservation" in svc:
            resources["reservations"] = {"memory": str(svc["mem_reservation"])}
        if resources:
            out["resources"] = resources
        out["restart_policy"] = _restart_policy(svc.get("restart"))
        order = "stop-first" if (stateful or published) else "start-first"
        out["update_config"] = {"parallelism": 1, "delay": "2s", "order": order, "failure_action": "rollback",
                                "monitor": APP_MONITOR if app else SERVICE_MONITOR, "max_failure_ratio": 0}
        out["rollback_config"] = {"parallelism": 1, "delay": "0s", "order": order, "failure_action": "pause",
                                  "monitor": SERVICE_MONITOR, "max_failure_ratio": 0}
        if stateful:
            out["placement"] = {"constraints": ["node.role == manager"]}
        for key, value in existing.items():  # a hand-written deploy: block wins
            out[key] = value
        return out

    # -- the whole file ---------------------------------------------------------

    def run(self) -> Rendered:
        services = self.data["services"]
        unknown = sorted(self.only - set(services)) if self.only is not None else []
        if unknown:
            raise OnevpsError(f"unknown service(s) {', '.join(unknown)}",
                              f"known services: {', '.join(s for s in services if not services[s].get('profiles'))}")
        chosen = []
        for name, svc in services.items():
            if svc.get("profiles"):
                self.note("profiles", name)
                continue
            if self.only is None or name in self.only:
                chosen.append(name)
        apps = tuple(a.name for a in self.reg.apps if a.name in chosen)
        routes_text = nginx.render_swarm_routes(self.reg, apps)
        out_services = {name: self.service(name, services[name], routes_text) for name in chosen}
        all_networks = [str(n) for n in (self.data.get("networks") or {})]
        for net in all_networks:
            if (self.data["networks"].get(net) or {}).get("ipam"):
                self.note("ipam", net)
        subnets = _subnets(self.settings, all_networks)
        networks = {}
        for net in all_networks + [n for n in self.networks_used if n not in all_networks]:
            if net not in self.networks_used:
                continue
            src = (self.data.get("networks") or {}).get(net) or {}
            entry: dict[str, Any] = {"driver": "overlay"}
            if src.get("internal"):
                entry["internal"] = True
            if net in subnets:
                entry["ipam"] = {"config": [{"subnet": subnets[net]}]}
            networks[net] = entry
        doc: dict[str, Any] = {"version": STACK_VERSION, "services": out_services, "networks": networks}
        declared = self.data.get("volumes") or {}
        if self.volumes_used:
            doc["volumes"] = {v: (declared.get(v) or None) for v in self.volumes_used}
        if self.configs:
            doc["configs"] = {k: self.configs[k] for k in sorted(self.configs)}
        findings = [Finding(key, tuple(names), KEY_RULES[key]) for key, names in self.found.items()]
        findings.sort(key=lambda f: list(KEY_RULES).index(f.key))
        return Rendered(stack=_HEADER + _dump(doc), routes=routes_text, services=tuple(chosen), apps=apps,
                        findings=findings)


_HEADER = """\
# GENERATED by `inv swarm-render` from compose/docker-compose.yml; do not edit.
# Deploy with `inv swarm-deploy` (or `fab swarm-deploy`): they fill in the
# ${VARIABLES} from .env, secrets included, which never land in this file.
# `inv swarm-check` lists what changed from the compose file and why.
"""


# Strings YAML 1.1 (docker stack deploy's parser) would read as booleans,
# null or numbers: written quoted, so `--appendonly yes` stays a string.
_YAML11_SPECIAL = re.compile(r"^(y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF"
                             r"|null|Null|NULL|~|[-+]?[0-9][0-9_.:eE+-]*)$")


def _quote_special(node: Any) -> Any:
    from ruamel.yaml.scalarstring import SingleQuotedScalarString

    if isinstance(node, dict):
        return {k: _quote_special(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_quote_special(v) for v in node]
    if isinstance(node, str) and (_YAML11_SPECIAL.match(node) or node == ""):
        return SingleQuotedScalarString(node)
    return node


def _dump(doc: dict) -> str:
    return composefile.dumps(_quote_special(doc))


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def _split_port(spec: str) -> list[str]:
    """"IP:published:target" with ${...} variables (which hold ':-') kept whole."""
    parts, depth, cur = [], 0, ""
    for ch in spec:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == ":" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def _int_or_text(value: Any) -> Any:
    if value is None:
        return None
    text = str(value)
    return int(text) if text.isdigit() else text


def _parse_volume(item: Any) -> tuple[str | None, str, bool]:
    if isinstance(item, dict):
        return item.get("source"), str(item.get("target")), bool(item.get("read_only"))
    parts = _split_port(str(item))
    if len(parts) == 1:
        return None, parts[0], False
    ro = len(parts) > 2 and "ro" in parts[2].split(",")
    return parts[0], parts[1], ro


def _stack_networks(rendered: Rendered) -> list[str]:
    return list((composefile.loads(rendered.stack).get("networks") or {}).keys())


def render(settings: Settings, only: Iterable[str] | None = None, data: Any = None) -> Rendered:
    """The stack file (and Swarm's nginx routes) from the compose file; nothing is written."""
    data = composefile.load(settings.compose_file) if data is None else data
    compose_dir = settings.compose_file.parent
    return _Render(settings, data, only, compose_dir, settings.root / STACK_DIR).run()


def findings(settings: Settings, data: Any = None) -> list[Finding]:
    return render(settings, data=data).findings


def report(found: Sequence[Finding]) -> str:
    """`inv swarm-check`: one block per key."""
    if not found:
        return "nothing in the compose file needs changing for Swarm"
    blocks = []
    for f in found:
        blocks.append(f"{f.key} [{f.rule.swarm}] in {', '.join(f.services)}\n"
                      f"    Swarm:  {f.rule.what}\n"
                      f"    onevps: {f.rule.fix}")
    rejects = sum(1 for f in found if f.rule.swarm == "rejects")
    return "\n".join(blocks) + (f"\n{len(found)} findings ({rejects} would make `docker stack deploy` fail); "
                                "`inv swarm-render` applies every fix above")


def write(settings: Settings, rendered: Rendered) -> list[Path]:
    """Write the stack file and Swarm's nginx routes atomically; return what changed."""
    changed = []
    for rel, text in ((ROUTES_FILE, rendered.routes), (STACK_FILE, rendered.stack)):
        path = settings.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            composefile.atomic_write(path, text)
            changed.append(rel)
    return changed


# ---------------------------------------------------------------- commands --

def stack_deploy_argv(stack_file: str, stack: str, registry: bool) -> list[str]:
    """`docker stack deploy`; with a registry every node pulls the exact digest."""
    return commands.docker("stack", "deploy", "--compose-file", stack_file,
                           "--resolve-image", "always" if registry else "never",
                           "--with-registry-auth" if registry else None, stack)


def with_env_file(env_file: str, argv: Sequence[str]) -> list[str]:
    """argv run by a shell that first exports every variable of env_file (the server's .env)."""
    return ["sh", "-c", 'set -a && . "$1" && set +a && shift && exec "$@"', "sh", env_file, *argv]


def stack_rm_argv(stack: str) -> list[str]:
    return commands.docker("stack", "rm", stack)


def swarm_state_argv() -> list[str]:
    return commands.docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.ServerVersion}}")


def services_argv(stack: str) -> list[str]:
    return commands.docker("service", "ls", "--filter", f"label=com.docker.stack.namespace={stack}",
                           "--format", "{{.Name}}\t{{.Replicas}}\t{{.Image}}")


def service_inspect_argv(*names: str) -> list[str]:
    return commands.docker("service", "inspect", "--format",
                           "{{.Spec.Name}}\t{{.Spec.TaskTemplate.ContainerSpec.Image}}\t{{json .UpdateStatus}}"
                           "\t{{json .Spec.TaskTemplate}}", *names)


def compose_networks_argv(project: str) -> list[str]:
    """Networks a Compose project of the same name still holds."""
    return commands.docker("network", "ls", "--filter", f"label=com.docker.compose.project={project}",
                           "--format", "{{.Name}}")


def service_logs_argv(service: str, tail: int = 20) -> list[str]:
    return commands.docker("service", "logs", "--no-task-ids", "--tail", str(tail), service)


def service_ps_argv(service: str) -> list[str]:
    return commands.docker("service", "ps", "--no-trunc", "--format",
                           "{{.Name}}\t{{.Image}}\t{{.DesiredState}}\t{{.CurrentState}}\t{{.Error}}", service)


def tag_argv(source: str, target: str) -> list[str]:
    return commands.docker("image", "tag", source, target)


def push_argv(ref: str) -> list[str]:
    return commands.docker("image", "push", ref)


# ------------------------------------------------------------------ deploy --

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


@dataclass
class ServiceState:
    name: str
    image: str
    update: dict | None
    template: str = ""  # the task template as JSON: when it changes, Swarm rolls the service


def service_states(runner: Runner, stack: str) -> dict[str, ServiceState]:
    res = runner.run(services_argv(stack), "list the stack's services", check=False, mutates=False)
    names = [line.split("\t")[0] for line in res.stdout.splitlines() if line.strip()] if res.ok else []
    if not names:
        return {}
    out = runner.run(service_inspect_argv(*names), "inspect the stack's services", mutates=False).stdout
    states = {}
    for line in out.splitlines():
        name, image, update, template = (line.split("\t") + ["", "", ""])[:4]
        short = name[len(stack) + 1:] if name.startswith(stack + "_") else name
        states[short] = ServiceState(short, image.split("@")[0], json.loads(update) if update else None, template)
    return states


def replicas(runner: Runner, stack: str) -> dict[str, str]:
    res = runner.run(services_argv(stack), "list the stack's services", check=False, mutates=False)
    out = {}
    for line in res.stdout.splitlines() if res.ok else []:
        name, reps = (line.split("\t") + [""])[:2]
        out[name[len(stack) + 1:] if name.startswith(stack + "_") else name] = reps
    return out


def image_id(runner: Runner, ref: str) -> str | None:
    res = runner.run(commands.image_inspect(ref, "{{.Id}}"), f"inspect {ref}", check=False, mutates=False)
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


def wait(runner: Runner, stack: str, before: Mapping[str, ServiceState], services: Sequence[str],
         timeout: int, poll: float = 1.0, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
    """Wait until every service's update is over and its replicas run.

    Returns {service: outcome}: "completed", "rolled back", "created" or
    "unchanged". An update that started in this deploy (its UpdateStatus
    changed) is followed to its end; Swarm itself rolls back a failure.
    """
    if runner.dry_run:
        return {s: "dry-run" for s in services}
    deadline = clock() + timeout
    last_line = ""
    while True:
        states = service_states(runner, stack)
        reps = replicas(runner, stack)
        outcome: dict[str, str] = {}
        busy = []
        for svc in services:
            st = states.get(svc)
            old = before.get(svc)
            update = (st.update if st else None) or {}
            changed = bool(update) and (old is None or old.update != update)
            state = update.get("State", "") if changed else ""
            # The task template changed, so Swarm will roll the service, but its
            # update may not have begun yet: wait for it to show.
            pending = bool(st and old and st.template != old.template and not changed)
            running, _, desired = reps.get(svc, "0/0").partition("/")
            desired = desired.split()[0] if desired else "0"
            if pending:
                busy.append(f"{svc} update pending")
            elif state in ("updating", "rollback_started"):
                busy.append(f"{svc} {state}")
            elif state in ("paused", "rollback_paused"):
                outcome[svc] = f"{state}: {update.get('Message', '')}"
            elif state == "rollback_completed":
                outcome[svc] = "rolled back"
            elif running != desired or desired == "0":
                busy.append(f"{svc} {running}/{desired}")
            else:
                outcome[svc] = "completed" if state == "completed" else ("created" if old is None else "unchanged")
        line = ", ".join(busy)
        if not busy:
            return outcome
        if line != last_line:
            runner.say(f"    waiting: {line}")
            last_line = line
        if clock() > deadline:
            raise OnevpsError(f"the stack did not settle within {timeout}s: {line}",
                              f"`docker service ps {stack}_<service>` shows why")
        sleep(poll)


@dataclass
class DeployResult:
    stack_file: Path
    outcome: dict[str, str]
    tags: dict[str, str]


def deploy(runner: Runner, settings: Settings, reg: Registry, *, app: str | None = None,
           only: Iterable[str] | None = None, build: Callable[[Sequence[str]], None] | None = None,
           env: Mapping[str, str] | None = None, stack_file: str | None = None,
           upload: Callable[[], None] | None = None, wait_timeout: int | None = None,
           wrap: Callable[[list[str]], list[str]] | None = None) -> DeployResult:
    """Build, tag, (push), render, `docker stack deploy`, wait; raise on a rollback.

    `settings` holds the target's values (the server's for fab) rooted at the
    local files. `build` builds the given apps (compose build, locally or on
    the server); `env` carries the compose variables to the deploy, or `wrap`
    lets the server's shell read them from its .env (secrets stay off command
    lines); `upload` sends the rendered files to the server, `stack_file` is
    their path there.
    """
    only = list(only) if only is not None else None
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
    rendered = render(settings, only)
    held = runner.run(compose_networks_argv(stack), "list Compose networks", check=False, mutates=False)
    clash = sorted(set(held.stdout.split()) & {f"{stack}_{n}" for n in _stack_networks(rendered)}) if held.ok else []
    if clash:
        raise OnevpsError(f"the Compose stack {stack} still holds {', '.join(clash)}, which the Swarm stack needs",
                          "stop it first (`inv down`, on a server `docker compose -p "
                          f"{stack} down`); its volumes stay and the Swarm stack reuses them (same names)")
    # The stack file holds no tags (they travel as variables), so it is
    # written, and sent with the sources, before anything is built.
    if runner.dry_run:
        runner.say(f"[dry-run] would write {STACK_FILE} and {ROUTES_FILE} ({len(rendered.services)} services)")
    else:
        for rel in write(settings, rendered):
            runner.say(f"==> wrote {rel}")
    if upload:
        upload()
    todo = [app] if app else list(rendered.apps)
    if build and todo:
        build(todo)
    tags = tag_images(runner, settings, rendered.apps, before, rebuild=todo)
    target = stack_file or str(settings.root / STACK_FILE)
    runner.say(f"==> docker stack deploy {stack} ({len(rendered.services)} services"
               + (f"; updating {app}" if app else "") + ")")
    argv = stack_deploy_argv(target, stack, bool(settings.registry))
    runner.run(wrap(argv) if wrap else argv, "docker stack deploy",
               env={**(env or {}), **tags}, hint="the services keep running their previous version")
    targets = [app] if app else list(rendered.services)
    outcome = wait(runner, stack, before, targets, wait_timeout or settings.deploy_timeout + 60)
    bad = {s: o for s, o in outcome.items() if o not in ("completed", "created", "unchanged", "dry-run")}
    if bad:
        for svc in bad:
            ps = runner.run(service_ps_argv(f"{stack}_{svc}"), f"tasks of {svc}", check=False, mutates=False)
            logs = runner.run(service_logs_argv(f"{stack}_{svc}"), f"logs of {svc}", check=False, mutates=False)
            runner.say(f"--- tasks of {svc} ---\n{ps.stdout.strip()}\n--- last log lines of {svc} ---\n"
                       f"{(logs.stdout + logs.stderr).strip() or '(no output)'}")
        what = "; ".join(f"{s}: {o}" for s, o in bad.items())
        raise OnevpsError(f"the update failed and Swarm rolled it back, the previous version keeps serving ({what})",
                          "read the task errors and log lines above, fix the app and deploy again")
    return DeployResult(settings.root / STACK_FILE, outcome, tags)


def status_rows(runner: Runner, settings: Settings) -> list[tuple[str, ...]]:
    stack = settings.project_name
    states = service_states(runner, stack)
    reps = replicas(runner, stack)
    rows = [("SERVICE", "REPLICAS", "IMAGE", "LAST UPDATE")]
    for name in sorted(states):
        st = states[name]
        update = st.update or {}
        last = update.get("State", "-")
        if update.get("Message") and last not in ("completed",):
            last += f" ({update['Message']})"
        rows.append((name, reps.get(name, "?"), st.image, last))
    return rows
