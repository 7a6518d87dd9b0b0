"""Run a solver over many queries: resumable, crash-safe, sharded over ``torchrun`` ranks.

:func:`run_queries` is the loop behind ``dgeo localize``, independent of the localizer: it takes
the query names and a ``solve(names) -> [(pose, record), ...]`` callable, skips the queries a
previous run finished (``resume``), gives each rank its round-robin share, calls ``solve`` on
batches, writes every result through :class:`~dgeo.pipeline.run_files.ResultsWriter`, and has
rank 0 merge the ranks' parts in the original query order. A batch whose ``solve`` raises is
retried one query at a time, and a query that still raises is recorded as failed with reason
``"error: <ExceptionType>: <message>"`` and the fallback pose: one bad query never aborts the
run. ``KeyboardInterrupt`` does abort it, after writing what was finished, so that ``resume``
continues where it stopped.

This module also re-exports the file plumbing of :mod:`dgeo.pipeline.run_files` and the
sharding helpers of :mod:`dgeo.pipeline.distributed`.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dgeo.errors import InputError
from dgeo.geometry import Pose
from dgeo.pipeline.distributed import (
    DistributedContext,
    barrier,
    finalize,
    gather_objects,
    init_distributed,
    shard,
)
from dgeo.pipeline.run_files import (
    ResultsWriter,
    completed_queries,
    find_parts,
    format_result_line,
    log_path_for,
    merge_parts,
    part_path,
    pending,
    read_log,
    to_jsonable,
)
from dgeo.progress import stage_progress

__all__ = [
    "DistributedContext",
    "ResultsWriter",
    "RunSummary",
    "Solve",
    "barrier",
    "completed_queries",
    "error_reason",
    "finalize",
    "init_distributed",
    "log_path_for",
    "merge_parts",
    "part_path",
    "pending",
    "read_log",
    "reason_key",
    "run_queries",
    "shard",
    "to_jsonable",
]

#: ``solve(names) -> [(cam_from_world Pose of batch shape (), JSON-able record), ...]``, one per
#: name in order. A record may hold ``"success"`` (default True) and ``"reason"``.
Solve = Callable[[list[str]], Sequence[tuple[Pose, dict]]]
ProgressFn = Callable[[str, int, int], None]


@dataclass
class RunSummary:
    """What :func:`run_queries` did, over all ranks.

    Attributes:
        total: queries asked for.
        done_before: of these, already in the results when the run started (``resume``).
        solved: queries of this run whose record says ``success``.
        failed: queries of this run that failed (solver failures and exceptions).
        reasons: count of each :func:`reason_key` in this run.
        seconds: wall-clock time of the run.
        results_path, log_path: the files written.
    """

    total: int
    done_before: int
    solved: int
    failed: int
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    results_path: Path | None = None
    log_path: Path | None = None

    @property
    def processed(self) -> int:
        """Queries run by this call: ``solved + failed``."""
        return self.solved + self.failed


def error_reason(exc: BaseException) -> str:
    """The reason recorded for a query whose solve raised: ``"error: <Type>: <message>"``."""
    return f"error: {type(exc).__name__}: {exc}"


def reason_key(reason: str) -> str:
    """The key a reason is counted under: the reason, cut to ``"error: <Type>"`` for errors."""
    if reason.startswith("error: "):
        return ":".join(reason.split(":", 2)[:2])
    return reason


def _check_outcomes(outcomes: object, batch: list[str]) -> list[tuple[Pose, dict]]:
    """Raise :class:`InputError` unless ``solve`` returned one valid ``(pose, record)`` a name."""
    if not isinstance(outcomes, Sequence) or len(outcomes) != len(batch):
        n = len(outcomes) if isinstance(outcomes, Sequence) else type(outcomes).__name__
        raise InputError(f"solve returned {n} results for {len(batch)} queries.")
    for name, outcome in zip(batch, outcomes, strict=True):
        if not (isinstance(outcome, (tuple, list)) and len(outcome) == 2):
            raise InputError(f"solve must return (pose, record) pairs; got {outcome!r:.80}.")
        if not isinstance(outcome[1], dict):
            raise InputError(f"the record of {name!r} is a {type(outcome[1]).__name__}, not dict.")
        format_result_line(name, outcome[0])  # a Pose of shape (), finite
        to_jsonable(outcome[1])
    return [(pose, record) for pose, record in outcomes]


def _failure(exc: Exception, fallback: Pose) -> tuple[Pose, dict]:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return fallback, {"success": False, "reason": error_reason(exc), "traceback": text[-4000:]}


def _solve_batch(solve: Solve, batch: list[str], fallback: Pose) -> list[tuple[Pose, dict]]:
    """``solve(batch)``; if it raises, each query alone, failures recorded with ``fallback``."""
    try:
        return _check_outcomes(solve(list(batch)), batch)
    except Exception as e:
        if len(batch) == 1:
            return [_failure(e, fallback)]
    return [_solve_batch(solve, [name], fallback)[0] for name in batch]


@contextmanager
def _progress(progress: bool | ProgressFn | None, ctx: DistributedContext) -> Iterator[ProgressFn]:
    """``report(stage, done, total)``: the caller's, a rich bar (rank 0 only), or nothing."""
    if callable(progress) and ctx.is_main:
        yield progress
    elif not progress or callable(progress) or not ctx.is_main:
        yield lambda *_: None
    else:
        with stage_progress(transient=False, remaining=True) as report:
            yield report


