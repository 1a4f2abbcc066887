"""The stack on a real single-node Docker Swarm, deployed with `inv swarm-deploy`.

A small stack keeps this quick: nginx, ChromaDB behind its token gateway
(chroma-auth, on the internal overlay chroma-private), Redis and two base
apps: portfolio, and api-gw, which reaches Redis and other apps by service
name. The big ML apps would add only image size to what Swarm does. Images are built locally through
compose, no registry (REGISTRY empty: one node).

The swarm: when this engine is not in one, the module runs `docker swarm init
--advertise-addr 127.0.0.1` and leaves it again at the end; an engine already
in a swarm is used as it is. Everything else is its own: stack onevps-swarm,
ports 18380/18743 on 127.0.0.1, overlay subnets from 10.231.0.0/23.

The local side is a temporary copy of the repository, so the code changes
made here never touch the working tree.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import loadgen

from .conftest import LOAD_TEST_RATE, ROOT, SHELL_RAN, SHELLISH, SHELLISH_QUOTED, docker, docker_problem, file_text, http
from .sshd import SshdError, local_sshd

pytestmark = [pytest.mark.docker, pytest.mark.cluster, pytest.mark.ordered]

STACK = "onevps-swarm"
SSH_PORT = int(os.environ.get("ONEVPS_TEST_SWARM_SSH_PORT", "2231"))
SERVICES = ("nginx", "chroma-auth", "chromadb", "redis", "portfolio", "api-gw")
SWARM_ENV = {
    **LOAD_TEST_RATE,
    "COMPOSE_PROJECT_NAME": STACK,
    "IMAGE_NAMESPACE": STACK,
    "BIND_ADDRESS": "127.0.0.1",
    "HTTP_PORT": os.environ.get("ONEVPS_TEST_SWARM_HTTP_PORT", "18380"),
    "HTTPS_PORT": os.environ.get("ONEVPS_TEST_SWARM_HTTPS_PORT", "18743"),
    "SWARM_SUBNET": os.environ.get("ONEVPS_TEST_SWARM_SUBNET", "10.231.0.0/23"),  # one /24 per network
    "DOMAIN": "localhost",
    "NETWORK_PREFIX": "172.20.0",  # unused by Swarm but handed to nginx: the same on both sides (inv and fab)
    "REGISTRY": "",
    # Every character a shell acts on (issue 24, item 6): given to inv as an environment
    # variable, to fab in the server's settings file (single-quoted); the same value must reach
    # the services either way, or fab's deploy would update every service.
    "OLLAMA_MODEL": SHELLISH,
    "REDIS_PASSWORD": secrets.token_urlsafe(24),
    "CHROMA_TOKEN": secrets.token_urlsafe(24),
    "DEPLOY_TIMEOUT": "180",
}


class Site:
    domain = "localhost"
    http_port = int(SWARM_ENV["HTTP_PORT"])
    https_port = int(SWARM_ENV["HTTPS_PORT"])


def _stack_gone() -> bool:
    """No service, container or network of the stack is left."""
    label = f"label=com.docker.stack.namespace={STACK}"
    return not any(subprocess.run(["docker", *cmd, "--quiet", "--filter", label], capture_output=True,
                                  text=True).stdout.strip()
                   for cmd in (["service", "ls"], ["ps", "--all"], ["network", "ls"]))


def remove_stack() -> None:
    subprocess.run(["docker", "stack", "rm", STACK], capture_output=True)
    deadline = time.monotonic() + 120
    while not _stack_gone() and time.monotonic() < deadline:
        time.sleep(1)
    for vol in subprocess.run(["docker", "volume", "ls", "--quiet", "--filter",
                               f"label=com.docker.stack.namespace={STACK}"],
                              capture_output=True, text=True).stdout.split():
        subprocess.run(["docker", "volume", "rm", vol], capture_output=True)


@pytest.fixture(scope="module")
def swarm():
    """A single-node swarm; left again only if this module started it."""
    problem = docker_problem()
    if problem:
        pytest.fail(f"the Swarm tests need Docker: {problem}. They never skip.", pytrace=False)
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}").split()
    initialised = False
    if state[0] == "inactive":
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        initialised = True
    elif state != ["active", "true"]:
        pytest.fail(f"this engine is in a swarm but not as a manager ({' '.join(state)})", pytrace=False)
    remove_stack()  # leftovers of an earlier run
    try:
        yield
    finally:
        if not os.environ.get("ONEVPS_KEEP_TEST_STACK"):
            remove_stack()
            if initialised:
                subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    copy = tmp_path_factory.mktemp("swarm") / "onevps"
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "*.whl", ".env")

    def leave_out(folder: str, names: list[str]) -> set[str]:
        # compose/swarm holds an earlier render; onevps/swarm is the code under test (the copy's
        # own, not the installed package's).
        return set(ignore(folder, names)) | ({"swarm"} if Path(folder).name == "compose" else set())
    shutil.copytree(ROOT, copy, ignore=leave_out)
    # The apps' health check gives a starting app 60 s; these apps start in seconds, and a version
    # failing its health check is given up on sooner (the module takes ~40 s less).
    compose = copy / "compose" / "docker-compose.yml"
    text = compose.read_text()
    assert text.count("    start_period: 60s\n") == 1, "the apps' health check moved: update this test"
    compose.write_text(text.replace("    start_period: 60s\n", "    start_period: 20s\n"))
    return copy


def inv(repo: Path, *args: str, timeout: float = 1200, env: dict | None = None) -> subprocess.CompletedProcess:
    """`inv` in the copy (its tasks.py and onevps package), with the swarm test settings."""
    env = {**os.environ, **SWARM_ENV, "TORCH_WHEEL_DIR": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)


def deploy(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return inv(repo, "swarm-deploy", "--services", ",".join(SERVICES), *args)


def tasks_of(service: str) -> list[dict]:
    """The running containers of one service of the stack."""
    ids = docker("ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={STACK}_{service}").split()
    return json.loads(docker("inspect", *ids)) if ids else []


def service_image(service: str) -> str:
    return docker("service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
                  f"{STACK}_{service}").strip()


def set_version(repo: Path, app: str, version: str) -> None:
    path = repo / "apps" / app / "main.py"
    text = path.read_text()
    new = re.sub(r'os\.getenv\("APP_VERSION", "[^"]*"\)', f'os.getenv("APP_VERSION", "{version}")', text)
    assert new != text or f'"{version}"' in text
    path.write_text(new)


@pytest.fixture(scope="module")
def stack(swarm, repo):
    res = deploy(repo)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # nginx answers once its task runs
        try:
            if http(Site, None, "/nginx-health", timeout=5).status == 200:
                break
        except OSError:
            pass
        time.sleep(1)
    return res


# ------------------------------------------------------------------ tests --

def test_the_stack_runs_as_a_stack_and_every_app_answers_through_nginx(stack):
    services = docker("stack", "services", STACK, "--format", "{{.Name}} {{.Replicas}}").split("\n")
    assert sorted(s for s in services if s) == sorted(f"{STACK}_{s} 1/1" for s in SERVICES)
    for app in ("portfolio", "api-gw"):
        res = http(Site, app, "/health")
        assert res.status == 200 and res.json()["app"] == app, res
        assert service_image(app).startswith(f"{STACK}/{app}:s-")  # the content tag swarm-deploy made
    assert "portfolio" in http(Site, "portfolio", "/").text
    assert http(Site, "portfolio", "/health", https=True).status == 200
    assert http(Site, "nope", "/").status == 404


def test_apps_reach_redis_and_each_other_by_service_name(stack):
    assert http(Site, "api-gw", "/kv/swarm", method="POST", payload={"value": "on a swarm"}).status == 200
    assert http(Site, "api-gw", "/kv/swarm").json()["value"] == "on a swarm"
    res = http(Site, "api-gw", "/proxy/portfolio/health")
    assert res.status == 200 and res.json()["app"] == "portfolio", res
    env = dict(e.split("=", 1) for e in tasks_of("api-gw")[0]["Config"]["Env"])
    assert env["REDIS_URL"].endswith("@redis:6379/0") and env["CHROMA_URL"] == "http://chroma-auth:8000"


def _from_api_gw(url: str, token: str | None = None) -> str:
    """GET url from inside the api-gw task (Python's urllib); prints the status or the error."""
    script = ("import sys, urllib.request, urllib.error\n"
              "req = urllib.request.Request(sys.argv[1])\n"
              "if len(sys.argv) > 2: req.add_header('X-Chroma-Token', sys.argv[2])\n"
              "try: print(urllib.request.urlopen(req, timeout=10).status)\n"
              "except urllib.error.HTTPError as e: print(e.code)\n"
              "except Exception as e: print(type(e).__name__)\n")
    cid = tasks_of("api-gw")[0]["Id"]
    args = ["exec", cid, "python", "-c", script, url] + ([token] if token else [])
    return docker(*args).strip()


def test_chromadb_sits_on_the_internal_overlay_behind_its_token_gateway(stack):
    heartbeat = "http://chroma-auth:8000/api/v2/heartbeat"
    deadline = time.monotonic() + 120  # ChromaDB's first start takes a while; wait for the gateway to pass
    while _from_api_gw(heartbeat, SWARM_ENV["CHROMA_TOKEN"]) != "200" and time.monotonic() < deadline:
        time.sleep(2)
    assert _from_api_gw(heartbeat, SWARM_ENV["CHROMA_TOKEN"]) == "200"
    assert _from_api_gw(heartbeat) == "401"
    assert _from_api_gw("http://chromadb:8000/api/v2/heartbeat") == "URLError"  # not on app-network
    net = json.loads(docker("network", "inspect", f"{STACK}_chroma-private"))[0]
    assert net["Driver"] == "overlay" and net["Internal"] is True
    second = list(ipaddress.IPv4Network(SWARM_ENV["SWARM_SUBNET"]).subnets(new_prefix=24))[1]
    assert net["IPAM"]["Config"][0]["Subnet"] == str(second)  # app-network has the first /24


def test_least_privilege_survives_the_move_to_swarm(stack):
    for app in ("portfolio", "api-gw"):
        host = tasks_of(app)[0]["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert host["ReadonlyRootfs"] is True
        assert host["Memory"] == 256 * 1024 * 1024 and host["NanoCpus"] == 1_000_000_000
        assert host["PidsLimit"] == 256, (app, host["PidsLimit"])  # APP_PIDS_LIMIT's default, as on compose
        assert tasks_of(app)[0]["Config"]["User"] == "app"
    for svc, limit in (("nginx", 256), ("redis", 64), ("chromadb", 512), ("chroma-auth", 128)):
        assert tasks_of(svc)[0]["HostConfig"]["PidsLimit"] == limit, svc
    # Only nginx publishes a port.
    for svc in SERVICES:
        ports = json.loads(docker("service", "inspect", "--format", "{{json .Endpoint.Ports}}", f"{STACK}_{svc}"))
        assert bool(ports) == (svc == "nginx"), (svc, ports)


def test_a_rolling_update_under_load_fails_no_request(stack, repo):
    others = {svc: [t["Id"] for t in tasks_of(svc)] for svc in SERVICES if svc != "portfolio"}
    set_version(repo, "portfolio", "v2")
    with loadgen.Load(Site.http_port, "portfolio.localhost", threads=3) as load:
        res = deploy(repo, "--app", "portfolio")
    print(f"\nrolling update of portfolio: {load.total} requests, {load.failed} failed, {load.seconds:.1f}s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "portfolio: completed" in res.stdout
    assert load.failed == 0, (load.status, load.errors[:5])
    assert load.total > 100
    assert "dev" in load.versions and load.versions[-1] == "v2"  # answers moved to the new version
    assert http(Site, "portfolio", "/health").json()["version"] == "v2"
    assert {svc: [t["Id"] for t in tasks_of(svc)] for svc in others} == others  # nothing else was touched
    env = json.loads(docker("service", "inspect", "--format", "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
                            f"{STACK}_portfolio"))
    assert f"OLLAMA_MODEL={SHELLISH}" in env, [e for e in env if e.startswith("OLLAMA_MODEL=")]
    assert not SHELL_RAN.exists()  # the server's shell ran nothing of it


def deploy_broken_portfolio(repo, breaks, threads: int):
    """Deploy portfolio with its code changed by `breaks`, under load; the good code goes back after."""
    path = repo / "apps" / "portfolio" / "main.py"
    assert breaks(path.read_text()) != path.read_text()
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    with file_text(path, breaks):
        with loadgen.Load(Site.http_port, "portfolio.localhost", threads=threads) as load:
            res = deploy(repo, "--app", "portfolio")
    if load.failed:  # what nginx and Swarm saw, for the failure's report (shown with the test's output)
        print(failure_report(since))
    return res, load


def failure_report(since: str) -> str:
    """nginx's error lines, portfolio's task history and its containers' events since `since`."""
    def run(*args: str) -> str:
        res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
        return res.stdout + res.stderr

    errors = [line for line in run("service", "logs", "--timestamps", "--since", since, f"{STACK}_nginx").splitlines()
              if "[error]" in line or "[warn]" in line or '"status":502' in line]
    events = [line for line in run("events", "--since", since, "--until", "0s", "--filter", "type=container",
                                   "--format", "{{.Time}} {{.Action}} {{.Actor.Attributes.name}}").splitlines()
              if "portfolio" in line and not line.split(" ", 2)[1].startswith("exec_")]
    return ("--- nginx errors (first 40 of %d) ---\n" % len(errors) + "\n".join(errors[:40])
            + "\n--- portfolio tasks ---\n" + run("service", "ps", "--no-trunc", f"{STACK}_portfolio")
            + "--- portfolio container events ---\n" + "\n".join(events[-60:]))


def test_a_crashing_version_rolls_back_by_itself_and_the_old_one_keeps_serving(stack, repo):
    image = service_image("portfolio")
    res, load = deploy_broken_portfolio(
        repo, lambda code: code + '\nraise SystemExit("boom: this version crashes on start")\n', threads=3)
    print(f"\ncrashing version of portfolio: {load.total} requests, {load.failed} failed")
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the update failed and Swarm rolled it back, the previous version keeps serving "
                           "(portfolio: rolled back)"), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert "boom: this version crashes on start" in res.stdout  # the failed task's last log lines
    assert load.failed == 0, (load.status, load.errors[:5])
    assert set(load.versions) == {"v2"}
    assert service_image("portfolio") == image  # Swarm's rollback put the spec back
    state = json.loads(docker("service", "inspect", "--format", "{{json .UpdateStatus}}", f"{STACK}_portfolio"))
    assert state["State"] == "rollback_completed"


def test_a_version_failing_its_health_check_gets_no_traffic_and_rolls_back(stack, repo):
    """It starts and listens, but /health answers 500: Swarm never puts it in
    the service's DNS, and once the health check gives up (start_period, 20 s in
    this module's copy, + 3 retries) the update rolls back."""
    image = service_image("portfolio")
    res, load = deploy_broken_portfolio(
        repo, lambda code: code.replace('return {"status": "ok", **app_meta()}',
                                        'raise RuntimeError("unhealthy on purpose")'), threads=2)
    print(f"\nunhealthy version of portfolio: {load.total} requests, {load.failed} failed")
    assert res.returncode != 0
    assert "(portfolio: rolled back)" in res.stderr.strip().splitlines()[-1], res.stderr[-2000:]
    assert load.failed == 0, (load.status, load.errors[:5])  # no request reached the unhealthy task
    assert set(load.versions) == {"v2"}
    assert service_image("portfolio") == image


def test_a_compose_stack_of_the_same_name_must_go_first(swarm, repo):
    """Moving from Compose: the Compose project's network has the stack's
    network name, and Docker refuses the second one; say so in one line."""
    project = "onevps-swarmclash"
    docker("network", "create", "--label", f"com.docker.compose.project={project}", f"{project}_app-network")
    try:
        res = inv(repo, "swarm-deploy", "--services", ",".join(SERVICES), "--dry-run",
                  env={"COMPOSE_PROJECT_NAME": project})
    finally:
        docker("network", "rm", f"{project}_app-network")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"error: the Compose stack {project} still holds {project}_app-network, which the Swarm stack needs")
    assert not docker("service", "ls", "--quiet", "--filter", f"label=com.docker.stack.namespace={project}").strip()


def test_swarm_status_shows_the_services(stack):
    res = inv(ROOT, "swarm-status")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "REPLICAS", "IMAGE", "LAST", "UPDATE"]
    assert {line.split()[0] for line in lines[1:]} == set(SERVICES)


