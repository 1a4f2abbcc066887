"""Integration tests on the real stack: real Docker engine, real nginx, Redis,
ChromaDB, real images built through Compose. The stack runs as its own
Compose project with its own ports and subnet, so it never touches a stack
started with `make up` on the same machine.

Docker is required. When it is missing these tests FAIL (they never skip):
run `make unit` for the tests that need no Docker.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
from invoke import Context

from onevps import config, registry as registry_mod, stack, tenants, tiers

ROOT = Path(__file__).resolve().parents[2]

# The test stack's own name, ports, subnet and image namespace. A second
# checkout can run its integration tests beside the first by setting
# ONEVPS_TEST_PROJECT and the ONEVPS_TEST_* ports and subnets below.
TEST_PROJECT = os.environ.get("ONEVPS_TEST_PROJECT", "onevps-test")
# The load generators (tests/loadgen.py) are one client address sending hundreds of
# requests a second, far past what nginx lets a real client send (NGINX_RATE_PER_CLIENT,
# 100 a second after a burst of 400): every stack the tests load raises it. The limits
# themselves are tested in test_security.
LOAD_TEST_RATE = {"NGINX_RATE_PER_CLIENT": "100000", "NGINX_BURST_PER_CLIENT": "100000"}
TEST_ENV = {
    **LOAD_TEST_RATE,
    "COMPOSE_PROJECT_NAME": TEST_PROJECT,
    "BIND_ADDRESS": "127.0.0.1",
    "HTTP_PORT": os.environ.get("ONEVPS_TEST_HTTP_PORT", "18080"),
    "HTTPS_PORT": os.environ.get("ONEVPS_TEST_HTTPS_PORT", "18443"),
    "NETWORK_PREFIX": os.environ.get("ONEVPS_TEST_NETWORK_PREFIX", "172.29.0"),
    "CHROMA_SUBNET": os.environ.get("ONEVPS_TEST_CHROMA_SUBNET", "172.29.1.0/28"),
    "IMAGE_NAMESPACE": TEST_PROJECT,
    "UP_TIMEOUT": "900",
    "REDIS_PASSWORD": secrets.token_urlsafe(24),  # fresh secrets for every run
    "CHROMA_TOKEN": secrets.token_urlsafe(24),
}
os.environ.update(TEST_ENV)
# Use the developer's .env when there is one (proxy CA, wheel folder); never
# let `inv up` write one into the working tree during tests.
os.environ.setdefault("ONEVPS_ENV_FILE", str(ROOT / ".env") if (ROOT / ".env").exists() else str(ROOT / ".env.absent"))


# --- the order of the modules, in two groups side by side ------------------------
# `make test` runs the integration tests in two processes (pytest-xdist, `-n 2`, the
# scheduler below), one per group:
#   bare    the bare servers (test_first_server, test_swarm_nodes): each has its own engine
#           and shares only CPU, disk and the tier images (built once, under a lock) with
#   engine  everything on this machine's engine: first the shared test server over SSH
#           (server.py: test_deploy, test_secrets, test_sleep), then the local test stack (and
#           throwaway containers), then this engine's single-node swarm (test_swarm_cli last:
#           nothing runs on an engine that was switched into swarm mode and out again).
# The local test stack's modules wait until the bare group is done (bare_group_turn below):
# they restart this engine (test_security) and read every volume's size (test_docker_cli),
# the bare servers' too. Within a group, file order; without -n, the same order, one process.
BARE_GROUP = ("test_first_server", "test_swarm_nodes")
SERVER_MODULES = ("test_deploy", "test_secrets", "test_sleep")
MODULE_ORDER = [*SERVER_MODULES,
                "test_stack", "test_security", "test_top", "test_docker_cli", "test_dockerproxy", "test_scale",
                *BARE_GROUP,
                "test_swarm", "test_swarm_cli"]

# A settings value with every character a shell would act on (issue 24, item 6): it must reach
# inv, compose and every container as written, and nothing in it may ever run. Single quotes
# in the file keep it literal for compose and onevps alike (a ' inside is written \').
SHELL_RAN = Path(tempfile.gettempdir()) / f"onevps-shell-ran-{secrets.token_hex(6)}"
SHELLISH = f"llama$HOME`touch {SHELL_RAN}`;x'y\"z#w v\\u $(touch {SHELL_RAN}) ${{PATH}}"
SHELLISH_QUOTED = "'" + SHELLISH.replace("'", "\\'") + "'"



def _module(item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1]


def _module_of(nodeid: str) -> str:
    """The module name of a test's node ID (tests/integration/test_x.py::test_y -> test_x)."""
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = _module(item)
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER)
    items.sort(key=rank)  # stable: file order within a module


