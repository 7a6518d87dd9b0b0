"""Image retrieval as in S2DHM (ALGORITHMS 2.1): global descriptors pooled from a dense level,
PCA fitted on the references, top-k by dot product; and retrieval by a pose prior.

- :class:`~dgeo.matching.pooling.GeM`, :class:`~dgeo.matching.pooling.NetVLAD`: the poolings
  (re-exported here), :func:`global_descriptors` applies one to a pyramid level.
- :func:`sample_descriptors`: reference descriptors for ``NetVLAD.init_centroids``.
- :class:`PCAProjection`: mean and top components, no whitening, L2 before and after.
- :func:`retrieve`, :func:`retrieve_by_pose`: chunked top-k with stable ties.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dgeo.errors import InputError, ShapeError, require_finite, require_mask, require_shape
from dgeo.geometry import FeaturePyramid, Pose
from dgeo.matching.pooling import GeM, NetVLAD

__all__ = [
    "GeM",
    "NetVLAD",
    "PCAProjection",
    "global_descriptors",
    "image_cells",
    "retrieve",
    "retrieve_by_pose",
    "sample_descriptors",
]


def pyramid_level(pyramid: FeaturePyramid, level: int) -> int:
    """``level`` as a non-negative index of ``pyramid``, or a clear :class:`InputError`."""
    if not isinstance(pyramid, FeaturePyramid):
        raise InputError(f"expected a dgeo FeaturePyramid, got {type(pyramid).__name__}.")
    if (
        isinstance(level, bool)
        or not isinstance(level, int)
        or not -len(pyramid) <= level < len(pyramid)
    ):
        raise InputError(f"level {level} is out of range for a pyramid of {len(pyramid)} levels.")
    return level % len(pyramid)


def image_cells(pyramid: FeaturePyramid, level: int) -> torch.Tensor | None:
    """Cells of ``level`` whose centre lies in the real image (not the padding of a canvas).

    Returns:
        ``(B, 1, h, w)`` bool, or None when the canvas is the image (every cell is real).
    """
    level = pyramid_level(pyramid, level)
    if pyramid.canvas_size == pyramid.image_size:
        return None
    feats = pyramid[level].features
    b, _, h, w = feats.shape
    H, W = pyramid.image_size

    def centres(n: int) -> torch.Tensor:  # (n, 2) image pixels of cell centres along an axis
        i = torch.arange(n, device=feats.device, dtype=feats.dtype)
        return pyramid.to_image(torch.stack([i, i], -1), level)

    xs, ys = centres(w), centres(h)
    inside = (ys[:, 1, None] <= H - 0.5) & (xs[None, :, 0] <= W - 0.5)  # (h, w)
    return inside.expand(b, 1, h, w)


def global_descriptors(
    extractor_pyramid: FeaturePyramid, pooling: nn.Module, level: int = -1
) -> torch.Tensor:
    """Pool one pyramid level into global descriptors, over the real image only.

    Args:
        extractor_pyramid: the dense features of ``B`` images.
        pooling: a module called as ``pooling(features (B, C, h, w), mask (B, 1, h, w) | None)``
            returning ``(B, D)``, e.g. :class:`GeM` or :class:`NetVLAD`.
        level: the level to pool (default the coarsest).
    Returns:
        ``(B, D)`` descriptors (unit-norm for GeM and NetVLAD).
    """
    level = pyramid_level(extractor_pyramid, level)
    feats = extractor_pyramid[level].features
    return pooling(feats, image_cells(extractor_pyramid, level))


def sample_descriptors(
    pyramid: FeaturePyramid, level: int = -1, num: int = 10000, seed: int = 0
) -> torch.Tensor:
    """Descriptors of random real cells of a level, e.g. to initialise NetVLAD by k-means.

    Args:
        pyramid: reference features of ``B`` images.
        level: the level (default the coarsest).
        num: how many (all real cells if there are fewer).
        seed: seeds the draw (a CPU generator: the same cells on every device).
    Returns:
        ``(min(num, cells), C)`` descriptors.
    """
    level = pyramid_level(pyramid, level)
    feats = pyramid[level].features
    flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    cells = image_cells(pyramid, level)
    idx = torch.arange(flat.shape[0])
    if cells is not None:
        idx = idx[cells.reshape(-1).cpu()]
    g = torch.Generator().manual_seed(int(seed))
    pick = idx[torch.randperm(idx.numel(), generator=g)[:num]].sort().values
    return flat[pick.to(flat.device)]


class PCAProjection:
    """PCA of global descriptors fitted on the references (S2DHM): L2 normalisation, centring by
    the reference mean, projection on the top principal directions (no whitening), L2 again.

    Attributes:
        mean: ``(D,)``; components: ``(d, D)`` orthonormal rows, by decreasing variance, each
            signed so that its largest-magnitude entry is positive (reproducible).
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor) -> None:
        require_shape(mean, "mean", last=[None])
        require_shape(components, "components", last=[None, mean.shape[-1]])
        if mean.dim() != 1 or components.dim() != 2:
            raise ShapeError(
                f"mean must be (D,) and components (d, D), got {tuple(mean.shape)} and "
                f"{tuple(components.shape)}."
            )
        self.mean, self.components = mean, components

    @classmethod
    def fit(cls, descriptors: torch.Tensor, dim: int) -> PCAProjection:
        """Fit on ``descriptors (R, D)``; keep ``min(dim, R, D)`` components (S2DHM:
        ``min(1024, N_ref)``)."""
        require_shape(descriptors, "descriptors", last=[None, None])
        if descriptors.dim() != 2 or descriptors.shape[0] < 1 or dim < 1:
            raise InputError(
                f"PCA needs descriptors (R >= 1, D) and dim >= 1, got "
                f"{tuple(descriptors.shape)} and dim={dim}."
            )
        require_finite(descriptors, "descriptors")
        x = F.normalize(descriptors, dim=1)
        mean = x.mean(0)
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        comps = vh[: min(dim, *x.shape)]
        big = comps.abs().argmax(1, keepdim=True)
        comps = comps * torch.where(comps.gather(1, big) < 0, -1.0, 1.0)
        return cls(mean, comps)

    @property
    def dim(self) -> int:
        """Output dimension ``d``."""
        return self.components.shape[0]

    def __call__(self, desc: torch.Tensor) -> torch.Tensor:
        """Project ``desc (Q, D)`` to ``(Q, d)`` unit-norm descriptors."""
        require_shape(desc, "desc", last=[self.mean.shape[0]])
        x = F.normalize(desc, dim=-1) - self.mean.to(desc)
        return F.normalize(x @ self.components.to(desc).T, dim=-1)

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The state to cache (``torch.save`` it); :meth:`from_dict` restores it."""
        return {"mean": self.mean, "components": self.components}

    @classmethod
    def from_dict(cls, state: dict[str, torch.Tensor]) -> PCAProjection:
        """Rebuild from :meth:`to_dict`'s output."""
        if not isinstance(state, dict) or not {"mean", "components"} <= set(state):
            raise InputError("a PCA state must be a dict with 'mean' and 'components'.")
        return cls(state["mean"], state["components"])


