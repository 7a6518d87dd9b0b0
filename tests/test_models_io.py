"""Model files, the registry, and the input contract shared by every extractor."""

import os
import pickle
import subprocess
import sys

import pytest
import torch

import dgeo.models as models
from dgeo.errors import DataFileNotFoundError, InputError, ParseError, ShapeError
from dgeo.models import MODELS, DenseExtractor, FeaturePyramid, build, load, save

#: small configurations of every registered model, fast on a CPU
SMALL = {
    "vgg": {"layers": [4, 9, 14]},
    "unet": {
        "widths": [8, 16, 16],
        "decoder_widths": [8, 8],
        "convs_per_block": 1,
        "strides": [1, 4],
        "dims": [4, 8],
        "seed": 3,
    },
    "dense-sift": {"strides": [1, 2], "descriptor": "l2"},
    "image": {"strides": [1, 2, 4], "grayscale": True},
}


def rand_images(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_registry_is_complete():
    assert set(SMALL) == set(MODELS)
    assert all(issubclass(cls, DenseExtractor) and cls.name == n for n, cls in MODELS.items())


@pytest.mark.parametrize("name", list(SMALL))
def test_save_load_round_trip(tmp_path, name):
    model = build(name, **SMALL[name])
    with torch.no_grad():  # perturb the weights so that a load from the config alone would differ
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    path = save(model, tmp_path / "sub" / f"{name}.pt")
    assert sorted(os.listdir(tmp_path / "sub")) == [f"{name}.pt"]  # one file, no temporaries
    loaded = load(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    img = rand_images(2, 3, 37, 50)
    with torch.no_grad():
        a, b = model(img), loaded(img)
    assert isinstance(b, FeaturePyramid) and a.image_size == b.image_size
    for la, lb in zip(a.levels, b.levels, strict=True):
        assert torch.equal(la.features, lb.features) and la.stride == lb.stride
        assert (la.confidence is None) == (lb.confidence is None)
        if la.confidence is not None:
            assert torch.equal(la.confidence, lb.confidence)


def test_load_refuses_what_is_not_a_dgeo_model(tmp_path):
    model = build("unet", **SMALL["unet"])
    good = save(model, tmp_path / "good.pt")
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        load(tmp_path / "missing.pt")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "vgg.pth")
    with pytest.raises(ParseError, match=r"vgg\.pth.*raw VGG-16 state dict.*from_vgg16"):
        load(tmp_path / "vgg.pth")
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    with pytest.raises(ParseError, match="raw state dict without dgeo's header"):
        load(tmp_path / "raw.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, tmp_path / "ckpt.pth.tar")
    with pytest.raises(ParseError, match="training checkpoint"):
        load(tmp_path / "ckpt.pth.tar")
    (tmp_path / "notes.txt").write_text("a text file\n")
    with pytest.raises(ParseError, match=r"notes\.txt: is a text file, not a dgeo model file"):
        load(tmp_path / "notes.txt")
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ParseError, match=r"cut\.pt: is a truncated or corrupt torch file"):
        load(tmp_path / "cut.pt")
    with open(tmp_path / "obj.pkl", "wb") as f:
        pickle.dump({"format": "dgeo-model"}, f)
    with pytest.raises(ParseError, match="Python pickle"):
        load(tmp_path / "obj.pkl")
    with pytest.raises(ParseError, match="is a folder"):
        load(tmp_path)


def _payload(model, **changes):
    payload = {
        "format": "dgeo-model",
        "version": 1,
        "class": type(model).__name__,
        "config": model.config,
        "state_dict": model.state_dict(),
    }
    payload.update(changes)
    return payload


def test_load_refuses_bad_headers(tmp_path):
    model = build("unet", **SMALL["unet"])
    cases = {
        "class.pt": (_payload(model, **{"class": "ResNet"}), "unknown model class 'ResNet'"),
        "version.pt": (_payload(model, version=7), "version 7.*upgrade dgeo"),
        "config.pt": (_payload(model, config={"depth": 3}), "config that UNetPyramid rejects"),
        "weights.pt": (
            _payload(model, state_dict={"encoder.0.0.weight": torch.zeros(1)}),
            "weights that do not fit",
        ),
        "list.pt": ([1, 2, 3], "holds a list"),
    }
    for name, (payload, match) in cases.items():
        torch.save(payload, tmp_path / name)
        with pytest.raises(ParseError, match=match):
            load(tmp_path / name)


def test_vgg_loader_refuses_a_dgeo_model_file(tmp_path):
    path = save(build("vgg", **SMALL["vgg"]), tmp_path / "vgg.pt")
    with pytest.raises(ParseError, match=r"dgeo model file; load it with dgeo\.models\.load"):
        models.VGGHypercolumn.from_vgg16_checkpoint(path)


def test_build_and_save_errors(tmp_path):
    with pytest.raises(InputError, match=r"unknown model 'resnet'.*vgg, unet, dense-sift, image"):
        build("resnet")
    with pytest.raises(InputError, match=r"no option\(s\) \['depth'\].*widths"):
        build("unet", depth=3)
    with pytest.raises(InputError, match="save expects one of the dgeo extractors"):
        save(torch.nn.Conv2d(1, 1, 1), tmp_path / "conv.pt")
    assert not (tmp_path / "conv.pt").exists()


@pytest.mark.parametrize("name", list(SMALL))
def test_bad_images_give_clear_errors(name):
    model = build(name, **SMALL[name])
    with pytest.raises(ShapeError, match=r"images must be a 4D tensor.*images\[None\]"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ShapeError, match=r"images must have 3 \(RGB\) channels"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(InputError, match=r"images must be floating-point.*float\(\) / 255"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ShapeError, match=r"smaller than the \d+ pixels"):
        model(torch.rand(1, 3, 2, 32))
    with pytest.raises(InputError, match=r"must be a torch\.Tensor"):
        model([[0.0]])


@pytest.mark.parametrize("name", ["dense-sift", "image"])
def test_weight_free_models_follow_the_input_dtype(name):
    model = build(name, **SMALL[name])
    pyr = model(rand_images(1, 3, 24, 32).double())
    assert all(lvl.features.dtype == torch.float64 for lvl in pyr.levels)


def test_layering_and_no_torchvision():
    code = (
        "import sys, dgeo.models; "
        "bad = [m for m in sys.modules if m.split('.')[:2] in "
        "(['dgeo', 'pnp'], ['dgeo', 'ransac'], ['dgeo', 'pipeline'], ['dgeo', 'cli'])"
        " or m.split('.')[0] == 'torchvision']; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(SMALL))
def test_models_follow_the_input_device(name):
    model = build(name, **SMALL[name])
    img = rand_images(1, 3, 37, 50)
    with torch.no_grad():
        cpu = model(img)
        gpu = model.to("cuda")(img.cuda())
    for a, b in zip(cpu.levels, gpu.levels, strict=True):
        assert b.features.device.type == "cuda"
        torch.testing.assert_close(a.features, b.features.cpu(), atol=1e-4, rtol=1e-4)


def test_shipped_model_is_small_loads_and_is_what_unet_features_default_to(monkeypatch, tmp_path):
    from dgeo.models import DEFAULT_WEIGHTS, UNetPyramid, default_model, default_weights
    from dgeo.pipeline.localizer import LocalizerConfig, make_extractor

    assert default_weights() == DEFAULT_WEIGHTS
    assert DEFAULT_WEIGHTS.stat().st_size < 10 * 2**20  # the budget: under 10 MB
    model = default_model()
    assert isinstance(model, UNetPyramid) and not model.training
    images = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        pyr = model(images)
        ref = make_extractor(LocalizerConfig(features="unet"))(images)
    assert len(pyr) == 3 and pyr.strides == [1.0, 4.0, 16.0]
    for a, b in zip(pyr.levels, ref.levels, strict=True):
        torch.testing.assert_close(a.features, b.features)
        assert torch.isfinite(a.features).all()

    monkeypatch.setattr(models.io, "DEFAULT_WEIGHTS", tmp_path / "missing.pt")
    with pytest.raises(DataFileNotFoundError, match=r"missing\.pt"):
        default_model()
