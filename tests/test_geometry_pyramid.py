import pytest
import torch

from dgeo.errors import ShapeError
from dgeo.geometry import FeaturePyramid, sample


def test_level_transform_matches_pooling():
    """A level made by average pooling: sampling it at the image coordinate of a cell centre
    returns that cell exactly, and the transform round-trips."""
    img = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    coarse = torch.nn.functional.avg_pool2d(img, 4)
    pyr = FeaturePyramid.from_maps([coarse, img], (16, 24))
    assert pyr.strides == [1.0, 4.0]
    # cell (i, j) of the stride-4 level has its centre at image pixel 4 j + 1.5
    ij = torch.tensor([[0, 0], [5, 3], [2, 1]], dtype=torch.float64)
    uv = (4 * ij + 1.5)[None].expand(2, -1, -1)
    f, valid = pyr.sample(uv, 1)
    expected = coarse[:, :, ij[:, 1].long(), ij[:, 0].long()].transpose(1, 2)
    torch.testing.assert_close(f, expected)
    assert valid.all()
    torch.testing.assert_close(pyr.to_image(pyr.to_level(uv, 1), 1), uv)
    # integer pixels are promoted, not truncated
    torch.testing.assert_close(pyr.to_image(ij.long(), 1), (4 * ij + 1.5).to(torch.float64))


def test_gradients_are_wrt_image_pixels():
    torch.manual_seed(0)
    fmap = torch.randn(1, 2, 8, 10, dtype=torch.float64)
    pyr = FeaturePyramid.from_maps([fmap], (32, 40))  # stride 4
    uv = torch.tensor([[[13.3, 9.1], [20.0, 17.7]]], dtype=torch.float64)
    _, _, g = pyr.sample(uv, 0, return_gradients=True)
    _, _, g_level = sample(fmap, pyr.to_level(uv, 0), return_gradients=True)
    torch.testing.assert_close(g, g_level / 4)


def test_confidence_is_sampled_and_zero_outside():
    fmap = torch.randn(1, 2, 4, 4)
    conf = torch.rand(1, 1, 4, 4)
    pyr = FeaturePyramid.from_maps([fmap], (4, 4), [conf])
    uv = torch.tensor([[[1.0, 2.0], [-3.0, 0.0]]])
    _, valid, c = pyr.sample(uv, 0)
    assert valid.tolist() == [[True, False]]
    assert c[0, 0] == conf[0, 0, 2, 1] and c[0, 1] == 0


def test_bad_confidence_shape_and_select():
    with pytest.raises(ShapeError, match="confidence"):
        FeaturePyramid.from_maps([torch.zeros(2, 3, 4, 4)], (4, 4), [torch.zeros(2, 1, 3, 4)])
    pyr = FeaturePyramid.from_maps([torch.randn(3, 2, 4, 4)], (4, 4))
    assert pyr.select([2]).batch_size == 1
    torch.testing.assert_close(pyr.select(slice(1, 2))[0].features, pyr[0].features[1:2])
