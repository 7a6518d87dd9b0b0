"""Batched non-minimal absolute pose: EPnP on weighted, masked correspondence sets.

:func:`pnp_linear` estimates ``cam_from_world`` from ``B`` sets of ``N`` (padded) 2D-3D
correspondences at once, for RANSAC's local optimisation and for initialising refinement. It is
EPnP (Lepetit, Moreno-Noguer and Fua, IJCV 2009) in torch, with three departures:

- **Bearing vectors.** A ray ``f`` constrains a camera point ``p`` by ``(I - f f^T) p = 0`` (its
  component perpendicular to the ray, ``|p| sin angle``), not by the two image-plane rows
  ``x - u z``, ``y - v z``; so rays need not be in front of a pinhole (any direction works) and the
  12x12 normal matrix is ``sum_i w_i (a_i a_i^T) kron (I - f_i f_i^T)``, built by one matmul.
- **Planar scenes.** Both the general branch (4 control points: the weighted centroid and the
  three principal axes) and the planar branch (3 control points in the best-fit plane) run on
  every problem, and the candidate with the smallest weighted angular error wins, so planar,
  near-planar and general point sets need no planarity test. kornia's ``solve_pnp_dlt`` is not
  used because it raises for the whole batch when one problem is planar or has fewer than 6
  weighted points (RANSAC inlier sets on facades are planar), and it takes the scale from one
  column of ``P`` and orthogonalises by QR, which costs accuracy under noise.
- **Per-problem failure.** Problems with fewer than ``min_points`` valid correspondences or with
  (near-)collinear 3D points are reported with ``ok = False`` and the identity pose; nothing
  raises or returns NaN for data-dependent degeneracies.

Candidates per problem (as in the reference implementation): the general branch solves the
distance constraints between control points for 1-4 kernel vectors by the linearisations
``N = 4`` (b11, b12, b13, b14), ``N = 2`` (b11, b12, b22) and ``N = 3`` (b11 ... b23), each
polished by 5 Gauss-Newton steps on all 4 betas; the planar branch for ``N = 1`` and ``N = 2``,
each polished on its own betas only (polishing ``N = 1`` on two betas fits noise: 1.8x the
rotation error of SQPnP on noisy planes instead of 1.1x). Exactly planar sets (smallest principal
variance at most ``1e-12`` of the largest) skip the general branch, whose fourth control point is
then free, so the result does not depend on the batch. The pose follows by weighted absolute
orientation (Kabsch) between the 3D points and their camera coordinates.

Everything runs in float64 internally (the normal matrix squares the condition number), on the
input's device, without autograd: for gradients, refine the result with
:func:`dgeo.pnp.refine_pose` and ``unroll=True``. Accuracy under noise is EPnP's (about 1.4x the
rotation error of the optimal SQPnP on general scenes, 1.1x on planes); a few LM steps of
:func:`dgeo.pnp.refine_pose` reach the maximum-likelihood pose.
"""

from __future__ import annotations

import torch

from dgeo.errors import (
    InputError,
    ShapeError,
    require_floating,
    require_mask,
    require_shape,
    require_weights,
)
from dgeo.geometry import Camera, Pose

_GN_STEPS = 5
_COLLINEAR_TOL = 1e-10  # second / largest principal variance of the 3D points
_PLANAR_TOL = 1e-12  # smallest / largest principal variance at or below which a set is planar
_PLANAR_FLOOR = 1e-12  # smallest principal variance used for barycentric coordinates


