"""Tests for the portfolio app."""

import hashlib

import pytest
from fastapi.testclient import TestClient

import main


@pytest.fixture()
def client():
    with TestClient(main.create_app()) as c:
        yield c


def test_health_defaults(client, monkeypatch):
    for var in ("APP_NAME", "APP_VERSION", "APP_TIER"):
        monkeypatch.delenv(var, raising=False)
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "app": "portfolio", "version": "dev", "tier": "base"}


def test_health_reads_env(client, monkeypatch):
    monkeypatch.setenv("APP_NAME", "folio")
    monkeypatch.setenv("APP_VERSION", "1.2.3")
    monkeypatch.setenv("APP_TIER", "base")
    assert client.get("/health").json() == {"status": "ok", "app": "folio", "version": "1.2.3", "tier": "base"}


def test_index_is_html_with_app_name_and_projects(client, monkeypatch):
    monkeypatch.setenv("APP_NAME", "portfolio")
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    body = r.text
    assert body.lstrip().startswith("<!doctype html>")
    assert "portfolio" in body
    assert main.DEVELOPER["name"] in body
    for project in main.PROJECTS:
        assert project["title"] in body
    # self-contained: no external stylesheets, scripts or fonts
    assert "<link" not in body
    assert "<script" not in body
    assert "$" not in body  # every template placeholder was substituted


def test_index_escapes_app_name(client, monkeypatch):
    monkeypatch.setenv("APP_NAME", "<b>x</b>")
    body = client.get("/").text
    assert "<b>x</b>" not in body
    assert "&lt;b&gt;x&lt;/b&gt;" in body


def test_api_projects(client):
    r = client.get("/api/projects")
    assert r.status_code == 200
    data = r.json()
    assert data["app"] == "portfolio"
    assert data["count"] == len(main.PROJECTS) == len(data["projects"])
    assert data["developer"]["name"] == main.DEVELOPER["name"]
    first = data["projects"][0]
    assert set(first) >= {"slug", "title", "year", "summary", "tags", "url"}
    slugs = [p["slug"] for p in data["projects"]]
    assert len(slugs) == len(set(slugs))


def test_single_project_and_404(client):
    slug = main.PROJECTS[1]["slug"]
    r = client.get(f"/api/projects/{slug}")
    assert r.status_code == 200
    assert r.json()["title"] == main.PROJECTS[1]["title"]
    r = client.get("/api/projects/does-not-exist")
    assert r.status_code == 404
    assert "does-not-exist" in r.json()["detail"]


def test_echo_answers_size_and_sha256_of_the_exact_body(client, monkeypatch):
    monkeypatch.setenv("APP_VERSION", "7.0")
    body = b'{"name": "Ada", "message": "h\\u00e9llo", "n": 1}'
    r = client.post("/api/echo", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    assert r.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "version": "7.0"}


def test_echo_refuses_a_body_that_is_not_json(client):
    r = client.post("/api/echo", content=b"name=Ada", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    assert r.json() == {"detail": "the body is not JSON"}
