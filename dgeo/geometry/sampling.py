"""Sampling of dense maps at sub-pixel points: the one place where dgeo's pixel convention meets
``torch.nn.functional.grid_sample``.

Pixel ``(x, y)`` with the top-left pixel centre at (0, 0) maps to the normalised coordinate
``(2x + 1) / W - 1`` under ``align_corners=False``. Values outside the pixel-centre grid are
replicated from the border (never zero-padded) and flagged invalid. Spatial gradients are central
differences ``[-1/2, 0, 1/2]`` (one-sided at the borders, i.e. linear extrapolation), interpolated
at the same points as the values: smoother than the piecewise-constant derivative of the bilinear
interpolant, and what Gauss-Newton on features needs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from dgeo.errors import InputError, require_shape

Mode = Literal["bilinear", "bicubic", "nearest"]


def pixel_to_grid(uv: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixels ``(..., 2)`` to ``grid_sample`` coordinates for maps of ``size = (H, W)``."""
    h, w = size
    scale = uv.new_tensor([2.0 / w, 2.0 / h])
    return (uv + 0.5) * scale - 1


def spatial_gradient(feature_map: torch.Tensor) -> torch.Tensor:
    """Central-difference gradients of ``(B, C, H, W)`` maps: ``(B, C, 2, H, W)`` as (d/dx, d/dy).

    Borders use one-sided differences (:func:`torch.gradient` with ``edge_order=1``); a map of
    size 1 along an axis has zero gradient along it.
    """
    require_shape(feature_map, "feature_map", last=[None, None, None, None])
    grads = []
    for dim in (-1, -2):
        if feature_map.shape[dim] < 2:
            grads.append(torch.zeros_like(feature_map))
        else:
            grads.append(torch.gradient(feature_map, dim=dim)[0])
    return torch.stack(grads, 2)


def sample(
    feature_map: torch.Tensor,
    uv: torch.Tensor,
    mode: Mode = "bilinear",
    return_gradients: bool = False,
    gradient_map: torch.Tensor | None = None,
):
    """Sample dense maps at sub-pixel points.

    Args:
        feature_map: ``(B, C, H, W)``.
        uv: ``(B, *, 2)`` pixel coordinates ``(x, y)``, top-left pixel centre at (0, 0).
        mode: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        return_gradients: also return spatial gradients at the points.
        gradient_map: precomputed :func:`spatial_gradient` ``(B, C, 2, H, W)`` to reuse across
            calls (e.g. solver iterations); computed here when needed and not given.
    Returns:
        values ``(B, *, C)``; valid ``(B, *)`` (inside the pixel-centre grid
        ``[0, W-1] x [0, H-1]`` and finite); with ``return_gradients``, gradients
        ``(B, *, C, 2)`` as (d/dx, d/dy).
    """
    require_shape(feature_map, "feature_map", last=[None, None, None, None])
    require_shape(uv, "uv", last=[2])
    if uv.shape[0] != feature_map.shape[0] or uv.dim() < 2:
        raise InputError(
            f"uv {tuple(uv.shape)} must be (B, *, 2) with B = {feature_map.shape[0]} as in "
            f"feature_map {tuple(feature_map.shape)}."
        )
    if mode not in ("bilinear", "bicubic", "nearest"):
        raise InputError(f"mode must be 'bilinear', 'bicubic' or 'nearest', got {mode!r}.")
    b, c, h, w = feature_map.shape
    lead = uv.shape[1:-1]
    uv = uv.to(feature_map.dtype)
    maps = feature_map
    if return_gradients:
        if gradient_map is None:
            gradient_map = spatial_gradient(feature_map)
        maps = torch.cat([feature_map, gradient_map.reshape(b, 2 * c, h, w)], 1)
    grid = pixel_to_grid(uv.reshape(b, 1, -1, 2), (h, w))
    out = F.grid_sample(maps, grid, mode=mode, padding_mode="border", align_corners=False)
    out = out.reshape(b, maps.shape[1], -1).transpose(1, 2)  # (B, M, C')
    x, y = uv.reshape(b, -1, 2).unbind(-1)
    valid = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)  # false for NaN too
    values = out[..., :c].reshape(b, *lead, c)
    valid = valid.reshape(b, *lead)
    if not return_gradients:
        return values, valid
    grads = out[..., c:].reshape(b, -1, c, 2).reshape(b, *lead, c, 2)
    return values, valid, grads


