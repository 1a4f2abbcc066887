"""Each app sees only its own data in the shared services (issue 24, item 8).

Pure and standard library only: nothing here reads files, runs commands or
knows about Docker. The callers (stack.up, deploy, setup) write what this
module renders and load it into the running services.

Nothing new is stored. Every per-app secret is derived from a master secret
of .env with HMAC-SHA256, one domain per service:

    redis password of app A  = HMAC(REDIS_PASSWORD, "onevps-isolation/v1/redis/A")
    chroma token of app A    = HMAC(CHROMA_TOKEN,   "onevps-isolation/v1/chroma/A")

(64 lowercase hex characters each). The `default` Redis user and the plain
CHROMA_TOKEN stay onevps's own (admin) credentials; no app gets them.

Redis: one ACL user per app, named like the app, allowed only keys and
channels under "A:" and no command that is admin, dangerous or tells the
names of keys it cannot otherwise touch (KEYS, SCAN, RANDOMKEY, ...). The ACL
file holds SHA-256 hashes of the passwords, never a password.

ChromaDB: chroma-auth (nginx) maps a presented token to its app and lets the
app reach only its own tenant ("app-A", database "default_database"), plus a
few endpoints that reveal nothing (heartbeat, version, ...). nginx cannot
hash, so that file holds the tokens themselves: it is a secret (mode 644
inside a 700 folder, see SECRETS_DIR).

Existing data ("kept readable", see Legacy): an app may keep Redis keys
under old literal prefixes (e.g. api-gw's "gw:") and one app may keep
Chroma's default_tenant/default_database as its own database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

VERSION = "v1"  # part of every derivation: a new scheme gets new secrets
SERVICES = ("redis", "chroma")

# An app name is a DNS label (registry.name_problem says more); here it also
# becomes a Redis user, a glob pattern, an nginx map value and a tenant name,
# so only these characters are ever accepted.
_APP = re.compile(r"\A[a-z]([a-z0-9-]{0,61}[a-z0-9])?\Z")
# Redis's own user; every app name is checked against it.
RESERVED_USERS = frozenset({"default"})
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
MIN_MASTER = 16  # settings_keys._secret's minimum; the .env.example placeholder is shorter

# ----------------------------------------------------------------- files --
# Where the callers put the rendered files, relative to the project root here
# and VPS_PATH on the server. SECRETS_DIR is mode 700 (host users cannot enter
# it); the two folders mounted into containers are 755 and their files 644,
# because the reading process there (redis, nginx's root without
# DAC_OVERRIDE) is not the file's owner. Bind-mount the FOLDERS, not the
# files: an atomic replace (rename) would leave a mounted file's old inode.
SECRETS_DIR = ".onevps/secrets"
REDIS_DIR = f"{SECRETS_DIR}/redis"  # -> redis:/etc/onevps/redis (ro)
REDIS_ACL_FILE = f"{REDIS_DIR}/users.acl"
REDIS_ACL_IN_CONTAINER = "/etc/onevps/redis/users.acl"
CHROMA_DIR = f"{SECRETS_DIR}/chroma-auth"  # -> chroma-auth:/etc/nginx/onevps (ro)
CHROMA_MAP_FILE = f"{CHROMA_DIR}/apps.conf"
CHROMA_MAP_IN_CONTAINER = "/etc/nginx/onevps/apps.conf"
APP_ENV_DIR = f"{SECRETS_DIR}/apps"  # read by the compose client only: 600
PRIVATE_DIRS = {SECRETS_DIR: 0o700, APP_ENV_DIR: 0o700, REDIS_DIR: 0o755, CHROMA_DIR: 0o755}

# -------------------------------------------------------------- services --
REDIS_PORT = 6379
REDIS_HOST = 4  # registry.SHARED["redis"]
# What an app's Redis user may not do, after +@all. @admin and @dangerous
# hold CONFIG, FLUSHALL, FLUSHDB, KEYS, INFO, MONITOR, CLIENT LIST/KILL,
# SLOWLOG, DEBUG, ACL, SORT (BY/GET read any key), MIGRATE, SWAPDB ...; the
# rest ignore key patterns and would leak other apps' key or channel names,
# counts, or let one app remove or stop what another runs.
REDIS_DENIED = (
    "-@admin", "-@dangerous",
    "-keys", "-scan", "-randomkey", "-dbsize",  # key names and counts of the whole keyspace
    "-pubsub",  # PUBSUB CHANNELS/NUMSUB/SHARDCHANNELS: every app's channel names
    "-function",  # the function libraries are global: LIST shows, LOAD/DELETE/FLUSH change others'
    "-script|flush", "-script|kill",  # the script cache and running scripts are global
)
CHROMA_DATABASE = "default_database"
CHROMA_TENANT_PREFIX = "app-"  # Chroma refuses very short tenant names; "a" -> "app-a"
CHROMA_LEGACY_TENANT = "default_tenant"  # where every app's collections were before
CHROMA_PORT = 8000
CHROMA_HOST = 3  # registry.SHARED["chroma-auth"]
# Endpoints any app's token may call: they tell nothing about anyone's data.
CHROMA_OPEN = ("heartbeat", "version", "healthcheck", "pre-flight-checks", "auth/identity")
# One path segment of a request as sent (nginx's $request_uri, undecoded): no
# "%" (so nothing decodes into "/" or ".."), no empty segment (no "//"), and no
# segment that starts with "." (no "." or ".."): what is checked is what
# ChromaDB gets, since chroma-auth passes the request URI on unchanged.
_SEGMENT = r"/[A-Za-z0-9_][A-Za-z0-9_.-]*"
_QUERY = r"(?:\?.*)?"

_LEGACY_PREFIX = re.compile(r"\A[A-Za-z0-9_.:-]{1,64}\Z")  # literal: no glob characters


class IsolationError(ValueError):
    """A name, secret or legacy grant onevps cannot isolate; the message never holds a secret."""


# ------------------------------------------------------------ validation --

def check_app(name: str) -> str:
    """The app name, or IsolationError: a DNS label that is not Redis's own user."""
    if not isinstance(name, str) or not _APP.match(name):
        raise IsolationError(f"app name {name!r} is not a DNS label (a-z, 0-9 and '-', starting with a letter)")
    if name in RESERVED_USERS:
        raise IsolationError(f"app name {name!r} is a reserved Redis user")
    return name


