"""Whole recipes as ordered command lists, against a recording server (tests/unit/recording.py):
the switch, rollback, setup after provisioning, prune, certs, restore. Each list is a golden
file in tests/golden/recipes/ (one command or upload a line): a step swapped, added or lost
fails. Regenerate with ONEVPS_UPDATE_GOLDEN=1 and read the diff.

The app registry is the frozen compose file's (tests/unit/goldens.py), not the live one's. The
shared wait script (onevps.commands.docker.WAIT_READY) stands in the goldens as <WAIT_SCRIPT>;
its text is compared once, with tests/golden/recipes/wait-script.sh."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from onevps import backup, certs, config, deploy, provision, remote, state, switch, watch
from onevps.errors import OnevpsError
from onevps.commands import shell
from onevps.commands.docker import WAIT_READY
from onevps.project import Project
from onevps.registry import App

from .goldens import registry  # the frozen compose file's, not the live one's
from .recording import GOLDEN, ROOT, WAIT_SCRIPT, Server, assert_golden, compare, ctx
from .test_backup import archive

TAGS = {"BASE_TAG": "c-6f91ef1596ce", "ML_TAG": "c-b58f04ca7e0c"}
FIXED = time.gmtime(1767225600)  # 2026-01-01 00:00:00 UTC
FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "docker"
SERVICE = {"environment": {"APP_NAME": "kb"}, "healthcheck": {"test": ["CMD", "python", "-c", "print('ok')"]},
           "pids_limit": 256}  # as `docker compose config` gives it
KB = App("kb", "base", 12)


@pytest.fixture(autouse=True)
def steady(monkeypatch):
    """The same commands every run: a fixed clock, user and commit; no waiting."""
    real_strftime = time.strftime
    monkeypatch.setattr(time, "strftime", lambda fmt, t=None: real_strftime(fmt, FIXED))
    monkeypatch.setattr(time, "monotonic", lambda: 1000.0)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    monkeypatch.setattr(state, "whoami", lambda: "ops@laptop")
    monkeypatch.setattr(deploy, "git_commit", lambda root: "abc1234")


def local_settings(**env) -> config.Settings:
    base = {"COMPOSE_PROJECT_NAME": "p", "NETWORK_PREFIX": "10.9.0", "VPS_PATH": "/srv/apps",
            "DOMAIN": "example.com", "ACME_EMAIL": "ops@example.com"}
    return config.load(Project(ROOT), environ={**base, **env}, env_file=ROOT / ".env.example")


def server_settings(**env) -> config.Settings:
    """As on the server: its .env under VPS_PATH (remote.remote_settings)."""
    return dataclasses.replace(local_settings(**env), env_file=Path("/srv/apps/.env"))


class Containers:
    """The app's containers as the switch sees them: `docker run` starts the slot (healthy),
    `docker rm` removes it, `compose up` makes the app healthy at its address."""

    def __init__(self, server: Server, slot: str | None, primary: str, image: str):
        self.slot, self.primary, self.image, self.latest = slot, primary, image, image
        server.when(lambda a: a[:3] == ["docker", "container", "inspect"], answer=self.inspect)
        server.when(["docker", "run"], answer=lambda a: self.set(slot="running healthy"))
        server.when(["docker", "rm"], answer=lambda a: self.set(slot=None))
        # `latest` is what compose starts at the app's address.
        server.when(lambda a: a[:2] == ["docker", "tag"] and a[-1].endswith(":latest"),
                    answer=lambda a: self.set(latest=a[2]))
        server.when(lambda a: a[:2] == ["docker", "compose"] and " up " in f" {' '.join(a)} ",
                    answer=lambda a: self.set(primary="exited (0)" if "--no-start" in a else "running healthy",
                                              image=self.latest))
        server.when("config --format json", json.dumps({"services": {"kb": SERVICE},
                                                        "networks": {"app-network": {"name": "p_app-network"}}}))
        server.when(["docker", "ps", "--all", "--quiet", "--filter"], "c1\nc2\n")
        server.when(["docker", "inspect", "--format", "{{.Name}} {{.Id}} {{.State.StartedAt}}"],
                    "/p-nginx-1 c1 2026-01-01T00:00:00Z\n/p-redis-1 c2 2026-01-01T00:00:00Z\n")

    def set(self, **states) -> tuple[int, str, str]:
        for key, value in states.items():
            setattr(self, key, value)
        return 0, "", ""

    def inspect(self, argv: list[str]) -> tuple[int, str, str]:
        name, fmt = argv[-1], argv[argv.index("--format") + 1]
        now = self.slot if name.endswith("-next") else self.primary
        if now is None:
            return 1, "", "Error: No such object"
        if fmt == "{{.State.Running}}":
            return 0, str(now.startswith("running")).lower() + "\n", ""
        if fmt == "{{.Image}}":
            return 0, self.image + "\n", ""
        if fmt == "{{.Id}}":
            return 0, "cid\n", ""
        return 0, now + "\n", ""


def switching(server: Server, slot: str | None = None, primary: str = "running healthy",
              image: str = "sha256:new") -> Server:
    Containers(server, slot, primary, image)
    return server


def test_the_switch(tmp_path):
    server = switching(Server())
    switch.switch(ctx(server, server_settings(), tags=TAGS), KB, "sha256:new")
    assert_golden("switch", server.lines())


def test_a_deploy_mending_a_slot_left_serving_by_step_3():
    server = switching(Server(), slot="running healthy", primary="exited")
    srv = ctx(server, server_settings(), reg=registry(), tags=TAGS)
    deploy.deploy_app(srv, KB, action="rollback", image="sha256:old")
    assert_golden("deploy-app-mends-slot", server.lines())


SLEEPY = App("kb", "base", 12, sleep_after=900)


def sleeping_kb(server: Server, asleep: bool) -> Containers:
    """kb may sleep; asleep: its flag is in the waker's folder and its container is stopped."""
    containers = Containers(server, None, "exited (0)" if asleep else "running healthy", "sha256:old")
    server.when(["docker", "exec", "p-waker-1", "ls", "-1", "/var/lib/onevps/asleep"], "kb\n" if asleep else "")
    server.when(["docker", "inspect", "--format", "{{.Name}} {{.State.Running}}"],
                answer=lambda a: (0, f"/p-kb-1 {str(containers.primary.startswith('running')).lower()}\n", ""))
    server.when(["docker", "start"], answer=lambda a: containers.set(primary="running healthy"))
    return containers


