"""Pure functions that BUILD commands as argv lists. Nothing runs here.

Quote with shlex only where a command runs (onevps.runner). Tests assert
whole commands: `shlex.join(commands.up(s)) == "docker compose ..."`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ..config import Settings


def docker(*args: str | None) -> list[str]:
    """`docker ARGS...`, dropping None (optional flags)."""
    return ["docker", *[a for a in args if a is not None]]


def compose(settings: Settings, *args: str | None) -> list[str]:
    """`docker compose` with the project name, file and env file every call needs."""
    env_file = ("--env-file", str(settings.env_file)) if settings.env_file else ()
    return docker(
        "compose",
        "--project-name", settings.project_name,
        "--file", str(settings.compose_file),
        *env_file,
        *args,
    )


def build_tier(settings: Settings, tier: str) -> list[str]:
    return compose(settings, "--profile", "tiers", "build", f"{tier}-tier")


def build_apps(settings: Settings, apps: Sequence[str], no_cache: bool = False) -> list[str]:
    return compose(settings, "build", "--no-cache" if no_cache else None, *apps)


def up(settings: Settings, services: Iterable[str] = (), wait: bool = True,
       timeout: int | None = None, remove_orphans: bool = True) -> list[str]:
    flags: list[str | None] = ["up", "--detach", "--no-build", "--remove-orphans" if remove_orphans else None]
    if wait:
        flags += ["--wait", "--wait-timeout", str(timeout or settings.up_timeout)]
    return compose(settings, *flags, *services)


def down(settings: Settings, volumes: bool = False) -> list[str]:
    """Every profile counts, so --volumes also removes the certbot volumes."""
    return compose(settings, "--profile", "*", "down", "--remove-orphans", "--volumes" if volumes else None)


def ps(settings: Settings) -> list[str]:
    return compose(settings, "ps", "--all", "--format", "json")


def logs(settings: Settings, services: Sequence[str] = (), follow: bool = False,
         tail: int | None = 100, timestamps: bool = False) -> list[str]:
    return compose(
        settings, "logs",
        "--follow" if follow else None,
        "--timestamps" if timestamps else None,
        *(("--tail", str(tail)) if tail is not None else ()),
        *services,
    )


def restart(settings: Settings, services: Sequence[str]) -> list[str]:
    return compose(settings, "restart", *services)


def config_check(settings: Settings) -> list[str]:
    """Compose's own validation of the file, quiet."""
    return compose(settings, "config", "--quiet")


def image_inspect(ref: str, fmt: str = "{{json .}}") -> list[str]:
    return docker("image", "inspect", "--format", fmt, ref)


def image_labels(ref: str) -> list[str]:
    return image_inspect(ref, "{{json .Config.Labels}}")


def docker_info() -> list[str]:
    return docker("info", "--format", "{{.ServerVersion}}")


def compose_version() -> list[str]:
    return docker("compose", "version", "--short")


def exec_in(settings: Settings, service: str, argv: Sequence[str]) -> list[str]:
    """`docker compose exec -T SERVICE ARGV...` (no TTY: works without a terminal)."""
    return compose(settings, "exec", "-T", service, *argv)
