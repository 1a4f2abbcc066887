"""The pure parts of a swarm of several servers: the settings naming them, the
decisions of `fab swarm-setup` from what each engine says, the join body, the
registry's commands, placement in the stack file, the `fab swarm-nodes` table.
No Docker, no SSH."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from onevps import composefile, config, swarm
from onevps.commands import nodes as cmd
from onevps.commands import swarm as swarm_commands
from onevps.errors import ConfigError, OnevpsError
from onevps.project import Project
from onevps.swarm import cluster, nodes

ROOT = Path(__file__).resolve().parents[2]
PROJECT = Project(ROOT)
TWO = {"SWARM_MANAGER": "root@10.0.0.2", "SWARM_WORKERS": "root@10.0.0.3, deploy@10.0.0.4:2222"}


def settings(**env) -> config.Settings:
    return config.load(PROJECT, environ=env, env_file=ROOT / ".env.absent")


# ---------------------------------------------------------------- settings --

def test_workers_are_read_in_their_normal_form():
    s = settings(**TWO)
    assert s.swarm_workers == ("root@10.0.0.3", "deploy@10.0.0.4:2222")
    assert s.swarm_manager == "root@10.0.0.2" and s.swarm_registry_port == 5000
    assert settings().swarm_workers == ()


@pytest.mark.parametrize("value, says", [
    ("root@10.0.0.3,root@10.0.0.3", "names a server twice"),
    ("root@@x", "is not a server"),
    ("root@10.0.0.3:70000", "is not a server"),
    ("root@bad_host!", "is not a server"),
])
def test_bad_workers_are_one_error_naming_the_key(value, says):
    with pytest.raises(ConfigError) as err:
        settings(SWARM_WORKERS=value)
    assert "SWARM_WORKERS" in str(err.value) and says in str(err.value)


def test_nodes_default_to_vps_user_and_port_and_the_manager_to_vps_host():
    members = nodes.nodes(settings(VPS_HOST="10.0.0.9", VPS_USER="ops", VPS_PORT="2200", SWARM_WORKERS="10.0.0.3"))
    assert [(n.role, n.server.host, n.server.user, n.server.port) for n in members] == [
        ("manager", "10.0.0.9", "ops", 2200), ("worker", "10.0.0.3", "ops", 2200)]
    members = nodes.nodes(settings(**TWO))
    assert [(n.server.host, n.server.user, n.server.port) for n in members] == [
        ("10.0.0.2", "root", 22), ("10.0.0.3", "root", 22), ("10.0.0.4", "deploy", 2222)]


def test_no_manager_or_the_manager_as_a_worker_is_refused():
    with pytest.raises(OnevpsError, match="no swarm manager"):
        nodes.nodes(settings(SWARM_WORKERS="10.0.0.3"))
    with pytest.raises(OnevpsError, match="names the manager 10.0.0.2 as a worker"):
        nodes.nodes(settings(SWARM_MANAGER="10.0.0.2", SWARM_WORKERS="root@10.0.0.2"))


def test_the_advertise_address_and_the_registry_the_nodes_pull_from():
    assert nodes.advertise_address(settings(**TWO)) == "10.0.0.2"
    assert nodes.advertise_address(settings(SWARM_MANAGER="mgr.example.com", SWARM_ADVERTISE_ADDR="10.1.0.2")) \
        == "10.1.0.2"
    with pytest.raises(OnevpsError, match="SWARM_ADVERTISE_ADDR"):
        nodes.advertise_address(settings(SWARM_MANAGER="mgr.example.com"))
    assert nodes.own_registry(settings(**TWO)) == "10.0.0.2:5000"
    assert nodes.own_registry(settings(**TWO, SWARM_REGISTRY_PORT="5443")) == "10.0.0.2:5443"
    assert nodes.own_registry(settings(**TWO, REGISTRY="ghcr.io/me")) == "ghcr.io/me"
    assert nodes.own_registry(settings(VPS_HOST="10.0.0.2")) == ""  # one node: local images


# ------------------------------------------------------------- the stack --

def _stack(s: config.Settings) -> dict:
    return swarm.plain(composefile.loads(swarm.render(PROJECT, s).stack))


def test_with_workers_apps_run_on_the_workers_spread_and_pull_from_the_managers_registry():
    services = _stack(settings(**TWO))["services"]
    portfolio = services["portfolio"]
    assert portfolio["image"] == "10.0.0.2:5000/${IMAGE_NAMESPACE:-onevps}/portfolio:${TAG_PORTFOLIO:-latest}"
    assert portfolio["deploy"]["placement"] == {"constraints": ["node.labels.onevps.apps == true"],
                                                "preferences": [{"spread": "node.labels.onevps.node"}]}
    for name in ("redis", "chromadb"):
        assert services[name]["deploy"]["placement"] == {"constraints": ["node.role == manager"]}
    assert not services["redis"]["image"].startswith("10.0.0.2")  # upstream images stay as they are
    one = _stack(settings())["services"]["portfolio"]
    assert "placement" not in one["deploy"] and one["image"].startswith("${IMAGE_NAMESPACE:-onevps}/portfolio:")


def test_onevps_registry_serves_content_tags_an_outside_one_is_resolved():
    assert "--resolve-image never" in shlex.join(swarm_commands.stack_deploy_argv("s.yml", "st", True, resolve=False))
    assert "--resolve-image always" in shlex.join(swarm_commands.stack_deploy_argv("s.yml", "st", True))


# ------------------------------------------------------- what engines say --

def _swarm(**kw) -> nodes.SwarmState:
    return nodes.parse_swarm(json.dumps(kw))


def test_parse_swarm_reads_docker_info():
    state = _swarm(LocalNodeState="active", NodeID="n1", NodeAddr="10.0.0.3", ControlAvailable=False,
                   RemoteManagers=[{"NodeID": "m1", "Addr": "10.0.0.2:2377"}])
    assert state.active and not state.manager and state.managers == ("10.0.0.2:2377",) and state.node_id == "n1"
    assert nodes.parse_swarm("") == nodes.SwarmState("") and not nodes.parse_swarm("not json").active


def test_manager_plans():
    assert nodes.manager_plan(_swarm(LocalNodeState="inactive"), {}, "p", "manager m") == "init"
    assert nodes.manager_plan(_swarm(), {}, "p", "manager m") == "init"  # no Docker yet
    mine = _swarm(LocalNodeState="active", ControlAvailable=True, Nodes=3)
    assert nodes.manager_plan(mine, {"onevps.swarm": "p"}, "p", "manager m") == "ours"
    lone = _swarm(LocalNodeState="active", ControlAvailable=True, Nodes=1)
    assert nodes.manager_plan(lone, {}, "p", "manager m") == "ours"  # a one-node swarm made by hand: adopted
    with pytest.raises(OnevpsError, match="already in another swarm .3 nodes, not made by onevps"):
        nodes.manager_plan(mine, {}, "p", "manager m")
    with pytest.raises(OnevpsError, match="made for other"):
        nodes.manager_plan(mine, {"onevps.swarm": "other"}, "p", "manager m")
    with pytest.raises(OnevpsError, match="is a worker of another swarm"):
        nodes.manager_plan(_swarm(LocalNodeState="active", ControlAvailable=False), {}, "p", "manager m")


def test_worker_plans():
    assert nodes.worker_plan(_swarm(LocalNodeState="inactive"), "10.0.0.2", [], "worker w") == "join"
    ours = _swarm(LocalNodeState="active", NodeID="n3", RemoteManagers=[{"Addr": "10.0.0.2:2377"}])
    assert nodes.worker_plan(ours, "10.0.0.2", [], "worker w") == "joined"
    assert nodes.worker_plan(_swarm(LocalNodeState="active", NodeID="n3"), "10.0.0.2", ["n3"], "worker w") == "joined"
    other = _swarm(LocalNodeState="active", NodeID="n9", RemoteManagers=[{"Addr": "10.9.9.9:2377"}])
    with pytest.raises(OnevpsError, match="worker w is already in another swarm"):
        nodes.worker_plan(other, "10.0.0.2", ["n3"], "worker w")


def test_the_join_token_travels_in_a_file_never_on_a_command_line():
    body = json.loads(nodes.join_body("10.0.0.2", "10.0.0.3", "SWMTKN-1-secret"))
    assert body == {"ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": "10.0.0.3", "DataPathAddr": "10.0.0.3",
                    "RemoteAddrs": ["10.0.0.2:2377"], "JoinToken": "SWMTKN-1-secret"}
    argv = cmd.join_via_api("/tmp/j.json")
    assert argv[-1] == "http://localhost/v1.41/swarm/join" and "@/tmp/j.json" in argv
    assert not any("SWMTKN" in a for a in argv)
    assert cmd.join_token() == ["docker", "swarm", "join-token", "--quiet", "worker"]


def test_route_source_and_architecture():
    assert nodes.route_source("10.0.0.2 dev eth0 src 10.0.0.3 uid 0 \\    cache") == "10.0.0.3"
    with pytest.raises(OnevpsError, match="own address"):
        nodes.route_source("RTNETLINK answers: Network is unreachable")
    nodes.same_arch({"manager a": "x86_64", "worker b": "x86_64"})
    with pytest.raises(OnevpsError, match="worker b is aarch64 but the manager a is x86_64"):
        nodes.same_arch({"manager a": "x86_64", "worker b": "aarch64"})


def test_labels_set_only_what_is_missing():
    wanted = nodes.labels_for("worker", "w1", "p")
    assert wanted == ["onevps.swarm=p", "onevps.apps=true", "onevps.node=w1"]
    assert nodes.labels_for("manager", "m", "p")[1] == "onevps.data=true"
    assert nodes.missing_labels(wanted, {"onevps.swarm": "p", "onevps.apps": "false"}) == \
        ["onevps.apps=true", "onevps.node=w1"]
    assert cmd.node_label_add("n1", ["a=b", "c=d"]) == ["docker", "node", "update", "--label-add", "a=b",
                                                        "--label-add", "c=d", "n1"]


# ------------------------------------------------------------ the registry --

def test_the_registry_is_published_on_the_managers_address_only_and_wants_client_certificates():
    argv = cmd.registry_run("10.0.0.2", 5000)
    assert "10.0.0.2:5000:5000" in argv and "--restart" in argv and argv[-1] == "registry:2"
    assert "/etc/onevps/registry:/certs:ro" in argv
    conf = cmd.registry_config()
    assert "clientcas:\n      - /certs/ca.crt" in conf and "certificate: /certs/server.crt" in conf
    assert cmd.certs_dir("10.0.0.2:5000") == "/etc/docker/certs.d/10.0.0.2:5000"


def test_keys_are_made_private_and_the_ca_key_is_never_printed():
    for argv in (cmd.make_ca(), cmd.make_server_cert("10.0.0.2"), cmd.client_csr("/d"), cmd.sign_client("/r.csr")):
        assert argv[:2] == ["sh", "-c"] and "umask 077" in argv[2]
    # what goes to stdout: a certificate request (client_csr) or a certificate (sign_client), never a key
    assert "-keyout" not in cmd.client_csr("/d")[2] and "cat" not in cmd.sign_client("/r.csr")[2]
    assert cmd.make_server_cert("10.0.0.2")[5] == "10.0.0.2"  # the address is an argument, not shell text


# ------------------------------------------------------------ the table --

def test_node_rows_and_tasks():
    inspected = [
        {"ID": "w" * 25, "Spec": {"Role": "worker", "Availability": "active", "Labels": {"onevps.apps": "true", "onevps.node": "w1",
                                                                                          "other": "x"}},
         "Description": {"Hostname": "w1"}, "Status": {"State": "down", "Addr": "10.0.0.3"}},
        {"ID": "m" * 25, "Spec": {"Role": "manager", "Availability": "active", "Labels": {"onevps.data": "true"}},
         "Description": {"Hostname": "mgr"}, "Status": {"State": "ready", "Addr": "10.0.0.2"},
         "ManagerStatus": {"Leader": True}},
    ]
    tasks = nodes.parse_tasks("st_redis.1\tmgr\tRunning 2 minutes ago\nst_portfolio.1\tw1\tShutdown 1 second ago\n"
                              "st_portfolio.2\tmgr\tRunning 1 second ago\n", "st")
    assert tasks == {"mgr": ["redis.1", "portfolio.2"]}
    rows = nodes.node_rows(inspected, tasks)
    assert [(r.name, r.role, r.state, r.labels, r.tasks) for r in rows] == [
        ("mgr", "manager (leader)", "ready", "onevps.data=true", "portfolio.2, redis.1"),
        ("w1", "worker", "down", "onevps.apps=true", "-")]


def test_an_outside_registry_that_does_not_answer_is_one_line():
    with pytest.raises(OnevpsError, match=r"REGISTRY 127.0.0.1:1 does not answer \(https://127.0.0.1:1/v2/"):
        cluster.check_outside_registry("127.0.0.1:1")


def test_a_refused_join_says_the_engines_reason():
    assert cluster.join_error('{"message":"This node is already part of a swarm."}') == \
        "This node is already part of a swarm."
    assert cluster.join_error("") == "" and cluster.join_error("<html>bad gateway") == "<html>bad gateway"
    assert cmd.join_via_api("/tmp/j.json")[-3:-1] == ["--write-out", "\n%{http_code}"]


def test_the_own_registry_needs_root_on_every_server_and_says_so_before_connecting(tmp_path):
    (tmp_path / "server.env").write_text("COMPOSE_PROJECT_NAME=p\n")
    with pytest.raises(OnevpsError, match=r"needs root on every server, but worker deploy@10.0.0.4 logs in"):
        # nothing is connected (10.0.0.x is never reached): the refusal comes first
        cluster.setup(PROJECT, settings(**TWO, VPS_ENV_FILE=str(tmp_path / "server.env")))
