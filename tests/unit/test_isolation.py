"""Per-app credentials for the shared services (onevps.isolation): pure, no Docker."""

from __future__ import annotations

import hashlib
import hmac
import re
import shlex
from pathlib import Path

import pytest

from onevps import isolation
from onevps.isolation import IsolationError, Legacy

REDIS = "unit-redis-password-7f3a9c"
CHROMA = "unit-chroma-token-b81e2d44"
APPS = ["portfolio", "chatbot", "kb", "api-gw", "embedder", "classify", "summary"]
HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")


# ------------------------------------------------------------ derivation --

def test_derivation_is_deterministic_hex_and_the_documented_hmac():
    one = isolation.redis_password(REDIS, "kb")
    assert one == isolation.redis_password(REDIS, "kb") == isolation.derive(REDIS, "redis", "kb")
    assert HEX64.match(one)
    want = hmac.new(REDIS.encode(), b"onevps-isolation/v1/redis/kb", hashlib.sha256).hexdigest()
    assert one == want


def test_apps_services_and_masters_give_different_secrets():
    secrets = {isolation.derive(m, s, a) for m in (REDIS, CHROMA) for s in isolation.SERVICES for a in APPS}
    assert len(secrets) == 2 * 2 * len(APPS)
    # Even with one master for both services, a Redis password is no Chroma token.
    assert isolation.derive(REDIS, "redis", "kb") != isolation.derive(REDIS, "chroma", "kb")
    assert isolation.redis_password(REDIS, "kb") != isolation.redis_password(REDIS + "x", "kb")


def test_no_secret_reveals_its_master():
    for app in APPS:
        for secret in (isolation.redis_password(REDIS, app), isolation.chroma_token(CHROMA, app)):
            assert REDIS not in secret and CHROMA not in secret


@pytest.mark.parametrize("name", ["", "KB", "kb_1", "1kb", "-kb", "kb-", "k b", "kb:", "kb*", "a" * 64, "default",
                                  "kb\n", "k?b", "k[b]"])
def test_bad_app_names_are_refused(name):
    with pytest.raises(IsolationError):
        isolation.check_app(name)
    with pytest.raises(IsolationError):
        isolation.derive(REDIS, "redis", name)


def test_unknown_service_and_bad_masters_are_refused_without_showing_them():
    with pytest.raises(IsolationError):
        isolation.derive(REDIS, "postgres", "kb")
    for bad in ("", "change-me", "short", " " + REDIS, REDIS + "\n", "x" * 15):
        with pytest.raises(IsolationError) as err:
            isolation.derive(bad, "redis", "kb")
        assert (bad.strip() or "\0") not in str(err.value)


def test_duplicate_apps_are_refused():
    with pytest.raises(IsolationError, match="twice"):
        isolation.check_apps(["kb", "api-gw", "kb"])


def test_derived_env_lists_every_derived_secret():
    found = list(isolation.derived_env(APPS, REDIS, CHROMA).values())
    assert len(found) == 2 * len(APPS) and len(set(found)) == len(found)
    assert isolation.chroma_token(CHROMA, "kb") in found and isolation.redis_password(REDIS, "api-gw") in found


# ------------------------------------------------------------------ redis --

def render_redis_acl(apps, master, legacy=Legacy()) -> str:
    """The users onevps sets (redis_sync_commands), in the ACL file's `user NAME RULES` form."""
    lines = isolation.redis_sync_commands(apps, master, present=["default"], legacy=legacy).splitlines()
    assert lines[-1] == "ACL SAVE"
    return "".join(line.replace("ACL SETUSER ", "user ", 1) + "\n" for line in lines[:-1])


TEMPLATE = Path(__file__).resolve().parents[2] / "nginx" / "chroma-auth" / "default.conf.template"


def render_chroma_map(apps, master, legacy=Legacy()) -> str:
    """chroma-auth's two maps as nginx reads them: the template's map blocks with the files
    onevps writes in place of their include lines."""
    text = TEMPLATE.read_text()
    bodies = {isolation.CHROMA_TOKENS_FILE: isolation.render_chroma_tokens(apps, master),
              isolation.CHROMA_PATHS_FILE: isolation.render_chroma_paths(apps, legacy)}
    for name, body in bodies.items():
        stem, ext = name.split(".")
        line = f"    include {isolation.CHROMA_MAP_DIR}/{stem}*.{ext};\n"
        assert line in text, line
        text = text.replace(line, "".join("    " + b + "\n" for b in body.splitlines()))
    return text


def _acl_users(text: str) -> dict[str, list[str]]:
    users = {}
    for line in text.splitlines():
        word, name, *rules = line.split(" ")
        assert word == "user"
        users[name] = rules
    return users


