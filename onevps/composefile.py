"""The one configured ruamel.yaml round-trip editor, and atomic writes.

Compose files are maintained by hand: a load + dump must give back the same
bytes (comments, key order, quoting, anchors, blank lines, indentation). The
golden tests hold every compose file in the repository to that. The edits
work on LF text; whoever writes a file back keeps its style (Style: CRLF
line endings, a BOM, no newline at the end), so `git diff` shows only the edit.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .errors import ComposeFileError

BOM = "\ufeff"


def yaml() -> YAML:
    """A round-trip YAML configured for the project's compose style."""
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap long lines (healthcheck commands)
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def loads(text: str, name: str = "<compose>") -> Any:
    """Parse YAML text; a syntax error names the file and line."""
    try:
        data = yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name} line {mark.line + 1} column {mark.column + 1}" if mark else name
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise ComposeFileError(f"{where}: {problem}", "fix the YAML by hand (or restore it with git)") from None
    except YAMLError as exc:
        raise ComposeFileError(f"{name}: {str(exc).splitlines()[0]}", "fix the YAML by hand (or restore it with git)") from None
    return data


def read_exact(path: Path) -> str:
    """The file's text exactly as stored: line endings, BOM and last line untouched."""
    with open(path, encoding="utf-8", newline="") as fh:
        return fh.read()


def load(path: Path) -> Any:
    """Parse a compose file, whatever its line endings (or a BOM); any failure
    to read it (missing, a folder, not UTF-8, any OSError) is one line naming it."""
    try:
        text = read_exact(path)
    except FileNotFoundError:
        raise ComposeFileError(f"{path} does not exist", "restore it with `git checkout -- compose/`") from None
    except IsADirectoryError:
        raise ComposeFileError(f"{path} is a folder, not a file", "restore it with `git checkout -- compose/`") from None
    except UnicodeDecodeError as exc:
        raise ComposeFileError(f"{path} is not UTF-8 text (byte {exc.start})", "save it as UTF-8") from None
    except OSError as exc:
        raise ComposeFileError(f"cannot read {path}: {exc.strerror or exc}", "check the file's permissions") from None
    return loads(text.replace("\r\n", "\n").replace("\r", "\n"), name=str(path))


@dataclass(frozen=True)
class Style:
    """How a hand-kept text file is written: its line ending (that of its first
    line), a UTF-8 BOM or not, a newline after the last line or not. A rewrite
    keeps them, so `git diff` shows only what changed."""

    newline: str = "\n"
    bom: bool = False
    final_newline: bool = True

    @classmethod
    def of(cls, text: str) -> Style:
        ending = re.search(r"\r\n|\r|\n", text)
        body = text.removeprefix(BOM)
        return cls(newline=ending.group() if ending else "\n", bom=text.startswith(BOM),
                   final_newline=not body or body.endswith(("\n", "\r")))

    def apply(self, text: str) -> str:
        """LF text (as dumps and the renderers make it) in this style."""
        if not self.final_newline:
            text = text.rstrip("\n")
        if self.newline != "\n":
            text = text.replace("\n", self.newline)
        return BOM + text if self.bom and not text.startswith(BOM) else text


def dumps(data: Any) -> str:
    buf = io.StringIO()
    yaml().dump(data, buf)
    text = buf.getvalue()
    return text.rstrip("\n") + "\n"  # exactly one trailing newline


def atomic_write(path: Path, text: str, mode: int | None = None) -> None:
    """Write text so that readers see the old file or the new one, never half.

    Temp file in the same folder (mkstemp: mode 600 from its first byte), flush,
    fsync, then the file's mode (`mode`, else the old file's, else 644), os.replace.
    A file holding secrets passes mode=0o600 and is never readable by others.
    """
    path = Path(path)
    if mode is None:
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
