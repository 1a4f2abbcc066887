"""Settings: .env -> one frozen, validated, typed object. Errors name the key.

Precedence, as in docker compose: built-in default < .env < environment.
The keys, their checks and types live in settings_keys (KEYS); every key is
parsed once here into a typed field of Settings.
"""

from __future__ import annotations

import io
import re
import ipaddress
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from dotenv.parser import parse_stream

from .composefile import atomic_write
from .errors import ConfigError, register_secrets
from .project import Project
from .settings_keys import (KEY_NAMES, KEYS, PLACEHOLDER, SECRET_HINT, SECRET_KEYS, DockerInstall, Key,
                            is_secret)

__all__ = ["KEYS", "KEY_NAMES", "Key", "PLACEHOLDER", "Project", "REPO", "REPO_ROOT", "SECRET_HINT", "SECRET_KEYS",
           "ConfigError", "Settings", "create_env_file", "is_secret", "load", "require_secrets"]

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO = Project(REPO_ROOT)  # this checkout


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated settings, one typed field per key of KEYS. Build with `load()`; never mutated.

    `raw` holds each key's normal form as text (what compose interpolates and
    `inv settings` shows); nothing needs to parse it again. Where the project's
    files are is not a setting: that is a Project (onevps.project), passed apart.
    """

    env_file: Path | None = None  # the settings file compose reads (--env-file), if any
    # The stack on this machine or the server.
    project_name: str
    domain: str
    bind_address: str
    http_port: int
    https_port: int
    https_redirect: bool
    network_prefix: str
    chroma_subnet: str
    up_timeout: int
    ollama_model: str
    redis_password: str = field(repr=False)  # "" or the placeholder: see require_secrets
    chroma_token: str = field(repr=False)
    # Images and their tiers.
    image_namespace: str
    torch_index_url: str
    torch_cuda: bool
    torch_wheel_dir: Path | None
    extra_ca_dir: Path | None
    # Limits: memory in bytes, CPUs as a number.
    app_mem_limit: int
    app_cpus: float
    ml_app_mem_limit: int
    nginx_mem_limit: int
    redis_mem_limit: int
    chroma_mem_limit: int
    chroma_auth_mem_limit: int
    ollama_mem_limit: int
    waker_mem_limit: int
    docker_proxy_mem_limit: int
    # What one client may do at nginx (nginx/templates/00-limits.conf.template).
    nginx_max_body: str
    nginx_conn_per_client: int
    nginx_rate_per_client: int
    nginx_burst_per_client: int
    nginx_client_timeout: int
    nginx_max_temp_file: str
    # Process limits (pids_limit): processes and threads of one container.
    app_pids_limit: int
    ml_app_pids_limit: int
    nginx_pids_limit: int
    redis_pids_limit: int
    chroma_pids_limit: int
    chroma_auth_pids_limit: int
    ollama_pids_limit: int
    waker_pids_limit: int
    docker_proxy_pids_limit: int
    certbot_pids_limit: int
    # Certificates (paths on the server).
    acme_email: str
    acme_server: str
    acme_ca_bundle: str
    cert_cron_file: str
    # The server's disk.
    prune_on_deploy: bool
    build_free_mb: int
    prune_keep: int
    prune_cache_mb: int
    # The server and how to reach it.
    vps_host: str
    vps_user: str
    vps_port: int
    vps_path: str
    vps_ssh_key: Path | None
    vps_env_file: Path
    docker_install: DockerInstall
    deploy_timeout: int
    deploy_watch: int  # seconds; 0: no watch
    deploy_watch_5xx: float  # percent, 0-100
    wake_timeout: int  # seconds a request for a sleeping app waits for it
    # Swarm.
    registry: str
    swarm_subnet: str
    swarm_manager: str  # [user@]host[:port] or "" (VPS_HOST)
    swarm_workers: tuple[str, ...]
    swarm_advertise_addr: str
    swarm_registry_port: int
    raw: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

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


def require_secrets(settings: Settings, where: str = ".env") -> None:
    """Refuse to go on while a secret is missing or still the .env.example placeholder."""
    for key in SECRET_KEYS:
        value = getattr(settings, key.lower())
        if not value:
            raise ConfigError(f"{key} is not set in {where}", f"add {key}=<a random value>; {SECRET_HINT}")
        if value == PLACEHOLDER:
            raise ConfigError(f"{key} in {where} is still the .env.example placeholder",
                              f"replace it with a random value; {SECRET_HINT}")


def create_env_file(root: Path) -> Path | None:
    """First run: copy .env.example to .env (mode 600) with fresh random secrets.

    Does nothing when .env exists. Returns the path when it made one.
    """
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


# ------------------------------------------------------------- .env files --

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


BARE = "\0bare line "  # no key can start so: a line of the .env without "="


def _read_env_file(path: Path) -> dict[str, tuple[str, int]]:
    """Parse a .env file; a line that does not parse is an error naming it."""
    text = _read_text(path, "make it a file of KEY=value lines, see .env.example")
    values: dict[str, tuple[str, int]] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            shown = binding.original.string.strip()[:60]
            # The key is what comes before "=", ":" or a space (`KEY: value`, `KEY value` are
            # mistakes too): the value of a secret is never shown, not even a broken one.
            name = re.split(r"[=:\s]", shown.removeprefix("export ").strip(), maxsplit=1)[0]
            if is_secret(name):
                shown = f"{name}=<value hidden>"
            raise ConfigError(
                f"{path.name} line {line} cannot be parsed: {shown!r}",
                "write KEY=value, quote values with spaces, see .env.example",
            )
        if binding.key is None:
            continue
        if binding.value and "$" in binding.value and not _single_quoted(binding.original.string):
            # compose reads $NAME / ${NAME} in an unquoted or "double-quoted" value as a variable,
            # onevps reads it as written: the two would disagree (a password would differ).
            raise ConfigError(
                f"{path.name} line {line}: the value of {binding.key} holds a $ outside single quotes, "
                "which compose reads as a variable",
                f"put the value in single quotes, {binding.key}='...': compose and onevps then both "
                "take every character as written ($, `, ;, #, \\, spaces and \" too; a ' as \\')",
            )
        if _single_quoted(binding.original.string) and "\\\\" in binding.original.string:
            # In single quotes python-dotenv reads \\ as one backslash, compose as two.
            raise ConfigError(
                f"{path.name} line {line}: the value of {binding.key} holds \\\\ in single quotes, which compose "
                "reads as two backslashes and onevps as one",
                "write the value without quotes (when it holds no $, no ' #' and no space at either end) "
                "or without the double backslash",
            )
        if binding.value is None and binding.key not in KEY_NAMES:
            # A line with no "=" (a value pasted alone?): its text may be a secret, never shown.
            values[f"{BARE}{line}"] = ("", line)
            continue
        values[binding.key] = (binding.value or "", line)
    return values


def _single_quoted(original: str) -> bool:
    """Whether the binding's value, as written, starts with a single quote (taken literally)."""
    return original.partition("=")[2].lstrip(" \t").startswith("'")


