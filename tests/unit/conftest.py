"""Unit tests: the pure parts, no Docker, no network."""

import pytest

from onevps import errors


@pytest.fixture(autouse=True)
def _output_starts_on_a_new_line():
    """Each test starts as a fresh `inv`/`fab` run does: no streamed output cut mid-line
    (errors.OnevpsError.message begins with a newline after one)."""
    errors._OUTPUT["mid_line"] = False
    yield
