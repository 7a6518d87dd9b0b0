"""Tests of dgeo.ransac.lo_ransac: batched LO-RANSAC for absolute pose."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgeo.data.synthetic.problems import random_pnp_problems
from dgeo.errors import InputError, ShapeError
from dgeo.eval.metrics import pose_errors
from dgeo.geometry import Camera, Pose
from dgeo.optim import LMOptions
from dgeo.pnp import refine_pose
from dgeo.ransac import PnPReason, PnPResult, pnp_finish, pnp_ransac

W, H = 640, 480


def make_problems(
    B: int,
    N: int,
    outliers: float,
    noise: float = 1.0,
    seed: int = 0,
    model: str = "PINHOLE",
    dtype: torch.dtype = torch.float64,
):
    """Random PnP problems: camera (B,), uv (B, N, 2), X (B, N, 3), GT poses, median depth."""
    p = random_pnp_problems(
        B, N, outlier_ratio=outliers, noise=noise, seed=seed, model=model, width=W, height=H,
        dtype=dtype,
    )  # fmt: skip
    return p.camera, p.points2D, p.points3D, p.gt, p.depth


def recovered(pose: Pose, gt: Pose, depth: torch.Tensor) -> torch.Tensor:
    """Rotation below 1 degree and position below 1 % of the median depth."""
    e_t, e_R, _ = pose_errors(pose.to(dtype=torch.float64), gt)
    return (e_R < math.radians(1.0)) & (e_t < 0.01 * depth)


def test_recovers_poses_as_reliably_as_poselib_at_80_percent_outliers():
    poselib = pytest.importorskip("poselib")
    cam, uv, X, gt, depth = make_problems(200, 300, 0.8, noise=1.0, seed=11)
    res = pnp_ransac(uv, X, cam, seed=0)
    ours = recovered(res.pose, gt, depth).double().mean().item()
    Rt = []
    for b in range(len(gt)):
        camera = {"model": "PINHOLE", "width": W, "height": H, "params": cam.params[b].tolist()}
        pose, _ = poselib.estimate_absolute_pose(
            uv[b].numpy(), X[b].numpy(), camera, {"max_reproj_error": 12.0}, {}
        )
        Rt.append(pose.Rt)
    theirs_pose = Pose.from_matrix(torch.from_numpy(np.stack(Rt)))
    theirs = recovered(theirs_pose, gt, depth).double().mean().item()
    assert ours >= theirs - 0.005, (ours, theirs)
    assert ours >= 0.98
    assert bool(res.success.all())
    # inliers: most true inliers found, few outliers accepted
    assert float(res.num_inliers.double().mean()) == pytest.approx(60, abs=6)


def test_batched_equals_one_by_one_and_padding():
    cam, uv, X, _, _ = make_problems(6, 300, 0.7, seed=3)
    counts = [300, 150, 300, 40, 220, 300]
    mask = torch.arange(300)[None] < torch.tensor(counts)[:, None]
    uv = torch.where(mask[..., None], uv, torch.nan)  # padding holds garbage, masked out
    X = torch.where(mask[..., None], X, 1e9)
    res = pnp_ransac(uv, X, cam, mask=mask, seed=5)
    assert not bool((res.inliers & ~mask).any())
    for b, n in enumerate(counts):
        one = pnp_ransac(uv[b : b + 1, :n], X[b : b + 1, :n], cam[b : b + 1], seed=5)
        assert torch.equal(one.inliers[0], res.inliers[b, :n])
        assert int(one.iterations[0]) == int(res.iterations[b])
        assert int(one.reason[0]) == int(res.reason[b])
        torch.testing.assert_close(one.pose.data[0], res.pose.data[b], atol=1e-6, rtol=0)


def test_deterministic_with_seed():
    cam, uv, X, _, _ = make_problems(4, 200, 0.6, seed=4)
    a = pnp_ransac(uv, X, cam, seed=123)
    b = pnp_ransac(uv, X, cam, seed=123)
    assert torch.equal(a.pose.data, b.pose.data)
    assert torch.equal(a.inliers, b.inliers)
    assert torch.equal(a.iterations, b.iterations)
    torch.manual_seed(0)
    c = pnp_ransac(uv, X, cam)
    torch.manual_seed(0)
    d = pnp_ransac(uv, X, cam)
    assert torch.equal(c.pose.data, d.pose.data)


def test_bad_queries_fail_without_affecting_the_others():
    cam, uv, X, gt, depth = make_problems(6, 100, 0.3, seed=3)
    uv, X = uv.clone(), X.clone()
    mask = torch.ones(6, 100, dtype=torch.bool)
    mask[1, 3:] = False  # 3 matches
    line = torch.linspace(-1, 1, 100, dtype=torch.float64)[:, None]
    X[2] = line * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)  # collinear scene
    uv[2] = cam[2:3].project(gt[2:3].transform(X[2:3]), check_bounds=False)[0][0]
    uv[3, 5, 0] = torch.nan  # a NaN row
    g = torch.Generator().manual_seed(0)
    uv[4, :30] = torch.rand(30, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H])
    mask[4, 30:] = False  # 30 matches, all random: no pose explains them
    res = pnp_ransac(uv, X, cam, mask=mask, seed=0)
    assert isinstance(res, PnPResult)
    assert res.reasons() == [
        PnPReason.OK,
        PnPReason.TOO_FEW_MATCHES,
        PnPReason.NO_HYPOTHESIS,
        PnPReason.NON_FINITE_INPUT,
        PnPReason.TOO_FEW_INLIERS,
        PnPReason.OK,
    ]
    assert res.success.tolist() == [True, False, False, False, False, True]
    assert torch.isfinite(res.pose.data).all()
    assert torch.isinf(res.covariance[~res.success].diagonal(dim1=-2, dim2=-1)).all()
    assert int(res.num_inliers[1]) == int(res.num_inliers[3]) == 0
    assert bool(recovered(res.pose[[0, 5]], gt[[0, 5]], depth[[0, 5]]).all())
    for b in (0, 5):  # unaffected by their neighbours
        one = pnp_ransac(uv[b : b + 1], X[b : b + 1], cam[b : b + 1], seed=0)
        assert torch.equal(one.inliers[0], res.inliers[b])
        torch.testing.assert_close(one.pose.data[0], res.pose.data[b], atol=1e-6, rtol=0)


def test_nearly_collinear_inliers_are_degenerate():
    cam, uv, X, gt, _ = make_problems(1, 60, 0.0, noise=0.0, seed=8)
    line = torch.linspace(-1, 1, 60, dtype=torch.float64)[:, None]
    X = (line * torch.tensor([1.0, 0.3, 0.2], dtype=torch.float64))[None].clone()
    X[0, :3] += torch.tensor([[0, 1e-7, 0], [0, 0, 1e-7], [1e-7, 0, 0]], dtype=torch.float64)
    uv = cam.project(gt.transform(X), check_bounds=False)[0]
    res = pnp_ransac(uv, X, cam, seed=0)
    assert not bool(res.success[0])
    assert res.reasons()[0] in (PnPReason.DEGENERATE, PnPReason.NO_HYPOTHESIS)


def test_float32_and_shared_camera():
    cam, uv, X, gt, depth = make_problems(8, 400, 0.5, seed=6, dtype=torch.float32)
    shared = Camera("PINHOLE", W, H, cam.params[0])  # batch shape ()
    uv = uv.clone()
    uv[1:] = shared.project(gt[1:].transform(X[1:].double()).float())[0]  # re-render views 1..7
    res = pnp_ransac(uv, X, shared, seed=1)
    assert res.pose.dtype == torch.float32 and res.covariance.dtype == torch.float32
    assert bool(res.success.all())
    assert bool(recovered(res.pose, gt, depth).all())
    assert bool(torch.isfinite(res.covariance).all())


def test_distortion_and_covariance():
    cam, uv, X, gt, depth = make_problems(8, 300, 0.5, seed=9, model="SIMPLE_RADIAL")
    res = pnp_ransac(uv, X, cam, seed=0)
    assert bool(res.success.all())
    assert bool(recovered(res.pose, gt, depth).all())
    # inliers use the exact camera model: true inliers project within the threshold
    p = res.pose.transform(X)
    err = (cam.project(p, check_bounds=False)[0] - uv).norm(dim=-1)
    assert torch.equal(res.inliers, err < 12.0)
    cov = res.covariance
    torch.testing.assert_close(cov, cov.transpose(-1, -2))
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())
    # the rotation error is within a few standard deviations (1 px noise)
    _, e_R, _ = pose_errors(res.pose, gt)
    sd_rot = cov[:, 3:, 3:].diagonal(dim1=-2, dim2=-1).sum(-1).sqrt()
    assert bool((e_R < 6 * sd_rot).all())


@pytest.mark.parametrize("kernel", ["cauchy", "huber", None])
def test_final_refinement_equals_refine_pose(kernel):
    """Without distortion the final refinement is the lean guarded IRLS of dgeo.ransac.irls:
    its pose and covariance are those of refine_pose (converged tightly) on the same inliers."""
    cam, uv, X, _, _ = make_problems(16, 300, 0.4, noise=1.5, seed=5)
    res = pnp_ransac(uv, X, cam, seed=0, refine_kernel=kernel)
    assert bool(res.success.all())
    ref = refine_pose(
        uv, X, cam, res.pose, mask=res.inliers, kernel=kernel, scale=6.0,
        options=LMOptions(cost_tolerance=0.0, max_iterations=50),
    )  # fmt: skip
    # pnp_ransac stops at a relative cost change of 1e-5 (IRLS converges linearly under robust
    # kernels): within 1 % of the standard deviation of the estimate
    e_t, e_R, _ = pose_errors(res.pose, ref.pose)
    sd = ref.covariance.diagonal(dim1=-2, dim2=-1)
    assert bool((e_R < 0.01 * sd[:, 3:].sum(-1).sqrt()).all())
    assert bool(
        (
            e_t
            < 0.01
            * (ref.pose.R.transpose(-1, -2) @ ref.covariance[:, :3, :3] @ ref.pose.R)
            .diagonal(dim1=-2, dim2=-1)
            .sum(-1)
            .sqrt()
        ).all()
    )
    d_ours, d_ref = (c.diagonal(dim1=-2, dim2=-1) for c in (res.covariance, ref.covariance))
    torch.testing.assert_close(d_ours, d_ref, rtol=1e-3, atol=0)
    corr = [
        c / (d[:, :, None] * d[:, None, :]).sqrt()
        for c, d in ((res.covariance, d_ours), (ref.covariance, d_ref))
    ]
    torch.testing.assert_close(corr[0], corr[1], rtol=0, atol=1e-3)


def test_options_and_adaptive_iterations():
    cam, uv, X, gt, depth = make_problems(3, 300, 0.0, seed=2)
    _, uv_hard, _, _, _ = make_problems(3, 300, 0.75, seed=2)
    uv = torch.cat([uv[:2], uv_hard[2:]])
    res = pnp_ransac(uv, X, cam, seed=0)
    assert bool(res.success.all())
    # the easy queries stop after the first round, the hard one keeps sampling
    assert res.iterations[0] == res.iterations[1] <= 192
    assert int(res.iterations[2]) > 500
    quick = pnp_ransac(uv, X, cam, seed=0, local_optimization=False, refine=False)
    assert bool(quick.success.all())
    assert bool(recovered(quick.pose, gt, depth).all())
    assert torch.isinf(quick.covariance.diagonal(dim1=-2, dim2=-1)).all()
    capped = pnp_ransac(uv, X, cam, seed=0, max_iterations=40, batch_hypotheses=16)
    assert int(capped.iterations.max()) <= 40
    # ordinary tensors out (not inference tensors): usable as the start of training
    assert res.pose.data.clone().requires_grad_().sum().requires_grad


def test_empty_inputs():
    cam, uv, X, _, _ = make_problems(3, 10, 0.0)
    none = pnp_ransac(uv[:, :0], X[:, :0], cam, seed=0)
    assert none.inliers.shape == (3, 0)
    assert none.reasons() == [PnPReason.TOO_FEW_MATCHES] * 3
    assert pnp_ransac(uv[:0], X[:0], cam[:0], seed=0).pose.shape == (0,)
    exact = pnp_ransac(uv[:, :4], X[:, :4], cam, seed=0, min_inliers=4)
    assert bool(exact.success.all()) and exact.num_inliers.tolist() == [4, 4, 4]


def test_call_errors_raise():
    cam, uv, X, _, _ = make_problems(2, 20, 0.0)
    with pytest.raises(ShapeError):
        pnp_ransac(uv[0], X[0], cam)
    with pytest.raises(ShapeError):
        pnp_ransac(uv, X[:, :10], cam)
    with pytest.raises(ShapeError):
        pnp_ransac(uv, X, cam, mask=torch.ones(2, 19, dtype=torch.bool))
    with pytest.raises(InputError):
        pnp_ransac(uv, X, cam, mask=torch.ones(2, 20))
    with pytest.raises(InputError):
        pnp_ransac(uv.float(), X, cam)
    with pytest.raises(InputError):
        pnp_ransac(uv.long(), X.long(), cam)
    with pytest.raises(ShapeError):
        pnp_ransac(uv, X, Camera.stack([cam[0]] * 3))
    with pytest.raises(InputError):
        pnp_ransac(uv, X, cam.params)
    for bad in (
        dict(threshold_px=0.0),
        dict(confidence=1.0),
        dict(min_iterations=-1),
        dict(max_iterations=0),
        dict(batch_hypotheses=0),
    ):
        with pytest.raises(InputError):
            pnp_ransac(uv, X, cam, **bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32():
    cam, uv, X, gt, depth = make_problems(16, 500, 0.6, seed=7, dtype=torch.float32)
    res = pnp_ransac(uv.cuda(), X.cuda(), cam.to("cuda"), seed=0)
    assert res.pose.device.type == "cuda"
    assert bool(recovered(res.pose.to("cpu"), gt, depth).all())


@pytest.mark.parametrize("model", ["PINHOLE", "SIMPLE_RADIAL"])
def test_finish_of_unrefined_candidates_equals_the_refined_run(model):
    cam, uv, X, gt, depth = make_problems(5, 200, 0.5, noise=1.0, seed=21, model=model)
    full = pnp_ransac(uv, X, cam, seed=3)
    raw = pnp_ransac(uv, X, cam, seed=3, refine=False)
    assert torch.equal(raw.iterations, full.iterations)
    pick = torch.tensor([4, 1, 1])  # any subset, repeats allowed
    fin = pnp_finish(uv[pick], X[pick], cam[pick], raw.pose[pick])
    torch.testing.assert_close(fin.pose.data, full.pose.data[pick], atol=1e-9, rtol=0)
    assert torch.equal(fin.inliers, full.inliers[pick])
    assert torch.equal(fin.reason, full.reason[pick])
    torch.testing.assert_close(fin.covariance, full.covariance[pick])
    assert bool(recovered(fin.pose, gt[pick], depth[pick]).all())


def test_finish_fails_non_finite_poses_and_checks_its_pose():
    cam, uv, X, _, _ = make_problems(2, 50, 0.0, seed=2)
    raw = pnp_ransac(uv, X, cam, seed=0, refine=False)
    bad = Pose(torch.stack([raw.pose.data[0], torch.full_like(raw.pose.data[1], torch.nan)]))
    fin = pnp_finish(uv, X, cam, bad)
    assert fin.success.tolist() == [True, False]
    assert int(fin.reason[1]) == PnPReason.NO_HYPOTHESIS
    with pytest.raises(ShapeError, match=r"pose must be a Pose of batch shape \(2,\)"):
        pnp_finish(uv, X, cam, raw.pose[:1])
