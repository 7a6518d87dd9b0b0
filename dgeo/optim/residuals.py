"""Ready-made residual functions for :func:`dgeo.optim.minimize`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dgeo.errors import ShapeError, require_finite, require_shape
from dgeo.geometry import Camera, Pose


def chain_pose_jacobian(J_point: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Chain Jacobians w.r.t. a transformed point with ``d p / d (dt, dw) = [I | -[p]x]``.

    ``J_point @ [I | -[p]x]`` without tiny batched matmuls: since ``-a^T [p]x = (p x a)^T``, a
    row ``a`` maps to ``[a | p x a]`` (the tangent of :meth:`Pose.retract`, translation first).

    Args:
        J_point: ``(..., K, 3)`` Jacobians of ``K`` outputs w.r.t. the camera-frame point.
        p: ``(..., 3)`` the camera-frame point ``R X + t``.
    Returns:
        ``(..., K, 6)`` Jacobians w.r.t. ``(dt, dw)``.
    """
    J_rot = torch.linalg.cross(p[..., None, :].expand_as(J_point), J_point, dim=-1)
    return torch.cat([J_point, J_rot], -1)


@dataclass(frozen=True)
class ReprojectionResidual:
    """Reprojection error of known 3D points for absolute pose: ``fn`` for :func:`minimize`.

    ``r_i = project(R X_i + t) - uv_i`` with the analytic Jacobian
    ``J_i = d project / d p (2x3) @ [I | -[p]x] (3x6)`` in :meth:`Pose.retract`'s tangent order.

    Attributes:
        points3D: ``(B, N, 3)`` world points; pad with any finite values and pass a ``mask``
            to :func:`minimize`.
        points2D: ``(B, N, 2)`` observed pixels (dgeo convention, top-left pixel centre at 0).
        camera: a :class:`Camera` of batch shape ``(B,)`` or ``()``.
        check_bounds: whether a projection outside the image makes a residual invalid (by
            default only points behind the camera or outside the distortion domain are).
    """

    points3D: torch.Tensor
    points2D: torch.Tensor
    camera: Camera
    check_bounds: bool = False

    def __post_init__(self):
        require_shape(self.points3D, "points3D", last=[None, 3], min_dim=3)
        require_shape(self.points2D, "points2D", last=[None, 2], min_dim=3)
        if self.points3D.dim() != 3 or self.points3D.shape[:2] != self.points2D.shape[:2]:
            raise ShapeError(
                f"points3D (B, N, 3) and points2D (B, N, 2) must agree, got "
                f"{tuple(self.points3D.shape)} and {tuple(self.points2D.shape)}."
            )
        if self.camera.shape not in ((), self.points3D.shape[:1]):
            raise ShapeError(
                f"camera batch shape must be () or ({self.points3D.shape[0]},), "
                f"got {tuple(self.camera.shape)}."
            )
        require_finite(self.points3D, "points3D")
        require_finite(self.points2D, "points2D")

    def __call__(self, pose: Pose) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residuals ``(B, N, 2)``, Jacobians ``(B, N, 2, 6)``, validity ``(B, N)`` at ``pose``."""
        p = pose.transform(self.points3D)
        uv, valid, J_proj = self.camera.project(
            p, return_jacobian=True, check_bounds=self.check_bounds
        )
        return uv - self.points2D, chain_pose_jacobian(J_proj, p), valid
