"""Rendered views: conditions change appearance only, views are independent of their batch."""

from __future__ import annotations

import pytest
import torch

from dgeo.data.synthetic.conditions import CONDITIONS
from dgeo.data.synthetic.scenes import make_scene
from dgeo.data.synthetic.trajectories import random_viewpoints
from dgeo.data.synthetic.views import render_views
from dgeo.errors import InputError
from dgeo.geometry import Camera

CAM = Camera("SIMPLE_RADIAL", 96, 72, [60.0, 47.5, 35.5, -0.02])


@pytest.fixture(scope="module")
def street():
    scene = make_scene("street", seed=2)
    return scene, random_viewpoints(scene, 3, seed=2)


def test_conditions_change_appearance_not_geometry(street):
    scene, poses = street
    ref = render_views(scene, CAM, poses, "overcast-reference")
    for name in CONDITIONS:
        v = render_views(scene, CAM, poses, name)
        for field in ("depth", "valid", "points", "normal", "surface"):
            assert torch.equal(getattr(v, field), getattr(ref, field)), (name, field)
        if name != "overcast-reference":
            assert (v.rgb - ref.rgb).abs().mean() > 0.01, name
        assert v.rgb.min() >= 0 and v.rgb.max() <= 1


def test_batch_independence_and_determinism(street):
    scene, poses = street
    both = render_views(scene, CAM, poses[:2], "night-rain", seeds=[5, 6])
    one = render_views(scene, CAM, poses[1:2], "night-rain", seeds=[6])
    # equal up to float rounding of batched products in the ray caster
    torch.testing.assert_close(both.rgb[1:], one.rgb, atol=1e-4, rtol=0)
    again = render_views(scene, CAM, poses[:2], "night-rain", seeds=[5, 6])
    assert torch.equal(both.rgb, again.rgb)
    other = render_views(scene, CAM, poses[:2], "night-rain", seeds=[7, 8])
    assert not torch.equal(both.rgb, other.rgb)


def test_supersampling_antialiases_but_keeps_exact_depth(street):
    scene, poses = street
    s1 = render_views(scene, CAM, poses, supersample=1)
    s3 = render_views(scene, CAM, poses, supersample=3)
    assert torch.equal(s1.depth, s3.depth)
    # supersampled colour is the box filter of finer renderings: close to 1x on average,
    # smoother (less high-frequency energy) than point sampling
    assert (s1.rgb - s3.rgb).abs().mean() < 0.05
    hf = [(v.rgb[..., 1:] - v.rgb[..., :-1]).abs().mean() for v in (s1, s3)]
    assert hf[1] < hf[0]


def test_bad_input(street):
    scene, poses = street
    with pytest.raises(InputError, match="seed"):
        render_views(scene, CAM, poses, seeds=[1, 2])
    with pytest.raises(InputError, match="supersample"):
        render_views(scene, CAM, poses, supersample=0)
    with pytest.raises(InputError, match="condition"):
        render_views(scene, CAM, poses, "fog")
