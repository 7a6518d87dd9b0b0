"""PixLoc's reprojection pose loss: Barron(1, 2) / 4, clamping, level gating, too few points."""

import math

import pytest
import torch

from dgeo.errors import InputError
from dgeo.geometry import Camera, Pose
from dgeo.losses import (
    REPROJECTION_KERNEL,
    reprojection_error,
    reprojection_loss,
    unrolled_pose_loss,
)

F, W, H = 100.0, 200, 160


def _problem(b=2, n=30, dtype=torch.float64):
    """Points 10 m in front of identity cameras, projecting inside a 200 x 160 image."""
    g = torch.Generator().manual_seed(0)
    xy = (torch.rand(b, n, 2, generator=g, dtype=dtype) - 0.5) * torch.tensor([8.0, 6.0])
    points = torch.cat([xy, torch.full((b, n, 1), 10.0, dtype=dtype)], -1)
    K = torch.tensor([[F, 0, W / 2 - 0.5], [0, F, H / 2 - 0.5], [0, 0, 1]], dtype=dtype)
    camera = Camera.from_K(K, W, H)
    return points, camera, K, Pose.identity((b,), dtype=dtype)


def _shifted(dx_px: float, b=2, dtype=torch.float64) -> Pose:
    """A pose whose projections of points at depth 10 move by dx_px pixels along x."""
    t = torch.zeros(b, 3, dtype=dtype)
    t[:, 0] = dx_px * 10.0 / F
    return Pose.from_Rt(torch.eye(3, dtype=dtype).expand(b, 3, 3), t)


def _err(s: float) -> float:
    """Barron(alpha=1, c=2)(s) / 4 by hand: 2 c^2 (sqrt(1 + s / c^2) - 1) / 4 = sqrt(4 + s) - 2."""
    return math.sqrt(4 + s) - 2


def test_kernel_is_pixloc_scaled_barron():
    s = torch.tensor([0.0, 1e-4, 1.0, 9.0, 25.0, 1e4], dtype=torch.float64)
    rho = REPROJECTION_KERNEL(s)[0] / 4
    torch.testing.assert_close(rho, torch.sqrt(4 + s) - 2)
    torch.testing.assert_close(rho, 2 * 2**2 * (torch.sqrt(1 + s / 2**2) - 1) / 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_at_gt_and_hand_computed_offset(dtype):
    points, camera, K, gt = _problem(dtype=dtype)
    assert reprojection_error(points, camera, gt, gt).abs().max() == 0
    pose = _shifted(3.0, dtype=dtype)  # every point moves 3 px: s = 9
    err = reprojection_error(points, camera, pose, gt)
    assert err.shape == (2,) and err.dtype == dtype
    torch.testing.assert_close(err, torch.full((2,), _err(9.0), dtype=dtype))
    # K instead of a Camera gives the same (no image bounds needed here)
    torch.testing.assert_close(reprojection_error(points, K, pose, gt), err)
    torch.testing.assert_close(reprojection_error(points, K.expand(2, 3, 3), pose, gt), err)
    # clamped at 50 (and unclamped on request)
    far = _shifted(200.0, dtype=dtype)
    assert (reprojection_error(points, camera, far, gt) == 50).all()
    raw = reprojection_error(points, camera, far, gt, clamp=None)
    torch.testing.assert_close(raw, torch.full((2,), _err(200.0**2), dtype=dtype))


def test_mask_and_out_of_image_points():
    points, camera, _, gt = _problem()
    pose = _shifted(3.0)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, :10] = False
    p2 = points.clone()
    p2[0, :10] = float("nan")  # masked rows may hold anything
    p2[1, 0] = torch.tensor([100.0, 0.0, 10.0], dtype=torch.float64)  # outside the image
    p2[1, 1] = torch.tensor([0.0, 0.0, -5.0], dtype=torch.float64)  # behind the camera
    err = reprojection_error(p2, camera, pose, gt, mask)
    torch.testing.assert_close(err, torch.full((2,), _err(9.0), dtype=torch.float64))


