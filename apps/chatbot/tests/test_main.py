"""Tests for the chatbot app. Ollama is replaced by httpx.MockTransport."""

import json

import httpx
import pytest
from fastapi.testclient import TestClient

import main


def make_client(handler) -> TestClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return TestClient(main.create_app(http_client=http))


def fake_ollama(seen: list):
    """A fake Ollama that records requests and echoes the last user message."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/chat":
            body = json.loads(request.content)
            last = body["messages"][-1]["content"]
            return httpx.Response(
                200,
                json={
                    "model": body["model"],
                    "created_at": "2025-01-01T00:00:00Z",
                    "message": {"role": "assistant", "content": f"echo: {last}"},
                    "done": True,
                },
            )
        if request.url.path == "/api/tags":
            return httpx.Response(200, json={"models": [{"name": "llama3.2:1b"}, {"name": "qwen2.5:0.5b"}]})
        return httpx.Response(404, json={"error": "not found"})

    return handler


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("APP_NAME", "APP_VERSION", "APP_TIER", "OLLAMA_URL", "OLLAMA_MODEL", "CHAT_SYSTEM_PROMPT"):
        monkeypatch.delenv(var, raising=False)


def test_health_does_not_call_ollama():
    seen = []
    with make_client(fake_ollama(seen)) as c:
        r = c.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "app": "chatbot", "version": "dev", "tier": "base"}
    assert seen == []


def test_index_identifies_app(monkeypatch):
    monkeypatch.setenv("OLLAMA_MODEL", "tiny:latest")
    with make_client(fake_ollama([])) as c:
        data = c.get("/").json()
    assert data["app"] == "chatbot"
    assert data["model"] == "tiny:latest"
    assert data["ollama_url"] == "http://ollama:11434"


def test_chat_forwards_to_ollama(monkeypatch):
    monkeypatch.setenv("OLLAMA_URL", "http://llm.internal:1234/")
    seen = []
    with make_client(fake_ollama(seen)) as c:
        r = c.post("/chat", json={"message": "  hello there  "})
    assert r.status_code == 200
    assert r.json() == {"app": "chatbot", "model": "llama3.2:1b", "reply": "echo: hello there"}
    assert len(seen) == 1
    req = seen[0]
    assert req.method == "POST"
    assert str(req.url) == "http://llm.internal:1234/api/chat"
    sent = json.loads(req.content)
    assert sent == {
        "model": "llama3.2:1b",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": False,
    }


def test_chat_system_prompt_from_env(monkeypatch):
    monkeypatch.setenv("CHAT_SYSTEM_PROMPT", "Be brief.")
    seen = []
    with make_client(fake_ollama(seen)) as c:
        assert c.post("/chat", json={"message": "hi"}).status_code == 200
    messages = json.loads(seen[0].content)["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1] == {"role": "user", "content": "hi"}


@pytest.mark.parametrize("body", [{"message": ""}, {"message": "   "}, {}, {"message": 5}])
def test_chat_validation(body):
    with make_client(fake_ollama([])) as c:
        r = c.post("/chat", json=body)
    assert r.status_code == 422


def test_ollama_unreachable_gives_502():
    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    with make_client(handler) as c:
        r = c.post("/chat", json={"message": "hi"})
    assert r.status_code == 502
    detail = r.json()["detail"]
    assert "unreachable" in detail
    assert "http://ollama:11434" in detail
    assert "Traceback" not in r.text


def test_ollama_timeout_gives_502():
    def handler(request):
        raise httpx.ReadTimeout("slow", request=request)

    with make_client(handler) as c:
        r = c.post("/chat", json={"message": "hi"})
    assert r.status_code == 502
    assert "timed out" in r.json()["detail"]


def test_ollama_error_status_gives_502():
    def handler(request):
        return httpx.Response(404, json={"error": "model 'llama3.2:1b' not found"})

    with make_client(handler) as c:
        r = c.post("/chat", json={"message": "hi"})
    assert r.status_code == 502
    assert "404" in r.json()["detail"]
    assert "not found" in r.json()["detail"]


def test_ollama_garbage_gives_502():
    def handler(request):
        return httpx.Response(200, text="<html>proxy error</html>")

    with make_client(handler) as c:
        r = c.post("/chat", json={"message": "hi"})
    assert r.status_code == 502
    assert r.json()["detail"]


def test_models_lists_tags():
    with make_client(fake_ollama([])) as c:
        r = c.get("/models")
    assert r.status_code == 200
    assert r.json()["models"] == ["llama3.2:1b", "qwen2.5:0.5b"]
    assert r.json()["configured"] == "llama3.2:1b"
