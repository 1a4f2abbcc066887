"""`inv new-app` / `inv remove-app`: golden diffs, round trips, refusals,
properties and the task layer.

Everything runs on a temporary copy of the repository (compose/, nginx/,
apps/, templates/) through onevps.apps directly, so no Docker and no network
are needed. The task-layer tests run `python -m invoke` with a PATH that has
no `docker` (stack._compose_check then skips `docker compose config`); the
ones that use the real repository only make refusals and dry runs, and check
that the repository is unchanged afterwards.

Golden files live in tests/golden/; the copy they are made on has the frozen
compose file of tests/unit/goldens.py, not the live one. Regenerate them with
`ONEVPS_UPDATE_GOLDEN=1 pytest tests/unit/test_new_app.py` and review the diff.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings as hsettings, strategies as st

from onevps import apps, checks, composefile, config, nginx, registry, swarm
from onevps.errors import OnevpsError
from onevps.project import Project

from . import goldens

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
UPDATE_GOLDEN = os.environ.get("ONEVPS_UPDATE_GOLDEN") == "1"
COPIED = ("compose", "nginx", "apps", "templates")
IGNORE = shutil.ignore_patterns("__pycache__", ".pytest_cache")
COMPOSE_REL = "compose/docker-compose.yml"
ORIGINAL_APPS = ["portfolio", "chatbot", "kb", "api-gw", "embedder", "classify", "summary"]
# Valid DNS labels that YAML 1.2 reads as null / booleans: refused as app names.
YAML_KEYWORDS = {"null", "true", "false"}


# ------------------------------------------------------------------ helpers --

def make_copy(dest: Path) -> Project:
    """Copy the repository's compose/, nginx/, apps/, templates/ into dest (its settings load)."""
    for sub in COPIED:
        shutil.copytree(ROOT / sub, dest / sub, ignore=IGNORE)
    project = Project(dest)
    config.load(project, environ={})
    return project


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under root, by relative path."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def stray(root: Path) -> list[str]:
    """Leftover staging/trash folders or temp files of apply()."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(".*"))


def new_app(project, name, tier="base", domain=None, sleep_after=None) -> None:
    """What `inv new-app` does, minus the (Docker) compose check."""
    plan = apps.plan_new_app(project, name, tier, domain, sleep_after)
    try:
        apps.apply(plan)
    finally:
        apps.discard(plan)


def remove_app(project, name) -> None:
    apps.apply(apps.plan_remove_app(project, name))


def compose_text(project) -> str:
    return project.compose_file.read_text(encoding="utf-8")


def compose_diff(before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                        f"a/{COMPOSE_REL}", f"b/{COMPOSE_REL}", n=3))


def changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines(True)[2:] if line.startswith(("+", "-"))]


def upstream(routes: str, name: str) -> str:
    """The body of nginx's `upstream app_NAME { ... }` block."""
    start = routes.index(f"upstream app_{name} {{\n")
    return routes[start:routes.index("\n}", start)]


def assert_one_line_error(err: pytest.ExceptionInfo) -> str:
    message = err.value.message
    assert message.startswith("error: ")
    assert "\n" not in message and "\r" not in message
    return message


@pytest.fixture
def repo(tmp_path) -> Project:
    return make_copy(tmp_path)


# ------------------------------------------------------------ golden diffs --

GOLDEN_CASES = [
    ("new-app-blog.compose.diff", ("blog", "base", None)),
    ("new-app-vision-ml.compose.diff", ("vision", "ml", "vision.example.com")),
]


@pytest.mark.parametrize("golden, args", GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES])
def test_new_app_compose_diff_matches_golden(tmp_path, golden, args):
    repo = goldens.repository(tmp_path, ("nginx", "apps", "templates"))
    name, tier, domain = args
    before = compose_text(repo)
    new_app(repo, name, tier, domain)
    diff = compose_diff(before, compose_text(repo))
    path = GOLDEN / golden
    if UPDATE_GOLDEN:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(diff.encode("utf-8"))
    assert path.exists(), f"{path} is missing; create it with ONEVPS_UPDATE_GOLDEN=1"
    assert diff == path.read_bytes().decode("utf-8")

    # Exactly the new entry (indented under services:) plus one blank line, one hunk.
    assert sum(line.startswith("@@") for line in diff.splitlines()) == 1
    changed = changed_lines(diff)
    assert changed and all(line.startswith("+") for line in changed), "new-app must not change existing lines"
    host = registry.load(repo.compose_file).get(name).host
    entry = textwrap.indent(apps.entry_text(name, tier, host, domain), "  ")
    anchor = "*ml-app" if tier == "ml" else "*app"  # each tier merges its defaults block
    entry = entry.replace("  " + name + ":\n", "  " + name + ":\n    <<: " + anchor + "\n", 1)
    # and its environment merges the shared one (its own Redis user and Chroma token added)
    entry = entry.replace("    environment:\n", "    environment:\n      <<: *app-env\n", 1)
    assert "".join(line[1:] for line in changed) == entry + "\n"


