"""`fab certs`: Let's Encrypt certificates for every app's domain.

certbot (the compose service `certbot`, profile "certs") answers HTTP-01
challenges through nginx: it writes the tokens into the acme-webroot volume,
which nginx serves at /.well-known/acme-challenge/ on port 80. One
certificate covers DOMAIN, every <app>.DOMAIN and the apps' extra domains.
It is copied into the nginx-certs volume, nginx's config is tested with
`nginx -t`, then nginx reloads; the old certificate comes back when the test
fails. A daily cron job on the server renews the same way.
"""

from __future__ import annotations

import shlex

from . import nginx, remote
from .commands import certbot, compose_cmd
from .config import Settings
from .errors import OnevpsError
from .project import Project
from .registry import Registry
from .server import Ctx, container_name, inspect


def domains(settings: Settings, reg: Registry) -> list[str]:
    names = [settings.domain] + [f"{a.name}.{settings.domain}" for a in reg.apps]
    names += [a.domain for a in reg.apps if a.domain]
    return list(dict.fromkeys(names))


def renew_script(project: Project, settings: Settings) -> str:
    """The renewal script the cron job runs: renew, install, test and reload nginx."""
    steps = [certbot.renew(project, settings), certbot.install(project, settings),
             compose_cmd.exec_in(project, settings, "nginx", nginx.reload_argv())]
    return ("#!/bin/sh\n# onevps: renew the Let's Encrypt certificate (written by `fab certs`).\nset -e\n"
            + "\n".join(shlex.join(s) for s in steps) + "\n")


def renew_script_path(settings: Settings) -> str:
    return f"{settings.vps_path}/{remote.STATE_DIR}/renew-certs.sh"


def cron_text(settings: Settings) -> str:
    """One cron line (no newlines or % inside: cron would split them) running the script."""
    return ("# onevps: renew the Let's Encrypt certificate daily (written by `fab certs`).\n"
            "SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            f"17 3 * * * root {shlex.quote(renew_script_path(settings))} >/dev/null 2>&1\n")


def certs(srv: Ctx, schedule: bool = True) -> None:
    rs = srv.rs
    if not rs.acme_email:
        env_file = srv.local.vps_env_file.name if srv.local.vps_env_file else ".env"
        raise OnevpsError("ACME_EMAIL is not set in the server's env file", f"add ACME_EMAIL=you@example.com to {env_file}")
    if inspect(srv, "{{.State.Running}}", container_name(srv, "nginx")) != "true" and not srv.run.dry_run:
        raise OnevpsError("nginx is not running on the server", "run `fab setup` and `fab deploy --all` first")
    obtain(srv, domains(rs, srv.reg))
    srv.run.run(certbot.install(srv.vps, rs), "install the certificate for nginx")
    try:
        srv.run.run(compose_cmd.exec_in(srv.vps, rs, "nginx", nginx.reload_argv()), "test and reload nginx")
    except OnevpsError:
        srv.run.run(certbot.restore_previous(srv.vps, rs), "put the previous certificate back", check=False)
        raise
    srv.say("==> nginx: the new certificate is tested with `nginx -t` and serving")
    if schedule:
        remote.put_text(srv.conn, srv.run, renew_script_path(rs), renew_script(srv.vps, rs), mode="755")
        remote.put_text(srv.conn, srv.run, rs.cert_cron_file, cron_text(rs), mode="644")
        srv.say(f"==> renewal scheduled daily at 03:17 in {rs.cert_cron_file}")
    end = srv.run.run(certbot.expiry(srv.vps, rs), "read the certificate's expiry", check=False, mutates=False)
    if end.ok:
        srv.say(f"==> certificate valid until {end.stdout.strip().split('=', 1)[-1]}")


def obtain(srv: Ctx, names: list[str]) -> None:
    """certbot certonly for names; on failure the end of certbot's log is shown."""
    srv.say(f"==> asking {srv.rs.acme_server} for a certificate for: {', '.join(names)}")
    try:
        srv.run.run(certbot.certonly(srv.vps, srv.rs, names), "obtain the certificate (certbot)", hide=False,
                    hint="each name must resolve to this server and port 80 must reach nginx")
    except OnevpsError:
        log = srv.run.run(certbot.log_tail(srv.vps, srv.rs), "read certbot's log", check=False, mutates=False)
        srv.say(f"--- the end of certbot's log ---\n{log.stdout.strip() or '(empty)'}")
        raise
