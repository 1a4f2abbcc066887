"""Tests for the classify app (trains the real scikit-learn pipeline; < 1 s)."""

import math

import pytest
from fastapi.testclient import TestClient

import main


@pytest.fixture(scope="module")
def trained():
    return main.train()


@pytest.fixture()
def client(trained, monkeypatch):
    for var in ("APP_NAME", "APP_VERSION", "APP_TIER"):
        monkeypatch.delenv(var, raising=False)
    with TestClient(main.create_app(model=trained)) as c:
        yield c


def test_dataset_is_balanced_and_sized():
    texts, labels = main.load_dataset(main.DEFAULT_DATA)
    assert 60 <= len(texts) <= 200
    counts = {label: labels.count(label) for label in set(labels)}
    assert set(counts) == {"billing", "technical", "sales", "other"}
    assert min(counts.values()) >= 15


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "app": "classify", "version": "dev", "tier": "ml"}


def test_index_and_labels(client):
    data = client.get("/").json()
    assert data["app"] == "classify"
    assert data["labels"] == ["billing", "other", "sales", "technical"]
    assert data["training_examples"] == 80
    assert data["cv_accuracy"] >= 0.6
    assert client.get("/labels").json()["labels"] == {"billing": 20, "other": 20, "sales": 20, "technical": 20}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("I have been charged twice on my credit card", "billing"),
        ("Please refund my last payment", "billing"),
        ("The app crashes when I upload a photo", "technical"),
        ("I get an error message when I try to log in", "technical"),
        ("Can I get a price quote for 200 licences?", "sales"),
        ("We want to buy the enterprise plan, can we book a demo?", "sales"),
        ("What time does your office open?", "other"),
        ("Are you hiring?", "other"),
    ],
)
def test_classifies_unseen_messages(client, text, expected):
    r = client.post("/classify", json={"text": text})
    assert r.status_code == 200
    data = r.json()
    assert data["label"] == expected, data
    assert set(data["scores"]) == {"billing", "technical", "sales", "other"}
    assert math.isclose(sum(data["scores"].values()), 1.0, abs_tol=1e-3)
    assert data["scores"][expected] == max(data["scores"].values())


def test_scores_sorted_descending(client):
    scores = list(client.post("/classify", json={"text": "refund please"}).json()["scores"].values())
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("body", [{"text": ""}, {"text": "   "}, {}, {"text": None}])
def test_validation(client, body):
    assert client.post("/classify", json=body).status_code == 422


def test_custom_dataset_via_env(tmp_path, monkeypatch):
    data = tmp_path / "tiny.csv"
    data.write_text("label,text\ncats,meow purr whiskers\ncats,the kitten meows\n"
                    "dogs,woof bark fetch\ndogs,the puppy barks\n", encoding="utf-8")
    monkeypatch.setenv("CLASSIFY_DATA", str(data))
    with TestClient(main.create_app()) as c:
        assert c.get("/labels").json()["labels"] == {"cats": 2, "dogs": 2}
        assert c.post("/classify", json={"text": "a dog that barks"}).json()["label"] == "dogs"


def test_single_label_dataset_rejected(tmp_path):
    data = tmp_path / "one.csv"
    data.write_text("label,text\nx,a\nx,b\n", encoding="utf-8")
    with pytest.raises(ValueError):
        main.train(data)
