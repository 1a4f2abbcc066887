"""The registry onevps runs on a swarm's manager when there are workers and no
REGISTRY: Docker's registry:2 (Debian's docker-registry in tests) in a plain
container published on the manager's swarm address only, TLS with a CA onevps
makes on the manager (its key never leaves it), and client certificates
required: each node makes its own key, the manager signs its request, and
the node's engine presents it from /etc/docker/certs.d/<address:port>/.
Nothing else can pull or push, even where the port is reachable."""

from __future__ import annotations

import secrets
from typing import Sequence

from .. import remote
from ..commands import nodes as cmd, shell
from ..errors import OnevpsError
from ..server import Ctx

CONFIG = f"{cmd.REGISTRY_DIR}/config.yml"


def ensure(mc: Ctx, wcs: Sequence[Ctx], address: str, port: int) -> str:
    """CA, certificate, config and container on the manager; CA and client certificate on every
    node; then every node must get 200 from /v2/. Returns address:port."""
    registry = f"{address}:{port}"
    mc.say(f"==> registry {registry} on the manager (TLS, client certificates)")
    mc.run.run(cmd.make_ca(), "make the registry's CA (once)")
    mc.run.run(cmd.make_server_cert(address), "make the registry's certificate")
    changed = remote.put_text_if_changed(mc.conn, mc.run, CONFIG, cmd.registry_config(), "600", make_folder=True)
    _container(mc, address, port, fresh=changed)
    read = mc.run.run(shell.cat(f"{cmd.REGISTRY_DIR}/ca.crt"), "read the registry's CA certificate",
                      check=not mc.run.dry_run, mutates=False)
    if not read.ok:
        mc.say("[dry-run] every node would trust the new CA and get a client certificate")
        return registry
    ca = read.stdout
    for c in (mc, *wcs):
        _trust(mc, c, registry, ca)
    if not mc.run.dry_run:
        for c in (mc, *wcs):
            _probe(c, registry)
    return registry


def _container(mc: Ctx, address: str, port: int, fresh: bool = False) -> None:
    """The container, published at address:port; replaced when it is published elsewhere or its
    config changed (fresh: a bind-mounted file replaced by a new one is not seen by a running one)."""
    res = mc.run.run(cmd.registry_state(), "inspect the registry container", check=False, mutates=False)
    state, _, published = res.stdout.strip().partition(" ")
    if res.ok and published.strip() == f"{address}:{port}" and not fresh:
        if state != "running":
            mc.run.run(["docker", "start", cmd.REGISTRY_CONTAINER], "start the registry")
        return
    if res.ok:
        mc.run.run(["docker", "rm", "--force", cmd.REGISTRY_CONTAINER], "replace the registry container")
    mc.run.run(cmd.registry_run(address, port), "start the registry",
               hint=f"is {cmd.REGISTRY_IMAGE} on the manager (fab swarm-setup --ship) and {address}:{port} free?")


def _trust(mc: Ctx, c: Ctx, registry: str, ca: str) -> None:
    """The node trusts the CA and holds a client certificate the manager signed (its key stays there)."""
    folder = cmd.certs_dir(registry)
    remote.put_text_if_changed(c.conn, c.run, f"{folder}/ca.crt", ca, "644", make_folder=True)
    if c.run.run(cmd.client_cert_valid(folder), "check the node's client certificate", check=False,
                 mutates=False).ok:
        return
    csr = c.run.run(cmd.client_csr(folder), "make the node's key and certificate request").stdout
    if c.run.dry_run:
        return
    request = f"{cmd.REGISTRY_DIR}/node-{secrets.token_hex(4)}.csr"
    remote.put_text(mc.conn, mc.run, request, csr, mode="600")
    cert = mc.run.run(cmd.sign_client(request), "sign the node's certificate").stdout
    if "BEGIN CERTIFICATE" not in cert:
        raise OnevpsError("the manager did not sign the node's registry certificate",
                          "check openssl on the manager and run fab swarm-setup again")
    remote.put_text(c.conn, c.run, f"{folder}/client.cert", cert, mode="644")


def _probe(c: Ctx, registry: str) -> None:
    res = c.run.run(cmd.registry_probe(registry, cmd.certs_dir(registry)), f"reach the registry {registry}",
                    check=False, mutates=False)
    if res.stdout.strip() != "200":
        where = c.conn.host
        raise OnevpsError(f"the registry {registry} does not answer {where} (HTTP {res.stdout.strip() or '-'}"
                          f"{': ' + res.stderr.strip()[:160] if res.stderr.strip() else ''})",
                          f"check that {where} reaches {registry} (TCP) and run fab swarm-setup again")
