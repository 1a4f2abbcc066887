"""The pure parts of the server tasks: argv building, sync plans, proof, lock
messages, env prefixes. No SSH, no Docker (invoke's MockContext stands in
for the connection)."""

import inspect
import json
import shlex
from pathlib import Path

import pytest
from invoke import Collection, MockContext, Result

import fabfile
from onevps import config, deploy, remote, server, state, switch
from onevps.errors import OnevpsError
from onevps.project import Project
from onevps.registry import App, Registry

ROOT = Path(__file__).resolve().parents[2]


def test_every_fab_task_and_flag_has_help():
    for name, t in Collection.from_module(fabfile).tasks.items():
        assert (t.body.__doc__ or "").strip(), name
        for param in [p for p in inspect.signature(t.body).parameters if p != "c"]:
            assert param.replace("_", "-") in t.help or param in t.help, f"fab {name} --{param}"


def test_remote_runner_prefixes_env_and_quotes_once():
    cmd = "env BASE_TAG=c-1 ML_TAG=c-2 docker compose ps --format 'a b'"
    ctx = MockContext(run={cmd: Result("ok")})
    r = remote.RemoteRunner(ctx, env={"ML_TAG": "c-2", "BASE_TAG": "c-1"})
    assert r.run(["docker", "compose", "ps", "--format", "a b"], "ps").stdout == "ok"
    assert ctx.run.call_args.kwargs["env"] == {}


def test_remote_runner_dry_run_prints_the_whole_remote_command(capsys):
    r = remote.RemoteRunner(MockContext(), env={"BASE_TAG": "c-1"}, dry_run=True)
    r.run(["docker", "rm", "x y"], "rm")
    assert capsys.readouterr().out == "[dry-run] env BASE_TAG=c-1 docker rm 'x y'\n"


def test_lock_refusal_names_holder_and_since():
    holder = json.dumps({"holder": "alice@laptop", "since": "2026-11-26T10:00:00+0000", "what": "deploy kb"})
    ctx = MockContext(run=[Result(exited=1, stderr="mkdir: cannot create directory: File exists"), Result(""),
                           Result(holder)])
    s = config.load(Project(ROOT), environ={"VPS_PATH": "/srv/apps"}, env_file=ROOT / ".env.example")
    with pytest.raises(OnevpsError) as err:
        state.acquire_lock(remote.RemoteRunner(ctx), s, "deploy portfolio")
    assert err.value.message == ("error: another deploy is running: the deploy lock is held by alice@laptop "
                                 "since 2026-11-26T10:00:00+0000 (deploy kb) (hint: wait for it to finish, "
                                 "or run `fab unlock` if it is stale)")
    first = ctx.run.call_args_list[0].args[0]
    assert shlex.split(first)[:2] == ["sh", "-c"] and "/srv/apps/.onevps/deploy.lock" in first


def test_a_lock_that_cannot_be_made_says_why_not_another_deploy():
    """VPS_PATH not writable by VPS_USER (e.g. set up as root before): not "another deploy is running"."""
    denied = "mkdir: cannot create directory '/srv/apps/.onevps/deploy.lock': Permission denied"
    ctx = MockContext(run=[Result(exited=1, stderr=denied), Result(exited=1)])
    s = config.load(Project(ROOT), environ={"VPS_PATH": "/srv/apps"}, env_file=ROOT / ".env.example")
    with pytest.raises(OnevpsError) as err:
        state.acquire_lock(remote.RemoteRunner(ctx), s, "deploy portfolio")
    assert err.value.message == (f"error: cannot take the deploy lock /srv/apps/.onevps/deploy.lock: {denied} "
                                 "(hint: VPS_USER must be able to write /srv/apps: run `fab setup` as that user "
                                 "(it hands VPS_PATH over), and check the server's free space)")


def test_sync_plan_sends_changed_and_deletes_removed_but_never_wheels(tmp_path):
    (tmp_path / "apps" / "kb").mkdir(parents=True)
    (tmp_path / "apps" / "kb" / "main.py").write_text("new")
    (tmp_path / "apps" / "kb" / "same.py").write_text("same")
    (tmp_path / "apps" / "kb" / "x.pyc").write_text("compiled")
    local = remote.local_files(tmp_path, ["apps/kb"])
    assert sorted(local) == ["apps/kb/main.py", "apps/kb/same.py"]
    remote_hashes = {"apps/kb/main.py": "0" * 64, "apps/kb/same.py": remote.sha256(local["apps/kb/same.py"]),
                     "apps/kb/old.py": "1" * 64, "dockerfiles/ml/wheels/torch.whl": "2" * 64}
    plan = remote.plan_sync(local, remote_hashes)
    assert plan.send == ["apps/kb/main.py"] and plan.bytes == 3
    assert plan.delete == ["apps/kb/old.py"]


def test_remote_settings_come_from_the_vps_env_file(tmp_path):
    env = tmp_path / "server.env"
    env.write_text("HTTP_PORT=80\nHTTPS_PORT=443\nBIND_ADDRESS=0.0.0.0\nDOMAIN=example.com\n")
    local = config.load(Project(ROOT), environ={"VPS_ENV_FILE": str(env), "VPS_PATH": "/opt/apps",
                                                "VPS_HOST": "vps.example.com"}, env_file=ROOT / ".env.example")
    rs = remote.remote_settings(Project(ROOT), local)
    assert (rs.http_port, rs.bind_address, rs.domain) == (80, "0.0.0.0", "example.com")
    assert remote.server_project(rs).compose_file == Path("/opt/apps/compose/docker-compose.yml")
    assert rs.env_file == Path("/opt/apps/.env")


