"""`fab setup`, first part, as one sequence of named steps (see onevps.provision)."""

from __future__ import annotations

from . import docker, system
from .session import Host, Report, Session


def provision(host: Host, mode: str, vps_path: str, swap: str | None = None, **kw) -> Report:
    """Make the server a ready Docker host; on a ready server, change nothing and say so.
    kw: Session's local_machine, plugin_dirs, environ, poll, poll_tries (tests)."""
    s = Session(host, mode, vps_path, swap=swap, **kw)
    system.facts(s)
    installed_now, running_before = docker.install(s)
    wrote = docker.log_rotation(s)
    docker.engine(s, installed_now, running_before, wrote)
    docker.docker_group(s)
    docker.wait_for_engine(s)
    system.workdir(s)
    system.swap(s)
    if not s.report.changed:
        s.say("==> Docker host: ready, nothing changed")
    return s.report
