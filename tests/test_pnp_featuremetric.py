"""Feature-metric and photometric pose refinement (dgeo.pnp.featuremetric): the analytic
Jacobian, the sampling it rests on, convergence on rendered views with depth-consistent features,
batching, gradients of the unrolled solver, failures and bad calls."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from dgeo.data.synthetic.scenes import make_scene
from dgeo.data.synthetic.trajectories import random_viewpoints
from dgeo.data.synthetic.views import render_views
from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Camera, FeaturePyramid, Pose
from dgeo.optim import LMOptions
from dgeo.pnp import (
    FeatureMetricReason,
    FeatureMetricResidual,
    refine_featuremetric,
    refine_photometric,
    tangent_difference,
)

F64 = torch.float64
CAM = Camera("PINHOLE", 128, 96, [100.0, 100.0, 63.5, 47.5]).double()
DIST_CAM = Camera("OPENCV", 48, 40, [50.0, 52.0, 23.5, 19.5, -0.1, 0.02, 0.001, -0.002]).double()


def pose_errors(a: Pose, b: Pose) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation error (radians) and camera-centre distance (m), each (B,)."""
    return (a @ b.inv()).magnitude()[0], (a.center() - b.center()).norm(dim=-1)


def perturb(pose: Pose, angle: float, shift: torch.Tensor | float, seed: int) -> Pose:
    """``pose`` rotated by ``angle`` radians about random axes and moved by ``shift`` metres."""
    g = torch.Generator().manual_seed(seed)
    B = pose.shape[0]
    axes = F.normalize(torch.randn(B, 3, generator=g, dtype=F64), dim=-1)
    dirs = F.normalize(torch.randn(B, 3, generator=g, dtype=F64), dim=-1)
    shift = torch.as_tensor(shift, dtype=F64).reshape(-1, 1)
    return pose.retract(torch.cat([dirs * shift, axes * angle], -1))


def points_in_view(camera: Camera, pose: Pose, n: int, margin: float, seed: int) -> torch.Tensor:
    """``(B, n, 3)`` world points seen by ``camera`` at ``pose`` at least ``margin`` px inside."""
    g = torch.Generator().manual_seed(seed)
    B = pose.shape[0]
    size = camera.size.to(F64)
    uv = margin + torch.rand(B, n, 2, generator=g, dtype=F64) * (size - 1 - 2 * margin)
    depth = 2 + 2 * torch.rand(B, n, 1, generator=g, dtype=F64)
    p_cam = camera.unproject(uv) * depth
    return pose.inv().transform(p_cam)


def jacobian_pair(fn: FeatureMetricResidual, pose: Pose, residual=None):
    """Analytic and autograd Jacobians ``(B, N, C, 6)`` of ``fn`` (or of ``residual``, a
    function of the pose) w.r.t. ``Pose.retract``'s tangent at 0, and the validity."""
    _, J, valid = fn(pose)
    residual = residual or (lambda p: fn(p)[0])
    B = pose.shape[0]
    delta = torch.zeros(B, 6, dtype=F64)
    full = torch.autograd.functional.jacobian(lambda d: residual(pose.retract(d)), delta)
    idx = torch.arange(B)
    return J, full[idx, :, :, idx], valid  # the diagonal over the batch: (B, N, C, 6)


# ---------------------------------------------------------------------------- fixtures


@dataclass
class World:
    """Rendered query views with depth-consistent Fourier features of world coordinates."""

    gt: Pose
    init: Pose
    depth: torch.Tensor  # (B,) median scene depth
    rgb: torch.Tensor
    pyramid: FeaturePyramid
    points: torch.Tensor  # (B, N, 3)
    ref: torch.Tensor  # (B, N, C) = phi(points)
    pixels: torch.Tensor  # (B, N) flat pixel index of every point in the query render


