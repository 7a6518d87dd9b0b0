import importlib
import math

import numpy as np
import pytest
import torch

from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Pose
from dgeo.pnp import p3p


def random_problems(n, seed=0, dtype=torch.float64, fov_deg=70.0, depth=(2.0, 20.0)):
    """``n`` P3P problems seen by random cameras: unit rays, world points and the true poses."""
    g = torch.Generator().manual_seed(seed)
    pose = Pose.from_axis_angle(
        torch.randn(n, 3, generator=g, dtype=torch.float64) * 2,
        torch.randn(n, 3, generator=g, dtype=torch.float64) * 3,
    )
    half = math.tan(math.radians(fov_deg) / 2)
    xy = (torch.rand(n, 3, 2, generator=g, dtype=torch.float64) * 2 - 1) * half
    d = depth[0] + (depth[1] - depth[0]) * torch.rand(n, 3, 1, generator=g, dtype=torch.float64)
    P = torch.cat([xy, torch.ones(n, 3, 1, dtype=torch.float64)], -1) * d
    X = pose.inv().transform(P)
    rays = P / P.norm(dim=-1, keepdim=True)
    return rays.to(dtype), X.to(dtype), pose


def pose_error(poses, valid, gt):
    """Per problem, the smallest max-abs difference (R, and t relative to max(1, |t|)) between
    the ground truth and a valid solution; inf where no solution is valid."""
    R, t = poses.R.double(), poses.t.double()
    scale = gt.t.norm(dim=-1, keepdim=True).clamp_min(1)
    err = (R - gt.R[..., None, :, :]).flatten(-2).abs().amax(-1)
    err = err + ((t - gt.t[..., None, :]).abs().amax(-1) / scale)
    return torch.where(valid, err, torch.inf).amin(-1)


def check_solutions(poses, valid, rays, X, tol):
    """Every valid solution is a rotation and puts each point in front, along its ray."""
    R, t = poses.R.double()[valid], poses.t.double()[valid]
    eye = torch.eye(3, dtype=torch.float64)
    assert (R.transpose(-1, -2) @ R - eye).abs().max() < tol
    assert (torch.linalg.det(R) - 1).abs().max() < tol
    Xv = X.double()[..., None, :, :].expand(*valid.shape, 3, 3)[valid]
    yv = rays.double()[..., None, :, :].expand(*valid.shape, 3, 3)[valid]
    P = Xv @ R.transpose(-1, -2) + t[:, None]
    depth = P.norm(dim=-1)
    cos = (P * yv).sum(-1) / (depth * yv.norm(dim=-1))
    assert (cos > 1 - tol).all()  # along the ray, in front of the camera


def test_equilateral_triangle_closed_form():
    # An equilateral triangle seen head-on is symmetric: D1 and D2 are both degenerate (the
    # cubic loses its leading and constant terms), and the problem has 4 solutions.
    X = torch.tensor(
        [[math.cos(a), math.sin(a), 0.0] for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)],
        dtype=torch.float64,
    )
    gt = Pose.from_Rt(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 5.0]))
    P = gt.transform(X)
    poses, valid = p3p(P * torch.tensor([[2.0], [0.5], [3.0]], dtype=torch.float64), X)
    assert poses.shape == (4,) and valid.shape == (4,)
    assert int(valid.sum()) == 4
    assert float(pose_error(poses, valid, gt)) < 1e-9
    # the same triangle from a generic pose: the GT is among the solutions to rounding
    gt = Pose.from_axis_angle([0.3, -0.2, 0.1], [0.5, -0.2, 6.0])  # float64
    poses, valid = p3p(gt.transform(X), X)
    assert float(pose_error(poses, valid, gt)) < 1e-9
    check_solutions(poses, valid, gt.transform(X), X, 1e-12)


