"""`fab ship` as a sequence of named steps (see onevps.ship): what the server
has, what this machine has (built when missing), the refusals, the transfer,
the server's names, the check."""

from __future__ import annotations

import time
from typing import Callable, Sequence

from invoke.context import Context

from .. import composefile, disk, server, stack
from ..commands import host
from ..commands.transfer import local_inspect_argv, server_images_argv, server_inspect_argv, tag_argv, verify_argv
from ..errors import CommandFailed, OnevpsError
from ..runner import Runner
from ..server import Ctx
from . import transfer
from .planning import (LocalImage, Plan, ServerImages, ShipReport, Wanted, arch_refusal, load_room_refusal,
                       loaded_ids, missing_upstream_refusal, parse_keys, parse_local, parse_locals,
                       parse_server_images, plan, save_ref, select, server_arch)
from .transfer import Channel


def ship(c: Ctx, *, tiers: bool | Sequence[str] = False, upstream: bool = False, app: str | None = None,
         extra: Sequence[str] = (), local_runner: Runner | None = None,
         open_channel: Callable[[Ctx], Channel] | None = None,
         start_save: Callable[[list[str]], object] | None = None) -> ShipReport:
    """Ship the chosen images to the server (see onevps.ship)."""
    t0 = time.monotonic()
    wanted = _wanted(c, tiers, upstream, app, extra)
    server.require_docker_on_server(c)  # e.g. a user outside the docker group: told so in one line
    here = local_runner or stack.make_runner(Context(), c.project, c.local, dry_run=c.run.dry_run)
    # 1. the server: which images it has (one listing, one inspect), its architecture
    srv = _server_images(c)
    arch = server_arch(c.run.run(host.machine(), "read the server's architecture", mutates=False).stdout)
    # 2. this machine: the images (upstream ones must be here; tiers and apps are built)
    local, p = _local_side(here, c, wanted, srv)
    # 3. refuse before sending: architecture, disk
    _refuse(c, p, arch)
    if c.run.dry_run:
        return _dry_run(c, p, t0)
    # 4. send what is missing: one docker save | docker load
    report = ShipReport(skipped=list(p.skip))
    load_output = _send(c, p, report, open_channel or transfer.open_load, start_save or transfer.start_save)
    # 5. names: tag-only images, then the server names of what was sent
    _name(c, p, load_output)
    report.tagged = [n for _, n in p.tag]
    report.skipped += report.tagged
    _verify(c, wanted, local)
    report.seconds = time.monotonic() - t0
    c.say(f"==> {report.line()}")
    return report


def _wanted(c: Ctx, tiers: bool | Sequence[str], upstream: bool, app: str | None,
            extra: Sequence[str] = ()) -> list[Wanted]:
    if not (tiers or upstream or app or extra):
        raise OnevpsError("nothing to ship", "choose at least one of --tiers, --upstream, --app NAME")
    if app:
        c.reg.get(app)
    return select(c.project, c.local, c.rs, c.tags, composefile.load(c.project.compose_file),
                  tiers_=tiers, upstream=upstream, app=app, extra=extra)


def _server_images(c: Ctx, extra: Sequence[str] = ()) -> ServerImages:
    """The server's images and their keys: one `docker images`, then one `docker image inspect`
    over every image ID listed (plus `extra`, e.g. the IDs a load printed); none when empty."""
    res = c.run.run(server_images_argv(), "list the server's images", mutates=False,
                    hint="is Docker running on the server? `fab setup` installs it")
    ids, names = parse_server_images(res.stdout)
    refs = list(dict.fromkeys([*ids, *extra]))
    if not refs:
        return ServerImages(names, {})
    res = c.run.run(server_inspect_argv(refs), "inspect the server's images", check=False, mutates=False)
    keys = dict(parse_keys(res.stdout))
    if not res.ok and not keys:
        raise CommandFailed(f"cannot inspect the server's images: "
                            f"{transfer.last_line(res.stderr) or f'exit {res.exited}'}",
                            "`docker images` on the server shows what is there; run `fab ship` again")
    return ServerImages(names, keys)


def _local_images(runner: Runner, refs: Sequence[str]) -> dict[str, LocalImage | None]:
    """This machine's images (None: not here): one `docker image inspect` for all; one per
    ref only when Docker's answer cannot be matched to the refs."""
    refs = list(dict.fromkeys(refs))
    if not refs:
        return {}
    res = runner.run(local_inspect_argv(*refs), "inspect the images here", check=False, mutates=False)
    images = parse_locals(refs, res.stdout, res.stderr)
    return images if images is not None else {ref: _local_image(runner, ref) for ref in refs}


def _local_image(runner: Runner, ref: str) -> LocalImage | None:
    res = runner.run(local_inspect_argv(ref), f"inspect {ref} here", check=False, mutates=False)
    return parse_local(res.stdout, ref) if res.ok and res.stdout.strip() else None