def test_a_deploy_of_a_sleeping_app_checks_the_new_version_and_lets_it_sleep_on():
    server = Server()
    containers = sleeping_kb(server, asleep=True)
    entry = deploy.deploy_app(ctx(server, server_settings(), reg=registry(), tags=TAGS), SLEEPY, image="sha256:new",
                              watch_after=True)
    assert entry["result"] == "ok (asleep)"  # and no watch: no request reaches a sleeping app
    assert containers.primary == "exited (0)" and containers.slot is None
    lines = server.lines()
    assert not any(line.startswith(("docker stop", "docker start")) for line in lines)
    assert any(" up --no-start --no-build --no-deps kb" in line for line in lines)
    assert_golden("deploy-sleeping-app", lines)


def test_deploy_wake_starts_a_sleeping_app_and_drops_its_flag():
    server = Server()
    containers = sleeping_kb(server, asleep=True)
    entry = deploy.deploy_app(ctx(server, server_settings(), reg=registry(), tags=TAGS), SLEEPY, image="sha256:new",
                              wake=True)
    assert entry["result"] == "ok" and containers.primary == "running healthy"
    lines = server.lines()
    assert lines.index("docker start p-kb-1") < lines.index("docker exec p-waker-1 rm -f /var/lib/onevps/asleep/kb")


