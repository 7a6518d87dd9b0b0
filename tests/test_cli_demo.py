"""Tests of ``dgeo demo`` and of the pipeline behind it."""

from __future__ import annotations

import sys

import pytest
import torch
from typer.testing import CliRunner

import dgeo.cli.commands  # noqa: F401  (registers the commands)
from dgeo.cli.main import app, main
from dgeo.eval import evaluate
from dgeo.io.formats import read_hloc_results
from dgeo.pipeline.demo import DemoConfig, run_demo

SMALL = dict(references=8, queries=3, conditions=("night", "snow"), width=160, height=120)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, DemoConfig(outlier_ratio=0.3, seed=3, **SMALL))


def test_demo_recovers_every_pose(demo_run):
    out, result = demo_run
    # the perturbation is exactly 12 degrees / 0.5 m: no query within (0.5 m, 5 deg) at first
    assert result.initial.recall[1] == 0.0
    assert result.refined.recall[1:] == (1.0, 1.0)
    assert float(result.refined.rotation_error_deg.median()) < 0.5
    assert result.num_queries == 6 and result.num_observations > 100
    # the results on disk evaluate the same against the rendered ground truth
    names, poses = read_hloc_results(result.files["results"])
    again = evaluate((names, poses), read_hloc_results(out / "data" / "queries_gt.txt"))
    torch.testing.assert_close(
        again.translation_error, result.refined.translation_error, atol=1e-6, rtol=0
    )


def test_demo_float32_matches_float64(demo_run, tmp_path):
    _, r64 = demo_run
    r32 = run_demo(tmp_path, DemoConfig(outlier_ratio=0.3, seed=3, dtype=torch.float32, **SMALL))
    torch.testing.assert_close(
        r32.refined.translation_error, r64.refined.translation_error, atol=5e-3, rtol=0
    )


def test_demo_cli(tmp_path):
    args = ["demo", "--out", str(tmp_path), "--references", "6", "--queries", "2"]
    res = CliRunner().invoke(app, [*args, "--conditions", "dusk"])
    assert res.exit_code == 0, res.output
    assert "after batched robust LM" in res.output
    assert (tmp_path / "results.txt").exists() and (tmp_path / "data" / "sfm").is_dir()


def test_demo_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    for args, msg in ((["--outliers", "1.5"], "outlier_ratio"), (["--scene", "moon"], "scene")):
        monkeypatch.setattr(sys, "argv", ["dgeo", "demo", "--out", str(tmp_path), *args])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2
        assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err
