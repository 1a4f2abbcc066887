"""Tests for the summary app: splitting and ranking with a fake model, end to end with real MiniLM."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

import main

ARTICLE = (
    "Solar panels convert sunlight directly into electricity. "
    "Modern photovoltaic cells reach efficiencies above twenty percent. "
    "My neighbour's cat likes to sleep on warm car roofs. "
    "Falling prices have made solar power the cheapest source of new electricity in many countries. "
    "Grid operators now pair solar farms with batteries to supply power after sunset."
)


class KeywordModel:
    """Fake encoder: a sentence's vector counts a few keywords, so centrality is predictable."""

    WORDS = ["solar", "power", "electricity", "cat"]

    def __init__(self):
        self.calls = 0

    def encode(self, sentences, **kwargs):
        self.calls += 1
        rows = []
        for s in sentences:
            low = s.lower()
            rows.append([low.count(w) for w in self.WORDS] + [0.01])
        arr = np.array(rows, dtype=np.float32)
        return arr / np.linalg.norm(arr, axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("APP_NAME", "APP_VERSION", "APP_TIER", "SUMMARY_MAX_SENTENCES"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------- pure functions


def test_split_sentences():
    text = 'Hello world. "Quoted!" he said. Is it 3 p.m. yet? Yes.\n\nNew paragraph without dot\nstill same'
    assert main.split_sentences(text) == [
        "Hello world.",
        '"Quoted!" he said.',
        "Is it 3 p.m. yet?",
        "Yes.",
        "New paragraph without dot still same",
    ]
    assert main.split_sentences("   ") == []
    assert main.split_sentences("e.g. lowercase after a dot stays together.") == [
        "e.g. lowercase after a dot stays together."
    ]


def test_rank_by_centroid():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    sims = main.rank_by_centroid(emb)
    assert sims.shape == (3,)
    assert sims[1] > sims[0] > sims[2]
    assert np.all(sims <= 1.0 + 1e-9)


def test_summarize_with_fake_model_keeps_order_and_drops_outlier():
    model = KeywordModel()
    out = main.summarize(model, ARTICLE, 2)
    assert out["sentence_count"] == 5
    assert len(out["selected"]) == 2
    assert out["selected"] == sorted(out["selected"])
    assert 2 not in out["selected"]  # the cat sentence is off-topic
    assert out["summary"] == " ".join(main.split_sentences(ARTICLE)[i] for i in out["selected"])
    assert len(out["scores"]) == 5


def test_short_text_skips_the_model():
    model = KeywordModel()
    out = main.summarize(model, "Only one sentence here.", 3)
    assert out == {"summary": "Only one sentence here.", "selected": [0], "sentence_count": 1, "scores": [1.0]}
    assert model.calls == 0


# ---------------------------------------------------------------- HTTP with the real model


@pytest.fixture()
def client(model):
    with TestClient(main.create_app(model=model)) as c:
        yield c


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "app": "summary", "version": "dev", "tier": "ml"}


def test_index(client):
    data = client.get("/").json()
    assert data["app"] == "summary"
    assert data["model"] == "all-MiniLM-L6-v2"


def test_summarize_real_model(client):
    r = client.post("/summarize", json={"text": ARTICLE, "sentences": 3})
    assert r.status_code == 200
    data = r.json()
    assert len(data["selected"]) == 3
    assert data["selected"] == sorted(data["selected"])
    assert 2 not in data["selected"], data  # the cat is not what the text is about
    sentences = main.split_sentences(ARTICLE)
    assert data["summary"] == " ".join(sentences[i] for i in data["selected"])
    assert data["sentence_count"] == 5


def test_default_is_three_sentences(client):
    data = client.post("/summarize", json={"text": ARTICLE}).json()
    assert len(data["selected"]) == 3


@pytest.mark.parametrize(
    "body",
    [{"text": ""}, {"text": "   \n "}, {}, {"text": "Hi.", "sentences": 0}, {"text": "Hi.", "sentences": 51}],
)
def test_validation(client, body):
    assert client.post("/summarize", json=body).status_code == 422


def test_too_many_sentences(client, monkeypatch):
    monkeypatch.setenv("SUMMARY_MAX_SENTENCES", "4")
    r = client.post("/summarize", json={"text": ARTICLE})
    assert r.status_code == 422
    assert "limit is 4" in r.json()["detail"]
