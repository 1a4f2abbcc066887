"""onevps.tenants (the apps' Redis users and Chroma tokens set in the running services) and the
registry's part of it (each app's own credentials in its entry, legacy labels): no Docker."""

from __future__ import annotations

import shlex
import sys

import pytest

from onevps import composefile, isolation, registry, tenants
from onevps.errors import OnevpsError, redact
from onevps.runner import Result

from .goldens import registry as frozen_registry
from .test_recipes import local_settings

REDIS = "unit-redis-master-0123456789"
CHROMA = "unit-chroma-master-0123456789"


def settings():
    return local_settings(REDIS_PASSWORD=REDIS, CHROMA_TOKEN=CHROMA)


class Services:
    """A stand-in for redis and chroma-auth: records (service, argv, stdin), answers like them."""

    def __init__(self, users="default\n", acl_save="OK"):
        self.calls: list[tuple[str, list[str], str | None]] = []
        self.users, self.acl_save = users, acl_save

    def __call__(self, service, argv, step, stdin):
        self.calls.append((service, list(argv), stdin))
        if argv == isolation.redis_users_argv():
            return Result(list(argv), 0, self.users, "")
        if argv == isolation.redis_cli_argv():
            lines = stdin.splitlines()
            out = ["1" if line.startswith("ACL DELUSER") else "OK" for line in lines[:-1]] + [self.acl_save]
            return Result(list(argv), 0, "\n".join(out) + "\n", "")
        if argv == isolation.chroma_apply_argv():
            return Result(list(argv), 0, "reloaded\n", "")
        return Result(list(argv), 0, "", "")


def test_sync_sets_each_app_drops_the_rest_and_loads_chroma_auth_in_order():
    reg = frozen_registry()
    said = []
    services = Services(users="default\nkb\ngone-app\n")
    tenants.sync(services, said.append, settings(), reg)
    steps = [(s, a[:3]) for s, a, _ in services.calls]
    assert steps == [("redis", ["redis-cli", "ACL", "USERS"]), ("redis", ["redis-cli"]),
                     ("chroma-auth", ["sh", "-c", 'umask 077 && cat > "$1"']),
                     ("chroma-auth", ["sh", "-c", 'umask 077 && cat > "$1"']),
                     ("chroma-auth", isolation.chroma_apply_argv()[:3]),
                     ("chroma-auth", isolation.chroma_provision_argv(reg.names())[:3])]
    commands = services.calls[1][2]
    assert "ACL DELUSER gone-app\n" in commands and commands.endswith("ACL SAVE\n")
    assert all(f"ACL SETUSER {a} reset on #" in commands for a in reg.names())
    assert said == [f"==> {len(reg.names())} app(s), each with its own Redis user and ChromaDB tenant "
                    "(chroma-auth's tokens reloaded)"]


def test_no_secret_is_in_any_argv_only_in_stdin():
    reg = frozen_registry()
    services = Services()
    tenants.sync(services, lambda _: None, settings(), reg)
    secrets = [REDIS, CHROMA, *isolation.derived_env(reg.names(), REDIS, CHROMA).values()]
    for _, argv, _ in services.calls:
        assert not any(s in shlex.join(argv) for s in secrets)
    tokens = services.calls[2][2]
    assert all(isolation.chroma_token(CHROMA, a) in tokens for a in reg.names())  # the tokens file, on stdin


def test_a_redis_without_its_acl_file_stops_with_the_way_out():
    services = Services(acl_save="ERR This Redis instance is not configured to use an ACL file. You may want "
                                 "to specify users via the ACL SETUSER command and then issue a CONFIG REWRITE")
    with pytest.raises(OnevpsError) as err:
        tenants.sync(services, lambda _: None, settings(), frozen_registry())
    assert "Redis refused the apps' users: ERR This Redis instance is not configured" in err.value.message
    assert "fab setup" in err.value.hint
    assert not any(s == "chroma-auth" for s, _, _ in services.calls)  # nothing more was tried


def test_missing_masters_give_no_derived_values_and_sync_refuses_clearly():
    bare = local_settings()
    assert tenants.derived(bare, ["kb"]) == {}
    with pytest.raises(OnevpsError, match="cannot give the apps their own Redis users and ChromaDB tokens: "
                                          "REDIS_PASSWORD is missing"):
        tenants.sync(Services(), lambda _: None, bare, frozen_registry())


