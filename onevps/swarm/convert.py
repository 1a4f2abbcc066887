"""One compose service as a Swarm service.

Pure: convert() returns the service's stack entry with what it used (configs,
named volumes, networks) and what it met (findings, refusals). A refused
construct is recorded and the conversion goes on, so every refusal is found.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from .. import nginx
from ..config import Settings
from ..errors import ComposeFileError, OnevpsError
from ..registry import TIER_LABEL
from .keys import KEPT, RULES, check_keys
from .nodes import APPS_CONSTRAINT, SPREAD_LABEL

STACK_DIR = Path("compose/swarm")  # generated, git-ignored, sent to the server with compose/
STACK_FILE = STACK_DIR / "docker-stack.yml"
ROUTES_FILE = STACK_DIR / "nginx-apps.conf.template"
REPLICAS_LABEL = "onevps.replicas"
APP_MONITOR = "15s"  # after each new task: a crash or failed health check in this window rolls back
SERVICE_MONITOR = "10s"

_ADDRESS = re.compile(r"\$\{NETWORK_PREFIX(?::?-[0-9.]*)?\}\.(\d{1,3})")
_PLUS_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?\+")
_VARIABLE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-[^}]*)?\}$")


@dataclass(frozen=True)
class Place:
    """What converting a service needs besides the service itself."""

    settings: Settings
    root: Path  # the project's root: config names are paths under it
    compose_dir: Path
    stack_dir: Path
    routes: str  # Swarm's nginx routes: they replace the static-address routes file
    by_host: Mapping[int, str]  # host number on app-network -> the service there


@dataclass
class Service:
    """One converted service, what it used and what it met."""

    spec: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # keys of RULES
    refused: list[OnevpsError] = field(default_factory=list)
    configs: dict[str, dict] = field(default_factory=dict)  # Swarm config name -> {"file": path}
    volumes: list[str] = field(default_factory=list)  # named volumes
    networks: list[str] = field(default_factory=list)


@dataclass
class Mounts:
    """A service's volumes: what stays a volume, what becomes a config."""

    volumes: list[Any] = field(default_factory=list)
    configs: list[dict] = field(default_factory=list)  # config mounts of the service
    defs: dict[str, dict] = field(default_factory=dict)  # the configs themselves
    named: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    refused: list[OnevpsError] = field(default_factory=list)


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


def labels(service: dict) -> dict[str, str]:
    found = service.get("labels") or {}
    if isinstance(found, list):
        found = dict(str(item).split("=", 1) for item in found if "=" in str(item))
    return {str(k): str(v) for k, v in found.items()}


def _add(names: list[str], *more: str) -> None:
    names.extend(n for n in more if n not in names)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


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


def _restart_policy(value: str | None) -> dict:
    value = (value or "no").strip()
    if value in ("always", "unless-stopped"):
        return {"condition": "any", "delay": "5s"}
    if value.startswith("on-failure"):
        return {"condition": "on-failure", "delay": "5s"}
    return {"condition": "none"}


# ------------------------------------------------------------ one service --

def convert(place: Place, name: str, svc: dict) -> Service:
    """The stack entry of service `name`, with what it used and met."""
    app = TIER_LABEL in labels(svc)
    notes, refused = check_keys(name, svc)
    image, bad_image = image_ref(place.settings, name, svc, app)
    spec: dict[str, Any] = {"image": image, **{key: svc[key] for key in KEPT if key in svc}}
    env, env_notes, bad_env = environment(name, svc.get("environment"), place.by_host)
    if env:
        spec["environment"] = env
    mounts = volumes(place, name, svc)
    if mounts.volumes:
        spec["volumes"] = mounts.volumes
    if mounts.configs:
        spec["configs"] = mounts.configs
    published = ports(svc.get("ports") or [])
    if published:
        spec["ports"] = published
    spec["networks"], addressed = networks(svc)
    stateful = any(not is_scratch(v) for v in mounts.named)
    pids, bad_pids = pids_limit(place.settings, name, svc)
    spec["deploy"], bad_deploy = deploy_block(name, svc, app, stateful=stateful, published=bool(published),
                                              workers=bool(place.settings.swarm_workers), pids=pids)
    bad_interpolation = interpolation(name, spec)
    _add(notes, *env_notes, *mounts.notes, *(["ports"] if published else []), *(["ipv4_address"] if addressed else []),
         *(["interpolation"] if bad_interpolation else []))
    return Service(spec, notes, refused + bad_image + bad_env + mounts.refused + bad_pids + bad_deploy
                   + bad_interpolation,
                   mounts.defs, mounts.named, list(spec["networks"]))