def fourier_features(C: int, seed: int):
    """``phi(X) = sin(W X + b)``, ``C`` channels at 0.3-1.5 cycles per metre."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.3 + 1.2 * torch.rand(C, 1, generator=g, dtype=F64)
    W = 2 * math.pi * freq * F.normalize(torch.randn(C, 3, generator=g, dtype=F64), dim=-1)
    b = 2 * math.pi * torch.rand(C, generator=g, dtype=F64)
    return lambda X: torch.sin(X @ W.T + b)


@pytest.fixture(scope="module")
def world() -> World:
    scene = make_scene("room", seed=0, texture_size=64)
    B, N, C = 4, 200, 16
    gt = random_viewpoints(scene, B, seed=1).double()
    views = render_views(scene, CAM, gt)
    assert views.valid.all()
    phi = fourier_features(C, seed=0)
    X = views.points.to(F64).permute(0, 2, 3, 1)  # (B, H, W, 3)
    fine = phi(X).permute(0, 3, 1, 2).contiguous()  # F(pixel) = phi(X_world(pixel))
    pyramid = FeaturePyramid.from_maps([fine, F.avg_pool2d(fine, 4)], (96, 128))
    g = torch.Generator().manual_seed(0)
    pixels = torch.stack([torch.randperm(96 * 128, generator=g)[:N] for _ in range(B)])
    points = X.reshape(B, -1, 3).gather(1, pixels[..., None].expand(-1, -1, 3))
    depth = views.depth.reshape(B, -1).median(-1).values.to(F64)
    init = perturb(gt, math.radians(5), 0.05 * depth, seed=3)
    return World(gt, init, depth, views.rgb, pyramid, points, phi(points), pixels)


# ---------------------------------------------------------------------------- 1. Jacobian


def test_jacobian_is_exact_on_linear_maps():
    """On maps linear in the level's pixels, bilinear sampling and central differences are
    exact, so the analytic Jacobian (distortion, stride-2 level) equals autograd's."""
    B, N, C = 2, 30, 3
    H, W = 40, 48
    g = torch.Generator().manual_seed(0)
    gt = perturb(Pose.identity((B,), dtype=F64), 0.1, 0.2, seed=1)
    points = points_in_view(DIST_CAM, gt, N, margin=4.0, seed=2)
    maps = []
    for h, w in ((H, W), (H // 2, W // 2)):
        y, x = torch.meshgrid(torch.arange(h, dtype=F64), torch.arange(w, dtype=F64), indexing="ij")
        a, b, c = torch.randn(3, B, C, 1, 1, generator=g, dtype=F64)
        maps.append(a * x + b * y + c)
    pyramid = FeaturePyramid.from_maps(maps, (H, W))
    for level in (0, 1):
        ref = torch.randn(B, N, C, generator=g, dtype=F64)
        fn = FeatureMetricResidual(pyramid, level, points, ref, DIST_CAM, pad=1.0)
        J, J_auto, valid = jacobian_pair(fn, gt)
        assert valid.all()
        assert (J - J_auto).abs().max() <= 1e-9 * J_auto.abs().max()


def test_jacobian_matches_smooth_function():
    """On a densely sampled smooth map, the Jacobian (central differences of the samples,
    interpolated) matches the exact derivative of the underlying function up to the
    discretisation error ~ (k h)^2 / 6 of central differences (periods >= 40 px)."""
    B, N, C = 2, 40, 4
    H, W = 40, 48
    g = torch.Generator().manual_seed(1)
    gt = perturb(Pose.identity((B,), dtype=F64), 0.1, 0.2, seed=1)
    points = points_in_view(DIST_CAM, gt, N, margin=4.0, seed=2)
    k = 2 * math.pi / (40 + 40 * torch.rand(B, C, 2, generator=g, dtype=F64))  # rad / level px
    k = k * torch.sign(torch.randn(B, C, 2, generator=g, dtype=F64))
    b = 2 * math.pi * torch.rand(B, C, generator=g, dtype=F64)

    def f(uv):  # (B, N, 2) level pixels -> (B, N, C)
        return torch.sin((uv[..., None, :] * k[:, None]).sum(-1) + b[:, None])

    y, x = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64), indexing="ij")
    fmap = f(torch.stack([x, y], -1).reshape(1, -1, 2).expand(B, -1, -1))
    pyramid = FeaturePyramid.from_maps([fmap.transpose(1, 2).reshape(B, C, H, W)], (H, W))
    ref = torch.randn(B, N, C, generator=g, dtype=F64)
    fn = FeatureMetricResidual(pyramid, 0, points, ref, DIST_CAM, pad=1.0)

    def exact(pose):
        uv = DIST_CAM.project(pose.transform(points), check_bounds=False)[0]
        return f(uv) - ref

    J, J_true, valid = jacobian_pair(fn, gt, exact)
    assert valid.all()
    rel = (J - J_true).abs().max() / J_true.abs().max()
    assert rel < 1e-2, rel


