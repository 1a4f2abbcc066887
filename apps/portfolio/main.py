"""portfolio: a small personal portfolio site for a fictional developer.

``GET /`` renders a self-contained HTML page (inline CSS, no external assets)
and ``GET /api/projects`` serves the same project list as JSON, so the page
and the API can never drift apart. ``POST /api/echo`` takes any JSON body (a
contact form, say) and answers its size and sha256, so a client can check its
body arrived intact (the deploy load tests post to it).

Environment:
    APP_NAME     name reported by /health and shown on the page (default "portfolio")
    APP_VERSION  version string (default "dev")
    APP_TIER     image tier, "base" or "ml" (default "base")
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
from pathlib import Path
from string import Template

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

log = logging.getLogger("portfolio")

DEFAULT_APP_NAME = "portfolio"
TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "index.html"

DEVELOPER = {
    "name": "Mara Lindqvist",
    "role": "Backend & ML engineer",
    "location": "Gothenburg, Sweden",
    "bio": (
        "I build small, dependable services: APIs that stay up, data pipelines "
        "that explain themselves and machine-learning features that fit on one "
        "modest server. Ten years of Python, a soft spot for boring technology."
    ),
    "email": "mara@example.com",
    "skills": ["Python", "FastAPI", "PostgreSQL", "Redis", "Docker", "scikit-learn", "nginx"],
}

PROJECTS = [
    {
        "slug": "tidewatch",
        "title": "Tidewatch",
        "year": 2025,
        "summary": "Harbour sensor dashboard that ingests 40k readings a minute and alerts on anomalies.",
        "tags": ["FastAPI", "TimescaleDB", "WebSockets"],
        "url": "https://example.com/tidewatch",
    },
    {
        "slug": "ledgerlite",
        "title": "LedgerLite",
        "year": 2024,
        "summary": "Double-entry bookkeeping API for small co-ops, with idempotent imports from bank CSVs.",
        "tags": ["Python", "PostgreSQL", "pydantic"],
        "url": "https://example.com/ledgerlite",
    },
    {
        "slug": "triage-bot",
        "title": "Triage Bot",
        "year": 2024,
        "summary": "Routes support tickets to billing, technical or sales queues with a tiny TF-IDF model.",
        "tags": ["scikit-learn", "FastAPI"],
        "url": "https://example.com/triage-bot",
    },
    {
        "slug": "onevps",
        "title": "onevps",
        "year": 2025,
        "summary": "Twenty-one small web apps on a single server behind nginx, with Docker Compose and shared image tiers.",
        "tags": ["Docker", "nginx", "Redis"],
        "url": "https://example.com/onevps",
    },
    {
        "slug": "quiet-search",
        "title": "Quiet Search",
        "year": 2023,
        "summary": "Offline semantic search over meeting notes using MiniLM embeddings and a vector store.",
        "tags": ["sentence-transformers", "ChromaDB"],
        "url": "https://example.com/quiet-search",
    },
]


def app_meta() -> dict[str, str]:
    """Identity of this app, read from the environment on every call."""
    return {
        "app": os.getenv("APP_NAME", DEFAULT_APP_NAME),
        "version": os.getenv("APP_VERSION", "dev"),
        "tier": os.getenv("APP_TIER", "base"),
    }


def render_project(project: dict) -> str:
    """Render one project card; every value is HTML-escaped."""
    e = html.escape
    tags = "".join(f'<li class="tag">{e(t)}</li>' for t in project["tags"])
    return (
        '<article class="card">'
        f'<div class="card-head"><h3>{e(project["title"])}</h3>'
        f'<span class="year">{e(str(project["year"]))}</span></div>'
        f'<p>{e(project["summary"])}</p>'
        f'<ul class="tags">{tags}</ul>'
        f'<a class="more" href="{e(project["url"], quote=True)}">Read more &rarr;</a>'
        "</article>"
    )


def render_page() -> str:
    """Render the full portfolio page from the template file."""
    e = html.escape
    meta = app_meta()
    template = Template(TEMPLATE_PATH.read_text(encoding="utf-8"))
    return template.substitute(
        app_name=e(meta["app"]),
        version=e(meta["version"]),
        name=e(DEVELOPER["name"]),
        role=e(DEVELOPER["role"]),
        location=e(DEVELOPER["location"]),
        bio=e(DEVELOPER["bio"]),
        email=e(DEVELOPER["email"], quote=True),
        initials=e("".join(part[0] for part in DEVELOPER["name"].split())),
        skills="".join(f'<li class="tag">{e(s)}</li>' for s in DEVELOPER["skills"]),
        project_count=len(PROJECTS),
        projects="\n".join(render_project(p) for p in PROJECTS),
    )


def create_app() -> FastAPI:
    """Build the FastAPI application."""
    app = FastAPI(title="portfolio", description="Portfolio page of a fictional developer.")

    @app.exception_handler(Exception)
    async def unhandled(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", exc)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness probe used by the container healthcheck."""
        return {"status": "ok", **app_meta()}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        """The portfolio page itself."""
        return HTMLResponse(render_page())

    @app.get("/api/projects")
    async def list_projects() -> dict:
        """All projects as JSON, plus who made them."""
        return {
            "app": app_meta()["app"],
            "developer": {k: DEVELOPER[k] for k in ("name", "role", "location")},
            "count": len(PROJECTS),
            "projects": PROJECTS,
        }

    @app.get("/api/projects/{slug}")
    async def get_project(slug: str) -> dict:
        """One project by its slug; 404 if unknown."""
        for project in PROJECTS:
            if project["slug"] == slug:
                return project
        raise HTTPException(status_code=404, detail=f"no project with slug {slug!r}")

    @app.post("/api/echo")
    async def echo(request: Request) -> dict:
        """Receipt for any JSON body: its size and sha256, and this app's version; 400 if not JSON."""
        body = await request.body()
        try:
            json.loads(body)
        except ValueError:
            raise HTTPException(status_code=400, detail="the body is not JSON") from None
        return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "version": app_meta()["version"]}

    return app


app = create_app()