def check_apps(names: Iterable[str]) -> list[str]:
    """The app names, each checked, in a stable order (sorted), none twice."""
    names = list(names)
    for name in names:
        check_app(name)
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise IsolationError(f"app name(s) listed twice: {', '.join(twice)}")
    return sorted(names)


def _check_master(master: str, what: str) -> bytes:
    if not isinstance(master, str) or len(master) < MIN_MASTER or master != master.strip() \
            or any(c in master for c in "\r\n\0"):
        # Never the value itself: it is a secret.
        raise IsolationError(f"{what} is missing or not a usable secret (at least {MIN_MASTER} characters, one line)")
    return master.encode("utf-8")


# ------------------------------------------------------------ derivation --

def derive(master: str, service: str, app: str) -> str:
    """The app's secret for the service: HMAC-SHA256(master, "onevps-isolation/v1/<service>/<app>"), hex.

    Deterministic (nothing is stored), one-way (an app's secret tells nothing of
    the master or of another app's) and separated per service (the Redis
    password of an app is no Chroma token, even were the two masters equal)."""
    if service not in SERVICES:
        raise IsolationError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    key = _check_master(master, f"the master secret of {service}")
    message = f"onevps-isolation/{VERSION}/{service}/{check_app(app)}".encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def redis_password(redis_master: str, app: str) -> str:
    return derive(redis_master, "redis", app)


