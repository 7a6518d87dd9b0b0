"""Batched robust refinement of absolute poses by reprojection error, with covariances.

:func:`refine_pose` runs :func:`dgeo.optim.minimize` on :class:`dgeo.optim.ReprojectionResidual`
for ``B`` padded problems at once and returns the pose, its covariance and per-problem
diagnostics. The covariance lives in the tangent space of :meth:`Pose.retract`:
``delta = (dt, dw)``, translation first, with ``R = exp(dw) R_hat`` and
``t = exp(dw) t_hat + dt``; :func:`tangent_difference` maps a pose to that space.

Covariance, exactly (:func:`residual_variance`, :func:`pose_covariance`). With squared
reprojection errors ``s_i = ||r_i||^2`` (pixels^2) at the solution, per-correspondence weights
``w_i`` (mask, validity and ``weights`` folded in), the kernel's ``rho'_i``, ``rho''_i`` at
``s_i``, the slopes ``psi'_i = rho'_i + rho''_i s_i`` and ``n`` valid correspondences (``2n``
scalar residuals, ``p = 6`` parameters), with ``E_w[x] = sum_i w_i x_i / sum_i w_i``::

    H       = sum_i w_i rho'_i J_i^T J_i                   (the LM Gauss-Newton Hessian)
    sigma^2 = sum_i w_i rho'_i^2 s_i / (2n - 6)            (robustly weighted residuals)
              * E_w[rho'] / E_w[psi']^2                    (M-estimator correction)
              * K^2,  K = 1 + p / (2n) * Var_w[psi'] / E_w[psi']^2   (Huber's small-sample K)
    Cov     = sigma^2 H^-1

For plain least squares (``rho' = 1``, ``rho'' = 0``) both corrections are 1 and this is the
textbook ``sum w s / (2n - 6) * (J^T W J)^-1``. Under a robust kernel the first factor alone (the
residual variance of the IRLS-weighted residuals ``rho' r``) underestimates the spread of the
M-estimate: with Cauchy at scale 1 px and 1 px Gaussian noise by a factor 0.44. The corrections
are the classical M-estimator sandwich ``A^-1 B A^-1`` (``A`` the expected Hessian including
``rho''``, ``B`` the covariance of the score) reduced to a scalar, with Huber's finite-sample
factor ``K^2`` (Huber, *Robust Statistics*, 1981, sec. 7.6; statsmodels' RLM "H1"), written
relative to the IRLS Hessian that LM returns. Outliers the kernel down-weights drop out of every
sum instead of inflating ``sigma^2``. Tested against the empirical spread of the estimate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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
from dgeo.optim import LMOptions, ReprojectionResidual, RobustKernel, get_kernel, minimize


@dataclass
class RefineResult:
    """The outcome of :func:`refine_pose`, per problem.

    Attributes:
        pose: refined ``cam_from_world`` :class:`Pose` ``(B,)``; problems that could not start
            (too few valid correspondences, non-finite ``init``) keep ``init`` (identity where
            ``init`` is not finite).
        covariance: ``(B, 6, 6)`` covariance of ``(dt, dw)`` (metres, radians) in the tangent
            of :meth:`Pose.retract` at ``pose``; ``sigma2 * hessian^-1``. Where ``success`` is
            False: ``inf`` on the diagonal, 0 elsewhere.
        cost: ``(B,)`` final cost ``1/2 sum w rho(||r||^2)`` (pixels^2).
        num_valid: ``(B,)`` int64, correspondences used at the solution.
        success: ``(B,)`` bool: at least ``min_points`` valid correspondences, finite cost and a
            positive-definite Hessian.
        iterations: ``(B,)`` int64, LM iterations run.
        sigma2: ``(B,)`` the residual variance factor of :func:`residual_variance` (pixels^2).
        hessian: ``(B, 6, 6)`` Gauss-Newton Hessian ``sum w rho' J^T J`` at ``pose``.
        converged: ``(B,)`` bool, an LM tolerance was met.
    """

    pose: Pose
    covariance: torch.Tensor
    cost: torch.Tensor
    num_valid: torch.Tensor
    success: torch.Tensor
    iterations: torch.Tensor
    sigma2: torch.Tensor
    hessian: torch.Tensor
    converged: torch.Tensor


def refine_pose(
    points2D: torch.Tensor,
    points3D: torch.Tensor,
    camera: Camera,
    init: Pose,
    mask: torch.Tensor | None = None,
    *,
    weights: torch.Tensor | None = None,
    kernel: str | RobustKernel | None = "cauchy",
    scale: float = 1.0,
    max_iterations: int | None = None,
    unroll: bool | None = None,
    min_points: int = 4,
    options: LMOptions | None = None,
) -> RefineResult:
    """Refine ``B`` absolute poses by robust reprojection error, with covariances.

    Args:
        points2D: ``(B, N, 2)`` observed pixels (dgeo convention, top-left pixel centre at 0).
        points3D: ``(B, N, 3)`` world points; everything is computed in their dtype.
        camera: :class:`Camera` of batch shape ``()`` or ``(B,)``.
        init: initial ``cam_from_world`` :class:`Pose` ``(B,)``.
        mask: ``(B, N)`` bool, correspondences to use (padding and RANSAC outliers = False).
        weights: ``(B, N)`` finite non-negative per-correspondence weights.
        kernel: robust kernel name (:data:`dgeo.optim.KERNEL_NAMES`) or instance; ``None`` is
            least squares. A kernel instance keeps its own scale.
        scale: kernel scale in pixels (COLMAP's default: Cauchy at 1 px).
        max_iterations: LM iterations (default: ``options``' value, 100).
        unroll: run exactly ``max_iterations`` with autograd through the iterations (training);
            default: ``options``' value (False).
        min_points: fewest valid correspondences for success (>= 4, so that ``2n - 6 > 0``).
        options: further :class:`LMOptions`; ``max_iterations``, ``unroll`` and ``min_points``
            above override its fields.
    Returns:
        :class:`RefineResult`. Correspondences with NaN/inf coordinates count as invalid, a
        problem with a non-finite ``init`` fails; neither raises.
    Raises:
        ShapeError, InputError: malformed shapes, dtypes or weights.
    """
    require_shape(points3D, "points3D", last=[None, None, 3])
    require_shape(points2D, "points2D", last=[None, None, 2])
    if points3D.dim() != 3 or points2D.shape[:2] != points3D.shape[:2]:
        raise ShapeError(
            f"points2D (B, N, 2) and points3D (B, N, 3) must agree, got "
            f"{tuple(points2D.shape)} and {tuple(points3D.shape)}."
        )
    require_floating(points3D, "points3D")
    B, N = points3D.shape[:2]
    if not isinstance(init, Pose) or tuple(init.shape) != (B,):
        raise ShapeError(f"init must be a Pose of batch shape ({B},), got {init!r}.")
    if min_points < 4:
        raise InputError(f"min_points must be >= 4 (2n - 6 > 0), got {min_points}.")
    require_mask(mask, "mask", (B, N))
    require_weights(weights, "weights", (B, N))

    # non-finite data are invalid correspondences, a non-finite start a failed problem
    finite = torch.isfinite(points2D).all(-1) & torch.isfinite(points3D).all(-1)
    good_init = torch.isfinite(init.data).all(-1)
    use = finite & good_init[:, None]
    if mask is not None:
        use = use & mask
    p2 = torch.where(finite[..., None], points2D, 0.0).to(points3D.dtype)
    p3 = torch.where(finite[..., None], points3D, 0.0)
    if weights is not None:
        weights = weights.to(points3D.dtype)
    x0 = Pose(torch.where(good_init[:, None], init.data, Pose.identity((B,)).data.to(init.data)))
    x0 = x0.to(points3D.dtype)

    opts = options or LMOptions()
    overrides = {"min_valid": min_points}
    if max_iterations is not None:
        overrides["max_iterations"] = max_iterations
    if unroll is not None:
        overrides["unroll"] = unroll
    opts = dataclasses.replace(opts, **overrides)
    robust = get_kernel(kernel, scale)

    fn = ReprojectionResidual(p3, p2, camera)
    res = minimize(fn, x0, mask=use, weights=weights, kernel=robust, options=opts)

    detach = (not opts.unroll) if opts.detach is None else opts.detach
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
        r, _, valid = fn(res.x)
        valid = valid & use & torch.isfinite(r).all(-1)
        sq = torch.where(valid, r.square().sum(-1), 0.0)
        w = valid.to(sq.dtype) if weights is None else torch.where(valid, weights.to(sq.dtype), 0.0)
        sigma2, _ = residual_variance(sq, robust, weights=w)
        covariance, cov_ok = pose_covariance(res.hessian, sigma2)
    success = res.success & cov_ok
    eye = torch.eye(6, dtype=covariance.dtype, device=covariance.device)
    covariance = torch.where(
        success[:, None, None], covariance, torch.where(eye > 0, torch.inf, 0.0).to(covariance)
    )
    if detach:
        covariance, sigma2 = covariance.detach(), sigma2.detach()
    return RefineResult(
        pose=res.x,
        covariance=covariance,
        cost=res.cost,
        num_valid=res.num_valid,
        success=success,
        iterations=res.iterations,
        sigma2=sigma2,
        hessian=res.hessian,
        converged=res.converged,
    )


def residual_variance(
    sq_norms: torch.Tensor,
    kernel: str | RobustKernel | None = None,
    weights: torch.Tensor | None = None,
    *,
    residual_dim: int = 2,
    num_params: int = 6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The variance factor ``sigma^2`` of a robust least-squares fit (see the module docstring).

    ``sigma^2 = sum w rho'^2 s / (k n - p) * E_w[rho'] / E_w[psi']^2 * K^2`` with
    ``psi' = rho' + (2 / k) rho'' s``, ``K = 1 + p / (k n) Var_w[psi'] / E_w[psi']^2``, ``k =
    residual_dim`` and ``p = num_params``; for the trivial kernel ``sum w s / (k n - p)``.
    Multiply the inverse IRLS Hessian ``(sum w rho' J^T J)^-1`` by it. ``psi'`` is the expected
    slope ``E[rho' I + 2 rho'' r r^T]`` of a block's score for isotropic ``k``-dimensional
    residuals (``r r^T ~ s I / k``): ``rho' + rho'' s`` for reprojection errors (``k = 2``).

    Args:
        sq_norms: ``(B, N)`` squared residual norms ``s`` at the solution.
        kernel: the kernel used in the fit (name with scale 1, or instance); ``None``: trivial.
        weights: ``(B, N)`` non-negative weights; 0 = not a residual (masked, invalid).
            ``None``: all count.
        residual_dim: scalar residuals per block (2 for reprojection errors).
        num_params: parameters estimated (6 for a pose).
    Returns:
        ``sigma2`` ``(B,)`` (``inf`` where ``k n <= p``) and ``n`` ``(B,)`` int64, blocks with
        positive weight.
    """
    kernel = get_kernel(kernel)
    w = torch.ones_like(sq_norms) if weights is None else weights.to(sq_norms.dtype)
    s = torch.where(w > 0, sq_norms, 0.0)
    _, d1, d2 = kernel(s)
    n = (w > 0).sum(-1)
    dof = residual_dim * n - num_params
    wsum = w.sum(-1).clamp_min(torch.finfo(s.dtype).tiny)
    score = (w * d1 * d1 * s).sum(-1) / dof.clamp_min(1).to(s.dtype)
    mean_d1 = (w * d1).sum(-1) / wsum
    slope = d1 + (2 / residual_dim) * d2 * s  # psi' per residual block
    mean_slope = (w * slope).sum(-1) / wsum
    var_slope = (w * (slope - mean_slope[:, None]).square()).sum(-1) / wsum
    # clamped for kernels whose slope can turn negative (Tukey, Barron with alpha < 0)
    mean_slope = mean_slope.clamp_min(1e-3 * mean_d1).clamp_min(torch.finfo(s.dtype).tiny)
    K = 1 + num_params / (residual_dim * n).clamp_min(1).to(s.dtype) * var_slope / mean_slope**2
    sigma2 = score * mean_d1 / mean_slope**2 * K**2
    sigma2 = torch.where(dof > 0, sigma2, torch.inf)
    return sigma2, n


def pose_covariance(
    hessian: torch.Tensor, sigma2: torch.Tensor | float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Covariances ``sigma2 * hessian^-1`` of Gauss-Newton estimates.

    Args:
        hessian: ``(B, D, D)`` symmetric Hessians (``sum w rho' J^T J``).
        sigma2: ``(B,)`` or scalar residual variance factors (:func:`residual_variance`).
    Returns:
        ``(covariance (B, D, D), ok (B,))``; ``ok`` is False where the Hessian is not positive
        definite or ``sigma2`` is not finite, and the covariance there is NaN-free but
        meaningless (the identity times ``sigma2`` or 0).
    """
    require_shape(hessian, "hessian", last=[None, None])
    D = hessian.shape[-1]
    sigma2 = torch.as_tensor(sigma2, dtype=hessian.dtype, device=hessian.device)
    sigma2 = sigma2.expand(hessian.shape[:-2])
    L, info = torch.linalg.cholesky_ex(hessian)
    ok = (info == 0) & torch.isfinite(sigma2)
    eye = torch.eye(D, dtype=hessian.dtype, device=hessian.device)
    L = torch.where(ok[..., None, None], L, eye)
    cov = torch.cholesky_inverse(L) * torch.where(ok, sigma2, 0.0)[..., None, None]
    return cov, ok


def tangent_difference(pose: Pose, reference: Pose) -> torch.Tensor:
    """The tangent vector ``delta = (dt, dw)`` with ``pose = reference.retract(delta)``.

    ``dw = log(R R_ref^T)`` (rotation vector) and ``dt = t - R R_ref^T t_ref``, i.e. the
    translation and rotation vector of ``pose @ reference.inv()``; the space in which
    :attr:`RefineResult.covariance` is expressed.

    Args:
        pose, reference: :class:`Pose` of broadcasting batch shapes.
    Returns:
        ``(..., 6)``.
    """
    rel = pose @ reference.inv()
    return torch.cat([rel.t, rel.axis_angle()], -1)
