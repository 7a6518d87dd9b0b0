"""Tests of the training recipes and the generic trainer (dgeo.pipeline.recipes).

Every run trains a tiny U-Net on 64x48 synthetic pairs on the CPU with one thread; the pairs are
rendered once per session into a disk cache (``pair_cache``) that every run's datasets read.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from dgeo.errors import InputError, ParseError
from dgeo.models import UNetPyramid, load, save
from dgeo.pipeline.recipes import (
    EpochBatchSampler,
    TrainConfig,
    load_checkpoint,
    lr_factor,
    make_task,
    read_config_file,
    read_metrics,
    resolve_config,
    train,
)
from dgeo.pipeline.recipes.checkpoint import rng_state, set_rng_state

REPO = Path(__file__).resolve().parents[1]
#: A U-Net small enough to train in seconds (strides 1, 4, 16).
TINY_UNET = dict(
    widths=[8, 16, 16, 16, 16], decoder_widths=[8, 16, 16, 16], dims=[8, 16, 16], strides=[1, 4, 16]
)
#: Synthetic pairs of every run: 32 training pairs (2 scenes), small textures.
DATA_OPTIONS = dict(num_pairs=32, texture_size=64, pairs_per_scene=16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: tiny tensors, a 2-core machine, and bitwise-reproducible runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pair_cache(tmp_path_factory) -> str:
    """The disk cache of the synthetic pairs, rendered once (32 train + 16 val, ~6 s)."""
    from dgeo.data.pairs import SyntheticPairs

    cache = tmp_path_factory.mktemp("pair_cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for split, n in (("train", 32), ("val", 16)):
            ds = SyntheticPairs(
                "street", split, height=48, width=64, num_points=128, cache_dir=cache,
                **{**DATA_OPTIONS, "num_pairs": n},
            )  # fmt: skip
            ds.prerender(range(n))
    finally:
        torch.set_num_threads(threads)
    return str(cache)


def tiny_config(cache: str, **overrides) -> TrainConfig:
    """A gnnet run on the cached pairs: batch 4, 64x48, 128 points, CPU."""
    values = dict(
        recipe="gnnet",
        data=["synthetic:street"],
        model="unet",
        model_config=TINY_UNET,
        steps=10,
        batch_size=4,
        lr=1e-2,
        warmup=2,
        height=48,
        width=64,
        num_points=128,
        val_pairs=4,
        val_every=4,
        checkpoint_every=0,
        log_every=2,
        device="cpu",
        data_options={**DATA_OPTIONS, "cache_dir": cache},
    )
    values.update(overrides)
    return TrainConfig(**values)


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return load(path).state_dict()


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_unique_rows(out: Path) -> None:
    rows = read_metrics(out / "metrics.csv")
    keys = Counter((r["step"], r["phase"], r["metric"]) for r in rows)
    dup = [k for k, n in keys.items() if n > 1]
    assert not dup, dup


def logged(out: Path) -> list[tuple]:
    """The rows of a run's metrics.csv without the wall-clock ones."""
    return [
        (r["step"], r["phase"], r["metric"], r["value"])
        for r in read_metrics(out / "metrics.csv")
        if r["metric"] != "seconds_per_step"
    ]


# ---------------------------------------------------------------------------------- pieces
def test_lr_schedules():
    total = 100
    cos = [lr_factor(s, total, "cosine", 0, 0.01) for s in range(total + 1)]
    assert cos[0] == pytest.approx(1.0) and cos[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in itertools.pairwise(cos))
    one = [lr_factor(s, total, "onecycle") for s in range(total + 1)]
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0)
    assert one.index(max(one)) == 30 and one[-1] == pytest.approx(1e-4)
    warm = [lr_factor(s, total, "constant", warmup=4) for s in range(6)]
    assert warm == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


