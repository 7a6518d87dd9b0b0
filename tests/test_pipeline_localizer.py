"""The Localizer API on the small rendered dataset (``localize_dataset``): the reference cache,
retrieval by pose prior, the fallback of a query that matches nothing, working resolution."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dgeo.eval.metrics import pose_errors
from dgeo.geometry import Camera, Pose
from dgeo.io.colmap import load_reference_map
from dgeo.io.formats import read_hloc_results, read_queries_with_intrinsics
from dgeo.io.images import read_image
from dgeo.pipeline.localizer import Localizer, LocalizerConfig


@pytest.fixture(scope="module")
def setup(localize_dataset, tmp_path_factory):
    torch.set_num_threads(1)
    d = localize_dataset
    ref = load_reference_map(d / "sfm")
    names, cams = read_queries_with_intrinsics(d / "queries_with_intrinsics.txt")
    gt_names, gt = read_hloc_results(d / "queries_gt.txt")
    gt = Pose.stack([gt[gt_names.index(n)] for n in names])
    images = [read_image(d / "images" / n) for n in names]
    cache = tmp_path_factory.mktemp("localizer_cache")
    loc = Localizer(ref, d / "images", LocalizerConfig(max_size=320), cache_dir=cache, device="cpu")
    return dict(d=d, ref=ref, names=names, cams=cams, gt=gt, images=images, cache=cache, loc=loc)


def errors(results, gt):
    e_t, e_R, _ = pose_errors(Pose.stack([r.pose for r in results]), gt)
    return e_t, e_R


def test_localizes_and_caches_references(setup):
    s = setup
    assert not s["loc"].from_cache and s["loc"].cache_path.exists()
    cams = [s["cams"][i] for i in range(len(s["names"]))]
    res = s["loc"].localize_many(s["names"], s["images"], cams)
    e_t, e_R = errors(res, s["gt"])
    assert all(r.success and r.reason == "ok" for r in res)
    assert bool((e_t < 0.25).all() and (e_R < math.radians(2)).all()), (e_t, e_R)
    assert {"extract", "retrieve", "match", "ransac"} <= set(res[0].timings)
    # a second localizer loads the cache and gives the same poses; one query alone as well
    again = Localizer(
        s["ref"], s["d"] / "images", LocalizerConfig(max_size=320), cache_dir=s["cache"],
        device="cpu",
    )  # fmt: skip
    assert again.from_cache
    one = again.localize(s["images"][1], s["cams"][1], name=s["names"][1])
    torch.testing.assert_close(one.pose.data, res[1].pose.data, atol=1e-9, rtol=0)
    # matches are reported at the original resolution, with their inliers
    assert one.matches.shape == (one.num_matches, 2) and one.inliers.sum() == one.num_inliers


def test_pose_prior_retrieves_the_nearest_references(setup):
    s = setup
    res = s["loc"].localize(s["images"][0], s["cams"][0], prior=s["gt"][0], name="q")
    centres = s["ref"].cam_from_world.center()
    d = (centres - s["gt"][0].center()).norm(dim=-1)
    assert res.retrieved[0] in [s["ref"].names[int(i)] for i in d.argsort()[:3]]
    assert res.success


@pytest.mark.parametrize("kind", ["noise", "gray", "black"])
def test_a_query_that_matches_nothing_falls_back_to_its_top_reference(setup, kind):
    """The U-Net matches noise or a flat image at a few spots, where RANSAC finds over a hundred
    inliers within a few pixels: the inlier cell count fails them."""
    s = setup
    image = {
        "noise": torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(3)),
        "gray": torch.full((3, 240, 320), 0.5),
        "black": torch.zeros(3, 240, 320),
    }[kind]
    res = s["loc"].localize(image, s["cams"][0], name=kind)
    assert not res.success and res.reason == "no-candidate" and not res.refined
    top = s["ref"].names.index(res.retrieved[0])
    torch.testing.assert_close(res.pose.data, s["ref"].cam_from_world[top].data)


def test_distinct_cells_counts_like_a_set():
    from dgeo.pipeline.localizer import distinct_cells

    g = torch.Generator().manual_seed(0)
    uv = torch.rand(5, 40, 2, generator=g, dtype=torch.float64) * 100 - 10  # some negative
    inl = torch.rand(5, 40, generator=g) < 0.6
    inl[3] = False
    cell = torch.tensor([4.0, 8.0, 16.0, 4.0, 50.0])
    got = distinct_cells(uv, inl, cell)
    want = [
        len({tuple((uv[b, i] / cell[b]).floor().long().tolist()) for i in range(40) if inl[b, i]})
        for b in range(5)
    ]
    assert got.tolist() == want and want[3] == 0


def test_working_resolution_keeps_poses_in_the_original_camera(setup):
    """Queries at twice the size (upsampled, camera scaled by 2) are brought back to the
    working size (max_size=320) and give the poses of the original camera."""
    s = setup
    idx = [0, 3]
    big = [F.interpolate(s["images"][i][None], scale_factor=2.0, mode="bilinear")[0] for i in idx]
    cams = [s["cams"][i].scale(2.0) for i in idx]
    assert big[0].shape == (3, 480, 640) and cams[0].size.tolist() == [640.0, 480.0]
    res = s["loc"].localize_many([s["names"][i] for i in idx], big, cams)
    e_t, e_R = errors(res, s["gt"][idx])
    assert all(r.success for r in res)
    assert bool((e_t < 0.25).all() and (e_R < math.radians(2)).all()), (e_t, e_R)
    # matches come back in the pixels of the 640x480 image
    assert float(res[0].matches[:, 0].max()) > 320


def test_bad_queries_raise_clear_errors(setup):
    s = setup
    from dgeo.errors import InputError

    with pytest.raises(InputError, match="intrinsics say 320x240"):
        s["loc"].localize(torch.rand(3, 100, 100), s["cams"][0], name="small")
    with pytest.raises(InputError, match="one entry per query"):
        s["loc"].localize_many(["a", "b"], s["images"][:1], [s["cams"][0]])
    cam = Camera("PINHOLE", 320, 240, [200.0, 200, 159.5, 119.5])
    assert s["loc"].localize_many([], [], [cam][:0]) == []


def test_select_option_is_checked_and_auto_follows_the_features():
    from dgeo.errors import InputError
    from dgeo.pipeline.localizer import SELECT

    assert LocalizerConfig().select == "auto" and set(SELECT) == {"auto", "inlier-ratio", "inliers"}
    with pytest.raises(InputError, match="select must be one of"):
        LocalizerConfig(select="most")
    with pytest.raises(InputError, match="refine_points must be None"):
        LocalizerConfig(refine_points=5)
    with pytest.raises(InputError, match="ransac_iterations >= 1"):
        LocalizerConfig(ransac_iterations=0)


def test_the_speed_settings_barely_move_the_poses(setup):
    """The defaults (2,000 RANSAC samples per candidate, refinement on at most 1,024 inliers
    that stops at a 1e-4 relative cost change) against the exhaustive settings."""
    s = setup
    full = Localizer(
        s["ref"], s["d"] / "images",
        LocalizerConfig(max_size=320, ransac_iterations=10000, refine_points=None,
                        refine_tolerance=0.0),
        cache_dir=s["cache"], device="cpu",
    )  # fmt: skip
    cams = [s["cams"][i] for i in range(len(s["names"]))]
    fast = s["loc"].localize_many(s["names"], s["images"], cams)
    slow = full.localize_many(s["names"], s["images"], cams)
    assert [r.reference for r in fast] == [r.reference for r in slow]
    e_t, e_R, _ = pose_errors(
        Pose.stack([r.pose for r in fast]), Pose.stack([r.pose for r in slow])
    )
    assert float(e_t.max()) < 0.01 and float(e_R.max()) < math.radians(0.05), (e_t, e_R)
