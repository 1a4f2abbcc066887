"""What the unit goldens (the files in tests/golden/) are rendered from.

Not the live compose/docker-compose.yml: a frozen copy of it kept in
tests/unit/fixtures/compose/ (its opening comment says why and how to move it
on), so a change to the live compose file breaks no golden. The tests that are
about the live file itself still read compose/.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from onevps import nginx
from onevps.project import Project
from onevps.registry import Registry, app_dirs
from onevps.registry import load as load_registry

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "tests" / "unit" / "fixtures" / "compose" / "docker-compose.yml"


@dataclass(frozen=True)
class GoldenProject(Project):
    """The repository's files (dockerfiles, nginx, apps...), but the frozen compose file."""

    @property
    def compose_file(self) -> Path:
        return COMPOSE


def registry() -> Registry:
    """The app registry of the frozen compose file."""
    return load_registry(COMPOSE)


def repository(dest: Path, folders: Iterable[str]) -> Project:
    """A project at dest: the frozen compose file, the repository's folders (nginx, apps, ...)
    copied and made to match it: the nginx files it renders, a folder for each of its apps (empty
    where the repository has none) and no other. So the live compose file leaves no trace."""
    for sub in folders:
        shutil.copytree(ROOT / sub, dest / sub, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    project = Project(dest)
    project.compose_file.parent.mkdir(exist_ok=True)
    shutil.copyfile(COMPOSE, project.compose_file)
    reg = registry()
    if (dest / "nginx").is_dir():
        nginx.write(dest, reg)
    if (dest / "apps").is_dir():
        names, found = set(reg.names()), set(app_dirs(dest))
        for name in found - names:
            shutil.rmtree(dest / "apps" / name)
        for name in names - found:
            (dest / "apps" / name).mkdir()
    return project
