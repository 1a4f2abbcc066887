"""The whole stack, for real, reached only through nginx on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from onevps import tiers
from onevps.registry import PRIVATE, SHARED, SHARED_SERVICES

from .conftest import docker, http, inv, project_containers

pytestmark = [pytest.mark.docker, pytest.mark.stack]


def test_every_app_answers_through_nginx_with_its_identity(stack_up, settings, reg):
    assert len(reg.apps) == 7
    for app in reg.apps:
        res = http(settings, app.name, "/health")
        assert res.status == 200, (app.name, res.status, res.text[:200])
        body = res.json()
        assert (body["status"], body["app"], body["tier"]) == ("ok", app.name, app.tier)


def test_portfolio_serves_a_real_html_page(stack_up, settings):
    res = http(settings, "portfolio", "/")
    assert res.status == 200
    assert res.headers["content-type"].startswith("text/html")
    assert "<html" in res.text.lower() and "portfolio" in res.text.lower()


def test_bare_domain_lists_every_app_and_unknown_hosts_get_404(stack_up, settings, reg):
    res = http(settings, None, "/")
    assert res.status == 200
    for app in reg.apps:
        assert f'data-app="{app.name}"' in res.text
    assert http(settings, "no-such-app", "/").status == 404


def test_https_with_the_self_signed_certificate(stack_up, settings):
    res = http(settings, "kb", "/health", https=True)
    assert res.status == 200 and res.json()["app"] == "kb"


def test_nginx_config_passes_nginx_t(stack_up, settings, project):
    out = docker("compose", "--project-name", settings.project_name, "--file", str(project.compose_file),
                 "exec", "-T", "nginx", "nginx", "-t")
    assert out == ""  # nginx -t reports on stderr; success is exit 0


def test_chatbot_gets_an_answer_from_the_ollama_endpoint(stack_up, settings):
    message = f"hello {uuid.uuid4().hex[:8]}"
    res = http(settings, "chatbot", "/chat", "POST", {"message": message})
    assert res.status == 200, res.text
    body = res.json()
    assert body["model"] == settings.ollama_model
    # The Ollama stand-in (tests only, see .ci/standins/ollama) echoes the prompt.
    assert message in body["reply"]


def test_kb_stores_a_document_in_chromadb_and_finds_it(stack_up, settings):
    tag = uuid.uuid4().hex[:8]
    docs = {
        f"volcano-{tag}": "Volcanoes erupt molten lava and ash from deep inside the earth.",
        f"bread-{tag}": "Sourdough bread needs flour, water, salt and a lively starter.",
        f"stars-{tag}": "Telescopes let astronomers study distant stars and galaxies.",
    }
    for doc_id, text in docs.items():
        res = http(settings, "kb", "/documents", "POST", {"id": doc_id, "text": text})
        assert res.status == 201, res.text
    res = http(settings, "kb", "/search?q=which+flour+and+starter+for+sourdough+bread&k=2")
    assert res.status == 200, res.text
    results = res.json()["results"]
    assert results[0]["id"] == f"bread-{tag}"
    assert "Sourdough" in results[0]["text"]


def test_api_gw_round_trips_through_redis(stack_up, settings, project):
    key, value = f"k{uuid.uuid4().hex[:8]}", f"v-{uuid.uuid4().hex}"
    assert http(settings, "api-gw", f"/kv/{key}", "POST", {"value": value}).status == 200
    res = http(settings, "api-gw", f"/kv/{key}")
    assert res.status == 200 and res.json()["value"] == value
    # The value really is in the Redis server, under api-gw's own prefix (its Redis user's keys).
    stored = docker("compose", "--project-name", settings.project_name, "--file", str(project.compose_file),
                    "exec", "-T", "redis", "redis-cli", "GET", f"api-gw:kv:{key}")
    assert stored.strip() == value


def test_api_gw_forwards_to_other_apps_and_caches_in_redis(stack_up, settings):
    path = f"/proxy/portfolio/api/projects?nonce={uuid.uuid4().hex}"  # a URL never cached before
    first, second = http(settings, "api-gw", path), http(settings, "api-gw", path)
    assert first.status == second.status == 200
    assert first.json()["app"] == "portfolio"  # answered by the portfolio app behind the gateway
    assert first.body == second.body
    assert (first.headers.get("x-cache"), second.headers.get("x-cache")) == ("MISS", "HIT")


def test_embedder_returns_a_real_embedding_of_the_models_dimension(stack_up, settings):
    texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Quarterly tax filing deadlines."]
    res = http(settings, "embedder", "/embed", "POST", {"texts": texts})
    assert res.status == 200, res.text
    body = res.json()
    assert body["dimension"] == 384
    vectors = body["embeddings"]
    assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)

    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / ((sum(x * x for x in a) ** 0.5) * (sum(y * y for y in b) ** 0.5))

    # A real model puts the two cat sentences closer than cat and taxes.
    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.2


def test_classify_and_summary_answer(stack_up, settings):
    res = http(settings, "classify", "/classify", "POST", {"text": "I was charged twice on my invoice"})
    assert res.status == 200, res.text
    body = res.json()
    assert body["label"] in body["scores"]
    assert abs(sum(body["scores"].values()) - 1) < 1e-3  # rounded to 4 places
    text = ("Solar panels turn sunlight into electricity. They work best facing the sun. "
            "My neighbour owns a red bicycle. Panels lose some efficiency as they heat up. "
            "Inverters convert the panels' direct current to alternating current.")
    res = http(settings, "summary", "/summarize", "POST", {"text": text, "sentences": 2})
    assert res.status == 200, res.text
    body = res.json()
    assert len(body["selected"]) == 2 and body["summary"]
    assert 2 not in body["selected"]  # the off-topic bicycle sentence is left out


def test_only_nginx_publishes_ports(stack_up, settings):
    containers = project_containers(settings)
    assert len(containers) == len(SHARED_SERVICES) + 7
    published = {}
    for c in containers:
        ports = c["NetworkSettings"]["Ports"] or {}
        bound = [b for bindings in ports.values() if bindings for b in bindings]
        if bound:
            published[c["Config"]["Labels"]["com.docker.compose.service"]] = bound
    assert set(published) == {"nginx"}
    assert {b["HostIp"] for b in published["nginx"]} == {"127.0.0.1"}
    assert {b["HostPort"] for b in published["nginx"]} == {str(settings.http_port), str(settings.https_port)}


def test_every_container_has_its_static_address(stack_up, settings, reg):
    expected = {name: settings.address(host) for name, host in reg.hosts.items() if name in SHARED or name in reg.names()}
    actual = {}
    for c in project_containers(settings):
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        nets = c["NetworkSettings"]["Networks"]
        on_app_network = [n for n in nets if n.endswith("app-network")]
        if service in PRIVATE:
            assert not on_app_network, f"{service} must be reachable only through its gateway"
            continue
        (net,) = on_app_network
        actual[service] = nets[net]["IPAddress"]
    assert actual == expected


def test_every_app_image_begins_with_exactly_its_tier_layers(stack_up, settings, project, reg):
    for app in reg.apps:
        tier_ref = tiers.tier_image(project, settings, app.tier)
        tier = json.loads(docker("image", "inspect", tier_ref))[0]
        image = json.loads(docker("image", "inspect", tiers.image(settings, app.name)))[0]
        tier_layers, app_layers = tier["RootFS"]["Layers"], image["RootFS"]["Layers"]
        assert app_layers[: len(tier_layers)] == tier_layers, app.name
        assert len(app_layers) > len(tier_layers)
        assert image["Config"]["Labels"]["onevps.tier.image"] == tier_ref
        own_bytes = image["Size"] - tier["Size"]
        assert own_bytes < 5 * 1024 * 1024, f"{app.name} adds {own_bytes} bytes (budget 5 MB)"


def test_ml_tier_is_built_on_the_base_tier(stack_up, settings, project):
    base = json.loads(docker("image", "inspect", tiers.tier_image(project, settings, "base")))[0]
    ml = json.loads(docker("image", "inspect", tiers.tier_image(project, settings, "ml")))[0]
    assert ml["RootFS"]["Layers"][: len(base["RootFS"]["Layers"])] == base["RootFS"]["Layers"]


@pytest.mark.parametrize("app", ["portfolio", "chatbot", "kb", "api-gw", "embedder", "classify", "summary"])
def test_app_passes_its_own_tests_inside_its_image(built_images, settings, app):
    out = docker("run", "--rm", "--network", "none", tiers.image(settings, app),
                 "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
    assert " passed" in out and "failed" not in out


def test_inv_status_and_up_print_the_table(stack_up, settings, reg):
    res = inv("status")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["APP", "TIER", "ADDRESS", "URL", "STATE"]
    for app in reg.apps:
        line = next(l for l in lines if l.startswith(app.name + " "))
        assert settings.app_url(app.name) in line and "running (healthy)" in line
    # `inv up` on a running stack: builds nothing, waits for health, prints the same table.
    before = {c["Id"] for c in project_containers(settings)}
    res = inv("up")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert "building app images" not in res.stdout
    assert all(settings.app_url(a.name) in res.stdout for a in reg.apps)
    assert {c["Id"] for c in project_containers(settings)} == before  # nothing recreated


def test_code_change_rebuilds_only_the_app_layer(stack_up, settings, project, tmp_path):
    """A code-only change reuses the tier layers: only the app's layers differ."""
    before = json.loads(docker("image", "inspect", tiers.image(settings, "portfolio")))[0]["RootFS"]["Layers"]
    marker = project.root / "apps" / "portfolio" / "_build_marker.txt"
    marker.write_text(uuid.uuid4().hex)
    try:
        res = inv("build", "--app", "portfolio")
        assert res.returncode == 0, res.stderr
        assert "building the base tier" not in res.stdout and "building the ml tier" not in res.stdout
    finally:
        marker.unlink()
    after = json.loads(docker("image", "inspect", tiers.image(settings, "portfolio")))[0]["RootFS"]["Layers"]
    tier_layers = json.loads(docker("image", "inspect",
                                    tiers.tier_image(project, settings, "base")))[0]["RootFS"]["Layers"]
    assert after[: len(tier_layers)] == before[: len(tier_layers)] == tier_layers
    assert after[-1] != before[-1]  # the code layer changed
    assert after[:-1] == before[:-1]  # and nothing else did
    inv("build", "--app", "portfolio")  # back to the committed code


