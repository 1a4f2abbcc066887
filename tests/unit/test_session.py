"""The framing of onevps.session: a command's output ends at the marker line, however
the channel cuts it into chunks; streamed output never shows the marker."""

from __future__ import annotations

import io

import pytest

from onevps.session import _Stream

END = b"\n__onevps_end_0123456789abcdef "


def fed(chunks: list[bytes], echo: io.StringIO | None = None) -> _Stream:
    stream = _Stream(END, echo)
    for chunk in chunks:
        stream.feed(chunk)
    return stream


@pytest.mark.parametrize("output", [b"", b"abc", b"abc\n", b"line 1\nline 2\n\n", "h\u00e9\n".encode()])
def test_the_output_is_what_came_before_the_marker(output):
    data = output + END + b"7\n"
    for size in (1, 3, len(data)):
        stream = fed([data[i:i + size] for i in range(0, len(data), size)])
        assert stream.done_at is not None
        assert stream.text() == output.decode()
        assert stream.code() == 7


def test_not_done_until_the_marker_line_is_whole():
    stream = fed([b"abc", END, b"0"])
    assert stream.done_at is None
    stream.feed(b"\n")
    assert stream.done_at == 3 and stream.code() == 0


def test_a_marker_like_line_without_the_session_token_is_output():
    output = b"\n__onevps_end_ffff 1\nmore\n"
    stream = fed([output, END, b"0\n"])
    assert stream.text() == output.decode()


def test_streamed_output_never_shows_the_marker():
    echo = io.StringIO()
    data = b"step 1\nstep 2\n" + END + b"0\n"
    fed([data[i:i + 2] for i in range(0, len(data), 2)], echo)
    assert echo.getvalue() == "step 1\nstep 2\n"
