"""Weight-free extractors: dense SIFT and the image pyramid, and their pixel geometry."""

import kornia
import pytest
import torch
import torch.nn.functional as F

from dgeo.errors import InputError
from dgeo.geometry import sample
from dgeo.models import DenseSIFT, ImagePyramid


def textured(b=2, h=48, w=64, seed=0):
    """Smooth random RGB texture in [0, 1] (no flat regions)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g)
    return kornia.filters.gaussian_blur2d(x, (5, 5), (1.0, 1.0), border_type="reflect")


def mirror_permutation(nab=8, nsb=4):
    """Channel permutation of kornia's SIFT layout a * nsb^2 + cy * nsb + cx under x -> -x."""
    return [
        ((nab // 2 - a) % nab) * nsb * nsb + cy * nsb + (nsb - 1 - cx)
        for a in range(nab)
        for cy in range(nsb)
        for cx in range(nsb)
    ]


@pytest.mark.parametrize(("h", "w"), [(48, 64), (37, 50)])
def test_dense_sift_shapes_and_unit_norm(h, w):
    pyr = DenseSIFT(strides=(1, 2, 4))(textured(2, h, w))
    assert pyr.strides == [1.0, 2.0, 4.0] and pyr.image_size == (h, w)
    assert [lvl.size for lvl in pyr.levels] == [(h, w), (h // 2, w // 2), (h // 4, w // 4)]
    for lvl in pyr.levels:
        assert lvl.features.shape[1] == 128 and lvl.confidence is None
        torch.testing.assert_close(lvl.features.norm(dim=1), torch.ones(2, *lvl.size))
        assert bool((lvl.features >= 0).all())


@pytest.mark.parametrize("descriptor", ["rootsift", "l2"])
def test_dense_sift_is_centred_on_pixels(descriptor):
    """Mirroring the image mirrors the descriptor map with the SIFT channel permutation: the
    descriptor grid is symmetric, so descriptor (i, j) is centred exactly on pixel (i, j)."""
    model = DenseSIFT(strides=[1, 2], descriptor=descriptor)
    img = textured(1, 24, 33)
    pyr, mirrored = model(img), model(img.flip(-1))
    perm = mirror_permutation()
    for a, b in zip(pyr.levels, mirrored.levels, strict=True):
        torch.testing.assert_close(a.features, b.features.flip(-1)[:, perm], atol=1e-5, rtol=0)


def test_dense_sift_invariance_equivariance_and_determinism():
    model = DenseSIFT(strides=[1, 2])
    img = textured(1, 40, 48)
    pyr = model(img)
    again = model(img)
    assert all(torch.equal(a.features, b.features) for a, b in zip(pyr, again, strict=True))
    darker = model(0.5 * img + 0.1)
    for a, b in zip(pyr.levels, darker.levels, strict=True):
        assert (a.features - b.features).abs().max() < 1e-3
    # shifting the image by 2 pixels shifts the stride-1 map by 2 pixels (away from borders
    # and from the wrapped columns: a descriptor sees 9 pixels on each side)
    shifted = model(torch.roll(img, shifts=2, dims=-1))[0].features
    torch.testing.assert_close(shifted[..., 10:-10, 12:-12], pyr[0].features[..., 10:-10, 10:-14])


def test_image_pyramid_is_kornia_pyrdown():
    img = textured(2, 37, 50)
    pyr = ImagePyramid()(img)
    down2 = kornia.geometry.transform.pyrdown(img)
    down4 = kornia.geometry.transform.pyrdown(down2)
    for lvl, ref in zip(pyr.levels, [img, down2, down4], strict=True):
        assert torch.equal(lvl.features, ref) and lvl.confidence is None
    gray = ImagePyramid(strides=[1, 2], grayscale=True)(img)
    torch.testing.assert_close(
        gray[1].features, kornia.geometry.transform.pyrdown(kornia.color.rgb_to_grayscale(img))
    )
    unit = ImagePyramid(normalize=True)(img)
    torch.testing.assert_close(unit[2].features.norm(dim=1), torch.ones(2, 9, 12))
    with pytest.raises(InputError, match="one-channel"):
        ImagePyramid(grayscale=True, normalize=True)


@pytest.mark.parametrize(("h", "w"), [(32, 48), (37, 51)])
def test_stride_two_level_is_the_blurred_image_at_its_image_location(h, w):
    """Pixel (i, j) of the stride-2 image level is the Gaussian-blurred image, sampled at the
    image location the pyramid maps that pixel to; and FeaturePyramid.sample there returns it."""
    img = textured(1, h, w)
    pyr = ImagePyramid(strides=[1, 2])(img)
    k1 = torch.tensor([1.0, 4, 6, 4, 1]) / 16
    kernel = (k1[:, None] * k1[None]).expand(3, 1, 5, 5)
    blurred = F.conv2d(F.pad(img, (2, 2, 2, 2), mode="reflect"), kernel, groups=3)
    hh, ww = pyr[1].size
    jj, ii = torch.meshgrid(torch.arange(ww), torch.arange(hh), indexing="xy")
    level_uv = torch.stack([jj, ii], -1).reshape(1, -1, 2).float()
    uv = pyr.to_image(level_uv, 1)
    expected = pyr[1].features.flatten(2).transpose(1, 2)
    values, valid = sample(blurred, uv)
    assert valid.all()
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)
    for model in (ImagePyramid(strides=[1, 2]), DenseSIFT(strides=[1, 2])):
        p = model(img)
        f, ok = p.sample(uv, 1)
        assert ok.all()
        torch.testing.assert_close(f, p[1].features.flatten(2).transpose(1, 2))
    if w % 2 == 0:  # exact stride: level pixel j is centred at image pixel 2 j + 0.5
        torch.testing.assert_close(uv, 2 * level_uv + 0.5)


def test_bad_config():
    with pytest.raises(InputError, match="descriptor"):
        DenseSIFT(descriptor="sift")
    with pytest.raises(InputError, match="powers of two"):
        ImagePyramid(strides=[1, 3])
    with pytest.raises(InputError, match="powers of two"):
        DenseSIFT(strides=[4, 2])
