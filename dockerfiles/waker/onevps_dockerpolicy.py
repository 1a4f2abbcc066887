"""The policy of onevps's Docker API proxy (onevps_dockerproxy.py beside it): which
calls pass and how they are forwarded (`decide`), which containers are the
project's apps (`app_problem`), and what of the engine's answers is passed on
(`filter_answer`). Pure: no I/O. Standard library only, Python 3.11.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

PROJECT_LABEL = "com.docker.compose.project"
TIER_LABEL = "onevps.tier"
SERVICE_LABEL = "com.docker.compose.service"
SLOT_LABEL = "onevps.slot"
ONEOFF_LABEL = "com.docker.compose.oneoff"
# Compose puts these on each container it creates; no image carries them (a compose-built
# image carries only the project, service and version labels).
CREATED_BY_COMPOSE = ("com.docker.compose.container-number", "com.docker.compose.config-hash")
MAX_PATH = 256
MAX_QUERY = 2048
MAX_ANSWER = 4 * 1024 * 1024  # bytes of an engine answer's body: its few copies stay far below the 48m mem_limit
MAX_LOG_TAIL = 200
MAX_STOP_TIMEOUT = 120
VERSION_PREFIX = re.compile(r"/v[0-9]{1,2}\.[0-9]{1,3}(?=/)")
CONTAINER_ROUTE = re.compile(r"/containers/([A-Za-z0-9][A-Za-z0-9_.-]*)/(json|start|stop|logs)")
FULL_ID = re.compile(r"[0-9a-f]{64}")
PATH_CHARS = re.compile(r"[A-Za-z0-9/_.-]*")
SAFE_NAME = re.compile(r"[A-Za-z_]{1,32}")
PLAIN_ROUTES = {("GET", "/_ping"): "ping", ("HEAD", "/_ping"): "ping",
                ("GET", "/version"): "version", ("GET", "/containers/json"): "list"}
CONTAINER_ROUTES = {("GET", "json"): "inspect", ("POST", "start"): "start",
                    ("POST", "stop"): "stop", ("GET", "logs"): "logs"}
LIST_FILTER_KEYS = frozenset({"id", "name", "label", "status", "health", "network"})
QUERY_RULES = {  # per route: parameter -> bool, an int maximum, "off" (only false, dropped), "json"
    "ping": {}, "version": {}, "inspect": {}, "start": {}, "stop": {"t": MAX_STOP_TIMEOUT},
    "logs": {"stdout": bool, "stderr": bool, "timestamps": bool, "tail": MAX_LOG_TAIL, "follow": "off"},
    "list": {"all": bool, "limit": 10000, "filters": "json"}}
BOOLS = frozenset({"0", "1", "true", "false", "True", "False"})
FALSE = frozenset({"", "0", "false", "False"})
PATH_RULES = ((lambda p: len(p) > MAX_PATH, "path too long"), (lambda p: "\x00" in p, "NUL in path"),
              (lambda p: "%" in p, "percent-encoding in path"),
              (lambda p: not p.startswith("/") or not PATH_CHARS.fullmatch(p), "unexpected character in path"),
              (lambda p: "//" in p, "empty path segment"), (lambda p: ".." in p, "'..' in path"))
PASS_HEADERS = ("Content-Type", "Api-Version", "Ostype", "Docker-Experimental")


class Denied(Exception):
    """A call the policy refuses; the message is the why (never client data)."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str
    route: str = ""              # ping, version, list, inspect, start, stop, logs
    prefix: str = ""             # the /vX.YY version prefix, kept when forwarding
    endpoint: str = ""           # the path after the prefix, or the container action (json, start...)
    container_ref: str | None = None  # name or id to resolve before forwarding
    rewrite: str = ""            # the query string to forward (already rewritten)


def split_path(path: str) -> tuple[str, str]:
    """(version prefix, the rest) of a request path, or Denied."""
    for broken, why in PATH_RULES:
        if broken(path):
            raise Denied(why)
    m = VERSION_PREFIX.match(path)
    return (m.group(0), path[m.end():]) if m else ("", path)


def parse_query(query: str) -> dict[str, str]:
    """The query's parameters (each at most once), or Denied."""
    if len(query) > MAX_QUERY:
        raise Denied("query too long")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, max_num_fields=16)
    except ValueError:
        raise Denied("malformed query") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise Denied(f"query parameter {_name(key)} given twice")
        if "\x00" in key or "\x00" in value:
            raise Denied("NUL in query")
        params[key] = value
    return params


def _name(key: str) -> str:
    return repr(key) if SAFE_NAME.fullmatch(key) else "(unprintable)"


def check_headers(headers) -> None:
    """No upgrade/hijack, no request body of any kind."""
    for name, value in headers.items():
        name = name.lower()
        if name == "upgrade" or (name == "connection" and "upgrade" in value.lower()):
            raise Denied("connection upgrade (attach/exec/hijack) is not allowed")
        if name == "transfer-encoding":
            raise Denied("request bodies are not allowed (Transfer-Encoding)")
        if name == "content-length" and value.strip() != "0":
            raise Denied("request bodies are not allowed")


