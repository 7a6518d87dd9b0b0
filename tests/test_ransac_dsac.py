"""Differentiable RANSAC (DSAC*/ACE): gradients against finite differences, recovery of the
ground truth, the hypothesis filter, batching and seeding, masks, the pose loss, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from dgeo.errors import InputError, NonFiniteError, ShapeError
from dgeo.geometry import Camera, Pose
from dgeo.ransac.dsac import DSACResult, dsac_pnp, pose_loss_dsacstar, soft_inlier_scores

F64 = torch.float64
SIZE = torch.tensor([639.0, 479.0], dtype=F64)


def make_problem(B, N, noise=0.0, outliers=0.0, seed=0, dtype=F64, model="PINHOLE"):
    """Cameras (~640x480), N points 2-10 m in front, GT poses, observations with noise and a
    fraction of outliers displaced by 40-200 px. Returns cam, X, obs, gt, is_outlier, true uv."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=F64)  # noqa: E731
    randn = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    f = 450 + 150 * rand(B, 2)
    c = torch.tensor([319.5, 239.5], dtype=F64) + 10 * randn(B, 2)
    params = torch.cat([f, c], -1)
    if model == "OPENCV":
        params = torch.cat([params, torch.tensor([-0.2, 0.05, 1e-3, -1e-3]).expand(B, 4)], -1)
    cam = Camera(model, 640, 480, params)
    uv = rand(B, N, 2) * SIZE
    p_cam = cam.unproject(uv) * (2 + 8 * rand(B, N, 1))
    gt = Pose.from_axis_angle(math.pi * (2 * rand(B, 3) - 1), 3 * randn(B, 3))
    X = gt.inv().transform(p_cam)
    obs = uv + noise * randn(B, N, 2)
    out = rand(B, N) < outliers
    angle = 2 * math.pi * rand(B, N)
    shift = (40 + 160 * rand(B, N))[..., None] * torch.stack([angle.cos(), angle.sin()], -1)
    obs = torch.where(out[..., None], obs + shift, obs)
    cast = lambda t: t.to(dtype)  # noqa: E731
    return cam.to(dtype), cast(X), cast(obs), gt.to(dtype), out, cast(uv)


