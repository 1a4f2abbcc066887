"""`fab` against a real sshd on 127.0.0.1: the "VPS" is this machine, reached
over real SSH; its stack is a Compose project of its own. The server is the
shared test server (server.py): set up and deployed once for this module,
test_secrets and test_sleep, and every task run here is also a leak test.

The local side is a temporary copy of the repository, so code changes made
by these tests never touch the working tree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

import onevps
from onevps import config, deploy, isolation, registry
from onevps.project import Project
from tests import loadgen, tarcraft

from .conftest import docker, file_text, http
from .leakcheck import SECRETS, archive_leaks, assert_slot_env_file_used, check, cli, watch
from .server import NETWORK_PREFIX, PROJECT, SERVER_ENV, Server, fab, set_version

pytestmark = [pytest.mark.docker, pytest.mark.server, pytest.mark.ordered]


@pytest.fixture(scope="module")
def repo(vps):
    return vps


def containers() -> dict[str, tuple[str, str]]:
    ids = docker("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={PROJECT}").split()
    out = docker("inspect", "--format", "{{.Name}} {{.Id}} {{.State.StartedAt}}", *ids) if ids else ""
    return {n.lstrip("/"): (i, s) for n, i, s in (line.split() for line in out.splitlines())}


def leftover_slots() -> list[str]:
    """This project's deploy slot containers (other test projects may run beside it)."""
    return [n for n in docker("ps", "--all", "--format", "{{.Names}}").split()
            if n.startswith(PROJECT + "-") and n.endswith("-next")]


def journal(repo) -> list[dict]:
    path = repo["vps"] / ".onevps" / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def server_files(repo) -> dict[str, bytes]:
    root = repo["vps"]
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def Load(app: str) -> loadgen.Load:
    """A steady stream of requests through the server's nginx on 127.0.0.1 to one app."""
    return loadgen.Load(Server.http_port, f"{app}.{Server.domain}", threads=3)


# ------------------------------------------------------------------ tests --

def test_setup_makes_the_server_ready_and_is_idempotent(repo):
    res = repo["first_runs"][0]  # the server's first `fab setup` (server.start; watched for leaks)
    assert res.returncode == 0, res.output
    assert "the server is ready" in res.stdout
    assert "unknown key LEAKCHECK_API_KEY" in res.stderr  # the key is named, its value never
    env_file = repo["vps"] / ".env"
    # The settings as written, then each app's own Redis password and Chroma token (derived).
    text = env_file.read_text()
    assert text.startswith(SERVER_ENV + deploy.ENV_MARK), "the server's .env does not begin with VPS_ENV_FILE"
    derived = dict(line.split("=", 1) for line in text[len(SERVER_ENV + deploy.ENV_MARK):].splitlines())
    apps = registry.load(Project(repo["vps"]).compose_file).names()
    names = [isolation.env_name(s, a) for a in apps for s in ("redis", "chroma")]
    assert sorted(derived) == sorted(names)
    assert all(len(v) == 64 for v in derived.values())
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert (repo["vps"] / "compose" / "docker-compose.yml").is_file()
    again = fab(repo, "setup")
    assert again.returncode == 0, again.stderr
    assert "sent 0 changed file(s), 0 bytes" in again.stdout


def test_first_deploy_of_everything(repo):
    res = repo["first_runs"][1]  # `fab deploy --all` right after the first setup (server.start)
    assert res.returncode == 0, res.output
    assert "portfolio has no container yet: starting it" in res.stdout
    assert len(containers()) == 14  # 7 apps, nginx, chroma-auth, chromadb, redis, ollama, waker, docker-proxy
    for app in ("portfolio", "kb", "embedder"):
        assert http(Server, app, "/health").json()["app"] == app


def test_deploy_a_code_change_under_load_fails_no_request(repo):
    before = containers()
    set_version(repo, "portfolio", "v2")
    with Load("portfolio") as load:
        res = fab(repo, "deploy", "--app=portfolio")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert load.failed == 0, load.summary()
    assert load.total_of("GET") > 100 and load.total_of("POST") > 100, load.summary()
    assert "dev" in load.versions and load.versions[-1] == "v2"  # responses switched to the new version
    assert "sent 1 changed file(s)" in res.stdout
    assert_slot_env_file_used(repo, res)  # the new version's environment came from a 600 file
    # The timeline: each step with its seconds, printed and in the journal.
    for step in ("connect", "checks", "send", "build", "start", "healthy", "switch", "home", "drain", "cleanup",
                 "watch"):
        assert f"  [timeline] {step} " in res.stdout, step
    entry = journal(repo)[-1]
    assert entry["result"] == "ok" and {"build", "healthy", "switch", "watch"} <= set(entry["steps"]), entry
    assert 0 < entry["switched_after"] < entry["seconds"] + 60
    assert "13 other containers kept their ID and start time" in res.stdout
    after = containers()
    name = f"{PROJECT}-portfolio-1"
    assert after[name][0] != before[name][0]
    assert {k: v for k, v in after.items() if k != name} == {k: v for k, v in before.items() if k != name}
    assert not leftover_slots()


