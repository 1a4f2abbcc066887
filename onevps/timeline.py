"""The timeline of one server task: the seconds each step took, printed as the
step ends (`  [timeline] build 1.42 s`) and kept for the deploy journal.

A step is the time since the previous lap, so laps cover the whole run
without gaps; the clock starts when this module is first imported (the
command's start, before the SSH connection)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STARTED = time.monotonic()


@dataclass
class Timeline:
    start: float = STARTED
    mark: float = STARTED
    steps: dict[str, float] = field(default_factory=dict)  # since the last take()
    switched: float | None = None  # seconds from the start until traffic moved to the new version

    def lap(self, step: str) -> float:
        """The seconds since the last lap go to step (added up when a step repeats)."""
        now = time.monotonic()
        seconds, self.mark = now - self.mark, now
        self.steps[step] = round(self.steps.get(step, 0.0) + seconds, 2)
        return seconds

    def take(self) -> dict[str, float]:
        """The steps recorded since the last take (for one journal entry)."""
        steps, self.steps = self.steps, {}
        return steps

    def total(self) -> float:
        return time.monotonic() - self.start

    def mark_switched(self) -> None:
        self.switched = round(self.total(), 2)


def line(step: str, seconds: float) -> str:
    return f"  [timeline] {step} {seconds:.2f} s"