# ------------------------------------------------------- new-app and back --

def test_new_app_creates_the_folder_from_the_template(repo):
    new_app(repo, "blog")
    template = repo.root / "templates" / "app"
    target = repo.root / "apps" / "blog"
    want = sorted(p.relative_to(template).as_posix() for p in template.rglob("*") if p.is_file())
    got = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert got == want
    for rel in want:
        text = (target / rel).read_text(encoding="utf-8")
        assert "__APP_NAME__" not in text and "__APP_TIER__" not in text, rel
        expected = (template / rel).read_text(encoding="utf-8")
        assert text == expected.replace("__APP_NAME__", "blog").replace("__APP_TIER__", "base")
    assert '"app": "blog"' in (target / "tests" / "test_main.py").read_text()
    assert 'os.getenv("APP_TIER", "base")' in (target / "main.py").read_text()


@pytest.mark.parametrize("tier, key, default", [("base", "APP_PIDS_LIMIT", 256), ("ml", "ML_APP_PIDS_LIMIT", 512)])
def test_a_new_app_gets_its_tiers_process_limit(repo, tier, key, default):
    """The entry merges its tier's defaults block (`<<: *app` / `<<: *ml-app`), which holds
    pids_limit; the limit is the tier's setting, as for every app already there."""
    new_app(repo, "blog", tier)
    service = swarm.plain(composefile.load(repo.compose_file))["services"]["blog"]
    assert service["pids_limit"] == f"${{{key}:-{default}}}"
    assert service["mem_limit"] == ("${APP_MEM_LIMIT:-256m}" if tier == "base" else "${ML_APP_MEM_LIMIT:-1g}")
    assert "pids_limit" not in apps.entry_text("blog", tier, 14)  # from the anchor, never written per app


def test_new_app_ml_substitutes_the_tier(repo):
    new_app(repo, "vision", "ml")
    main = (repo.root / "apps" / "vision" / "main.py").read_text()
    assert 'os.getenv("APP_NAME", "vision")' in main and 'os.getenv("APP_TIER", "ml")' in main


def test_new_app_updates_nginx_routes_and_index_and_check_passes(repo):
    assert checks.problems(repo) == []
    new_app(repo, "blog")
    new_app(repo, "vision", "ml", "vision.example.com")
    routes = (repo.root / nginx.ROUTES_FILE).read_text()
    index = (repo.root / nginx.INDEX_FILE).read_text()
    assert "server ${NETWORK_PREFIX}.14:8000" in upstream(routes, "blog")
    assert "server_name blog.${DOMAIN};" in routes
    assert "server ${NETWORK_PREFIX}.23:8000" in upstream(routes, "vision")
    assert "server_name vision.${DOMAIN} vision.example.com;" in routes
    assert '<a data-app="blog" href="#">blog</a> <span class="tier tier-base">base</span>' in index
    assert '<a data-app="vision" href="#">vision</a> <span class="tier tier-ml">ml</span>' in index
    reg = registry.load(repo.compose_file)
    assert nginx.drift(repo.root, reg) == []
    assert reg.names() == ["portfolio", "chatbot", "kb", "api-gw", "blog",
                           "embedder", "classify", "summary", "vision"]
    assert checks.problems(repo) == []
    assert stray(repo.root) == []


def test_next_free_address_per_tier(repo):
    hosts = []
    for i in range(7):
        new_app(repo, f"web{i}")
        hosts.append(registry.load(repo.compose_file).get(f"web{i}").host)
    assert hosts == [14, 15, 16, 17, 18, 19, 30]  # after .19 the base pool continues at .30
    new_app(repo, "vision", "ml")
    assert registry.load(repo.compose_file).get("vision").host == 23
    # A freed address is the next one handed out.
    remove_app(repo, "web1")
    new_app(repo, "shop")
    assert registry.load(repo.compose_file).get("shop").host == 15
    assert checks.problems(repo) == []


