"""Commands of `fab ship`: reading images on either side, `docker save` here,
`docker load` and `docker tag` on the server. Pure argv builders, as in
onevps.commands; nothing runs here."""

from __future__ import annotations

from typing import Sequence

from .docker import docker

# What identifies an image on either side (see ship.planning.image_key), and what else is read here.
KEY_FORMAT = "{{.Id}} {{.Created}} {{json .RootFS.Layers}}"
LOCAL_FORMAT = "{{.Id}} {{.Architecture}} {{.Size}} {{.Created}} {{json .RootFS.Layers}}"


def local_inspect_argv(*refs: str) -> list[str]:
    """This machine's images: a LOCAL_FORMAT line per image found, in the order asked."""
    return docker("image", "inspect", "--format", LOCAL_FORMAT, *refs)


def server_images_argv() -> list[str]:
    return docker("images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}")


def server_inspect_argv(refs: Sequence[str]) -> list[str]:
    """One `docker image inspect` over many images (IDs or names): a line each, in order."""
    return docker("image", "inspect", "--format", KEY_FORMAT, *refs)


def save_argv(refs: Sequence[str]) -> list[str]:
    return docker("save", *refs)


def load_argv(prefix: Sequence[str] = ()) -> list[str]:
    """`docker load` as run on the server; `prefix` (e.g. sudo -n) as the server's runner applies it."""
    return [*prefix, *docker("load")]


def tag_argv(image_id: str, name: str) -> list[str]:
    return docker("tag", image_id, name)


def verify_argv(names: Sequence[str]) -> list[str]:
    """The server's images under these names, compared with what was sent."""
    return server_inspect_argv(names)
