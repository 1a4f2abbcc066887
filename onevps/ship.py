"""`fab ship`: send images from this machine to the server over SSH.

For servers that cannot pull from a registry and too small to build the ML
tier. What goes: the tier images (content tag + latest, under the SERVER's
IMAGE_NAMESPACE), the upstream images of the compose file's always-on
services, or one app's image. The server is asked once which images it has
(identified by `image_key`, not by Docker's image ID, which depends on the
image store); an image it has is skipped (only tagged when its name is
missing there).
Everything else goes in ONE `docker save` (shared layers sent once), streamed
over the open SSH connection into `docker load` on the server: no tarball on
disk on either side. Architecture and free disk are checked before a byte is
sent; `docker load` is atomic per image, so a failed transfer leaves only
whole images behind.
"""

from __future__ import annotations

import hashlib
import math
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

from paramiko.ssh_exception import SSHException

from . import commands, composefile, deploy, disk, stack, tiers
from .config import Settings
from .errors import CommandFailed, OnevpsError
from .provision import ARCHES
from .runner import Runner

CHUNK = 1 << 20  # bytes read from `docker save` and sent at a time
PROGRESS_SECONDS = 2.0
# What identifies an image on either side (see image_key), and what else is read here.
KEY_FORMAT = "{{.Id}} {{.Created}} {{json .RootFS.Layers}}"
LOCAL_FORMAT = "{{.Id}} {{.Architecture}} {{.Size}} {{.Created}} {{json .RootFS.Layers}}"
# `docker load` writes the stream to a temp folder in Docker's data root and
# then unpacks the layers: about twice the image size at its peak.
LOAD_FACTOR = 2


@dataclass(frozen=True)
class Wanted:
    """One image to have on the server: its local name and its names there."""

    local: str
    remote: tuple[str, ...]
    kind: str  # "tier", "upstream" or "app" (how to get it when missing locally)
    what: str  # tier or app or service name(s), for messages


@dataclass(frozen=True)
class LocalImage:
    id: str  # this machine's image ID (only for `docker save`; never compared with the server's)
    arch: str
    size: int
    key: str  # image_key: what is compared with the server


@dataclass
class ServerImages:
    """What the server has: its names and, per server image ID, the image's key."""

    names: dict[str, str] = field(default_factory=dict)  # name -> server image ID
    keys: dict[str, str] = field(default_factory=dict)  # server image ID -> image_key

    def key_of(self, name: str) -> str | None:
        return self.keys.get(self.names.get(name, ""))

    def id_for(self, key: str) -> str | None:
        """The server's own ID of the image with this key (None: the server does not have it)."""
        return next((i for i, k in self.keys.items() if k == key), None)


@dataclass
class Plan:
    send: list[tuple[Wanted, LocalImage]] = field(default_factory=list)
    tag: list[tuple[str, str]] = field(default_factory=list)  # (SERVER image ID, server name): tag only
    tag_after: list[tuple[str, str]] = field(default_factory=list)  # (image key, server name) once loaded
    skip: list[str] = field(default_factory=list)  # server names already right
    absent: list[Wanted] = field(default_factory=list)  # missing locally (dry run: would be built)

    @property
    def bytes(self) -> int:
        return sum(img.size for _, img in self.send)


@dataclass
class ShipReport:
    shipped: list[str] = field(default_factory=list)  # server names of images sent
    skipped: list[str] = field(default_factory=list)  # server names already there (incl. tag-only)
    tagged: list[str] = field(default_factory=list)  # of the skipped: names only tagged on the server
    bytes_sent: int = 0
    seconds: float = 0.0
    images_sent: int = 0  # distinct images in the stream (one image may carry several server names)

    def line(self) -> str:
        return (f"shipped {self.images_sent} image(s) ({disk.human(self.bytes_sent)}) in {self.seconds:.1f} s; "
                f"{len(self.skipped)} already there" + (f" ({len(self.tagged)} only tagged)" if self.tagged else ""))


# ---------------------------------------------------------------- selection --