ROUND_TRIPS = {
    "base": [("blog", "base", None)],
    "ml-with-domain": [("vision", "ml", "vision.example.com")],
    "several": [("blog", "base", None), ("vision", "ml", None), ("wiki", "base", "wiki.example.org"),
                ("ocr", "ml", None)],
}


@pytest.mark.parametrize("order", ["reverse", "same"])
@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_remove_app_restores_every_file_byte_identical(repo, case, order):
    before = snapshot(repo.root)
    added = ROUND_TRIPS[case]
    for name, tier, domain in added:
        new_app(repo, name, tier, domain)
        assert checks.problems(repo) == []
    assert snapshot(repo.root) != before
    names = [a[0] for a in added]
    for name in (reversed(names) if order == "reverse" else names):
        remove_app(repo, name)
        assert checks.problems(repo) == []
    assert snapshot(repo.root) == before


@pytest.mark.parametrize("name", [
    "chatbot", "kb", "api-gw", "classify", "summary",
    "portfolio",  # first of its section: the '# --- base apps --' header stays
    "embedder",  # first of its section: the '# --- ML apps --' header stays
])
def test_remove_app_removes_exactly_its_entry(repo, name):
    before = compose_text(repo)
    remove_app(repo, name)
    diff = compose_diff(before, compose_text(repo))
    changed = changed_lines(diff)
    assert changed and all(line.startswith("-") for line in changed), diff
    # The removed lines are the entry and the blank line after it, nothing else.
    lines = before.splitlines(True)
    start = lines.index(f"  {name}:\n")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    assert compose_text(repo) == "".join(lines[:start] + lines[end + 1:])
    assert not (repo.root / "apps" / name).exists()
    assert checks.problems(repo) == []


# ------------------------------------------------------------- bad input --

BAD_NAMES = [
    ("Blog", "uppercase"),
    ("my_app", "'_'"),
    ("1app", "must start with a letter"),
    ("-app", "must start with a letter"),
    ("app-", "must not end with '-'"),
    ("a" * 64, "64 characters long"),
    ("", "cannot be empty"),
    ("my.app", "a-z, 0-9 and '-'"),
    ("kb", "already an app"),
    ("nginx", "reserved"),
    ("redis", "reserved"),
    ("chromadb", "reserved"),
    ("ollama", "reserved"),
    ("base-tier", "reserved"),
    ("www", "reserved"),
]


@pytest.mark.parametrize("name, reason", BAD_NAMES, ids=[repr(n[0])[:12] for n in BAD_NAMES])
def test_bad_name_is_refused_and_changes_nothing(repo, name, reason):
    before = snapshot(repo.root)
    with pytest.raises(OnevpsError) as err:
        new_app(repo, name)
    assert reason in assert_one_line_error(err)
    assert snapshot(repo.root) == before


def test_unknown_tier_is_refused(repo):
    before = snapshot(repo.root)
    with pytest.raises(OnevpsError) as err:
        new_app(repo, "blog", "gpu")
    assert "unknown tier 'gpu'" in assert_one_line_error(err)
    assert snapshot(repo.root) == before


def test_full_ml_pool_is_refused(repo):
    assert len(registry.POOLS["ml"]) == 10
    free = len(registry.POOLS["ml"]) - len(registry.load(repo.compose_file).by_tier("ml"))
    for i in range(free):
        new_app(repo, f"ml{i}", "ml")
    assert len(registry.load(repo.compose_file).by_tier("ml")) == 10
    assert checks.problems(repo) == []
    before = snapshot(repo.root)
    with pytest.raises(OnevpsError) as err:
        new_app(repo, "onemore", "ml")
    assert "the ml address pool is full (10 apps)" in assert_one_line_error(err)
    assert snapshot(repo.root) == before
    new_app(repo, "stillbase")  # the base pool is unaffected
    assert registry.load(repo.compose_file).get("stillbase").host == 14


def test_unparsable_compose_file_names_file_and_line(repo):
    lines = compose_text(repo).splitlines(True)
    lineno = lines.index("    image: ${IMAGE_NAMESPACE:-onevps}/kb:latest\n") + 1
    lines[lineno - 1] = "   image: ${IMAGE_NAMESPACE:-onevps}/kb:latest\n"  # 3 spaces instead of 4
    repo.compose_file.write_text("".join(lines), encoding="utf-8")
    before = snapshot(repo.root)
    for attempt in (lambda: new_app(repo, "blog"), lambda: remove_app(repo, "kb")):
        with pytest.raises(OnevpsError) as err:
            attempt()
        message = assert_one_line_error(err)
        assert f"docker-compose.yml line {lineno} " in message
        assert "fix the YAML by hand" in message
        assert snapshot(repo.root) == before