def test_a_sleeping_app_woken_during_its_deploy_is_started_with_the_new_version():
    """A request woke the old container between the check and the new container: its flag is
    gone, so the new (stopped) container is started at once; nothing is left down."""
    server = Server()
    containers = sleeping_kb(server, asleep=True)
    created = []
    server.when(lambda a: "--no-start" in a, answer=lambda a: created.append(1) or containers.set(primary="exited (0)"))
    server.when(["docker", "exec", "p-waker-1", "ls", "-1", "/var/lib/onevps/asleep"],
                answer=lambda a: (0, "" if created else "kb\n", ""))
    entry = deploy.deploy_app(ctx(server, server_settings(), reg=registry(), tags=TAGS), SLEEPY, image="sha256:new")
    assert entry["result"] == "ok" and containers.primary == "running healthy"
    assert "docker start p-kb-1" in server.lines()


def test_an_awake_app_that_may_sleep_gets_the_plain_switch():
    server = Server()
    sleeping_kb(server, asleep=False)
    deploy.deploy_app(ctx(server, server_settings(), reg=registry(), tags=TAGS), SLEEPY, image="sha256:new")
    lines = server.lines()
    assert "docker stop --time 30 p-kb-1" in lines and not any("--no-start" in line for line in lines)


@pytest.mark.parametrize("entry_hash, switched", [("h1", False), ("h2", True)])
def test_the_same_image_is_switched_only_when_the_compose_entry_changed(entry_hash, switched):
    """A new label or limit (same image) is deployed through the switch; nothing changed: no switch."""
    server = switching(Server(), image="sha256:new")
    server.when("config --hash kb", f"kb {entry_hash}\n")
    server.when(lambda a: a[:3] == ["docker", "container", "inspect"] and "config-hash" in " ".join(a), "h1\n")
    entry = deploy.deploy_app(ctx(server, server_settings(), reg=registry(), tags=TAGS), KB, image="sha256:new")
    assert entry["result"] == ("ok" if switched else "ok (unchanged)")
    assert ("docker stop --time 30 p-kb-1" in server.lines()) == switched


@pytest.mark.parametrize("asleep_after_watch, result", [(True, "ok"), (False, "rolled-back")])
def test_a_sleep_enabled_app_that_falls_asleep_during_the_watch_is_no_failure(monkeypatch, asleep_after_watch,
                                                                              result):
    """The waker stopping an idle app during the watch is not a failed version; a stop without
    its flag is."""
    server = Server()
    containers = sleeping_kb(server, asleep=False)
    def flags(argv: list[str]) -> tuple[int, str, str]:
        return 0, "kb\n" if asleep_after_watch and containers.primary.startswith("exited") else "", ""

    server.when(["docker", "exec", "p-waker-1", "ls", "-1", "/var/lib/onevps/asleep"], answer=flags)

    def stopped_during_the_watch(*args, **kwargs) -> str:
        containers.set(primary="exited (0)")
        return "the new kb turned unhealthy (exited 0)"

    monkeypatch.setattr(watch, "watch", stopped_during_the_watch)
    srv = ctx(server, server_settings(), reg=registry(), tags=TAGS)
    if asleep_after_watch:
        assert deploy.deploy_app(srv, SLEEPY, image="sha256:new", watch_after=True)["result"] == result
    else:
        with pytest.raises(OnevpsError, match="failed the watch after the switch"):
            deploy.deploy_app(srv, SLEEPY, image="sha256:new", watch_after=True)


@pytest.mark.parametrize("mounts, reloads", [
    ("/etc/nginx/certs /var/www/acme /var/lib/onevps \n", True),
    ("/etc/nginx/certs /var/www/acme /run/onevps \n", False),  # made by an onevps before issue 24
])
def test_new_nginx_files_reload_nginx_only_where_its_state_volume_is_where_they_need_it(mounts, reloads):
    """The routes log to sleep.STATE_DIR/access.log: an nginx container from before the state
    volume moved there would fail `nginx -t`; the deploy says to run `fab setup` instead."""
    server = Server()
    server.when(lambda a: a[:3] == ["docker", "container", "inspect"] and "{{.State.Running}}" in a, "true\n")
    server.when(lambda a: a[:3] == ["docker", "container", "inspect"] and "{{range .Mounts}}" in a[4], mounts)
    srv = ctx(server, server_settings())
    plan = remote.SyncPlan(send=["nginx/templates/apps.conf.template"], delete=[], bytes=1)
    if reloads:
        deploy.reload_nginx_if_changed(srv, plan)
    else:
        with pytest.raises(OnevpsError) as err:
            deploy.reload_nginx_if_changed(srv, plan)
        assert "nginx on the server has no /var/lib/onevps" in err.value.message
        assert "fab setup" in err.value.message
    reloaded = [c for c in server.commands() if "exec" in c and "nginx" in c]
    assert bool(reloaded) == reloads
    assert server.commands()[:2] == ["docker container inspect --format '{{.State.Running}}' p-nginx-1",
                                     "docker container inspect --format '{{range .Mounts}}{{.Destination}} {{end}}' "
                                     "p-nginx-1"]
    untouched = Server()
    deploy.reload_nginx_if_changed(ctx(untouched, server_settings()), remote.SyncPlan(["apps/kb/main.py"], [], 1))
    assert untouched.commands() == []  # no nginx file changed: nothing asked


