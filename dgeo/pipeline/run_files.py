"""Crash-safe, resumable, shardable result files of a localization run.

A run writes two files: the hloc results ``RESULTS`` (``name qw qx qy qz tx ty tz``, one line
per finished query, failed ones included with their fallback pose) and a sidecar log
``RESULTS.log.jsonl`` (one JSON record per query: success, reason, counts, timings, ...).

- :class:`ResultsWriter` appends each record to the log (flushed and fsynced line by line) and
  rewrites the results file atomically (temp + rename) every ``flush_every`` queries, so a
  killed run loses at most the queries since the last rewrite, and a reader never sees a
  half-written results file.
- :func:`completed_queries` / :func:`pending` give what is left to do, for ``--resume``.
- Under ``torchrun`` each rank writes its own part ``RESULTS.part{rank}`` (with its log
  ``RESULTS.part{rank}.log.jsonl``), and rank 0 merges the parts into ``RESULTS`` in the original
  query order with :func:`merge_parts`.

The driver that ties these to a solver is :func:`dgeo.pipeline.runs.run_queries`, which also
re-exports this module's API.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgeo.errors import DataFileNotFoundError, InputError, ParseError, ShapeError
from dgeo.geometry import Pose
from dgeo.io.atomic import atomic_write_lines
from dgeo.io.formats import read_hloc_results

__all__ = [
    "ResultsWriter",
    "completed_queries",
    "find_parts",
    "format_result_line",
    "log_path_for",
    "merge_parts",
    "part_path",
    "pending",
    "read_log",
    "to_jsonable",
]


# ---------------------------------------------------------------------------------- records
def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: tensors and arrays become (nested) lists or numbers, paths
    strings, enums their names, dataclasses and mappings dicts with string keys, tuples and sets
    lists, :class:`Pose` ``{"q_wxyz", "t"}``; NaN and infinities become ``None`` (strict JSON).

    Raises:
        InputError: an object of another type, named with its place in ``obj``.
    """
    return _jsonable(obj, "record")


def _jsonable(obj: Any, where: str) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, Enum):  # before int: IntEnum is an int
        return obj.name
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.generic, np.ndarray)):
        return _jsonable(obj.tolist(), where)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist(), where)
    if isinstance(obj, Pose):
        return {"q_wxyz": _jsonable(obj.quat(), where), "t": _jsonable(obj.t, where)}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (torch.device, torch.dtype)):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise InputError(f"{where} is a {type(obj).__name__}, which has no JSON form.")


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a ``.log.jsonl`` file (missing file: none).

    A malformed last line (a write cut short) is dropped with a warning.

    Raises:
        ParseError: an earlier line is not a JSON object with a string ``"name"``.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    records = []
    for n, line in numbered:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and isinstance(rec.get("name"), str):
            records.append(rec)
        elif n == numbered[-1][0]:
            warnings.warn(f"{path}, line {n}: ignoring the cut-short last line.", stacklevel=2)
        else:
            raise ParseError(path, n, "expected one JSON object with a 'name' a line.")
    return records


# ---------------------------------------------------------------------------------- results
def format_result_line(name: str, pose: Pose) -> str:
    """One hloc results line, exactly as :func:`dgeo.io.formats.write_hloc_results` writes it."""
    if not name or any(c.isspace() for c in name):
        raise InputError(f"query name {name!r} is empty or holds whitespace.")
    if not isinstance(pose, Pose) or pose.shape != ():
        got = tuple(pose.shape) if isinstance(pose, Pose) else type(pose).__name__
        raise ShapeError(f"the pose of {name!r} must be a Pose of batch shape (), got {got}.")
    pose = pose.detach().double().to("cpu")
    if not bool(torch.isfinite(pose.data).all()):
        raise InputError(f"the pose of {name!r} holds NaN/inf; pass a finite (fallback) pose.")
    values = [*pose.quat().tolist(), *pose.t.tolist()]
    return " ".join([name, *(repr(float(v)) for v in values)])


