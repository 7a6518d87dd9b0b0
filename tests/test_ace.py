"""ACE-style mapping: head, loss, schedule, buffer, augmentation, mapping, save/load, recipe."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Camera, Pose
from dgeo.models.ace import ACEHead, ACEModel, encode_cells, homogeneous_to_euclidean
from dgeo.models.dense_sift import ImagePyramid
from dgeo.pipeline.scr.ace import (
    ACEAugment,
    ace_loss,
    augment_views,
    build_buffer,
    evaluate_frames,
    map_scene,
    soft_clamp_schedule,
)

#: A small, fast map for the tests: dense SIFT at strides 4 and 16, a 64-wide head.
SMALL = {"extractor": "dense-sift", "extractor_config": {"strides": [4, 16]}, "head": {"width": 64}}


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Path:
    """The tiny rendered room of the SCR tests: sequences overcast-reference and night, 24
    frames each at 128x96, PINHOLE, 1/8 labels."""
    from dgeo.data.synthetic.dataset import SynthConfig, write_dataset

    out = tmp_path_factory.mktemp("ace_room") / "room"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        write_dataset(
            out,
            SynthConfig(
                scene="room", seed=3, references=4, queries=1, conditions=("night",),
                sequence_length=24, width=128, height=96, label_stride=8, max_keypoints=64,
                camera_model="PINHOLE",
            ),
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return out


def _pinhole(w: int = 64, h: int = 48, f: float = 50.0) -> Camera:
    return Camera("PINHOLE", w, h, [f, f * 1.1, (w - 1) / 2 + 0.3, (h - 1) / 2 - 0.2])


# ---------------------------------------------------------------------------------- head
def test_homogeneous_formula_closed_form():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    h = torch.tensor([-50.0, -1.0, 0.0, 0.7, 3.0, 500.0], dtype=torch.float64)
    xyz = torch.randn(6, 3, dtype=torch.float64)
    out = homogeneous_to_euclidean(torch.cat([xyz, h[:, None]], -1), mean)
    beta = math.log(2) / (1 - 0.25)
    w = np.log1p(np.exp(beta * h.numpy())) / beta + 0.25
    w = np.minimum(w, 100.0)
    expected = xyz.numpy() / w[:, None] + mean.numpy()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert w[2] == pytest.approx(1.0)  # h = 0 gives w = 1
    assert w[0] == pytest.approx(0.25)  # lower bound
    assert w[-1] == 100.0  # clamp


def test_head_matches_raw_outputs_and_layouts():
    torch.manual_seed(0)
    head = ACEHead(in_channels=12, width=16, blocks=2).double()
    head.set_mean([0.5, 1.0, -1.0])
    x = torch.randn(2, 12, 3, 5, dtype=torch.float64)
    y4 = head(x)
    assert y4.shape == (2, 3, 3, 5)
    flat = x.permute(0, 2, 3, 1).reshape(-1, 12)
    y2 = head(flat)
    torch.testing.assert_close(y4.permute(0, 2, 3, 1).reshape(-1, 3), y2)
    expected = homogeneous_to_euclidean(head.raw(flat), head.mean.double())
    torch.testing.assert_close(y2, expected)
    plain = ACEHead(in_channels=12, width=12, blocks=0, homogeneous=False).double()
    torch.testing.assert_close(plain(flat), plain.raw(flat) + plain.mean.double())
    with pytest.raises(ShapeError):
        head(torch.randn(4, 11))
    with pytest.raises(InputError):
        ACEHead(8, w_min=1.5)


# ---------------------------------------------------------------------------------- loss
def _direct_loss(world, R, t, K, pixels, tau, depth_target=10.0):
    """ACE's loss written out in numpy float64, from pixels and K."""
    p = np.einsum("nij,nj->ni", R, world) + t
    z = p[:, 2]
    uvw = np.einsum("nij,nj->ni", K, p)
    px = uvw[:, :2] / np.maximum(z, 0.1)[:, None]
    e = np.abs(px - pixels).sum(-1)
    valid = (z >= 0.1) & (z <= 1000) & (e <= 1000)
    lv = (tau * np.tanh(e[valid] / tau)).sum()
    Kinv = np.linalg.inv(K)
    hom = np.concatenate([pixels, np.ones((len(pixels), 1))], -1)
    target = depth_target * np.einsum("nij,nj->ni", Kinv, hom)
    li = np.abs(target - p)[~valid].sum()
    return (lv + li) / len(world), valid


