"""VGG-16 trunk in torchvision layout, checkpoint loading, S2DHM hypercolumns, gn_net levels."""

import json

import pytest
import torch
import torch.nn.functional as F

from dgeo.errors import DataFileNotFoundError, InputError, ParseError, ShapeError
from dgeo.models import VGG16, VGGHypercolumn, load_vgg16_weights

# torchvision vgg16 "D" configuration, written out again independently of dgeo
CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def ops():
    """("conv", index, cin, cout) / ("relu",) / ("pool",) in torchvision module order."""
    out, cin = [], 3
    for item in CFG:
        if item == "M":
            out.append(("pool",))
        else:
            out += [("conv", len(out), cin, item), ("relu",)]
            cin = item
    return out


def random_vgg16_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for op in ops():
        if op[0] == "conv":
            _, i, cin, cout = op
            std = (2.0 / (9 * cin)) ** 0.5
            state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * std
            state[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.01
    state["classifier.0.weight"] = torch.randn(4, 4, generator=g)  # ignored
    return state


def reference_taps(images, state, taps):
    """Tensors entering the torchvision modules ``taps``, by plain functional calls."""
    x = (images - MEAN) / STD
    out = {}
    for i, op in enumerate(ops()):
        if i in taps:
            out[i] = x
        if i >= max(taps):
            break
        if op[0] == "conv":
            x = F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1)
        elif op[0] == "relu":
            x = F.relu(x)
        else:
            x = F.max_pool2d(x, 2, 2)
    return [out[t] for t in taps]


def reference_hypercolumn(images, state):
    maps = reference_taps(images, state, [14, 17, 21, 24, 28])
    size = maps[0].shape[-2:]
    up = [F.interpolate(m, size=size, mode="bilinear", align_corners=True) for m in maps]
    h = torch.cat(up, 1)
    return h / h.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random VGG-16 in torchvision layout; its first two blocks in wrapped layouts."""
    root = tmp_path_factory.mktemp("vgg")
    state = random_vgg16_state()
    raw = root / "vgg16.pth"
    torch.save(state, raw)
    head = {k: v for k, v in state.items() if k[0] == "c" or int(k.split(".")[1]) < 9}
    wrapped = root / "vgg16.pth.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in head.items()}}, wrapped)
    s2dhm = root / "s2dhm.pth.tar"
    enc = {k.replace("features.", "module.encoder."): v for k, v in head.items()}
    enc["module.pool.centroids"] = torch.zeros(64, 512)
    torch.save({"state_dict": enc}, s2dhm)
    return state, {"raw": raw, "wrapped": wrapped, "s2dhm": s2dhm}


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))


def test_checkpoint_loads_and_matches_functional_reference(checkpoints, images):
    state, paths = checkpoints
    model = VGGHypercolumn.from_vgg16_checkpoint(paths["raw"])
    with torch.no_grad():
        pyr = model(images)
        expected = reference_hypercolumn(images, state)
    assert len(pyr) == 1 and pyr.strides == [4.0] and pyr.image_size == (32, 48)
    torch.testing.assert_close(pyr[0].features, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["wrapped", "s2dhm"])
def test_wrapped_and_s2dhm_checkpoints_load_the_same_weights(checkpoints, layout):
    """{"state_dict": {"module.features.N..."}} and S2DHM's "module.encoder.N..." keys."""
    state, paths = checkpoints
    trunk = load_vgg16_weights(VGG16(until=9), paths[layout])
    assert len(trunk.state_dict()) == 8
    for k, v in trunk.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_gn_net_layout_levels_match_reference(checkpoints, images):
    state, paths = checkpoints
    model = load_vgg16_weights(VGGHypercolumn(hypercolumn=False, seed=None), paths["raw"])
    with torch.no_grad():
        pyr = model(images)
        maps = reference_taps(images, state, [14, 17, 21, 24, 28])
    assert pyr.strides == [4.0, 8.0, 8.0, 16.0, 16.0]
    assert pyr.channels == [256, 256, 512, 512, 512]
    for lvl, m in zip(pyr.levels, maps, strict=True):
        assert lvl.confidence is None
        torch.testing.assert_close(lvl.features, F.normalize(m, dim=1), atol=1e-5, rtol=1e-4)


def test_hypercolumn_shape_norm_and_padding():
    model = VGGHypercolumn(seed=3)
    with torch.no_grad():
        pyr = model(torch.rand(1, 3, 48, 64))
        odd = model(torch.rand(1, 3, 37, 50))
    assert pyr.channels == [2048] and pyr[0].size == (12, 16)
    torch.testing.assert_close(pyr[0].features.norm(dim=1), torch.ones(1, 12, 16))
    # padded on the right/bottom to a multiple of 16: the level covers the padded image
    assert odd.canvas_size == (48, 64) and odd[0].size == (12, 16)
    assert torch.allclose(odd.scale(0), torch.tensor([0.25, 0.25]))


def test_trunk_layout_is_torchvision():
    trunk = VGG16()
    pools = [i for i, m in enumerate(trunk.features) if isinstance(m, torch.nn.MaxPool2d)]
    assert pools == [4, 9, 16, 23, 30]
    assert all(not m.inplace for m in trunk.features if isinstance(m, torch.nn.ReLU))
    expected = {k for k in random_vgg16_state() if k.startswith("features.")}
    assert set(trunk.state_dict()) == expected
    # only the modules before the last tap are built
    assert len(VGGHypercolumn(layers=[9, 14], seed=None).trunk.features) == 14


def test_config_rebuilds_and_seed_is_deterministic():
    a, b = VGGHypercolumn(layers=[4, 9], hypercolumn=False), VGGHypercolumn(layers=[9, 4])
    assert a.config["layers"] == [4, 9]
    rebuilt = VGGHypercolumn(**json.loads(json.dumps(a.config)))
    assert rebuilt.config == a.config
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]) and torch.equal(v, rebuilt.state_dict()[k])


def test_checkpoint_errors(tmp_path, checkpoints):
    state, _ = checkpoints
    model = VGGHypercolumn(layers=[4, 9], seed=None)
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        load_vgg16_weights(model, tmp_path / "nope.pth")
    partial = {k: v for k, v in state.items() if not k.startswith("features.5.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(InputError, match=r"missing, e\.g\. \['features\.5\.weight'"):
        load_vgg16_weights(model, tmp_path / "partial.pth")
    wrong = dict(state, **{"features.0.weight": torch.zeros(64, 1, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(InputError, match=r"wrong shape.*features\.0\.weight"):
        load_vgg16_weights(model, tmp_path / "wrong.pth")
    (tmp_path / "notes.pth").write_text("not weights\n")
    with pytest.raises(ParseError, match="text file"):
        load_vgg16_weights(model, tmp_path / "notes.pth")


def test_bad_config_and_input():
    with pytest.raises(InputError, match="layers"):
        VGGHypercolumn(layers=[14, 40])
    with pytest.raises(InputError, match="mean and std"):
        VGGHypercolumn(std=[0.2, 0.2])
    model = VGGHypercolumn(layers=[4, 9], seed=None)
    with pytest.raises(ShapeError, match="smaller than the 2 pixels"):
        model(torch.rand(1, 3, 1, 8))
    with pytest.raises(InputError, match=r"call model\.to"):
        model(torch.rand(1, 3, 8, 8, dtype=torch.float64))
