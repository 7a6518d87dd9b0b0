"""Batched Levenberg-Marquardt: PnP against pycolmap/poselib, curve fitting against scipy,
batching, masks, failure handling, float32 and gradients through the unrolled solver."""

from __future__ import annotations

import math

import numpy as np
import pycolmap
import pytest
import torch

from dgeo.errors import InputError, NonFiniteError, ShapeError
from dgeo.geometry import Camera, Pose
from dgeo.optim import Cauchy, Huber, LMOptions, minimize
from dgeo.optim.residuals import ReprojectionResidual

F64 = torch.float64
TIGHT = LMOptions(gradient_tolerance=0.0, step_tolerance=1e-14, cost_tolerance=0.0)


def make_pnp(B, N, noise=1.0, angle_deg=20.0, shift=1.0, seed=0, dtype=F64):
    """Random PINHOLE cameras (~640x480), N points 2-10 m in front, GT pose, perturbed start."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    randn = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    f = 450 + 150 * rand(B, 2)
    c = torch.tensor([319.5, 239.5], dtype=dtype) + 10 * randn(B, 2)
    cam = Camera("PINHOLE", 640, 480, torch.cat([f, c], -1))
    uv = rand(B, N, 2) * torch.tensor([639.0, 479.0], dtype=dtype)
    p_cam = cam.unproject(uv) * (2 + 8 * rand(B, N, 1))
    gt = Pose.from_axis_angle(math.pi * (2 * rand(B, 3) - 1), 3 * randn(B, 3))
    X = gt.inv().transform(p_cam)
    obs = uv + noise * randn(B, N, 2)
    axis = torch.nn.functional.normalize(randn(B, 3), dim=-1)
    direction = torch.nn.functional.normalize(randn(B, 3), dim=-1)
    start = Pose.from_axis_angle(axis * math.radians(angle_deg), shift * direction) @ gt
    return cam, X, obs, gt, start


def pose_errors(a: Pose, b: Pose) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation error (degrees) and camera-centre distance, each (B,)."""
    angle = (a @ b.inv()).magnitude()[0]
    return torch.rad2deg(angle), (a.center() - b.center()).norm(dim=-1)


def colmap_refine(start: Pose, X, obs, cam: Camera, gradient_tolerance=1e-12) -> Pose:
    """pycolmap.refine_absolute_pose per problem (COLMAP: Cauchy loss, corner pixel origin)."""
    opts = pycolmap.AbsolutePoseRefinementOptions()
    opts.gradient_tolerance = gradient_tolerance
    out = []
    for b in range(len(X)):
        params = cam.params[b].numpy().copy()
        params[2:] += 0.5
        camera = pycolmap.Camera(model="PINHOLE", width=640, height=480, params=params)
        init = pycolmap.Rigid3d(pycolmap.Rotation3d(start.R[b].numpy()), start.t[b].numpy())
        inliers = np.ones(X.shape[1], dtype=bool)
        res = pycolmap.refine_absolute_pose(
            init, obs[b].numpy() + 0.5, X[b].numpy(), inliers, camera, opts
        )
        out.append(res["cam_from_world"].matrix())
    return Pose.from_matrix(torch.from_numpy(np.stack(out)))


def poselib_refine(start: Pose, X, obs, cam: Camera) -> Pose:
    """poselib.refine_absolute_pose per problem with the trivial loss."""
    import poselib

    opts = {"loss_type": "TRIVIAL", "gradient_tol": 1e-14, "step_tol": 1e-14}
    out = []
    for b in range(len(X)):
        camera = {"model": "PINHOLE", "width": 640, "height": 480}
        camera["params"] = cam.params[b].tolist()
        init = poselib.CameraPose()
        init.R, init.t = start.R[b].numpy(), start.t[b].numpy()
        pose, _ = poselib.refine_absolute_pose(obs[b].numpy(), X[b].numpy(), init, camera, opts)
        out.append(pose.Rt)
    return Pose.from_matrix(torch.from_numpy(np.stack(out)))


