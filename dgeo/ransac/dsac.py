"""Differentiable RANSAC for absolute pose (DSAC, DSAC*, ACE), batched over queries.

:func:`dsac_pnp` turns 2D-3D correspondences (e.g. a scene-coordinate network's predictions)
into a distribution over pose hypotheses whose expected loss is differentiable w.r.t. both the
2D and the 3D points, as in DSAC* and ACE (``ALGORITHMS.md`` section 2.10):

1. **Sampling.** Every hypothesis ``h`` of every query ``b`` draws sets of 4 distinct valid
   correspondences. Random numbers come from a counter-based hash of ``(seeds[b], h, try, slot)``,
   so a query's hypotheses depend on its own seed only: a batch gives the same hypotheses as
   running each query alone with the same seed, on any device, with no Python loop over queries
   or hypotheses.
2. **P3P and the filter.** P3P (:func:`dgeo.pnp.p3p.p3p`) solves the first 3 points; among its up
   to 4 solutions the one that best reprojects the 4th point is kept. With
   ``filter_hypotheses`` (DSAC*/ACE) a set is accepted only if all 4 points lie in front of the
   camera and reproject within ``threshold_px``; rejected sets are redrawn, in rounds of
   ``B * H * tries_per_round`` sets shared among the hypotheses still pending, up to
   ``max_tries`` per hypothesis (DSAC* allows 1e6; a low cap bounds the cost on the garbage of
   an untrained network). A hypothesis that never passes keeps its best try (smallest largest
   error of the 4 points) and is flagged in ``DSACResult.accepted``; one without any P3P
   solution is ``valid`` False and gets probability 0. Without the filter a set is redrawn only
   when P3P has no solution. The filter is the DSAC* one, not a guarantee: an outlier among
   the 3 P3P points gives a wrong pose that occasionally reprojects the 4th point within the
   threshold (such hypotheses then score low).
3. **Gradients.** Sampling, P3P and the filter run without autograd (``p3p`` returns detached
   poses: its root selections are not differentiable). Each selected hypothesis is then refined
   by ``refine_iterations`` unrolled Gauss-Newton steps (:func:`dgeo.optim.minimize` with
   ``unroll=True``, fixed damping 0) of the reprojection error of its 4 sample
   points (``refine_on="sample"``) or of its inliers at the P3P solution plus the sample
   (``refine_on="inliers"``, DSAC*'s refinement, one inlier set). The refined hypotheses carry
   the gradient: once the iterations have converged, autograd through them equals implicit
   differentiation of the least-squares solution (DSAC*'s ``-(J^T J)^-1 J^T`` when the
   residuals vanish, the exact implicit derivative otherwise), and the dependence on the
   (detached) P3P start has died out. The P3P closed form is therefore never differentiated;
   with ``refine_iterations=0`` the hypotheses carry no gradient and only the scores do.
   Plain Gauss-Newton converges to round-off, so the forward pass is smooth enough for finite
   differences to confirm the gradient (adaptive LM stops at ~sqrt(eps) and would not be); a
   refinement that raises its cost (near-degenerate sample) falls back to the detached start.
   DSAC*'s clipping of large hypothesis Jacobian entries is not done here.
4. **Scores.** ``e_p = min(||x_p - pi(h, X_p)||, max_reprojection)`` (points behind the camera:
   ``max_reprojection``), ``s(h) = alpha / N_valid * sum_p sigmoid(beta (threshold - e_p))``
   over valid points, ``beta = 5 / threshold`` by default; ``P(h) = softmax_h s(h)``.
5. **Output.** The argmax hypothesis (test time) and, given ``pose_loss``, the expected loss
   ``sum_h P(h) loss(h)`` (training), differentiable through the scores and the hypotheses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Camera, Pose
from dgeo.optim import LMOptions, ReprojectionResidual, minimize
from dgeo.pnp.p3p import p3p
from dgeo.ransac.checks import check_correspondences

__all__ = ["DSACResult", "dsac_pnp", "pose_loss_dsacstar", "soft_inlier_scores"]

_MASK32 = 0xFFFFFFFF
_BIG = 1e30  # reprojection error standing for "behind the camera" during sampling


@dataclass
class DSACResult:
    """The outcome of :func:`dsac_pnp` for ``B`` queries and ``H`` hypotheses each.

    Attributes:
        pose: ``(B,)`` the hypothesis of highest score (test-time output).
        index: ``(B,)`` int64, its index among the hypotheses.
        hypotheses: ``(B, H)`` the (refined) hypotheses; invalid ones are the identity.
        scores: ``(B, H)`` soft inlier scores ``s(h)``.
        probabilities: ``(B, H)`` ``softmax(s)`` over the valid hypotheses (0 for invalid ones).
        errors: ``(B, H, N)`` clamped reprojection errors ``e_p`` in pixels.
        inliers: ``(B, H)`` int64, valid points with ``e_p < threshold``.
        samples: ``(B, H, 4)`` int64 indices of each hypothesis' sample; the first 3 went to
            P3P, the 4th chose among its solutions.
        accepted: ``(B, H)`` bool, the sample passed the filter (all 4 points within the
            threshold; with ``filter_hypotheses=False``: P3P had a solution).
        valid: ``(B, H)`` bool, P3P found a solution for some try.
        tries: ``(B, H)`` int64, samples drawn for each hypothesis.
        success: ``(B,)`` bool, the query has at least one valid hypothesis.
        losses: ``(B, H)`` ``pose_loss`` of each hypothesis (0 for invalid ones), or None.
        expected_loss: ``(B,)`` ``sum_h P(h) losses(h)``, or None without ``pose_loss``.
    """

    pose: Pose
    index: torch.Tensor
    hypotheses: Pose
    scores: torch.Tensor
    probabilities: torch.Tensor
    errors: torch.Tensor
    inliers: torch.Tensor
    samples: torch.Tensor
    accepted: torch.Tensor
    valid: torch.Tensor
    tries: torch.Tensor
    success: torch.Tensor
    losses: torch.Tensor | None = None
    expected_loss: torch.Tensor | None = None


# ---------------------------------------------------------------------------- public functions
def dsac_pnp(
    points2D: torch.Tensor,
    points3D: torch.Tensor,
    camera: Camera,
    mask: torch.Tensor | None = None,
    pose_loss: Callable[[Pose], torch.Tensor] | None = None,
    *,
    num_hypotheses: int = 64,
    threshold_px: float = 10.0,
    alpha: float = 100.0,
    beta: float | None = None,
    max_reprojection: float = 100.0,
    filter_hypotheses: bool = True,
    max_tries: int = 1024,
    tries_per_round: int = 8,
    refine_iterations: int = 5,
    refine_on: Literal["sample", "inliers"] = "sample",
    seeds: torch.Tensor | Sequence[int] | int | None = None,
    generator: torch.Generator | None = None,
) -> DSACResult:
    """Differentiable RANSAC (DSAC*/ACE) for the absolute pose of ``B`` queries at once.

    Args:
        points2D: ``(B, N, 2)`` observed pixels (dgeo convention, top-left pixel centre at 0).
        points3D: ``(B, N, 3)`` their world points (``cam_from_world`` poses map them).
        camera: a :class:`Camera` of batch shape ``(B,)`` or ``()``; distortion is supported.
        mask: ``(B, N)`` bool, correspondences to use (padding False); every query needs at
            least 4. ``None``: all.
        pose_loss: ``pose_loss(hypotheses) -> (B, H)``, the training loss of every hypothesis
            (``hypotheses`` is a :class:`Pose` of shape ``(B, H)``); e.g.
            ``lambda h: pose_loss_dsacstar(h, gt[:, None])``.
        num_hypotheses: ``H``, hypotheses per query (DSAC*/ACE: 64).
        threshold_px: inlier threshold ``tau`` in pixels, for the filter and the scores.
        alpha: soft score scale; ``s(h)`` lies in ``[0, alpha]``.
        beta: sigmoid sharpness; ``None``: ``5 / threshold_px``.
        max_reprojection: clamp of the reprojection error in the scores (pixels).
        filter_hypotheses: keep a sample only if all 4 points reproject within the threshold.
        max_tries: most samples drawn per hypothesis.
        tries_per_round: samples per hypothesis in the first round; later rounds spread the
            same ``B * H * tries_per_round`` sets over the hypotheses still pending. Changes
            speed and memory only, never the result.
        refine_iterations: unrolled LM iterations that make the hypotheses differentiable; 0
            keeps the P3P solutions (no gradient through the hypotheses).
        refine_on: ``"sample"``: the 4 sample points; ``"inliers"``: the valid points within
            the threshold at the P3P solution, plus the sample (costs ``B H N`` per iteration).
        seeds: per-query seeds ``(B,)`` (or one int for all); a query's samples depend on its
            seed only. ``None``: drawn from ``generator`` (or torch's global generator).
        generator: a CPU :class:`torch.Generator` for the seeds when ``seeds`` is None.
    Returns:
        :class:`DSACResult`.
    Raises:
        InputError: bad shapes, dtypes, non-finite values, fewer than 4 valid correspondences
            in a query, or invalid options.
    """
    B, N = check_correspondences(points2D, points3D, camera, mask, finite=True)
    _check_options(
        num_hypotheses, threshold_px, alpha, beta, max_reprojection, max_tries, tries_per_round
    )
    if refine_iterations < 0:
        raise InputError(f"refine_iterations must be >= 0, got {refine_iterations}.")
    if refine_on not in ("sample", "inliers"):
        raise InputError(f"refine_on must be 'sample' or 'inliers', got {refine_on!r}.")
    device = points2D.device
    if mask is None:
        mask = torch.ones(B, N, dtype=torch.bool, device=device)
    n_valid = mask.sum(-1)
    if bool((n_valid < 4).any()):
        bad = torch.nonzero(n_valid < 4).flatten().tolist()
        raise InputError(
            f"queries {bad[:10]} have fewer than 4 valid correspondences in mask; P3P needs 4 "
            "(3 + 1 to choose among its solutions). Drop those queries or unmask more points."
        )
    H = num_hypotheses
    beta = 5.0 / threshold_px if beta is None else float(beta)
    keys = _seed_keys(_query_seeds(seeds, generator, B), device)

    with torch.no_grad():
        rays = torch.nn.functional.normalize(camera.unproject(points2D.detach()), dim=-1)
        sel = _sample_hypotheses(
            rays,
            points2D.detach(),
            points3D.detach(),
            camera,
            mask,
            keys,
            num_hypotheses=H,
            threshold=float(threshold_px),
            filter_hypotheses=filter_hypotheses,
            max_tries=max_tries,
            tries_per_round=tries_per_round,
        )
    pose0, samples, accepted, valid, tries = sel
    hyps = pose0
    if refine_iterations > 0:
        hyps = _refine(
            pose0,
            points2D,
            points3D,
            camera,
            mask,
            samples,
            valid,
            iterations=refine_iterations,
            on=refine_on,
            threshold=float(threshold_px),
        )

    scores, errors = _soft_scores(
        hyps, points2D, points3D, camera, mask, threshold_px, alpha, beta, max_reprojection
    )
    success = valid.any(-1)
    logits = torch.where(valid, scores, -torch.inf)
    logits = torch.where(success[:, None], logits, scores)  # no valid one: keep softmax finite
    probabilities = torch.softmax(logits, -1)
    probabilities = torch.where(valid, probabilities, 0.0)
    index = logits.detach().argmax(-1)
    pose = Pose(hyps.data[torch.arange(B, device=device), index])
    inliers = ((errors.detach() < threshold_px) & mask[:, None]).sum(-1)

    losses = expected = None
    if pose_loss is not None:
        losses = pose_loss(hyps)
        if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (B, H):
            got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses)
            raise ShapeError(f"pose_loss must return a ({B}, {H}) tensor, got {got}.")
        losses = torch.where(valid, losses, 0.0)
        expected = (probabilities * losses).sum(-1)
    return DSACResult(
        pose=pose,
        index=index,
        hypotheses=hyps,
        scores=scores,
        probabilities=probabilities,
        errors=errors,
        inliers=inliers,
        samples=samples,
        accepted=accepted,
        valid=valid,
        tries=tries,
        success=success,
        losses=losses,
        expected_loss=expected,
    )


def soft_inlier_scores(
    poses: Pose,
    points2D: torch.Tensor,
    points3D: torch.Tensor,
    camera: Camera,
    mask: torch.Tensor | None = None,
    *,
    threshold_px: float = 10.0,
    alpha: float = 100.0,
    beta: float | None = None,
    max_reprojection: float = 100.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DSAC*/ACE soft inlier counts of pose hypotheses, differentiable in every input.

    ``e_p = min(||x_p - pi(h, X_p)||, max_reprojection)`` (``max_reprojection`` for points behind
    the camera or outside the distortion domain) and
    ``s(h) = alpha / N_valid * sum_p mask_p sigmoid(beta (threshold - e_p))``.

    Args:
        poses: ``(B, H)`` hypotheses.
        points2D: ``(B, N, 2)`` pixels; points3D: ``(B, N, 3)`` world points.
        camera: batch shape ``(B,)`` or ``()``.
        mask: ``(B, N)`` bool or None (all valid).
        threshold_px, alpha, beta, max_reprojection: as in :func:`dsac_pnp`.
    Returns:
        scores ``(B, H)`` and clamped errors ``(B, H, N)``.
    """
    B, _ = check_correspondences(points2D, points3D, camera, mask, finite=True)
    if not isinstance(poses, Pose) or len(poses.shape) != 2 or poses.shape[0] != B:
        got = tuple(poses.shape) if isinstance(poses, Pose) else type(poses).__name__
        raise ShapeError(f"poses must be a Pose of shape ({B}, H), got {got}.")
    beta = 5.0 / threshold_px if beta is None else beta
    return _soft_scores(poses, points2D, points3D, camera, mask, threshold_px, alpha, beta,
                        max_reprojection)  # fmt: skip


def _soft_scores(
    poses: Pose,
    points2D: torch.Tensor,
    points3D: torch.Tensor,
    camera: Camera,
    mask: torch.Tensor | None,
    threshold_px: float,
    alpha: float,
    beta: float,
    max_reproj: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`soft_inlier_scores` without the input checks: ``(B, H)``, ``(B, H, N)``."""
    cam = camera if camera.shape == () else camera[:, None]
    p_cam = poses.transform(points3D[:, None])
    uv, ok = cam.project(p_cam, check_bounds=False)
    d2 = (uv - points2D[:, None]).square().sum(-1)
    # a norm with a zero (not NaN) gradient at zero error
    err = torch.sqrt(d2 + 1e-24) - 1e-12
    err = torch.where(ok, err.clamp(max=max_reproj), max_reproj)
    soft = torch.sigmoid(beta * (threshold_px - err))
    if mask is None:
        scores = soft.mean(-1) * alpha
    else:
        m = mask[:, None].to(soft.dtype)
        scores = alpha * (soft * m).sum(-1) / m.sum(-1).clamp(min=1)
    return scores, err


def pose_loss_dsacstar(
    est: Pose, gt: Pose, *, translation_weight: float = 100.0, clamp: float = 100.0
) -> torch.Tensor:
    """DSAC*'s pose loss ``angle_deg + 100 * ||c_est - c_gt||_m``, soft-clamped above 100.

    The rotation term is the angle of ``R_est R_gt^T`` in degrees, the translation term the
    distance of the camera centres in metres (DSAC* compares camera-to-world poses, whose
    translation is the centre). Above ``clamp`` the loss ``l`` becomes ``sqrt(clamp * l)``
    (continuous, growing slower), as in DSAC*. Finite gradients everywhere, the exact pose
    included.

    Args:
        est: estimates, any batch shape broadcasting with ``gt``'s (e.g. ``(B, H)`` and
            ``(B, 1)``).
        gt: ground-truth ``cam_from_world`` poses.
        translation_weight: degrees per metre (100).
        clamp: where the square-root regime starts (100).
    Returns:
        losses of the broadcast batch shape.
    """
    if not isinstance(est, Pose) or not isinstance(gt, Pose):
        raise InputError("pose_loss_dsacstar takes two Pose objects (estimate, ground truth).")
    dtype = torch.promote_types(est.dtype, gt.dtype)
    R = est.R.to(dtype) @ gt.R.to(dtype).transpose(-1, -2)
    angle = Pose.from_Rt(R, torch.zeros_like(R[..., 0]), check=False).magnitude()[0]
    dc = est.center().to(dtype) - gt.center().to(dtype)
    dist = torch.sqrt(dc.square().sum(-1) + 1e-24) - 1e-12
    loss = torch.rad2deg(angle) + translation_weight * dist
    return torch.where(loss > clamp, torch.sqrt(clamp * loss.clamp(min=clamp)), loss)


# ---------------------------------------------------------------------------- checks
def _check_options(
    H: int,
    threshold: float,
    alpha: float,
    beta: float | None,
    max_reprojection: float,
    max_tries: int,
    tries_per_round: int,
) -> None:
    if int(H) != H or H < 1:
        raise InputError(f"num_hypotheses must be a positive integer, got {H}.")
    if not threshold > 0:
        raise InputError(f"threshold_px must be positive, got {threshold}.")
    if not alpha >= 0:
        raise InputError(f"alpha must be non-negative, got {alpha}.")
    if beta is not None and not beta > 0:
        raise InputError(f"beta must be positive, got {beta}.")
    if not max_reprojection > 0:
        raise InputError(f"max_reprojection must be positive, got {max_reprojection}.")
    if max_tries < 1 or tries_per_round < 1:
        raise InputError(
            f"max_tries and tries_per_round must be >= 1, got {max_tries} and {tries_per_round}."
        )


# ---------------------------------------------------------------------------- random numbers
def _query_seeds(
    seeds: torch.Tensor | Sequence[int] | int | None, generator: torch.Generator | None, B: int
) -> torch.Tensor:
    """Per-query int64 seeds ``(B,)`` on the CPU."""
    if seeds is None:
        return torch.randint(0, 2**62, (B,), generator=generator, dtype=torch.int64)
    s = torch.as_tensor(seeds).cpu()
    if s.is_floating_point() or s.is_complex() or s.dtype == torch.bool:
        raise InputError(f"seeds must be integers, got dtype {s.dtype}.")
    s = s.to(torch.int64)
    if s.dim() == 0:
        s = s.expand(B)
    if tuple(s.shape) != (B,):
        raise ShapeError(f"seeds must be an int or have shape ({B},), got {tuple(s.shape)}.")
    return s


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2^32`` for ``0 <= x < 2^32`` in int64 without overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (C. Wellons' lowbias32) on int64 tensors in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _seed_keys(seeds: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Fold 64-bit seeds ``(B,)`` into 32-bit hash keys on ``device``."""
    seeds = seeds.to(device)
    return _hash32(_hash32(seeds & _MASK32) ^ ((seeds >> 32) & _MASK32))


def _draw_sets(
    keys: torch.Tensor, h: torch.Tensor, t: torch.Tensor, n: torch.Tensor
) -> torch.Tensor:
    """Sets of 4 distinct indices in ``[0, n)`` for hypotheses ``h`` and tries ``t``.

    Args:
        keys: ``(P,)`` query keys; h: ``(P,)`` hypothesis indices; t: ``(T,)`` try indices;
        n: ``(P,)`` valid points per query (>= 4).
    Returns:
        ``(P, T, 4)`` int64 indices, a function of ``(key, h, t)`` only.
    """
    x = _hash32(_hash32(keys ^ h)[:, None] ^ t)  # (P, T)
    words = _hash32(x[..., None] ^ torch.arange(1, 5, device=x.device))  # (P, T, 4)
    picks: list[torch.Tensor] = []
    for k in range(4):  # the v-th index not yet picked: step over earlier picks in order
        v = words[..., k] % (n[:, None] - k)
        if picks:
            for p in torch.sort(torch.stack(picks, -1), -1).values.unbind(-1):
                v = v + (v >= p).long()
        picks.append(v)
    return torch.stack(picks, -1)


# ---------------------------------------------------------------------------- hypotheses
def _sample_hypotheses(
    rays: torch.Tensor,
    points2D: torch.Tensor,
    points3D: torch.Tensor,
    camera: Camera,
    mask: torch.Tensor,
    keys: torch.Tensor,
    *,
    num_hypotheses: int,
    threshold: float,
    filter_hypotheses: bool,
    max_tries: int,
    tries_per_round: int,
) -> tuple[Pose, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw, solve and filter minimal sets for every (query, hypothesis), without autograd.

    Each round handles only the hypotheses still pending, with as many tries each as keep the
    round at ``B * H * tries_per_round`` sets. A hypothesis takes its first passing try (or,
    failing all, its first best one), so the result does not depend on the round sizes or on
    the other queries.

    Returns:
        poses ``(B, H)``, samples ``(B, H, 4)``, accepted, valid ``(B, H)`` bool, tries ``(B, H)``.
    """
    B = mask.shape[0]
    H = num_hypotheses
    device, dtype = points2D.device, points2D.dtype
    order = torch.sort((~mask).to(torch.uint8), dim=-1, stable=True).indices  # valid points first
    n_valid = mask.sum(-1)
    pose_data = Pose.identity((B * H,), dtype=dtype, device=device).data.clone()
    samples = torch.zeros(B * H, 4, dtype=torch.int64, device=device)
    accepted = torch.zeros(B * H, dtype=torch.bool, device=device)
    best = torch.full((B * H,), torch.inf, dtype=dtype, device=device)
    tries = torch.zeros(B * H, dtype=torch.int64, device=device)
    pending = torch.arange(B * H, device=device)
    cam_b = None if camera.shape == () else camera

    budget = B * H * tries_per_round  # sets solved per round; fewer pending -> more tries each
    start = 0
    while start < max_tries and pending.numel() > 0:
        P = pending.numel()
        T = min(max_tries - start, max(tries_per_round, budget // P))
        qb, qh = pending // H, pending % H
        t = torch.arange(start, start + T, device=device)
        idx = order[qb[:, None, None], _draw_sets(keys[qb], qh, t, n_valid[qb])]  # (P, T, 4)
        bi = qb[:, None, None]
        X, x, r = points3D[bi, idx], points2D[bi, idx], rays[bi, idx]
        sols, ok = p3p(r[..., :3, :], X[..., :3, :])  # (P, T, 4)
        cam = camera if cam_b is None else cam_b[qb][:, None, None]
        uv, vis = cam.project(sols.transform(X[:, :, None]), check_bounds=False)  # (P,T,4,4,2)
        err = (uv - x[:, :, None]).norm(dim=-1)  # (P, T, solution, point)
        err = torch.where(vis & torch.isfinite(err), err, _BIG)
        ok = ok & torch.isfinite(sols.data).all(-1)
        err = torch.where(ok[..., None], err, torch.inf)
        sol = err[..., 3].argmin(-1)  # the solution that best reprojects the 4th point
        chosen = err.gather(2, sol[..., None, None].expand(P, T, 1, 4))[:, :, 0]  # (P, T, 4)
        worst = chosen.amax(-1)  # inf: no solution; >= _BIG: a point behind the camera
        exists = torch.isfinite(worst)
        passed = exists & (worst < threshold) if filter_hypotheses else exists
        done = passed.any(-1)
        ti = torch.where(done, passed.long().argmax(-1), worst.argmin(-1))  # first pass / best
        rows = torch.arange(P, device=device)
        w = worst[rows, ti]
        take = done | (w < best[pending])
        sel = pending[take]
        pose_data[sel] = sols.data[rows, ti, sol[rows, ti]][take]
        samples[sel] = idx[rows, ti][take]
        best[sel] = w[take]
        accepted[sel] = done[take]
        tries[pending] = torch.where(done, start + ti + 1, start + T)
        pending = pending[~done]
        start += T

    valid = torch.isfinite(best)
    return (
        Pose(pose_data.reshape(B, H, 12)),
        samples.reshape(B, H, 4),
        accepted.reshape(B, H),
        valid.reshape(B, H),
        tries.reshape(B, H),
    )


def _refine(
    pose0: Pose,
    points2D: torch.Tensor,
    points3D: torch.Tensor,
    camera: Camera,
    mask: torch.Tensor,
    samples: torch.Tensor,
    valid: torch.Tensor,
    *,
    iterations: int,
    on: str,
    threshold: float,
) -> Pose:
    """Unrolled LM refinement of ``(B, H)`` detached hypotheses; carries the gradient."""
    B, H = pose0.shape
    N = points2D.shape[1]
    bh = torch.arange(B, device=points2D.device).repeat_interleave(H)
    cam = camera if camera.shape == () else camera[bh]
    if on == "sample":
        bi = torch.arange(B, device=points2D.device)[:, None, None]
        X = points3D[bi, samples].reshape(B * H, 4, 3)
        x = points2D[bi, samples].reshape(B * H, 4, 2)
        use = valid.reshape(B * H, 1).expand(B * H, 4)
    else:
        with torch.no_grad():
            _, err = _soft_scores(
                pose0, points2D.detach(), points3D.detach(), camera, mask, threshold, 1, 1, 1e9
            )
            use = (err < threshold) & mask[:, None]
            use = use.scatter(-1, samples, True) & valid[..., None]
        X = points3D[:, None].expand(B, H, N, 3).reshape(B * H, N, 3)
        x = points2D[:, None].expand(B, H, N, 2).reshape(B * H, N, 2)
        use = use.reshape(B * H, N)
    # plain Gauss-Newton: it converges to round-off (adaptive damping stops at ~sqrt(eps),
    # which would make the forward pass too noisy for its derivative to be the gradient)
    result = minimize(
        ReprojectionResidual(X, x, cam),
        pose0.reshape(B * H),
        mask=use,
        options=LMOptions(max_iterations=iterations, damping="fixed", lambda_init=0.0, unroll=True),
    )
    # a step that diverged (near-degenerate sample) falls back to the detached start
    with torch.no_grad():
        ok = result.success & (result.cost <= 1.5 * result.cost_initial + 1e-3)  # pixels^2
    return Pose(torch.where(ok[:, None], result.x.data, pose0.reshape(B * H).data)).reshape(B, H)
