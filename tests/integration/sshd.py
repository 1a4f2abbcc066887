"""A real OpenSSH sshd on 127.0.0.1 that plays "the VPS" for the deploy tests
and the benchmarks: its own host key, a client key made here, root login by
key only. Only the sshd started here is ended, by its PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest


class SshdError(RuntimeError):
    pass


def sshd_binary() -> str:
    path = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(path):
        raise SshdError("OpenSSH's sshd is missing (apt-get install openssh-server)")
    return path


@contextlib.contextmanager
def local_sshd(workdir: Path, port: int) -> Iterator[Path]:
    """Run sshd on 127.0.0.1:PORT; yields the client's private key."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        if not (workdir / name).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / name)], check=True)
    shutil.copy(workdir / "client_key.pub", workdir / "authorized_keys")
    config = workdir / "sshd_config"
    config.write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {workdir}/host_key
PidFile {workdir}/sshd.pid
AuthorizedKeysFile {workdir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
""")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([sshd_binary(), "-D", "-f", str(config), "-E", str(workdir / "sshd.log")])
    try:
        deadline = time.time() + 20
        while True:
            if proc.poll() is not None:  # e.g. the port is taken: never mistake another sshd for ours
                log = (workdir / "sshd.log").read_text() if (workdir / "sshd.log").exists() else ""
                raise SshdError(f"sshd on 127.0.0.1:{port} exited ({proc.returncode}): {log.strip()[-300:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.3)
                if proc.poll() is not None:
                    continue  # something else answered; ours died: reported above
                break
            except OSError:
                if time.time() > deadline:
                    log = (workdir / "sshd.log").read_text() if (workdir / "sshd.log").exists() else ""
                    raise SshdError(f"sshd did not listen on 127.0.0.1:{port}: {log}") from None
                time.sleep(0.2)
        yield workdir / "client_key"
    finally:
        proc.terminate()  # only the sshd started here, by its PID
        proc.wait(timeout=10)


@contextlib.contextmanager
def sshd_or_fail(workdir: Path, port: int, who: str) -> Iterator[Path]:
    """local_sshd, or the test fails (never skips) saying that `who` need one."""
    try:
        with local_sshd(workdir, port) as client_key:
            yield client_key
    except SshdError as exc:
        pytest.fail(f"{who} need a local sshd; they never skip: {exc}", pytrace=False)
