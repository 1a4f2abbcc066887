"""`fab setup`, first part: a bare Debian/Ubuntu server becomes a ready Docker host.

The decisions are pure functions of what the server reports (its
/etc/os-release, `uname -m`, `id -u`, ...): they return install plans as data
(named steps, each an argv list) that tests assert without any server.
`provision()` then walks the server through them, one announced line per step,
idempotently: on a ready server it sends no command that changes anything.

DOCKER_INSTALL chooses how a missing Docker gets installed:
  docker-repo  Docker's apt repository (docker-ce, ..., docker-compose-plugin),
               as Docker's Debian/Ubuntu install pages do it;
  distro       the distribution's docker.io plus its Compose v2 package where one
               exists; Debian 12 has none: this machine's Compose v2 plugin is
               copied over SSH instead (same architecture only);
  none         never install; only check, and name what is missing.
A non-root VPS_USER runs every privileged command through `sudo -n`, is added
to the docker group, and onevps logs in again so the group takes effect.

Modules: plans (the pure decisions), session (the Host a run needs, its Report
and primitives), docker and system (the steps), recipe (their order), hosts
(server.Ctx as a Host). The commands themselves: onevps.commands.host.
"""

from ..commands.host import FOREIGN_ENTRIES, INSTALL_PLUGIN, as_root, write_file_argv
from .hosts import CtxHost, SudoDockerRunner
from .plans import (ARCHES, COMPOSE_DOCS, COPY_PLUGIN, DAEMON_CONFIG, DAEMON_JSON, DOCKER_REPO_PACKAGES,
                    ENGINE_DOCS, KEYRING, KEYRINGS, LOCAL_PLUGIN_DIRS, MEMORY_WARN_MIB, PLUGIN_DIR, SOURCES, SWAPFILE,
                    Distro, Memory, ProvisionError, Step, compose_package, compose_version_of, daemon_json_step,
                    daemon_json_text, distro_steps, docker_repo_steps, dpkg_arch, find_local_plugin, install_plan,
                    listed, memory_warning, missing_line, parse_meminfo, parse_os_release, parse_size,
                    plan_packages, swap_steps)
from .recipe import provision
from .session import HINT_RERUN, Host, Report
from .system import MANAGED

__all__ = [
    "ARCHES", "COMPOSE_DOCS", "COPY_PLUGIN", "DAEMON_CONFIG", "DAEMON_JSON", "DOCKER_REPO_PACKAGES", "ENGINE_DOCS",
    "FOREIGN_ENTRIES", "HINT_RERUN", "INSTALL_PLUGIN", "KEYRING", "KEYRINGS", "LOCAL_PLUGIN_DIRS", "MANAGED",
    "MEMORY_WARN_MIB", "PLUGIN_DIR", "SOURCES", "SWAPFILE", "CtxHost", "Distro", "Host", "Memory", "ProvisionError",
    "Report", "Step", "SudoDockerRunner", "as_root", "compose_package", "compose_version_of", "daemon_json_step",
    "daemon_json_text", "distro_steps", "docker_repo_steps", "dpkg_arch", "find_local_plugin", "install_plan",
    "listed", "memory_warning", "missing_line", "parse_meminfo", "parse_os_release", "parse_size", "plan_packages",
    "provision", "swap_steps", "write_file_argv",
]
