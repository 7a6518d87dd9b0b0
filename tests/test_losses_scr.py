"""Scene-coordinate NLL, OFlowNet and KFNet losses (dgeo.losses.uncertainty / flow)."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from dgeo.errors import InputError, ShapeError
from dgeo.geometry import warp_by_flow
from dgeo.losses import (
    gaussian_nll,
    gaussian_nll_variance,
    kfnet_loss,
    oflownet_loss,
    photometric_loss,
    smoothness_loss,
    ssim_dissimilarity,
    window_valid,
)
from dgeo.losses.flow import cell_images


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def nll_numpy(pred, target, log_sigma, mask, sigma_min=1e-5, truncate=None):
    s = np.maximum(np.exp(log_sigma[:, 0]), sigma_min)
    sq = ((pred - target) ** 2).sum(1)
    lp = 3 * np.log(s) + sq / (2 * s**2)
    if truncate is not None:
        lp = np.minimum(lp, truncate)
    return (lp * mask).sum() / (mask.sum() + 1)


# --------------------------------------------------------------------------------- the NLL


def test_gaussian_nll_matches_the_formula_with_floor_mask_and_truncation():
    pred, target = randn(2, 3, 4, 5, seed=1), randn(2, 3, 4, 5, seed=2)
    log_sigma = randn(2, 1, 4, 5, seed=3)
    log_sigma[0, 0, 0, :2] = -20.0  # below the 1e-5 floor
    mask = torch.rand(2, 4, 5, generator=gen(4)) > 0.3
    args = [t.numpy() for t in (pred, target, log_sigma, mask)]
    got = gaussian_nll(pred, target, log_sigma, mask)
    assert math.isclose(float(got), nll_numpy(*args), rel_tol=1e-12)
    got = gaussian_nll(pred, target, log_sigma, mask, truncate=-1.0)
    assert math.isclose(float(got), nll_numpy(*args, truncate=-1.0), rel_tol=1e-12)
    all_cells = gaussian_nll(pred, target, log_sigma)  # mask None: every cell
    assert math.isclose(float(all_cells), nll_numpy(*args[:3], np.ones((2, 4, 5))), rel_tol=1e-12)
    # the variance form is the same loss
    var = torch.exp(2 * log_sigma)
    torch.testing.assert_close(
        gaussian_nll_variance(pred, target, var, mask),
        got * 0 + float(gaussian_nll(pred, target, log_sigma, mask)),
    )


def test_gaussian_nll_gradients_match_autograd_of_the_direct_formula():
    pred = randn(1, 3, 3, 4, seed=5).requires_grad_()
    target = randn(1, 3, 3, 4, seed=6)
    log_sigma = (0.3 * randn(1, 1, 3, 4, seed=7)).requires_grad_()
    mask = torch.rand(1, 3, 4, generator=gen(8)) > 0.2

    assert torch.autograd.gradcheck(
        lambda p, s: gaussian_nll(p, target, s, mask), (pred, log_sigma)
    )
    var = torch.exp(2 * log_sigma.detach()).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p, v: gaussian_nll_variance(p, target, v, mask), (pred, var)
    )

    def direct(p, s):
        lp = 3 * s[:, 0] + ((p - target) ** 2).sum(1) / (2 * torch.exp(2 * s[:, 0]))
        return (lp * mask).sum() / (mask.sum() + 1)

    g1 = torch.autograd.grad(gaussian_nll(pred, target, log_sigma, mask), (pred, log_sigma))
    g2 = torch.autograd.grad(direct(pred, log_sigma), (pred, log_sigma))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)


def test_truncation_caps_outliers_from_above():
    """min(l, c): a cell whose NLL is above the cap contributes c and no gradient."""
    target = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    pred = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    pred[0, :, 0, 1] = 1.0  # 1.7 m off at sigma 1 cm: a gross outlier
    pred.requires_grad_()
    log_sigma = torch.full((1, 1, 1, 2), math.log(0.01), dtype=torch.float64, requires_grad=True)
    loss = gaussian_nll(pred, target, log_sigma, truncate=-1.0)
    good = 3 * math.log(0.01)
    assert math.isclose(loss.item(), (good - 1.0) / 3, rel_tol=1e-12)
    loss.backward()
    assert torch.all(pred.grad[0, :, 0, 1] == 0) and log_sigma.grad[0, 0, 0, 1] == 0
    assert log_sigma.grad[0, 0, 0, 0] != 0


def test_nll_masked_cells_never_reach_value_or_gradient():
    pred = randn(1, 3, 2, 2, seed=1).requires_grad_()
    target = randn(1, 3, 2, 2, seed=2)
    target[0, :, 1, 1] = float("nan")
    var = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    var[0, 0, 0, 1] = math.inf  # an out-of-frame Kalman prior
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    mask[0, 1, 1] = False
    loss = gaussian_nll_variance(pred, target, var, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert pred.grad[0, :, 1, 1].abs().sum() == 0 and pred.grad[0, :, 0, 1].abs().sum() == 0
    sq = ((pred.detach() - target) ** 2).sum(1)[0]
    expected = (0.5 * sq[0, 0] + 0.5 * sq[1, 0]) / 3  # two cells left, divided by 2 + 1
    torch.testing.assert_close(loss.detach(), expected)
    empty = gaussian_nll(pred, target, torch.zeros(1, 1, 2, 2, dtype=torch.float64),
                         torch.zeros(1, 2, 2, dtype=torch.bool))  # fmt: skip
    assert empty.item() == 0.0


def test_nll_input_errors():
    p = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ShapeError, match=r"log_sigma must have shape \(B, 1, h, w\)"):
        gaussian_nll(p, p, p, None)
    with pytest.raises(ShapeError, match="target"):
        gaussian_nll(p, torch.zeros(1, 3, 2, 3), p[:, :1], None)
    with pytest.raises(ShapeError, match="mask"):
        gaussian_nll(p, p, p[:, :1], torch.ones(1, 2, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="bool"):
        gaussian_nll(p, p, p[:, :1], torch.ones(1, 2, 2))
    with pytest.raises(InputError, match="sigma_min"):
        gaussian_nll(p, p, p[:, :1], None, sigma_min=0.0)


# ------------------------------------------------------------------- photometric, smoothness


def ssim_numpy(x, y):
    """Direct 3x3 SSIM dissimilarity, windows clipped at the border."""
    b, c, h, w = x.shape
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            sl = np.s_[:, :, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
            a, bb = x[sl].reshape(b, c, -1), y[sl].reshape(b, c, -1)
            mx, my = a.mean(-1), bb.mean(-1)
            vx, vy = (a * a).mean(-1) - mx**2, (bb * bb).mean(-1) - my**2
            cxy = (a * bb).mean(-1) - mx * my
            ssim = ((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / (
                (mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4)
            )
            out[:, :, i, j] = np.clip((1 - ssim) / 2, 0, 1)
    return out


def test_photometric_loss_matches_a_direct_computation():
    a = 2 * torch.rand(2, 3, 5, 6, generator=gen(1), dtype=torch.float64) - 1
    b = 2 * torch.rand(2, 3, 5, 6, generator=gen(2), dtype=torch.float64) - 1
    np.testing.assert_allclose(ssim_dissimilarity(a, b).numpy(), ssim_numpy(a.numpy(), b.numpy()))
    mask = torch.ones(2, 5, 6, dtype=torch.bool)
    per = 0.85 * ssim_numpy(a.numpy(), b.numpy()) + 0.15 * np.abs(a.numpy() - b.numpy())
    expected = per.sum() / (mask.sum().item() + 1)
    assert math.isclose(float(photometric_loss(a, b, mask)), expected, rel_tol=1e-10)
    assert float(photometric_loss(a, a, mask)) < 1e-12


def test_smoothness_matches_a_direct_loop_and_ignores_pairs_with_invalid_cells():
    y = randn(1, 3, 4, 5, seed=3)
    img = 255 * torch.rand(1, 3, 4, 5, generator=gen(4), dtype=torch.float64)
    mask = torch.ones(1, 4, 5, dtype=torch.bool)
    mask[0, 2, 3] = False
    y_bad = y.clone()
    y_bad[0, :, 2, 3] = float("nan")
    total = 0.0
    Y, im, M = y[0].numpy(), img[0].numpy(), mask[0].numpy()
    for i in range(4):
        for j in range(5):
            for di, dj in ((0, 1), (1, 0)):
                if i + di < 4 and j + dj < 5 and M[i, j] and M[i + di, j + dj]:
                    dy = ((Y[:, i, j] - Y[:, i + di, j + dj]) ** 2).mean()
                    dI = np.abs(im[:, i, j] - im[:, i + di, j + dj]).mean()
                    total += dy * np.exp(-0.625 * dI)
    expected = total / (M.sum() + 1)
    got = smoothness_loss(y_bad, img, mask)
    assert math.isclose(float(got), expected, rel_tol=1e-10)


def test_window_valid_is_the_all_candidates_mask():
    valid = torch.rand(2, 9, 10, generator=gen(5)) > 0.1
    r = 2
    got = window_valid(valid, r)
    V = valid.numpy()
    ref = np.zeros_like(V)
    for b in range(2):
        for i in range(9):
            for j in range(10):
                ok = True
                for dy in range(-r, r):
                    for dx in range(-r, r):
                        y, x = i + dy, j + dx
                        ok &= bool(0 <= y < 9 and 0 <= x < 10 and V[b, y, x])
                ref[b, i, j] = ok
    assert np.array_equal(got.numpy(), ref)


def test_cell_images_average_8x8_blocks():
    img = torch.rand(1, 3, 16, 24, generator=gen(6))
    small = cell_images(img, (2, 3))
    torch.testing.assert_close(small[0, :, 1, 2], img[0, :, 8:16, 16:24].mean((1, 2)))
    assert cell_images(small, (2, 3)) is small
    with pytest.raises(InputError, match="neither the cell size"):
        cell_images(img, (3, 3))


# -------------------------------------------------------------------------------- OFlowNet


def translation_pair(d=(1.5, -1.0), h=12, w=16):
    """A smooth coordinate field and texture on frame t-1, and frame t = prev shifted so that
    cell p of frame t sees prev at p + d."""
    i, j = torch.meshgrid(torch.arange(h + 0.0), torch.arange(w + 0.0), indexing="ij")
    prev = torch.stack([0.05 * j, 0.05 * i, 2 + 0.1 * torch.sin(j / 3) * torch.cos(i / 4)])[None]
    img_prev = 0.5 + 0.4 * torch.sin(torch.stack([j / 1.7 + i / 2.3, j / 2.9, i / 1.3]))[None]
    flow = torch.tensor(d).view(1, 2, 1, 1).expand(1, 2, h, w).clone()
    coords_t, valid_t = warp_by_flow(prev, flow)
    img_t, _ = warp_by_flow(img_prev, flow)
    valid_prev = torch.ones(1, h, w, dtype=torch.bool)
    return prev, valid_prev, coords_t, valid_t, img_prev, img_t, flow


def test_oflownet_transfer_loss_prefers_the_true_flow():
    prev, valid_prev, coords_t, valid_t, img_prev, img_t, flow = translation_pair()
    log_sw = torch.full((1, 1, 12, 16), math.log(0.01))
    args = (log_sw, prev, valid_prev, coords_t, valid_t, 0.0, img_t, img_prev)
    true_loss, true_stats = oflownet_loss(flow, *args)
    for wrong in (torch.zeros_like(flow), flow + torch.tensor([1.0, 0.5]).view(1, 2, 1, 1)):
        loss, stats = oflownet_loss(wrong, *args)
        assert float(loss) > float(true_loss) + 1.0
        assert stats["nll"] > true_stats["nll"] and stats["photometric"] > true_stats["photometric"]
    assert true_stats["median_error"] < 1e-6 and true_stats["accuracy"] == 1.0
    assert true_stats["photometric"] < 1e-6 and 0.5 < true_stats["mask_fraction"] < 1.0
    # the NLL term equals the formula under the prior variance 1e-10 + sigma_w^2
    mask = valid_t
    var = torch.full((1, 1, 12, 16), 1e-10 + 1e-4)
    expected = gaussian_nll_variance(coords_t, coords_t, var, mask, truncate=-1.0)
    assert math.isclose(true_stats["nll"], float(expected), rel_tol=1e-5)
    # gradients reach the flow and the process noise
    f = flow.clone().requires_grad_()
    s = log_sw.clone().requires_grad_()
    loss, _ = oflownet_loss(f + 0.3, s, *args[1:])
    loss.backward()
    assert f.grad.abs().sum() > 0 and s.grad.abs().sum() > 0


def test_oflownet_loss_masks_and_options():
    prev, valid_prev, coords_t, valid_t, img_prev, img_t, flow = translation_pair()
    log_sw = torch.full((1, 1, 12, 16), math.log(0.01))
    valid_prev[0, 5, 5] = False
    base = (log_sw, prev, valid_prev, coords_t, valid_t, 0.02)
    _, loose = oflownet_loss(flow, *base)
    _, strict = oflownet_loss(flow, *base, window_radius=4)
    assert strict["mask_fraction"] < loose["mask_fraction"]
    # full-size images are averaged to the cells
    big_t = img_t.repeat_interleave(8, -1).repeat_interleave(8, -2)
    big_p = img_prev.repeat_interleave(8, -1).repeat_interleave(8, -2)
    a = oflownet_loss(flow, *base, img_t, img_prev)[1]
    b = oflownet_loss(flow, *base, big_t, big_p)[1]
    assert math.isclose(a["photometric"], b["photometric"], rel_tol=1e-5, abs_tol=1e-5)
    assert math.isclose(a["median_sigma"], math.sqrt(0.02**2 + 1e-4), rel_tol=1e-4)
    with pytest.raises(InputError, match="both image_t and image_prev"):
        oflownet_loss(flow, *base, img_t, None)
    with pytest.raises(ShapeError, match="log_sigma_w"):
        oflownet_loss(flow, log_sw[..., :3], *base[1:])
    with pytest.raises(InputError, match="sigma_prev"):
        oflownet_loss(flow, log_sw, prev, valid_prev, coords_t, valid_t, -1.0)


# ----------------------------------------------------------------------------------- KFNet


@dataclass
class Gaussian:
    mean: torch.Tensor
    var: torch.Tensor
    valid: torch.Tensor


def test_kfnet_loss_weights_terms_and_skips_invalid_priors():
    target = randn(1, 3, 4, 5, seed=1)
    meas = (target + 0.01 * randn(1, 3, 4, 5, seed=2), torch.full((1, 1, 4, 5), 1e-4).double())
    prior_var = torch.full((1, 1, 4, 5), 4e-4).double()
    prior_var[0, 0, 0, 0] = math.inf
    prior_valid = torch.ones(1, 4, 5, dtype=torch.bool)
    prior_valid[0, 0, 0] = False
    prior = Gaussian(target + 0.02 * randn(1, 3, 4, 5, seed=3), prior_var, prior_valid)
    post = (target + 0.005 * randn(1, 3, 4, 5, seed=4), torch.full((1, 1, 4, 5), 5e-5).double())
    mask = torch.ones(1, 4, 5, dtype=torch.bool)
    loss, stats = kfnet_loss(meas, prior, post, target, mask)
    nll = [
        gaussian_nll_variance(meas[0], target, meas[1], mask, truncate=-2.0),
        gaussian_nll_variance(prior.mean, target, prior.var, prior_valid, truncate=-2.0),
        gaussian_nll_variance(post[0], target, post[1], mask, truncate=-2.0),
    ]
    expected = 0.2 * nll[0] + 0.2 * nll[1] + 0.6 * nll[2]
    torch.testing.assert_close(loss, expected)
    assert torch.isfinite(loss) and stats["nll_post"] == pytest.approx(float(nll[2]))
    # with an image the smoothness of each map joins with weight 50; no prior: term skipped
    img = torch.rand(1, 3, 32, 40, generator=gen(5), dtype=torch.float64)
    loss2, stats2 = kfnet_loss(meas, None, post, target, mask, img)
    small = cell_images(img, (4, 5)) * 255
    expected2 = 0.2 * (nll[0] + 50 * smoothness_loss(meas[0], small, mask)) + 0.6 * (
        nll[2] + 50 * smoothness_loss(post[0], small, mask)
    )
    torch.testing.assert_close(loss2, expected2)
    assert "nll_prior" not in stats2
    with pytest.raises(InputError, match="weights must be 3 numbers"):
        kfnet_loss(meas, prior, post, target, mask, weights=(1.0, 1.0))
    with pytest.raises(InputError, match="prior must be"):
        kfnet_loss(meas, 3.0, post, target, mask)
