"""Commands for the server's own system (not Docker's images): what `fab setup`
reads (os-release, meminfo, uname, groups) and changes (apt, Docker's apt
repository, systemctl, the docker group, swap, the Compose plugin, VPS_PATH).
Pure argv builders, as in onevps.commands; nothing runs here.
"""

from __future__ import annotations

from typing import Sequence

from .docker import docker

# A fresh cloud image often runs unattended-upgrades at first boot: wait for its dpkg lock.
APT = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-o", "DPkg::Lock::Timeout=300")

# Installs the uploaded plugin ($1) as $2/docker-compose (mode 755), atomically; removes the upload.
INSTALL_PLUGIN = ('mkdir -p "$2" && install -m 755 "$1" "$2/.docker-compose.onevps-tmp" '
                  '&& mv -f "$2/.docker-compose.onevps-tmp" "$2/docker-compose" && rm -f "$1"')

# Prints each managed entry ($3...) of VPS_PATH ($2) that holds anything not owned by $1.
FOREIGN_ENTRIES = ('u=$1; cd "$2" || exit 0; shift 2; for p in "$@"; do '
                   '[ -e "$p" ] && [ -n "$(find "$p" ! -user "$u" -print -quit 2>/dev/null)" ] && printf "%s\\n" "$p"; '
                   'done; exit 0')


def as_root(argv: Sequence[str], root: bool) -> list[str]:
    """A privileged command: as is for root, through `sudo -n` (never asks a password) otherwise."""
    return list(argv) if root else ["sudo", "-n", *argv]


def sudo_works() -> list[str]:
    return ["sudo", "-n", "true"]


# ------------------------------------------------------------------- reads --

def read(path: str) -> list[str]:
    """`cat PATH` (/etc/os-release, /proc/meminfo, /proc/swaps, /etc/fstab)."""
    return ["cat", path]


def machine() -> list[str]:
    return ["uname", "-m"]


def user_id() -> list[str]:
    return ["id", "-u"]


def user_name() -> list[str]:
    return ["id", "-un"]


def user_groups() -> list[str]:
    return ["id", "-nG"]


def exists(path: str) -> list[str]:
    return ["test", "-e", path]


def is_dir(path: str) -> list[str]:
    return ["test", "-d", path]


def owns(path: str) -> list[str]:
    """True when the user running it owns path."""
    return ["test", "-O", path]


def may_create(path: str) -> list[str]:
    """True when the user running it may create path (its folder is writable)."""
    return ["sh", "-c", 'test -w "$(dirname "$1")"', "sh", path]


def has_systemd() -> list[str]:
    return is_dir("/run/systemd/system")


def has_apt() -> list[str]:
    return ["sh", "-c", "command -v apt-get"]


def docker_client_version() -> list[str]:
    return docker("--version")


def compose_plugin_version() -> list[str]:
    """`docker compose version` (long form: "Docker Compose version v2.40.3")."""
    return docker("compose", "version")


def foreign_entries(user: str, path: str, entries: Sequence[str]) -> list[str]:
    """Which of `entries` in path hold anything not owned by user (FOREIGN_ENTRIES)."""
    return ["sh", "-c", FOREIGN_ENTRIES, "sh", user, path, *entries]


# ---------------------------------------------------------------- changes --

def apt(*args: str) -> tuple[str, ...]:
    return (*APT, *args)


def apt_update() -> tuple[str, ...]:
    return apt("update")


def apt_install(packages: Sequence[str]) -> tuple[str, ...]:
    return apt("install", "-y", *packages)


def is_apt(argv: Sequence[str]) -> bool:
    return tuple(argv[:len(APT)]) == APT


def apt_installed(argv: Sequence[str]) -> list[str]:
    """The packages an apt_install argv installs ([] for any other command)."""
    if tuple(argv[:len(APT) + 1]) != (*APT, "install"):
        return []
    return [a for a in argv[len(APT) + 1:] if not a.startswith("-")]


def make_dir(path: str, mode: str = "0755") -> tuple[str, ...]:
    return ("install", "-m", mode, "-d", path)


def download(url: str, target: str) -> tuple[str, ...]:
    return ("curl", "-fsSL", url, "-o", target)


def place_readable(tmp: str, target: str) -> tuple[str, ...]:
    """Make tmp readable by all, then move it to target."""
    return ("sh", "-c", 'chmod a+r "$1" && mv -f "$1" "$2"', "sh", tmp, target)


def write_file_argv(path: str, text: str, mode: str = "644", keep_existing: bool = False) -> tuple[str, ...]:
    """Write a small root-owned file atomically (temp name in the same folder, then mv).
    keep_existing: leave a file already there untouched (checked again on the server)."""
    guard = '[ ! -e "$2" ] || exit 0; ' if keep_existing else ""
    script = (guard + 'mkdir -p "$(dirname "$2")" && umask 022 && printf "%s" "$1" > "$2.onevps-tmp" '
              '&& chmod "$3" "$2.onevps-tmp" && mv -f "$2.onevps-tmp" "$2"')
    return ("sh", "-c", script, "sh", text, path, mode)


def systemctl(*args: str) -> list[str]:
    return ["systemctl", *args]


def add_to_group(user: str, group: str = "docker") -> tuple[str, ...]:
    return ("usermod", "-aG", group, user)


def mkdir(path: str) -> list[str]:
    return ["mkdir", "-p", path]


def chown(user: str, *paths: str, recursive: bool = False) -> tuple[str, ...]:
    return ("chown", *(["-R"] if recursive else []), f"{user}:", *paths)


def make_swapfile(path: str, size_mib: int) -> tuple[str, ...]:
    """The swap file, private (umask 077) from its first byte; dd where fallocate cannot."""
    return ("sh", "-c", 'umask 077 && { fallocate -l "$2M" "$1" 2>/dev/null || '
                        'dd if=/dev/zero of="$1" bs=1M count="$2" status=none; }', "sh", path, str(size_mib))


def chmod(mode: str, path: str) -> tuple[str, ...]:
    return ("chmod", mode, path)


def mkswap(path: str) -> tuple[str, ...]:
    return ("mkswap", path)


def swapon(path: str) -> tuple[str, ...]:
    return ("swapon", path)


def add_swap_to_fstab(path: str) -> tuple[str, ...]:
    """One /etc/fstab line for the swap file, unless it has one."""
    return ("sh", "-c", 'grep -qs "^$1[[:space:]]" /etc/fstab || '
                        'printf "%s none swap sw 0 0\\n" "$1" >> /etc/fstab', "sh", path)


def temp_file(template: str) -> list[str]:
    return ["mktemp", template]


def remove(path: str) -> list[str]:
    return ["rm", "-f", path]


def install_plugin(upload: str, plugin_dir: str) -> tuple[str, ...]:
    return ("sh", "-c", INSTALL_PLUGIN, "sh", upload, plugin_dir)