def test_query_confidence_is_folded_into_residual_and_jacobian():
    B, N, C, H, W = 1, 10, 3, 40, 48
    g = torch.Generator().manual_seed(2)
    fmap = torch.randn(B, C, H, W, generator=g, dtype=F64)
    conf = torch.rand(B, 1, H, W, generator=g, dtype=F64)
    gt = Pose.identity((B,), dtype=F64)
    points = points_in_view(DIST_CAM, gt, N, margin=4.0, seed=3)
    ref = torch.randn(B, N, C, generator=g, dtype=F64)
    plain = FeatureMetricResidual(
        FeaturePyramid.from_maps([fmap], (H, W)), 0, points, ref, DIST_CAM
    )
    pyr_c = FeaturePyramid.from_maps([fmap], (H, W), [conf])
    weighted = FeatureMetricResidual(pyr_c, 0, points, ref, DIST_CAM)
    (r0, J0, v0), (r1, J1, v1) = plain(gt), weighted(gt)
    c = pyr_c.sample(DIST_CAM.project(points)[0], 0)[2]
    torch.testing.assert_close(r1, r0 * c.sqrt()[..., None])
    torch.testing.assert_close(J1, J0 * c.sqrt()[..., None, None])
    assert torch.equal(v0, v1)


# ---------------------------------------------------------------------------- 2. sampling


def test_sampling_is_exact_bilinear_with_borders():
    """The original gn_net sampler swapped corner weights and returned 0 at integer
    coordinates and on the last row/column (ALGORITHMS 4)."""
    grid = (4 * torch.arange(3.0)[:, None] + torch.arange(4.0) + 1).to(F64)  # g[r, c] = 4r + c + 1
    pyr = FeaturePyramid.from_maps([grid[None, None]], (3, 4))
    uv = torch.tensor([[[1.2, 1.7], [3.0, 2.0], [3.0, 0.0], [0.0, 2.0], [2.5, 0.25]]], dtype=F64)
    values, valid = pyr.sample(uv, 0)
    torch.testing.assert_close(values[0, :, 0], torch.tensor([9.0, 12.0, 4.0, 9.0, 4.5], dtype=F64))
    assert valid.all()
    y, x = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    at_int = pyr.sample(torch.stack([x, y], -1).reshape(1, -1, 2).to(F64), 0)[0]
    assert torch.equal(at_int[0, :, 0], grid.flatten())


def test_sampling_agrees_with_grid_sample():
    g = torch.Generator().manual_seed(4)
    fine = torch.randn(2, 5, 12, 16, generator=g, dtype=F64)
    coarse = torch.randn(2, 5, 6, 8, generator=g, dtype=F64)
    pyr = FeaturePyramid.from_maps([fine, coarse], (12, 16))
    uv = torch.rand(2, 50, 2, generator=g, dtype=F64) * torch.tensor([15.0, 11.0], dtype=F64)
    for level, fmap in enumerate((fine, coarse)):
        values, _ = pyr.sample(uv, level)
        grid = (uv + 0.5) / torch.tensor([16.0, 12.0], dtype=F64) * 2 - 1  # image extent
        ref = F.grid_sample(fmap, grid[:, None], align_corners=False, padding_mode="border")
        torch.testing.assert_close(values, ref[:, :, 0].transpose(1, 2), rtol=0, atol=1e-12)
    assert pyr.to_level(torch.tensor([1.5, 1.5], dtype=F64), 1).tolist() == [0.5, 0.5]


