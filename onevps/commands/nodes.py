"""Commands for the servers of a swarm (joining, labels, the registry's
certificates and container) as argv lists. Nothing runs here.

The join token never goes on a command line: it travels in a mode-600 file
that curl sends to the engine's API (`POST /swarm/join`) and that is removed
right after.
"""

from __future__ import annotations

from typing import Sequence

from .docker import docker

API_VERSION = "v1.41"  # Docker 20.10, the oldest engine onevps supports
CERTS_D = "/etc/docker/certs.d"  # where every engine reads a registry's CA and its client certificate
REGISTRY_DIR = "/etc/onevps/registry"  # on the manager: the CA, the server certificate, the config
REGISTRY_CONTAINER = "onevps-registry"
REGISTRY_VOLUME = "onevps-registry"
REGISTRY_IMAGE = "registry:2"
CERT_DAYS = "3650"


def swarm_json() -> list[str]:
    """The engine's view of its swarm, as one JSON object."""
    return docker("info", "--format", "{{json .Swarm}}")


def swarm_init(advertise: str) -> list[str]:
    return docker("swarm", "init", "--advertise-addr", advertise, "--listen-addr", "0.0.0.0:2377")


def join_token() -> list[str]:
    """Prints the worker join token (read, never shown)."""
    return docker("swarm", "join-token", "--quiet", "worker")


def join_via_api(body_file: str) -> list[str]:
    """`POST /swarm/join` with the body (holding the token) read from a file; prints the engine's
    answer, then its HTTP status on a line of its own (curl 7.68+, no --fail-with-body)."""
    return ["curl", "--silent", "--show-error", "--unix-socket", "/var/run/docker.sock",
            "--header", "Content-Type: application/json", "--data-binary", f"@{body_file}",
            "--write-out", "\n%{http_code}", f"http://localhost/{API_VERSION}/swarm/join"]


def route_source(address: str) -> list[str]:
    """The local address this server uses to reach ADDRESS (`ip route get`)."""
    return ["ip", "-4", "-o", "route", "get", address]


def node_ls() -> list[str]:
    return docker("node", "ls", "--format", "{{json .}}")


def node_inspect(*ids: str) -> list[str]:
    return docker("node", "inspect", "--format", "{{json .}}", *ids)


def node_label_add(node_id: str, labels: Sequence[str]) -> list[str]:
    argv = docker("node", "update")
    for label in labels:
        argv += ["--label-add", label]
    return argv + [node_id]


def stack_tasks(stack: str) -> list[str]:
    """The stack's tasks that should run: task name, node, state."""
    return docker("stack", "ps", "--filter", "desired-state=running", "--format",
                  "{{.Name}}\t{{.Node}}\t{{.CurrentState}}", stack)


def uname_m() -> list[str]:
    return ["uname", "-m"]


def command_exists(name: str) -> list[str]:
    return ["sh", "-c", 'command -v "$1" >/dev/null', "sh", name]


# ------------------------------------------------------------- the registry --

def certs_dir(registry: str) -> str:
    """The folder an engine reads REGISTRY's (host:port) CA and client certificate from."""
    return f"{CERTS_D}/{registry}"


def make_ca(folder: str = REGISTRY_DIR) -> list[str]:
    """The CA (key mode 600) unless it exists: its key never leaves the manager."""
    script = ('set -e; d=$1; [ -s "$d/ca.crt" ] && [ -s "$d/ca.key" ] && exit 0; '
              'umask 077; mkdir -p "$d"; chmod 700 "$d"; '
              'openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$2" '
              '-subj "/CN=onevps registry CA" -keyout "$d/ca.key.tmp" -out "$d/ca.crt.tmp" 2>/dev/null; '
              'chmod 644 "$d/ca.crt.tmp"; mv -f "$d/ca.key.tmp" "$d/ca.key"; mv -f "$d/ca.crt.tmp" "$d/ca.crt"')
    return ["sh", "-c", script, "sh", folder, CERT_DAYS]


