"""Dense matching accuracy: PCK of nearest-neighbour and sparse-to-dense matches on image pairs.

A pair batch (:mod:`dgeo.data.pairs`) holds two images and ground-truth correspondences
``uv_a <-> uv_b`` (image pixels, dgeo convention: top-left pixel centre at (0, 0)) with a mask
of real rows. Matching predicts ``uv_b`` from ``uv_a`` and the two feature pyramids:

- :func:`nearest_neighbour_matches`: the descriptor of image a at ``uv_a`` (bilinear) against
  every cell of one level of image b by cosine similarity; the best cell (optionally refined
  below the cell by a parabola, as :func:`dgeo.matching.match_sparse_to_dense` does) is mapped
  to image pixels with :meth:`FeaturePyramid.to_image`. Cells of the padding of a canvas never
  win. No ratio test: every point with a valid descriptor gets a match.
- :func:`sparse_to_dense_matches`: the same through :func:`dgeo.matching.match_sparse_to_dense`
  (S2DHM: sub-pixel peaks, the modified ratio test), with the ratio test off or on.

:func:`pck` is the percentage of real correspondences whose prediction lies within each
threshold (a NaN prediction, i.e. no match, is a miss); :func:`match_scores` adds the coverage
(share of correspondences that got a match) and the precision (PCK among the matched).
:func:`matching_pck` runs an extractor on a pair batch and returns the nearest-neighbour PCK,
the number that training validation logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from dgeo.errors import InputError, ShapeError, require_mask, require_shape
from dgeo.geometry import FeaturePyramid
from dgeo.matching import image_cells, match_sparse_to_dense
from dgeo.matching.retrieval import pyramid_level
from dgeo.matching.subpixel import parabola_offsets

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MatchScores",
    "extract_pair",
    "match_scores",
    "matching_pck",
    "nearest_neighbour_matches",
    "pck",
    "sparse_to_dense_matches",
]

#: PCK thresholds in image pixels.
DEFAULT_THRESHOLDS: tuple[float, ...] = (1.0, 3.0, 5.0)
#: Most elements of one similarity block (64 MiB in float32).
DEFAULT_CHUNK = 2**24


def _check_points(uv: torch.Tensor, name: str, batch: int | None = None) -> None:
    require_shape(uv, name, last=[2])
    if uv.dim() != 3 or (batch is not None and uv.shape[0] != batch):
        b = "B" if batch is None else batch
        raise ShapeError(f"{name} must be ({b}, N, 2) image pixels, got {tuple(uv.shape)}.")


def _thresholds(thresholds: Sequence[float]) -> list[float]:
    try:
        out = [float(t) for t in thresholds]
    except (TypeError, ValueError):
        raise InputError(f"thresholds must be numbers of pixels, got {thresholds!r}.") from None
    if not out or any(not t > 0 for t in out):
        raise InputError(f"thresholds must be positive pixel distances, got {thresholds!r}.")
    return out


def pck(
    uv_pred: torch.Tensor,
    uv_gt: torch.Tensor,
    mask: torch.Tensor | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[float, float]:
    """Percentage of correct keypoints.

    Args:
        uv_pred: ``(..., N, 2)`` predicted pixels; NaN rows (no match) count as misses.
        uv_gt: ``(..., N, 2)`` ground-truth pixels.
        mask: ``(..., N)`` bool, the real correspondences (None: all).
        thresholds: pixel distances; a prediction is correct when its Euclidean distance to the
            ground truth is at most the threshold.
    Returns:
        ``{threshold: percent}`` over the masked rows (NaN when no row is masked).
    """
    ths = _thresholds(thresholds)
    require_shape(uv_pred, "uv_pred", last=[2])
    if uv_gt.shape != uv_pred.shape:
        raise ShapeError(
            f"uv_gt {tuple(uv_gt.shape)} must have the shape of uv_pred {tuple(uv_pred.shape)}."
        )
    require_mask(mask, "mask", uv_pred.shape[:-1])
    err = torch.linalg.vector_norm(uv_pred.double() - uv_gt.double(), dim=-1)
    if mask is None:
        mask = torch.ones(err.shape, dtype=torch.bool, device=err.device)
    mask = mask.to(err.device)
    n = int(mask.sum())
    if n == 0:
        return {t: math.nan for t in ths}
    hits = torch.stack([((err <= t) & mask).sum() for t in ths]).tolist()
    return {t: 100.0 * h / n for t, h in zip(ths, hits, strict=True)}


@dataclass(frozen=True)
class MatchScores:
    """Accuracy of matches that may be rejected (ratio test, invalid descriptors).

    Attributes:
        pck: ``{threshold: percent}`` of the real correspondences matched within the threshold
            (a rejected one is a miss).
        precision: ``{threshold: percent}`` of the kept matches within the threshold.
        coverage: percent of the real correspondences that were kept.
        count: number of real correspondences.
    """

    pck: dict[float, float]
    precision: dict[float, float]
    coverage: float
    count: int

    def to_dict(self) -> dict:
        """JSON-friendly dict (threshold keys as strings)."""
        return {
            "pck": {f"{t:g}": v for t, v in self.pck.items()},
            "precision": {f"{t:g}": v for t, v in self.precision.items()},
            "coverage": self.coverage,
            "count": self.count,
        }


def match_scores(
    uv_pred: torch.Tensor,
    uv_gt: torch.Tensor,
    mask: torch.Tensor | None = None,
    kept: torch.Tensor | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> MatchScores:
    """PCK, precision and coverage of matches ``uv_pred (..., N, 2)`` against
    ``uv_gt (..., N, 2)``.

    Args:
        mask: ``(..., N)`` real correspondences (None: all).
        kept: ``(..., N)`` matches that were kept (None: the finite predictions).
    """
    require_shape(uv_pred, "uv_pred", last=[2])
    require_mask(kept, "kept", uv_pred.shape[:-1])
    require_mask(mask, "mask", uv_pred.shape[:-1])
    finite = torch.isfinite(uv_pred).all(-1)
    kept = finite if kept is None else kept.to(finite.device) & finite
    real = torch.ones_like(kept) if mask is None else mask.to(kept.device)
    pred = torch.where(kept[..., None], uv_pred, torch.nan)
    n = int(real.sum())
    coverage = 100.0 * int((kept & real).sum()) / n if n else math.nan
    return MatchScores(
        pck=pck(pred, uv_gt, real, thresholds),
        precision=pck(pred, uv_gt, real & kept, thresholds),
        coverage=coverage,
        count=n,
    )


def _check_pair(pyr_a: FeaturePyramid, pyr_b: FeaturePyramid, uv_a: torch.Tensor, level: int):
    level_a = pyramid_level(pyr_a, level)
    level_b = pyramid_level(pyr_b, level)
    _check_points(uv_a, "uv_a", pyr_a.batch_size)
    if pyr_b.batch_size != pyr_a.batch_size:
        raise ShapeError(
            f"pyr_a holds {pyr_a.batch_size} images but pyr_b {pyr_b.batch_size}; pass one "
            "image b per image a."
        )
    ca, cb = pyr_a.channels[level_a], pyr_b.channels[level_b]
    if ca != cb:
        raise ShapeError(
            f"level {level} has {ca} channels in pyr_a but {cb} in pyr_b; use pyramids of the "
            "same extractor."
        )
    return level_a, level_b


@torch.no_grad()
def nearest_neighbour_matches(
    pyr_a: FeaturePyramid,
    pyr_b: FeaturePyramid,
    uv_a: torch.Tensor,
    level: int = 0,
    chunk: int = DEFAULT_CHUNK,
    subpixel: bool = False,
) -> torch.Tensor:
    """Dense nearest-neighbour matches of points of image a in image b (no gradients).

    The descriptor of a at each ``uv_a`` (bilinear on ``level``) is compared by cosine
    similarity with every cell of the same level of b whose centre lies in the real image;
    the best cell (``subpixel``: refined per axis by the parabola through its neighbours,
    within +-0.5 cell) is converted to image pixels with ``pyr_b.to_image``.

    Args:
        pyr_a, pyr_b: pyramids of the same extractor for ``B`` images each (image ``i`` of a
            is matched into image ``i`` of b).
        uv_a: ``(B, N, 2)`` image pixels of a.
        level: the pyramid level (negative counts from the coarsest).
        chunk: the most elements of one ``(B, n, h * w)`` similarity block (at least one point
            per image is processed at once), which bounds memory.
        subpixel: refine the best cell (otherwise cell centres).
    Returns:
        ``(B, N, 2)`` predicted image pixels of b, NaN where a's descriptor is invalid
        (outside the image or the level, non-finite or zero).
    """
    la, lb = _check_pair(pyr_a, pyr_b, uv_a, level)
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}.")
    fb = pyr_b[lb].features
    b, _, h, w = fb.shape
    desc, valid = pyr_a.sample(uv_a.to(pyr_a[la].features.dtype), la)[:2]
    desc = desc.to(fb.dtype)
    ok = valid & torch.isfinite(desc).all(-1)
    desc = torch.where(ok[..., None], desc, 0.0)
    ok = ok & (desc.abs().sum(-1) > 0)
    desc = F.normalize(desc, dim=-1)
    fmap = F.normalize(torch.where(torch.isfinite(fb), fb, 0.0), dim=1).flatten(2)  # (B, C, hw)
    cells = image_cells(pyr_b, lb)
    # cosine >= -1: a penalty of 4 keeps padding cells from winning and the parabola finite
    penalty = None if cells is None else torch.where(cells.flatten(1), 0.0, -4.0)[:, None]
    n = uv_a.shape[1]
    n_chunk = max(1, min(n, chunk // max(1, b * h * w)))
    best = torch.zeros(b, n, dtype=torch.int64, device=fb.device)
    off = fb.new_zeros(b, n, 2)
    for n0 in range(0, n, n_chunk):
        n1 = min(n, n0 + n_chunk)
        sim = torch.bmm(desc[:, n0:n1], fmap)  # (B, nc, hw)
        if penalty is not None:
            sim = sim.add_(penalty.to(sim.dtype))
        idx = sim.argmax(-1)
        best[:, n0:n1] = idx
        if subpixel:
            off[:, n0:n1] = parabola_offsets(sim, idx, h, w)
    uv_level = torch.stack([best % w, best // w], -1).to(fb.dtype) + off
    uv = pyr_b.to_image(uv_level, lb)
    return torch.where(ok[..., None], uv, torch.nan)


@torch.no_grad()
def sparse_to_dense_matches(
    pyr_a: FeaturePyramid,
    pyr_b: FeaturePyramid,
    uv_a: torch.Tensor,
    mask: torch.Tensor | None = None,
    level: int = 0,
    *,
    ratio: float | None = None,
    ratio_test: Literal["similarity", "distance"] = "similarity",
    subpixel: bool = True,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matches of points of image a in image b by :func:`dgeo.matching.match_sparse_to_dense`.

    The descriptors of a are sampled bilinearly at ``uv_a`` on ``level`` (as the Localizer
    samples reference keypoints) and matched against the same level of b.

    Args:
        pyr_a, pyr_b: pyramids of the same extractor, ``B`` images each.
        uv_a: ``(B, N, 2)`` image pixels of a.
        mask: ``(B, N)`` bool, the points to match (None: all).
        level: the pyramid level.
        ratio: the ratio-test threshold (S2DHM's 0.9, compared squared); None: no ratio test.
        ratio_test, subpixel: as :func:`~dgeo.matching.match_sparse_to_dense`.
        chunk: the most elements of one similarity block.
    Returns:
        uv_b_pred ``(B, N, 2)`` image pixels of b (NaN where not kept), kept ``(B, N)`` bool
        (a valid descriptor, in ``mask``, a peak inside the image and, with ``ratio``, the ratio
        test passed).
    """
    la, lb = _check_pair(pyr_a, pyr_b, uv_a, level)
    if ratio is not None and not ratio > 0:
        raise InputError(f"ratio must be positive (or None for no ratio test), got {ratio}.")
    desc, valid = pyr_a.sample(uv_a.to(pyr_a[la].features.dtype), la)[:2]
    desc = torch.where(valid[..., None], desc, torch.nan)  # invalid in match_sparse_to_dense
    m = match_sparse_to_dense(
        desc.to(pyr_b[lb].features.dtype), pyr_b, lb, mask=mask, ratio=math.inf,
        subpixel=subpixel, chunk_elements=chunk, ratio_test=ratio_test,
    )  # fmt: skip
    kept = m.valid if ratio is None else m.valid & (m.ratio <= ratio**2)
    return torch.where(kept[..., None], m.uv, torch.nan), kept