# ---------------------------------------------------------------------------- 3. convergence


def test_converges_on_rendered_views(world):
    """From 5 degrees and 5 % of the scene depth off, coarse to fine (strides 4, 1) reaches the
    truth: 1e-3 would be rotation error in radians and camera-centre error relative to the
    median scene depth; the check is 1e-5 (the float32 render points limit it to ~1e-7)."""
    rot0, _ = pose_errors(world.init, world.gt)
    res = refine_featuremetric(world.pyramid, world.points, [world.ref] * 2, CAM, world.init)
    rot, pos = pose_errors(res.pose, world.gt)
    assert res.success.all() and res.reasons() == [FeatureMetricReason.OK] * 4
    assert (rot0 > math.radians(4.9)).all()
    assert (rot < 1e-5).all() and (pos / world.depth < 1e-5).all(), (rot, pos / world.depth)
    assert res.levels == (1, 0) and res.cost.shape == (4, 2) and res.iterations.shape == (4, 2)
    assert (res.cost <= res.cost_initial).all() and (res.cost[:, 1] < 1e-6).all()
    assert (res.num_valid > 150).all()
    cov = res.covariance
    assert torch.isfinite(cov).all()
    assert (torch.linalg.eigvalsh(cov) > 0).all()
    # levels run coarse to fine whatever their order; max_iterations follows ``levels``
    two = refine_featuremetric(
        world.pyramid, world.points, [world.ref, None], CAM, world.init, levels=[0]
    )
    assert two.levels == (0,) and two.cost.shape == (4, 1)
    few = refine_featuremetric(
        world.pyramid, world.points, [world.ref] * 2, CAM, world.init, levels=[0, 1],
        max_iterations=[1, 2],
    )  # fmt: skip
    assert few.levels == (1, 0) and (few.iterations <= torch.tensor([2, 1])).all()


def test_converges_with_confidences(world):
    """Reference and query confidences only reweight exact features: same solution."""
    g = torch.Generator().manual_seed(5)
    levels = world.pyramid.levels
    confs = [0.2 + 0.8 * torch.rand(4, 1, *lvl.size, generator=g, dtype=F64) for lvl in levels]
    pyr = FeaturePyramid.from_maps([lvl.features for lvl in levels], (96, 128), confs)
    ref_conf = 0.5 + 0.5 * torch.rand(4, world.points.shape[1], generator=g, dtype=F64)
    res = refine_featuremetric(
        pyr, world.points, [world.ref] * 2, CAM, world.init, ref_confidence=ref_conf
    )
    rot, pos = pose_errors(res.pose, world.gt)
    assert res.success.all()
    assert (rot < 1e-5).all() and (pos / world.depth < 1e-5).all(), (rot, pos)


def test_covariance_matches_the_spread_over_noise_draws():
    """200 draws of Gaussian noise (0.05 per channel, C = 8) on the reference descriptors of one
    problem, refined under the default Barron kernel: the predicted covariance (residual_variance
    with C-dimensional blocks) matches the empirical spread of the estimates. With the slope
    ``rho' + rho'' s`` of 2-D blocks instead of ``rho' + (2 / C) rho'' s`` the prediction is
    2-6 times too large here."""
    H, W, C, N, M = 32, 40, 8, 40, 200
    cam = Camera("PINHOLE", W, H, [40.0, 40.0, 19.5, 15.5]).double()
    g = torch.Generator().manual_seed(12)
    y, x = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64), indexing="ij")
    k = 2 * math.pi / (40 + 40 * torch.rand(C, 2, generator=g, dtype=F64))  # periods 40-80 px
    k = k * torch.sign(torch.randn(C, 2, generator=g, dtype=F64))
    phase = 2 * math.pi * torch.rand(C, 1, 1, generator=g, dtype=F64)
    fmap = torch.sin(k[:, 0, None, None] * x + k[:, 1, None, None] * y + phase)[None]
    pyr = FeaturePyramid.from_maps([fmap.expand(M, -1, -1, -1)], (H, W))
    gt = Pose.identity((M,), dtype=F64)
    points = points_in_view(cam, gt[:1], N, margin=3.0, seed=13).expand(M, -1, -1)
    ref = pyr.sample(cam.project(points)[0], 0)[0]
    ref = ref + 0.05 * torch.randn(M, N, C, generator=g, dtype=F64)
    res = refine_featuremetric(pyr, points, [ref], cam, gt)
    assert res.success.all()
    d = tangent_difference(res.pose, gt)
    ratio = torch.cov(d.T).diagonal() / res.covariance.mean(0).diagonal()
    assert ((ratio > 0.7) & (ratio < 1.4)).all(), ratio