def test_rollback():
    server = switching(Server(), image="sha256:new")
    journal = [{"app": "kb", "result": "ok", "image": "sha256:old", "previous_image": None},
               {"app": "kb", "result": "ok", "image": "sha256:new", "previous_image": "sha256:old"}]
    server.when(["cat", "/srv/apps/.onevps/journal.jsonl"], "".join(json.dumps(e) + "\n" for e in journal))
    server.when(["docker", "image", "inspect", "--format", "{{.Id}}"], "sha256:old\n")
    deploy.rollback(ctx(server, server_settings(), reg=registry(), tags=TAGS), "kb")
    assert_golden("rollback", server.lines())


def test_a_deploy_whose_watch_fails_rolls_back_by_itself(monkeypatch):
    """The watch's reason goes in the deploy's journal entry (result rolled-back); the previous
    image comes back with the same switch, journaled as an automatic rollback; exit non-zero."""
    reason = "the new kb answered 7 of 40 requests (17.5%) with 5xx, above DEPLOY_WATCH_5XX=5%"
    watched = []
    monkeypatch.setattr(watch, "watch", lambda srv, app, container, seconds, threshold, say, address:
                        watched.append((app, container, seconds, threshold, address)) or reason)
    server = switching(Server(), image="sha256:old")
    with pytest.raises(OnevpsError) as err:
        deploy.deploy_app(ctx(server, server_settings(), reg=registry(), tags=TAGS), KB, image="sha256:new",
                          watch_after=True)
    assert err.value.what == f"the new kb failed the watch after the switch ({reason}); it was rolled back to sha256:old"
    assert watched == [("kb", "p-kb-1", 30, 5.0, "10.9.0.12")]  # once: the rollback is not watched
    assert_golden("deploy-watch-rolls-back", server.lines())


def test_setup_after_provisioning(tmp_path, monkeypatch):
    report = type("Report", (), {"docker_usable": True, "memory": None})()
    monkeypatch.setattr(provision, "provision", lambda host, install, path, swap=None: report)
    monkeypatch.setattr(provision, "memory_warning", lambda memory: None)
    env = tmp_path / "vps.env"
    env.write_text("DOMAIN=example.com\n")
    local = dataclasses.replace(local_settings(), vps_env_file=env)
    server = Server()
    server.when(["sh", "-c", shell.HASHES], answer=lambda argv: (0, same_files(argv[5:]), ""))
    server.when(["docker", "info", "--format", "{{.DockerRootDir}}"], "/var/lib/docker\n")
    server.when(["df", "-P", "-m"], "Filesystem 1048576-blocks Used Available Capacity Mounted on\n"
                                    "/dev/sda1 100000 1000 90000 2% /\n")
    server.when(["docker", "image", "inspect", "--format", "{{.Id}}"], code=1)  # no tier yet
    server.when(["docker", "image", "inspect", "--format", "{{.Id}}", f"onevps/base:{TAGS['BASE_TAG']}"], "sha256:b\n")
    server.when(["test", "-d"], code=1)
    # Redis answers each command onevps reads to it (from the private file it uploaded) with OK.
    server.when(lambda a: a[-1:] == ["redis-cli"],
                answer=lambda a: (0, "OK\n" * len(server.files[a[4] + ".onevps-tmp"].decode().splitlines()), ""))
    server.when(lambda a: a[-3:] == ["redis-cli", "ACL", "USERS"], "default\n")
    rs = server_settings(REDIS_PASSWORD="a-good-server-secret-0123456789", CHROMA_TOKEN="a-good-server-token-0123456789")
    deploy.setup(ctx(server, rs, local=local, reg=registry(), tags=TAGS))
    # Every secret went to the server in a file of mode 600, none on a command line.
    assert not any("a-good-server" in line for line in server.lines())
    assert_golden("setup-after-provision", server.lines())


