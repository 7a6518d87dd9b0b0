"""Tests of ``dgeo evaluate``: COLMAP and results-format ground truth, JSON, bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pycolmap
import pytest
import torch
from typer.testing import CliRunner

import dgeo.cli.commands  # noqa: F401  (registers the commands)
from dgeo.cli.main import app, main
from dgeo.geometry import Pose
from dgeo.io.formats import write_hloc_results

D = torch.float64
runner = CliRunner()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A synthetic COLMAP model (GT) and a results file with known errors.

    Ten images; the results hold eight: query i is rotated by i degrees about the camera's own
    z axis (centre unchanged) for i < 4, moved by 0.1 * i m for 4 <= i < 8; 8 and 9 missing.
    """
    root = tmp_path_factory.mktemp("eval_cli")
    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs, options.num_frames_per_rig, options.num_points3D = 1, 10, 60
    rec = pycolmap.synthesize_dataset(options)
    model = root / "model"
    model.mkdir()
    rec.write(str(model))
    images = sorted(rec.images.values(), key=lambda im: im.name)
    names = [im.name for im in images]
    gt = Pose.from_matrix(np.stack([im.cam_from_world().matrix() for im in images]))

    i = torch.arange(8, dtype=D)
    aa = torch.zeros(8, 3, dtype=D)
    aa[:4, 2] = torch.deg2rad(i[:4])
    delta = Pose.from_axis_angle(aa, torch.zeros(8, 3, dtype=D))
    est = delta @ gt[:8]
    c = est.center()
    c[4:, 0] += 0.1 * i[4:]
    est = Pose.from_Rt(est.R, -(est.R @ c[..., None])[..., 0])
    results = write_hloc_results(root / "results.txt", names[:8], est)
    return {"root": root, "model": model, "results": results, "names": names, "gt": gt}


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the real entry point (with its DgeoError handling) in-process."""
    monkeypatch.setattr(sys, "argv", ["dgeo", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_help_lists_examples():
    res = runner.invoke(app, ["evaluate", "--help"])
    assert res.exit_code == 0
    assert "Examples" in res.output and "dgeo evaluate results.txt" in res.output
    assert "evaluate" in runner.invoke(app, ["--help"]).output


def test_evaluate_against_colmap_model(scene, tmp_path):
    out = tmp_path / "eval.json"
    res = runner.invoke(
        app, ["evaluate", str(scene["results"]), str(scene["model"]), "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    # errors: R = 0..3° (4 queries), t = 0.4..0.7 m (4 queries), 2 failures.
    # (0.25 m, 2°): 0°, 1°, 2° -> 30 %; (0.5 m, 5°): + 3°, 0.4 m, 0.5 m (float noise aside)
    # -> 50 or 60 %; (5 m, 10°): 8/10 -> 80 %
    assert "30.0" in res.output and "80.0" in res.output
    assert "missing from the results" in res.output
    d = json.loads(out.read_text())
    s = d["summary"]["all"]
    assert (s["num_queries"], s["num_failed"]) == (10, 2)
    assert s["recall"][0] == pytest.approx(0.3) and s["recall"][2] == pytest.approx(0.8)
    # sorted t: 0 x4, 0.4, 0.5, 0.6, 0.7, inf, inf -> median (0.4 + 0.5) / 2
    assert s["median_translation_m"] == pytest.approx(0.45, abs=1e-9)
    # sorted R: 0 x5 (the moved ones), 1, 2, 3, 180, 180 -> 0.5°
    assert s["median_rotation_deg"] == pytest.approx(0.5, abs=1e-6)
    q = {x["name"]: x for x in d["queries"]}
    assert q[scene["names"][3]]["rotation_error_deg"] == pytest.approx(3.0, abs=1e-6)
    assert q[scene["names"][6]]["translation_error_m"] == pytest.approx(0.6, abs=1e-9)
    assert q[scene["names"][9]]["failed"] is True


def test_evaluate_results_format_gt_with_groups_and_basenames(scene, tmp_path):
    names, gt = scene["names"], scene["gt"]
    gt_names = [("night/" if k % 2 else "day/") + n for k, n in enumerate(names)]
    gt_file = write_hloc_results(tmp_path / "gt.txt", gt_names, gt)
    out = tmp_path / "eval.json"
    args = [str(scene["results"]), str(gt_file), "-t", "hloc", "-g", "dirname", "--json", str(out)]
    res = runner.invoke(app, ["evaluate", *args])
    assert res.exit_code == 0, res.output
    assert "matched by basename" in res.output
    assert "day" in res.output and "night" in res.output
    d = json.loads(out.read_text())
    assert d["matched_by"] == "basename" and len(d["thresholds"]) == 7
    assert set(d["summary"]) == {"day", "night", "all"}
    assert d["summary"]["day"]["num_queries"] == 5
    assert d["summary"]["night"]["num_failed"] == 1  # names[9] is odd -> night


def test_evaluate_custom_thresholds_and_queries_file(scene, tmp_path):
    names = scene["names"]
    queries = tmp_path / "queries_with_intrinsics.txt"
    queries.write_text(
        "".join(f"{n} SIMPLE_RADIAL 1024 768 1280 512 384 0.05\n" for n in names[:8])
    )
    args = [str(scene["results"]), str(scene["model"]), "-q", str(queries), "-t", "0.05:2.5"]
    res = runner.invoke(app, ["evaluate", *args])
    assert res.exit_code == 0, res.output
    # 8 queries, none missing; within (5 cm, 2.5°): 0°, 1°, 2° -> 3/8 = 37.5 %
    assert "37.5" in res.output and "missing" not in res.output


def test_evaluate_exact_names_no_warnings(scene, tmp_path):
    gt_file = write_hloc_results(tmp_path / "gt.txt", scene["names"][:8], scene["gt"][:8])
    res = runner.invoke(app, ["evaluate", str(scene["results"]), str(gt_file), "-t", "7scenes"])
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output
    assert "0.05m" in res.output and "median" in res.output


def bad_cases(scene, tmp_path):
    malformed = tmp_path / "malformed.txt"
    malformed.write_text(scene["results"].read_text() + "broken 1 0 0\n")
    other = write_hloc_results(tmp_path / "other.txt", ["x.jpg"], scene["gt"][:1])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    queries = tmp_path / "q.txt"
    queries.write_text("unknown.png SIMPLE_PINHOLE 10 10 5 5 5\n")
    r, m = str(scene["results"]), str(scene["model"])
    return {
        "missing results": ([str(tmp_path / "nope.txt"), m], "does not exist"),
        "missing ground truth": ([r, str(tmp_path / "nope")], "does not exist"),
        "malformed line": ([str(malformed), m], "line 9"),
        "no common names": ([str(other), m], "no result name matches"),
        "empty results": ([str(empty), m], "holds no pose"),
        "folder without model": ([r, str(no_model)], "no COLMAP model"),
        "bad thresholds": ([r, m, "-t", "fast"], "unknown threshold set"),
        "bad group": ([r, m, "-g", "prefix"], "unknown --group"),
        "query not in gt": ([r, m, "-q", str(queries)], "not in the ground truth"),
    }


def test_bad_inputs_one_line_exit_2(scene, tmp_path, monkeypatch, capsys):
    for case, (args, needle) in bad_cases(scene, tmp_path).items():
        code, out, err = run_main(monkeypatch, capsys, "evaluate", *args)
        assert code == 2, (case, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, (case, err)
        assert lines[0].startswith("error:") and needle in lines[0], (case, err)
        assert "Traceback" not in err + out


def test_python_m_dgeo_subprocess(scene, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dgeo", "evaluate", str(tmp_path / "nope.txt"), str(scene["model"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