# ---------------------------------------------------------------------------- 4. batching


def test_batched_equals_one_by_one(world):
    refs = [world.ref] * 2
    opts = LMOptions(max_iterations=20)
    batch = refine_featuremetric(world.pyramid, world.points, refs, CAM, world.init, options=opts)
    for i in range(4):
        one = refine_featuremetric(
            world.pyramid.select([i]),
            world.points[i : i + 1],
            [r[i : i + 1] for r in refs],
            CAM,
            world.init[i : i + 1],
            options=opts,
        )
        torch.testing.assert_close(one.pose.data, batch.pose.data[i : i + 1], rtol=0, atol=1e-8)
        torch.testing.assert_close(one.cost, batch.cost[i : i + 1], rtol=1e-8, atol=1e-12)
        assert torch.equal(one.iterations, batch.iterations[i : i + 1])
        assert torch.equal(one.reason, batch.reason[i : i + 1])


def test_float32_maps_with_float64_points_solve_in_float64(world):
    """Maps stay float32 (sampled in float32), the solver runs in float64: the result is
    float64 and a query's pose does not depend on its batch mates."""
    pyr32 = world.pyramid.map(lambda x: x.float())
    refs = [world.ref.float()] * 2
    opts = LMOptions(max_iterations=20)
    batch = refine_featuremetric(pyr32, world.points, refs, CAM, world.init, options=opts)
    assert batch.pose.dtype == torch.float64 and bool(batch.success.all())
    one = refine_featuremetric(
        pyr32.select([2]), world.points[2:3], [r[2:3] for r in refs], CAM, world.init[2:3],
        options=opts,
    )  # fmt: skip
    torch.testing.assert_close(one.pose.data, batch.pose.data[2:3], rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------- 5. gradients


@pytest.fixture(scope="module")
def tiny():
    """One query, 24 x 32 image, 2 levels of smooth features, 12 points with noisy refs."""
    H, W, C, N = 24, 32, 2, 12
    cam = Camera("PINHOLE", W, H, [30.0, 30.0, 15.5, 11.5]).double()
    g = torch.Generator().manual_seed(6)
    y, x = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64), indexing="ij")
    k = 2 * math.pi / (12 + 12 * torch.rand(C, 2, generator=g, dtype=F64))
    fine = torch.sin(
        k[:, 0, None, None] * x + k[:, 1, None, None] * y + torch.arange(C)[:, None, None]
    )
    fine = fine[None]
    coarse = F.avg_pool2d(fine, 2)
    gt = Pose.identity((1,), dtype=F64)
    points = points_in_view(cam, gt, N, margin=5.0, seed=7)
    pyr = FeaturePyramid.from_maps([fine, coarse], (H, W))
    uv = cam.project(points)[0]
    refs = [
        pyr.sample(uv, lvl)[0] + 0.02 * torch.randn(1, N, C, generator=g, dtype=F64)
        for lvl in (0, 1)
    ]
    init = perturb(gt, math.radians(2), 0.05, seed=8)
    return cam, fine, coarse, points, refs, init