def image_ref(settings: Settings, name: str, svc: dict, app: bool) -> tuple[str, list[OnevpsError]]:
    image = str(svc.get("image") or "")
    if not image:
        return "", [ComposeFileError(f"service {name} has no image:", "Swarm runs images only; add image: NAME:TAG")]
    if "build" not in svc and not app:
        return image, []  # an upstream image (nginx, redis, ...)
    repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    registry = f"{settings.registry}/" if settings.registry else ""
    return f"{registry}{repo}:${{{tag_var(name)}:-latest}}", []


def environment(name: str, env: Any, by_host: Mapping[int, str]) -> tuple[dict | None, list[str], list[OnevpsError]]:
    """The environment as a map, static addresses replaced by service names."""
    if env is None:
        return None, [], []
    if isinstance(env, list):
        env = dict(str(item).split("=", 1) if "=" in str(item) else (str(item), None) for item in env)
    out, notes, refused = {}, [], []
    for key, value in env.items():
        if isinstance(value, str) and _ADDRESS.search(value):
            _add(notes, "ipv4_address")
            for host in sorted({int(m.group(1)) for m in _ADDRESS.finditer(value)} - set(by_host)):
                refused.append(ComposeFileError(f"service {name}: {key} points at .{host}, which no service holds",
                                                "fix the address in the compose file"))
            value = _ADDRESS.sub(lambda m: by_host.get(int(m.group(1)), m.group(0)), value)
        out[key] = value
    return out, notes, refused


def volumes(place: Place, name: str, svc: dict) -> Mounts:
    """Named volumes stay (the service keeps data), read-only bind mounts become configs, tmpfs volumes."""
    out = Mounts()
    for item in svc.get("volumes") or []:
        source, target, ro = _parse_volume(item)
        if source is None:  # anonymous volume
            out.volumes.append(item)
        elif source.startswith((".", "/", "~")):
            _add(out.notes, "bind")
            if source == "/dev/null" or not ro:
                out.refused.append(OnevpsError(f"service {name}: the writable bind mount {source}:{target} cannot "
                                               "move between nodes", "use a named volume, or leave the service to compose"))
                continue
            config_mounts(place, name, source, target, out)
        else:
            _add(out.notes, "volume")
            _add(out.named, source)
            out.volumes.append(f"{source}:{target}" + (":ro" if ro else ""))
    for path in svc.get("tmpfs") or []:
        out.volumes.append({"type": "tmpfs", "target": str(path)})
    return out


def config_mounts(place: Place, name: str, source: str, target: str, out: Mounts) -> None:
    """Every file under a read-only bind mount as a config named by its path and content (into `out`)."""
    path = (place.compose_dir / source).resolve()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        out.refused.append(OnevpsError(f"service {name}: bind mount source {source} does not exist",
                                       "restore it or fix the compose file"))
        return
    root = place.root.resolve()
    for file in files:
        inside = PurePosixPath(target) / file.relative_to(path).as_posix() if path.is_dir() else PurePosixPath(target)
        rel = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.as_posix()
        if rel == nginx.ROUTES_FILE.as_posix():  # the static-address routes: Swarm gets its own
            content, source_path = place.routes.encode(), place.root / ROUTES_FILE
            rel = ROUTES_FILE.as_posix()
        else:
            content, source_path = file.read_bytes(), file
        # Config names are at most 64 characters with the stack's prefix;
        # the hash covers path and content, so a change is a new config.
        digest = hashlib.sha256(rel.encode() + b"\0" + content).hexdigest()[:10]
        key = f"{_slug(PurePosixPath(rel).name)[:24].strip('-')}-{digest}"
        out.defs[key] = {"file": _relpath(source_path, place.stack_dir)}
        mount: dict[str, Any] = {"source": key, "target": str(inside)}
        if file.stat().st_mode & 0o111:
            mount["mode"] = 0o555  # entrypoint scripts must stay executable
        out.configs.append(mount)


def _relpath(path: Path, start: Path) -> str:
    """A path as the stack file must write it: relative to the stack file's folder."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def ports(items: list) -> list[dict]:
    """Every published port in host mode (the host address is dropped)."""
    out = []
    for item in items:
        if isinstance(item, dict):
            target, published = item.get("target"), item.get("published")
            protocol = item.get("protocol", "tcp")
        else:
            spec, _, protocol = str(item).partition("/")
            protocol = protocol or "tcp"
            parts = _split_port(spec)
            target = parts[-1]
            published = parts[-2] if len(parts) >= 2 else None
        entry = {"target": _int_or_text(target), "published": _int_or_text(published), "protocol": protocol,
                 "mode": "host"}
        if published is None:
            del entry["published"]
        out.append(entry)
    return out


def networks(svc: dict) -> tuple[list[str], bool]:
    """The service's network names, and whether it gave a static address."""
    nets = svc.get("networks")
    if nets is None:
        return ["default"], False
    if isinstance(nets, dict):
        return list(nets), any(isinstance(v, dict) and "ipv4_address" in v for v in nets.values())
    return [str(n) for n in nets], False