# ---------------------------------------------------------------------------------- accuracy
def test_pnp_noise_free_recovers_gt_and_matches_pycolmap():
    cam, X, obs, gt, start = make_pnp(256, 100, noise=0.0)
    res = minimize(ReprojectionResidual(X, obs, cam), start, kernel=Cauchy(1.0))
    assert bool(res.success.all()) and bool(res.converged.all())
    rot, pos = pose_errors(res.x, gt)
    assert float(rot.max()) < 1e-8 and float(pos.max()) < 1e-8
    ref = colmap_refine(start, X, obs, cam)
    scale = 1 + gt.t.norm(dim=-1, keepdim=True)
    assert float(((res.x.data - ref.data).abs() / scale).max()) < 1e-6
    assert float(res.cost.max()) < 1e-12 and float(res.gradient.abs().max()) < 1e-6


def test_pnp_noisy_matches_pycolmap_and_poselib():
    cam, X, obs, gt, start = make_pnp(128, 100, noise=1.0, seed=1)
    fn = ReprojectionResidual(X, obs, cam)
    # Cauchy(1) is COLMAP's loss: same optimum; COLMAP stops at a 1e-6 relative cost decrease
    res = minimize(fn, start, kernel=Cauchy(1.0), options=TIGHT)
    ref = colmap_refine(start, X, obs, cam)
    ref_cost = minimize(fn, ref, kernel=Cauchy(1.0), options=LMOptions(max_iterations=0)).cost
    assert bool((res.cost <= ref_cost * (1 + 1e-12)).all())
    rot, pos = pose_errors(res.x, ref)  # COLMAP's early stop: ~5e-4 deg, ~7e-5 m
    assert float(rot.max()) < 2e-3 and float(pos.max()) < 3e-4
    # least squares against poselib, both run to convergence: agreement to round-off
    res = minimize(fn, start, options=TIGHT)
    ref = poselib_refine(start, X, obs, cam)
    scale = 1 + gt.t.norm(dim=-1, keepdim=True)
    assert float(((res.x.data - ref.data).abs() / scale).max()) < 3e-9  # ~3e-10 seen
    rot, pos = pose_errors(res.x, gt)  # and both are accurate: 1 px noise, 100 points
    assert float(rot.median()) < 0.1 and float(pos.median()) < 0.01
    assert bool(res.converged.all())


@pytest.mark.parametrize("kernel", [Cauchy(2.0), Huber(2.0)], ids=repr)
def test_robust_kernel_survives_30_percent_outliers(kernel):
    cam, X, obs, gt, start = make_pnp(128, 100, noise=1.0, seed=2)
    g = torch.Generator().manual_seed(3)
    outlier = torch.rand(128, 100, generator=g) < 0.3
    junk = torch.rand(128, 100, 2, generator=g, dtype=F64) * torch.tensor([639.0, 479.0], dtype=F64)
    fn = ReprojectionResidual(X, torch.where(outlier[..., None], junk, obs), cam)
    rot, pos = pose_errors(minimize(fn, start, kernel=kernel).x, gt)
    rot_l2, pos_l2 = pose_errors(minimize(fn, start).x, gt)
    clean_rot, clean_pos = pose_errors(minimize(ReprojectionResidual(X, obs, cam), start).x, gt)
    assert float(rot.median()) < 2 * float(clean_rot.median()) + 0.02
    assert float(pos.median()) < 5 * float(clean_pos.median()) + 0.01
    assert float(rot_l2.median()) > 10 * float(rot.median())
    assert float(pos_l2.median()) > 10 * float(pos.median())


