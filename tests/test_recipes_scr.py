"""Tests of the scene-coordinate recipes (scoordnet, oflownet, kfnet) and their CLI commands.

Every run trains the CPU-sized networks (``widths = "small"``) for a few steps on the tiny
synthetic room (two 24-frame 128x96 sequences with 1/8 labels); the stage models trained by the
module fixtures are what the KFNet test fine-tunes.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import dgeo.cli.commands  # noqa: F401  (registers the commands)
from dgeo.cli.main import app, main
from dgeo.data.sequences import SequenceFolder, resolve_input_folder
from dgeo.errors import InputError
from dgeo.models import load
from dgeo.pipeline.recipes import (
    RECIPES,
    TrainConfig,
    load_checkpoint,
    make_task,
    read_metrics,
    train,
)

#: The tiny room of the issue's test data (two 24-frame sequences, 128x96, 1/8 labels).
#: Fast RANSAC for the validation poses.
FAST_POSES = {"threshold_px": 10.0, "max_iterations": 200}


def scr_config(recipe: str, root: Path, **overrides) -> TrainConfig:
    """A short CPU run of ``recipe`` on ``root`` with the small networks."""
    values = dict(
        recipe=recipe, input_folder=[str(root)], model_config={"widths": "small"}, steps=3,
        batch_size=2, lr=1e-3, val_every=3, val_pairs=2, checkpoint_every=0, log_every=1,
        device="cpu", tensorboard=False,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def val_rows(out: Path, metric: str) -> dict[int, float]:
    return {
        r["step"]: r["value"]
        for r in read_metrics(out / "metrics.csv")
        if r["phase"] == "val" and r["metric"] == metric
    }


@pytest.fixture(scope="module")
def scoordnet_run(seq_synth, tmp_path_factory) -> Path:
    """3 SCoordNet steps (validation at steps 0 and 3)."""
    out = tmp_path_factory.mktemp("scoordnet") / "run"
    cfg = scr_config("scoordnet", seq_synth, loss=FAST_POSES)
    result = train(cfg, out)
    assert result.finished and result.skipped_steps == 0
    return out


@pytest.fixture(scope="module")
def oflownet_run(seq_synth, tmp_path_factory) -> Path:
    """3 OFlowNet steps on frame pairs (validation at steps 0 and 3)."""
    out = tmp_path_factory.mktemp("oflownet") / "run"
    result = train(scr_config("oflownet", seq_synth), out)
    assert result.finished and result.skipped_steps == 0
    return out


# ---------------------------------------------------------------------------------- recipes
def test_recipes_are_registered():
    assert {"scoordnet", "oflownet", "kfnet"} <= set(RECIPES)
    with pytest.raises(InputError, match="no training sequences"):
        make_task(TrainConfig(recipe="scoordnet")).build_datasets()
    with pytest.raises(InputError, match="unknown kfnet option"):
        make_task(TrainConfig(recipe="kfnet", loss={"fix_flownet": True, "nope": 1}))


def test_scoordnet_trains_and_resumes_exactly(scoordnet_run, seq_synth, tmp_path):
    out = scoordnet_run
    loss = val_rows(out, "loss")
    assert set(loss) == {0, 3} and all(math.isfinite(v) for v in loss.values())
    assert loss[3] < loss[0] - 0.5, loss  # the NLL drops fast (mostly through sigma)
    for metric in ("pose_median_cm", "pose_median_deg", "pose_5cm5deg", "median_error_cm"):
        assert 3 in val_rows(out, metric), metric
    model = load(out / "model.pt")
    assert type(model).__name__ == "SCoordNet" and model.config["widths"] == "small"
    first = SequenceFolder(resolve_input_folder(seq_synth)[0])
    assert torch.equal(model.transform, first.transform)  # the first folder's transform.txt
    # stopped after 2 steps and resumed: the weights of the uninterrupted run, bit for bit
    again = tmp_path / "again"
    cfg = scr_config("scoordnet", seq_synth, loss=FAST_POSES)
    assert not train(cfg, again, stop_after=2).finished
    assert load_checkpoint(again / "checkpoint.pt")["step"] == 2
    result = train(cfg, again, resume=True)
    assert result.resumed_from == 2 and result.finished
    resumed = load(again / "model.pt").state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, resumed[k]), k


def test_oflownet_trains_on_pairs(oflownet_run):
    loss = val_rows(oflownet_run, "loss")
    assert set(loss) == {0, 3} and all(math.isfinite(v) for v in loss.values())
    assert loss[3] < loss[0], loss
    assert 3 in val_rows(oflownet_run, "median_error_cm")
    model = load(oflownet_run / "model.pt")
    assert type(model).__name__ == "OFlowNet"


def test_kfnet_fine_tunes_the_stages(scoordnet_run, oflownet_run, seq_synth, tmp_path):
    """KFNet from the two stage files with a frozen OFlowNet: finite filtered losses, SCoordNet
    weights move, OFlowNet weights stay, the SCoordNet keeps its transform."""
    out = tmp_path / "kfnet"
    cfg = scr_config(
        "kfnet", seq_synth, steps=2, val_every=2, val_pairs=2, model_config={},
        init_scoordnet=str(scoordnet_run / "model.pt"),
        init_oflownet=str(oflownet_run / "model.pt"),
        loss={"fix_flownet": True, **FAST_POSES},
    )  # fmt: skip
    result = train(cfg, out)
    assert result.finished and result.skipped_steps == 0
    train_loss = [r["value"] for r in read_metrics(out / "metrics.csv") if r["metric"] == "loss"]
    assert train_loss and all(math.isfinite(v) for v in train_loss)
    for metric in ("nll_post", "nll_prior", "pose_median_cm", "meas_median_cm"):
        assert 2 in val_rows(out, metric), metric
    kf = load(out / "model.pt")
    assert type(kf).__name__ == "KFNet"
    stage1, stage2 = load(scoordnet_run / "model.pt"), load(oflownet_run / "model.pt")
    assert torch.equal(kf.scoordnet.transform, stage1.transform)
    for k, v in stage2.state_dict().items():
        assert torch.equal(v, kf.oflownet.state_dict()[k]), k
    moved = [
        not torch.equal(v, kf.scoordnet.state_dict()[k]) for k, v in stage1.state_dict().items()
    ]
    assert any(moved)


# ---------------------------------------------------------------------------------- CLI
runner = CliRunner()


def test_cli_train_scoordnet_end_to_end(seq_synth, tmp_path):
    out = tmp_path / "cli"
    args = [
        "train", "scoordnet", "--input-folder", str(seq_synth), "--out", str(out), "--steps", "3",
        "--widths", "small", "--batch-size", "2", "--val-frames", "2", "--device", "cpu",
        "--lr", "1e-3",
    ]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "dgeo train scoordnet" in res.output and "val pose_median_cm" in res.output
    model = load(out / "model.pt")
    assert type(model).__name__ == "SCoordNet"
    assert load_checkpoint(out / "checkpoint.pt")["config"]["input_folder"] == [str(seq_synth)]


def run_main(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    """``dgeo ARGS`` through the console entry point: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dgeo", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def test_bad_input_folders_are_one_line_and_exit_2(seq_synth, tmp_path, monkeypatch, capsys):
    night = resolve_input_folder(seq_synth)[1]

    def broken(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(night, copy)
        return copy

    short = broken("size")
    (short / "labels/frame_00003.label").write_bytes(b"\0" * 100)
    lengths = broken("lengths")
    lines = (lengths / "label_list.txt").read_text().splitlines()
    (lengths / "label_list.txt").write_text("\n".join(lines[:-2]) + "\n")
    skew = broken("transform")
    T = np.eye(4)
    T[0, 1] = 0.3
    (skew / "transform.txt").write_text("\n".join(" ".join(map(str, r)) for r in T) + "\n")
    one = broken("one")
    (one / "image_list.txt").write_text("images/frame_00000.png\n")
    (one / "label_list.txt").write_text("labels/frame_00000.label\n")
    nocam = broken("nocam")
    (nocam / "camera.txt").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "out")
    cases = [
        ("scoordnet", [str(tmp_path / "nowhere")], "does not exist"),
        ("scoordnet", [str(empty)], "holds no image_list.txt"),
        ("scoordnet", [str(short)], "not a KFNet label size"),
        ("oflownet", [str(lengths)], "lists 22 label file(s) but image_list.txt lists 24"),
        ("kfnet", [str(skew)], "is not a rigid transform"),
        ("oflownet", [str(one)], "at least 2 frames"),
        ("scoordnet", [str(nocam)], "no camera for the sequence"),
        ("scoordnet", [], "no training sequences"),
    ]
    for recipe, folders, message in cases:
        argv = ["train", recipe, "--out", out, "--steps", "1", "--device", "cpu"]
        for f in folders:
            argv += ["--input-folder", f]
        code, err = run_main(monkeypatch, capsys, argv)
        assert code == 2, (recipe, folders, err)
        assert message in err and err.strip().count("\n") == 0, (recipe, folders, err)
    assert not (Path(out) / "checkpoint.pt").exists()
    # the camera of a folder without camera.txt can be given instead (--camera)
    cfg = TrainConfig(
        recipe="scoordnet", input_folder=[str(nocam)], camera="PINHOLE 128 96 1 1 64 48"
    )
    assert make_task(cfg).folders[0].camera.params.tolist() == [1.0, 1.0, 63.5, 47.5]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_recipes_on_cuda_with_amp(seq_synth, tmp_path):
    """Two steps of each recipe on CUDA under float16 autocast: finite losses, models saved."""
    stages = {}
    for recipe in ("scoordnet", "oflownet"):
        out = tmp_path / recipe
        cfg = scr_config(recipe, seq_synth, steps=2, val_every=2, device="cuda", amp=True)
        if recipe == "scoordnet":
            cfg.loss = dict(FAST_POSES)
        result = train(cfg, out)
        assert result.finished and math.isfinite(result.metrics["loss"]), recipe
        stages[recipe] = str(out / "model.pt")
    cfg = scr_config(
        "kfnet", seq_synth, steps=2, val_every=2, device="cuda", amp=True, model_config={},
        init_scoordnet=stages["scoordnet"], init_oflownet=stages["oflownet"], loss=FAST_POSES,
    )  # fmt: skip
    result = train(cfg, tmp_path / "kfnet")
    assert result.finished and math.isfinite(result.metrics["loss"])
    assert math.isfinite(result.metrics["pose_median_deg"])
    assert type(load(tmp_path / "kfnet" / "model.pt")).__name__ == "KFNet"