def chroma_token(chroma_master: str, app: str) -> str:
    return derive(chroma_master, "chroma", app)


def secrets_of(apps: Iterable[str], redis_master: str, chroma_master: str) -> list[str]:
    """Every derived secret, for errors.register_secrets (masked in output, refused on command lines)."""
    names = check_apps(apps)
    return [redis_password(redis_master, a) for a in names] + [chroma_token(chroma_master, a) for a in names]


def acl_hash(password: str) -> str:
    """Redis's ACL form of a password: '#' + its SHA-256, hex."""
    return "#" + hashlib.sha256(password.encode("utf-8")).hexdigest()


# ---------------------------------------------------------- legacy grants --

@dataclass(frozen=True)
class Legacy:
    """Existing data an app keeps reading where it is ("kept readable").

    redis_prefixes: app -> literal key prefixes it had before (api-gw: ("gw:",)).
    chroma_owner: the one app whose database is Chroma's default_tenant/default_database."""

    redis_prefixes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    chroma_owner: str | None = None

    def check(self, apps: Iterable[str]) -> None:
        """Every grant names a known app and touches no other app's namespace or grant."""
        names = set(check_apps(apps))
        owner: dict[str, str] = {}
        for app, prefixes in self.redis_prefixes.items():
            if app not in names:
                raise IsolationError(f"legacy Redis prefixes for {app!r}, which is not an app")
            for prefix in prefixes:
                if not _LEGACY_PREFIX.match(prefix):
                    raise IsolationError(f"legacy Redis prefix {prefix!r} of {app}: use 1-64 of A-Z a-z 0-9 _ . : - "
                                         "(no glob characters)")
                for other in names - {app}:
                    space = f"{other}:"
                    if prefix.startswith(space) or space.startswith(prefix):
                        raise IsolationError(f"legacy Redis prefix {prefix!r} of {app} overlaps app {other}'s keys "
                                             f"({space}*)")
                for seen, holder in owner.items():
                    if holder != app and (prefix.startswith(seen) or seen.startswith(prefix)):
                        raise IsolationError(f"legacy Redis prefix {prefix!r} of {app} overlaps {seen!r} of {holder}")
                owner[prefix] = app
        if self.chroma_owner is not None and self.chroma_owner not in names:
            raise IsolationError(f"the legacy Chroma database is given to {self.chroma_owner!r}, which is not an app")


NO_LEGACY = Legacy()


# ------------------------------------------------------------------ redis --

def redis_key_prefix(app: str) -> str:
    return f"{check_app(app)}:"


def redis_user_rules(app: str, password: str, legacy_prefixes: Iterable[str] = ()) -> str:
    """The ACL rules of the app's user (after `user <app>`): a fresh user, on, its password's
    hash, its own keys and channels (and legacy key prefixes), every command but REDIS_DENIED."""
    prefix = redis_key_prefix(app)
    if not _HEX64.match(password):
        raise IsolationError(f"the Redis password of {app} is not a derived one (64 hex characters)")
    keys = [f"~{prefix}*"] + [f"~{p}*" for p in legacy_prefixes]
    return " ".join(["reset", "on", acl_hash(password), *keys, "resetchannels", f"&{prefix}*", "+@all",
                     *REDIS_DENIED])


def render_redis_acl(apps: Iterable[str], redis_master: str, legacy: Legacy = NO_LEGACY) -> str:
    """The Redis ACL file (aclfile): `default` (onevps, with REDIS_PASSWORD) and one user per app.

    Hashed passwords only. No comments: Redis 7 reads every line of an ACL file as a user."""
    names = check_apps(apps)
    legacy.check(names)
    _check_master(redis_master, "REDIS_PASSWORD")
    lines = [f"user default on {acl_hash(redis_master)} ~* &* +@all"]
    for app in names:
        rules = redis_user_rules(app, redis_password(redis_master, app), legacy.redis_prefixes.get(app, ()))
        lines.append(f"user {app} {rules}")
    return "".join(line + "\n" for line in lines)


