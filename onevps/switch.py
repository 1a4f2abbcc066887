"""The zero-downtime switch of one app's container to a new image.

nginx's upstream for an app: primary = the app's static address, backup =
its deploy slot at host + 128. The switch:

  1. start the new image as a plain container in the deploy slot and wait
     until its health check passes (or give up: remove it, the old version
     never stopped serving, exit non-zero with its last log lines);
  2. stop the old container gracefully: uvicorn finishes in-flight requests,
     refused connections make nginx retry on the backup (the new version);
  3. recreate the compose service with the new image at the static address
     and wait until it is healthy;
  4. wait out nginx's fail_timeout so the primary is trusted again, then stop
     and remove the slot container.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import time

from . import commands, nginx, remote
from .errors import OnevpsError
from .registry import App
from .server import Ctx, container_name, inspect, slot_name


def _service_config(c: Ctx, name: str) -> tuple[dict, str]:
    res = c.run.run(commands.compose(c.rs, "config", "--format", "json"), "read the server's compose config",
                    mutates=False)
    data = json.loads(res.stdout)
    networks = data.get("networks", {})
    net = networks.get("app-network", {}).get("name") or f"{c.rs.project_name}_app-network"
    return data["services"][name], net


def slot_env_path(c: Ctx, name: str) -> str:
    """The deploy slot's environment on the server (mode 600, removed once the slot started)."""
    return posixpath.join(c.rs.vps_path, remote.STATE_DIR, f"{name}.slot.env")


def slot_env_text(app: App, service: dict) -> str:
    """The service's environment as a `docker run --env-file` file: one KEY=value a line,
    taken literally. Values travel in this file, never on a command line (they hold secrets)."""
    lines = []
    for key, value in sorted((service.get("environment") or {}).items()):
        if value is None:
            lines.append(key)  # unset in compose: docker takes it from its own environment, as compose does
            continue
        if "\n" in str(value) or "\r" in str(value):
            raise OnevpsError(f"the environment variable {key} of {app.name} holds a line break; "
                              "the deploy slot cannot take it", f"keep {key} on one line in the compose file or .env")
        lines.append(f"{key}={value}")
    return "".join(line + "\n" for line in lines)


def slot_run_argv(c: Ctx, app: App, image: str, service: dict, network: str, env_file: str) -> list[str]:
    """`docker run` for the deploy slot: the service's environment (from env_file) and
    health check, on app-network at host + 128, with no compose labels (compose leaves it alone)."""
    argv = ["run", "--detach", "--name", slot_name(c, app.name),
            "--network", network, "--ip", c.rs.address(app.slot_host),
            "--label", "onevps.slot=next", "--label", f"onevps.app={app.name}",
            "--log-driver", "json-file", "--log-opt", "max-size=10m", "--log-opt", "max-file=3",
            "--env-file", env_file]
    check = service.get("healthcheck") or {}
    test = check.get("test") or []
    if test and test[0] in ("CMD", "CMD-SHELL"):
        cmd = shlex.join(test[1:]) if test[0] == "CMD" else test[1]
        argv += ["--health-cmd", cmd, "--health-interval", "1s", "--health-timeout", str(check.get("timeout", "5s")),
                 "--health-retries", str(check.get("retries", 3)),
                 "--health-start-period", str(check.get("start_period", "60s"))]
    return commands.docker(*argv, image)


def wait_healthy(c: Ctx, name: str, timeout: int) -> str:
    """Poll the container until healthy; returns the final state."""
    if c.run.dry_run:
        return "healthy"
    deadline = time.monotonic() + timeout
    state = "missing"
    while time.monotonic() < deadline:
        state = inspect(c, "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", name) or "missing"
        if state == "running healthy":
            return "healthy"
        if state.startswith(("exited", "dead", "missing")) or state.endswith("unhealthy"):
            return state
        time.sleep(1)
    return f"{state} after {timeout}s"


