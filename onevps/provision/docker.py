"""`fab setup`'s Docker steps on the server: Docker Engine and Compose v2 there
(installed as DOCKER_INSTALL says, or this machine's Compose plugin copied),
log rotation, the engine enabled and running, the docker group, `docker info`
answering."""

from __future__ import annotations

import re
from pathlib import Path

from ..commands import host as cmd
from ..commands.docker import docker_info
from ..errors import OnevpsError
from ..server import docker_denied
from .plans import (ARCHES, COMPOSE_DOCS, COPY_PLUGIN, DAEMON_JSON, ENGINE_DOCS, PLUGIN_DIR, ProvisionError, Step,
                    compose_version_of, daemon_json_step, find_local_plugin, install_plan, missing_line,
                    plan_packages)
from .session import HINT_RERUN, Session

COPY_FIX = f"install Docker Compose v2 on the server: {COMPOSE_DOCS} or set DOCKER_INSTALL=docker-repo"


def docker_state(s: Session) -> tuple[str | None, str | None]:
    """The server's Docker and Compose v2 versions (None: missing)."""
    ver = s.probe(cmd.docker_client_version(), "docker --version")
    engine = None
    if ver.ok:
        m = re.search(r"version\s+([^\s,]+)", ver.stdout)
        engine = m.group(1) if m else ver.stdout.strip()
    comp = s.probe(cmd.compose_plugin_version(), "docker compose version") if engine else None
    compose = compose_version_of(comp.stdout) if comp is not None and comp.ok else None
    return engine, compose


def install(s: Session) -> tuple[bool, bool]:
    """Docker and Compose v2 present; returns (engine installed now, engine was running before)."""
    r = s.report
    engine, compose = docker_state(s)
    s.systemd = s.probe(cmd.has_systemd(), "is systemd running").ok
    running_before = bool(engine) and (
        s.probe(docker_info(), "docker info").ok
        or (s.systemd and s.probe(cmd.systemctl("is-active", "--quiet", "docker"), "is Docker running").ok))
    if engine:
        s.say(f"==> Docker: {engine} already installed")
    if compose:
        s.say(f"==> Compose v2: {compose} already installed")
    if engine and compose:
        r.docker_version, r.compose_version = engine, compose
        return False, running_before
    copy_planned = _run_install_plan(s, engine, compose)
    if s.dry_run:
        s.say("[dry-run] nothing was installed")
        r.docker_usable = False
        r.docker_version, r.compose_version = engine or "(to be installed)", compose or "(to be installed)"
        return not engine, running_before
    _check_installed(s, engine, compose, copy_planned)
    return not engine, running_before


def _run_install_plan(s: Session, engine: str | None, compose: str | None) -> bool:
    """Announce and run the install plan; True when it copied the Compose plugin."""
    r = s.report
    has_apt = s.probe(cmd.has_apt(), "is apt-get there").ok
    plan = install_plan(s.mode, r.distro, r.arch, engine=not engine, compose=not compose, has_apt=has_apt)
    packages = plan_packages(plan)
    s.say(f"==> installing {missing_line(not engine, not compose)} (DOCKER_INSTALL={s.mode}"
          + (f": apt packages {' '.join(packages)}" if packages else "") + ")")
    copy_planned = False
    for step in plan:
        s.say(f"  -> {step.name}")
        if step.kind == COPY_PLUGIN:
            copy_planned = True
            copy_plugin(s)
        else:
            s.priv(step, hide=not cmd.is_apt(step.argv))  # apt's own progress is shown
    return copy_planned