def test_missing_server_is_one_line():
    s = config.load(Project(ROOT), environ={}, env_file=ROOT / ".env.example")
    with pytest.raises(OnevpsError, match="no server given.*VPS_HOST"):
        remote.server_from(s, None)


def test_unreachable_host_is_one_line():
    with pytest.raises(OnevpsError) as err:
        remote.connect(remote.Server("127.0.0.1", "root", 1, None), timeout=3)
    assert err.value.message.startswith("error: cannot reach root@127.0.0.1:1")


class FakeCtx:
    """Just what slot_run_argv reads."""

    def __init__(self):
        self.rs = config.load(Project(ROOT), environ={"COMPOSE_PROJECT_NAME": "prod", "NETWORK_PREFIX": "10.9.0"},
                              env_file=ROOT / ".env.example")


def test_slot_container_argv():
    service = {"environment": {"REDIS_URL": "redis://10.9.0.4:6379/0", "EMPTY": None}, "pids_limit": 256,
               "healthcheck": {"test": ["CMD", "python", "-c", "print('ok')"], "timeout": "5s", "retries": 3,
                               "start_period": "60s"}}
    argv = switch.slot_run_argv(FakeCtx(), App("kb", "base", 12), "sha256:abc", service, "prod_app-network",
                                "/srv/apps/.onevps/kb.slot.env")
    health = argv.index("--health-cmd")
    assert shlex.split(argv[health + 1]) == ["python", "-c", "print('ok')"]  # run by the shell like CMD
    assert shlex.join(argv[:health] + argv[health + 2:]) == (
        "docker run --detach --name prod-kb-next --network prod_app-network --ip 10.9.0.140 "
        "--label onevps.slot=next --label onevps.app=kb --log-driver json-file --log-opt max-size=10m "
        "--log-opt max-file=3 --pids-limit 256 --env-file /srv/apps/.onevps/kb.slot.env "
        "--health-interval 1s --health-timeout 5s --health-retries 3 --health-start-period 60s sha256:abc")
    assert "com.docker.compose.project" not in " ".join(argv)  # compose leaves the slot alone
    assert "REDIS_URL" not in " ".join(argv)  # the environment travels in the file, never on the command line
    assert switch.slot_env_text(App("kb", "base", 12), service) == "EMPTY\nREDIS_URL=redis://10.9.0.4:6379/0\n"
    # `compose config` writes a literal $ as $$; the slot gets the value compose up gives.
    escaped = {"environment": {"MODEL": "a$$HOME`x`;$$(y) $${Z}\\", "TWO": "a$$$$b"},
               "healthcheck": {"test": ["CMD-SHELL", "test $$HOME"]}}
    literal = switch.compose_literal(escaped)
    assert switch.slot_env_text(App("kb", "base", 12), literal) == "MODEL=a$HOME`x`;$(y) ${Z}\\\nTWO=a$$b\n"
    assert literal["healthcheck"]["test"] == ["CMD-SHELL", "test $HOME"]


@pytest.mark.parametrize("pids, flags", [(512, ["--pids-limit", "512"]), (None, []), (-1, []), (0, [])])
def test_the_slot_keeps_the_services_process_limit(pids, flags):
    """The new version serves from the slot during a deploy (and after a failed step 5, until
    the next one): it has the limit compose gives the app (`docker compose config` resolves
    ${APP_PIDS_LIMIT:-256} to a number). Without one (or -1/0: none, to compose) no flag."""
    service = {"environment": {}} if pids is None else {"environment": {}, "pids_limit": pids}
    argv = switch.slot_run_argv(FakeCtx(), App("kb", "base", 12), "sha256:abc", service, "prod_app-network",
                                "/srv/apps/.onevps/kb.slot.env")
    at = argv.index("--env-file")
    assert argv[at - len(flags):at] == flags and argv.count("--pids-limit") == (1 if flags else 0)


def test_proof_lists_unchanged_and_refuses_changes():
    before = {"p-nginx-1": ("a", "t1"), "p-kb-1": ("b", "t2"), "p-web-1": ("c", "t3")}
    after = {"p-nginx-1": ("a", "t1"), "p-kb-1": ("B", "t9"), "p-web-1": ("c", "t3")}
    lines = server.proof(before, after, {"p-kb-1"})
    assert lines[0] == "2 other containers kept their ID and start time:"
    assert all("unchanged" in line for line in lines[1:])
    with pytest.raises(OnevpsError, match="containers changed that should not have: p-web-1"):
        server.proof(before, {**after, "p-web-1": ("c", "t4")}, {"p-kb-1"})


def test_deploy_needs_exactly_one_target():
    with pytest.raises(OnevpsError, match="exactly one of --app=NAME, --tier=base\\|ml, --all"):
        deploy.deploy(object(), app="kb", every=True)  # type: ignore[arg-type]
    with pytest.raises(OnevpsError, match="exactly one"):
        deploy.deploy(object())  # type: ignore[arg-type]


def test_a_server_gets_only_the_tiers_its_apps_use():
    def srv(*tiers_):
        reg = Registry(apps=tuple(App(f"a{i}", t, 10 + i) for i, t in enumerate(tiers_)), services=(), hosts={})
        return type("Srv", (), {"reg": reg})()

    assert deploy.tiers_in_use(srv("base", "base")) == ["base"]
    assert deploy.tiers_in_use(srv()) == ["base"]  # the waker and docker-proxy run on the base tier
    assert deploy.tiers_in_use(srv("ml", "base")) == ["base", "ml"]
