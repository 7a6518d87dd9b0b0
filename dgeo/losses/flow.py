"""Label-free OFlowNet loss and the joint KFNet loss (ALGORITHMS.md 2.8, 2.9).

All maps are stride-8 cell maps ``(B, C, h, w)``; images enter in dgeo's convention (RGB in
[0, 1], full size ``(B, 3, 8h, 8w)`` or already at ``(B, 3, h, w)``) except where a function
says otherwise. Full-size images are reduced to cells by 8x8 averaging (:func:`cell_images`,
centred half a pixel from the cell pixel ``8j + 4``; KFNet samples pixel ``8j`` with TF's
bilinear resize, a 4 px offset and no anti-aliasing).

OFlowNet (:func:`oflownet_loss`, one direction; call it for both):

- transfer NLL: the earlier frame's ground truth warped by the flow,
  ``y(p) = bilinear(Y_prev, p + u(p))`` (:func:`dgeo.geometry.warp_by_flow`), scored against
  frame ``t``'s ground truth under the prior variance
  ``P = max(bilinear(sigma_prev^2), 1e-10) + max(sigma_w^2, 1e-10)`` with
  :func:`~dgeo.losses.uncertainty.gaussian_nll_variance`, truncated ``min(l, -1)``. dgeo warps
  variances (KFNet warps sigma and squares it).
- mask: frame ``t``'s cell valid and the warped source valid (in the map, and every
  neighbour the bilinear sample blends valid); ``window_radius=r`` adds KFNet's stricter mask:
  all ``(2r)^2`` candidate source cells valid and inside the map (:func:`window_valid`).
- x2 photometric ``0.85 clip((1 - SSIM)/2, 0, 1) + 0.15 |dI|`` on the 1/8 images in
  [-1, 1] (3x3 SSIM), frame ``t`` against the earlier image warped by the flow, over cells
  with a valid label in frame ``t`` whose warp lands inside the map.
- x50 edge-aware smoothness of the warped coordinates (:func:`smoothness_loss`).

KFNet (:func:`kfnet_loss`): ``0.2 L_meas + 0.2 L_prior + 0.6 L_post``, each the NLL truncated
``min(l, -2)`` plus 50x the smoothness of that coordinate map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dgeo.errors import InputError
from dgeo.geometry import warp_by_flow
from dgeo.losses._common import check_mask, require_dims, to_floats
from dgeo.losses.uncertainty import SIGMA_MIN, gaussian_nll_variance

#: Edge-awareness of the smoothness weight, ``exp(-0.625 * mean_c |dI|)`` with I in 0..255.
EDGE_SCALE = 0.625
#: KFNet's photometric blend and SSIM constants.
SSIM_WEIGHT, SSIM_C1, SSIM_C2 = 0.85, 0.01**2, 0.03**2
#: Accuracy threshold of the stats (metres; KFNet's temporal ``dist_threshold``).
ACCURACY_M = 0.02


def cell_images(images: torch.Tensor, size: tuple[int, int], name: str = "image") -> torch.Tensor:
    """``images (B, 3, H, W)`` reduced to the cell map ``size = (h, w)``: unchanged when
    already ``(h, w)``, else 8x8 (``H / h``) average pooling; ``H, W`` must be ``s * (h, w)``."""
    require_dims(images, name, (None, 3, None, None), "(B, 3, H, W)")
    h, w = size
    H, W = images.shape[-2:]
    if (H, W) == (h, w):
        return images
    if H % h or W % w or H // h != W // w:
        raise InputError(
            f"{name} of size {H}x{W} is neither the cell size {h}x{w} nor a whole multiple of "
            "it (8x for stride-8 maps); pass the full image or its 1/8 version."
        )
    return F.avg_pool2d(images, H // h)


def ssim_dissimilarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``clip((1 - SSIM(x, y)) / 2, 0, 1)`` per pixel and channel, ``(B, C, h, w)``, with 3x3
    means (padding excluded from the count, as TF's ``SAME`` average pooling) and
    ``C1 = 0.01^2``, ``C2 = 0.03^2`` (images in [-1, 1])."""

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, 3, 1, padding=1, count_include_pad=False)

    mu_x, mu_y = pool(x), pool(y)
    sigma_x = pool(x * x) - mu_x**2
    sigma_y = pool(y * y) - mu_y**2
    sigma_xy = pool(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    den = (mu_x**2 + mu_y**2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return ((1 - num / den) / 2).clamp(0, 1)


def photometric_loss(
    img_a: torch.Tensor, img_b_warped: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KFNet's photometric loss ``sum_p m_p sum_c [0.85 SSIM_d + 0.15 |a - b|] / (sum m + 1)``.

    Args:
        img_a: ``(B, C, h, w)`` image in [-1, 1].
        img_b_warped: ``(B, C, h, w)`` the other image warped onto ``img_a``, in [-1, 1].
        mask: ``(B, h, w)`` bool; None uses every pixel.
    Returns:
        scalar (per-pixel sum over channels, averaged over ``sum m + 1``).
    """
    require_dims(img_a, "img_a", (None, None, None, None), "(B, C, h, w)")
    require_dims(img_b_warped, "img_b_warped", tuple(img_a.shape), "(B, C, h, w) as img_a")
    b, _, h, w = img_a.shape
    mask = check_mask(mask, "mask", (b, h, w), img_a.device)
    m = mask[:, None]
    a = torch.where(m, img_a, torch.zeros_like(img_a))
    bb = torch.where(m, img_b_warped.to(img_a.dtype), torch.zeros_like(img_a))
    per = SSIM_WEIGHT * ssim_dissimilarity(a, bb) + (1 - SSIM_WEIGHT) * (a - bb).abs()
    per = torch.where(m, per, torch.zeros_like(per))
    return per.sum() / (mask.sum().to(per.dtype) + 1.0)


def smoothness_loss(
    coords: torch.Tensor, image: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Edge-aware smoothness ``sum mean_c(dY)^2 exp(-0.625 mean_c |dI|) / (sum m + 1)`` over
    horizontal and vertical neighbour pairs.

    Args:
        coords: ``(B, C, h, w)`` maps (e.g. scene coordinates in metres).
        image: ``(B, K, h, w)`` image at the same size, values in 0..255.
        mask: ``(B, h, w)`` bool; a pair counts when both cells are in the mask (KFNet uses the
            first cell's mask only, which lets invalid neighbours in).
    Returns:
        scalar.
    """
    require_dims(coords, "coords", (None, None, None, None), "(B, C, h, w)")
    b, _, h, w = coords.shape
    require_dims(image, "image", (b, None, h, w), "(B, K, h, w) at the size of coords")
    mask = check_mask(mask, "mask", (b, h, w), coords.device)
    y = torch.where(mask[:, None], coords, torch.zeros_like(coords))
    img = image.to(coords.dtype)
    total = coords.new_zeros(())
    for dim in (-1, -2):  # x then y neighbours
        n = y.shape[dim] - 1
        if n < 1:
            continue
        dy = (y.narrow(dim, 0, n) - y.narrow(dim, 1, n)).square().mean(1)
        di = (img.narrow(dim, 0, n) - img.narrow(dim, 1, n)).abs().mean(1)
        pair = mask.narrow(dim, 0, n) & mask.narrow(dim, 1, n)
        term = dy * torch.exp(-EDGE_SCALE * di)
        total = total + torch.where(pair, term, torch.zeros_like(term)).sum()
    return total / (mask.sum().to(total.dtype) + 1.0)


def window_valid(valid: torch.Tensor, radius: int) -> torch.Tensor:
    """KFNet's candidate mask: ``(B, h, w)`` true where every source cell ``p + d``,
    ``d in {-r, ..., r - 1}^2``, is inside the map and valid in ``valid (B, h, w)``."""
    require_dims(valid, "valid", (None, None, None), "(B, h, w)")
    r = int(radius)
    if r < 1:
        raise InputError(f"window_radius must be >= 1, got {radius}.")
    bad = (~valid.bool())[:, None].float()
    bad = F.pad(bad, (r, r - 1, r, r - 1), value=1.0)  # outside the map counts as invalid
    return F.max_pool2d(bad, 2 * r, stride=1)[:, 0] < 0.5


def _as_variance(sigma: torch.Tensor | float, like: torch.Tensor, name: str) -> torch.Tensor:
    """``sigma`` (a number or ``(B, 1, h, w)``) squared, as a ``(B, 1, h, w)`` map."""
    b, _, h, w = like.shape
    if isinstance(sigma, torch.Tensor):
        require_dims(sigma, name, (b, 1, h, w), "(B, 1, h, w)")
        return sigma.to(like.dtype).square()
    s = float(sigma)
    if not s >= 0 or math.isinf(s):
        raise InputError(f"{name} must be a finite number >= 0 or a (B, 1, h, w) map, got {s}.")
    return like.new_full((b, 1, h, w), s * s)


def _masked_median(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    vals = x[mask]
    return vals.median() if vals.numel() else x.new_tensor(float("nan"))


def oflownet_loss(
    flow: torch.Tensor,
    log_sigma_w: torch.Tensor,
    coords_prev_gt: torch.Tensor,
    valid_prev: torch.Tensor,
    coords_t_gt: torch.Tensor,
    valid_t: torch.Tensor,
    sigma_prev: torch.Tensor | float = 0.0,
    image_t: torch.Tensor | None = None,
    image_prev: torch.Tensor | None = None,
    *,
    truncate: float | None = -1.0,
    photometric_weight: float = 2.0,
    smooth_weight: float = 50.0,
    window_radius: int | None = None,
    sigma_min: float = SIGMA_MIN,
) -> tuple[torch.Tensor, dict[str, float]]:
    """OFlowNet's label-free loss for the pair (t, prev), one direction (module docstring).

    Args:
        flow: ``(B, 2, h, w)`` cells, on frame t, pointing into the earlier frame.
        log_sigma_w: ``(B, 1, h, w)`` process-noise log-sigma (metres).
        coords_prev_gt, valid_prev: ``(B, 3, h, w)`` ground truth and ``(B, h, w)`` bool
            validity of the earlier frame.
        coords_t_gt, valid_t: the same for frame t (same frame of reference).
        sigma_prev: sigma of the earlier coordinates, a number (KFNet: the GT noise level, 0
            without noise) or ``(B, 1, h, w)``; floored at ``sigma_min``.
        image_t, image_prev: RGB in [0, 1], ``(B, 3, 8h, 8w)`` or ``(B, 3, h, w)``; None skips
            the photometric and smoothness terms.
        truncate: NLL cap ``min(l, truncate)`` (KFNet -1; None: none).
        photometric_weight, smooth_weight: 2 and 50 in KFNet.
        window_radius: also require all candidate sources valid (KFNet's mask, r = 4).
        sigma_min: sigma floor (variances floored at ``sigma_min**2 = 1e-10``).
    Returns:
        ``(loss, stats)``: scalar and Python floats ``loss, nll, photometric, smoothness,
        mask_fraction, median_error`` (metres, of the warped GT), ``accuracy`` (share under
        2 cm), ``median_sigma``, ``mean_flow`` (cells).
    """
    require_dims(flow, "flow", (None, 2, None, None), "(B, 2, h, w)")
    b, _, h, w = flow.shape
    require_dims(log_sigma_w, "log_sigma_w", (b, 1, h, w), "(B, 1, h, w) as flow")
    require_dims(coords_prev_gt, "coords_prev_gt", (b, 3, h, w), "(B, 3, h, w) as flow")
    require_dims(coords_t_gt, "coords_t_gt", (b, 3, h, w), "(B, 3, h, w) as flow")
    valid_prev = check_mask(valid_prev, "valid_prev", (b, h, w), flow.device)
    valid_t = check_mask(valid_t, "valid_t", (b, h, w), flow.device)
    dtype = flow.dtype
    coords_prev = coords_prev_gt.to(dtype)
    var_prev = _as_variance(sigma_prev, coords_prev, "sigma_prev")

    warped, warped_valid = warp_by_flow(coords_prev, flow, valid_prev)
    var_prev_w, _ = warp_by_flow(var_prev, flow)
    var_w = torch.exp(2.0 * log_sigma_w.to(dtype))
    floor = sigma_min**2
    variance = var_prev_w.clamp(min=floor) + var_w.clamp(min=floor)
    mask = valid_t & warped_valid
    if window_radius is not None:
        mask = mask & window_valid(valid_prev, window_radius)
    nll = gaussian_nll_variance(warped, coords_t_gt, variance, mask, sigma_min, truncate)

    photo = smooth = nll.new_zeros(())
    if image_t is not None and image_prev is not None:
        img_t = cell_images(image_t.to(dtype), (h, w), "image_t")
        img_p = cell_images(image_prev.to(dtype), (h, w), "image_prev")
        img_p_w, inside = warp_by_flow(img_p, flow)
        photo = photometric_loss(2 * img_t - 1, 2 * img_p_w - 1, valid_t & inside)
        smooth = smoothness_loss(warped, img_t * 255.0, mask)
    elif (image_t is None) != (image_prev is None):
        raise InputError("pass both image_t and image_prev, or neither.")
    loss = nll + photometric_weight * photo + smooth_weight * smooth

    with torch.no_grad():
        err = (warped - coords_t_gt.to(dtype)).norm(dim=1)
        stats = {
            "loss": loss,
            "nll": nll,
            "photometric": photo,
            "smoothness": smooth,
            "mask_fraction": mask.float().mean(),
            "median_error": _masked_median(err, mask),
            "accuracy": ((err < ACCURACY_M) & mask).sum() / mask.sum().clamp(min=1),
            "median_sigma": _masked_median(variance[:, 0].sqrt(), mask),
            "mean_flow": flow.norm(dim=1).mean(),
        }
    return loss, to_floats(stats)


def _term(x: Any, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(mean, var, valid)`` of a tuple ``(mean, var[, valid])`` or an object with ``mean``,
    ``var`` (and optionally ``valid``) attributes (``dgeo.temporal`` results)."""
    if isinstance(x, (tuple, list)) and not hasattr(x, "_fields"):
        if len(x) not in (2, 3):
            raise InputError(f"{name} must be (mean, var) or (mean, var, valid), got {len(x)}.")
        return x[0], x[1], x[2] if len(x) == 3 else None
    if hasattr(x, "mean") and hasattr(x, "var") and isinstance(x.mean, torch.Tensor):
        return x.mean, x.var, getattr(x, "valid", None)
    if isinstance(x, tuple) and len(x) in (2, 3):  # a NamedTuple without mean/var fields
        return x[0], x[1], x[2] if len(x) == 3 else None
    raise InputError(
        f"{name} must be (mean (B,3,h,w), var (B,1,h,w)[, valid (B,h,w)]) or an object with "
        f"mean/var attributes, got {type(x).__name__}."
    )


def kfnet_loss(
    meas: Any,
    prior: Any,
    post: Any,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
    *,
    weights: Sequence[float] = (0.2, 0.2, 0.6),
    truncate: float | None = -2.0,
    smooth_weight: float = 50.0,
    sigma_min: float = SIGMA_MIN,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Joint KFNet loss ``w_0 L_meas + w_1 L_prior + w_2 L_post`` for one frame.

    Each ``L = NLL (truncated min(l, truncate)) + smooth_weight * smoothness`` of that map.

    Args:
        meas, prior, post: ``(mean (B, 3, h, w), var (B, 1, h, w))`` or with a third
            ``valid (B, h, w)`` bool, or objects with ``mean``/``var``/``valid`` attributes
            (e.g. ``dgeo.temporal.KalmanPrior``/``KalmanStep``: the state posterior is scored).
            Variances, not sigmas (``var = exp(2 log_sigma)``). ``prior`` may be None (first
            frame of a group): its term is skipped, the others keep their weights. Cells with
            ``+inf``/NaN variance or ``valid`` false are left out of that term.
        target: ``(B, 3, h, w)`` ground truth in the frame of the means.
        mask: ``(B, h, w)`` bool label validity.
        image: RGB in [0, 1], ``(B, 3, 8h, 8w)`` or ``(B, 3, h, w)`` for the smoothness; None
            skips it.
        weights: of the three terms (KFNet 0.2, 0.2, 0.6).
        truncate: NLL cap (KFNet -2; None: none).
    Returns:
        ``(loss, stats)`` with ``loss``, ``nll_<term>``, ``smooth_<term>``,
        ``median_error_<term>`` (metres) for ``meas``, ``prior``, ``post``.
    """
    require_dims(target, "target", (None, 3, None, None), "(B, 3, h, w)")
    b, _, h, w = target.shape
    mask = check_mask(mask, "mask", (b, h, w), target.device)
    if len(weights) != 3:
        raise InputError(f"weights must be 3 numbers (meas, prior, post), got {weights!r}.")
    img = None if image is None else cell_images(image, (h, w)) * 255.0
    loss = target.new_zeros(())
    stats: dict[str, torch.Tensor] = {}
    for name, term, weight in zip(
        ("meas", "prior", "post"), (meas, prior, post), weights, strict=True
    ):
        if term is None:
            continue
        mean, var, valid = _term(term, name)
        m = (
            mask
            if valid is None
            else mask & check_mask(valid, f"{name} valid", (b, h, w), target.device)
        )
        nll = gaussian_nll_variance(mean, target, var, m, sigma_min, truncate)
        m = m & (var[:, 0] < math.inf)
        smooth = smoothness_loss(mean, img, m) if img is not None else nll.new_zeros(())
        loss = loss + float(weight) * (nll + smooth_weight * smooth)
        with torch.no_grad():
            err = (mean - target.to(mean.dtype)).norm(dim=1)
            stats[f"nll_{name}"] = nll
            stats[f"smooth_{name}"] = smooth
            stats[f"median_error_{name}"] = _masked_median(err, m)
    stats = {"loss": loss, **stats}
    return loss, to_floats(stats)