def _device_of(extractor: Callable) -> torch.device | None:
    params = getattr(extractor, "parameters", None)
    p = next(params(), None) if callable(params) else None
    return None if p is None else p.device


@torch.no_grad()
def extract_pair(
    extractor: Callable[[torch.Tensor], FeaturePyramid], batch: Mapping[str, torch.Tensor]
) -> tuple[FeaturePyramid, FeaturePyramid]:
    """Pyramids of ``batch["image_a"]`` and ``batch["image_b"]`` (``(B, 3, H, W)`` each), in
    one call of ``extractor`` on the concatenated images, in eval mode, without gradients.

    The images are moved to the extractor's device (that of its first parameter; weight-free
    extractors run where the images are); its train/eval mode is restored afterwards.
    """
    for key in ("image_a", "image_b"):
        if key not in batch:
            raise InputError(f"the pair batch has no {key!r}; expected a dgeo.data.pairs batch.")
    a, b = batch["image_a"], batch["image_b"]
    if a.dim() != 4 or a.shape != b.shape:
        raise ShapeError(
            f"image_a {tuple(a.shape)} and image_b {tuple(b.shape)} must be (B, 3, H, W) of "
            "one shape."
        )
    device = _device_of(extractor) or a.device
    was_training = getattr(extractor, "training", None)
    if was_training:
        extractor.eval()
    try:
        pyr = extractor(torch.cat([a, b]).to(device))
    finally:
        if was_training:
            extractor.train(True)
    n = a.shape[0]
    return pyr.select(slice(0, n)), pyr.select(slice(n, 2 * n))


