"""Every setting onevps reads, declared once in KEYS: name, default, check, help, type.

A check's normal form is the text `inv settings` shows and compose
interpolates; a key's `typed` turns it into its Settings field.
.env.example documents the same keys and a unit test keeps the two in step.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, Literal, get_args
from urllib.parse import urlparse

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_NAMESPACE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


# ------------------------------------------------------------ value checks --
# Each check takes the raw string and returns its normal form or raises
# ValueError with a short reason; config.load adds the key and where the value
# came from.

def _port(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError("must be a port number 1-65535")
    return int(raw)


def _positive_int(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError("must be a whole number of at least 1")
    return int(raw)


def _whole_number(raw: str) -> int:
    if not raw.isdigit():
        raise ValueError("must be a whole number of 0 or more (0: off)")
    return int(raw)


def _wake_timeout(raw: str) -> str:
    if not raw.isdigit() or not 5 <= int(raw) <= 70:
        raise ValueError("must be a whole number of seconds from 5 to 70 (nginx waits 75 s for an answer)")
    return raw


def _percent(raw: str) -> str:
    value = raw.strip().removesuffix("%").strip()
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 100 or not re.match(r"^[0-9]+(\.[0-9]+)?$", value):
        raise ValueError("must be a percentage 0-100 such as 5 or 2.5")
    return str(int(number)) if number.is_integer() else str(number)


def _ip(raw: str) -> str:
    try:
        return str(ipaddress.IPv4Address(raw))
    except ValueError:
        raise ValueError("must be an IPv4 address such as 127.0.0.1 or 0.0.0.0") from None


def _network_prefix(raw: str) -> str:
    parts = raw.split(".")
    if len(parts) != 3 or not all(p.isdigit() and 0 <= int(p) <= 255 and str(int(p)) == p for p in parts):
        raise ValueError("must be the first three octets of a /24 network, such as 172.20.0")
    net = ipaddress.IPv4Network(f"{raw}.0/24")
    if not net.is_private:
        raise ValueError("must be a private network (10.x, 172.16-31.x or 192.168.x)")
    return raw


def _private_subnet(raw: str) -> str:
    try:
        net = ipaddress.IPv4Network(raw.strip(), strict=True)
    except ValueError:
        raise ValueError("must be a network in CIDR form such as 172.20.1.0/28") from None
    if not net.is_private or not 16 <= net.prefixlen <= 29:
        raise ValueError("must be a private network between /16 and /29, such as 172.20.1.0/28")
    return str(net)


def _domain(raw: str) -> str:
    value = raw.strip().lower().rstrip(".")
    labels = value.split(".")
    if not value or len(value) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError("must be a host name such as localhost or example.com")
    return value


def _project(raw: str) -> str:
    if not _PROJECT.match(raw):
        raise ValueError("must be lowercase letters, digits, '-' or '_', starting with a letter or digit")
    return raw


def _namespace(raw: str) -> str:
    if not _NAMESPACE.match(raw):
        raise ValueError("must be a lowercase image repository prefix such as onevps")
    return raw


def _url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https", "file") or not (parsed.netloc or parsed.scheme == "file"):
        raise ValueError("must be an http(s) URL")
    return raw


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _optional_dir(raw: str) -> str:
    return raw.strip()


PLACEHOLDER = "change-me"
SECRET_HINT = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _secret(raw: str) -> str:
    value = raw.strip()
    if value in ("", PLACEHOLDER):
        return value  # refused later, by require_secrets(), where a secret is needed
    if len(value) < 16 or not re.match(r"^[A-Za-z0-9_-]+$", value):
        raise ValueError("must be at least 16 characters of A-Z, a-z, 0-9, '_' or '-' (it goes into a URL); "
                         + SECRET_HINT)
    return value


_MEMORY = re.compile(r"^[1-9][0-9]*[kmg]?$")


def _memory(raw: str) -> str:
    if not _MEMORY.match(raw.strip().lower()):
        raise ValueError("must be a memory size such as 256m or 2g")
    return raw.strip().lower()


def _nginx_size(raw: str) -> str:
    value = raw.strip().lower()
    if not re.fullmatch(r"[0-9]{1,9}[km]?|[0-9]{1,3}g", value):
        raise ValueError("must be a size as nginx writes it, such as 20m, 512k or 1g")
    return value


WAKER_MAX_BODY = 20 * 1024 ** 2  # the waker streams a sleeping app's request body and passes at most this


def _nginx_body(raw: str) -> str:
    value = _nginx_size(raw)
    if not 1024 <= _bytes(value) <= WAKER_MAX_BODY:
        raise ValueError("must be from 1k to 20m: a request for a sleeping app waits at the waker, which "
                         "takes bodies up to 20m")
    return value


def _cpus(raw: str) -> str:
    try:
        value = float(raw)
    except ValueError:
        value = 0
    if not 0 < value <= 256:
        raise ValueError("must be a number of CPUs such as 0.5 or 2")
    return raw.strip()


def _optional_registry(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if value and not re.match(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$", value):
        raise ValueError("must be a registry host with optional port and path, such as registry.example.com:5000 "
                         "or ghcr.io/me (empty: local images, one node only)")
    return value


_NODE = re.compile(r"^(?:([a-z_][a-z0-9_.-]{0,31})@)?([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(?::([0-9]{1,5}))?$")


def _node(raw: str) -> str:
    """One server as [user@]host[:port] (its normal form)."""
    match = _NODE.match(raw.strip())
    if not match or (match.group(3) and not 1 <= int(match.group(3)) <= 65535):
        raise ValueError(f"{raw.strip()!r} is not a server such as root@10.0.0.2 or deploy@node2.example.com:2222")
    user, host, port = match.groups()
    host = _optional_host(host.strip("[]"))
    return (f"{user}@" if user else "") + host + (f":{port}" if port else "")


def _optional_node(raw: str) -> str:
    return _node(raw) if raw.strip() else ""


def _node_list(raw: str) -> str:
    """Servers separated by commas or spaces, each [user@]host[:port]; no server twice."""
    nodes = [_node(part) for part in re.split(r"[\s,]+", raw.strip()) if part]
    if len(set(nodes)) != len(nodes):
        raise ValueError("names a server twice")
    return ",".join(nodes)


def _node_tuple(value: str) -> tuple[str, ...]:
    return tuple(v for v in value.split(",") if v)


def _optional_ip(raw: str) -> str:
    return _ip(raw.strip()) if raw.strip() else ""


def _optional_subnet(raw: str) -> str:
    value = raw.strip()
    if not value:
        return ""
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError:
        raise ValueError("must be an IPv4 network such as 10.231.0.0/23 (empty: Docker picks)") from None
    if not net.is_private or net.prefixlen > 24:
        raise ValueError("must be a private network of /24 or larger (each overlay network gets one /24 of it)")
    return str(net)


def _on_off(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("on", "off"):
        raise ValueError("must be on or off")
    return value


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return value
    return check


def _optional_email(raw: str) -> str:
    value = raw.strip()
    if value and not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", value):
        raise ValueError("must be an e-mail address such as ops@example.com")
    return value


def _optional_path(raw: str) -> str:
    value = raw.strip()
    return _abs_path(value) if value else ""


def _optional_host(raw: str) -> str:
    value = raw.strip()
    if not value:
        return ""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return _domain(value)


def _user(raw: str) -> str:
    if not re.match(r"^[a-z_][a-z0-9_.-]{0,31}$", raw):
        raise ValueError("must be a Unix user name such as root or deploy")
    return raw


def _abs_path(raw: str) -> str:
    if not raw.startswith("/") or any(c in raw for c in "\n\0") or ".." in raw.split("/"):
        raise ValueError("must be an absolute path on the server, such as /opt/apps")
    return raw.rstrip("/") or "/"


_SYSTEM_DIRS = ("bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "proc", "run", "sbin", "sys", "usr")


def _vps_path(raw: str) -> str:
    """VPS_PATH: a folder of its own (fab setup hands it to a non-root VPS_USER)."""
    value = _abs_path(raw)
    parts = [p for p in value.split("/") if p]
    if len(parts) < 2 or parts[0] in _SYSTEM_DIRS or value.startswith("/var/lib/docker"):
        raise ValueError("must be a folder of its own on the server, two levels deep or more and outside the "
                         "system's folders, such as /opt/apps or /srv/onevps")
    return value


# ------------------------------------------------------- typed field values --
# Each takes a check's normal form; the check has already refused bad input.

DockerInstall = Literal["docker-repo", "distro", "none"]

_UNITS = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def _same(value: object) -> object:
    return value


def _is_on(value: str) -> bool:
    return value == "on"


def _bytes(value: str) -> int:
    """A memory size (256m, 2g, 512k or bytes) in bytes, as Docker counts them (1m = 1024 KiB)."""
    unit = _UNITS.get(value[-1], 1)
    return int(value[:-1] if unit > 1 else value) * unit


@dataclass(frozen=True)
class Key:
    """One setting; `typed` turns its check's normal form into its Settings field."""

    name: str
    default: str
    check: Callable[[str], object]
    help: str
    typed: Callable[..., object] = _same

    @property
    def field_name(self) -> str:
        """Its Settings field: the name in lower case (COMPOSE_PROJECT_NAME: project_name)."""
        return "project_name" if self.name == "COMPOSE_PROJECT_NAME" else self.name.lower()


