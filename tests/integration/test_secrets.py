"""Secrets never leak (issue 12): with unique secret values in the shared test
server's settings (server.py), the `fab` and `inv` tasks that take secrets run
with injected failures (slot start refused, health check failing, `nginx -t`
failing, SSH dropped mid-deploy, disk check refusing, broken secrets), and the
read-only, dry-run and local tasks; leakcheck.py says where each run is
watched. The successful paths (setup, deploys, rollbacks, backup and restore)
are watched the same way where test_deploy runs them on the same server:
every task on it goes through server.task.
"""

from __future__ import annotations

import json

import pytest

from onevps import registry

from .conftest import SHELL_RAN, SHELLISH, docker, file_text
from .leakcheck import BROKEN, SECRETS, assert_slot_env_file_used, check, cli, cli_many
from .server import PROJECT, SERVER_ENV, Run, served_version, set_version

pytestmark = [pytest.mark.docker, pytest.mark.server, pytest.mark.ordered]

SQUATTER = f"{PROJECT}-squatter"


@pytest.fixture(scope="module")
def server(vps):
    return vps


def test_a_failing_nginx_test_leaks_nothing(server):
    repo = server
    before = served_version()
    # A deploy sends an nginx snippet `nginx -t` rejects: the deploy stops, nginx keeps its config.
    snippet = repo["root"] / "nginx" / "snippets" / "errors.conf"
    with file_text(snippet, lambda good: good + "\nleakcheck_not_a_directive on;\n"):
        res = check(repo, cli(repo, "fab", "deploy", "--app=portfolio", scenario="nginx test failing"))
    assert res.returncode == 1, res.output
    assert len(res.errors()) == 1 and "Traceback" not in res.stderr, res.output
    assert res.errors()[0].startswith("error: test and reload nginx on the server failed"), res.output
    assert served_version() == before
    # The next deploy sends the good snippet back and reloads nginx.
    set_version(repo, "portfolio", "secrets-v2")
    res = check(repo, cli(repo, "fab", "deploy", "--app=portfolio", scenario="deploy after a failed nginx test"))
    assert res.returncode == 0, res.output
    assert "nginx: new configuration tested" in res.stdout
    assert_slot_env_file_used(repo, res)
    assert served_version() == "secrets-v2"


def test_read_only_and_dry_run_tasks_leak_nothing(server):
    repo = server
    calls = [("fab", args, None) for args in (
        ["status"], ["history"], ["logs", "--app=redis", "--tail=30"], ["unlock"], ["setup", "--dry-run"],
        ["deploy", "--app=portfolio", "--dry-run"], ["certs", "--dry-run"], ["swarm-deploy", "--dry-run"])]
    for res in cli_many(repo, calls, "read-only and dry runs"):
        assert res.records[1:], f"{res} sent no command"
        if res.argv[1] == "swarm-deploy":  # no swarm stack here (or no swarm): refused in one line
            assert res.returncode == 1 and len(res.errors()) == 1 and "Traceback" not in res.stderr, res.output
        else:
            assert res.returncode == 0, res.output


def test_a_refused_slot_start_leaks_nothing(server):
    """Another container holds the deploy slot's address: `docker run` of the slot fails."""
    repo = server
    set_version(repo, "portfolio", "v3")
    before = served_version()
    docker("run", "--detach", "--name", SQUATTER, "--network", f"{PROJECT}_app-network", "--ip", repo["slot_ip"],
           "python:3.11-slim", "sleep", "600")
    try:
        res = check(repo, cli(repo, "fab", "deploy", "--app=portfolio", scenario="slot start refused"))
    finally:
        docker("rm", "--force", SQUATTER)
    assert res.returncode == 1, res.output
    assert len(res.errors()) == 1 and "Traceback" not in res.stderr, res.output
    assert res.errors()[0].startswith("error: start the new portfolio in the deploy slot failed"), res.output
    assert_slot_env_file_used(repo, res)
    assert served_version() == before
    journal = (repo["vps"] / ".onevps" / "journal.jsonl").read_text().splitlines()
    assert json.loads(journal[-1])["result"] == "failed"


