"""What `fab setup` decides about a server, as pure functions of what the server
reports (its /etc/os-release, `uname -m`, /proc/meminfo, ...): install plans as
data (named steps, each an argv list built by onevps.commands.host) that tests
assert without any server. The provisioner (onevps.provision.docker, .workdir)
walks the server through them."""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..commands import host as cmd
from ..errors import OnevpsError

DOCKER_REPO_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin")
KEYRINGS = "/etc/apt/keyrings"
KEYRING = f"{KEYRINGS}/docker.asc"
SOURCES = "/etc/apt/sources.list.d/docker.list"
DAEMON_JSON = "/etc/docker/daemon.json"
DAEMON_CONFIG = {"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}}
PLUGIN_DIR = "/usr/local/lib/docker/cli-plugins"
# Where the docker CLI looks for plugins (this machine's plugin is copied from the first hit).
LOCAL_PLUGIN_DIRS = ("~/.docker/cli-plugins", "/usr/local/lib/docker/cli-plugins",
                     "/usr/local/libexec/docker/cli-plugins", "/usr/lib/docker/cli-plugins",
                     "/usr/libexec/docker/cli-plugins")
SWAPFILE = "/swapfile"
COMPOSE_DOCS = "https://docs.docker.com/compose/install/linux/"
ENGINE_DOCS = "https://docs.docker.com/engine/install/"
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
MEMORY_WARN_MIB = 2048
OLD_DEBIAN = ("buster", "bullseye", "bookworm", "stretch", "jessie")
OLD_UBUNTU = ("xenial", "bionic", "focal", "impish", "hirsute", "groovy")
COPY_PLUGIN = "copy-plugin"


class ProvisionError(OnevpsError):
    """The server cannot be made ready as asked; nothing was changed by the refusal."""


# --------------------------------------------------------------- the facts --

@dataclass(frozen=True)
class Distro:
    id: str
    version_id: str = ""
    codename: str = ""
    id_like: tuple[str, ...] = ()
    pretty: str = ""

    @property
    def family(self) -> str | None:
        """"ubuntu" or "debian" (derivatives by ID_LIKE), None for anything else."""
        for name in ("ubuntu", "debian"):
            if self.id == name or name in self.id_like:
                return name
        return None

    @property
    def label(self) -> str:
        return self.pretty or " ".join(p for p in (self.id, self.version_id) if p) or "an unknown system"


def parse_os_release(text: str) -> Distro:
    """/etc/os-release (KEY=value lines, values optionally quoted) -> Distro."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        try:
            parts = shlex.split(value)
            fields[key] = parts[0] if len(parts) == 1 else " ".join(parts)
        except ValueError:
            fields[key] = value.strip("\"'")
    distro = Distro(id=fields.get("ID", "").lower(), version_id=fields.get("VERSION_ID", ""),
                    id_like=tuple(fields.get("ID_LIKE", "").lower().split()), pretty=fields.get("PRETTY_NAME", ""))
    codename = fields.get("VERSION_CODENAME", "")
    if distro.family == "ubuntu":  # derivatives (Mint, Pop!_OS) name Ubuntu's release here
        codename = fields.get("UBUNTU_CODENAME") or codename
    return Distro(distro.id, distro.version_id, codename, distro.id_like, distro.pretty)


def dpkg_arch(machine: str) -> str:
    """`uname -m` -> Debian's name (amd64, arm64); anything else is refused in one line."""
    name = machine.strip()
    if name in ARCHES:
        return ARCHES[name]
    raise ProvisionError(f"the server is {name or 'of an unknown architecture'}; onevps images are built for "
                         "amd64 and arm64", "use an amd64 (x86_64) or arm64 (aarch64) server")


def _version(text: str) -> tuple[int, ...]:
    nums = re.findall(r"\d+", text)
    return tuple(int(n) for n in nums[:2])


def compose_package(d: Distro) -> str | None:
    """The distribution's own Compose v2 package, None where it has none (Debian 12)."""
    if d.family == "ubuntu":
        if d.id == "ubuntu" and d.version_id:
            return "docker-compose-v2" if _version(d.version_id) >= (22, 4) else None
        return None if d.codename in OLD_UBUNTU else "docker-compose-v2"
    if d.family == "debian":
        if d.id == "debian" and d.version_id:
            return "docker-compose" if _version(d.version_id) >= (13,) else None
        return None if d.codename in OLD_DEBIAN else "docker-compose"  # testing/sid have no VERSION_ID
    return None


@dataclass(frozen=True)
class Memory:
    ram_mib: int
    swap_mib: int


def parse_meminfo(text: str) -> Memory:
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) // 1024  # kB -> MiB
    return Memory(values.get("MemTotal", 0), values.get("SwapTotal", 0))