def pnp_linear(
    observations: torch.Tensor,
    points3D: torch.Tensor,
    camera: Camera | None = None,
    *,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    min_points: int = 6,
) -> tuple[Pose, torch.Tensor]:
    """Estimate ``cam_from_world`` poses from weighted 2D-3D correspondences (batched EPnP).

    Args:
        observations: either rays ``(B, N, 3)`` in the camera frame (any non-zero length, any
            direction; e.g. ``camera.unproject(uv)``) when ``camera`` is ``None``, or pixels
            ``(B, N, 2)`` in dgeo's convention (top-left pixel centre at 0) when it is given.
        points3D: ``(B, N, 3)`` world points.
        camera: a :class:`Camera` of batch shape ``()`` or ``(B,)``; pixels are unprojected
            (distortion included) and a pixel whose undistortion fails counts as invalid.
        mask: ``(B, N)`` bool, correspondences to use (padding = False).
        weights: ``(B, N)`` finite non-negative weights; each multiplies its correspondence's
            squared algebraic residual and its share of the centroid and principal axes.
            Zero weight = masked.
        min_points: fewest valid correspondences a problem needs (at least 4; EPnP's kernel
            is reliable from 6).
    Returns:
        ``(pose, ok)``: a :class:`Pose` of batch shape ``(B,)`` in the dtype of ``points3D``
        (identity where ``ok`` is False) and ``ok`` ``(B,)`` bool: enough valid
        correspondences, 3D points not collinear and a finite solution. Correspondences with
        NaN/inf coordinates or zero-length rays count as invalid.
    Raises:
        ShapeError, InputError: malformed shapes or dtypes, negative or non-finite weights.

    Example:
        >>> pose, ok = pnp_linear(uv, X, camera, mask=inliers)  # doctest: +SKIP
        >>> res = refine_pose(uv, X, camera, pose, mask=inliers & ok[:, None])  # doctest: +SKIP
    """
    if min_points < 4:
        raise InputError(f"min_points must be >= 4, got {min_points}.")
    rays, X, w = _prepare(observations, points3D, camera, mask, weights)
    dtype = points3D.dtype
    with torch.no_grad():
        R, t, ok = _epnp(rays, X, w, min_points)
    pose = Pose.from_Rt(R.to(dtype), t.to(dtype), check=False)
    return pose, ok


def _prepare(observations, points3D, camera, mask, weights):
    """Check the inputs; return unit rays, points and weights in float64 with invalid rows 0."""
    require_shape(points3D, "points3D", last=[None, None, 3])
    if points3D.dim() != 3:
        raise ShapeError(f"points3D must have shape (B, N, 3), got {tuple(points3D.shape)}.")
    require_floating(points3D, "points3D")
    B, N = points3D.shape[:2]
    require_floating(observations, "observations")
    k = 3 if camera is None else 2
    if tuple(observations.shape) != (B, N, k):
        what = "rays (B, N, 3) when camera is None" if k == 3 else "pixels (B, N, 2) with a camera"
        raise ShapeError(
            f"observations must be {what} matching points3D {tuple(points3D.shape)}, got "
            f"{tuple(observations.shape)}."
        )
    valid = torch.isfinite(points3D).all(-1) & torch.isfinite(observations).all(-1)
    obs = torch.where(valid[..., None], observations, 0.0)
    if camera is not None:
        if camera.shape not in ((), (B,)):
            raise ShapeError(f"camera batch shape must be () or ({B},), got {tuple(camera.shape)}.")
        with torch.no_grad():  # float64 pixels: the camera is evaluated in their dtype
            rays, ok = camera.unproject(obs.detach().to(torch.float64), return_valid=True)
        valid = valid & ok & torch.isfinite(rays).all(-1)
    else:
        rays = obs
    require_mask(mask, "mask", (B, N))
    require_weights(weights, "weights", (B, N))
    if mask is not None:
        valid = valid & mask
    w = valid.to(torch.float64)
    if weights is not None:
        w = w * weights.detach().to(torch.float64)
    rays = rays.detach().to(torch.float64)
    norm = rays.norm(dim=-1)
    w = torch.where(norm > 0, w, 0.0)
    rays = torch.where((w > 0)[..., None], rays / norm.clamp_min(1e-300)[..., None], 0.0)
    X = torch.where((w > 0)[..., None], points3D.detach().to(torch.float64), 0.0)
    return rays, X, w


