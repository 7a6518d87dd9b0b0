"""Validation of the 2D-3D correspondences that the RANSAC variants take."""

from __future__ import annotations

import torch

from dgeo.errors import (
    InputError,
    ShapeError,
    require_finite,
    require_floating,
    require_mask,
    require_shape,
)
from dgeo.geometry import Camera


def check_correspondences(
    points2D: torch.Tensor,
    points3D: torch.Tensor,
    camera: Camera,
    mask: torch.Tensor | None,
    finite: bool = False,
) -> tuple[int, int]:
    """Raise a dgeo error on malformed correspondences, camera or mask; return ``(B, N)``.

    Args:
        points2D: ``(B, N, 2)`` floating pixels.
        points3D: ``(B, N, 3)`` world points, same dtype and device.
        camera: :class:`Camera` of batch shape ``()`` or ``(B,)``.
        mask: ``(B, N)`` bool on the points' device, or None.
        finite: also require every coordinate to be finite (else non-finite rows are the
            caller's to handle per query).
    """
    require_shape(points2D, "points2D", last=[None, 2], min_dim=3)
    require_shape(points3D, "points3D", last=[None, 3], min_dim=3)
    if points2D.dim() != 3 or points3D.dim() != 3 or points2D.shape[:2] != points3D.shape[:2]:
        raise ShapeError(
            f"points2D (B, N, 2) and points3D (B, N, 3) must agree, got "
            f"{tuple(points2D.shape)} and {tuple(points3D.shape)}."
        )
    require_floating(points2D, "points2D")
    require_floating(points3D, "points3D")
    if points2D.dtype != points3D.dtype or points2D.device != points3D.device:
        raise InputError(
            f"points2D and points3D must share dtype and device, got {points2D.dtype} on "
            f"{points2D.device} and {points3D.dtype} on {points3D.device}."
        )
    if finite:
        require_finite(points2D, "points2D")
        require_finite(points3D, "points3D")
    B, N = points2D.shape[:2]
    if not isinstance(camera, Camera):
        raise InputError(f"camera must be a dgeo Camera, got {type(camera).__name__}.")
    if camera.shape not in ((), (B,)):
        raise ShapeError(f"camera batch shape must be () or ({B},), got {tuple(camera.shape)}.")
    require_mask(mask, "mask", (B, N))
    if mask is not None:
        if mask.device != points2D.device:
            raise InputError(f"mask is on {mask.device}, the points on {points2D.device}.")
    return B, N