# ----------------------------------------------- fab, over real SSH --

@pytest.fixture(scope="module")
def server(tmp_path_factory, repo):
    """This machine as "the VPS", reached over a real sshd on 127.0.0.1; its
    settings (VPS_ENV_FILE) are the same as the stack's, so `fab` updates it."""
    try:
        with local_sshd(tmp_path_factory.mktemp("swarm-sshd"), SSH_PORT) as key:
            (repo / ".env.vps").write_text("".join(f"{k}={SHELLISH_QUOTED if v == SHELLISH else v}\n"
                                                   for k, v in SWARM_ENV.items()))
            yield {"VPS_HOST": "127.0.0.1", "VPS_PORT": str(SSH_PORT), "VPS_USER": "root", "VPS_SSH_KEY": str(key),
                   "VPS_PATH": str(tmp_path_factory.mktemp("swarm-vps")), "VPS_ENV_FILE": ".env.vps",
                   "TORCH_WHEEL_DIR": ""}
    except SshdError as exc:
        pytest.fail(f"the fab Swarm tests need a local sshd; they never skip: {exc}", pytrace=False)


def fab(repo: Path, server: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("fab")), *args], cwd=repo,
                          env={**os.environ, **SWARM_ENV, **server}, capture_output=True, text=True, timeout=1200)