def memory_warning(mem: Memory | None) -> str | None:
    """One line before the ML tier is built on a small server without swap."""
    if mem is None or mem.ram_mib <= 0 or mem.ram_mib >= MEMORY_WARN_MIB or mem.swap_mib > 0:
        return None
    return (f"warning: the server has {mem.ram_mib} MiB of RAM and no swap: building the ML tier (torch) may run "
            "out of memory; run `fab setup --swap 2G` or ship the tiers with `fab setup --ship`")


def parse_size(text: str) -> int:
    """--swap SIZE (e.g. 2G, 512M) -> MiB; a bad size is one line."""
    m = re.fullmatch(r"\s*(\d+)\s*([MmGg])(?:i?[Bb])?\s*", str(text))
    mib = int(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1) if m else 0
    if mib < 64:
        raise ProvisionError(f"--swap={text} is not a swap size of at least 64M", "e.g. --swap 2G or --swap 1024M")
    return mib


# ---------------------------------------------------------------- the plans --

@dataclass(frozen=True)
class Step:
    """One announced step: run argv (as root) or, for kind copy-plugin, copy this machine's plugin."""

    name: str
    argv: tuple[str, ...] = ()
    kind: str = "run"


def docker_repo_steps(d: Distro, arch: str, engine: bool = True) -> list[Step]:
    """Docker's documented apt-repository install (engine/install/debian.md, ubuntu.md)."""
    url = f"https://download.docker.com/linux/{d.family}"
    line = f"deb [arch={arch} signed-by={KEYRING}] {url} {d.codename} stable\n"
    packages = DOCKER_REPO_PACKAGES if engine else ("docker-compose-plugin",)
    return [
        Step("refresh the package lists", cmd.apt_update()),
        Step("install ca-certificates and curl", cmd.apt_install(["ca-certificates", "curl"])),
        Step(f"create {KEYRINGS}", cmd.make_dir(KEYRINGS)),
        Step(f"download Docker's apt key to {KEYRING}", cmd.download(f"{url}/gpg", f"{KEYRING}.onevps-tmp")),
        Step(f"place Docker's apt key {KEYRING} (readable by apt)", cmd.place_readable(f"{KEYRING}.onevps-tmp", KEYRING)),
        Step(f"write {SOURCES}: {line.strip()}", cmd.write_file_argv(SOURCES, line)),
        Step("refresh the package lists (with Docker's repository)", cmd.apt_update()),
        Step(f"install {' '.join(packages)}", cmd.apt_install(packages)),
    ]


def distro_steps(d: Distro, engine: bool = True, compose: bool = True) -> list[Step]:
    """docker.io plus the distribution's Compose v2 package; else copy this machine's plugin."""
    pkg = compose_package(d) if compose else None
    packages = (["docker.io"] if engine else []) + ([pkg] if pkg else [])
    steps = []
    if packages:
        steps += [Step("refresh the package lists", cmd.apt_update()),
                  Step(f"install {' '.join(packages)}", cmd.apt_install(packages))]
    if compose and not pkg:
        steps.append(Step(f"{d.label} has no Compose v2 package: copy this machine's Compose v2 plugin",
                          kind=COPY_PLUGIN))
    return steps