def test_folder_without_compose_entry_is_refused(repo):
    (repo.root / "apps" / "blog").mkdir()
    (repo.root / "apps" / "blog" / "main.py").write_text("# mine\n")
    before = snapshot(repo.root)
    with pytest.raises(OnevpsError) as err:
        new_app(repo, "blog")
    message = assert_one_line_error(err)
    assert "apps/blog exists but has no compose entry" in message
    assert "repair first: delete apps/blog or add its entry by hand" in message
    assert snapshot(repo.root) == before


def test_other_orphan_folder_blocks_new_app(repo):
    (repo.root / "apps" / "orphan").mkdir()
    before = snapshot(repo.root)
    with pytest.raises(OnevpsError) as err:
        new_app(repo, "blog")
    message = assert_one_line_error(err)
    assert "apps/orphan has no compose entry" in message and "repair first: delete apps/orphan" in message
    assert snapshot(repo.root) == before


def test_compose_entry_without_folder_is_refused(repo):
    shutil.rmtree(repo.root / "apps" / "kb")
    before = snapshot(repo.root)
    with pytest.raises(OnevpsError) as err:
        new_app(repo, "blog")
    message = assert_one_line_error(err)
    assert "app kb is in the compose file but apps/kb is missing" in message
    assert "repair first: restore apps/kb with git or `inv remove-app kb`" in message
    assert snapshot(repo.root) == before
    # The suggested repair works.
    remove_app(repo, "kb")
    assert checks.problems(repo) == []


@pytest.mark.parametrize("domain", ["-bad.com", "a..b", "bad domain", "x_y.com", "", "a" * 64 + ".com"])
def test_bad_domain_is_refused(repo, domain):
    before = snapshot(repo.root)
    with pytest.raises(OnevpsError) as err:
        new_app(repo, "blog", "base", domain)
    message = assert_one_line_error(err)
    assert message.startswith(f"error: --domain {domain!r} must be a host name")
    assert snapshot(repo.root) == before


def test_sleep_after_adds_the_label_and_the_waker_route(repo):
    before = compose_text(repo)
    new_app(repo, "blog", "base", None, "90m")
    added = changed_lines(compose_diff(before, compose_text(repo)))
    assert '+      onevps.sleep_after: "90m"\n' in added
    assert registry.load(repo.compose_file).get("blog").sleep_after == 5400
    routes = (repo.root / "nginx" / "templates" / "apps.conf.template").read_text()
    blog = routes[routes.index("server_name blog."):]
    assert "if (-f /var/lib/onevps/asleep/blog)" in blog and "proxy_set_header X-Onevps-App blog;" in blog
    assert checks.problems(repo) == []
    remove_app(repo, "blog")
    assert compose_text(repo) == before


@pytest.mark.parametrize("value", ["soon", "0", "15 min", "-1m"])
def test_bad_sleep_after_is_refused_and_changes_nothing(repo, value):
    before = snapshot(repo.root)
    with pytest.raises(OnevpsError) as err:
        new_app(repo, "blog", "base", None, value)
    assert assert_one_line_error(err).startswith("error: --sleep-after: ")
    assert snapshot(repo.root) == before


def test_remove_unknown_or_shared_is_refused(repo):
    before = snapshot(repo.root)
    for name, reason in [("blog", "unknown app 'blog'"), ("redis", "is a shared service"),
                         ("base-tier", "is a shared service")]:
        with pytest.raises(OnevpsError) as err:
            remove_app(repo, name)
        assert reason in assert_one_line_error(err)
    assert snapshot(repo.root) == before


def _fail_on_call(monkeypatch, n):
    real = composefile.atomic_write
    calls = []

    def flaky(path, text):
        calls.append(path)
        if len(calls) == n:
            raise OSError(28, "No space left on device (simulated)")
        return real(path, text)

    monkeypatch.setattr(composefile, "atomic_write", flaky)
    return calls


@pytest.mark.parametrize("fail_on", [1, 2, 3])
def test_failure_in_the_middle_of_new_app_changes_nothing(repo, monkeypatch, fail_on):
    before = snapshot(repo.root)
    plan = apps.plan_new_app(repo, "blog")
    assert plan.staging is not None and plan.staging.parent == repo.root / "apps"
    calls = _fail_on_call(monkeypatch, fail_on)
    with pytest.raises(OSError):
        apps.apply(plan)
    apps.discard(plan)
    assert len(calls) >= fail_on
    assert snapshot(repo.root) == before
    assert stray(repo.root) == []


