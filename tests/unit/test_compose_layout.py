"""The live compose file's container layout (issue 24): mounts no tmpfs can hide, and a
process limit (pids_limit) on every container, from a setting."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from onevps import composefile, nginx, sleep
from onevps.registry import TIER_LABEL
from onevps.settings_keys import KEYS
from onevps.swarm.convert import plain

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "docker-compose.yml"
SERVICES = plain(composefile.load(COMPOSE))["services"]

# Links every image of the stack has (Debian and its derivatives): a tmpfs at
# /var/run lands on /run.
IMAGE_LINKS = {"/var/run": "/run", "/var/lock": "/run/lock"}


def _real(path: str) -> PurePosixPath:
    """A container path with the images' links followed."""
    for link, target in IMAGE_LINKS.items():
        if path == link or path.startswith(link + "/"):
            path = target + path[len(link):]
    return PurePosixPath(path)


def _targets(svc: dict) -> list[str]:
    """Where each of a service's volumes and bind mounts lands in its container."""
    out = []
    for item in svc.get("volumes") or []:
        if isinstance(item, dict):
            out.append(str(item["target"]))
        else:
            parts = str(item).split(":")
            out.append(parts[1] if len(parts) > 1 else parts[0])
    return out


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if s.get("tmpfs")])
def test_no_volume_lies_under_a_tmpfs_of_its_service(name):
    """Docker mounts a tmpfs and a volume of the same depth in either order (/var/run and
    /run/onevps: both two deep), so a volume below a tmpfs is sometimes hidden by it. nginx
    then failed to start: open() "/run/onevps/access.log" failed (2: No such file or directory)."""
    svc = SERVICES[name]
    tmpfs = [_real(str(p)) for p in svc["tmpfs"]]
    for target in _targets(svc):
        real = _real(target)
        below = [str(t) for t in tmpfs if real == t or t in real.parents]
        assert not below, f"{name}: {target} lies under the tmpfs {below}"


def test_the_rule_catches_the_old_layout():
    old = {"tmpfs": ["/tmp", "/var/run"], "volumes": ["sleep-state:/run/onevps"]}
    tmpfs = [_real(p) for p in old["tmpfs"]]
    assert any(t in _real(target).parents for target in _targets(old) for t in tmpfs)


def test_nginx_and_the_waker_see_sleep_state_at_one_path_outside_run():
    assert sleep.STATE_DIR == "/var/lib/onevps" and sleep.FLAG_DIR == "/var/lib/onevps/asleep"
    assert "sleep-state:/var/lib/onevps" in SERVICES["nginx"]["volumes"]
    assert "sleep-state:/var/lib/onevps" in SERVICES[sleep.WAKER]["volumes"]
    assert SERVICES[sleep.WAKER]["environment"]["ONEVPS_STATE_DIR"] == sleep.STATE_DIR
    routes = (ROOT / nginx.ROUTES_FILE).read_text()
    assert f"access_log {sleep.STATE_DIR}/access.log onevps;" in routes
    assert "/run/onevps/" not in routes and "/run/onevps/" not in (ROOT / "compose" / "docker-compose.yml").read_text()


def test_the_waker_serves_nginx_alone():
    """Issue 24: the waker's only client is nginx (its address on app-network); an app
    container reaching for the waker is reset (onevps_waker_http.serve)."""
    nginx_address = SERVICES["nginx"]["networks"]["app-network"]["ipv4_address"]
    assert nginx_address == "${NETWORK_PREFIX:-172.20.0}.2"
    assert SERVICES[sleep.WAKER]["environment"]["WAKER_CLIENTS"] == nginx_address


def test_the_waker_defaults_to_the_same_state_dir():
    from .waker_fakes import parts
    assert str(parts.Settings().state_dir) == sleep.STATE_DIR
    assert str(parts.Settings.from_env({}).state_dir) == sleep.STATE_DIR


# ------------------------------------------------------------ process limits --

# The tier builders only build images (profile "tiers"): no container ever runs from them.
RUNS = [name for name, svc in SERVICES.items() if "tiers" not in (svc.get("profiles") or [])]
# Each service's process limit setting; apps take their tier's.
PIDS_KEY = {"nginx": "NGINX_PIDS_LIMIT", "chroma-auth": "CHROMA_AUTH_PIDS_LIMIT", "chromadb": "CHROMA_PIDS_LIMIT",
            "redis": "REDIS_PIDS_LIMIT", "ollama": "OLLAMA_PIDS_LIMIT", "certbot": "CERTBOT_PIDS_LIMIT",
            "waker": "WAKER_PIDS_LIMIT", "docker-proxy": "DOCKER_PROXY_PIDS_LIMIT"}
TIER_PIDS_KEY = {"base": "APP_PIDS_LIMIT", "ml": "ML_APP_PIDS_LIMIT"}
DEFAULTS = {k.name: k.default for k in KEYS}


def test_only_the_tier_builders_are_left_out():
    assert sorted(set(SERVICES) - set(RUNS)) == ["base-tier", "ml-tier"]
    assert all("pids_limit" not in SERVICES[name] for name in ("base-tier", "ml-tier"))


@pytest.mark.parametrize("name", RUNS)
def test_every_container_has_a_process_limit_from_its_setting(name):
    """`${KEY:-default}`: KEY is the service's own setting (an app's: its tier's), and the
    default written in the compose file is the setting's default, so compose without onevps
    (a bare `docker compose up`) gets the same limit."""
    svc = SERVICES[name]
    tier = (svc.get("labels") or {}).get(TIER_LABEL)
    key = TIER_PIDS_KEY[tier] if tier else PIDS_KEY[name]
    assert svc.get("pids_limit") == f"${{{key}:-{DEFAULTS[key]}}}", name


def test_every_process_limit_setting_is_used():
    used = {str(SERVICES[name]["pids_limit"]).split(":-")[0].removeprefix("${") for name in RUNS}
    assert used == {k for k in DEFAULTS if k.endswith("_PIDS_LIMIT")}


@pytest.mark.parametrize("name", [n for n in RUNS if (SERVICES[n].get("labels") or {}).get(TIER_LABEL)])
def test_apps_take_the_limit_from_their_tiers_block_never_their_own_entry(name):
    """An app's entry holds no pids_limit of its own unless someone wrote one (then it is an
    override, as for mem_limit); the repository's apps have none."""
    own = composefile.load(COMPOSE)["services"][name]
    assert "pids_limit" not in [k for k, _ in own.non_merged_items()]
