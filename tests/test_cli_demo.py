"""Tests of ``dgeo demo`` and of the pipeline behind it."""

from __future__ import annotations

import sys

import pytest
import torch
from typer.testing import CliRunner

import dgeo.cli.commands  # noqa: F401  (registers the commands)
from dgeo.cli.main import app, main
from dgeo.eval import evaluate
from dgeo.io.colmap import load_reference_map
from dgeo.io.formats import read_hloc_results
from dgeo.pipeline.demo import DemoConfig, run_demo


def test_demo_recovers_every_pose(tmp_path):
    cfg = DemoConfig(num_images=12, num_points=200, outlier_ratio=0.3, seed=3)
    result = run_demo(tmp_path, cfg)
    # the perturbation is exactly 12 degrees / 0.5 units: no query within (0.25 m, 2 deg) at first
    assert result.initial.recall[0] == 0.0
    assert result.refined.recall == (1.0, 1.0, 1.0)
    assert float(result.refined.rotation_error_deg.max()) < 0.2
    # the written files are a real COLMAP model and hloc results that evaluate the same
    ref = load_reference_map(result.files["model"])
    names, poses = read_hloc_results(result.files["results"])
    assert names == ref.names
    again = evaluate((names, poses), ref)
    torch.testing.assert_close(
        again.translation_error, result.refined.translation_error, atol=1e-6, rtol=0
    )


def test_demo_float32_matches_float64(tmp_path):
    base = DemoConfig(num_images=6, num_points=150, seed=1)
    r64 = run_demo(tmp_path / "a", base)
    r32 = run_demo(
        tmp_path / "b", DemoConfig(num_images=6, num_points=150, seed=1, dtype=torch.float32)
    )
    torch.testing.assert_close(
        r32.refined.translation_error, r64.refined.translation_error, atol=2e-3, rtol=0
    )


def test_demo_cli(tmp_path):
    res = CliRunner().invoke(
        app, ["demo", "--out", str(tmp_path), "--images", "8", "--points", "120"]
    )
    assert res.exit_code == 0, res.output
    assert "after batched robust LM" in res.output and "100.0" in res.output
    assert (tmp_path / "results.txt").exists() and (tmp_path / "sfm").is_dir()


def test_demo_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dgeo", "demo", "--out", str(tmp_path), "--outliers", "1.5"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert "outlier_ratio" in err and len(err.splitlines()) == 1 and "Traceback" not in err