@pytest.mark.parametrize("fail_on", [1, 2, 3])
def test_failure_in_the_middle_of_remove_app_changes_nothing(repo, monkeypatch, fail_on):
    before = snapshot(repo.root)
    plan = apps.plan_remove_app(repo, "kb")
    _fail_on_call(monkeypatch, fail_on)
    with pytest.raises(OSError):
        apps.apply(plan)
    assert snapshot(repo.root) == before
    assert stray(repo.root) == []


# ---------------------------------------------- fixed bugs (regressions) --

def test_name_with_trailing_newline_is_a_name_error(repo):
    before = snapshot(repo.root)
    with pytest.raises(OnevpsError) as err:
        new_app(repo, "blog\n")
    assert snapshot(repo.root) == before
    message = assert_one_line_error(err)
    assert "<compose>" not in message and "DNS label" in message


@pytest.mark.parametrize("name", sorted(YAML_KEYWORDS))
def test_yaml_keyword_names_are_added_or_refused_cleanly(repo, name):
    before = snapshot(repo.root)
    try:
        plan = apps.plan_new_app(repo, name)
    except OnevpsError:
        assert snapshot(repo.root) == before
        return
    try:
        new = registry.from_data(composefile.loads(plan.writes[repo.compose_file]))
        assert new.names().count(name) == 1
    finally:
        apps.discard(plan)


@pytest.mark.parametrize("domain", ["true", "null", "0x10"])
def test_domain_label_reads_back_as_written(repo, domain):
    new_app(repo, "vision", "ml", domain)
    assert registry.load(repo.compose_file).get("vision").domain == domain
    assert f"server_name vision.${{DOMAIN}} {domain};" in (repo.root / nginx.ROUTES_FILE).read_text()


# ------------------------------------------------------ property-based --

PROPERTY_SETTINGS = hsettings(max_examples=25, deadline=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture])

NAMES = st.one_of(
    st.text(max_size=70),
    st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
    st.sampled_from(["kb", "nginx", "www", "base-tier", "a" * 63, "a" * 64, "x-", "blog\n", "Blog"]),
)


@PROPERTY_SETTINGS
@given(name=NAMES)
def test_property_plan_new_app_succeeds_once_or_changes_nothing(name):
    assume(name not in YAML_KEYWORDS)  # known bug, see test_yaml_keyword_names_are_added_or_refused_cleanly
    with tempfile.TemporaryDirectory() as tmp:
        project = make_copy(Path(tmp))
        before = snapshot(project.root)
        try:
            plan = apps.plan_new_app(project, name)
        except OnevpsError as err:
            assert "\n" not in err.message and err.message.startswith("error: ")
        else:
            try:
                data = composefile.loads(plan.writes[project.compose_file])
                assert list(data["services"]).count(name) == 1
                new = registry.from_data(data)
                assert new.names().count(name) == 1
                assert registry.problems(new) == []
                assert plan.new_dirs == [project.root / "apps" / name]
            finally:
                apps.discard(plan)
        assert snapshot(project.root) == before


OPS = st.lists(st.tuples(st.sampled_from(["new", "remove"]),
                         st.sampled_from(["a1", "b2", "c3", "d4", "e5", "f6"]),
                         st.sampled_from(["base", "ml"])), max_size=12)


@PROPERTY_SETTINGS
@given(ops=OPS, data=st.data())
def test_property_random_new_and_remove_keep_the_repository_consistent(ops, data):
    with tempfile.TemporaryDirectory() as tmp:
        project = make_copy(Path(tmp))
        start = snapshot(project.root)
        added: dict[str, str] = {}  # name -> tier

        def check_state():
            reg = registry.load(project.compose_file)
            assert checks.problems(project) == []
            assert len(set(reg.hosts.values())) == len(reg.hosts)
            assert {a.name: a.tier for a in reg.apps if a.name not in ORIGINAL_APPS} == added
            assert stray(project.root) == []

        for op, name, tier in ops:
            if op == "new" and name not in added:
                new_app(project, name, tier)
                added[name] = tier
            elif op == "remove" and name in added:
                remove_app(project, name)
                del added[name]
            else:  # a refusal must change nothing
                before = snapshot(project.root)
                with pytest.raises(OnevpsError):
                    new_app(project, name, tier) if op == "new" else remove_app(project, name)
                assert snapshot(project.root) == before
            check_state()
        for name in data.draw(st.permutations(sorted(added)), label="removal order"):
            remove_app(project, name)
            del added[name]
            check_state()
        assert snapshot(project.root) == start


