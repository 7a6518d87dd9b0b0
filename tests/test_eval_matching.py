"""Matching accuracy: PCK, nearest-neighbour and sparse-to-dense matches on closed-form cases
(identical maps, integer shifts, coarse levels, canvas padding), NaN handling, chunking, masks,
and the pair-batch convenience used by training validation."""

from __future__ import annotations

import math

import kornia
import pytest
import torch

from dgeo.data.synthetic.textures import single_threaded
from dgeo.errors import InputError, ShapeError
from dgeo.eval import (
    MatchScores,
    match_scores,
    matching_pck,
    nearest_neighbour_matches,
    pck,
    sparse_to_dense_matches,
)
from dgeo.geometry import FeatureLevel, FeaturePyramid
from dgeo.models import DenseSIFT, UNetPyramid


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_threaded():
        yield


def one_hot_map(h: int, w: int, b: int = 1) -> torch.Tensor:
    """``(b, h * w, h, w)``: pixel ``(x, y)`` holds the one-hot vector of index ``y * w + x``."""
    eye = torch.eye(h * w).reshape(h * w, h, w)
    return eye[None].expand(b, -1, -1, -1).clone()


def pyramid(fmap: torch.Tensor, image_size=None, canvas_size=None) -> FeaturePyramid:
    size = image_size or tuple(fmap.shape[-2:])
    return FeaturePyramid((FeatureLevel(fmap),), size, canvas_size)


def grid_points(h: int, w: int, b: int = 1, step: int = 1) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(0, h, step, dtype=torch.float32),
        torch.arange(0, w, step, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys], -1).reshape(1, -1, 2).expand(b, -1, -1).clone()


def textured(b=1, h=48, w=64, seed=0, sigma=1.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h + 16, w + 16, generator=g)
    x = kornia.filters.gaussian_blur2d(x, (9, 9), (sigma, sigma), border_type="reflect")
    return x


# ------------------------------------------------------------------------------------- pck
def test_pck_closed_form_nan_and_mask():
    gt = torch.zeros(1, 5, 2)
    pred = torch.tensor([[[0.5, 0.0], [0.0, 2.0], [3.0, 4.0], [math.nan, 0.0], [9.0, 0.0]]])
    assert pck(pred, gt) == {1.0: 20.0, 3.0: 40.0, 5.0: 60.0}  # 5.0 is within 5 px
    mask = torch.tensor([[True, True, True, True, False]])
    assert pck(pred, gt, mask, thresholds=(5,)) == {5.0: 75.0}
    none = pck(pred, gt, torch.zeros(1, 5, dtype=torch.bool))
    assert all(math.isnan(v) for v in none.values())
    with pytest.raises(ShapeError):
        pck(pred, gt[:, :3])
    with pytest.raises(ShapeError):
        pck(pred, gt, mask.float())
    with pytest.raises(InputError):
        pck(pred, gt, thresholds=(0,))


def test_match_scores_coverage_precision():
    gt = torch.zeros(2, 4, 2)
    pred = torch.zeros(2, 4, 2)
    pred[0, 0] = 10.0  # kept but wrong
    pred[1, 3] = math.nan  # no match
    kept = torch.ones(2, 4, dtype=torch.bool)
    kept[0, 1] = False  # rejected (its prediction is ignored)
    s = match_scores(pred, gt, kept=kept, thresholds=(1.0,))
    assert isinstance(s, MatchScores) and s.count == 8
    assert s.coverage == pytest.approx(100 * 6 / 8)
    assert s.pck[1.0] == pytest.approx(100 * 5 / 8)
    assert s.precision[1.0] == pytest.approx(100 * 5 / 6)
    assert s.to_dict()["pck"] == {"1": s.pck[1.0]}


# ------------------------------------------------------------------------ nearest neighbours
def test_identical_one_hot_maps_match_exactly():
    h, w = 6, 8
    pa = pyramid(one_hot_map(h, w, b=2))
    uv = grid_points(h, w, b=2)
    pred = nearest_neighbour_matches(pa, pa, uv)
    assert torch.equal(pred, uv)
    assert pck(pred, uv) == {1.0: 100.0, 3.0: 100.0, 5.0: 100.0}