def env_file_values(path: Path) -> dict[str, str]:
    """Every KEY=value of a settings file, as compose reads it (also keys onevps does not know,
    such as an app's own token); the same checks as load()."""
    return {k: v for k, (v, _) in _read_env_file(path).items() if not k.startswith(BARE)}


def literal_env_text(values: Mapping[str, str | None], owner: str) -> str:
    """KEY=value lines taken literally by their reader (`docker run --env-file`, or a shell's
    `read -r` + `export "$line"`): no quoting, no expansion, so no value is ever parsed by a
    shell. A key alone (value None) is taken from the reader's environment. A value that holds
    a line break cannot be written so; the error names the key, never the value."""
    lines = []
    for key, value in values.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"{owner}: {key!r} is not a variable name", "use letters, digits and _ only")
        if value is None:
            lines.append(key)
        elif "\n" in value or "\r" in value:
            raise ConfigError(f"the environment variable {key} of {owner} holds a line break; it cannot be "
                              "passed on", f"keep {key} on one line in the compose file or the settings file")
        else:
            lines.append(f"{key}={value}")
    return "".join(line + "\n" for line in lines)


def _file_values(env_path: Path, warn: Callable[[str], None]) -> dict[str, tuple[str, int]]:
    """The .env file's values with their line numbers; unknown keys are warned about."""
    from_file = _read_env_file(env_path)
    for key, (_, line) in from_file.items():
        if key.startswith(BARE):
            warn(f"warning: {env_path.name} line {line} is not KEY=value (ignored; its text is not shown)")
        elif key not in KEY_NAMES:
            warn(f"warning: {env_path.name} line {line}: unknown key {key} (ignored; see .env.example)")
    return {k: v for k, v in from_file.items() if not k.startswith(BARE)}


