"""__APP_NAME__: a onevps app on the __APP_TIER__ tier.

Runs as `uvicorn main:app --host 0.0.0.0 --port 8000` in its container (through
onevps_serve, which only makes its shutdown lose no request);
nginx serves it at http://__APP_NAME__.<DOMAIN>/. The shared services are
reachable through OLLAMA_URL, CHROMA_URL and REDIS_URL (see the compose
file's x-app-env block and this app's entry). Redis and ChromaDB know this app
by credentials of its own: its Redis user may use only keys (and channels)
that start with REDIS_KEY_PREFIX ("__APP_NAME__:"), and its CHROMA_TOKEN only
the tenant CHROMA_TENANT ("app-__APP_NAME__").
"""

from __future__ import annotations

import os

from fastapi import FastAPI

APP_NAME = os.getenv("APP_NAME", "__APP_NAME__")
APP_VERSION = os.getenv("APP_VERSION", "dev")
APP_TIER = os.getenv("APP_TIER", "__APP_TIER__")

app = FastAPI(title=APP_NAME, version=APP_VERSION)


@app.get("/health")
def health() -> dict:
    """Liveness for the container health check: no external calls, answers fast."""
    return {"status": "ok", "app": APP_NAME, "version": APP_VERSION, "tier": APP_TIER}


@app.get("/")
def index() -> dict:
    return {"app": APP_NAME, "message": f"Hello from {APP_NAME}!"}