def redis_url(app: str, redis_master: str, network_prefix: str, db: int = 0) -> str:
    """The app's REDIS_URL: its own user and password at redis's static address."""
    if not re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}", network_prefix):
        raise IsolationError(f"network prefix {network_prefix!r} is not three octets such as 172.20.0")
    return f"redis://{check_app(app)}:{redis_password(redis_master, app)}@{network_prefix}.{REDIS_HOST}:{REDIS_PORT}/{db}"


def redis_acl_load_argv() -> list[str]:
    """Run in the redis container (`compose exec -T redis ...`): re-read the ACL file, all or nothing.
    redis-cli authenticates as `default` from REDISCLI_AUTH in the container's environment."""
    return ["redis-cli", "ACL", "LOAD"]


# ----------------------------------------------------------------- chroma --

def chroma_tenant(app: str) -> str:
    return CHROMA_TENANT_PREFIX + check_app(app)


def chroma_place(app: str, legacy: Legacy = NO_LEGACY) -> tuple[str, str]:
    """(tenant, database) the app works in: its own tenant, or the legacy default one."""
    if legacy.chroma_owner == app:
        return CHROMA_LEGACY_TENANT, CHROMA_DATABASE
    return chroma_tenant(app), CHROMA_DATABASE


def chroma_path_regex(app: str, legacy: Legacy = NO_LEGACY) -> str:
    """The request URIs (as sent: $request_uri) the app's token may use, as a PCRE for nginx."""
    tenant, database = chroma_place(app, legacy)
    if legacy.chroma_owner == app:  # only its database in the shared tenant, and the tenant itself (read)
        base = re.escape(f"/api/v2/tenants/{tenant}")
        return (f"^{base}(?:/databases/{re.escape(database)}(?:{_SEGMENT})*)?/?{_QUERY}$")
    return f"^{re.escape(f'/api/v2/tenants/{tenant}')}(?:{_SEGMENT})*/?{_QUERY}$"


def chroma_open_regex() -> str:
    return f"^/api/v2/(?:{'|'.join(re.escape(p) for p in CHROMA_OPEN)})/?{_QUERY}$"


def render_chroma_map(apps: Iterable[str], chroma_master: str, legacy: Legacy = NO_LEGACY) -> str:
    """chroma-auth's per-app file (http level): token -> app, then app + request URI -> allowed.

    Defines $chroma_app ("" for an unknown token) and $chroma_app_allowed (1 or 0) from
    $chroma_presented (the template's token of either header). The token map is an exact
    match; nginx lowercases map keys and input, harmless for lowercase hex tokens. The master
    CHROMA_TOKEN is not here: the template compares it case-sensitively, as before."""
    names = check_apps(apps)
    legacy.check(names)
    _check_master(chroma_master, "CHROMA_TOKEN")
    out = ["# GENERATED by onevps (onevps/isolation.py) from the app registry and CHROMA_TOKEN.",
           "# It holds every app's token: never commit, copy or edit it; it is rewritten on each up/deploy.",
           "",
           "map $chroma_presented $chroma_app {",
           '    default "";']
    for app in names:
        token = chroma_token(chroma_master, app)
        assert _HEX64.match(token)
        out.append(f'    "{token}" "{app}";')
    out += ["}", "",
            'map "$chroma_app $request_uri" $chroma_app_allowed {',
            "    default 0;",
            f'    "~^[a-z][a-z0-9-]* {chroma_open_regex()[1:]}" 1;']
    for app in names:
        out.append(f'    "~^{app} {chroma_path_regex(app, legacy)[1:]}" 1;')
    out += ["}", ""]
    text = "\n".join(out)
    if "\\\\" in text or '\\"' in text:  # nginx would unescape these inside quotes
        raise IsolationError("internal error: the Chroma map would hold an escape nginx reads differently")
    return text


