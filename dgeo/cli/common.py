"""Pieces shared by the commands: the staged progress bar (:mod:`dgeo.progress`) and option
parsing."""

from __future__ import annotations

from dgeo.progress import stage_progress

__all__ = ["comma_list", "stage_progress"]


def comma_list(text: str) -> tuple[str, ...]:
    """``"night, snow,"`` -> ``("night", "snow")``."""
    return tuple(item.strip() for item in text.split(",") if item.strip())
