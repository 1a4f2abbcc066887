import shlex

import pytest

from onevps import commands
from onevps.config import load
from onevps.project import Project


@pytest.fixture
def p(tmp_path):
    (tmp_path / "compose").mkdir()
    return Project(tmp_path)


@pytest.fixture
def s(p):
    return load(p, environ={"COMPOSE_PROJECT_NAME": "demo"})


def base(p):
    return f"docker compose --project-name demo --file {p.compose_file}"


def test_docker_drops_none():
    assert commands.docker("ps", None, "-a") == ["docker", "ps", "-a"]


def test_compose_adds_project_file_and_env_file(tmp_path):
    (tmp_path / ".env").write_text("DOMAIN=example.com\n")
    p = Project(tmp_path)
    s = load(p, environ={})
    assert shlex.join(commands.compose(p, s, "ps")) == (
        f"docker compose --project-name onevps --file {tmp_path}/compose/docker-compose.yml "
        f"--env-file {tmp_path}/.env ps")


def test_build_tier(p, s):
    assert shlex.join(commands.build_tier(p, s, "ml")) == base(p) + " --profile tiers build ml-tier"


def test_build_apps(p, s):
    assert shlex.join(commands.build_apps(p, s, ["kb", "api-gw"])) == base(p) + " build kb api-gw"
    assert shlex.join(commands.build_apps(p, s, ["kb"], no_cache=True)) == base(p) + " build --no-cache kb"


def test_up_waits_for_health(p, s):
    assert shlex.join(commands.up(p, s, ["nginx", "kb"])) == (
        base(p) + " up --detach --no-build --remove-orphans --wait --wait-timeout 900 nginx kb")
    assert shlex.join(commands.up(p, s, wait=False)) == base(p) + " up --detach --no-build --remove-orphans"
    assert commands.up(p, s, timeout=30)[-1] == "30"


def test_down(p, s):
    assert shlex.join(commands.down(p, s)) == base(p) + " --profile '*' down --remove-orphans"
    assert shlex.join(commands.down(p, s, volumes=True)) == base(p) + " --profile '*' down --remove-orphans --volumes"


def test_logs(p, s):
    assert shlex.join(commands.logs(p, s, ["kb"], follow=True, tail=5)) == base(p) + " logs --follow --tail 5 kb"
    assert shlex.join(commands.logs(p, s, tail=None)) == base(p) + " logs"


def test_ps_and_restart(p, s):
    assert shlex.join(commands.ps(p, s)) == base(p) + " ps --all --format json"
    assert shlex.join(commands.restart(p, s, ["kb"])) == base(p) + " restart kb"


def test_paths_with_spaces_are_one_argument(tmp_path):
    root = tmp_path / "my projects"
    (root / "compose").mkdir(parents=True)
    p = Project(root)
    s = load(p, environ={})
    argv = commands.ps(p, s)
    assert str(root / "compose" / "docker-compose.yml") in argv
    assert shlex.split(shlex.join(argv)) == argv


def test_image_inspect():
    assert commands.image_labels("onevps/kb:latest") == [
        "docker", "image", "inspect", "--format", "{{json .Config.Labels}}", "onevps/kb:latest"]


def test_one_compose_up_for_every_caller(p, s):
    assert shlex.join(commands.up(p, s, ["kb"], timeout=180, remove_orphans=False, no_deps=True)) == (
        base(p) + " up --detach --no-build --no-deps --wait --wait-timeout 180 kb")
    assert shlex.join(commands.up(p, s, ["nginx", "redis"], timeout=900, remove_orphans=False, no_recreate=True)) == (
        base(p) + " up --detach --no-build --no-recreate --wait --wait-timeout 900 nginx redis")


def test_the_projects_containers_and_the_modules_by_tool():
    assert shlex.join(commands.docker_cmd.project_containers("prod")) == (
        "docker ps --all --quiet --filter label=com.docker.compose.project=prod")
    assert commands.docker is commands.docker_cmd.docker and commands.compose is commands.compose_cmd.compose
    assert commands.shell.sh("echo \"$1\"", "a b") == ["sh", "-c", "echo \"$1\"", "sh", "a b"]


def test_config_check_of_a_candidate_file(p, s, tmp_path):
    assert shlex.join(commands.config_check(p, s, tmp_path / "c.yml")) == (
        f"docker compose --project-name {s.project_name} --file {tmp_path / 'c.yml'} config --quiet")
