"""Camera poses from dense scene-coordinate maps (SCoordNet, KFNet, ACE outputs).

A scene-coordinate network predicts, for every cell of a stride-``s`` map, the world point seen
at the cell's pixel and its uncertainty ``sigma`` (metres). :func:`poses_from_coords` turns a
batch of such maps into ``cam_from_world`` poses with the batched LO-RANSAC of
:func:`dgeo.ransac.pnp_ransac` (P3P + MSAC + local optimisation, then a robust refinement on the
inliers): the DSAC*/ACE recipe of ALGORITHMS 2.10 with dgeo's solver, and KFNet's "weighted by
1/sigma" (2.9) as a confidence selection:

- cell ``(i, j)`` is paired with pixel ``(s j + s/2, s i + s/2)``
  (:func:`dgeo.geometry.cell_pixels`, the pinned stride-8 convention), in the camera of the
  *full* image;
- cells with non-finite coordinates or sigma, ``sigma <= 0``, ``sigma > max_sigma`` or
  ``valid`` False are dropped;
- of the rest, the most confident ``top_fraction`` (smallest sigma; at least ``min_cells`` of
  them when there are that many) take part in RANSAC, so that confident cells drive both the
  hypotheses and the scoring; cells tied at the cut are all kept, so a constant sigma (ACE)
  keeps every cell.

A frame whose map is all NaN, or that keeps fewer than 4 cells, fails with
``PnPReason.TOO_FEW_MATCHES`` in its slot of the batch; nothing raises for bad predictions.
Not differentiable (the maps are detached): train through :func:`dgeo.ransac.dsac_pnp`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Camera, cell_pixels
from dgeo.ransac import PnPResult, pnp_ransac

__all__ = [
    "DEFAULT_MIN_CELLS",
    "DEFAULT_THRESHOLD_PX",
    "DEFAULT_TOP_FRACTION",
    "confident_cells",
    "poses_from_coords",
]

#: Inlier threshold of the pose RANSAC in pixels (DSAC*/ACE's tau, ALGORITHMS 2.10).
DEFAULT_THRESHOLD_PX = 10.0
#: Share of the valid cells, most confident first, that RANSAC uses.
DEFAULT_TOP_FRACTION = 0.75
#: Fewest cells kept by the confidence selection (when a frame has that many valid cells).
DEFAULT_MIN_CELLS = 64


def _check_maps(
    world: torch.Tensor, sigma: torch.Tensor | None, valid: torch.Tensor | None
) -> tuple[int, int, int]:
    """Shapes ``(B, h, w)`` of the maps; :class:`ShapeError` naming the bad argument."""
    if not isinstance(world, torch.Tensor) or world.dim() != 4 or world.shape[1] != 3:
        got = tuple(world.shape) if isinstance(world, torch.Tensor) else type(world).__name__
        raise ShapeError(f"world must be a (B, 3, h, w) scene-coordinate map, got {got}.")
    if not world.is_floating_point():
        raise InputError(f"world must be a floating-point tensor, got {world.dtype}.")
    B, _, h, w = world.shape
    if sigma is not None and (
        not isinstance(sigma, torch.Tensor) or tuple(sigma.shape) != (B, 1, h, w)
    ):
        got = tuple(sigma.shape) if isinstance(sigma, torch.Tensor) else type(sigma).__name__
        raise ShapeError(f"sigma must have shape {(B, 1, h, w)} like world, got {got}.")
    if valid is not None and (
        not isinstance(valid, torch.Tensor)
        or valid.dtype != torch.bool
        or tuple(valid.shape) != (B, h, w)
    ):
        got = f"{tuple(valid.shape)} {valid.dtype}" if isinstance(valid, torch.Tensor) else valid
        raise ShapeError(f"valid must be a {(B, h, w)} bool tensor, got {got}.")
    return B, h, w


def confident_cells(
    sigma: torch.Tensor,
    usable: torch.Tensor,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    min_cells: int = DEFAULT_MIN_CELLS,
) -> torch.Tensor:
    """The most confident usable cells of every frame.

    Args:
        sigma: ``(B, N)`` uncertainties (any values where ``usable`` is False).
        usable: ``(B, N)`` bool, the candidate cells.
        top_fraction: share of each frame's usable cells kept, smallest sigma first
            (``ceil``), in ``(0, 1]``.
        min_cells: keep at least this many (or all usable cells, if fewer).
    Returns:
        ``(B, N)`` bool, a subset of ``usable``: the cells whose sigma is at most the
        ``keep``-th smallest, so cells tied at the cut are all kept (a constant sigma map, as
        ACE reports, keeps every usable cell).
    """
    if not 0 < top_fraction <= 1:
        raise InputError(f"top_fraction must be in (0, 1], got {top_fraction}.")
    if min_cells < 0:
        raise InputError(f"min_cells must be >= 0, got {min_cells}.")
    n = usable.sum(-1)  # (B,)
    if top_fraction >= 1:
        return usable
    keep = torch.ceil(n.to(torch.float64) * top_fraction).to(torch.int64)
    keep = torch.minimum(torch.maximum(keep, torch.full_like(keep, min_cells)), n)
    key = torch.where(usable, sigma.to(torch.float64), math.inf)
    ordered = torch.sort(key, dim=-1).values  # most confident first, unusable last
    cut = torch.gather(ordered, -1, (keep - 1).clamp(min=0)[:, None])  # the keep-th sigma
    return usable & (key <= cut) & (keep > 0)[:, None]


def poses_from_coords(
    world: torch.Tensor,
    sigma: torch.Tensor | None,
    camera: Camera,
    stride: int = 8,
    valid: torch.Tensor | None = None,
    max_sigma: float | None = None,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    threshold_px: float = DEFAULT_THRESHOLD_PX,
    *,
    min_cells: int = DEFAULT_MIN_CELLS,
    dtype: torch.dtype = torch.float64,
    **ransac: Any,
) -> PnPResult:
    """``cam_from_world`` poses of a batch of frames from their scene-coordinate maps.

    Args:
        world: ``(B, 3, h, w)`` predicted world points (metres) of the cells of a stride-``stride``
            map; cell ``(i, j)`` sees pixel ``(stride j + stride/2, stride i + stride/2)``.
        sigma: ``(B, 1, h, w)`` their uncertainties in metres (or any confidence map where
            smaller is more confident); ``None``: all cells equally confident.
        camera: the camera of the *full* image (dgeo pixel convention), batch shape ``()`` or
            ``(B,)``; its size must give the map size (``width // stride == w``,
            ``height // stride == h``). Distortion is honoured.
        stride: pixels per cell.
        valid: optional ``(B, h, w)`` bool, cells allowed at all (e.g. a filter's validity).
        max_sigma: drop cells with ``sigma`` above this (metres); ``None``: no limit.
        top_fraction: share of the remaining cells, most confident first, used by RANSAC
            (see :func:`confident_cells`).
        threshold_px: RANSAC inlier threshold in pixels of the full image.
        min_cells: the confidence selection keeps at least this many cells.
        dtype: the dtype of the solve (float64: the refined pose is exact to well below a
            millimetre; RANSAC scores in float32 whatever this is).
        **ransac: further options of :func:`dgeo.ransac.pnp_ransac` (``seed``,
            ``max_iterations``, ``min_inliers``, ``refine``, ...).
    Returns:
        :class:`~dgeo.ransac.PnPResult` of batch ``B``; its ``inliers`` and the matches are the
        ``N = h * w`` cells in raster order (``inliers.reshape(B, h, w)`` is the inlier map),
        ``num_matches`` counts the cells that took part. Poses are in ``dtype`` on the maps'
        device. Frames without enough usable cells fail (``TOO_FEW_MATCHES``) instead of
        raising.
    Raises:
        ShapeError, InputError: malformed arguments (shapes, a camera whose size does not give
            the map size, option values).
    """
    B, h, w = _check_maps(world, sigma, valid)
    if not isinstance(camera, Camera):
        raise InputError(f"camera must be a dgeo Camera, got {type(camera).__name__}.")
    if camera.shape not in ((), (B,)):
        raise ShapeError(f"camera must have batch shape () or ({B},), got {tuple(camera.shape)}.")
    if stride < 1:
        raise InputError(f"stride must be a positive number of pixels, got {stride}.")
    if max_sigma is not None and not max_sigma > 0:
        raise InputError(f"max_sigma must be positive (metres) or None, got {max_sigma}.")
    sizes = camera.size.reshape(-1, 2).round().to(torch.int64).unique(dim=0)
    for W, H in sizes.tolist():
        if (W // stride, H // stride) != (w, h):
            raise InputError(
                f"a {w}x{h} map (width x height) at stride {stride} needs the camera of a "
                f"{w * stride}x{h * stride} image, got a {W}x{H} camera; pass the camera of the "
                "full image the map was predicted from."
            )
    device = world.device
    N = h * w
    pts3 = world.detach().permute(0, 2, 3, 1).reshape(B, N, 3)
    usable = torch.isfinite(pts3).all(-1)
    if valid is not None:
        usable = usable & valid.to(device).reshape(B, N)
    if sigma is not None:
        s = sigma.detach().reshape(B, N)
        usable = usable & torch.isfinite(s) & (s > 0)
        if max_sigma is not None:
            usable = usable & (s <= max_sigma)
        mask = confident_cells(s, usable, top_fraction, min_cells)
    else:
        mask = confident_cells(torch.zeros(B, N, device=device), usable, top_fraction, min_cells)
    pts3 = torch.where(mask[..., None], pts3, 0.0).to(dtype)
    pts2 = cell_pixels(h, w, stride, device=device, dtype=dtype).reshape(1, N, 2).expand(B, N, 2)
    cam = camera.to(device=device, dtype=dtype)
    return pnp_ransac(pts2, pts3, cam, mask=mask, threshold_px=threshold_px, **ransac)
