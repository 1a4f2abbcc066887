"""`fab setup`, first part: a bare Debian/Ubuntu server becomes a ready Docker host.

The decisions are pure functions of what the server reports (its
/etc/os-release, `uname -m`, `id -u`, ...): they return install plans as data
(named steps, each an argv list) that tests assert without any server.
`provision()` then walks the server through them, one announced line per step,
idempotently: on a ready server it sends no command that changes anything.

DOCKER_INSTALL chooses how a missing Docker gets installed:
  docker-repo  Docker's apt repository (docker-ce, ..., docker-compose-plugin),
               as Docker's Debian/Ubuntu install pages do it;
  distro       the distribution's docker.io plus its Compose v2 package where one
               exists; Debian 12 has none: this machine's Compose v2 plugin is
               copied over SSH instead (same architecture only);
  none         never install; only check, and name what is missing.
A non-root VPS_USER runs every privileged command through `sudo -n`, is added
to the docker group, and onevps logs in again so the group takes effect.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from . import remote
from .errors import CommandFailed, OnevpsError
from .runner import Runner

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
# A fresh cloud image often runs unattended-upgrades at first boot: wait for its dpkg lock.
APT = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-o", "DPkg::Lock::Timeout=300")
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


def as_root(argv: Sequence[str], root: bool) -> list[str]:
    """A privileged command: as is for root, through `sudo -n` (never asks a password) otherwise."""
    return list(argv) if root else ["sudo", "-n", *argv]


def write_file_argv(path: str, text: str, mode: str = "644", keep_existing: bool = False) -> tuple[str, ...]:
    """Write a small root-owned file atomically (temp name in the same folder, then mv).
    keep_existing: leave a file already there untouched (checked again on the server)."""
    guard = '[ ! -e "$2" ] || exit 0; ' if keep_existing else ""
    script = (guard + 'mkdir -p "$(dirname "$2")" && umask 022 && printf "%s" "$1" > "$2.onevps-tmp" '
              '&& chmod "$3" "$2.onevps-tmp" && mv -f "$2.onevps-tmp" "$2"')
    return ("sh", "-c", script, "sh", text, path, mode)


def docker_repo_steps(d: Distro, arch: str, engine: bool = True) -> list[Step]:
    """Docker's documented apt-repository install (engine/install/debian.md, ubuntu.md)."""
    url = f"https://download.docker.com/linux/{d.family}"
    line = f"deb [arch={arch} signed-by={KEYRING}] {url} {d.codename} stable\n"
    packages = DOCKER_REPO_PACKAGES if engine else ("docker-compose-plugin",)
    return [
        Step("refresh the package lists", (*APT, "update")),
        Step("install ca-certificates and curl", (*APT, "install", "-y", "ca-certificates", "curl")),
        Step(f"create {KEYRINGS}", ("install", "-m", "0755", "-d", KEYRINGS)),
        Step(f"download Docker's apt key to {KEYRING}", ("curl", "-fsSL", f"{url}/gpg", "-o", f"{KEYRING}.onevps-tmp")),
        Step(f"place Docker's apt key {KEYRING} (readable by apt)",
             ("sh", "-c", 'chmod a+r "$1" && mv -f "$1" "$2"', "sh", f"{KEYRING}.onevps-tmp", KEYRING)),
        Step(f"write {SOURCES}: {line.strip()}", write_file_argv(SOURCES, line)),
        Step("refresh the package lists (with Docker's repository)", (*APT, "update")),
        Step(f"install {' '.join(packages)}", (*APT, "install", "-y", *packages)),
    ]


def distro_steps(d: Distro, engine: bool = True, compose: bool = True) -> list[Step]:
    """docker.io plus the distribution's Compose v2 package; else copy this machine's plugin."""
    pkg = compose_package(d) if compose else None
    packages = (["docker.io"] if engine else []) + ([pkg] if pkg else [])
    steps = []
    if packages:
        steps += [Step("refresh the package lists", (*APT, "update")),
                  Step(f"install {' '.join(packages)}", (*APT, "install", "-y", *packages))]
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
    out: list[str] = []
    for step in plan:
        if tuple(step.argv[:len(APT) + 1]) == (*APT, "install"):
            out += [a for a in step.argv[len(APT) + 1:] if not a.startswith("-")]
    return out


