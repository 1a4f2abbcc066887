"""`fab certs` command building: certbot via compose, install, cron line."""

import shlex
from pathlib import Path

from onevps import certs, config, registry
from onevps.commands import certbot
from onevps.project import Project

ROOT = Path(__file__).resolve().parents[2]
PROJECT = Project(ROOT)


def server_settings(**env):
    base = {"DOMAIN": "example.com", "ACME_EMAIL": "ops@example.com", "COMPOSE_PROJECT_NAME": "prod"}
    s = config.load(PROJECT, environ={**base, **env}, env_file=ROOT / ".env.example")
    return s


def test_domains_cover_the_bare_domain_every_app_and_extra_names():
    reg = registry.Registry(apps=(registry.App("blog", "base", 14, "blog.example.org"),
                                  registry.App("kb", "base", 12)), services=(), hosts={})
    assert certs.domains(server_settings(), reg) == ["example.com", "blog.example.com", "kb.example.com",
                                                     "blog.example.org"]


def test_certonly_uses_the_webroot_and_the_configured_server():
    s = server_settings(ACME_SERVER="https://acme-staging-v02.api.letsencrypt.org/directory")
    argv = certbot.certonly(PROJECT, s, ["example.com", "kb.example.com"])
    assert shlex.join(argv).endswith(
        "--profile certs run --rm --no-deps certbot certonly --logs-dir /etc/letsencrypt/logs "
        "--webroot -w /var/www/acme --cert-name onevps "
        "--non-interactive --agree-tos --email ops@example.com "
        "--server https://acme-staging-v02.api.letsencrypt.org/directory --keep-until-expiring --expand "
        "-d example.com -d kb.example.com")
    assert argv[:5] == ["docker", "compose", "--project-name", "prod", "--file"]


def test_cron_runs_the_renew_script_which_reloads_after_nginx_t():
    s = server_settings(VPS_PATH="/srv/apps")
    lines = certs.cron_text(s).splitlines()
    assert lines[0].startswith("# onevps") and lines[2].startswith("PATH=")
    assert lines[3] == "17 3 * * * root /srv/apps/.onevps/renew-certs.sh >/dev/null 2>&1"
    assert len(lines) == 4 and "%" not in lines[3]  # cron splits lines at % and newlines
    script = certs.renew_script(PROJECT, s)
    assert script.startswith("#!/bin/sh\n") and "set -e\n" in script
    assert "certbot renew --logs-dir /etc/letsencrypt/logs --webroot -w /var/www/acme --quiet" in script
    assert "--entrypoint sh certbot -c" in script and "nginx -t" in script


def test_install_keeps_the_previous_certificate_for_a_restore():
    assert "cp -p /etc/nginx/certs/$f /etc/nginx/certs/$f.prev" in certbot.INSTALL_SCRIPT
    assert "mv -f /etc/nginx/certs/$f.prev /etc/nginx/certs/$f" in certbot.RESTORE_SCRIPT