# Folders and files on this machine (TORCH_WHEEL_DIR, EXTRA_CA_DIR, VPS_SSH_KEY,
# VPS_ENV_FILE) become Paths in config.load, against the project root.
KEYS: tuple[Key, ...] = (
    Key("COMPOSE_PROJECT_NAME", "onevps", _project,
        "Compose project name: prefixes containers, volumes and the network."),
    Key("DOMAIN", "localhost", _domain,
        "Apps answer at <app>.<DOMAIN>; the bare domain shows the index of apps."),
    Key("BIND_ADDRESS", "127.0.0.1", _ip,
        "Address nginx publishes its ports on (0.0.0.0 on a server)."),
    Key("HTTP_PORT", "8080", _port, "Host port for HTTP (80 on a server)."),
    Key("HTTPS_PORT", "8443", _port, "Host port for HTTPS (443 on a server)."),
    Key("NETWORK_PREFIX", "172.20.0", _network_prefix,
        "First three octets of app-network's /24 subnet (static addresses live in it)."),
    Key("CHROMA_SUBNET", "172.20.1.0/28", _private_subnet,
        "Subnet of chroma-private, the internal network between ChromaDB and its token gate (must not overlap app-network)."),
    Key("IMAGE_NAMESPACE", "onevps", _namespace,
        "Prefix of every image built here: <ns>/base, <ns>/ml, <ns>/<app>."),
    Key("TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu", _url,
        "Package index torch's CPU build is installed from (ML tier)."),
    Key("TORCH_CUDA", "off", _on_off,
        "off: the ML tier build fails when the installed torch is a CUDA build (several GB); on: CUDA is wanted.",
        typed=_is_on),
    Key("TORCH_WHEEL_DIR", "", _optional_dir,
        "Optional folder of local wheels (e.g. torch) used by the ML tier build; adds no layer."),
    Key("EXTRA_CA_DIR", "", _optional_dir,
        "Optional folder of extra CA certificates (*.crt) the base tier trusts (TLS-intercepting proxies)."),
    Key("OLLAMA_MODEL", "llama3.2:1b", _text, "Model the chatbot asks Ollama for."),
    Key("UP_TIMEOUT", "900", _positive_int,
        "Seconds `inv up` waits for every container to become healthy."),
    Key("REDIS_PASSWORD", "", _secret,
        "Password of onevps's own Redis user; each app's own password (in its REDIS_URL) is derived from it. "
        "Required: `inv up` and `fab` refuse without it."),
    Key("CHROMA_TOKEN", "", _secret,
        "onevps's own token at ChromaDB's gate (chroma-auth); each app's own CHROMA_TOKEN is derived from it. "
        "Required like REDIS_PASSWORD."),
    Key("APP_MEM_LIMIT", "256m", _memory, "Memory limit of each base app (override per app in the compose file).",
        typed=_bytes),
    Key("APP_CPUS", "1.0", _cpus, "CPU limit of each app.", typed=float),
    Key("ML_APP_MEM_LIMIT", "1g", _memory, "Memory limit of each ML app.", typed=_bytes),
    Key("NGINX_MEM_LIMIT", "256m", _memory, "Memory limit of nginx.", typed=_bytes),
    Key("REDIS_MEM_LIMIT", "512m", _memory, "Memory limit of Redis.", typed=_bytes),
    Key("CHROMA_MEM_LIMIT", "1g", _memory, "Memory limit of ChromaDB.", typed=_bytes),
    Key("CHROMA_AUTH_MEM_LIMIT", "64m", _memory, "Memory limit of chroma-auth, ChromaDB's token gate.", typed=_bytes),
    Key("OLLAMA_MEM_LIMIT", "8g", _memory, "Memory limit of Ollama (models need room).", typed=_bytes),
    Key("WAKER_MEM_LIMIT", "96m", _memory, "Memory limit of the waker (wakes sleeping apps).", typed=_bytes),
    Key("DOCKER_PROXY_MEM_LIMIT", "48m", _memory, "Memory limit of docker-proxy (the waker's only way to Docker).",
        typed=_bytes),
    # Process limits (pids_limit: processes and threads together, `docker exec`s and
    # health checks included). Past it, creating one more fails with EAGAIN; what
    # runs goes on. Each default is several times the peak measured in the container
    # under load on 2 CPUs, with room for what grows with the CPUs (README, Security).
    Key("APP_PIDS_LIMIT", "256", _positive_int,
        "Process limit (processes and threads) of each base app (override per app in the compose file).",
        typed=int),
    Key("ML_APP_PIDS_LIMIT", "512", _positive_int,
        "Process limit of each ML app (torch and BLAS start thread pools as large as the CPUs).", typed=int),
    Key("NGINX_PIDS_LIMIT", "256", _positive_int,
        "Process limit of nginx (a worker per CPU; a reload's old workers stay while their connections last).",
        typed=int),
    Key("REDIS_PIDS_LIMIT", "64", _positive_int, "Process limit of Redis.", typed=int),
    Key("CHROMA_PIDS_LIMIT", "512", _positive_int, "Process limit of ChromaDB.", typed=int),
    Key("CHROMA_AUTH_PIDS_LIMIT", "128", _positive_int, "Process limit of chroma-auth (nginx: a worker per CPU).",
        typed=int),
    Key("OLLAMA_PIDS_LIMIT", "1024", _positive_int,
        "Process limit of Ollama (a runner process per loaded model, a thread per CPU in each).", typed=int),
    Key("WAKER_PIDS_LIMIT", "64", _positive_int, "Process limit of the waker.", typed=int),
    Key("DOCKER_PROXY_PIDS_LIMIT", "128", _positive_int,
        "Process limit of docker-proxy (a thread per call of the waker).", typed=int),
    Key("CERTBOT_PIDS_LIMIT", "64", _positive_int, "Process limit of certbot (run by `fab certs`).", typed=int),
    # What one client may do at nginx, the one door (nginx/templates/00-limits.conf.template).
    # "Client" is an address; over a limit it gets 429 or 413, or is cut off (408 in the log), and
    # the others notice nothing.
    Key("NGINX_MAX_BODY", "20m", _nginx_body, "Largest request body nginx passes on (413 past it)."),
    Key("NGINX_CONN_PER_CLIENT", "100", _positive_int,
        "Connections one client address may hold open at nginx at once (429 past it).", typed=int),
    Key("NGINX_RATE_PER_CLIENT", "100", _positive_int,
        "Requests a second one client address may send on average (429 past it and the burst).", typed=int),
    Key("NGINX_BURST_PER_CLIENT", "400", _whole_number,
        "Requests one client address may send at once above NGINX_RATE_PER_CLIENT before 429.", typed=int),
    Key("NGINX_CLIENT_TIMEOUT", "15", _positive_int,
        "Seconds a client may take between two reads of its request head or body (then it is cut off).",
        typed=int),
    Key("NGINX_MAX_TEMP_FILE", "256m", _nginx_size,
        "Most of one answer nginx spools to disk for a slow client (0: none, the app waits on the client)."),
    Key("HTTPS_REDIRECT", "off", _on_off,
        "on: plain HTTP is redirected to HTTPS and HTTPS answers carry HSTS (a server with real certificates).",
        typed=_is_on),
    Key("ACME_EMAIL", "", _optional_email, "E-mail Let's Encrypt writes to about your certificates (`fab certs`)."),
    Key("ACME_SERVER", "https://acme-v02.api.letsencrypt.org/directory", _url,
        "ACME directory `fab certs` uses (Let's Encrypt; its staging server for trials)."),
    Key("ACME_CA_BUNDLE", "", _optional_path,
        "Path on the server of a private ACME server's CA certificate; empty: the public CAs."),
    Key("CERT_CRON_FILE", "/etc/cron.d/onevps-certs", _abs_path,
        "Where `fab certs` installs the daily renewal job on the server."),
    Key("PRUNE_ON_DEPLOY", "on", _on_off,
        "on: every `fab deploy` ends with a prune on the server, so repeated deploys leave the disk where it was.",
        typed=_is_on),
    Key("BUILD_FREE_MB", "1024", _positive_int,
        "Free MB on the server's Docker disk a build needs (a tier build needs more on top); less: the build is refused."),
    Key("PRUNE_KEEP", "3", _positive_int, "Images of each app pruning keeps for rollback."),
    Key("PRUNE_CACHE_MB", "2000", _positive_int, "Build cache pruning trims down to (MB)."),
    Key("VPS_HOST", "", _optional_host, "The server `fab` works on (or give `fab -H host`)."),
    Key("VPS_USER", "root", _user, "SSH user on the server (must be able to use Docker)."),
    Key("VPS_PORT", "22", _port, "SSH port on the server."),
    Key("VPS_PATH", "/opt/apps", _vps_path, "Folder on the server that holds the stack's files."),
    Key("VPS_SSH_KEY", "", _optional_dir, "Private key for SSH (empty: your SSH agent and ~/.ssh defaults)."),
    Key("VPS_ENV_FILE", ".env", _text,
        "Local file uploaded as the server's .env (its settings: ports 80/443, BIND_ADDRESS 0.0.0.0, ...)."),
    Key("DOCKER_INSTALL", "docker-repo", _one_of(*get_args(DockerInstall)),
        "How `fab setup` installs Docker on a server without it: docker-repo (Docker's apt repository), "
        "distro (the distribution's packages), none (never install, only check)."),
    Key("DEPLOY_TIMEOUT", "180", _positive_int,
        "Seconds `fab deploy` waits for the new version to become healthy before it gives up."),
    Key("DEPLOY_WATCH", "30", _whole_number,
        "Seconds `fab deploy` watches the new version after traffic moved to it (its health, its 5xx share in "
        "nginx's log) and rolls back by itself if it fails; 0: no watch."),
    Key("DEPLOY_WATCH_5XX", "5", _percent,
        "Percent of 5xx answers from the new version (over at least 20 requests) above which the watch rolls back.",
        typed=float),
    Key("WAKE_TIMEOUT", "60", _wake_timeout,
        "Seconds a request for a sleeping app waits for it to wake (then 503 with Retry-After); at most 70, "
        "below nginx's 75 s read timeout.", typed=int),
    Key("REGISTRY", "", _optional_registry,
        "Swarm: registry the app images are pushed to and pulled from (empty: local images, one node only)."),
    Key("SWARM_SUBNET", "", _optional_subnet,
        "Swarm: private range the overlay networks take their /24s from, in file order (empty: Docker picks)."),
    Key("SWARM_MANAGER", "", _optional_node,
        "Swarm: the manager as [user@]host[:port] (user and port default to VPS_USER and VPS_PORT); "
        "empty: VPS_HOST. It keeps the data (Redis, ChromaDB, Ollama, nginx) and the registry."),
    Key("SWARM_WORKERS", "", _node_list,
        "Swarm: the worker servers, comma-separated, each [user@]host[:port]; the apps run there. "
        "Add one and run `fab swarm-setup` again.", typed=_node_tuple),
    Key("SWARM_ADVERTISE_ADDR", "", _optional_ip,
        "Swarm: the manager's address the workers reach it at (empty: SWARM_MANAGER's host when it is an IP)."),
    Key("SWARM_REGISTRY_PORT", "5000", _port,
        "Swarm with workers and no REGISTRY: the port of the registry onevps runs on the manager (TLS, "
        "only onevps's nodes hold a client certificate).", typed=int),
)
KEY_NAMES = frozenset(k.name for k in KEYS)
SECRET_KEYS = ("REDIS_PASSWORD", "CHROMA_TOKEN")
SECRET_SUFFIXES = ("_PASSWORD", "_TOKEN", "_SECRET", "_KEY")


def is_secret(name: str) -> bool:
    """Keys whose values are never shown: the secrets, and anything named like one."""
    return name in SECRET_KEYS or name.upper().endswith(SECRET_SUFFIXES)