# --------------------------------------------------------- the task layer --

def _inv_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No docker on PATH (so no compose check) and an empty settings file."""
    bin_dir = tmp_path / "empty-bin"
    bin_dir.mkdir(exist_ok=True)
    env_file = tmp_path / "empty.env"
    env_file.touch()
    env = {**os.environ, "PATH": str(bin_dir), "ONEVPS_ENV_FILE": str(env_file)}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def run_inv(args, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def _git_status() -> str | None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        return None
    res = subprocess.run([git, "status", "--porcelain=v1", "--untracked-files=all", "--", *COPIED], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    return res.stdout if res.returncode == 0 else None


def _real_repo_state():
    files = {}
    for sub in COPIED:
        for p in sorted((ROOT / sub).rglob("*")):
            if "__pycache__" in p.parts or ".pytest_cache" in p.parts:
                continue
            files[p.relative_to(ROOT).as_posix()] = p.read_bytes() if p.is_file() else None
    return files, _git_status()


@pytest.fixture
def real_repo_unchanged():
    before = _real_repo_state()
    yield
    assert _real_repo_state() == before


def _assert_one_error_line(res, *fragments):
    assert res.returncode == 1, res
    assert "Traceback" not in res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("name, fragment", [("Bad_Name", "uppercase"), ("kb", "already an app"),
                                            ("-x", "start with a letter")])
def test_inv_new_app_bad_name_is_one_error_line(tmp_path, real_repo_unchanged, name, fragment):
    res = run_inv(["new-app", name], ROOT, _inv_env(tmp_path))
    _assert_one_error_line(res, fragment)
    assert res.stdout == ""


def test_inv_new_app_unknown_tier_and_bad_domain(tmp_path, real_repo_unchanged):
    env = _inv_env(tmp_path)
    _assert_one_error_line(run_inv(["new-app", "blog", "--tier", "gpu"], ROOT, env), "unknown tier 'gpu'")
    _assert_one_error_line(run_inv(["new-app", "blog", "--domain", "a..b"], ROOT, env), "--domain 'a..b'")


def test_inv_remove_app_without_yes_and_no_tty_refuses(tmp_path, real_repo_unchanged):
    res = run_inv(["remove-app", "kb"], ROOT, _inv_env(tmp_path))
    _assert_one_error_line(res, "refusing to remove kb without confirmation", "add --yes")


def test_inv_new_app_help(tmp_path, real_repo_unchanged):
    res = run_inv(["new-app", "--help"], ROOT, _inv_env(tmp_path))
    assert res.returncode == 0, res
    assert res.stdout.startswith("usage: inv new-app NAME [--tier base|ml] [--domain HOST] [--sleep-after 15m] [--dry-run]")
    assert res.stderr == ""


def test_inv_new_app_dry_run_changes_nothing(tmp_path, real_repo_unchanged):
    res = run_inv(["new-app", "blog", "--dry-run"], ROOT, _inv_env(tmp_path))
    assert res.returncode == 0, res
    assert res.stdout.splitlines() == [
        "[dry-run] would create apps/blog/",
        f"[dry-run] would update {COMPOSE_REL}",
        f"[dry-run] would update {nginx.ROUTES_FILE.as_posix()}",
        f"[dry-run] would update {nginx.INDEX_FILE.as_posix()}",
    ]
    assert not (ROOT / "apps" / "blog").exists()
    assert not [p for p in (ROOT / "apps").iterdir() if p.name.startswith(".new-app-")]


def test_inv_remove_app_dry_run_changes_nothing(tmp_path, real_repo_unchanged):
    res = run_inv(["remove-app", "kb", "--dry-run"], ROOT, _inv_env(tmp_path))
    assert res.returncode == 0, res
    assert "[dry-run] would delete apps/kb/" in res.stdout.splitlines()


def test_inv_new_app_yaml_keyword_name_is_one_line(tmp_path, real_repo_unchanged):
    res = run_inv(["new-app", "null"], ROOT, _inv_env(tmp_path))
    assert "Traceback" not in res.stderr
    assert res.returncode in (0, 1) and len(res.stderr.strip().splitlines()) <= 1


def test_inv_new_app_check_remove_app_in_a_copy(tmp_path):
    """The whole task round trip, on a copy that also holds tasks.py and onevps/."""
    copy = tmp_path / "repo"
    project = make_copy(copy)
    shutil.copy2(ROOT / "tasks.py", copy / "tasks.py")
    shutil.copytree(ROOT / "onevps", copy / "onevps", ignore=IGNORE)
    env = _inv_env(tmp_path, PYTHONPATH=str(copy))
    probe = subprocess.run([sys.executable, "-c", "import onevps.config as c; print(c.REPO_ROOT)"],
                           cwd=copy, env=env, capture_output=True, text=True, timeout=60)
    if Path(probe.stdout.strip()) != copy.resolve():  # never let this test touch the real repository
        pytest.skip(f"the copy's onevps package is not the one imported ({probe.stdout.strip()})")
    before = snapshot(copy)

    res = run_inv(["new-app", "blog"], copy, env)
    assert res.returncode == 0, res
    assert res.stdout.splitlines()[:4] == [
        "note: Docker is not available, so `docker compose config` did not check the new file",
        "created apps/blog/ from templates/app/",
        f"added service blog (base tier) at 172.20.0.14 to {COMPOSE_REL}",
        "added nginx route blog.localhost",
    ]
    assert checks.problems(project) == []
    res = run_inv(["check"], copy, env)
    assert res.returncode == 0 and res.stdout.startswith("ok: 8 apps (5 base, 3 ml)"), res

    res = run_inv(["remove-app", "blog"], copy, env)
    _assert_one_error_line(res, "add --yes")
    res = run_inv(["remove-app", "blog", "--yes"], copy, env)
    assert res.returncode == 0, res
    assert res.stdout.startswith("removed app blog: ")
    after = {k: v for k, v in snapshot(copy).items() if "__pycache__" not in k}
    assert after == {k: v for k, v in before.items() if "__pycache__" not in k}


# ------------------------------ line endings: CRLF, a BOM, no final newline --

# (newline, BOM, newline after the last line): how an editor on Windows may save the file.
STYLES = {
    "crlf": ("\r\n", False, True),
    "crlf-bom-no-final-newline": ("\r\n", True, False),
    "lf-no-final-newline": ("\n", False, False),
    "lf-bom": ("\n", True, True),
}


def restyle(path: Path, style: tuple[str, bool, bool]) -> bytes:
    """Rewrite an LF file in the given style; return its bytes."""
    newline, bom, final_newline = style
    text = path.read_text(encoding="utf-8")
    text = text if final_newline else text.rstrip("\n")
    data = (("\ufeff" if bom else "") + text.replace("\n", newline)).encode("utf-8")
    path.write_bytes(data)
    return data


def lines_of(data: bytes) -> list[str]:
    return data.decode("utf-8").splitlines(True)


def diff_lines(before: bytes, after: bytes) -> list[str]:
    """The added (+) and removed (-) lines, each with its own line ending."""
    return [line for line in difflib.unified_diff(lines_of(before), lines_of(after), n=0)
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]


def assert_in_style(data: bytes, style: tuple[str, bool, bool]) -> None:
    newline, bom, final_newline = style
    text = data.decode("utf-8")
    assert text.startswith("\ufeff") == bom
    lines = text.splitlines(True)
    body = lines if final_newline else lines[:-1]
    assert all(line.endswith(newline) and not line[:-len(newline)].endswith("\r") for line in body), \
        [line for line in body if not line.endswith(newline)][:3]
    assert (lines[-1].endswith(("\n", "\r"))) == final_newline


@pytest.mark.parametrize("style", list(STYLES))
def test_new_app_and_remove_app_keep_the_compose_files_line_endings(tmp_path, style):
    """A CRLF compose file (or one with a BOM, or no newline at the end) keeps its style through
    new-app and remove-app: the diff is exactly the entry LF files get, in the file's style, and
    remove-app gives back the original bytes. The nginx routes file keeps its line endings."""
    lf = make_copy(tmp_path / "lf")
    lf_before = lf.compose_file.read_bytes()
    new_app(lf, "blog")
    entry_lf = diff_lines(lf_before, lf.compose_file.read_bytes())

    styled = make_copy(tmp_path / "styled")
    spec = STYLES[style]
    before = restyle(styled.compose_file, spec)
    routes = styled.root / nginx.ROUTES_FILE
    restyle(routes, (spec[0], False, True))  # generated: only its line endings are kept
    start = snapshot(styled.root)
    assert registry.load(styled.compose_file).names() == ORIGINAL_APPS  # it reads as the LF file does
    assert checks.problems(styled) == []

    new_app(styled, "blog")
    after = styled.compose_file.read_bytes()
    assert_in_style(after, spec)
    assert_in_style(routes.read_bytes(), (spec[0], False, True))
    added = diff_lines(before, after)
    assert all(line.startswith("+") for line in added), added  # no existing line changed
    assert [line.replace(spec[0], "\n") for line in added] == entry_lf
    assert checks.problems(styled) == []

    remove_app(styled, "blog")
    assert snapshot(styled.root) == start  # byte-identical, every file

    remove_app(styled, "kb")
    after = styled.compose_file.read_bytes()
    assert_in_style(after, spec)
    removed = diff_lines(before, after)
    assert removed and all(line.startswith("-") for line in removed), removed
    assert checks.problems(styled) == []


@pytest.mark.parametrize("fail_on", [1, 2, 3])
def test_a_failed_new_app_puts_a_crlf_compose_file_back_byte_identical(tmp_path, monkeypatch, fail_on):
    project = make_copy(tmp_path)
    restyle(project.compose_file, STYLES["crlf-bom-no-final-newline"])
    restyle(project.root / nginx.ROUTES_FILE, STYLES["crlf"])
    before = snapshot(project.root)
    plan = apps.plan_new_app(project, "blog")
    _fail_on_call(monkeypatch, fail_on)
    with pytest.raises(OSError):
        apps.apply(plan)
    apps.discard(plan)
    assert snapshot(project.root) == before
    assert stray(project.root) == []


def test_inv_new_app_on_a_crlf_compose_file_git_diff_shows_only_the_entry(tmp_path):
    """What a Windows user sees: the compose file committed with CRLF endings,
    `inv new-app blog` -> `git diff` shows the entry's lines added, nothing else;
    `inv remove-app blog --yes` -> git sees no change at all."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    copy = tmp_path / "repo"
    project = make_copy(copy)
    shutil.copy2(ROOT / "tasks.py", copy / "tasks.py")
    shutil.copytree(ROOT / "onevps", copy / "onevps", ignore=IGNORE)
    env = _inv_env(tmp_path, PYTHONPATH=str(copy), GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    probe = subprocess.run([sys.executable, "-c", "import onevps.config as c; print(c.REPO_ROOT)"],
                           cwd=copy, env=env, capture_output=True, text=True, timeout=60)
    if Path(probe.stdout.strip()) != copy.resolve():  # never let this test touch the real repository
        pytest.skip(f"the copy's onevps package is not the one imported ({probe.stdout.strip()})")
    before = restyle(project.compose_file, STYLES["crlf"])

    def git_run(*args: str) -> str:
        res = subprocess.run([git, "-c", "core.autocrlf=false", "-c", "user.name=t", "-c", "user.email=t@t",
                              *args], cwd=copy, env=env, capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return res.stdout.decode("utf-8")

    git_run("init", "-q")
    git_run("add", "-A", "--", "compose", "nginx", "apps", "templates")
    git_run("commit", "-q", "-m", "crlf")

    res = run_inv(["new-app", "blog"], copy, env)
    assert res.returncode == 0, res
    entry_lines = textwrap.indent(apps.entry_text("blog", "base", 14), "  ").count("\n") + 3  # + `<<: *app`, `<<: *app-env`, blank
    assert git_run("diff", "--numstat", "--", "compose").split() == [str(entry_lines), "0", COMPOSE_REL]
    added = [line for line in git_run("diff", "-U0", "--", COMPOSE_REL).split("\n") if line.startswith("+ ")
             or line == "+\r"]
    assert added and all(line.endswith("\r") for line in added)  # every new line is CRLF
    assert project.compose_file.read_bytes().count(b"\n") == project.compose_file.read_bytes().count(b"\r\n")

    res = run_inv(["remove-app", "blog", "--yes"], copy, env)
    assert res.returncode == 0, res
    assert git_run("status", "--porcelain", "--untracked-files=all", "--", "compose", "nginx", "apps") == ""
    assert project.compose_file.read_bytes() == before


def test_a_generated_nginx_file_with_a_bom_is_written_clean(repo):
    """Generated files keep only their line endings: a BOM or a missing final newline in the
    routes file (which `inv check` reports as out of date) is gone after new-app, as before."""
    routes = repo.root / nginx.ROUTES_FILE
    restyle(routes, ("\r\n", True, False))
    new_app(repo, "blog")
    assert_in_style(routes.read_bytes(), ("\r\n", False, True))
    assert checks.problems(repo) == []
