"""dgeo.progress: the bar appears with the first report, never for a command that stops before."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from dgeo.errors import InputError
from dgeo.progress import stage_progress


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=100), buf


def test_no_bar_before_the_first_report():
    console, buf = _console()
    with pytest.raises(InputError), stage_progress(console, transient=False):
        raise InputError("bad folder")
    assert buf.getvalue() == ""


def test_the_bar_shows_stage_and_counts():
    console, buf = _console()
    with stage_progress(console, transient=False) as progress:
        progress("localize", 3, 7)
        progress("localize", 7, 7)
    text = buf.getvalue()
    assert "localize" in text and "7/7" in text
