"""The zero-downtime switch of one app's container to a new image.

nginx's upstream for an app: primary = the app's static address, backup =
its deploy slot at host + 128, a new connection per request (no idle
connections an app could close under a request nginx is sending). The switch:

  1. start: the new image as a plain container in the deploy slot; healthy
     when its own health probe answers (polled every 0.1 s on the server);
     if not: removed again, the old version never stopped serving, exit
     non-zero with its last log lines;
  2. switch: stop the old container gracefully: uvicorn finishes in-flight
     requests and refuses new connections, which nginx sends to the backup
     (the new version) before anything was sent: safe for every method;
  3. home: recreate the compose service with the new image at the static
     address, ready when its health probe answers;
  4. drain: wait out nginx's fail_timeout so the primary is trusted again;
  5. cleanup: stop and remove the slot container.

A sleeping app (onevps.sleep_after, asleep now) gets step 1 only, then its
container is made anew from the new image and left stopped: its next request
wakes the new version (sleep_on); `--wake` starts it at once (wake_up).
"""

from __future__ import annotations

import json
import posixpath
import time

from . import nginx, remote, sleep
from .commands import compose_cmd, docker_cmd, shell
from .config import literal_env_text
from .errors import OnevpsError
from .registry import App
from .server import Ctx, container_name, inspect, sleeping, slot_name


def compose_literal(value):
    """A value of `compose config`'s output as compose up uses it: the output writes a literal
    $ as $$ (so that it reads back the same); environment and health check get one $."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, dict):
        return {k: compose_literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compose_literal(v) for v in value]
    return value


def _service_config(srv: Ctx, name: str) -> tuple[dict, str]:
    res = srv.run.run(compose_cmd.config_json(srv.vps, srv.rs), "read the server's compose config",
                      mutates=False)
    data = compose_literal(json.loads(res.stdout))
    networks = data.get("networks", {})
    net = networks.get("app-network", {}).get("name") or f"{srv.rs.project_name}_app-network"
    return data["services"][name], net


def slot_env_path(srv: Ctx, name: str) -> str:
    """The deploy slot's environment on the server (mode 600, removed once the slot started)."""
    return posixpath.join(srv.rs.vps_path, remote.STATE_DIR, f"{name}.slot.env")


def slot_env_text(app: App, service: dict) -> str:
    """The service's environment as a `docker run --env-file` file: one KEY=value a line,
    taken literally. Values travel in this file, never on a command line (they hold secrets).
    A key with no value (unset in compose) is written alone: docker takes it from its own
    environment, as compose does."""
    env = service.get("environment") or {}
    return literal_env_text({k: None if env[k] is None else str(env[k]) for k in sorted(env)}, app.name)


def slot_run_argv(srv: Ctx, app: App, image: str, service: dict, network: str, env_file: str) -> list[str]:
    """`docker run` for the deploy slot: the service's environment (from env_file), health
    check and process limit (pids_limit), on app-network at host + 128, with no compose labels
    (compose leaves it alone)."""
    pids = service.get("pids_limit")
    return docker_cmd.run_slot(slot_name(srv, app.name), app.name, network, srv.rs.address(app.slot_host), env_file,
                               docker_cmd.health_flags(service.get("healthcheck") or {}), image,
                               pids_limit=int(pids) if pids is not None and int(pids) > 0 else None)


def up_argv(srv: Ctx, app: App, wait: bool = True) -> list[str]:
    """The app's compose service (its `latest` image) at its address, alone (waited for by Docker)."""
    return compose_cmd.up(srv.vps, srv.rs, [app.name], wait=wait, timeout=srv.rs.deploy_timeout,
                          remove_orphans=False, no_deps=True)


def wait_healthy(srv: Ctx, name: str, timeout: int) -> str:
    """Poll the container's Docker health (at least once) until healthy; returns the final state."""
    if srv.run.dry_run:
        return "healthy"
    deadline = time.monotonic() + timeout
    while True:
        state = inspect(srv, docker_cmd.STATE_HEALTH, name) or "missing"
        if state == "running healthy":
            return "healthy"
        if state.startswith(("exited", "dead", "missing")) or state.endswith("unhealthy"):
            return state
        if time.monotonic() >= deadline:
            return f"{state} after {timeout}s"
        time.sleep(1)


