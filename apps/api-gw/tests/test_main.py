"""Tests for api-gw with an in-memory fake Redis and httpx.MockTransport upstreams."""

import asyncio
import time

import httpx
import pytest
import redis.exceptions
from fastapi.testclient import TestClient

import main


class FakeRedis:
    """The handful of async redis commands api-gw uses, with expiry."""

    def __init__(self):
        self.data = {}
        self.expiry = {}
        self.calls = []

    def _alive(self, key):
        exp = self.expiry.get(key)
        if exp is not None and exp <= time.monotonic():
            self.data.pop(key, None)
            self.expiry.pop(key, None)
        return key in self.data

    async def get(self, key):
        self.calls.append(("get", key))
        return self.data[key] if self._alive(key) else None

    async def set(self, key, value, ex=None):
        self.calls.append(("set", key, ex))
        self.data[key] = str(value)
        self.expiry.pop(key, None)
        if ex:
            self.expiry[key] = time.monotonic() + ex
        return True

    async def incr(self, key):
        self.calls.append(("incr", key))
        value = int(self.data[key]) + 1 if self._alive(key) else 1
        self.data[key] = str(value)
        return value

    async def expire(self, key, seconds):
        self.calls.append(("expire", key, seconds))
        if not self._alive(key):
            return False
        self.expiry[key] = time.monotonic() + seconds
        return True

    async def aclose(self):
        pass


class DownRedis:
    """A Redis that is not there."""

    def __getattr__(self, name):
        async def fail(*args, **kwargs):
            raise redis.exceptions.ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

        return fail


class Upstream:
    """Fake upstream apps; counts hits per URL."""

    def __init__(self):
        self.hits = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hits.append(request)
        if request.url.host == "down":
            raise httpx.ConnectError("name does not resolve", request=request)
        if request.url.host == "slow":
            raise httpx.ReadTimeout("too slow", request=request)
        if request.url.path == "/missing":
            return httpx.Response(404, json={"detail": "Not Found"})
        return httpx.Response(
            200,
            json={"host": request.url.host, "path": request.url.path, "query": request.url.query.decode()},
            headers={"x-internal-secret": "nope"},
        )


def make(settings=None, redis_client=None, upstream=None):
    settings = settings or main.Settings()
    http = httpx.AsyncClient(transport=httpx.MockTransport(upstream or Upstream()))
    return TestClient(main.create_app(settings=settings, redis_client=redis_client or FakeRedis(), http_client=http))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("APP_NAME", "APP_VERSION", "APP_TIER", "REDIS_URL", "REDIS_KEY_PREFIX", "GW_UPSTREAM_TEMPLATE", "GW_RATE_LIMIT",
                "GW_CACHE_TTL", "GW_ALLOWED_APPS", "GW_UPSTREAM_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)


def test_settings_from_env(monkeypatch):
    assert main.Settings.from_env() == main.Settings()
    monkeypatch.setenv("REDIS_URL", "redis://:pw@cache:6380/1")
    monkeypatch.setenv("GW_RATE_LIMIT", "7")
    monkeypatch.setenv("GW_CACHE_TTL", "0")
    monkeypatch.setenv("GW_UPSTREAM_TEMPLATE", "http://{app}.svc:9000")
    monkeypatch.setenv("GW_ALLOWED_APPS", "portfolio, KB")
    s = main.Settings.from_env()
    assert (s.redis_url, s.rate_limit, s.cache_ttl, s.upstream_template) == (
        "redis://:pw@cache:6380/1", 7, 0, "http://{app}.svc:9000")
    assert s.allowed_apps == {"portfolio", "kb"}
    monkeypatch.setenv("GW_RATE_LIMIT", "lots")
    assert main.Settings.from_env().rate_limit == 120
    monkeypatch.setenv("REDIS_KEY_PREFIX", "api-gw:")  # what onevps sets: its Redis user's keys
    assert main.Settings.from_env().key_prefix == "api-gw:"


def test_every_key_carries_the_prefix():
    fake = FakeRedis()
    with make(settings=main.Settings(key_prefix="api-gw:"), redis_client=fake) as c:
        assert c.post("/kv/greeting", json={"value": "hi"}).status_code == 200
        assert c.get("/kv/greeting").json()["value"] == "hi"
    assert fake.data and all(k.startswith("api-gw:") for k in fake.data), fake.data


def test_redact_url():
    assert main.redact_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert main.redact_url("redis://user:pw@redis/0") == "redis://user:***@redis/0"
    assert main.redact_url("redis://redis:6379/0") == "redis://redis:6379/0"


def test_make_redis_parses_password_url():
    r = main.make_redis("redis://:p%40ss@redis:6380/2")
    kwargs = r.connection_pool.connection_kwargs
    assert (kwargs["password"], kwargs["host"], kwargs["port"], kwargs["db"]) == ("p@ss", "redis", 6380, 2)
    asyncio.run(r.aclose())


def test_health_needs_no_redis():
    with make(redis_client=DownRedis()) as c:
        r = c.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "app": "api-gw", "version": "dev", "tier": "base"}


