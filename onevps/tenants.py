"""Keep every app's Redis user and ChromaDB token in step with the app registry.

onevps.isolation says what each app may reach; this runs it in the running
services, after they are up, on every `inv up`, `fab deploy`, `fab setup` and
swarm-deploy (an app added with `inv new-app` gets its user on its first
deploy, a removed app loses it on the next one):

- Redis: `ACL SETUSER` for each app, `ACL DELUSER` for users no app has,
  `ACL SAVE` into the ACL file on the redis-data volume. Hashes only; no
  restart, so the other apps' connections stay.
- chroma-auth: its two map files (which token is which app, and what each app
  may reach) on its chroma-auth-apps volume, `nginx -t`, a graceful reload
  (only when they changed), then each app's tenant and database in ChromaDB.

Every secret (the apps' rules hold hashes; the token file holds tokens) goes
to the command on its standard input: here through the pipe, on a server in a
file of mode 600 that the command reads and that is removed after it.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Callable, Optional, Sequence

from . import commands, isolation, remote
from .commands import docker_cmd, shell
from .config import Settings
from .errors import OnevpsError, register_secrets
from .project import Project
from .registry import Registry
from .runner import Result, Runner

# The services a sync runs in (they must be healthy first).
SERVICES = ("redis", "chroma-auth")

# (service, argv, step, stdin) -> the command's result, run in that service's container
Exec = Callable[[str, Sequence[str], str, Optional[str]], Result]

HINT_RECREATE = ("if redis and chroma-auth predate per-app users, `inv up` here or `fab setup` on a server "
                 "recreates them with their new entries; otherwise their logs say why "
                 "(`inv logs --app redis`, `--app chroma-auth`)")


def derived(settings: Settings, names: Sequence[str]) -> dict[str, str]:
    """The apps' compose variables (isolation.derived_env), registered as secrets; {} while a
    master secret is missing or the placeholder (the tasks that start containers refuse that)."""
    try:
        values = isolation.derived_env(names, settings.redis_password, settings.chroma_token)
    except isolation.IsolationError:
        return {}
    register_secrets(values.values())
    return values


def sync(exec_: Exec, say: Callable[[str], None], settings: Settings, reg: Registry,
         dry_run: bool = False) -> None:
    """Redis users and chroma-auth tokens for exactly the registry's apps (dry_run: the
    commands are shown, their answers not checked)."""
    names = reg.names()
    legacy = reg.legacy()
    try:
        _sync(exec_, names, settings, legacy, say, dry_run)
    except isolation.IsolationError as exc:
        raise OnevpsError(f"cannot give the apps their own Redis users and ChromaDB tokens: {exc}",
                          "fix the compose file's labels or .env, then run the task again") from None


def _sync(exec_: Exec, names: list[str], settings: Settings, legacy: isolation.Legacy,
          say: Callable[[str], None], dry_run: bool) -> None:
    present = exec_("redis", isolation.redis_users_argv(), "list the Redis users", None)
    commands_text = isolation.redis_sync_commands(names, settings.redis_password, present.stdout.split(), legacy)
    answers = exec_("redis", isolation.redis_cli_argv(), "set the apps' Redis users", commands_text)
    bad = [] if dry_run else isolation.redis_sync_failures(commands_text, answers.stdout + answers.stderr)
    if bad:
        hint = HINT_RECREATE if any("ACL file" in b for b in bad) else "read Redis's answer above; `inv logs --app redis`"
        raise OnevpsError(f"Redis refused the apps' users: {bad[0]}", hint)
    files = ((isolation.CHROMA_TOKENS_FILE, isolation.render_chroma_tokens(names, settings.chroma_token)),
             (isolation.CHROMA_PATHS_FILE, isolation.render_chroma_paths(names, legacy)))
    for name, text in files:
        exec_("chroma-auth", isolation.chroma_write_argv(name), f"write chroma-auth's {name}", text)
    applied = exec_("chroma-auth", isolation.chroma_apply_argv(), "load chroma-auth's app tokens", None)
    exec_("chroma-auth", isolation.chroma_provision_argv(names, legacy), "create the apps' ChromaDB tenants", None)
    state = "reloaded" if "reloaded" in applied.stdout else "unchanged"
    say(f"==> {len(names)} app(s), each with its own Redis user and ChromaDB tenant "
        f"(chroma-auth's tokens {state})")


# ------------------------------------------------------------ where it runs --

def local_compose(runner: Runner, project: Project, settings: Settings) -> Exec:
    """In the compose project here (`docker compose exec -T`, stdin through the pipe)."""
    def exec_(service: str, argv: Sequence[str], step: str, stdin: str | None) -> Result:
        return runner.run(commands.exec_in(project, settings, service, argv), step, stdin=stdin,
                          hint=HINT_RECREATE)
    return exec_


# VPS_PATH/.onevps/tenants.stamp: what the last sync on the server set, and in which redis and
# chroma-auth containers (their IDs and start times). A deploy that finds the same skips the
# ~15 commands of a sync; a new app, a changed secret, a recreated or restarted service do not.
STAMP = "tenants.stamp"


def fingerprint(names: Sequence[str], settings: Settings, legacy: isolation.Legacy) -> str:
    """A digest of everything sync sets for these apps (IsolationError when it cannot be made)."""
    digest = hashlib.sha256()
    for part in (isolation.redis_sync_commands(names, settings.redis_password, present=[], legacy=legacy),
                 isolation.render_chroma_tokens(names, settings.chroma_token),
                 isolation.render_chroma_paths(names, legacy), " ".join(isolation.chroma_provision_argv(names, legacy))):
        digest.update(hashlib.sha256(part.encode()).digest())
    return digest.hexdigest()


def server_sync(srv) -> None:
    """sync in the compose project on the server (server.Ctx), unless its stamp says that the
    same was set in the same running redis and chroma-auth."""
    from .server import container_name, inspect

    reg = srv.reg
    try:
        want = fingerprint(reg.names(), srv.rs, reg.legacy())
    except isolation.IsolationError:
        want = None  # sync says why
    started = inspect(srv, "{{.Id}} {{.State.StartedAt}}", container_name(srv, "redis"),
                      container_name(srv, "chroma-auth"))
    stamp = posixpath.join(srv.rs.vps_path, remote.STATE_DIR, STAMP)
    key = hashlib.sha256(f"{want}\n{started}".encode()).hexdigest() if want and started else None
    if key and not srv.run.dry_run:
        current = srv.run.run(shell.cat(stamp), "read the last sync's stamp", check=False, mutates=False)
        if current.ok and current.stdout.strip() == key:
            srv.say(f"==> {len(reg.names())} app(s), each with its own Redis user and ChromaDB tenant (unchanged)")
            return
    sync(server_compose(srv), srv.say, srv.rs, reg, dry_run=srv.run.dry_run)
    if key:
        remote.put_text(srv.conn, srv.run, stamp, key + "\n", mode="600")


def server_input(srv, argv: Sequence[str], step: str, stdin: str | None) -> Result:
    """argv on the server, reading stdin from a private file there (the server's one shell
    gives every command /dev/null): written mode 600, removed after the command."""
    if stdin is None:
        return srv.run.run(argv, step, hint=HINT_RECREATE)
    # One name per step: the tasks that sync hold the deploy lock, so no two runs share it.
    path = posixpath.join(srv.rs.vps_path, remote.STATE_DIR, f"input-{hashlib.sha256(step.encode()).hexdigest()[:12]}")
    remote.put_text(srv.conn, srv.run, path, stdin, mode="600")
    try:
        return srv.run.run(shell.sh('f=$1; shift; "$@" < "$f"', path, *argv), step, hint=HINT_RECREATE)
    finally:
        srv.run.run(shell.rm_f(path), f"remove the input of: {step}", check=False)


def server_compose(srv) -> Exec:
    """In the compose project on the server (server.Ctx)."""
    def exec_(service: str, argv: Sequence[str], step: str, stdin: str | None) -> Result:
        return server_input(srv, commands.exec_in(srv.vps, srv.rs, service, argv), step, stdin)
    return exec_


def swarm_container(runner: Runner, stack: str, service: str) -> str:
    """The running task container of a stack's service on this node (redis and chroma-auth
    keep their volumes on the manager, so they run there)."""
    res = runner.run(docker_cmd.service_containers(f"{stack}_{service}"), f"find {service}'s container",
                     check=False, mutates=False)
    ids = res.stdout.split() if res.ok else []
    if not ids:
        if runner.dry_run:
            return f"<{service}>"
        raise OnevpsError(f"no running container of {stack}_{service} on the manager",
                          f"`docker service ps {stack}_{service}` says why; run swarm-deploy again once it runs")
    return ids[0]


def swarm_exec(runner: Runner, stack: str, feed: Callable[[Sequence[str], str, Optional[str]], Result]) -> Exec:
    """In a swarm stack's task containers; feed runs argv (here, or on the server)."""
    def exec_(service: str, argv: Sequence[str], step: str, stdin: str | None) -> Result:
        return feed(docker_cmd.exec_stdin(swarm_container(runner, stack, service), argv), step, stdin)
    return exec_
