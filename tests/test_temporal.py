"""Tests of dgeo.temporal: the per-pixel Kalman filter (KFNet, ALGORITHMS 2.9) and the SE(3)
constant-velocity pose filter."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dgeo.errors import InputError
from dgeo.geometry import Pose
from dgeo.temporal import (
    CHI2_3_95,
    INVALID_VARIANCE,
    KalmanPrior,
    PixelKalmanFilter,
    PoseFilter,
    filter_poses,
    initial_state,
    kalman_predict,
    kalman_update,
    nis_consistency,
)

TUM_GT = Path(__file__).resolve().parents[2] / "shared/data/tum_fr3_long_office/groundtruth.txt"
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, g, dtype=F64):
    return torch.randn(*shape, generator=g, dtype=dtype)


def _rand(*shape, g, dtype=F64):
    return torch.rand(*shape, generator=g, dtype=dtype)


def _prior(mean, var, valid=None):
    if valid is None:
        valid = torch.ones(mean.shape[0], *mean.shape[2:], dtype=torch.bool)
    return KalmanPrior(mean, var, valid)


# ============================================================================ Kalman update
def test_update_matches_scalar_closed_form():
    g = _gen(0)
    b, h, w = 2, 4, 5
    ym, z = _randn(b, 3, h, w, g=g), _randn(b, 3, h, w, g=g)
    P, R = 0.01 + _rand(b, 1, h, w, g=g), 0.01 + _rand(b, 1, h, w, g=g)
    step = kalman_update(_prior(ym, P), z, R, gate=None)
    yn, Pn, Rn, zn = ym.numpy(), P.numpy(), R.numpy(), z.numpy()
    K = Pn / (Pn + Rn)
    np.testing.assert_allclose(step.gain.numpy(), K, rtol=1e-12)
    np.testing.assert_allclose(step.mean.numpy(), yn + K * (zn - yn), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(step.var.numpy(), (1 - K) * Pn, rtol=1e-12)
    np.testing.assert_allclose(step.innovation.numpy(), zn - yn, rtol=1e-12)
    np.testing.assert_allclose(step.S.numpy(), Pn + Rn, rtol=1e-12)
    nis = ((zn - yn) ** 2).sum(1) / (Pn + Rn)[:, 0]
    np.testing.assert_allclose(step.nis.numpy(), nis, rtol=1e-12)
    assert step.valid.all() and step.checked.all() and not step.gated.any()
    torch.testing.assert_close(step.output, step.mean)


def test_update_variance_floor_and_validity_cases():
    b, h, w = 1, 1, 4
    ym = torch.full((b, 3, h, w), 1.0, dtype=F64)
    z = torch.full((b, 3, h, w), 2.0, dtype=F64)
    P = torch.full((b, 1, h, w), 0.04, dtype=F64)
    R = torch.full((b, 1, h, w), 0.01, dtype=F64)
    R[..., 0] = 0.0  # floored to 1e-10
    pvalid = torch.tensor([[[True, False, True, False]]])
    zvalid = torch.tensor([[[True, True, False, False]]])
    step = kalman_update(_prior(ym, P, pvalid), z, R, zvalid, gate=None)
    # both valid, R floored: posterior ~ z, var ~ 1e-10
    assert step.var[0, 0, 0, 0] == pytest.approx(0.04 * 1e-10 / (0.04 + 1e-10))
    assert step.var.min() >= 0.99e-10
    # measurement only: gain 1, posterior = z, var = R
    assert step.gain[0, 0, 0, 1] == 1.0 and step.var[0, 0, 0, 1] == 0.01
    torch.testing.assert_close(step.mean[..., 1], z[..., 1])
    # prior only: kept
    assert step.gain[0, 0, 0, 2] == 0.0 and step.var[0, 0, 0, 2] == 0.04
    torch.testing.assert_close(step.mean[..., 2], ym[..., 2])
    # neither: invalid with the fill values, no NaN/inf anywhere
    assert step.valid.tolist() == [[[True, True, True, False]]]
    assert step.var[0, 0, 0, 3] == INVALID_VARIANCE
    assert step.checked.tolist() == [[[True, False, False, False]]]
    for f in ("mean", "var", "output", "output_var", "innovation", "S", "nis", "gain"):
        assert torch.isfinite(getattr(step, f)).all(), f


def test_monte_carlo_posterior_variance_matches_empirical():
    g = _gen(1)
    b, h, w = 1, 100, 200  # 20000 cells x 3 axes
    truth = _randn(b, 3, h, w, g=g)
    # fixed variances: empirical variance of the fused estimate
    P, R = 0.04, 0.01
    prior_mean = truth + math.sqrt(P) * _randn(b, 3, h, w, g=g)
    z = truth + math.sqrt(R) * _randn(b, 3, h, w, g=g)
    Pm, Rm = torch.full((b, 1, h, w), P, dtype=F64), torch.full((b, 1, h, w), R, dtype=F64)
    step = kalman_update(_prior(prior_mean, Pm), z, Rm)
    emp = (step.mean - truth).square().mean().item()
    assert emp == pytest.approx(P * R / (P + R), rel=0.03)
    assert step.var.unique().item() == pytest.approx(P * R / (P + R), rel=1e-12)
    # per-cell variances: normalised squared errors average 1
    Pc, Rc = 0.001 + 0.1 * _rand(b, 1, h, w, g=g), 0.001 + 0.1 * _rand(b, 1, h, w, g=g)
    prior_mean = truth + Pc.sqrt() * _randn(b, 3, h, w, g=g)
    z = truth + Rc.sqrt() * _randn(b, 3, h, w, g=g)
    step = kalman_update(_prior(prior_mean, Pc), z, Rc)
    assert ((step.mean - truth).square() / step.var).mean().item() == pytest.approx(1.0, rel=0.03)
    # consistent filter: ~80 % of per-axis NIS inside (0.0157, 2.706), ~5 % gated
    assert nis_consistency(step) == pytest.approx(0.8, abs=0.01)
    assert nis_consistency(step.axis_nis, step.checked) == nis_consistency(step)
    assert step.gated.double().mean().item() == pytest.approx(0.05, abs=0.005)
    # the gate changes the output, never the state
    torch.testing.assert_close(step.output[:, :, ~step.gated[0]], step.mean[:, :, ~step.gated[0]])


def test_gate_replaces_output_and_keeps_posterior_state():
    b, h, w = 1, 2, 2
    ym = torch.zeros(b, 3, h, w, dtype=F64)
    z = torch.full((b, 3, h, w), 0.05, dtype=F64)
    z[0, :, 1, 1] = torch.tensor([3.0, -2.0, 1.0])  # outlier
    P = torch.full((b, 1, h, w), 0.01, dtype=F64)
    R = torch.full((b, 1, h, w), 0.02, dtype=F64)
    step = kalman_update(_prior(ym, P), z, R)
    assert step.gated.tolist() == [[[False, False], [False, True]]]
    assert step.nis[0, 1, 1] == pytest.approx(14.0 / 0.03) and step.nis[0, 0, 0] < CHI2_3_95
    torch.testing.assert_close(step.output[0, :, 1, 1], z[0, :, 1, 1])
    assert step.output_var[0, 0, 1, 1] == 0.02
    K = 0.01 / 0.03
    torch.testing.assert_close(step.mean[0, :, 1, 1], K * z[0, :, 1, 1])
    assert step.var[0, 0, 1, 1] == pytest.approx(0.01 * 0.02 / 0.03)
    torch.testing.assert_close(step.output[0, :, 0, 0], step.mean[0, :, 0, 0])
    # the gate is off with gate=None
    assert not kalman_update(_prior(ym, P), z, R, gate=None).gated.any()
    # and the next prediction starts from the posterior, not from the measurement
    nxt = kalman_predict(step.mean, step.var, step.valid, None, 0.0)
    torch.testing.assert_close(nxt.mean, step.mean)


# ============================================================================ predict
@pytest.mark.parametrize(
    ("dx", "dy", "shifts", "dim", "border"),
    [(1, 0, -1, -1, (slice(None), -1)), (0, -1, 1, -2, (0, slice(None))), (-2, 0, 2, -1, None)],
)
def test_predict_integer_shift_is_a_roll_with_invalid_border(dx, dy, shifts, dim, border):
    g = _gen(2)
    b, h, w = 2, 5, 6
    mean = _randn(b, 3, h, w, g=g) + 5.0  # far from zero: leaked zeros would show
    var = 0.01 + _rand(b, 1, h, w, g=g)
    flow = torch.zeros(b, 2, h, w, dtype=F64)
    flow[:, 0], flow[:, 1] = dx, dy
    prior = kalman_predict(mean, var, None, flow, 1e-4)
    expect_valid = torch.ones(b, h, w, dtype=torch.bool)
    if border is not None:
        expect_valid[(slice(None), *border)] = False
    else:
        expect_valid[..., :2] = False
    assert torch.equal(prior.valid, expect_valid)
    m = expect_valid[:, None]
    rolled_mean = torch.roll(mean, shifts, dim)
    rolled_var = torch.roll(var, shifts, dim) + 1e-4
    torch.testing.assert_close(prior.mean.masked_select(m), rolled_mean.masked_select(m))
    torch.testing.assert_close(prior.var.masked_select(m), rolled_var.masked_select(m))
    assert (prior.var.masked_select(~m) == INVALID_VARIANCE).all()
    # KFNet bug: out-of-frame priors were (0, 0, 0) and pulled the estimate towards 0; here the
    # posterior of an invalid-prior cell is exactly the measurement (gain 1)
    z = mean + 0.01 * _randn(b, 3, h, w, g=g)
    R = torch.full_like(var, 0.02)
    step = kalman_update(prior, z, R)
    mi = ~expect_valid[:, None]
    torch.testing.assert_close(step.mean.masked_select(mi), z.masked_select(mi), rtol=0, atol=0)
    assert (step.gain.masked_select(mi) == 1).all()
    assert (step.var.masked_select(mi) == 0.02).all()


def test_predict_warps_variance_not_sigma_and_respects_source_validity():
    b, h, w = 1, 1, 4
    mean = torch.arange(12, dtype=F64).reshape(1, 3, 1, 4)
    var = torch.tensor([0.01, 0.09, 0.25, 0.49], dtype=F64).reshape(1, 1, 1, 4)
    valid = torch.tensor([[[True, True, False, True]]])
    flow = torch.zeros(b, 2, h, w, dtype=F64)
    flow[:, 0] = 0.5
    prior = kalman_predict(mean, var, valid, flow, None)
    # cell 0 blends cells 0, 1: variance averaged (not sigma, which would give 0.04)
    assert prior.var[0, 0, 0, 0].item() == pytest.approx(0.05 + 1e-10)
    torch.testing.assert_close(prior.mean[0, :, 0, 0], mean[0, :, 0, :2].mean(-1))
    # cells 1, 2 blend the invalid cell 2; cell 3 leaves the frame
    assert prior.valid.tolist() == [[[True, False, False, False]]]
    # NaN in an invalid source cell never reaches valid cells
    mean_nan = mean.clone()
    mean_nan[..., 2] = float("nan")
    prior2 = kalman_predict(mean_nan, var, valid, flow, None)
    torch.testing.assert_close(prior2.mean, prior.mean)
    assert torch.isfinite(prior2.mean).all() and torch.isfinite(prior2.var).all()


def test_gradcheck_through_predict_and_update_with_invalid_cells():
    g = _gen(3)
    b, h, w = 1, 4, 6
    mean = _randn(b, 3, h, w, g=g).requires_grad_()
    var = (0.05 + 0.1 * _rand(b, 1, h, w, g=g)).requires_grad_()
    flow = 0.3 * torch.ones(b, 2, h, w, dtype=F64)
    flow[0, 0, :, 0] = -0.6  # column 0 reads out of frame
    flow = (flow + 0.05 * _rand(b, 2, h, w, g=g)).requires_grad_()
    q = (0.01 * _rand(b, 1, h, w, g=g)).requires_grad_()
    z = (mean.detach() + 0.1 * _randn(b, 3, h, w, g=g)).requires_grad_()
    var_z = (0.05 + 0.1 * _rand(b, 1, h, w, g=g)).requires_grad_()
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[0, 2, 3] = False  # invalid source cell
    z_valid = torch.ones(b, h, w, dtype=torch.bool)
    z_valid[0, 3, 5] = False

    def fn(mean, var, flow, q, z, var_z):
        prior = kalman_predict(mean, var, valid, flow, q)
        step = kalman_update(prior, z, var_z, z_valid, gate=None)
        return step.mean, step.var, prior.var.clamp_max(10.0), step.nis

    prior = kalman_predict(mean, var, valid, flow, q)
    assert not prior.valid.all() and prior.valid.any()
    assert torch.autograd.gradcheck(fn, (mean, var, flow, q, z, var_z))

    # NaN/inf in invalid source and measurement cells: gradients stay finite
    mean2 = mean.detach().clone()
    mean2[0, :, 2, 3] = float("nan")
    var2 = var.detach().clone()
    var2[0, 0, 2, 3] = float("inf")
    z2 = z.detach().clone()
    z2[0, :, 3, 5] = float("nan")
    leaves = [t.requires_grad_() for t in (mean2, var2, z2)]
    prior = kalman_predict(mean2, var2, valid, flow, q)
    step = kalman_update(prior, z2, var_z, z_valid)
    loss = (step.mean.square() * step.var.log()).sum() + step.output.sum() + prior.var.sum()
    loss = loss + step.nis.sum()
    loss.backward()
    for t in (*leaves, flow, q, var_z):
        assert torch.isfinite(t.grad).all()
    assert mean2.grad[0, :, 2, 3].eq(0).all() and z2.grad[0, :, 3, 5].eq(0).all()


# ============================================================================ stateful filter
def _static_scene_sequence(g, b=64, h=8, w=16, frames=12, sigma=0.05):
    """A static scene seen by a camera moving one cell right per frame: frame t shows scene
    columns t .. t+w-1, so the flow of frame t into t-1 is (+1, 0)."""
    cols = torch.arange(w + frames, dtype=F64)
    rows = torch.arange(h, dtype=F64)
    yy, xx = torch.meshgrid(rows, cols, indexing="ij")
    scene = torch.stack([0.1 * xx, 0.1 * yy, 2.0 + 0.3 * torch.sin(xx) * torch.cos(yy)])
    views = [scene[:, :, t : t + w].expand(b, 3, h, w) for t in range(frames)]
    zs = [v + sigma * _randn(b, 3, h, w, g=g) for v in views]
    flow = torch.zeros(b, 2, h, w, dtype=F64)
    flow[:, 0] = 1.0
    return views, zs, flow


def test_filter_on_static_sequence_reduces_error_like_sqrt_n():
    g = _gen(4)
    b, h, w, frames, sigma = 64, 8, 16, 12, 0.05
    views, zs, flow = _static_scene_sequence(g, b, h, w, frames, sigma)
    kf = PixelKalmanFilter()
    var_z = torch.full((b, 1, h, w), sigma**2, dtype=F64)
    for t in range(frames):
        step = kf.step(zs[t], var_z, None, None if t == 0 else flow, 0.0)
    assert kf.resets == [] and kf.frame == frames
    t = frames - 1
    count = torch.clamp(w - torch.arange(w), max=t + 1).to(F64)  # frames seeing each column
    # the filter's variance is the running-average variance sigma^2 / n (exact)
    torch.testing.assert_close(step.var[0, 0], (sigma**2 / count).expand(h, w), rtol=1e-5, atol=0)
    err_f = (step.mean - views[t]).square().mean((0, 1, 2)).sqrt()  # (w,) RMSE per column
    err_z = (zs[t] - views[t]).square().mean((0, 1, 2)).sqrt()
    ratio = err_z / err_f
    for j in (15, 14, 12, 8, 2):  # n = 1, 2, 4, 8, 12
        assert ratio[j].item() == pytest.approx(math.sqrt(count[j].item()), rel=0.12)
    mse_f, mse_z = (step.mean - views[t]).square().mean(), (zs[t] - views[t]).square().mean()
    assert (mse_f / mse_z).item() == pytest.approx((1 / count).mean().item(), rel=0.1)
    # the output (gated cells replaced by their measurement) is still far better than raw
    assert (step.output - views[t]).square().mean() < 0.5 * (zs[t] - views[t]).square().mean()
    assert nis_consistency(step) == pytest.approx(0.8, abs=0.03)


def test_reset_on_jump_is_logged(caplog):
    g = _gen(5)
    b, h, w = 1, 6, 8
    truth = _randn(b, 3, h, w, g=g)
    var_z = torch.full((b, 1, h, w), 1e-4, dtype=F64)
    kf = PixelKalmanFilter()
    with caplog.at_level(logging.WARNING, logger="dgeo.temporal.kalman"):
        for t in range(7):
            shift = 1.0 if t >= 4 else 0.0  # the measurements jump by 1 m at frame 4
            z = truth + shift + 0.01 * _randn(b, 3, h, w, g=g)
            step = kf.step(z, var_z)
            if t == 4:
                jumped = step
    assert kf.resets == [4]
    assert [r[:2] for r in kf.reset_log] == [(4, 0)]
    assert any("reset at frame 4" in r.getMessage() for r in caplog.records)
    # after the reset the state is the measurement of frame 4, and tracking goes on
    assert not jumped.gated.any()
    assert (jumped.var == 1e-4).all()
    assert (step.mean - (truth + 1.0)).abs().max() < 0.05
    # without resets the gate keeps firing and the state is stuck between both levels
    kf2 = PixelKalmanFilter(reset_fraction=None)
    g = _gen(5)
    truth = _randn(b, 3, h, w, g=g)
    for t in range(7):
        z = truth + (1.0 if t >= 4 else 0.0) + 0.01 * _randn(b, 3, h, w, g=g)
        step2 = kf2.step(z, var_z)
    assert kf2.resets == [] and step2.gated.float().mean() > 0.9


def test_reset_only_the_batch_element_that_jumped(caplog):
    g = _gen(6)
    b, h, w = 3, 4, 4
    truth = _randn(b, 3, h, w, g=g)
    var_z = torch.full((b, 1, h, w), 1e-4, dtype=F64)
    kf = PixelKalmanFilter()
    for t in range(4):
        z = truth + 0.005 * _randn(b, 3, h, w, g=g)
        if t >= 2:
            z[1] += 2.0
        step = kf.step(z, var_z)
    assert kf.resets == [2] and [r[1] for r in kf.reset_log] == [1]
    assert (step.var[1] < 1e-4).all() and (step.var[[0, 2]] < 0.3e-4).all()


def test_nan_input_is_a_per_frame_failure(caplog):
    g = _gen(7)
    b, h, w = 2, 4, 5
    truth = _randn(b, 3, h, w, g=g)
    var_z = torch.full((b, 1, h, w), 1e-3, dtype=F64)
    kf = PixelKalmanFilter()
    kf.step(truth, var_z)
    flow = torch.zeros(b, 2, h, w, dtype=F64)
    flow[1, 0, 0, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="dgeo.temporal.kalman"):
        step = kf.step(truth, var_z, flow=flow)
        assert kf.resets == [1] and kf.reset_log[0][:2] == (1, 1)
        assert (step.var[1] == 1e-3).all()
        torch.testing.assert_close(step.var[0], torch.full_like(step.var[0], 0.5e-3))
        z = truth.clone()
        z[0] = float("nan")  # a measurement without any finite cell
        step = kf.step(z, var_z)
    assert kf.resets == [1, 2] and "non-finite" in caplog.records[-1].getMessage()
    assert not step.valid[0].any() and step.valid[1].all()
    for f in ("mean", "var", "output", "nis"):
        assert torch.isfinite(getattr(step, f)).all()
    step = kf.step(truth, var_z)  # recovers from the failure
    assert step.valid.all() and (step.var[0] == 1e-3).all()


def test_periodic_reset_is_opt_in():
    z = torch.zeros(1, 3, 2, 2, dtype=F64)
    v = torch.full((1, 1, 2, 2), 0.1, dtype=F64)
    kf = PixelKalmanFilter()
    for _ in range(7):
        kf.step(z, v)
    assert kf.resets == []
    kf = PixelKalmanFilter(reset_every=3)
    for _ in range(7):
        step = kf.step(z, v)
    assert kf.resets == [3, 6] and (step.var == 0.1).all()
    kf.reset()
    assert kf.state is None


def test_initial_state_and_input_errors():
    z = torch.zeros(1, 3, 2, 2)
    v = torch.full((1, 1, 2, 2), 0.1)
    s = initial_state(z, v)
    assert s.valid.all() and (s.gain == 1).all() and s.mean.dtype == torch.float32
    with pytest.raises(InputError, match="var_z"):
        kalman_update(_prior(z, v), z, v[:, :, :1])
    with pytest.raises(InputError, match="flow"):
        kalman_predict(z, v, None, torch.zeros(1, 3, 2, 2))
    with pytest.raises(InputError, match="z_valid"):
        kalman_update(_prior(z, v), z, v, torch.ones(1, 2, 2))
    kf = PixelKalmanFilter()
    kf.step(z, v)
    with pytest.raises(InputError, match="reset"):
        kf.step(torch.zeros(1, 3, 4, 4), torch.ones(1, 1, 4, 4))


def test_float32_and_differentiable_filter_chain():
    g = _gen(8)
    b, h, w = 1, 4, 6
    truth = _randn(b, 3, h, w, g=g, dtype=torch.float32)
    log_sigma = torch.full((b, 1, h, w), -2.0, requires_grad=True)
    flow = torch.zeros(b, 2, h, w, requires_grad=True)  # static camera
    kf = PixelKalmanFilter()
    loss = 0
    for _ in range(4):
        z = truth + 0.05 * _randn(b, 3, h, w, g=g, dtype=torch.float32)
        step = kf.step(z, (2 * log_sigma).exp(), flow=flow)
        loss = loss + (step.mean - truth).square().sum()
    loss.backward()
    assert kf.resets == []
    assert torch.isfinite(log_sigma.grad).all() and log_sigma.grad.abs().sum() > 0
    assert torch.isfinite(flow.grad).all() and flow.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kalman_cuda_matches_cpu():
    g = _gen(9)
    b, h, w = 2, 6, 8
    mean, z = _randn(b, 3, h, w, g=g), _randn(b, 3, h, w, g=g)
    var, var_z = 0.1 + _rand(b, 1, h, w, g=g), 0.1 + _rand(b, 1, h, w, g=g)
    flow = _randn(b, 2, h, w, g=g)
    out = []
    for dev in ("cpu", "cuda"):
        args = [t.to(dev) for t in (mean, var)]
        prior = kalman_predict(*args, None, flow.to(dev), 1e-3)
        out.append(kalman_update(prior, z.to(dev), var_z.to(dev)))
    assert out[1].mean.device.type == "cuda"
    torch.testing.assert_close(out[1].mean.cpu(), out[0].mean)
    torch.testing.assert_close(out[1].var.cpu(), out[0].var)
    assert torch.equal(out[1].valid.cpu(), out[0].valid)


# ============================================================================ pose filter
def _smooth_trajectory(n: int, dt: float = 0.1):
    """world_from_cam poses of a smooth synthetic trajectory, and times."""
    t = torch.arange(n, dtype=F64) * dt
    c = torch.stack([torch.cos(0.3 * t), torch.sin(0.3 * t), 0.2 * torch.sin(0.5 * t)], -1)
    aa = torch.stack([0.1 * torch.sin(0.4 * t), 0.3 * t, 0.05 * torch.cos(0.2 * t)], -1)
    return Pose.from_axis_angle(aa, c), t


def _noisy(wfc: Pose, g, sigma_t, sigma_r, outlier_rate=0.1, first_clean=3):
    """Measured cam_from_world poses: body-frame noise plus gross outliers."""
    n = wfc.shape[0]
    noise = torch.cat([sigma_t * _randn(n, 3, g=g), sigma_r * _randn(n, 3, g=g)], 1)
    meas = wfc @ Pose.exp(noise)
    out = torch.rand(n, generator=g) < outlier_rate
    out[:first_clean] = False
    direction = torch.nn.functional.normalize(_randn(n, 3, g=g), dim=-1)
    big = torch.cat([(0.3 + _rand(n, 1, g=g)) * direction, 0.3 * _randn(n, 3, g=g)], 1)
    meas = Pose(torch.where(out[:, None], (meas @ Pose.exp(big)).data, meas.data))
    return meas.inv(), out


def _rot_err(a: Pose, b: Pose) -> torch.Tensor:
    return (a.inv() @ b).magnitude()[0]


def test_pose_filter_smooths_and_rejects_outliers():
    g = _gen(10)
    wfc, t = _smooth_trajectory(200)
    gt = wfc.inv()
    sigma_t, sigma_r = 0.03, math.radians(1.0)
    meas, out = _noisy(wfc, g, sigma_t, sigma_r)
    filt, acc = filter_poses(meas, t, (sigma_r, sigma_t), acc_sigma_t=0.3, acc_sigma_rot=0.3)
    e_raw = (meas.center() - gt.center()).norm(dim=-1)
    e_f = (filt.center() - gt.center()).norm(dim=-1)
    assert e_f.median() < 0.8 * e_raw[~out].median()  # better than the raw inliers
    assert e_f.max() < 0.15  # outliers never pass through
    assert _rot_err(filt, gt).median() < 0.9 * _rot_err(meas, gt)[~out].median()
    assert (~acc[out]).all() and acc[~out].double().mean() > 0.97
    assert filt.dtype == F64 and tuple(filt.shape) == (200,)


def test_pose_filter_update_closed_form():
    """Initialised with covariance R, a second measurement with the same R at dt = 0 lands
    half-way on the manifold: T = Z0 exp(eps / 2), covariance R / 2."""
    z0 = Pose.from_axis_angle(torch.tensor([0.2, -0.1, 0.3], dtype=F64), [1.0, 2.0, 3.0])
    eps = torch.tensor([0.01, -0.02, 0.015, 0.004, 0.002, -0.003], dtype=F64)
    z1 = z0 @ Pose.exp(eps)
    pf = PoseFilter()
    R = torch.diag(torch.tensor([4e-4] * 3 + [1e-4] * 3, dtype=F64))
    r0 = pf.update(z0.inv().reshape(1), R)
    assert r0.accepted.item() and torch.isnan(r0.d2).all()
    pf.predict(0.0)
    r1 = pf.update(z1.inv().reshape(1), R)
    assert r1.accepted.item()
    assert r1.d2.item() == pytest.approx((eps @ torch.linalg.solve(2 * R, eps)).item())
    expect = z0 @ Pose.exp(eps / 2)
    torch.testing.assert_close(pf.world_from_cam.data[0], expect.data, atol=1e-6, rtol=0)
    torch.testing.assert_close(pf.covariance[0, :6, :6], R / 2)
    torch.testing.assert_close(pf.pose.data[0], expect.inv().data, atol=1e-6, rtol=0)


def test_pose_filter_learns_constant_screw_velocity():
    xi = torch.tensor([0.3, 0.0, 0.1, 0.05, 0.2, -0.1], dtype=F64)  # per second
    dt = 0.1
    start = Pose.from_axis_angle(torch.tensor([0.1, 0.2, 0.3], dtype=F64), [0.0, 1.0, 0.0])
    wfc = Pose.stack([start @ Pose.exp(xi * dt * k) for k in range(30)])
    pf = PoseFilter(acc_sigma_t=0.01, acc_sigma_rot=0.01)
    for k in range(30):
        pf.predict(dt)
        pf.update(wfc[k].inv().reshape(1), (1e-4, 1e-4))
    torch.testing.assert_close(pf.velocity[0], xi, atol=2e-3, rtol=0)
    pf.predict(dt)
    nxt = start @ Pose.exp(xi * dt * 30)
    torch.testing.assert_close(pf.world_from_cam.data[0], nxt.data, atol=1e-3, rtol=0)


def test_pose_filter_resets_after_consecutive_rejects(caplog):
    wfc, t = _smooth_trajectory(40)
    jump = Pose.from_axis_angle(torch.zeros(3, dtype=F64), [5.0, 0.0, 0.0])
    kidnapped = Pose(torch.where((torch.arange(40) >= 20)[:, None], (jump @ wfc).data, wfc.data))
    with caplog.at_level(logging.WARNING, logger="dgeo.temporal.pose_filter"):
        filt, acc = filter_poses(kidnapped.inv(), t, (0.01, 0.01), max_rejects=3)
    assert acc[:20].all() and not acc[20:22].any() and acc[22:].all()
    assert any("reset" in r.getMessage() for r in caplog.records)
    err = (filt.center() - kidnapped.inv().center()).norm(dim=-1)
    assert err[22:].max() < 0.05 and err[20:22].min() > 4.0  # predicted on the old track


def test_filter_poses_missing_frames_and_batched_tracks():
    g = _gen(11)
    wfc, t = _smooth_trajectory(60)
    meas, _ = _noisy(wfc, g, 0.02, 0.01, outlier_rate=0.0)
    data = meas.data.clone()
    data[10:13] = float("nan")  # localiser failures
    meas_nan = Pose(data)
    valid = torch.ones(60, dtype=torch.bool)
    valid[30] = False
    filt, acc = filter_poses(meas_nan, t, (0.01, 0.02), valid)
    assert torch.isfinite(filt.data).all()
    assert not acc[10:13].any() and not acc[30] and acc[13:30].all()
    # two tracks at once = each track alone (and per-track times)
    meas2, _ = _noisy(wfc, g, 0.02, 0.01, outlier_rate=0.2)
    both = Pose.stack([meas_nan, meas2], 1)  # (N, 2)
    times = torch.stack([t, 2 * t], 1)
    fb, ab = filter_poses(both, times, (0.01, 0.02), torch.stack([valid, valid], 1))
    f2, a2 = filter_poses(meas2, 2 * t, (0.01, 0.02), valid)
    assert tuple(fb.shape) == (60, 2) and tuple(ab.shape) == (60, 2)
    torch.testing.assert_close(fb.data[:, 0], filt.data)
    torch.testing.assert_close(fb.data[:, 1], f2.data)
    assert torch.equal(ab[:, 1], a2)
    # float32 input comes back as float32
    f32, _ = filter_poses(meas.float(), t, (0.01, 0.02))
    assert f32.dtype == torch.float32


def test_pose_filter_input_errors():
    wfc, t = _smooth_trajectory(5)
    with pytest.raises(InputError, match="non-decreasing"):
        filter_poses(wfc.inv(), t.flip(0))
    with pytest.raises(InputError, match="cov"):
        filter_poses(wfc.inv(), t, torch.eye(5))
    with pytest.raises(InputError, match="positive"):
        filter_poses(wfc.inv(), t, (0.0, 0.1))
    pf = PoseFilter()
    pf.update(wfc.inv()[:2])
    with pytest.raises(InputError, match="tracks"):
        pf.update(wfc.inv()[:3])
    with pytest.raises(InputError, match="dt"):
        pf.predict(-1.0)


@pytest.mark.skipif(not TUM_GT.exists(), reason="../shared/data/tum_fr3_long_office absent")
def test_pose_filter_on_tum_trajectory():
    """The 100 Hz mocap trajectory of fr3/long_office_household, subsampled to 10 Hz (30 s), with
    3 cm / 1.5 deg noise and 10 % gross outliers."""
    a = np.loadtxt(TUM_GT)[::10][:300]
    t = torch.tensor(a[:, 0] - a[0, 0])
    wfc = Pose.from_quat_t(torch.tensor(a[:, [7, 4, 5, 6]]), torch.tensor(a[:, 1:4]))
    gt = wfc.inv()
    sigma_t, sigma_r = 0.03, math.radians(1.5)
    meas, out = _noisy(wfc, _gen(12), sigma_t, sigma_r)
    filt, acc = filter_poses(meas, t, (sigma_r, sigma_t), acc_sigma_t=0.3, acc_sigma_rot=0.3)
    e_raw = (meas.center() - gt.center()).norm(dim=-1)
    e_f = (filt.center() - gt.center()).norm(dim=-1)
    assert e_f.median() < 0.85 * e_raw[~out].median()
    assert _rot_err(filt, gt).median() < _rot_err(meas, gt)[~out].median()
    assert (~acc[out]).double().mean() > 0.95 and acc[~out].double().mean() > 0.97
    assert e_f.max() < 0.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pose_filter_cuda():
    wfc, t = _smooth_trajectory(20)
    meas, _ = _noisy(wfc, _gen(13), 0.02, 0.01, outlier_rate=0.0)
    fc, ac = filter_poses(meas.to("cuda"), t, (0.01, 0.02))
    f, a = filter_poses(meas, t, (0.01, 0.02))
    assert fc.device.type == "cuda"
    torch.testing.assert_close(fc.data.cpu(), f.data)
    assert torch.equal(ac.cpu(), a)