def matching_pck(
    extractor: Callable[[torch.Tensor], FeaturePyramid],
    batch: Mapping[str, torch.Tensor],
    level: int = 0,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    chunk: int = DEFAULT_CHUNK,
) -> dict[float, float]:
    """Nearest-neighbour PCK of an extractor on a pair batch (training validation).

    Args:
        extractor: a dense extractor (any callable images ``(B, 3, H, W)`` -> pyramid).
        batch: a collated :mod:`dgeo.data.pairs` batch: ``image_a``, ``image_b``
            ``(B, 3, H, W)``, ``uv_a``, ``uv_b`` ``(B, N, 2)``, ``mask`` ``(B, N)``.
        level: the pyramid level matched.
        thresholds: PCK thresholds in image pixels.
        chunk: as :func:`nearest_neighbour_matches`.
    Returns:
        ``{threshold: percent}`` of the masked correspondences of a matched within the
        threshold of their ground truth in b (see :func:`pck`).
    """
    for key in ("uv_a", "uv_b", "mask"):
        if key not in batch:
            raise InputError(f"the pair batch has no {key!r}; expected a dgeo.data.pairs batch.")
    pyr_a, pyr_b = extract_pair(extractor, batch)
    uv_a = batch["uv_a"].to(pyr_a.device)
    pred = nearest_neighbour_matches(pyr_a, pyr_b, uv_a, level, chunk)
    return pck(pred, batch["uv_b"].to(pred.device), batch["mask"].to(pred.device), thresholds)
