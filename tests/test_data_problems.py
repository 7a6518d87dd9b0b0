"""Random PnP problems: exact ground truth, the asked-for outliers and perturbation."""

import math

import pytest
import torch

from dgeo.data.synthetic.problems import random_pnp_problems
from dgeo.errors import InputError


@pytest.mark.parametrize("model", ["PINHOLE", "SIMPLE_RADIAL"])
def test_ground_truth_outliers_and_start(model):
    p = random_pnp_problems(16, 100, outlier_ratio=0.3, noise=0.0, angle_deg=7.0, shift=0.4,
                            model=model, seed=3)  # fmt: skip
    uv, valid = p.camera.project(p.gt.transform(p.points3D))
    assert valid[p.inlier].all()
    torch.testing.assert_close(uv[p.inlier], p.points2D[p.inlier], atol=1e-9, rtol=0)
    assert ((~p.inlier).sum(1) == 30).all()
    far = (uv - p.points2D).norm(dim=-1)[~p.inlier]
    assert (far > 1.0).float().mean() > 0.95  # outliers really are off
    angle, _ = (p.start @ p.gt.inv()).magnitude()
    torch.testing.assert_close(angle, torch.full_like(angle, math.radians(7.0)))
    moved = (p.start.center() - p.gt.center()).norm(dim=-1)
    assert bool((moved > 0).all()) and p.depth.shape == (16,)
    again = random_pnp_problems(16, 100, outlier_ratio=0.3, noise=0.0, angle_deg=7.0, shift=0.4,
                                model=model, seed=3)  # fmt: skip
    assert torch.equal(again.points2D, p.points2D)


def test_bad_arguments():
    with pytest.raises(InputError, match="outlier_ratio"):
        random_pnp_problems(2, 10, outlier_ratio=1.5)
    with pytest.raises(InputError, match="model"):
        random_pnp_problems(2, 10, model="OPENCV")