def missing_line(engine: bool, compose: bool) -> str:
    return " and ".join(n for n, gone in (("Docker Engine", engine), ("Docker Compose v2", compose)) if gone)


def install_plan(mode: str, d: Distro, arch: str, engine: bool, compose: bool, has_apt: bool = True) -> list[Step]:
    """The steps that install what is missing (engine and/or compose); [] when nothing is."""
    if not (engine or compose):
        return []
    what = missing_line(engine, compose)
    if mode == "none":
        raise ProvisionError(f"{what} {'is' if engine != compose else 'are'} missing on the server and "
                             "DOCKER_INSTALL=none (onevps installs nothing)",
                             f"install {what} yourself ({ENGINE_DOCS}), or set DOCKER_INSTALL=distro or docker-repo")
    if d.family is None or not has_apt:
        raise ProvisionError(f"the server runs {d.label}; fab setup installs Docker on Debian and Ubuntu only",
                             "install Docker Engine and Compose v2 yourself, then set DOCKER_INSTALL=none")
    if mode == "docker-repo":
        return docker_repo_steps(d, arch, engine=engine)
    if mode == "distro":
        return distro_steps(d, engine=engine, compose=compose)
    raise ProvisionError(f"DOCKER_INSTALL={mode!r} is not one of docker-repo, distro, none", "fix DOCKER_INSTALL")


def plan_packages(plan: Sequence[Step]) -> list[str]:
    """Every apt package a plan installs, in order."""
    return [package for step in plan for package in cmd.apt_installed(step.argv)]


def daemon_json_text() -> str:
    return json.dumps(DAEMON_CONFIG) + "\n"  # one line: readable in a dry run


def daemon_json_step() -> Step:
    return Step(f"write {DAEMON_JSON} (log rotation: json-file, 10m x 3)",
                cmd.write_file_argv(DAEMON_JSON, daemon_json_text(), keep_existing=True))


def listed(table: str, path: str) -> bool:
    """Is path the first field of a line (/proc/swaps, /etc/fstab)?"""
    return any(line.split()[:1] == [path] for line in table.splitlines() if not line.lstrip().startswith("#"))


def swap_steps(size_mib: int, exists: bool, active: bool, in_fstab: bool, path: str = SWAPFILE) -> list[Step]:
    """The swap file, idempotently: made (mode 600 from the start), formatted, on, in /etc/fstab once."""
    steps = []
    if not exists:
        steps += [
            Step(f"create the swap file {path} ({size_mib} MiB, mode 600)", cmd.make_swapfile(path, size_mib)),
            Step(f"keep {path} private", cmd.chmod("600", path)),
            Step(f"format {path} as swap", cmd.mkswap(path)),
        ]
    if not active:
        steps.append(Step(f"turn the swap file {path} on", cmd.swapon(path)))
    if not in_fstab:
        steps.append(Step(f"add {path} to /etc/fstab (on at boot)", cmd.add_swap_to_fstab(path)))
    return steps


def find_local_plugin(dirs: Iterable[str] = LOCAL_PLUGIN_DIRS, environ: Mapping[str, str] | None = None) -> Path | None:
    """This machine's Compose v2 CLI plugin, where the docker CLI would find it."""
    environ = os.environ if environ is None else environ
    ordered = list(dirs)
    if environ.get("DOCKER_CONFIG"):
        ordered.insert(0, f"{environ['DOCKER_CONFIG']}/cli-plugins")
    for folder in ordered:
        path = Path(os.path.expanduser(folder)) / "docker-compose"
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
    return None


def compose_version_of(text: str) -> str | None:
    """"Docker Compose version v2.40.3" -> "v2.40.3" (None unless it is v2 or later)."""
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)\S*", text)
    if not m or int(m.group(1)) < 2:
        return None
    return m.group(0) if m.group(0).startswith("v") else "v" + m.group(0)
