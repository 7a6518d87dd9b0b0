"""HPatches pairs: dense homography correspondences in fitted images, the pixel convention, the
item contract, determinism, bad folders and files; the real v_churchill sequence if present."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dgeo.data.pairs.base import check_item
from dgeo.data.pairs.hpatches import HPatchesPairs, find_sequences, read_homography, warp_points
from dgeo.data.synthetic.textures import single_threaded
from dgeo.errors import DataFileNotFoundError, InputError, ParseError
from dgeo.geometry import sample

CHURCHILL = Path(__file__).resolve().parents[2] / "shared" / "data" / "hpatches_v_churchill"
SIZE = (96, 128)  # (h, w) of the synthetic sequence's images

# centre-convention homographies of a synthetic sequence (image 1 -> image k)
HOMOGRAPHIES = {
    2: np.array([[1.0, 0.0, 7.0], [0.0, 1.0, -4.0], [0.0, 0.0, 1.0]]),  # integer shift
    3: np.array([[1.25, 0.08, -6.0], [-0.05, 1.2, -3.0], [4e-4, -2e-4, 1.0]]),
    4: np.array([[1.5, 0.0, -20.0], [0.0, 1.5, -18.0], [0.0, 0.0, 1.0]]),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_threaded():
        yield


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """``(h, w, 3)`` uint8 smooth random texture with sharp-ish detail."""
    rng = np.random.default_rng(seed)
    x = rng.random((h, w, 3)).astype(np.float32)
    x = cv2.GaussianBlur(x, (0, 0), 2.0)
    x = (x - x.min()) / (x.max() - x.min())
    return (x * 255).round().astype(np.uint8)


def write_sequence(folder: Path, homographies=HOMOGRAPHIES, size=SIZE) -> Path:
    """Image 1 (``.ppm``), its exact warps ``k.png`` by ``H_1_k`` (OpenCV's ``warpPerspective``
    uses the centre convention) and the ``H_1_k`` text files."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    big = texture(h * 2, w * 2)
    img = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "1.ppm"), img)
    for k, H in homographies.items():
        warped = cv2.warpPerspective(img, H, (w, h), flags=cv2.INTER_LINEAR)
        cv2.imwrite(str(folder / f"{k}.png"), warped)
        np.savetxt(folder / f"H_1_{k}", H)
    return folder


@pytest.fixture(scope="module")
def sequence(tmp_path_factory) -> Path:
    return write_sequence(tmp_path_factory.mktemp("hpatches") / "v_synthetic")


def photometric_error(item: dict) -> float:
    """Mean absolute difference of image a at uv_a and image b at uv_b (masked rows)."""
    va, _ = sample(item["image_a"][None], item["uv_a"][None])
    vb, _ = sample(item["image_b"][None], item["uv_b"][None])
    return float((va - vb).abs().mean(-1)[0][item["mask"]].mean())


def test_items_follow_the_contract(sequence):
    ds = HPatchesPairs(sequence, height=SIZE[0], width=SIZE[1], num_points=300, seed=1)
    assert len(ds) == 3 and not ds.has_geometry and ds.skipped == 0
    names = [ds[i]["name"] for i in range(len(ds))]
    assert names == [f"v_synthetic/1.ppm|v_synthetic/{k}.png" for k in (2, 3, 4)]
    for i in range(len(ds)):
        item = ds[i]
        check_item(item, ds)
        assert item["mask"].all()
        assert photometric_error(item) < 0.02  # the images are exact warps of each other


def test_integer_shift_is_exact(sequence):
    ds = HPatchesPairs(sequence, height=SIZE[0], width=SIZE[1])
    uv_a, uv_b = ds.dense_correspondences(0)
    assert torch.equal(uv_b, uv_a + torch.tensor([7.0, -4.0], dtype=torch.float64))
    # exactly the pixels of a whose shifted position is on b's pixel grid
    h, w = SIZE
    assert uv_a.shape[0] == (w - 7) * (h - 4)