def test_epoch_batches_are_seeded_sharded_and_resumable():
    a = list(EpochBatchSampler(10, 3, seed=1, epoch=0))
    assert a == list(EpochBatchSampler(10, 3, seed=1, epoch=0))
    assert a != list(EpochBatchSampler(10, 3, seed=1, epoch=1))
    assert len(a) == 3 and len({i for b in a for i in b}) == 9  # a permutation, last cut
    assert list(EpochBatchSampler(10, 3, seed=1, epoch=0, start=2)) == a[2:]
    ranks = [list(EpochBatchSampler(10, 2, 1, 0, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == len(set(seen)) == 8
    # a data set smaller than one batch per rank is repeated
    assert [len(b) for b in EpochBatchSampler(3, 4, 0, 0)] == [4]


def test_rng_state_round_trips_through_weights_only(tmp_path):
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    back = torch.load(tmp_path / "rng.pt", weights_only=True)
    x = (torch.rand(3), random.random())
    set_rng_state(back)
    assert torch.equal(torch.rand(3), x[0]) and random.random() == x[1]


def test_config_files_and_layering(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'lr = 0.003\ndata = ["synthetic:room"]\n[model]\nname = "unet"\n'
        "widths = [8, 16, 16, 16, 16]\n[loss]\ngn = 0.5\n"
    )
    values = read_config_file(toml)
    assert values["model"] == "unet" and values["model_config"]["widths"] == [8, 16, 16, 16, 16]
    cfg = resolve_config({"lr": 0.01, "steps": None}, file=toml)
    assert cfg.lr == 0.01 and cfg.data == ["synthetic:room"] and cfg.loss == {"gn": 0.5}
    stored = TrainConfig(batch_size=7, model_config={"dims": [8, 16, 16]}).to_dict()
    cfg = resolve_config({}, file=toml, stored=stored)
    assert cfg.batch_size == 7 and set(cfg.model_config) == {"dims", "widths"}
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"model": {"dims": [4, 4, 4]}, "seed": 3}))
    assert resolve_config({}, file=js).seed == 3
    with pytest.raises(InputError, match="unknown option"):
        resolve_config({}, stored={"lrr": 1})
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = [\n")
    with pytest.raises(ParseError, match=r"bad\.toml"):
        read_config_file(bad)
    with pytest.raises(InputError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(InputError, match="batch_size"):
        TrainConfig(batch_size=0)


# ---------------------------------------------------------------------------------- learning
def test_gnnet_training_improves_matching(pair_cache, tmp_path):
    """80 seeded steps lower the validation loss and raise the matching PCK (16 val pairs)."""
    out = tmp_path / "run"
    cfg = tiny_config(pair_cache, steps=80, val_every=80, val_pairs=16, checkpoint_every=40)
    t = time.perf_counter()
    result = train(cfg, out)
    seconds = time.perf_counter() - t
    print(f"gnnet: 80 steps in {seconds:.1f} s, {1000 * result.seconds_per_step:.0f} ms/step")
    assert result.finished and result.step == 80 and result.skipped_steps == 0
    val = {(r["step"], r["metric"]): r["value"] for r in read_metrics(out / "metrics.csv")
           if r["phase"] == "val"}  # fmt: skip
    assert val[(80, "loss")] < 0.75 * val[(0, "loss")], val
    assert val[(80, "pck@3px")] >= val[(0, "pck@3px")] + 10, val
    assert val[(80, "pck@1px")] > val[(0, "pck@1px")], val
    # the final model is a dgeo model file the localizer loads
    from dgeo.pipeline.localizer import LocalizerConfig, make_extractor

    model = make_extractor(LocalizerConfig(features="unet", weights=str(out / "model.pt")))
    assert isinstance(model, UNetPyramid) and model.config["widths"] == TINY_UNET["widths"]
    assert (out / "model_best.pt").exists()
    assert json.loads((out / "config.json").read_text())["steps"] == 80
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 80 and ckpt["epoch"] == 10 and ckpt["batch_in_epoch"] == 0
    assert_same_weights(ckpt["model"]["state_dict"], model.state_dict())
    assert_unique_rows(out)


# ---------------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def straight_run(pair_cache, tmp_path_factory) -> Path:
    """12 uninterrupted steps (epochs of 8 batches: the run crosses an epoch)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    result = train(tiny_config(pair_cache, steps=12), out)
    assert result.finished and result.epoch == 1
    return out


def test_stop_and_resume_equals_uninterrupted(pair_cache, straight_run, tmp_path):
    out = tmp_path / "run"
    first = train(tiny_config(pair_cache, steps=12), out, stop_after=6)
    assert not first.finished and first.step == 6 and not (out / "model.pt").exists()
    with pytest.raises(InputError, match="--resume"):
        train(tiny_config(pair_cache, steps=12), out)
    with pytest.raises(InputError, match="lr"):
        train(tiny_config(pair_cache, steps=12, lr=0.5), out, resume=True)
    # runtime options may change (validation and checkpoint frequency)
    second = train(tiny_config(pair_cache, steps=12, checkpoint_every=5), out, resume=True)
    assert second.finished and second.resumed_from == 6 and second.step == 12
    assert_same_weights(state_of(out / "model.pt"), state_of(straight_run / "model.pt"))
    a = load_checkpoint(out / "checkpoint.pt")
    b = load_checkpoint(straight_run / "checkpoint.pt")
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg_sq"], b["optimizer"]["state"][key]["exp_avg_sq"])
    assert_unique_rows(out)
    assert logged(out) == logged(straight_run)


KILL_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from dgeo.pipeline.recipes import TrainConfig, train
cfg = TrainConfig.from_dict(json.loads(open(sys.argv[1]).read()))
train(cfg, sys.argv[2], resume=True)
"""


def test_sigkill_leaves_a_loadable_checkpoint_and_resume_is_exact(
    pair_cache, straight_run, tmp_path
):
    """A run checkpointing every step is SIGKILLed mid-run; it resumes to the same weights."""
    out = tmp_path / "run"
    cfg = tiny_config(pair_cache, steps=12, checkpoint_every=1)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "run.py").write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "cfg.json"), str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        time.sleep(random.Random(0).uniform(0.1, 0.4))  # somewhere in the middle of a step
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        output = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, output
    ckpt = load_checkpoint(out / "checkpoint.pt")  # never torn
    assert 1 <= ckpt["step"] < 12
    result = train(cfg, out, resume=True)
    assert result.resumed_from == ckpt["step"] and result.finished
    assert_same_weights(state_of(out / "model.pt"), state_of(straight_run / "model.pt"))
    assert_unique_rows(out)
    assert not list(out.glob(".*.tmp"))  # the killed writer's temporary was cleaned up