def test_a_crashing_version_is_removed_and_the_old_one_keeps_serving(repo):
    path = repo["root"] / "apps" / "portfolio" / "main.py"
    before = containers()
    with file_text(path, lambda good: good + '\nraise SystemExit("boom: this version crashes on start")\n'):
        with Load("portfolio") as load:
            res = fab(repo, "deploy", "--app=portfolio")
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]  # the build's own output streams above it
    assert last.startswith("error: the new portfolio did not become healthy") and "old version keeps serving" in last
    assert "Traceback" not in res.stderr
    assert "boom: this version crashes on start" in res.stdout  # the new container's last log lines
    assert load.failed == 0, load.summary()
    assert set(load.versions) == {"v2"}
    assert containers() == before
    assert not leftover_slots()


def test_two_deploys_at_once_one_is_refused(repo):
    """Both runs under one watch, checked for leaks once both ended (the slot env file of
    the first exists, by design, while the second runs)."""
    set_version(repo, "kb", "kb-v2")
    runs: list = []
    with watch(repo) as watching:
        first = threading.Thread(target=lambda: runs.append(
            cli(repo, "fab", "deploy", "--app=kb", scenario="first of two deploys", watching=watching)))
        first.start()
        lock = repo["vps"] / ".onevps" / "deploy.lock" / "holder"
        while not lock.exists() and first.is_alive():
            time.sleep(0.1)
        assert lock.exists(), "the first deploy never took the lock"
        second = cli(repo, "fab", "deploy", "--app=portfolio", scenario="second of two deploys", watching=watching)
        first.join()
    assert runs and runs[0].returncode == 0, runs[0].output if runs else "the first deploy failed (see above)"
    check(repo, runs[0])
    check(repo, second)
    assert second.returncode == 1
    assert second.err.startswith("error: another deploy is running: the deploy lock is held by ")
    assert "since 20" in second.stderr and "deploy kb" in second.stderr
    assert http(Server, "kb", "/health").json()["version"] == "kb-v2"


def test_a_stale_lock_is_refused_until_unlock(repo):
    lock = repo["vps"] / ".onevps" / "deploy.lock"
    lock.mkdir(parents=True)
    (lock / "holder").write_text(json.dumps({"holder": "alice@laptop", "since": "2026-01-01T00:00:00+0000",
                                             "what": "deploy kb"}))
    res = fab(repo, "deploy", "--app=kb")
    assert res.returncode == 1
    assert "held by alice@laptop since 2026-01-01T00:00:00+0000" in res.stderr
    res = fab(repo, "unlock")
    assert res.returncode == 0 and "removed the deploy lock held by" in res.stdout
    assert not lock.exists()


def test_rollback_returns_the_previous_image_without_failed_requests(repo):
    with Load("portfolio") as load:
        res = fab(repo, "rollback", "--app=portfolio")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert "building" not in res.stdout  # no rebuild
    assert_slot_env_file_used(repo, res)
    assert load.failed == 0, load.summary()
    assert load.versions[0] == "v2" and load.versions[-1] == "dev"
    hist = fab(repo, "history", "--app=portfolio")
    assert hist.returncode == 0
    rows = [line.split() for line in hist.stdout.splitlines()[1:]]
    assert [r[4] for r in rows] == ["deploy", "deploy", "deploy", "rollback"]
    assert [r[-1] for r in rows][-1] == "ok" and rows[2][-1] == "failed"


def test_dry_run_changes_nothing(repo):
    set_version(repo, "portfolio", "v3")
    before_ids, before_files = containers(), server_files(repo)
    res = fab(repo, "deploy", "--app=portfolio", "--dry-run")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert "[dry-run] send apps/portfolio/main.py" in res.stdout
    assert "[dry-run] would replace the container of portfolio" in res.stdout
    assert any(line.startswith("[dry-run] env BASE_TAG=") and " docker compose " in line and " build portfolio" in line
               for line in res.stdout.splitlines())
    assert containers() == before_ids
    assert server_files(repo) == before_files
    assert http(Server, "portfolio", "/health").json()["version"] == "dev"


