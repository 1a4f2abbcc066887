"""Secrets never leave .env: masking (errors.redact), the deploy slot's env file,
the journal, the order of the switch's steps (a recording runner stands in for
the server: no SSH, no Docker)."""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

import pytest

from onevps import config, deploy, errors, remote, switch
from onevps.errors import CommandFailed, OnevpsError
from onevps.project import Project
from onevps.registry import App
from onevps.runner import RedactingStream, Result, Runner
from onevps.server import Ctx

from . import recording

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "unit-redis-password-7f3a9c"
TOKEN = "unit-chroma-token-b81e2d44"


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """A clean registry of secret values for each test."""
    monkeypatch.setattr(errors, "_SECRETS", set())
    errors.register_secrets([PASSWORD, TOKEN])


def test_redact_masks_every_value_also_inside_longer_values():
    url = f"redis://:{PASSWORD}@10.0.0.4:6379/0"
    assert errors.redact(f"REDIS_URL={url} CHROMA_TOKEN={TOKEN}") == "REDIS_URL=redis://:***@10.0.0.4:6379/0 CHROMA_TOKEN=***"
    assert errors.redact("nothing secret here") == "nothing secret here"


def test_short_values_are_not_masked_in_free_text():
    errors.register_secrets(["abc"])
    assert errors.redact("abc def") == "abc def"


def test_config_load_registers_the_secrets_of_the_env_file(tmp_path, monkeypatch):
    monkeypatch.setattr(errors, "_SECRETS", set())
    env = tmp_path / ".env"
    env.write_text(f"REDIS_PASSWORD={PASSWORD}\nCHROMA_TOKEN={TOKEN}\nSTRIPE_API_KEY=sk_live_unit_9f8e7d\n")
    config.load(Project(ROOT), environ={}, env_file=env, warn=lambda _: None)
    assert errors.redact(f"{PASSWORD} {TOKEN} sk_live_unit_9f8e7d") == "*** *** ***"


def test_a_broken_env_line_of_a_secret_never_shows_its_value(tmp_path):
    env = tmp_path / ".env"
    env.write_text('DOMAIN=example.com\nREDIS_PASSWORD="unterminated-secret-value\n')
    with pytest.raises(OnevpsError) as err:
        config.load(Project(ROOT), environ={}, env_file=env)
    assert "unterminated-secret-value" not in err.value.message
    assert "line 2" in err.value.message and "REDIS_PASSWORD" in err.value.message


def test_errors_mask_what_and_hint():
    err = OnevpsError(f"could not use {PASSWORD}", f"try {TOKEN}")
    assert err.message == "error: could not use *** (hint: try ***)"
    assert PASSWORD not in err.what and TOKEN not in (err.hint or "")


class Scripted:
    """A context whose run() answers from a function of the command (invoke's API)."""

    def __init__(self, answer):
        self.answer = answer
        self.commands: list[str] = []

    def run(self, command, **kw):
        self.commands.append(command)
        out = kw.get("out_stream")
        exited, stdout, stderr = self.answer(command)
        if out is not None and not kw.get("hide"):
            out.write(stdout)
        return Result(shlex.split(command), exited, stdout, stderr)


def test_a_failing_command_shows_its_line_masked_and_keeps_the_step_apart(capsys):
    ctx = Scripted(lambda cmd: (125, "", f"docker: error with REDIS_URL=redis://:{PASSWORD}@x\n"))
    runner = Runner(ctx)  # type: ignore[arg-type]
    with pytest.raises(CommandFailed) as err:
        runner.run(["docker", "run", "--env", f"CHROMA_TOKEN={TOKEN}", "img"], "start the slot")
    text = err.value.message + err.value.output
    assert PASSWORD not in text and TOKEN not in text
    assert "--env CHROMA_TOKEN=*** img" in err.value.message
    assert err.value.step == "start the slot failed (exit 125)"  # what a journal may keep: no command line


def test_streamed_output_is_masked_line_by_line():
    sink = io.StringIO()
    stream = RedactingStream(sink)
    for chunk in ("line one\nthe pass", f"word is {PASSWORD[:5]}", f"{PASSWORD[5:]}\nlast {TOKEN}"):
        stream.write(chunk)
    stream.flush()
    assert sink.getvalue() == "line one\nthe password is ***\nlast ***"


def test_an_error_after_output_cut_mid_line_starts_a_line_of_its_own():
    """A remote command cut off mid-line (SSH dropped): the error line invoke prints
    still begins with `error:` on a line of its own."""
    stream = RedactingStream(io.StringIO())
    stream.write("level=warning msg=\"Docker Compose is configured to build using ")
    stream.flush()
    cut = OnevpsError("build portfolio on the server: the SSH connection to the server was lost")
    assert cut.message == "\nerror: build portfolio on the server: the SSH connection to the server was lost"
    assert str(cut) == cut.message.lstrip("\n")  # what a journal keeps: the line alone
    stream.write("done\n")
    stream.flush()
    assert OnevpsError("x").message == "error: x"


