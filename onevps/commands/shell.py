"""Commands for the server's shell (files under VPS_PATH, the deploy lock, the journal)
as argv lists. Values travel as positional arguments of `sh -c SCRIPT sh ARGS...`,
never inside the script. Nothing runs here."""

from __future__ import annotations

from typing import Sequence

# sha256 of every file under the folders ($2...) of $1; nothing when $1 does not exist.
HASHES = ('{ cd "$1" 2>/dev/null || exit 0; } && shift && for d in "$@"; do [ -d "$d" ] && find "$d" -type f -print0; '
          'done | xargs -0 -r sha256sum')


def sh(script: str, *args: str) -> list[str]:
    """`sh -c SCRIPT sh ARGS...`: the arguments are $1, $2, ... inside the script."""
    return ["sh", "-c", script, "sh", *args]


def with_env(env: dict[str, str], argv: Sequence[str]) -> list[str]:
    """argv run with the variables set (`env K=V ... ARGV`; as is without variables)."""
    return ["env", *[f"{k}={v}" for k, v in sorted(env.items())], *argv] if env else list(argv)


def file_hashes(root: str, dirs: Sequence[str]) -> list[str]:
    return sh(HASHES, root, *dirs)


def mkdir_p(*folders: str) -> list[str]:
    return ["mkdir", "-p", *folders]


def private_dir(folder: str, sub: str | None = None) -> list[str]:
    """Create folder (and folder/sub) readable by its owner only."""
    if sub is None:
        return sh('umask 077 && mkdir -p "$1"', folder)
    return sh(f'umask 077 && mkdir -p "$1/{sub}"', folder)


def rm_f(*paths: str) -> list[str]:
    return ["rm", "-f", *paths]


def rm_rf(path: str) -> list[str]:
    return ["rm", "-rf", path]


def is_dir(path: str) -> list[str]:
    return ["test", "-d", path]


def cat(path: str) -> list[str]:
    return ["cat", path]


def free_mb(path: str) -> list[str]:
    """The file system of path, in megabytes, POSIX format."""
    return ["df", "-P", "-m", path]


def empty_private_file(path: str) -> list[str]:
    """A new, empty file of mode 600 (a leftover file of that name goes first: it keeps no other mode)."""
    return sh('rm -f "$1" && umask 077 && : > "$1"', path)


def place(mode: str, tmp: str, target: str) -> list[str]:
    """chmod the uploaded tmp file, then rename it over target (atomic)."""
    return sh('chmod "$1" "$2" && mv -f "$2" "$3"', mode, tmp, target)


def take_lock(lock_dir: str, holder: str) -> list[str]:
    """mkdir is atomic: fails when lock_dir exists; the holder's line goes in lock_dir/holder."""
    return sh('mkdir -p "$(dirname "$1")" && mkdir "$1" && printf "%s\\n" "$2" > "$1/holder"', lock_dir, holder)


def write_file_line(path: str, line: str) -> list[str]:
    """path holds line (replaced whole, through a temporary file and a rename)."""
    return sh('printf "%s\\n" "$2" > "$1.tmp" && mv -f "$1.tmp" "$1"', path, line)


def append_line(path: str, line: str) -> list[str]:
    return sh('mkdir -p "$(dirname "$1")" && printf "%s\\n" "$2" >> "$1"', path, line)


def write_backup(vps_path: str, work: str, manifest: str, archive: str) -> list[str]:
    """The backup archive (mode 600) of work, with the server's .env and the manifest; work goes."""
    return sh('umask 077 && cp "$1/.env" "$2/env" && printf "%s\\n" "$3" > "$2/manifest.json" && '
              'tar -cf "$4" -C "$2" . && chmod 600 "$4" && rm -rf "$2"', vps_path, work, manifest, archive)


def restore_env(work: str, vps_path: str) -> list[str]:
    """The unpacked backup's env as the server's .env (mode 600, atomic)."""
    return sh('umask 077 && rm -f "$2/.env.onevps-tmp" && cp "$1/env" "$2/.env.onevps-tmp" && '
              'mv -f "$2/.env.onevps-tmp" "$2/.env"', work, vps_path)