def rewrite_query(route: str, params: dict[str, str], project: str) -> str:
    """The query string forwarded for a route (QUERY_RULES), or Denied."""
    rules = QUERY_RULES[route]
    for key, value in params.items():
        rule = rules.get(key)
        if rule is None:
            raise Denied(f"query parameter {_name(key)} is not allowed here")
        if rule is bool and value not in BOOLS:
            raise Denied(f"query parameter {_name(key)} must be a boolean")
        if rule == "off" and value not in FALSE:
            raise Denied(f"{key} is not allowed")
        if isinstance(rule, int) and not (value.isdigit() and len(value) <= 5 and int(value) <= rule):
            raise Denied(f"query parameter {_name(key)} must be an integer 0..{rule}")
    out = {key: value for key, value in params.items() if rules[key] != "off"}
    if route == "logs":
        out.setdefault("tail", str(MAX_LOG_TAIL))
    if route == "list":
        out["filters"] = merge_filters(out.get("filters", ""), project)
    return urlencode(out)


def merge_filters(raw: str, project: str) -> str:
    """The client's list filters (JSON) AND the proxy's: project + onevps.tier."""
    try:
        client = json.loads(raw) if raw else {}
    except ValueError:
        raise Denied("filters is not JSON") from None
    if not isinstance(client, dict):
        raise Denied("filters is not a JSON object")
    merged: dict[str, list[str]] = {}
    for key, value in client.items():
        if key not in LIST_FILTER_KEYS:
            raise Denied("a list filter is not allowed (allowed: " + ", ".join(sorted(LIST_FILTER_KEYS)) + ")")
        if isinstance(value, dict):  # the older form {"label": {"a=b": true}}
            value = [k for k, on in value.items() if on is True]
        if not isinstance(value, list) or not all(isinstance(v, str) and "\x00" not in v for v in value):
            raise Denied("a list filter must be a list of strings")
        merged[key] = list(value)
    labels = merged.setdefault("label", [])
    for required in (f"{PROJECT_LABEL}={project}", TIER_LABEL):
        if required not in labels:
            labels.append(required)
    return json.dumps(merged, separators=(",", ":"), sort_keys=True)


def decide(method: str, path: str, query: str, headers, project: str) -> Decision:
    """Whether a call may pass, and how it is forwarded. Pure: no I/O."""
    try:
        prefix, rest = split_path(path)
        check_headers(headers)
        params = parse_query(query)
        route, endpoint, ref = PLAIN_ROUTES.get((method, rest)), rest, None
        m = CONTAINER_ROUTE.fullmatch(rest)
        if route is None and m:
            route, endpoint, ref = CONTAINER_ROUTES.get((method, m.group(2))), m.group(2), m.group(1)
        if route is None:
            raise Denied("not an allowed endpoint")
        rewrite = rewrite_query(route, params, project)
    except Denied as err:
        return Decision(False, str(err))
    return Decision(True, "allowed", route, prefix, endpoint, ref, rewrite)


def forward_target(decision: Decision, container_id: str | None = None) -> str:
    """The path and query sent to the engine: a container call names the resolved full Id."""
    path = decision.endpoint if container_id is None else f"/containers/{container_id}/{decision.endpoint}"
    return decision.prefix + path + (f"?{decision.rewrite}" if decision.rewrite else "")


def app_problem(info, project: str) -> str | None:
    """Why an inspected container is not one of the project's app containers."""
    if not isinstance(info, dict) or not FULL_ID.fullmatch(str(info.get("Id", ""))):
        return "no such container"
    return labels_problem((info.get("Config") or {}).get("Labels") or {}, project)


def labels_problem(labels: dict, project: str) -> str | None:
    """Why a container with these labels is not one of the project's app containers."""
    if labels.get(PROJECT_LABEL) != project or not labels.get(TIER_LABEL):
        return "not an app container of this project"
    # Image labels reach every container made from the image (an app image carries the
    # compose project, service and tier): a deploy slot (`docker run`, label onevps.slot)
    # or a one-off `compose run` container looks like the app; neither is it.
    if not labels.get(SERVICE_LABEL) or labels.get(SLOT_LABEL) or labels.get(ONEOFF_LABEL, "False") != "False":
        return "not an app's own container (a deploy slot or a one-off)"
    # A plain `docker run` of an app image inherits all of the above from the image (issue 24,
    # attack 6: it was listed, its logs shown, and stopped): compose did not create it.
    if not all(labels.get(key) for key in CREATED_BY_COMPOSE):
        return "not an app's own container (not created by compose: a plain `docker run` of an app image)"
    return None


def _ip_addresses(networks) -> dict:
    return {name: {"IPAddress": (net or {}).get("IPAddress", "")}
            for name, net in (networks or {}).items()}


def filter_inspect(info: dict) -> dict:
    """The whitelisted fields of an inspect answer (never Config.Env)."""
    out = {key: info.get(key) for key in ("Id", "Name", "Created", "State", "RestartCount", "Image")}
    config = info.get("Config") or {}
    out["Config"] = {"Image": config.get("Image"), "Labels": config.get("Labels") or {}}
    out["NetworkSettings"] = {"Networks": _ip_addresses((info.get("NetworkSettings") or {}).get("Networks"))}
    return out


def filter_list(entries, project: str) -> list:
    """The project's app containers of a list answer, whitelisted fields only."""
    out = []
    for entry in entries if isinstance(entries, list) else []:
        labels = entry.get("Labels") or {}
        if labels_problem(labels, project):
            continue
        networks = _ip_addresses((entry.get("NetworkSettings") or {}).get("Networks"))
        out.append({**{key: entry.get(key) for key in ("Id", "Names", "Image", "Created", "State", "Status")},
                    "Labels": labels, "NetworkSettings": {"Networks": networks}})
    return out


def filter_answer(route: str, status: int, body: bytes, project: str) -> bytes:
    if status != 200 or route not in ("inspect", "list"):
        return body
    data = json.loads(body)
    kept = filter_inspect(data) if route == "inspect" else filter_list(data, project)
    return json.dumps(kept).encode()