def _check_names(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise InputError(f"query name {name!r} is empty or holds whitespace.")
        if name in seen:
            raise InputError(f"query {name!r} is listed twice; names must be unique.")
        seen.add(name)


def run_queries(
    names: Sequence[str],
    solve: Solve,
    results_path: str | Path,
    *,
    batch_size: int = 8,
    resume: bool = False,
    ctx: DistributedContext | None = None,
    progress: bool | ProgressFn | None = True,
    log_path: str | Path | None = None,
    flush_every: int = 1,
    fallback_pose: Pose | None = None,
    stage: str = "solving queries",
) -> RunSummary:
    """Solve ``names`` in batches into an hloc results file and its JSON-lines log.

    Args:
        names: the queries, in the order of the final results file.
        solve: see :data:`Solve`.
        results_path: the hloc results file (its log: ``log_path``).
        batch_size: queries per ``solve`` call.
        resume: skip the queries already in ``results_path`` (or in part files left by an
            interrupted ``torchrun`` run) and keep them; otherwise start afresh.
        ctx: from :func:`init_distributed`; ``None`` runs everything in this process. With
            several ranks each runs ``shard(pending)`` into ``part_path(results_path, rank)``
            and rank 0 merges the parts at the end (every rank must call this function).
        progress: ``True``: a rich progress bar; a callable: ``progress(stage, done, total)``
            (e.g. from the CLI's ``stage_progress``); ``False``/``None``: silent. Only rank 0
            reports, on the progress of its own shard.
        log_path: the sidecar log (default ``RESULTS.log.jsonl``).
        flush_every: rewrite the results file every this many queries.
        fallback_pose: pose written for a query whose solve raised (default identity).
        stage: the progress bar's label.
    Returns:
        :class:`RunSummary` over all ranks (the same on every rank).
    """
    start = time.perf_counter()
    names = list(names)
    _check_names(names)
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    fallback = Pose.identity((), torch.float64) if fallback_pose is None else fallback_pose
    format_result_line("fallback_pose", fallback)  # a finite Pose of batch shape ()
    ctx = ctx or DistributedContext()
    results_path = Path(results_path)
    log_path = log_path_for(results_path) if log_path is None else Path(log_path)

    parts = find_parts(results_path)
    done: set[str] = set()
    if resume:
        for path in [results_path, *parts.values()]:
            done |= set(completed_queries(path))
    elif ctx.is_main:  # parts of an earlier run must not be merged into this one
        for path in parts.values():
            path.unlink(missing_ok=True)
            log_path_for(path).unlink(missing_ok=True)
    todo = pending(names, done)
    digest = hashlib.sha256("\n".join(todo).encode()).hexdigest()
    if len(set(gather_objects(digest, ctx))) > 1:  # also: every rank read before any writes
        raise InputError(
            "the ranks disagree on the queries left to do; give every rank the same query list "
            f"and keep the results in a folder all ranks share ({results_path.parent})."
        )
    mine = shard(todo, ctx)

    if ctx.is_distributed:
        out, out_log = part_path(results_path, ctx.rank), None
        stage = f"{stage} (rank {ctx.rank} of {ctx.world_size})"
    else:
        out, out_log = results_path, log_path
    reasons: Counter[str] = Counter()
    solved = failed = 0
    with (
        ResultsWriter(out, out_log, resume, flush_every) as writer,
        _progress(progress, ctx) as report,
    ):
        report(stage, 0, len(mine))
        for i in range(0, len(mine), batch_size):
            batch = mine[i : i + batch_size]
            for name, (pose, record) in zip(
                batch, _solve_batch(solve, batch, fallback), strict=True
            ):
                writer.add(name, pose, record)
                rec = to_jsonable(record)
                success = bool(rec.get("success", True))
                solved, failed = solved + success, failed + (not success)
                reasons[reason_key(str(rec.get("reason") or ("ok" if success else "failed")))] += 1
            report(stage, min(i + batch_size, len(mine)), len(mine))

    barrier(ctx)
    if ctx.is_main and (ctx.is_distributed or (resume and parts)):
        world = ctx.world_size if ctx.is_distributed else 0
        merge_parts(results_path, names, world, log_path, keep_existing=resume)
    counts = gather_objects((solved, failed, dict(reasons)), ctx)  # also waits for the merge
    total_reasons: Counter[str] = Counter()
    for _, _, r in counts:
        total_reasons.update(r)
    return RunSummary(
        total=len(names),
        done_before=sum(n in done for n in names),
        solved=sum(c[0] for c in counts),
        failed=sum(c[1] for c in counts),
        reasons=dict(total_reasons),
        seconds=time.perf_counter() - start,
        results_path=results_path,
        log_path=log_path,
    )
