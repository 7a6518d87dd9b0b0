"""The GN-Net recipe: dense features trained with the contrastive + Gauss-Newton loss.

Each step runs the extractor once over the ``2B`` images of a pair batch and applies
:class:`dgeo.losses.GNNetLoss` to the two pyramids and the ground-truth correspondences
(``uv_a``, ``uv_b``, ``mask``). Validation reports the same loss (its negatives drawn from RNGs
seeded by the trainer) and the nearest-neighbour matching PCK at 1 / 3 / 5 px
(:mod:`dgeo.eval.matching`) on level ``pck_level``.

Options in ``config.loss``: ``pck_level`` (default 0, the finest level), ``pck_thresholds``
(default ``[1, 3, 5]``); every other key is a keyword argument of :class:`GNNetLoss`
(``contrastive``, ``gn``, ``pos_margin``, ``neg_margin``, ``radius_fraction``, ``top_m``,
``levels``, ...).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from dgeo.errors import InputError
from dgeo.pipeline.recipes.base import Batch, Task, build_extractor, pair_pyramids


def split_options(options: dict[str, Any], own: dict[str, Any]) -> tuple[dict, dict]:
    """``(task options, rest)``: the keys of ``own`` (with its defaults filled in) and the
    others."""
    task = {k: options.get(k, v) for k, v in own.items()}
    rest = {k: v for k, v in options.items() if k not in own}
    return task, rest


class PCKAccumulator:
    """Sums nearest-neighbour PCK hits over validation batches.

    :meth:`add` takes the pyramids of a pair batch; :meth:`result` returns ``pck@Xpx`` in
    percent over every real correspondence seen.
    """

    def __init__(self, level: int, thresholds: Iterable[float]) -> None:
        self.level = int(level)
        self.thresholds = [float(t) for t in thresholds]
        self.hits = [0.0] * len(self.thresholds)
        self.count = 0

    def add(self, pyr_a, pyr_b, batch: Batch) -> None:
        """Match ``uv_a`` ``(B, N, 2)`` of ``pyr_a`` into ``pyr_b`` and count the hits."""
        from dgeo.eval.matching import nearest_neighbour_matches, pck

        mask = batch["mask"]
        n = int(mask.sum())
        if n == 0:
            return
        pred = nearest_neighbour_matches(pyr_a, pyr_b, batch["uv_a"], self.level)
        scores = pck(pred, batch["uv_b"], mask, self.thresholds)
        for i, t in enumerate(self.thresholds):
            self.hits[i] += scores[t] * n / 100.0
        self.count += n

    def result(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        return {
            f"pck@{t:g}px": 100.0 * h / self.count
            for t, h in zip(self.thresholds, self.hits, strict=True)
        }


class GNNetTask(Task):
    """Trains a dense extractor (U-Net or VGG levels) with :class:`dgeo.losses.GNNetLoss`."""

    name = "gnnet"
    best_metric: ClassVar[str] = "loss"
    #: options of ``config.loss`` the task itself takes (the rest go to GNNetLoss)
    OPTIONS: ClassVar[dict[str, Any]] = {"pck_level": 0, "pck_thresholds": [1.0, 3.0, 5.0]}

    def __init__(self, config) -> None:
        super().__init__(config)
        from dgeo.losses import GNNetLoss

        self.options, loss_options = split_options(config.loss, self.OPTIONS)
        try:
            self.loss_fn = GNNetLoss(**loss_options)
        except TypeError as exc:
            raise InputError(f"bad GN-Net option in the config's [loss] table: {exc}") from None

    def build_model(self) -> nn.Module:
        return build_extractor(self.config)

    def _loss(self, model: nn.Module, batch: Batch, step: int):
        pyr_a, pyr_b = pair_pyramids(model, batch)
        loss, stats = self.loss_fn(
            pyr_a, pyr_b, batch["uv_a"], batch["uv_b"], batch["mask"], step=step
        )
        return loss, stats, pyr_a, pyr_b

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, stats, _, _ = self._loss(model, batch, step)
        return loss, stats

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable[Batch], step: int) -> dict[str, float]:
        sums: dict[str, float] = defaultdict(float)
        batches = 0
        acc = PCKAccumulator(self.options["pck_level"], self.options["pck_thresholds"])
        for batch in loader:
            _, stats, pyr_a, pyr_b = self._loss(model, batch, step)
            for k in ("loss", "contrastive", "gn"):
                if k in stats:
                    sums[k] += stats[k]
            batches += 1
            acc.add(pyr_a, pyr_b, batch)
        out = {k: v / max(batches, 1) for k, v in sums.items()}
        out.update(acc.result())
        return out