def pids_limit(settings: Settings, name: str, svc: dict) -> tuple[int | None, list[OnevpsError]]:
    """The service's pids_limit as the number deploy.resources.limits.pids needs.

    docker stack deploy fills no variable into that field (CLI 28.2: "must be a
    integer"), so `${APP_PIDS_LIMIT:-256}` is written as the setting's value in
    `settings` (the target's: the server's .env for fab). Only onevps settings
    or plain numbers; anything else is refused.
    """
    if svc.get("pids_limit") is None:
        return None, []
    value = str(svc["pids_limit"]).strip()
    match = _VARIABLE.match(value)
    if match:
        if match.group(1) not in settings.raw:
            return None, [ComposeFileError(f"service {name}: pids_limit {value} names no onevps setting",
                                           "use a *_PIDS_LIMIT setting or a number: docker stack deploy "
                                           "fills no variable into deploy.resources.limits.pids")]
        value = settings.raw[match.group(1)]
    if not value.isdigit() or int(value) < 1:
        return None, [ComposeFileError(f"service {name}: pids_limit {value!r} is not a number of at least 1",
                                       "give it a *_PIDS_LIMIT setting or a whole number")]
    return int(value), []


SCRATCH_SUFFIX = "-buffers"  # nginx-buffers, chroma-auth-buffers: temp files, refilled by traffic


def is_scratch(volume: str) -> bool:
    """A named volume of temp files only: no state, so no reason to pin its service to the
    manager or stop it first (each node's Docker makes its own)."""
    return volume.endswith(SCRATCH_SUFFIX)


def deploy_block(name: str, svc: dict, app: bool, stateful: bool, published: bool,
                 workers: bool = False, pids: int | None = None) -> tuple[dict, list[OnevpsError]]:
    """deploy: replicas, resources, restart policy, rolling updates and rollbacks, placement
    (with SWARM_WORKERS an app runs on the workers, spread over them). `pids`: the process
    limit as a number (pids_limit())."""
    replicas, refused = _replicas(name, labels(svc).get(REPLICAS_LABEL, "1"), pinned=stateful or published)
    out: dict[str, Any] = {"mode": "replicated", "replicas": replicas, "endpoint_mode": "dnsrr"}
    limits = {}
    if "cpus" in svc:
        limits["cpus"] = str(svc["cpus"])
    if "mem_limit" in svc:
        limits["memory"] = str(svc["mem_limit"])
    if pids is not None:
        limits["pids"] = pids
    resources: dict[str, Any] = {}
    if limits:
        resources["limits"] = limits
    if "mem_reservation" in svc:
        resources["reservations"] = {"memory": str(svc["mem_reservation"])}
    if resources:
        out["resources"] = resources
    out["restart_policy"] = _restart_policy(svc.get("restart"))
    # Several replicas update stop-first, one at a time: the others serve meanwhile, and the new
    # task is placed where the old one left room, so the replicas stay spread over the nodes
    # (start-first lets Swarm put a new task beside another replica: all on one node at the end).
    order = "stop-first" if (stateful or published or replicas > 1) else "start-first"
    out["update_config"] = {"parallelism": 1, "delay": "2s", "order": order, "failure_action": "rollback",
                            "monitor": APP_MONITOR if app else SERVICE_MONITOR, "max_failure_ratio": 0}
    out["rollback_config"] = {"parallelism": 1, "delay": "0s", "order": order, "failure_action": "pause",
                              "monitor": SERVICE_MONITOR, "max_failure_ratio": 0}
    if stateful:
        out["placement"] = {"constraints": ["node.role == manager"]}
    elif app and workers:
        out["placement"] = {"constraints": [APPS_CONSTRAINT], "preferences": [{"spread": SPREAD_LABEL}]}
    out.update(dict(svc.get("deploy") or {}))  # a hand-written deploy: block wins
    return out, refused


def _replicas(name: str, label: str, pinned: bool) -> tuple[int, list[OnevpsError]]:
    if not str(label).isdigit() or int(label) < 1:
        return 1, [ComposeFileError(f"service {name}: label {REPLICAS_LABEL}={label!r}",
                                    "use a whole number of at least 1")]
    if pinned and int(label) > 1:
        return 1, [ComposeFileError(f"service {name}: {REPLICAS_LABEL}={label} but it keeps data in a volume "
                                    "or publishes a port", "only apps without volumes or ports can have replicas")]
    return int(label), []


def interpolation(name: str, spec: dict) -> list[OnevpsError]:
    """`${VAR:+alt}`, which docker stack deploy cannot interpolate: one refusal per key using it."""
    return [OnevpsError(f"service {name}: {key} uses ${{VAR:+...}}, which docker stack deploy cannot interpolate",
                        RULES["interpolation"].fix)
            for key, value in spec.items() if _PLUS_INTERPOLATION.search(json.dumps(value))]
