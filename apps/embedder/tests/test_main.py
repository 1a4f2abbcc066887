"""Tests for embedder, using the real bundled all-MiniLM-L6-v2 model (no network)."""

import math

import numpy as np
import pytest
from fastapi.testclient import TestClient

import main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("APP_NAME", "APP_VERSION", "APP_TIER", "EMBED_MAX_TEXTS", "EMBED_BATCH_SIZE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture()
def client(model):
    with TestClient(main.create_app(model=model)) as c:
        yield c


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_offline_mode_is_forced():
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "app": "embedder", "version": "dev", "tier": "ml"}


def test_index_reports_dimension(client):
    data = client.get("/").json()
    assert data["app"] == "embedder"
    assert data["dimension"] == 384
    assert data["model"] == "all-MiniLM-L6-v2"


def test_embed_shape_and_normalisation(client):
    r = client.post("/embed", json={"texts": ["The cat sits on the mat.", "A dog plays in the park.", "hello"]})
    assert r.status_code == 200
    data = r.json()
    assert data["model"] == "all-MiniLM-L6-v2"
    assert data["dimension"] == 384
    assert len(data["embeddings"]) == 3
    for vec in data["embeddings"]:
        assert len(vec) == 384
        assert math.isclose(float(np.linalg.norm(vec)), 1.0, abs_tol=1e-4)


def test_embed_is_deterministic_and_order_preserving(client):
    one = client.post("/embed", json={"texts": ["alpha beta"]}).json()["embeddings"][0]
    two = client.post("/embed", json={"texts": ["zeta", "alpha beta"]}).json()["embeddings"]
    assert cos(one, two[1]) > 0.9999
    assert cos(one, two[0]) < 0.99


def test_embeddings_capture_meaning(client):
    vecs = client.post(
        "/embed",
        json={"texts": ["How do I reset my password?", "I forgot my login password", "The weather is sunny today"]},
    ).json()["embeddings"]
    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]) + 0.2


def test_similarity_endpoint(client):
    same = client.post("/similarity", json={"a": "a red car", "b": "a red automobile"}).json()["cosine"]
    diff = client.post("/similarity", json={"a": "a red car", "b": "quarterly tax filing"}).json()["cosine"]
    assert -1.0 <= diff < same <= 1.0
    assert same > 0.7


def test_unnormalised_option(client):
    vec = client.post("/embed", json={"texts": ["hello world"], "normalize": False}).json()["embeddings"][0]
    assert len(vec) == 384


@pytest.mark.parametrize("body", [{"texts": []}, {"texts": [""]}, {"texts": ["ok", "  "]}, {}, {"texts": "x"}])
def test_validation(client, body):
    assert client.post("/embed", json=body).status_code == 422


def test_max_texts(client, monkeypatch):
    monkeypatch.setenv("EMBED_MAX_TEXTS", "2")
    r = client.post("/embed", json={"texts": ["a", "b", "c"]})
    assert r.status_code == 422
    assert "at most 2" in r.json()["detail"]


def test_model_failure_is_clean_json():
    class Broken:
        def get_embedding_dimension(self):
            return 384

        def encode(self, *args, **kwargs):
            raise RuntimeError("boom")

    with TestClient(main.create_app(model=Broken()), raise_server_exceptions=False) as c:
        r = c.post("/embed", json={"texts": ["x"]})
        assert c.get("/health").status_code == 200
    assert r.status_code == 500
    assert r.json() == {"detail": "internal server error"}
