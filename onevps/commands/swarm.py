"""Docker Swarm commands (stack, service, swarm state) as argv lists. Nothing runs here."""

from __future__ import annotations

from typing import Sequence

from .docker import docker


def stack_deploy_argv(stack_file: str, stack: str, registry: bool, resolve: bool | None = None) -> list[str]:
    """`docker stack deploy`; with a registry every node pulls (by digest when resolve: an outside
    registry; onevps's own one serves content tags, which never move)."""
    resolve = registry if resolve is None else resolve
    return docker("stack", "deploy", "--compose-file", stack_file,
                  "--resolve-image", "always" if resolve else "never",
                  "--with-registry-auth" if registry else None, stack)


# Reads KEY=value lines (config.literal_env_text) into the environment: `read -r` and
# `export "$kv"` take each line as it is, so no value is ever expanded or run by the shell
# (a value holding $(...), `...`, ; or quotes stays text). The file is removed once read.
_WITH_ENV_LINES = ('f=$1; shift; ok=0; while IFS= read -r kv; do export "$kv" || ok=1; done < "$f" || ok=1; '
                   'rm -f -- "$f"; [ "$ok" = 0 ] || { echo "cannot read the settings file $f" >&2; exit 2; }; '
                   'exec "$@"')


def with_env_lines(lines_file: str, argv: Sequence[str]) -> list[str]:
    """argv run with the variables of lines_file (KEY=value lines, taken literally), which goes."""
    return ["sh", "-c", _WITH_ENV_LINES, "sh", lines_file, *argv]


def swarm_state_argv() -> list[str]:
    return docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.ServerVersion}}")


def services_argv(stack: str) -> list[str]:
    return docker("service", "ls", "--filter", f"label=com.docker.stack.namespace={stack}",
                  "--format", "{{.Name}}\t{{.Replicas}}\t{{.Image}}")


def service_inspect_argv(*names: str) -> list[str]:
    return docker("service", "inspect", "--format",
                  "{{.Spec.Name}}\t{{.Spec.TaskTemplate.ContainerSpec.Image}}\t{{json .UpdateStatus}}"
                  "\t{{json .Spec.TaskTemplate}}", *names)


def compose_networks_argv(project: str) -> list[str]:
    """Networks a Compose project of the same name still holds."""
    return docker("network", "ls", "--filter", f"label=com.docker.compose.project={project}",
                  "--format", "{{.Name}}")


def service_logs_argv(service: str, tail: int = 20) -> list[str]:
    return docker("service", "logs", "--no-task-ids", "--tail", str(tail), service)


def service_ps_argv(service: str) -> list[str]:
    return docker("service", "ps", "--no-trunc", "--format",
                  "{{.Name}}\t{{.Image}}\t{{.DesiredState}}\t{{.CurrentState}}\t{{.Error}}", service)


def tag_argv(source: str, target: str) -> list[str]:
    return docker("image", "tag", source, target)


def push_argv(ref: str) -> list[str]:
    return docker("image", "push", ref)