def test_a_failing_health_check_leaks_nothing(server):
    """The new version crashes at start: its log lines are shown, then one error."""
    repo = server
    before = served_version()
    path = repo["root"] / "apps" / "portfolio" / "main.py"
    with file_text(path, lambda good: good + '\nraise SystemExit("boom: this version crashes on start")\n'):
        res = check(repo, cli(repo, "fab", "deploy", "--app=portfolio", scenario="health check failing"))
    assert res.returncode == 1, res.output
    assert res.errors() == [res.stderr.strip().splitlines()[-1]] and "Traceback" not in res.stderr, res.output
    assert "did not become healthy" in res.errors()[0]
    assert "boom: this version crashes on start" in res.stdout
    assert_slot_env_file_used(repo, res)
    assert served_version() == before


def _ssh_drop(repo, when, scenario: str) -> Run:
    before = served_version()
    res = check(repo, cli(repo, "fab", "deploy", "--app=portfolio", scenario=scenario, drop_when=when))
    assert res.dropped, f"no SSH connection was dropped:\n{res.output}"
    assert res.returncode == 1, res.output
    assert len(res.errors()) == 1 and "Traceback" not in res.stderr, res.output
    assert served_version() == before  # the server keeps serving
    if (repo["vps"] / ".onevps" / "deploy.lock").exists():  # (fabric reconnects to release it)
        res = check(repo, cli(repo, "fab", "unlock", scenario=f"unlock after {scenario}"))
        assert res.returncode == 0 and "removed the deploy lock" in res.stdout, res.output
    assert not (repo["vps"] / ".onevps" / "deploy.lock").exists()
    return res


def test_an_ssh_connection_dropped_mid_deploy_leaks_nothing(server):
    """The sshd processes serving the deploy's connection are killed while a command runs on the
    server: that command fails in one line; fabric opens a new connection for what follows (the
    slot's env file removed, the journal written, the lock released)."""
    repo = server
    set_version(repo, "portfolio", "v5")
    # Dropped while the server builds the new version ...
    _ssh_drop(repo, lambda cmd: f"--project-name {PROJECT} " in cmd and cmd.endswith(" build portfolio"),
              "SSH dropped during the build")
    # ... and while the deploy slot starts (its env file is on the server then).
    _ssh_drop(repo, lambda cmd: " run " in cmd and "onevps.slot=next" in cmd and PROJECT in cmd,
              "SSH dropped as the deploy slot starts")


def test_a_refused_disk_check_leaks_nothing(server):
    repo = server
    set_version(repo, "portfolio", "v6")
    before = served_version()
    with file_text(repo["root"] / ".env.vps", lambda env: env + "BUILD_FREE_MB=900000000\n"):
        res = check(repo, cli(repo, "fab", "deploy", "--app=portfolio", scenario="disk check refusing"))
    assert res.returncode == 1, res.output
    assert len(res.errors()) == 1 and "Traceback" not in res.stderr, res.output
    assert "MB free on the server's Docker disk" in res.errors()[0]
    assert served_version() == before


