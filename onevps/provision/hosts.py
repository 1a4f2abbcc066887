"""The server of a `fab` task (server.Ctx) as provisioning's Host, and a runner
for a user whose new docker group membership cannot take effect in this run."""

from __future__ import annotations

from paramiko.ssh_exception import SSHException

from .. import remote
from ..errors import CommandFailed
from ..runner import Runner
from ..session import ShellSession


class CtxHost:
    """A server.Ctx seen as a Host: commands without the tier-tag env prefix, SFTP
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
        self.c.run.ctx = ShellSession(new)  # a new shell of the new login: its new groups
        self.runner.ctx = new

    def sudo_docker(self) -> None:
        old = self.c.run
        self.c.run = SudoDockerRunner(old.ctx, env=old.env, dry_run=old.dry_run, out=old.out)


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
