"""Settings: .env -> one frozen, validated object. Errors name the key.

Precedence, as in docker compose: built-in default < .env < environment.
Every key is declared once in KEYS (name, default, check, help); .env.example
documents the same keys and a unit test keeps the two in step.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlparse

from dotenv.parser import parse_stream

from .errors import ConfigError, register_secrets

REPO_ROOT = Path(__file__).resolve().parent.parent

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_NAMESPACE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


# ------------------------------------------------------------ value checks --
# Each check takes the raw string and returns the parsed value or raises
# ValueError with a short reason; the caller adds the key and where it came
# from.

def _port(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError("must be a port number 1-65535")
    return int(raw)


def _positive_int(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError("must be a whole number of at least 1")
    return int(raw)


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


@dataclass(frozen=True)
class Key:
    name: str
    default: str
    check: Callable[[str], object]
    help: str


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
        "off: the ML tier build fails when the installed torch is a CUDA build (several GB); on: CUDA is wanted."),
    Key("TORCH_WHEEL_DIR", "", _optional_dir,
        "Optional folder of local wheels (e.g. torch) used by the ML tier build; adds no layer."),
    Key("EXTRA_CA_DIR", "", _optional_dir,
        "Optional folder of extra CA certificates (*.crt) the base tier trusts (TLS-intercepting proxies)."),
    Key("OLLAMA_MODEL", "llama3.2:1b", _text, "Model the chatbot asks Ollama for."),
    Key("UP_TIMEOUT", "900", _positive_int,
        "Seconds `inv up` waits for every container to become healthy."),
    Key("REDIS_PASSWORD", "", _secret,
        "Password Redis requires; apps get it in REDIS_URL. Required: `inv up` and `fab` refuse without it."),
    Key("CHROMA_TOKEN", "", _secret,
        "Token ChromaDB's gate (chroma-auth) requires; apps get it in CHROMA_TOKEN. Required like REDIS_PASSWORD."),
    Key("APP_MEM_LIMIT", "256m", _memory, "Memory limit of each base app (override per app in the compose file)."),
    Key("APP_CPUS", "1.0", _cpus, "CPU limit of each app."),
    Key("ML_APP_MEM_LIMIT", "1g", _memory, "Memory limit of each ML app."),
    Key("NGINX_MEM_LIMIT", "256m", _memory, "Memory limit of nginx."),
    Key("REDIS_MEM_LIMIT", "512m", _memory, "Memory limit of Redis."),
    Key("CHROMA_MEM_LIMIT", "1g", _memory, "Memory limit of ChromaDB."),
    Key("CHROMA_AUTH_MEM_LIMIT", "64m", _memory, "Memory limit of chroma-auth, ChromaDB's token gate."),
    Key("OLLAMA_MEM_LIMIT", "8g", _memory, "Memory limit of Ollama (models need room)."),
    Key("HTTPS_REDIRECT", "off", _on_off,
        "on: plain HTTP is redirected to HTTPS and HTTPS answers carry HSTS (a server with real certificates)."),
    Key("ACME_EMAIL", "", _optional_email, "E-mail Let's Encrypt writes to about your certificates (`fab certs`)."),
    Key("ACME_SERVER", "https://acme-v02.api.letsencrypt.org/directory", _url,
        "ACME directory `fab certs` uses (Let's Encrypt; its staging server for trials)."),
    Key("ACME_CA_BUNDLE", "", _optional_path,
        "Path on the server of a private ACME server's CA certificate; empty: the public CAs."),
    Key("CERT_CRON_FILE", "/etc/cron.d/onevps-certs", _abs_path,
        "Where `fab certs` installs the daily renewal job on the server."),
    Key("PRUNE_ON_DEPLOY", "on", _on_off,
        "on: every `fab deploy` ends with a prune on the server, so repeated deploys leave the disk where it was."),
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
    Key("DOCKER_INSTALL", "docker-repo", _one_of("docker-repo", "distro", "none"),
        "How `fab setup` installs Docker on a server without it: docker-repo (Docker's apt repository), "
        "distro (the distribution's packages), none (never install, only check)."),
    Key("DEPLOY_TIMEOUT", "180", _positive_int,
        "Seconds `fab deploy` waits for the new version to become healthy before it gives up."),
    Key("REGISTRY", "", _optional_registry,
        "Swarm: registry the app images are pushed to and pulled from (empty: local images, one node only)."),
    Key("SWARM_SUBNET", "", _optional_subnet,
        "Swarm: private range the overlay networks take their /24s from, in file order (empty: Docker picks)."),
)
KEY_NAMES = frozenset(k.name for k in KEYS)
SECRET_KEYS = ("REDIS_PASSWORD", "CHROMA_TOKEN")
SECRET_SUFFIXES = ("_PASSWORD", "_TOKEN", "_SECRET", "_KEY")


def is_secret(name: str) -> bool:
    """Keys whose values are never shown: the secrets, and anything named like one."""
    return name in SECRET_KEYS or name.upper().endswith(SECRET_SUFFIXES)


def require_secrets(settings: "Settings", where: str = ".env") -> None:
    """Refuse to go on while a secret is missing or still the .env.example placeholder."""
    for key in SECRET_KEYS:
        value = settings.raw.get(key, "")
        if not value:
            raise ConfigError(f"{key} is not set in {where}", f"add {key}=<a random value>; {SECRET_HINT}")
        if value == PLACEHOLDER:
            raise ConfigError(f"{key} in {where} is still the .env.example placeholder",
                              f"replace it with a random value; {SECRET_HINT}")


def create_env_file(root: Path) -> Path | None:
    """First run: copy .env.example to .env (mode 600) with fresh random secrets.

    Does nothing when .env exists. Returns the path when it made one.
    """
    import secrets

    from .composefile import atomic_write

    target, example = root / ".env", root / ".env.example"
    if target.exists() or not example.exists():
        return None
    lines = []
    for line in _read_text(example, "restore it with `git checkout -- .env.example`").splitlines():
        key = line.split("=", 1)[0]
        if key in SECRET_KEYS:
            line = f"{key}={secrets.token_urlsafe(32)}"
        lines.append(line)
    atomic_write(target, "\n".join(lines) + "\n", mode=0o600)  # private from its first byte
    return target


@dataclass(frozen=True)
class Settings:
    """Validated settings. Build with `load()`; never mutated."""

    root: Path
    project_name: str
    domain: str
    bind_address: str
    http_port: int
    https_port: int
    network_prefix: str
    image_namespace: str
    torch_index_url: str
    torch_wheel_dir: Path | None
    extra_ca_dir: Path | None
    ollama_model: str
    up_timeout: int
    vps_host: str = ""
    vps_user: str = "root"
    vps_port: int = 22
    vps_path: str = "/opt/apps"
    vps_ssh_key: Path | None = None
    vps_env_file: Path | None = None
    deploy_timeout: int = 180
    registry: str = ""
    swarm_subnet: str = ""
    env_file: Path | None = None
    raw: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def compose_file(self) -> Path:
        return self.root / "compose" / "docker-compose.yml"

    @property
    def subnet(self) -> str:
        return f"{self.network_prefix}.0/24"

    def address(self, host: int) -> str:
        return f"{self.network_prefix}.{host}"

    def app_url(self, app: str) -> str:
        port = "" if self.http_port == 80 else f":{self.http_port}"
        return f"http://{app}.{self.domain}{port}/"

    def compose_env(self) -> dict[str, str]:
        """The variables compose interpolates, as validated here.

        A missing secret travels as the placeholder, so builds and checks work;
        the tasks that start containers refuse it first (require_secrets).
        """
        env = {k.name: self.raw[k.name] for k in KEYS if k.name in self.raw}
        for key in SECRET_KEYS:
            env[key] = env.get(key) or PLACEHOLDER
        return env


def _present(path: Path) -> bool:
    """Whether the file is there; a folder on its way that may not be entered counts as
    there, so that reading it fails with one line naming the file (not a traceback)."""
    try:
        return path.exists()
    except OSError:
        return True


def _read_text(path: Path, folder_hint: str) -> str:
    """A settings file's text; any failure to read it (a folder, no permission,
    not UTF-8) is one line naming the file. A UTF-8 BOM is skipped, as docker compose does."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a file", folder_hint) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})", "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", "check the file's permissions") from None