def test_loss_equals_direct_computation():
    gen = torch.Generator().manual_seed(1)
    n = 40
    aa = 0.3 * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    pose = Pose.from_axis_angle(aa, torch.randn(n, 3, generator=gen, dtype=torch.float64))
    cam = Camera("PINHOLE", 640, 480, torch.tensor([500.0, 520.0, 319.5, 239.5]).double())
    pixels = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([640.0, 480.0])
    # world points near the rays at depths 1..6 m, perturbed
    depth = 1 + 5 * torch.rand(n, generator=gen, dtype=torch.float64)
    rays = cam.unproject(pixels[:, None])[:, 0]
    p_cam = rays * depth[:, None] + 0.05 * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    p_cam[0, 2] = -1.0  # behind the camera
    p_cam[1, 2] = 0.05  # too close
    p_cam[2] = torch.tensor([0.0, 0.0, 2000.0])  # too far
    p_cam[3, :2] = 20.0 * p_cam[3, 2]  # reprojects thousands of pixels off
    world = pose.inv().transform(p_cam[:, None])[:, 0]
    K = cam.K.expand(n, 3, 3)
    for tau in (51.0, 7.5, 1.0):
        loss, stats = ace_loss(world, pose, rays[:, :2], cam.f.expand(n, 2), tau)
        expected, valid = _direct_loss(
            world.numpy(), pose.R.numpy(), pose.t.numpy(), K.numpy(), pixels.numpy(), tau
        )
        assert float(loss) == pytest.approx(expected, rel=1e-10)
        assert not valid[:4].any() and valid[4:].all()
        assert stats["valid"] == pytest.approx(valid.mean())
        assert stats["tau"] == tau
    with pytest.raises(ShapeError):
        ace_loss(world, pose, rays[:5, :2], cam.f.expand(n, 2), 1.0)


def test_threshold_schedule_values():
    assert soft_clamp_schedule(0, 1000) == pytest.approx(51.0)
    assert soft_clamp_schedule(500, 1000) == pytest.approx(50 * math.sqrt(0.75) + 1)
    assert soft_clamp_schedule(1000, 1000) == pytest.approx(1.0)
    assert soft_clamp_schedule(2000, 1000) == pytest.approx(1.0)  # clipped
    assert soft_clamp_schedule(5, 10, soft_clamp=20, soft_clamp_min=2) == pytest.approx(
        20 * math.sqrt(0.75) + 2
    )


def test_invalid_predictions_pulled_along_the_ray():
    """Invalid predictions get the L1 gradient towards the point depth_target deep on their
    ray, finite even at depth exactly 0; valid ones get the tanh gradient."""
    pose = Pose.identity((3,), dtype=torch.float64)
    rays = torch.tensor([[0.1, -0.2], [0.0, 0.0], [0.05, 0.05]], dtype=torch.float64)
    world = torch.tensor(
        [[0.5, 0.4, -2.0], [1.0, 1.0, 0.0], [0.1, 0.1, 2.0]], dtype=torch.float64
    ).requires_grad_()
    focal = torch.full((3, 2), 100.0, dtype=torch.float64)
    loss, stats = ace_loss(world, pose, rays, focal, tau=10.0, depth_target=3.0)
    loss.backward()
    assert stats["valid"] == pytest.approx(1 / 3)
    target = 3.0 * torch.cat([rays, torch.ones(3, 1, dtype=torch.float64)], -1)
    expected = -torch.sign(target - world.detach()) / 3
    torch.testing.assert_close(world.grad[:2], expected[:2])
    assert torch.isfinite(world.grad).all()
    # the valid point (exactly on its ray) is at a minimum of its term
    torch.testing.assert_close(world.grad[2], torch.zeros(3, dtype=torch.float64))


# ---------------------------------------------------------------------------------- features
def test_encode_cells_samples_cell_pixels():
    image = torch.rand(2, 3, 48, 64)
    ext = ImagePyramid(strides=[1, 2])
    f = encode_cells(ext, image, levels=[0])
    assert f.shape == (2, 3, 6, 8)
    direct = image[:, :, 4::8, 4::8]
    torch.testing.assert_close(f, direct / direct.norm(dim=1, keepdim=True))
    both = encode_cells(ext, image)
    assert both.shape == (2, 6, 6, 8)
    norms = both.reshape(2, 2, 3, 6, 8).norm(dim=2)  # unit norm per level
    torch.testing.assert_close(norms, torch.ones_like(norms))
    with pytest.raises(ShapeError, match="multiples of 8"):
        encode_cells(ext, torch.rand(1, 3, 50, 64))
    with pytest.raises(InputError, match="levels"):
        encode_cells(ext, image, levels=[5])


