"""Sleeping apps (issue 15): what onevps on this side knows about them.

An app opts in with the compose label `onevps.sleep_after` ("15m", "90s",
"2h", "45" = seconds). The waker service (dockerfiles/waker/onevps_waker.py)
stops an app idle that long and starts it again on its next request; while
an app sleeps, the flag file FLAG_DIR/<app> exists in the `sleep-state`
volume and nginx sends the app's requests to the waker. An app is
*sleeping* when its flag exists and its container is not running.
"""

from __future__ import annotations

import re

from .commands import docker_cmd

SLEEP_LABEL = "onevps.sleep_after"
# Where the waker and nginx see the sleep-state volume, and the flags in it.
# Under no tmpfs of either: nginx's /var/run tmpfs is /run in its image (a
# link), and Docker mounts a tmpfs and a volume of the same depth in either
# order, so a volume at /run/onevps was sometimes hidden and nginx failed to
# start (issue 24; tests/unit/test_compose_layout.py checks every service).
STATE_DIR = "/var/lib/onevps"
FLAG_DIR = f"{STATE_DIR}/asleep"
WAKER = "waker"
DOCKER_PROXY = "docker-proxy"

_DURATION = re.compile(r"\A\s*(\d{1,7})\s*([smhd]?)\s*\Z")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Shorter than this and an app would sleep between two requests of one page load.
MIN_SECONDS = 1
MAX_SECONDS = 30 * 86400


def parse_duration(text: object) -> int:
    """"15m" -> 900. ValueError (saying what is accepted) for anything else."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration; write it as 90s, 15m, 2h or 1d (or plain seconds)")
    seconds = int(match.group(1)) * _UNIT[match.group(2)]
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ValueError(f"{text!r} is out of range: from 1 s to 30 days")
    return seconds


def duration_text(seconds: int) -> str:
    """900 -> "15m": the shortest exact form."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def sleeping_from_listing(listing: str, running: set[str]) -> set[str]:
    """Apps asleep: flag files listed (one name a line) whose container is not running."""
    return {name.strip() for name in listing.splitlines() if name.strip() and name.strip() not in running}


def list_flags_argv() -> list[str]:
    """Inside the waker's container: the names of the flag files (one a line)."""
    return ["ls", "-1", FLAG_DIR]


def drop_flag_argv(app: str) -> list[str]:
    """Inside the waker's container: the app is awake again (nginx routes straight to it)."""
    return ["rm", "-f", f"{FLAG_DIR}/{app}"]


def asleep(runner, project_name: str) -> set[str]:
    """Apps asleep now (runner: a local Runner or the server's): the waker holds their flag
    and their container does not run. Empty when the waker does not run (then nginx sends it
    no request either)."""
    def container(name: str) -> str:
        return f"{project_name}-{name}-1"

    res = runner.run(docker_cmd.exec_(container(WAKER), *list_flags_argv()), "list the sleeping apps",
                     check=False, mutates=False)
    flagged = [n.strip() for n in res.stdout.splitlines() if n.strip()] if res.ok else []
    if not flagged:
        return set()
    names = {container(n): n for n in flagged}
    out = runner.run(docker_cmd.inspect("{{.Name}} {{.State.Running}}", *names), "are the flagged apps running",
                     check=False, mutates=False).stdout  # a missing container: no line, not running
    running = {names.get(line.split()[0].lstrip("/"), "") for line in out.splitlines() if line.endswith(" true")}
    return sleeping_from_listing("\n".join(flagged), running)
