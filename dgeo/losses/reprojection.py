"""PixLoc's pose loss (ALGORITHMS.md 2.6): robust reprojection error of estimated vs true poses.

The 3D points are projected with the estimated and the true pose at full resolution, and each
point's squared pixel offset ``s = ||p_est - p_gt||^2`` costs Barron's loss with ``alpha = 1``,
``c = 2`` (:class:`dgeo.optim.kernels.Barron`, ``rho(s) = 2 c^2 (sqrt(1 + s / c^2) - 1)``)
divided by 4::

    err(s) = rho(s) / 4 = 2 (sqrt(1 + s / 4) - 1) = sqrt(4 + s) - 2

which is ``s / 4`` near zero and ``||dp|| - 2`` far away (a pseudo-Huber error in pixels; PixLoc's
``scaled_barron(1, 2)(s) / 4``). A problem's error is the masked mean over its points, clamped at
``clamp = 50``. The unrolled loss weighs every optimiser level by ``1 / levels`` and counts a
finer level only if the previous one succeeded (error below ``3 px x`` that level's stride);
problems with fewer than 10 valid points cost 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dgeo.errors import InputError, require_floating
from dgeo.geometry.camera import Camera
from dgeo.geometry.pose import Pose
from dgeo.losses._common import check_mask, require_dims, to_floats
from dgeo.optim.kernels import Barron

#: PixLoc's kernel of the reprojection loss
REPROJECTION_KERNEL = Barron(scale=2.0, alpha=1.0)


def _project(
    p_cam: torch.Tensor, camera: Camera | torch.Tensor, min_depth: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``(B, N, 2)`` and validity ``(B, N)`` of camera-frame points."""
    if isinstance(camera, Camera):
        return camera.project(p_cam, check_bounds=True, min_depth=min_depth)
    K = camera.to(p_cam)
    z = p_cam[..., 2]
    valid = z > min_depth
    xy = p_cam[..., :2] / torch.where(valid, z, torch.ones_like(z))[..., None]
    uv = xy @ K[..., :2, :2].transpose(-1, -2) + K[..., None, :2, 2]
    return uv, valid


def _check(
    points: torch.Tensor,
    camera: Camera | torch.Tensor,
    poses: Sequence[tuple[Pose, str]],
    mask: torch.Tensor | None,
) -> torch.Tensor:
    require_dims(points, "points", (None, None, 3), "(B, N, 3)")
    require_floating(points, "points")
    b, n, _ = points.shape
    if isinstance(camera, torch.Tensor):
        if camera.shape not in ((3, 3), (b, 3, 3)):
            raise InputError(
                f"camera as intrinsics K must have shape (3, 3) or (B, 3, 3) = ({b}, 3, 3), got "
                f"{tuple(camera.shape)}."
            )
    elif isinstance(camera, Camera):
        if camera.shape not in ((), (b,)):
            raise InputError(
                f"camera must have batch shape () or (B,) = ({b},), got {tuple(camera.shape)}."
            )
    else:
        raise InputError(
            f"camera must be a dgeo Camera or a K tensor, got {type(camera).__name__}."
        )
    for pose, name in poses:
        if not isinstance(pose, Pose):
            raise InputError(f"{name} must be a dgeo Pose, got {type(pose).__name__}.")
        if tuple(pose.shape) != (b,):
            raise InputError(
                f"{name} must have batch shape (B,) = ({b},), got {tuple(pose.shape)}."
            )
    return check_mask(mask, "mask", (b, n), points.device)


def _errors(
    points: torch.Tensor,
    camera: Camera | torch.Tensor,
    pose: Pose,
    uv_gt: torch.Tensor,
    mask: torch.Tensor,
    clamp: float | None,
) -> torch.Tensor:
    """Per-problem clamped mean robust error ``(B,)``."""
    uv, _ = _project(pose.transform(points), camera)
    s = (uv - uv_gt).square().sum(-1)
    s = torch.where(mask, s, torch.zeros_like(s))
    rho = REPROJECTION_KERNEL(s)[0] / 4
    err = rho.sum(-1) / mask.sum(-1).clamp(min=1).to(rho.dtype)
    return err if clamp is None else err.clamp(max=clamp)