@pytest.mark.parametrize("subpixel", [False, True])
def test_integer_shift(subpixel):
    h, w, dx, dy = 20, 24, 3, -2
    fa = torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(0))
    fb = torch.roll(fa, shifts=(dy, dx), dims=(2, 3))  # fb(x + dx, y + dy) = fa(x, y)
    uv = grid_points(h, w)
    x, y = uv[..., 0] + dx, uv[..., 1] + dy
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    pred = nearest_neighbour_matches(pyramid(fa), pyramid(fb), uv, subpixel=subpixel)
    expected = uv + torch.tensor([dx, dy], dtype=torch.float32)
    # random features: the exact cell wins; its parabola is symmetric only on average
    tol = 0.5 if subpixel else 0.0
    assert (pred - expected)[inside].abs().max() <= tol
    assert pck(pred, expected, inside, (1.0,)) == {1.0: 100.0}


def test_coarse_level_maps_cells_to_image_pixels():
    h, w, s = 6, 8, 4  # a stride-4 level of a 24x32 image
    pa = FeaturePyramid.from_maps([one_hot_map(h, w)], (h * s, w * s))
    fb = torch.roll(one_hot_map(h, w), shifts=(1, 2), dims=(2, 3))  # +2 cells in x, +1 in y
    pb = FeaturePyramid.from_maps([fb], (h * s, w * s))
    cells = grid_points(h - 1, w - 2)  # cells whose shifted position stays in the map
    uv_a = pa.to_image(cells, 0)  # (4 c + 1.5)
    pred = nearest_neighbour_matches(pa, pb, uv_a)
    assert torch.allclose(pred, pb.to_image(cells + torch.tensor([2.0, 1.0]), 0))
    assert torch.allclose(pred - uv_a, torch.tensor([8.0, 4.0]).expand_as(pred))


def test_invalid_points_give_nan_and_nan_features_are_safe():
    h, w = 6, 8
    pa = pyramid(one_hot_map(h, w))
    fb = one_hot_map(h, w)
    fb[..., 0, 0] = math.nan  # a broken cell of b must not win or poison the rest
    uv = torch.tensor([[[1.0, 2.0], [-1.0, 2.0], [math.nan, 1.0], [w - 1.0, h + 0.5], [3, 4]]])
    pred = nearest_neighbour_matches(pa, pyramid(fb), uv)
    assert torch.isnan(pred[0, 1:4]).all()
    assert torch.equal(pred[0, [0, 4]], uv[0, [0, 4]])
    zero = pyramid(torch.zeros(1, 4, h, w))  # zero descriptors are invalid too
    assert torch.isnan(nearest_neighbour_matches(zero, zero, uv[:, :1])).all()
    assert pck(pred, uv)[1.0] == pytest.approx(40.0)


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(3)
    fa, fb = torch.randn(2, 8, 10, 12, generator=g), torch.randn(2, 8, 10, 12, generator=g)
    uv = torch.rand(2, 37, 2, generator=g) * torch.tensor([11.0, 9.0])
    pa, pb = pyramid(fa), pyramid(fb)
    cells = nearest_neighbour_matches(pa, pb, uv)
    full = nearest_neighbour_matches(pa, pb, uv, subpixel=True)
    for chunk in (1, 2 * 120 * 5):
        assert torch.equal(nearest_neighbour_matches(pa, pb, uv, chunk=chunk), cells)
        sub = nearest_neighbour_matches(pa, pb, uv, chunk=chunk, subpixel=True)
        assert torch.allclose(sub, full, atol=1e-5)  # bmm sums in another order
    # batch items are independent
    one = nearest_neighbour_matches(pa.select([1]), pb.select([1]), uv[1:])
    assert torch.equal(one, cells[1:])


def test_padding_cells_never_win():
    h, w = 6, 8
    fa = one_hot_map(h, w)
    fb = torch.zeros_like(fa)
    fb[0, 13, 1, 5] = fb[0, 0, 1, 5] = 1.0  # the true cell (x=5, y=1) is similar (cos 0.7) ...
    fb[0, 13, 1, 7] = 1.0  # ... a padding column (x=7, past the 7-pixel-wide image) more so
    pa, pb = pyramid(fa, (h, 7), (h, w)), pyramid(fb, (h, 7), (h, w))
    pred = nearest_neighbour_matches(pa, pb, torch.tensor([[[5.0, 1.0]]]))
    assert torch.equal(pred, torch.tensor([[[5.0, 1.0]]]))