def test_random_problems_match_ground_truth_and_poselib():
    poselib = pytest.importorskip("poselib")
    rays, X, gt = random_problems(1000, seed=1)
    poses, valid = p3p(rays, X)
    assert poses.dtype == torch.float64
    err = pose_error(poses, valid, gt)
    assert float(err.max()) < 1e-6
    check_solutions(poses, valid, rays, X, 1e-9)

    Rs, ts, v = poses.R.numpy(), poses.t.numpy(), valid.numpy()
    count_differs = unmatched = 0
    for i in range(len(rays)):
        ref = poselib.p3p(rays[i].numpy(), X[i].numpy())
        ref = [s for s in ref if np.isfinite(s.R).all() and np.isfinite(s.t).all()]
        mine = [(Rs[i, k], ts[i, k]) for k in range(4) if v[i, k]]
        count_differs += len(ref) != len(mine)
        for s in ref:
            d = [
                np.abs(s.R - R).max() + np.abs(s.t - t).max() / max(1, np.abs(t).max())
                for R, t in mine
            ]
            unmatched += min(d, default=np.inf) > 1e-6
    # near-double roots may split or merge differently; they are rare
    assert count_differs < 10
    assert unmatched < 10
    assert int(valid.sum()) > 1500  # about 1.8 solutions per problem


@pytest.mark.parametrize("fov_deg", [70.0, 150.0])
def test_float32_accuracy(fov_deg):
    rays, X, gt = random_problems(1000, seed=2, fov_deg=fov_deg)
    poses, valid = p3p(rays.float(), X.float())
    assert poses.dtype == torch.float32 and valid.dtype == torch.bool
    err = pose_error(poses, valid, gt)
    assert float((err < 1e-3).float().mean()) >= 0.99
    assert float(err.median()) < 1e-5
    check_solutions(poses, valid, rays, X, 1e-5)
    # float64 on the same (rounded) input is exact to rounding of the input
    poses64, valid64 = p3p(rays.float().double(), X.float().double())
    assert float((pose_error(poses64, valid64, gt) < 1e-3).float().mean()) >= 0.995


def test_batch_shapes_equal_one_by_one():
    rays, X, _ = random_problems(60, seed=3)
    rays, X = rays.view(4, 15, 3, 3), X.view(4, 15, 3, 3)
    poses, valid = p3p(rays, X)
    assert poses.shape == (4, 15, 4) and valid.shape == (4, 15, 4)
    for i in range(4):
        for j in range(15):
            p, v = p3p(rays[i, j], X[i, j])  # batch shape ()
            assert p.shape == (4,) and v.shape == (4,)
            assert torch.equal(v, valid[i, j])
            torch.testing.assert_close(p.data, poses.data[i, j], rtol=0, atol=1e-12)
    # leading shapes broadcast; empty batches work
    p, v = p3p(rays[0, 0], X)
    assert p.shape == (4, 15, 4)
    assert torch.equal(v[0, 0], valid[0, 0])
    assert p3p(rays[:0], X[:0])[0].shape == (0, 15, 4)