def test_augmentation_is_geometrically_consistent():
    """A world point seen at pixel p in a view is seen at p' in the augmented view (new pose and
    camera), and the augmented image at p' shows the original at p; with distortion too."""
    H, W = 48, 64
    ys, xs = torch.meshgrid(torch.arange(H).double(), torch.arange(W).double(), indexing="ij")
    ramp = torch.stack([xs / W, ys / H, 0.5 + 0.0 * xs])[None]  # bilinear-exact image
    for cam in (_pinhole(W, H), Camera("SIMPLE_RADIAL", W, H, [50.0, 31.7, 23.2, -0.05])):
        cam = Camera.stack([cam.double()])
        pose = Pose.from_axis_angle(torch.tensor([[0.1, -0.2, 0.05]]), torch.tensor([[0.2, 0, 1]]))
        pose = pose.double()
        opts = ACEAugment(rotation_deg=15, zoom=1.3, brightness=0.0, contrast=0.0)
        gen = torch.Generator().manual_seed(3)
        img2, pose2, cam2, valid = augment_views(ramp, pose, cam, opts, gen)
        assert img2.shape == ramp.shape and valid.shape == (1, H, W)
        uv = torch.tensor([[[20.0, 15.0], [40.0, 30.0], [31.0, 22.0]]], dtype=torch.float64)
        rays = cam.unproject(uv)
        world = pose.inv().transform(rays * 2.5)
        uv2, ok = cam2.project(pose2.transform(world))
        assert ok.all()
        from dgeo.geometry import sample

        got, inside = sample(img2, uv2)
        want, _ = sample(ramp, uv)
        assert inside.all()
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        assert not torch.allclose(uv2, uv)  # it did move


def test_buffer_holds_encoded_cells_and_rays():
    torch.manual_seed(0)
    model = ACEModel(**SMALL)
    images = torch.rand(3, 3, 48, 64)
    cam = _pinhole()
    poses = Pose.from_axis_angle(0.1 * torch.randn(3, 3), torch.randn(3, 3))
    buf = build_buffer(model, images, poses, cam, samples_per_image=20, chunk=2)
    assert len(buf) == 60 and buf.num_views == 3
    assert buf.features.dtype == torch.float32
    feats = model.encode(images)  # (3, C, 6, 8)
    frame = buf.frame[buf.view]
    col = ((buf.pixels[:, 0] - 4) / 8).long()
    row = ((buf.pixels[:, 1] - 4) / 8).long()
    torch.testing.assert_close(buf.features, feats[frame, :, row, col])
    rays = cam.unproject(buf.pixels[:, None].double())[:, 0, :2].float()
    torch.testing.assert_close(buf.rays, rays)
    torch.testing.assert_close(buf.poses, poses.data.float()[buf.frame])
    batch = buf.__getitems__([0, 5, 59])
    assert batch["features"].shape == (3, model.feature_dim) and batch["pose"].shape == (3, 12)
    # every cell at most once per view
    keys = buf.view * 1000 + row * 8 + col
    assert keys.unique().numel() == len(buf)
    big = build_buffer(model, images, poses, cam, samples_per_image=500, augment=True)
    assert 3 * 48 >= len(big) > 48  # valid cells only (zooming out leaves black borders)
    with pytest.raises(InputError, match="poses"):
        build_buffer(model, images, None, cam)


# ---------------------------------------------------------------------------------- mapping
def test_map_tiny_room_localizes_mapping_frames(room, tmp_path):
    from dgeo.data.sequences import SequenceFolder
    from dgeo.models import load, save

    seq = SequenceFolder(room / "sequences" / "overcast-reference")
    info: dict = {}
    t = time.perf_counter()
    model = map_scene(
        seq, indices=range(0, 24, 2), **SMALL, steps=200, batch_size=512, depth_target=3.0,
        device="cpu", info=info,
    )  # fmt: skip
    seconds = time.perf_counter() - t
    assert seconds < 60, info
    assert info["valid"] > 0.95 and info["samples"] == 12 * 12 * 16
    centres = seq.poses[torch.arange(0, 24, 2)].center().mean(0)
    torch.testing.assert_close(model.head.mean.double(), centres, atol=1e-5, rtol=0)
    r = evaluate_frames(model, seq, indices=range(0, 24, 4))
    print({k: v for k, v in r.items() if k not in ("e_t", "e_R")}, info)
    assert r["pct_10cm_5deg"] >= 80 and r["median_cm"] < 5, r
    # save / load round trip through dgeo.models
    path = save(model, tmp_path / "ace.pt")
    back = load(path)
    assert isinstance(back, ACEModel) and back.config == model.config
    image = seq.load_image(0)[None]
    w0, _ = model.predict_world(image)
    w1, s1 = back.predict_world(image)
    torch.testing.assert_close(w0, w1)
    assert s1.shape == (1, 1, 12, 16) and float(s1.max()) == pytest.approx(model.sigma)