def test_a_stopped_app_gets_the_friendly_502_page_and_others_keep_answering(stack_up, settings, project):
    base = ["compose", "--project-name", settings.project_name, "--file", str(project.compose_file)]
    docker(*base, "stop", "portfolio")
    try:
        res = http(settings, "portfolio", "/")
        assert res.status in (502, 504)  # refused or timed out, depending on the kernel's ARP
        assert "not answering right now" in res.text
        assert http(settings, "kb", "/health").status == 200
    finally:
        docker(*base, "up", "--detach", "--no-build", "--wait", "portfolio")
    assert http(settings, "portfolio", "/health").status == 200


def test_a_broken_route_is_refused_by_nginx_t_and_the_old_config_keeps_serving(stack_up, settings, project, runner):
    from onevps import stack as stack_mod
    from onevps.errors import CommandFailed

    broken = project.root / "nginx" / "templates" / "zz-broken.conf.template"
    broken.write_text("server { listen 80; server_name broken.${DOMAIN}; location / { proxy_pass http://; } }\n")
    try:
        with pytest.raises(CommandFailed) as err:
            stack_mod.reload_nginx(runner, project, settings)
        assert "test and reload nginx failed" in err.value.message
        assert "nginx -t rejected the new configuration" in err.value.message
        for app in ("portfolio", "kb", "embedder"):
            assert http(settings, app, "/health").status == 200
    finally:
        broken.unlink()
    assert stack_mod.reload_nginx(runner, project, settings) is True
    assert http(settings, "chatbot", "/health").status == 200


