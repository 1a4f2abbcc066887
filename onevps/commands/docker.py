"""`docker` commands (the engine: containers, images, volumes) as argv lists. Nothing runs here."""

from __future__ import annotations

import shlex
from typing import Sequence

# A container's state and health in one line: "running healthy", "exited ", ...
STATE_HEALTH = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"


def docker(*args: str | None) -> list[str]:
    """`docker ARGS...`, dropping None (optional flags)."""
    return ["docker", *[a for a in args if a is not None]]


def docker_info() -> list[str]:
    return docker("info", "--format", "{{.ServerVersion}}")


def root_dir() -> list[str]:
    """Docker's data folder."""
    return docker("info", "--format", "{{.DockerRootDir}}")


def inspect(fmt: str, *refs: str, kind: str | None = None) -> list[str]:
    """`docker [KIND] inspect --format FMT REFS` (kind: container, image, volume; any without)."""
    return docker(kind, "inspect", "--format", fmt, *refs)


def image_inspect(ref: str, fmt: str = "{{json .}}") -> list[str]:
    return docker("image", "inspect", "--format", fmt, ref)


def image_labels(ref: str) -> list[str]:
    return image_inspect(ref, "{{json .Config.Labels}}")


def images_json(refs: Sequence[str]) -> list[str]:
    """Every field of the images, as one JSON list."""
    return docker("image", "inspect", *refs)


def project_containers(project: str) -> list[str]:
    """The IDs of every container of the compose project, running or not."""
    return docker("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={project}")


def running_services(project: str) -> list[str]:
    """The compose services of the project that have a running container, one a line."""
    return docker("ps", "--filter", f"label=com.docker.compose.project={project}", "--filter", "status=running",
                  "--format", '{{.Label "com.docker.compose.service"}}')


def all_containers() -> list[str]:
    """The full IDs of every container on the engine, running or not."""
    return docker("ps", "--all", "--quiet", "--no-trunc")


def memory_use(ids: Sequence[str]) -> list[str]:
    return docker("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *ids)


def tag(image: str, ref: str) -> list[str]:
    return docker("tag", image, ref)


def logs(container: str, tail: int = 30) -> list[str]:
    return docker("logs", "--tail", str(tail), container)


def logs_since(container: str, since: str) -> list[str]:
    """The container's log lines from `since` on (RFC 3339 or a duration such as 2.5s, both by the
    server's clock), each after its timestamp (RFC 3339, nanoseconds, fixed width)."""
    return docker("logs", "--timestamps", "--since", since, container)


def start(container: str) -> list[str]:
    return docker("start", container)


def stop(container: str, timeout: int = 30) -> list[str]:
    return docker("stop", "--time", str(timeout), container)


def exec_(container: str, *argv: str) -> list[str]:
    """A command inside a running container (no TTY, no standard input)."""
    return docker("exec", container, *argv)


def exec_stdin(container: str, argv: Sequence[str]) -> list[str]:
    """A command inside a running container that reads the caller's standard input (-i, no TTY)."""
    return docker("exec", "-i", container, *argv)


def service_containers(service: str) -> list[str]:
    """The IDs of a swarm service's running task containers on this node."""
    return docker("ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={service}",
                  "--filter", "status=running")


def rm(container: str, force: bool = False) -> list[str]:
    return docker("rm", "--force" if force else None, container)


def volume_create(name: str) -> list[str]:
    return docker("volume", "create", name)


def namespace_images(namespace: str) -> list[str]:
    """REPOSITORY:TAG of every image under the namespace."""
    return docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={namespace}/*")


def image_rm(refs: Sequence[str]) -> list[str]:
    return docker("image", "rm", *refs)


def image_prune() -> list[str]:
    """Remove dangling images."""
    return docker("image", "prune", "--force")


def builder_prune(keep_mb: int) -> list[str]:
    """Trim the build cache to keep_mb megabytes."""
    return docker("builder", "prune", "--force", "--keep-storage", f"{keep_mb}mb")


def system_df() -> list[str]:
    """Docker's disk accounting per image, as one JSON object (same with the 20.10 and 28.x CLIs)."""
    return docker("system", "df", "--verbose", "--format", "{{json .}}")


def list_files(ref: str, roots: Sequence[str]) -> list[str]:
    """`SIZE PATH` of every file under roots in the image (one file system each)."""
    return docker("run", "--rm", "--network", "none", "--entrypoint", "find", ref,
                  *roots, "-xdev", "-type", "f", "-printf", "%s %p\\n")


def volume_helper(volume: str | None, folder: str, image: str, argv: Sequence[str], writable: bool = False) -> list[str]:
    """A throw-away container (no network) running argv with folder at /backup and the
    volume (if any) at /data, read-only unless writable."""
    mounts: list[str] = []
    if volume is not None:
        mounts += ["--volume", f"{volume}:/data{'' if writable else ':ro'}"]
    return docker("run", "--rm", "--network", "none", *mounts, "--volume", f"{folder}:/backup", image, *argv)


def health_flags(check: dict) -> list[str]:
    """A compose healthcheck as `docker run` flags, polled every second (none without a test)."""
    test = check.get("test") or []
    if not test or test[0] not in ("CMD", "CMD-SHELL"):
        return []
    cmd = shlex.join(test[1:]) if test[0] == "CMD" else test[1]
    return ["--health-cmd", cmd, "--health-interval", "1s", "--health-timeout", str(check.get("timeout", "5s")),
            "--health-retries", str(check.get("retries", 3)),
            "--health-start-period", str(check.get("start_period", "60s"))]


def probe(check: dict) -> list[str]:
    """A compose healthcheck's test as an argv to run in the container (none without a test)."""
    test = check.get("test") or []
    if isinstance(test, str):
        return ["sh", "-c", test]
    if not test or test[0] not in ("CMD", "CMD-SHELL"):
        return []
    return list(test[1:]) if test[0] == "CMD" else ["sh", "-c", test[1]]


# $1 container, $2 seconds, $3 pause, then the probe: run it in the container (10 s at most
# a try) until it succeeds (exit 0), the container stops running (exit 3) or the seconds
# are over (exit 1; 0 seconds: one try).
WAIT_READY = ('c=$1; end=$(( $(date +%s) + $2 )); pause=$3; shift 3; while :; do '
              'timeout 10 docker exec "$c" "$@" >/dev/null 2>&1 && exit 0; '
              '[ "$(docker inspect --format "{{.State.Running}}" "$c" 2>/dev/null)" = true ] || exit 3; '
              '[ "$(date +%s)" -lt "$end" ] || exit 1; sleep "$pause"; done')


def wait_ready(container: str, probe_argv: Sequence[str], seconds: int, pause: float = 0.1) -> list[str]:
    """Poll the container's own health probe every `pause` seconds, on the server, in one
    command: readiness is seen within a fraction of a second, not at Docker's next health interval."""
    return ["sh", "-c", WAIT_READY, "sh", container, str(seconds), str(pause), *probe_argv]


def run_slot(name: str, app: str, network: str, ip: str, env_file: str, health: Sequence[str],
             image: str, pids_limit: int | None = None) -> list[str]:
    """A deploy slot: detached, on network at ip, labelled (no compose labels), logs rotated,
    with the service's process limit."""
    limits = ["--pids-limit", str(pids_limit)] if pids_limit else []
    return docker("run", "--detach", "--name", name, "--network", network, "--ip", ip,
                  "--label", "onevps.slot=next", "--label", f"onevps.app={app}",
                  "--log-driver", "json-file", "--log-opt", "max-size=10m", "--log-opt", "max-file=3",
                  *limits, "--env-file", env_file, *health, image)
