"""Tests for kb against an in-memory fake of the ChromaDB REST API v2."""

import json
import math
import re
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

import main

BASE = "/api/v2/tenants/default_tenant/databases/default_database/collections"


class FakeChroma:
    """In-memory stand-in for the few Chroma v2 routes kb uses."""

    def __init__(self):
        self.collections = {}  # name -> {"id", "metadata", "records": {id: (emb, doc, meta)}}
        self.requests = []

    def by_id(self, cid):
        for coll in self.collections.values():
            if coll["id"] == cid:
                return coll
        return None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        body = json.loads(request.content) if request.content else None
        if request.method == "POST" and path == BASE:
            name = body["name"]
            if name not in self.collections:
                if not body.get("get_or_create"):
                    return httpx.Response(409, json={"error": "UniqueConstraintError", "message": "exists"})
                self.collections[name] = {"id": str(uuid.uuid4()), "metadata": body.get("metadata"), "records": {}}
            coll = self.collections[name]
            return httpx.Response(200, json={"id": coll["id"], "name": name, "metadata": coll["metadata"]})
        m = re.fullmatch(BASE + r"/([^/]+)/(upsert|query|count)", path)
        if not m:
            return httpx.Response(404, json={"error": "NotFound", "message": f"no route {path}"})
        coll = self.by_id(m.group(1))
        if coll is None:
            return httpx.Response(404, json={"error": "NotFoundError", "message": "Collection does not exist."})
        op = m.group(2)
        if op == "count" and request.method == "GET":
            return httpx.Response(200, json=len(coll["records"]))
        if op == "upsert" and request.method == "POST":
            metas = body.get("metadatas") or [None] * len(body["ids"])
            for meta in metas:
                if meta is not None and not meta:
                    return httpx.Response(400, json={"error": "InvalidArgument", "message": "empty metadata"})
            for i, emb, doc, meta in zip(body["ids"], body["embeddings"], body["documents"], metas):
                coll["records"][i] = (emb, doc, meta)
            return httpx.Response(201, json={})
        if op == "query" and request.method == "POST":
            q = body["query_embeddings"][0]
            scored = []
            for i, (emb, doc, meta) in coll["records"].items():
                dot = sum(a * b for a, b in zip(q, emb))
                norm = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in emb))
                scored.append((1.0 - dot / norm, i, doc, meta))
            scored.sort()
            top = scored[: body.get("n_results", 10)]
            return httpx.Response(
                200,
                json={
                    "ids": [[t[1] for t in top]],
                    "documents": [[t[2] for t in top]],
                    "metadatas": [[t[3] for t in top]],
                    "distances": [[t[0] for t in top]],
                    "embeddings": None,
                    "include": body["include"],
                },
            )
        return httpx.Response(405, json={"error": "MethodNotAllowed", "message": "bad method"})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("APP_NAME", "APP_VERSION", "APP_TIER", "CHROMA_URL", "CHROMA_TOKEN", "KB_COLLECTION",
                "CHROMA_TENANT", "CHROMA_DATABASE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture()
def fake():
    return FakeChroma()


@pytest.fixture()
def client(fake):
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    with TestClient(main.create_app(http_client=http)) as c:
        yield c


# ---------------------------------------------------------------- embedding


def test_embed_is_deterministic_normalised_and_sized():
    a = main.embed("The quick brown fox")
    assert len(a) == main.DIMENSION == 256
    assert a == main.embed("the QUICK, brown fox!")
    assert math.isclose(sum(v * v for v in a), 1.0, rel_tol=1e-9)
    assert not any(main.embed("?!  ..."))


def test_embed_similar_texts_are_closer():
    def cos(x, y):
        return sum(a * b for a, b in zip(x, y))

    q = main.embed("reset my password")
    assert cos(q, main.embed("how do I reset a forgotten password")) > cos(q, main.embed("invoice for March"))


# ---------------------------------------------------------------- endpoints


def test_health_is_local(client, fake):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "app": "kb", "version": "dev", "tier": "base"}
    assert fake.requests == []


def test_index(client):
    data = client.get("/").json()
    assert data["app"] == "kb"
    assert data["collection"] == "kb-documents"
    assert data["embedding"]["dimension"] == 256


