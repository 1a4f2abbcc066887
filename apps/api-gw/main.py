"""api-gw: a small HTTP gateway in front of the other apps, backed by Redis.

* ``GET /proxy/{app}/{path}`` forwards a GET to ``GW_UPSTREAM_TEMPLATE.format(app=app)``
  (``http://{app}:8000`` by default, i.e. the compose service name), caches
  200 answers in Redis for ``GW_CACHE_TTL`` seconds and marks the response
  with ``X-Cache: HIT`` or ``X-Cache: MISS``.
* A fixed-window rate limit per client IP (``INCR`` + ``EXPIRE`` on a key per
  minute) answers 429 once a client exceeds ``GW_RATE_LIMIT`` requests/minute.
* ``POST /kv/{key}`` / ``GET /kv/{key}`` round-trip a value through Redis, so
  integration tests can prove Redis works end to end.

Redis down -> 503 ``{"detail": ...}``; upstream unreachable -> 502, upstream
timeout -> 504. ``/health`` never touches Redis.

Both the Redis client (anything with async ``incr/expire/ttl/get/set/aclose``)
and the ``httpx.AsyncClient`` are injectable through :func:`create_app`.

Environment:
    APP_NAME, APP_VERSION, APP_TIER   identity (defaults "api-gw", "dev", "base")
    REDIS_URL             default redis://redis:6379/0 (may carry a user and password:
                          redis://user:pass@redis:6379/0; onevps gives the app its own user)
    REDIS_KEY_PREFIX      prefix of every key it writes (default "gw:"; onevps sets "api-gw:",
                          the only keys its Redis user may touch)
    GW_UPSTREAM_TEMPLATE  default http://{app}:8000
    GW_RATE_LIMIT         requests per minute per client IP (default 120; 0 disables)
    GW_CACHE_TTL          seconds to cache successful GETs (default 30; 0 disables)
    GW_ALLOWED_APPS       optional comma-separated allow-list of app names (default: any valid name)
    GW_UPSTREAM_TIMEOUT   seconds to wait for an upstream (default 10)
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger("api-gw")

DEFAULT_APP_NAME = "api-gw"
DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
WINDOW_SECONDS = 60
CACHE_MAX_BYTES = 1024 * 1024
# Response headers copied back from the upstream (everything else is dropped).
PASS_HEADERS = ("content-type", "cache-control", "etag", "last-modified", "location", "content-language")


def _int_env(name: str, default: int) -> int:
    raw = os.getenv(name, "").strip()
    if not raw:
        return default
    try:
        return max(0, int(raw))
    except ValueError:
        log.warning("%s=%r is not an integer; using %s", name, raw, default)
        return default


@dataclass
class Settings:
    """Gateway settings; :meth:`from_env` reads them from the environment."""

    redis_url: str = "redis://redis:6379/0"
    key_prefix: str = "gw:"
    upstream_template: str = "http://{app}:8000"
    rate_limit: int = 120
    cache_ttl: int = 30
    allowed_apps: frozenset[str] = field(default_factory=frozenset)
    upstream_timeout: float = 10.0

    @classmethod
    def from_env(cls) -> "Settings":
        allowed = {a.strip().lower() for a in os.getenv("GW_ALLOWED_APPS", "").split(",") if a.strip()}
        return cls(
            redis_url=os.getenv("REDIS_URL", cls.redis_url),
            key_prefix=os.getenv("REDIS_KEY_PREFIX", cls.key_prefix),
            upstream_template=os.getenv("GW_UPSTREAM_TEMPLATE", cls.upstream_template),
            rate_limit=_int_env("GW_RATE_LIMIT", cls.rate_limit),
            cache_ttl=_int_env("GW_CACHE_TTL", cls.cache_ttl),
            allowed_apps=frozenset(allowed),
            upstream_timeout=float(_int_env("GW_UPSTREAM_TIMEOUT", int(cls.upstream_timeout)) or cls.upstream_timeout),
        )


def app_meta() -> dict[str, str]:
    return {
        "app": os.getenv("APP_NAME", DEFAULT_APP_NAME),
        "version": os.getenv("APP_VERSION", "dev"),
        "tier": os.getenv("APP_TIER", "base"),
    }


def redact_url(url: str) -> str:
    """Hide the password of a redis://user:pass@host URL before showing it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def make_redis(url: str):
    """A redis.asyncio client that fails fast when Redis is down.

    A pooled connection that died with a Redis restart is retried once on a
    fresh connection (health_check_interval also probes idle connections), so
    the first request after a restart does not fail.
    """
    return aioredis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=2.0,
        health_check_interval=15,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
    )


def client_ip(request: Request) -> str:
    """Client address: X-Real-IP (set by nginx), else the last X-Forwarded-For hop, else the peer."""
    real = request.headers.get("x-real-ip", "").strip()
    if real:
        return real
    forwarded = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    if forwarded:
        return forwarded[-1]
    return request.client.host if request.client else "unknown"


def rate_headers(request: Request) -> dict[str, str]:
    """Rate-limit headers computed by the rate_limit dependency for this request, if any."""
    return getattr(request.state, "rate_headers", {})


class KVIn(BaseModel):
    """Body of ``POST /kv/{key}``."""

    value: Annotated[str, StringConstraints(max_length=65536)]
    ttl: int | None = Field(default=None, ge=1, le=30 * 24 * 3600, description="Optional expiry in seconds.")


KeyPath = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")]


