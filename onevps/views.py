"""Read-only views of the server: `fab status`, `fab history`, `fab disk`."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from . import disk as disk_mod, state
from .commands import docker_cmd
from .server import Ctx, container_name, require_docker_on_server, sleeping
from .stack import columns

ROW = "{{.Name}}\t{{.State.Status}}\t{{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}}\t{{.Image}}"


def status(srv: Ctx) -> str:
    """Every container of the project: state, health, image age, memory."""
    ids = srv.run.run(docker_cmd.project_containers(srv.rs.project_name), "list containers",
                      mutates=False).stdout.split()
    if not ids:
        return f"no containers of project {srv.rs.project_name} on the server (run `fab deploy --all`)"
    rows = [line.split("\t") for line in srv.run.run(docker_cmd.inspect(ROW, *ids), "inspect containers",
                                                      mutates=False).stdout.splitlines()]
    created = _image_created(srv, sorted({r[3] for r in rows}))
    mem = {}
    stats = srv.run.run(docker_cmd.memory_use(ids), "read memory use", check=False, mutates=False).stdout
    for line in stats.splitlines():
        name, _, usage = line.partition("\t")
        mem[name] = usage.split("/")[0].strip()
    asleep = {container_name(srv, app) for app in sleeping(srv)}
    table = [("CONTAINER", "STATE", "HEALTH", "IMAGE AGE", "MEMORY")]
    for name, state_, health, image in sorted(rows):
        name = name.lstrip("/")
        state_ = "sleeping" if name in asleep else state_
        table.append((name, state_, health, _age(created.get(image, "")), mem.get(name, "-")))
    lock = state.lock_line(srv.run, srv.rs)
    return columns(table) + (f"\n{lock}" if lock else "")


def _image_created(srv: Ctx, images: list[str]) -> dict[str, str]:
    """Image ID -> when it was created."""
    out = srv.run.run(docker_cmd.inspect("{{.Id}} {{.Created}}", *images, kind="image"), "inspect images",
                      check=False, mutates=False).stdout
    created = {}
    for line in out.splitlines():
        iid, _, when = line.partition(" ")
        created[iid] = when
    return created


def _age(created: str) -> str:
    if not created:
        return "-"
    try:
        stamp = datetime.fromisoformat(created.replace("Z", "+00:00").split(".")[0] + "+00:00")
    except ValueError:
        return "-"
    seconds = int((datetime.now(timezone.utc) - stamp).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def history(srv: Ctx, app: str | None = None) -> str:
    """The deploy journal as a table (one app's entries with app)."""
    if app:
        srv.reg.get(app)
    entries = [e for e in state.read_journal(srv.run, srv.rs) if not app or e.get("app") == app]
    if not entries:
        return "no deploys recorded yet" + (f" for {app}" if app else "")
    table = [("TIME", "USER", "COMMIT", "APP", "ACTION", "IMAGE", "SECONDS", "RESULT")]
    for e in entries:
        table.append((e.get("time", "?"), e.get("user", "?"), e.get("commit", "?"), e.get("app", "?"),
                      e.get("action", "?"), (e.get("image") or "-").replace("sha256:", "")[:12],
                      str(e.get("seconds", "-")), e.get("result", "?")))
    return columns(table)


def disk(srv: Ctx, budget: int, as_json: bool) -> None:
    """`fab disk`: `inv disk` for the server's images (budget in bytes), plus the free space."""
    require_docker_on_server(srv)
    data = disk_mod.report(srv.run, srv.project, srv.rs, srv.reg, budget, tags=srv.tags)
    root, free = disk_mod.docker_free_mb(srv.run)
    data["docker_root"], data["free_mb"] = root, free
    if as_json:
        srv.say(json.dumps(data, indent=2))
    else:
        srv.say(disk_mod.render(data))
        srv.say(f"free on the server's Docker disk ({root}): {free:,} MB")
    disk_mod.check_budget(data)
