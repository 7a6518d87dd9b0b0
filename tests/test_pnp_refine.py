"""Pose refinement with covariances (dgeo.pnp.refine): ground truth, pycolmap's pose and
covariance, calibration against the empirical spread over noise draws, batching, masks,
degenerate inputs, gradients and the helpers."""

from __future__ import annotations

import math

import numpy as np
import pycolmap
import pytest
import torch

from dgeo.data.synthetic.problems import random_pnp_problems
from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Camera, Pose, skew
from dgeo.optim import Cauchy, LMOptions, ReprojectionResidual
from dgeo.pnp import (
    pose_covariance,
    refine_pose,
    residual_variance,
    tangent_difference,
)

F64 = torch.float64
SIZE = torch.tensor([639.0, 479.0], dtype=F64)
TIGHT = LMOptions(gradient_tolerance=0.0, step_tolerance=1e-14, cost_tolerance=0.0)


def make_problem(B, N, noise=1.0, angle_deg=10.0, shift=0.5, seed=0):
    """Random PINHOLE problems: camera, X, observations, GT pose, perturbed start."""
    p = random_pnp_problems(B, N, noise=noise, angle_deg=angle_deg, shift=shift, seed=seed)
    return p.camera, p.points3D, p.points2D, p.gt, p.start


def errors(a: Pose, b: Pose) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation error (degrees) and camera-centre distance (m), each (B,)."""
    a, b = a.double(), b.double()
    return torch.rad2deg((a @ b.inv()).magnitude()[0]), (a.center() - b.center()).norm(dim=-1)


def colmap_covariance_to_dgeo(cov: np.ndarray, pose: Pose) -> torch.Tensor:
    """pycolmap's 6x6 covariance to dgeo's ``(dt, dw)`` tangent at ``pose`` (batch shape ()).

    pycolmap (Ceres) orders (rotation, translation); the rotation block is over Ceres'
    quaternion-manifold step ``q <- [cos|d|, sin|d| d/|d|] * q``, i.e. half the left rotation
    vector (``dw = 2 d``), and the translation is additive (``t <- t + dt_c``). dgeo's retract
    rotates the translation too, so ``dt = dt_c + [t]x dw``.
    """
    C = torch.from_numpy(np.asarray(cov, dtype=np.float64))
    order = [3, 4, 5, 0, 1, 2]
    C = C[order][:, order]  # (dt_c, d)
    S = torch.diag(torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 2.0], dtype=F64))  # d -> dw
    A = torch.eye(6, dtype=F64)
    A[:3, 3:] = skew(pose.t.double())
    return A @ S @ C @ S @ A.T


def colmap_refine(start: Pose, X, obs, cam: Camera, scale: float):
    """pycolmap.refine_absolute_pose with covariance, per problem (corner pixel origin)."""
    opts = pycolmap.AbsolutePoseRefinementOptions()
    opts.gradient_tolerance = 1e-14
    opts.loss_function_scale = scale
    poses, covs = [], []
    for b in range(len(X)):
        params = cam.params[b].numpy().copy()
        params[2:] += 0.5
        camera = pycolmap.Camera(model="PINHOLE", width=640, height=480, params=params)
        init = pycolmap.Rigid3d(pycolmap.Rotation3d(start.R[b].numpy()), start.t[b].numpy())
        inliers = np.ones(X.shape[1], dtype=bool)
        out = pycolmap.refine_absolute_pose(
            init, obs[b].numpy() + 0.5, X[b].numpy(), inliers, camera, opts, return_covariance=True
        )
        pose = Pose.from_matrix(torch.from_numpy(np.asarray(out["cam_from_world"].matrix())))
        poses.append(pose)
        covs.append(colmap_covariance_to_dgeo(out["covariance"], pose))
    return Pose.stack(poses), torch.stack(covs)


# ---------------------------------------------------------------------------------- accuracy
def test_recovers_gt_from_perturbed_starts():
    cam, X, obs, gt, start = make_problem(64, 50, noise=0.0, angle_deg=20.0, shift=1.0, seed=1)
    res = refine_pose(obs, X, cam, start)
    assert bool(res.success.all()) and res.pose.dtype == F64
    rot, pos = errors(res.pose, gt)
    assert float(rot.max()) < 1e-8 and float(pos.max()) < 1e-8
    assert float(res.cost.max()) < 1e-12 and bool((res.num_valid == 50).all())
    assert bool((res.iterations > 0).all()) and res.covariance.shape == (64, 6, 6)
    # float32 end to end
    f32 = refine_pose(obs.float(), X.float(), cam.float(), start.float())
    rot, pos = errors(f32.pose, gt)
    assert f32.pose.dtype == torch.float32 and f32.covariance.dtype == torch.float32
    assert bool(f32.success.all()) and float(rot.max()) < 1e-3 and float(pos.max()) < 1e-3


@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["cauchy1", "least-squares"])
def test_matches_pycolmap_pose_and_covariance(scale):
    cam, X, obs, _, start = make_problem(6, 60, noise=1.0, seed=2)
    res = refine_pose(obs, X, cam, start, scale=scale, options=TIGHT)
    ref_pose, ref_cov = colmap_refine(start, X, obs, cam, scale)
    # COLMAP stops at a 1e-6 relative cost decrease (Ceres' function tolerance): ~4e-4 deg
    rot, pos = errors(res.pose, ref_pose)
    assert float(rot.max()) < 2e-3 and float(pos.max()) < 3e-4
    ref_cost = refine_pose(obs, X, cam, ref_pose, scale=scale, max_iterations=0).cost
    assert bool((res.cost <= ref_cost * (1 + 1e-12)).all())
    # pycolmap reports (J^T J)^-1 for 1 px noise, i.e. our covariance without sigma^2
    hinv = res.covariance / res.sigma2[:, None, None]
    assert torch.allclose(hinv, torch.linalg.inv(res.hessian), rtol=1e-8, atol=0)
    rel = (hinv - ref_cov).norm(dim=(-2, -1)) / ref_cov.norm(dim=(-2, -1))
    # Ceres' robust corrector vs the IRLS Hessian: ~1e-3 apart under Cauchy(1), ~1e-5 in LS
    assert float(rel.max()) < (1e-2 if scale == 1.0 else 1e-4)


def _spread(kernel, scale, outliers: float, draws: int = 300, seed: int = 3):
    """Refine ``draws`` noisy copies (1 px) of one fixed problem from the ground truth; return
    the result, the predicted (mean) and the empirical covariance in the (dt, dw) tangent at
    the ground truth, and the residual function."""
    cam, X, obs, gt, _ = make_problem(1, 60, noise=0.0, seed=seed)
    g = torch.Generator().manual_seed(seed)
    noisy = obs.expand(draws, -1, -1) + torch.randn(draws, 60, 2, generator=g, dtype=F64)
    if outliers:
        bad = torch.rand(draws, 60, generator=g) < outliers
        junk = torch.rand(draws, 60, 2, generator=g, dtype=F64) * SIZE
        noisy = torch.where(bad[..., None], junk, noisy)
    gts = Pose(gt.data.expand(draws, 12))
    points3D = X.expand(draws, -1, -1)
    res = refine_pose(noisy, points3D, cam[0], gts, kernel=kernel, scale=scale)
    assert bool(res.success.all())
    delta = tangent_difference(res.pose, gts)
    fn = ReprojectionResidual(points3D, noisy, cam[0])
    return res, res.covariance.mean(0), torch.cov(delta.T), fn


@pytest.mark.parametrize(
    "kernel, scale, outliers",
    [("cauchy", 1.0, 0.0), (None, 1.0, 0.0), ("cauchy", 1.0, 0.3), ("huber", 2.0, 0.0)],
    ids=["cauchy1", "least-squares", "cauchy1-30%-outliers", "huber2"],
)
def test_covariance_matches_empirical_spread(kernel, scale, outliers):
    res, predicted, empirical, fn = _spread(kernel, scale, outliers)
    trace = float(predicted.trace() / empirical.trace())
    diag = predicted.diagonal() / empirical.diagonal()
    assert abs(trace - 1) < 0.25, trace  # seen 0.92-1.05 with 300 draws, 0.94-1.03 with 2000
    assert float((diag - 1).abs().max()) < 0.3, diag
    if kernel == "cauchy" and not outliers:
        # the robustly weighted residual variance alone, sum rho'^2 s / (2n - 6), without the
        # M-estimator correction, would be about 2x too confident
        s = fn(res.pose)[0].square().sum(-1)
        d1 = Cauchy(scale)(s)[1]
        naive = (d1 * d1 * s).sum(-1) / (2 * 60 - 6)
        cov = naive[:, None, None] * torch.linalg.inv(res.hessian)
        assert float(cov.mean(0).trace() / empirical.trace()) < 0.6  # seen 0.42


def test_tangent_difference_inverts_retract():
    g = torch.Generator().manual_seed(4)
    ref = Pose.from_axis_angle(
        torch.randn(16, 3, generator=g, dtype=F64), torch.randn(16, 3, generator=g, dtype=F64)
    )
    delta = torch.randn(16, 6, generator=g, dtype=F64) * torch.tensor([1.0] * 3 + [0.3] * 3)
    assert torch.allclose(tangent_difference(ref.retract(delta), ref), delta, atol=1e-12)
    assert float(tangent_difference(ref, ref).abs().max()) < 1e-15


# ---------------------------------------------------------------------------------- batching
def test_batched_equals_one_by_one_and_masks_equal_unpadded():
    sizes = [4, 9, 30, 17, 50, 12]
    cams, Xs, obss, starts = [], [], [], []
    for i, n in enumerate(sizes):
        cam, X, obs, _, start = make_problem(1, n, noise=1.0, seed=10 + i)
        cams.append(cam), Xs.append(X[0]), obss.append(obs[0]), starts.append(start)
    B, N = len(sizes), max(sizes)
    X = torch.full((B, N, 3), torch.nan, dtype=F64)  # padding holds garbage, even NaN
    obs = torch.full((B, N, 2), 1e9, dtype=F64)
    mask = torch.zeros(B, N, dtype=torch.bool)
    for b, (x, o) in enumerate(zip(Xs, obss, strict=True)):
        X[b, : len(x)], obs[b, : len(o)], mask[b, : len(x)] = x, o, True
    res = refine_pose(obs, X, Camera.cat(cams), Pose.cat(starts), mask=mask)
    assert bool(res.success.all()) and res.num_valid.tolist() == sizes
    for b in range(B):
        one = refine_pose(obss[b][None], Xs[b][None], cams[b], starts[b])
        assert torch.allclose(res.pose.data[b], one.pose.data[0], atol=1e-9)
        assert torch.allclose(res.covariance[b], one.covariance[0], rtol=1e-6, atol=1e-15)
        assert torch.allclose(res.cost[b], one.cost[0], rtol=1e-9)


def test_nonfinite_points_and_zero_weights_count_as_masked():
    cam, X, obs, _, start = make_problem(4, 30, seed=20)
    mask = torch.ones(4, 30, dtype=torch.bool)
    mask[:, :3] = False
    a = refine_pose(obs, X, cam, start, mask=mask)
    obs2, X2 = obs.clone(), X.clone()
    obs2[:, 0] = torch.nan
    X2[:, 1] = torch.inf
    X2[:, 2, 0] = torch.nan
    b = refine_pose(obs2, X2, cam, start)
    assert torch.equal(a.pose.data, b.pose.data) and torch.equal(a.covariance, b.covariance)
    assert b.num_valid.tolist() == [27] * 4
    w = mask.to(F64)  # zero weights are masked correspondences too
    c = refine_pose(obs, X, cam, start, weights=w)
    assert torch.equal(a.pose.data, c.pose.data) and torch.equal(a.covariance, c.covariance)


def test_degenerate_inputs_fail_without_exception():
    cam, X, obs, gt, start = make_problem(5, 20, seed=21)
    mask = torch.ones(5, 20, dtype=torch.bool)
    mask[0, 3:] = False  # 3 points < 4
    mask[1] = False  # all masked
    obs = obs.clone()
    obs[2] = torch.nan  # all observations NaN
    data = start.data.clone()
    data[3, 0] = torch.nan  # non-finite start
    res = refine_pose(obs, X, cam, Pose(data), mask=mask)
    assert res.success.tolist() == [False, False, False, False, True]
    assert bool(torch.isfinite(res.pose.data).all())
    assert torch.equal(res.pose.data[:3], start.data[:3])  # untouched
    assert torch.equal(res.pose.data[3], Pose.identity(dtype=F64).data)
    inf_diag = torch.diag(torch.full((6,), torch.inf, dtype=F64))
    assert torch.equal(res.covariance[:4], inf_diag.expand(4, 6, 6))
    assert bool(torch.isfinite(res.covariance[4]).all())
    assert float(errors(res.pose[4:], gt[4:])[0].max()) < 0.5


def test_options_and_overrides():
    cam, X, obs, _, start = make_problem(4, 30, seed=22)
    res = refine_pose(obs, X, cam, start, options=LMOptions(max_iterations=2))
    assert int(res.iterations.max()) <= 2
    res = refine_pose(obs, X, cam, start, max_iterations=1, options=LMOptions(max_iterations=50))
    assert int(res.iterations.max()) == 1
    res = refine_pose(obs, X, cam, start, kernel=Cauchy(5.0), scale=123.0)  # instance wins
    ref = refine_pose(obs, X, cam, start, kernel="cauchy", scale=5.0)
    assert torch.equal(res.pose.data, ref.pose.data)


def test_unroll_gives_gradients():
    cam, X, obs, _, start = make_problem(3, 20, seed=23)
    obs = obs.clone().requires_grad_(True)
    res = refine_pose(obs, X, cam, start, max_iterations=5, unroll=True)
    assert res.iterations.tolist() == [5, 5, 5]
    assert res.pose.data.requires_grad and res.covariance.requires_grad
    (res.pose.t.sum() + res.covariance.diagonal(dim1=-2, dim2=-1).sum()).backward()
    assert obs.grad is not None and bool(torch.isfinite(obs.grad).all())
    assert float(obs.grad.abs().max()) > 0
    plain = refine_pose(obs, X, cam, start)
    assert not plain.pose.data.requires_grad and not plain.covariance.requires_grad


# ---------------------------------------------------------------------------------- helpers
def test_residual_variance_and_pose_covariance():
    g = torch.Generator().manual_seed(24)
    s = torch.rand(3, 10, generator=g, dtype=F64)
    w = torch.ones(3, 10, dtype=F64)
    w[1, 6:] = 0  # 6 blocks: dof 6
    w[2, 3:] = 0  # 3 blocks: dof 0
    sigma2, n = residual_variance(s, None, w)
    assert n.tolist() == [10, 6, 3]
    assert torch.allclose(sigma2[0], s[0].sum() / 14) and torch.allclose(
        sigma2[1], s[1, :6].sum() / 6
    )
    assert float(sigma2[2]) == math.inf
    # under a robust kernel with all residuals far inside its scale, it tends to least squares
    robust, _ = residual_variance(s * 1e-8, "cauchy")
    assert torch.allclose(robust, residual_variance(s * 1e-8)[0], rtol=1e-6)
    H = (
        torch.eye(6, dtype=F64).repeat(3, 1, 1)
        * torch.tensor([2.0, 1.0, -1.0], dtype=F64)[:, None, None]
    )
    cov, ok = pose_covariance(H, torch.tensor([4.0, torch.inf, 1.0], dtype=F64))
    assert ok.tolist() == [True, False, False] and bool(torch.isfinite(cov).all())
    assert torch.allclose(cov[0], 2 * torch.eye(6, dtype=F64))


def test_bad_arguments_raise():
    cam, X, obs, _, start = make_problem(2, 10, seed=25)
    with pytest.raises(ShapeError):
        refine_pose(obs[:, :9], X, cam, start)
    with pytest.raises(ShapeError):
        refine_pose(obs, X, cam, start[:1])
    with pytest.raises(ShapeError):
        refine_pose(obs, X, cam, start, mask=torch.ones(2, 10))
    with pytest.raises(InputError):
        refine_pose(obs, X, cam, start, weights=-torch.ones(2, 10, dtype=F64))
    with pytest.raises(InputError):
        refine_pose(obs, X, cam, start, min_points=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cam, X, obs, _, start = make_problem(8, 30, seed=26)
    a = refine_pose(obs, X, cam, start, options=TIGHT)
    b = refine_pose(obs.cuda(), X.cuda(), cam.to("cuda"), start.to("cuda"), options=TIGHT)
    assert b.pose.device.type == "cuda" and torch.equal(a.success, b.success.cpu())
    assert torch.allclose(a.pose.data, b.pose.data.cpu(), atol=1e-9)
    assert torch.allclose(a.covariance, b.covariance.cpu(), rtol=1e-6)