# --------------------------------------------------------------- checking --

def _source(key: Key, environ: Mapping[str, str], from_file: Mapping[str, tuple[str, int]],
            env_path: Path) -> tuple[str, str]:
    """A key's value and where it came from: environment, .env line, or default (also for an empty value)."""
    if key.name in environ:
        value, where = environ[key.name], "environment variable"
    elif key.name in from_file:
        value, line = from_file[key.name]
        where = f"{env_path.name} line {line}"
    else:
        value, where = key.default, "default"
    if value == "" and key.default != "":
        value, where = key.default, "default"
    return value, where


def _check(key: Key, value: str, where: str) -> object:
    """The key's normal form; a bad value is one line naming the key and where it came from."""
    try:
        return key.check(value)
    except ValueError as exc:
        shown = key.name if is_secret(key.name) else f"{key.name}={value!r}"  # a secret's value is never shown
        raise ConfigError(f"{shown} ({where}) {exc}", f"fix {key.name}; see .env.example") from None


def _check_together(parsed: Mapping[str, object]) -> None:
    """Checks across keys: the two networks apart, the two ports different."""
    app_net = ipaddress.IPv4Network(f"{parsed['NETWORK_PREFIX']}.0/24")
    if ipaddress.IPv4Network(str(parsed["CHROMA_SUBNET"])).overlaps(app_net):
        raise ConfigError(f"CHROMA_SUBNET={parsed['CHROMA_SUBNET']} overlaps app-network {app_net}",
                          "give CHROMA_SUBNET a range outside NETWORK_PREFIX's /24")
    if parsed["HTTP_PORT"] == parsed["HTTPS_PORT"]:
        raise ConfigError(f"HTTP_PORT and HTTPS_PORT are both {parsed['HTTP_PORT']}",
                          "give HTTPS_PORT another port")


# ----------------------------------------------------- paths on this machine --

def _resolve(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _folder(root: Path, name: str, value: str) -> Path | None:
    if not value:
        return None
    path = Path(value)
    path = path if path.is_absolute() else root / path
    if not path.is_dir():
        raise ConfigError(f"{name}={value!r} is not a folder", f"create it or leave {name} empty")
    return path


def _file(root: Path, name: str, value: str) -> Path | None:
    if not value:
        return None
    path = _resolve(root, value)
    if not path.is_file():
        raise ConfigError(f"{name}={value!r} is not a file", f"point {name} at your SSH private key or leave it empty")
    return path


def _local_paths(root: Path, parsed: Mapping[str, object]) -> dict[str, Path | None]:
    """The keys naming folders and files on this machine, as Paths against the project root."""
    return {
        "torch_wheel_dir": _folder(root, "TORCH_WHEEL_DIR", str(parsed["TORCH_WHEEL_DIR"])),
        "extra_ca_dir": _folder(root, "EXTRA_CA_DIR", str(parsed["EXTRA_CA_DIR"])),
        "vps_ssh_key": _file(root, "VPS_SSH_KEY", str(parsed["VPS_SSH_KEY"])),
        "vps_env_file": _resolve(root, str(parsed["VPS_ENV_FILE"])),
    }


def load(project: Project | None = None, environ: Mapping[str, str] | None = None,
         env_file: Path | None = None, warn: Callable[[str], None] | None = None) -> Settings:
    """Read defaults, then the project's .env (if present), then the environment; validate.
    Relative paths in the settings resolve against the project's root (default: this checkout)."""
    project = project or REPO
    root = project.root
    environ = os.environ if environ is None else environ
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    env_file = env_file or environ.get("ONEVPS_ENV_FILE") or None
    env_path = Path(env_file) if env_file else project.env_file
    env_present = _present(env_path)
    from_file = _file_values(env_path, warn) if env_present else {}

    # Secret values are masked in every message from here on (errors.redact), also
    # those of keys onevps does not know (an app's *_TOKEN in the same file).
    register_secrets(v for k, (v, _) in from_file.items() if is_secret(k))
    register_secrets(environ[k] for k in KEY_NAMES if is_secret(k) and k in environ)

    parsed = {key.name: _check(key, *_source(key, environ, from_file, env_path)) for key in KEYS}
    _check_together(parsed)
    fields = {key.field_name: key.typed(parsed[key.name]) for key in KEYS}
    fields.update(_local_paths(root, parsed))
    return Settings(env_file=env_path if env_present else None,
                    raw={name: str(value) for name, value in parsed.items()}, **fields)