def test_a_build_is_refused_when_the_server_disk_is_too_full(repo):
    """Less free room than BUILD_FREE_MB: one line naming the need and `fab prune`; nothing changes."""
    main_py = repo["root"] / "apps" / "portfolio" / "main.py"
    code = main_py.read_text()
    set_version(repo, "portfolio", "v4")
    env_file = repo["root"] / ".env.vps"
    before_ids, before_files = containers(), server_files(repo)
    env_file.write_text(SERVER_ENV + "BUILD_FREE_MB=900000000\n")
    try:
        res = fab(repo, "deploy", "--app=portfolio")
    finally:
        env_file.write_text(SERVER_ENV)
        main_py.write_text(code)
    assert res.returncode == 1
    lines = res.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert re.match(r"error: only [0-9,]+ MB free on the server's Docker disk \(/\S+\); building 1 app needs about "
                    r"900,000,000 MB \(hint: `fab prune` ", lines[0]), lines[0]
    assert containers() == before_ids
    assert server_files(repo) == before_files
    assert http(Server, "portfolio", "/health").json()["version"] == "dev"


def test_fab_disk_reports_the_server_images(repo):
    res = fab(repo, "disk", "--json")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    data = json.loads(res.stdout)
    assert [a["app"] for a in data["apps"]] == ["portfolio", "chatbot", "kb", "api-gw", "embedder", "classify",
                                                "summary"]
    assert all(0 < a["own"] < 5_000_000 for a in data["apps"]) and data["over_budget"] == []
    assert data["savings_ratio"] > 1 and data["free_mb"] > 0 and data["docker_root"].startswith("/")
    assert all(r["image"].startswith(f"{PROJECT}/") for r in data["images"])
    res = fab(repo, "disk", "--budget=0.001")
    assert res.returncode == 1
    assert res.stdout.splitlines()[0].split() == ["IMAGE", "SIZE", "UNIQUE", "SHARED"]
    assert "free on the server's Docker disk" in res.stdout
    assert res.err.startswith("error: over the 0.001 MB budget: portfolio, chatbot")
    res = fab(repo, "disk", "--budget=nope", env={"VPS_PORT": "1"})  # refused before connecting
    assert res.returncode == 1 and res.err.startswith("error: --budget=nope is not a positive number of MB")


def test_status_logs_and_user_errors(repo):
    res = fab(repo, "status")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split() == ["CONTAINER", "STATE", "HEALTH", "IMAGE", "AGE", "MEMORY"]
    assert f"{PROJECT}-portfolio-1" in res.stdout and "healthy" in res.stdout
    res = fab(repo, "logs", "--app=portfolio", "--tail=5")
    assert res.returncode == 0 and "portfolio" in res.stdout
    res = fab(repo, "deploy", "--app=nope")
    assert res.returncode == 1
    assert res.err == ("error: unknown app 'nope' (hint: known apps: portfolio, chatbot, kb, api-gw, "
                                  "embedder, classify, summary)")
    res = fab(repo, "status", env={"VPS_PORT": "1"})
    assert res.returncode == 1
    assert res.err.startswith("error: cannot reach root@127.0.0.1:1") and "Traceback" not in res.stderr
    assert len(res.err.splitlines()) == 1


def test_backup_and_restore_round_trip(repo):
    def kv(value=None):
        if value is None:
            return http(Server, "api-gw", "/kv/backup-check").json()["value"]
        assert http(Server, "api-gw", "/kv/backup-check", "POST", {"value": value}).status == 200

    def kb_count():
        return http(Server, "kb", "/documents/count").json()["count"]

    kv("before")
    assert http(Server, "kb", "/documents", "POST", {"id": "kept", "text": "kept in the backup"}).status == 201
    count = kb_count()
    res = fab(repo, "backup")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    archive = Path(res.stdout.split("downloaded ", 1)[1].split(" (", 1)[0])
    assert archive.is_file() and oct(archive.stat().st_mode & 0o777) == "0o600"
    assert not archive_leaks(archive, "the downloaded backup")  # the server's .env is in ./env only
    with tarfile.open(archive) as tar:
        assert SECRETS["REDIS_PASSWORD"].encode() in tar.extractfile("./env").read()  # type: ignore[union-attr]

    kv("after")  # change the data
    assert http(Server, "kb", "/documents", "POST", {"id": "lost", "text": "written after the backup"}).status == 201
    assert kb_count() == count + 1

    res = fab(repo, "restore", str(archive))  # no terminal, no --yes: refused, nothing changes
    assert res.returncode == 1 and "add --yes" in res.stderr and kv() == "after"
    res = fab(repo, "restore", str(archive), "--yes")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert kv() == "before" and kb_count() == count

    res = fab(repo, "deploy", "--all")  # data lives in volumes: a redeploy of every app keeps it
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert kv() == "before" and kb_count() == count

    res = fab(repo, "restore", "/etc/hostname", "--yes")
    assert res.returncode == 1
    assert res.err == ("error: /etc/hostname is not an onevps backup archive "
                                  "(hint: give a file made by `fab backup`)")


