"""certbot (the compose service `certbot`, profile "certs") and the certificate
as nginx reads it, as argv lists. Nothing runs here."""

from __future__ import annotations

from ..config import Settings
from ..project import Project
from .compose import compose, exec_in

CERT_NAME = "onevps"
CERTS = "/etc/nginx/certs"
LOGS = "/etc/letsencrypt/logs"  # in the letsencrypt volume: kept after the run
WEBROOT = "/var/www/acme"

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


def certbot(project: Project, settings: Settings, *args: str) -> list[str]:
    """A one-off certbot container (no dependencies started)."""
    return compose(project, settings, "--profile", "certs", "run", "--rm", "--no-deps", *args)


def certonly(project: Project, settings: Settings, names: list[str]) -> list[str]:
    """Obtain (or expand) the one certificate for names through HTTP-01 on the webroot."""
    flags = [f for name in names for f in ("-d", name)]
    return certbot(project, settings, "certbot", "certonly", "--logs-dir", LOGS, "--webroot", "-w", WEBROOT,
                   "--cert-name", CERT_NAME, "--non-interactive", "--agree-tos",
                   "--email", settings.acme_email, "--server", settings.acme_server,
                   "--keep-until-expiring", "--expand", *flags)


def renew(project: Project, settings: Settings) -> list[str]:
    return certbot(project, settings, "certbot", "renew", "--logs-dir", LOGS, "--webroot", "-w", WEBROOT, "--quiet")


def in_certbot_sh(project: Project, settings: Settings, script: str) -> list[str]:
    """script run by sh in the certbot container (its volumes: letsencrypt, nginx-certs)."""
    return certbot(project, settings, "--entrypoint", "sh", "certbot", "-c", script)


def install(project: Project, settings: Settings) -> list[str]:
    """The issued certificate where nginx reads it (the previous pair kept as *.prev)."""
    return in_certbot_sh(project, settings, INSTALL_SCRIPT)


def restore_previous(project: Project, settings: Settings) -> list[str]:
    """The *.prev pair back in place."""
    return in_certbot_sh(project, settings, RESTORE_SCRIPT)


def log_tail(project: Project, settings: Settings, lines: int = 25) -> list[str]:
    """The end of certbot's log."""
    return in_certbot_sh(project, settings, f"tail -n {lines} {LOGS}/letsencrypt.log")


def expiry(project: Project, settings: Settings) -> list[str]:
    """`notAfter=...` of the certificate nginx serves."""
    return exec_in(project, settings, "nginx",
                   ["openssl", "x509", "-noout", "-enddate", "-in", f"{CERTS}/fullchain.pem"])
