"""Batched EPnP (dgeo.pnp.linear): ground truth and OpenCV on general and planar scenes, rays,
distortion, batching, masks, weights, degenerate inputs, float32 and devices."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Camera, Pose
from dgeo.pnp import pnp_linear

F64 = torch.float64
SIZE = torch.tensor([639.0, 479.0], dtype=F64)


def make_problem(B, N, noise=0.0, planar=False, seed=0, dtype=F64):
    """Random PINHOLE cameras (~640x480) and GT poses; N points 2-10 m deep in the image, or on
    the world plane z = 0 seen from 4-8 m at up to ~25 degrees of tilt."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=F64)  # noqa: E731
    randn = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    f = 450 + 150 * rand(B, 2)
    c = torch.tensor([319.5, 239.5], dtype=F64) + 10 * randn(B, 2)
    cam = Camera("PINHOLE", 640, 480, torch.cat([f, c], -1))
    if planar:
        X = torch.cat([3 * (2 * rand(B, N, 2) - 1), torch.zeros(B, N, 1, dtype=F64)], -1)
        tilt = 0.4 * (2 * rand(B, 3) - 1) + torch.tensor([math.pi, 0.0, 0.0], dtype=F64)
        t = torch.tensor([0.0, 0.0, 6.0], dtype=F64) + torch.cat(
            [randn(B, 2), 2 * rand(B, 1) - 1], 1
        )
        gt = Pose.from_axis_angle(tilt, t)
        uv = cam.project(gt.transform(X), check_bounds=False)[0]
    else:
        gt = Pose.from_axis_angle(math.pi * (2 * rand(B, 3) - 1), 3 * randn(B, 3))
        uv = rand(B, N, 2) * SIZE
        X = gt.inv().transform(cam.unproject(uv) * (2 + 8 * rand(B, N, 1)))
    obs = uv + noise * randn(B, N, 2)
    return cam.to(dtype), X.to(dtype), obs.to(dtype), gt