def test_derived_values_are_masked_in_output():
    values = tenants.derived(settings(), ["kb", "api-gw"])
    assert len(values) == 4
    for value in values.values():
        assert redact(f"REDIS_URL=redis://kb:{value}@10.0.0.4") == "REDIS_URL=redis://kb:***@10.0.0.4"


def test_dry_run_shows_the_commands_and_checks_no_answer():
    class Silent(Services):
        def __call__(self, service, argv, step, stdin):
            self.calls.append((service, list(argv), stdin))
            return Result(list(argv), 0, "", "")
    services = Silent()
    tenants.sync(services, lambda _: None, settings(), frozen_registry(), dry_run=True)
    assert len(services.calls) == 6
    with pytest.raises(OnevpsError, match="Redis refused the apps' users: 0 answers to"):
        tenants.sync(Silent(), lambda _: None, settings(), frozen_registry())


# ------------------------------------------------------------- the registry --

ENTRY = """\
services:
  kb:
    image: onevps/kb:latest
    labels: {labels}
    environment: {environment}
    networks:
      app-network:
        ipv4_address: ${{NETWORK_PREFIX:-172.20.0}}.12
  api-gw:
    image: onevps/api-gw:latest
    labels: {{onevps.tier: base}}
    environment:
      REDIS_URL: redis://api-gw:${{ONEVPS_REDIS_PASSWORD_API_GW:-}}@x:6379/0
      CHROMA_TOKEN: ${{ONEVPS_CHROMA_TOKEN_API_GW:-}}
    networks:
      app-network:
        ipv4_address: ${{NETWORK_PREFIX:-172.20.0}}.13
"""
OWN = "{REDIS_URL: 'redis://kb:${ONEVPS_REDIS_PASSWORD_KB:-}@x:6379/0', CHROMA_TOKEN: '${ONEVPS_CHROMA_TOKEN_KB:-}'}"


def problems(labels="{onevps.tier: base}", environment=OWN) -> list[str]:
    reg = registry.from_data(composefile.loads(ENTRY.format(labels=labels, environment=environment)))
    return [p for p in registry.problems(reg) if "shared service" not in p]


def test_an_app_with_its_own_credentials_has_no_problem():
    assert problems() == []


@pytest.mark.parametrize("environment", [
    "{}",
    "{REDIS_URL: 'redis://:${REDIS_PASSWORD}@x:6379/0', CHROMA_TOKEN: '${CHROMA_TOKEN}'}",  # the masters
    "{REDIS_URL: 'redis://api-gw:${ONEVPS_REDIS_PASSWORD_API_GW:-}@x:6379/0', "
    "CHROMA_TOKEN: '${ONEVPS_CHROMA_TOKEN_KB:-}'}",  # another app's user
    "{REDIS_URL: 'redis://kb:${ONEVPS_REDIS_PASSWORD_KB:-}@x:6379/0', "
    "CHROMA_TOKEN: '${ONEVPS_CHROMA_TOKEN_API_GW:-}'}",  # another app's token
])
def test_an_app_without_its_own_credentials_is_a_problem(environment):
    found = problems(environment=environment)
    assert found == ["app kb does not get its own Redis user and ChromaDB token: its environment needs "
                     "REDIS_URL: redis://kb:${ONEVPS_REDIS_PASSWORD_KB:-}@... and CHROMA_TOKEN: "
                     "${ONEVPS_CHROMA_TOKEN_KB:-} (see any app in the compose file)"]


def test_legacy_labels_become_grants_and_bad_ones_are_problems():
    reg = registry.from_data(composefile.loads(ENTRY.format(
        labels='{onevps.tier: base, onevps.redis_prefixes: "gw:, old:", onevps.chroma_legacy: "true"}',
        environment=OWN)))
    assert reg.legacy() == isolation.Legacy(redis_prefixes={"kb": ("gw:", "old:")}, chroma_owner="kb")
    assert problems('{onevps.tier: base, onevps.redis_prefixes: "api-gw:x"}') == [
        "legacy Redis prefix 'api-gw:x' of kb overlaps app api-gw's keys (api-gw:*)"]
    assert problems('{onevps.tier: base, onevps.redis_prefixes: "gw*"}')[0].startswith("legacy Redis prefix 'gw*'")