def test_bad_checkpoints_name_the_file(pair_cache, straight_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_text("not a checkpoint\n")
    with pytest.raises(ParseError, match=r"checkpoint\.pt.*text file"):
        train(tiny_config(pair_cache), out, resume=True)
    save(UNetPyramid(**TINY_UNET), out / "checkpoint.pt")
    with pytest.raises(ParseError, match=r"checkpoint\.pt.*dgeo model file"):
        train(tiny_config(pair_cache), out, resume=True)
    torch.save({"a": torch.zeros(2)}, out / "checkpoint.pt")
    with pytest.raises(ParseError, match="raw state dict"):
        load_checkpoint(out / "checkpoint.pt")
    (out / "checkpoint.pt").write_bytes((straight_run / "checkpoint.pt").read_bytes())
    other = {**TINY_UNET, "dims": [8, 8, 8]}
    with pytest.raises(ParseError, match=r"checkpoint\.pt: is a checkpoint of another model"):
        train(tiny_config(pair_cache, model_config=other), out, resume=True)


# ---------------------------------------------------------------------------------- models
def test_init_weights_and_model_options(pair_cache, straight_run, tmp_path):
    cfg = tiny_config(pair_cache, init_weights=str(straight_run / "model.pt"), model_config={})
    model = make_task(cfg).build_model()
    assert_same_weights(model.state_dict(), state_of(straight_run / "model.pt"))
    clash = tiny_config(
        pair_cache, init_weights=str(straight_run / "model.pt"), model_config={"dims": [4, 4, 4]}
    )
    with pytest.raises(InputError, match="disagree"):
        make_task(clash).build_model()
    with pytest.raises(InputError, match="cannot be trained"):
        make_task(tiny_config(pair_cache, model="dense-sift")).build_model()
    with pytest.raises(InputError, match="no option"):
        make_task(tiny_config(pair_cache, model_config={"depth": 3})).build_model()
    # vgg: gn_net levels (no hypercolumn) initialised from a VGG-16 checkpoint (a small trunk)
    from dgeo.models import VGG16

    trunk = VGG16(until=10)
    torch.save({"state_dict": {f"features.{k}": v for k, v in trunk.features.state_dict().items()}},
               tmp_path / "vgg16.pth")  # fmt: skip
    vgg = tiny_config(
        pair_cache, model="vgg", model_config={"layers": [4, 9]},
        init_weights=str(tmp_path / "vgg16.pth"),
    )  # fmt: skip
    model = make_task(vgg).build_model()
    assert model.config["hypercolumn"] is False
    assert torch.equal(model.trunk.features[7].weight, trunk.features[7].weight)
    result = train(TrainConfig(**{**vgg.to_dict(), "steps": 2, "val_every": 0}), tmp_path / "v")
    assert result.finished and load(tmp_path / "v" / "model.pt").config["layers"] == [4, 9]


# ---------------------------------------------------------------------------------- pixloc
def test_pixloc_overfits_a_batch(pair_cache, tmp_path):
    """The unrolled pose loss reaches the network and falls on 4 pairs seen again and again."""
    out = tmp_path / "pixloc"
    cfg = tiny_config(
        pair_cache, recipe="pixloc", steps=10, lr=1e-3, warmup=0, schedule="constant",
        val_every=10, log_every=1, data_options={**DATA_OPTIONS, "num_pairs": 4,
                                                  "cache_dir": pair_cache},
        loss={"init": "perturbed", "init_range": [0.5, 0.5], "val_iterations": 20},
    )  # fmt: skip
    t = time.perf_counter()
    result = train(cfg, out)
    print(f"pixloc: 10 steps in {time.perf_counter() - t:.1f} s, "
          f"{1000 * result.seconds_per_step:.0f} ms/step")  # fmt: skip
    rows = read_metrics(out / "metrics.csv")
    loss = [r["value"] for r in rows if r["phase"] == "train" and r["metric"] == "loss"]
    grad = [r["value"] for r in rows if r["phase"] == "train" and r["metric"] == "grad_norm"]
    assert len(loss) == 10 and all(torch.isfinite(torch.tensor(loss)))
    assert min(grad) > 0 and result.skipped_steps == 0
    assert sum(loss[-5:]) / 5 < 0.85 * loss[0], loss
    val = {r["metric"] for r in rows if r["phase"] == "val"}
    assert {"loss", "pck@3px", "recall@0.25m/2deg", "median_t_m"} <= val
    start = UNetPyramid(**TINY_UNET).state_dict()
    moved = state_of(out / "model.pt")
    assert all(not torch.equal(start[k], moved[k]) for k in start if k.startswith("encoder.0"))


def test_pixloc_needs_geometry(tmp_path):
    import cv2
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    cfg = TrainConfig(
        recipe="pixloc", data=[f"homography:{images}"], height=48, width=64, device="cpu"
    )
    with pytest.raises(InputError, match="needs pairs with geometry"):
        make_task(cfg).build_datasets()


# ---------------------------------------------------------------------------------- logs, amp
def test_metrics_log_drops_rows_after_the_checkpoint_and_torn_lines(tmp_path, monkeypatch):
    import types

    from dgeo.pipeline.recipes.logs import MetricsLog

    calls = []

    class FakeWriter:  # torch.utils.tensorboard is optional: a stand-in records the calls
        def __init__(self, log_dir, **kwargs):
            calls.append(("init", kwargs))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    log = MetricsLog(tmp_path)
    for step in range(1, 6):
        log.log(step, 0, "train", {"loss": 1.0 / step, "lr": 0.1})
    log.close()
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("6,0,train,lo")  # a row torn by a kill
    assert ("train/loss", 0.5, 2) in calls and calls[0] == ("init", {})
    log = MetricsLog(tmp_path, start_step=3)
    log.log(4, 0, "val", {"pck@3px": 50.0})
    log.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [(r["step"], r["metric"]) for r in rows] == [
        (1, "loss"), (1, "lr"), (2, "loss"), (2, "lr"), (3, "loss"), (3, "lr"), (4, "pck@3px"),
    ]  # fmt: skip
    assert calls[-2] == ("init", {"purge_step": 4})
    assert (tmp_path / "metrics.csv").read_text().startswith("step,epoch,phase,metric,value,time\n")
    off = MetricsLog(tmp_path / "rank1", enabled=False)
    off.log(1, 0, "train", {"loss": 1.0})
    off.close()
    assert not (tmp_path / "rank1").exists()


def test_autocast_forward_returns_float32_pyramids():
    from dgeo.pipeline.recipes.base import ModelForward, pair_pyramids

    model = UNetPyramid(**TINY_UNET)
    images = torch.rand(2, 3, 48, 64)
    fwd = ModelForward(model, torch.bfloat16)  # CPU autocast (CUDA uses float16 + GradScaler)
    pyr_a, pyr_b = pair_pyramids(fwd, {"image_a": images[:1], "image_b": images[1:]})
    assert all(lvl.features.dtype == torch.float32 for lvl in pyr_a.levels)
    assert pyr_a.batch_size == pyr_b.batch_size == 1 and len(fwd.last_outputs) == 6
    ref = ModelForward(model)(images)
    assert torch.allclose(ref[0].features[:1], pyr_a[0].features, atol=0.1)