def _chunked_topk(
    score: Callable[[slice, slice], torch.Tensor], q: int, r: int, k: int, chunk: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest ``k`` of ``score(rows, cols)`` blocks over a ``(q, r)`` matrix, ties to the lower
    index; -inf entries are never returned (index -1, score -inf)."""
    out_s, out_i = [], []
    for q0 in range(0, q, chunk):
        rows = slice(q0, min(q, q0 + chunk))
        best_s = torch.full((rows.stop - q0, 0), -torch.inf, device=device)
        best_i = torch.zeros((rows.stop - q0, 0), dtype=torch.int64, device=device)
        for r0 in range(0, r, chunk):
            cols = slice(r0, min(r, r0 + chunk))
            s = score(rows, cols)
            best_s = torch.cat([best_s.to(s.dtype), s], 1)  # earlier columns first
            idx = torch.arange(cols.start, cols.stop, device=device).expand(s.shape[0], -1)
            best_i = torch.cat([best_i, idx], 1)
            s_sorted, order = best_s.sort(dim=1, descending=True, stable=True)
            best_s, best_i = s_sorted[:, :k], best_i.gather(1, order[:, :k])
        out_s.append(best_s)
        out_i.append(torch.where(torch.isneginf(best_s), -1, best_i))
    return torch.cat(out_s), torch.cat(out_i)


def _check_k(k: int, chunk: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}.")
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}.")


def retrieve(
    query: torch.Tensor,
    references: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` references of each query by dot product (cosine for unit-norm descriptors).

    Args:
        query: ``(Q, D)``; references: ``(R, D)``.
        k: how many (clamped to ``R``).
        exclude: ``(Q, R)`` bool, True for pairs never to return (e.g. the query itself).
        chunk: block size over both ``Q`` and ``R``: temporaries hold ``chunk * (chunk + k)``
            scores.
    Returns:
        scores ``(Q, k)`` descending and indices ``(Q, k)`` int64 into the references; equal
        scores keep the lower index first; slots with no candidate left (all excluded) hold
        score -inf and index -1.
    """
    _check_k(k, chunk)
    require_shape(query, "query", last=[None, None])
    require_shape(references, "references", last=[query.shape[-1]])
    if query.dim() != 2 or references.dim() != 2:
        raise ShapeError(
            f"query (Q, D) and references (R, D) must be 2D, got {tuple(query.shape)} and "
            f"{tuple(references.shape)}."
        )
    q, r = query.shape[0], references.shape[0]
    require_mask(exclude, "exclude", (q, r))
    k = min(k, r)

    def score(rows: slice, cols: slice) -> torch.Tensor:
        s = query[rows] @ references[cols].T
        if exclude is not None:
            s = s.masked_fill(exclude[rows, cols].to(s.device), -torch.inf)
        return s

    return _chunked_topk(score, q, r, k, chunk, query.device)


def retrieve_by_pose(
    prior: Pose, references: Pose, k: int, angle_weight: float = 5.0, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest references to pose priors, by ``|c_q - c_r| + angle_weight * angle``.

    ``angle`` is the angle in radians between the viewing directions (optical axes), so a
    reference looking the opposite way costs ``pi * angle_weight`` metres. The default of 5 m per
    radian makes a 30 degree turn cost ~2.6 m and a reversal ~15.7 m: a reference a few metres
    away looking the same way (a street or corridor) beats one at the same spot looking away.

    Args:
        prior: :class:`Pose` ``(Q,)`` ``cam_from_world`` priors; references: :class:`Pose` ``(R,)``.
        k: how many (clamped to ``R``).
        angle_weight: metres per radian (>= 0).
        chunk: block size as in :func:`retrieve`.
    Returns:
        distances ``(Q, k)`` ascending (metres) and indices ``(Q, k)`` int64; ties keep the lower
        index first.
    """
    _check_k(k, chunk)
    for name, p in (("prior", prior), ("references", references)):
        if not isinstance(p, Pose) or len(p.shape) != 1:
            raise InputError(f"{name} must be a dgeo Pose of batch shape (N,), got {p!r}.")
    if not angle_weight >= 0:
        raise InputError(f"angle_weight must be >= 0 metres per radian, got {angle_weight}.")
    c_q, c_r = prior.center(), references.center().to(prior.device, prior.dtype)
    z_q, z_r = prior.R[..., 2, :], references.R[..., 2, :].to(c_q)  # optical axes in the world
    k = min(k, references.shape[0])

    def score(rows: slice, cols: slice) -> torch.Tensor:
        dist = torch.cdist(c_q[rows], c_r[cols], compute_mode="donot_use_mm_for_euclid_dist")
        cos = (z_q[rows] @ z_r[cols].T).clamp(-1, 1)
        return -(dist + angle_weight * torch.arccos(cos))

    s, i = _chunked_topk(score, prior.shape[0], references.shape[0], k, chunk, c_q.device)
    return -s, i