def _read_env_file(path: Path) -> dict[str, tuple[str, int]]:
    """Parse a .env file; a line that does not parse is an error naming it."""
    text = _read_text(path, "make it a file of KEY=value lines, see .env.example")
    values: dict[str, tuple[str, int]] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            shown = binding.original.string.strip()[:60]
            name = shown.split("=", 1)[0].removeprefix("export ").strip()
            if is_secret(name):  # the value of a secret is never shown, even a broken one
                shown = f"{name}=<value hidden>"
            raise ConfigError(
                f"{path.name} line {line} cannot be parsed: {shown!r}",
                "write KEY=value, quote values with spaces, see .env.example",
            )
        if binding.key is None:
            continue
        values[binding.key] = (binding.value or "", line)
    return values


def _resolve(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _file(root: Path, name: str, value: str) -> Path | None:
    if not value:
        return None
    path = _resolve(root, value)
    if not path.is_file():
        raise ConfigError(f"{name}={value!r} is not a file", f"point {name} at your SSH private key or leave it empty")
    return path


def load(root: Path | None = None, environ: Mapping[str, str] | None = None,
         env_file: Path | None = None, warn: Callable[[str], None] | None = None) -> Settings:
    """Read defaults, then .env (if present), then the environment; validate."""
    root = Path(root) if root else REPO_ROOT
    environ = os.environ if environ is None else environ
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    env_file = env_file or environ.get("ONEVPS_ENV_FILE") or None
    env_path = Path(env_file) if env_file else root / ".env"
    from_file: dict[str, tuple[str, int]] = {}
    env_present = _present(env_path)
    if env_present:
        from_file = _read_env_file(env_path)
        for key, (_, line) in from_file.items():
            if key not in KEY_NAMES:
                warn(f"warning: {env_path.name} line {line}: unknown key {key} (ignored; see .env.example)")

    # Secret values are masked in every message from here on (errors.redact), also
    # those of keys onevps does not know (an app's *_TOKEN in the same file).
    register_secrets(v for k, (v, _) in from_file.items() if is_secret(k))
    register_secrets(environ[k] for k in KEY_NAMES if is_secret(k) and k in environ)
    raw: dict[str, str] = {}
    parsed: dict[str, object] = {}
    for key in KEYS:
        if key.name in environ:
            value, where = environ[key.name], "environment variable"
        elif key.name in from_file:
            value, line = from_file[key.name]
            where = f"{env_path.name} line {line}"
        else:
            value, where = key.default, "default"
        if value == "" and key.default != "":
            value, where = key.default, "default"
        try:
            parsed[key.name] = key.check(value)
        except ValueError as exc:
            shown = key.name if is_secret(key.name) else f"{key.name}={value!r}"  # a secret's value is never shown
            raise ConfigError(f"{shown} ({where}) {exc}", f"fix {key.name}; see .env.example") from None
        raw[key.name] = str(parsed[key.name])

    app_net = ipaddress.IPv4Network(f"{parsed['NETWORK_PREFIX']}.0/24")
    if ipaddress.IPv4Network(str(parsed["CHROMA_SUBNET"])).overlaps(app_net):
        raise ConfigError(f"CHROMA_SUBNET={parsed['CHROMA_SUBNET']} overlaps app-network {app_net}",
                          "give CHROMA_SUBNET a range outside NETWORK_PREFIX's /24")
    if parsed["HTTP_PORT"] == parsed["HTTPS_PORT"]:
        raise ConfigError(f"HTTP_PORT and HTTPS_PORT are both {parsed['HTTP_PORT']}",
                          "give HTTPS_PORT another port")

    def folder(name: str) -> Path | None:
        value = str(parsed[name])
        if not value:
            return None
        path = Path(value)
        path = path if path.is_absolute() else root / path
        if not path.is_dir():
            raise ConfigError(f"{name}={value!r} is not a folder", f"create it or leave {name} empty")
        return path

    return Settings(
        root=root,
        project_name=str(parsed["COMPOSE_PROJECT_NAME"]),
        domain=str(parsed["DOMAIN"]),
        bind_address=str(parsed["BIND_ADDRESS"]),
        http_port=int(parsed["HTTP_PORT"]),  # type: ignore[arg-type]
        https_port=int(parsed["HTTPS_PORT"]),  # type: ignore[arg-type]
        network_prefix=str(parsed["NETWORK_PREFIX"]),
        image_namespace=str(parsed["IMAGE_NAMESPACE"]),
        torch_index_url=str(parsed["TORCH_INDEX_URL"]),
        torch_wheel_dir=folder("TORCH_WHEEL_DIR"),
        extra_ca_dir=folder("EXTRA_CA_DIR"),
        ollama_model=str(parsed["OLLAMA_MODEL"]),
        up_timeout=int(parsed["UP_TIMEOUT"]),  # type: ignore[arg-type]
        vps_host=str(parsed["VPS_HOST"]),
        vps_user=str(parsed["VPS_USER"]),
        vps_port=int(parsed["VPS_PORT"]),  # type: ignore[arg-type]
        vps_path=str(parsed["VPS_PATH"]),
        vps_ssh_key=_file(root, "VPS_SSH_KEY", str(parsed["VPS_SSH_KEY"])),
        vps_env_file=_resolve(root, str(parsed["VPS_ENV_FILE"])),
        deploy_timeout=int(parsed["DEPLOY_TIMEOUT"]),  # type: ignore[arg-type]
        registry=str(parsed["REGISTRY"]),
        swarm_subnet=str(parsed["SWARM_SUBNET"]),
        env_file=env_path if env_present else None,
        raw=raw,
    )
