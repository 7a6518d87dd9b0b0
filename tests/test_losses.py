"""GN-Net losses: Gauss-Newton, contrastive with windowed hard negatives, and GNNetLoss."""

import math

import numpy as np
import pytest
import torch

from dgeo.errors import InputError, ShapeError
from dgeo.geometry import FeaturePyramid
from dgeo.losses import GNNetLoss, contrastive_loss, gauss_newton_loss, top_m_schedule

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- Gauss-Newton, by hand


def _bilinear(m: np.ndarray, x: float, y: float) -> np.ndarray:
    """``m`` (C, h, w) at (x, y), top-left pixel centre at (0, 0), inside the grid."""
    h, w = m.shape[1:]
    x0, y0 = min(math.floor(x), w - 1), min(math.floor(y), h - 1)
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    ax, ay = x - x0, y - y0
    return (
        (1 - ax) * (1 - ay) * m[:, y0, x0]
        + ax * (1 - ay) * m[:, y0, x1]
        + (1 - ax) * ay * m[:, y1, x0]
        + ax * ay * m[:, y1, x1]
    )


def _central_differences(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d/dx and d/dy of (C, h, w): [-1/2, 0, 1/2] inside, one-sided at the borders."""
    gx, gy = np.empty_like(m), np.empty_like(m)
    h, w = m.shape[1:]
    for j in range(w):
        lo, hi = max(j - 1, 0), min(j + 1, w - 1)
        gx[:, :, j] = (m[:, :, hi] - m[:, :, lo]) / (hi - lo)
    for i in range(h):
        lo, hi = max(i - 1, 0), min(i + 1, h - 1)
        gy[:, i, :] = (m[:, hi, :] - m[:, lo, :]) / (hi - lo)
    return gx, gy


def _gn_direct(desc, fmap, uv, x_s, ridge, w1, w2):
    """Per-point e1, e2 and the loss of one map (B = 1) by the textbook formulas."""
    gx, gy = _central_differences(fmap)
    e1s, e2s = [], []
    for f_a, u, x in zip(desc, uv, x_s, strict=True):
        r = _bilinear(fmap, *x) - f_a
        J = np.stack([_bilinear(gx, *x), _bilinear(gy, *x)], -1)  # (C, 2)
        H = J.T @ J + ridge * np.eye(2)
        mu = x - np.linalg.solve(H, J.T @ r)
        e = u - mu
        e1s.append(0.5 * e @ H @ e)
        e2s.append(math.log(2 * math.pi) - 0.5 * math.log(np.linalg.det(H)))
    e1s, e2s = np.array(e1s), np.array(e2s)
    return e1s, e2s, float(np.mean(w1 * e1s + w2 * e2s))


def _gn_problem():
    rng = np.random.default_rng(3)
    fmap = rng.normal(size=(2, 6, 7))  # 2 channels, 6 x 7: H != W
    uv = np.array([[2.3, 1.7], [4.0, 3.0], [1.1, 4.2], [5.5, 0.6], [3.6, 2.2]])
    desc = np.stack([_bilinear(fmap, *u) for u in uv]) + 0.3 * rng.normal(size=(5, 2))
    return fmap, uv, desc


def _noise(n: int, noise: float, seed: int) -> np.ndarray:
    """The perturbation gauss_newton_loss draws (its documented contract)."""
    u = torch.rand((1, n, 2), generator=gen(seed), dtype=torch.float64)
    return ((u * 2 - 1) * noise)[0].numpy()


def test_gauss_newton_value_matches_direct_computation():
    fmap, uv, desc = _gn_problem()
    noise, ridge, w1, w2 = 0.4, 1e-3, 1.0, 2 / 7
    x_s = uv + _noise(len(uv), noise, 7)
    e1, e2, expected = _gn_direct(desc, fmap, uv, x_s, ridge, w1, w2)
    t = lambda a: torch.from_numpy(a)[None]  # noqa: E731
    loss, stats = gauss_newton_loss(
        t(desc), t(fmap), t(uv), noise=noise, ridge=ridge, w1=w1, w2=w2, generator=gen(7)
    )
    assert loss.dtype == torch.float64
    assert abs(loss.item() - expected) < 1e-9
    assert abs(stats["e1"] - e1.mean()) < 1e-9 and abs(stats["e2"] - e2.mean()) < 1e-9
    assert stats["valid"] == 5 and stats["step_error"] > 0


def test_gauss_newton_gradient_matches_autograd_and_finite_differences():
    fmap, uv, desc = _gn_problem()
    noise, ridge = 0.4, 1e-3
    d = torch.from_numpy(desc)[None].requires_grad_()
    f = torch.from_numpy(fmap)[None].requires_grad_()
    u = torch.from_numpy(uv)[None]

    def fn(d, f):
        return gauss_newton_loss(d, f, u, noise=noise, ridge=ridge, w2=0.5, generator=gen(7))[0]

    assert torch.autograd.gradcheck(fn, (d, f), eps=1e-6, atol=1e-6)
    # and against central finite differences of the hand-written computation
    gd, gf = torch.autograd.grad(fn(d, f), (d, f))
    x_s = uv + _noise(len(uv), noise, 7)

    def direct(desc_, fmap_):
        return _gn_direct(desc_, fmap_, uv, x_s, ridge, 1.0, 0.5)[2]

    h = 1e-6
    for arr, grad in ((desc, gd[0]), (fmap, gf[0])):
        fd = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += h
            minus[idx] -= h
            args = (plus, fmap) if arr is desc else (desc, plus)
            args_m = (minus, fmap) if arr is desc else (desc, minus)
            fd[idx] = (direct(*args) - direct(*args_m)) / (2 * h)
        np.testing.assert_allclose(grad.numpy(), fd, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gauss_newton_masks_and_guards(dtype):
    torch.manual_seed(0)
    fmap = torch.randn(2, 4, 9, 11, dtype=dtype)
    uv = torch.rand(2, 6, 2, dtype=dtype) * 6 + 2
    desc = torch.randn(2, 6, 4, dtype=dtype)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    loss, stats = gauss_newton_loss(desc, fmap, uv, mask, generator=gen())
    assert loss.dtype == dtype and math.isfinite(loss.item()) and stats["valid"] == 10
    # masked rows may hold anything: neither the loss nor the gradient changes
    d2, u2 = desc.clone(), uv.clone()
    d2[0, 4:] = float("nan")
    u2[0, 4] = float("nan")
    u2[0, 5] = 1e6
    f1, f2 = fmap.clone().requires_grad_(), fmap.clone().requires_grad_()
    l1, _ = gauss_newton_loss(desc, f1, uv, mask, generator=gen())
    l2, _ = gauss_newton_loss(d2, f2, u2, mask, generator=gen())
    l1.backward()
    l2.backward()
    assert l1.item() == l2.item()
    torch.testing.assert_close(f1.grad, f2.grad)
    # matches outside the map are dropped; a flat map (J = 0) keeps a finite loss
    uv_out = uv.clone()
    uv_out[1, 0] = torch.tensor([20.0, 3.0], dtype=dtype)
    assert gauss_newton_loss(desc, fmap, uv_out, mask, generator=gen())[1]["valid"] == 9
    flat = torch.zeros(2, 4, 9, 11, dtype=dtype, requires_grad=True)
    lf, _ = gauss_newton_loss(desc, flat, uv, mask, ridge=1e-3, generator=gen())
    lf.backward()
    assert math.isfinite(lf.item()) and torch.isfinite(flat.grad).all()
    # ridge 0 on a flat map: det H = 0, every point dropped, loss 0 and still differentiable
    flat.grad = None
    l0, s0 = gauss_newton_loss(desc, flat, uv, mask, ridge=0.0, generator=gen())
    l0.backward()
    assert l0.item() == 0 and s0["valid"] == 0 and torch.isfinite(flat.grad).all()
    # an all-false mask gives 0
    assert gauss_newton_loss(desc, fmap, uv, torch.zeros_like(mask))[0].item() == 0


def test_gauss_newton_step_lands_on_match_for_linear_map():
    # on a linear map one GN step from anywhere is exact: mu = u_b, e1 = 0
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(10.0), indexing="ij")
    fmap = torch.stack([2 * xs + ys, xs - 3 * ys])[None].double()
    uv = torch.tensor([[[3.3, 2.1], [6.0, 5.5]]], dtype=torch.float64)
    desc = torch.stack([2 * uv[..., 0] + uv[..., 1], uv[..., 0] - 3 * uv[..., 1]], -1)
    _, stats = gauss_newton_loss(desc, fmap, uv, ridge=0.0, generator=gen())
    assert stats["e1"] < 1e-20 and stats["step_error"] < 1e-10
    # det(J^T J) = det([[5, -1], [-1, 10]]) = 49
    assert abs(stats["e2"] - (math.log(2 * math.pi) - 0.5 * math.log(49))) < 1e-12


# ---------------------------------------------------------------- contrastive


def test_top_m_schedule():
    assert top_m_schedule(0) == 300
    assert top_m_schedule(10_000) == math.floor(300 * math.exp(-0.6)) == 164
    assert top_m_schedule(1_000_000) == 5
    with pytest.raises(InputError):
        top_m_schedule(-1)


def _one_anchor_problem(dtype=torch.float64):
    torch.manual_seed(1)
    fmap = 3 * torch.randn(1, 4, 9, 11, dtype=dtype)  # cells far apart: d^2 >> 1
    uv = torch.tensor([[[5.0, 4.0]]], dtype=dtype)
    desc = fmap[:, :, 4, 5][:, None].clone()  # exact positive
    return fmap, uv, desc


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contrastive_negatives_inside_radius_are_ignored(dtype):
    fmap, uv, desc = _one_anchor_problem(dtype)
    kw = dict(radius=3.0, top_m=1, generator=None)
    base, s0 = contrastive_loss(desc, fmap, uv, **kw)
    assert s0["pos"] == 0 and s0["neg"] == 0 and s0["d_pos"] < 1e-6
    inside = fmap.clone()
    inside[0, :, 6, 7] = desc[0, 0]  # (x 7, y 6): 2 px away in both axes, inside the window
    loss_in, s_in = contrastive_loss(desc, inside, uv, **kw)
    assert loss_in.item() == base.item() and s_in["neg"] == 0
    outside = fmap.clone()
    outside[0, :, 4, 8] = desc[0, 0]  # 3 px away: on the window's edge, i.e. outside it
    loss_out, s_out = contrastive_loss(desc, outside, uv, **kw)
    assert s_out["neg"] == pytest.approx(1.0) and s_out["d_neg"] < 1e-3
    assert loss_out.item() > base.item()
    # radius 0 excludes nothing: the positive itself becomes the hardest negative
    assert contrastive_loss(desc, fmap, uv, radius=0.0, top_m=1)[1]["neg"] == pytest.approx(1.0)


def test_contrastive_values_and_random_choice_among_top_m():
    fmap, uv, desc = _one_anchor_problem()
    # positive: d = 0.5 -> (0.5 - 0.2)^2
    off = desc + torch.tensor([0.3, 0.4, 0.0, 0.0], dtype=torch.float64)
    assert contrastive_loss(off, fmap, uv, radius=3.0, top_m=1)[1]["pos"] == pytest.approx(0.09)
    # negatives at d^2 = 0.36 and 0.64 outside the window: max(0, 1 - d^2)
    f = fmap.clone()
    f[0, :, 0, 0] = desc[0, 0] + torch.tensor([0.6, 0, 0, 0], dtype=torch.float64)
    f[0, :, 8, 10] = desc[0, 0] + torch.tensor([0, 0.8, 0, 0], dtype=torch.float64)
    assert contrastive_loss(desc, f, uv, radius=3.0, top_m=1)[1]["neg"] == pytest.approx(0.64)
    seen = {
        round(contrastive_loss(desc, f, uv, radius=3.0, top_m=2, generator=gen(s))[1]["neg"], 6)
        for s in range(20)
    }
    assert seen == {0.64, 0.36}
    # the same generator seed gives the same draw
    a = contrastive_loss(desc, f, uv, radius=3.0, top_m=2, generator=gen(5))[1]
    b = contrastive_loss(desc, f, uv, radius=3.0, top_m=2, generator=gen(5))[1]
    assert a == b


def test_contrastive_masks_bounds_chunks_and_gradients():
    torch.manual_seed(0)
    fmap = torch.randn(2, 8, 12, 16)
    uv = torch.rand(2, 40, 2) * torch.tensor([15.0, 11.0])
    desc = fmap.flatten(2)[:, :, :40].transpose(1, 2) + 0.3 * torch.randn(2, 40, 8)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    kw = dict(radius=2.0, top_m=20)
    loss, stats = contrastive_loss(desc, fmap, uv, mask, generator=gen(), **kw)
    assert stats["valid"] == 70
    # chunking does not change the result
    loss_c, stats_c = contrastive_loss(desc, fmap, uv, mask, generator=gen(), chunk=3, **kw)
    assert loss_c.item() == pytest.approx(loss.item(), abs=1e-6) and stats_c == pytest.approx(stats)
    # masked rows may hold anything
    d2, u2 = desc.clone(), uv.clone()
    d2[1, 30:] = float("nan")
    u2[1, 30:] = -1e9
    f1, f2 = fmap.clone().requires_grad_(), fmap.clone().requires_grad_()
    da, db = desc.clone().requires_grad_(), d2.clone().requires_grad_()
    l1, _ = contrastive_loss(da, f1, uv, mask, generator=gen(), **kw)
    l2, _ = contrastive_loss(db, f2, u2, mask, generator=gen(), **kw)
    (l1 + 0).backward()
    l2.backward()
    assert l1.item() == l2.item()
    torch.testing.assert_close(f1.grad, f2.grad)
    torch.testing.assert_close(da.grad[mask], db.grad[mask])
    assert (db.grad[~mask] == 0).all() and f1.grad.abs().sum() > 0
    # points outside the map (or beyond bounds) are dropped
    u3 = uv.clone()
    u3[0, 0] = torch.tensor([15.5, 3.0])
    assert contrastive_loss(desc, fmap, u3, mask, **kw)[1]["valid"] == 69
    assert contrastive_loss(desc, fmap, uv, mask, bounds=(7.0, 11.0), **kw)[1]["valid"] < 70


def test_contrastive_bounds_exclude_padding_cells():
    fmap, uv, desc = _one_anchor_problem()
    padded = fmap.clone()
    padded[0, :, 4, 10] = desc[0, 0]  # a perfect look-alike in the padding column x = 10
    kw = dict(radius=3.0, top_m=1)
    assert contrastive_loss(desc, padded, uv, **kw)[1]["neg"] == pytest.approx(1.0)
    assert contrastive_loss(desc, padded, uv, bounds=(9.0, 8.0), **kw)[1]["neg"] == 0


def test_contrastive_with_fewer_cells_than_top_m_and_all_excluded():
    torch.manual_seed(0)
    fmap = torch.randn(1, 3, 3, 4, dtype=torch.float64)
    uv = torch.tensor([[[1.0, 1.0], [2.0, 1.0]]], dtype=torch.float64)
    desc = torch.randn(1, 2, 3, dtype=torch.float64)
    loss, stats = contrastive_loss(desc, fmap, uv, radius=1.0, top_m=300, generator=gen())
    assert math.isfinite(loss.item()) and stats["valid"] == 2
    # a window covering the whole map leaves no negative: the negative term is 0
    f = fmap.clone().requires_grad_()
    loss, stats = contrastive_loss(desc, f, uv, radius=10.0, top_m=5)
    loss.backward()
    assert stats["neg"] == 0 and torch.isfinite(f.grad).all()


def test_shape_errors_name_the_argument():
    d, f, u = torch.randn(2, 5, 4), torch.randn(2, 4, 6, 7), torch.rand(2, 5, 2)
    with pytest.raises(ShapeError, match=r"desc_a must have shape \(B, N, C\)"):
        gauss_newton_loss(d[0], f, u)
    with pytest.raises(ShapeError, match="fmap_b"):
        contrastive_loss(d, f[:, :3], u, radius=1, top_m=5)
    with pytest.raises(ShapeError, match="uv_b"):
        gauss_newton_loss(d, f, u[..., :1])
    with pytest.raises(ShapeError, match="mask"):
        gauss_newton_loss(d, f, u, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="mask must be a bool"):
        gauss_newton_loss(d, f, u, torch.ones(2, 5))
    with pytest.raises(InputError, match="top_m"):
        contrastive_loss(d, f, u, radius=1, top_m=0)


# ---------------------------------------------------------------- GNNetLoss


def _pyramids(seed=0, image=(48, 64), canvas=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    H, W = canvas or image
    maps = [torch.randn(2, 8, H // s, W // s, generator=g, dtype=dtype) for s in (1, 4)]
    a = FeaturePyramid.from_maps([m.clone().requires_grad_() for m in maps], image, None, canvas)
    b = FeaturePyramid.from_maps([m.clone().requires_grad_() for m in maps], image, None, canvas)
    return a, b


def _correspondences(n=64, image=(48, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(2, n, 2, generator=g) * torch.tensor([image[1] - 1.0, image[0] - 1.0])
    return uv, torch.ones(2, n, dtype=torch.bool)


def test_gnnet_identical_pyramids_zero_positive_and_gradients_into_both():
    pa, pb = _pyramids()
    uv, mask = _correspondences()
    loss, stats = GNNetLoss()(pa, pb, uv, uv, mask, step=0, generator=gen())
    assert math.isfinite(loss.item()) and stats["loss"] == pytest.approx(loss.item())
    for lvl in (0, 1):
        assert stats[f"pos/l{lvl}"] == 0 and stats[f"d_pos/l{lvl}"] < 1e-5
        assert stats[f"contrastive/l{lvl}"] == pytest.approx(stats[f"neg/l{lvl}"])
    assert stats["top_m"] == 300
    expected = sum(stats[f"contrastive/l{i}"] + 0.1 * stats[f"gn/l{i}"] for i in (0, 1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    for pyr in (pa, pb):
        for lvl in pyr.levels:
            assert torch.isfinite(lvl.features.grad).all() and lvl.features.grad.abs().sum() > 0


def test_gnnet_levels_weights_and_step():
    pa, pb = _pyramids(1)
    uv, mask = _correspondences(seed=1)
    uv_b = uv + 0.5
    _, full = GNNetLoss(top_m=10)(pa, pb, uv, uv_b, mask, generator=gen())
    l1, only1 = GNNetLoss(top_m=10, levels=[1], level_weights=[2.0])(
        pa, pb, uv, uv_b, mask, generator=gen()
    )
    assert "gn/l0" not in only1 and "gn/l1" in only1
    assert l1.item() == pytest.approx(2 * (only1["contrastive/l1"] + 0.1 * only1["gn/l1"]))
    _, late = GNNetLoss()(pa, pb, uv, uv_b, mask, step=10**6, generator=gen())
    assert late["top_m"] == 5 and full["top_m"] == 10
    # swapping the pyramids and correspondences swaps the directions: same loss up to the draws
    lg, _ = GNNetLoss(contrastive=0.0, gn=1.0, noise=0.0)(pa, pb, uv, uv_b, mask)
    ls, _ = GNNetLoss(contrastive=0.0, gn=1.0, noise=0.0)(pb, pa, uv_b, uv, mask)
    assert lg.item() == pytest.approx(ls.item(), rel=1e-5)
    with pytest.raises(InputError, match="level 5"):
        GNNetLoss(levels=[5])(pa, pb, uv, uv, mask)
    with pytest.raises(InputError, match="level_weights"):
        GNNetLoss(levels=[0, 1], level_weights=[1.0])
    with pytest.raises(ShapeError, match="uv_b"):
        GNNetLoss()(pa, pb, uv, uv[:, :3], mask)


def test_gnnet_padded_canvas_drops_points_in_padding():
    image, canvas = (40, 60), (48, 64)
    pa, pb = _pyramids(2, image, canvas)
    uv, mask = _correspondences(image=canvas, seed=2)  # some fall in the padding
    in_image = (uv[..., 0] <= image[1] - 1) & (uv[..., 1] <= image[0] - 1)
    loss, stats = GNNetLoss()(pa, pb, uv, uv, mask, generator=gen())
    assert math.isfinite(loss.item())
    assert stats["valid/l0"] == in_image.sum().item()
    # the same loss as with the padding rows masked out
    loss_m, _ = GNNetLoss()(pa, pb, uv, uv, mask & in_image, generator=gen())
    assert loss.item() == loss_m.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gnnet_dtypes(dtype):
    pa, pb = _pyramids(3, dtype=dtype)
    uv, mask = _correspondences(seed=3)
    loss, _ = GNNetLoss()(pa, pb, uv.to(dtype), (uv + 1).to(dtype), mask, generator=gen())
    assert loss.dtype == dtype
    loss.backward()


@CUDA
def test_losses_on_cuda():
    pa, pb = _pyramids(4)
    pa, pb = pa.detach().to("cuda"), pb.detach().to("cuda")
    for pyr in (pa, pb):
        for lvl in pyr.levels:
            lvl.features.requires_grad_()
    uv, mask = _correspondences(seed=4)
    loss, stats = GNNetLoss()(pa, pb, uv.cuda(), uv.cuda() + 0.3, mask.cuda(), generator=gen())
    assert loss.device.type == "cuda" and math.isfinite(stats["loss"])
    loss.backward()
    cpu, _ = GNNetLoss()(
        pa.detach().to("cpu"), pb.detach().to("cpu"), uv, uv + 0.3, mask, generator=gen()
    )
    assert cpu.item() == pytest.approx(loss.item(), rel=1e-4)
    # a CUDA generator works too
    g = torch.Generator(device="cuda").manual_seed(0)
    d = torch.randn(2, 5, 8, device="cuda")
    u = torch.rand(2, 5, 2, device="cuda") * 10
    f = pa[0].features.detach()
    assert math.isfinite(gauss_newton_loss(d, f, u, generator=g)[0].item())
    assert math.isfinite(contrastive_loss(d, f, u, radius=2, top_m=5, generator=g)[0].item())
