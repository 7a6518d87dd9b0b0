"""The Gauss-Newton loss of GN-Net (ALGORITHMS.md 2.5), as PixLoc's ``gnnet.py`` computes it.

For a correspondence with anchor descriptor ``f_a`` and true match ``u_b`` in the map ``F_b``
(level pixels), one Gauss-Newton step is taken from a perturbed start ``x_s = u_b + eps``,
``eps ~ U(-noise, noise)^2``::

    r = F_b(x_s) - f_a                     (C,)
    J = dF_b/dx (x_s)                       (C, 2)   central differences of F_b interpolated
                                                     at x_s: the same map and sampling as r
    H = J^T J + ridge I,   mu = x_s - H^-1 J^T r
    e1 = 1/2 (u_b - mu)^T H (u_b - mu),     e2 = log(2 pi) - 1/2 log det H

i.e. the negative log-likelihood of ``u_b`` under the Gaussian ``N(mu, H^-1)`` that the step
predicts. gn_net took ``J`` from the unnormalised (zero-padded) map and ``r`` from the normalised
one; here both come from :func:`dgeo.geometry.sample` on ``fmap_b`` (normalise the map before
calling if you want normalised features). The 2x2 solve, determinant and quadratic form are in
closed form, so there is no per-point linear-algebra call.
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

LOG_2PI = math.log(2 * math.pi)


def gauss_newton_terms(
    desc_a: torch.Tensor,
    fmap_b: torch.Tensor,
    uv_b: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    noise: float = 1.0,
    ridge: float = 1e-6,
    w1: float = 1.0,
    w2: float = 1.0,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`gauss_newton_loss` with its statistics left as scalar tensors (no device sync)."""
    mask = check_correspondence_inputs(desc_a, fmap_b, uv_b, mask)
    if not (noise >= 0 and math.isfinite(noise)):
        raise InputError(f"noise must be a finite number >= 0 level pixels, got {noise}.")
    if not (ridge >= 0 and math.isfinite(ridge)):
        raise InputError(f"ridge must be a finite number >= 0, got {ridge}.")
    dtype = torch.promote_types(desc_a.dtype, fmap_b.dtype)
    fmap_b = fmap_b.to(dtype)
    b, n, _ = desc_a.shape
    xy_max = level_bounds(fmap_b, bounds)

    uv_b = uv_b.to(dtype)
    eps = (uniform((b, n, 2), generator, dtype, fmap_b.device) * 2 - 1) * noise
    x_s = uv_b + eps
    mask = mask & inside(uv_b, xy_max) & inside(x_s, xy_max)
    desc = torch.where(mask[..., None], desc_a.to(dtype), 0.0)
    x_s = torch.where(mask[..., None], x_s, 0.0)
    u = torch.where(mask[..., None], uv_b, 0.0)

    f, _, J = sample(fmap_b, x_s, return_gradients=True)  # (B, N, C), (B, N, C, 2)
    r = f - desc
    jx, jy = J.unbind(-1)
    a = jx.square().sum(-1)  # J^T J = [[a, c], [c, d]]
    c = (jx * jy).sum(-1)
    d = jy.square().sum(-1)
    gx, gy = (jx * r).sum(-1), (jy * r).sum(-1)  # J^T r
    h11, h12, h22 = a + ridge, c, d + ridge
    det = (a * d - c * c) + ridge * (a + d) + ridge * ridge
    ok = mask & torch.isfinite(det) & (det > 0)
    det_safe = torch.where(ok, det, torch.ones_like(det))
    # mu = x_s - H^-1 g, so u_b - mu = (u_b - x_s) + H^-1 g
    ex = u[..., 0] - x_s[..., 0] + (h22 * gx - h12 * gy) / det_safe
    ey = u[..., 1] - x_s[..., 1] + (h11 * gy - h12 * gx) / det_safe
    e1 = 0.5 * (h11 * ex * ex + 2 * h12 * ex * ey + h22 * ey * ey)
    e2 = LOG_2PI - 0.5 * torch.log(det_safe)
    ok = ok & torch.isfinite(e1)
    loss = masked_mean(w1 * e1 + w2 * e2, ok)
    stats = {
        "e1": masked_mean(e1.detach(), ok),
        "e2": masked_mean(e2.detach(), ok),
        "step_error": masked_mean(torch.hypot(ex, ey).detach(), ok),
        "valid": ok.sum().to(dtype),
    }
    return loss, stats


def gauss_newton_loss(
    desc_a: torch.Tensor,
    fmap_b: torch.Tensor,
    uv_b: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    noise: float = 1.0,
    ridge: float = 1e-6,
    w1: float = 1.0,
    w2: float = 1.0,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GN-Net's Gauss-Newton loss on one level (see the module docstring for the formula).

    Args:
        desc_a: ``(B, N, C)`` anchor descriptors (image a at ``uv_a``).
        fmap_b: ``(B, C, h, w)`` dense features of image b.
        uv_b: ``(B, N, 2)`` true matches in ``fmap_b``'s (level) pixels.
        mask: ``(B, N)`` bool, true for real correspondences (``None``: all). Matches whose
            ``uv_b`` or start ``x_s`` falls outside the valid region, or whose ``H`` is not
            positive definite or gives a non-finite cost, are dropped.
        noise: half-width of the uniform start perturbation in level pixels.
        ridge: ``kappa`` added to the diagonal of ``J^T J``.
        w1, w2: weights of ``e1`` and ``e2``.
        generator: seeds the perturbation ``eps = (2 U - 1) noise`` with
            ``U = torch.rand((B, N, 2), generator=generator, dtype=...)`` drawn on the
            generator's device for every match, masked ones included (``None``: global RNG).
        bounds: ``(x_max, y_max)`` level pixels of the real image inside a padded map
            (``None``: the map's pixel-centre grid).
    Returns:
        ``loss`` = masked mean of ``w1 e1 + w2 e2`` (scalar) and ``stats`` of Python floats:
        ``e1``, ``e2`` (masked means), ``step_error`` (mean ``|mu - u_b|``, level pixels),
        ``valid`` (count of used matches).
    """
    loss, stats = gauss_newton_terms(
        desc_a,
        fmap_b,
        uv_b,
        mask,
        noise=noise,
        ridge=ridge,
        w1=w1,
        w2=w2,
        generator=generator,
        bounds=bounds,
    )
    return loss, to_floats(stats)
