"""Pieces shared by the commands: a staged progress bar and option parsing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def stage_progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A transient rich progress bar; yields ``progress(stage, done, total)`` for the library."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        yield progress


def comma_list(text: str) -> tuple[str, ...]:
    """``"night, snow,"`` -> ``("night", "snow")``."""
    return tuple(item.strip() for item in text.split(",") if item.strip())