def test_model_config_round_trip_and_errors():
    m = ACEModel(**SMALL, levels=[1], sigma=0.05)
    again = ACEModel(**m.config)
    assert again.config == m.config and again.feature_dim == 128
    assert not any(p.requires_grad for p in m.extractor.parameters())
    m.train()
    assert not m.extractor.training and m.head.training
    with pytest.raises(InputError):
        ACEModel(extractor="nope")
    with pytest.raises(InputError):
        ACEModel(extractor="default", extractor_config={"dims": [8]})
    with pytest.raises(ShapeError, match="multiples of 8"):
        m.predict_world(torch.rand(1, 3, 50, 64))


def test_default_unet_extractor_builds():
    m = ACEModel(extractor="default", head={"width": 32})
    assert m.feature_dim == sum(m.extractor.config["dims"])
    world, _ = m.predict_world(torch.rand(1, 3, 48, 64))
    assert world.shape == (1, 3, 6, 8) and torch.isfinite(world).all()


# ---------------------------------------------------------------------------------- recipe
def test_ace_recipe_trains_and_validates(room, tmp_path):
    from dgeo.models import load
    from dgeo.pipeline.recipes import RECIPES, TrainConfig, train
    from dgeo.pipeline.recipes.ace import ACE_DEFAULTS, ACETask

    assert RECIPES.get("ace") is ACETask
    cfg = TrainConfig(
        **{
            **ACE_DEFAULTS,
            "input_folder": [str(room)],
            "model": "dense-sift",
            "model_config": {"strides": [4, 16], "head": {"width": 32}},
            "steps": 30,
            "batch_size": 512,
            "device": "cpu",
            "tensorboard": False,
            "val_pairs": 3,
            "loss": {"holdout": 4, "depth_target": 3.0},
        }
    )
    result = train(cfg, tmp_path / "run")
    assert result.finished and result.step == 30
    for key in ("pct_5cm_5deg", "median_cm", "pct_5cm_5deg_overcast-reference-holdout"):
        assert key in result.metrics
    assert "pct_5cm_5deg_night" in result.metrics
    model = load(tmp_path / "run" / "model.pt")
    assert isinstance(model, ACEModel)
    with pytest.raises(InputError, match="input-folder"):
        train(TrainConfig(**{**ACE_DEFAULTS, "device": "cpu"}), tmp_path / "empty")


def test_cli_train_ace(room, tmp_path):
    from typer.testing import CliRunner

    import dgeo.cli.commands  # noqa: F401  (registers the commands)
    from dgeo.cli.main import app
    from dgeo.models import load
    from dgeo.pipeline.recipes import read_metrics

    out = tmp_path / "cli"
    args = ["train", "ace", "--input-folder", str(room), "--out", str(out), "--steps", "12"]
    args += ["--batch-size", "512", "--head-width", "32", "--val-frames", "2", "--device", "cpu"]
    args += ["--depth-target", "3", "--samples-per-image", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"] == "ace" and cfg["schedule"] == "onecycle" and cfg["lr"] == 5e-3
    assert cfg["model"] == "default" and cfg["model_config"] == {"head": {"width": 32}}
    assert cfg["loss"] == {"depth_target": 3.0, "samples_per_image": 64}
    metrics = {(r["phase"], r["metric"]) for r in read_metrics(out / "metrics.csv")}
    assert ("val", "pct_5cm_5deg_night") in metrics
    assert isinstance(load(out / "model.pt"), ACEModel)
    bad = CliRunner().invoke(app, ["train", "ace", "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert isinstance(bad.exception, InputError) and "--input-folder" in str(bad.exception)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mapping_on_cuda_uses_float16_buffer(room):
    from dgeo.data.sequences import SequenceFolder

    seq = SequenceFolder(room / "sequences" / "overcast-reference")
    model = ACEModel(**SMALL).cuda()
    model.head.set_mean(seq.poses.center().mean(0))
    buf = build_buffer(model, seq, indices=range(0, 24, 2))
    assert buf.features.dtype == torch.float16 and buf.device.type == "cuda"
    model = map_scene(
        seq, indices=range(0, 24, 2), **SMALL, steps=200, batch_size=512, depth_target=3.0,
        device="cuda",
    )  # fmt: skip
    r = evaluate_frames(model, seq, indices=range(0, 24, 4))
    assert r["pct_10cm_5deg"] >= 80, r
    world, sigma = model.predict_world(seq.load_image(0)[None].cuda())
    assert world.dtype == torch.float32 and world.is_cuda and sigma.shape == (1, 1, 12, 16)