def test_index_hides_redis_password():
    with make(settings=main.Settings(redis_url="redis://:topsecret@redis:6379/0")) as c:
        data = c.get("/").json()
    assert data["app"] == "api-gw"
    assert "topsecret" not in str(data)


def test_kv_roundtrip():
    fake = FakeRedis()
    with make(redis_client=fake) as c:
        r = c.post("/kv/greeting", json={"value": "hello"})
        assert r.status_code == 200
        assert r.json() == {"key": "greeting", "value": "hello", "stored": True}
        assert c.get("/kv/greeting").json() == {"key": "greeting", "value": "hello"}
        r = c.get("/kv/nothing-here")
        assert r.status_code == 404
        assert "nothing-here" in r.json()["detail"]
    assert fake.data["gw:kv:greeting"] == "hello"


def test_kv_ttl_and_validation():
    fake = FakeRedis()
    with make(redis_client=fake) as c:
        assert c.post("/kv/t", json={"value": "v", "ttl": 60}).status_code == 200
        assert ("set", "gw:kv:t", 60) in fake.calls
        assert c.post("/kv/t", json={}).status_code == 422
        assert c.post("/kv/t", json={"value": "v", "ttl": 0}).status_code == 422
        assert c.post("/kv/bad key!", json={"value": "v"}).status_code == 422


def test_proxy_miss_then_hit():
    fake, upstream = FakeRedis(), Upstream()
    with make(redis_client=fake, upstream=upstream) as c:
        r1 = c.get("/proxy/portfolio/api/projects?x=1")
        r2 = c.get("/proxy/portfolio/api/projects?x=1")
    assert r1.status_code == r2.status_code == 200
    assert r1.headers["x-cache"] == "MISS"
    assert r2.headers["x-cache"] == "HIT"
    assert r1.json() == r2.json() == {"host": "portfolio", "path": "/api/projects", "query": "x=1"}
    assert r2.headers["content-type"] == "application/json"
    assert "x-internal-secret" not in r1.headers
    assert len(upstream.hits) == 1
    assert str(upstream.hits[0].url) == "http://portfolio:8000/api/projects?x=1"
    sets = [call for call in fake.calls if call[0] == "set"]
    assert sets == [("set", "gw:cache:http://portfolio:8000/api/projects?x=1", 30)]


def test_proxy_cache_disabled_and_errors_not_cached():
    upstream = Upstream()
    with make(settings=main.Settings(cache_ttl=0), upstream=upstream) as c:
        assert c.get("/proxy/kb/").headers["x-cache"] == "MISS"
        assert c.get("/proxy/kb/").headers["x-cache"] == "MISS"
    assert len(upstream.hits) == 2
    upstream = Upstream()
    with make(upstream=upstream) as c:
        r = c.get("/proxy/kb/missing")
        assert r.status_code == 404
        assert c.get("/proxy/kb/missing").headers["x-cache"] == "MISS"
    assert len(upstream.hits) == 2