def wait_ready(srv: Ctx, name: str, service: dict, timeout: int) -> str:
    """Wait until the container answers its own health probe; "healthy" or what it is instead."""
    if srv.run.dry_run:
        return "healthy"
    return _ready(srv, name, service, timeout)


def answers(srv: Ctx, name: str, service: dict) -> bool:
    """The container runs and answers its health probe now (one try; also in a dry run)."""
    return inspect(srv, "{{.State.Running}}", name) == "true" and _ready(srv, name, service, 0) == "healthy"


def _ready(srv: Ctx, name: str, service: dict, timeout: int) -> str:
    """The health probe of the compose file, polled on the server (one command); Docker's own
    health when the service has no probe."""
    probe = docker_cmd.probe(service.get("healthcheck") or {})
    if not probe:  # no health check in the compose file: Docker's view is all there is
        return wait_healthy(srv, name, timeout)
    res = srv.run.run(docker_cmd.wait_ready(name, probe, timeout), f"wait until {name} answers its health probe",
                      check=False, mutates=False)
    if res.ok:
        return "healthy"
    if res.exited == 3:
        return inspect(srv, "{{.State.Status}} (exit code {{.State.ExitCode}})", name) or "missing"
    return f"not answering its health probe after {timeout}s"


def start_slot(srv: Ctx, app: App, image: str, service: dict, network: str) -> None:
    """Step 1: the new image in the deploy slot, healthy; or removed again and an error."""
    slot = slot_name(srv, app.name)
    env_file = slot_env_path(srv, app.name)
    srv.say(f"==> starting the new {app.name} in its deploy slot {srv.rs.address(app.slot_host)}")
    remote.put_text(srv.conn, srv.run, env_file, slot_env_text(app, service), mode="600")
    try:
        srv.run.run(slot_run_argv(srv, app, image, service, network, env_file),
                    f"start the new {app.name} in the deploy slot")
    finally:  # docker read the file when it created the container
        srv.run.run(shell.rm_f(env_file), "remove the deploy slot's env file", check=False)
    srv.lap("start")
    state = wait_ready(srv, slot, service, srv.rs.deploy_timeout)
    if state != "healthy":
        logs = srv.run.run(docker_cmd.logs(slot, tail=30), "logs of the new version",
                           check=False, mutates=False)
        srv.run.run(docker_cmd.rm(slot, force=True), "remove the failed new version", check=False)
        srv.say(f"--- last log lines of the new {app.name} ---\n"
                f"{(logs.stdout + logs.stderr).strip() or '(no output)'}")
        raise OnevpsError(f"the new {app.name} did not become healthy ({state}); it was removed and "
                          f"the old version keeps serving", "read its log lines above, fix the app and deploy again")
    srv.lap("healthy")


def stop_primary(srv: Ctx, app: App) -> None:
    """Step 2: the old container stops gracefully; nginx sends new connections to the slot."""
    srv.say(f"==> new {app.name} is healthy; stopping the old container (nginx serves from the slot meanwhile)")
    srv.run.run(docker_cmd.stop(container_name(srv, app.name), timeout=30), f"stop the old {app.name}")
    srv.lap("switch")
    srv.timeline.mark_switched()


def start_primary(srv: Ctx, app: App, service: dict) -> None:
    """Step 3: the compose service (its `latest` image) at the app's address, answering its probe."""
    slot = slot_name(srv, app.name)
    hint = f"the new version keeps serving from the deploy slot {slot}; check `fab logs --app={app.name}`"
    srv.run.run(up_argv(srv, app, wait=False), f"start the new {app.name} at its address", hide=True, hint=hint)
    state = wait_ready(srv, container_name(srv, app.name), service, srv.rs.deploy_timeout)
    if state != "healthy":  # stopped, so nginx sends everything to the slot
        srv.run.run(docker_cmd.stop(container_name(srv, app.name), timeout=10), f"stop the failed {app.name}",
                    check=False)
        raise OnevpsError(f"the new {app.name} did not become healthy at its address ({state})", hint)
    srv.lap("home")