def upstream_images(compose_data: object) -> dict[str, list[str]]:
    """Image -> services, for services with no build:, no profile and a literal image name."""
    found: dict[str, list[str]] = {}
    services = compose_data.get("services") if isinstance(compose_data, dict) else None
    for name, svc in (services or {}).items():
        if not isinstance(svc, dict) or "build" in svc or svc.get("profiles"):
            continue
        image = str(svc.get("image") or "")
        if image and "$" not in image:
            found.setdefault(image, []).append(str(name))
    return found


def select(local: Settings, server: Settings, tags: dict[str, str], compose_data: object, *,
           tiers_: bool = False, upstream: bool = False, app: str | None = None) -> list[Wanted]:
    """What the server should end up with (pure). Server names use the server's namespace."""
    wanted: list[Wanted] = []
    if tiers_:
        here = tiers.tag_env(local)
        for tier in tiers.TIER_ORDER:
            key = "BASE_TAG" if tier == "base" else "ML_TAG"
            tag = tags[key]
            if here[key] != tag:
                # The tag names what a build installs (TORCH_INDEX_URL, TORCH_CUDA): the tier
                # built here is not the one the server's settings ask for.
                raise OnevpsError(f"the {tier} tier built here ({here[key]}) is not the one the server's settings "
                                  f"describe ({tag}): TORCH_INDEX_URL or TORCH_CUDA differ between "
                                  f"{local.env_file.name if local.env_file else 'your settings'} and VPS_ENV_FILE",
                                  "give both the same values, or build the tiers on the server (`fab setup` without --ship)")
            ns = server.image_namespace
            # Apps build FROM <ns>/<tier>:<tag>; the tier services name <ns>/<tier>:latest.
            wanted.append(Wanted(tiers.image(local, tier, tag), (f"{ns}/{tier}:{tag}", f"{ns}/{tier}:latest"),
                                 "tier", tier))
    if upstream:
        for image, services in upstream_images(compose_data).items():
            wanted.append(Wanted(image, (image,), "upstream", ", ".join(services)))
    if app:
        wanted.append(Wanted(tiers.image(local, app), (f"{server.image_namespace}/{app}:latest",), "app", app))
    return wanted


# ----------------------------------------------------------------- commands --

def local_inspect_argv(ref: str) -> list[str]:
    return commands.image_inspect(ref, LOCAL_FORMAT)


def server_images_argv() -> list[str]:
    return commands.docker("images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}")


def server_inspect_argv(refs: Sequence[str]) -> list[str]:
    """One `docker image inspect` over many images (IDs or names): a line each, in order."""
    return commands.docker("image", "inspect", "--format", KEY_FORMAT, *refs)


def save_argv(refs: Sequence[str]) -> list[str]:
    return commands.docker("save", *refs)


def load_argv(prefix: Sequence[str] = ()) -> list[str]:
    """`docker load` as run on the server; `prefix` (e.g. sudo -n) as the server's runner applies it."""
    return [*prefix, *commands.docker("load")]


def tag_argv(image_id: str, name: str) -> list[str]:
    return commands.docker("tag", image_id, name)


def verify_argv(names: Sequence[str]) -> list[str]:
    return server_inspect_argv(names)


def remote_prefix(c: deploy.Ctx) -> list[str]:
    """The prefix the server's runner puts before docker commands (none unless it grew one, e.g. `sudo -n`)."""
    prefix = getattr(c.run, "docker_prefix", None)
    return list(prefix() if callable(prefix) else prefix or [])


# ------------------------------------------------------------------- parsing --

_NO_TIME = ("", "<no value>", "0001-01-01T00:00:00Z")  # how engines print an image with no created time


