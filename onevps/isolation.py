"""Each app sees only its own data in the shared services (issue 24, item 8).

Pure and standard library only: nothing here reads files, runs commands or
knows about Docker. onevps.tenants runs what this module renders in the
running services on every up, deploy, setup and swarm-deploy.

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
hash, so its map file holds the tokens themselves: it is a secret (mode 600,
on chroma-auth's own volume, never on the host's project folder).

Apps get their values by compose interpolation: each app's entry says
REDIS_URL: redis://A:${ONEVPS_REDIS_PASSWORD_A:-}@... and CHROMA_TOKEN:
${ONEVPS_CHROMA_TOKEN_A:-} (env_name), and onevps hands compose those
variables (derived_env) with the settings: in the environment here, in the
server's .env (mode 600) there.

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

# -------------------------------------------------------------- services --
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
# chroma-auth's generated map bodies, on its chroma-auth-apps volume; its template
# includes them (nginx/chroma-auth/default.conf.template). Written as root, mode 600:
# nginx's master reads its configuration as root.
CHROMA_MAP_DIR = "/etc/nginx/onevps"
CHROMA_TOKENS_FILE = "tokens.map"  # token -> app: holds every app's token
CHROMA_PATHS_FILE = "paths.map"  # app + request URI -> allowed
GENERATED = "# Written by onevps on every up and deploy (onevps/isolation.py); edits are lost."
CHROMA_DATABASE = "default_database"
CHROMA_TENANT_PREFIX = "app-"  # Chroma refuses very short tenant names; "a" -> "app-a"
CHROMA_LEGACY_TENANT = "default_tenant"  # where every app's collections were before
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


def _quoted(text: str) -> str:
    if "\\\\" in text or '\\"' in text:  # nginx would unescape these inside quotes
        raise IsolationError("internal error: the Chroma map would hold an escape nginx reads differently")
    return text


def render_chroma_tokens(apps: Iterable[str], chroma_master: str) -> str:
    """The body of chroma-auth's map $chroma_presented -> $chroma_app (CHROMA_TOKENS_FILE):
    one exact line per app. nginx lowercases map keys and input, harmless for lowercase hex
    tokens; the master CHROMA_TOKEN is not here (the template compares it case-sensitively)."""
    names = check_apps(apps)
    _check_master(chroma_master, "CHROMA_TOKEN")
    lines = [GENERATED]
    for app in names:
        token = chroma_token(chroma_master, app)
        assert _HEX64.match(token)
        lines.append(f'"{token}" "{app}";')
    return _quoted("\n".join(lines) + "\n")


def render_chroma_paths(apps: Iterable[str], legacy: Legacy = NO_LEGACY) -> str:
    """The body of chroma-auth's map "$chroma_app $request_uri" -> $chroma_app_allowed
    (CHROMA_PATHS_FILE): the open endpoints for any app, then each app's own tenant."""
    names = check_apps(apps)
    legacy.check(names)
    lines = [GENERATED, f'"~^[a-z][a-z0-9-]* {chroma_open_regex()[1:]}" 1;']
    for app in names:
        lines.append(f'"~^{app} {chroma_path_regex(app, legacy)[1:]}" 1;')
    return _quoted("\n".join(lines) + "\n")


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


def chroma_write_argv(name: str) -> list[str]:
    """Run in chroma-auth with the file's text on stdin: NAME.new, mode 600 from its first byte."""
    if name not in (CHROMA_TOKENS_FILE, CHROMA_PATHS_FILE):
        raise IsolationError(f"unknown chroma-auth map {name!r}")
    return ["sh", "-c", 'umask 077 && cat > "$1"', "sh", f"{CHROMA_MAP_DIR}/{name}.new"]