# Run in the chroma-auth container (`compose exec -T chroma-auth sh -c SCRIPT sh TENANT...`):
# each tenant and its database are made unless there. The master token goes from the
# container's environment through printf (a shell builtin) into curl's stdin (-H @-):
# never into an argv.
CHROMA_PROVISION_SCRIPT = r"""
set -eu
base=http://127.0.0.1:8000/api/v2
call() { printf 'X-Chroma-Token: %s\n' "$CHROMA_TOKEN" | curl -fsS -o /dev/null -H @- "$@"; }
for t in "$@"; do
    call "$base/tenants/$t" 2>/dev/null \
        || call -H 'Content-Type: application/json' -d "{\"name\":\"$t\"}" "$base/tenants"
    call "$base/tenants/$t/databases/DATABASE" 2>/dev/null \
        || call -H 'Content-Type: application/json' -d '{"name":"DATABASE"}' "$base/tenants/$t/databases"
done
echo "chroma tenants ready: $*"
""".replace("DATABASE", CHROMA_DATABASE)


def chroma_provision_argv(apps: Iterable[str], legacy: Legacy = NO_LEGACY) -> list[str]:
    """argv making every app's own tenant and database (the legacy owner's exist already)."""
    names = check_apps(apps)
    tenants = [chroma_tenant(a) for a in names if legacy.chroma_owner != a]
    return ["sh", "-c", CHROMA_PROVISION_SCRIPT, "sh", *tenants]


# ------------------------------------------------------- the app's own env --

_ENV_VALUE = re.compile(r"\A[A-Za-z0-9_.:/@-]*\Z")  # nothing compose's env_file parser would read as syntax


def app_env(app: str, redis_master: str, chroma_master: str, network_prefix: str,
            legacy: Legacy = NO_LEGACY) -> dict[str, str]:
    """The variables only this app gets (compose `env_file:` of its entry)."""
    tenant, database = chroma_place(app, legacy)
    return {
        "REDIS_URL": redis_url(app, redis_master, network_prefix),
        "REDIS_KEY_PREFIX": redis_key_prefix(app),
        "CHROMA_TOKEN": chroma_token(chroma_master, app),
        "CHROMA_TENANT": tenant,
        "CHROMA_DATABASE": database,
    }


def render_app_env(values: Mapping[str, str]) -> str:
    """KEY=value lines, read the same by compose's env_file and `docker run --env-file`."""
    lines = []
    for key, value in values.items():
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key) or not _ENV_VALUE.match(value):
            raise IsolationError(f"the app variable {key} cannot be written to an env file as it is")
        lines.append(f"{key}={value}\n")
    return "".join(lines)


def app_env_file(app: str) -> str:
    return f"{APP_ENV_DIR}/{check_app(app)}.env"


def compose_env_file(app: str) -> str:
    """The path an app's compose entry names in `env_file:` (relative to compose/)."""
    return f"../{app_env_file(app)}"


# -------------------------------------------------------------- all files --

@dataclass(frozen=True)
class Rendered:
    text: str
    mode: int


def rendered_files(apps: Iterable[str], redis_master: str, chroma_master: str, network_prefix: str,
                   legacy: Legacy = NO_LEGACY) -> dict[str, Rendered]:
    """Every file under SECRETS_DIR, by path relative to the project root, with its mode.
    The caller writes them (atomically) after creating PRIVATE_DIRS with their modes, and
    removes any other *.env in APP_ENV_DIR (an app that was removed)."""
    names = check_apps(apps)
    legacy.check(names)
    files = {REDIS_ACL_FILE: Rendered(render_redis_acl(names, redis_master, legacy), 0o644),
             CHROMA_MAP_FILE: Rendered(render_chroma_map(names, chroma_master, legacy), 0o644)}
    for app in names:
        files[app_env_file(app)] = Rendered(render_app_env(
            app_env(app, redis_master, chroma_master, network_prefix, legacy)), 0o600)
    return files