def test_unrolled_gating_weights_and_too_few_points():
    points, camera, _, gt = _problem()
    strides = [16, 4, 1]
    e = lambda px: _err(px * px)  # noqa: E731
    # all levels succeed (errors below 48, 12, 3 px): loss = mean over levels
    poses = [_shifted(10.0), _shifted(5.0), _shifted(1.0)]
    loss, stats = unrolled_pose_loss(points, camera, poses, gt, None, strides)
    assert loss.item() == pytest.approx((e(10) + e(5) + e(1)) / 3)
    assert stats["reprojection_error/1"] == pytest.approx(e(5))
    assert stats["reprojection_error"] == pytest.approx(e(1))
    assert stats["success/0"] == 1 and stats["too_few"] == 0
    # level 1 fails (err >= 12 px): level 2 does not count, level 1 still does
    poses = [_shifted(10.0), _shifted(20.0), _shifted(1.0)]
    loss, stats = unrolled_pose_loss(points, camera, poses, gt, None, strides)
    assert loss.item() == pytest.approx((e(10) + e(20)) / 3) and stats["success/1"] == 0
    # the gate looks at the previous level only (PixLoc): a failed coarse level mutes level 1,
    # and level 2 counts again when level 1 succeeded
    poses = [_shifted(60.0), _shifted(5.0), _shifted(1.0)]
    loss, _ = unrolled_pose_loss(points, camera, poses, gt, None, strides)
    assert loss.item() == pytest.approx((min(e(60), 50) + e(1)) / 3)
    # gating per batch element; fewer than 10 valid points -> 0 for that element
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 9:] = False
    poses = [_shifted(10.0), _shifted(5.0), _shifted(1.0)]
    loss, stats = unrolled_pose_loss(points, camera, poses, gt, mask, strides)
    assert loss.item() == pytest.approx((e(10) + e(5) + e(1)) / 3 / 2)
    assert stats["too_few"] == 0.5
    # the single-level loss
    loss1, stats1 = reprojection_loss(points, camera, _shifted(3.0), gt, mask)
    assert loss1.item() == pytest.approx(_err(9.0) / 2) and set(stats1) == {
        "loss",
        "reprojection_error",
        "too_few",
    }


def test_gradients_flow_to_the_estimated_pose():
    points, camera, _, gt = _problem()
    xi = torch.tensor([[0.1, -0.05, 0.02, 0.01, 0.0, -0.01]] * 2, dtype=torch.float64)
    xi.requires_grad_()
    poses = [gt.retract(xi), gt.retract(xi / 2)]
    loss, stats = unrolled_pose_loss(points, camera, poses, gt, None, [4, 1], pose_init=gt)
    loss.backward()
    assert torch.isfinite(xi.grad).all() and xi.grad.abs().sum() > 0
    assert stats["reprojection_error/init"] == 0
    # gradcheck of the per-problem error w.r.t. the pose update
    assert torch.autograd.gradcheck(
        lambda x: reprojection_error(points, camera, gt.retract(x), gt), (xi,)
    )


def test_input_errors():
    points, camera, _, gt = _problem()
    with pytest.raises(InputError, match=r"points must have shape \(B, N, 3\)"):
        reprojection_error(points[0], camera, gt, gt)
    with pytest.raises(InputError, match="pose_est"):
        reprojection_error(points, camera, gt[:1], gt)
    with pytest.raises(InputError, match="K"):
        reprojection_error(points, torch.eye(4, dtype=torch.float64), gt, gt)
    with pytest.raises(InputError, match="strides"):
        unrolled_pose_loss(points, camera, [gt, gt], gt, None, [1])
    with pytest.raises(InputError, match="mask"):
        reprojection_error(points, camera, gt, gt, torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    points, camera, _, gt = _problem()
    pose = _shifted(3.0)
    err = reprojection_error(points.cuda(), camera.to("cuda"), pose.to("cuda"), gt.to("cuda"))
    assert err.device.type == "cuda"
    torch.testing.assert_close(err.cpu(), torch.full((2,), _err(9.0), dtype=torch.float64))