def retire_slot(srv: Ctx, app: App) -> None:
    """Steps 4 and 5: nginx trusts the primary again after fail_timeout; then the slot stops and goes."""
    slot = slot_name(srv, app.name)
    if not srv.run.dry_run:
        time.sleep(nginx.SLOT_DRAIN)  # until nginx trusts the primary again (see nginx.py)
    srv.lap("drain")
    srv.run.run(docker_cmd.stop(slot, timeout=30), "stop the deploy slot")
    srv.run.run(docker_cmd.rm(slot), "remove the deploy slot")
    srv.lap("cleanup")


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
    service = _service_config(srv, app.name)[0]
    if app.sleep_after and app.name in sleeping(srv):
        srv.say(f"==> removing the leftover deploy slot {slot} ({app.name} sleeps; its requests go to the waker)")
        srv.run.run(docker_cmd.rm(slot, force=True), "remove the leftover deploy slot")
        return
    if not answers(srv, container_name(srv, app.name), service):
        srv.say(f"==> the deploy slot {slot} serves {app.name} (an earlier switch stopped before its step 3): "
                f"starting {app.name} at its address first")
        start_primary(srv, app, service)
    srv.say(f"==> retiring the leftover deploy slot {slot}")
    retire_slot(srv, app)


def switch(srv: Ctx, app: App, image: str, wake: bool = False) -> str:
    """Replace the app's container with `image` without a failed request (steps 1-5 above);
    "ok", or "ok (asleep)" when a sleeping app got the new image and sleeps on (unless wake).
    A slot an earlier switch left is cleared first (deploy._switch_to)."""
    if not inspect(srv, "{{.Id}}", container_name(srv, app.name)):
        srv.say(f"==> {app.name} has no container yet: starting it")
        srv.run.run(up_argv(srv, app), f"start {app.name}", hide=False)
        return "ok"
    service, network = _service_config(srv, app.name)
    start_slot(srv, app, image, service, network)  # a sleeping app too: it must wake into a version that works
    if app.sleep_after and app.name in sleeping(srv):
        if sleep_on(srv, app) and not wake:
            return "ok (asleep)"
        wake_up(srv, app, service)  # --wake, or a request woke the old version during the deploy
        return "ok"
    stop_primary(srv, app)
    start_primary(srv, app, service)
    retire_slot(srv, app)
    return "ok"


def sleep_on(srv: Ctx, app: App) -> bool:
    """A sleeping app: the new version answered its probe in the slot (no request reached it:
    nginx sends the app's requests to the waker); the slot goes and the app's container is
    made anew from the new image, not started. Its next request wakes the new version.
    False when a request woke the old container meanwhile (its flag is gone): start it then."""
    slot = slot_name(srv, app.name)
    srv.run.run(docker_cmd.rm(slot, force=True), "remove the deploy slot (the app sleeps)")
    srv.run.run(compose_cmd.create(srv.vps, srv.rs, [app.name]), f"give the sleeping {app.name} its new image")
    srv.lap("cleanup")
    if app.name not in sleeping(srv):
        srv.say(f"==> {app.name} woke during the deploy: starting the new version at its address")
        return False
    srv.say(f"==> {app.name} is asleep: it keeps sleeping and wakes on its next request with the new version "
            f"(`fab deploy --app={app.name} --wake` starts it now)")
    return True


def wake_up(srv: Ctx, app: App, service: dict) -> None:
    """--wake: start the sleeping app's container now; once it answers its probe, drop its flag
    (nginx routes straight to it). Meanwhile the waker holds its requests (a start of a
    container that is starting is no error to Docker)."""
    name = container_name(srv, app.name)
    srv.run.run(docker_cmd.start(name), f"wake {app.name}")
    state = wait_ready(srv, name, service, srv.rs.deploy_timeout)
    if state != "healthy":
        raise OnevpsError(f"the new {app.name} did not become healthy when woken ({state})",
                          f"read `fab logs --app={app.name}`; it answered in the deploy slot, so look for "
                          "what differs at its own address")
    srv.run.run(docker_cmd.exec_(container_name(srv, sleep.WAKER), *sleep.drop_flag_argv(app.name)),
                f"{app.name} is awake: drop its sleep flag", check=False)
    srv.lap("home")
