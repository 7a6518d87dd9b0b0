"""dgeo.data.pairs sources on disk: COLMAP co-visible pairs, homographies, Cross-Season
correspondence files."""

from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from dgeo.data.pairs import (
    ColmapPairs,
    HomographyPairs,
    SeasonsPairs,
    apply_homography,
    check_item,
    covisible_pairs,
    parse_data_spec,
    read_correspondence_mat,
    split_of,
)
from dgeo.data.synthetic.correspondences import pixel_grid
from dgeo.errors import DataFileNotFoundError, InputError, ParseError
from dgeo.geometry import sample
from dgeo.io.colmap import synthesize_reference_map

KW = dict(height=48, width=64, num_points=64)


def write_image(path, h, w, seed=0):
    """A smooth random colour image (cubic upsampling of noise), written with OpenCV."""
    rng = np.random.default_rng(seed)
    small = (rng.random((max(h // 8, 2), max(w // 8, 2), 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))


def project(points, K, T=None):
    if T is not None:
        points = points @ T[:3, :3].T + T[:3, 3]
    return (points[:, :2] / points[:, 2:]) @ K[:2, :2].T + K[:2, 2]


# ---------------------------------------------------------------------------------- colmap
@pytest.fixture(scope="module")
def colmap_root(tmp_path_factory):
    """A tiny noise-free PINHOLE model of 5 images of 96 x 64 (aspect unlike the 64 x 48
    canvas, so fitting pads) and its images."""
    root = tmp_path_factory.mktemp("colmap")
    rmap = synthesize_reference_map(
        5, 60, camera_model="PINHOLE", width=96, height=64, track_length=3, seed=1
    )
    rmap.write(root / "sfm")
    for k, name in enumerate(rmap.names):
        write_image(root / "images" / name, 64, 96, seed=k)
    return root, rmap


def test_covisible_pairs_match_a_brute_force_count(colmap_root):
    _, rmap = colmap_root
    pairs, counts = covisible_pairs(rmap, 1)
    n = rmap.num_images
    brute = np.zeros((n, n), int)
    for p in range(rmap.num_points):
        seen = sorted(set(rmap.track(p)[0].tolist()))
        for a in seen:
            for b in seen:
                brute[a, b] += a < b
    assert {(i, j): c for (i, j), c in zip(pairs.tolist(), counts.tolist(), strict=True)} == {
        (i, j): int(brute[i, j]) for i in range(n) for j in range(n) if brute[i, j]
    }
    assert (np.diff(counts) <= 0).all()
    pairs, counts = covisible_pairs(rmap, 18)
    assert (counts >= 18).all() and len(counts) == int((brute >= 18).sum())


def test_colmap_pairs_project_consistently(colmap_root):
    root, _ = colmap_root
    ds = ColmapPairs(root / "sfm", root / "images", min_shared=5, max_pairs=4, **KW)
    assert len(ds) == 4 and ds.has_geometry
    assert list(ds.shared) == sorted(ds.shared, reverse=True)
    items = [ds[i] for i in range(len(ds))]
    for item in items:
        check_item(item, ds)
        m = item["mask"]
        assert int(m.sum()) >= 5
        pa = item["points_a"][m]
        err_a = (project(pa, item["K_a"]) - item["uv_a"][m]).norm(dim=-1)
        err_b = (project(pa, item["K_b"], item["b_from_a"]) - item["uv_b"][m]).norm(dim=-1)
        assert float(err_a.max()) < 1e-3 and float(err_b.max()) < 1e-3
        # fitted 96 x 64 -> 64 x 43: correspondences stay on the content, not in the padding
        assert float(item["uv_a"][m, 1].max()) <= 42.5 and bool(
            (item["image_a"][:, 43:] == 0).all()
        )
    assert default_collate(items)["points_a"].shape == (4, 64, 3)
    # the spec form of a dgeo synth folder
    assert len(parse_data_spec(f"colmap:{root}", split="all", min_shared=5, **KW)) >= 4


def test_colmap_pairs_without_pinhole_cameras_have_no_geometry(tmp_path):
    rmap = synthesize_reference_map(3, 20, camera_model="SIMPLE_RADIAL", width=64, height=48)
    (tmp_path / "images").mkdir()
    ds = ColmapPairs(rmap, tmp_path / "images", min_shared=1, **KW)
    assert not ds.has_geometry
    # no image was written: every pair is skipped, then a clear error
    with pytest.raises(InputError, match=r"no item of colmap.*could be loaded"):
        ds[0]
    assert ds.skipped == len(ds)


def test_colmap_pairs_skip_undecodable_images(colmap_root, tmp_path):
    root, rmap = colmap_root
    images = tmp_path / "images"
    for k, name in enumerate(rmap.names):
        write_image(images / name, 64, 96, seed=k)
    ds = ColmapPairs(root / "sfm", images, min_shared=5, **KW)
    i, _ = ds.pairs[0]
    (images / rmap.names[i]).write_bytes(b"not an image")
    item = ds[0]
    check_item(item, ds)
    assert rmap.names[i] not in item["name"].split("|") and ds.skipped >= 1


def test_colmap_pairs_errors(colmap_root, tmp_path):
    root, _ = colmap_root
    with pytest.raises(DataFileNotFoundError, match=r"images folder .*nope"):
        ColmapPairs(root / "sfm", tmp_path / "nope")
    with pytest.raises(DataFileNotFoundError):
        ColmapPairs(tmp_path / "no_model", root / "images")
    with pytest.raises(InputError, match="no image pair shares 1000"):
        ColmapPairs(root / "sfm", root / "images", min_shared=1000)
    empty = synthesize_reference_map(2, 0, camera_model="PINHOLE", width=64, height=48)
    with pytest.raises(InputError, match="no 3D points"):
        ColmapPairs(empty, root / "images")


def test_colmap_split_is_a_deterministic_partition(colmap_root):
    root, _ = colmap_root
    kw = dict(min_shared=1, val_fraction=0.4, **KW)
    names = ColmapPairs(root / "sfm", root / "images", **kw).names
    train = ColmapPairs(root / "sfm", root / "images", split="train", **kw).names
    val = ColmapPairs(root / "sfm", root / "images", split="val", **kw).names
    assert sorted(train + val) == sorted(names) and not set(train) & set(val)


# ---------------------------------------------------------------------------------- homography
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_image(root / "wide.png", 60, 100, seed=1)
    write_image(root / "sub" / "tall.jpg", 90, 40, seed=2)
    write_image(root / "same.png", 48, 64, seed=3)
    (root / "notes.txt").write_text("not an image")
    return root


def test_homography_correspondences_and_warp_are_exact(photos):
    ds = HomographyPairs(photos, photometric=False, **KW)
    assert len(ds) == 3 and not ds.has_geometry
    for i in range(len(ds)):
        item = ds[i]
        check_item(item, ds)
        H = ds.homography(i)
        m = item["mask"]
        assert int(m.sum()) == 64
        uv_b, _ = apply_homography(H, item["uv_a"][m].double())
        assert float((uv_b - item["uv_b"][m]).abs().max()) < 1e-3
        assert bool((item["uv_b"][m] >= 0).all()) and float(item["uv_b"][m, 0].max()) <= 63
        # b at each of its pixel centres is a sampled at H^-1 p (away from a's borders)
        p = pixel_grid(48, 64).reshape(-1, 2)
        src, ok = apply_homography(torch.linalg.inv(H), p.double())
        values, inside = sample(item["image_a"][None], src.float()[None])
        keep = ok & inside[0] & (src >= 1).all(-1) & (src[:, 0] <= 62) & (src[:, 1] <= 46)
        b = item["image_b"].reshape(3, -1).T
        assert int(keep.sum()) > 500
        torch.testing.assert_close(b[keep], values[0][keep], atol=1e-5, rtol=0)


def test_homography_photometric_changes_and_epochs(photos):
    plain = HomographyPairs(photos, photometric=False, **KW)
    changed = HomographyPairs(photos, **KW)
    a, b = plain[0], changed[0]
    assert torch.equal(a["image_a"], b["image_a"]) and torch.equal(a["uv_b"], b["uv_b"])
    assert float((a["image_b"] - b["image_b"]).abs().mean()) > 0.01
    H0 = changed.homography(0)
    changed.set_epoch(1)
    assert not torch.allclose(changed.homography(0), H0)
    assert not torch.equal(changed[0]["image_b"], b["image_b"])
    changed.set_epoch(0)
    assert torch.equal(changed[0]["image_b"], b["image_b"])


def test_homography_errors_and_split(photos, tmp_path):
    with pytest.raises(InputError, match="holds no images"):
        HomographyPairs(tmp_path)
    with pytest.raises(DataFileNotFoundError, match="missing"):
        HomographyPairs(tmp_path / "missing")
    names = ["same.png", "sub/tall.jpg", "wide.png"]
    # a fraction that leaves images in both splits
    f = next(
        f
        for f in np.linspace(0.05, 0.95, 19)
        if 0 < sum(split_of(n, f) == "val" for n in names) < 3
    )
    train = HomographyPairs(photos, split="train", val_fraction=f, **KW).relative
    val = HomographyPairs(photos, split="val", val_fraction=f, **KW).relative
    assert sorted(train + val) == names and not set(train) & set(val)
    with pytest.raises(InputError, match="no image falls in the 'val' split"):
        HomographyPairs(photos, split="val", val_fraction=0.0)
    assert len(HomographyPairs(photos, repeats=3, **KW)) == 9


# ---------------------------------------------------------------------------------- seasons
def chars(text: str) -> np.ndarray:
    """A MATLAB v7.3 char array: uint16 codes, stored (L, 1) like MATLAB's 1 x L row."""
    return np.array([ord(c) for c in text], np.uint16)[:, None]


def write_mat(path, im_i, im_j, pt_i, pt_j, drop=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"im_i_path": chars(im_i), "im_j_path": chars(im_j), "pt_i": pt_i, "pt_j": pt_j}
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            if key != drop:
                f.create_dataset(key, data=value)
        f.create_dataset("dist_from_center", data=np.zeros((1, pt_i.shape[-1])))


@pytest.fixture()
def robotcar(tmp_path):
    """A RobotCar-like root: images/<condition>/rear/*.jpg and three correspondence files."""
    root = tmp_path / "robotcar"
    images = root / "images"
    write_image(images / "overcast-reference/rear/100.jpg", 96, 128, seed=1)
    write_image(images / "night/rear/200.jpg", 96, 128, seed=2)
    write_image(images / "dawn/rear/300.jpg", 40, 50, seed=3)
    pts = np.array([[10.0, 20.0], [127.0, 95.0], [64.0, 48.0], [300.0, 5.0]])  # last: outside
    corr = root / "correspondence_data"
    # MATLAB layout (2 x N through h5py), a path from another machine
    write_mat(
        corr / "correspondence_run1_overcast-reference_run2_night_c1_c2.mat",
        "/mnt/data/RobotCar-Seasons/images/overcast-reference/rear/100.jpg",
        "night/rear/200.jpg",
        pts.T,
        (pts + 0.5).T,
    )
    # N x 2 layout, bare file names
    write_mat(corr / "correspondence_run1_overcast-reference_run3_dawn.mat", "100.jpg",
              "300.jpg", pts[:3] / 2, pts[:3] / 2)  # fmt: skip
    write_mat(corr / "correspondence_missing_image.mat", "night/rear/999.jpg", "100.jpg",
              pts.T, pts.T)  # fmt: skip
    return root


def test_seasons_mat_round_trip(robotcar):
    corr = robotcar / "correspondence_data"
    data = read_correspondence_mat(
        corr / "correspondence_run1_overcast-reference_run2_night_c1_c2.mat"
    )
    assert data["im_i_path"] == "/mnt/data/RobotCar-Seasons/images/overcast-reference/rear/100.jpg"
    assert data["pt_i"].shape == (4, 2) and data["pt_i"][1].tolist() == [127.0, 95.0]
    dawn = read_correspondence_mat(corr / "correspondence_run1_overcast-reference_run3_dawn.mat")
    assert dawn["pt_j"].shape == (3, 2) and dawn["pt_j"][1].tolist() == [63.5, 47.5]


def test_seasons_pairs_items(robotcar):
    ds = SeasonsPairs(robotcar, kind="robotcar", **KW)
    assert len(ds) == 3 and not ds.has_geometry
    by_name = {p.name: k for k, p in enumerate(ds.mats)}
    item = ds[by_name["correspondence_run1_overcast-reference_run2_night_c1_c2.mat"]]
    check_item(item, ds)
    m = item["mask"]
    assert int(m.sum()) == 3  # the point outside the 128 x 96 image is dropped
    s = 0.5  # 128 x 96 -> 64 x 48
    expect_a = (torch.tensor([[10.0, 20.0], [127.0, 95.0], [64.0, 48.0]]) + 0.5) * s - 0.5
    got = item["uv_a"][m][item["uv_a"][m, 0].argsort()]
    torch.testing.assert_close(got, expect_a[expect_a[:, 0].argsort()])
    torch.testing.assert_close(item["uv_b"][m], item["uv_a"][m] + 0.5 * s)  # pt_j = pt_i + 0.5
    item = ds[by_name["correspondence_run1_overcast-reference_run3_dawn.mat"]]
    check_item(item, ds)
    assert int(item["mask"].sum()) == 2  # (63.5, 47.5) lies outside the 50 x 40 dawn image
    # the pair whose image is missing is skipped and counted
    missing = by_name["correspondence_missing_image.mat"]
    assert ds[missing]["name"] != "night/rear/999.jpg|100.jpg" and ds.skipped == 1
    ds2 = SeasonsPairs(ds.mats[0], kind="robotcar", **KW)
    assert len(ds2) == 1 and ds2.images_dir == robotcar / "images"


def test_seasons_undecodable_images_are_skipped(robotcar):
    (robotcar / "images/night/rear/200.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    ds = SeasonsPairs(robotcar, kind="robotcar", **KW)
    items = [ds[i] for i in range(len(ds))]
    assert ds.skipped == 2 and all("dawn" in it["name"] or "300" in it["name"] for it in items)
    (robotcar / "images/dawn/rear/300.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"robotcar.*could be loaded"):
        SeasonsPairs(robotcar, kind="robotcar", **KW)[0]


def test_seasons_errors(robotcar, tmp_path):
    bad = tmp_path / "bad" / "x.mat"
    write_mat(bad, "a.jpg", "b.jpg", np.zeros((2, 3)), np.zeros((2, 3)), drop="pt_j")
    with pytest.raises(ParseError, match=r"x.mat.*missing key 'pt_j'"):
        SeasonsPairs(bad, images_dir=robotcar / "images")
    (tmp_path / "old.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(ParseError, match=r"old.mat.*v7.3"):
        read_correspondence_mat(tmp_path / "old.mat")
    with pytest.raises(InputError, match=r"no .mat"):
        SeasonsPairs(robotcar / "images", kind="cmu")
    with pytest.raises(InputError, match="kind"):
        SeasonsPairs(robotcar, kind="aachen")
    with pytest.raises(DataFileNotFoundError, match="nowhere"):
        SeasonsPairs(tmp_path / "nowhere")
    ds = parse_data_spec(f"cmu:{robotcar}", split="all", **KW)
    assert isinstance(ds, SeasonsPairs) and ds.kind == "cmu"
