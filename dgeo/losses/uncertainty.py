"""Gaussian negative log-likelihood of scene coordinates with a per-cell isotropic sigma
(KFNet's ``CoordLossWithUncertainty``, ALGORITHMS.md 2.7).

Per cell ``p`` with prediction ``y_p``, target ``t_p`` and ``s_p = max(sigma_p, sigma_min)``::

    l_p = 3 log s_p + |y_p - t_p|^2 / (2 s_p^2)        (3-D Gaussian, constants dropped)
    L   = sum_p m_p l_p / (sum_p m_p + 1)

Truncation (``truncate=c``): ``l_p <- min(l_p, c)``. This is KFNet's ``tf.minimum(loss_map,
-1.0)`` (OFlowNet) and ``-2.0`` (joint KFNet training): an *upper* cap. In metric units a cell
that fits well has a very negative NLL (sigma = 1 cm gives ``3 log 0.01 = -13.8``), so the cap
only reaches cells whose NLL exceeds ``c``: gross outliers (wrong flow, occlusion, label
noise). They contribute the constant ``c`` and no gradient, as in truncated least squares.
The cap depends on the unit of the coordinates (metres here); with ``truncate=None`` nothing
is capped (SCoordNet training).

Cells outside ``mask`` never reach the value or the gradient, even when their inputs are NaN
or their variance is infinite; cells with a NaN or ``+inf`` sigma/variance are treated as
outside the mask (zero is floored).
"""

from __future__ import annotations

import math

import torch

from dgeo.errors import InputError
from dgeo.losses._common import check_mask, require_dims

#: Floor of sigma in metres (KFNet's ``min_uncertainty``).
SIGMA_MIN = 1e-5


def _check(
    pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, scale_name: str, mask
) -> torch.Tensor:
    require_dims(pred, "pred", (None, 3, None, None), "(B, 3, h, w)")
    b, _, h, w = pred.shape
    require_dims(target, "target", (b, 3, h, w), "(B, 3, h, w) as pred")
    require_dims(scale, scale_name, (b, 1, h, w), "(B, 1, h, w) as pred")
    for x, name in ((pred, "pred"), (target, "target"), (scale, scale_name)):
        if not x.is_floating_point():
            raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}.")
    return check_mask(mask, "mask", (b, h, w), pred.device)


def _reduce(
    pred: torch.Tensor,
    target: torch.Tensor,
    log_s: torch.Tensor,
    mask: torch.Tensor,
    truncate: float | None,
) -> torch.Tensor:
    """``sum m l / (sum m + 1)`` with ``l = 3 log s + |e|^2 exp(-2 log s) / 2`` on safe values."""
    m = mask[:, None]
    diff = torch.where(m, pred - target.to(pred.dtype), torch.zeros_like(pred))
    log_s = torch.where(m, log_s, torch.zeros_like(log_s))
    nll = 3.0 * log_s[:, 0] + 0.5 * diff.square().sum(1) * torch.exp(-2.0 * log_s[:, 0])
    if truncate is not None:
        nll = nll.clamp(max=float(truncate))
    nll = torch.where(mask, nll, torch.zeros_like(nll))
    return nll.sum() / (mask.sum().to(nll.dtype) + 1.0)


def gaussian_nll(
    pred: torch.Tensor,
    target: torch.Tensor,
    log_sigma: torch.Tensor,
    mask: torch.Tensor | None = None,
    sigma_min: float = SIGMA_MIN,
    truncate: float | None = None,
) -> torch.Tensor:
    """Masked Gaussian NLL of scene coordinates with a log-sigma input.

    Args:
        pred: ``(B, 3, h, w)`` predicted coordinates.
        target: ``(B, 3, h, w)`` ground truth (any values outside ``mask``).
        log_sigma: ``(B, 1, h, w)`` natural log of sigma (same unit as the coordinates);
            floored at ``log(sigma_min)`` (zero gradient below the floor, as KFNet's max).
        mask: ``(B, h, w)`` bool cells to score; None scores all.
        sigma_min: floor of sigma.
        truncate: cap ``l_p <- min(l_p, truncate)`` (KFNet: -1 for OFlowNet, -2 for joint
            training; see the module docstring); None: no cap.
    Returns:
        scalar ``sum m l / (sum m + 1)``.
    """
    mask = _check(pred, target, log_sigma, "log_sigma", mask)
    if sigma_min <= 0:
        raise InputError(f"sigma_min must be > 0, got {sigma_min}.")
    mask = mask & (log_sigma[:, 0] < math.inf)  # false for NaN and +inf
    log_s = log_sigma.clamp(min=math.log(sigma_min))
    return _reduce(pred, target, log_s, mask, truncate)


def gaussian_nll_variance(
    pred: torch.Tensor,
    target: torch.Tensor,
    variance: torch.Tensor,
    mask: torch.Tensor | None = None,
    sigma_min: float = SIGMA_MIN,
    truncate: float | None = None,
) -> torch.Tensor:
    """:func:`gaussian_nll` with ``variance (B, 1, h, w) = sigma^2`` instead of log-sigma
    (floored at ``sigma_min**2``). Cells whose variance is NaN or ``+inf`` (e.g. a Kalman prior
    set to ``+inf`` out of frame) are left out of the mask."""
    mask = _check(pred, target, variance, "variance", mask)
    if sigma_min <= 0:
        raise InputError(f"sigma_min must be > 0, got {sigma_min}.")
    mask = mask & (variance[:, 0] < math.inf)  # false for NaN and +inf
    safe = torch.where(mask[:, None], variance, torch.ones_like(variance))
    log_s = 0.5 * torch.log(safe.clamp(min=sigma_min**2))
    return _reduce(pred, target, log_s, mask, truncate)