def test_fitting_scales_correspondences(sequence):
    """Images fitted at half size: correspondences are the full-size ones, scaled about pixel
    centres; a portrait canvas pads the right and holds no correspondences there."""
    full = HPatchesPairs(sequence, height=SIZE[0], width=SIZE[1])
    half = HPatchesPairs(sequence, height=SIZE[0] // 2, width=SIZE[1] // 2)
    ua, ub = half.dense_correspondences(2)
    orig = (ua + 0.5) * 2 - 0.5
    expected, ok = warp_points(torch.from_numpy(HOMOGRAPHIES[4]), orig)
    assert ok.all() and torch.allclose(ub, (expected + 0.5) / 2 - 0.5, atol=1e-9)
    # the half-size pair is as consistent as the full one
    assert photometric_error(half[2]) < photometric_error(full[2]) + 0.01
    tall = HPatchesPairs(sequence, height=SIZE[0] // 2, width=SIZE[1], num_points=8000)
    item = tall[1]
    check_item(item, tall)
    assert not item["mask"].all()  # fewer dense correspondences than N: padded rows
    assert item["uv_a"][item["mask"]][:, 0].max() <= SIZE[1] // 2 - 1
    assert (item["image_a"][:, :, SIZE[1] // 2 :] == 0).all()


def test_convention_centre_matches_opencv_warps(sequence):
    """The sequence is warped by OpenCV (centre convention): reading its homographies with
    the corner convention misplaces points by (A - I) / 2 and raises the photometric error."""
    centre = HPatchesPairs(sequence, height=SIZE[0], width=SIZE[1], num_points=4000)
    corner = HPatchesPairs(
        sequence, height=SIZE[0], width=SIZE[1], num_points=4000, convention="corner"
    )
    e_centre, e_corner = photometric_error(centre[2]), photometric_error(corner[2])
    assert e_centre < 0.7 * e_corner
    uv = torch.tensor([[0.0, 0.0], [10.0, 20.0]], dtype=torch.float64)
    H = torch.diag(torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64))
    assert torch.equal(warp_points(H, uv)[0], 2 * uv)
    assert torch.equal(warp_points(H, uv, "corner")[0], 2 * uv + 0.5)
    behind = torch.tensor([[1, 0, 0], [0, 1, 0], [-1, 0, 1]], dtype=torch.float64)
    assert warp_points(behind, torch.tensor([[0.5, 0.0], [2.0, 0.0]]))[1].tolist() == [True, False]


def test_determinism_and_epochs(sequence):
    kw = dict(height=SIZE[0], width=SIZE[1], num_points=64, seed=3)
    a, b = HPatchesPairs(sequence, **kw), HPatchesPairs(sequence, **kw)
    assert torch.equal(a[1]["uv_a"], b[1]["uv_a"])
    b.set_epoch(1)
    assert not torch.equal(a[1]["uv_a"], b[1]["uv_a"])
    loader = torch.utils.data.DataLoader(a, batch_size=2)
    batch = next(iter(loader))
    assert batch["image_a"].shape == (2, 3, *SIZE) and batch["uv_b"].shape == (2, 64, 2)


def test_root_of_sequences_and_bad_input(tmp_path, sequence):
    root = tmp_path / "release"
    write_sequence(root / "i_one", {2: HOMOGRAPHIES[2]})
    write_sequence(root / "v_two", {3: HOMOGRAPHIES[3], 5: HOMOGRAPHIES[4]})
    (root / "notes").mkdir()
    assert [p.name for p in find_sequences(root)] == ["i_one", "v_two"]
    ds = HPatchesPairs(root, height=48, width=64, num_points=16)
    assert [ds[i]["name"].split("|")[1] for i in range(3)] == [
        "i_one/2.png",
        "v_two/3.png",
        "v_two/5.png",
    ]
    with pytest.raises(DataFileNotFoundError):
        HPatchesPairs(tmp_path / "missing")
    with pytest.raises(InputError, match="no HPatches pair"):
        HPatchesPairs(root / "notes")
    with pytest.raises(InputError):
        HPatchesPairs(sequence, convention="middle")
    bad = write_sequence(tmp_path / "bad", {2: HOMOGRAPHIES[2]})
    (bad / "H_1_2").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(ParseError, match="3 rows"):
        HPatchesPairs(bad)
    (bad / "H_1_2").write_text("1 0 0\n0 1 0\n0 0 x\n")
    with pytest.raises(ParseError):
        read_homography(bad / "H_1_2")
    (bad / "H_1_2").write_text("1 0 0\n1 0 0\n0 0 1\n")
    with pytest.raises(ParseError, match="singular"):
        read_homography(bad / "H_1_2")


def test_undecodable_image_is_skipped(tmp_path):
    seq = write_sequence(tmp_path / "v_broken", {2: HOMOGRAPHIES[2], 3: HOMOGRAPHIES[3]})
    (seq / "2.png").write_bytes(b"not an image")
    ds = HPatchesPairs(seq, height=48, width=64, num_points=16)
    assert ds[0]["name"].endswith("3.png") and ds.skipped == 1
    (seq / "3.png").write_bytes(b"")
    with pytest.raises(InputError, match="could be loaded"):
        HPatchesPairs(seq, height=48, width=64, num_points=16)[0]


@pytest.mark.skipif(not CHURCHILL.is_dir(), reason="shared/data/hpatches_v_churchill is absent")
def test_real_v_churchill():
    ds = HPatchesPairs(CHURCHILL, height=240, width=320, num_points=512)
    assert len(ds) == 5
    for i in range(len(ds)):
        item = ds[i]
        check_item(item, ds)
        assert item["mask"].all()
        assert item["uv_a"][:, 0].max() <= 180 - 1  # 768x1024 portrait fitted to 180x240
        # a random pairing of the same points differs ~4x more
        shuffled = dict(item, uv_b=item["uv_b"][torch.randperm(512)])
        assert photometric_error(item) < 0.3 * photometric_error(shuffled)
    # the convention: at full size, H_1_2 (scale 2.4) aligns better read as centre-based
    full = HPatchesPairs(CHURCHILL, height=1024, width=768)
    ua = full.dense_correspondences(0)[0][::7].float()
    _, path_1, path_2, H = full.pairs[0]
    img1, img2 = full.fitted_image(path_1)[0], full.fitted_image(path_2)[0]
    errors = {}
    for convention in ("centre", "corner"):
        ub, ok = warp_points(H, ua.double(), convention)
        va, _ = sample(img1[None], ua[None])
        vb, valid = sample(img2[None], ub[None].float())
        keep = ok & valid[0]
        errors[convention] = float((va - vb).abs().mean(-1)[0][keep].mean())
    assert errors["centre"] < errors["corner"]