def _read_results(path: Path) -> dict[str, tuple[str, Pose]]:
    """``name -> (line, pose)`` of an hloc results file in file order; lenient on the last line."""
    if not path.exists():
        return {}
    if path.is_dir():
        raise InputError(f"results file {path} is a folder; pass a file path.")
    text = path.read_bytes().decode("utf-8", errors="replace")
    raw = text.split("\n")
    content = [(n, s) for n, line in enumerate(raw, 1) if (s := line.strip()) and s[0] != "#"]
    if not content:
        return {}
    last = content[-1][0]
    try:
        names, poses = read_hloc_results(path)
        cut = last == len(raw)  # the last line has no end of line
    except ParseError as e:
        if e.line != last:
            raise
        cut = True
    if cut:  # a malformed or unterminated last line: a write cut short
        warnings.warn(f"{path}, line {last}: ignoring the cut-short last line.", stacklevel=3)
        content = content[:-1]
        with tempfile.TemporaryDirectory() as tmp:
            head = Path(tmp) / path.name
            head.write_text("\n".join(raw[: last - 1]) + "\n", encoding="utf-8")
            names, poses = read_hloc_results(head)
    return {
        name: (" ".join(line.split()), poses[i])
        for i, (name, (_, line)) in enumerate(zip(names, content, strict=True))
    }


def completed_queries(results_path: str | os.PathLike) -> dict[str, Pose]:
    """Queries already in a results file, ``name -> Pose`` (batch shape ``()``) in file order.

    A missing file gives none; a malformed or unterminated last line (a write cut short) is
    ignored with a warning.

    Raises:
        ParseError: a malformed line before the last (see
            :func:`dgeo.io.formats.read_hloc_results`).
    """
    return {name: pose for name, (_, pose) in _read_results(Path(results_path)).items()}


def pending(names: Iterable[str], done: Iterable[str]) -> list[str]:
    """``names`` not in ``done``, in their order."""
    done = set(done)
    return [n for n in names if n not in done]


def log_path_for(results_path: str | os.PathLike) -> Path:
    """The default sidecar log of a results file: ``RESULTS.log.jsonl``."""
    return Path(f"{os.fspath(results_path)}.log.jsonl")


