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

    The bar is drawn from the first call on, so a command that stops on bad input before any
    progress prints its one-line error without an empty bar above it.

    Args:
        console: where to draw (default: rich's console).
        transient: remove the bar when done.
        remaining: also show the estimated time remaining.
    """
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    bar = Progress(*columns, console=console, transient=transient)
    tasks = []

    def progress(stage: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()
            tasks.append(bar.add_task(stage, total=total))
        bar.update(tasks[0], description=stage, completed=done, total=total)

    try:
        yield progress
    finally:
        if tasks:
            bar.stop()