def _unrolled(tiny, fine, ref0, ref1, detach_between_levels=False):
    cam, _, coarse, points, _, init = tiny
    pyr = FeaturePyramid.from_maps([fine, coarse], (24, 32))
    res = refine_featuremetric(
        pyr,
        points,
        [ref0, ref1],
        cam,
        init,
        unroll=True,
        max_iterations=3,
        detach_between_levels=detach_between_levels,
        min_points=6,
    )
    assert res.success.all() and (res.iterations == 3).all()
    return res.pose.data


def test_unrolled_gradients_match_finite_differences(tiny):
    _, fine, _, _, refs, _ = tiny
    ref0, ref1 = (r.clone().requires_grad_() for r in refs)
    assert torch.autograd.gradcheck(
        lambda a, b: _unrolled(tiny, fine, a, b), (ref0, ref1), eps=1e-6, atol=1e-6, rtol=1e-4
    )
    # through the query feature map (sampling and its central-difference gradients)
    g = torch.Generator().manual_seed(9)
    weights = torch.randn(1, 12, generator=g, dtype=F64)
    direction = torch.randn(fine.shape, generator=g, dtype=F64)
    fmap = fine.clone().requires_grad_()
    (_unrolled(tiny, fmap, *refs) * weights).sum().backward()
    eps = 1e-6
    plus, minus = (
        (_unrolled(tiny, fine + s * eps * direction, *refs) * weights).sum() for s in (1, -1)
    )
    fd = (plus - minus) / (2 * eps)
    torch.testing.assert_close((fmap.grad * direction).sum(), fd, rtol=1e-5, atol=1e-8)


def test_unrolled_detaches_between_levels(tiny):
    _, fine, _, _, refs, _ = tiny
    ref0, ref1 = (r.clone().requires_grad_() for r in refs)
    _unrolled(tiny, fine, ref0, ref1, detach_between_levels=True).sum().backward()
    assert ref0.grad is not None and ref0.grad.abs().sum() > 0
    assert ref1.grad is None or not ref1.grad.any()
    # detached inference: no graph at all
    cam, _, coarse, points, _, init = tiny
    pyr = FeaturePyramid.from_maps([fine, coarse], (24, 32))
    res = refine_featuremetric(pyr, points, [ref0, ref1], cam, init, min_points=6)
    assert not res.pose.data.requires_grad


# ---------------------------------------------------------------------------- 6. bad input


def test_failures_keep_init_and_give_reasons(world):
    mask = torch.ones(4, world.points.shape[1], dtype=torch.bool)
    mask[0] = False  # no points at all
    ref = world.ref.clone()
    ref[1] = torch.nan  # every reference descriptor NaN
    ref[2, :20] = torch.nan  # a few NaN: those points drop out
    init = Pose(world.init.data.clone())
    init.data[3, 10] = torch.nan
    res = refine_featuremetric(world.pyramid, world.points, [ref, ref], CAM, init, mask)
    R = FeatureMetricReason
    assert res.reasons() == [R.TOO_FEW_POINTS, R.TOO_FEW_POINTS, R.OK, R.NON_FINITE_INPUT]
    assert res.success.tolist() == [False, False, True, False]
    assert torch.equal(res.pose.data[:2], init.data[:2])
    torch.testing.assert_close(res.pose.data[3], init.data[3], equal_nan=True)
    assert pose_errors(res.pose[2:3], world.gt[2:3])[0] < 1e-5
    assert (res.covariance[[0, 1, 3]].diagonal(dim1=-2, dim2=-1) == torch.inf).all()
    assert res.num_valid[[0, 1, 3]].eq(0).all() and res.num_valid[2] <= 180
    assert torch.isnan(res.cost[[0, 1, 3], 1]).all()


def test_degenerate_points_fail(tiny):
    """Copies of one point leave the pose undetermined (rank-2 Hessian): FAILED, init kept."""
    cam, fine, coarse, points, refs, init = tiny
    pyr = FeaturePyramid.from_maps([fine, coarse], (24, 32))
    same = points[:, :1].expand_as(points)
    res = refine_featuremetric(pyr, same, [r[:, :1].expand_as(r) for r in refs], cam, init)
    assert res.reasons() == [FeatureMetricReason.FAILED] and not res.success.any()
    assert torch.equal(res.pose.data, init.data)


