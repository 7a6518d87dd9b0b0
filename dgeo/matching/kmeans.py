"""Deterministic k-means (k-means++ seeding, then batched Lloyd iterations) for NetVLAD centroids.

``kornia.contrib.KMeans`` exists but does not fit: it seeds with uniformly drawn points (which
often puts two centres in one cluster and none in another, so well-separated clusters are not
recovered), and its only source of randomness is ``torch.manual_seed`` on the *global* generator,
which a library must not reseed. This module draws every random number from its own
:class:`torch.Generator` on the CPU, so the same ``seed`` gives the same centres, and bounds memory
by computing distances in chunks of points.
"""

from __future__ import annotations

import torch

from dgeo.errors import InputError, require_finite, require_floating, require_shape


def _nearest(
    x: torch.Tensor, centres: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index ``(M,)`` of the nearest centre of each point and the squared distance ``(M,)``."""
    c2 = (centres * centres).sum(-1)
    idx, dist = [], []
    for i in range(0, x.shape[0], chunk):
        xi = x[i : i + chunk]
        d = (xi * xi).sum(-1, keepdim=True) - 2 * xi @ centres.T + c2
        m = d.min(-1)
        idx.append(m.indices)
        dist.append(m.values.clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


def kmeans_plusplus(
    x: torch.Tensor, num_clusters: int, generator: torch.Generator, chunk: int = 65536
) -> torch.Tensor:
    """k-means++ seeding: each new centre is a point drawn with probability proportional to its
    squared distance to the nearest centre chosen so far.

    Args:
        x: ``(M, D)`` points.
        num_clusters: ``K <= M``.
        generator: a CPU generator (all draws happen on the CPU).
        chunk: points per distance block.
    Returns:
        ``(K, D)`` initial centres (rows of ``x``).
    """
    m = x.shape[0]
    first = int(torch.randint(m, (1,), generator=generator))
    chosen = [first]
    best = ((x - x[first]) ** 2).sum(-1)
    for _ in range(1, num_clusters):
        w = best.double().cpu()
        total = float(w.sum())
        if not total > 0:  # every point coincides with a centre: take unused points in order
            used = set(chosen)
            nxt = next(i for i in range(m) if i not in used)
        else:
            nxt = int(torch.multinomial(w / total, 1, generator=generator))
        chosen.append(nxt)
        best = torch.minimum(best, ((x - x[nxt]) ** 2).sum(-1))
    return x[torch.tensor(chosen, device=x.device)].clone()


def kmeans(
    x: torch.Tensor,
    num_clusters: int,
    seed: int = 0,
    iterations: int = 30,
    chunk: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster points with k-means++ seeding and Lloyd iterations.

    Lloyd's algorithm stops early once no assignment changes. A cluster that loses all its points
    keeps its previous centre (no random re-seeding, so results depend on ``seed`` only).

    Args:
        x: ``(M, D)`` floating points, ``M >= num_clusters``.
        num_clusters: ``K``.
        seed: seeds the k-means++ draws (the same seed gives the same centres).
        iterations: maximum number of Lloyd iterations.
        chunk: points per distance block (memory ``chunk * K``).
    Returns:
        centres ``(K, D)`` in the dtype and device of ``x``, assignment ``(M,)`` int64.
    """
    require_shape(x, "x", last=[None, None])
    if x.dim() != 2:
        raise InputError(f"x must be (M, D) points, got shape {tuple(x.shape)}.")
    require_floating(x, "x")
    require_finite(x, "x")
    if num_clusters < 1 or x.shape[0] < num_clusters:
        raise InputError(
            f"k-means with {num_clusters} clusters needs at least that many points, got "
            f"{x.shape[0]}; sample more descriptors or use fewer clusters."
        )
    if iterations < 0 or chunk < 1:
        raise InputError(f"iterations must be >= 0 and chunk >= 1, got {iterations}, {chunk}.")
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        centres = kmeans_plusplus(x, num_clusters, g, chunk)
        assign, _ = _nearest(x, centres, chunk)
        for _ in range(iterations):
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=num_clusters).to(x.dtype)
            filled = counts > 0
            centres = torch.where(filled[:, None], sums / counts.clamp_min(1)[:, None], centres)
            new, _ = _nearest(x, centres, chunk)
            if torch.equal(new, assign):
                break
            assign = new
    return centres, assign
