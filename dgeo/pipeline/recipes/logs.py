"""Training logs: ``OUT/metrics.csv`` (always) and TensorBoard (when it imports).

``metrics.csv`` is a tidy table, one value a row::

    step,epoch,phase,metric,value,time
    10,0,train,loss,0.8123,1718000000.1
    500,3,val,pck@3px,41.2,1718000123.4

so that training statistics and validation metrics with any names share one file (``pandas``:
``df.pivot_table(index="step", columns=["phase", "metric"], values="value")``). Rows are
appended and flushed as they come; when a run resumes from the checkpoint of step ``k``, the file
is first rewritten atomically without the rows of steps after ``k`` (written before the process
was killed, and about to be written again) and without a torn last line, so that no row is ever
duplicated.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Any

from dgeo.io.atomic import atomic_write_text

COLUMNS = ("step", "epoch", "phase", "metric", "value", "time")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The well-formed rows of a ``metrics.csv`` (``step``/``epoch`` int, ``value``/``time``
    float); torn or malformed lines are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if i == 0 and tuple(row) == COLUMNS:
                continue
            if len(row) != len(COLUMNS):
                continue
            try:
                rows.append(
                    {
                        "step": int(row[0]),
                        "epoch": int(row[1]),
                        "phase": row[2],
                        "metric": row[3],
                        "value": float(row[4]),
                        "time": float(row[5]),
                    }
                )
            except ValueError:
                continue
    return rows


def _format_rows(rows: list[dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(
            [r["step"], r["epoch"], r["phase"], r["metric"], repr(float(r["value"])), r["time"]]
        )
    return buf.getvalue()


class MetricsLog:
    """Appends metrics to ``OUT/metrics.csv`` and, optionally, TensorBoard.

    Args:
        out_dir: the run folder.
        start_step: the step the run starts from (0, or the resumed checkpoint's step); rows
            after it are dropped from an existing file.
        enabled: False on ranks other than 0: every method does nothing.
        tensorboard: try ``torch.utils.tensorboard.SummaryWriter`` (events in ``OUT/tensorboard``,
            purged after ``start_step`` on resume); silently off when it does not import.
    """

    def __init__(
        self,
        out_dir: str | Path,
        start_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.path = Path(out_dir) / "metrics.csv"
        self.enabled = enabled
        self.writer = None
        self._file = None
        if not enabled:
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= start_step]
        atomic_write_text(self.path, _format_rows(kept, header=True))
        self._file = open(self.path, "a", encoding="utf-8", newline="")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard is optional (ImportError, or a broken install)
                SummaryWriter = None
            if SummaryWriter is not None:
                kwargs = {"purge_step": start_step + 1} if start_step > 0 else {}
                self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"), **kwargs)

    def log(self, step: int, epoch: int, phase: str, metrics: dict[str, float]) -> None:
        """Append one row per finite-or-not metric (NaN is written as ``nan``)."""
        if not self.enabled or not metrics:
            return
        now = round(time.time(), 3)
        rows = [
            dict(step=step, epoch=epoch, phase=phase, metric=k, value=float(v), time=now)
            for k, v in metrics.items()
        ]
        self._file.write(_format_rows(rows, header=False))
        self._file.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                if math.isfinite(float(v)):
                    self.writer.add_scalar(f"{phase}/{k}", float(v), step)

    def sync(self) -> None:
        """Flush everything to disk (called before each checkpoint)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
