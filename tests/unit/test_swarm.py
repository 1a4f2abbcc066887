"""The pure parts of Swarm support: findings, the rendered stack file (golden),
the nginx routes for Swarm, and the commands. No Docker here."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import os
import shlex
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from onevps import composefile, config, nginx, registry, swarm
from onevps.commands import swarm as swarm_commands
from onevps.errors import OnevpsError
from onevps.project import Project
from onevps.runner import Result

from . import goldens

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "docker-stack.yml"
GOLDEN_ROUTES = ROOT / "tests" / "golden" / "swarm-nginx-apps.conf.template"
REGENERATE = "regenerate with: ONEVPS_UPDATE_GOLDEN=1 pytest tests/unit/test_swarm.py (then read the diff)"
PROJECT = Project(ROOT)


def settings(**env) -> config.Settings:
    return config.load(PROJECT, environ=env, env_file=ROOT / ".env.absent")


def data():
    return composefile.load(ROOT / "compose" / "docker-compose.yml")


def load_stack(text: str) -> dict:
    return swarm.plain(composefile.loads(text))


# ------------------------------------------------------------------ golden --

def test_stack_file_matches_the_golden_file(tmp_path):
    """Rendered from the frozen compose file (tests/unit/goldens.py), not the live one, with the
    nginx files it renders; the hand-kept nginx files its configs name are this repository's."""
    rendered = swarm.render(goldens.repository(tmp_path, ["nginx"]), settings())
    if os.environ.get("ONEVPS_UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered.stack)
        GOLDEN_ROUTES.write_text(rendered.routes)
    assert rendered.stack == GOLDEN.read_text(), REGENERATE
    assert rendered.routes == GOLDEN_ROUTES.read_text(), REGENERATE


def test_render_is_deterministic():
    first = swarm.render(PROJECT, settings())
    again = swarm.render(PROJECT, settings(), data=composefile.loads(composefile.dumps(data())))
    assert first.stack == again.stack and first.routes == again.routes


def test_no_secret_is_written_the_deploy_fills_it_in():
    text = swarm.render(PROJECT, settings(REDIS_PASSWORD="a-secret-value-0123456789")).stack
    assert "a-secret-value" not in text
    # Redis reads its password from the environment (filled in by the deploy) and writes only its
    # hash to its ACL file; each app's own password is a variable the deploy fills in too.
    doc = load_stack(text)
    assert 'printf %s "$$REDISCLI_AUTH" | sha256sum' in doc["services"]["redis"]["command"][2]
    assert "REDISCLI_AUTH: ${REDIS_PASSWORD:?" in text
    assert doc["services"]["kb"]["environment"]["REDIS_URL"] == "redis://kb:${ONEVPS_REDIS_PASSWORD_KB:-}@redis:6379/0"


# ------------------------------------------------------- what Swarm accepts --

REJECTED_OR_IGNORED = {"build", "container_name", "depends_on", "mem_limit", "cpus", "restart", "security_opt",
                       "profiles", "tmpfs", "memswap_limit", "mem_reservation", "pull_policy", "pids_limit"}


def test_the_stack_file_has_none_of_the_keys_swarm_rejects_or_ignores():
    doc = load_stack(swarm.render(PROJECT, settings()).stack)
    assert doc["version"] == "3.9"  # deploy.resources.limits.pids is new in 3.9
    for name, svc in doc["services"].items():
        assert not REJECTED_OR_IGNORED & set(svc), name
        assert isinstance(svc["networks"], list), f"{name}: no static address left"
        assert svc["deploy"]["endpoint_mode"] == "dnsrr"


def test_profiles_leave_tiers_and_certbot_out():
    doc = load_stack(swarm.render(PROJECT, settings()).stack)
    assert set(doc["services"]) == {"nginx", "chroma-auth", "chromadb", "redis", "ollama", "portfolio", "chatbot",
                                    "kb", "api-gw", "embedder", "classify", "summary"}


def test_app_limits_become_deploy_resources_and_updates_roll_start_first():
    doc = load_stack(swarm.render(PROJECT, settings()).stack)
    portfolio, embedder = doc["services"]["portfolio"], doc["services"]["embedder"]
    assert portfolio["deploy"]["resources"] == {"limits": {"cpus": "${APP_CPUS:-1.0}",
                                                           "memory": "${APP_MEM_LIMIT:-256m}", "pids": 256}}
    assert embedder["deploy"]["resources"]["limits"]["memory"] == "${ML_APP_MEM_LIMIT:-1g}"
    assert embedder["deploy"]["resources"]["limits"]["pids"] == 512
    assert portfolio["deploy"]["replicas"] == 1
    assert portfolio["deploy"]["update_config"] == {
        "parallelism": 1, "delay": "2s", "order": "start-first", "failure_action": "rollback",
        "monitor": "15s", "max_failure_ratio": 0}
    assert portfolio["deploy"]["rollback_config"]["order"] == "start-first"
    assert portfolio["deploy"]["restart_policy"]["condition"] == "any"
    assert {"type": "tmpfs", "target": "/tmp"} in portfolio["volumes"]
    assert portfolio["cap_drop"] == ["ALL"] and portfolio["read_only"] is True and portfolio["user"] == "app"


# ------------------------------------------------------------ process limits --

SHARED_PIDS = {"nginx": 256, "chroma-auth": 128, "chromadb": 512, "redis": 64, "ollama": 1024}


def test_every_service_gets_its_process_limit_as_a_number():
    """docker stack deploy (CLI 28.2) rejects pids_limit ("Additional property pids_limit is not
    allowed") and takes deploy.resources.limits.pids (3.9) as a number only: "${VAR:-256}" there is
    "must be a integer". So the setting's value is written in; the stack file says 3.9."""
    rendered = swarm.render(PROJECT, settings())
    doc = load_stack(rendered.stack)
    apps = set(rendered.apps)
    for name, svc in doc["services"].items():
        pids = svc["deploy"]["resources"]["limits"]["pids"]
        want = SHARED_PIDS.get(name) or (512 if name in ("embedder", "classify", "summary") else 256)
        assert type(pids) is int and pids == want, name
        assert name in apps or name in SHARED_PIDS
    assert "pids: 256\n" in rendered.stack and "pids: '256'" not in rendered.stack  # a YAML number
    finding = next(f for f in rendered.findings if f.key == "pids_limit")
    assert set(finding.services) == set(doc["services"]) and finding.rule.swarm == "rejects"


def test_the_process_limit_is_the_targets_setting():
    """The deploy renders with the target's settings (fab: the server's .env), so the number
    written is the one that target's compose would use."""
    doc = load_stack(swarm.render(PROJECT, settings(APP_PIDS_LIMIT="300", ML_APP_PIDS_LIMIT="2000",
                                                    REDIS_PIDS_LIMIT="32")).stack)
    limits = {n: s["deploy"]["resources"]["limits"]["pids"] for n, s in doc["services"].items()}
    assert (limits["kb"], limits["summary"], limits["redis"], limits["nginx"]) == (300, 2000, 32, 256)


@pytest.mark.parametrize("value, pids", [(128, 128), ("77", 77), ("${REDIS_PIDS_LIMIT}", 64),
                                         ("${APP_PIDS_LIMIT:-9}", 256)])
def test_a_hand_written_process_limit_is_a_number_or_a_setting(value, pids):
    d = data()
    d["services"]["kb"]["pids_limit"] = value
    doc = load_stack(swarm.render(PROJECT, settings(), data=d).stack)
    assert doc["services"]["kb"]["deploy"]["resources"]["limits"]["pids"] == pids


@pytest.mark.parametrize("value, message", [
    ("${MY_LIMIT:-100}", r"service kb: pids_limit \$\{MY_LIMIT:-100\} names no onevps setting"),
    ("-1", "service kb: pids_limit '-1' is not a number of at least 1"),
    ("0", "service kb: pids_limit '0' is not a number of at least 1"),
    ("many", "service kb: pids_limit 'many' is not a number of at least 1"),
])
def test_a_process_limit_swarm_cannot_take_is_refused(value, message):
    d = data()
    d["services"]["kb"]["pids_limit"] = value
    with pytest.raises(OnevpsError, match=message):
        swarm.render(PROJECT, settings(), data=d)


def test_a_hand_written_deploy_limit_wins():
    d = data()
    d["services"]["kb"]["deploy"] = {"resources": {"limits": {"pids": 40, "memory": "100m"}}}
    kb = load_stack(swarm.render(PROJECT, settings(), data=d).stack)["services"]["kb"]
    assert kb["deploy"]["resources"] == {"limits": {"pids": 40, "memory": "100m"}}


def test_stateful_and_published_services_stop_first_and_stay_on_the_manager():
    doc = load_stack(swarm.render(PROJECT, settings()).stack)
    for name in ("redis", "chromadb", "ollama", "nginx"):
        dep = doc["services"][name]["deploy"]
        assert dep["update_config"]["order"] == "stop-first", name
        assert dep["placement"] == {"constraints": ["node.role == manager"]}, name
    d = data()
    d["services"]["redis"]["command"] = ["redis-server", "--appendonly", "yes"]
    doc = load_stack(swarm.render(PROJECT, settings(), data=d).stack)
    assert doc["services"]["redis"]["command"][2] == "yes"  # quoted: YAML 1.1 would read a boolean


def test_static_addresses_in_the_environment_become_service_names():
    env = load_stack(swarm.render(PROJECT, settings()).stack)["services"]["kb"]["environment"]
    assert env["CHROMA_URL"] == "http://chroma-auth:8000"  # .3 is the gateway now
    assert env["OLLAMA_URL"] == "http://ollama:11434"
    assert env["REDIS_URL"].endswith("@redis:6379/0")


def test_nginx_publishes_in_host_mode_and_gets_its_files_as_configs():
    doc = load_stack(swarm.render(PROJECT, settings()).stack)
    web = doc["services"]["nginx"]
    assert web["ports"] == [
        {"target": 80, "published": "${HTTP_PORT:-8080}", "protocol": "tcp", "mode": "host"},
        {"target": 443, "published": "${HTTPS_PORT:-8443}", "protocol": "tcp", "mode": "host"}]
    targets = {c["target"]: c for c in web["configs"]}
    assert "/etc/nginx/nginx.conf" in targets and "/etc/nginx/snippets/proxy.conf" in targets
    assert targets["/docker-entrypoint.d/40-onevps-selfsigned-cert.sh"]["mode"] == 0o555
    routes = targets["/etc/nginx/templates/apps.conf.template"]["source"]
    assert doc["configs"][routes] == {"file": "nginx-apps.conf.template"}  # the Swarm routes, not the static ones
    assert doc["configs"][targets["/etc/nginx/nginx.conf"]["source"]] == {"file": "../../nginx/nginx.conf"}
    for key in doc["configs"]:
        assert len("onevps-swarm_" + key) <= 64  # Docker's limit on config names
    assert not [v for v in web["volumes"] if isinstance(v, str) and v.startswith(".")]


def test_a_changed_nginx_file_is_a_new_config(tmp_path):
    shutil_copy(tmp_path)
    before = load_stack(swarm.render(Project(tmp_path), settings_at(tmp_path)).stack)["configs"]
    proxy = tmp_path / "nginx" / "snippets" / "proxy.conf"
    proxy.write_text(proxy.read_text() + "# changed\n")
    after = load_stack(swarm.render(Project(tmp_path), settings_at(tmp_path)).stack)["configs"]
    changed = set(after) - set(before)
    assert len(changed) == 1 and next(iter(changed)).startswith("proxy-conf-")


def shutil_copy(tmp_path: Path) -> None:
    import shutil

    for folder in ("compose", "nginx"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("swarm"))


def settings_at(root: Path, **env) -> config.Settings:
    return config.load(Project(root), environ=env, env_file=root / ".env.absent")


def test_images_take_the_registry_and_a_tag_variable():
    doc = load_stack(swarm.render(PROJECT, settings(REGISTRY="registry.example.com:5000")).stack)
    assert doc["services"]["api-gw"]["image"] == (
        "registry.example.com:5000/${IMAGE_NAMESPACE:-onevps}/api-gw:${TAG_API_GW:-latest}")
    assert doc["services"]["redis"]["image"] == "redis:7.4-bookworm"  # upstream images stay as they are
    local = load_stack(swarm.render(PROJECT, settings()).stack)
    assert local["services"]["portfolio"]["image"] == "${IMAGE_NAMESPACE:-onevps}/portfolio:${TAG_PORTFOLIO:-latest}"


def test_a_selection_of_services_and_its_routes():
    rendered = swarm.render(PROJECT, settings(), only=["nginx", "redis", "portfolio", "api-gw"])
    doc = load_stack(rendered.stack)
    assert list(doc["services"]) == ["nginx", "redis", "portfolio", "api-gw"]
    assert rendered.apps == ("portfolio", "api-gw")
    assert set(doc["volumes"]) == {"nginx-certs", "nginx-buffers", "acme-webroot", "redis-data", "sleep-state"}
    assert "server_name portfolio.${DOMAIN};" in rendered.routes and "kb." not in rendered.routes
    with pytest.raises(OnevpsError, match="unknown service"):
        swarm.render(PROJECT, settings(), only=["nginx", "nope"])


def test_replicas_come_from_the_app_label():
    d = data()
    d["services"]["kb"]["labels"]["onevps.replicas"] = "3"
    doc = load_stack(swarm.render(PROJECT, settings(), data=d).stack)
    assert doc["services"]["kb"]["deploy"]["replicas"] == 3
    # several replicas update stop-first (they stay spread); one replica start-first
    assert doc["services"]["kb"]["deploy"]["update_config"]["order"] == "stop-first"
    assert doc["services"]["portfolio"]["deploy"]["update_config"]["order"] == "start-first"
    d["services"]["kb"]["labels"]["onevps.replicas"] = "many"
    with pytest.raises(OnevpsError, match="onevps.replicas='many'"):
        swarm.render(PROJECT, settings(), data=d)
    d["services"]["kb"]["labels"]["onevps.replicas"] = "1"
    d["services"]["redis"]["labels"] = {"onevps.replicas": "2"}
    with pytest.raises(OnevpsError, match="keeps data in a volume"):
        swarm.render(PROJECT, settings(), data=d)


# ------------------------------- ChromaDB behind its gateway, or not --

def test_any_network_becomes_an_overlay_and_internal_stays_internal():
    """The compose file puts chromadb on the internal network chroma-private
    behind chroma-auth (which took .3 on app-network)."""
    doc = load_stack(swarm.render(PROJECT, settings()).stack)
    assert doc["networks"] == {"app-network": {"driver": "overlay"},
                               "chroma-private": {"driver": "overlay", "internal": True}}
    assert doc["services"]["chromadb"]["networks"] == ["chroma-private"]
    assert doc["services"]["chroma-auth"]["networks"] == ["app-network", "chroma-private"]
    assert doc["services"]["kb"]["environment"]["CHROMA_URL"] == "http://chroma-auth:8000"
    assert doc["services"]["kb"]["environment"]["CHROMA_TOKEN"] == "${ONEVPS_CHROMA_TOKEN_KB:-}"
    gate = doc["services"]["chroma-auth"]
    assert [c["target"] for c in gate["configs"]] == ["/etc/nginx/templates/default.conf.template"]
    assert gate["environment"]["NGINX_ENVSUBST_FILTER"] == "^CHROMA_TOKEN$$"  # stack deploy reads $$ as $
    assert "depends_on" not in gate


def without_chroma_gateway():
    """The compose file as it was before the gateway: chromadb at .3 on app-network."""
    d = data()
    services = d["services"]
    del services["chroma-auth"]
    services["chromadb"]["networks"] = {"app-network": {"ipv4_address": "${NETWORK_PREFIX:-172.20.0}.3"}}
    del d["networks"]["chroma-private"]
    return d


def test_the_renderer_is_generic_over_services_and_networks():
    doc = load_stack(swarm.render(PROJECT, settings(), data=without_chroma_gateway()).stack)
    assert doc["networks"] == {"app-network": {"driver": "overlay"}}
    assert "chroma-auth" not in doc["services"]
    assert doc["services"]["kb"]["environment"]["CHROMA_URL"] == "http://chromadb:8000"


def test_swarm_subnet_gives_each_network_a_slice_in_file_order():
    doc = load_stack(swarm.render(PROJECT, settings(SWARM_SUBNET="10.231.0.0/23")).stack)
    assert doc["networks"]["app-network"]["ipam"] == {"config": [{"subnet": "10.231.0.0/24"}]}
    assert doc["networks"]["chroma-private"]["ipam"] == {"config": [{"subnet": "10.231.1.0/24"}]}
    with pytest.raises(OnevpsError, match="holds 1 /24 network"):
        swarm.render(PROJECT, settings(SWARM_SUBNET="10.231.0.0/24"))
    one = load_stack(swarm.render(PROJECT, settings(SWARM_SUBNET="10.231.0.0/24"), data=without_chroma_gateway()).stack)
    assert one["networks"]["app-network"]["ipam"] == {"config": [{"subnet": "10.231.0.0/24"}]}


def test_bad_swarm_settings_name_the_key():
    with pytest.raises(OnevpsError, match="SWARM_SUBNET='8.8.8.0/24'"):
        settings(SWARM_SUBNET="8.8.8.0/24")
    with pytest.raises(OnevpsError, match="REGISTRY='https://x'"):
        settings(REGISTRY="https://x")


# ---------------------------------------------------------------- findings --

def test_swarm_check_finds_what_swarm_ignores_or_rejects():
    found = {f.key: f for f in swarm.findings(PROJECT, settings())}
    assert set(found) == {"build", "ipv4_address", "ipam", "depends_on", "mem_limit", "cpus", "pids_limit",
                          "restart", "security_opt", "cap_add", "profiles", "tmpfs", "ports", "bind", "volume",
                          "sleep"}
    assert found["depends_on"].services == ("chroma-auth",)
    assert found["sleep"].services == ("waker", "docker-proxy")  # left out: apps never sleep in Swarm mode
    assert found["bind"].services == ("nginx", "chroma-auth")
    assert found["ipam"].services == ("app-network", "chroma-private")
    assert found["profiles"].services == ("base-tier", "ml-tier", "certbot")
    assert found["mem_limit"].rule.swarm == "rejects" and "deploy.resources" in found["mem_limit"].rule.fix
    assert found["ports"].services == ("nginx",)
    assert "portfolio" in found["cpus"].services and "redis" not in found["cpus"].services
    text = swarm.report(swarm.findings(PROJECT, settings()))
    assert "mem_limit [rejects] in nginx, chroma-auth, chromadb" in text
    assert "pids_limit [rejects] in nginx, chroma-auth, chromadb" in text
    assert text.endswith("16 findings (4 would make `docker stack deploy` fail); "
                         "`inv swarm-render` applies every fix above")


def test_unknown_keys_and_plus_interpolation_are_reported():
    d = data()
    d["services"]["kb"]["oom_score_adj"] = 100  # a key onevps does not know: dropped, and said so
    found = {f.key: f.services for f in swarm.findings(PROJECT, settings(), data=d)}
    assert found["unknown"] == ("kb",)
    assert "oom_score_adj" not in load_stack(swarm.render(PROJECT, settings(), data=d).stack)["services"]["kb"]
    d["services"]["kb"]["env_file"] = ["../kb.env"]
    with pytest.raises(OnevpsError, match="kb: env_file is not carried"):
        swarm.render(PROJECT, settings(), data=d)
    del d["services"]["kb"]["env_file"]
    d["services"]["kb"]["environment"] = {"X": "${ACME_CA_BUNDLE:+/etc/x}"}  # its own map, not the shared x-app one
    with pytest.raises(OnevpsError, match=r"kb: environment uses \$\{VAR:\+"):
        swarm.render(PROJECT, settings(), data=d)


# ---------------------------------------------------------- nginx routes --

def test_swarm_routes_reach_apps_by_service_name():
    reg = registry.load(ROOT / "compose" / "docker-compose.yml")
    text = nginx.render_routes(reg, mode="swarm")
    assert "resolver 127.0.0.11 valid=1s ipv6=off;" in text
    for app in reg.apps:
        assert f"set $app_upstream {app.name}:8000;" in text
    assert "NETWORK_PREFIX" not in text.split("\n", 3)[3] and "backup" not in text
    assert nginx.render_routes(reg) == nginx.render_routes(reg, mode="compose")  # compose mode unchanged


# ---------------------------------------------------------------- commands --

def test_stack_deploy_commands():
    assert shlex.join(swarm_commands.stack_deploy_argv("compose/swarm/docker-stack.yml", "onevps", registry=False)) == (
        "docker stack deploy --compose-file compose/swarm/docker-stack.yml --resolve-image never onevps")
    assert shlex.join(swarm_commands.stack_deploy_argv("/opt/apps/compose/swarm/docker-stack.yml", "onevps", registry=True)) == (
        "docker stack deploy --compose-file /opt/apps/compose/swarm/docker-stack.yml --resolve-image always "
        "--with-registry-auth onevps")
    argv = swarm_commands.with_env_lines("/opt/apps/.onevps/stack.env", ["docker", "stack", "deploy", "x"])
    assert argv[:2] == ["sh", "-c"] and argv[3:] == ["sh", "/opt/apps/.onevps/stack.env", "docker", "stack", "deploy", "x"]
    assert ". " not in argv[2] and "eval" not in argv[2]  # the settings are never sourced
    assert swarm_commands.tag_argv("onevps/kb:latest", "r.example/onevps/kb:s-0123") == [
        "docker", "image", "tag", "onevps/kb:latest", "r.example/onevps/kb:s-0123"]
    assert swarm_commands.push_argv("r.example/onevps/kb:s-0123") == ["docker", "image", "push", "r.example/onevps/kb:s-0123"]
    assert shlex.join(swarm_commands.services_argv("onevps")) == (
        "docker service ls --filter label=com.docker.stack.namespace=onevps --format "
        "'{{.Name}}\t{{.Replicas}}\t{{.Image}}'")


def test_a_compose_stack_of_the_same_name_is_found_by_its_networks():
    assert shlex.join(swarm_commands.compose_networks_argv("onevps")) == (
        "docker network ls --filter label=com.docker.compose.project=onevps --format '{{.Name}}'")
    assert swarm.stack_networks(swarm.render(PROJECT, settings())) == ["app-network", "chroma-private"]


def test_tags_and_image_names():
    assert swarm.tag_var("api-gw") == "TAG_API_GW"
    assert swarm.content_tag("sha256:0123456789abcdef0123") == "s-0123456789ab"
    assert swarm.image_repo(settings(), "kb") == "onevps/kb"
    assert swarm.image_repo(settings(REGISTRY="ghcr.io/me"), "kb") == "ghcr.io/me/onevps/kb"


# ----------------------------------- deploy logic, with a scripted runner --

class Scripted:
    """A Runner stand-in answering `docker service ...` from a script of states:
    each frame maps service -> (replicas, UpdateStatus JSON, task template)."""

    dry_run = False

    def __init__(self, frames):
        self.frames, self.said = list(frames), []

    def say(self, msg):
        self.said.append(msg)

    def run(self, argv, step, **kw):
        frame = self.frames[0]
        if argv[:3] == ["docker", "service", "ls"]:
            out = "".join(f"onevps_{n}\t{r}\timg\n" for n, (r, _, _) in frame.items())
        elif argv[:3] == ["docker", "service", "inspect"]:
            out = "".join(f"onevps_{n}\tonevps/{n}:s-1\t{u}\t{t}\n" for n, (_, u, t) in frame.items())
            if len(self.frames) > 1:
                self.frames.pop(0)
        else:
            raise AssertionError(argv)
        return Result(list(argv), 0, out, "")


BEFORE = {"kb": swarm.ServiceState("kb", "onevps/kb:s-1", {"State": "completed", "StartedAt": "t0"}, '{"v":1}')}


def test_wait_follows_an_update_to_its_rollback():
    runner = Scripted([
        {"kb": ("1/1", '{"State":"completed","StartedAt":"t0"}', '{"v":2}')},  # new spec, update not begun
        {"kb": ("2/1", '{"State":"updating","StartedAt":"t1"}', '{"v":2}')},
        {"kb": ("1/1", '{"State":"rollback_started","StartedAt":"t1"}', '{"v":1}')},
        {"kb": ("1/1", '{"State":"rollback_completed","StartedAt":"t1"}', '{"v":1}')},
    ])
    outcome = swarm.wait(runner, "onevps", BEFORE, ["kb"], timeout=60, sleep=lambda s: None)
    assert outcome == {"kb": "rolled back"}
    assert [line.strip() for line in runner.said] == [
        "waiting: kb update pending", "waiting: kb updating", "waiting: kb rollback_started"]


def test_wait_reports_a_completed_update_and_an_untouched_service():
    runner = Scripted([
        {"kb": ("1/1", '{"State":"updating","StartedAt":"t1"}', '{"v":2}'),
         "redis": ("1/1", "null", '{"r":1}')},
        {"kb": ("1/1", '{"State":"completed","StartedAt":"t1"}', '{"v":2}'),
         "redis": ("1/1", "null", '{"r":1}')},
    ])
    before = {**BEFORE, "redis": swarm.ServiceState("redis", "redis:7", None, '{"r":1}')}
    outcome = swarm.wait(runner, "onevps", before, ["kb", "redis"], timeout=60, sleep=lambda s: None)
    assert outcome == {"kb": "completed", "redis": "unchanged"}


def test_wait_gives_up_with_one_line():
    runner = Scripted([{"kb": ("0/1", "null", "{}")}])
    ticks = iter(range(0, 1000, 10))
    with pytest.raises(OnevpsError, match="did not settle within 30s: kb 0/1"):
        swarm.wait(runner, "onevps", {}, ["kb"], timeout=30, clock=lambda: next(ticks), sleep=lambda s: None)


def test_server_values_render_with_the_local_files():
    local = settings()
    server = settings(REGISTRY="r.example:5000", COMPOSE_PROJECT_NAME="prod")
    text = swarm.render(PROJECT, server).stack
    assert "r.example:5000/${IMAGE_NAMESPACE:-onevps}/kb:" in text
    assert local.registry == ""


# ------------------------------------------------ swarm-check lists them all --

def _tasks_module():
    spec = importlib.util.spec_from_file_location("onevps_tasks_for_swarm_check", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_swarm_check_lists_every_refused_construct_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    shutil_copy(tmp_path)
    d = data()
    d["services"]["kb"]["env_file"] = ["../kb.env"]
    d["services"]["api-gw"]["volumes"] = ["./gw-data:/data"]  # writable: cannot move between nodes
    (tmp_path / "compose" / "docker-compose.yml").write_text(composefile.dumps(d))
    at = settings_at(tmp_path)
    checked = swarm.check(Project(tmp_path), at)
    assert [err.what for err in checked.refused] == [
        "service kb: env_file is not carried into the stack file",
        "service api-gw: the writable bind mount ./gw-data:/data cannot move between nodes"]
    with pytest.raises(OnevpsError, match="kb: env_file is not carried"):  # render() stops at the first
        swarm.render(Project(tmp_path), at)

    monkeypatch.setattr(config, "load", lambda: at)
    monkeypatch.setattr(config, "REPO", Project(tmp_path))
    with pytest.raises(Exit) as exited:
        _tasks_module().swarm_check(Context())
    assert exited.value.code != 0
    out = capsys.readouterr().out.splitlines()
    assert "error: service kb: env_file is not carried into the stack file (hint: put the variables under " \
           "environment: (values from .env as ${VAR}))" in out
    assert "error: service api-gw: the writable bind mount ./gw-data:/data cannot move between nodes " \
           "(hint: use a named volume, or leave the service to compose)" in out
    assert "bind [differs] in nginx, chroma-auth, api-gw" in out  # the findings are all listed too
    assert out[-1].startswith("16 findings (4 would make `docker stack deploy` fail); ")


def test_swarm_check_exits_zero_when_nothing_is_refused(monkeypatch, capsys):
    here = settings()
    monkeypatch.setattr(config, "load", lambda: here)
    _tasks_module().swarm_check(Context())
    assert capsys.readouterr().out.rstrip("\n").endswith("`inv swarm-render` applies every fix above")


def test_every_key_has_one_action_and_every_finding_a_rule():
    for name, key in swarm.KEYS.items():
        assert key.action in ("kept", "converted", "dropped", "refused"), name
        assert key.finding is None or key.finding in swarm.RULES, name
    doc = load_stack(swarm.render(PROJECT, settings()).stack)
    source = plain_data()["services"]["redis"]
    for name, key in swarm.KEYS.items():
        if key.action == "kept" and name in source:
            assert doc["services"]["redis"][name] == source[name], name
        if key.action in ("dropped", "refused"):
            assert all(name not in svc for svc in doc["services"].values()), name


def plain_data() -> dict:
    return swarm.plain(data())


# ------------------------------------------------ deploy on a target object --

class FakeTarget:
    """A Target that records what deploy() asks of it."""

    stack_file = "/srv/compose/swarm/docker-stack.yml"

    def __init__(self, log):
        self.log = log

    def upload(self):
        self.log.append("upload")

    def build(self, apps):
        self.log.append(f"build {' '.join(apps)}")

    def command(self, argv):
        return ["wrapped", *argv], {"FROM_TARGET": "1"}

    def feed(self, argv, step, stdin):
        self.log.append(f"feed {step}")
        return Result(list(argv), 0, "", "")


class Recording:
    """A dry-run Runner stand-in: records each command, answers the read-only ones."""

    dry_run = True

    def __init__(self, log):
        self.log, self.env = log, {}

    def say(self, msg):
        pass

    def run(self, argv, step, **kw):
        self.log.append(" ".join(argv[:3]))
        if kw.get("env"):
            self.env = kw["env"]
        out = {"docker info --format": "active true 28.2.0", "docker image inspect": "sha256:0123456789abcdef"}
        return Result(list(argv), 0, out.get(" ".join(argv[:3]), ""), "")


def test_deploy_asks_the_target_to_send_build_and_wrap_in_that_order():
    log = []
    runner = Recording(log)
    s = settings(REDIS_PASSWORD="a-secret-value-0123456789", CHROMA_TOKEN="a-secret-token-0123456789")
    result = swarm.deploy(runner, PROJECT, s, registry.load(PROJECT.compose_file), FakeTarget(log),
                          only=["nginx", "redis", "kb"])
    # then, once the services run: the apps' Redis users and Chroma tokens, in redis's and
    # chroma-auth's task containers (found on this node), the secrets through the target's stdin
    sync = ["docker ps --quiet", "feed list the Redis users", "docker ps --quiet", "feed set the apps' Redis users",
            "docker ps --quiet", "feed write chroma-auth's tokens.map", "docker ps --quiet",
            "feed write chroma-auth's paths.map", "docker ps --quiet", "feed load chroma-auth's app tokens",
            "docker ps --quiet", "feed create the apps' ChromaDB tenants"]
    assert log == ["docker info --format", "docker service ls", "docker network ls", "upload", "build kb",
                   "docker image inspect", "docker image tag", "wrapped docker stack", *sync]
    assert runner.env == {"FROM_TARGET": "1", "TAG_KB": "s-0123456789ab"}
    assert result.outcome == {"nginx": "dry-run", "redis": "dry-run", "kb": "dry-run"}


@pytest.mark.parametrize("shell", ["sh", "dash", "bash"])
def test_the_stack_settings_reach_the_command_as_written_and_no_shell_runs_them(tmp_path, shell):
    """What `fab swarm-deploy` hands `docker stack deploy`: values with $, backticks, ;, quotes,
    #, spaces and \\ arrive as written; $(...) runs nothing; the file is gone afterwards."""
    if shutil.which(shell) is None:
        pytest.fail(f"{shell} is not installed")
    marker = tmp_path / "ran"
    values = {"REDIS_PASSWORD": f"p$a`touch {marker}`;b'c\"d#e f\\g $(touch {marker}) ${{HOME}}",
              "EMPTY": "", "EQUALS": "x=y=z ", "LEADING": " lead"}
    lines = tmp_path / "stack.env"
    lines.write_text(config.literal_env_text(values, "the server's settings"))
    argv = swarm_commands.with_env_lines(str(lines), [sys.executable, "-c",
                                                      "import json, os; print(json.dumps(dict(os.environ)))"])
    res = subprocess.run([shell, *argv[1:]], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout)
    assert {k: seen.get(k) for k in values} == values
    assert not marker.exists() and not lines.exists()


def test_the_stack_settings_file_missing_is_one_line_and_nothing_runs(tmp_path):
    argv = swarm_commands.with_env_lines(str(tmp_path / "gone.env"), ["touch", str(tmp_path / "ran")])
    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode == 2 and not (tmp_path / "ran").exists()
    assert res.stderr.strip().splitlines()[-1] == f"cannot read the settings file {tmp_path / 'gone.env'}"


def test_a_scratch_volume_does_not_pin_its_service():
    """chroma-auth's buffer volume (temp files, issue 24) is no state; its app-token volume is,
    since onevps writes the apps' tokens there on the manager: chroma-auth runs there, as redis
    (its data volume) does."""
    from onevps.swarm import convert
    assert convert.is_scratch("chroma-auth-buffers") and convert.is_scratch("nginx-buffers")
    assert not convert.is_scratch("redis-data") and not convert.is_scratch("chroma-auth-apps")
    doc = load_stack(swarm.render(PROJECT, settings()).stack)
    auth, redis = doc["services"]["chroma-auth"], doc["services"]["redis"]
    assert "chroma-auth-buffers:/var/cache/nginx" in auth["volumes"]
    assert "chroma-auth-apps:/etc/nginx/onevps" in auth["volumes"]
    assert auth["deploy"]["placement"] == {"constraints": ["node.role == manager"]}
    # A service with only scratch volumes is placed anywhere and updated start-first.
    only_scratch = {"image": "nginx:1.27-bookworm", "volumes": ["nginx-buffers:/var/cache/nginx"]}
    block, _ = convert.deploy_block("gate", only_scratch, False, stateful=False, published=False, workers=True, pids=64)
    assert "placement" not in block and block["update_config"]["order"] == "start-first"
    assert redis["deploy"]["placement"] == {"constraints": ["node.role == manager"]}
    assert redis["deploy"]["update_config"]["order"] == "stop-first"
