"""Where the project's files are: one root and the paths under it, apart from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Project:
    """The project's files under one root: the repository here, VPS_PATH on the server."""

    root: Path

    @property
    def compose_file(self) -> Path:
        return self.root / "compose" / "docker-compose.yml"

    @property
    def env_file(self) -> Path:
        """The settings file read when no other is named (ONEVPS_ENV_FILE)."""
        return self.root / ".env"