def test_bad_input():
    pa = pyramid(one_hot_map(4, 5))
    with pytest.raises(ShapeError):
        nearest_neighbour_matches(pa, pa, torch.zeros(2, 3, 2))
    with pytest.raises(ShapeError):
        nearest_neighbour_matches(pa, pyramid(torch.rand(1, 3, 4, 5)), torch.zeros(1, 3, 2))
    with pytest.raises(InputError):
        nearest_neighbour_matches(pa, pa, torch.zeros(1, 3, 2), level=1)
    with pytest.raises(InputError):
        sparse_to_dense_matches(pa, pa, torch.zeros(1, 3, 2), ratio=0.0)


# --------------------------------------------------------------------------- sparse to dense
def test_sparse_to_dense_identity_and_ratio_test():
    img = textured()[..., 8:-8, 8:-8]
    pyr = DenseSIFT(strides=(1, 4)).extract(img)
    uv = grid_points(48, 64, step=5) + 0.25
    mask = torch.ones(uv.shape[:2], dtype=torch.bool)
    mask[0, :7] = False
    pred, kept = sparse_to_dense_matches(pyr, pyr, uv, mask)
    assert not kept[0, :7].any() and torch.isnan(pred[0, :7]).all()
    s = match_scores(pred, uv, mask, kept)
    assert s.coverage == 100.0 and s.pck[1.0] == 100.0
    # S2DHM's test on similarities rejects some self-matches (look-alike neighbours)
    pred_r, kept_r = sparse_to_dense_matches(pyr, pyr, uv, mask, ratio=0.9)
    s_r = match_scores(pred_r, uv, mask, kept_r)
    assert (kept_r <= kept).all() and 50 < s_r.coverage < 100 and s_r.precision[1.0] == 100
    pred1, kept1 = sparse_to_dense_matches(
        pyr, pyr, uv, mask, level=1, ratio=0.9, ratio_test="distance"
    )
    s1 = match_scores(pred1, uv, mask, kept1, thresholds=(3.0,))
    assert 50 < s1.coverage < 100 and s1.precision[3.0] > 90


# ------------------------------------------------------------------------------ pair batches
def shifted_batch(dx=5, dy=3, n=64):
    img = textured(b=2)
    h, w = 48, 64
    a = img[..., 8 : 8 + h, 8 : 8 + w]
    b = img[..., 8 - dy : 8 - dy + h, 8 - dx : 8 - dx + w]  # b(x + dx, y + dy) = a(x, y)
    g = torch.Generator().manual_seed(0)
    uv_a = torch.rand(2, n, 2, generator=g) * torch.tensor([w - 1 - dx, h - 1 - dy])
    uv_a = uv_a.round()
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[:, -5:] = False
    uv_b = uv_a + torch.tensor([float(dx), float(dy)])
    uv_b[~mask] = 0.0
    return {"image_a": a, "image_b": b, "uv_a": uv_a, "uv_b": uv_b, "mask": mask}


def test_matching_pck_on_a_shifted_pair():
    batch = shifted_batch()
    out = matching_pck(DenseSIFT(strides=(1, 4)), batch)
    assert set(out) == {1.0, 3.0, 5.0}
    assert out[1.0] > 95
    coarse = matching_pck(DenseSIFT(strides=(1, 4)), batch, level=1, thresholds=(3.0, 8.0))
    assert coarse[8.0] > 80


def test_matching_pck_restores_training_mode():
    net = UNetPyramid(widths=(4, 8), decoder_widths=(4,), strides=(1, 2), dims=(4, 4))
    net.train()
    out = matching_pck(net, shifted_batch(n=8), level=-1)
    assert net.training and all(0 <= v <= 100 for v in out.values())
    with pytest.raises(InputError):
        matching_pck(net, {"image_a": torch.zeros(1, 3, 8, 8)})
