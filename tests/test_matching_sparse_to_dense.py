"""Sparse-to-dense matching: exact self-matches, sub-pixel shifts, the modified ratio test,
chunking and batching, padding, bad input."""

from __future__ import annotations

import kornia
import pytest
import torch
import torch.nn.functional as F

from dgeo.data.synthetic.textures import single_threaded
from dgeo.errors import InputError, ShapeError
from dgeo.geometry import FeatureLevel, FeaturePyramid, sample
from dgeo.matching import S2DMatches, match_sparse_to_dense
from dgeo.models import DenseSIFT

H, W = 64, 80
FIELDS = ("uv", "score", "valid", "ratio")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add synchronisation (10x slower on a loaded box)."""
    with single_threaded():
        yield


def textured(b=1, h=H, w=W, seed=0, sigma=2.0):
    """Smooth random RGB texture in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g)
    return kornia.filters.gaussian_blur2d(x, (13, 13), (sigma, sigma), border_type="reflect")


def keypoints(n, seed=1, margin=10.0, b=1):
    """``(b, n, 2)`` random interior image points (non-integer)."""
    g = torch.Generator().manual_seed(seed)
    span = torch.tensor([W - 1 - 2 * margin, H - 1 - 2 * margin])
    return torch.rand(b, n, 2, generator=g) * span + margin


def shifted(img, t):
    """``img`` translated by ``t`` pixels: ``out(u) = img(u - t)`` (bilinear)."""
    b, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(1, -1, 2).expand(b, -1, -1) - t
    out, _ = sample(img, grid)
    return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def sift():
    return DenseSIFT(strides=[1, 2])


def test_identical_image_matches_every_keypoint(sift):
    img = textured()
    pyr = sift(img)
    kp = keypoints(60)
    desc, ok = pyr.sample(kp, 0)
    assert bool(ok.all())
    m = match_sparse_to_dense(desc, pyr, 0, refine="bilinear")
    assert isinstance(m, S2DMatches) and m.uv.shape == (1, 60, 2) and m.valid.shape == (1, 60)
    err = (m.uv - kp).norm(dim=-1)
    assert err.max() < 0.05  # ~0.003 px: the interpolated map reproduces the descriptor
    assert m.valid.float().mean() > 0.9 and bool((m.score > 0.95).all())  # s_1 of the cell
    # integer keypoints: the best cell is the keypoint itself (cell centres exact)
    kp_int = kp.round()
    desc, _ = pyr.sample(kp_int, 0)
    m = match_sparse_to_dense(desc, pyr, 0, subpixel=False)
    assert torch.equal(m.uv, kp_int)
    # the parabola is cheap but assumes a symmetric peak: a fraction of a pixel off
    m = match_sparse_to_dense(desc, pyr, 0)
    assert (m.uv - kp_int).norm(dim=-1).max() < 0.35
    # a level of stride 2: keypoints at cell centres come back exactly, others refined
    centres = pyr.to_image(pyr.to_level(kp, 1).round(), 1)
    desc, _ = pyr.sample(centres, 1)
    m = match_sparse_to_dense(desc, pyr, 1, subpixel=False, ratio=1.0)
    torch.testing.assert_close(m.uv, centres, atol=1e-5, rtol=0)
    desc, _ = pyr.sample(kp, 1)
    m = match_sparse_to_dense(desc, pyr, 1, refine="bilinear")
    assert (m.uv - kp).norm(dim=-1).max() < 0.05


@pytest.mark.parametrize("t", [(0.3, -0.4), (0.5, 0.5), (-0.25, 0.1)])
def test_subpixel_refinement_recovers_a_shift(sift, t):
    t = torch.tensor(t)
    img = textured(sigma=2.5)
    ref, query = sift(img), sift(shifted(img, t))
    kp = keypoints(80)
    desc, _ = ref.sample(kp, 0)
    errors = {}
    for name, kw in (
        ("cell", dict(subpixel=False)),
        ("parabola", dict()),
        ("bilinear", dict(refine="bilinear")),
    ):
        m = match_sparse_to_dense(desc, query, 0, **kw)
        assert m.valid.float().mean() > 0.8
        err = (m.uv - (kp + t)).norm(dim=-1)[0]
        errors[name] = err
        shift = (m.uv - kp)[0].median(0).values
        if name != "cell":
            assert (shift - t).abs().max() < 0.05, (name, shift)  # the shift, robustly
            assert err.quantile(0.9) < (0.18 if name == "parabola" else 0.1), name
    assert errors["cell"].mean() > 0.3  # cell centres: up to half a pixel per axis
    assert errors["parabola"].mean() < 0.1
    assert errors["bilinear"].mean() < 0.06
    assert errors["parabola"].mean() < 0.4 * errors["cell"].mean()


