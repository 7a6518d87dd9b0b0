"""Reports of an :class:`~dgeo.eval.metrics.EvalResult`: a rich table and a JSON-ready dict.

The table has one row per group (sorted) and a last row ``all``: the number of queries, the
number of failures, the recall at each threshold in percent with one decimal, and the true
median position (m) and rotation (°) errors. Degrees appear here and nowhere in the metrics API.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from dgeo.eval.metrics import EvalResult, Summary
from dgeo.io.atomic import atomic_write_text

__all__ = ["format_table", "print_report", "to_dict", "write_json"]


def _num(x: float, digits: int) -> str:
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def _json_float(x: float) -> float | None:
    """JSON has no inf/NaN: they become ``null`` (a failed query or an empty group)."""
    return x if math.isfinite(x) else None


def format_table(result: EvalResult, title: str | None = None) -> Table:
    """Build the rich table of ``result``: one row per group, then ``all``.

    Args:
        result: the evaluation.
        title: the table title; defaults to a description of the thresholds.
    Returns:
        A :class:`rich.table.Table` ready for ``Console.print``.
    """
    table = Table(
        title=title or "Localization recall (%) within position / rotation error",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    table.add_column("group" if result.groups is not None else "queries", style="bold")
    table.add_column("N", justify="right")
    table.add_column("failed", justify="right")
    for th in result.thresholds:  # two-line headers keep tables narrow
        table.add_column(f"{th.translation_m:g}m\n{th.rotation_deg:g}°", justify="right")
    table.add_column("median\nm", justify="right")
    table.add_column("median\n°", justify="right")
    summaries = result.summaries()
    for i, s in enumerate(summaries):
        table.add_row(
            s.label,
            str(s.num_queries),
            str(s.num_failed),
            *(_num(100 * r, 1) for r in s.recall),
            _num(s.median_translation, 3),
            _num(s.median_rotation_deg, 2),
            end_section=i == len(summaries) - 2,
        )
    return table


def print_report(
    result: EvalResult, console: Console | None = None, *, title: str | None = None
) -> None:
    """Print the table of ``result`` and its warnings (missing, unmatched names) to ``console``.

    On a terminal the table fits the terminal; elsewhere it is printed at its natural width.

    Args:
        result: the evaluation.
        console: where to print; a new stdout :class:`~rich.console.Console` by default.
        title: the table title, see :func:`format_table`.
    """
    console = console or Console()
    table = format_table(result, title)
    # Off a terminal (pipes, files, tests) rich assumes 80 columns and would squeeze wide tables
    # (the hloc set) into ellipses; there the table gets the width it needs.
    natural = console.measure(table, options=console.options.update_width(1000)).maximum
    if console.is_terminal or natural <= console.width:
        console.print(table)
    else:
        saved = console.width  # Console.print(width=) cannot exceed the console's own width
        console.width = natural
        try:
            console.print(table)
        finally:
            console.width = saved
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)


def _summary_dict(s: Summary) -> dict[str, Any]:
    return {
        "num_queries": s.num_queries,
        "num_failed": s.num_failed,
        "recall": list(s.recall),
        "median_translation_m": _json_float(s.median_translation),
        "median_rotation_deg": _json_float(s.median_rotation_deg),
    }


def to_dict(result: EvalResult, per_query: bool = True) -> dict[str, Any]:
    """A JSON-serialisable summary of ``result``.

    Recalls are fractions in ``[0, 1]`` in the order of ``thresholds``; errors are metres and
    degrees; infinite errors (failures) and undefined medians are ``null``.

    Args:
        result: the evaluation.
        per_query: include the list of per-query errors (``queries``).
    Returns:
        ``{"thresholds", "matched_by", "summary": {label: {...}}, "missing", "unmatched",
        "warnings"[, "queries"]}``; ``summary`` holds each group and ``"all"``.
    """
    out: dict[str, Any] = {
        "thresholds": [
            {"translation_m": th.translation_m, "rotation_deg": th.rotation_deg}
            for th in result.thresholds
        ],
        "matched_by": result.matched_by,
        "summary": {s.label: _summary_dict(s) for s in result.summaries()},
        "missing": list(result.missing),
        "unmatched": list(result.unmatched),
        "warnings": result.warnings,
    }
    if per_query:
        e_t = result.translation_error.tolist()
        e_R = result.rotation_error_deg.tolist()
        failed = result.failed.tolist()
        groups = result.groups or [None] * result.num_queries
        out["queries"] = [
            {
                "name": n,
                "group": g,
                "translation_error_m": _json_float(t),
                "rotation_error_deg": _json_float(r) if not f else None,
                "failed": f,
            }
            for n, g, t, r, f in zip(result.names, groups, e_t, e_R, failed, strict=True)
        ]
    return out


def write_json(result: EvalResult, path: str | Path, per_query: bool = True) -> Path:
    """Write :func:`to_dict` of ``result`` to ``path`` atomically (temporary file + rename).

    Args:
        result: the evaluation.
        path: the output file; its folder is created if needed.
        per_query: include the per-query errors.
    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    text = json.dumps(to_dict(result, per_query), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)
