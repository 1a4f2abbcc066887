"""A real bare Debian 12 server for tests: systemd as PID 1, openssh-server,
nothing of Docker, reached over SSH at its own address on Docker's default
bridge. The image is built by `.ci/standins/build.sh bare`.

    with bare_server("onevps-first-server", pubkey) as server:
        ssh(server, "root", "systemctl", "is-system-running")

By hand (other engineers):

    .venv/bin/python -m tests.integration.bare start NAME   # prints IP and the private key
    .venv/bin/python -m tests.integration.bare stop NAME

Only containers and volumes carrying this module's label are ever removed.
The test talks to the server at its own address only (port 22, and later the
ports its own Docker publishes): that is the test's own host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

IMAGE = os.environ.get("ONEVPS_BARE_IMAGE", "onevps-standin/bare-server:bookworm")
LABEL = "onevps.test.bare-server"
# Exactly the flags that run systemd + a Docker engine inside on these machines
# (../shared/docker-here.md, "A bare server"): --privileged is refused here.
RUN_FLAGS = (
    "--cgroupns=host", "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
)
SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=10")


class BareServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class BareServer:
    name: str  # the container's name
    container: str  # its ID
    ip: str  # its own address on the default bridge
    volume: str  # the named volume at /var/lib/docker
    key: Path | None = None  # the private key whose public half root accepts (when known)
    ready_seconds: float = 0.0  # container start -> sshd answering


def _docker(*args: str, check: bool = True, timeout: float = 120, input: str | None = None) -> str:
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and res.returncode != 0:
        raise BareServerError(f"docker {' '.join(args[:3])} ... failed: {res.stderr.strip()}")
    return res.stdout


def problem() -> str | None:
    """Why a bare server cannot start here (None when it can)."""
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "the Docker engine does not answer (`docker info` failed)"
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        return f"the image {IMAGE} is missing (build it: bash .ci/standins/build.sh bare)"
    return None


def remove(name: str) -> None:
    """Remove the container NAME and its volume, if they are this module's (else refuse)."""
    res = subprocess.run(["docker", "container", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}',
                          name], capture_output=True, text=True, timeout=60)
    if res.returncode == 0:
        if res.stdout.strip() != "true":
            raise BareServerError(f"a container named {name} exists but is not a bare test server; not touching it")
        _docker("rm", "--force", "--volumes", name)
    vol = f"{name}-docker"
    label = _docker("volume", "inspect", "--format", f'{{{{index .Labels "{LABEL}"}}}}', vol, check=False).strip()
    if label == "true":
        _docker("volume", "rm", "--force", vol)


def start(name: str, authorized_pubkey: str, *, key: Path | None = None, timeout: float = 90,
          network: str | None = None, ip: str | None = None) -> BareServer:
    """Start a fresh bare server NAME (a leftover of the same name is removed first); on the
    default bridge, or on NETWORK at the fixed address IP (it keeps it across restarts)."""
    why = problem()
    if why:
        raise BareServerError(why)
    remove(name)
    vol = f"{name}-docker"
    _docker("volume", "create", "--label", f"{LABEL}=true", vol)
    t0 = time.monotonic()
    cid = _docker("run", "--detach", "--name", name, "--hostname", name.replace("_", "-")[:63],
                  "--label", f"{LABEL}=true", *RUN_FLAGS, "-v", f"{vol}:/var/lib/docker",
                  *(["--network", network] if network else []), *(["--ip", ip] if ip else []), IMAGE).strip()
    try:
        # As a provider's console would: root's authorized key.
        _docker("exec", "-i", name, "sh", "-c",
                "umask 077 && mkdir -p /root/.ssh && cat > /root/.ssh/authorized_keys",
                input=authorized_pubkey.strip() + "\n")
        info = json.loads(_docker("container", "inspect", name))[0]
        ip = info["NetworkSettings"]["Networks"].get(network or "bridge", {}).get("IPAddress") or \
            info["NetworkSettings"].get("IPAddress")
        if not ip:
            raise BareServerError(f"{name} has no address on the default bridge")
        _wait_for_sshd(name, ip, t0 + timeout)
        return BareServer(name, cid, ip, vol, key, round(time.monotonic() - t0, 1))
    except BaseException:
        logs = _docker("logs", "--tail", "20", name, check=False)
        remove(name)
        if isinstance(logs, str) and logs.strip():
            sys.stderr.write(f"last lines of {name}'s console:\n{logs}")
        raise


