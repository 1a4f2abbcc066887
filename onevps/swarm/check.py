"""`inv swarm-check`: what Swarm ignores or rejects in the compose file, what
onevps does about each, and every construct onevps refuses to carry over."""

from __future__ import annotations

from typing import Any, Sequence

from ..config import Settings
from ..errors import OnevpsError
from ..project import Project
from .render import Finding, Rendered, examine


def findings(project: Project, settings: Settings, data: Any = None) -> list[Finding]:
    """What render() meets in the compose file (keys of keys.RULES), refused constructs included."""
    return examine(project, settings, data=data).findings


def check(project: Project, settings: Settings, data: Any = None) -> Rendered:
    """Every finding and every refusal of the whole compose file; raises nothing for a refusal."""
    return examine(project, settings, data=data)


def report(found: Sequence[Finding], refused: Sequence[OnevpsError] = ()) -> str:
    """`inv swarm-check`: one block per key, then one error line per refused construct."""
    if not found and not refused:
        return "nothing in the compose file needs changing for Swarm"
    blocks = []
    for f in found:
        blocks.append(f"{f.key} [{f.rule.swarm}] in {', '.join(f.services)}\n"
                      f"    Swarm:  {f.rule.what}\n"
                      f"    onevps: {f.rule.fix}")
    rejects = sum(1 for f in found if f.rule.swarm == "rejects")
    summary = f"{len(found)} findings ({rejects} would make `docker stack deploy` fail); "
    if not refused:
        return "\n".join(blocks) + "\n" + summary + "`inv swarm-render` applies every fix above"
    errors = [err.message for err in refused]
    return "\n".join(blocks + errors) + "\n" + summary + (
        f"`inv swarm-render` refuses the {len(refused)} error(s) above: fix them in the compose file")