def create_app(
    settings: Settings | None = None,
    redis_client: Any = None,
    http_client: httpx.AsyncClient | None = None,
) -> FastAPI:
    """Build the gateway. Tests inject a fake Redis and an httpx client with a MockTransport."""
    cfg = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own_redis, own_http = redis_client is None, http_client is None
        app.state.redis = redis_client if redis_client is not None else make_redis(cfg.redis_url)
        app.state.http = http_client or httpx.AsyncClient(follow_redirects=False)
        try:
            yield
        finally:
            if own_http:
                await app.state.http.aclose()
            if own_redis:
                await app.state.redis.aclose()

    app = FastAPI(title="api-gw", description="Caching, rate-limited gateway backed by Redis.", lifespan=lifespan)
    app.state.settings = cfg

    @app.exception_handler(RedisError)
    async def redis_failed(_: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis error: %r", exc)
        return JSONResponse(
            status_code=503,
            content={"detail": f"Redis is unavailable at {redact_url(cfg.redis_url)}: {type(exc).__name__}"},
        )

    @app.exception_handler(Exception)
    async def unhandled(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    async def rate_limit(request: Request, response: Response) -> None:
        """Fixed one-minute window per client IP: INCR a per-window key, EXPIRE it on first hit."""
        if cfg.rate_limit <= 0:
            return
        r = request.app.state.redis
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        key = f"{cfg.key_prefix}rl:{client_ip(request)}:{window}"
        count = await r.incr(key)
        if count == 1:
            await r.expire(key, WINDOW_SECONDS + 1)
        remaining = max(0, cfg.rate_limit - count)
        if count > cfg.rate_limit:
            retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now))
            raise HTTPException(
                status_code=429,
                detail=f"rate limit of {cfg.rate_limit} requests per minute exceeded",
                headers={"Retry-After": str(retry_after), "X-RateLimit-Limit": str(cfg.rate_limit),
                         "X-RateLimit-Remaining": "0"},
            )
        request.state.rate_headers = {"X-RateLimit-Limit": str(cfg.rate_limit),
                                      "X-RateLimit-Remaining": str(remaining)}
        response.headers.update(request.state.rate_headers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness probe; never touches Redis or upstreams."""
        return {"status": "ok", **app_meta()}

    @app.get("/")
    async def index() -> dict[str, Any]:
        return {
            "app": app_meta()["app"],
            "description": "GET /proxy/{app}/{path} with Redis cache and per-IP rate limit.",
            "redis_url": redact_url(cfg.redis_url),
            "upstream_template": cfg.upstream_template,
            "rate_limit_per_minute": cfg.rate_limit,
            "cache_ttl_seconds": cfg.cache_ttl,
            "endpoints": ["GET /proxy/{app}/{path}", "POST /kv/{key}", "GET /kv/{key}", "GET /health"],
        }

    @app.get("/proxy/{app_name}/{path:path}", dependencies=[Depends(rate_limit)])
    async def proxy(app_name: str, path: str, request: Request) -> Response:
        """Forward a GET to an upstream app, with a Redis-backed response cache."""
        name = app_name.lower()
        if not DNS_LABEL.match(name):
            raise HTTPException(status_code=400, detail=f"invalid app name {app_name!r}: must be a DNS label")
        if cfg.allowed_apps and name not in cfg.allowed_apps:
            raise HTTPException(status_code=403, detail=f"app {name!r} is not in GW_ALLOWED_APPS")

        target = cfg.upstream_template.format(app=name).rstrip("/") + "/" + path.lstrip("/")
        if request.url.query:
            target += "?" + request.url.query
        r = request.app.state.redis
        cache_key = f"{cfg.key_prefix}cache:{target}"

        if cfg.cache_ttl > 0:
            cached = await r.get(cache_key)
            if cached:
                entry = json.loads(cached)
                return Response(
                    content=base64.b64decode(entry["body"]),
                    status_code=entry["status"],
                    headers={**entry["headers"], **rate_headers(request), "X-Cache": "HIT", "X-Upstream": name},
                )

        try:
            upstream = await request.app.state.http.get(
                target,
                headers={"accept": request.headers.get("accept", "*/*"), "x-forwarded-for": client_ip(request)},
                timeout=cfg.upstream_timeout,
            )
        except httpx.TimeoutException as exc:
            raise HTTPException(status_code=504, detail=f"upstream {name!r} timed out") from exc
        except httpx.HTTPError as exc:
            raise HTTPException(
                status_code=502, detail=f"upstream {name!r} is unreachable: {type(exc).__name__}"
            ) from exc

        headers = {k: v for k, v in upstream.headers.items() if k.lower() in PASS_HEADERS}
        body = upstream.content
        if cfg.cache_ttl > 0 and upstream.status_code == 200 and len(body) <= CACHE_MAX_BYTES:
            entry = {"status": 200, "headers": headers, "body": base64.b64encode(body).decode("ascii")}
            await r.set(cache_key, json.dumps(entry), ex=cfg.cache_ttl)
        return Response(
            content=body,
            status_code=upstream.status_code,
            headers={**headers, **rate_headers(request), "X-Cache": "MISS", "X-Upstream": name},
        )

    @app.post("/kv/{key}", dependencies=[Depends(rate_limit)])
    async def kv_set(key: KeyPath, body: KVIn, request: Request) -> dict[str, Any]:
        """Store a string value in Redis (optionally with a TTL)."""
        await request.app.state.redis.set(f"{cfg.key_prefix}kv:{key}", body.value, ex=body.ttl)
        return {"key": key, "value": body.value, "stored": True}

    @app.get("/kv/{key}", dependencies=[Depends(rate_limit)])
    async def kv_get(key: KeyPath, request: Request) -> dict[str, Any]:
        """Read a value stored by ``POST /kv/{key}``; 404 if absent."""
        value = await request.app.state.redis.get(f"{cfg.key_prefix}kv:{key}")
        if value is None:
            raise HTTPException(status_code=404, detail=f"key {key!r} not found")
        return {"key": key, "value": value}

    return app


app = create_app()
