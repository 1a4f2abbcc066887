"""chatbot: a tiny chat endpoint that asks a local Ollama server.

``POST /chat {"message": "..."}`` forwards the message to Ollama's
``POST /api/chat`` (non-streaming) and returns the assistant's reply.
If Ollama cannot be reached, or answers with an error, the client gets a clean
502 JSON ``{"detail": ...}`` instead of a traceback.

The outgoing ``httpx.AsyncClient`` is injectable (``create_app(http_client=...)``)
so the tests can use ``httpx.MockTransport`` and never touch the network.

Environment:
    APP_NAME        default "chatbot"
    APP_VERSION     default "dev"
    APP_TIER        default "base"
    OLLAMA_URL      base URL of Ollama (default http://ollama:11434)
    OLLAMA_MODEL    model to chat with (default llama3.2:1b)
    OLLAMA_TIMEOUT  seconds to wait for a reply (default 120; CPU inference is slow)
    CHAT_SYSTEM_PROMPT  optional system prompt sent before the user message
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

log = logging.getLogger("chatbot")

DEFAULT_APP_NAME = "chatbot"
DEFAULT_OLLAMA_URL = "http://ollama:11434"
DEFAULT_OLLAMA_MODEL = "llama3.2:1b"

NonEmptyText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=8000)]


def app_meta() -> dict[str, str]:
    """Identity of this app, read from the environment on every call."""
    return {
        "app": os.getenv("APP_NAME", DEFAULT_APP_NAME),
        "version": os.getenv("APP_VERSION", "dev"),
        "tier": os.getenv("APP_TIER", "base"),
    }


def ollama_url() -> str:
    return os.getenv("OLLAMA_URL", DEFAULT_OLLAMA_URL).rstrip("/")


def ollama_model() -> str:
    return os.getenv("OLLAMA_MODEL", DEFAULT_OLLAMA_MODEL)


def ollama_timeout() -> float:
    try:
        return float(os.getenv("OLLAMA_TIMEOUT", "120"))
    except ValueError:
        return 120.0


class ChatRequest(BaseModel):
    """Body of ``POST /chat``."""

    message: NonEmptyText = Field(description="The user's message.")
    system: Annotated[str, StringConstraints(max_length=4000)] | None = Field(
        default=None, description="Optional system prompt; overrides CHAT_SYSTEM_PROMPT."
    )


class ChatResponse(BaseModel):
    app: str
    model: str
    reply: str


def unreachable(url: str, exc: Exception) -> HTTPException:
    """502 used when Ollama cannot be contacted at all."""
    return HTTPException(
        status_code=502,
        detail=f"Ollama is unreachable at {url}: {type(exc).__name__}",
    )


async def call_ollama(client: httpx.AsyncClient, path: str, payload: dict | None = None) -> Any:
    """Send one request to Ollama and return the decoded JSON body.

    Any transport error, non-2xx status or non-JSON body becomes a 502.
    """
    url = ollama_url()
    try:
        if payload is None:
            resp = await client.get(f"{url}{path}", timeout=10.0)
        else:
            resp = await client.post(f"{url}{path}", json=payload, timeout=ollama_timeout())
    except httpx.TimeoutException as exc:
        raise HTTPException(status_code=502, detail=f"Ollama at {url} timed out: {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:  # connect refused, DNS failure, protocol error...
        raise unreachable(url, exc) from exc

    if resp.status_code >= 400:
        try:
            reason = resp.json().get("error") or resp.text
        except ValueError:
            reason = resp.text
        raise HTTPException(
            status_code=502,
            detail=f"Ollama at {url} returned HTTP {resp.status_code}: {str(reason)[:300]}",
        )
    try:
        return resp.json()
    except ValueError as exc:
        raise HTTPException(status_code=502, detail=f"Ollama at {url} returned invalid JSON") from exc


def create_app(http_client: httpx.AsyncClient | None = None) -> FastAPI:
    """Build the app; pass ``http_client`` to replace the outgoing HTTP client (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = http_client is None
        app.state.http = http_client or httpx.AsyncClient()
        try:
            yield
        finally:
            if owned:
                await app.state.http.aclose()

    app = FastAPI(title="chatbot", description="Chat with a local Ollama model.", lifespan=lifespan)

    @app.exception_handler(Exception)
    async def unhandled(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness probe; never contacts Ollama."""
        return {"status": "ok", **app_meta()}

    @app.get("/")
    async def index() -> dict[str, Any]:
        """Describe the app and where it sends questions."""
        return {
            "app": app_meta()["app"],
            "description": "Chat with a local LLM served by Ollama.",
            "model": ollama_model(),
            "ollama_url": ollama_url(),
            "endpoints": ["POST /chat", "GET /models", "GET /health"],
        }

    @app.post("/chat", response_model=ChatResponse)
    async def chat(body: ChatRequest, request: Request) -> ChatResponse:
        """Ask the model one question (non-streaming) and return its answer."""
        model = ollama_model()
        messages = []
        system = body.system if body.system is not None else os.getenv("CHAT_SYSTEM_PROMPT", "")
        if system.strip():
            messages.append({"role": "system", "content": system.strip()})
        messages.append({"role": "user", "content": body.message})

        data = await call_ollama(
            request.app.state.http,
            "/api/chat",
            {"model": model, "messages": messages, "stream": False},
        )
        message = data.get("message") if isinstance(data, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise HTTPException(status_code=502, detail="Ollama reply had no message.content")
        return ChatResponse(app=app_meta()["app"], model=data.get("model") or model, reply=content)

    @app.get("/models")
    async def models(request: Request) -> dict[str, Any]:
        """Models Ollama has pulled (proxy of ``GET /api/tags``)."""
        data = await call_ollama(request.app.state.http, "/api/tags")
        names = [m.get("name") for m in data.get("models", []) if isinstance(m, dict)]
        return {"app": app_meta()["app"], "configured": ollama_model(), "models": names}

    return app


app = create_app()