def test_add_search_count_roundtrip(client, fake):
    docs = [
        ("pw", "To reset your password open settings and choose reset password.", {"topic": "account"}),
        ("inv", "Invoices are emailed on the first day of every month.", {"topic": "billing"}),
        ("gpu", "The server has no GPU; models run on the CPU.", None),
    ]
    for doc_id, text, meta in docs:
        body = {"id": doc_id, "text": text}
        if meta is not None:
            body["metadata"] = meta
        r = client.post("/documents", json=body)
        assert r.status_code == 201, r.text
        assert r.json() == {"id": doc_id, "collection": "kb-documents", "dimension": 256}

    assert client.get("/documents/count").json() == {"collection": "kb-documents", "count": 3}

    r = client.get("/search", params={"q": "how can I reset my password", "k": 2})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 2
    assert results[0]["id"] == "pw"
    assert results[0]["text"].startswith("To reset your password")
    assert results[0]["metadata"] == {"topic": "account"}
    assert results[0]["distance"] <= results[1]["distance"]

    # only one collection create (id is cached) and it asked for cosine space
    creates = [r for r in fake.requests if r.url.path == BASE]
    assert len(creates) == 1
    assert json.loads(creates[0].content) == {"name": "kb-documents", "get_or_create": True,
                                              "metadata": {"hnsw:space": "cosine"}}


def test_add_payload_shape_and_empty_metadata_omitted(client, fake):
    r = client.post("/documents", json={"text": "hello world", "metadata": {}})
    assert r.status_code == 201
    generated = r.json()["id"]
    assert len(generated) == 32
    add = [r for r in fake.requests if r.url.path.endswith("/upsert")][0]
    sent = json.loads(add.content)
    assert sent["ids"] == [generated]
    assert sent["documents"] == ["hello world"]
    assert len(sent["embeddings"]) == 1 and len(sent["embeddings"][0]) == 256
    assert "metadatas" not in sent


def test_query_payload_shape(client, fake):
    client.post("/documents", json={"id": "a", "text": "alpha"})
    client.get("/search", params={"q": "alpha"})
    query = [r for r in fake.requests if r.url.path.endswith("/query")][0]
    sent = json.loads(query.content)
    assert sent["n_results"] == 3
    assert sent["include"] == ["documents", "metadatas", "distances"]
    assert len(sent["query_embeddings"]) == 1 and len(sent["query_embeddings"][0]) == 256


def test_search_on_empty_collection(client):
    r = client.get("/search", params={"q": "anything"})
    assert r.status_code == 200
    assert r.json()["results"] == []


def test_token_headers_and_custom_collection(monkeypatch, fake):
    monkeypatch.setenv("CHROMA_TOKEN", "s3cret")
    monkeypatch.setenv("KB_COLLECTION", "notes")
    monkeypatch.setenv("CHROMA_URL", "http://vectors:9000/")
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    with TestClient(main.create_app(http_client=http)) as c:
        assert c.get("/documents/count").json() == {"collection": "notes", "count": 0}
    assert "notes" in fake.collections
    for req in fake.requests:
        assert req.headers["authorization"] == "Bearer s3cret"
        assert req.headers["x-chroma-token"] == "s3cret"
        assert req.url.host == "vectors" and req.url.port == 9000


def test_no_token_no_auth_header(client, fake):
    client.get("/documents/count")
    assert "authorization" not in fake.requests[0].headers


def test_stale_collection_id_is_refreshed(client, fake):
    client.post("/documents", json={"id": "a", "text": "alpha"})
    fake.collections.clear()  # e.g. the Chroma volume was wiped
    assert client.get("/documents/count").json()["count"] == 0


@pytest.mark.parametrize(
    "body",
    [{"text": ""}, {"text": "   "}, {}, {"text": "ok", "metadata": {"nested": {"a": 1}}}, {"id": "", "text": "x"}],
)
def test_document_validation(client, body):
    assert client.post("/documents", json=body).status_code == 422


def test_text_without_words_is_rejected(client):
    r = client.post("/documents", json={"text": "!!! ???"})
    assert r.status_code == 422
    assert "no words" in r.json()["detail"]


def test_search_validation(client):
    assert client.get("/search").status_code == 422
    assert client.get("/search", params={"q": ""}).status_code == 422
    assert client.get("/search", params={"q": "x", "k": 0}).status_code == 422


def test_chroma_down_gives_502():
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    with TestClient(main.create_app(http_client=http)) as c:
        for r in (c.post("/documents", json={"text": "hi"}), c.get("/search", params={"q": "hi"}),
                  c.get("/documents/count")):
            assert r.status_code == 502
            assert "ChromaDB is unreachable at http://chromadb:8000" in r.json()["detail"]
        assert c.get("/health").status_code == 200


def test_chroma_error_status_gives_502():
    def handler(request):
        return httpx.Response(500, json={"error": "Internal", "message": "disk full"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    with TestClient(main.create_app(http_client=http)) as c:
        r = c.get("/documents/count")
    assert r.status_code == 502
    assert "500" in r.json()["detail"] and "disk full" in r.json()["detail"]
