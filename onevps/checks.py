"""`inv check`: apps/, the compose file and nginx agree; addresses are unique."""

from __future__ import annotations

from . import nginx, registry as registry_mod
from .errors import OnevpsError
from .project import Project


def problems(project: Project) -> list[str]:
    reg = registry_mod.load(project.compose_file)
    found = registry_mod.problems(reg)
    found += nginx.drift(project.root, reg)
    in_compose = set(reg.names())
    folders = set(registry_mod.app_dirs(project.root))
    for name in sorted(folders - in_compose):
        found.append(f"apps/{name} has no compose entry (add it with `inv new-app {name}` or delete the folder)")
    for name in sorted(in_compose - folders):
        found.append(f"app {name} is in the compose file but apps/{name} is missing "
                     f"(restore the folder with git or remove the entry with `inv remove-app {name}`)")
    return found


def run(project: Project) -> str:
    found = problems(project)
    if found:
        raise OnevpsError(f"{len(found)} problem(s): " + "; ".join(found), "fix them, then run `inv check` again")
    reg = registry_mod.load(project.compose_file)
    return (f"ok: {len(reg.apps)} apps ({len(reg.by_tier('base'))} base, {len(reg.by_tier('ml'))} ml), "
            f"addresses unique, nginx routes in sync")