def test_proxy_custom_template():
    upstream = Upstream()
    with make(settings=main.Settings(upstream_template="http://{app}.internal:9000"), upstream=upstream) as c:
        assert c.get("/proxy/chatbot/health").status_code == 200
    assert str(upstream.hits[0].url) == "http://chatbot.internal:9000/health"


@pytest.mark.parametrize("name", ["bad_name", "-lead", "trail-", "a" * 64, "dots.not.ok"])
def test_proxy_rejects_invalid_app_names(name):
    upstream = Upstream()
    with make(upstream=upstream) as c:
        r = c.get(f"/proxy/{name}/x")
    assert r.status_code == 400
    assert "DNS label" in r.json()["detail"]
    assert upstream.hits == []


def test_proxy_allow_list():
    with make(settings=main.Settings(allowed_apps=frozenset({"portfolio"}))) as c:
        assert c.get("/proxy/portfolio/").status_code == 200
        assert c.get("/proxy/redis/").status_code == 403


def test_proxy_upstream_down_and_slow():
    with make() as c:
        r = c.get("/proxy/down/")
        assert r.status_code == 502
        assert "unreachable" in r.json()["detail"]
        r = c.get("/proxy/slow/")
        assert r.status_code == 504


def test_rate_limit_per_ip():
    fake = FakeRedis()
    with make(settings=main.Settings(rate_limit=3), redis_client=fake) as c:
        statuses = [c.get("/kv/a").status_code for _ in range(3)]
        assert statuses == [404, 404, 404]  # allowed (the key just does not exist)
        r = c.get("/kv/a")
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert "3 requests per minute" in r.json()["detail"]
        assert c.get("/proxy/portfolio/").status_code == 429
        # another client (as told by nginx) has its own window
        assert c.get("/kv/a", headers={"X-Real-IP": "10.9.9.9"}).status_code == 404
        # /health is never rate limited
        assert c.get("/health").status_code == 200
    rl_keys = [k for k in fake.data if k.startswith("gw:rl:")]
    assert len(rl_keys) == 2
    assert all(fake.expiry.get(k) for k in rl_keys)
    expires = [call for call in fake.calls if call[0] == "expire"]
    assert len(expires) == 2  # EXPIRE only on the first hit of each window


def test_rate_limit_headers_on_proxy():
    with make(settings=main.Settings(rate_limit=5)) as c:
        r = c.get("/proxy/portfolio/")
    assert r.headers["x-ratelimit-limit"] == "5"
    assert r.headers["x-ratelimit-remaining"] == "4"


def test_client_ip_uses_last_forwarded_hop():
    fake = FakeRedis()
    with make(redis_client=fake) as c:
        c.get("/kv/a", headers={"X-Forwarded-For": "6.6.6.6, 172.18.0.5"})
    assert any(k.startswith("gw:rl:172.18.0.5:") for k in fake.data)


def test_redis_down_gives_503():
    with make(settings=main.Settings(redis_url="redis://:hunter2@redis:6379/0"), redis_client=DownRedis()) as c:
        for r in (c.get("/kv/a"), c.post("/kv/a", json={"value": "x"}), c.get("/proxy/portfolio/")):
            assert r.status_code == 503
            detail = r.json()["detail"]
            assert "Redis is unavailable" in detail
            assert "hunter2" not in detail


def test_real_redis_client_unreachable_gives_503_quickly():
    """A real redis.asyncio client pointed at a closed local port fails fast with 503."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    settings = main.Settings(redis_url=f"redis://127.0.0.1:{port}/0")
    http = httpx.AsyncClient(transport=httpx.MockTransport(Upstream()))
    start = time.monotonic()
    with TestClient(main.create_app(settings=settings, http_client=http)) as c:
        r = c.get("/kv/a")
    assert r.status_code == 503
    assert time.monotonic() - start < 10
