"""Sparse-to-dense matching (S2DHM, ALGORITHMS 2.2): reference keypoint descriptors against the
whole dense map of a query, with S2DHM's modified ratio test and sub-pixel peak refinement.

For each pair (one retrieved reference of one query), the descriptors of the reference keypoints
(sampled bilinearly at the exact keypoints with :meth:`FeaturePyramid.sample`, where S2DHM took
the nearest cell) are correlated with every cell of one query level by a batched matmul
``(P, N, C) @ (P, C, h*w)``, in chunks so that no temporary exceeds ``chunk_elements``.
The best cell is refined below the cell size (S2DHM returns cell centres, up to 4 px off at
stride 8; :mod:`dgeo.matching.subpixel`) and converted to image pixels by
:meth:`FeaturePyramid.to_image`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from dgeo.errors import InputError, ShapeError, require_floating, require_mask
from dgeo.geometry import FeaturePyramid
from dgeo.matching.retrieval import pyramid_level
from dgeo.matching.subpixel import bilinear_offsets, neighbour_dots, parabola_offsets

#: Default ``chunk_elements`` of :func:`match_sparse_to_dense` on the CPU and on accelerators.
CPU_CHUNK, DEVICE_CHUNK = 2**19, 2**24


@dataclass(frozen=True)
class S2DMatches:
    """Sparse-to-dense matches of ``P`` pairs of ``N`` reference keypoints.

    Attributes:
        uv: ``(P, N, 2)`` query image pixels of the best cell (refined), also where invalid.
        score: ``(P, N)`` best cosine similarity ``s_1`` (of the best cell, before refinement).
        valid: ``(P, N)`` passed the ratio test, in the input mask, finite, inside the image.
        ratio: ``(P, N)`` the tested ratio, kept when ``ratio <= ratio_threshold ** 2`` (see
            :func:`match_sparse_to_dense`); inf where undefined; None with
            ``return_ratio=False``.
    """

    uv: torch.Tensor
    score: torch.Tensor
    valid: torch.Tensor
    ratio: torch.Tensor | None


def _check(ref, query, level, pairs, mask, ratio, k_fraction, chunk_elements, ratio_test):
    """Validate the inputs of :func:`match_sparse_to_dense`; return the level index and the
    query image of each pair as a list."""
    if not isinstance(ref, torch.Tensor) or ref.dim() != 3:
        got = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
        raise ShapeError(f"ref_descriptors must be a (P, N, C) tensor, got {got}.")
    require_floating(ref, "ref_descriptors")
    level = pyramid_level(query, level)
    feats = query[level].features
    p, n, c = ref.shape
    if c != feats.shape[1]:
        raise ShapeError(
            f"ref_descriptors have C={c} channels but query level {level} has "
            f"{feats.shape[1]}; sample the reference descriptors from the same extractor level."
        )
    if ref.device != feats.device:
        raise InputError(
            f"ref_descriptors are on {ref.device} but the query features on {feats.device}; "
            "move them to one device."
        )
    b = feats.shape[0]
    if pairs is None:
        if p != b:
            raise ShapeError(
                f"ref_descriptors hold P={p} pairs but the query pyramid has B={b} images; pass "
                "pairs (P,) giving the query image index of each pair."
            )
        pairs = torch.arange(b)
    elif (
        not isinstance(pairs, torch.Tensor)
        or pairs.shape != (p,)
        or pairs.is_floating_point()
        or pairs.dtype == torch.bool
    ):
        got = f"{tuple(pairs.shape)} {pairs.dtype}" if isinstance(pairs, torch.Tensor) else pairs
        raise ShapeError(f"pairs must be a ({p},) integer tensor of query indices, got {got}.")
    elif p and (int(pairs.min()) < 0 or int(pairs.max()) >= b):
        raise InputError(
            f"pairs must index the {b} query images (0..{b - 1}), got values in "
            f"[{int(pairs.min())}, {int(pairs.max())}]."
        )
    require_mask(mask, "mask", (p, n))
    if not ratio > 0 or not 0 < k_fraction <= 1 or (chunk_elements or 1) < 1:
        raise InputError(
            f"need ratio > 0, 0 < k_fraction <= 1 and chunk_elements >= 1, got {ratio}, "
            f"{k_fraction}, {chunk_elements}."
        )
    if ratio_test not in ("similarity", "distance"):
        raise InputError(f"ratio_test must be 'similarity' or 'distance', got {ratio_test!r}.")
    return level, pairs.to(torch.int64).tolist()


@torch.no_grad()
def match_sparse_to_dense(
    ref_descriptors: torch.Tensor,
    query: FeaturePyramid,
    level: int = 0,
    pairs: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    ratio: float = 0.9,
    k_fraction: float = 0.006,
    subpixel: bool = True,
    chunk_elements: int | None = None,
    ratio_test: Literal["similarity", "distance"] = "similarity",
    refine: Literal["parabola", "bilinear"] = "parabola",
    return_ratio: bool = True,
) -> S2DMatches:
    """Match reference keypoint descriptors against whole query maps (no gradients).

    **Ratio test.** With ``s_1`` the best and ``s_k`` the ``k``-th best cosine similarity over
    the query map, ``k = max(2, int(k_fraction * h * w))`` (clamped to ``h * w``), S2DHM keeps a
    match when ``s_k <= ratio**2 * s_1`` (its code calls the similarities ``dist_nn``, but they
    are the *largest* dot products): a test on **similarities**, not Lowe's distance ratio. For
    unit vectors ``d^2 = 2 - 2 s``, and the two differ: at ``s_1 = 1`` S2DHM needs
    ``s_k <= 0.81`` (``d_k >= 0.62``), Lowe's ``d_1 <= 0.9 d_k`` passes any ``s_k < 1``. The
    default ``ratio_test="similarity"`` is S2DHM's (``ratio = s_k / s_1``, and ``s_1 > 0`` is
    required); ``"distance"`` is Lowe's on squared distances (``ratio = d_1^2 / d_k^2 =
    (1 - s_1) / (1 - s_k)``). Both keep ``ratio <= ratio_threshold**2``. Using the k-th rather
    than the second best tolerates the look-alike cells around a peak.

    **Peak.** The best cell (``torch.topk``) is refined (``subpixel``) by
    :mod:`dgeo.matching.subpixel`: ``refine="parabola"``, per axis the vertex of the parabola
    through the similarities at the peak and its two neighbours on that axis of the level grid
    (none on an axis where the peak is on the border or not a strict maximum), clamped to
    +-0.5 cell; ``refine="bilinear"``, the maximum within +-1 cell of the similarity to the
    bilinearly interpolated query map (exact for identical images, about twice as accurate as the
    parabola on smooth features, ~300 extra evaluations per match). The level point is converted
    with ``query.to_image``. Peaks outside the real image area
    ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (the padding of a canvas) are invalid.

    Args:
        ref_descriptors: ``(P, N, C)`` reference descriptors (any norm; normalised here; a
            zero or non-finite descriptor is invalid).
        query: the query pyramid, ``B`` images.
        level: the query level to match (its ``C`` must equal the descriptors').
        pairs: ``(P,)`` int64 query image of each pair; ``None`` for ``P == B``, pair ``p`` to
            image ``p``.
        mask: ``(P, N)`` bool, the keypoints to match (e.g. those with a 3D point); padding
            entries are invalid in the output.
        ratio: the ratio threshold (0.9 in S2DHM, compared squared).
        k_fraction: ``k`` as a fraction of the level's cells (0.006 in S2DHM).
        subpixel: refine the peak (otherwise cell centres, as S2DHM).
        chunk_elements: the most elements of any similarity block or gathered query map (at least
            one keypoint row of ``h * w`` is always processed at once). ``None``: 2^19 on the
            CPU, where blocks that stay in cache make the matmul and ``topk`` about 1.5x faster
            than 2^24 (benchmarks/localize.py), and 2^24 on other devices.
        ratio_test: ``"similarity"`` (S2DHM) or ``"distance"`` (Lowe), see above.
        refine: the sub-cell refinement when ``subpixel``, see above.
        return_ratio: compute ``S2DMatches.ratio`` by a ``topk`` of each keypoint's row. With
            ``False`` and the similarity test, the test counts the cells above
            ``ratio^2 * s_1`` instead (the same decision, up to rounding at the threshold, for
            a third of the time of ``topk`` on the CPU) and ``ratio`` is None.
    Returns:
        :class:`S2DMatches`.
    """
    level, pair_list = _check(
        ref_descriptors, query, level, pairs, mask, ratio, k_fraction, chunk_elements, ratio_test
    )
    if refine not in ("parabola", "bilinear"):
        raise InputError(f"refine must be 'parabola' or 'bilinear', got {refine!r}.")
    feats = query[level].features
    if chunk_elements is None:
        chunk_elements = CPU_CHUNK if feats.device.type == "cpu" else DEVICE_CHUNK
    p, n, c = ref_descriptors.shape
    _, _, h, w = feats.shape
    hw = h * w
    fmap = feats.flatten(2)  # (B, C, hw) view
    fnorm = torch.linalg.vector_norm(fmap, dim=1).clamp_min(1e-12)  # (B, hw)
    fmap = fmap / fnorm[:, None]  # unit cells: the matmul gives cosines, no pass over (N, hw)
    ok_desc = torch.isfinite(ref_descriptors).all(-1)
    desc = F.normalize(torch.where(ok_desc[..., None], ref_descriptors, 0.0), dim=-1)
    desc = desc.to(feats.dtype)
    ok_desc = ok_desc & (desc.abs().sum(-1) > 0)
    k = min(hw, max(2, int(k_fraction * hw)))

    n_chunk = max(1, min(n, chunk_elements // hw))
    p_chunk = 1 if n_chunk < n else max(1, min(p, chunk_elements // (hw * max(n, c, 1))))
    score = feats.new_zeros(p, n)
    s_k = feats.new_zeros(p, n)
    best = torch.zeros(p, n, dtype=torch.int64, device=feats.device)
    off = feats.new_zeros(p, n, 2)
    counted = not return_ratio and ratio_test == "similarity"
    passed = torch.zeros(p, n, dtype=torch.bool, device=feats.device)
    bilinear = subpixel and refine == "bilinear"
    dots = neighbour_dots(feats, chunk_elements) if bilinear and p and n else None
    for p0 in range(0, p, p_chunk):
        p1 = min(p, p0 + p_chunk)
        if p1 - p0 == 1:  # a view, no copy
            sel = slice(pair_list[p0], pair_list[p0] + 1)
        else:
            sel = torch.tensor(pair_list[p0:p1], device=feats.device)
        fq, fn = fmap[sel], fnorm[sel][:, None]  # (pc, C, hw), (pc, 1, hw)
        for n0 in range(0, n, n_chunk):
            n1 = min(n, n0 + n_chunk)
            sim = torch.bmm(desc[p0:p1, n0:n1], fq)  # (pc, nc, hw) cosine similarities
            if counted:  # s_k <= r^2 s_1 iff fewer than k cells lie above r^2 s_1
                s1, i0 = sim.max(-1)
                above = (sim - ratio**2 * s1[..., None]).clamp_(min=0).sign_().sum(-1)
                score[p0:p1, n0:n1] = s1
                passed[p0:p1, n0:n1] = above < k
            else:
                top = sim.topk(k, dim=-1)
                i0 = top.indices[..., 0]
                score[p0:p1, n0:n1] = top.values[..., 0]
                s_k[p0:p1, n0:n1] = top.values[..., -1]
            best[p0:p1, n0:n1] = i0
            if bilinear:
                off[p0:p1, n0:n1] = bilinear_offsets(sim, i0, fn, dots[sel], h, w)
            elif subpixel:
                off[p0:p1, n0:n1] = parabola_offsets(sim, i0, h, w)

    uv_level = torch.stack([best % w, best // w], -1).to(feats.dtype) + off
    uv = query.to_image(uv_level, level)
    H, W = query.image_size
    inside = (uv >= -0.5).all(-1) & (uv[..., 0] <= W - 0.5) & (uv[..., 1] <= H - 0.5)
    if counted:
        tested = None
        passed = passed & (score > 0)
    elif ratio_test == "similarity":
        tested = torch.where(score > 0, s_k / score.clamp_min(1e-30), torch.inf)
    else:
        d1, dk = (1 - score).clamp_min(0), (1 - s_k).clamp_min(0)
        tested = torch.where(dk > 0, d1 / dk.clamp_min(1e-30), torch.inf)
    if tested is not None:
        passed = tested <= ratio**2
    valid = passed & ok_desc & torch.isfinite(score) & inside
    if mask is not None:
        valid = valid & mask.to(valid.device)
    return S2DMatches(uv=uv, score=score, valid=valid, ratio=tested)
