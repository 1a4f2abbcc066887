"""The Docker API proxy (dockerfiles/waker/onevps_dockerproxy.py): its policy
(onevps_dockerpolicy.py) table, the list filter merge, the inspect/list
whitelists, its settings. The proxy end to end against a FAKE engine:
test_dockerproxy_server.py; the real engine: tests/integration/test_dockerproxy.py."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from urllib.parse import parse_qs

import pytest

WAKER_DIR = Path(__file__).resolve().parents[2] / "dockerfiles" / "waker"
FILE = WAKER_DIR / "onevps_dockerproxy.py"
sys.path.insert(0, str(WAKER_DIR))  # the proxy imports its policy module from beside it
px = importlib.import_module("onevps_dockerproxy")
pol = importlib.import_module("onevps_dockerpolicy")
UnixHTTPConnection = importlib.import_module("onevps_unixhttp").UnixHTTPConnection

P = "h15"
APP_ID, SHARED_ID, OTHER_ID = "a" * 64, "b" * 64, "c" * 64
SECRET = "s3cr3t-value-never-seen"


def decide(method, target, headers=None):
    path, _, query = target.partition("?")
    return pol.decide(method, path, query, headers or {}, P)


# --- the policy table ----------------------------------------------------------

# The parameters forwarded (parse_qs of the rewrite, filters apart: a list is always forced to the project's apps).
ALLOWED = [
    ("GET", "/_ping", "ping", None, {}),
    ("HEAD", "/_ping", "ping", None, {}),
    ("GET", "/v1.41/_ping", "ping", None, {}),
    ("GET", "/version", "version", None, {}),
    ("GET", "/containers/json", "list", None, {}),
    ("GET", "/v1.43/containers/json?all=1", "list", None, {"all": "1"}),
    ("GET", "/containers/web-1/json", "inspect", "web-1", {}),
    ("GET", f"/v1.41/containers/{APP_ID}/json", "inspect", APP_ID, {}),
    ("POST", "/containers/h15-blog-1/start", "start", "h15-blog-1", {}),
    ("POST", "/containers/blog/stop", "stop", "blog", {}),
    ("POST", "/v1.41/containers/blog/stop?t=10", "stop", "blog", {"t": "10"}),
    ("GET", "/containers/blog/logs?stdout=1&stderr=1&tail=50", "logs", "blog",
     {"stdout": "1", "stderr": "1", "tail": "50"}),
    ("GET", "/containers/blog/logs?stdout=1&follow=0", "logs", "blog", {"stdout": "1", "tail": "200"}),
]


@pytest.mark.parametrize("method,target,route,ref,forwarded", ALLOWED)
def test_allowed_calls(method, target, route, ref, forwarded):
    d = decide(method, target)
    assert d.allowed, d.why
    assert (d.route, d.container_ref) == (route, ref)
    params = {k: v[0] for k, v in parse_qs(d.rewrite, keep_blank_values=True, strict_parsing=False).items()}
    filters = params.pop("filters", None)
    assert params == forwarded
    if route == "list":
        assert f"{pol.PROJECT_LABEL}={P}" in json.loads(filters)["label"]
    else:
        assert filters is None


DENIED = [
    ("POST", "/containers/create", "endpoint"),
    ("POST", "/v1.41/containers/create?name=x", "endpoint"),
    ("POST", "/containers/blog/exec", "endpoint"),
    ("POST", "/exec/abc/start", "endpoint"),
    ("POST", "/images/create?fromImage=alpine", "endpoint"),
    ("POST", "/build", "endpoint"),
    ("DELETE", "/containers/blog", "endpoint"),
    ("DELETE", "/containers/blog?force=1", "endpoint"),
    ("POST", "/containers/blog/attach?stream=1", "endpoint"),
    ("GET", "/containers/blog/attach/ws", "endpoint"),
    ("GET", "/containers/blog/archive?path=/etc", "endpoint"),
    ("HEAD", "/containers/blog/archive?path=/etc", "endpoint"),
    ("PUT", "/containers/blog/archive?path=/", "endpoint"),
    ("GET", "/containers/blog/export", "endpoint"),
    ("POST", "/containers/blog/update", "endpoint"),
    ("POST", "/containers/blog/rename?name=x", "endpoint"),
    ("POST", "/containers/blog/kill", "endpoint"),
    ("POST", "/containers/blog/restart", "endpoint"),
    ("POST", "/containers/blog/pause", "endpoint"),
    ("GET", "/containers/blog/top", "endpoint"),
    ("GET", "/containers/blog/changes", "endpoint"),
    ("GET", "/containers/blog/stats", "endpoint"),
    ("POST", "/containers/prune", "endpoint"),
    ("GET", "/volumes", "endpoint"),
    ("POST", "/volumes/create", "endpoint"),
    ("GET", "/networks", "endpoint"),
    ("POST", "/networks/x/connect", "endpoint"),
    ("GET", "/secrets", "endpoint"),
    ("GET", "/configs", "endpoint"),
    ("POST", "/swarm/init", "endpoint"),
    ("GET", "/services", "endpoint"),
    ("GET", "/info", "endpoint"),
    ("GET", "/events", "endpoint"),
    ("GET", "/images/json", "endpoint"),
    ("POST", "/session", "endpoint"),
    ("GET", "/plugins", "endpoint"),
    ("POST", "/_ping", "endpoint"),
    ("GET", "/containers/blog/start", "endpoint"),
    ("POST", "/containers/blog/json", "endpoint"),
    ("GET", "/containers/json/", "endpoint"),
    ("GET", "/v1.41", "endpoint"),
    ("GET", "/v1.41/v1.41/_ping", "endpoint"),
    ("GET", "/vx/_ping", "endpoint"),
    ("GET", "/containers/-blog/json", "endpoint"),
    ("GET", "/containers/.blog/json", "endpoint"),
    # traversal and encoding tricks
    ("POST", "/containers/blog/../create", "'..'"),
    ("POST", "/containers/../containers/create", "'..'"),
    ("GET", "/containers/..%2f..%2finfo/json", "percent"),
    ("POST", "/containers/blog%2Fexec/start", "percent"),
    ("POST", "/containers/blog%2fkill/start", "percent"),
    ("GET", "/%5Fping", "percent"),
    ("POST", "//containers/blog/start", "empty path segment"),
    ("POST", "/containers//blog/start", "empty path segment"),
    ("POST", "/containers/blog/start\x00", "NUL"),
    ("GET", "/containers/" + "a" * 300 + "/json", "too long"),
    ("POST", "/containers/blog\\x/start", "character"),
    ("POST", "/containers/bl og/start", "character"),
    ("GET", "http://docker/_ping", "character"),
    ("GET", "_ping", "character"),
    # query rules
    ("GET", "/containers/blog/logs?follow=1", "follow"),
    ("GET", "/containers/blog/logs?follow=true&stdout=1", "follow"),
    ("GET", "/containers/blog/logs?tail=all", "tail"),
    ("GET", "/containers/blog/logs?tail=201", "tail"),
    ("GET", "/containers/blog/logs?since=0", "not allowed"),
    ("POST", "/containers/blog/stop?t=9999", "'t'"),
    ("POST", "/containers/blog/stop?t=-1", "'t'"),
    ("POST", "/containers/blog/stop?signal=SIGKILL", "not allowed"),
    ("POST", "/containers/blog/start?detachKeys=x", "not allowed"),
    ("GET", "/containers/blog/json?size=1", "not allowed"),
    ("GET", "/containers/json?size=1", "not allowed"),
    ("GET", "/containers/json?all=1&all=0", "twice"),
    ("GET", "/containers/json?filters=notjson", "JSON"),
    ("GET", "/containers/json?filters=[]", "object"),
    ('GET', '/containers/json?filters={"before":["x"]}', "not allowed"),
    ('GET', '/containers/json?filters={"label":"x"}', "list of strings"),
    ("GET", "/containers/json?all", "malformed"),
    ("GET", "/_ping?x=" + "a" * 3000, "too long"),
]


@pytest.mark.parametrize("method,target,why", DENIED)
def test_denied_calls(method, target, why):
    d = decide(method, target)
    assert not d.allowed
    assert why in d.why
    assert d.route == "" and d.container_ref is None


@pytest.mark.parametrize("headers,why", [
    ({"Upgrade": "tcp", "Connection": "Upgrade"}, "upgrade"),
    ({"Connection": "keep-alive, Upgrade"}, "upgrade"),
    ({"Transfer-Encoding": "chunked"}, "Transfer-Encoding"),
    ({"Content-Length": "12"}, "bodies"),
])
def test_upgrades_and_bodies_are_denied(headers, why):
    d = decide("POST", "/containers/blog/start", headers)
    assert not d.allowed and why in d.why


def test_an_empty_body_is_fine():
    assert decide("POST", "/containers/blog/start", {"Content-Length": "0"}).allowed


def test_the_why_never_echoes_query_values():
    d = decide("GET", "/containers/json?filters=" + '{"sneaky-key-%s":["v"]}' % SECRET)
    assert not d.allowed and SECRET not in d.why and "sneaky" not in d.why


def test_forward_target_names_the_full_id_and_keeps_the_prefix():
    d = decide("POST", "/v1.41/containers/blog/stop?t=5")
    assert pol.forward_target(d, APP_ID) == f"/v1.41/containers/{APP_ID}/stop?t=5"
    assert pol.forward_target(decide("GET", "/_ping")) == "/_ping"


# --- the list filter merge -------------------------------------------------------

def _filters(rewrite):
    return json.loads(parse_qs(rewrite)["filters"][0])


def test_list_forces_the_project_and_tier_labels():
    assert _filters(decide("GET", "/containers/json").rewrite) == {
        "label": [f"com.docker.compose.project={P}", "onevps.tier"]}


def test_list_merges_the_clients_filters_and_keeps_the_proxys():
    raw = json.dumps({"label": ["onevps.sleep_after", "com.docker.compose.project=other"], "status": ["running"]})
    got = json.loads(pol.merge_filters(raw, P))
    assert got["status"] == ["running"]
    assert got["label"] == ["onevps.sleep_after", "com.docker.compose.project=other",
                            f"com.docker.compose.project={P}", "onevps.tier"]


def test_list_merge_takes_the_older_map_form_and_adds_nothing_twice():
    raw = json.dumps({"label": {"onevps.tier": True, "x=y": False}})
    assert json.loads(pol.merge_filters(raw, P))["label"] == ["onevps.tier", f"com.docker.compose.project={P}"]


# --- the answer whitelists ---------------------------------------------------------

def _container(cid, labels, name):
    return {"Id": cid, "Name": f"/{name}", "Created": "2026-11-26T00:00:00Z", "Path": "python",
            "Args": ["-c", f"token={SECRET}"], "State": {"Status": "running", "Running": True},
            "RestartCount": 0, "Image": "sha256:" + "d" * 64,
            "HostConfig": {"Binds": ["/etc:/host-etc"]}, "Mounts": [{"Source": "/srv"}],
            "Config": {"Image": "h15/blog:latest", "Env": [f"SECRET_X={SECRET}"], "Labels": labels,
                       "Cmd": ["python", f"--token={SECRET}"]},
            "NetworkSettings": {"Networks": {f"{P}_app-network": {"IPAddress": "172.26.0.10",
                                                                 "Aliases": ["blog"], "MacAddress": "02:42"}}}}


# What a compose-built app image carries (every container made from it inherits these)...
IMAGE_LABELS = {"com.docker.compose.project": P, "onevps.tier": "base", "com.docker.compose.service": "blog"}
# ...and what compose adds to each container it creates.
APP_LABELS = {**IMAGE_LABELS, "com.docker.compose.container-number": "1",
              "com.docker.compose.config-hash": "9f86d081884c7d65", "com.docker.compose.oneoff": "False"}
CONTAINERS = {
    "h15-blog-1": _container(APP_ID, APP_LABELS, "h15-blog-1"),
    "h15-redis-1": _container(SHARED_ID, {"com.docker.compose.project": P}, "h15-redis-1"),
    "other-blog-1": _container(OTHER_ID, {"com.docker.compose.project": "other", "onevps.tier": "base"}, "other-blog-1"),
}


def test_inspect_whitelist_drops_env_and_everything_else():
    out = pol.filter_inspect(CONTAINERS["h15-blog-1"])
    assert SECRET not in json.dumps(out)
    assert out == {"Id": APP_ID, "Name": "/h15-blog-1", "Created": "2026-11-26T00:00:00Z",
                   "State": {"Status": "running", "Running": True}, "RestartCount": 0,
                   "Image": "sha256:" + "d" * 64,
                   "Config": {"Image": "h15/blog:latest", "Labels": APP_LABELS},
                   "NetworkSettings": {"Networks": {f"{P}_app-network": {"IPAddress": "172.26.0.10"}}}}


def test_list_filter_keeps_only_the_projects_apps():
    entries = [{"Id": c["Id"], "Names": [c["Name"]], "Labels": c["Config"]["Labels"], "Command": f"x {SECRET}",
                "Mounts": [], "State": "running", "NetworkSettings": c["NetworkSettings"]}
               for c in CONTAINERS.values()]
    entries.append({**entries[0], "Id": "e" * 64, "Labels": {**APP_LABELS, "onevps.tier": ""}})
    out = pol.filter_list(entries, P)
    assert [e["Id"] for e in out] == [APP_ID]
    assert SECRET not in json.dumps(out) and "Command" not in out[0] and "Mounts" not in out[0]
    assert out[0]["NetworkSettings"]["Networks"][f"{P}_app-network"] == {"IPAddress": "172.26.0.10"}


@pytest.mark.parametrize("name,problem", [
    ("h15-blog-1", None), ("h15-redis-1", "not an app"), ("other-blog-1", "not an app")])
def test_app_problem(name, problem):
    got = pol.app_problem(CONTAINERS[name], P)
    assert (got is None) if problem is None else (problem in got)


def test_app_problem_needs_a_full_id_and_a_non_empty_tier():
    assert pol.app_problem(None, P) == "no such container"
    assert pol.app_problem({**CONTAINERS["h15-blog-1"], "Id": "abc"}, P) == "no such container"
    empty_tier = {"Id": APP_ID, "Config": {"Labels": {**APP_LABELS, "onevps.tier": ""}}}
    assert "not an app" in pol.app_problem(empty_tier, P)


@pytest.mark.parametrize("labels", [
    {"onevps.slot": "next", "onevps.app": "blog"},  # a deploy slot: the app image's labels + its own
    {"com.docker.compose.oneoff": "True"},  # `compose run`
    {"com.docker.compose.service": ""},  # made from an app image outside compose
])
def test_a_deploy_slot_or_a_one_off_container_of_an_app_image_is_no_app(labels):
    assert pol.app_problem({"Id": APP_ID, "Config": {"Labels": {**APP_LABELS, **labels}}}, P) == \
        "not an app's own container (a deploy slot or a one-off)"


@pytest.mark.parametrize("drop", [(), ("com.docker.compose.container-number",), ("com.docker.compose.config-hash",)])
def test_a_plain_docker_run_of_an_app_image_is_no_app(drop):
    """Issue 24, attack 6: the image's labels name the project, service and tier; only the
    labels compose adds when it creates a container tell the app's own container apart."""
    labels = IMAGE_LABELS if not drop else {k: v for k, v in APP_LABELS.items() if k not in drop}
    assert pol.app_problem({"Id": APP_ID, "Config": {"Labels": labels}}, P) == \
        "not an app's own container (not created by compose: a plain `docker run` of an app image)"
    entry = {"Id": APP_ID, "Names": ["/h15-blog-run"], "Labels": labels}
    assert pol.filter_list([entry, {**entry, "Labels": APP_LABELS}], P) == \
        [{"Id": APP_ID, "Names": ["/h15-blog-run"], "Image": None, "Created": None, "State": None, "Status": None,
          "Labels": APP_LABELS, "NetworkSettings": {"Networks": {}}}]


# --- settings ------------------------------------------------------------------------

@pytest.mark.parametrize("env,message", [
    ({}, "ONEVPS_PROJECT is not set"),
    ({"ONEVPS_PROJECT": "p", "ONEVPS_PROXY_SOCKET_MODE": "0999"}, "not an octal mode"),
    ({"ONEVPS_PROJECT": "p", "ONEVPS_PROXY_SOCKET_MODE": "1777"}, "not an octal mode"),
    ({"ONEVPS_PROJECT": "p", "ONEVPS_PROXY_SOCKET_GID": "docker"}, "not a numeric group id"),
])
def test_bad_settings_are_one_line(env, message):
    with pytest.raises(SystemExit) as err:
        px.load_config(env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_settings_defaults():
    cfg = px.load_config({"ONEVPS_PROJECT": "p"})
    assert (cfg.socket_path, cfg.engine, cfg.mode, cfg.gid) == (
        "/run/onevps-docker/docker.sock", "/var/run/docker.sock", 0o660, None)
