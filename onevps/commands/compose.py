"""`docker compose` commands of the project as argv lists. Nothing runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from ..config import Settings
from ..project import Project
from .docker import docker


def compose(project: Project, settings: Settings, *args: str | None) -> list[str]:
    """`docker compose` with the project name, file and env file every call needs
    (the project's files: here, or under VPS_PATH on the server)."""
    env_file = ("--env-file", str(settings.env_file)) if settings.env_file else ()
    return docker(
        "compose",
        "--project-name", settings.project_name,
        "--file", str(project.compose_file),
        *env_file,
        *args,
    )


def compose_version() -> list[str]:
    return docker("compose", "version", "--short")


def build_tier(project: Project, settings: Settings, tier: str) -> list[str]:
    return compose(project, settings, "--profile", "tiers", "build", f"{tier}-tier")


def build_apps(project: Project, settings: Settings, apps: Sequence[str], no_cache: bool = False) -> list[str]:
    return compose(project, settings, "build", "--no-cache" if no_cache else None, *apps)


def up(project: Project, settings: Settings, services: Iterable[str] = (), wait: bool = True,
       timeout: int | None = None, remove_orphans: bool = True, no_deps: bool = False,
       no_recreate: bool = False) -> list[str]:
    """`compose up --detach --no-build` of the services (all without a profile when none),
    waiting until they are healthy (timeout: UP_TIMEOUT by default)."""
    flags: list[str | None] = ["up", "--detach", "--no-build", "--remove-orphans" if remove_orphans else None,
                               "--no-deps" if no_deps else None, "--no-recreate" if no_recreate else None]
    if wait:
        flags += ["--wait", "--wait-timeout", str(timeout or settings.up_timeout)]
    return compose(project, settings, *flags, *services)


def create(project: Project, settings: Settings, services: Iterable[str]) -> list[str]:
    """The services' containers (re)made from their `latest` images, NOT started (a sleeping app
    takes its new image this way and stays asleep)."""
    return compose(project, settings, "up", "--no-start", "--no-build", "--no-deps", *services)


def down(project: Project, settings: Settings, volumes: bool = False) -> list[str]:
    """Every profile counts, so --volumes also removes the certbot volumes."""
    return compose(project, settings, "--profile", "*", "down", "--remove-orphans", "--volumes" if volumes else None)


def ps(project: Project, settings: Settings) -> list[str]:
    return compose(project, settings, "ps", "--all", "--format", "json")


def logs(project: Project, settings: Settings, services: Sequence[str] = (), follow: bool = False,
         tail: int | None = 100, timestamps: bool = False) -> list[str]:
    return compose(
        project, settings, "logs",
        "--follow" if follow else None,
        "--timestamps" if timestamps else None,
        *(("--tail", str(tail)) if tail is not None else ()),
        *services,
    )


def restart(project: Project, settings: Settings, services: Sequence[str]) -> list[str]:
    return compose(project, settings, "restart", *services)


def stop(project: Project, settings: Settings, services: Sequence[str], timeout: int | None = None) -> list[str]:
    return compose(project, settings, "stop", *(("--timeout", str(timeout)) if timeout is not None else ()), *services)


def pause(project: Project, settings: Settings, services: Sequence[str]) -> list[str]:
    return compose(project, settings, "pause", *services)


def unpause(project: Project, settings: Settings, services: Sequence[str]) -> list[str]:
    return compose(project, settings, "unpause", *services)


def config_check(project: Project, settings: Settings, compose_file: Path | None = None) -> list[str]:
    """Compose's own validation, quiet, of the compose file (or a candidate for it); no
    --env-file: variables come from the environment and the .env beside the file."""
    return docker("compose", "--project-name", settings.project_name,
                  "--file", str(compose_file or project.compose_file), "config", "--quiet")


def config_hash(project: Project, settings: Settings, service: str) -> list[str]:
    """`SERVICE HASH`: the hash Compose labels the service's containers with
    (com.docker.compose.config-hash); it differs once the service's entry changed."""
    return compose(project, settings, "config", "--hash", service)


def config_json(project: Project, settings: Settings) -> list[str]:
    """The resolved compose file (variables filled in), as JSON."""
    return compose(project, settings, "config", "--format", "json")


def exec_in(project: Project, settings: Settings, service: str, argv: Sequence[str]) -> list[str]:
    """`docker compose exec -T SERVICE ARGV...` (no TTY: works without a terminal)."""
    return compose(project, settings, "exec", "-T", service, *argv)
