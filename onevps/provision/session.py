"""One `fab setup` provisioning run against a server: what it needs from the
server (Host), what it found and did (Report), and the primitives its steps
share (probe, privileged step, the sudo check)."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

from ..commands import host as cmd
from .plans import LOCAL_PLUGIN_DIRS, Distro, Memory, ProvisionError, Step, parse_size

HINT_RERUN = "fix the cause shown above, then run `fab setup` again (it picks up where it stopped)"


class Host(Protocol):
    """What provisioning needs from the server (server.Ctx through CtxHost; a fake in tests)."""

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


class Session:
    """The server, the settings of this run, and what earlier steps learned."""

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
        self.sudo_ok = False
        self.docker_sudo = False  # the docker group could not take effect in this run
        self.systemd = False
        self.copied = False  # the Compose plugin was copied from this machine

    @property
    def dry_run(self) -> bool:
        return self.host.dry_run

    def say(self, msg: str) -> None:
        self.host.say(msg)

    def probe(self, argv: Sequence[str], step: str):
        """A read-only command whose failure is an answer, not an error."""
        return self.host.run(list(argv), step, check=False, mutates=False)

    def priv(self, step: Step, hint: str | None = None, hide: bool = True):
        """Run a privileged step (sudo -n for a non-root user; checked once before the first)."""
        if not self.report.root and not self.sudo_ok:
            self.require_sudo()
        self.report.changed.append(step.name)
        return self.host.run(cmd.as_root(step.argv, self.report.root), step.name, hint=hint or HINT_RERUN, hide=hide)

    def require_sudo(self) -> None:
        user = self.report.user
        if not self.probe(cmd.sudo_works(), "check passwordless sudo").ok:
            raise ProvisionError(f"{user} cannot run sudo without a password on the server: fab setup needs it to "
                                 "install Docker and configure the server",
                                 f"add it to sudoers with NOPASSWD (e.g. `{user} ALL=(ALL) NOPASSWD:ALL` in "
                                 f"/etc/sudoers.d/{user}) or use VPS_USER=root")
        self.sudo_ok = True