def _wait_for_sshd(name: str, ip: str, deadline: float) -> None:
    """Until sshd on IP:22 (the server's own address) sends its banner."""
    last = ""
    while time.monotonic() < deadline:
        state = _docker("container", "inspect", "--format", "{{.State.Status}}", name, check=False).strip()
        if state != "running":
            raise BareServerError(f"the bare server {name} stopped while booting (state {state or 'gone'})")
        try:
            with socket.create_connection((ip, 22), timeout=2) as sock:
                sock.settimeout(5)
                banner = sock.recv(64)
                if banner.startswith(b"SSH-2.0-"):
                    return
                last = f"unexpected banner {banner!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise BareServerError(f"sshd on the bare server {name} ({ip}:22) did not answer: {last}")


@contextlib.contextmanager
def bare_server(name: str, authorized_pubkey: str, *, key: Path | None = None,
                timeout: float = 90) -> Iterator[BareServer]:
    """A fresh bare server for the block; removed with its volume afterwards."""
    server = start(name, authorized_pubkey, key=key, timeout=timeout)
    try:
        yield server
    finally:
        remove(name)


def make_key(folder: Path) -> tuple[Path, str]:
    """A new ed25519 key pair in FOLDER (made 0700, ours, or refused); returns (private key path,
    public key text). An existing pair there is reused only when FOLDER is ours and private."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise BareServerError(f"{folder} is not a private folder of this user (owner {st.st_uid}, "
                              f"mode {oct(st.st_mode & 0o777)}): not using a key from there")
    private = folder / "id_ed25519"
    if not private.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "onevps-bare-test", "-f", str(private)],
                       check=True)
    return private, (folder / "id_ed25519.pub").read_text()


def add_sudo_user(server: BareServer, authorized_pubkey: str, user: str = "deploy") -> None:
    """A non-root login with passwordless sudo and the same authorized key."""
    script = ('set -e; u=$1; id -u "$u" >/dev/null 2>&1 || useradd -m -s /bin/bash "$u"; '
              'install -d -m 700 -o "$u" -g "$u" "/home/$u/.ssh"; '
              'cat > "/home/$u/.ssh/authorized_keys"; '
              'chown "$u:$u" "/home/$u/.ssh/authorized_keys"; chmod 600 "/home/$u/.ssh/authorized_keys"; '
              'printf "%s ALL=(ALL) NOPASSWD:ALL\\n" "$u" > "/etc/sudoers.d/$u"; chmod 440 "/etc/sudoers.d/$u"; '
              'visudo -cf "/etc/sudoers.d/$u" >/dev/null')
    _docker("exec", "-i", server.name, "sh", "-c", script, "sh", user, input=authorized_pubkey.strip() + "\n")


def ssh_argv(server: BareServer, user: str, *command: str, key: Path | None = None) -> list[str]:
    """`ssh` to the server's own address as USER (command as one remote shell line if several words)."""
    k = key or server.key
    return ["ssh", *SSH_OPTIONS, *(["-i", str(k)] if k else []), f"{user}@{server.ip}", *command]


def ssh(server: BareServer, user: str, *command: str, timeout: float = 600, input: bytes | None = None,
        key: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(ssh_argv(server, user, *command, key=key), capture_output=True, timeout=timeout,
                          input=input)


# ------------------------------------------------------------------ by hand --

def _state_dir(name: str) -> Path:
    return Path(tempfile.gettempdir()) / "onevps-bare" / name


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.integration.bare",
                                description="Start or remove a bare Debian 12 test server (systemd, sshd, no Docker).")
    p.add_argument("action", choices=("start", "stop"))
    p.add_argument("name", help="container name, e.g. bare-vps")
    p.add_argument("--sudo-user", metavar="USER", help="also add USER with passwordless sudo and the same key")
    args = p.parse_args(argv)
    try:
        if args.action == "stop":
            remove(args.name)
            print(f"removed {args.name} and its volume {args.name}-docker (if they were there)")
            return 0
        private, public = make_key(_state_dir(args.name))
        server = start(args.name, public, key=private)
        if args.sudo_user:
            add_sudo_user(server, public, args.sudo_user)
    except BareServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"IP   {server.ip}\nKEY  {private}\nsshd answered {server.ready_seconds} s after the container started")
    print(f"ssh -i {private} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@{server.ip}")
    print(f"remove it: python -m tests.integration.bare stop {args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
