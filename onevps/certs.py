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

from . import commands, nginx, remote
from .config import Settings
from .server import Ctx, container_name, inspect
from .errors import OnevpsError
from .registry import Registry

CERT_NAME = "onevps"
CERTS = "/etc/nginx/certs"
LOGS = "/etc/letsencrypt/logs"  # in the letsencrypt volume: kept after the run

# Run in the certbot container: put the issued certificate where nginx reads
# it, keeping the previous pair as *.prev for a restore. umask 077: the key is
# 600 from its first byte (cp creates the new file with the umask applied).
INSTALL_SCRIPT = f"""
set -eu
umask 077
src=/etc/letsencrypt/live/{CERT_NAME}
for f in fullchain.pem privkey.pem; do
    [ -f {CERTS}/$f ] && cp -p {CERTS}/$f {CERTS}/$f.prev
    rm -f {CERTS}/$f.new
    cp -L "$src/$f" {CERTS}/$f.new
    mv -f {CERTS}/$f.new {CERTS}/$f
done
"""
RESTORE_SCRIPT = f"""
set -eu
for f in fullchain.pem privkey.pem; do
    [ -f {CERTS}/$f.prev ] && mv -f {CERTS}/$f.prev {CERTS}/$f
done
"""


def domains(settings: Settings, reg: Registry) -> list[str]:
    names = [settings.domain] + [f"{a.name}.{settings.domain}" for a in reg.apps]
    names += [a.domain for a in reg.apps if a.domain]
    return list(dict.fromkeys(names))


def _certbot(settings: Settings, *args: str) -> list[str]:
    return commands.compose(settings, "--profile", "certs", "run", "--rm", "--no-deps", *args)


def certonly_argv(settings: Settings, names: list[str]) -> list[str]:
    flags = [f for name in names for f in ("-d", name)]
    return _certbot(settings, "certbot", "certonly", "--logs-dir", LOGS, "--webroot", "-w", "/var/www/acme",
                    "--cert-name", CERT_NAME, "--non-interactive", "--agree-tos",
                    "--email", settings.raw["ACME_EMAIL"], "--server", settings.raw["ACME_SERVER"],
                    "--keep-until-expiring", "--expand", *flags)


def renew_argv(settings: Settings) -> list[str]:
    return _certbot(settings, "certbot", "renew", "--logs-dir", LOGS, "--webroot", "-w", "/var/www/acme", "--quiet")


def install_argv(settings: Settings, script: str = INSTALL_SCRIPT) -> list[str]:
    return _certbot(settings, "--entrypoint", "sh", "certbot", "-c", script)


def renew_script(settings: Settings) -> str:
    """The renewal script the cron job runs: renew, install, test and reload nginx."""
    steps = [renew_argv(settings), install_argv(settings),
             commands.exec_in(settings, "nginx", nginx.reload_argv())]
    return ("#!/bin/sh\n# onevps: renew the Let's Encrypt certificate (written by `fab certs`).\nset -e\n"
            + "\n".join(shlex.join(s) for s in steps) + "\n")


def renew_script_path(settings: Settings) -> str:
    return f"{settings.vps_path}/{remote.STATE_DIR}/renew-certs.sh"


def cron_text(settings: Settings) -> str:
    """One cron line (no newlines or % inside: cron would split them) running the script."""
    return ("# onevps: renew the Let's Encrypt certificate daily (written by `fab certs`).\n"
            "SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            f"17 3 * * * root {shlex.quote(renew_script_path(settings))} >/dev/null 2>&1\n")


def certs(c: Ctx, schedule: bool = True) -> None:
    rs = c.rs
    if not rs.raw.get("ACME_EMAIL"):
        raise OnevpsError("ACME_EMAIL is not set in the server's env file",
                          f"add ACME_EMAIL=you@example.com to {c.local.vps_env_file.name if c.local.vps_env_file else '.env'}")
    if inspect(c, "{{.State.Running}}", container_name(c, "nginx")) != "true" and not c.run.dry_run:
        raise OnevpsError("nginx is not running on the server", "run `fab setup` and `fab deploy --all` first")
    names = domains(rs, c.reg)
    c.say(f"==> asking {rs.raw['ACME_SERVER']} for a certificate for: {', '.join(names)}")
    try:
        c.run.run(certonly_argv(rs, names), "obtain the certificate (certbot)", hide=False,
                  hint="each name must resolve to this server and port 80 must reach nginx")
    except OnevpsError:
        log = c.run.run(install_argv(rs, f"tail -n 25 {LOGS}/letsencrypt.log"), "read certbot's log",
                        check=False, mutates=False)
        c.say(f"--- the end of certbot's log ---\n{log.stdout.strip() or '(empty)'}")
        raise
    c.run.run(install_argv(rs), "install the certificate for nginx")
    try:
        c.run.run(commands.exec_in(rs, "nginx", nginx.reload_argv()), "test and reload nginx")
    except OnevpsError:
        c.run.run(install_argv(rs, RESTORE_SCRIPT), "put the previous certificate back", check=False)
        raise
    c.say("==> nginx: the new certificate is tested with `nginx -t` and serving")
    if schedule:
        remote.put_text(c.conn, c.run, renew_script_path(rs), renew_script(rs), mode="755")
        remote.put_text(c.conn, c.run, rs.raw["CERT_CRON_FILE"], cron_text(rs), mode="644")
        c.say(f"==> renewal scheduled daily at 03:17 in {rs.raw['CERT_CRON_FILE']}")
    end = c.run.run(commands.exec_in(rs, "nginx", ["openssl", "x509", "-noout", "-enddate", "-in",
                                                   f"{CERTS}/fullchain.pem"]),
                    "read the certificate's expiry", check=False, mutates=False)
    if end.ok:
        c.say(f"==> certificate valid until {end.stdout.strip().split('=', 1)[-1]}")