def test_a_crafted_archive_is_refused_and_the_volume_stays_byte_identical(repo, tmp_path):
    """Issue 24, item 5, with the archives of the attack: `fab restore` refuses each before it
    connects; were that check skipped, the server's helper (the base image's Python, running
    the same onevps/tarcheck.py) refuses it too; the volume is the same, byte for byte."""
    volume = f"{PROJECT}_nginx-certs"  # nothing writes to it while the test runs (Redis would)
    image = f"{PROJECT}/base:latest"

    def snapshot() -> str:
        return docker("run", "--rm", "--network", "none", "--volume", f"{volume}:/data:ro", image, "sh", "-c",
                      "cd /data && find . -printf '%p %y %m %U %G %s %l\\n' | sort && "
                      "find . -type f -exec sha256sum {} + | sort")

    before = snapshot()
    assert "./" in before  # the volume has data (the self-signed certificate)
    (tmp_path / "tarcheck.py").write_text((Path(onevps.__file__).parent / "tarcheck.py").read_text())
    for i, (name, inner) in enumerate(tarcraft.crafted_volumes().items()):
        path = tmp_path / f"crafted-{i}.tar"
        tarcraft.backup_archive(path, "nginx-certs", inner)
        res = fab(repo, "restore", str(path), "--yes")
        assert res.returncode == 1 and "nothing was restored" in res.err and len(res.err.splitlines()) == 1, (
            name, res.stdout[-2000:] + res.stderr)
        (tmp_path / f"inner-{i}.tar.gz").write_bytes(inner)
        helper = subprocess.run(["docker", "run", "--rm", "--network", "none", "--volume", f"{volume}:/data",
                                 "--volume", f"{tmp_path}:/backup:ro", image, "python3", "/backup/tarcheck.py",
                                 "restore", f"/backup/inner-{i}.tar.gz", "/data"],
                                capture_output=True, text=True, timeout=300)
        assert helper.returncode == 3 and helper.stderr.startswith("refused: "), (name, helper.stderr)
        print(f"\n{name}: fab restore: {res.err}\n  the server's helper: {helper.stderr.strip()}")
        assert snapshot() == before, name


@pytest.fixture
def broken_step_3(repo, monkeypatch):
    """Break step 3 of the switch on purpose: while the old container is stopped, another
    container takes the app's address, so `compose up` of the app fails (address in use)
    and the new version is left serving from the deploy slot. Returns a function that
    runs a real deploy or rollback in this process with that failure."""
    from onevps import deploy as recipes
    from onevps import server, switch
    from onevps.errors import OnevpsError

    real = switch.start_primary
    squatter = f"{PROJECT}-squatter"

    def take_the_address(c, app, service):
        docker("run", "--detach", "--name", squatter, "--network", f"{PROJECT}_app-network",
               "--ip", c.rs.address(app.host), "python:3.11-slim", "sleep", "600")
        real(c, app, service)

    def run(recipe: str, **kw) -> str:
        here = Project(repo["root"])
        local = config.load(here, environ={**os.environ, **repo["env"]})
        ctx = server.open_ctx(here, local, None, dry_run=False, secrets=True)
        monkeypatch.setattr(switch, "start_primary", take_the_address)
        try:
            with pytest.raises(OnevpsError) as err:
                getattr(recipes, recipe)(ctx, **kw)
        finally:
            monkeypatch.setattr(switch, "start_primary", real)
            subprocess.run(["docker", "rm", "--force", squatter], capture_output=True)
            ctx.conn.close()
        return err.value.message

    yield run
    subprocess.run(["docker", "rm", "--force", squatter], capture_output=True)


def _running(name: str) -> bool:
    return subprocess.run(["docker", "inspect", "--format", "{{.State.Running}}", name],
                          capture_output=True, text=True).stdout.strip() == "true"


