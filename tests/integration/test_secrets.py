"""Secrets never leak (issue 12): with unique secret values, every `fab` and
`inv` task that takes secrets runs, successfully and with injected failures
(slot start refused, health check failing, `nginx -t` failing, SSH dropped
mid-deploy, disk check refusing, broken secrets), and the values appear in
none of:

- the task's stdout and stderr;
- the commands it sent: every argv onevps ran, every command string sent over
  SSH and every local process it started (recording_cli.py records them);
- the argv of any process on the server while it ran: /proc/*/cmdline scanned
  continuously and `ps -ww -eo args` every 0.1 s (the server is this machine,
  reached over a real sshd on 127.0.0.1), and, deterministically, the command
  lines the server's containers were started with (`docker inspect`: Path,
  Args, Entrypoint, Cmd, health check), which `ps` shows while they start;
- the server's files under VPS_PATH other than `.env` (journal, lock holder,
  compose files...; a backup archive only in its `env` member), walked after
  every task; the deploy slot's env file must be gone after every task, and
  whenever it or the server's `.env` is read by a command it is mode 600.

A value is shown in the failure messages as <SECRET:NAME>, with where it was
seen. The server's stack is a Compose project of its own (onevps-secrets).
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from onevps import config, registry, tiers
from onevps.project import Project

from .conftest import clear_compose_project, copy_repo, docker, file_text, http
from .sshd import SshdError, local_sshd

pytestmark = [pytest.mark.docker, pytest.mark.server, pytest.mark.ordered]

SSH_PORT = int(os.environ.get("ONEVPS_TEST_SECRETS_SSH_PORT", "2224"))
PROJECT = "onevps-secrets"
RECORDER = Path(__file__).with_name("recording_cli.py")

# Fresh values for every run, easy to spot, valid secrets (16+ of A-Za-z0-9_-).
SECRETS = {
    "REDIS_PASSWORD": "leakcheck-redis-" + secrets.token_urlsafe(24),
    "CHROMA_TOKEN": "leakcheck-chroma-" + secrets.token_urlsafe(24),
    # A key onevps does not know (a warning names it) but that is named like a secret.
    "LEAKCHECK_API_KEY": "leakcheck-apikey-" + secrets.token_urlsafe(24),
}
# Values of broken secrets, for the rejected-secret paths (they must not show either).
BROKEN = {
    "url-unsafe": "leakcheck+broken/url+" + secrets.token_urlsafe(18),  # characters a URL cannot take
    "unterminated": "leakcheck-broken-quote-" + secrets.token_urlsafe(18),  # an unterminated quote
    "colon": "leakcheck-broken-colon-" + secrets.token_urlsafe(18),  # `KEY: value`, no `=`
}
ALL_VALUES = {**SECRETS, **{f"broken {k}": v for k, v in BROKEN.items()}}

SERVER_ENV = f"""\
COMPOSE_PROJECT_NAME={PROJECT}
HTTP_PORT=18480
HTTPS_PORT=18843
NETWORK_PREFIX=172.26.0
CHROMA_SUBNET=172.26.1.0/28
IMAGE_NAMESPACE={PROJECT}
REDIS_PASSWORD={SECRETS["REDIS_PASSWORD"]}
CHROMA_TOKEN={SECRETS["CHROMA_TOKEN"]}
LEAKCHECK_API_KEY={SECRETS["LEAKCHECK_API_KEY"]}
DOMAIN=onevps.test
ACME_EMAIL=ops@onevps.test
PRUNE_ON_DEPLOY=off
DEPLOY_WATCH=2
"""
SQUATTER = f"{PROJECT}-squatter"


class Server:
    domain = "onevps.test"
    http_port = 18480
    https_port = 18843


# -------------------------------------------------------------- masking --

def mask(text: str) -> str:
    for name, value in ALL_VALUES.items():
        text = text.replace(value, f"<SECRET:{name}>")
    return text


def has_secret(text: str | bytes) -> bool:
    if isinstance(text, bytes):
        return any(v.encode() in text for v in ALL_VALUES.values())
    return any(v in text for v in ALL_VALUES.values())


def lines_with_secrets(text: str, where: str) -> list[str]:
    return [f"{where}: {mask(line)[:600]}" for line in text.splitlines() if has_secret(line)]


# ------------------------------------------------------- the process list --

class Watch:
    """While a task runs: every process's argv (/proc/*/cmdline, continuously,
    and `ps -ww -eo args` every 0.1 s) checked for the secrets, and the mode of
    the deploy slot's env file (and its upload temp file) whenever it exists."""

    def __init__(self, watched_files: list[Path]):
        self.watched_files = watched_files
        self.leaks: set[str] = set()
        self.modes: set[tuple[str, int]] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._scan_proc, daemon=True),
                         threading.Thread(target=self._sample_ps, daemon=True)]
        self._values = [v.encode() for v in ALL_VALUES.values()]

    def __enter__(self) -> "Watch":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _scan_proc(self) -> None:
        me = str(os.getpid())
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or entry.name == me:
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                        raw = fh.read()
                except OSError:
                    continue
                if any(v in raw for v in self._values):
                    args = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
                    self.leaks.add(f"argv of process {entry.name} (/proc): {mask(args)[:600]}")
            for path in self.watched_files:
                try:
                    self.modes.add((str(path), stat.S_IMODE(os.stat(path).st_mode)))
                except OSError:
                    pass
            self._stop.wait(0.02)

    def _sample_ps(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
            self.samples += 1
            for line in out.splitlines():
                if has_secret(line):
                    self.leaks.add(f"ps -ww -eo args: {mask(line)[:600]}")
            self._stop.wait(0.1)


# ------------------------------------------------------------------ sshd --

@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 (started here, so its connections may be dropped here)."""
    workdir = tmp_path_factory.mktemp("sshd")
    try:
        with local_sshd(workdir, SSH_PORT) as client_key:
            pid = int((workdir / "sshd.pid").read_text().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                assert str(workdir / "sshd_config").encode() in fh.read(), "sshd.pid names another process"
            yield {"key": client_key, "pid": pid}
    except SshdError as exc:
        pytest.fail(f"the secrets tests need a local sshd; they never skip: {exc}", pytrace=False)


def drop_ssh_connections(sshd) -> list[int]:
    """Kill the sshd processes serving the connections of the sshd started here
    (its children and their sshd children), as a dropped network would end them.
    The commands they ran are left alone; nothing else is touched."""
    def children(pid: int) -> list[int]:
        res = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        return [int(p) for p in res.stdout.split()]

    def is_sshd(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip().startswith("sshd")
        except OSError:
            return False

    serving = [p for p in children(sshd["pid"]) if is_sshd(p)]
    serving += [c for p in serving for c in children(p) if is_sshd(c)]
    for pid in serving:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return serving


# ------------------------------------------------------------ local copy --

@pytest.fixture(scope="module")
def repo(tmp_path_factory, built_images, settings, project, sshd):
    base = tmp_path_factory.mktemp("secrets")
    copy = base / "onevps"
    copy_repo(copy)
    for name in (".env.vps", ".env.local"):  # the server's settings; what the local `inv` tasks read
        (copy / name).write_text(SERVER_ENV)
        (copy / name).chmod(0o600)
    clear_compose_project(PROJECT)
    # The "server" shares this machine's engine: it gets the session's tier images under
    # the tags its own settings give them, as a server that ran `fab setup` before has them.
    server_settings = config.load(Project(copy), environ={}, env_file=copy / ".env.vps", warn=lambda msg: None)
    tags = tiers.tag_env(Project(copy), server_settings)
    for tier, tag in (("base", tags["BASE_TAG"]), ("ml", tags["ML_TAG"])):
        docker("tag", tiers.tier_image(project, settings, tier), f"{PROJECT}/{tier}:{tag}")
        docker("tag", tiers.tier_image(project, settings, tier), f"{PROJECT}/{tier}:latest")
    app = registry.load(copy / "compose" / "docker-compose.yml").get("portfolio")
    vps = base / "vps"
    env = {
        "VPS_HOST": "127.0.0.1", "VPS_PORT": str(SSH_PORT), "VPS_USER": "root", "VPS_SSH_KEY": str(sshd["key"]),
        "VPS_PATH": str(vps), "VPS_ENV_FILE": ".env.vps", "TORCH_WHEEL_DIR": "",
    }
    yield {"root": copy, "vps": vps, "env": env, "base": base, "sshd": sshd,
           "slot_ip": server_settings.address(app.slot_host),
           "slot_env": vps / ".onevps" / "portfolio.slot.env"}
    compose = vps / "compose" / "docker-compose.yml"
    if compose.exists():
        subprocess.run(["docker", "compose", "-p", PROJECT, "-f", str(compose), "--env-file", str(vps / ".env"),
                        "--profile", "*", "down", "--volumes", "--remove-orphans"], capture_output=True)
    clear_compose_project(PROJECT)
    refs = docker("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={PROJECT}/*").split()
    if refs:
        subprocess.run(["docker", "image", "rm", "--force", *refs], capture_output=True)


def set_version(repo, version: str) -> None:
    """Change portfolio's code: its default APP_VERSION."""
    path = repo["root"] / "apps" / "portfolio" / "main.py"
    text = path.read_text()
    new = re.sub(r'os\.getenv\("APP_VERSION", "[^"]*"\)', f'os.getenv("APP_VERSION", "{version}")', text)
    assert new != text or f'"{version}"' in text
    path.write_text(new)


def served_version() -> str:
    res = http(Server, "portfolio", "/health")
    assert res.status == 200, res
    return res.json()["version"]


# ------------------------------------------------------- running a task --

@dataclass(repr=False)
class Run:
    scenario: str
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    records: list[dict]
    watch: Watch
    started: str  # UTC, as docker writes State.StartedAt (to the second)
    dropped: list[int] = field(default_factory=list)

    def __repr__(self) -> str:  # what pytest shows of it: no raw output
        return f"Run({self.scenario!r}, {' '.join(self.argv)!r}, exit {self.returncode})"

    @property
    def output(self) -> str:
        return mask(self.stdout[-3000:] + "\n--- stderr ---\n" + self.stderr[-3000:])

    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


_counter = itertools.count()


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False


def server_runs(sshd, matches) -> bool:
    """Whether the sshd started here runs a command whose command line matches."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                raw = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if matches(raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")) \
                    and descends_from(int(entry.name), sshd["pid"]):
                return True
    return False


def watch(repo) -> Watch:
    slot = repo["slot_env"]
    return Watch([slot, slot.with_name(slot.name + ".onevps-tmp")])


def cli(repo, prog: str, *args: str, scenario: str, env: dict | None = None, drop_when=None,
        watching: Watch | None = None, timeout: float = 900) -> Run:
    """Run `fab`/`inv` ARGS through recording_cli.py in the repository copy, watched (see Watch).
    drop_when(command line) -> bool: drop the SSH connections as soon as the server runs a
    matching command (so the drop lands while that command runs)."""
    if watching is None:
        with watch(repo) as watching:
            return cli(repo, prog, *args, scenario=scenario, env=env, drop_when=drop_when, watching=watching,
                       timeout=timeout)
    record = repo["base"] / f"record-{next(_counter):03d}.jsonl"
    record.touch()
    if prog == "fab":
        full_env = {**os.environ, **repo["env"]}
    else:  # the local tasks read .env.local: the session's own settings and secrets stay out
        local_keys = {line.split("=", 1)[0] for line in SERVER_ENV.splitlines()}
        full_env = {k: v for k, v in os.environ.items() if k not in local_keys and not config.is_secret(k)}
        full_env["ONEVPS_ENV_FILE"] = str(repo["root"] / ".env.local")
    full_env.update(env or {})
    full_env["ONEVPS_RECORD_FILE"] = str(record)
    dropped: list[int] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    proc = subprocess.Popen([sys.executable, str(RECORDER), prog, *args], cwd=repo["root"], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if drop_when is not None:
        def dropper() -> None:
            while proc.poll() is None:
                if server_runs(repo["sshd"], drop_when):
                    dropped.extend(drop_ssh_connections(repo["sshd"]))
                    return
                time.sleep(0.005)

        thread = threading.Thread(target=dropper, daemon=True)
        thread.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its PID
        out, err = proc.communicate()
    if drop_when is not None:
        thread.join(timeout=30)
    records = [json.loads(line) for line in record.read_text().splitlines()]
    record.with_suffix(".out").write_text(mask(out) + "\n--- stderr ---\n" + mask(err))  # kept for a look later
    run = Run(scenario, [prog, *args], proc.returncode, out, err, records, watching, started, dropped)
    assert records and records[0]["kind"] == "start", f"{scenario}: the recorder did not start:\n{run.output}"
    assert records[0]["onevps"].startswith(str(repo["root"])), records[0]  # the copy's code ran
    return run


def cli_many(repo, calls: list[tuple], scenario: str) -> list[Run]:
    """Several independent tasks at once, (prog, args, env) each, under one Watch; then checked."""
    with watch(repo) as watching, ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(cli, repo, prog, *args, scenario=scenario, env=env, watching=watching)
                   for prog, args, env in calls]
        runs = [f.result() for f in futures]
    found = {id(run): leaks(repo, run) for run in runs}  # every task's, then one failure naming them all
    assert not any(found.values()), "secret values seen:\n  " + "\n  ".join(sum(found.values(), [])) + "".join(
        f"\n\ntask output of {run}:\n{run.output}" for run in runs if found[id(run)])
    assert watching.samples > 0, "the process list was never sampled"
    return runs


# ------------------------------------------------------ where to look --

def archive_leaks(path: Path, where: str) -> list[str]:
    """A backup archive holds the server's .env by design (member ./env, the archive
    600); nothing else in it (the volumes' files included) may hold a secret."""
    found = []
    if stat.S_IMODE(path.stat().st_mode) != 0o600:
        found.append(f"{where}: backup archive of mode {oct(stat.S_IMODE(path.stat().st_mode))}, not 0o600")
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if not member.isfile() or member.name == "./env":
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith(".gz"):
                data = gzip.decompress(data)
            if has_secret(data):
                found.append(f"{where}: member {member.name} of {path.name} holds a secret")
    return found


def server_file_leaks(repo, where: str) -> list[str]:
    root = repo["vps"]
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if rel == ".env":
            continue
        if rel.startswith(".onevps/") and ".slot.env" in rel:
            found.append(f"{where}: the deploy slot's env file is still on the server after the task: {rel}")
            continue
        if rel.startswith("backups/") and rel.endswith(".tar"):
            found += archive_leaks(path, f"{where}: server file {rel}")
            continue
        data = path.read_bytes()
        if has_secret(data):
            text = data.decode("utf-8", "replace")
            found += lines_with_secrets(text, f"{where}: server file {rel}") or [f"{where}: server file {rel}"]
    return found


def container_command_leaks(where: str, since: str) -> list[str]:
    """The command lines the project's containers (and deploy slots) started since `since`
    were started with: what `ps` shows while they start (an entrypoint, then the program
    until it renames itself)."""
    ids = set(docker("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={PROJECT}").split())
    ids |= set(docker("ps", "--all", "--quiet", "--filter", f"name=^{PROJECT}-").split())
    if not ids:
        return []
    fmt = ("{{.State.StartedAt}} {{.Name}} {{json .Path}} {{json .Args}} {{json .Config.Entrypoint}} "
           "{{json .Config.Cmd}} {{json .Config.Healthcheck}}")
    out = subprocess.run(["docker", "inspect", "--format", fmt, *sorted(ids)], capture_output=True, text=True).stdout
    return [f"{where}: command line of container {mask(line.split(' ', 1)[1])[:600]}"
            for line in out.splitlines() if line[:19] >= since and has_secret(line)]


def leaks(repo, run: Run) -> list[str]:
    where = f"[{run.scenario}] {' '.join(run.argv)}"
    found = lines_with_secrets(run.stdout, f"{where}: stdout") + lines_with_secrets(run.stderr, f"{where}: stderr")
    for rec in run.records:
        text = json.dumps(rec)
        if has_secret(text):
            found.append(f"{where}: recorded {rec['kind']} command: {mask(text)[:600]}")
        for env_file in rec.get("env_files", []) if rec.get("runner") == "RemoteRunner" else []:
            if env_file["mode"] is not None and env_file["mode"] != 0o600:
                found.append(f"{where}: {env_file['path']} was mode {oct(env_file['mode'])} when "
                             f"`{rec.get('step')}` read it (not 0o600)")
    found += sorted(run.watch.leaks)
    found += [f"{where}: {path} existed with mode {oct(mode)} (not 0o600)"
              for path, mode in sorted(run.watch.modes) if mode != 0o600]
    found += server_file_leaks(repo, where)
    found += container_command_leaks(where, run.started)
    return found


def check(repo, run: Run) -> Run:
    """Fail with every place a secret was seen during and after `run`."""
    found = leaks(repo, run)
    assert not found, "secret values seen:\n  " + "\n  ".join(found) + "\n\ntask output:\n" + run.output
    assert run.watch.samples > 0, "the process list was never sampled"
    return run


def assert_slot_env_file_used(repo, run: Run) -> None:
    """The slot read its environment from the 600 file (mode taken as the command was sent)."""
    runs = [r for r in run.records if r["kind"] == "runner" and "onevps.slot=next" in r["argv"]]
    assert runs, run.output
    for rec in runs:
        assert rec["env_files"] == [{"path": str(repo["slot_env"]), "mode": 0o600}], rec["env_files"]
        assert "--env" not in rec["argv"] and "-e" not in rec["argv"], mask(json.dumps(rec["argv"]))


# ------------------------------------------------------------------ tests --

@pytest.fixture(scope="module")
def server(repo):
    """`fab setup`, then the first deploy of portfolio (its container is created by compose);
    test_setup_and_a_first_deploy_leak_nothing checks them, so a leak there fails that test alone."""
    setup = cli(repo, "fab", "setup", scenario="setup")
    assert setup.returncode == 0, setup.output
    first = cli(repo, "fab", "deploy", "--app=portfolio", scenario="first deploy")
    assert first.returncode == 0, first.output
    repo["first_runs"] = (setup, first)
    return repo


def test_setup_and_a_first_deploy_leak_nothing(server):
    repo = server
    setup, first = repo["first_runs"]
    check(repo, setup)
    assert "the server is ready" in setup.stdout
    assert (repo["vps"] / ".env").read_text() == SERVER_ENV
    assert stat.S_IMODE((repo["vps"] / ".env").stat().st_mode) == 0o600
    assert "unknown key LEAKCHECK_API_KEY" in setup.stderr  # the key is named, its value never
    check(repo, first)
    assert "portfolio has no container yet: starting it" in first.stdout
    assert served_version() == "dev"


def test_deploys_rollback_and_a_failing_nginx_test_leak_nothing(server):
    repo = server
    # A deploy sends an nginx snippet `nginx -t` rejects: the deploy stops, nginx keeps its config.
    snippet = repo["root"] / "nginx" / "snippets" / "errors.conf"
    with file_text(snippet, lambda good: good + "\nleakcheck_not_a_directive on;\n"):
        res = check(repo, cli(repo, "fab", "deploy", "--app=portfolio", scenario="nginx test failing"))
    assert res.returncode == 1, res.output
    assert len(res.errors()) == 1 and "Traceback" not in res.stderr, res.output
    assert res.errors()[0].startswith("error: test and reload nginx on the server failed"), res.output
    assert served_version() == "dev"
    # The next deploy sends the good snippet back, reloads nginx and switches portfolio through its slot.
    set_version(repo, "v2")
    res = check(repo, cli(repo, "fab", "deploy", "--app=portfolio", scenario="deploy with a switch"))
    assert res.returncode == 0, res.output
    assert "nginx: new configuration tested" in res.stdout
    assert "starting the new portfolio in its deploy slot" in res.stdout
    assert_slot_env_file_used(repo, res)
    assert served_version() == "v2"
    res = check(repo, cli(repo, "fab", "rollback", "--app=portfolio", scenario="rollback"))
    assert res.returncode == 0, res.output
    assert_slot_env_file_used(repo, res)
    assert served_version() == "dev"
    journal = [json.loads(line) for line in (repo["vps"] / ".onevps" / "journal.jsonl").read_text().splitlines()]
    assert [(e["action"], e["result"]) for e in journal] == [("deploy", "ok"), ("deploy", "ok"), ("rollback", "ok")]


def test_backup_and_restore_leak_nothing(server, tmp_path):
    repo = server
    res = check(repo, cli(repo, "fab", "backup", f"--dest={tmp_path}", scenario="backup"))
    assert res.returncode == 0, res.output
    archives = list(tmp_path.glob(f"{PROJECT}-*.tar"))
    assert len(archives) == 1 and stat.S_IMODE(archives[0].stat().st_mode) == 0o600
    assert not archive_leaks(archives[0], "the downloaded backup")  # the .env is in ./env only
    with tarfile.open(archives[0]) as tar:
        assert SECRETS["REDIS_PASSWORD"].encode() in tar.extractfile("./env").read()  # type: ignore[union-attr]
    res = check(repo, cli(repo, "fab", "restore", str(archives[0]), "--yes", scenario="restore"))
    assert res.returncode == 0, res.output
    assert "restored" in res.stdout
    assert http(Server, "portfolio", "/health").status == 200


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
    set_version(repo, "v3")
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
    set_version(repo, "v5")
    # Dropped while the server builds the new version ...
    _ssh_drop(repo, lambda cmd: f"--project-name {PROJECT} " in cmd and cmd.endswith(" build portfolio"),
              "SSH dropped during the build")
    # ... and while the deploy slot starts (its env file is on the server then).
    _ssh_drop(repo, lambda cmd: " run " in cmd and "onevps.slot=next" in cmd and PROJECT in cmd,
              "SSH dropped as the deploy slot starts")


def test_a_refused_disk_check_leaks_nothing(server):
    repo = server
    set_version(repo, "v6")
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
    """The local tasks that read the secrets, with the server's settings (project onevps-secrets:
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
