"""The Docker API proxy (dockerfiles/waker/onevps_dockerproxy.py): its policy
table, the list filter merge, the inspect/list whitelists, and the proxy end to
end against a FAKE engine (a small UNIX-socket HTTP server that records every
call reaching it). The real engine: tests/integration/test_dockerproxy.py."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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

ALLOWED = [
    ("GET", "/_ping", "ping", None, ""),
    ("HEAD", "/_ping", "ping", None, ""),
    ("GET", "/v1.41/_ping", "ping", None, ""),
    ("GET", "/version", "version", None, ""),
    ("GET", "/containers/json", "list", None, "filters"),
    ("GET", "/v1.43/containers/json?all=1", "list", None, "filters"),
    ("GET", "/containers/web-1/json", "inspect", "web-1", ""),
    ("GET", f"/v1.41/containers/{APP_ID}/json", "inspect", APP_ID, ""),
    ("POST", "/containers/h15-blog-1/start", "start", "h15-blog-1", ""),
    ("POST", "/containers/blog/stop", "stop", "blog", ""),
    ("POST", "/v1.41/containers/blog/stop?t=10", "stop", "blog", "t=10"),
    ("GET", "/containers/blog/logs?stdout=1&stderr=1&tail=50", "logs", "blog", "tail=50"),
    ("GET", "/containers/blog/logs?stdout=1&follow=0", "logs", "blog", "tail=200"),
]


@pytest.mark.parametrize("method,target,route,ref,in_rewrite", ALLOWED)
def test_allowed_calls(method, target, route, ref, in_rewrite):
    d = decide(method, target)
    assert d.allowed, d.why
    assert (d.route, d.container_ref) == (route, ref)
    assert in_rewrite in d.rewrite
    assert "follow" not in d.rewrite


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


APP_LABELS = {"com.docker.compose.project": P, "onevps.tier": "base", "com.docker.compose.service": "blog"}
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


# --- end to end against a fake engine ----------------------------------------------------

class FakeEngine(BaseHTTPRequestHandler):
    """Records every call; resolves containers by name or full Id; ignores filters (the proxy must not rely on them)."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.calls.append((self.command, self.path))
        path = urlsplit(self.path).path
        path = path.split("/", 2)[2] if path.startswith("/v1.") else path.lstrip("/")
        if path == "_ping":
            return self.reply(200, b"OK", "text/plain")
        if path == "containers/json":
            return self.reply(200, json.dumps([
                {"Id": c["Id"], "Names": [c["Name"]], "Labels": c["Config"]["Labels"], "Command": "x",
                 "State": "running", "NetworkSettings": c["NetworkSettings"]} for c in CONTAINERS.values()]).encode())
        parts = path.split("/")
        found = [c for n, c in CONTAINERS.items() if len(parts) == 3 and parts[1] in (n, c["Id"])]
        if not found:
            return self.reply(404, b'{"message":"No such container"}')
        if parts[2] == "logs":
            return self.reply(200, b"line one\nline two\n", "application/vnd.docker.raw-stream")
        self.reply(200, json.dumps(found[0]).encode())

    def do_POST(self):
        self.server.calls.append((self.command, self.path))
        self.reply(204, b"")

    do_DELETE = do_PUT = do_HEAD = do_POST

    def reply(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(server):
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    return server


@pytest.fixture
def stand(tmp_path):
    engine = socketserver.ThreadingUnixStreamServer(str(tmp_path / "engine.sock"), FakeEngine)
    engine.calls = []
    cfg = px.Config(P, str(tmp_path / "run" / "proxy.sock"), str(tmp_path / "engine.sock"), 0o660, None)
    proxy = _serve(px.ProxyServer(cfg))
    _serve(engine)
    yield cfg, engine.calls
    proxy.shutdown()
    proxy.server_close()
    engine.shutdown()
    engine.server_close()


def call(sock, method, target, headers=None, body=None, chunked=False):
    conn = UnixHTTPConnection(sock, timeout=30)
    try:
        conn.request(method, target, body=body, headers=headers or {}, encode_chunked=chunked)
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


DENIED_E2E = [
    ("POST", "/containers/create", None, None),
    ("POST", "/v1.41/containers/h15-blog-1/exec", None, None),
    ("POST", "/images/create?fromImage=alpine", None, None),
    ("DELETE", "/containers/h15-blog-1?force=1", None, None),
    ("POST", "/containers/h15-blog-1/kill", None, None),
    ("POST", "/containers/h15-blog-1/../create", None, None),
    ("POST", "/containers/h15-blog-1%2Fkill/start", None, None),
    ("POST", "/containers/h15-blog-1/start", {"Upgrade": "tcp", "Connection": "Upgrade"}, None),
    ("POST", "/containers/h15-blog-1/start", {"Content-Type": "application/json"}, b'{"x":1}'),
    ("GET", "/info", None, None),
    ("FROB", "/_ping", None, None),
]


def test_denied_calls_never_reach_the_engine(stand, capsys):
    cfg, calls = stand
    for method, target, headers, body in DENIED_E2E:
        status, answer = call(cfg.socket_path, method, target, headers, body)
        assert status == 403, (method, target, answer)
        assert json.loads(answer)["message"].startswith("onevps docker proxy: denied: ")
    status, _ = call(cfg.socket_path, "POST", "/containers/h15-blog-1/start", body=iter([b"x"]), chunked=True)
    assert status == 403
    assert calls == []
    err = capsys.readouterr().err
    assert "denied: POST /containers/create: not an allowed endpoint" in err
    assert "denied: FROB /_ping: not an allowed endpoint" in err
    assert len([line for line in err.splitlines() if line.startswith("denied: ")]) == len(DENIED_E2E) + 1
    assert "fromImage" not in err and "alpine" not in err


@pytest.mark.parametrize("name", ["h15-redis-1", "other-blog-1", SHARED_ID, "nothing-here"])
@pytest.mark.parametrize("method,action", [("POST", "start"), ("POST", "stop"), ("GET", "json"), ("GET", "logs")])
def test_non_app_containers_are_only_looked_up(stand, capsys, name, method, action):
    cfg, calls = stand
    status, _ = call(cfg.socket_path, method, f"/containers/{name}/{action}")
    assert status == 403
    assert calls == [("GET", f"/containers/{name}/json")]
    assert f"denied: {method} /containers/{name}/{action}: " in capsys.readouterr().err


@pytest.mark.parametrize("target,forwarded", [
    ("/containers/h15-blog-1/start", f"/containers/{APP_ID}/start"),
    ("/v1.41/containers/h15-blog-1/stop?t=3", f"/v1.41/containers/{APP_ID}/stop?t=3"),
    (f"/containers/{APP_ID}/stop", f"/containers/{APP_ID}/stop"),
])
def test_allowed_calls_arrive_by_id(stand, target, forwarded):
    cfg, calls = stand
    status, _ = call(cfg.socket_path, "POST", target)
    assert status == 204
    assert calls[-1] == ("POST", forwarded) and len(calls) == 2


def test_inspect_answers_the_whitelist(stand):
    cfg, calls = stand
    status, answer = call(cfg.socket_path, "GET", "/v1.41/containers/h15-blog-1/json")
    assert status == 200 and SECRET not in answer.decode()
    assert json.loads(answer) == pol.filter_inspect(CONTAINERS["h15-blog-1"])
    assert calls[-1] == ("GET", f"/v1.41/containers/{APP_ID}/json")


def test_list_is_forced_to_the_projects_apps(stand):
    cfg, calls = stand
    status, answer = call(cfg.socket_path, "GET", '/containers/json?all=1&filters={"status":["exited"]}')
    assert status == 200
    assert [c["Id"] for c in json.loads(answer)] == [APP_ID]
    sent = parse_qs(urlsplit(calls[-1][1]).query)
    assert json.loads(sent["filters"][0]) == {
        "label": [f"com.docker.compose.project={P}", "onevps.tier"], "status": ["exited"]}
    assert sent["all"] == ["1"]


def test_logs_ping_and_head(stand):
    cfg, calls = stand
    assert call(cfg.socket_path, "GET", "/containers/h15-blog-1/logs?stdout=1") == (200, b"line one\nline two\n")
    assert calls[-1] == ("GET", f"/containers/{APP_ID}/logs?stdout=1&tail=200")
    assert call(cfg.socket_path, "GET", "/_ping") == (200, b"OK")
    assert call(cfg.socket_path, "HEAD", "/v1.41/_ping") == (204, b"")
    assert calls[-1] == ("HEAD", "/v1.41/_ping")


def raw_call(sock_path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(sock_path)
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("data", [b"GARBAGE\r\n\r\n", b"GET /_ping HTTP/2\r\n\r\n", b"GET /_ping HTTP/1.1\r\nNo colon\r\n\r\n",
                                  b"GET /_ping HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n",
                                  b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"])
def test_a_malformed_request_is_400_and_never_reaches_the_engine(stand, data):
    cfg, calls = stand
    answer = raw_call(cfg.socket_path, data)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer, answer[:200]
    assert calls == []


def test_every_duplicate_header_is_checked(stand):
    cfg, calls = stand
    answer = raw_call(cfg.socket_path, b"POST /containers/h15-blog-1/start HTTP/1.1\r\nContent-Length: 0\r\n"
                                       b"Content-Length: 5\r\n\r\nhello")
    assert answer.startswith(b"HTTP/1.1 403 ") and calls == []


@pytest.mark.parametrize("raw,body", [
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOKtrailing", b"OK"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
     b"5;x=1\r\nline \r\n4\r\none\n\r\n0\r\n\r\n", b"line one\n"),
    (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", b"until close"),
])
def test_engine_answers_are_read_in_every_framing(raw, body):
    assert px.parse_answer(raw) == (200, {"Content-Type": "text/plain"}, body)


@pytest.mark.parametrize("raw", [b"", b"HTTP/1.1 200 OK\r\n", b"SSH-2.0\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n"])
def test_a_broken_engine_answer_is_an_error(raw):
    with pytest.raises(ValueError):
        px.parse_answer(raw)


def test_the_socket_mode(stand):
    cfg, _ = stand
    assert stat.S_IMODE(os.stat(cfg.socket_path).st_mode) == 0o660


# --- the process: stale socket, mode, SIGTERM --------------------------------------------

def test_process_replaces_a_stale_socket_and_stops_on_sigterm(tmp_path):
    sock_path = tmp_path / "proxy.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # a socket file nobody listens on
    env = {**os.environ, "ONEVPS_PROJECT": P, "ONEVPS_PROXY_SOCKET": str(sock_path),
           "DOCKER_SOCKET": str(tmp_path / "no-engine.sock"), "ONEVPS_PROXY_SOCKET_MODE": "0600"}
    proc = subprocess.Popen([sys.executable, str(FILE)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        started = proc.stderr.readline()
        assert "onevps docker proxy: " in started, started
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        status, answer = call(str(sock_path), "GET", "/_ping")
        assert status == 502 and b"engine failed" in answer  # no engine there: a clear 502
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not sock_path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_process_refuses_to_replace_a_live_socket_or_a_file(tmp_path):
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(tmp_path / "live.sock"))
    live.listen()
    (tmp_path / "file.sock").write_text("not a socket")
    try:
        for name, message in (("live.sock", "another process listens"), ("file.sock", "is not a socket")):
            env = {**os.environ, "ONEVPS_PROJECT": P, "ONEVPS_PROXY_SOCKET": str(tmp_path / name)}
            res = subprocess.run([sys.executable, str(FILE)], env=env, capture_output=True, text=True, timeout=60)
            assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr
    finally:
        live.close()
    assert (tmp_path / "file.sock").read_text() == "not a socket"


def test_help_explains_the_settings():
    res = subprocess.run([sys.executable, str(FILE), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for name in ("ONEVPS_PROJECT", "ONEVPS_PROXY_SOCKET", "ONEVPS_PROXY_SOCKET_MODE", "DOCKER_SOCKET"):
        assert name in res.stdout