def errors(a: Pose, b: Pose) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation error (degrees) and camera-centre distance (m), each (B,)."""
    a, b = a.double(), b.double()
    return torch.rad2deg((a @ b.inv()).magnitude()[0]), (a.center() - b.center()).norm(dim=-1)


def opencv(cam: Camera, X, obs, flag) -> Pose:
    """cv2.solvePnP per problem (OpenCV and dgeo share the pixel-centre convention)."""
    Rs, ts = [], []
    for b in range(len(X)):
        _, rvec, tvec = cv2.solvePnP(
            X[b].numpy(), obs[b].numpy(), cam.K[b].numpy(), None, flags=flag
        )
        Rs.append(cv2.Rodrigues(rvec)[0])
        ts.append(tvec[:, 0])
    return Pose.from_Rt(torch.from_numpy(np.stack(Rs)), torch.from_numpy(np.stack(ts)))


# ---------------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("planar", [False, True], ids=["general", "planar"])
def test_noise_free_recovers_gt(planar):
    cam, X, obs, gt = make_problem(128, 20, planar=planar, seed=1)
    pose, ok = pnp_linear(obs, X, cam)
    assert bool(ok.all()) and pose.dtype == F64 and tuple(pose.shape) == (128,)
    rot, pos = errors(pose, gt)
    assert float(rot.max()) < 1e-9 and float(pos.max()) < 1e-9


def test_noise_free_matches_opencv_epnp_and_sqpnp():
    cam, X, obs, _ = make_problem(32, 20, seed=2)
    pose, _ = pnp_linear(obs, X, cam)
    for flag in (cv2.SOLVEPNP_EPNP, cv2.SOLVEPNP_SQPNP):
        rot, pos = errors(pose, opencv(cam, X, obs, flag))
        assert float(rot.max()) < 1e-6 and float(pos.max()) < 1e-6


def test_noisy_as_accurate_as_opencv_epnp():
    cam, X, obs, gt = make_problem(128, 50, noise=1.0, seed=3)
    pose, ok = pnp_linear(obs, X, cam)
    assert bool(ok.all())
    rot, pos = errors(pose, gt)
    cv_rot, cv_pos = errors(opencv(cam, X, obs, cv2.SOLVEPNP_EPNP), gt)
    sq_rot, _ = errors(opencv(cam, X, obs, cv2.SOLVEPNP_SQPNP), gt)
    # seen: dgeo 0.070 deg / 8.6 mm, OpenCV EPnP 0.071 / 8.7, SQPnP (optimal) 0.050 / 6.2
    assert float(rot.median()) < 1.2 * float(cv_rot.median())
    assert float(pos.median()) < 1.2 * float(cv_pos.median())
    assert float(rot.median()) < 2 * float(sq_rot.median())
    assert float(rot.max()) < 1.0 and float(pos.max()) < 0.1  # no breakdowns


def test_planar_noisy_close_to_sqpnp_where_opencv_epnp_fails():
    cam, X, obs, gt = make_problem(64, 50, noise=1.0, planar=True, seed=4)
    pose, ok = pnp_linear(obs, X, cam)
    assert bool(ok.all())
    rot, pos = errors(pose, gt)
    sq_rot, _ = errors(opencv(cam, X, obs, cv2.SOLVEPNP_SQPNP), gt)
    ep_rot, _ = errors(opencv(cam, X, obs, cv2.SOLVEPNP_EPNP), gt)
    assert float(rot.median()) < 1.5 * float(sq_rot.median())  # seen 0.173 vs 0.157 deg
    assert float(rot.max()) < 1.0 and float(pos.max()) < 0.15  # seen 0.57 deg, 7 cm
    assert float(ep_rot.median()) > 10 * float(rot.median())  # OpenCV's EPnP: ~30 deg


def test_near_planar_slab_and_few_points():
    cam, X, obs, gt = make_problem(64, 30, planar=True, seed=5)
    g = torch.Generator().manual_seed(0)
    X = X.clone()
    X[..., 2] = 1e-4 * torch.randn(64, 30, generator=g, dtype=F64)  # a 0.1 mm thick slab
    obs = cam.project(gt.transform(X), check_bounds=False)[0]
    rot, pos = errors(pnp_linear(obs, X, cam)[0], gt)
    assert float(rot.max()) < 1e-7 and float(pos.max()) < 1e-7
    for planar in (False, True):  # 5 points suffice noise-free; 4 only for planar scenes
        cam, X, obs, gt = make_problem(64, 5, planar=planar, seed=6)
        pose, ok = pnp_linear(obs, X, cam, min_points=5)
        rot, _ = errors(pose, gt)
        assert bool(ok.all()) and float(rot.max()) < 1e-6
        assert not bool(pnp_linear(obs, X, cam)[1].any())  # default min_points = 6


# ---------------------------------------------------------------------------------- inputs
def test_rays_in_every_direction():
    """Bearing vectors need not be in front of a pinhole: a full-sphere camera."""
    g = torch.Generator().manual_seed(7)
    B, N = 32, 40
    gt = Pose.from_axis_angle(
        torch.randn(B, 3, generator=g, dtype=F64), torch.randn(B, 3, generator=g, dtype=F64)
    )
    dirs = torch.nn.functional.normalize(torch.randn(B, N, 3, generator=g, dtype=F64), dim=-1)
    p_cam = dirs * (1 + 5 * torch.rand(B, N, 1, generator=g, dtype=F64))
    assert float((p_cam[..., 2] < 0).float().mean()) > 0.3
    X = gt.inv().transform(p_cam)
    rays = dirs * (0.5 + torch.rand(B, N, 1, generator=g, dtype=F64))  # any length
    pose, ok = pnp_linear(rays, X)
    rot, pos = errors(pose, gt)
    assert bool(ok.all()) and float(rot.max()) < 1e-9 and float(pos.max()) < 1e-9


def test_pixels_with_camera_equal_rays_and_distortion_is_undone():
    cam, X, obs, gt = make_problem(16, 30, noise=0.5, seed=8)
    a, _ = pnp_linear(obs, X, cam)
    b, _ = pnp_linear(cam.unproject(obs), X)
    assert torch.allclose(a.data, b.data, atol=1e-12)
    params = torch.cat(
        [cam.params, torch.tensor([-0.2, 0.05, 1e-3, -1e-3], dtype=F64).expand(16, 4)], -1
    )
    dist = Camera("OPENCV", 640, 480, params)
    obs_d = dist.project(gt.transform(X), check_bounds=False)[0]
    pose, ok = pnp_linear(obs_d, X, dist)
    rot, pos = errors(pose, gt)
    assert bool(ok.all()) and float(rot.max()) < 1e-8 and float(pos.max()) < 1e-8
    single = Camera("OPENCV", 640, 480, params[0])  # one camera for the whole batch
    pose, ok = pnp_linear(obs_d[:1].expand(3, -1, -1), X[:1].expand(3, -1, -1), single)
    assert bool(ok.all()) and float(errors(pose, gt[:1])[0].max()) < 1e-8


def test_batched_equals_one_by_one_and_masks_equal_unpadded():
    cams, Xs, obss = [], [], []
    for i, n in enumerate([6, 9, 30, 17, 50, 12]):
        cam, X, obs, _ = make_problem(1, n, noise=1.0, planar=i % 2 == 1, seed=10 + i)
        cams.append(cam), Xs.append(X[0]), obss.append(obs[0])
    N = 50
    X = torch.full((6, N, 3), torch.nan, dtype=F64)  # padding holds garbage, even NaN
    obs = torch.full((6, N, 2), 1e9, dtype=F64)
    mask = torch.zeros(6, N, dtype=torch.bool)
    for b, (x, o) in enumerate(zip(Xs, obss, strict=True)):
        X[b, : len(x)], obs[b, : len(o)], mask[b, : len(x)] = x, o, True
    obs[0, 20] = torch.nan  # a masked NaN observation too
    cam = Camera.cat(cams)
    pose, ok = pnp_linear(obs, X, cam, mask=mask)
    assert bool(ok.all())
    for b in range(6):
        single, ok_b = pnp_linear(obss[b][None], Xs[b][None], cams[b])
        assert bool(ok_b.all())
        assert torch.allclose(pose.data[b], single.data[0], atol=1e-9)
    # the same problems one by one inside one batch give the same as alone
    p1, _ = pnp_linear(obs[2:3], X[2:3], cam[2:3], mask=mask[2:3])
    assert torch.allclose(p1.data[0], pose.data[2], atol=1e-12)


def test_weights_zero_is_masked_and_integer_weight_is_duplication():
    cam, X, obs, _ = make_problem(8, 30, noise=1.0, seed=20)
    w = torch.ones(8, 30, dtype=F64)
    w[:, :5] = 0
    a, _ = pnp_linear(obs, X, cam, weights=w)
    mask = w > 0
    b, _ = pnp_linear(obs, X, cam, mask=mask)
    assert torch.allclose(a.data, b.data, atol=1e-10)
    c, _ = pnp_linear(obs, X, cam, weights=3.5 * w)  # uniform scaling changes nothing
    assert torch.allclose(a.data, c.data, atol=1e-10)
    w2 = torch.ones(8, 30, dtype=F64)
    w2[:, 7] = 2
    d, _ = pnp_linear(obs, X, cam, weights=w2)
    dup = [torch.cat([t, t[:, 7:8]], 1) for t in (obs, X)]
    e, _ = pnp_linear(dup[0], dup[1], cam)
    assert torch.allclose(d.data, e.data, atol=1e-10)


def test_float32_in_float32_out():
    cam, X, obs, gt = make_problem(64, 30, seed=21, dtype=torch.float32)
    pose, ok = pnp_linear(obs, X, cam)
    assert pose.dtype == torch.float32 and bool(ok.all())
    rot, pos = errors(pose, gt)
    assert float(rot.max()) < 1e-3 and float(pos.max()) < 1e-3


# ---------------------------------------------------------------------------------- failures
def test_degenerate_problems_fail_alone_without_nan_or_exception():
    cam, X, obs, gt = make_problem(6, 20, seed=30)
    X, obs = X.clone(), obs.clone()
    mask = torch.ones(6, 20, dtype=torch.bool)
    mask[0, 5:] = False  # 5 valid points < 6
    mask[1] = False  # nothing valid
    line = torch.linspace(-1, 1, 20, dtype=F64)[:, None] * torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    X[2] = line + torch.tensor([0.0, 0.0, 5.0], dtype=F64)  # collinear
    X[3] = 1.0  # all the same point
    obs[4, 3:] = torch.nan  # NaN observations count as invalid: 3 left
    X[5, :2] = torch.inf  # two non-finite points: 18 left, still solvable
    pose, ok = pnp_linear(obs, X, cam, mask=mask)
    assert ok.tolist() == [False, False, False, False, False, True]
    assert bool(torch.isfinite(pose.data).all())
    assert torch.equal(pose.data[:5], Pose.identity((5,), dtype=F64).data)
    assert float(errors(pose[5:], gt[5:])[0].max()) < 1e-9


def test_bad_arguments_raise():
    cam, X, obs, _ = make_problem(2, 10, seed=31)
    with pytest.raises(ShapeError):
        pnp_linear(obs, X[:, :9], cam)
    with pytest.raises(ShapeError):
        pnp_linear(obs, X)  # pixels without a camera
    with pytest.raises(ShapeError):
        pnp_linear(obs, X, cam, mask=torch.ones(2, 10))  # not bool
    with pytest.raises(InputError):
        pnp_linear(obs, X, cam, weights=-torch.ones(2, 10, dtype=F64))
    with pytest.raises(InputError):
        pnp_linear(obs, X, cam, min_points=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cam, X, obs, _ = make_problem(32, 30, noise=1.0, seed=40)
    mask = torch.rand(32, 30, generator=torch.Generator().manual_seed(0)) < 0.8
    a, ok_a = pnp_linear(obs, X, cam, mask=mask)
    b, ok_b = pnp_linear(obs.cuda(), X.cuda(), cam.to("cuda"), mask=mask.cuda())
    assert b.device.type == "cuda" and torch.equal(ok_a, ok_b.cpu())
    assert torch.allclose(a.data, b.data.cpu(), atol=1e-8)