def test_one_user_per_app_and_the_default_user_is_left_to_redis_start():
    text = render_redis_acl(APPS, REDIS)
    users = _acl_users(text)
    assert list(users) == sorted(APPS)  # `default` is written at redis's start, from REDISCLI_AUTH
    compose = (Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml").read_text()
    assert 'echo "user default on #$$h ~* &* +@all"' in compose and "--aclfile /data/users.acl" in compose
    assert 'printf %s "$$REDISCLI_AUTH" | sha256sum' in compose  # a builtin: the password is in no argv


def test_each_app_user_gets_only_its_own_keys_and_channels_and_no_admin():
    users = _acl_users(render_redis_acl(APPS, REDIS))
    for app in APPS:
        rules = users[app]
        assert rules[:2] == ["reset", "on"]  # a fresh user each load: nothing left from before
        assert rules[2] == "#" + hashlib.sha256(isolation.redis_password(REDIS, app).encode()).hexdigest()
        assert [r for r in rules if r.startswith("~")] == [f"~{app}:*"]
        assert [r for r in rules if r.startswith("&")] == [f"&{app}:*"]
        assert "~*" not in rules and "&*" not in rules and "allkeys" not in rules and "nopass" not in rules
        denied = rules[rules.index("+@all") + 1:]
        for rule in ("-@admin", "-@dangerous", "-keys", "-scan", "-randomkey", "-dbsize", "-pubsub", "-function"):
            assert rule in denied
        assert all(r.startswith("-") for r in denied)  # nothing is granted back after the denials


def test_acl_file_never_holds_a_password():
    text = render_redis_acl(APPS, REDIS)
    assert REDIS not in text
    for app in APPS:
        assert isolation.redis_password(REDIS, app) not in text
    assert ">" not in text  # the plaintext-password rule


def test_key_namespaces_of_similar_names_do_not_overlap():
    # "api:*" must not match "api-gw:..." and the other way round: ':' ends every namespace.
    users = _acl_users(render_redis_acl(["api", "api-gw"], REDIS))
    assert "~api:*" in users["api"] and "~api-gw:*" in users["api-gw"]
    assert not "api-gw:x".startswith("api:") and not "api:x".startswith("api-gw:")


def test_acl_rules_refuse_a_password_that_is_not_derived():
    with pytest.raises(IsolationError):
        isolation.redis_user_rules("kb", "hunter2-not-derived")


def test_redis_commands_hold_no_secret():
    assert isolation.redis_users_argv() == ["redis-cli", "ACL", "USERS"]
    assert isolation.redis_cli_argv() == ["redis-cli"]


@pytest.mark.parametrize("answers, bad", [
    ("OK\nOK\n1\nOK\n", []),
    ("OK\nERR Error in ACL SETUSER modifier 'bogus': Syntax error\n\n1\nOK\n",
     ["ERR Error in ACL SETUSER modifier 'bogus': Syntax error"]),
    ("OK\nOK\n1\nERR This Redis instance is not configured to use an ACL file.\n",
     ["ERR This Redis instance is not configured to use an ACL file."]),
    ("OK\n", ["1 answers to 4 commands"]),
    ("", ["0 answers to 4 commands"]),
])
def test_redis_sync_failures_reads_redis_clis_answers(answers, bad):
    commands = isolation.redis_sync_commands(["kb", "api-gw"], REDIS, present=["default", "old"])
    assert len(commands.splitlines()) == 4
    assert isolation.redis_sync_failures(commands, answers) == bad


# ---------------------------------------------------------------- legacy --

def test_legacy_redis_prefix_is_added_to_its_app_only():
    legacy = Legacy(redis_prefixes={"api-gw": ("gw:",)})
    users = _acl_users(render_redis_acl(APPS, REDIS, legacy))
    assert [r for r in users["api-gw"] if r.startswith("~")] == ["~api-gw:*", "~gw:*"]
    assert all("~gw:*" not in users[a] for a in APPS if a != "api-gw")


@pytest.mark.parametrize("prefixes", [
    {"api-gw": ("kb:",)},  # another app's namespace
    {"api-gw": ("kb",)},  # a prefix of it
    {"api-gw": ("kb:cache:",)},  # inside it
    {"api-gw": ("gw:",), "kb": ("gw:x",)},  # two apps' legacy prefixes overlap
    {"api-gw": ("gw*",)},  # glob characters
    {"api-gw": ("",)},
    {"nosuchapp": ("x:",)},
])
def test_legacy_redis_prefixes_that_reach_another_app_are_refused(prefixes):
    with pytest.raises(IsolationError):
        render_redis_acl(APPS, REDIS, Legacy(redis_prefixes=prefixes))


def test_legacy_chroma_owner_must_be_an_app():
    with pytest.raises(IsolationError):
        render_chroma_map(APPS, CHROMA, Legacy(chroma_owner="nosuchapp"))


# ----------------------------------------------------------------- chroma --

def _chroma_maps(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    tokens: dict[str, str] = {}
    rules: list[tuple[str, str]] = []
    current = None
    for line in text.splitlines():
        if line.startswith("map $chroma_presented $chroma_app "):
            current = "tokens"
        elif line.startswith('map "$chroma_app $request_uri" $chroma_app_allowed '):
            current = "rules"
        elif line == "}":
            current = None
        elif current and line.strip() and not line.strip().startswith(("default ", "#", "include ")):
            key, value = re.fullmatch(r'\s+"([^"]+)" "?([^";]+)"?;', line).groups()
            (tokens.__setitem__(key, value) if current == "tokens" else rules.append((key, value)))
    return tokens, rules


def _allowed(text: str, token: str, uri: str) -> bool:
    """What chroma-auth decides for an app token (nginx's map, evaluated as nginx does)."""
    tokens, rules = _chroma_maps(text)
    app = tokens.get(token.lower(), "")  # nginx lowercases exact map keys and the input
    subject = f"{app} {uri}"
    for pattern, value in rules:
        assert pattern.startswith("~")
        if re.search(pattern[1:], subject):
            return value == "1"
    return False


def test_chroma_map_has_one_exact_hex_token_per_app():
    text = render_chroma_map(APPS, CHROMA)
    tokens, _ = _chroma_maps(text)
    assert sorted(tokens.values()) == sorted(APPS)
    for token, app in tokens.items():
        assert HEX64.match(token) and token == isolation.chroma_token(CHROMA, app)
    assert CHROMA not in text  # the master stays in the template, compared case-sensitively
    bodies = isolation.render_chroma_tokens(APPS, CHROMA) + isolation.render_chroma_paths(APPS)
    assert "\\\\" not in bodies and "\\n" not in bodies and '\\"' not in bodies


def test_an_apps_token_reaches_only_its_own_tenant():
    text = render_chroma_map(APPS, CHROMA)
    kb, gw = isolation.chroma_token(CHROMA, "kb"), isolation.chroma_token(CHROMA, "api-gw")
    own = "/api/v2/tenants/app-kb/databases/default_database/collections"
    assert _allowed(text, kb, own)
    assert _allowed(text, kb, own + "/0b4f3c1e-aaaa-bbbb-cccc-1234567890ab/query")
    assert _allowed(text, kb, own + "?limit=10&offset=0")
    assert _allowed(text, kb, "/api/v2/tenants/app-kb")
    assert _allowed(text, kb, "/api/v2/heartbeat")
    assert _allowed(text, kb, "/api/v2/auth/identity")
    other = "/api/v2/tenants/app-api-gw/databases/default_database/collections"
    assert _allowed(text, gw, other)
    for uri in (other, "/api/v2/tenants/app-api-gw", "/api/v2/tenants/default_tenant/databases/default_database/collections",
                "/api/v2/tenants", "/api/v2/reset", "/api/v2/tenants/app-kbx/databases", "/api/v1/collections",
                "/api/v2/tenants/app-kb/../app-api-gw/databases/default_database/collections",
                "/api/v2/tenants/app-kb/%2e%2e/app-api-gw/databases",
                "/api/v2/tenants/app-kb%2F..%2Fapp-api-gw/databases",
                "/api/v2/tenants/app-kb//databases", "/docs", "/openapi.json", "/"):
        assert not _allowed(text, kb, uri), uri


def test_unknown_tokens_and_the_master_get_nothing_from_the_map():
    text = render_chroma_map(APPS, CHROMA)
    for token in ("", "0" * 64, CHROMA, isolation.redis_password(REDIS, "kb")):
        assert not _allowed(text, token, "/api/v2/tenants/app-kb/databases/default_database/collections")
        assert not _allowed(text, token, "/api/v2/heartbeat")


def test_prefix_names_do_not_match_each_other():
    text = render_chroma_map(["api", "api-gw"], CHROMA)
    api = isolation.chroma_token(CHROMA, "api")
    assert _allowed(text, api, "/api/v2/tenants/app-api/databases/default_database/collections")
    assert not _allowed(text, api, "/api/v2/tenants/app-api-gw/databases/default_database/collections")


def test_legacy_owner_keeps_the_default_database_and_nothing_else_there():
    legacy = Legacy(chroma_owner="kb")
    text = render_chroma_map(APPS, CHROMA, legacy)
    kb, gw = isolation.chroma_token(CHROMA, "kb"), isolation.chroma_token(CHROMA, "api-gw")
    old = "/api/v2/tenants/default_tenant/databases/default_database/collections"
    assert _allowed(text, kb, old) and _allowed(text, kb, old + "/abc/count")
    assert _allowed(text, kb, "/api/v2/tenants/default_tenant")
    assert not _allowed(text, gw, old)
    assert not _allowed(text, kb, "/api/v2/tenants/default_tenant/databases")  # no new databases there
    assert not _allowed(text, kb, "/api/v2/tenants/default_tenant/databases/other_db/collections")
    assert not _allowed(text, kb, "/api/v2/tenants/app-api-gw/databases/default_database/collections")
    assert isolation.chroma_place("kb", legacy) == ("default_tenant", "default_database")
    assert isolation.chroma_place("api-gw", legacy) == ("app-api-gw", "default_database")


def test_provision_argv_passes_tenants_not_tokens():
    argv = isolation.chroma_provision_argv(APPS, Legacy(chroma_owner="kb"))
    assert argv[:2] == ["sh", "-c"] and argv[3] == "sh"
    assert argv[4:] == sorted(f"app-{a}" for a in APPS if a != "kb")
    joined = shlex.join(argv)
    assert CHROMA not in joined and "$CHROMA_TOKEN" in argv[2] and "-H @-" in argv[2]
    assert all(isolation.chroma_token(CHROMA, a) not in joined for a in APPS)


# ------------------------------------------------------- chroma-auth files --

def test_chroma_files_are_written_private_and_applied_by_name_only():
    argv = isolation.chroma_write_argv(isolation.CHROMA_TOKENS_FILE)
    assert argv[:3] == ["sh", "-c", 'umask 077 && cat > "$1"'] and argv[-1] == "/etc/nginx/onevps/tokens.map.new"
    with pytest.raises(IsolationError):
        isolation.chroma_write_argv("../nginx.conf")
    apply = isolation.chroma_apply_argv()
    assert apply[4:] == ["/etc/nginx/onevps", "tokens.map", "paths.map"]
    assert "nginx -t" in apply[2] and "nginx -s reload" in apply[2] and 'mv -f "$f.old" "$f"' in apply[2]


def test_removing_an_app_drops_its_user_and_token():
    rest = [a for a in APPS if a != "kb"]
    assert "kb" not in _acl_users(render_redis_acl(rest, REDIS))
    assert isolation.chroma_token(CHROMA, "kb") not in isolation.render_chroma_tokens(rest, CHROMA)
    assert "app\\-kb" not in isolation.render_chroma_paths(rest)
    sync = isolation.redis_sync_commands(rest, REDIS, present=["default", *APPS])
    assert "ACL DELUSER kb\n" in sync and "ACL SETUSER kb " not in sync


def test_the_same_apps_give_the_same_bytes():
    # chroma-auth is reloaded only when its files change
    assert isolation.render_chroma_tokens(APPS, CHROMA) == isolation.render_chroma_tokens(APPS[::-1], CHROMA)
    assert isolation.render_chroma_paths(APPS) == isolation.render_chroma_paths(APPS[::-1])


def test_env_names_follow_the_app_and_never_clash():
    assert isolation.env_name("redis", "api-gw") == "ONEVPS_REDIS_PASSWORD_API_GW"
    assert isolation.env_name("chroma", "kb") == "ONEVPS_CHROMA_TOKEN_KB"
    with pytest.raises(isolation.IsolationError):
        isolation.env_name("ollama", "kb")


def test_derived_env_holds_each_apps_secrets_under_its_names():
    env = isolation.derived_env(["kb", "api-gw"], REDIS, CHROMA)
    assert env == {"ONEVPS_REDIS_PASSWORD_API_GW": isolation.redis_password(REDIS, "api-gw"),
                   "ONEVPS_CHROMA_TOKEN_API_GW": isolation.chroma_token(CHROMA, "api-gw"),
                   "ONEVPS_REDIS_PASSWORD_KB": isolation.redis_password(REDIS, "kb"),
                   "ONEVPS_CHROMA_TOKEN_KB": isolation.chroma_token(CHROMA, "kb")}


def test_redis_sync_sets_every_app_drops_the_rest_and_saves_without_a_password():
    text = isolation.redis_sync_commands(["kb", "api-gw"], REDIS, present=["default", "kb", "old-app"])
    lines = text.splitlines()
    assert lines[0].startswith("ACL SETUSER api-gw reset on #") and lines[1].startswith("ACL SETUSER kb reset on #")
    assert lines[2:] == ["ACL DELUSER old-app", "ACL SAVE"]
    for app in ("kb", "api-gw"):
        assert isolation.redis_password(REDIS, app) not in text
    assert REDIS not in text
