"""kb: a small knowledge base stored in ChromaDB, spoken to over its REST API v2.

The ChromaDB server does not embed text for REST clients, so kb computes its
own embeddings with a deterministic, pure-Python *hashing bag-of-words*
vectoriser (see :func:`embed`). No chromadb client package is needed: all calls
are plain JSON over ``httpx``.

Chroma calls (tenant/database default to ``default_tenant``/``default_database``)::

    POST /api/v2/tenants/{t}/databases/{d}/collections            get-or-create, returns {"id": ...}
    POST /api/v2/tenants/{t}/databases/{d}/collections/{id}/upsert  store (or replace) documents
    POST /api/v2/tenants/{t}/databases/{d}/collections/{id}/query nearest neighbours
    GET  /api/v2/tenants/{t}/databases/{d}/collections/{id}/count integer

Chroma unreachable or failing -> 502 JSON ``{"detail": ...}``.

Environment:
    APP_NAME, APP_VERSION, APP_TIER   identity (defaults "kb", "dev", "base")
    CHROMA_URL       default http://chromadb:8000
    CHROMA_TOKEN     optional; sent as "Authorization: Bearer <token>" and "X-Chroma-Token"
    CHROMA_TENANT    default default_tenant
    CHROMA_DATABASE  default default_database
    KB_COLLECTION    default "kb-documents" (Chroma wants 3-512 characters)
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

log = logging.getLogger("kb")

DEFAULT_APP_NAME = "kb"
DIMENSION = 256
TOKEN_RE = re.compile(r"[a-z0-9]+")


# --------------------------------------------------------------------------- embeddings


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens (letters and digits)."""
    return TOKEN_RE.findall(text.lower())