def _epnp(f: torch.Tensor, X: torch.Tensor, w: torch.Tensor, min_points: int):
    """EPnP on unit rays ``f`` (B, N, 3), points ``X`` (B, N, 3), weights ``w`` (B, N), float64.

    Returns ``R`` (B, 3, 3), ``t`` (B, 3) and ``ok`` (B,).
    """
    B = X.shape[0]
    eye3 = torch.eye(3, dtype=X.dtype, device=X.device)
    wsum = w.sum(-1)
    wn = w / wsum.clamp_min(1e-300)[:, None]  # normalised weights
    centroid = (wn[..., None] * X).sum(1)
    Y = torch.where((w > 0)[..., None], X - centroid[:, None], 0.0)
    cov = torch.nan_to_num((wn[..., None] * Y).transpose(1, 2) @ Y, posinf=0.0, neginf=0.0)
    evals, axes = torch.linalg.eigh(cov)  # ascending principal variances
    flip = torch.where(torch.det(axes) < 0, -1.0, 1.0).to(axes)  # a rotation, not a reflection
    axes = torch.cat([axes[..., :1] * flip[:, None, None], axes[..., 1:]], -1)
    evals = evals.clamp_min(0)
    scale = evals[:, 2].sqrt()
    ok = ((w > 0).sum(-1) >= min_points) & (evals[:, 1] > _COLLINEAR_TOL * evals[:, 2])
    ok = ok & (scale > 0) & torch.isfinite(scale)
    # normalised world frame: principal axes, unit largest spread (scale-free conditioning)
    safe = torch.where(ok, scale, torch.ones_like(scale))
    Z = (Y @ axes) / safe[:, None, None]  # (B, N, 3), columns = coordinates on axes 0, 1, 2
    var = evals / safe[:, None] ** 2
    P = (eye3 - f[..., :, None] * f[..., None, :]).flatten(2)  # (B, N, 9)

    sd = var.clamp_min(_PLANAR_FLOOR).sqrt()
    general = _branch(Z / sd[:, None], torch.diag_embed(sd), P, f, w)
    planar = _branch(Z[..., 1:] / sd[:, None, 1:], torch.diag_embed(sd)[:, 1:], P, f, w)

    # candidate poses in the normalised frame, scored by weighted angular error
    Rs = torch.stack([c[0] for c in general + planar], 1)  # (B, C, 3, 3)
    ts = torch.stack([c[1] for c in general + planar], 1)  # (B, C, 3)
    p = Z[:, None] @ Rs.transpose(-1, -2) + ts[:, :, None]
    p = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    err = (wn[:, None] * (p - f[:, None]).square().sum(-1)).sum(-1)  # (B, C)
    err = torch.nan_to_num(err, nan=torch.inf)
    # exactly planar sets leave the general branch's fourth control point free: skip it there
    flat = var[:, 0] <= _PLANAR_TOL
    err[:, : len(general)] = torch.where(flat[:, None], torch.inf, err[:, : len(general)])
    best = err.argmin(1)
    idx = torch.arange(B, device=X.device)
    R_n, t_n = Rs[idx, best], ts[idx, best]
    # back to world units: p = s (R_n Z + t_n), Z = axes^T (X - c) / s
    R = R_n @ axes.transpose(1, 2)
    t = safe[:, None] * t_n - (R @ centroid[..., None])[..., 0]
    ok = ok & torch.isfinite(err.gather(1, best[:, None])[:, 0])
    ok = ok & torch.isfinite(R).all((-1, -2)) & torch.isfinite(t).all(-1)
    R = torch.where(ok[:, None, None], R, eye3)
    t = torch.where(ok[:, None], t, 0.0)
    return R, t, ok