def image_key(created: str, layers_json: str) -> str:
    """What identifies an image on both sides: sha256 over its creation time and its layers'
    diff IDs (`{{.Created}}` and `{{json .RootFS.Layers}}`).

    Not `{{.Id}}`: that depends on the image store. The classic store (Debian's docker.io
    20.10, older docker-ce) reports the config digest; the containerd image store (fresh
    Docker Engine 29+ installs, Docker Desktop) reports the manifest or index digest
    (docker/cli#5526). The same image would look different between such a machine and
    server, be sent again every time, and fail the check after a good transfer.

    Both values come from the image's config, which `docker save | docker load` carries
    unchanged and both stores read the same way: the diff IDs are digests of the
    uncompressed layers (not of the compressed blobs a manifest names), and the creation
    time tells apart two builds with the same layers but another config (ENV, CMD or LABEL
    changes add no layer; a rebuild gets a new time). Not `{{json .Config}}`: which of its
    fields an engine prints changes with the API version (Docker 29 dropped deprecated
    ones). Limit: images with the same layers and the same creation time (reproducible
    builds pinning SOURCE_DATE_EPOCH) that differ only in config count as the same image.
    An empty or zero creation time counts as none on either side."""
    created = created.strip()
    created = "" if created in _NO_TIME else created
    digest = hashlib.sha256(f"{created}\n{layers_json.strip()}".encode()).hexdigest()
    return f"key:{digest}"


def parse_server_images(text: str) -> tuple[list[str], dict[str, str]]:
    """`docker images --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}'` -> (IDs, name -> ID)."""
    ids: dict[str, None] = {}
    names: dict[str, str] = {}
    for line in text.splitlines():
        image_id, _, name = line.strip().partition(" ")
        if not image_id:
            continue
        ids[image_id] = None
        if name and "<none>" not in name:
            names[name] = image_id
    return list(ids), names