def cell_pixels(
    height: int,
    width: int,
    stride: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Pixel of every cell of a stride-``stride`` map, ``(height, width, 2)`` as ``(x, y)``.

    Cell ``(i, j)`` stands for pixel ``(stride * j + stride // 2, stride * i + stride // 2)``:
    the DSAC*/ACE convention, and the pixel whose label ``dgeo synth`` stores in 1/8 KFNet
    labels. ``stride=1`` gives the plain pixel grid.
    """
    if height < 1 or width < 1 or stride < 1:
        raise InputError(f"cell_pixels needs positive sizes, got {height}x{width} / {stride}.")
    off = stride // 2 if stride > 1 else 0
    ys = torch.arange(height, device=device, dtype=dtype) * stride + off
    xs = torch.arange(width, device=device, dtype=dtype) * stride + off
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)


def warp_by_flow(
    source: torch.Tensor,
    flow: torch.Tensor,
    source_valid: torch.Tensor | None = None,
    mode: Mode = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward warp: ``out(p) = source(p + flow(p))``, with validity instead of zero padding.

    The flow lives on the target frame and points into the source frame (KFNet's convention),
    in pixels of the maps' own grid. Points outside the pixel-centre grid of ``source`` are
    invalid (their values are border-replicated, never zeros); with ``source_valid``, a bilinear
    sample is valid only where all four neighbours it blends are valid.

    Args:
        source: ``(B, C, H, W)`` maps (e.g. scene coordinates, variances).
        flow: ``(B, 2, H, W)`` as ``(dx, dy)``.
        source_valid: optional ``(B, H, W)`` bool validity of the source pixels.
        mode: ``"bilinear"`` or ``"nearest"``.
    Returns:
        ``(warped (B, C, H, W), valid (B, H, W))``; differentiable w.r.t. source and flow.
    """
    require_shape(source, "source", last=[None, None, None, None])
    b, _, h, w = source.shape
    if tuple(flow.shape) != (b, 2, h, w):
        raise InputError(f"flow must have shape {(b, 2, h, w)}, got {tuple(flow.shape)}.")
    grid = cell_pixels(h, w, 1, device=source.device, dtype=source.dtype)
    uv = grid + flow.to(source.dtype).permute(0, 2, 3, 1)  # (B, H, W, 2)
    values, valid = sample(source, uv, mode=mode)
    if source_valid is not None:
        if tuple(source_valid.shape) != (b, h, w):
            raise InputError(
                f"source_valid must have shape {(b, h, w)}, got {tuple(source_valid.shape)}."
            )
        m = source_valid[:, None].to(source.dtype)
        if mode == "bilinear":  # every neighbour blended with a non-zero weight must be valid
            near = torch.floor(uv)  # only the 4 blended neighbours count: test them exactly
            corners = [near, near + near.new_tensor([1.0, 0.0])]
            corners += [near + near.new_tensor([0.0, 1.0]), near + 1]
            ok = torch.ones_like(valid)
            for cnr in corners:
                frac = (uv - cnr).abs()
                weight = (1 - frac).clamp_min(0).prod(-1)
                v, _ = sample(m, cnr, mode="nearest")
                ok = ok & ((weight <= 0) | (v[..., 0] > 0.5))
            valid = valid & ok
        else:
            v, _ = sample(m, uv, mode="nearest")
            valid = valid & (v[..., 0] > 0.5)
    return values.permute(0, 3, 1, 2), valid