def daemon_json_text() -> str:
    return json.dumps(DAEMON_CONFIG) + "\n"  # one line: readable in a dry run


def daemon_json_step() -> Step:
    return Step(f"write {DAEMON_JSON} (log rotation: json-file, 10m x 3)",
                write_file_argv(DAEMON_JSON, daemon_json_text(), keep_existing=True))


def listed(table: str, path: str) -> bool:
    """Is path the first field of a line (/proc/swaps, /etc/fstab)?"""
    return any(line.split()[:1] == [path] for line in table.splitlines() if not line.lstrip().startswith("#"))


def swap_steps(size_mib: int, exists: bool, active: bool, in_fstab: bool, path: str = SWAPFILE) -> list[Step]:
    """The swap file, idempotently: made (mode 600 from the start), formatted, on, in /etc/fstab once."""
    steps = []
    if not exists:
        steps += [
            Step(f"create the swap file {path} ({size_mib} MiB, mode 600)",
                 ("sh", "-c", 'umask 077 && { fallocate -l "$2M" "$1" 2>/dev/null || '
                              'dd if=/dev/zero of="$1" bs=1M count="$2" status=none; }', "sh", path, str(size_mib))),
            Step(f"keep {path} private", ("chmod", "600", path)),
            Step(f"format {path} as swap", ("mkswap", path)),
        ]
    if not active:
        steps.append(Step(f"turn the swap file {path} on", ("swapon", path)))
    if not in_fstab:
        steps.append(Step(f"add {path} to /etc/fstab (on at boot)",
                          ("sh", "-c", 'grep -qs "^$1[[:space:]]" /etc/fstab || '
                                       'printf "%s none swap sw 0 0\\n" "$1" >> /etc/fstab', "sh", path)))
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


INSTALL_PLUGIN = ('mkdir -p "$2" && install -m 755 "$1" "$2/.docker-compose.onevps-tmp" '
                  '&& mv -f "$2/.docker-compose.onevps-tmp" "$2/docker-compose" && rm -f "$1"')


# ------------------------------------------------------------ on the server --

class Host(Protocol):
    """What provisioning needs from the server (deploy.Ctx through CtxHost; a fake in tests)."""

    dry_run: bool

    def run(self, argv: Sequence[str], step: str, *, hide: bool = True, check: bool = True,
            hint: str | None = None, mutates: bool = True): ...

    def say(self, message: str) -> None: ...

    def put(self, local: str, remote: str) -> None: ...

    def reconnect(self) -> None: ...  # a new SSH login; raises OnevpsError when impossible

    def sudo_docker(self) -> None: ...  # from now on run docker through `sudo -n`


@dataclass
class Report:
    """What provisioning found and did (setup reads memory; tests read the rest)."""

    distro: Distro | None = None
    arch: str = ""
    root: bool = True
    user: str = ""
    memory: Memory | None = None
    changed: list[str] = field(default_factory=list)
    docker_version: str = ""
    compose_version: str = ""
    docker_usable: bool = True  # False in a dry run that would first install Docker or change groups


# What onevps keeps in VPS_PATH (the only things `fab setup` hands to a non-root VPS_USER).
MANAGED = (".onevps", "compose", "nginx", "dockerfiles", "apps", ".env", "backups")
# Prints each managed entry ($3...) of VPS_PATH ($2) that holds anything not owned by $1.
FOREIGN_ENTRIES = ('u=$1; cd "$2" || exit 0; shift 2; for p in "$@"; do '
                   '[ -e "$p" ] && [ -n "$(find "$p" ! -user "$u" -print -quit 2>/dev/null)" ] && printf "%s\\n" "$p"; '
                   'done; exit 0')