def _check_installed(s: Session, engine: str | None, compose: str | None, copy_planned: bool) -> None:
    """After the install: both there (the plugin copied if the distribution's had none), or one line."""
    engine2, compose2 = docker_state(s)
    if not engine2:
        raise ProvisionError("Docker Engine is still missing on the server after the install",
                             f"install it by hand ({ENGINE_DOCS}), then run `fab setup` again")
    if not compose2 and s.mode == "distro" and not copy_planned:
        s.say("  -> Compose v2 is still missing: copy this machine's Compose v2 plugin")
        copy_plugin(s)
        engine2, compose2 = docker_state(s)
    if not compose2:
        raise ProvisionError("Docker Compose v2 is still missing on the server after the install",
                             f"install Docker Compose v2 on the server: {COMPOSE_DOCS} or set "
                             "DOCKER_INSTALL=docker-repo")
    if not engine:
        s.say(f"==> Docker: {engine2} installed")
    if not compose and not s.copied:
        s.say(f"==> Compose v2: {compose2} installed")
    s.report.docker_version, s.report.compose_version = engine2, compose2


def copy_plugin(s: Session) -> None:
    """This machine's Compose v2 plugin, uploaded, tried on the server, installed in PLUGIN_DIR."""
    plugin = _local_plugin(s)
    target = f"{PLUGIN_DIR}/docker-compose"
    if s.dry_run:
        s.say(f"[dry-run] copy {plugin} ({plugin.stat().st_size:,} bytes) to {target} (mode 755)")
        return
    if not s.report.root and not s.sudo_ok:
        s.require_sudo()  # before 76 MB go over the wire
    tmp = s.host.run(cmd.temp_file("/tmp/onevps-compose.XXXXXX"), "make a temp file for the Compose plugin",
                     hint=HINT_RERUN).stdout.strip()
    installed = False
    try:
        version = _upload_plugin(s, plugin, tmp)
        s.priv(Step(f"install the Compose v2 plugin as {target} (mode 755)", cmd.install_plugin(tmp, PLUGIN_DIR)))
        installed = True  # INSTALL_PLUGIN removed the temp file
    finally:
        if not installed:
            s.host.run(cmd.remove(tmp), "remove the uploaded Compose plugin", check=False)
    s.say(f"==> Compose v2: installed by copying this machine's plugin ({version})")
    s.copied = True


def _local_plugin(s: Session) -> Path:
    """This machine's plugin, if it can run on the server; else one line."""
    r = s.report
    plugin = find_local_plugin(s.plugin_dirs, s.environ)
    if plugin is None:
        raise ProvisionError(f"{r.distro.label if r.distro else 'the server'} has no Compose v2 package and "
                             "this machine has no Compose v2 plugin to copy", COPY_FIX)
    local_arch = ARCHES.get(s.local_machine.strip())
    if local_arch != r.arch:
        raise ProvisionError(f"this machine's Compose v2 plugin is for {local_arch or s.local_machine}, "
                             f"the server is {r.arch}: it cannot be copied", COPY_FIX)
    return plugin


def _upload_plugin(s: Session, plugin: Path, tmp: str) -> str:
    """Upload the plugin to tmp and run it there; returns the version it prints."""
    s.say(f"  -> upload {plugin} ({plugin.stat().st_size:,} bytes) to {tmp}")
    s.host.put(str(plugin), tmp)
    s.host.run(cmd.chmod("700", tmp), "make the uploaded Compose plugin executable", hint=HINT_RERUN)
    res = s.host.run([tmp, "version"], "run the uploaded Compose plugin", check=False)
    version = compose_version_of(res.stdout) if res.ok else None
    if not version:
        raise ProvisionError(f"this machine's Compose plugin ({plugin}) does not run on the server "
                             f"(`{tmp} version`: {(res.stderr or res.stdout).strip()[:120] or 'no output'})",
                             COPY_FIX)
    return version


def log_rotation(s: Session) -> bool:
    """daemon.json only when absent (never overwritten); True when written now."""
    if s.probe(cmd.exists(DAEMON_JSON), f"is there a {DAEMON_JSON}").ok:
        s.say(f"==> log rotation: {DAEMON_JSON} exists, left as it is")
        return False
    if s.mode == "none":
        s.say(f"==> log rotation: the server has no {DAEMON_JSON}; DOCKER_INSTALL=none changes nothing "
              "(containers of the stack rotate their own logs: see the compose file's logging)")
        return False
    s.say(f"==> log rotation: writing {DAEMON_JSON} (json-file, max-size 10m, max-file 3)")
    s.priv(daemon_json_step())
    return True