# Run in chroma-auth after both .new files are written: an unchanged pair is left alone;
# otherwise the new files go in, `nginx -t`, and a graceful reload (no request is dropped).
# A failing test puts the old files back, so a restart never meets a broken file.
CHROMA_APPLY_SCRIPT = r"""
set -eu
cd "$1"; shift
changed=
for f in "$@"; do
    if [ -f "$f" ] && cmp -s "$f.new" "$f"; then rm -f "$f.new"; continue; fi
    changed=1
    if [ -f "$f" ]; then cp -p "$f" "$f.old"; else : > "$f.old"; fi
    mv -f "$f.new" "$f"
done
if [ -z "$changed" ]; then echo "unchanged"; exit 0; fi
if nginx -t -q 2> /tmp/onevps-nginx-test; then
    nginx -s reload
    for f in "$@"; do rm -f "$f.old"; done
    echo "reloaded"
else
    for f in "$@"; do mv -f "$f.old" "$f"; done
    cat /tmp/onevps-nginx-test >&2
    exit 1
fi
"""


def chroma_apply_argv() -> list[str]:
    return ["sh", "-c", CHROMA_APPLY_SCRIPT, "sh", CHROMA_MAP_DIR, CHROMA_TOKENS_FILE, CHROMA_PATHS_FILE]


# ------------------------------------------------- compose variables, sync --

def env_name(service: str, app: str) -> str:
    """The compose variable carrying the app's secret for the service, e.g.
    ONEVPS_REDIS_PASSWORD_API_GW (app names are DNS labels: '-' becomes '_', no clash)."""
    kind = {"redis": "REDIS_PASSWORD", "chroma": "CHROMA_TOKEN"}.get(service)
    if kind is None:
        raise IsolationError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    return f"ONEVPS_{kind}_{check_app(app).upper().replace('-', '_')}"


def derived_env(apps: Iterable[str], redis_master: str, chroma_master: str) -> dict[str, str]:
    """Every app's derived secrets as the variables its compose entry interpolates."""
    out = {}
    for app in check_apps(apps):
        out[env_name("redis", app)] = redis_password(redis_master, app)
        out[env_name("chroma", app)] = chroma_token(chroma_master, app)
    return out


def redis_sync_commands(apps: Iterable[str], redis_master: str, present: Iterable[str],
                        legacy: Legacy = NO_LEGACY) -> str:
    """What onevps sends on redis-cli's standard input (in the redis container, as `default`
    by REDISCLI_AUTH) so that Redis has exactly one user per app: ACL SETUSER for each
    (hashes only), ACL DELUSER for every other user but `default` in `present` (ACL USERS),
    then ACL SAVE into the aclfile."""
    names = check_apps(apps)
    legacy.check(names)
    _check_master(redis_master, "REDIS_PASSWORD")
    lines = [f"ACL SETUSER {app} " + redis_user_rules(app, redis_password(redis_master, app),
                                                       legacy.redis_prefixes.get(app, ()))
             for app in names]
    gone = sorted(set(present) - set(names) - RESERVED_USERS)
    lines += [f"ACL DELUSER {user}" for user in gone if _APP.match(user)]
    lines.append("ACL SAVE")
    return "".join(line + "\n" for line in lines)


def redis_users_argv() -> list[str]:
    """Run in the redis container: the users Redis has now, one a line (as `default`)."""
    return ["redis-cli", "ACL", "USERS"]


def redis_cli_argv() -> list[str]:
    """Run in the redis container with redis_sync_commands on stdin: one answer a line."""
    return ["redis-cli"]


def redis_sync_failures(commands: str, answers: str) -> list[str]:
    """What went wrong, from redis-cli's answers to redis_sync_commands; [] when all passed.
    Every command answers one line: OK, or a number for ACL DELUSER; an error is a line
    of its own (followed by an empty one). The rules are never repeated here."""
    lines = [a.strip() for a in answers.splitlines() if a.strip()]
    bad = [a for a in lines if not re.fullmatch(r"OK|\d+", a)]
    if not bad and len(lines) < len(commands.splitlines()):
        bad.append(f"{len(lines)} answers to {len(commands.splitlines())} commands")
    return bad