def _local_side(here: Runner, c: Ctx, wanted: list[Wanted], srv: ServerImages) -> tuple[dict, Plan]:
    """The local images and the plan; a missing tier or app image is built here first (not in a dry run)."""
    local = _local_images(here, [w.local for w in wanted])
    p = plan(wanted, local, srv)
    if refusal := missing_upstream_refusal(p):
        raise refusal
    if p.absent and not c.run.dry_run:
        for w in p.absent:
            _make_local(here, c, w)
        local.update(_local_images(here, [w.local for w in p.absent]))
        p = plan(wanted, local, srv)
        if p.absent:
            raise OnevpsError(f"image {p.absent[0].local} is still missing here after the build",
                              "read the build output above")
    return local, p


def _make_local(runner: Runner, c: Ctx, w: Wanted) -> None:
    """Build a missing tier or app image here (the usual local build, with its progress)."""
    if w.kind == "tier":
        stack.ensure_tier(runner, c.project, c.local, w.what)
    elif w.kind == "app":
        stack.build_apps(runner, c.project, c.local, stack.load_registry(c.project), [w.what])


def _refuse(c: Ctx, p: Plan, arch: str) -> None:
    """Nothing is sent for another architecture or to a disk without room for the load."""
    if refusal := arch_refusal(p, arch):
        raise refusal
    if p.send:
        root, free = disk.docker_free_mb(c.run)
        if refusal := load_room_refusal(p, free, root, c.rs.build_free_mb):
            raise refusal


def _dry_run(c: Ctx, p: Plan, t0: float) -> ShipReport:
    """Say what a real run would do; the report names what it would put there."""
    for w, img in p.send:
        c.say(f"[dry-run] would ship {w.local} ({disk.human(img.size)}) as {', '.join(w.remote)}")
    for w in p.absent:
        c.say(f"[dry-run] would build {w.local} here, then ship it as {', '.join(w.remote)}")
    for image_id, name in p.tag:
        c.say(f"[dry-run] would tag {name} on the server (its image {image_id[:19]} is there)")
    for name in p.skip:
        c.say(f"already there: {name}")
    c.say(f"[dry-run] would send {len(p.send)} image(s), about {disk.human(p.bytes)}; "
          f"{len(p.skip) + len(p.tag)} already there; nothing sent")
    report = ShipReport(skipped=[*p.skip, *(n for _, n in p.tag)], tagged=[n for _, n in p.tag])
    # what a real run would put there (a dry `fab setup --ship` then plans no tier build)
    report.shipped = [n for w, _ in p.send for n in w.remote] + [n for w in p.absent for n in w.remote]
    report.seconds = time.monotonic() - t0
    return report


def _send(c: Ctx, p: Plan, report: ShipReport, open_channel, start_save) -> str:
    """One `docker save | docker load` of the images to send; returns what the load printed."""
    if not p.send:
        return ""
    refs = [save_ref(w, img) for w, img in p.send]
    c.say(f"==> shipping {len(refs)} image(s) (~{disk.human(p.bytes)}) to the server: "
          + ", ".join(w.local for w, _ in p.send))
    streamed = transfer.transfer(c, refs, p.bytes, open_channel, start_save)
    report.bytes_sent, report.images_sent = streamed.sent, len(refs)
    report.shipped = [n for w, _ in p.send for n in w.remote]
    return streamed.stdout


def _name(c: Ctx, p: Plan, load_output: str) -> None:
    """Tag-only images under the server's ID, then the server names of what was sent, by the ID
    the server gave each loaded image (found by key: IDs differ between stores)."""
    for image_id, name in p.tag:
        c.run.run(tag_argv(image_id, name), f"tag {name} on the server")
    if not p.tag_after:
        return
    after = _server_images(c, loaded_ids(load_output))
    for key, name in p.tag_after:
        image_id = after.id_for(key)
        if image_id is None:
            raise CommandFailed(f"after the load, the server has no image matching the one sent for {name}",
                                "run `fab ship` again; `docker images` on the server shows what is there")
        c.run.run(tag_argv(image_id, name), f"tag {name} on the server")


def _verify(c: Ctx, wanted: list[Wanted], local: dict[str, LocalImage | None]) -> None:
    """Every server name now resolves to an image with the local image's key (one inspect)."""
    expect = {n: local[w.local].key for w in wanted if local.get(w.local) for n in w.remote}  # type: ignore[union-attr]
    if not expect:
        return
    res = c.run.run(verify_argv(list(expect)), "check the shipped images on the server", check=False,
                    mutates=False)
    got = [key for _, key in parse_keys(res.stdout)]
    wrong = [n for n, k in zip(expect, got) if k != expect[n]] if res.ok and len(got) == len(expect) else list(expect)
    if wrong:
        raise OnevpsError(f"after shipping, the server's {wrong[0]} is not the image sent",
                          "run `fab ship` again; `docker images` on the server shows what is there")