def engine(s: Session, installed_now: bool, running_before: bool, wrote_daemon_json: bool) -> None:
    """Enabled at boot and running (systemd); polled until `docker info` answers."""
    if s.systemd and s.mode == "none":
        return  # only checked: wait_for_engine says it in one line when Docker does not answer
    if not s.systemd:
        if wrote_daemon_json and running_before:
            s.say("==> log rotation takes effect at Docker's next restart")
        return
    enabled = s.probe(cmd.systemctl("is-enabled", "--quiet", "docker"), "is Docker enabled at boot").ok
    active = s.probe(cmd.systemctl("is-active", "--quiet", "docker"), "is Docker running").ok
    if wrote_daemon_json and running_before:
        s.say("==> log rotation takes effect at Docker's next restart (Docker was already running; "
              "onevps does not restart it under running apps)")
    elif wrote_daemon_json and active:  # started by the package install just now
        s.say("==> Docker engine: restarting it so the log rotation applies (nothing runs on it yet)")
        s.priv(Step("restart Docker (log rotation)", tuple(cmd.systemctl("restart", "docker"))))
        active = True
    if enabled and active:
        s.say("==> Docker engine: enabled at boot and running")
    else:
        s.say("==> Docker engine: enabling at boot and starting (systemctl enable --now docker)")
        s.priv(Step("enable and start Docker", tuple(cmd.systemctl("enable", "--now", "docker"))),
               hint="read `journalctl -u docker` on the server, fix the cause, then run `fab setup` again")


def docker_group(s: Session) -> None:
    """A non-root user in the docker group, in effect for this run (a new login, else sudo for docker)."""
    r = s.report
    if r.root:
        return
    if "docker" in s.probe(cmd.user_groups(), "read the user's groups").stdout.split():
        s.say(f"==> docker group: {r.user} is in it")
        return
    if s.mode == "none":
        raise ProvisionError(f"VPS_USER {r.user} is not in the server's docker group (DOCKER_INSTALL=none changes "
                             "nothing)", f"add it (`sudo usermod -aG docker {r.user}`), or set "
                             "DOCKER_INSTALL=distro or docker-repo and run `fab setup` again")
    s.priv(Step(f"add {r.user} to the docker group", cmd.add_to_group(r.user)),
           hint=f"add it by hand (`sudo usermod -aG docker {r.user}`), then run `fab setup` again")
    if s.dry_run:
        r.docker_usable = False
        return
    s.say(f"==> {r.user} added to the docker group; a new login is needed for it to take effect: "
          "onevps reconnects now")
    if not _log_in_again(s):
        s.say("==> this run uses Docker through `sudo -n docker`; the next login has the docker group")
        s.host.sudo_docker()
        s.docker_sudo = True


def _log_in_again(s: Session) -> bool:
    """A new SSH login; True when it has the docker group."""
    try:
        s.host.reconnect()
        return "docker" in s.probe(cmd.user_groups(), "read the user's groups").stdout.split()
    except OnevpsError as exc:
        s.say(f"  -> reconnecting failed ({exc.what})")
        return False


def wait_for_engine(s: Session) -> None:
    """`docker info` answers (polled), or one line saying why not."""
    if s.dry_run:
        return
    info = docker_info()
    for _ in range(s.poll_tries):
        res = s.probe(cmd.as_root(info, root=not s.docker_sudo), "docker info")
        if res.ok:
            return
        if "permission denied" in (res.stderr + res.stdout).lower():
            raise docker_denied(s.report.user, "run `fab setup` again (it adds the user to the docker group), "
                                               "or log in again")
        s.poll()
    hint = ("start it with `systemctl start docker` and read `journalctl -u docker`" if s.systemd
            else "the server has no systemd: start dockerd yourself (e.g. from an init script)")
    raise ProvisionError(f"the Docker engine on the server does not answer `docker info` after "
                         f"{s.poll_tries} tries", hint)