class ResultsWriter:
    """Adds finished queries to a results file and its JSON-lines log, crash-safely.

    Use as a context manager: leaving the ``with`` block (also by an exception, e.g. Ctrl-C)
    writes the final results file.

    Args:
        results_path: the hloc results file.
        log_path: the sidecar log (default :func:`log_path_for`).
        resume: keep the queries already in ``results_path`` (they come first in the file) and
            their log records (records of queries missing from the results are dropped: those
            queries will run again); otherwise both files start empty.
        flush_every: rewrite the results file after this many additions (1: after each).
    """

    def __init__(
        self,
        results_path: str | os.PathLike,
        log_path: str | os.PathLike | None = None,
        resume: bool = False,
        flush_every: int = 1,
    ):
        if flush_every < 1:
            raise InputError(f"flush_every must be at least 1, got {flush_every}.")
        self.path = Path(results_path)
        self.log_path = log_path_for(self.path) if log_path is None else Path(log_path)
        self.flush_every = flush_every
        self._lines: dict[str, str] = {}
        self._poses: dict[str, Pose] = {}
        kept: list[str] = []
        if resume:
            for name, (line, pose) in _read_results(self.path).items():
                self._lines[name], self._poses[name] = line, pose
            last = {r["name"]: r for r in read_log(self.log_path) if r["name"] in self._lines}
            kept = [json.dumps(r) for r in last.values()]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_lines(self.log_path, kept)
        self._log = open(self.log_path, "a", encoding="utf-8", newline="\n")
        self._unflushed = 0
        self.flush()  # the files agree from the start

    @property
    def names(self) -> list[str]:
        """The queries written so far, in file order."""
        return list(self._lines)

    @property
    def poses(self) -> dict[str, Pose]:
        """``name -> Pose`` of the queries written so far."""
        return dict(self._poses)

    def __contains__(self, name: object) -> bool:
        return name in self._lines

    def __len__(self) -> int:
        return len(self._lines)

    def add(self, name: str, pose: Pose, record: dict | None = None) -> None:
        """Log ``record`` (plus ``"name"``) as one JSON line, then keep ``pose`` for ``name``.

        Raises:
            InputError: ``name`` was added already, is not writable, the pose is not finite or
                the record has no JSON form.
        """
        if self._log.closed:
            raise InputError(f"the writer of {self.path} is closed.")
        if name in self._lines:
            raise InputError(f"query {name!r} is in {self.path} already; names must be unique.")
        line = format_result_line(name, pose)
        rec = to_jsonable({"name": name, **(record or {})})
        if rec["name"] != name:
            raise InputError(f"the record of {name!r} names another query, {rec['name']!r}.")
        self._log.write(json.dumps(rec) + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())
        self._lines[name], self._poses[name] = line, pose.detach().double().to("cpu")
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Rewrite the results file (atomically) with every query added so far."""
        atomic_write_lines(self.path, self._lines.values())
        self._unflushed = 0

    def close(self) -> None:
        """Write the final results file and close the log; safe to call twice."""
        if not self._log.closed:
            self.flush()
            self._log.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------- parts
def part_path(results_path: str | os.PathLike, rank: int) -> Path:
    """The results file of one rank: ``RESULTS.part{rank}`` (its log: ``.part{rank}.log.jsonl``)."""
    return Path(f"{os.fspath(results_path)}.part{int(rank)}")


def find_parts(results_path: str | os.PathLike) -> dict[int, Path]:
    """``rank -> path`` of the part files of ``results_path`` that exist, by rank."""
    path = Path(results_path)
    pattern = re.compile(re.escape(path.name) + r"\.part(\d+)")
    if not path.parent.is_dir():
        return {}
    found = {}
    for p in path.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def merge_parts(
    results_path: str | os.PathLike,
    names_in_order: Sequence[str],
    world_size: int,
    log_path: str | os.PathLike | None = None,
    *,
    keep_existing: bool = False,
) -> Path:
    """Merge the ranks' part files into ``results_path`` and its log, then delete the parts.

    The merged results list the queries of ``names_in_order`` in that order, then any other
    query found (from an earlier run) in the order found; the merged log holds the last record
    of each query, in the same order. Both are written atomically before any part is deleted.

    Args:
        results_path: the merged results file.
        names_in_order: the run's queries in their original order.
        world_size: ranks ``0 .. world_size-1`` must have written a part; parts of other ranks
            that exist (left by an interrupted run with more ranks) are merged too. 0 merges
            whatever parts exist.
        log_path: the merged log (default :func:`log_path_for`).
        keep_existing: start from the queries already in ``results_path`` and its log
            (``--resume``); otherwise they are replaced.
    Returns:
        ``results_path``.
    """
    results_path = Path(results_path)
    log_path = log_path_for(results_path) if log_path is None else Path(log_path)
    parts = find_parts(results_path)
    missing = [r for r in range(world_size) if r not in parts]
    if missing:
        raise DataFileNotFoundError(
            f"no part file {part_path(results_path, missing[0])} for rank {missing[0]} of "
            f"{world_size}; did that rank fail, or do the ranks not share {results_path.parent}?"
        )
    lines: dict[str, str] = {}
    records: dict[str, dict] = {}
    sources = [(results_path, log_path)] if keep_existing else []
    sources += [(p, log_path_for(p)) for p in parts.values()]
    for res, log in sources:
        lines.update((name, line) for name, (line, _) in _read_results(res).items())
        records.update((r["name"], r) for r in read_log(log))
    order = [n for n in names_in_order if n in lines]
    listed = set(order)
    order += [n for n in lines if n not in listed]
    atomic_write_lines(results_path, (lines[n] for n in order))
    atomic_write_lines(log_path, (json.dumps(records[n]) for n in order if n in records))
    for p in parts.values():
        p.unlink(missing_ok=True)
        log_path_for(p).unlink(missing_ok=True)
    return results_path