HINT_RERUN = "fix the cause shown above, then run `fab setup` again (it picks up where it stopped)"


class Provisioner:
    def __init__(self, host: Host, mode: str, vps_path: str, swap: str | None = None,
                 local_machine: str | None = None, plugin_dirs: Sequence[str] = LOCAL_PLUGIN_DIRS,
                 environ: Mapping[str, str] | None = None, poll: Callable[[], None] | None = None,
                 poll_tries: int = 30):
        self.host, self.mode, self.vps_path = host, mode, vps_path
        self.swap_mib = parse_size(swap) if swap else None  # a bad size is refused before anything runs
        self.local_machine = local_machine if local_machine is not None else platform.machine()
        self.plugin_dirs, self.environ = plugin_dirs, environ
        self.poll = poll or (lambda: time.sleep(1))
        self.poll_tries = poll_tries
        self.report = Report()
        self._sudo_ok = False
        self._docker_sudo = False  # the docker group could not take effect in this run
        self._systemd = False
        self._copied = False

    # ---------------------------------------------------------- primitives --
    def say(self, msg: str) -> None:
        self.host.say(msg)

    def probe(self, argv: Sequence[str], step: str):
        return self.host.run(list(argv), step, check=False, mutates=False)

    def priv(self, step: Step, hint: str | None = None, hide: bool = True):
        """Run a privileged step (sudo -n for a non-root user; checked once before the first)."""
        if not self.report.root and not self._sudo_ok:
            self.require_sudo()
        self.report.changed.append(step.name)
        return self.host.run(as_root(step.argv, self.report.root), step.name, hint=hint or HINT_RERUN, hide=hide)

    def require_sudo(self) -> None:
        user = self.report.user
        if not self.probe(["sudo", "-n", "true"], "check passwordless sudo").ok:
            raise ProvisionError(f"{user} cannot run sudo without a password on the server: fab setup needs it to "
                                 "install Docker and configure the server",
                                 f"add it to sudoers with NOPASSWD (e.g. `{user} ALL=(ALL) NOPASSWD:ALL` in "
                                 f"/etc/sudoers.d/{user}) or use VPS_USER=root")
        self._sudo_ok = True

    # --------------------------------------------------------------- steps --
    def facts(self) -> None:
        r = self.report
        r.arch = dpkg_arch(self.probe(["uname", "-m"], "read the server's architecture").stdout)
        os_release = self.probe(["cat", "/etc/os-release"], "read /etc/os-release")
        r.distro = parse_os_release(os_release.stdout if os_release.ok else "")
        uid = self.probe(["id", "-u"], "read the user's id").stdout.strip()
        r.root = uid == "0"
        r.user = self.probe(["id", "-un"], "read the user's name").stdout.strip() or "the user"
        mem = self.probe(["cat", "/proc/meminfo"], "read the server's memory")
        r.memory = parse_meminfo(mem.stdout) if mem.ok else None
        self.say(f"==> server: {r.distro.label}, {r.arch}, user {r.user}{'' if r.root else ' (through sudo -n)'}"
                 + (f", {r.memory.ram_mib} MiB RAM, {r.memory.swap_mib} MiB swap" if r.memory else ""))

    def docker_state(self) -> tuple[str | None, str | None]:
        ver = self.probe(["docker", "--version"], "docker --version")
        engine = None
        if ver.ok:
            m = re.search(r"version\s+([^\s,]+)", ver.stdout)
            engine = m.group(1) if m else ver.stdout.strip()
        comp = self.probe(["docker", "compose", "version"], "docker compose version") if engine else None
        compose = compose_version_of(comp.stdout) if comp is not None and comp.ok else None
        return engine, compose

    def install(self) -> tuple[bool, bool]:
        """Docker and Compose v2 present; returns (engine installed now, engine was running before)."""
        r = self.report
        engine, compose = self.docker_state()
        systemd = self.probe(["test", "-d", "/run/systemd/system"], "is systemd running").ok
        running_before = bool(engine) and (
            self.probe(["docker", "info", "--format", "{{.ServerVersion}}"], "docker info").ok
            or (systemd and self.probe(["systemctl", "is-active", "--quiet", "docker"], "is Docker running").ok))
        self._systemd = systemd
        if engine:
            self.say(f"==> Docker: {engine} already installed")
        if compose:
            self.say(f"==> Compose v2: {compose} already installed")
        if engine and compose:
            r.docker_version, r.compose_version = engine, compose
            return False, running_before
        has_apt = self.probe(["sh", "-c", "command -v apt-get"], "is apt-get there").ok
        plan = install_plan(self.mode, r.distro, r.arch, engine=not engine, compose=not compose, has_apt=has_apt)
        packages = plan_packages(plan)
        self.say(f"==> installing {missing_line(not engine, not compose)} (DOCKER_INSTALL={self.mode}"
                 + (f": apt packages {' '.join(packages)}" if packages else "") + ")")
        copy_planned = False
        for step in plan:
            self.say(f"  -> {step.name}")
            if step.kind == COPY_PLUGIN:
                copy_planned = True
                self.copy_plugin()
            else:
                self.priv(step, hide=tuple(step.argv[:len(APT)]) != APT)  # apt's own progress is shown
        if self.host.dry_run:
            self.say("[dry-run] nothing was installed")
            r.docker_usable = False
            r.docker_version, r.compose_version = engine or "(to be installed)", compose or "(to be installed)"
            return not engine, running_before
        engine2, compose2 = self.docker_state()
        if not engine2:
            raise ProvisionError("Docker Engine is still missing on the server after the install",
                                 f"install it by hand ({ENGINE_DOCS}), then run `fab setup` again")
        if not compose2 and self.mode == "distro" and not copy_planned:
            self.say("  -> Compose v2 is still missing: copy this machine's Compose v2 plugin")
            self.copy_plugin()
            engine2, compose2 = self.docker_state()
        if not compose2:
            raise ProvisionError("Docker Compose v2 is still missing on the server after the install",
                                 f"install Docker Compose v2 on the server: {COMPOSE_DOCS} or set "
                                 "DOCKER_INSTALL=docker-repo")
        if not engine:
            self.say(f"==> Docker: {engine2} installed")
        if not compose and not self._copied:
            self.say(f"==> Compose v2: {compose2} installed")
        r.docker_version, r.compose_version = engine2, compose2
        return not engine, running_before

    def copy_plugin(self) -> None:
        r = self.report
        fix = f"install Docker Compose v2 on the server: {COMPOSE_DOCS} or set DOCKER_INSTALL=docker-repo"
        plugin = find_local_plugin(self.plugin_dirs, self.environ)
        if plugin is None:
            raise ProvisionError(f"{r.distro.label if r.distro else 'the server'} has no Compose v2 package and "
                                 "this machine has no Compose v2 plugin to copy", fix)
        local_arch = ARCHES.get(self.local_machine.strip())
        if local_arch != r.arch:
            raise ProvisionError(f"this machine's Compose v2 plugin is for {local_arch or self.local_machine}, "
                                 f"the server is {r.arch}: it cannot be copied", fix)
        target = f"{PLUGIN_DIR}/docker-compose"
        if self.host.dry_run:
            self.say(f"[dry-run] copy {plugin} ({plugin.stat().st_size:,} bytes) to {target} (mode 755)")
            return
        if not r.root and not self._sudo_ok:
            self.require_sudo()  # before 76 MB go over the wire
        tmp = self.host.run(["mktemp", "/tmp/onevps-compose.XXXXXX"], "make a temp file for the Compose plugin",
                            hint=HINT_RERUN).stdout.strip()
        installed = False
        try:
            self.say(f"  -> upload {plugin} ({plugin.stat().st_size:,} bytes) to {tmp}")
            self.host.put(str(plugin), tmp)
            self.host.run(["chmod", "700", tmp], "make the uploaded Compose plugin executable", hint=HINT_RERUN)
            res = self.host.run([tmp, "version"], "run the uploaded Compose plugin", check=False)
            version = compose_version_of(res.stdout) if res.ok else None
            if not version:
                raise ProvisionError(f"this machine's Compose plugin ({plugin}) does not run on the server "
                                     f"(`{tmp} version`: {(res.stderr or res.stdout).strip()[:120] or 'no output'})",
                                     fix)
            self.priv(Step(f"install the Compose v2 plugin as {target} (mode 755)",
                           ("sh", "-c", INSTALL_PLUGIN, "sh", tmp, PLUGIN_DIR)))
            installed = True  # INSTALL_PLUGIN removed the temp file
        finally:
            if not installed:
                self.host.run(["rm", "-f", tmp], "remove the uploaded Compose plugin", check=False)
        self.say(f"==> Compose v2: installed by copying this machine's plugin ({version})")
        self._copied = True

    def log_rotation(self) -> bool:
        """daemon.json only when absent (never overwritten); True when written now."""
        if self.probe(["test", "-e", DAEMON_JSON], f"is there a {DAEMON_JSON}").ok:
            self.say(f"==> log rotation: {DAEMON_JSON} exists, left as it is")
            return False
        if self.mode == "none":
            self.say(f"==> log rotation: the server has no {DAEMON_JSON}; DOCKER_INSTALL=none changes nothing "
                     "(containers of the stack rotate their own logs: see the compose file's logging)")
            return False
        self.say(f"==> log rotation: writing {DAEMON_JSON} (json-file, max-size 10m, max-file 3)")
        self.priv(daemon_json_step())
        return True

    def engine(self, installed_now: bool, running_before: bool, wrote_daemon_json: bool) -> None:
        """Enabled at boot and running (systemd); polled until `docker info` answers."""
        systemd = self._systemd
        if systemd and self.mode == "none":
            return  # only checked: wait_for_engine says it in one line when Docker does not answer
        if systemd:
            enabled = self.probe(["systemctl", "is-enabled", "--quiet", "docker"], "is Docker enabled at boot").ok
            active = self.probe(["systemctl", "is-active", "--quiet", "docker"], "is Docker running").ok
            if wrote_daemon_json and running_before:
                self.say("==> log rotation takes effect at Docker's next restart (Docker was already running; "
                         "onevps does not restart it under running apps)")
            elif wrote_daemon_json and active:  # started by the package install just now
                self.say("==> Docker engine: restarting it so the log rotation applies (nothing runs on it yet)")
                self.priv(Step("restart Docker (log rotation)", ("systemctl", "restart", "docker")))
                active = True
            if enabled and active:
                self.say("==> Docker engine: enabled at boot and running")
            else:
                self.say("==> Docker engine: enabling at boot and starting (systemctl enable --now docker)")
                self.priv(Step("enable and start Docker", ("systemctl", "enable", "--now", "docker")),
                          hint="read `journalctl -u docker` on the server, fix the cause, then run `fab setup` again")
        elif wrote_daemon_json and running_before:
            self.say("==> log rotation takes effect at Docker's next restart")

    def docker_group(self) -> None:
        r = self.report
        if r.root:
            return
        groups = self.probe(["id", "-nG"], "read the user's groups").stdout.split()
        if "docker" in groups:
            self.say(f"==> docker group: {r.user} is in it")
            return
        if self.mode == "none":
            raise ProvisionError(f"VPS_USER {r.user} is not in the server's docker group (DOCKER_INSTALL=none changes "
                                 "nothing)", f"add it (`sudo usermod -aG docker {r.user}`), or set "
                                 "DOCKER_INSTALL=distro or docker-repo and run `fab setup` again")
        self.priv(Step(f"add {r.user} to the docker group", ("usermod", "-aG", "docker", r.user)),
                  hint=f"add it by hand (`sudo usermod -aG docker {r.user}`), then run `fab setup` again")
        if self.host.dry_run:
            r.docker_usable = False
            return
        self.say(f"==> {r.user} added to the docker group; a new login is needed for it to take effect: "
                 "onevps reconnects now")
        try:
            self.host.reconnect()
            ok = "docker" in self.probe(["id", "-nG"], "read the user's groups").stdout.split()
        except OnevpsError as exc:
            self.say(f"  -> reconnecting failed ({exc.what})")
            ok = False
        if not ok:
            self.say("==> this run uses Docker through `sudo -n docker`; the next login has the docker group")
            self.host.sudo_docker()
            self._docker_sudo = True

    def wait_for_engine(self) -> None:
        if self.host.dry_run:
            return
        info = ["docker", "info", "--format", "{{.ServerVersion}}"]
        for _ in range(self.poll_tries):
            res = self.probe(["sudo", "-n", *info] if self._docker_sudo else info, "docker info")
            if res.ok:
                return
            if "permission denied" in (res.stderr + res.stdout).lower():
                raise ProvisionError(f"VPS_USER {self.report.user} may not use Docker (permission denied on "
                                     "/var/run/docker.sock)", "run `fab setup` again (it adds the user to the "
                                     "docker group), or log in again")
            self.poll()
        hint = ("start it with `systemctl start docker` and read `journalctl -u docker`" if self._systemd
                else "the server has no systemd: start dockerd yourself (e.g. from an init script)")
        raise ProvisionError(f"the Docker engine on the server does not answer `docker info` after "
                             f"{self.poll_tries} tries", hint)

    def workdir(self) -> None:
        r, path = self.report, self.vps_path
        if self.probe(["test", "-d", path], f"is there a {path}").ok:
            if r.root:
                self.say(f"==> VPS_PATH: {path} exists")
                return
            # A non-root user needs VPS_PATH and what onevps keeps in it (lock, journal, the
            # files an earlier `fab setup` as root sent), never anything else in it.
            top = [] if self.probe(["test", "-O", path], f"is {path} {r.user}'s").ok else [path]
            foreign = self.probe(["sh", "-c", FOREIGN_ENTRIES, "sh", r.user, path, *MANAGED],
                                 f"is what onevps keeps in {path} {r.user}'s").stdout.split()
            if not top and not foreign:
                self.say(f"==> VPS_PATH: {path} exists")
                return
            if top:
                self.priv(Step(f"give {path} to {r.user}", ("chown", f"{r.user}:", path)))
            if foreign:
                self.priv(Step(f"give {', '.join(foreign)} in {path} to {r.user}",
                               ("chown", "-R", f"{r.user}:", *[f"{path}/{name}" for name in foreign])))
            self.say(f"==> VPS_PATH: {path} {'would be' if self.host.dry_run else 'is now'} {r.user}'s"
                     + (f" ({', '.join(foreign)} too)" if foreign else ""))
            return
        made = False
        if not r.root and self.probe(["sh", "-c", 'test -w "$(dirname "$1")"', "sh", path],
                                     f"may {r.user} create {path}").ok:
            made = self.host.run(["mkdir", "-p", path], f"create {path}", check=False).ok
            if made:
                self.report.changed.append(f"create {path}")
        if not made:
            self.priv(Step(f"create {path}", ("mkdir", "-p", path)))
            if not r.root:
                self.priv(Step(f"give {path} to {r.user}", ("chown", f"{r.user}:", path)))
        self.say(f"==> VPS_PATH: {path} {'would be ' if self.host.dry_run else ''}created"
                 + ("" if r.root else f" (owned by {r.user})"))

    def swap(self) -> None:
        if self.swap_mib is None:
            return
        swaps = self.probe(["cat", "/proc/swaps"], "read the active swap").stdout
        fstab = self.probe(["cat", "/etc/fstab"], "read /etc/fstab").stdout
        exists = self.probe(["test", "-e", SWAPFILE], f"is there a {SWAPFILE}").ok
        steps = swap_steps(self.swap_mib, exists, listed(swaps, SWAPFILE), listed(fstab, SWAPFILE))
        if not steps:
            self.say(f"==> swap: {SWAPFILE} is on and in /etc/fstab")
            return
        if exists:
            self.say(f"==> swap: {SWAPFILE} exists (its size is kept)")
        for step in steps:
            self.say(f"==> swap: {step.name}")
            self.priv(step, hint=f"remove a half-made {SWAPFILE} by hand if needed, then run `fab setup --swap` again")
        if self.report.memory:
            self.report.memory = Memory(self.report.memory.ram_mib, self.report.memory.swap_mib or self.swap_mib)

    def run(self) -> Report:
        self.facts()
        installed_now, running_before = self.install()
        wrote = self.log_rotation()
        self.engine(installed_now, running_before, wrote)
        self.docker_group()
        self.wait_for_engine()
        self.workdir()
        self.swap()
        if not self.report.changed:
            self.say("==> Docker host: ready, nothing changed")
        return self.report