def test_say_masks(capsys):
    Runner(Scripted(lambda cmd: (0, "", ""))).say(f"token {TOKEN}")  # type: ignore[arg-type]
    assert capsys.readouterr().out == "token ***\n"


def test_the_server_command_line_never_carries_a_secret():
    r = remote.RemoteRunner(Scripted(lambda cmd: (0, "", "")), env={"BASE_TAG": "c-1"})  # type: ignore[arg-type]
    with pytest.raises(OnevpsError, match="refusing to put REDIS_PASSWORD on the server's command line"):
        r.run(["docker", "ps"], "ps", env={"REDIS_PASSWORD": PASSWORD})


def test_the_slot_env_file_refuses_a_line_break_naming_the_key_only():
    with pytest.raises(OnevpsError) as err:
        switch.slot_env_text(App("kb", "base", 12), {"environment": {"MULTI_SECRET": f"{PASSWORD}\nmore"}})
    assert "MULTI_SECRET of kb holds a line break" in err.value.message and PASSWORD not in err.value.message


# --------------------------------------------------- the switch, recorded --

SERVICE = {"environment": {"REDIS_URL": f"redis://:{PASSWORD}@10.9.0.4:6379/0", "CHROMA_TOKEN": TOKEN,
                           "APP_NAME": "kb"},
           "healthcheck": {"test": ["CMD", "python", "-c", "print('ok')"]}}


class Server(recording.Server):
    """The server as the switch sees it: containers' states, and which commands fail
    (the recording server of tests/unit/recording.py with these rules)."""

    def __init__(self, slot: str | None = None, primary: str = "running healthy", fail: tuple[str, ...] = ()):
        super().__init__()
        self.slot, self.primary = slot, primary
        self.when(lambda argv: "inspect" in argv[1:3], answer=self.inspect)
        self.when(lambda argv: "config" in argv and "json" in argv,
                  json.dumps({"services": {"kb": SERVICE}, "networks": {"app-network": {"name": "p_net"}}}))
        self.when(["docker", "run"], answer=self.start_slot)
        for failing in fail:  # newest rules answer first: an injected failure wins
            self.when(failing, code=1, err="injected failure")

    def inspect(self, argv: list[str]) -> tuple[int, str, str]:
        fmt, name = argv[argv.index("--format") + 1], argv[-1]
        state = self.slot if name.endswith("-next") else self.primary
        if state is None:
            return 1, "", "No such object"
        if fmt == "{{.State.Running}}":
            return 0, str(state.startswith("running")).lower() + "\n", ""
        if fmt == "{{.Id}}":
            return 0, "cid\n", ""
        return 0, state + "\n", ""

    def start_slot(self, argv: list[str]) -> tuple[int, str, str]:
        self.slot = "running healthy"
        return 0, "", ""


def make_ctx(server: Server, tmp_path: Path) -> Ctx:
    rs = config.load(Project(ROOT), environ={"COMPOSE_PROJECT_NAME": "p", "NETWORK_PREFIX": "10.9.0",
                                             "VPS_PATH": "/srv/apps"}, env_file=ROOT / ".env.example")
    return recording.ctx(server, rs)


def steps(server: Server) -> list[str]:
    """The commands that change something, as short names, in order."""
    names = []
    for argv in server.argvs:
        line = " ".join(argv)
        if argv[:2] == ["docker", "run"]:
            names.append("run slot")
        elif argv[:3] == ["rm", "-f", "/srv/apps/.onevps/kb.slot.env"]:
            names.append("remove env file")
        elif "umask 077" in line and "kb.slot.env" in line:
            names.append("create env file 600")
        elif argv[:2] == ["docker", "stop"]:
            names.append("stop primary" if argv[-1].endswith("-1") else "stop slot")
        elif "compose" in argv and " up " in f" {line} ":
            names.append("start primary")
        elif argv[:2] == ["docker", "rm"]:
            names.append("rm --force slot" if "--force" in argv else "rm slot")
    return names


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(switch.time, "sleep", lambda s: None)