def _gt_projection(
    points: torch.Tensor, camera: Camera | torch.Tensor, pose_gt: Pose, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points with masked (or non-finite) rows zeroed, their true projections (detached) and the
    mask of points in front of the camera (and inside its image for a :class:`Camera`)."""
    mask = mask & torch.isfinite(points).all(-1)
    points = torch.where(mask[..., None], points, torch.zeros_like(points))
    uv_gt, valid = _project(pose_gt.transform(points), camera)
    return points, uv_gt.detach(), mask & valid


def reprojection_error(
    points: torch.Tensor,
    camera: Camera | torch.Tensor,
    pose_est: Pose,
    pose_gt: Pose,
    mask: torch.Tensor | None = None,
    *,
    clamp: float | None = 50.0,
) -> torch.Tensor:
    """PixLoc's robust reprojection error of estimated poses.

    Args:
        points: ``(B, N, 3)`` 3D points in the frame the poses map from (world, or camera a
            for relative poses ``b_from_a``).
        camera: the target camera: a :class:`~dgeo.geometry.Camera` of batch shape ``()`` or
            ``(B,)`` (points must project inside its image under ``pose_gt``), or pinhole
            intrinsics ``K`` ``(3, 3)`` / ``(B, 3, 3)`` (points must be in front only).
        pose_est: ``(B,)`` estimated poses (differentiable).
        pose_gt: ``(B,)`` true poses.
        mask: ``(B, N)`` bool, true for real points (``None``: all).
        clamp: upper bound of the per-problem error (``None``: no clamp).
    Returns:
        ``(B,)`` the masked mean over points of ``Barron(alpha=1, c=2)(||dp||^2) / 4`` =
        ``sqrt(4 + ||dp||^2) - 2`` pixels, clamped; 0 for problems without valid points.
    """
    mask = _check(points, camera, ((pose_est, "pose_est"), (pose_gt, "pose_gt")), mask)
    points, uv_gt, mask = _gt_projection(points, camera, pose_gt, mask)
    return _errors(points, camera, pose_est, uv_gt, mask, clamp)


def reprojection_loss(
    points: torch.Tensor,
    camera: Camera | torch.Tensor,
    pose_est: Pose,
    pose_gt: Pose,
    mask: torch.Tensor | None = None,
    *,
    clamp: float | None = 50.0,
    min_points: int = 10,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One-level pose loss: the batch mean of :func:`reprojection_error`, 0 for problems with
    fewer than ``min_points`` valid points.

    Arguments as :func:`reprojection_error`. Returns the scalar loss and stats
    ``{"loss", "reprojection_error", "too_few"}`` (Python floats; ``too_few`` is the fraction of
    problems with too few points).
    """
    loss, stats = unrolled_pose_loss(
        points, camera, [pose_est], pose_gt, mask, [1.0], clamp=clamp, min_points=min_points
    )
    return loss, {k: stats[k] for k in ("loss", "reprojection_error", "too_few")}


def unrolled_pose_loss(
    points: torch.Tensor,
    camera: Camera | torch.Tensor,
    poses_per_level: Sequence[Pose],
    pose_gt: Pose,
    mask: torch.Tensor | None,
    strides: Sequence[float],
    *,
    success_thresh: float = 3.0,
    clamp: float | None = 50.0,
    min_points: int = 10,
    pose_init: Pose | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PixLoc's unrolled training loss over the poses an optimiser reached on each level.

    For levels ``i = 0 .. L-1`` in the order the optimiser ran them (coarse to fine)::

        loss_b = [min_points valid] * sum_i g_i * err_i / L,  g_0 = 1,
        g_i = [err_{i-1} < success_thresh * strides[i-1]]  (the previous level succeeded)

    with ``err_i`` the clamped :func:`reprojection_error` of ``poses_per_level[i]``, as PixLoc's
    ``TwoViewRefiner.loss`` (the gate looks at the previous level only). The loss is the mean of
    ``loss_b`` over the batch.

    Args:
        points, camera, pose_gt, mask: as :func:`reprojection_error`.
        poses_per_level: ``L`` estimated poses ``(B,)``, coarse to fine.
        strides: the ``L`` strides of those levels (e.g. ``[16, 4, 1]``).
        success_thresh: success threshold in pixels per unit stride.
        clamp: upper bound of each level's error.
        min_points: problems with fewer valid points (under ``pose_gt``) cost 0.
        pose_init: optional ``(B,)`` starting poses, reported as ``reprojection_error/init``.
    Returns:
        the scalar loss and stats (Python floats, batch means): ``loss``,
        ``reprojection_error/{i}``, ``success/{i}`` (fraction below the threshold),
        ``reprojection_error`` (last level), ``too_few`` (fraction of problems below
        ``min_points``) and, with ``pose_init``, ``reprojection_error/init``.
    """
    poses = list(poses_per_level)
    strides = [float(s) for s in strides]
    if not poses:
        raise InputError("poses_per_level must hold at least one Pose.")
    if len(strides) != len(poses):
        raise InputError(f"strides has {len(strides)} entries for {len(poses)} levels of poses.")
    named = [(p, f"poses_per_level[{i}]") for i, p in enumerate(poses)] + [(pose_gt, "pose_gt")]
    if pose_init is not None:
        named.append((pose_init, "pose_init"))
    mask = _check(points, camera, named, mask)
    points, uv_gt, mask = _gt_projection(points, camera, pose_gt, mask)
    enough = mask.sum(-1) >= min_points
    num_levels = len(poses)
    total = None
    success = None
    stats: dict[str, torch.Tensor] = {}
    for i, (pose, stride) in enumerate(zip(poses, strides, strict=True)):
        err = _errors(points, camera, pose, uv_gt, mask, clamp)
        loss_i = err / num_levels
        if success is not None:
            loss_i = loss_i * success.to(err.dtype)
        success = err.detach() < success_thresh * stride
        total = loss_i if total is None else total + loss_i
        stats[f"reprojection_error/{i}"] = err.detach().mean()
        stats[f"success/{i}"] = success.to(err.dtype).mean()
    total = torch.where(enough, total, torch.zeros_like(total))
    loss = total.mean()
    stats["reprojection_error"] = stats[f"reprojection_error/{num_levels - 1}"]
    stats["too_few"] = (~enough).to(loss.dtype).mean()
    if pose_init is not None:
        stats["reprojection_error/init"] = (
            _errors(points, camera, pose_init, uv_gt, mask, clamp).detach().mean()
        )
    return loss, to_floats({"loss": loss.detach(), **stats})