def provision(host: Host, mode: str, vps_path: str, swap: str | None = None, **kw) -> Report:
    """Make the server a ready Docker host (see the module docstring)."""
    return Provisioner(host, mode, vps_path, swap=swap, **kw).run()


# ---------------------------------------------------- deploy.Ctx as a Host --

class CtxHost:
    """A deploy.Ctx seen as a Host: commands without the tier-tag env prefix, SFTP
    uploads, reconnecting (a new login gets new groups), sudo for docker."""

    def __init__(self, c) -> None:
        self.c = c
        self.runner = remote.RemoteRunner(c.conn, env={}, dry_run=c.run.dry_run, out=c.run.out)
        self.dry_run = c.run.dry_run

    def run(self, argv, step, *, hide=True, check=True, hint=None, mutates=True):
        return self.runner.run(argv, step, hide=hide, check=check, hint=hint, mutates=mutates)

    def say(self, message: str) -> None:
        self.c.say(message)

    def put(self, local: str, remote_path: str) -> None:
        from paramiko.ssh_exception import SSHException

        try:
            self.c.conn.put(local, remote_path)
        except (OSError, SSHException) as exc:
            raise CommandFailed(f"upload of {local} to {remote_path} failed: {exc}",
                                "check free space in /tmp on the server and that sshd offers SFTP") from None

    def reconnect(self) -> None:
        old = self.c.conn
        server = remote.Server(old.host, old.user, int(old.port or 22), self.c.local.vps_ssh_key)
        new = remote.connect(server)  # opened before the old one closes: a failure keeps the old one
        try:
            old.close()
        except Exception:  # noqa: BLE001 - a dead old connection changes nothing
            pass
        self.c.conn = new
        self.c.run.ctx = new
        self.runner.ctx = new

    def sudo_docker(self) -> None:
        old = self.c.run
        self.c.run = SudoDockerRunner(old.ctx, env=old.env, dry_run=old.dry_run, echo=old.echo, out=old.out)


class SudoDockerRunner(remote.RemoteRunner):
    """A RemoteRunner that runs `docker ...` as `sudo -n env K=V docker ...` (sudo drops
    the environment, so the variables go after it). For a user whose new docker group
    membership cannot take effect in this run."""

    docker_prefix = ("sudo", "-n")  # read by onevps.ship for its streamed `docker load`

    def run(self, argv, step, *, hide=True, check=True, hint=None, env=None, mutates=True):
        argv = [str(a) for a in argv]
        if not argv or argv[0] != "docker":
            return super().run(argv, step, hide=hide, check=check, hint=hint, env=env, mutates=mutates)
        merged = {**self.env, **(env or {})}
        pairs = [f"{k}={v}" for k, v in sorted(merged.items())]
        wrapped = ["sudo", "-n", *(["env", *pairs] if pairs else []), *argv]
        saved, self.env = self.env, {}
        try:
            return Runner.run(self, wrapped, step, hide=hide, check=check, hint=hint, env={}, mutates=mutates)
        finally:
            self.env = saved
