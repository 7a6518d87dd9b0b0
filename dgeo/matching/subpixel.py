"""Sub-cell refinement of correlation peaks for :func:`~dgeo.matching.match_sparse_to_dense`.

Two refinements of the best cell ``(x0, y0)`` of a similarity map ``s`` over a level grid:

- ``"parabola"``: per axis, the vertex of the parabola through the peak and its two neighbours
  on that axis (none on a border or where the peak is not a strict maximum), clamped to
  +-0.5 cell. Cheap; it assumes a symmetric peak, so its error is a fraction of a cell where
  features change fast (about 0.07 px mean, 0.2 px worst on stride-1 dense SIFT).
- ``"bilinear"``: the maximum over ``[x0 - 1, x0 + 1] x [y0 - 1, y0 + 1]`` of the cosine
  similarity between the descriptor and the **bilinearly interpolated** query map,
  ``d . F(u) / |F(u)|``, the same interpolation that samples the reference descriptors. It is
  exact when the query is the reference (the interpolated map reproduces the descriptor at the
  keypoint) and needs only the correlation at the 3x3 cells and the dot products of
  neighbouring query features (:func:`neighbour_dots`), since ``F(u)`` is a weighted sum of
  four cells. The maximum is found by a coarse-to-fine grid search (9 x 9 points, 4 rounds,
  final spacing 1/256 cell).
"""

from __future__ import annotations

import torch