def test_nan_query_features_make_points_invalid(world):
    levels = world.pyramid.levels
    fine = levels[0].features.clone()
    fine[:, :, :, :40] = torch.nan  # the left third of every fine map
    pyr = FeaturePyramid.from_maps([fine, levels[1].features], (96, 128))
    res = refine_featuremetric(pyr, world.points, [world.ref] * 2, CAM, world.init)
    rot, pos = pose_errors(res.pose, world.gt)
    # points crossing the NaN border enter and leave the cost, which then is not smooth there
    assert res.success.all() and (rot < 1e-3).all() and (pos / world.depth < 1e-3).all()
    assert (res.num_valid < 160).all()


def test_bad_calls_raise(world):
    pyr, pts, ref, init = world.pyramid, world.points, world.ref, world.init
    refs = [ref, ref]
    with pytest.raises(ShapeError, match="points3D"):
        refine_featuremetric(pyr, pts[..., :2], refs, CAM, init)
    with pytest.raises(ShapeError, match="points3D"):
        refine_featuremetric(pyr, pts[:2], refs, CAM, init)
    with pytest.raises(ShapeError, match="ref_features must hold one tensor per pyramid level"):
        refine_featuremetric(pyr, pts, [ref], CAM, init)
    with pytest.raises(ShapeError, match=r"ref_features\[1\] must be \(B, N, C\)"):
        refine_featuremetric(pyr, pts, [ref, ref[..., :8]], CAM, init)
    with pytest.raises(ShapeError, match="init"):
        refine_featuremetric(pyr, pts, refs, CAM, init[:2])
    with pytest.raises(ShapeError, match="camera"):
        refine_featuremetric(pyr, pts, refs, Camera.stack([CAM] * 3), init)
    with pytest.raises(InputError, match="image_size"):
        refine_featuremetric(pyr, pts, refs, CAM.scale(0.5), init)
    with pytest.raises(ShapeError, match="mask"):
        refine_featuremetric(pyr, pts, refs, CAM, init, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="levels"):
        refine_featuremetric(pyr, pts, refs, CAM, init, levels=[2])
    with pytest.raises(InputError, match="max_iterations"):
        refine_featuremetric(pyr, pts, refs, CAM, init, max_iterations=[5, 5, 5])
    with pytest.raises(ShapeError, match="ref_confidence"):
        refine_featuremetric(pyr, pts, refs, CAM, init, ref_confidence=torch.ones(4, 3))
    with pytest.raises(InputError, match="ref_confidence"):
        refine_featuremetric(pyr, pts, refs, CAM, init, ref_confidence=-torch.ones(4, 200))
    with pytest.raises(InputError, match="strides"):
        refine_photometric(world.rgb, pts, ref[..., :3], CAM, init, strides=(2, 2))


# ---------------------------------------------------------------------------- 7. photometric


def test_photometric_baseline_reduces_error(world):
    """Direct alignment of the rendered RGB to the intensities of the same render at the true
    pose, from 1 degree and 2 cm off."""
    B = 4
    rgb = world.rgb.to(F64)
    flat = rgb.flatten(2).transpose(1, 2)  # (B, H*W, 3)
    intensities = flat.gather(1, world.pixels[..., None].expand(-1, -1, 3))
    init = perturb(world.gt, math.radians(1), 0.02, seed=11)
    res = refine_photometric(rgb, world.points, intensities, CAM, init)
    rot0, pos0 = pose_errors(init, world.gt)
    rot, pos = pose_errors(res.pose, world.gt)
    assert res.success.all() and res.levels == (2, 1, 0) and res.cost.shape == (B, 3)
    assert (rot < 0.1 * rot0).all() and (pos < 0.1 * pos0).all(), (rot, pos)
