from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from onevps import composefile, registry, sleep
from onevps.errors import ComposeFileError, OnevpsError

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "docker-compose.yml"


def test_repository_registry():
    reg = registry.load(COMPOSE)
    assert [(a.name, a.tier, a.host) for a in reg.apps] == [
        ("portfolio", "base", 10), ("chatbot", "base", 11), ("kb", "base", 12), ("api-gw", "base", 13),
        ("embedder", "ml", 20), ("classify", "ml", 21), ("summary", "ml", 22),
    ]
    assert registry.problems(reg) == []
    assert {s: reg.hosts[s] for s in registry.SHARED} == {"nginx": 2, "chroma-auth": 3, "redis": 4, "ollama": 5,
                                                          "waker": 7}
    assert "chromadb" in reg.services and "chromadb" not in reg.hosts  # private, behind chroma-auth
    assert "docker-proxy" in reg.services and "docker-proxy" not in reg.hosts  # on no network
    assert "base-tier" in reg.services and "base-tier" not in reg.names()


def test_pools_hold_15_base_and_6_ml_and_never_collide():
    base, ml = set(registry.POOLS["base"]), set(registry.POOLS["ml"])
    assert len(base) >= 15 and len(ml) >= 6
    assert not base & ml
    assert min(base) == 10 and min(ml) == 20
    assert not (base | ml) & set(registry.SHARED.values())
    assert all(1 <= h < 128 for h in base | ml)  # .128+ stays free for deploy slots


def test_next_free_host_skips_taken_and_reports_full():
    reg = registry.load(COMPOSE)
    assert reg.next_free_host("base") == 14
    assert reg.next_free_host("ml") == 23
    full = registry.Registry(apps=(), services=(), hosts={f"a{h}": h for h in registry.POOLS["ml"]})
    assert full.next_free_host("ml") is None


def test_base_pool_continues_after_the_ml_range():
    hosts = {f"b{h}": h for h in range(10, 20)}
    reg = registry.Registry(apps=(), services=(), hosts=hosts)
    assert reg.next_free_host("base") == 30


def test_unknown_app_lists_known_ones():
    reg = registry.load(COMPOSE)
    with pytest.raises(OnevpsError, match="unknown app 'nope'.*known apps: portfolio, chatbot"):
        reg.get("nope")


@pytest.mark.parametrize("name, reason", [
    ("Blog", "uppercase"),
    ("my_blog", "'_'"),
    ("1blog", "start with a letter"),
    ("-blog", "start with a letter"),
    ("blog-", "end with '-'"),
    ("a" * 64, "at most 63"),
    ("bl.og", "a-z, 0-9"),
    ("", "empty"),
    ("redis", "reserved"),
    ("nginx", "reserved"),
    ("base-tier", "reserved"),
])
def test_bad_names(name, reason):
    assert reason in registry.name_problem(name)


@given(st.from_regex(r"\A[a-z][a-z0-9-]{0,61}[a-z0-9]\Z"))
def test_valid_dns_labels_are_accepted_unless_reserved(name):
    problem = registry.name_problem(name)
    assert problem is None or "reserved" in problem


@given(st.text(min_size=1, max_size=70))
def test_name_problem_agrees_with_the_dns_label_rule(name):
    ok = registry.name_problem(name) is None
    assert ok == (bool(registry.DNS_LABEL.match(name)) and name not in registry.RESERVED
                  and name not in registry.YAML_KEYWORDS)


def _data(extra_service: str) -> object:
    text = COMPOSE.read_text().replace("\nnetworks:\n", extra_service + "\nnetworks:\n", 1)
    return composefile.loads(text)


def test_bad_address_form_is_an_error():
    data = _data("""
  blog:
    labels:
      onevps.tier: base
    networks:
      app-network:
        ipv4_address: 10.0.0.14
""")
    with pytest.raises(ComposeFileError, match="blog: ipv4_address '10.0.0.14'"):
        registry.from_data(data)


def test_duplicate_address_and_wrong_pool_are_problems():
    data = _data("""
  blog:
    labels:
      onevps.tier: base
    networks:
      app-network:
        ipv4_address: ${NETWORK_PREFIX:-172.20.0}.20
""")
    found = registry.problems(registry.from_data(data))
    assert "address .20 is used by embedder, blog" in found
    assert "app blog (base) is at .20, outside the base pool" in found


def test_unknown_tier_and_missing_address_are_errors():
    with pytest.raises(ComposeFileError, match="onevps.tier='gpu'"):
        registry.from_data(_data("\n  blog:\n    labels:\n      onevps.tier: gpu\n"))
    with pytest.raises(ComposeFileError, match="no static address"):
        registry.from_data(_data("\n  blog:\n    labels:\n      onevps.tier: base\n"))


def test_list_form_labels_are_read():
    data = _data("""
  blog:
    labels: ["onevps.tier=ml"]
    networks:
      app-network:
        ipv4_address: ${NETWORK_PREFIX:-172.20.0}.23
""")
    assert registry.from_data(data).get("blog").tier == "ml"


def _one_app(labels: dict) -> dict:
    return {"services": {"site": {"labels": {"onevps.tier": "base", **labels},
                                  "networks": {"app-network": {"ipv4_address": "${NETWORK_PREFIX:-172.20.0}.10"}}}}}


@pytest.mark.parametrize("label, seconds", [
    (None, None), ("", None), ("15m", 900), ("90s", 90), ("2h", 7200), ("1d", 86400), ("45", 45), (" 3m ", 180),
])
def test_sleep_after_label_is_read_as_seconds(label, seconds):
    labels = {} if label is None else {"onevps.sleep_after": label}
    assert registry.from_data(_one_app(labels)).get("site").sleep_after == seconds


@pytest.mark.parametrize("label", ["15 minutes", "-5m", "0", "1.5h", "31d", "m", "5w"])
def test_a_bad_sleep_after_label_is_one_clear_error(label):
    with pytest.raises(ComposeFileError) as err:
        registry.from_data(_one_app({"onevps.sleep_after": label}), name="compose.yml")
    assert err.value.what.startswith("compose.yml: app site has onevps.sleep_after: ")
    assert "remove it to keep site always awake" in err.value.hint


def test_sleep_durations_round_trip():
    for text in ("90s", "15m", "2h", "1d", "61s"):
        assert sleep.duration_text(sleep.parse_duration(text)) == text
    assert sleep.sleeping_from_listing("kb\nportfolio\n\n", running={"portfolio"}) == {"kb"}
