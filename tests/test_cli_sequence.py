"""End-to-end tests of ``dgeo localize-sequence`` (and of ``dgeo evaluate`` / ``dgeo viz`` on
its outputs) on a tiny rendered sequence.

The networks are the ground-truth stand-ins of ``test_pipeline_scr`` (the weights loader is
patched to return them), so the runs localize every frame without training; one run loads a
real (random, tiny) KFNet model file to check the loading path.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_pipeline_scr import OracleFlow, OracleKFNet, OracleSCR
from typer.testing import CliRunner

import dgeo.cli.commands  # noqa: F401  (registers the commands)
import dgeo.pipeline.scr.sequence as sequence_module
from dgeo.cli.main import app, main
from dgeo.data.sequences import SequenceFolder
from dgeo.eval.metrics import pose_errors
from dgeo.io.formats import read_hloc_results, read_path_list
from dgeo.pipeline.runs import read_log

runner = CliRunner()


@pytest.fixture(scope="module")
def synth(seq_synth) -> Path:
    return seq_synth


@pytest.fixture(scope="module")
def folder(synth) -> Path:
    return synth / "sequences" / "night"


@pytest.fixture(scope="module")
def short(folder, tmp_path_factory) -> Path:
    """The first 8 frames of the sequence."""
    return first_frames(folder, tmp_path_factory.mktemp("cli_seq_short") / "night", 8)


@pytest.fixture(scope="module")
def oracles(folder):
    """``method -> model`` stand-ins returning the ground truth of each frame."""
    seq = SequenceFolder(folder)
    pairs = [seq.load_label(i) for i in range(len(seq))]
    labels = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    scr = OracleSCR(seq, labels, noise=0.002)
    return {
        "scoordnet": scr,
        "ace": OracleSCR(seq, labels, sigma=0.02),
        "kfnet": OracleKFNet(scr, OracleFlow(scr, seq, labels, sigma_w=0.002)),
    }


@pytest.fixture
def patched(monkeypatch, oracles):
    """Make ``--weights`` load the stand-in of the method (any path is accepted)."""

    def fake_load(method, weights, device="cpu"):
        return oracles[method]

    monkeypatch.setattr(sequence_module, "load_sequence_model", fake_load)


def run(folder: Path, output: Path, method: str = "scoordnet", *extra: str):
    args = ["localize-sequence", "--method", method, "--input-folder", str(folder)]
    args += ["--weights", "oracle.pt", "--output", str(output), "--device", "cpu", *extra]
    return runner.invoke(app, args)


def result_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_localize_then_evaluate(patched, folder, tmp_path):
    out = tmp_path / "results.txt"
    res = run(folder, out, "scoordnet", "--batch-size", "8")
    assert res.exit_code == 0, res.output
    for text in ("localized", "median error", "within 5 cm / 5°", "median ransac", "wrote"):
        assert text in res.output, res.output
    names, poses = read_hloc_results(out)
    image_list = [p.as_posix() for p in read_path_list(folder / "image_list.txt")]
    assert names == image_list
    seq = SequenceFolder(folder)
    e_t, e_R, _ = pose_errors(poses, seq.poses)
    assert float(e_t.max()) < 0.01 and float(torch.rad2deg(e_R).max()) < 0.5
    records = read_log(Path(f"{out}.log.jsonl"))
    assert [r["name"] for r in records] == names
    assert all(r["success"] and r["reason"] == "ok" for r in records)
    assert {"read", "network", "ransac"} <= set(records[0]["timings"])
    a, b = tmp_path / "by_file.json", tmp_path / "by_folder.json"
    ev = runner.invoke(
        app, ["evaluate", str(out), str(folder / "poses.txt"), "-t", "ace", "--json", str(a)]
    )
    assert ev.exit_code == 0, ev.output
    assert "100.0" in ev.output
    # the sequence folder itself as ground truth (no camera or images read): the same numbers
    ev = runner.invoke(app, ["evaluate", str(out), str(folder), "-t", "ace", "--json", str(b)])
    assert ev.exit_code == 0, ev.output
    assert json.loads(a.read_text()) == json.loads(b.read_text())


def test_ace_method(patched, short, tmp_path):
    out = tmp_path / "ace.txt"
    res = run(short, out, "ace")
    assert res.exit_code == 0, res.output
    assert len(result_lines(out)) == 8


def test_kfnet_resume_coords_and_viz(patched, folder, tmp_path):
    """KFNet with --coords-dir; an interrupted run resumed; the viz commands on the outputs."""
    full, part, coords = tmp_path / "full.txt", tmp_path / "part.txt", tmp_path / "coords"
    res = run(folder, full, "kfnet", "--coords-dir", str(coords))
    assert res.exit_code == 0, res.output
    assert "filter resets" in res.output and "none" in res.output
    assert (coords / "coord_0.npy").is_file() and (coords / "22_23_flow.npy").is_file()
    # an interrupted run: the first 10 frames in the results and the log
    lines = result_lines(full)
    part.write_text("\n".join(lines[:10]) + "\n")
    log = Path(f"{full}.log.jsonl").read_text().splitlines()
    Path(f"{part}.log.jsonl").write_text("\n".join(log[:10]) + "\n")
    res = run(folder, part, "kfnet", "--resume")
    assert res.exit_code == 0, res.output
    assert "already done (--resume)" in res.output
    resumed = result_lines(part)
    assert resumed[:10] == lines[:10] and len(resumed) == 24
    names = [ln.split()[0] for ln in resumed]
    assert names == [ln.split()[0] for ln in lines]
    records = read_log(Path(f"{part}.log.jsonl"))
    assert len(records) == 24 and records[10]["filter_reset"] == "resume"
    # the pictures of the outputs
    image = folder / "images" / "frame_00005.png"
    ply, png, traj = tmp_path / "c5.ply", tmp_path / "f5.png", tmp_path / "traj.png"
    cases = [
        ["viz", "coords", str(coords / "coord_5.npy"), "--out", str(ply), "--image", str(image)],
        ["viz", "flow", str(coords / "4_5_flow.npy"), "--out", str(png)],
        ["viz", "trajectory", str(full), "--gt", str(folder), "--out", str(traj)],
    ]
    for args in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (args, r.output)
    assert ply.read_bytes().startswith(b"ply\n") and png.stat().st_size > 0
    assert traj.stat().st_size > 0


def test_resumed_scoordnet_equals_a_full_run(patched, short, tmp_path):
    full, part = tmp_path / "full.txt", tmp_path / "part.txt"
    assert run(short, full, "scoordnet", "--batch-size", "3").exit_code == 0
    lines = result_lines(full)
    part.write_text("\n".join(lines[:3]) + "\n")
    res = run(short, part, "scoordnet", "--resume", "--batch-size", "2")
    assert res.exit_code == 0, res.output
    _, a = read_hloc_results(full)
    _, b = read_hloc_results(part)
    torch.testing.assert_close(a.data, b.data, atol=1e-9, rtol=0)


def test_bad_frame_fails_alone_exit_1(patched, short, tmp_path):
    broken = tmp_path / "night"
    shutil.copytree(short, broken)
    (broken / "images" / "frame_00005.png").write_bytes(b"")
    out = tmp_path / "results.txt"
    for method in ("scoordnet", "kfnet"):
        res = run(broken, out, method)
        assert res.exit_code == 1, res.output
        assert "failed: images/frame_00005.png: error: ParseError" in res.output
        records = {r["name"]: r for r in read_log(Path(f"{out}.log.jsonl"))}
        assert len(records) == 8 and not records["images/frame_00005.png"]["success"]
        assert sum(r["success"] for r in records.values()) == 7
        if method == "kfnet":
            assert records["images/frame_00006.png"]["filter_reset"] == "missing frame"
            assert "missing frame 1" in res.output


def first_frames(folder: Path, dest: Path, n: int) -> Path:
    """A copy of ``folder`` that lists only its first ``n`` frames."""
    shutil.copytree(folder, dest)
    for listing in ("image_list.txt", "label_list.txt", "poses.txt"):
        lines = (dest / listing).read_text().splitlines()[:n]
        (dest / listing).write_text("\n".join(lines) + "\n")
    return dest


def test_real_model_file(folder, tmp_path):
    """No stand-in: a random tiny KFNet written by dgeo.models.save goes through the CLI."""
    from dgeo.models import KFNet, OFlowNet, SCoordNet, save

    weights = save(KFNet(SCoordNet("small"), OFlowNet(widths="small")), tmp_path / "kfnet.pt")
    short = first_frames(folder, tmp_path / "short", 3)
    out = tmp_path / "results.txt"
    args = ["localize-sequence", "-m", "kfnet", "-i", str(short), "-w", str(weights)]
    args += ["-o", str(out), "--device", "cpu", "--max-iterations", "100"]
    res = runner.invoke(app, args)
    assert res.exit_code in (0, 1), res.output  # random weights: poses may fail
    assert len(result_lines(out)) == 3 and len(read_log(Path(f"{out}.log.jsonl"))) == 3


def run_main(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["dgeo", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_2(synth, folder, tmp_path, monkeypatch, capsys):
    from dgeo.models import SCoordNet, save

    scn = save(SCoordNet("small"), tmp_path / "scn.pt")
    text = tmp_path / "weights.txt"
    text.write_text("not a model\n")
    no_camera = tmp_path / "no_camera"
    shutil.copytree(folder, no_camera)
    (no_camera / "camera.txt").unlink()
    out = tmp_path / "results.txt"
    base = ["localize-sequence", "--output", str(out), "--device", "cpu"]
    cases = [
        (["-m", "kfnet", "-i", str(tmp_path / "nope"), "-w", str(scn)], "does not exist"),
        (["-m", "kfnet", "-i", str(synth), "-w", str(scn)], "holds 2 sequences"),
        (["-m", "dsac", "-i", str(folder), "-w", str(scn)], "unknown --method 'dsac'"),
        (["-m", "kfnet", "-i", str(folder), "-w", str(scn)], "holds a SCoordNet, but --method"),
        (["-m", "ace", "-i", str(folder), "-w", str(text)], "weights.txt"),
        (["-m", "scoordnet", "-i", str(folder), "-w", str(tmp_path / "missing.pt")], "missing"),
        (["-m", "scoordnet", "-i", str(no_camera), "-w", str(scn)], "no camera for the sequence"),
        (
            ["-m", "scoordnet", "-i", str(folder), "-w", str(scn), "--camera", "7scenes"],
            "intrinsics say 640x480",
        ),
        (
            ["-m", "scoordnet", "-i", str(folder), "-w", str(scn), "--top-fraction", "0"],
            "top_fraction must be in (0, 1]",
        ),
        (["-m", "ace", "-i", str(folder), "-w", str(scn), "--batch-size", "0"], "--batch-size"),
    ]
    for args, message in cases:
        code, err = run_main(monkeypatch, capsys, [*base, *args])
        assert code == 2, (args, err)
        assert message in err and err.strip().count("\n") == 0, (args, err)
    assert not out.exists()


def test_help_lists_the_commands():
    res = runner.invoke(app, ["--help"])
    assert "localize-sequence" in res.output and "viz" in res.output
    res = runner.invoke(app, ["viz", "--help"])
    for name in ("coords", "flow", "trajectory"):
        assert name in res.output
    res = runner.invoke(app, ["localize-sequence", "--help"])
    assert res.exit_code == 0 and "--coords-dir" in res.output