def _branch(
    coords: torch.Tensor,
    offsets: torch.Tensor,
    P: torch.Tensor,
    f: torch.Tensor,
    w: torch.Tensor,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One EPnP branch in the normalised world frame.

    Args:
        coords: ``(B, N, K)`` point coordinates on the ``K`` control axes in units of the axis
            offsets, so that the barycentric coordinates are ``(1 - sum(coords), coords)``.
        offsets: ``(B, K, 3)`` control points minus the centroid (origin) in the normalised frame.
        P: ``(B, N, 9)`` flattened ray projectors ``I - f f^T``.
        f: ``(B, N, 3)`` unit rays.
        w: ``(B, N)`` weights.
    Returns:
        candidate ``(R (B, 3, 3), t (B, 3))`` in the normalised frame, one per linearisation.
    """
    B, _, K = coords.shape
    J = K + 1  # control points
    alphas = torch.cat([1 - coords.sum(-1, keepdim=True), coords], -1)  # (B, N, J)
    control_w = torch.cat([offsets.new_zeros(B, 1, 3), offsets], 1)  # (B, J, 3)
    outer = (w[..., None, None] * alphas[..., :, None] * alphas[..., None, :]).flatten(2)
    Q = (outer.transpose(1, 2) @ P).reshape(B, J, J, 3, 3).transpose(2, 3).reshape(B, 3 * J, -1)
    Q = torch.nan_to_num(Q)
    _, vecs = torch.linalg.eigh(Q)
    kernel = vecs[..., :4].transpose(1, 2).reshape(B, 4, J, 3)  # smallest eigenvalues first

    pairs = torch.combinations(torch.arange(J, device=w.device), 2)  # (M, 2)
    dv = kernel[:, :, pairs[:, 0]] - kernel[:, :, pairs[:, 1]]  # (B, 4, M, 3)
    dv = dv.transpose(1, 2)  # (B, M, 4, 3)
    dc = control_w[:, pairs[:, 0]] - control_w[:, pairs[:, 1]]
    rho = dc.square().sum(-1)  # (B, M) squared distances between control points
    gram = dv @ dv.transpose(-1, -2)  # (B, M, 4, 4): dv_k . dv_l per pair

    def lin(cols: list[tuple[int, int]]) -> torch.Tensor:
        """Least-squares products b_kl = beta_k beta_l over the given (k, l) columns."""
        L = torch.stack([(1 if k == m else 2) * gram[..., k, m] for k, m in cols], -1)
        return _lstsq(L, rho)

    # (initial betas (B, 4), how many of them Gauss-Newton polishes)
    candidates: list[tuple[torch.Tensor, int]] = []
    if K == 3:
        b = lin([(0, 0), (0, 1), (0, 2), (0, 3)])  # N = 4 linearisation
        b1 = b[:, 0].abs().sqrt()
        sign = torch.where(b[:, 0] < 0, -1.0, 1.0).to(b)
        beta = torch.stack([b1, *(sign * b[:, i] / b1.clamp_min(1e-300) for i in (1, 2, 3))], -1)
        candidates.append((beta, 4))
    else:
        b = lin([(0, 0)])  # N = 1
        candidates.append((torch.cat([b.abs().sqrt(), b.new_zeros(B, 3)], -1), 1))
    b = lin([(0, 0), (0, 1), (1, 1)])  # N = 2
    candidates.append((_betas_2(b, b.new_zeros(B, 2)), 4 if K == 3 else 2))
    if K == 3:
        b = lin([(0, 0), (0, 1), (1, 1), (0, 2), (1, 2)])  # N = 3
        beta = _betas_2(b[:, :3], b.new_zeros(B, 2))
        beta[:, 2] = b[:, 3] / torch.where(beta[:, 0] == 0, 1.0, beta[:, 0]).to(b)
        candidates.append((beta, 4))

    # per-branch moments, so that each candidate's sign and Kabsch cost O(J^2), not O(N)
    wn = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
    mean_alpha = (wn[..., None] * alphas).sum(1)  # (B, J)
    second = (wn[..., None] * alphas).transpose(1, 2) @ alphas  # (B, J, J)
    centred = second - mean_alpha[:, :, None] * mean_alpha[:, None, :]
    ray_moment = (w[..., None] * alphas).transpose(1, 2) @ f  # (B, J, 3): sum_i w_i a_ij f_i
    out = []
    for beta, k in candidates:
        beta = _gauss_newton(beta[:, :k], dv[:, :, :k], rho)
        ctrl = (beta[:, :, None, None] * kernel[:, :k]).sum(1)  # (B, J, 3)
        out.append(_pose_from_controls(ctrl, control_w, mean_alpha, centred, ray_moment))
    return out


def _betas_2(b: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """Betas from (b11, b12, b22), following the reference EPnP sign rules; ``(B, 4)``."""
    neg = b[:, 0] < 0
    b1 = b[:, 0].abs().sqrt()
    b2 = torch.where(neg == (b[:, 2] < 0), b[:, 2].abs().sqrt(), 0.0)
    b1 = torch.where(b[:, 1] < 0, -b1, b1)
    return torch.cat([torch.stack([b1, b2], -1), zeros], -1)


def _lstsq(L: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Batched least squares ``L x = y`` ``(B, M, k)``, ``(B, M)`` by ridge-regularised normal
    equations (works on every device, finite for rank-deficient ``L``)."""
    A = L.transpose(1, 2) @ L
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    ridge = 1e-12 * A.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)
    chol, info = torch.linalg.cholesky_ex(A + ridge[:, None, None] * eye)
    chol = torch.where((info == 0)[:, None, None], chol, eye)
    x = torch.cholesky_solve((L.transpose(1, 2) @ y[..., None]), chol)[..., 0]
    return torch.where((info == 0)[:, None], torch.nan_to_num(x), 0.0)


