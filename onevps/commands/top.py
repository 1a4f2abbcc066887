"""The `docker` commands `inv top` / `fab top` read, as argv lists. Nothing runs here.

Every format is one both supported CLIs (20.10 and 28.x) print alike: `{{json .}}`
and `{{json .Field}}` templates, one JSON object a line.
"""

from __future__ import annotations

from typing import Sequence

from .docker import docker

# A container's fields top needs, one JSON object a line. Config.Env (secrets) is left out.
CONTAINER_FIELDS = ('{"Id":{{json .Id}},"Name":{{json .Name}},"State":{{json .State.Status}},"Pid":{{json .State.Pid}},'
                    '"RestartCount":{{json .RestartCount}},"Image":{{json .Image}},'
                    '"Labels":{{json .Config.Labels}},"Memory":{{json .HostConfig.Memory}},'
                    '"NanoCpus":{{json .HostConfig.NanoCpus}}}')
IMAGE_FIELDS = '{"Id":{{json .Id}},"Created":{{json .Created}}}'


def containers(ids: Sequence[str]) -> list[str]:
    """State, restarts, image, labels and limits of the containers, one JSON object a line."""
    return docker("container", "inspect", "--format", CONTAINER_FIELDS, *ids)


def stats(ids: Sequence[str]) -> list[str]:
    """One reading of memory and CPU for the (running) containers, one JSON object a line."""
    return docker("stats", "--no-stream", "--format", "{{json .}}", *ids)


def images_created(ids: Sequence[str]) -> list[str]:
    """When each image was built, one JSON object a line."""
    return docker("image", "inspect", "--format", IMAGE_FIELDS, *ids)


def logs_window(container: str, seconds: int) -> list[str]:
    """The container's log lines of the last `seconds` (by the clock where docker runs)."""
    return docker("logs", "--since", f"{int(seconds)}s", container)


# For each PID: "PID v1|v2 USAGE INACTIVE_FILE" from its memory cgroup (v1: the memory
# hierarchy; v2: the unified one), read where Docker runs; nothing for a PID it cannot read.
CGROUP_MEMORY = (
    'for pid; do '
    'p=$(sed -n "s/^[0-9]*:memory:\\(.*\\)$/\\1/p" /proc/$pid/cgroup 2>/dev/null); d=/sys/fs/cgroup/memory$p; '
    'if [ -n "$p" ] && [ -r $d/memory.usage_in_bytes ]; then '
    'echo "$pid v1 $(cat $d/memory.usage_in_bytes) $(sed -n "s/^total_inactive_file //p" $d/memory.stat)"; '
    'else p=$(sed -n "s/^0::\\(.*\\)$/\\1/p" /proc/$pid/cgroup 2>/dev/null); d=/sys/fs/cgroup$p; '
    '[ -n "$p" ] && [ -r $d/memory.current ] && '
    'echo "$pid v2 $(cat $d/memory.current) $(sed -n "s/^inactive_file //p" $d/memory.stat)"; fi; '
    'done; exit 0')


def cgroup_memory(pids: Sequence[int]) -> list[str]:
    """The memory the processes' cgroups hold (what `docker stats` shows, for an engine
    that cannot read them itself), one line a PID."""
    return ["sh", "-c", CGROUP_MEMORY, "sh", *[str(p) for p in pids]]