def same_files(dirs: list[str]) -> str:
    """`sha256sum` lines of the local files under dirs: the server has them all already."""
    files = remote.local_files(ROOT, dirs, wheels=dirs == [remote.WHEEL_DIR])
    return "".join(f"{remote.sha256(path)}  {rel}\n" for rel, path in files.items())


def test_prune():
    """Five kb images (the newest is latest) on the base tier: the oldest beyond PRUNE_KEEP go."""
    images = [{"Id": f"sha256:kb{n}",
               "RepoTags": [f"onevps/kb:deploy-2026010{n}000000"] + (["onevps/kb:latest"] if n == 5 else []),
               "Created": f"2026-01-0{n}T00:00:00Z", "RootFS": {"Layers": ["sha256:l-base", f"sha256:l-kb{n}"]}}
              for n in range(1, 6)]
    images.append({"Id": "sha256:base", "RepoTags": [f"onevps/base:{TAGS['BASE_TAG']}", "onevps/base:latest"],
                   "Created": "2025-12-01T00:00:00Z", "RootFS": {"Layers": ["sha256:l-base"]}})
    server = Server()
    server.when(["docker", "image", "ls"], "".join(t + "\n" for i in images for t in i["RepoTags"]))
    server.when(["docker", "image", "inspect"], json.dumps(images))
    server.when(["docker", "system", "df"], (FIXTURES / "df-28.2.json").read_text())
    deploy.prune_server(ctx(server, server_settings(), reg=registry(), tags=TAGS))
    assert_golden("prune", server.lines())


def test_certs():
    server = Server()
    server.when(["docker", "container", "inspect", "--format", "{{.State.Running}}", "p-nginx-1"], "true\n")
    server.when("openssl x509", "notAfter=Apr  1 00:00:00 2026 GMT\n")
    certs.certs(ctx(server, server_settings(), reg=registry(), tags=TAGS))
    assert_golden("certs", server.lines())


def test_restore(tmp_path):
    path = archive(tmp_path, ["redis-data", "nginx-certs"])
    server = Server()
    backup.restore(ctx(server, server_settings(), reg=registry(), tags=TAGS), path, with_env=True)
    assert_golden("restore", server.lines())


def test_the_wait_script_is_its_golden_file_and_the_recipes_only_name_it():
    """The one place the shared wait script's text is compared; the recipe goldens say WAIT_SCRIPT."""
    compare("wait-script.sh", WAIT_READY + "\n", what="the script's lines")
    recipes = [path.read_text() for path in sorted(GOLDEN.glob("*.txt"))]
    assert any(WAIT_SCRIPT in text for text in recipes)
    assert not any(WAIT_READY in text for text in recipes)


def test_two_steps_swapped_fail_the_comparison(monkeypatch):
    monkeypatch.delenv("ONEVPS_UPDATE_GOLDEN", raising=False)  # regenerating must not write the swapped list
    server = switching(Server())
    switch.switch(ctx(server, server_settings(), tags=TAGS), KB, "sha256:new")
    lines = server.lines()
    stop, start = lines.index(next(x for x in lines if x.startswith("docker stop --time 30 p-kb-1"))), None
    start = lines.index(next(x for x in lines if " up --detach" in x))
    lines[stop], lines[start] = lines[start], lines[stop]
    with pytest.raises(AssertionError, match="the commands differ from switch.txt"):
        assert_golden("switch", lines)