def _gauss_newton(beta: torch.Tensor, dv: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Polish betas ``(B, k)`` on ``|sum_k beta_k dv_k|^2 = rho`` per control-point pair.

    Args:
        beta: ``(B, k)`` initial betas.
        dv: ``(B, M, k, 3)`` kernel-vector differences per pair.
        rho: ``(B, M)`` squared world distances per pair.
    """
    for _ in range(_GN_STEPS):
        d = (beta[:, None, :, None] * dv).sum(2)  # (B, M, 3)
        r = d.square().sum(-1) - rho
        Jb = 2 * (dv @ d[..., None])[..., 0]  # (B, M, k)
        step = _lstsq(Jb, -r)
        beta = beta + step
    return beta


def _pose_from_controls(
    ctrl: torch.Tensor,
    control_w: torch.Tensor,
    mean_alpha: torch.Tensor,
    centred: torch.Tensor,
    ray_moment: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted absolute orientation (Kabsch) between the points' world and camera coordinates.

    The points are ``alphas @ control points`` in both frames, so the weighted cross-covariance
    is ``ctrl^T centred control_w`` and only ``(B, J, J)`` moments of the barycentric
    coordinates are needed. The kernel's sign is chosen so that the weighted sum of
    ``f_i . p_i`` is positive (points along their rays).

    Args:
        ctrl: ``(B, J, 3)`` camera control points. control_w: ``(B, J, 3)`` world control points
            (normalised frame).
        mean_alpha: ``(B, J)`` weighted mean of the barycentric coordinates.
        centred: ``(B, J, J)`` their weighted covariance ``E[a a^T] - E[a] E[a]^T``.
        ray_moment: ``(B, J, 3)`` ``sum_i w_i a_ij f_i``.
    Returns:
        ``R`` ``(B, 3, 3)`` and ``t`` ``(B, 3)`` with ``p_cam = R Z + t``.
    """
    front = (ray_moment * ctrl).sum((-1, -2))
    ctrl = torch.where((front < 0)[:, None, None], -ctrl, ctrl)
    H = ctrl.transpose(1, 2) @ centred @ control_w
    U, _, Vh = torch.linalg.svd(torch.nan_to_num(H))
    d = torch.det(U @ Vh)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = U @ D @ Vh
    mc = (mean_alpha[:, None] @ ctrl)[:, 0]
    mw = (mean_alpha[:, None] @ control_w)[:, 0]
    t = mc - (R @ mw[..., None])[..., 0]
    return R, t