def test_the_switch_runs_its_four_steps_in_order_and_no_secret_is_on_a_command_line(tmp_path):
    server = Server()
    switch.switch(make_ctx(server, tmp_path), App("kb", "base", 12), "sha256:new")
    assert steps(server) == ["create env file 600", "run slot", "remove env file", "stop primary",
                             "start primary", "stop slot", "rm slot"]
    assert not [a for a in server.argvs if PASSWORD in " ".join(a) or TOKEN in " ".join(a)]
    env_file = server.files["/srv/apps/.onevps/kb.slot.env.onevps-tmp"].decode()
    assert env_file == f"APP_NAME=kb\nCHROMA_TOKEN={TOKEN}\nREDIS_URL=redis://:{PASSWORD}@10.9.0.4:6379/0\n"
    run = next(a for a in server.argvs if a[:2] == ["docker", "run"])
    assert run[run.index("--env-file") + 1] == "/srv/apps/.onevps/kb.slot.env"


def test_the_env_file_goes_even_when_the_slot_cannot_start(tmp_path):
    server = Server(fail=("docker run",))
    with pytest.raises(CommandFailed) as err:
        switch.switch(make_ctx(server, tmp_path), App("kb", "base", 12), "sha256:new")
    assert steps(server) == ["create env file 600", "run slot", "remove env file"]
    assert PASSWORD not in err.value.message and TOKEN not in err.value.message


def test_a_running_leftover_slot_goes_only_after_the_app_is_healthy_at_its_address(tmp_path):
    """Step 3 of an earlier switch failed: the slot is all that serves the app."""
    server = Server(slot="running healthy", primary="exited")
    switch.clear_leftover_slot(make_ctx(server, tmp_path), App("kb", "base", 12))
    assert steps(server) == ["start primary", "stop slot", "rm slot"]


def test_a_leftover_slot_is_kept_serving_when_the_app_cannot_start(tmp_path):
    server = Server(slot="running healthy", primary="exited", fail=("up --detach",))
    with pytest.raises(CommandFailed, match="keeps serving from the deploy slot p-kb-next"):
        switch.clear_leftover_slot(make_ctx(server, tmp_path), App("kb", "base", 12))
    assert steps(server) == ["start primary"]  # nothing stopped, nothing removed


def test_a_stopped_leftover_slot_is_simply_removed(tmp_path):
    server = Server(slot="exited")
    switch.clear_leftover_slot(make_ctx(server, tmp_path), App("kb", "base", 12))
    assert steps(server) == ["rm --force slot"]


def test_a_leftover_slot_beside_a_healthy_app_is_retired_gracefully(tmp_path):
    server = Server(slot="running healthy", primary="running healthy")
    switch.clear_leftover_slot(make_ctx(server, tmp_path), App("kb", "base", 12))
    assert steps(server) == ["stop slot", "rm slot"]


def test_the_journal_keeps_what_failed_never_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(deploy, "git_commit", lambda root: "abc123")
    server = Server(fail=("docker run",))
    ctx = make_ctx(server, tmp_path)
    with pytest.raises(CommandFailed):
        deploy.deploy_app(ctx, App("kb", "base", 12), action="rollback", image="sha256:old")
    journal = [a for a in server.argvs if a[:2] == ["sh", "-c"] and "journal.jsonl" in " ".join(a)]
    entry = json.loads(journal[0][-1])
    assert entry["error"] == "start the new kb in the deploy slot failed (exit 1)"
    assert entry["result"] == "failed" and "docker" not in json.dumps(entry)


def test_an_ssh_connection_lost_as_a_command_is_sent_is_one_line():
    class Dropped:
        def run(self, command, **kw):
            raise EOFError()

    with pytest.raises(CommandFailed) as err:
        remote.RemoteRunner(Dropped()).run(["docker", "ps"], "list containers")  # type: ignore[arg-type]
    assert err.value.message.startswith("error: list containers: the SSH connection to the server was lost")
    assert "\n" not in err.value.message and err.value.step == "list containers: the SSH connection was lost"


def test_a_broken_env_line_without_equals_never_shows_a_secret(tmp_path):
    for line in ("OTHER_TOKEN: sekrit-value-123", "REDIS_PASSWORD sekrit-value-456"):
        env = tmp_path / ".env"
        env.write_text(f"DOMAIN=example.com\n{line}\n")
        with pytest.raises(OnevpsError) as err:
            config.load(Project(ROOT), environ={}, env_file=env)
        assert "sekrit-value" not in err.value.message and "line 2" in err.value.message


def test_a_secret_value_anywhere_on_the_server_command_line_is_refused_not_a_name():
    r = remote.RemoteRunner(Scripted(lambda cmd: (0, "", "")), env={"TAG_API_KEY": "c-1"})  # type: ignore[arg-type]
    assert r.run(["docker", "ps"], "ps").ok  # an image tag named like a secret is no secret
    with pytest.raises(OnevpsError, match="refusing to put a secret value on the server's command line"):
        r.run(["docker", "run", "--health-cmd", f"curl -H 'X-Chroma-Token: {TOKEN}' x"], "run")
