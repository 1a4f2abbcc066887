from pathlib import Path

from onevps import nginx, registry

ROOT = Path(__file__).resolve().parents[2]


def reg():
    return registry.load(ROOT / "compose" / "docker-compose.yml")


def test_repository_routes_are_in_sync_with_the_compose_file():
    assert nginx.drift(ROOT, reg()) == []


def test_every_app_gets_an_upstream_at_its_address_and_a_server_name():
    text = nginx.render_routes(reg())
    for app in reg().apps:
        assert (f"upstream app_{app.name} {{\n"
                f"    server ${{NETWORK_PREFIX}}.{app.host}:8000 max_fails=1 fail_timeout=1s;\n"
                f"    server ${{NETWORK_PREFIX}}.{app.host + 128}:8000 backup max_fails=0;\n}}") in text
        assert f"server_name {app.name}.${{DOMAIN}};" in text
    assert text.count("server_name") == len(reg().apps)
    # No idle connections to apps: one an app closes under a POST nginx is sending is a 502.
    assert "keepalive" not in text


def test_the_slot_drain_covers_nginx_connect_timeout():
    conf = (ROOT / "nginx" / "snippets" / "proxy.conf").read_text()
    assert f"proxy_connect_timeout {nginx.CONNECT_TIMEOUT}s;" in conf
    assert nginx.SLOT_DRAIN > nginx.CONNECT_TIMEOUT + nginx.FAIL_TIMEOUT + 1


def test_index_lists_every_app():
    page = nginx.render_index(reg())
    for app in reg().apps:
        assert f'data-app="{app.name}"' in page


def test_drift_is_detected_and_repaired(tmp_path):
    r = reg()
    assert sorted(map(str, nginx.drift(tmp_path, r))) == [
        "nginx/html/index.html is missing", "nginx/templates/apps.conf.template is missing"]
    (tmp_path / "nginx" / "templates").mkdir(parents=True)
    (tmp_path / "nginx" / "html").mkdir()
    assert len(nginx.write(tmp_path, r)) == 2
    assert nginx.drift(tmp_path, r) == []
    route_file = tmp_path / nginx.ROUTES_FILE
    route_file.write_text(route_file.read_text().replace(".11:8000", ".99:8000"))
    assert nginx.drift(tmp_path, r) == ["nginx/templates/apps.conf.template is out of date with the compose file"]
    assert nginx.write(tmp_path, r) == [nginx.ROUTES_FILE]


def test_a_sleeping_app_is_routed_to_the_waker_by_its_flag_file_and_others_never():
    reg = registry.Registry(apps=(registry.App("kb", "base", 12, sleep_after=900), registry.App("blog", "base", 13)),
                            services=("kb", "blog"), hosts={"kb": 12, "blog": 13})
    text = nginx.render_routes(reg)
    kb = text[text.index("server_name kb."):text.index("upstream app_blog")]
    assert ("        set $onevps_upstream app_kb;\n"
            "        if (-f /var/lib/onevps/asleep/kb) {\n"
            "            set $onevps_upstream onevps_waker;\n"
            "        }\n"
            "        proxy_pass http://$onevps_upstream;\n"
            "        proxy_set_header X-Onevps-App kb;\n") in kb
    blog = text[text.index("server_name blog."):]
    assert "proxy_pass http://app_blog;" in blog and "onevps_waker" not in blog and "asleep" not in blog
    assert "upstream onevps_waker {\n    server ${NETWORK_PREFIX}.7:8080 max_fails=0;\n}" in text
    assert "access_log /var/lib/onevps/access.log onevps;" in text  # the waker's view of activity
    assert "onevps_waker" not in nginx.render_swarm_routes(reg)  # no sleeping in Swarm mode


def test_nginx_waits_longer_than_the_longest_wake():
    proxy = (ROOT / "nginx" / "snippets" / "proxy.conf").read_text()
    assert "proxy_read_timeout 75s;" in proxy  # WAKE_TIMEOUT is at most 70 (settings_keys)