def parse_keys(text: str) -> list[tuple[str, str]]:
    """`docker image inspect --format KEY_FORMAT ...` -> [(image ID, image_key)], a line each, in order.
    A line of another shape is left out (that image then counts as missing)."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split(" ", 2)
        if len(parts) == 3 and parts[0]:
            out.append((parts[0], image_key(parts[1], parts[2])))
    return out


def parse_local(text: str, ref: str = "the image") -> LocalImage:
    parts = text.strip().split(" ", 4)
    try:
        if len(parts) != 5 or "\n" in text.strip():
            raise ValueError
        image_id, arch, size, created, layers = parts
        return LocalImage(image_id, arch, int(size), image_key(created, layers))
    except ValueError:
        shown = text.strip().splitlines()[0][:80] if text.strip() else ""
        raise CommandFailed(f"`docker image inspect {ref}` here printed {shown!r}, not the ID, architecture, size, "
                            "creation time and layers asked for",
                            "check the local Docker (`docker version`; 20.10 or later), then run `fab ship` again") from None


def loaded_ids(load_output: str) -> list[str]:
    """The IDs `docker load` names for images it loaded without a name ("Loaded image ID: ...")."""
    prefix = "Loaded image ID: "
    return [line.strip()[len(prefix):].strip() for line in load_output.splitlines()
            if line.strip().startswith(prefix)]


def server_arch(uname_m: str) -> str:
    machine = uname_m.strip()
    return ARCHES.get(machine, machine)


def plan(wanted: Iterable[Wanted], local: dict[str, LocalImage | None], srv: ServerImages) -> Plan:
    """Sort each wanted image into send / tag only / skip (pure), comparing image keys, never
    the two sides' IDs. Tag-only names use the server's own ID of the image. An image (key) is
    sent once; the server names the load does not give it are tagged afterwards."""
    out = Plan()
    saved: dict[str, str] = {}  # key of an image being sent -> the reference saved
    for w in wanted:
        img = local.get(w.local)
        if img is None:
            if all(n in srv.names for n in w.remote):
                out.skip.extend(w.remote)  # not here, but the server has it by name: leave it
            else:
                out.absent.append(w)
            continue
        there = srv.id_for(img.key)
        if there is None and img.key not in saved:
            out.send.append((w, img))
            saved[img.key] = save_ref(w, img)
        for name in w.remote:
            if srv.key_of(name) == img.key:
                out.skip.append(name)
            elif there is None:
                if name != saved[img.key] and (img.key, name) not in out.tag_after:
                    out.tag_after.append((img.key, name))
            else:
                out.tag.append((there, name))
    return out


def save_ref(w: Wanted, img: LocalImage) -> str:
    """The name to save: the local name when the server uses it too (then the load names it),
    else this machine's bare ID (the load leaves it unnamed, printing the SERVER's ID for it,
    and ship finds it by key and tags it under the server's names). Saving under the local
    name instead would leave this machine's names (e.g. another IMAGE_NAMESPACE) on the
    server, and could move a server name of that spelling."""
    return w.local if w.local in w.remote else img.id


# ----------------------------------------------------------------- streaming --

class Channel(Protocol):
    def sendall(self, data: bytes) -> None: ...
    def shutdown_write(self) -> None: ...
    def exit_status_ready(self) -> bool: ...
    def recv_exit_status(self) -> int: ...
    def recv_ready(self) -> bool: ...
    def recv(self, n: int) -> bytes: ...
    def recv_stderr_ready(self) -> bool: ...
    def recv_stderr(self, n: int) -> bytes: ...


class TransferFailed(Exception):
    def __init__(self, reason: str, sent: int):
        super().__init__(reason)
        self.reason, self.sent = reason, sent


@dataclass
class Streamed:
    sent: int
    exit_status: int
    stdout: str
    stderr: str


def progress_line(count: int, sent: int, total: int, seconds: float) -> str:
    rate = sent / seconds if seconds > 0 else 0
    return f"    shipping {count} image(s): {disk.human(sent)} of ~{disk.human(total)}, {disk.human(rate)}/s"


def stream(source, channel: Channel, total: int, count: int, say: Callable[[str], None],
           clock: Callable[[], float] = time.monotonic, chunk: int = CHUNK) -> Streamed:
    """Copy `source` (a file-like, e.g. `docker save` stdout) into `channel` (remote
    `docker load`'s stdin), printing progress every PROGRESS_SECONDS or 10%.
    (A 10% line needs half that time since the last line: no bursts of lines.)
    Raises TransferFailed when the server side ends or the connection drops mid-stream."""
    out, err = bytearray(), bytearray()

    def drain() -> None:
        while channel.recv_ready():
            data = channel.recv(65536)
            if not data:
                break
            out.extend(data)
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(65536)
            if not data:
                break
            err.extend(data)

    start = last = clock()
    sent, tenth = 0, 0
    while True:
        data = source.read(chunk)
        if not data:
            break
        if channel.exit_status_ready():  # docker load ended before the stream did
            drain()
            reason = _last_line(err.decode(errors="replace")) or _last_line(out.decode(errors="replace"))
            raise TransferFailed(reason or f"docker load ended early (exit {channel.recv_exit_status()})", sent)
        try:
            channel.sendall(data)
        except (OSError, EOFError) as exc:
            drain()
            reason = _last_line(err.decode(errors="replace"))
            if not reason and channel.exit_status_ready():
                reason = f"docker load ended early (exit {channel.recv_exit_status()})"
            raise TransferFailed(reason or f"connection lost: {exc}", sent) from None
        sent += len(data)
        drain()
        now = clock()
        step = min(9, sent * 10 // total) if total else 0
        if now - last >= PROGRESS_SECONDS or (step > tenth and now - last >= PROGRESS_SECONDS / 2):
            say(progress_line(count, sent, total, now - start))
            last, tenth = now, step
    try:
        channel.shutdown_write()
    except (OSError, EOFError):
        pass
    status = channel.recv_exit_status()
    drain()
    return Streamed(sent, status, out.decode(errors="replace"), err.decode(errors="replace"))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def failure_hint(reason: str) -> str:
    if "no space left" in reason.lower():
        return "`fab prune` removes old images and build cache on the server (`fab disk` shows the use), then ship again"
    return ("images loaded before the failure stay whole on the server (docker load is atomic per image); "
            "check the connection and the server's disk (`fab disk`), then run `fab ship` again")


# ------------------------------------------------------------------- recipe --

def _local_image(runner: Runner, ref: str) -> LocalImage | None:
    res = runner.run(local_inspect_argv(ref), f"inspect {ref} here", check=False, mutates=False)
    return parse_local(res.stdout, ref) if res.ok and res.stdout.strip() else None


def _server_images(c: deploy.Ctx, extra: Sequence[str] = ()) -> ServerImages:
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
        raise CommandFailed(f"cannot inspect the server's images: {_last_line(res.stderr) or f'exit {res.exited}'}",
                            "`docker images` on the server shows what is there; run `fab ship` again")
    return ServerImages(names, keys)


def _make_local(runner: Runner, c: deploy.Ctx, w: Wanted) -> None:
    """Build a missing tier or app image here (the usual local build, with its progress)."""
    if w.kind == "tier":
        stack.ensure_tier(runner, c.local, w.what)
    elif w.kind == "app":
        stack.build_apps(runner, c.local, stack.load_registry(c.local), [w.what])


def _open_load(c: deploy.Ctx):
    transport = c.conn.client.get_transport() if c.conn.client else None
    if transport is None or not transport.is_active():
        raise OnevpsError("the SSH connection to the server is closed", "run `fab ship` again")
    command = shlex.join(load_argv(remote_prefix(c)))
    try:
        channel = transport.open_session()
        channel.exec_command(command)
    except (SSHException, OSError, EOFError) as exc:
        raise CommandFailed(f"cannot start `{command}` on the server over SSH: {str(exc) or type(exc).__name__}",
                            "the connection dropped or the server's sshd refused another session (MaxSessions "
                            "in sshd_config); run `fab ship` again") from None
    return channel


def ship(c: deploy.Ctx, *, tiers: bool = False, upstream: bool = False, app: str | None = None,
         local_runner: Runner | None = None, open_channel: Callable[[deploy.Ctx], Channel] | None = None,
         start_save: Callable[[list[str]], subprocess.Popen] | None = None) -> ShipReport:
    """Ship the chosen images to the server (see the module docstring)."""
    t0 = time.monotonic()
    dry = c.run.dry_run
    if not (tiers or upstream or app):
        raise OnevpsError("nothing to ship", "choose at least one of --tiers, --upstream, --app NAME")
    if app:
        c.reg.get(app)
    wanted = select(c.local, c.rs, c.tags, composefile.load(c.local.compose_file),
                    tiers_=tiers, upstream=upstream, app=app)
    deploy.require_docker_on_server(c)  # e.g. a user outside the docker group: told so in one line
    here = local_runner or stack.make_runner(_invoke_context(), c.local, dry_run=dry)

    # 1. the server: which images it has (one listing, one inspect), its architecture
    srv = _server_images(c)
    arch = server_arch(c.run.run(["uname", "-m"], "read the server's architecture", mutates=False).stdout)

    # 2. this machine: the images (upstream ones must be here; tiers and apps are built)
    local = {w.local: _local_image(here, w.local) for w in wanted}
    p = plan(wanted, local, srv)
    missing_upstream = [w for w in p.absent if w.kind == "upstream"]
    if missing_upstream:
        w = missing_upstream[0]
        others = f" (and {len(missing_upstream) - 1} more)" if len(missing_upstream) > 1 else ""
        raise OnevpsError(f"image {w.local} (service {w.what}) is neither on this machine nor on the server{others}",
                          f"get it here first (`docker pull {w.local}`, or build a stand-in tagged so), then ship again")
    if p.absent and not dry:
        for w in p.absent:
            _make_local(here, c, w)
        local.update({w.local: _local_image(here, w.local) for w in p.absent})
        p = plan(wanted, local, srv)
        if p.absent:
            raise OnevpsError(f"image {p.absent[0].local} is still missing here after the build",
                              "read the build output above")

    # 3. refuse before sending: architecture, disk
    wrong = [(w.local, img.arch) for w, img in p.send if img.arch != arch]
    if wrong:
        ref, got = wrong[0]
        raise OnevpsError(f"{ref} is built for {got} but the server runs {arch}; nothing was sent",
                          f"build the images for {arch} (e.g. on a machine of that kind) and ship from there")
    report = ShipReport(skipped=list(p.skip))
    if p.send:
        root, free = disk.docker_free_mb(c.run)
        headroom = int(c.rs.raw.get("BUILD_FREE_MB", 0) or 0)
        need = math.ceil(p.bytes * LOAD_FACTOR / 1e6) + headroom
        if free < need:
            raise OnevpsError(
                f"only {free:,} MB free on the server's Docker disk ({root}); loading {len(p.send)} image(s) "
                f"of {disk.human(p.bytes)} needs about {need:,} MB (twice the images + BUILD_FREE_MB {headroom}); "
                "nothing was sent",
                "`fab prune` removes old images and build cache (`fab prune --dry-run` shows how much it frees)")

    if dry:
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
        report.skipped += [n for _, n in p.tag]
        report.tagged = [n for _, n in p.tag]
        # what a real run would put there (a dry `fab setup --ship` then plans no tier build)
        report.shipped = [n for w, _ in p.send for n in w.remote] + [n for w in p.absent for n in w.remote]
        report.seconds = time.monotonic() - t0
        return report

    # 4. send what is missing: one docker save | docker load
    load_output = ""
    if p.send:
        refs = [save_ref(w, img) for w, img in p.send]
        c.say(f"==> shipping {len(refs)} image(s) (~{disk.human(p.bytes)}) to the server: "
              + ", ".join(w.local for w, _ in p.send))
        streamed = _transfer(c, refs, p.bytes, open_channel or _open_load, start_save or _start_save)
        report.bytes_sent, report.images_sent, load_output = streamed.sent, len(refs), streamed.stdout
        report.shipped = [n for w, _ in p.send for n in w.remote]
    # 5. names: tag-only images (the server's ID), then the server names of what was sent,
    # by the ID the server gave each loaded image (found by key: IDs differ between stores)
    for image_id, name in p.tag:
        c.run.run(tag_argv(image_id, name), f"tag {name} on the server")
    if p.tag_after:
        after = _server_images(c, loaded_ids(load_output))
        for key, name in p.tag_after:
            image_id = after.id_for(key)
            if image_id is None:
                raise CommandFailed(f"after the load, the server has no image matching the one sent for {name}",
                                    "run `fab ship` again; `docker images` on the server shows what is there")
            c.run.run(tag_argv(image_id, name), f"tag {name} on the server")
    report.tagged = [n for _, n in p.tag]
    report.skipped += report.tagged
    _verify(c, wanted, local)
    report.seconds = time.monotonic() - t0
    c.say(f"==> {report.line()}")
    return report


def _invoke_context():
    from invoke.context import Context

    return Context()


def _start_save(argv: list[str]) -> subprocess.Popen:
    try:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise OnevpsError(f"cannot run {argv[0]} here: {exc.strerror}", "install the Docker client") from None


def _transfer(c: deploy.Ctx, refs: list[str], total: int, open_channel, start_save) -> Streamed:
    channel = open_channel(c)
    proc = start_save(save_argv(refs))
    try:
        streamed = stream(proc.stdout, channel, total, len(refs), c.say)
    except TransferFailed as exc:
        proc.kill()
        proc.wait()
        raise CommandFailed(f"docker load on the server failed after {disk.human(exc.sent)}: {exc.reason}",
                            failure_hint(exc.reason)) from None
    finally:
        if proc.stdout:
            proc.stdout.close()
    save_err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    save_status = proc.wait()
    if save_status != 0:
        raise CommandFailed(f"docker save here failed (exit {save_status}): {_last_line(save_err) or '?'}",
                            "check the local images (`docker images`) and run `fab ship` again")
    if streamed.exit_status != 0:
        reason = _last_line(streamed.stderr) or _last_line(streamed.stdout) or f"exit {streamed.exit_status}"
        raise CommandFailed(f"docker load on the server failed (exit {streamed.exit_status}): {reason}",
                            failure_hint(reason))
    return streamed


def _verify(c: deploy.Ctx, wanted: list[Wanted], local: dict[str, LocalImage | None]) -> None:
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
