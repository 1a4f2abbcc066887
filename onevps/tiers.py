"""Image tiers: content tags and build inputs.

A tier's content tag is `c-` + the first 12 hex digits of a SHA-256 over
its build inputs (Dockerfile, requirements.txt, constraints.txt, extra CA certificates for
the base tier). The ML tier also covers the base tag it is built on and what
decides which torch gets installed: TORCH_INDEX_URL, TORCH_CUDA and the
wheels staged in dockerfiles/ml/wheels/ (name and size each). A tier change
is visible as a new tag; an app image's label `onevps.tier.image` names the
tag it was built on.

Local files, the builder's settings: the build context always comes from
this checkout (the server gets the same files), but a server build reads the
server's .env, so `content_tag(project, server_settings, tier)` names what
the server will install.

Wheels count by name and size, not by a hash of their bytes: a wheel's name
carries its project, version and local build (`torch-2.13.0+cpu-...`), the
size tells a rebuilt wheel of the same name apart, and hashing ~200 MB on
every `inv` call (tags are computed for each command) is not cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .errors import OnevpsError
from .project import Project


@dataclass(frozen=True)
class Tier:
    """An image tier: `<namespace>/<name>`, what apps labelled `onevps.tier=<name>` build FROM."""

    name: str
    tag_key: str  # the compose variable that names its content tag
    service: str  # the compose service that builds it (profile tiers; never runs)
    parent: str | None  # the tier its Dockerfile builds FROM

    def folder(self, root: Path) -> Path:
        """Its build context under the project root: dockerfiles/<name>/."""
        return root / "dockerfiles" / self.name

    def dockerfile(self, root: Path) -> Path:
        return self.folder(root) / "Dockerfile"


BASE = Tier("base", tag_key="BASE_TAG", service="base-tier", parent=None)
ML = Tier("ml", tag_key="ML_TAG", service="ml-tier", parent="base")
TIERS = (BASE, ML)  # in build order: a parent comes first
TIER_ORDER = tuple(t.name for t in TIERS)


def tier(name: str) -> Tier:
    """The tier called `name`; KeyError for any other name (callers check user input first)."""
    for t in TIERS:
        if t.name == name:
            return t
    raise KeyError(f"no tier {name!r}; the tiers are {', '.join(TIER_ORDER)}")


def tag_key(name: str) -> str:
    """The compose variable naming the tier's content tag: BASE_TAG or ML_TAG."""
    return tier(name).tag_key


def rebuilt_with(name: str) -> tuple[str, ...]:
    """The tier and every tier built on it, in build order: what rebuilding `name` rebuilds."""
    names = [tier(name).name]
    for t in TIERS:
        if t.parent in names:
            names.append(t.name)
    return tuple(names)


def tier_dir(project: Project, tier_name: str) -> Path:
    return tier(tier_name).folder(project.root)


def _inputs(folder: Path, t: Tier) -> list[Path]:
    files = [folder / "Dockerfile", folder / "requirements.txt", folder / "constraints.txt"]
    if t is BASE:  # what its Dockerfile copies in besides
        files += [folder / "onevps_serve.py", *sorted((folder / "extra-ca").glob("*.crt"))]
    return files


# The ML tier's staged wheels, relative to the project root (the same on the server).
WHEEL_DIR = (ML.folder(Path()) / "wheels").as_posix()


def wheel_dir(project: Project) -> Path:
    """Where the ML tier's local wheels are staged (bind-mounted by its Dockerfile)."""
    return project.root / WHEEL_DIR


def staged_wheels(project: Project) -> list[tuple[str, int]]:
    """(name, size) of each wheel in dockerfiles/ml/wheels/, sorted."""
    folder = wheel_dir(project)
    return sorted((p.name, p.stat().st_size) for p in folder.glob("*.whl") if p.is_file())


def ml_settings(build: Settings) -> dict[str, str]:
    """The builder's settings that decide what the ML tier installs (compose passes them as build args)."""
    return {"TORCH_INDEX_URL": build.torch_index_url, "TORCH_CUDA": "on" if build.torch_cuda else "off"}


def content_tag(project: Project, build: Settings, tier_name: str) -> str:
    """The tier's tag from the files under project.root, built with `build`'s
    settings (this machine's, or the server's for a server build)."""
    t = tier(tier_name)
    folder = t.folder(project.root)
    digest = hashlib.sha256()
    for path in _inputs(folder, t):
        if not path.is_file():
            raise OnevpsError(f"tier {t.name}: {path.relative_to(project.root)} is missing",
                              "restore it with `git checkout -- dockerfiles/`")
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    if t.parent:
        digest.update(content_tag(project, build, t.parent).encode())
    if t is ML:
        chosen = {**ml_settings(build), "wheels": staged_wheels(project)}
        digest.update(json.dumps(chosen, sort_keys=True).encode())
    return "c-" + digest.hexdigest()[:12]


def image(settings: Settings, name: str, tag: str = "latest") -> str:
    return f"{settings.image_namespace}/{name}:{tag}"


def tier_image(project: Project, settings: Settings, tier_name: str) -> str:
    """The content-tagged reference of a tier image (what apps build FROM)."""
    return image(settings, tier_name, content_tag(project, settings, tier_name))


def tag_env(project: Project, build: Settings) -> dict[str, str]:
    """Variables the compose file uses to name tier tags (`build`: see content_tag)."""
    return {t.tag_key: content_tag(project, build, t.name) for t in TIERS}


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Place src at dst (hard link when possible); True when dst changed."""
    if dst.exists() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
        return False
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")  # two stagers at once each replace atomically
    dst.parent.mkdir(parents=True, exist_ok=True)  # git-ignored staging folders may be missing in a copy
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def stage_inputs(project: Project, settings: Settings, tier_name: str) -> list[str]:
    """Copy optional outside inputs into the tier's build context.

    EXTRA_CA_DIR/*.crt -> dockerfiles/base/extra-ca/, TORCH_WHEEL_DIR/*.whl ->
    dockerfiles/ml/wheels/ (git-ignored). Engines older than BuildKit 0.10
    cannot take extra named build contexts, so the inputs are staged.
    """
    staged: list[str] = []
    if tier_name == BASE.name and settings.extra_ca_dir:
        target = BASE.folder(project.root) / "extra-ca"
        for crt in sorted(settings.extra_ca_dir.glob("*.crt")):
            if _link_or_copy(crt, target / crt.name):
                staged.append(f"extra-ca/{crt.name}")
    if tier_name == ML.name and settings.torch_wheel_dir:
        target = wheel_dir(project)
        for whl in sorted(settings.torch_wheel_dir.glob("*.whl")):
            if _link_or_copy(whl, target / whl.name):
                staged.append(f"wheels/{whl.name}")
    return staged
