"""End-to-end tests of ``dgeo train``: CliRunner runs, resume, bad input, two-process torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import dgeo.cli.commands  # noqa: F401  (registers the commands)
from dgeo.cli.main import app, main
from dgeo.models import UNetPyramid, load
from dgeo.pipeline.recipes import load_checkpoint, read_metrics

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
#: The tiny U-Net and the data options of every run, as a --config file.
CONFIG = """
[model]
widths = [8, 16, 16, 16, 16]
decoder_widths = [8, 16, 16, 16]
dims = [8, 16, 16]
strides = [1, 4, 16]

[data_options]
num_pairs = 8
pairs_per_scene = 16
texture_size = 64
cache_dir = "{cache}"
"""
#: Options of every run (64x48 pairs, 64 points, batch 2, CPU).
OPTIONS = [
    "--data", "synthetic:street", "--height", "48", "--width", "64", "--num-points", "64",
    "--batch-size", "2", "--lr", "3e-3", "--val-every", "2", "--val-pairs", "2",
    "--log-every", "1", "--device", "cpu",
]  # fmt: skip
FILES = {"config.json", "checkpoint.pt", "metrics.csv", "model.pt", "model_best.pt"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    """The --config file; its pair cache is rendered once (8 train + 2 val pairs)."""
    from dgeo.data.pairs import SyntheticPairs

    root = tmp_path_factory.mktemp("cli_train")
    cache = root / "cache"
    for split, n in (("train", 8), ("val", 2)):
        ds = SyntheticPairs(
            "street", split, num_pairs=8, pairs_per_scene=16, texture_size=64, cache_dir=cache,
            height=48, width=64, num_points=64,
        )  # fmt: skip
        ds.prerender(range(n))
    path = root / "small.toml"
    path.write_text(CONFIG.format(cache=cache))
    return path


def rows_unique(out: Path) -> bool:
    keys = Counter((r["step"], r["phase"], r["metric"]) for r in read_metrics(out / "metrics.csv"))
    return all(n == 1 for n in keys.values())


def test_train_gnnet_end_to_end_and_resume(config_file, tmp_path):
    out = tmp_path / "run"
    args = ["train", "gnnet", *OPTIONS, "--config", str(config_file), "--out", str(out)]
    res = runner.invoke(app, [*args, "--steps", "4"])
    assert res.exit_code == 0, res.output
    assert "dgeo train gnnet" in res.output and "val pck@3px" in res.output
    assert {p.name for p in out.iterdir()} == FILES
    model = load(out / "model.pt")
    assert isinstance(model, UNetPyramid) and model.config["dims"] == [8, 16, 16]
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4
    # resume with only --out (everything else from the checkpoint) and a longer run
    res = runner.invoke(app, ["train", "gnnet", "--out", str(out), "--resume", "--steps", "6"])
    assert res.exit_code == 0, res.output
    assert "resumed from" in res.output
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 6 and ckpt["config"]["height"] == 48
    steps = sorted({r["step"] for r in read_metrics(out / "metrics.csv") if r["phase"] == "train"})
    assert steps == [1, 2, 3, 4, 5, 6] and rows_unique(out)


def run_main(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    """``dgeo ARGS`` through the console entry point: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dgeo", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_2(config_file, tmp_path, monkeypatch, capsys):
    import cv2
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(images / f"{i}.png"), pixels)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("lr = [\n")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "checkpoint.pt").write_text("hello\n")
    out = str(tmp_path / "out")
    base = ["--config", str(config_file), "--device", "cpu", "--steps", "1"]
    cases = [
        (["gnnet", "--data", "colmap:/no/such/sfm:/no/such/images"], "does not exist"),
        (["gnnet", "--data", "moon:x"], "unknown data kind"),
        (["gnnet"], "no training data"),
        (["gnnet", "--data", "synthetic:street", "--model", "dense-sift"], "cannot be trained"),
        (["gnnet", "--data", "synthetic:street", "--schedule", "linear"], "unknown schedule"),
        (["gnnet", "--data", "synthetic:street", "--config", str(bad_toml)], "not valid TOML"),
        (["pixloc", "--data", f"homography:{images}"], "needs pairs with geometry"),
        (["gnnet", "--data", "synthetic:street", "--out", str(junk)], "already exists"),
        (["gnnet", "--out", str(junk), "--resume"], "junk/checkpoint.pt: is a text file"),
    ]
    for args, message in cases:
        argv = ["train", args[0], *base, "--out", out, *args[1:]]
        code, err = run_main(monkeypatch, capsys, argv)
        assert code == 2, (args, err)
        assert message in err and err.strip().count("\n") == 0, (args, err)
    assert not Path(out).exists() or not (Path(out) / "checkpoint.pt").exists()


STOP_SCRIPT = """
import json, sys
import torch
from dgeo.pipeline.recipes import TrainConfig, train
config = TrainConfig.from_dict(json.loads(open(sys.argv[1]).read()))
stop = int(sys.argv[3]) if len(sys.argv) > 3 else None
train(config, sys.argv[2], resume=True, stop_after=stop)
"""


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` (one thread per rank, 180 s at most)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun did not finish within 180 s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_torchrun_two_processes_gloo(config_file, tmp_path):
    """``torchrun --nproc-per-node 2 -m dgeo train gnnet``: DDP on gloo, rank 0 writes; a
    two-process run stopped at step 2 and resumed gives the same weights."""
    out = tmp_path / "ddp"
    proc = torchrun(
        "-m", "dgeo", "train", "gnnet", *OPTIONS, "--config", str(config_file),
        "--out", str(out), "--steps", "4", "--checkpoint-every", "2",
    )  # fmt: skip
    assert proc.stdout.count("dgeo train gnnet") == 1  # only rank 0 prints the summary
    assert {p.name for p in out.iterdir()} == FILES
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["step"] == 4
    model = load(out / "model.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"]["state_dict"][k])
    assert rows_unique(out)
    # 8 pairs, 2 ranks x batch 2: 2 steps per epoch
    assert ckpt["epoch"] == 2 and ckpt["batch_in_epoch"] == 0
    # the same run (its config.json), stopped after 2 steps and resumed
    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    again = tmp_path / "again"
    torchrun(str(script), str(out / "config.json"), str(again), "2")
    assert load_checkpoint(again / "checkpoint.pt")["step"] == 2
    torchrun(str(script), str(out / "config.json"), str(again))
    resumed = load(again / "model.pt").state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, resumed[k]), k
    assert rows_unique(again)
