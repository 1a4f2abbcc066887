"""User-facing errors: one clear line, no traceback.

OnevpsError subclasses invoke's Exit, so raising it from any task makes
invoke print the message to stderr and exit non-zero without a traceback.
"""

from __future__ import annotations

from typing import Iterable

from invoke.exceptions import Exit

# Secret values this process has read (onevps.config.load registers the values of
# REDIS_PASSWORD, CHROMA_TOKEN and every *_PASSWORD/_TOKEN/_SECRET/_KEY). Every
# error message and every line onevps prints passes through redact(), so a value
# that slips into a command line or a command's output is shown as MASK.
MASK = "***"
MIN_SECRET_LENGTH = 6  # shorter values are too common to mask in free text
_SECRETS: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Remember secret values so that redact() masks them from now on."""
    _SECRETS.update(v for v in values if v and len(v) >= MIN_SECRET_LENGTH)


def redact(text: str) -> str:
    """`text` with every registered secret value (also inside longer values such
    as REDIS_URL) replaced by ***."""
    for value in sorted(_SECRETS, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


# Whether the output a command streamed (runner.RedactingStream) last ended inside a line:
# a remote command cut off mid-line (a dropped SSH connection) leaves it so.
_OUTPUT = {"mid_line": False}


def output_ends(text: str) -> None:
    """Note where streamed output stopped (called with what was just written)."""
    if text:
        _OUTPUT["mid_line"] = not text.endswith("\n")


class OnevpsError(Exit):
    """What failed, and what to do about it, in one line. Secret values are masked."""

    def __init__(self, what: str, hint: str | None = None, code: int = 1):
        what, hint = redact(what), (redact(hint) if hint else hint)
        self.what = what
        self.hint = hint
        line = f"error: {what}"
        if hint:
            line += f" (hint: {hint})"
        super().__init__(message=line, code=code)

    @property
    def message(self) -> str:
        """The line invoke prints; on a line of its own even after output cut off mid-line."""
        return ("\n" if _OUTPUT["mid_line"] else "") + self.line

    @message.setter
    def message(self, value: str) -> None:
        self.line = value

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.line


class ConfigError(OnevpsError):
    """A missing or malformed setting; the message names the key."""


class ComposeFileError(OnevpsError):
    """The compose file cannot be read or does not describe a valid stack."""


class CommandFailed(OnevpsError):
    """An external command (docker, compose, ssh) failed."""

    def __init__(self, what: str, hint: str | None = None, code: int = 1, output: str = "",
                 step: str | None = None):
        super().__init__(what, hint, code)
        self.output = redact(output)
        # What failed without the command line: what a journal may store.
        self.step = redact(step) if step else self.what.splitlines()[0]


def number_flag(flag: str, value: object, minimum: float = 0, whole: bool = True) -> int | float:
    """A numeric task flag (tasks declare them as strings so that a typo like
    `--tail abc` reaches us instead of a traceback in invoke's parser)."""
    try:
        number: int | float = int(str(value)) if whole else float(str(value))
    except ValueError:
        number = float("nan")
    if not number >= minimum:  # also catches NaN
        kind = "a whole number" if whole else "a number"
        raise OnevpsError(f"--{flag}={value} is not {kind} of at least {minimum:g}", f"e.g. --{flag}={max(minimum, 1):g}")
    return number


def confirm(question: str, refusal: str) -> bool:
    """Ask a yes/no question on a terminal; without one, refuse (one line naming --yes)."""
    import sys

    if not sys.stdin or not sys.stdin.isatty():
        raise OnevpsError(f"refusing to {refusal} without confirmation", "add --yes to confirm")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
