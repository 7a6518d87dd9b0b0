"""The double-margin contrastive loss of GN-Net with windowed hard-negative mining.

This is PixLoc's ``gnnet.py`` form (LM-Reloc's, squaring before the negative hinge):

- positive: ``max(0, d - m+)^2`` with ``d = ||desc_a - F_b(uv_b)||``, ``F_b`` sampled bilinearly
  with :func:`dgeo.geometry.sample`;
- negative: the squared distances from each anchor ``desc_a`` to every cell of ``F_b`` are
  ranked, cells with ``max(|x - u|, |y - v|) < radius`` around ``uv_b = (u, v)`` excluded; one
  cell is drawn uniformly among the ``top_m`` nearest and costs ``max(0, m- - d_neg^2)``.

The mining (distances to every cell, the exclusion window, ``topk``) runs without autograd, in
chunks of anchors so memory stays bounded; the chosen negative's distance is then recomputed with
gradients, which flow into ``desc_a`` and the negative cell of ``F_b``.
"""

from __future__ import annotations

import math

import torch

from dgeo.errors import InputError
from dgeo.geometry.sampling import sample
from dgeo.losses._common import (
    check_correspondence_inputs,
    inside,
    level_bounds,
    masked_mean,
    to_floats,
    uniform,
)

#: default number of distance entries (``B * anchors * cells``) per mining chunk: small on the
#: CPU (cache-friendly, ~20% faster than 64 MiB chunks), large on GPUs (fewer launches)
CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 26}


def top_m_schedule(step: int) -> int:
    """Number of nearest cells among which the negative is drawn at training ``step``:
    ``max(5, floor(300 exp(-0.6 step / 1e4)))`` (gn_net's schedule: 300 at step 0, 164 at 1e4,
    5 from about 6.8e4 on)."""
    if step < 0:
        raise InputError(f"step must be >= 0, got {step}.")
    return max(5, math.floor(300 * math.exp(-0.6 * step / 1e4)))


