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

Modules: planning (pure: selection, image keys, parsing, the plan),
transfer (the stream into `docker load`), recipe (`ship()`, its steps in
order). The commands themselves: onevps.commands.transfer.
"""

from ..commands.transfer import KEY_FORMAT, LOCAL_FORMAT
from .planning import (ARCHES, LOAD_FACTOR, LocalImage, Plan, ServerImages, ShipReport, Wanted, image_key,
                       loaded_ids, parse_keys, parse_local, parse_locals, parse_server_images, plan, save_ref, select,
                       server_arch, upstream_images)
from .recipe import ship
from .transfer import CHUNK, PROGRESS_SECONDS, Channel, Streamed, TransferFailed, failure_hint, progress_line, stream

__all__ = [
    "ARCHES", "CHUNK", "KEY_FORMAT", "LOAD_FACTOR", "LOCAL_FORMAT", "PROGRESS_SECONDS", "Channel", "LocalImage",
    "Plan", "ServerImages", "ShipReport", "Streamed", "TransferFailed", "Wanted", "failure_hint", "image_key",
    "loaded_ids", "parse_keys", "parse_local", "parse_locals", "parse_server_images", "plan", "progress_line",
    "save_ref", "select", "server_arch", "ship", "stream", "upstream_images",
]
