"""Pure functions that BUILD commands as argv lists. Nothing runs here.

Quote with shlex only where a command runs (onevps.runner). Tests assert
whole commands: `shlex.join(commands.up(project, s)) == "docker compose ..."`.

One module per tool: docker (the engine), compose (the project's `docker
compose`), shell (the server's shell: files, the deploy lock, the journal),
certbot; swarm, host (the server's system) and transfer (`fab ship`) likewise.

The package's `docker` and `compose` are the base builder FUNCTIONS (every
module builds on them); the modules of the same names are `docker_cmd` and
`compose_cmd`: `from onevps.commands import compose_cmd, docker_cmd, shell`.
"""

from __future__ import annotations

# The modules first: importing `.docker` binds the package's `docker` to the module;
# the function of that name, imported after, takes the name over (same for compose).
from . import certbot, shell  # noqa: F401  (re-exported)
from . import compose as compose_cmd  # noqa: F401
from . import docker as docker_cmd  # noqa: F401
from .compose import (build_apps, build_tier, compose, compose_version, config_check, down,  # noqa: F401
                      exec_in, logs, ps, restart, up)
from .docker import docker, docker_info, image_inspect, image_labels  # noqa: F401

__all__ = ["build_apps", "build_tier", "certbot", "compose", "compose_cmd", "compose_version", "config_check",
           "docker", "docker_cmd", "docker_info", "down", "exec_in", "image_inspect", "image_labels", "logs", "ps",
           "restart", "shell", "up"]
