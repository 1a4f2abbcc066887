"""`fab setup` provisioning (onevps.provision): install plans per distribution and
DOCKER_INSTALL mode, sudo wrapping, daemon.json, swap, architecture; and whole
runs against a simulated server (a small state machine that answers the probe
commands and changes its state on the mutating ones). Nothing here touches a
real server; swapon/mkswap are only ever asserted as command strings."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from onevps import provision as p
from onevps.commands import shell
from onevps.errors import CommandFailed, OnevpsError
from onevps.runner import Result

DEBIAN12 = ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
            'VERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n')
DEBIAN13 = ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nVERSION_ID="13"\nVERSION_CODENAME=trixie\nID=debian\n')
JAMMY = ('PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\nVERSION_CODENAME=jammy\nID=ubuntu\n'
         'ID_LIKE=debian\nUBUNTU_CODENAME=jammy\n')
NOBLE = ('PRETTY_NAME="Ubuntu 24.04.1 LTS"\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n'
         'UBUNTU_CODENAME=noble\n')
FOCAL = 'PRETTY_NAME="Ubuntu 20.04.6 LTS"\nVERSION_ID="20.04"\nVERSION_CODENAME=focal\nID=ubuntu\nID_LIKE=debian\n'
MINT = ('PRETTY_NAME="Linux Mint 21.3"\nVERSION_ID="21.3"\nVERSION_CODENAME=virginia\nID=linuxmint\n'
        'ID_LIKE="ubuntu debian"\nUBUNTU_CODENAME=jammy\n')
ROCKY = 'PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\nNAME="Rocky Linux"\nVERSION_ID="9.3"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
MEMINFO_SMALL = "MemTotal:        1015800 kB\nMemFree:          500000 kB\nSwapTotal:             0 kB\n"
MEMINFO_BIG = "MemTotal:        8000000 kB\nSwapTotal:       1048572 kB\n"
APT = "env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300"


def d(text):
    return p.parse_os_release(text)


def joined(steps, root=True):
    return [shlex.join(p.as_root(s.argv, root)) for s in steps if s.kind == "run"]


# ------------------------------------------------------------ pure parts --

def test_os_release_parsing():
    assert d(DEBIAN12) == p.Distro("debian", "12", "bookworm", (), "Debian GNU/Linux 12 (bookworm)")
    assert d(JAMMY).family == "ubuntu" and d(JAMMY).codename == "jammy" and d(JAMMY).id_like == ("debian",)
    assert d(MINT).family == "ubuntu" and d(MINT).codename == "jammy"  # Ubuntu's release, for Docker's repo
    assert d(ROCKY).family is None and d(ROCKY).label == "Rocky Linux 9.3 (Blue Onyx)"
    assert d("").family is None and d("").label == "an unknown system"


def test_arch_mapping_and_refusal():
    assert [p.dpkg_arch(m) for m in ("x86_64\n", "aarch64", "arm64", "amd64")] == ["amd64", "arm64", "arm64", "amd64"]
    for machine in ("armv7l", "riscv64", "s390x"):
        with pytest.raises(OnevpsError) as err:
            p.dpkg_arch(machine)
        assert err.value.what == f"the server is {machine}; onevps images are built for amd64 and arm64"
        assert "\n" not in err.value.message


def test_compose_package_per_distribution():
    assert p.compose_package(d(DEBIAN12)) is None
    assert p.compose_package(d(DEBIAN13)) == "docker-compose"
    assert p.compose_package(d(JAMMY)) == "docker-compose-v2"
    assert p.compose_package(d(NOBLE)) == "docker-compose-v2"
    assert p.compose_package(d(FOCAL)) is None
    assert p.compose_package(d("ID=debian\nVERSION_CODENAME=forky\n")) == "docker-compose"  # testing: no VERSION_ID


def test_distro_mode_per_distribution():
    assert joined(p.install_plan("distro", d(DEBIAN12), "amd64", True, True)) == [
        f"{APT} update", f"{APT} install -y docker.io"]
    assert p.install_plan("distro", d(DEBIAN12), "amd64", True, True)[-1].kind == p.COPY_PLUGIN
    assert joined(p.install_plan("distro", d(DEBIAN13), "amd64", True, True)) == [
        f"{APT} update", f"{APT} install -y docker.io docker-compose"]
    for release in (JAMMY, NOBLE):
        plan = p.install_plan("distro", d(release), "arm64", True, True)
        assert joined(plan) == [f"{APT} update", f"{APT} install -y docker.io docker-compose-v2"]
        assert all(s.kind == "run" for s in plan)
    # engine there, only Compose missing on Debian 12: no apt at all, just the copy
    only = p.install_plan("distro", d(DEBIAN12), "amd64", False, True)
    assert [s.kind for s in only] == [p.COPY_PLUGIN]
    assert p.install_plan("distro", d(DEBIAN12), "amd64", False, False) == []


def test_docker_repo_mode_exact_commands_debian12():
    plan = p.install_plan("docker-repo", d(DEBIAN12), "amd64", True, True)
    cmds = joined(plan)
    line = ("deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian "
            "bookworm stable\n")
    assert cmds == [
        f"{APT} update",
        f"{APT} install -y ca-certificates curl",
        "install -m 0755 -d /etc/apt/keyrings",
        "curl -fsSL https://download.docker.com/linux/debian/gpg -o /etc/apt/keyrings/docker.asc.onevps-tmp",
        "sh -c 'chmod a+r \"$1\" && mv -f \"$1\" \"$2\"' sh /etc/apt/keyrings/docker.asc.onevps-tmp "
        "/etc/apt/keyrings/docker.asc",
        shlex.join(p.write_file_argv("/etc/apt/sources.list.d/docker.list", line)),
        f"{APT} update",
        f"{APT} install -y docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin",
    ]
    assert p.write_file_argv("/x", line)[4:] == (line, "/x", "644")
    assert p.plan_packages(plan) == ["ca-certificates", "curl", "docker-ce", "docker-ce-cli", "containerd.io",
                                     "docker-buildx-plugin", "docker-compose-plugin"]


def test_docker_repo_mode_ubuntu_arm_and_compose_only():
    plan = p.install_plan("docker-repo", d(NOBLE), "arm64", True, True)
    assert "https://download.docker.com/linux/ubuntu/gpg" in joined(plan)[3]
    assert ("deb [arch=arm64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu "
            "noble stable\n") in plan[5].argv
    compose_only = p.install_plan("docker-repo", d(JAMMY), "amd64", False, True)
    assert joined(compose_only)[-1] == f"{APT} install -y docker-compose-plugin"


def test_none_mode_only_checks():
    assert p.install_plan("none", d(DEBIAN12), "amd64", False, False) == []
    with pytest.raises(OnevpsError) as err:
        p.install_plan("none", d(DEBIAN12), "amd64", False, True)
    assert err.value.what == "Docker Compose v2 is missing on the server and DOCKER_INSTALL=none (onevps installs nothing)"
    with pytest.raises(OnevpsError, match="Docker Engine and Docker Compose v2 are missing"):
        p.install_plan("none", d(DEBIAN12), "amd64", True, True)


def test_unknown_distribution_is_one_line():
    for text, has_apt in ((ROCKY, False), (ROCKY, True), (DEBIAN12, False)):
        with pytest.raises(OnevpsError) as err:
            p.install_plan("distro", d(text), "amd64", True, True, has_apt=has_apt)
        assert err.value.what.endswith("; fab setup installs Docker on Debian and Ubuntu only")
        assert err.value.hint == "install Docker Engine and Compose v2 yourself, then set DOCKER_INSTALL=none"
    with pytest.raises(OnevpsError) as err:
        p.install_plan("docker-repo", d(ROCKY), "amd64", True, True, has_apt=False)
    assert err.value.what.startswith("the server runs Rocky Linux 9.3 (Blue Onyx); ")


def test_sudo_wrapping():
    assert p.as_root(["apt-get", "update"], root=True) == ["apt-get", "update"]
    assert shlex.join(p.as_root(["usermod", "-aG", "docker", "ann"], root=False)) == "sudo -n usermod -aG docker ann"


def test_daemon_json_is_written_only_when_absent():
    step = p.daemon_json_step()
    assert step.argv[2].startswith('[ ! -e "$2" ] || exit 0; ')  # checked again on the server itself
    assert step.argv[4:] == (p.daemon_json_text(), "/etc/docker/daemon.json", "644")
    import json

    assert json.loads(p.daemon_json_text()) == {"log-driver": "json-file",
                                                 "log-opts": {"max-size": "10m", "max-file": "3"}}


def test_write_file_argv_really_writes_atomically_and_keeps_existing(tmp_path):
    import subprocess

    target = tmp_path / "etc" / "daemon.json"
    subprocess.run(p.write_file_argv(str(target), "new\n", keep_existing=True), check=True)
    assert target.read_text() == "new\n" and oct(target.stat().st_mode & 0o777) == "0o644"
    subprocess.run(p.write_file_argv(str(target), "other\n", keep_existing=True), check=True)
    assert target.read_text() == "new\n"  # never overwritten
    subprocess.run(p.write_file_argv(str(target), "other\n"), check=True)
    assert target.read_text() == "other\n" and not list(target.parent.glob("*.onevps-tmp"))


def test_swap_commands_and_idempotence():
    fresh = p.swap_steps(2048, exists=False, active=False, in_fstab=False)
    cmds = joined(fresh)
    assert cmds[0] == ("sh -c 'umask 077 && { fallocate -l \"$2M\" \"$1\" 2>/dev/null || "
                       "dd if=/dev/zero of=\"$1\" bs=1M count=\"$2\" status=none; }' sh /swapfile 2048")
    assert cmds[1:4] == ["chmod 600 /swapfile", "mkswap /swapfile", "swapon /swapfile"]
    assert cmds[4] == ("sh -c 'grep -qs \"^$1[[:space:]]\" /etc/fstab || printf \"%s none swap sw 0 0\\n\" "
                       "\"$1\" >> /etc/fstab' sh /swapfile")
    assert p.swap_steps(2048, exists=True, active=True, in_fstab=True) == []
    assert joined(p.swap_steps(2048, exists=True, active=False, in_fstab=True)) == ["swapon /swapfile"]
    assert p.listed("Filename Type Size Used Priority\n/swapfile file 2097148 0 -2\n", "/swapfile")
    assert not p.listed("# /swapfile none swap sw 0 0\n/dev/sda1 / ext4 defaults 0 1\n", "/swapfile")


def test_swap_size_parsing():
    assert p.parse_size("2G") == 2048 and p.parse_size("512M") == 512 and p.parse_size("1GiB") == 1024
    for bad in ("", "2", "two", "2T", "10M"):
        with pytest.raises(OnevpsError, match="is not a swap size"):
            p.parse_size(bad)


def test_memory_warning():
    small = p.parse_meminfo(MEMINFO_SMALL)
    assert small == p.Memory(991, 0)
    assert p.memory_warning(small) == (
        "warning: the server has 991 MiB of RAM and no swap: building the ML tier (torch) may run out of memory; "
        "run `fab setup --swap 2G` or ship the tiers with `fab setup --ship`")
    assert p.memory_warning(p.parse_meminfo(MEMINFO_BIG)) is None
    assert p.memory_warning(p.Memory(991, 1024)) is None


def test_compose_version_parsing():
    assert p.compose_version_of("Docker Compose version v2.40.3\n") == "v2.40.3"
    assert p.compose_version_of("Docker Compose version 2.24.6+ds1-0ubuntu1~22.04.1") == "v2.24.6+ds1-0ubuntu1~22.04.1"
    assert p.compose_version_of("docker-compose version 1.29.2, build unknown") is None


def test_find_local_plugin(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    (b / "docker-compose").write_text("#!/bin/sh\n")
    assert p.find_local_plugin([str(a), str(b)], environ={}) is None  # not executable
    (b / "docker-compose").chmod(0o755)
    assert p.find_local_plugin([str(a), str(b)], environ={}) == b / "docker-compose"


# ------------------------------------------------- a simulated server --

PERM = ("permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: "
        "Get \"http://%2Fvar%2Frun%2Fdocker.sock/v1.24/info\": dial unix /var/run/docker.sock: connect: permission denied")


class FakeServer:
    """A Debian-like server: answers probes from its state, changes state on mutating commands.
    Records every command sent (as one string) with whether it may change something."""

    def __init__(self, os_release=DEBIAN12, machine="x86_64", user="root", sudo=True, docker=None, compose=None,
                 running=False, enabled=False, systemd=True, daemon_json=False, apt=True, paths=(),
                 groups=(), meminfo=MEMINFO_BIG, swaps="Filename Type Size Used Priority\n", fstab="",
                 swapfile=False, dry_run=False, reconnect_ok=True, apt_compose=None, parent_writable=False):
        self.os_release, self.machine, self.user, self.sudo = os_release, machine, user, sudo
        self.docker, self.compose, self.running, self.enabled = docker, compose, running, enabled
        self.systemd, self.daemon_json, self.apt, self.paths = systemd, daemon_json, apt, set(paths)
        self.etc_groups, self.session_groups = set(groups), set(groups)
        self.meminfo, self.swaps, self.fstab, self.swapfile = meminfo, swaps, fstab, swapfile
        self.dry_run, self.reconnect_ok, self.apt_compose = dry_run, reconnect_ok, apt_compose
        self.sent: list[tuple[str, bool]] = []
        self.said: list[str] = []
        self.uploads: list[tuple[str, str]] = []
        self.reconnects = 0
        self.docker_via_sudo = False
        self.owner: dict[str, str] = {}
        self.foreign: set[str] = set()  # entries of VPS_PATH holding files of another user
        self.parent_writable = parent_writable  # may the user create VPS_PATH without sudo
        self.tmp = None

    # Host protocol
    def say(self, message):
        self.said.append(message)

    def put(self, local, remote):
        self.uploads.append((local, remote))

    def reconnect(self):
        if not self.reconnect_ok:
            raise OnevpsError("cannot reach the server: connection refused")
        self.reconnects += 1
        self.session_groups = set(self.etc_groups)

    def sudo_docker(self):
        self.docker_via_sudo = True

    def run(self, argv, step, *, hide=True, check=True, hint=None, mutates=True):
        argv = [str(a) for a in argv]
        self.sent.append((shlex.join(argv), mutates))
        if self.dry_run and mutates:
            return Result(argv, 0, "", "")
        code, out, err = self.answer(argv)
        if check and code:
            raise CommandFailed(f"{step} failed (exit {code}): {shlex.join(argv)}", hint)
        return Result(argv, code, out, err)

    # the server
    def answer(self, a):
        root = self.user == "root"
        if a[:2] == ["sudo", "-n"]:
            if root or not self.sudo:
                return 1, "", "sudo: a password is required"
            a, root = a[2:], True
        if a[:2] == ["env", "DEBIAN_FRONTEND=noninteractive"]:
            assert a[2:5] == ["apt-get", "-o", "DPkg::Lock::Timeout=300"], a  # waits for a busy dpkg lock
            a = [a[2], *a[5:]]
        ok = (0, "", "")
        no = (1, "", "")
        key = a[:2]
        if a == ["true"]:
            return ok
        if a == ["uname", "-m"]:
            return 0, self.machine + "\n", ""
        if a == ["cat", "/etc/os-release"]:
            return 0, self.os_release, ""
        if a == ["id", "-u"]:
            return 0, ("0" if self.user == "root" else "1000") + "\n", ""
        if a == ["id", "-un"]:
            return 0, self.user + "\n", ""
        if a == ["id", "-nG"]:
            return 0, " ".join([self.user, *sorted(self.session_groups)]) + "\n", ""
        if a == ["cat", "/proc/meminfo"]:
            return 0, self.meminfo, ""
        if a == ["cat", "/proc/swaps"]:
            return 0, self.swaps, ""
        if a == ["cat", "/etc/fstab"]:
            return 0, self.fstab, ""
        if a == ["docker", "--version"]:
            return (0, f"Docker version {self.docker}, build 297e128\n", "") if self.docker else (127, "", "not found")
        if a == ["docker", "compose", "version"]:
            if not self.docker:
                return 127, "", ""
            return (0, f"Docker Compose version {self.compose}\n", "") if self.compose else (1, "", "'compose' is not a docker command.")
        if key == ["docker", "info"]:
            if not self.docker or not self.running:
                return 1, "", "Cannot connect to the Docker daemon"
            if not root and "docker" not in self.session_groups:
                return 1, "", PERM
            return 0, self.docker + "\n", ""
        if a == ["test", "-d", "/run/systemd/system"]:
            return ok if self.systemd else no
        if key == ["systemctl", "is-active"]:
            return ok if self.running else no
        if key == ["systemctl", "is-enabled"]:
            return ok if self.enabled else no
        if a == ["sh", "-c", "command -v apt-get"]:
            return (0, "/usr/bin/apt-get\n", "") if self.apt else no
        if a == ["test", "-e", p.DAEMON_JSON]:
            return ok if self.daemon_json else no
        if a == ["test", "-e", p.SWAPFILE]:
            return ok if self.swapfile else no
        if a[:1] == ["test"] and a[1] in ("-d", "-w"):
            path = a[2]
            if path not in self.paths:
                return no
            return ok if a[1] == "-d" or self.user == "root" or self.owner.get(path) == self.user else no
        if a[:2] == ["test", "-O"]:
            return ok if a[2] in self.paths and (self.user == "root" or self.owner.get(a[2]) == self.user) else no
        if a[:3] == ["sh", "-c", p.FOREIGN_ENTRIES]:
            assert a[3:5] == ["sh", self.user] and a[6:] == list(p.MANAGED), a
            return 0, "".join(f"{e}\n" for e in sorted(self.foreign)), ""
        if a[:2] == ["sh", "-c"] and a[2] == 'test -w "$(dirname "$1")"':
            return ok if root or self.parent_writable else no
        if a[:2] == ["mkdir", "-p"] and not root:
            if not self.parent_writable:
                return 1, "", f"mkdir: cannot create directory '{a[2]}': Permission denied"
            self.paths.add(a[2])
            self.owner[a[2]] = self.user
            return ok
        if a[:1] == ["mktemp"]:
            self.tmp = "/tmp/onevps-compose.Ab12Cd"
            return 0, self.tmp + "\n", ""
        if a[:1] == ["chmod"] or a[:1] == ["rm"]:
            return ok
        if self.tmp and a == [self.tmp, "version"]:
            return 0, "Docker Compose version v2.40.3\n", ""
        if not root:
            return 1, "", "Permission denied"
        # privileged, state-changing commands
        if a[:1] == ["apt-get"]:
            if a[1] == "update":
                return ok
            pkgs = a[3:]
            if "docker.io" in pkgs:
                self.docker, self.running, self.enabled = "20.10.24+dfsg1", True, True
                self.etc_groups_add = True
            if {"docker-compose-v2", "docker-compose"} & set(pkgs):
                self.compose = self.apt_compose or "2.24.6"
            return ok
        if a[:2] == ["sh", "-c"] and a[2] == p.INSTALL_PLUGIN:
            self.compose = "v2.40.3"
            return ok
        if a[:2] == ["sh", "-c"] and a[-2:] == [p.DAEMON_JSON, "644"]:
            self.daemon_json = True
            return ok
        if a == ["systemctl", "enable", "--now", "docker"]:
            self.enabled = self.running = True
            return ok
        if a == ["systemctl", "restart", "docker"]:
            return ok
        if a[:2] == ["usermod", "-aG"]:
            self.etc_groups.add(a[2])
            return ok
        if a[:1] == ["mkdir"]:
            self.paths.add(a[-1])
            self.owner[a[-1]] = "root" if root else self.user
            return ok
        if a[:1] == ["chown"]:
            recursive = a[1] == "-R"
            who, targets = (a[2], a[3:]) if recursive else (a[1], a[2:])
            for target in targets:
                self.owner[target] = who.rstrip(":")
                self.foreign.discard(target.rsplit("/", 1)[-1])
            return ok
        if a[:2] == ["sh", "-c"] or a[:1] in (["mkswap"], ["swapon"]):
            return ok  # swap: recorded, never real
        raise AssertionError(f"the fake server does not know {a}")

    def mutating(self):
        return [cmd for cmd, mutates in self.sent if mutates]


def plugin_dir(tmp_path):
    folder = tmp_path / "cli-plugins"
    folder.mkdir(exist_ok=True)
    (folder / "docker-compose").write_text("#!/bin/sh\necho Docker Compose version v2.40.3\n")
    (folder / "docker-compose").chmod(0o755)
    return [str(folder)]


def run(server, mode="distro", tmp_path=None, **kw):
    kw.setdefault("local_machine", "x86_64")
    kw.setdefault("plugin_dirs", plugin_dir(tmp_path) if tmp_path else ())
    kw.setdefault("environ", {})
    return p.provision(server, mode, "/opt/apps", poll=lambda: None, poll_tries=3, **kw)


def test_bare_debian12_distro_installs_docker_io_then_uploads_the_plugin(tmp_path):
    server = FakeServer()
    report = run(server, "distro", tmp_path)
    plugin = f"{tmp_path}/cli-plugins/docker-compose"
    assert server.mutating() == [
        f"{APT} update",
        f"{APT} install -y docker.io",
        "mktemp /tmp/onevps-compose.XXXXXX",
        "chmod 700 /tmp/onevps-compose.Ab12Cd",
        "/tmp/onevps-compose.Ab12Cd version",
        shlex.join(["sh", "-c", p.INSTALL_PLUGIN, "sh", "/tmp/onevps-compose.Ab12Cd", p.PLUGIN_DIR]),
        shlex.join(p.daemon_json_step().argv),
        "systemctl restart docker",  # the package started Docker before daemon.json existed
        "mkdir -p /opt/apps",
    ]
    assert server.uploads == [(plugin, "/tmp/onevps-compose.Ab12Cd")]
    assert (report.docker_version, report.compose_version) == ("20.10.24+dfsg1", "v2.40.3")
    assert "==> Compose v2: installed by copying this machine's plugin (v2.40.3)" in server.said
    assert "==> Docker: 20.10.24+dfsg1 installed" in server.said
    assert "==> installing Docker Engine and Docker Compose v2 (DOCKER_INSTALL=distro: apt packages docker.io)" in server.said

    # (b) the second run on the now ready server changes nothing and says so
    server.sent, server.said = [], []
    again = run(server, "distro", tmp_path)
    assert server.mutating() == [] and again.changed == []
    assert server.said[1:] == ["==> Docker: 20.10.24+dfsg1 already installed",
                               "==> Compose v2: v2.40.3 already installed",
                               "==> log rotation: /etc/docker/daemon.json exists, left as it is",
                               "==> Docker engine: enabled at boot and running",
                               "==> VPS_PATH: /opt/apps exists",
                               "==> Docker host: ready, nothing changed"]


def test_ready_server_sends_nothing_mutating_and_keeps_daemon_json():
    server = FakeServer(docker="24.0.7", compose="v2.21.0", running=True, enabled=True, daemon_json=True,
                        paths={"/opt/apps"})
    report = run(server, "docker-repo")
    assert server.mutating() == [] and report.changed == []
    assert "==> log rotation: /etc/docker/daemon.json exists, left as it is" in server.said


def test_daemon_json_on_a_running_docker_waits_for_the_next_restart():
    server = FakeServer(docker="24.0.7", compose="v2.21.0", running=True, enabled=True, paths={"/opt/apps"})
    run(server, "docker-repo")
    assert server.mutating() == [shlex.join(p.daemon_json_step().argv)]  # no restart under running apps
    assert any("takes effect at Docker's next restart" in line for line in server.said)


def test_debian13_distro_needs_no_copy(tmp_path):
    server = FakeServer(os_release=DEBIAN13)
    run(server, "distro", tmp_path)
    assert f"{APT} install -y docker.io docker-compose" in server.mutating()
    assert server.uploads == []


def test_non_root_user_not_in_the_docker_group(tmp_path):
    server = FakeServer(user="ann", docker="20.10.24+dfsg1", compose="v2.40.3", running=True, enabled=True,
                        daemon_json=True)
    run(server, "distro", tmp_path)
    assert server.mutating() == ["sudo -n usermod -aG docker ann", "sudo -n mkdir -p /opt/apps",
                                 "sudo -n chown ann: /opt/apps"]
    # set up by root earlier: what onevps keeps in VPS_PATH is handed over, nothing else in it
    server.owner["/opt/apps"] = "root"
    server.foreign = {".onevps", "compose"}
    server.sent = []
    run(server, "distro", tmp_path)
    assert server.mutating() == ["sudo -n chown ann: /opt/apps",
                                 "sudo -n chown -R ann: /opt/apps/.onevps /opt/apps/compose"]
    assert "==> VPS_PATH: /opt/apps is now ann's (.onevps, compose too)" in server.said
    assert "sudo -n true" in [cmd for cmd, _ in server.sent]
    assert server.reconnects == 1 and not server.docker_via_sudo
    assert ("==> ann added to the docker group; a new login is needed for it to take effect: onevps reconnects now"
            in server.said)
    # the second run: in the group, owns VPS_PATH: nothing mutating, no sudo needed
    server.sent = []
    run(server, "distro", tmp_path)
    assert server.mutating() == [] and "sudo -n true" not in [c for c, _ in server.sent]


def test_non_root_falls_back_to_sudo_docker_when_reconnecting_fails():
    server = FakeServer(user="ann", docker="20.10.24+dfsg1", compose="v2.40.3", running=True, enabled=True,
                        daemon_json=True, paths={"/opt/apps"}, reconnect_ok=False)
    server.owner["/opt/apps"] = "ann"
    run(server, "distro")
    assert server.docker_via_sudo
    assert "sudo -n docker info --format '{{.ServerVersion}}'" in [c for c, _ in server.sent]


def test_non_root_bare_server_runs_every_install_step_through_sudo(tmp_path):
    server = FakeServer(user="ann", os_release=NOBLE)
    run(server, "distro", tmp_path)
    mutating = server.mutating()
    assert mutating[:2] == [f"sudo -n {APT} update", f"sudo -n {APT} install -y docker.io docker-compose-v2"]
    assert all(cmd.startswith("sudo -n ") for cmd in mutating)


def test_dry_run_lists_packages_and_files_and_changes_nothing(tmp_path):
    server = FakeServer(dry_run=True)
    report = run(server, "docker-repo", tmp_path)
    assert report.docker_usable is False
    assert server.docker is None and not server.daemon_json and "/opt/apps" not in server.paths
    assert ("==> installing Docker Engine and Docker Compose v2 (DOCKER_INSTALL=docker-repo: apt packages "
            "ca-certificates curl docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin)"
            in server.said)
    assert any("/etc/apt/sources.list.d/docker.list" in line for line in server.said)
    assert shlex.join(p.daemon_json_step().argv) in server.mutating()


def test_swap_run_is_idempotent_and_never_real():
    server = FakeServer(docker="24.0.7", compose="v2.21.0", running=True, enabled=True, daemon_json=True,
                        paths={"/opt/apps"}, meminfo=MEMINFO_SMALL)
    report = run(server, "none", swap="2G")
    assert server.mutating()[-4:] == ["chmod 600 /swapfile", "mkswap /swapfile", "swapon /swapfile",
                                      shlex.join(p.swap_steps(2048, True, True, False)[0].argv)]
    assert p.memory_warning(report.memory) is None  # swap now counts
    server.sent = []
    server.swapfile, server.swaps, server.fstab = True, "Filename\n/swapfile file 2097148 0 -2\n", "/swapfile none swap sw 0 0\n"
    run(server, "none", swap="2G")
    assert server.mutating() == []
    assert "==> swap: /swapfile is on and in /etc/fstab" in server.said


# ------------------------------------------------------------- refusals --

@pytest.mark.parametrize("server, mode, expected", [
    (FakeServer(os_release=ROCKY, apt=False), "distro",
     "error: the server runs Rocky Linux 9.3 (Blue Onyx); fab setup installs Docker on Debian and Ubuntu only "
     "(hint: install Docker Engine and Compose v2 yourself, then set DOCKER_INSTALL=none)"),
    (FakeServer(machine="armv7l"), "distro",
     "error: the server is armv7l; onevps images are built for amd64 and arm64 "
     "(hint: use an amd64 (x86_64) or arm64 (aarch64) server)"),
    (FakeServer(user="bob", sudo=False), "distro",
     "error: bob cannot run sudo without a password on the server: fab setup needs it to install Docker and "
     "configure the server (hint: add it to sudoers with NOPASSWD (e.g. `bob ALL=(ALL) NOPASSWD:ALL` in "
     "/etc/sudoers.d/bob) or use VPS_USER=root)"),
    (FakeServer(), "none",
     "error: Docker Engine and Docker Compose v2 are missing on the server and DOCKER_INSTALL=none (onevps installs "
     "nothing) (hint: install Docker Engine and Docker Compose v2 yourself (https://docs.docker.com/engine/install/), "
     "or set DOCKER_INSTALL=distro or docker-repo)"),
], ids=["not-debian", "other-arch", "no-sudo", "none-missing"])
def test_refusals_are_one_line_and_change_nothing(server, mode, expected):
    with pytest.raises(OnevpsError) as err:
        run(server, mode)
    assert err.value.message == expected
    assert server.mutating() == []


def test_plugin_of_another_architecture_is_refused_with_the_fix(tmp_path):
    server = FakeServer(docker="20.10.24+dfsg1", running=True, enabled=True)
    with pytest.raises(OnevpsError) as err:
        run(server, "distro", tmp_path, local_machine="arm64")
    assert err.value.message == (
        "error: this machine's Compose v2 plugin is for arm64, the server is amd64: it cannot be copied "
        "(hint: install Docker Compose v2 on the server: https://docs.docker.com/compose/install/linux/ or set "
        "DOCKER_INSTALL=docker-repo)")
    assert server.mutating() == [] and server.uploads == []


def test_no_local_plugin_is_refused_with_the_fix():
    server = FakeServer(docker="20.10.24+dfsg1", running=True, enabled=True)
    with pytest.raises(OnevpsError, match="this machine has no Compose v2 plugin to copy.*DOCKER_INSTALL=docker-repo"):
        run(server, "distro", plugin_dirs=())


def test_require_docker_on_server_names_the_docker_group():
    from types import SimpleNamespace

    from onevps import server

    class R:
        def run(self, argv, step, **kw):
            return Result(list(argv), 1, "", PERM)

    c = SimpleNamespace(run=R(), conn=SimpleNamespace(user="ann"), rs=SimpleNamespace(vps_user="ann", vps_host="h"))
    with pytest.raises(OnevpsError) as err:
        server.require_docker_on_server(c)
    assert err.value.message == ("error: VPS_USER ann may not use Docker (permission denied on /var/run/docker.sock) "
                                 "(hint: run `fab setup` (adds it to the docker group))")


def test_fab_setup_refuses_a_bad_swap_size_before_connecting(tmp_path):
    import subprocess
    import sys

    fab = str(Path(sys.executable).with_name("fab"))
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([fab, "setup", "--swap", "lots"], cwd=root, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "ONEVPS_ENV_FILE": str(tmp_path / "absent.env"),
                              "VPS_HOST": "127.0.0.1", "VPS_PORT": "1"})
    assert res.returncode == 1
    assert res.stderr.strip() == "error: --swap=lots is not a swap size of at least 64M (hint: e.g. --swap 2G or --swap 1024M)"


def test_docker_install_none_only_checks():
    """none: no daemon.json, no systemctl, no usermod; what is missing is one line."""
    server = FakeServer(docker="24.0.7", compose="v2.21.0", running=True, enabled=False, paths={"/opt/apps"})
    run(server, "none")
    assert server.mutating() == [] and not server.daemon_json
    assert any(line.startswith("==> log rotation: the server has no /etc/docker/daemon.json; DOCKER_INSTALL=none "
                               "changes nothing") for line in server.said)
    user = FakeServer(user="ann", sudo=False, docker="24.0.7", compose="v2.21.0", running=True, enabled=True,
                      daemon_json=True, paths={"/opt/apps"})
    with pytest.raises(OnevpsError, match=r"VPS_USER ann is not in the server's docker group \(DOCKER_INSTALL=none "
                                          r"changes nothing\) \(hint: add it \(`sudo usermod -aG docker ann`\)"):
        run(user, "none")
    assert user.mutating() == []


def test_a_user_without_sudo_but_set_up_by_an_admin_needs_no_sudo():
    """Docker installed, the user in the docker group, VPS_PATH creatable by the user: no sudo at all."""
    server = FakeServer(user="ann", sudo=False, docker="24.0.7", compose="v2.21.0", running=True, enabled=True,
                        daemon_json=True, groups={"docker"}, parent_writable=True)
    run(server, "none")
    assert server.mutating() == ["mkdir -p /opt/apps"]
    assert server.owner["/opt/apps"] == "ann" and "==> VPS_PATH: /opt/apps created (owned by ann)" in server.said


def test_sudo_docker_runner_wraps_docker_only_and_keeps_the_env_after_sudo():
    """sudo drops the environment: the tier tags go in an `env` after it; other commands are untouched."""
    from invoke import MockContext, Result as InvokeResult

    ctx = MockContext(run={"sudo -n env BASE_TAG=c-1 ML_TAG=c-2 docker compose version": InvokeResult("v2"),
                           "env BASE_TAG=c-1 ML_TAG=c-2 uname -m": InvokeResult("x86_64")})
    runner = p.SudoDockerRunner(ctx, env={"ML_TAG": "c-2", "BASE_TAG": "c-1"})
    assert runner.run(["docker", "compose", "version"], "compose").stdout == "v2"
    assert runner.run(["uname", "-m"], "arch").stdout == "x86_64"
    assert tuple(runner.docker_prefix) == ("sudo", "-n")


def test_reconnect_swaps_the_connection_everywhere(monkeypatch):
    """A new login (the new docker group) replaces the connection of the context, its runner
    and the provisioning runner; the old one is closed only after the new one is open."""
    from types import SimpleNamespace

    from onevps import remote

    class Conn:
        def __init__(self, name):
            self.name, self.host, self.user, self.port, self.closed = name, "vps", "ann", 22, False

        def close(self):
            self.closed = True

    old, new = Conn("old"), Conn("new")
    opened = []
    monkeypatch.setattr(remote, "connect", lambda server: opened.append(server) or new)
    run = remote.RemoteRunner(old)
    c = SimpleNamespace(conn=old, run=run, local=SimpleNamespace(vps_ssh_key=None), say=lambda m: None)
    host = p.CtxHost(c)
    host.reconnect()
    assert opened == [remote.Server("vps", "ann", 22, None)]
    # The task's runner gets a new shell of the new login (its new groups).
    assert c.conn is new and c.run.ctx.conn is new and host.runner.ctx is new and old.closed
    host.sudo_docker()
    assert isinstance(c.run, p.SudoDockerRunner) and c.run.ctx.conn is new


# ------------------------------------------------------ whole runs, golden --

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "recipes"
UPDATE_GOLDEN = bool(os.environ.get("ONEVPS_UPDATE_GOLDEN"))
GOLDEN_RUNS = {
    "provision-debian12.txt": ("a bare Debian 12 server as root, DOCKER_INSTALL=distro",
                               dict(), dict(mode="distro")),
    "provision-debian12-user-swap.txt": ("a bare Debian 12 server as VPS_USER ann (sudo -n), DOCKER_INSTALL=distro, "
                                         "--swap 2G", dict(user="ann", meminfo=MEMINFO_SMALL),
                                         dict(mode="distro", swap="2G")),
}


@pytest.mark.parametrize("golden", GOLDEN_RUNS)
def test_a_whole_provision_run_is_its_golden_list_of_commands(tmp_path, golden):
    """Every command of a whole run, in order: "?" reads the server, "!" changes it. Regenerate with
    `ONEVPS_UPDATE_GOLDEN=1 pytest tests/unit/test_provision.py` and review the diff."""
    what, server_kw, run_kw = GOLDEN_RUNS[golden]
    server = FakeServer(**server_kw)
    run(server, tmp_path=tmp_path, **run_kw)
    lines = [f"# `fab setup` on {what}: every command in order (tests/unit/test_provision.py).",
             '# "?" reads the server, "!" changes it (a newline inside an argument is shown as \\n).']
    lines += [f"{'!' if mutates else '?'} {cmd}".replace("\n", "\\n") for cmd, mutates in server.sent]
    text = "\n".join(lines) + "\n"
    path = GOLDEN / golden
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing; create it with ONEVPS_UPDATE_GOLDEN=1"
    assert text == path.read_text()


def test_place_is_the_last_step_of_remote_put_text():
    """One builder for "chmod the temp file, then mv it over the target" (remote.put_text's last command)."""
    assert shlex.join(shell.place("600", "/srv/.env.onevps-tmp", "/srv/.env")) == (
        "sh -c 'chmod \"$1\" \"$2\" && mv -f \"$2\" \"$3\"' sh 600 /srv/.env.onevps-tmp /srv/.env")
