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
import time

from . import nginx, remote
from .commands import compose_cmd, docker_cmd, shell
from .errors import OnevpsError
from .registry import App
from .server import Ctx, container_name, inspect, slot_name


def _service_config(srv: Ctx, name: str) -> tuple[dict, str]:
    res = srv.run.run(compose_cmd.config_json(srv.vps, srv.rs), "read the server's compose config",
                      mutates=False)
    data = json.loads(res.stdout)
    networks = data.get("networks", {})
    net = networks.get("app-network", {}).get("name") or f"{srv.rs.project_name}_app-network"
    return data["services"][name], net


def slot_env_path(srv: Ctx, name: str) -> str:
    """The deploy slot's environment on the server (mode 600, removed once the slot started)."""
    return posixpath.join(srv.rs.vps_path, remote.STATE_DIR, f"{name}.slot.env")


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


def slot_run_argv(srv: Ctx, app: App, image: str, service: dict, network: str, env_file: str) -> list[str]:
    """`docker run` for the deploy slot: the service's environment (from env_file) and
    health check, on app-network at host + 128, with no compose labels (compose leaves it alone)."""
    return docker_cmd.run_slot(slot_name(srv, app.name), app.name, network, srv.rs.address(app.slot_host), env_file,
                               docker_cmd.health_flags(service.get("healthcheck") or {}), image)


def up_argv(srv: Ctx, app: App) -> list[str]:
    """The app's compose service (its `latest` image) at its address, alone, waited for."""
    return compose_cmd.up(srv.vps, srv.rs, [app.name], timeout=srv.rs.deploy_timeout, remove_orphans=False,
                          no_deps=True)


def wait_healthy(srv: Ctx, name: str, timeout: int) -> str:
    """Poll the container until healthy; returns the final state."""
    if srv.run.dry_run:
        return "healthy"
    deadline = time.monotonic() + timeout
    state = "missing"
    while time.monotonic() < deadline:
        state = inspect(srv, docker_cmd.STATE_HEALTH, name) or "missing"
        if state == "running healthy":
            return "healthy"
        if state.startswith(("exited", "dead", "missing")) or state.endswith("unhealthy"):
            return state
        time.sleep(1)
    return f"{state} after {timeout}s"


def start_slot(srv: Ctx, app: App, image: str) -> None:
    """Step 1: the new image in the deploy slot, healthy; or removed again and an error."""
    slot = slot_name(srv, app.name)
    service, network = _service_config(srv, app.name)
    env_file = slot_env_path(srv, app.name)
    srv.say(f"==> starting the new {app.name} in its deploy slot {srv.rs.address(app.slot_host)}")
    remote.put_text(srv.conn, srv.run, env_file, slot_env_text(app, service), mode="600")
    try:
        srv.run.run(slot_run_argv(srv, app, image, service, network, env_file),
                    f"start the new {app.name} in the deploy slot")
    finally:  # docker read the file when it created the container
        srv.run.run(shell.rm_f(env_file), "remove the deploy slot's env file", check=False)
    state = wait_healthy(srv, slot, srv.rs.deploy_timeout)
    if state != "healthy":
        logs = srv.run.run(docker_cmd.logs(slot, tail=30), "logs of the new version",
                           check=False, mutates=False)
        srv.run.run(docker_cmd.rm(slot, force=True), "remove the failed new version", check=False)
        srv.say(f"--- last log lines of the new {app.name} ---\n"
                f"{(logs.stdout + logs.stderr).strip() or '(no output)'}")
        raise OnevpsError(f"the new {app.name} did not become healthy ({state}); it was removed and "
                          f"the old version keeps serving", "read its log lines above, fix the app and deploy again")


def stop_primary(srv: Ctx, app: App) -> None:
    """Step 2: the old container stops gracefully; nginx retries on the slot meanwhile."""
    srv.say(f"==> new {app.name} is healthy; replacing the old container (nginx serves from the slot meanwhile)")
    srv.run.run(compose_cmd.stop(srv.vps, srv.rs, [app.name], timeout=30), f"stop the old {app.name}")


def start_primary(srv: Ctx, app: App) -> None:
    """Step 3: the compose service (its `latest` image) at the app's address, healthy."""
    slot = slot_name(srv, app.name)
    srv.run.run(up_argv(srv, app), f"start the new {app.name} at its address", hide=True,
                hint=f"the new version keeps serving from the deploy slot {slot}; check `fab logs --app={app.name}`")


def retire_slot(srv: Ctx, app: App) -> None:
    """Step 4: nginx trusts the primary again after fail_timeout; then the slot stops and goes."""
    slot = slot_name(srv, app.name)
    if not srv.run.dry_run:
        time.sleep(nginx.FAIL_TIMEOUT + 1)
    srv.run.run(docker_cmd.stop(slot, timeout=30), "stop the deploy slot")
    srv.run.run(docker_cmd.rm(slot), "remove the deploy slot")


def clear_leftover_slot(srv: Ctx, app: App) -> None:
    """A deploy slot left by an earlier switch. Stopped: removed. Running while the app's own
    container is not healthy (step 3 failed): it is what serves the app, so the app's
    container starts at its address first and only then the slot goes; should that start
    fail, the slot keeps serving and nothing is removed."""
    slot = slot_name(srv, app.name)
    running = inspect(srv, "{{.State.Running}}", slot)
    if running is None:
        return
    if running != "true":
        srv.run.run(docker_cmd.rm(slot, force=True), "remove a stopped leftover deploy slot")
        return
    fmt = docker_cmd.STATE_HEALTH
    if inspect(srv, fmt, container_name(srv, app.name)) != "running healthy":
        srv.say(f"==> the deploy slot {slot} serves {app.name} (an earlier switch stopped before its step 3): "
                f"starting {app.name} at its address first")
        start_primary(srv, app)
    srv.say(f"==> retiring the leftover deploy slot {slot}")
    retire_slot(srv, app)


def switch(srv: Ctx, app: App, image: str) -> None:
    """Replace the app's container with `image` without a failed request (steps 1-4 above)."""
    clear_leftover_slot(srv, app)
    if not inspect(srv, "{{.Id}}", container_name(srv, app.name)):
        srv.say(f"==> {app.name} has no container yet: starting it")
        srv.run.run(up_argv(srv, app), f"start {app.name}", hide=False)
        return
    start_slot(srv, app, image)
    stop_primary(srv, app)
    start_primary(srv, app)
    retire_slot(srv, app)