def make_server_cert(address: str, folder: str = REGISTRY_DIR) -> list[str]:
    """The registry's certificate for ADDRESS, signed by the CA (again when the address changed)."""
    script = ('set -e; d=$1; a=$2; '
              'if [ -s "$d/server.crt" ] && openssl x509 -in "$d/server.crt" -noout -ext subjectAltName 2>/dev/null '
              '| grep -qx "    IP Address:$a"; then exit 0; fi; umask 077; '
              'printf "subjectAltName=IP:%s\\nextendedKeyUsage=serverAuth\\n" "$a" > "$d/server.ext"; '
              'openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$a" '
              '-keyout "$d/server.key.tmp" -out "$d/server.csr" 2>/dev/null; '
              'openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial '
              '-days "$3" -extfile "$d/server.ext" -out "$d/server.crt.tmp" 2>/dev/null; '
              'mv -f "$d/server.key.tmp" "$d/server.key"; mv -f "$d/server.crt.tmp" "$d/server.crt"; '
              'rm -f "$d/server.csr" "$d/server.ext"')
    return ["sh", "-c", script, "sh", folder, address, CERT_DAYS]


def client_csr(folder: str) -> list[str]:
    """On a node: its client key (mode 600, made once, never sent) and a request to sign, on stdout."""
    script = ('set -e; d=$1; umask 077; mkdir -p "$d"; '
              '[ -s "$d/client.key" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 '
              '-out "$d/client.key" 2>/dev/null; '
              'openssl req -new -key "$d/client.key" -subj "/CN=$(hostname)" 2>/dev/null')
    return ["sh", "-c", script, "sh", folder]


def client_cert_valid(folder: str) -> list[str]:
    """Succeeds when the node's client certificate is there, matches its key and the CA signed it."""
    script = ('d=$1; [ -s "$d/client.cert" ] && [ -s "$d/ca.crt" ] && '
              'openssl verify -CAfile "$d/ca.crt" "$d/client.cert" >/dev/null 2>&1 && '
              '[ "$(openssl x509 -in "$d/client.cert" -noout -pubkey)" = "$(openssl pkey -in "$d/client.key" -pubout)" ]')
    return ["sh", "-c", script, "sh", folder]


def sign_client(csr_file: str, folder: str = REGISTRY_DIR) -> list[str]:
    """On the manager: a client certificate for the request in CSR_FILE, on stdout."""
    script = ('set -e; d=$1; umask 077; printf "extendedKeyUsage=clientAuth\\n" > "$d/client.ext"; '
              'openssl x509 -req -in "$2" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days "$3" '
              '-extfile "$d/client.ext" 2>/dev/null; rm -f "$2" "$d/client.ext"')
    return ["sh", "-c", script, "sh", folder, csr_file, CERT_DAYS]


def registry_config() -> str:
    """The registry's config: TLS, and only clients with a certificate of the CA (the nodes)."""
    return ("version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n  delete:\n    enabled: true\n"
            "http:\n  addr: :5000\n  tls:\n    certificate: /certs/server.crt\n    key: /certs/server.key\n"
            "    clientcas:\n      - /certs/ca.crt\n")


def registry_run(address: str, port: int, folder: str = REGISTRY_DIR, image: str = REGISTRY_IMAGE) -> list[str]:
    """The registry container on the manager, published on ADDRESS only (not on every node's mesh)."""
    return docker("run", "--detach", "--name", REGISTRY_CONTAINER, "--restart", "always",
                  "--label", "onevps.role=registry", "--memory", "128m",
                  "--publish", f"{address}:{port}:5000",
                  "--volume", f"{REGISTRY_VOLUME}:/var/lib/registry",
                  "--volume", f"{folder}:/certs:ro",
                  "--volume", f"{folder}/config.yml:/etc/docker/registry/config.yml:ro",
                  image)


def registry_state() -> list[str]:
    """The registry container's state and its published address, or a failure when there is none."""
    return docker("container", "inspect", "--format",
                  "{{.State.Status}} {{range $p, $b := .HostConfig.PortBindings}}{{range $b}}"
                  "{{.HostIp}}:{{.HostPort}}{{end}}{{end}}", REGISTRY_CONTAINER)


def registry_probe(registry: str, folder: str) -> list[str]:
    """`GET /v2/` with the node's client certificate: the HTTP status on stdout."""
    return ["curl", "--silent", "--show-error", "--max-time", "10", "--output", "/dev/null",
            "--write-out", "%{http_code}", "--cacert", f"{folder}/ca.crt",
            # curl reads --cert as FILE[:PASSWORD]: the colon of host:port is escaped
            "--cert", f"{folder}/client.cert".replace(":", "\\:"),
            "--key", f"{folder}/client.key", f"https://{registry}/v2/"]