def pose_errors(a: Pose, b: Pose) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation error (degrees) and camera-centre distance (m)."""
    angle = (a @ b.inv()).magnitude()[0]
    return torch.rad2deg(angle), (a.center() - b.center()).norm(dim=-1)


def expected_loss(x, X, cam, gt, **kw) -> torch.Tensor:
    res = dsac_pnp(x, X, cam, pose_loss=lambda h: pose_loss_dsacstar(h, gt[:, None]), **kw)
    return res.expected_loss.sum()


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("refine_on", ["sample", "inliers"])
def test_expected_loss_gradients_match_central_differences(refine_on):
    cam, X, x, gt, _, _ = make_problem(2, 10, noise=1.0, outliers=0.1, seed=3)
    kw = dict(num_hypotheses=6, alpha=10.0, seeds=[5, 6], refine_on=refine_on)
    res = dsac_pnp(x, X, cam, pose_loss=lambda h: pose_loss_dsacstar(h, gt[:, None]), **kw)
    assert res.valid.all() and res.accepted.all()
    assert res.probabilities.amax(-1).max() < 0.99  # several hypotheses contribute
    xg, Xg = x.clone().requires_grad_(), X.clone().requires_grad_()
    gx, gX = torch.autograd.grad(expected_loss(xg, Xg, cam, gt, **kw), (xg, Xg))
    assert gx.abs().sum() > 0 and gX.abs().sum() > 0
    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for _ in range(3):  # directional derivatives along random directions of both inputs
        dx, dX = torch.randn(x.shape, generator=g, dtype=F64), torch.randn(X.shape, generator=g)
        dX = dX.to(F64)
        with torch.no_grad():
            for vx, vX in ((dx, 0 * dX), (0 * dx, dX)):
                fd = (
                    expected_loss(x + eps * vx, X + eps * vX, cam, gt, **kw)
                    - expected_loss(x - eps * vx, X - eps * vX, cam, gt, **kw)
                ) / (2 * eps)
                ad = (gx * vx).sum() + (gX * vX).sum()
                assert abs(float(ad - fd)) <= 1e-4 * abs(float(fd)) + 1e-9, (float(ad), float(fd))


def test_scores_carry_gradient_without_refinement():
    cam, X, x, _, _, _ = make_problem(1, 20, noise=1.0, seed=1)
    xg = x.clone().requires_grad_()
    res = dsac_pnp(xg, X, cam, refine_iterations=0, num_hypotheses=4, seeds=0)
    assert not res.hypotheses.data.requires_grad
    (g,) = torch.autograd.grad(res.scores.sum(), xg)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


# ---------------------------------------------------------------------------- accuracy
def test_argmax_recovers_ground_truth_on_clean_data():
    cam, X, x, gt, _, _ = make_problem(3, 60, seed=0)
    res = dsac_pnp(x, X, cam, pose_loss=lambda h: pose_loss_dsacstar(h, gt[:, None]), seeds=7)
    assert isinstance(res, DSACResult)
    assert res.hypotheses.shape == (3, 64) and res.scores.shape == (3, 64)
    assert res.errors.shape == (3, 64, 60) and res.samples.shape == (3, 64, 4)
    assert res.valid.all() and res.accepted.all() and res.success.all()
    assert torch.allclose(res.probabilities.sum(-1), torch.ones(3, dtype=F64))
    assert (res.inliers[torch.arange(3), res.index] == 60).all()
    rot, pos = pose_errors(res.pose, gt)
    assert rot.max() < 1e-6 and pos.max() < 1e-8
    # every hypothesis is exact, so the expected loss is ~0
    assert res.expected_loss.abs().max() < 1e-5
    # samples are 4 distinct points
    s = res.samples.sort(-1).values
    assert (s[..., 1:] != s[..., :-1]).all()


def test_distorted_camera_and_float32():
    cam, X, x, gt, _, _ = make_problem(2, 40, noise=0.3, seed=2, model="OPENCV")
    res = dsac_pnp(x, X, cam, seeds=[1, 2])
    rot, pos = pose_errors(res.pose, gt)
    assert rot.max() < 0.5 and pos.max() < 0.05
    cam32, X32, x32, gt32, _, _ = make_problem(2, 40, noise=0.3, seed=2, dtype=torch.float32)
    res = dsac_pnp(x32, X32, cam32, seeds=[1, 2])
    assert res.hypotheses.dtype == torch.float32 and res.scores.dtype == torch.float32
    rot, pos = pose_errors(res.pose.double(), gt32.double())
    assert rot.max() < 0.5 and pos.max() < 0.05


# ---------------------------------------------------------------------------- outliers, filter
def test_filter_rejects_sets_with_outliers():
    cam, X, x, gt, out, uv = make_problem(2, 60, noise=0.5, outliers=0.4, seed=4)
    res = dsac_pnp(x, X, cam, seeds=[3, 4])
    assert res.accepted.all()
    bi = torch.arange(2)[:, None, None]
    contaminated = out[bi, res.samples]  # (B, H, 4)
    # an outlier as the 4th point never passes; among the 3 P3P points it yields a wrong pose
    # that only rarely reprojects the 4th point within the threshold (then it scores low)
    assert not contaminated[..., 3].any()
    assert contaminated.any(-1).float().mean() < 0.1
    bad = contaminated.any(-1)
    assert (res.probabilities[bad] < 1e-6).all()
    assert (res.tries > 1).any()  # rejected sets were redrawn
    assert (res.inliers[torch.arange(2), res.index] >= (~out).sum(-1) - 2).all()
    rot, pos = pose_errors(res.pose, gt)
    assert rot.max() < 0.5 and pos.max() < 0.05

    unfiltered = dsac_pnp(x, X, cam, seeds=[3, 4], filter_hypotheses=False)
    # without the filter a set is redrawn only when P3P has no solution
    assert unfiltered.accepted.all() and (unfiltered.tries == 1).float().mean() > 0.9
    assert out[bi, unfiltered.samples].any(-1).float().mean() > 0.5

    # 4 valid points, one an outlier: no ordering of the only possible set passes
    mask = torch.zeros(2, 60, dtype=torch.bool)
    mask[:, :4] = True
    x4 = x.clone()
    x4[:, 0] = uv[:, 0] + torch.tensor([60.0, -45.0], dtype=F64)
    x4[:, 1:4] = uv[:, 1:4]
    four = dsac_pnp(x4, X, cam, mask, num_hypotheses=8, seeds=[1, 2], max_tries=48)
    assert not four.accepted.any() and (four.tries == 48).all()
    x4[:, 0] = uv[:, 0]
    four = dsac_pnp(x4, X, cam, mask, num_hypotheses=8, seeds=[1, 2], max_tries=48)
    assert four.accepted.all()

    # a cap on the tries: hypotheses that never pass keep their best try, flagged
    capped = dsac_pnp(x, X, cam, seeds=[3, 4], max_tries=1)
    assert (capped.tries == 1).all() and (capped.valid & ~capped.accepted).any()
    assert not (capped.accepted & ~capped.valid).any()


def test_outliers_moved_to_their_true_positions_lower_the_expected_loss():
    cam, X, x, gt, out, uv = make_problem(4, 50, noise=1.0, outliers=0.4, seed=5)
    kw = dict(num_hypotheses=32, alpha=10.0, seeds=[1, 2, 3, 4], max_tries=64)

    def loss(x):
        res = dsac_pnp(x, X, cam, pose_loss=lambda h: pose_loss_dsacstar(h, gt[:, None]), **kw)
        return res.expected_loss

    before, after = loss(x), loss(torch.where(out[..., None], uv, x))
    assert (after < before).all()


def test_gradient_step_on_points2D_lowers_the_expected_loss():
    cam, X, x, gt, _, _ = make_problem(3, 40, noise=2.0, outliers=0.3, seed=6)
    kw = dict(num_hypotheses=16, alpha=10.0, seeds=[7, 8, 9])
    xg = x.clone().requires_grad_()
    L0 = expected_loss(xg, X, cam, gt, **kw)
    (g,) = torch.autograd.grad(L0, xg)
    step = 0.05 / g.abs().max()  # at most 0.05 px per coordinate
    with torch.no_grad():
        L1 = expected_loss(x - step * g, X, cam, gt, **kw)
        L2 = expected_loss(x + step * g, X, cam, gt, **kw)
    assert L1 < L0.detach() < L2


# ---------------------------------------------------------------------------- batching, seeds
def test_batch_equals_one_by_one_with_the_same_seeds():
    cam, X, x, gt, _, _ = make_problem(3, 30, noise=1.0, outliers=0.3, seed=7)
    mask = torch.rand(3, 30, generator=torch.Generator().manual_seed(1)) > 0.1
    seeds = torch.tensor([11, -5, 2**40 + 3])
    loss = lambda h: pose_loss_dsacstar(h, gt[:, None])  # noqa: E731
    batch = dsac_pnp(x, X, cam, mask, loss, num_hypotheses=16, seeds=seeds, tries_per_round=3)
    for b in range(3):
        one = dsac_pnp(
            x[b : b + 1],
            X[b : b + 1],
            cam[b : b + 1],
            mask[b : b + 1],
            lambda h, b=b: pose_loss_dsacstar(h, gt[b : b + 1, None]),
            num_hypotheses=16,
            seeds=seeds[b : b + 1],
        )
        assert torch.equal(one.samples[0], batch.samples[b])
        assert torch.equal(one.tries[0], batch.tries[b])
        assert torch.equal(one.accepted[0], batch.accepted[b])
        assert torch.allclose(one.hypotheses.data[0], batch.hypotheses.data[b], atol=1e-9)
        assert torch.allclose(one.scores[0], batch.scores[b], atol=1e-9)
        assert torch.allclose(one.expected_loss[0], batch.expected_loss[b], atol=1e-9)
        assert int(one.index[0]) == int(batch.index[b])
        assert mask[b][one.samples[0]].all()  # masked points are never sampled


def test_generator_seeding_is_deterministic():
    cam, X, x, _, _, _ = make_problem(2, 30, noise=1.0, outliers=0.3, seed=8)
    run = lambda s: dsac_pnp(  # noqa: E731
        x, X, cam, num_hypotheses=8, generator=torch.Generator().manual_seed(s)
    )
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.hypotheses.data, b.hypotheses.data)
    assert not torch.equal(a.samples, c.samples)
    # an int seed is shared by all queries: equal queries get equal samples
    same = dsac_pnp(x[:1].expand(2, -1, -1), X[:1].expand(2, -1, -1), cam[0], seeds=3)
    assert torch.equal(same.samples[0], same.samples[1])


def test_padding_under_the_mask_changes_nothing():
    cam, X, x, _, _, _ = make_problem(1, 25, noise=1.0, outliers=0.2, seed=9)
    Xp = torch.cat([X, 1e3 * torch.ones(1, 7, 3, dtype=F64)], 1)
    xp = torch.cat([x, torch.zeros(1, 7, 2, dtype=F64)], 1)
    mask = torch.arange(32)[None] < 25
    a = dsac_pnp(x, X, cam, num_hypotheses=16, seeds=4)
    b = dsac_pnp(xp, Xp, cam, mask, num_hypotheses=16, seeds=4)
    assert torch.equal(a.samples, b.samples)
    assert torch.allclose(a.scores, b.scores, atol=1e-9)
    assert (b.inliers <= 25).all()


def test_no_valid_hypothesis_keeps_the_loss_finite():
    cam, X, x, gt, _, _ = make_problem(2, 12, seed=10)
    line = torch.linspace(0, 1, 12, dtype=F64)[:, None] * torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    X = torch.stack([X[0], line])  # query 1: collinear world points, P3P has no solution
    xg = x.clone().requires_grad_()
    loss = lambda h: pose_loss_dsacstar(h, gt[:, None])  # noqa: E731
    res = dsac_pnp(xg, X, cam, pose_loss=loss, num_hypotheses=8, seeds=0, max_tries=8)
    assert res.success.tolist() == [True, False] and not res.valid[1].any()
    assert (res.probabilities[1] == 0).all() and res.expected_loss[1] == 0
    (g,) = torch.autograd.grad(res.expected_loss.sum(), xg)
    assert torch.isfinite(g).all()


# ---------------------------------------------------------------------------- scores, loss
def test_soft_inlier_scores_follow_the_formula():
    cam, X, x, gt, _, _ = make_problem(2, 5, seed=11)
    x = x + torch.tensor([0.0, 3.0, 12.0, 150.0, 0.5], dtype=F64)[None, :, None]
    mask = torch.tensor([[True, True, True, True, False]] * 2)
    scores, err = soft_inlier_scores(gt[:, None], x, X, cam, mask, threshold_px=10.0, alpha=100)
    e = torch.tensor([0.0, 3.0 * 2**0.5, 12.0 * 2**0.5, 100.0, 0.5 * 2**0.5], dtype=F64)
    assert torch.allclose(err[:, 0], e.expand(2, 5), atol=1e-6)
    want = 100 / 4 * torch.sigmoid(0.5 * (10 - e[:4])).sum()
    assert torch.allclose(scores[:, 0], want.expand(2), atol=1e-6)
    flip = Pose.from_Rt(torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64)), [0.0, 0, 0])
    _, err = soft_inlier_scores((flip @ gt)[:, None], x, X, cam)
    assert (err == 100).all()  # behind the camera: the clamp
    with pytest.raises(ShapeError):
        soft_inlier_scores(gt, x, X, cam)


def test_pose_loss_dsacstar():
    gt = Pose.from_axis_angle(torch.tensor([[0.1, -0.2, 0.3]], dtype=F64), [[1.0, 2.0, 3.0]])
    assert torch.allclose(pose_loss_dsacstar(gt, gt), torch.zeros(1, dtype=F64))
    # a rotation about the camera centre: 10 degrees, no translation error
    rot = Pose.from_axis_angle(torch.tensor([0.0, 0.0, math.radians(10)], dtype=F64), [0, 0, 0])
    est = rot @ gt
    assert torch.allclose(pose_loss_dsacstar(est, gt), torch.tensor([10.0], dtype=F64))
    # a centre moved by 0.5 m: 50; by 2 m: 200, soft-clamped to sqrt(100 * 200)
    for d, want in ((0.5, 50.0), (2.0, 200.0**0.5 * 10)):
        moved = Pose.from_Rt(gt.R, gt.t - (gt.R @ torch.tensor([0.3, 0.0, 0.4], dtype=F64)) * 2 * d)
        assert torch.allclose(pose_loss_dsacstar(moved, gt), torch.tensor([want], dtype=F64))
    # finite gradients, the exact pose included, and broadcasting (B, H) vs (B, 1)
    data = torch.stack([gt.data, est.data], 1).requires_grad_()
    loss = pose_loss_dsacstar(Pose(data), gt[:, None])
    assert loss.shape == (1, 2)
    (g,) = torch.autograd.grad(loss.sum(), data)
    assert torch.isfinite(g).all()
    xi = torch.tensor([[0.2, -0.1, 0.3, 0.05, 0.1, -0.2]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: pose_loss_dsacstar(gt.retract(v), gt), (xi,))
    with pytest.raises(InputError):
        pose_loss_dsacstar(gt.data, gt)


# ---------------------------------------------------------------------------- bad input
def test_bad_input_raises_dgeo_errors():
    cam, X, x, gt, _, _ = make_problem(2, 10, seed=12)
    with pytest.raises(ShapeError):
        dsac_pnp(x[:, :9], X, cam)
    with pytest.raises(ShapeError):
        dsac_pnp(x[..., :1], X, cam)
    with pytest.raises(ShapeError):
        dsac_pnp(x[0], X[0], cam)
    with pytest.raises(ShapeError):
        dsac_pnp(x, X, Camera.stack([cam[0]] * 3))
    with pytest.raises(InputError):
        dsac_pnp(x, X, cam.K)
    with pytest.raises(InputError):
        dsac_pnp(x.long(), X, cam)
    with pytest.raises(InputError):
        dsac_pnp(x.float(), X, cam)
    bad = x.clone()
    bad[0, 0, 0] = math.nan
    with pytest.raises(NonFiniteError):
        dsac_pnp(bad, X, cam)
    with pytest.raises(InputError):
        dsac_pnp(x, X, cam, torch.ones(2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 3:] = False
    with pytest.raises(InputError, match=r"\[1\]"):
        dsac_pnp(x, X, cam, mask)
    for kw in (
        dict(num_hypotheses=0),
        dict(threshold_px=0.0),
        dict(beta=-1.0),
        dict(alpha=-1.0),
        dict(max_reprojection=0.0),
        dict(max_tries=0),
        dict(refine_iterations=-1),
        dict(refine_on="all"),
        dict(seeds=[1, 2, 3]),
        dict(seeds=[0.5, 1.5]),
    ):
        with pytest.raises(InputError):
            dsac_pnp(x, X, cam, **kw)
    with pytest.raises(ShapeError):
        dsac_pnp(x, X, cam, pose_loss=lambda h: pose_loss_dsacstar(h, gt[:, None])[:, 0])
