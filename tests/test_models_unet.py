"""The PixLoc / GN-Net U-Net: levels, confidences, any input size, seeding, gradients."""

import json

import pytest
import torch
import torch.nn.functional as F

from dgeo.errors import InputError
from dgeo.models import UNetPyramid

SMALL = {
    "widths": [8, 16, 16, 16, 16],
    "decoder_widths": [8, 8, 8, 8],
    "convs_per_block": 1,
    "dims": [4, 8, 8],
}


def rand_images(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_default_levels_confidences_and_odd_size():
    model = UNetPyramid()
    with torch.no_grad():
        pyr = model(rand_images(1, 3, 37, 50))
    assert pyr.strides == [1.0, 4.0, 16.0] and pyr.channels == [32, 128, 128]
    # padded on the right/bottom to multiples of 16; each level covers the padded image
    assert pyr.image_size == (37, 50) and pyr.canvas_size == (48, 64)
    assert [lvl.size for lvl in pyr.levels] == [(48, 64), (12, 16), (3, 4)]
    for lvl in pyr.levels:
        torch.testing.assert_close(lvl.features.norm(dim=1), torch.ones(1, *lvl.size))
        assert lvl.confidence.shape == (1, 1, *lvl.size)
        assert bool((lvl.confidence > 0).all() and (lvl.confidence < 1).all())


def test_padding_is_replicate_and_keeps_pixel_coordinates():
    """An odd-size image gives exactly the output of its replicate-padded copy, and a pixel of
    the original image samples the level at the same place as in the padded image."""
    model = UNetPyramid(**SMALL)
    img = rand_images(2, 3, 37, 50)
    with torch.no_grad():
        pyr = model(img)
        padded = model(F.pad(img, (0, 14, 0, 11), mode="replicate"))
    assert pyr.canvas_size == padded.image_size == (48, 64) and pyr.image_size == (37, 50)
    for a, b in zip(pyr.levels, padded.levels, strict=True):
        torch.testing.assert_close(a.features, b.features)
        torch.testing.assert_close(a.confidence, b.confidence)
    # level-1 (stride 4) cell (i, j) has its centre at image pixel 4 j + 1.5: inside the image
    ij = torch.tensor([[0, 0], [11, 8], [5, 3]])
    uv = (4 * ij + 1.5).float()[None].expand(2, -1, -1)
    f, valid, conf = pyr.sample(uv, 1)
    assert valid.all()
    torch.testing.assert_close(f, pyr[1].features[:, :, ij[:, 1], ij[:, 0]].transpose(1, 2))
    torch.testing.assert_close(conf, pyr[1].confidence[:, 0, ij[:, 1], ij[:, 0]])
    # the padding is on the level grid but outside the image: invalid, confidence 0
    _, valid, conf = pyr.sample(torch.tensor([[[55.0, 20.0], [20.0, 40.0]]]).expand(2, -1, -1), 0)
    assert not valid.any() and not conf.any()


def test_same_seed_same_weights_and_output():
    a, b, c = UNetPyramid(**SMALL, seed=0), UNetPyramid(**SMALL, seed=0), UNetPyramid(**SMALL)
    other = UNetPyramid(**SMALL, seed=1)
    img = rand_images(1, 3, 32, 32)
    with torch.no_grad():
        fa, fb = a(img)[0].features, b(img)[0].features
    assert torch.equal(fa, fb)
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k])
    assert not torch.equal(a.encoder[0][0].weight, other.encoder[0][0].weight)
    other.init_weights(0)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in a.state_dict().items())


def test_gradients_flow_to_every_parameter():
    model = UNetPyramid(**SMALL)
    img = rand_images(2, 3, 32, 48).requires_grad_(True)
    pyr = model(img)
    g = torch.Generator().manual_seed(1)
    loss = sum(
        (lvl.features * torch.randn(lvl.features.shape, generator=g)).sum() + lvl.confidence.sum()
        for lvl in pyr.levels
    )
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_options_and_config_round_trip():
    cfg = dict(SMALL, widths=[8, 8, 8], decoder_widths=[8, 8], strides=[2, 4], dims=[3, 5])
    model = UNetPyramid(**cfg, normalize=False, confidence=False)
    with torch.no_grad():
        pyr = model(rand_images(1, 3, 20, 30))
    assert pyr.image_size == (20, 30) and pyr.canvas_size == (20, 32)
    assert pyr.strides == [2.0, 4.0] and pyr.channels == [3, 5]
    assert all(lvl.confidence is None for lvl in pyr.levels)
    assert not torch.allclose(pyr[0].features.norm(dim=1), torch.ones(1, 10, 16))
    assert len(model.decoder) == 1  # only levels down to the finest output are decoded
    rebuilt = UNetPyramid(**json.loads(json.dumps(model.config)))
    assert rebuilt.config == model.config


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"decoder_widths": [8, 8]}, "decoder_widths needs"),
        ({"strides": [1, 4, 32]}, "exceed the coarsest"),
        ({"strides": [1, 3]}, "powers of two"),
        ({"dims": [4, 8]}, "one entry per stride"),
        ({"convs_per_block": 0}, "convs_per_block"),
    ],
)
def test_bad_config(config, match):
    with pytest.raises(InputError, match=match):
        UNetPyramid(**dict(SMALL, **config))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_follows_the_input_device():
    model = UNetPyramid(**SMALL)
    img = rand_images(1, 3, 37, 50)
    with torch.no_grad():
        cpu = model(img)
        gpu = model.to("cuda")(img.cuda())
    assert gpu.device.type == "cuda"
    for a, b in zip(cpu.levels, gpu.levels, strict=True):
        torch.testing.assert_close(a.features, b.features.cpu(), atol=1e-4, rtol=1e-4)