def test_broken_secrets_are_never_shown(server):
    """A rejected secret names its key, never its value: in the environment, in an .env file
    (a value a URL cannot take, an unterminated quote, `KEY: value`), locally and for the server."""
    repo = server
    root = repo["root"]
    bad_chars = root / ".env.bad-chars"
    bad_chars.write_text(SERVER_ENV.replace(SECRETS["CHROMA_TOKEN"], BROKEN["url-unsafe"]))
    unterminated = root / ".env.unterminated"
    unterminated.write_text(SERVER_ENV + f'CHROMA_TOKEN="{BROKEN["unterminated"]}\n')
    colon = root / ".env.colon"
    colon.write_text(SERVER_ENV + f"OTHER_TOKEN: {BROKEN['colon']}\n")
    added = f"line {len(SERVER_ENV.splitlines()) + 1}"  # the line each broken file adds
    cases = [
        ("inv", ["settings"], {"REDIS_PASSWORD": BROKEN["url-unsafe"]}, "REDIS_PASSWORD (environment variable)"),
        ("inv", ["up"], {"REDIS_PASSWORD": BROKEN["url-unsafe"]}, "REDIS_PASSWORD (environment variable)"),
        ("inv", ["check"], {"ONEVPS_ENV_FILE": str(bad_chars)}, "CHROMA_TOKEN (.env.bad-chars line"),
        ("inv", ["status"], {"ONEVPS_ENV_FILE": str(unterminated)}, f".env.unterminated {added} cannot be parsed"),
        ("inv", ["swarm-deploy", "--dry-run"], {"ONEVPS_ENV_FILE": str(colon)}, f".env.colon {added}"),
        ("fab", ["deploy", "--app=portfolio"], {"VPS_ENV_FILE": ".env.bad-chars"}, "CHROMA_TOKEN (.env.bad-chars"),
        ("fab", ["setup"], {"VPS_ENV_FILE": ".env.unterminated"}, f".env.unterminated {added} cannot be parsed"),
        ("fab", ["certs"], {"VPS_ENV_FILE": ".env.colon"}, f".env.colon {added}"),
    ]
    runs = cli_many(repo, [(prog, args, env) for prog, args, env, _ in cases], "broken secret")
    for res, (_, _, _, named) in zip(runs, cases):
        assert res.returncode == 1, res.output
        assert len(res.errors()) == 1 and named in res.errors()[0] and "Traceback" not in res.stderr, res.output


def test_local_inv_tasks_leak_nothing(server):
    """The local tasks that read the secrets, with the server's settings (the server's project:
    on this machine they see the server's stack)."""
    repo = server
    calls = [("inv", args, None) for args in (
        ["settings", "--show-defaults"], ["check"], ["status"], ["routes"], ["logs", "--app=redis", "--tail=30"],
        ["swarm-check"], ["swarm-render", "--stdout"], ["prune", "--dry-run"])]
    for res in cli_many(repo, calls, "local inv tasks"):
        assert res.returncode == 0, res.output
        if res.argv[1] == "settings":
            assert "REDIS_PASSWORD=(set, hidden)" in res.stdout and "CHROMA_TOKEN=(set, hidden)" in res.stdout
        if res.argv[1] == "swarm-render":
            assert "${REDIS_PASSWORD" in res.stdout  # a variable, filled in at deploy time


def test_a_value_with_shell_characters_arrives_as_written_and_nothing_in_it_runs(server):
    """Issue 24, item 6: the server's OLLAMA_MODEL holds $, `...`, ;, quotes, #, spaces, \\ and
    $(touch ...), single-quoted in its settings file (server.SHELLISH). inv reads it as written;
    compose, through `fab setup` and `fab deploy`, hands every app exactly that value (the deploy
    slot's file: test_deploy_units); no shell ran any part of it on this machine, the server."""
    repo = server
    res = cli(repo, "inv", "settings", scenario="a value with shell characters")
    assert res.returncode == 0, res.output
    assert f"OLLAMA_MODEL={SHELLISH}" in res.stdout.splitlines()
    apps = registry.load(repo["root"] / "compose" / "docker-compose.yml").names()
    assert "portfolio" in apps, apps
    for app in apps:
        env = json.loads(docker("inspect", "--format", "{{json .Config.Env}}", f"{PROJECT}-{app}-1"))
        assert f"OLLAMA_MODEL={SHELLISH}" in env, (app, [e for e in env if e.startswith("OLLAMA_MODEL=")])
    assert not SHELL_RAN.exists()