def test_a_switch_broken_at_step_3_is_mended_by_the_next_deploy_and_rollback(repo, broken_step_3):
    """The slot left serving is the only container of the app: the next deploy (then a
    rollback, after another break) starts the app at its address before the slot goes."""
    app, slot = f"{PROJECT}-portfolio-1", f"{PROJECT}-portfolio-next"
    set_version(repo, "portfolio", "s3-a")
    with Load("portfolio") as load:
        message = broken_step_3("deploy", app="portfolio")
    assert "keeps serving from the deploy slot" in message, message
    assert _running(slot) and not _running(app)  # the state step 3 leaves behind
    assert load.failed == 0, load.summary()
    assert http(Server, "portfolio", "/health").json()["version"] == "s3-a"  # from the slot

    with Load("portfolio") as load:
        res = fab(repo, "deploy", "--app=portfolio")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert "serves portfolio (an earlier switch stopped before its step 3)" in res.stdout
    assert load.failed == 0, load.summary()
    assert _running(app) and not subprocess.run(["docker", "inspect", slot], capture_output=True).returncode == 0
    assert http(Server, "portfolio", "/health").json()["version"] == "s3-a"

    set_version(repo, "portfolio", "s3-b")
    with Load("portfolio") as load:
        message = broken_step_3("deploy", app="portfolio")
        assert _running(slot) and not _running(app)
        assert http(Server, "portfolio", "/health").json()["version"] == "s3-b"
        res = fab(repo, "rollback", "--app=portfolio")
    assert "keeps serving from the deploy slot" in message, message
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert load.failed == 0, load.summary()
    assert _running(app) and not subprocess.run(["docker", "inspect", slot], capture_output=True).returncode == 0
    assert load.versions[-1] == "s3-a"
    set_version(repo, "portfolio", "dev")


def test_a_version_failing_after_the_switch_is_rolled_back_by_the_watch(repo):
    """A version that starts and answers its health check but fails (500) on one route: the
    watch sees its 5xx share in nginx's log, rolls back by itself with the same switch (no
    failed request on the other routes), exits non-zero, and the journal says why."""
    path = repo["root"] / "apps" / "portfolio" / "main.py"
    good = path.read_text()
    before = http(Server, "portfolio", "/health").json()["version"]
    set_version(repo, "portfolio", "fails-on-report")
    path.write_text(path.read_text() + '\n\n@app.get("/api/report")\ndef report():\n'
                    '    raise RuntimeError("this version fails on /api/report")\n')
    env_file = repo["root"] / ".env.vps"
    env_file.write_text(SERVER_ENV.replace("DEPLOY_WATCH=2", "DEPLOY_WATCH=30"))
    report = loadgen.Load(Server.http_port, f"portfolio.{Server.domain}", path="/api/report", threads=1,
                          post_path=None)
    try:
        with Load("portfolio") as load, report:
            res = fab(repo, "deploy", "--app=portfolio")
    finally:
        path.write_text(good)
        env_file.write_text(SERVER_ENV)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the new portfolio failed the watch after the switch (the new portfolio "
                           "answered "), last
    assert "with 5xx, above DEPLOY_WATCH_5XX=5%); it was rolled back to sha256:" in last, last
    assert "Traceback" not in res.stderr
    assert report.status[500] > 0, report.summary()  # the new version did fail there
    assert load.failed == 0, load.summary()  # deploy, watch and the rollback by itself: no failed request
    assert load.versions[-1] == before and "fails-on-report" in load.versions
    assert http(Server, "portfolio", "/health").json()["version"] == before
    deployed, rolled = journal(repo)[-2:]
    assert deployed["action"] == "deploy" and deployed["result"] == "rolled-back", deployed
    assert "5xx" in deployed["error"] and "watch" in deployed["steps"], deployed
    assert rolled["action"] == "rollback" and rolled["result"] == "ok", rolled
    assert rolled["why"].startswith("automatic, after the watch: ") and rolled["image"] == deployed["previous_image"]
    assert not leftover_slots()