def test_every_app_of_the_live_and_frozen_compose_files_has_its_own_credentials():
    from onevps.project import Project
    from .recording import ROOT
    for reg in (registry.load(Project(ROOT).compose_file), frozen_registry()):
        assert all(a.credentials_problem is None for a in reg.apps) and reg.apps


def test_new_app_entry_gives_the_app_its_own_credentials():
    from onevps import apps
    text = apps.entry_text("blog-2", "base", 14)
    env = composefile.loads(text)["blog-2"]["environment"]
    assert env["REDIS_URL"] == "redis://blog-2:${ONEVPS_REDIS_PASSWORD_BLOG_2:-}@${NETWORK_PREFIX:-172.20.0}.4:6379/0"
    assert env["CHROMA_TOKEN"] == "${ONEVPS_CHROMA_TOKEN_BLOG_2:-}" and env["CHROMA_TENANT"] == "app-blog-2"
    assert env["REDIS_KEY_PREFIX"] == "blog-2:"


# ------------------------------------------------- the server's stamp: skip unchanged --

def test_a_deploy_skips_the_sync_when_nothing_changed_and_not_when_a_service_restarted():
    from .recording import Server, ctx
    server = Server()
    started = {"now": "redis-id 2026-12-08T00:00:00Z\nauth-id 2026-12-08T00:00:00Z\n"}
    server.when(["docker", "container", "inspect"], answer=lambda a: (0, started["now"], ""))
    server.when(lambda a: a[-1:] == ["redis-cli"],
                answer=lambda a: (0, "OK\n" * len(server.files[a[4] + ".onevps-tmp"].decode().splitlines()), ""))
    server.when(lambda a: a[:1] == ["cat"], answer=lambda a: (0, server.files.get(a[1] + ".onevps-tmp", b"").decode(), ""))
    srv = ctx(server, settings(), reg=frozen_registry())
    tenants.server_sync(srv)
    first = len(server.events)
    assert any("redis-cli" in e for e in server.events) and "/srv/apps/.onevps/tenants.stamp.onevps-tmp" in server.files
    assert not any(REDIS in e or CHROMA in e for e in server.events)

    tenants.server_sync(srv)  # the same apps, secrets and containers: two reads, nothing set
    again = server.events[first:]
    assert [e.split()[:3] for e in again] == [["docker", "container", "inspect"], ["cat", "/srv/apps/.onevps/tenants.stamp"]]

    started["now"] = "redis-id 2026-12-08T01:00:00Z\nauth-id 2026-12-08T00:00:00Z\n"  # redis restarted
    before = len(server.events)
    tenants.server_sync(srv)
    assert any("redis-cli ACL USERS" in e for e in server.events[before:])

    other = ctx(server, local_settings(REDIS_PASSWORD=REDIS + "-rotated", CHROMA_TOKEN=CHROMA), reg=frozen_registry())
    before = len(server.events)
    tenants.server_sync(other)  # a rotated master: new passwords, so the users are set again
    assert any("redis-cli ACL USERS" in e for e in server.events[before:])


def test_the_runner_hands_a_command_its_input_whole_and_at_once():
    """invoke feeds stdin a byte at a time (3 kB took 30 s); the runner's stdin does not use it:
    here 1 MB arrives whole, and a failing command still raises one clear error."""
    from invoke import Context
    from onevps.errors import CommandFailed
    from onevps.runner import Runner
    runner = Runner(Context())
    text = "".join(f"line {n} {'x' * 90}\n" for n in range(10_000))
    res = runner.run([sys.executable, "-c", "import sys; d = sys.stdin.read(); print(len(d)); print(d.splitlines()[-1])"],
                     "count", stdin=text)
    assert res.stdout.splitlines() == [str(len(text)), f"line 9999 {'x' * 90}"]
    with pytest.raises(CommandFailed, match=r"^error: a step failed \(exit 3\): sh -c"):
        runner.run(["sh", "-c", "cat > /dev/null; echo bad >&2; exit 3"], "a step", stdin="secret-ish input")
