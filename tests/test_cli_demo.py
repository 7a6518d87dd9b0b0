"""Tests of ``dgeo demo``, the pipeline behind it and its plot."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import dgeo.cli.commands  # noqa: F401  (registers the commands)
from dgeo.cli.main import app, main
from dgeo.errors import InputError
from dgeo.eval import evaluate
from dgeo.geometry import Pose
from dgeo.io.formats import read_hloc_results
from dgeo.pipeline.demo import QUICK_CONDITIONS, DemoConfig
from dgeo.viz import plot_localization


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``dgeo demo --quick`` once for the module (about half a minute on a CPU)."""
    out = tmp_path_factory.mktemp("demo")
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    return out, res


def test_demo_quick_prints_the_recall_table(quick_run):
    _, res = quick_run
    assert res.exit_code == 0, res.output
    assert "recall (%) per condition" in res.output
    for cond in QUICK_CONDITIONS:
        assert cond in res.output
    assert "localized 12 queries" in res.output and "localization.png" in res.output


def test_demo_quick_localizes_overcast_queries(quick_run):
    out, res = quick_run
    assert res.exit_code == 0, res.output
    names, poses = read_hloc_results(out / "results.txt")
    gt = read_hloc_results(out / "data" / "queries_gt.txt")
    assert sorted(names) == sorted(gt[0]) and len(names) == 4 * len(QUICK_CONDITIONS)
    result = evaluate((names, poses), gt, "robotcar", group_by="dirname")
    overcast = result.summary("queries/overcast-reference")
    # queries under the references' own condition: (0.25 m, 2 deg) for (nearly) all of them
    assert overcast.recall[0] >= 0.75, overcast


def test_demo_quick_writes_the_plot(quick_run):
    out, res = quick_run
    assert res.exit_code == 0, res.output
    img = cv2.imread(str(out / "localization.png"))
    assert img is not None and img.shape[1] == 1000 and img.shape[0] > 300
    # true poses are drawn green, estimates red: both colours are present
    green = (img[..., 1] > 120) & (img[..., 0] < 100) & (img[..., 2] < 100)
    red = (img[..., 2] > 180) & (img[..., 0] < 80) & (img[..., 1] < 80)
    assert green.sum() > 50 and red.sum() > 50


def test_quick_config_keeps_the_world_and_narrows_the_conditions():
    full, quick = DemoConfig(), DemoConfig.quick(seed=3)
    assert len(full.conditions) == 10 and quick.conditions == QUICK_CONDITIONS
    assert (quick.references, quick.width, quick.seed) == (full.references, full.width, 3)


def test_plot_clips_far_estimates_and_checks_counts(tmp_path):
    pts = torch.rand(200, 3, dtype=torch.float64) * torch.tensor([40.0, 10.0, 5.0])
    true = Pose.from_axis_angle(torch.zeros(2, 3), torch.tensor([[-5.0, -5, 0], [-20, -5, 0]]))
    far = Pose.from_axis_angle(torch.zeros(2, 3), torch.tensor([[-5.0, -5, 0], [-1e4, 0, 0]]))
    img = plot_localization(pts, true, far, success=[True, False], path=tmp_path / "p.png")
    assert img.dtype == np.uint8 and (tmp_path / "p.png").exists()
    assert np.array_equal(cv2.imread(str(tmp_path / "p.png")), img)
    with pytest.raises(InputError, match="estimates"):
        plot_localization(pts, true, far[:1])


def test_demo_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    for args, msg in ((["--conditions", "fog"], "condition"), (["--scene", "moon"], "scene")):
        monkeypatch.setattr(sys, "argv", ["dgeo", "demo", "--out", str(tmp_path), *args])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2
        assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err