def test_inv_disk_reports_sizes_and_enforces_the_budget(stack_up, settings, reg):
    res = inv("disk", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert {a["app"] for a in data["apps"]} == set(reg.names())
    assert all(0 < a["own"] < 5_000_000 for a in data["apps"])
    assert data["on_disk"] < data["unlayered"] and data["savings_ratio"] > 1
    assert any(r["image"] == f"{settings.image_namespace}/kb:latest" for r in data["images"])
    res = inv("disk", "--budget", "0.001")  # 1 kB: every app is over
    assert res.returncode == 1
    assert res.stderr.startswith("error: over the 0.001 MB budget: portfolio, chatbot")
    assert "/app/main.py" in res.stderr and "Traceback" not in res.stderr


def test_inv_prune_keeps_the_newest_and_never_a_used_tier(stack_up, settings, project):
    """Old app images made with `docker commit` (new IDs, newer than latest); an
    old tier tag with an app image built on it among the kept ones."""
    ns, made = settings.image_namespace, []

    def commit(source: str, target: str, n: int) -> None:
        """A new image: source + a layer holding one small file (a real, distinct layer)."""
        name = f"onevps-prune-test-{n}"
        docker("run", "--name", name, "--user", "0", "--network", "none", "--entrypoint", "sh", source,
               "-c", f"echo {n} > /prune-test-{n}")
        try:
            docker("commit", name, target)
        finally:
            docker("rm", name)
        made.append(target)

    try:
        commit(tiers.tier_image(project, settings, "base"), f"{ns}/base:c-0ld0ld0ld0ld", 0)  # an old tier
        commit(f"{ns}/base:c-0ld0ld0ld0ld", f"{ns}/portfolio:deploy-00000000000001", 1)  # built on it
        for n in (2, 3, 4):
            commit(tiers.image(settings, "portfolio"), f"{ns}/portfolio:deploy-0000000000000{n}", n)
        # Newest first: latest (what starts next), then by deploy tag: 4, 3, 2, 1 (on the old tier).
        res = inv("prune", "--keep", "5", "--dry-run")
        assert res.returncode == 0, res.stderr
        assert f"would remove {ns}/portfolio:" not in res.stdout  # all five are kept
        assert f"would remove {ns}/base:c-0ld0ld0ld0ld" not in res.stdout  # a kept image is built on it
        res = inv("prune", "--keep", "3")
        assert res.returncode == 0, res.stderr
        present = set(docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").split())
        assert f"{ns}/portfolio:deploy-00000000000004" in present and f"{ns}/portfolio:deploy-00000000000003" in present
        assert f"{ns}/portfolio:deploy-00000000000001" not in present and f"{ns}/portfolio:deploy-00000000000002" not in present
        assert f"{ns}/base:c-0ld0ld0ld0ld" not in present  # its only user went, so it went too
        assert tiers.tier_image(project, settings, "base") in present
        assert tiers.tier_image(project, settings, "ml") in present
        assert all(tiers.image(settings, a) in present for a in ("portfolio", "kb", "embedder"))
        assert http(settings, "portfolio", "/health").status == 200
    finally:
        for ref in made:
            subprocess.run(["docker", "image", "rm", ref], capture_output=True)