def test_ratio_test_rejects_repeated_texture(sift):
    patch = textured(h=16, w=16, seed=3)
    tiled = patch.repeat(1, 1, H // 16, W // 16)
    pyr = sift(tiled)
    kp = keypoints(50)
    desc, _ = pyr.sample(kp, 0)
    m = match_sparse_to_dense(desc, pyr, 0)
    assert m.valid.float().mean() < 0.1
    assert bool((m.ratio[~m.valid] > 0.81).all())
    # the same points on a unique texture pass
    unique = sift(textured(seed=3))
    desc, _ = unique.sample(kp, 0)
    m = match_sparse_to_dense(desc, unique, 0)
    assert m.valid.float().mean() > 0.9
    # the ratio is s_k / s_1 (S2DHM), compared with ratio ** 2
    assert bool(((m.ratio <= 0.81) == m.valid).all())
    # Lowe's form on distances accepts more on a self-match (d_1 ~ 0)
    lowe = match_sparse_to_dense(desc, unique, 0, ratio_test="distance")
    assert lowe.valid.sum() >= m.valid.sum()


@pytest.mark.parametrize("tiled", [False, True])
def test_counting_ratio_test_decides_as_the_topk_one(sift, tiled):
    """return_ratio=False counts the cells above ratio^2 s_1 instead of taking a top-k: the same
    matches and the same decisions, on a unique texture and on a repeated one (a little noise
    on both maps, so that no two cells tie for the best)."""
    img = textured(seed=7)
    if tiled:
        img = textured(h=16, w=16, seed=7).repeat(1, 1, H // 16, W // 16)
    g = torch.Generator().manual_seed(1)
    pyr = sift(img + 0.01 * torch.randn(img.shape, generator=g))
    noisy = sift(img + 0.05 * torch.randn(img.shape, generator=g))
    desc, _ = noisy.sample(keypoints(200, seed=2), 0)
    mixed = 0
    for level in (0, 1):
        for ratio in (0.9, 0.97, 0.99):
            full = match_sparse_to_dense(desc, pyr, level, ratio=ratio)
            fast = match_sparse_to_dense(desc, pyr, level, ratio=ratio, return_ratio=False)
            assert fast.ratio is None
            assert torch.equal(fast.valid, full.valid), (level, ratio)
            assert torch.equal(fast.uv, full.uv) and torch.equal(fast.score, full.score)
            mixed += 0 < int(full.valid.sum()) < full.valid.numel()
    assert mixed >= 1  # decisions both ways somewhere, not all-or-nothing


def test_chunking_batching_and_pairs(sift):
    imgs = textured(b=3, seed=4)
    pyr = sift(imgs)
    kp = keypoints(30, seed=5, b=4)
    pairs = torch.tensor([2, 0, 2, 1])  # two pairs on query image 2
    desc, _ = pyr.select(pairs).sample(kp, 0)
    mask = torch.rand(4, 30, generator=torch.Generator().manual_seed(0)) > 0.2
    for level in (0, 1):
        for kw in (dict(), dict(refine="bilinear"), dict(subpixel=False)):
            full = match_sparse_to_dense(desc, pyr, level, pairs, mask, **kw)
            # one pair per block (all keypoints): exactly the same numbers
            hw = pyr[level].features[0, 0].numel()
            by_pair = match_sparse_to_dense(
                desc, pyr, level, pairs, mask, chunk_elements=128 * hw, **kw
            )
            for f in FIELDS:
                assert torch.equal(getattr(full, f), getattr(by_pair, f)), (level, kw, f)
            # one pair at a time through the public API: the same again
            ones = [
                match_sparse_to_dense(desc[i : i + 1], pyr.select(pairs[i : i + 1]), level, **kw)
                for i in range(4)
            ]
            for f in ("uv", "score", "ratio"):
                assert torch.equal(torch.cat([getattr(o, f) for o in ones]), getattr(full, f))
            valid = torch.cat([o.valid for o in ones]) & mask
            assert torch.equal(valid, full.valid)
            # one keypoint per block: BLAS sums a row of fewer rows in another order, so only
            # the last bits of the similarities change (the same cells are found)
            tiny = match_sparse_to_dense(desc, pyr, level, pairs, mask, chunk_elements=1, **kw)
            torch.testing.assert_close(tiny.score, full.score, atol=1e-6, rtol=0)
            torch.testing.assert_close(tiny.ratio, full.ratio, atol=1e-5, rtol=0)
            assert torch.equal(tiny.valid, full.valid)
            tol = 1e-4 if kw.get("refine") != "bilinear" else 2 * 2.0**level / 256
            torch.testing.assert_close(tiny.uv, full.uv, atol=tol, rtol=0)
    assert bool((~full.valid[~mask]).all())
    # the two pairs on image 2 with the same descriptors give the same matches
    same = match_sparse_to_dense(desc[[0, 0]], pyr, 0, torch.tensor([2, 2]))
    assert torch.equal(same.uv[0], same.uv[1])


def test_peaks_in_the_padding_are_rejected():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(1, 64, 10, 12, generator=g), dim=1)
    # image 8 x 10 on a 10 x 12 canvas, stride 1: the last two rows and columns are padding
    pyr = FeaturePyramid((FeatureLevel(feats, None, 1.0),), (8, 10), (10, 12))
    cells = torch.tensor([[3, 4], [9, 2], [5, 11], [7, 9]])  # (y, x)
    desc = feats[0, :, cells[:, 0], cells[:, 1]].T[None] * 3.0  # any norm
    m = match_sparse_to_dense(desc, pyr, 0, subpixel=False)
    assert torch.equal(m.uv[0], cells.flip(-1).float())
    assert m.valid[0].tolist() == [True, False, False, True]
    torch.testing.assert_close(m.score, torch.ones(1, 4))
    # zero and non-finite descriptors are invalid, not errors
    desc[0, 0] = 0.0
    desc[0, 3, 5] = float("nan")
    m = match_sparse_to_dense(desc, pyr, 0, subpixel=False)
    assert not bool(m.valid.any())


def test_bad_input(sift):
    pyr = sift(textured(b=2))
    desc = torch.rand(2, 5, 128)
    with pytest.raises(ShapeError, match="C=64 channels but query level 0 has 128"):
        match_sparse_to_dense(torch.rand(2, 5, 64), pyr, 0)
    with pytest.raises(ShapeError, match="pass pairs"):
        match_sparse_to_dense(torch.rand(3, 5, 128), pyr, 0)
    with pytest.raises(InputError, match=r"pairs must index the 2 query images"):
        match_sparse_to_dense(desc, pyr, 0, pairs=torch.tensor([0, 2]))
    with pytest.raises(ShapeError, match="pairs must be a"):
        match_sparse_to_dense(desc, pyr, 0, pairs=torch.tensor([0.0, 1.0]))
    with pytest.raises(ShapeError, match="mask must be a"):
        match_sparse_to_dense(desc, pyr, 0, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"\(P, N, C\)"):
        match_sparse_to_dense(torch.rand(5, 128), pyr, 0)
    with pytest.raises(InputError, match="level 5"):
        match_sparse_to_dense(desc, pyr, 5)
    with pytest.raises(InputError, match="ratio_test"):
        match_sparse_to_dense(desc, pyr, 0, ratio_test="lowe")
    with pytest.raises(InputError, match="refine"):
        match_sparse_to_dense(desc, pyr, 0, refine="cubic")
    with pytest.raises(InputError, match="k_fraction"):
        match_sparse_to_dense(desc, pyr, 0, k_fraction=0.0)
