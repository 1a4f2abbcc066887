"""`fab ship`'s decisions, as pure functions: which images the server should
have (select), how an image is known on both sides (image_key), what Docker
printed (parse_*), and what to send, only tag or skip (plan)."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .. import disk, tiers
from ..config import Settings
from ..errors import CommandFailed, OnevpsError
from ..project import Project
from ..provision.plans import ARCHES

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


def select(project: Project, local: Settings, server: Settings, tags: dict[str, str], compose_data: object, *,
           tiers_: bool | Sequence[str] = False, upstream: bool = False, app: str | None = None,
           extra: Sequence[str] = ()) -> list[Wanted]:
    """What the server should end up with (pure). Server names use the server's namespace;
    tiers_: True (every tier) or the tiers' names; extra: more upstream images by name (e.g.
    the swarm's registry:2)."""
    wanted: list[Wanted] = []
    if tiers_:
        here = tiers.tag_env(project, local)
        for tier in [t for t in tiers.TIER_ORDER if tiers_ is True or t in tiers_]:
            key = tiers.tag_key(tier)
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
    for image in extra:
        wanted.append(Wanted(image, (image,), "upstream", "onevps"))
    if app:
        wanted.append(Wanted(tiers.image(local, app), (f"{server.image_namespace}/{app}:latest",), "app", app))
    return wanted


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


def parse_locals(refs: Sequence[str], stdout: str, stderr: str) -> dict[str, LocalImage | None] | None:
    """One `docker image inspect --format LOCAL_FORMAT REFS...` here -> ref -> LocalImage (None:
    not here). Docker prints a line per image found, in order, and names each missing one in
    stderr ("No such image: REF"). None when the output cannot be matched to the refs so:
    then ask per ref."""
    missing = {ref for ref in refs if _named_missing(ref, stderr)}
    found = [ref for ref in refs if ref not in missing]
    lines = [line for line in stdout.splitlines() if line.strip()]
    if len(lines) != len(found):
        return None
    images: dict[str, LocalImage | None] = {ref: None for ref in missing}
    images.update({ref: parse_local(line, ref) for ref, line in zip(found, lines)})
    return images


def _named_missing(ref: str, stderr: str) -> bool:
    """Does a line of stderr say ref is missing ("No such image: REF", maybe followed by ": ...")?"""
    pattern = re.compile(rf"such image: {re.escape(ref)}(?::\s|$)", re.IGNORECASE)
    return any(pattern.search(line.strip()) for line in stderr.splitlines())


def missing_upstream_refusal(p: Plan) -> OnevpsError | None:
    """Upstream images are never built here: one missing on both sides is one line."""
    missing = [w for w in p.absent if w.kind == "upstream"]
    if not missing:
        return None
    w = missing[0]
    others = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return OnevpsError(f"image {w.local} (service {w.what}) is neither on this machine nor on the server{others}",
                       f"get it here first (`docker pull {w.local}`, or build a stand-in tagged so), then ship again")


def arch_refusal(p: Plan, arch: str) -> OnevpsError | None:
    """An image to send that is built for another architecture than the server's is one line."""
    wrong = [(w.local, img.arch) for w, img in p.send if img.arch != arch]
    if not wrong:
        return None
    ref, got = wrong[0]
    return OnevpsError(f"{ref} is built for {got} but the server runs {arch}; nothing was sent",
                       f"build the images for {arch} (e.g. on a machine of that kind) and ship from there")


def load_room_refusal(p: Plan, free_mb: int, root: str, headroom_mb: int) -> OnevpsError | None:
    """The one line refusing a load the server's Docker disk has no room for (None: it has)."""
    need = math.ceil(p.bytes * LOAD_FACTOR / 1e6) + headroom_mb
    if free_mb >= need:
        return None
    return OnevpsError(
        f"only {free_mb:,} MB free on the server's Docker disk ({root}); loading {len(p.send)} image(s) "
        f"of {disk.human(p.bytes)} needs about {need:,} MB (twice the images + BUILD_FREE_MB {headroom_mb}); "
        "nothing was sent",
        "`fab prune` removes old images and build cache (`fab prune --dry-run` shows how much it frees)")


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
