"""dgeo.data.pairs: the item contract, fitting, sampling, skipping and epochs of PairDataset,
SyntheticPairs (exact correspondences, splits, determinism, caches) and the data specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from dgeo.data.pairs import (
    GEOMETRY_KEYS,
    ITEM_KEYS,
    HomographyPairs,
    LoadError,
    MixedPairs,
    PairDataset,
    SyntheticPairs,
    build_dataset,
    check_item,
    fit_image,
    fit_size,
    pack_correspondences,
    parse_data_spec,
    scene_seed,
    split_of,
    subsample,
)
from dgeo.data.synthetic.conditions import CONDITION_NAMES
from dgeo.errors import DataFileNotFoundError, InputError
from dgeo.geometry import sample

SMALL = dict(height=48, width=64, num_points=128, texture_size=32, supersample=1)
STREET = dict(num_pairs=6, conditions=["overcast-reference"], pairs_per_scene=3, **SMALL)
STREET["supersample"] = 2  # anti-aliased, so that colours of corresponding points agree


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def street() -> SyntheticPairs:
    """Same-condition street pairs, 3 per scene (two scenes)."""
    return SyntheticPairs("street", **STREET)


def project(points: torch.Tensor, K: torch.Tensor, T: torch.Tensor | None = None):
    if T is not None:
        points = points @ T[:3, :3].T + T[:3, 3]
    return (points[:, :2] / points[:, 2:]) @ K[:2, :2].T + K[:2, 2]


# ---------------------------------------------------------------------------------- base helpers
def test_fit_image_scales_pixel_centres_and_pads():
    # a horizontal ramp whose value is the source x coordinate: bilinear upsampling keeps it
    # linear, so the fitted value at x' must be the source coordinate (x' + 0.5) / s - 0.5
    h, w = 10, 20
    ramp = torch.arange(w, dtype=torch.float32).expand(3, h, w) / 100
    out, fit = fit_image(ramp, 48, 64)
    assert out.shape == (3, 48, 64) and fit.size == (64, 32) and fit.scale == (3.2, 3.2)
    assert bool((out[:, 32:] == 0).all())  # bottom padding
    xs = torch.arange(8, 56, dtype=torch.float32)
    src = (xs + 0.5) / 3.2 - 0.5
    torch.testing.assert_close(out[0, 16, 8:56] * 100, src, atol=1e-4, rtol=0)
    # Fit.points inverts that mapping
    uv = torch.stack([src, torch.full_like(src, 4.0)], -1)
    torch.testing.assert_close(fit.points(uv)[:, 0], xs, atol=1e-5, rtol=0)
    # shrinking a tall image pads on the right
    out, fit = fit_image(torch.rand(3, 200, 50), 48, 64)
    assert fit.size == (12, 48) and bool((out[:, :, 12:] == 0).all())
    assert float(out.max()) <= 1


def test_fit_K_matches_fitted_projection():
    fit = fit_size((640, 480), 72, 80)  # anisotropic rounding: 80 x 60
    K = torch.tensor([[500.0, 0, 319.5], [0, 510.0, 239.5], [0, 0, 1]], dtype=torch.float64)
    pts = torch.tensor([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(project(pts, fit.K(K)), fit.points(project(pts, K)))


def test_subsample_and_pack():
    g = torch.Generator().manual_seed(0)
    idx, mask = subsample(5, 8, g)
    assert mask.tolist() == [True] * 5 + [False] * 3
    assert sorted(idx[:5].tolist()) == list(range(5)) and idx[5:].tolist() == [0, 0, 0]
    idx, mask = subsample(100, 8, g)
    assert bool(mask.all()) and len(set(idx.tolist())) == 8
    uv = torch.rand(3, 2, dtype=torch.float64)
    out = pack_correspondences(uv, uv + 1, 4, g, points_a=torch.rand(3, 3))
    assert out["uv_a"].dtype == torch.float32 and out["mask"].tolist() == [True] * 3 + [False]
    assert bool((out["uv_b"][3] == 0).all()) and bool((out["points_a"][3] == 0).all())
    empty = pack_correspondences(torch.zeros(0, 2), torch.zeros(0, 2), 4, g)
    assert empty["uv_a"].shape == (4, 2) and not bool(empty["mask"].any())


def test_split_of_is_deterministic_and_near_the_fraction():
    keys = [f"img{i}.jpg" for i in range(2000)]
    val = [k for k in keys if split_of(k, 0.1) == "val"]
    assert 150 < len(val) < 250 and val == [k for k in keys if split_of(k, 0.1) == "val"]
    assert all(split_of(k, 0.0) == "train" for k in keys[:50])


class Flaky(PairDataset):
    """Items whose index is in ``bad`` fail to load; items carry their index and the epoch."""

    def __init__(self, n: int, bad=(), **kw):
        self.n, self.bad = n, set(bad)
        super().__init__(height=8, width=8, num_points=4, seed=0, length=n, source="flaky", **kw)

    def __len__(self):
        return self.n

    def load_item(self, index, generator):
        if index in self.bad:
            raise LoadError(f"item {index} is broken")
        return {
            "index": torch.tensor(index),
            "epoch": torch.tensor(self.epoch),
            "draw": torch.rand(1, generator=generator),
        }


def test_skipped_items_are_replaced_and_counted():
    ds = Flaky(5, bad={1, 2})
    assert int(ds[1]["index"]) == 3 and ds.skipped == 2
    assert int(ds[4]["index"]) == 4 and int(ds[-1]["index"]) == 4
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(InputError, match=r"flaky.*all 3 failed.*item 2 is broken"):
        Flaky(3, bad={0, 1, 2})[0]


def test_randomness_depends_on_seed_index_epoch():
    ds = Flaky(3)
    a, b = ds[0]["draw"], ds[1]["draw"]
    assert float(a) != float(b) and float(ds[0]["draw"]) == float(a)
    ds.set_epoch(1)
    assert float(ds[0]["draw"]) != float(a)
    ds.set_epoch(0)
    assert float(ds[0]["draw"]) == float(a)
    with pytest.raises(InputError, match="epoch"):
        ds.set_epoch(-1)


def test_epoch_and_skips_reach_persistent_workers():
    ds = Flaky(4, bad={3})
    loader = DataLoader(ds, batch_size=4, num_workers=1, persistent_workers=True)
    first = next(iter(loader))
    assert first["epoch"].tolist() == [0, 0, 0, 0] and first["index"].tolist() == [0, 1, 2, 0]
    assert ds.skipped == 1  # counted in the worker, seen here
    ds.set_epoch(3)
    assert next(iter(loader))["epoch"].tolist() == [3, 3, 3, 3]


# ---------------------------------------------------------------------------------- synthetic
def test_synthetic_items_follow_the_contract_and_batch(street):
    items = [street[i] for i in range(3)]
    for item in items:
        check_item(item, street)
        assert set(item) == set(ITEM_KEYS) | set(GEOMETRY_KEYS)
        assert 0 <= float(item["image_a"].min()) and float(item["image_a"].max()) <= 1
        assert int(item["mask"].sum()) == street.num_points
    batch = default_collate(items)
    assert batch["image_a"].shape == (3, 3, 48, 64) and batch["uv_b"].shape == (3, 128, 2)
    assert batch["b_from_a"].shape == (3, 4, 4) and len(batch["name"]) == 3
    assert street.camera.model == "PINHOLE"
    assert items[0]["name"].startswith("street/train/000000/a:overcast-reference|")


def test_synthetic_correspondences_are_exact(street):
    for i in range(len(street)):
        item = street[i]
        m = item["mask"]
        pa = item["points_a"][m]
        assert bool((pa[:, 2] > 0).all())
        err_a = (project(pa, item["K_a"]) - item["uv_a"][m]).norm(dim=-1)
        err_b = (project(pa, item["K_b"], item["b_from_a"]) - item["uv_b"][m]).norm(dim=-1)
        assert float(err_a.max()) < 1e-3 and float(err_b.max()) < 1e-3
        # uv_a are pixel centres; uv_b lie inside b
        assert bool((item["uv_a"] == item["uv_a"].round()).all())
        assert bool((item["uv_b"][m] >= 0).all()) and bool((item["uv_b"][m, 0] <= 63).all())
        # same condition: the colours agree up to the per-view exposure (a global gain)
        ca, _ = sample(item["image_a"][None], item["uv_a"][m][None])
        cb, _ = sample(item["image_b"][None], item["uv_b"][m][None])
        ca, cb = ca.flatten(), cb.flatten()
        corr = np.corrcoef(ca.numpy(), cb.numpy())[0, 1]
        shuffled = np.corrcoef(ca.numpy(), cb[torch.randperm(len(cb))].numpy())[0, 1]
        gain = cb.mean() / ca.mean()
        assert corr > 0.85 and abs(shuffled) < 0.3
        assert float((gain * ca - cb).abs().median()) < 0.05


def test_synthetic_splits_use_disjoint_scenes_never_zero(street):
    train = {scene_seed("train", k) for k in range(1000)}
    val = {scene_seed("val", k) for k in range(1000)}
    assert not train & val and 0 not in train | val
    assert [street.record(i)["scene_seed"] for i in range(6)] == [1, 1, 1, 3, 3, 3]
    val_ds = SyntheticPairs("room", "val", num_pairs=1, pairs_per_scene=3, **SMALL)
    assert val_ds.scene_seed_of(0) == 2 and val_ds.record(0)["scene_seed"] == 2
    check_item(val_ds[0], val_ds)


def test_synthetic_is_deterministic_per_index_and_epoch(street):
    other = SyntheticPairs("street", **STREET)
    a, b = street[4], other[4]
    for key in ITEM_KEYS[:-1] + GEOMETRY_KEYS:
        assert torch.equal(a[key], b[key]), key
    street.set_epoch(1)
    c = street[4]
    street.set_epoch(0)
    assert torch.equal(c["image_b"], a["image_b"]) and torch.equal(c["b_from_a"], a["b_from_a"])
    assert not torch.equal(c["uv_a"], a["uv_a"])  # only the choice of the N points changes
    assert torch.equal(street[4]["uv_a"], a["uv_a"])


def test_synthetic_default_conditions_include_the_reference():
    ds = SyntheticPairs("room", num_pairs=1, **SMALL)
    assert ds.conditions == CONDITION_NAMES and "overcast-reference" in ds.conditions
    with pytest.raises(InputError, match="conditions"):
        SyntheticPairs("room", conditions=["sunny", "nope"])
    with pytest.raises(InputError, match="scene"):
        SyntheticPairs("forest")
    with pytest.raises(InputError, match="split"):
        SyntheticPairs("room", split="all")


def test_synthetic_disk_cache_round_trip(tmp_path):
    kw = dict(num_pairs=2, conditions=["night", "snow"], cache_dir=tmp_path, **SMALL)
    first = SyntheticPairs("room", **kw)
    calls = []
    first.prerender(progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert calls == [("render", 1, 2), ("render", 2, 2)] and first.memory_cache == 64
    items = [first[i] for i in range(2)]
    folder = first.cache_folder
    assert sorted(p.name for p in folder.iterdir()) == ["0000000.pt", "0000001.pt", "settings.json"]
    assert not list(folder.glob(".*"))  # no temporaries left behind
    again = SyntheticPairs("room", **kw)
    for i in range(2):
        item = again[i]
        for key in ITEM_KEYS[:-1] + GEOMETRY_KEYS:
            assert torch.equal(item[key], items[i][key]), key
        assert item["name"] == items[i]["name"]
    assert again.timings["renders"] == 0 and again.timings["disk_hits"] == 2
    # every setting that changes the render changes the folder; the length does not
    assert SyntheticPairs("room", **{**kw, "num_pairs": 5}).cache_folder == folder
    for change in ({"supersample": 2}, {"fov_deg": 60.0}, {"seed": 1}, {"texture_size": 64}):
        assert SyntheticPairs("room", **{**kw, **change}).cache_folder != folder
    # a corrupt file is rendered again and replaced
    (folder / "0000001.pt").write_bytes(b"garbage")
    fresh = SyntheticPairs("room", **kw)
    assert torch.equal(fresh[1]["image_b"], items[1]["image_b"])
    assert fresh.timings["renders"] == 1


# ---------------------------------------------------------------------------------- specs
def test_parse_data_spec_builds_sources(tmp_path):
    ds = parse_data_spec("synthetic:room", num_pairs=3, **SMALL)
    assert isinstance(ds, SyntheticPairs) and ds.split == "train" and len(ds) == 3
    ds = parse_data_spec("synthetic:street", split="val", num_pairs=2, **SMALL)
    assert ds.split == "val" and ds.scene_kind == "street"
    with pytest.raises(InputError, match="unknown data kind 'sfm'"):
        parse_data_spec("sfm:x")
    with pytest.raises(InputError, match="bad data spec"):
        parse_data_spec("synthetic")
    with pytest.raises(InputError, match=r"unknown dataset option.*num_point\b"):
        parse_data_spec("synthetic:room", num_point=3)
    missing = tmp_path / "nowhere"
    for spec in (f"homography:{missing}", f"robotcar:{missing}", f"colmap:{missing}:{tmp_path}"):
        with pytest.raises(DataFileNotFoundError, match=str(missing)):
            parse_data_spec(spec)
    with pytest.raises(DataFileNotFoundError, match="no sfm/ and images/"):
        parse_data_spec(f"colmap:{tmp_path}")


def test_build_dataset_mixes_sources(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "photo.png"), np.full((30, 40, 3), 128, np.uint8))
    kw = dict(height=48, width=64, num_points=128)
    mixed = build_dataset(
        ["synthetic:room", f"homography:{tmp_path}"],
        "train",
        num_pairs=2,
        texture_size=32,
        supersample=1,
        val_fraction=0.0,
        **kw,
    )
    assert isinstance(mixed, MixedPairs) and len(mixed) == 3 and not mixed.has_geometry
    items = [mixed[i] for i in range(3)]
    for item in items:
        check_item(item, mixed)  # geometry keys dropped from the synthetic items
    assert default_collate(items)["image_a"].shape == (3, 3, 48, 64)
    mixed.set_epoch(2)
    assert all(p.epoch == 2 for p in mixed.parts)
    single = build_dataset("synthetic:room", "val", num_pairs=1, texture_size=32, **kw)
    assert isinstance(single, SyntheticPairs) and single.has_geometry
    with pytest.raises(InputError, match="same values"):
        MixedPairs([single, HomographyPairs(tmp_path, height=48, width=64, num_points=64)])
    with pytest.raises(InputError, match="split"):
        build_dataset("synthetic:room", "test")
