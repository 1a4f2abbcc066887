"""The stack's services as Swarm reports them: state, replicas, waiting for an update, the status table."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ..commands.swarm import service_inspect_argv, services_argv
from ..config import Settings
from ..errors import OnevpsError
from ..runner import Runner


@dataclass
class ServiceState:
    name: str
    image: str
    update: dict | None
    template: str = ""  # the task template as JSON: when it changes, Swarm rolls the service


def _short(stack: str, name: str) -> str:
    return name[len(stack) + 1:] if name.startswith(stack + "_") else name


def service_states(runner: Runner, stack: str) -> dict[str, ServiceState]:
    res = runner.run(services_argv(stack), "list the stack's services", check=False, mutates=False)
    names = [line.split("\t")[0] for line in res.stdout.splitlines() if line.strip()] if res.ok else []
    if not names:
        return {}
    out = runner.run(service_inspect_argv(*names), "inspect the stack's services", mutates=False).stdout
    states = {}
    for line in out.splitlines():
        name, image, update, template = (line.split("\t") + ["", "", ""])[:4]
        short = _short(stack, name)
        states[short] = ServiceState(short, image.split("@")[0], json.loads(update) if update else None, template)
    return states


def replicas(runner: Runner, stack: str) -> dict[str, str]:
    res = runner.run(services_argv(stack), "list the stack's services", check=False, mutates=False)
    out = {}
    for line in res.stdout.splitlines() if res.ok else []:
        name, reps = (line.split("\t") + [""])[:2]
        out[_short(stack, name)] = reps
    return out


def _progress(svc: str, st: ServiceState | None, old: ServiceState | None, reps: str) -> tuple[str | None, str]:
    """(outcome, "") once the service's update is over, else (None, what it is busy with)."""
    update = (st.update if st else None) or {}
    changed = bool(update) and (old is None or old.update != update)
    state = update.get("State", "") if changed else ""
    # The task template changed, so Swarm will roll the service, but its
    # update may not have begun yet: wait for it to show.
    pending = bool(st and old and st.template != old.template and not changed)
    running, _, desired = reps.partition("/")
    desired = desired.split()[0] if desired else "0"
    if pending:
        return None, f"{svc} update pending"
    if state in ("updating", "rollback_started"):
        return None, f"{svc} {state}"
    if state in ("paused", "rollback_paused"):
        return f"{state}: {update.get('Message', '')}", ""
    if state == "rollback_completed":
        return "rolled back", ""
    if running != desired or desired == "0":
        return None, f"{svc} {running}/{desired}"
    return ("completed" if state == "completed" else ("created" if old is None else "unchanged")), ""


def wait(runner: Runner, stack: str, before: Mapping[str, ServiceState], services: Sequence[str],
         timeout: int, poll: float = 1.0, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
    """Wait until every service's update is over and its replicas run.

    Returns {service: outcome}: "completed", "rolled back", "created" or
    "unchanged". An update that started in this deploy (its UpdateStatus
    changed) is followed to its end; Swarm itself rolls back a failure.
    """
    if runner.dry_run:
        return {s: "dry-run" for s in services}
    deadline = clock() + timeout
    last_line = ""
    while True:
        states = service_states(runner, stack)
        reps = replicas(runner, stack)
        outcome: dict[str, str] = {}
        busy = []
        for svc in services:
            done, doing = _progress(svc, states.get(svc), before.get(svc), reps.get(svc, "0/0"))
            if done is None:
                busy.append(doing)
            else:
                outcome[svc] = done
        line = ", ".join(busy)
        if not busy:
            return outcome
        if line != last_line:
            runner.say(f"    waiting: {line}")
            last_line = line
        if clock() > deadline:
            raise OnevpsError(f"the stack did not settle within {timeout}s: {line}",
                              f"`docker service ps {stack}_<service>` shows why")
        sleep(poll)


def status_rows(runner: Runner, settings: Settings) -> list[tuple[str, ...]]:
    """SERVICE, REPLICAS, IMAGE, LAST UPDATE of every service of the stack."""
    stack = settings.project_name
    states = service_states(runner, stack)
    reps = replicas(runner, stack)
    rows = [("SERVICE", "REPLICAS", "IMAGE", "LAST UPDATE")]
    for name in sorted(states):
        st = states[name]
        update = st.update or {}
        last = update.get("State", "-")
        if update.get("Message") and last not in ("completed",):
            last += f" ({update['Message']})"
        rows.append((name, reps.get(name, "?"), st.image, last))
    return rows
