"""User-facing errors: one clear line, no traceback.

OnevpsError subclasses invoke's Exit, so raising it from any task makes
invoke print the message to stderr and exit non-zero without a traceback.
"""

from __future__ import annotations

from invoke.exceptions import Exit


class OnevpsError(Exit):
    """What failed, and what to do about it, in one line."""

    def __init__(self, what: str, hint: str | None = None, code: int = 1):
        self.what = what
        self.hint = hint
        line = f"error: {what}"
        if hint:
            line += f" (hint: {hint})"
        super().__init__(message=line, code=code)

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class ConfigError(OnevpsError):
    """A missing or malformed setting; the message names the key."""


class ComposeFileError(OnevpsError):
    """The compose file cannot be read or does not describe a valid stack."""


class CommandFailed(OnevpsError):
    """An external command (docker, compose, ssh) failed."""

    def __init__(self, what: str, hint: str | None = None, code: int = 1, output: str = ""):
        super().__init__(what, hint, code)
        self.output = output


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
