"""The one rich progress bar of dgeo: ``progress(stage, done, total)`` callbacks for the library.

The library reports progress through plain callbacks (no layer below the CLI draws anything by
itself); the CLI commands and the run driver of :mod:`dgeo.pipeline.runs` turn them into this bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def stage_progress(
    console: Console | None = None, *, transient: bool = True, remaining: bool = False
) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar; yields ``progress(stage, done, total)``.

    Args:
        console: where to draw (default: rich's console).
        transient: remove the bar when done.
        remaining: also show the estimated time remaining.
    """
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=console, transient=transient) as bar:
        task = bar.add_task("starting", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        yield progress
