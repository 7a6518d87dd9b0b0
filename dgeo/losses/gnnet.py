"""GN-Net training loss over feature pyramids: contrastive + Gauss-Newton per level.

Follows PixLoc's ``gnnet.py``: on every level both directions (a -> b and b -> a) are evaluated
and averaged; levels are summed (optionally weighted). Correspondences come in image pixels and
are converted with :meth:`FeaturePyramid.to_level`; descriptors are sampled bilinearly with
:meth:`FeaturePyramid.sample`, whose validity also bounds pyramids computed on a padded canvas.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dgeo.errors import InputError, require_floating
from dgeo.geometry.pyramid import FeaturePyramid
from dgeo.losses._common import check_mask, require_dims, to_floats
from dgeo.losses.contrastive import contrastive_terms, top_m_schedule
from dgeo.losses.gauss_newton import gauss_newton_terms


def _image_bounds(pyr: FeaturePyramid, level: int) -> tuple[float, float]:
    """``(x_max, y_max)``: the last real image pixel in level pixels (the map's own grid bounds
    it further), i.e. :meth:`FeaturePyramid.to_level` of ``(W - 1, H - 1)``."""
    H, W = pyr.image_size
    Hc, Wc = pyr.canvas_size
    h, w = pyr[level].size
    return (W - 0.5) * w / Wc - 0.5, (H - 0.5) * h / Hc - 0.5


class GNNetLoss(nn.Module):
    """GN-Net's loss on two feature pyramids (PixLoc's ``gnnet.py`` form).

    Per level ``l`` with maps of size ``(h, w)``::

        L_l = contrastive * (C(a->b) + C(b->a)) / 2 + gn * (G(a->b) + G(b->a)) / 2

    with ``C`` = :func:`~dgeo.losses.contrastive_loss` (exclusion radius
    ``radius_fraction * max(h, w)`` level pixels, ``top_m`` fixed or
    :func:`~dgeo.losses.top_m_schedule` of the step) and ``G`` =
    :func:`~dgeo.losses.gauss_newton_loss`; the loss is ``sum_l level_weight_l * L_l``.

    Args:
        contrastive, gn: weights of the two terms.
        pos_margin, neg_margin: the contrastive margins ``m+`` and ``m-``.
        radius_fraction: exclusion radius as a fraction of the level's larger side.
        top_m: fixed number of hard-negative candidates (``None``: :func:`top_m_schedule`).
        noise, ridge, w1, w2: of the Gauss-Newton loss.
        levels: pyramid level indices to use (``None``: all).
        level_weights: one weight per used level (``None``: all 1).
        chunk: anchors per negative-mining chunk (``None``: automatic).
    """

    def __init__(
        self,
        contrastive: float = 1.0,
        gn: float = 0.1,
        *,
        pos_margin: float = 0.2,
        neg_margin: float = 1.0,
        radius_fraction: float = 0.1,
        top_m: int | None = None,
        noise: float = 1.0,
        ridge: float = 1e-6,
        w1: float = 1.0,
        w2: float = 1.0,
        levels: Sequence[int] | None = None,
        level_weights: Sequence[float] | None = None,
        chunk: int | None = None,
    ):
        super().__init__()
        if contrastive < 0 or gn < 0:
            raise InputError(f"loss weights must be >= 0, got contrastive={contrastive}, gn={gn}.")
        if radius_fraction < 0:
            raise InputError(f"radius_fraction must be >= 0, got {radius_fraction}.")
        if top_m is not None and int(top_m) < 1:
            raise InputError(f"top_m must be a positive integer or None, got {top_m}.")
        if levels is not None:
            levels = [int(i) for i in levels]
            if not levels:
                raise InputError("levels must name at least one pyramid level (or be None).")
        if level_weights is not None:
            level_weights = [float(v) for v in level_weights]
            if levels is not None and len(level_weights) != len(levels):
                raise InputError(
                    f"level_weights has {len(level_weights)} entries but levels has {len(levels)}."
                )
        self.contrastive = float(contrastive)
        self.gn = float(gn)
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)
        self.radius_fraction = float(radius_fraction)
        self.top_m = None if top_m is None else int(top_m)
        self.noise = float(noise)
        self.ridge = float(ridge)
        self.w1 = float(w1)
        self.w2 = float(w2)
        self.levels = levels
        self.level_weights = level_weights
        self.chunk = chunk

    def extra_repr(self) -> str:
        return (
            f"contrastive={self.contrastive}, gn={self.gn}, margins=({self.pos_margin}, "
            f"{self.neg_margin}), radius_fraction={self.radius_fraction}, top_m={self.top_m}, "
            f"levels={self.levels}"
        )

    def _levels(self, num_levels: int) -> list[tuple[int, float]]:
        levels = list(range(num_levels)) if self.levels is None else self.levels
        weights = self.level_weights or [1.0] * len(levels)
        if len(weights) != len(levels):
            raise InputError(
                f"level_weights has {len(weights)} entries for {len(levels)} pyramid levels."
            )
        for i in levels:
            if not -num_levels <= i < num_levels:
                raise InputError(f"level {i} does not exist in pyramids of {num_levels} levels.")
        return [(i % num_levels, w) for i, w in zip(levels, weights, strict=True)]

    def forward(
        self,
        pyr_a: FeaturePyramid,
        pyr_b: FeaturePyramid,
        uv_a: torch.Tensor,
        uv_b: torch.Tensor,
        mask: torch.Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Evaluate the loss.

        Args:
            pyr_a, pyr_b: pyramids of images a and b (same batch size, levels and channels).
            uv_a, uv_b: ``(B, N, 2)`` corresponding image pixels in a and b.
            mask: ``(B, N)`` bool, true for real correspondences (``None``: all); matches
                outside either image or level are dropped on that level.
            step: training step, for :func:`top_m_schedule` when ``top_m`` is not fixed.
            generator: seeds the negative draws and Gauss-Newton perturbations.
        Returns:
            the scalar loss and flat stats (Python floats): ``loss``, ``contrastive``, ``gn``
            (weighted sums over levels, before the term weights), ``top_m``, and per used level
            ``l``: ``contrastive/l{l}``, ``gn/l{l}``, ``pos/l{l}``, ``neg/l{l}``,
            ``d_pos/l{l}``, ``d_neg/l{l}``, ``e1/l{l}``, ``e2/l{l}``, ``step_error/l{l}``,
            ``valid/l{l}`` (mean over the two directions).
        """
        for p, name in ((pyr_a, "pyr_a"), (pyr_b, "pyr_b")):
            if not isinstance(p, FeaturePyramid):
                raise InputError(f"{name} must be a FeaturePyramid, got {type(p).__name__}.")
        if len(pyr_a) != len(pyr_b) or pyr_a.channels != pyr_b.channels:
            raise InputError(
                f"pyr_a and pyr_b must have the same levels and channels, got {pyr_a.channels} "
                f"and {pyr_b.channels}."
            )
        b = pyr_a.batch_size
        if pyr_b.batch_size != b:
            raise InputError(f"pyr_a has batch {b} but pyr_b has batch {pyr_b.batch_size}.")
        require_dims(uv_a, "uv_a", (b, None, 2), "(B, N, 2) with B of the pyramids")
        n = uv_a.shape[1]
        require_dims(uv_b, "uv_b", (b, n, 2), "(B, N, 2) like uv_a")
        require_floating(uv_a, "uv_a")
        require_floating(uv_b, "uv_b")
        device = pyr_a.device
        mask = check_mask(mask, "mask", (b, n), device)
        uv_a, uv_b = uv_a.to(device), uv_b.to(device)
        top_m = self.top_m if self.top_m is not None else top_m_schedule(int(step))

        total = None
        stats: dict[str, torch.Tensor] = {}
        sums = {"contrastive": 0.0, "gn": 0.0}
        for level, weight in self._levels(len(pyr_a)):
            fa, fb = pyr_a[level].features, pyr_b[level].features
            desc_a, valid_a = pyr_a.sample(uv_a, level)[:2]
            desc_b, valid_b = pyr_b.sample(uv_b, level)[:2]
            m = mask & valid_a & valid_b
            directions = (
                (desc_a, fb, pyr_b.to_level(uv_b, level), _image_bounds(pyr_b, level)),
                (desc_b, fa, pyr_a.to_level(uv_a, level), _image_bounds(pyr_a, level)),
            )
            level_stats: dict[str, torch.Tensor] = {}
            c_sum, g_sum = 0.0, 0.0
            for desc, fmap, uv, bounds in directions:
                radius = self.radius_fraction * max(fmap.shape[-2:])
                c, cs = contrastive_terms(
                    desc,
                    fmap,
                    uv,
                    m,
                    pos_margin=self.pos_margin,
                    neg_margin=self.neg_margin,
                    radius=radius,
                    top_m=top_m,
                    generator=generator,
                    bounds=bounds,
                    chunk=self.chunk,
                )
                g, gs = gauss_newton_terms(
                    desc,
                    fmap,
                    uv,
                    m,
                    noise=self.noise,
                    ridge=self.ridge,
                    w1=self.w1,
                    w2=self.w2,
                    generator=generator,
                    bounds=bounds,
                )
                c_sum, g_sum = c_sum + c / 2, g_sum + g / 2
                cs["gn_valid"] = gs.pop("valid")
                for k, v in (*cs.items(), *gs.items()):
                    level_stats[k] = level_stats.get(k, 0.0) + v / 2
            level_loss = self.contrastive * c_sum + self.gn * g_sum
            total = weight * level_loss if total is None else total + weight * level_loss
            sums["contrastive"] = sums["contrastive"] + weight * c_sum.detach()
            sums["gn"] = sums["gn"] + weight * g_sum.detach()
            stats[f"contrastive/l{level}"] = c_sum.detach()
            stats[f"gn/l{level}"] = g_sum.detach()
            for k, v in level_stats.items():
                stats[f"{k}/l{level}"] = v
        out = {"loss": total.detach(), **sums, **stats}
        floats = to_floats(out)
        floats["top_m"] = float(top_m)
        return total, floats