def test_cpu_chunks_do_not_change_results(monkeypatch):
    module = importlib.import_module("dgeo.pnp.p3p")  # dgeo.pnp.p3p is the function

    rays, X, _ = random_problems(100, seed=4)
    poses, valid = p3p(rays, X)
    monkeypatch.setattr(module, "_CPU_CHUNK_BYTES", 4 * 8 * 7)  # chunks of 7 problems
    poses7, valid7 = p3p(rays, X)
    assert torch.equal(valid, valid7)
    torch.testing.assert_close(poses.data, poses7.data, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_degenerate_inputs_are_invalid_and_finite(dtype):
    g = torch.Generator().manual_seed(5)
    y = torch.randn(3, 3, generator=g, dtype=torch.float64)
    X = torch.randn(3, 3, generator=g, dtype=torch.float64)
    nan_at = torch.arange(9).view(3, 3) == 4
    cases = [
        (y, torch.stack([X[0], X[0] + X[1], X[0] + 2 * X[1]])),  # collinear points
        (y, torch.stack([X[0], X[0], X[1]])),  # coincident points
        (y, X[0].expand(3, 3)),  # one point thrice
        (y, torch.where(nan_at, torch.nan, X)),
        (y, torch.where(nan_at, torch.inf, X)),
        (torch.where(nan_at, torch.nan, y), X),
        (torch.where(nan_at, -torch.inf, y), X),
        (torch.cat([torch.zeros(1, 3, dtype=torch.float64), y[1:]]), X),  # zero ray
        (torch.zeros(3, 3), torch.zeros(3, 3)),
        (y[0].expand(3, 3), X),  # one ray thrice
    ]
    rays = torch.stack([c[0].to(torch.float64) for c in cases]).to(dtype)
    points = torch.stack([c[1].to(torch.float64) for c in cases]).to(dtype)
    poses, valid = p3p(rays, points)
    assert not valid.any()
    assert torch.isfinite(poses.data).all()
    ident = Pose.identity((len(cases), 4), dtype=dtype).data
    assert torch.equal(poses.data, ident)
    # a degenerate problem does not disturb its neighbours in the batch
    good_rays, good_X, gt = random_problems(1, seed=6, dtype=dtype)
    poses, valid = p3p(torch.cat([rays, good_rays]), torch.cat([points, good_X]))
    assert not valid[:-1].any()
    assert float(pose_error(poses[-1:], valid[-1:], gt)) < (
        1e-9 if dtype == torch.float64 else 1e-3
    )


def test_gradients_are_the_implicit_derivatives():
    rays, X, gt = random_problems(3, seed=7)
    poses, valid = p3p(rays, X)
    err = (poses.R - gt.R[:, None]).flatten(-2).abs().amax(-1)
    err = err + (poses.t - gt.t[:, None]).abs().amax(-1)
    k = torch.where(valid, err, torch.inf).argmin(-1)
    # the ground-truth solution of each problem, as a function of the inputs
    w = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(8))

    def loss(r, x):
        p, v = p3p(r, x)
        assert torch.equal(v, valid)
        return (p.data[torch.arange(3), k] * w).sum()

    r, x = rays.clone().requires_grad_(True), X.clone().requires_grad_(True)
    value = loss(r, x)
    value.backward()
    assert torch.allclose(value, loss(rays, X).detach(), rtol=0, atol=1e-12)
    h = 1e-6
    for inp, grad in ((0, r.grad), (1, x.grad)):
        fd = torch.zeros(27, dtype=torch.float64)
        for i in range(27):
            e = torch.zeros(27, dtype=torch.float64)
            e[i] = h
            e = e.view(3, 3, 3)
            plus = loss(rays + e, X) if inp == 0 else loss(rays, X + e)
            minus = loss(rays - e, X) if inp == 0 else loss(rays, X - e)
            fd[i] = (plus - minus) / (2 * h)
        torch.testing.assert_close(grad.flatten(), fd, rtol=1e-6, atol=1e-6)


def test_half_precision_and_errors():
    rays, X, gt = random_problems(50, seed=9)
    poses, valid = p3p(rays.half(), X.half())
    assert poses.dtype == torch.float16
    assert float((pose_error(poses, valid, gt) < 3e-2).float().mean()) > 0.9
    with pytest.raises(ShapeError):
        p3p(rays[..., :2], X)
    with pytest.raises(ShapeError):
        p3p(rays[:4], X[:5])
    with pytest.raises(InputError):
        p3p(rays.long(), X)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(dtype):
    rays, X, _ = random_problems(2000, seed=10, dtype=dtype)
    poses, valid = p3p(rays.cuda(), X.cuda())
    assert poses.device.type == "cuda" and valid.device.type == "cuda"
    ref, ref_valid = p3p(rays, X)
    agree = (valid.cpu() == ref_valid).all(-1)
    assert float(agree.float().mean()) > 0.995
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    err = (poses.data.cpu() - ref.data).abs().amax((-1, -2))
    assert float(err[agree].max()) < tol
