import shlex

import pytest

from onevps import commands
from onevps.config import load


@pytest.fixture
def s(tmp_path):
    (tmp_path / "compose").mkdir()
    return load(root=tmp_path, environ={"COMPOSE_PROJECT_NAME": "demo"})


def base(s):
    return f"docker compose --project-name demo --file {s.compose_file}"


def test_docker_drops_none():
    assert commands.docker("ps", None, "-a") == ["docker", "ps", "-a"]


def test_compose_adds_project_file_and_env_file(tmp_path):
    (tmp_path / ".env").write_text("DOMAIN=example.com\n")
    s = load(root=tmp_path, environ={})
    assert shlex.join(commands.compose(s, "ps")) == (
        f"docker compose --project-name onevps --file {tmp_path}/compose/docker-compose.yml "
        f"--env-file {tmp_path}/.env ps")


def test_build_tier(s):
    assert shlex.join(commands.build_tier(s, "ml")) == base(s) + " --profile tiers build ml-tier"


def test_build_apps(s):
    assert shlex.join(commands.build_apps(s, ["kb", "api-gw"])) == base(s) + " build kb api-gw"
    assert shlex.join(commands.build_apps(s, ["kb"], no_cache=True)) == base(s) + " build --no-cache kb"


def test_up_waits_for_health(s):
    assert shlex.join(commands.up(s, ["nginx", "kb"])) == (
        base(s) + " up --detach --no-build --remove-orphans --wait --wait-timeout 900 nginx kb")
    assert shlex.join(commands.up(s, wait=False)) == base(s) + " up --detach --no-build --remove-orphans"
    assert commands.up(s, timeout=30)[-1] == "30"


def test_down(s):
    assert shlex.join(commands.down(s)) == base(s) + " --profile '*' down --remove-orphans"
    assert shlex.join(commands.down(s, volumes=True)) == base(s) + " --profile '*' down --remove-orphans --volumes"


def test_logs(s):
    assert shlex.join(commands.logs(s, ["kb"], follow=True, tail=5)) == base(s) + " logs --follow --tail 5 kb"
    assert shlex.join(commands.logs(s, tail=None)) == base(s) + " logs"


def test_ps_and_restart(s):
    assert shlex.join(commands.ps(s)) == base(s) + " ps --all --format json"
    assert shlex.join(commands.restart(s, ["kb"])) == base(s) + " restart kb"


def test_paths_with_spaces_are_one_argument(tmp_path):
    root = tmp_path / "my projects"
    (root / "compose").mkdir(parents=True)
    s = load(root=root, environ={})
    argv = commands.ps(s)
    assert str(root / "compose" / "docker-compose.yml") in argv
    assert shlex.split(shlex.join(argv)) == argv


def test_image_inspect():
    assert commands.image_labels("onevps/kb:latest") == [
        "docker", "image", "inspect", "--format", "{{json .Config.Labels}}", "onevps/kb:latest"]


def test_one_compose_up_for_every_caller(s):
    assert shlex.join(commands.up(s, ["kb"], timeout=180, remove_orphans=False, no_deps=True)) == (
        base(s) + " up --detach --no-build --no-deps --wait --wait-timeout 180 kb")
    assert shlex.join(commands.up(s, ["nginx", "redis"], timeout=900, remove_orphans=False, no_recreate=True)) == (
        base(s) + " up --detach --no-build --no-recreate --wait --wait-timeout 900 nginx redis")


def test_the_projects_containers_and_the_modules_by_tool():
    assert shlex.join(commands.docker_cmd.project_containers("prod")) == (
        "docker ps --all --quiet --filter label=com.docker.compose.project=prod")
    assert commands.docker is commands.docker_cmd.docker and commands.compose is commands.compose_cmd.compose
    assert commands.shell.sh("echo \"$1\"", "a b") == ["sh", "-c", "echo \"$1\"", "sh", "a b"]


def test_config_check_of_a_candidate_file(s, tmp_path):
    assert shlex.join(commands.config_check(s, tmp_path / "c.yml")) == (
        f"docker compose --project-name {s.project_name} --file {tmp_path / 'c.yml'} config --quiet")