def embed(text: str, dim: int = DIMENSION) -> list[float]:
    """Hashing bag-of-words embedding, L2-normalised.

    Each token is hashed with BLAKE2b (stable across processes, unlike
    ``hash()``); the hash picks a bucket and a sign (the sign halves the bias
    of collisions). Counts are damped with ``1 + log(tf)``. Text with no word
    tokens gives the zero vector.
    """
    counts: dict[str, int] = {}
    for tok in tokenize(text):
        counts[tok] = counts.get(tok, 0) + 1
    vec = [0.0] * dim
    for tok, tf in counts.items():
        digest = hashlib.blake2b(tok.encode("utf-8"), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dim
        sign = 1.0 if digest[4] & 1 else -1.0
        vec[bucket] += sign * (1.0 + math.log(tf))
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0.0:
        return vec
    return [v / norm for v in vec]


# --------------------------------------------------------------------------- settings


def app_meta() -> dict[str, str]:
    return {
        "app": os.getenv("APP_NAME", DEFAULT_APP_NAME),
        "version": os.getenv("APP_VERSION", "dev"),
        "tier": os.getenv("APP_TIER", "base"),
    }


def chroma_url() -> str:
    return os.getenv("CHROMA_URL", "http://chromadb:8000").rstrip("/")


def collection_name() -> str:
    return os.getenv("KB_COLLECTION", "kb-documents")


def chroma_headers() -> dict[str, str]:
    token = os.getenv("CHROMA_TOKEN", "").strip()
    if not token:
        return {}
    return {"Authorization": f"Bearer {token}", "X-Chroma-Token": token}


def collections_path() -> str:
    tenant = os.getenv("CHROMA_TENANT", "default_tenant")
    database = os.getenv("CHROMA_DATABASE", "default_database")
    return f"/api/v2/tenants/{tenant}/databases/{database}/collections"


# --------------------------------------------------------------------------- chroma client


class ChromaError(Exception):
    """A Chroma call failed; ``status`` is the upstream HTTP status if there was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Chroma:
    """Just enough of the Chroma REST API v2 for this app."""

    def __init__(self, http: httpx.AsyncClient):
        self.http = http
        self._collection_ids: dict[str, str] = {}

    async def _request(self, method: str, path: str, json: Any = None) -> Any:
        url = chroma_url() + path
        try:
            resp = await self.http.request(method, url, json=json, headers=chroma_headers(), timeout=15.0)
        except httpx.HTTPError as exc:
            raise ChromaError(f"ChromaDB is unreachable at {chroma_url()}: {type(exc).__name__}") from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
                reason = body.get("message") or body.get("error") or body.get("detail") or resp.text
            except (ValueError, AttributeError):
                reason = resp.text
            raise ChromaError(
                f"ChromaDB returned HTTP {resp.status_code} for {method} {path}: {str(reason)[:300]}",
                status=resp.status_code,
            )
        try:
            return resp.json()
        except ValueError as exc:
            raise ChromaError(f"ChromaDB returned invalid JSON for {method} {path}") from exc

    async def collection_id(self, name: str, refresh: bool = False) -> str:
        """Get-or-create the collection (cosine space) and cache its id."""
        if not refresh and name in self._collection_ids:
            return self._collection_ids[name]
        data = await self._request(
            "POST",
            collections_path(),
            {"name": name, "get_or_create": True, "metadata": {"hnsw:space": "cosine"}},
        )
        if not isinstance(data, dict) or not data.get("id"):
            raise ChromaError("ChromaDB create-collection answer had no id")
        self._collection_ids[name] = str(data["id"])
        return self._collection_ids[name]

    async def _on_collection(self, name: str, method: str, suffix: str, json: Any = None) -> Any:
        """Call ``collections/{id}/{suffix}``; retry once if the cached id went stale (404)."""
        cid = await self.collection_id(name)
        try:
            return await self._request(method, f"{collections_path()}/{cid}/{suffix}", json)
        except ChromaError as exc:
            if exc.status != 404:
                raise
            cid = await self.collection_id(name, refresh=True)
            return await self._request(method, f"{collections_path()}/{cid}/{suffix}", json)

    async def add(self, name: str, doc_id: str, text: str, embedding: list[float], metadata: dict | None) -> None:
        payload: dict[str, Any] = {"ids": [doc_id], "embeddings": [embedding], "documents": [text]}
        if metadata:  # Chroma rejects empty metadata dicts: omit instead
            payload["metadatas"] = [metadata]
        await self._on_collection(name, "POST", "upsert", payload)

    async def query(self, name: str, embedding: list[float], k: int) -> dict:
        return await self._on_collection(
            name,
            "POST",
            "query",
            {"query_embeddings": [embedding], "n_results": k, "include": ["documents", "metadatas", "distances"]},
        )

    async def count(self, name: str) -> int:
        data = await self._on_collection(name, "GET", "count")
        if isinstance(data, dict):  # tolerate {"count": n}
            data = data.get("count")
        if not isinstance(data, int):
            raise ChromaError("ChromaDB count answer was not an integer")
        return data


# --------------------------------------------------------------------------- API models

MetaValue = str | int | float | bool


class DocumentIn(BaseModel):
    """Body of ``POST /documents``."""

    id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = Field(
        default=None, description="Document id; a random one is generated if omitted."
    )
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20000)]
    metadata: dict[str, MetaValue] | None = Field(
        default=None, description="Flat metadata (str/int/float/bool values)."
    )


def first_row(data: dict, key: str, n: int) -> list:
    """Chroma query results are lists per query embedding; take the first, padded to n."""
    rows = data.get(key) or []
    row = (rows[0] if rows else None) or []
    return list(row) + [None] * (n - len(row))


# --------------------------------------------------------------------------- app


def create_app(http_client: httpx.AsyncClient | None = None) -> FastAPI:
    """Build the app; pass ``http_client`` to replace the HTTP client used for Chroma (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = http_client is None
        http = http_client or httpx.AsyncClient()
        app.state.chroma = Chroma(http)
        try:
            yield
        finally:
            if owned:
                await http.aclose()

    app = FastAPI(title="kb", description="Tiny knowledge base on ChromaDB.", lifespan=lifespan)

    @app.exception_handler(ChromaError)
    async def chroma_failed(_: Request, exc: ChromaError) -> JSONResponse:
        log.warning("chroma error: %s", exc)
        return JSONResponse(status_code=502, content={"detail": str(exc)})

    @app.exception_handler(Exception)
    async def unhandled(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness probe; never contacts Chroma."""
        return {"status": "ok", **app_meta()}

    @app.get("/")
    async def index() -> dict[str, Any]:
        return {
            "app": app_meta()["app"],
            "description": "Store short documents and search them by similarity (ChromaDB).",
            "collection": collection_name(),
            "chroma_url": chroma_url(),
            "embedding": {"kind": "hashing bag-of-words", "dimension": DIMENSION},
            "endpoints": ["POST /documents", "GET /search?q=...&k=3", "GET /documents/count", "GET /health"],
        }

    @app.post("/documents", status_code=201)
    async def add_document(doc: DocumentIn, request: Request) -> dict[str, Any]:
        """Embed and store one document."""
        vector = embed(doc.text)
        if not any(vector):
            raise HTTPException(status_code=422, detail="text contains no words to index")
        doc_id = doc.id or uuid.uuid4().hex
        await request.app.state.chroma.add(collection_name(), doc_id, doc.text, vector, doc.metadata or None)
        return {"id": doc_id, "collection": collection_name(), "dimension": DIMENSION}

    @app.get("/search")
    async def search(
        request: Request,
        q: Annotated[str, Query(min_length=1, max_length=2000, description="Search text")],
        k: Annotated[int, Query(ge=1, le=50, description="Number of results")] = 3,
    ) -> dict[str, Any]:
        """Return the k stored documents closest to ``q`` (cosine distance, lower is closer)."""
        vector = embed(q)
        if not any(vector):
            raise HTTPException(status_code=422, detail="query contains no words")
        data = await request.app.state.chroma.query(collection_name(), vector, k)
        if not isinstance(data, dict):
            raise ChromaError("ChromaDB query answer was not an object")
        ids = first_row(data, "ids", 0)
        docs = first_row(data, "documents", len(ids))
        metas = first_row(data, "metadatas", len(ids))
        dists = first_row(data, "distances", len(ids))
        results = [
            {"id": i, "text": d, "distance": dist, "metadata": m or {}}
            for i, d, m, dist in zip(ids, docs, metas, dists)
        ]
        return {"query": q, "k": k, "results": results}

    @app.get("/documents/count")
    async def count(request: Request) -> dict[str, Any]:
        """How many documents the collection holds."""
        return {"collection": collection_name(), "count": await request.app.state.chroma.count(collection_name())}

    return app


app = create_app()