def parabola_offsets(sim: torch.Tensor, best: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-axis parabola vertex offsets of the peaks.

    Args:
        sim: ``(P, N, h * w)`` similarities; best: ``(P, N)`` flat index of each peak.
    Returns:
        ``(P, N, 2)`` offsets ``(dx, dy)`` in cells, within +-0.5.
    """
    y, x = best // w, best % w
    mid = sim.gather(-1, best[..., None])[..., 0]

    def at(dx: int, dy: int) -> torch.Tensor:
        j = (y + dy).clamp(0, h - 1) * w + (x + dx).clamp(0, w - 1)
        return sim.gather(-1, j[..., None])[..., 0]

    out = []
    for (left, right), ok in (
        ((at(-1, 0), at(1, 0)), (x > 0) & (x < w - 1)),
        ((at(0, -1), at(0, 1)), (y > 0) & (y < h - 1)),
    ):
        den = left - 2 * mid + right
        ok = ok & (den < 0)
        off = 0.5 * (left - right) / torch.where(ok, den, -1.0)
        out.append(torch.where(ok, off.clamp(-0.5, 0.5), 0.0))
    return torch.stack(out, -1)


def neighbour_dots(fmap: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    """Dot products of each cell's features with its neighbours, for :func:`bilinear_offsets`.

    Args:
        fmap: ``(B, C, h, w)`` features.
        chunk_elements: the most elements of a temporary product (rows are processed in blocks).
    Returns:
        ``(B, 5, h * w)``: at cell ``(i, j)``, ``|F_ij|^2``, ``F_ij . F_i,j+1``,
        ``F_ij . F_i+1,j``, ``F_ij . F_i+1,j+1`` and ``F_i,j+1 . F_i+1,j`` (0 where a neighbour
        is missing).
    """
    b, c, h, w = fmap.shape
    out = fmap.new_zeros(b, 5, h, w)
    rows = max(1, chunk_elements // max(1, c * w))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        f, g = fmap[:, :, r0:r1], fmap[:, :, r0 + 1 : r1 + 1]  # g: the rows below
        m = g.shape[2]  # r1 - r0, or one less on the last block
        out[:, 0, r0:r1] = (f * f).sum(1)
        out[:, 1, r0:r1, :-1] = (f[..., :-1] * f[..., 1:]).sum(1)
        out[:, 2, r0 : r0 + m] = (f[:, :, :m] * g).sum(1)
        out[:, 3, r0 : r0 + m, :-1] = (f[:, :, :m, :-1] * g[..., 1:]).sum(1)
        out[:, 4, r0 : r0 + m, :-1] = (f[:, :, :m, 1:] * g[..., :-1]).sum(1)
    return out.flatten(2)


def _model_similarity(sim, fnorm, dots, X, Y, h, w):
    """Cosine similarity with the bilinearly interpolated map at level points ``X, Y``
    ``(P, N, K)`` (``h, w >= 2``)."""
    n = sim.shape[1]
    xa, ya = X.floor().clamp(0, w - 2), Y.floor().clamp(0, h - 2)
    fx, fy = X - xa, Y - ya
    i00 = (ya * w + xa).long()
    idx = (i00, i00 + 1, i00 + w, i00 + w + 1)
    wts = ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)
    fn = fnorm.expand(-1, n, -1)

    def dot(k: int, i: torch.Tensor) -> torch.Tensor:
        return dots[:, k : k + 1].expand(-1, n, -1).gather(-1, i)

    num = sum(wt * sim.gather(-1, i) * fn.gather(-1, i) for wt, i in zip(wts, idx, strict=True))
    den = sum(wt * wt * dot(0, i) for wt, i in zip(wts, idx, strict=True))
    w00, w01, w10, w11 = wts
    den = den + 2 * (
        w00 * w01 * dot(1, idx[0])
        + w10 * w11 * dot(1, idx[2])
        + w00 * w10 * dot(2, idx[0])
        + w01 * w11 * dot(2, idx[1])
        + w00 * w11 * dot(3, idx[0])
        + w01 * w10 * dot(4, idx[0])
    )
    return num / den.clamp_min(torch.finfo(den.dtype).tiny).sqrt()


def bilinear_offsets(
    sim: torch.Tensor,
    best: torch.Tensor,
    fnorm: torch.Tensor,
    dots: torch.Tensor,
    h: int,
    w: int,
    rounds: int = 4,
) -> torch.Tensor:
    """Offsets to the maximum of the interpolated-map similarity around each peak.

    Args:
        sim: ``(P, N, h * w)`` cosine similarities ``d . F_c / |F_c|`` (``d`` unit-norm).
        best: ``(P, N)`` flat index of each peak.
        fnorm: ``(P, 1, h * w)`` feature norms ``|F_c|`` of each pair's query map.
        dots: ``(P, 5, h * w)`` :func:`neighbour_dots` of each pair's query map.
        h, w: the level size (falls back to :func:`parabola_offsets` below 2 x 2).
        rounds: grid-search rounds (spacing ``0.25 / 4^r`` cell).
    Returns:
        ``(P, N, 2)`` offsets ``(dx, dy)`` in cells, within +-1 and inside the grid.
    """
    if h < 2 or w < 2:
        return parabola_offsets(sim, best, h, w)
    x0, y0 = (best % w).to(sim.dtype), (best // w).to(sim.dtype)
    lo_x, hi_x = (x0 - 1).clamp_min(0), (x0 + 1).clamp_max(w - 1)
    lo_y, hi_y = (y0 - 1).clamp_min(0), (y0 + 1).clamp_max(h - 1)
    steps = torch.arange(-4, 5, device=sim.device, dtype=sim.dtype)
    gy, gx = torch.meshgrid(steps, steps, indexing="ij")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)  # (81, 2)
    grid = grid[(grid * grid).sum(-1).argsort(stable=True)]  # nearest first: ties stay put
    cx, cy, spacing = x0, y0, 0.25
    for _ in range(rounds):
        X = (cx[..., None] + spacing * grid[:, 0]).clamp(lo_x[..., None], hi_x[..., None])
        Y = (cy[..., None] + spacing * grid[:, 1]).clamp(lo_y[..., None], hi_y[..., None])
        s = _model_similarity(sim, fnorm, dots, X, Y, h, w)
        s = torch.where(torch.isfinite(s), s, -torch.inf)
        j = s.argmax(-1, keepdim=True)
        cx, cy = X.gather(-1, j)[..., 0], Y.gather(-1, j)[..., 0]
        spacing /= 4
    return torch.stack([cx - x0, cy - y0], -1)