def start_slot(c: Ctx, app: App, image: str) -> None:
    """Step 1: the new image in the deploy slot, healthy; or removed again and an error."""
    slot = slot_name(c, app.name)
    service, network = _service_config(c, app.name)
    env_file = slot_env_path(c, app.name)
    c.say(f"==> starting the new {app.name} in its deploy slot {c.rs.address(app.slot_host)}")
    remote.put_text(c.conn, c.run, env_file, slot_env_text(app, service), mode="600")
    try:
        c.run.run(slot_run_argv(c, app, image, service, network, env_file),
                  f"start the new {app.name} in the deploy slot")
    finally:  # docker read the file when it created the container
        c.run.run(["rm", "-f", env_file], "remove the deploy slot's env file", check=False)
    state = wait_healthy(c, slot, c.rs.deploy_timeout)
    if state != "healthy":
        logs = c.run.run(commands.docker("logs", "--tail", "30", slot), "logs of the new version",
                         check=False, mutates=False)
        c.run.run(commands.docker("rm", "--force", slot), "remove the failed new version", check=False)
        c.say(f"--- last log lines of the new {app.name} ---\n"
              f"{(logs.stdout + logs.stderr).strip() or '(no output)'}")
        raise OnevpsError(f"the new {app.name} did not become healthy ({state}); it was removed and "
                          f"the old version keeps serving", "read its log lines above, fix the app and deploy again")


def stop_primary(c: Ctx, app: App) -> None:
    """Step 2: the old container stops gracefully; nginx retries on the slot meanwhile."""
    c.say(f"==> new {app.name} is healthy; replacing the old container (nginx serves from the slot meanwhile)")
    c.run.run(commands.compose(c.rs, "stop", "--timeout", "30", app.name), f"stop the old {app.name}")


def start_primary(c: Ctx, app: App) -> None:
    """Step 3: the compose service (its `latest` image) at the app's address, healthy."""
    slot = slot_name(c, app.name)
    c.run.run(commands.compose(c.rs, "up", "--detach", "--no-deps", "--no-build", "--wait",
                               "--wait-timeout", str(c.rs.deploy_timeout), app.name),
              f"start the new {app.name} at its address", hide=True,
              hint=f"the new version keeps serving from the deploy slot {slot}; check `fab logs --app={app.name}`")


def retire_slot(c: Ctx, app: App) -> None:
    """Step 4: nginx trusts the primary again after fail_timeout; then the slot stops and goes."""
    slot = slot_name(c, app.name)
    if not c.run.dry_run:
        time.sleep(nginx.FAIL_TIMEOUT + 1)
    c.run.run(commands.docker("stop", "--time", "30", slot), "stop the deploy slot")
    c.run.run(commands.docker("rm", slot), "remove the deploy slot")


def clear_leftover_slot(c: Ctx, app: App) -> None:
    """A deploy slot left by an earlier switch. Stopped: removed. Running while the app's own
    container is not healthy (step 3 failed): it is what serves the app, so the app's
    container starts at its address first and only then the slot goes; should that start
    fail, the slot keeps serving and nothing is removed."""
    slot = slot_name(c, app.name)
    running = inspect(c, "{{.State.Running}}", slot)
    if running is None:
        return
    if running != "true":
        c.run.run(commands.docker("rm", "--force", slot), "remove a stopped leftover deploy slot")
        return
    fmt = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
    if inspect(c, fmt, container_name(c, app.name)) != "running healthy":
        c.say(f"==> the deploy slot {slot} serves {app.name} (an earlier switch stopped before its step 3): "
              f"starting {app.name} at its address first")
        start_primary(c, app)
    c.say(f"==> retiring the leftover deploy slot {slot}")
    retire_slot(c, app)


def switch(c: Ctx, app: App, image: str) -> None:
    """Replace the app's container with `image` without a failed request (steps 1-4 above)."""
    clear_leftover_slot(c, app)
    if not inspect(c, "{{.Id}}", container_name(c, app.name)):
        c.say(f"==> {app.name} has no container yet: starting it")
        c.run.run(commands.compose(c.rs, "up", "--detach", "--no-deps", "--no-build", "--wait",
                                   "--wait-timeout", str(c.rs.deploy_timeout), app.name),
                  f"start {app.name}", hide=False)
        return
    start_slot(c, app, image)
    stop_primary(c, app)
    start_primary(c, app)
    retire_slot(c, app)