def test_fab_swarm_deploy_dry_run_changes_nothing(stack, repo, server):
    set_version(repo, "portfolio", "v3")
    before = {svc: service_image(svc) for svc in SERVICES}
    res = fab(repo, server, "swarm-deploy", "--app=portfolio", f"--services={','.join(SERVICES)}", "--dry-run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if "docker stack deploy --compose-file" in x)
    assert line.startswith("[dry-run] env ") and " TAG_PORTFOLIO=s-" in line and " sh -c " in line
    assert SWARM_ENV["REDIS_PASSWORD"] not in res.stdout  # read from the server's .env by its shell
    assert "[dry-run] send apps/portfolio/main.py" in res.stdout
    assert {svc: service_image(svc) for svc in SERVICES} == before
    assert not any(Path(server["VPS_PATH"]).iterdir())  # nothing was sent


def test_fab_swarm_deploy_rolls_out_a_code_change_over_ssh(stack, repo, server):
    set_version(repo, "portfolio", "v3")
    others = {svc: [t["Id"] for t in tasks_of(svc)] for svc in SERVICES if svc != "portfolio"}
    with loadgen.Load(Site.http_port, "portfolio.localhost", threads=3) as load:
        res = fab(repo, server, "swarm-deploy", "--app=portfolio", f"--services={','.join(SERVICES)}")
    print(f"\nfab swarm-deploy of portfolio: {load.total} requests, {load.failed} failed")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "portfolio: completed" in res.stdout
    assert load.failed == 0, (load.status, load.errors[:5])
    assert load.versions[-1] == "v3"
    assert {svc: [t["Id"] for t in tasks_of(svc)] for svc in others} == others  # nothing else was touched
    stack_file = Path(server["VPS_PATH"]) / "compose" / "swarm" / "docker-stack.yml"
    assert stack_file.is_file() and SWARM_ENV["REDIS_PASSWORD"] not in stack_file.read_text()
    status = fab(repo, server, "swarm-status")
    assert status.returncode == 0, status.stderr
    assert any(line.split()[:2] == ["portfolio", "1/1"] for line in status.stdout.splitlines())
