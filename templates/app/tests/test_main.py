from fastapi.testclient import TestClient

import main

client = TestClient(main.app)


def test_health_names_the_app():
    res = client.get("/health")
    assert res.status_code == 200
    assert res.json() == {"status": "ok", "app": "__APP_NAME__", "version": "dev", "tier": "__APP_TIER__"}


def test_index_says_hello():
    res = client.get("/")
    assert res.status_code == 200
    assert res.json()["app"] == "__APP_NAME__"