def _served_certificate(name: str) -> str:
    """Issuer and names of the certificate nginx presents on 127.0.0.1 for `name`."""
    pem = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{Server.https_port}", "-servername", name],
                         input="", capture_output=True, text=True, timeout=30).stdout
    return subprocess.run(["openssl", "x509", "-noout", "-issuer", "-ext", "subjectAltName"], input=pem,
                          capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def pebble(repo, tmp_path):
    """Let's Encrypt's test ACME server (Debian's pebble) on the server's network.
    Its DNS (pebble-challtestsrv) answers every name with nginx's address, so
    HTTP-01 validation goes to nginx on port 80, container to container."""
    d = tmp_path / "pebble"
    d.mkdir()
    ip = f"{NETWORK_PREFIX}.9"  # free: shared services take .2-.7, apps .10 and up
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-newkey", "rsa:2048", "-days", "2", "-subj", "/CN=pebble",
                    "-addext", f"subjectAltName=IP:{ip},DNS:pebble", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    (d / "config.json").write_text(json.dumps({"pebble": {
        "listenAddress": "0.0.0.0:14000", "managementListenAddress": "0.0.0.0:15000",
        "certificate": "/pebble/cert.pem", "privateKey": "/pebble/key.pem",
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    name = f"{PROJECT}-pebble"
    docker("rm", "--force", name)
    docker("run", "--detach", "--name", name, "--network", f"{PROJECT}_app-network", "--ip", ip,
           "--env", f"NGINX_IP={NETWORK_PREFIX}.2", "--env", "PEBBLE_WFE_NONCEREJECT=0",
           "--volume", f"{d}:/pebble:ro", "onevps-standin/pebble:2.4.0")
    deadline = time.time() + 30
    while "Listening on: 0.0.0.0:14000" not in docker("logs", name) + subprocess.run(
            ["docker", "logs", name], capture_output=True, text=True).stderr:
        assert time.time() < deadline, "pebble did not start"
        time.sleep(0.5)
    yield {"server": f"https://{ip}:14000/dir", "ca": d / "cert.pem"}
    docker("rm", "--force", name)


def test_certs_come_from_acme_through_nginx_and_renewal_is_scheduled(repo, pebble, tmp_path):
    assert "Pebble" not in _served_certificate("portfolio.onevps.test")  # self-signed until now
    cron = tmp_path / "onevps-certs.cron"
    with open(repo["root"] / ".env.vps", "a") as fh:
        fh.write(f"ACME_SERVER={pebble['server']}\nACME_CA_BUNDLE={pebble['ca']}\nCERT_CRON_FILE={cron}\n")
    # Installing the certificate reloads nginx, which closes every idle keep-alive connection:
    # a request crossing that close is sent again on a new connection, as browsers do.
    with loadgen.Load(Server.http_port, f"portfolio.{Server.domain}", threads=3, resend_on_idle_close=True) as load:
        res = fab(repo, "certs")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert load.failed == 0, load.summary()
    assert "tested with `nginx -t` and serving" in res.stdout
    served = _served_certificate("portfolio.onevps.test")
    assert "Pebble" in served  # issued by the ACME server, not self-signed
    for name in ["onevps.test"] + [f"{a}.onevps.test" for a in ("portfolio", "chatbot", "kb", "api-gw",
                                                                 "embedder", "classify", "summary")]:
        assert f"DNS:{name}" in served
    assert cron.read_text().startswith("# onevps") and "renew-certs.sh" in cron.read_text()
    renew = repo["vps"] / ".onevps" / "renew-certs.sh"
    assert "certbot renew" in renew.read_text() and os.access(renew, os.X_OK)
    # What cron runs, with cron's bare environment (not this test's settings).
    res = subprocess.run(["sh", str(renew)], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
    assert res.returncode == 0, res.stdout[-1000:] + res.stderr[-1000:]
    assert "Pebble" in _served_certificate("kb.onevps.test")
    assert http(Server, "kb", "/health", https=True).json()["app"] == "kb"


def test_https_redirect_and_hsts_when_switched_on(repo):
    with open(repo["root"] / ".env.vps", "a") as fh:
        fh.write("HTTPS_REDIRECT=on\n")
    res = fab(repo, "setup")  # applies the changed .env to nginx
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    plain = http(Server, "portfolio", "/health?x=1")
    assert plain.status == 301 and plain.headers["location"] == "https://portfolio.onevps.test/health?x=1"
    secure = http(Server, "portfolio", "/health", https=True)
    assert secure.status == 200 and secure.headers["strict-transport-security"].startswith("max-age=63072000")
    challenge = http(Server, "portfolio", "/.well-known/acme-challenge/none")
    assert challenge.status == 404  # challenges are answered on plain HTTP, never redirected
    # Back to the server's settings for the tests that follow on this server: plain HTTP answers.
    (repo["root"] / ".env.vps").write_text(SERVER_ENV)
    res = fab(repo, "setup")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert http(Server, "portfolio", "/health").status == 200

