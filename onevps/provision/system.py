"""`fab setup`'s steps outside Docker: what the server is (facts), VPS_PATH
there and the user's, the swap file."""

from __future__ import annotations

from ..commands import host as cmd
from .plans import SWAPFILE, Memory, Step, dpkg_arch, listed, parse_meminfo, parse_os_release, swap_steps
from .session import Session

# What onevps keeps in VPS_PATH (the only things `fab setup` hands to a non-root VPS_USER).
MANAGED = (".onevps", "compose", "nginx", "dockerfiles", "apps", ".env", "backups")


def facts(s: Session) -> None:
    """Architecture, distribution, user and memory, in one announced line."""
    r = s.report
    r.arch = dpkg_arch(s.probe(cmd.machine(), "read the server's architecture").stdout)
    os_release = s.probe(cmd.read("/etc/os-release"), "read /etc/os-release")
    r.distro = parse_os_release(os_release.stdout if os_release.ok else "")
    uid = s.probe(cmd.user_id(), "read the user's id").stdout.strip()
    r.root = uid == "0"
    r.user = s.probe(cmd.user_name(), "read the user's name").stdout.strip() or "the user"
    mem = s.probe(cmd.read("/proc/meminfo"), "read the server's memory")
    r.memory = parse_meminfo(mem.stdout) if mem.ok else None
    s.say(f"==> server: {r.distro.label}, {r.arch}, user {r.user}{'' if r.root else ' (through sudo -n)'}"
          + (f", {r.memory.ram_mib} MiB RAM, {r.memory.swap_mib} MiB swap" if r.memory else ""))


def workdir(s: Session) -> None:
    """VPS_PATH exists and, for a non-root user, it and what onevps keeps in it are the user's."""
    if s.probe(cmd.is_dir(s.vps_path), f"is there a {s.vps_path}").ok:
        if s.report.root:
            s.say(f"==> VPS_PATH: {s.vps_path} exists")
        else:
            _hand_over(s)
        return
    r, path = s.report, s.vps_path
    made = False
    if not r.root and s.probe(cmd.may_create(path), f"may {r.user} create {path}").ok:
        made = s.host.run(cmd.mkdir(path), f"create {path}", check=False).ok
        if made:
            r.changed.append(f"create {path}")
    if not made:
        s.priv(Step(f"create {path}", tuple(cmd.mkdir(path))))
        if not r.root:
            s.priv(Step(f"give {path} to {r.user}", cmd.chown(r.user, path)))
    s.say(f"==> VPS_PATH: {path} {'would be ' if s.dry_run else ''}created"
          + ("" if r.root else f" (owned by {r.user})"))


def _hand_over(s: Session) -> None:
    """A non-root user needs VPS_PATH and what onevps keeps in it (lock, journal, the
    files an earlier `fab setup` as root sent), never anything else in it."""
    r, path = s.report, s.vps_path
    top = [] if s.probe(cmd.owns(path), f"is {path} {r.user}'s").ok else [path]
    foreign = s.probe(cmd.foreign_entries(r.user, path, MANAGED),
                      f"is what onevps keeps in {path} {r.user}'s").stdout.split()
    if not top and not foreign:
        s.say(f"==> VPS_PATH: {path} exists")
        return
    if top:
        s.priv(Step(f"give {path} to {r.user}", cmd.chown(r.user, path)))
    if foreign:
        s.priv(Step(f"give {', '.join(foreign)} in {path} to {r.user}",
                    cmd.chown(r.user, *[f"{path}/{name}" for name in foreign], recursive=True)))
    s.say(f"==> VPS_PATH: {path} {'would be' if s.dry_run else 'is now'} {r.user}'s"
          + (f" ({', '.join(foreign)} too)" if foreign else ""))


def swap(s: Session) -> None:
    """The swap file --swap asks for, on and in /etc/fstab (an existing one keeps its size)."""
    if s.swap_mib is None:
        return
    swaps = s.probe(cmd.read("/proc/swaps"), "read the active swap").stdout
    fstab = s.probe(cmd.read("/etc/fstab"), "read /etc/fstab").stdout
    exists = s.probe(cmd.exists(SWAPFILE), f"is there a {SWAPFILE}").ok
    steps = swap_steps(s.swap_mib, exists, listed(swaps, SWAPFILE), listed(fstab, SWAPFILE))
    if not steps:
        s.say(f"==> swap: {SWAPFILE} is on and in /etc/fstab")
        return
    if exists:
        s.say(f"==> swap: {SWAPFILE} exists (its size is kept)")
    for step in steps:
        s.say(f"==> swap: {step.name}")
        s.priv(step, hint=f"remove a half-made {SWAPFILE} by hand if needed, then run `fab setup --swap` again")
    if s.report.memory:
        s.report.memory = Memory(s.report.memory.ram_mib, s.report.memory.swap_mib or s.swap_mib)