def pytest_xdist_make_scheduler(config, log):
    """Under `-n 2`: two work units, the groups, each sent whole and in order to one worker.
    (xdist's own `--dist loadgroup` cannot be used: with pytest 9 its group suffix never
    reaches the test IDs, and the tests were spread over both workers.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "bare" if _module_of(nodeid) in BARE_GROUP else "engine"

    return GroupScheduling(config, log)


# Cross-process locks of one run (xdist workers share PYTEST_XDIST_TESTRUNUID); in a run
# without -n nothing runs beside anything, and these do nothing.
_held: dict[str, object] = {}


def _lock(name: str, shared: bool = False) -> float:
    """Take the run's lock NAME (once per process; kept until released or the process ends);
    the seconds it waited."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run or name in _held:
        return 0.0
    f = open(_lock_path(run, name), "a")
    t0 = time.monotonic()
    fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    _held[name] = f
    return time.monotonic() - t0


def _lock_path(run: str, name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"onevps-test-{run}-{name}.lock"


def pytest_sessionfinish(session):
    """A worker done with its tests releases its locks and removes the run's lock files: the
    other worker keeps any it holds or waits on (flock goes with the open file), and opens
    a fresh one for a later lock, which only it then uses."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        return
    for name in list(_held):
        _unlock(name)
    for name in ("bare", "build"):
        _lock_path(run, name).unlink(missing_ok=True)


def _unlock(name: str) -> None:
    f = _held.pop(name, None)
    if f is not None:
        f.close()  # closing the file releases the lock


@contextmanager
def _locked(name: str) -> Iterator[None]:
    _lock(name)
    try:
        yield
    finally:
        _unlock(name)


def bare_group_turn(item) -> None:
    """The bare group holds the lock `bare` shared from its first test to its last; the local
    test stack's modules take it exclusively, so they start once the bare servers are gone."""
    module = _module(item)
    if module in BARE_GROUP:
        _lock("bare", shared=True)
    elif module not in SERVER_MODULES and module in MODULE_ORDER and "bare" not in _held \
            and os.environ.get("PYTEST_XDIST_TESTRUNUID"):
        item.user_properties.append(("waited for the bare group", _lock("bare")))


# --- tests that build on each other -------------------------------------------
# A module marked `ordered` is a story: each test builds on what the ones before
# it left (a server set up, a version deployed). pytest runs a module's tests in
# file order; these hooks make the dependency explicit: a test of such a module
# runs only when every test above it in the file ran in this session and passed,
# otherwise it fails at once with one line naming the first that did not.

_passed: set[str] = set()


def _earlier_tests(item) -> list[str]:
    """The names of the test functions above this one in its module, in file order."""
    funcs = sorted((f.__code__.co_firstlineno, name) for name, f in vars(item.module).items()
                   if name.startswith("test_") and callable(f) and hasattr(f, "__code__"))
    own = item.originalname if hasattr(item, "originalname") else item.name
    names = [name for _, name in funcs]
    return names[:names.index(own)] if own in names else []


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures are set up
def pytest_runtest_setup(item):
    bare_group_turn(item)
    if item.get_closest_marker("ordered") is None:
        return
    for name in _earlier_tests(item):
        if f"{item.module.__name__}::{name}" not in _passed:
            pytest.fail(f"not run: the tests of {item.module.__name__.rsplit('.', 1)[-1]} build on each other "
                        f"and {name} did not run and pass before it (run the whole module)", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("ordered") is not None and report.when == "call" and report.passed:
        _passed.add(f"{item.module.__name__}::{getattr(item, 'originalname', item.name)}")


_module_seconds: dict[str, float] = {}
_waits: list[str] = []


def pytest_runtest_logreport(report):
    """Setup + call + teardown of each test, its fixtures included, summed per module (in the
    process that prints the summary: the xdist controller gets every worker's reports)."""
    module = _module_of(report.nodeid)
    waited = sum(v for k, v in report.user_properties if k == "waited for the bare group") \
        if report.when == "setup" else 0.0
    _module_seconds[module] = _module_seconds.get(module, 0.0) + report.duration - waited
    if waited:
        _waits.append(f"{module} waited {waited:.0f} s for the bare group to end (not counted above)")


def pytest_terminal_summary(terminalreporter):
    """The time of each module (its tests and the stacks they bring up): the README's table."""
    if not _module_seconds:
        return
    terminalreporter.write_sep("=", "time per integration module")
    for module, seconds in sorted(_module_seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s  {module}")
    side_by_side = " (the two groups ran side by side: the run took less)" if _waits or \
        terminalreporter.config.getoption("numprocesses", None) else ""
    terminalreporter.write_line(f"{sum(_module_seconds.values()):8.1f} s  in all{side_by_side}")
    for line in _waits:
        terminalreporter.write_line(line)


def docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "the Docker engine is not running (`docker info` failed)"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "Docker Compose v2 is missing"
    return None


@pytest.fixture(scope="session")
def project():
    """This checkout: where the test stack's files are."""
    return config.REPO


@pytest.fixture(scope="session")
def settings(project):
    problem = docker_problem()
    if problem:
        pytest.fail(f"integration tests need Docker: {problem}. They never skip; "
                    "`make unit` runs the tests that need no Docker.", pytrace=False)
    s = config.load(project)
    # Outside build inputs (EXTRA_CA_DIR, TORCH_WHEEL_DIR) are staged first, as the runner's
    # builds stage them: the tier tags cover them, so these are the tags the builds give.
    for tier in tiers.TIER_ORDER:
        tiers.stage_inputs(project, s, tier)
    os.environ.update(stack.compose_env(project, s))  # what pytest-docker's compose calls interpolate
    return s


@pytest.fixture(scope="session")
def reg(settings, project):
    return registry_mod.load(project.compose_file)


@pytest.fixture(scope="session")
def runner(settings, project):
    return stack.make_runner(Context(), project, settings)


@pytest.fixture(scope="session")
def tier_images(settings, project, runner):
    """The base and ML tier images, built (or found in the build cache) once at a time: both
    groups need them, and the first to come builds them."""
    with _locked("build"):
        for tier in tiers.TIER_ORDER:
            stack.build_tier(runner, project, settings, tier)
    return True


@pytest.fixture(scope="session")
def built_images(tier_images, settings, project, reg, runner):
    """Clear leftovers of an earlier run, then build every app's image on the tiers."""
    runner.run(stack.commands.down(project, settings, volumes=True), "clear leftovers of an earlier test run")
    stack.build_apps(runner, project, settings, reg, reg.names())
    return True


# --- pytest-docker: the compose lifecycle of the test stack ------------------

@pytest.fixture(scope="session")
def docker_compose_file(settings, project):
    return str(project.compose_file)


@pytest.fixture(scope="session")
def docker_compose_project_name(settings):
    return settings.project_name


@pytest.fixture(scope="session")
def docker_setup(built_images, settings, reg):
    # pytest-docker runs `docker compose up` itself, with this process's environment: each
    # app's own Redis password and ChromaDB token go there, as `inv up` hands them to compose.
    os.environ.update(tenants.derived(settings, reg.names()))
    return [f"up --detach --no-build --wait --wait-timeout {settings.up_timeout}"]


@pytest.fixture(scope="session")
def docker_cleanup():
    if os.environ.get("ONEVPS_KEEP_TEST_STACK"):
        return []
    return ["down --volumes --remove-orphans"]


@pytest.fixture(scope="session")
def stack_up(docker_services, settings, reg, runner, project):
    """The running test stack; waits until nginx answers on 127.0.0.1."""
    docker_services.wait_until_responsive(
        check=lambda: _ok(lambda: http(settings, None, "/nginx-health").status == 200),
        timeout=120, pause=1)
    # What `inv up` does once the shared services run: each app's Redis user and Chroma tenant.
    tenants.sync(tenants.local_compose(runner, project, settings), print, settings, reg)
    return docker_services


def _ok(fn) -> bool:
    try:
        return bool(fn())
    except Exception:
        return False


# --- the shared test server (server.py) ----------------------------------------

@pytest.fixture(scope="session")
def vps(tmp_path_factory, built_images, settings, project):
    """The shared test server, set up with every app deployed; see server.py."""
    from . import server
    try:
        yield server.start(tmp_path_factory, project, settings)
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a test's own teardown: the bare group's lock goes with its last test (its servers
    are gone then); the shared server goes as soon as no test after this one uses it."""
    yield
    if _module(item) in BARE_GROUP and (nextitem is None or _module(nextitem) not in BARE_GROUP):
        _unlock("bare")
    if "vps" not in getattr(item, "fixturenames", ()):
        return
    items = item.session.items
    if not any("vps" in getattr(later, "fixturenames", ()) for later in items[items.index(item) + 1:]):
        from . import server
        server.stop()


# --- HTTP through nginx on 127.0.0.1 ----------------------------------------

@dataclass
class Response:
    status: int
    headers: dict  # lower-case names
    body: bytes

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body[:300]!r})"

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the 3xx answer itself is returned (as an HTTPError)


def http(settings, app: str | None, path: str, method: str = "GET", payload=None,
         https: bool = False, timeout: float = 60) -> Response:
    """A request to nginx on 127.0.0.1 with Host <app>.<DOMAIN> (or the bare domain)."""
    host = f"{app}.{settings.domain}" if app else settings.domain
    if https:
        url = f"https://127.0.0.1:{settings.https_port}{path}"
    else:
        url = f"http://127.0.0.1:{settings.http_port}{path}"
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Host": host})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    ctx = None
    if https:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    # Never follow a redirect: it would leave 127.0.0.1.
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(req, timeout=timeout) as res:
            return Response(res.status, {k.lower(): v for k, v in res.headers.items()}, res.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".env")


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link big wheels (the torch wheel is ~190 MB); copy everything else."""
    if src.endswith(".whl"):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def copy_repo(dest: Path) -> Path:
    """A working copy of the repository for a test to change freely. The wheels
    staged in dockerfiles/ml/wheels come along (hard-linked): the ML tier's
    content tag covers them, so the copy names the tier images the session built."""
    shutil.copytree(ROOT, dest, ignore=COPY_IGNORE, copy_function=_link_or_copy)
    return dest


RUN_STATE = "{{.State.StartedAt}} {{.RestartCount}} {{.State.OOMKilled}}"


def run_state(container: str) -> str:
    """When the container started, its restart count and whether it was OOM-killed: the
    same before and after an attack means it was never killed or restarted."""
    return docker("inspect", "--format", RUN_STATE, container).strip()


def temp_bytes(container: str, folder: str) -> int:
    """Bytes an nginx holds in its temp files under `folder` (often unlinked at once, open
    in a worker): the sizes of its workers' open files there."""
    script = (f"n=0; for f in /proc/[0-9]*/fd/*; do case $(readlink \"$f\") in {folder}/*) "
              "n=$((n + $(stat -L -c %s \"$f\"))) ;; esac; done; echo $n")
    return int(docker("exec", "--user", "nginx", container, "sh", "-c", script).strip() or 0)


def well_behaved(settings, project: str, nginx_address: str, domain: str,
                 requests: int | str) -> subprocess.Popen:
    """The well-behaved client of the attack tests: tests/loadgen.py's keep-alive GET and
    POST traffic for portfolio, from a container of its own on the project's app-network to
    its nginx: `requests` answers, or "stdin": until its standard input closes (returned
    once its first answer came). `report` reads its summary."""
    proc = subprocess.Popen(
        ["docker", "run", "--rm", "-i", "--network", f"{project}_app-network",
         "--volume", f"{config.REPO_ROOT / 'tests'}:/t:ro", tiers.tier_image(config.REPO, settings, "base"),
         "python3", "/t/loadgen.py", nginx_address, "80", f"portfolio.{domain}", str(requests)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if requests == "stdin":
        assert proc.stdout.readline().strip() == "running", "the well-behaved client did not start"
    return proc


def report(proc: subprocess.Popen) -> dict:
    """The well-behaved client's summary (its standard input closed: it stops): total,
    failed, status, p99_ms, errors, summary."""
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"the well-behaved client failed: {out[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


def oom_lines() -> list[str]:
    """The kernel's OOM lines (dmesg): a test compares them before and after an attack."""
    res = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"dmesg: {res.stderr}"
    return [line for line in res.stdout.splitlines() if "out of memory" in line.lower() or "oom-kill" in line.lower()]


def docker(*args: str) -> str:
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"docker {' '.join(args)} failed: {res.stderr}"
    return res.stdout


@contextmanager
def file_text(path: Path, change: Callable[[str], str]) -> Iterator[None]:
    """For the length of the block the file holds change(its text); then its text again."""
    good = path.read_text()
    path.write_text(change(good))
    try:
        yield
    finally:
        path.write_text(good)


def clear_compose_project(name: str, volumes_only: bool = False) -> None:
    """What an earlier run of Compose project `name` left: its containers (labelled, or named
    NAME-*) and networks, and its volumes (all of them when volumes_only)."""
    if not volumes_only:
        ids = set(docker("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={name}").split())
        ids |= set(docker("ps", "--all", "--quiet", "--filter", f"name=^{name}-").split())
        if ids:
            subprocess.run(["docker", "rm", "--force", *ids], capture_output=True)
        for net in docker("network", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={name}").split():
            subprocess.run(["docker", "network", "rm", net], capture_output=True)
    for vol in docker("volume", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={name}").split():
        subprocess.run(["docker", "volume", "rm", vol], capture_output=True)


def inv(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ})


def project_containers(settings) -> list[dict]:
    ids = docker("ps", "--all", "--quiet", "--filter",
                 f"label=com.docker.compose.project={settings.project_name}").split()
    return json.loads(docker("inspect", *ids)) if ids else []