def test_curve_fit_matches_scipy():
    """A plain-vector state (x + delta) against scipy's MINPACK LM: y = a exp(b t) + c."""
    from scipy.optimize import least_squares

    g = torch.Generator().manual_seed(4)
    B, N = 16, 40
    t = torch.linspace(0, 2, N, dtype=F64).expand(B, N)
    amplitude = 1 + torch.rand(B, 1, generator=g, dtype=F64)
    rate = -0.5 - torch.rand(B, 1, generator=g, dtype=F64)
    y = amplitude * torch.exp(rate * t) + 0.5 + 0.05 * torch.randn(B, N, generator=g, dtype=F64)

    def fn(x):
        e = torch.exp(x[:, 1:2] * t)
        r = x[:, :1] * e + x[:, 2:] - y
        J = torch.stack([e, x[:, :1] * t * e, torch.ones_like(e)], -1)
        return r[..., None], J[..., None, :]

    x0 = torch.tensor([1.0, -0.2, 0.0], dtype=F64).expand(B, 3)
    res = minimize(fn, x0, options=TIGHT)
    for b in range(B):
        ref = least_squares(
            lambda p, b=b: p[0] * np.exp(p[1] * t[b].numpy()) + p[2] - y[b].numpy(),
            x0[b].numpy(), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15,
        )  # fmt: skip
        np.testing.assert_allclose(res.x[b].numpy(), ref.x, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(float(res.cost[b]), ref.cost, rtol=1e-12)
        assert float(res.cost[b]) <= ref.cost * (1 + 1e-14)


# ---------------------------------------------------------------------------------- batching
def test_batch_equals_one_by_one():
    cam, X, obs, _, start = make_pnp(8, 50, seed=5)
    res = minimize(ReprojectionResidual(X, obs, cam), start, kernel="cauchy")
    for b in range(8):
        one = minimize(
            ReprojectionResidual(X[b : b + 1], obs[b : b + 1], cam[b : b + 1]),
            start[b : b + 1],
            kernel="cauchy",
        )
        torch.testing.assert_close(one.x.data[0], res.x.data[b], rtol=0, atol=1e-8)
        assert int(one.iterations[0]) == int(res.iterations[b])
        torch.testing.assert_close(one.hessian[0], res.hessian[b], rtol=1e-10, atol=0)


def test_padding_with_mask_equals_unpadded():
    B, N = 6, 60
    cam, X, obs, _, start = make_pnp(B, N, seed=6)
    sizes = [60, 12, 35, 20, 47, 9]
    mask = torch.arange(N)[None] < torch.tensor(sizes)[:, None]
    junk_X = torch.where(mask[..., None], X, torch.randn_like(X) * 100)
    junk_uv = torch.where(mask[..., None], obs, torch.zeros_like(obs))
    w = torch.rand(B, N, dtype=F64, generator=torch.Generator().manual_seed(0)) + 0.5
    padded = minimize(ReprojectionResidual(junk_X, junk_uv, cam), start, mask=mask, weights=w)
    assert padded.num_valid.tolist() == sizes
    for b, n in enumerate(sizes):
        one = minimize(
            ReprojectionResidual(X[b : b + 1, :n], obs[b : b + 1, :n], cam[b : b + 1]),
            start[b : b + 1],
            weights=w[b : b + 1, :n],
        )
        torch.testing.assert_close(one.x.data[0], padded.x.data[b], rtol=0, atol=1e-8)
        torch.testing.assert_close(one.cost[0], padded.cost[b], rtol=1e-9, atol=1e-12)


def test_weights_zero_equal_mask_and_scale_cost():
    cam, X, obs, _, start = make_pnp(4, 30, seed=7)
    fn = ReprojectionResidual(X, obs, cam)
    keep = torch.rand(4, 30, generator=torch.Generator().manual_seed(1)) < 0.7
    a = minimize(fn, start, mask=keep)
    b = minimize(fn, start, weights=2.0 * keep.to(F64))
    # equal up to round-off in the accept/reject decisions (~sqrt(eps * cost / H))
    torch.testing.assert_close(a.x.data, b.x.data, rtol=0, atol=1e-8)
    torch.testing.assert_close(2 * a.cost, b.cost)
    assert a.num_valid.tolist() == b.num_valid.tolist() == keep.sum(-1).tolist()


# ---------------------------------------------------------------------------------- damping
def test_adaptive_cost_is_monotone_and_steps_get_rejected():
    cam, X, obs, _, start = make_pnp(64, 50, angle_deg=70.0, shift=3.0, seed=8)
    opts = LMOptions(lambda_init=1e-6, record_history=True)
    res = minimize(ReprojectionResidual(X, obs, cam), start, kernel=Huber(3.0), options=opts)
    h = res.cost_history
    assert h.shape[1] == 64 and torch.equal(h[0], res.cost_initial) and torch.equal(h[-1], res.cost)
    assert bool((h[1:] <= h[:-1]).all())
    steps = torch.arange(1, h.shape[0])[:, None] <= res.iterations[None]
    assert int(((h[1:] == h[:-1]) & steps).sum()) > 0  # some steps were rejected


@pytest.mark.parametrize(
    "opts",
    [
        LMOptions(damping="fixed", lambda_init=0.0, max_iterations=30),
        LMOptions(damping="fixed", lambda_init=1e-2, max_iterations=40),
        LMOptions(damping_mode="identity", lambda_init=1.0),
    ],
    ids=["gauss-newton", "fixed-lm", "identity"],
)
def test_damping_variants_converge(opts):
    cam, X, obs, gt, start = make_pnp(32, 40, noise=0.0, angle_deg=5.0, shift=0.2, seed=9)
    res = minimize(ReprojectionResidual(X, obs, cam), start, options=opts)
    rot, pos = pose_errors(res.x, gt)
    assert float(rot.max()) < 1e-7 and float(pos.max()) < 1e-8
    assert bool(res.success.all()) and bool(res.converged.all())


# ---------------------------------------------------------------------------------- failures
def test_too_few_or_degenerate_residuals_fail_without_nan():
    cam, X, obs, _, start = make_pnp(5, 20, seed=10)
    mask = torch.ones(5, 20, dtype=torch.bool)
    mask[0] = False  # nothing left
    mask[1, 2:] = False  # 2 points < ceil(6 / 2)
    X = X.clone()
    X[2] = X[2, :1]  # all points identical: rank-2 Hessian
    obs = obs.clone()
    obs[3, 5] = math.nan  # a NaN observation is an invalid residual, not a NaN pose

    def fn(pose):
        r, J, v = ReprojectionResidual(X, torch.nan_to_num(obs), cam)(pose)
        return torch.where(torch.isnan(obs), obs, r), J, v

    res = minimize(fn, start, mask=mask, options=LMOptions(min_valid=3))
    for v in (res.x.data, res.cost, res.hessian, res.gradient, res.cost_initial):
        assert bool(torch.isfinite(v).all())
    assert res.success.tolist() == [False, False, False, True, True]
    assert res.num_valid.tolist()[:2] == [0, 2] and int(res.num_valid[3]) == 19
    torch.testing.assert_close(res.x.data[:2], start.data[:2], rtol=0, atol=0)
    assert res.iterations.tolist()[:2] == [0, 0]
    ref = minimize(ReprojectionResidual(X[3:4], torch.nan_to_num(obs[3:4]), cam[3:4]), start[3:4],
                   mask=~torch.isnan(obs[3:4, :, 0]))  # fmt: skip
    torch.testing.assert_close(ref.x.data[0], res.x.data[3], rtol=0, atol=1e-10)


def test_bad_inputs_raise_named_errors():
    cam, X, obs, _, start = make_pnp(2, 10)
    fn = ReprojectionResidual(X, obs, cam)
    bad = start.data.clone()
    bad[0, 9] = math.nan
    with pytest.raises(NonFiniteError, match="x0"):
        minimize(fn, Pose(bad))
    with pytest.raises(ShapeError, match="x0"):
        minimize(lambda x: x, torch.zeros(3, dtype=F64))
    with pytest.raises(ShapeError, match="mask"):
        minimize(fn, start, mask=torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(InputError, match="mask"):
        minimize(fn, start, mask=torch.ones(2, 10))
    with pytest.raises(InputError, match="weights"):
        minimize(fn, start, weights=-torch.ones(2, 10, dtype=F64))
    with pytest.raises(InputError, match="cauchy"):
        minimize(fn, start, kernel="cauchi")
    with pytest.raises(ShapeError, match="fn residuals"):
        minimize(lambda p: (obs[:1], torch.zeros(1, 10, 2, 6, dtype=F64)), start)
    with pytest.raises(ShapeError, match="fn jacobians"):
        minimize(lambda p: (obs, torch.zeros(2, 10, 6, dtype=F64)), start)
    with pytest.raises(ShapeError, match="retract"):
        minimize(lambda x: (obs, torch.zeros(2, 10, 2, 6, dtype=F64)), torch.zeros(2, 4, dtype=F64))
    with pytest.raises(ShapeError, match="points2D"):
        ReprojectionResidual(X, obs[:, :5], cam)
    with pytest.raises(InputError, match="damping"):
        LMOptions(damping="trust-region")
    with pytest.raises(InputError, match="lambda"):
        LMOptions(lambda_min=10.0, lambda_max=1.0)


# ---------------------------------------------------------------------------------- dtypes
def test_float32_matches_float64():
    cam, X, obs, _, start = make_pnp(64, 100, seed=11)
    ref = minimize(ReprojectionResidual(X, obs, cam), start)
    res = minimize(ReprojectionResidual(X.float(), obs.float(), cam.float()), start.float())
    assert res.x.dtype == torch.float32 and res.cost.dtype == torch.float32
    assert bool(res.success.all()) and bool(res.converged.all())
    assert int(res.iterations.max()) < 50
    rot, pos = pose_errors(res.x.double(), ref.x)
    assert float(rot.max()) < 1e-3 and float(pos.max()) < 1e-4
    torch.testing.assert_close(res.cost.double(), ref.cost, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cam, X, obs, _, start = make_pnp(32, 50, seed=12)
    ref = minimize(ReprojectionResidual(X, obs, cam), start, kernel="cauchy")
    dev = torch.device("cuda")
    res = minimize(ReprojectionResidual(X.to(dev), obs.to(dev), cam.to(dev)), start.to(dev),
                   kernel="cauchy")  # fmt: skip
    assert res.x.device.type == "cuda" and res.converged.device.type == "cuda"
    torch.testing.assert_close(res.x.data.cpu(), ref.x.data, rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------- jacobians
def test_reprojection_jacobian_matches_autograd():
    cam, X, obs, _, start = make_pnp(3, 7, seed=13)
    fn = ReprojectionResidual(X, obs, cam)
    _, J, _ = fn(start)
    J_ad = torch.func.jacfwd(lambda d: fn(start.retract(d))[0])(torch.zeros(3, 6, dtype=F64))
    J_ad = J_ad.diagonal(dim1=0, dim2=3).permute(3, 0, 1, 2)  # (B, N, 2, 6)
    torch.testing.assert_close(J, J_ad, rtol=1e-9, atol=1e-9)
    # cost, gradient and Hessian reported at x (here x0) against the autograd Jacobian
    r = fn(start)[0]
    res = minimize(fn, start, options=LMOptions(max_iterations=0))
    torch.testing.assert_close(res.cost, 0.5 * (r * r).sum((-1, -2)))
    torch.testing.assert_close(res.gradient, torch.einsum("bnki,bnk->bi", J_ad, r))
    torch.testing.assert_close(res.hessian, torch.einsum("bnki,bnkj->bij", J_ad, J_ad))
    assert res.hessian.shape == (3, 6, 6) and res.gradient.shape == (3, 6)


# ---------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kernel", [None, Cauchy(5.0)], ids=["l2", "cauchy"])
def test_unrolled_gradient_matches_finite_differences_and_ift(kernel):
    B, N = 2, 12
    T = 15 if kernel is None else 40  # IRLS converges linearly
    cam, X, obs, _, start = make_pnp(B, N, noise=2.0, angle_deg=5.0, shift=0.3, seed=14)
    w = torch.randn(B, 12, dtype=F64, generator=torch.Generator().manual_seed(2))
    # plain Gauss-Newton: a smooth map of the inputs, so central differences are exact to
    # O(eps^2); adaptive LM accepts or rejects its last, round-off-sized steps by cost
    # comparisons, which finite differences resolve only to ~sqrt(eps * cost / H)
    gn = LMOptions(max_iterations=T, unroll=True, damping="fixed", lambda_init=0.0)

    def solve(points2D, x0=start, opts=gn):
        return minimize(ReprojectionResidual(X, points2D, cam), x0, kernel=kernel, options=opts)

    obs = obs.clone().requires_grad_(True)
    res = solve(obs)
    assert res.iterations.tolist() == [T] * B and res.x.data.requires_grad
    assert float(res.gradient.detach().abs().max()) < 1e-8
    (grad,) = torch.autograd.grad((res.x.data * w).sum(), obs)

    # central differences, all 2 * B * N * 2 perturbed problems solved in one batch
    eps, P = 1e-6, B * N * 2
    basis = torch.eye(P, dtype=F64).reshape(P, B, N, 2)
    pert = torch.cat([obs.detach() + eps * basis, obs.detach() - eps * basis])  # (2P, B, N, 2)
    rep = lambda x: x.expand(2 * P, *x.shape).reshape(-1, *x.shape[1:])  # noqa: E731
    cam_rep = Camera("PINHOLE", 640, 480, rep(cam.params))
    fd_res = minimize(ReprojectionResidual(rep(X), pert.reshape(-1, N, 2), cam_rep),
                      Pose(rep(start.data)), kernel=kernel, options=gn)  # fmt: skip
    vals = (fd_res.x.data.reshape(2 * P, B, 12) * w).sum((-1, -2))
    fd = ((vals[:P] - vals[P:]) / (2 * eps)).reshape(B, N, 2)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-8)

    # implicit function theorem at the optimum x*: G(delta, uv) = gradient at x* + delta is 0,
    # so d delta / d uv = -(dG/d delta)^-1 dG/d uv with the full Hessian (not J^T J)
    x_star, zero = res.x.detach(), torch.zeros(B, 6, dtype=F64)
    opts0 = LMOptions(max_iterations=0, detach=False)
    grad_at = lambda d, uv: solve(uv, x_star.retract(d), opts0).gradient  # noqa: E731
    jac = torch.autograd.functional.jacobian
    H = jac(lambda d: grad_at(d, obs.detach()), zero).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    G_uv = jac(lambda uv: grad_at(zero, uv), obs.detach()).diagonal(dim1=0, dim2=2)
    dL = jac(lambda d: (x_star.retract(d).data * w).sum(), zero)  # (B, 6)
    ift = -torch.einsum("bi,bi...->b...", torch.linalg.solve(H.mT, dL), G_uv.movedim(-1, 0))
    torch.testing.assert_close(grad, ift, rtol=1e-6, atol=1e-10)

    # adaptive LM, unrolled: the same gradient once converged
    res_lm = solve(obs, opts=LMOptions(max_iterations=T, unroll=True))
    (grad_lm,) = torch.autograd.grad((res_lm.x.data * w).sum(), obs)
    torch.testing.assert_close(grad_lm, ift, rtol=1e-5, atol=1e-9)


def test_detach_by_default():
    cam, X, obs, _, start = make_pnp(2, 10)
    obs = obs.clone().requires_grad_(True)
    res = minimize(ReprojectionResidual(X, obs, cam), start)
    assert not res.x.data.requires_grad and not res.cost.requires_grad
    res = minimize(ReprojectionResidual(X, obs, cam), start, options=LMOptions(detach=False))
    assert res.x.data.requires_grad  # early stopping, but differentiable along the path taken