def _mine_negatives(
    desc: torch.Tensor,
    fmap: torch.Tensor,
    uv: torch.Tensor,
    draw: torch.Tensor,
    radius: float,
    top_m: int,
    xy_max: tuple[float, float],
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat cell index ``(B, N)`` of each anchor's negative and whether it has one ``(B, N)``.

    ``draw`` ``(B, N)`` in [0, 1) picks the negative among the ``k`` admissible nearest cells
    (``k = min(top_m, admissible cells)``) as the ``floor(draw * k)``-th nearest.
    """
    b, n, _ = desc.shape
    h, w = fmap.shape[-2:]
    xs = torch.arange(w, dtype=desc.dtype, device=desc.device)
    ys = torch.arange(h, dtype=desc.dtype, device=desc.device)
    outside_image = ~((xs <= xy_max[0])[None, :] & (ys <= xy_max[1])[:, None])  # (h, w)
    flat = fmap.flatten(2)  # (B, C, hw)
    flat_sq = flat.square().sum(1)[:, None, :]  # (B, 1, hw)
    k = min(top_m, h * w)
    indices, has = [], []
    for s in range(0, n, chunk):
        d = desc[:, s : s + chunk]
        u = uv[:, s : s + chunk]
        # ||d - f||^2 less the per-anchor constant ||d||^2: the same ranking, one pass fewer
        dist = torch.baddbmm(flat_sq, d, flat, alpha=-2)
        dist = dist.view(b, -1, h, w)
        near_x = (xs - u[..., :1]).abs() < radius  # (B, n, w)
        near_y = (ys - u[..., 1:]).abs() < radius  # (B, n, h)
        dist.masked_fill_(near_y[..., :, None] & near_x[..., None, :], math.inf)
        dist.masked_fill_(outside_image, math.inf)
        values, order = dist.view(b, -1, h * w).topk(k, dim=-1, largest=False, sorted=True)
        count = torch.isfinite(values).sum(-1)  # admissible candidates per anchor
        pick = (draw[:, s : s + chunk] * count).long()
        pick = torch.minimum(pick, count - 1).clamp(min=0)
        indices.append(order.gather(-1, pick[..., None])[..., 0])
        has.append(count > 0)
    return torch.cat(indices, 1), torch.cat(has, 1)


def contrastive_terms(
    desc_a: torch.Tensor,
    fmap_b: torch.Tensor,
    uv_b: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    pos_margin: float = 0.2,
    neg_margin: float = 1.0,
    radius: float,
    top_m: int,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`contrastive_loss` with its statistics left as scalar tensors (no device sync)."""
    mask = check_correspondence_inputs(desc_a, fmap_b, uv_b, mask)
    if not (radius >= 0):
        raise InputError(f"radius must be >= 0 level pixels, got {radius}.")
    if int(top_m) < 1:
        raise InputError(f"top_m must be a positive integer, got {top_m}.")
    if chunk is not None and int(chunk) < 1:
        raise InputError(f"chunk must be a positive number of anchors, got {chunk}.")
    dtype = torch.promote_types(desc_a.dtype, fmap_b.dtype)
    fmap_b = fmap_b.to(dtype)
    b, n, _ = desc_a.shape
    h, w = fmap_b.shape[-2:]
    xy_max = level_bounds(fmap_b, bounds)

    uv_b = uv_b.to(dtype)
    mask = mask & inside(uv_b, xy_max)
    # masked rows take harmless values, so they reach neither the value nor the gradient
    desc = torch.where(mask[..., None], desc_a.to(dtype), 0.0)
    uv = torch.where(mask[..., None], uv_b, 0.0)

    f_pos, _ = sample(fmap_b, uv)
    d_pos = torch.linalg.vector_norm(desc - f_pos, dim=-1)
    loss_pos = torch.relu(d_pos - pos_margin).square()

    draw = uniform((b, n), generator, dtype, fmap_b.device)
    if chunk is None:
        budget = CHUNK_ELEMENTS.get(fmap_b.device.type, CHUNK_ELEMENTS["cpu"])
        chunk = max(1, budget // max(1, b * h * w))
    with torch.no_grad():
        index, has_neg = _mine_negatives(
            desc.detach(), fmap_b.detach(), uv, draw, radius, int(top_m), xy_max, int(chunk)
        )
    mask_neg = mask & has_neg
    c = fmap_b.shape[1]
    f_neg = fmap_b.flatten(2).gather(2, index[:, None, :].expand(b, c, n)).transpose(1, 2)
    d2_neg = (desc - f_neg).square().sum(-1)
    loss_neg = torch.relu(neg_margin - d2_neg)

    pos = masked_mean(loss_pos, mask)
    neg = masked_mean(loss_neg, mask_neg)
    stats = {
        "pos": pos,
        "neg": neg,
        "d_pos": masked_mean(d_pos.detach(), mask),
        "d_neg": masked_mean(d2_neg.detach().clamp(min=0).sqrt(), mask_neg),
        "valid": mask.sum().to(dtype),
    }
    return pos + neg, stats


def contrastive_loss(
    desc_a: torch.Tensor,
    fmap_b: torch.Tensor,
    uv_b: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    pos_margin: float = 0.2,
    neg_margin: float = 1.0,
    radius: float,
    top_m: int,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Double-margin contrastive loss with windowed hard-negative mining on one level.

    Args:
        desc_a: ``(B, N, C)`` anchor descriptors (image a at ``uv_a``).
        fmap_b: ``(B, C, h, w)`` dense features of image b.
        uv_b: ``(B, N, 2)`` true matches in ``fmap_b``'s pixels (level pixels, top-left pixel
            centre at (0, 0)); matches outside the valid region are dropped.
        mask: ``(B, N)`` bool, true for real correspondences (``None``: all).
        pos_margin: ``m+``; positives cost ``max(0, d - m+)^2``.
        neg_margin: ``m-``; negatives cost ``max(0, m- - d_neg^2)``.
        radius: half-size of the square exclusion window around ``uv_b`` in level pixels: cells
            with ``max(|x - u|, |y - v|) < radius`` are never negatives.
        top_m: the negative is drawn uniformly among the ``top_m`` nearest admissible cells
            (e.g. :func:`top_m_schedule`); anchors without any admissible cell get no negative.
        generator: seeds the draws (one ``U[0, 1)`` per anchor, masked ones included, so a
            result does not depend on the chunking); ``None`` uses the global RNG.
        bounds: ``(x_max, y_max)`` level pixels of the real image inside a padded map: points
            beyond it are dropped and cells beyond it are never negatives (``None``: the map).
        chunk: anchors per mining chunk (``None``: :data:`CHUNK_ELEMENTS` distances per chunk).
    Returns:
        ``loss`` (scalar: masked mean of the positive term + masked mean of the negative term)
        and ``stats`` of Python floats: ``pos``, ``neg`` (the two terms), ``d_pos``, ``d_neg``
        (mean positive and negative descriptor distances), ``valid`` (count of used matches).
    """
    loss, stats = contrastive_terms(
        desc_a,
        fmap_b,
        uv_b,
        mask,
        pos_margin=pos_margin,
        neg_margin=neg_margin,
        radius=radius,
        top_m=top_m,
        generator=generator,
        bounds=bounds,
        chunk=chunk,
    )
    return loss, to_floats(stats)
