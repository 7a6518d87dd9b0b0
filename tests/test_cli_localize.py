"""End-to-end tests of ``dgeo localize`` on a small rendered dataset (``localize_dataset``).

One uninterrupted single-process run (``baseline``) is the reference the other runs are compared
with: a resumed run, a two-process ``torchrun`` run, the in-memory API, and runs with bad queries.
All runs share one reference cache, so only the first extracts the references.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pycolmap
import pytest
import torch
import torch.distributed as dist
from typer.testing import CliRunner

import dgeo.cli.commands  # noqa: F401  (registers the commands)
from dgeo.cli.main import app, main
from dgeo.geometry import Pose
from dgeo.io.colmap import load_reference_map
from dgeo.io.formats import read_hloc_results, read_queries_with_intrinsics
from dgeo.io.images import read_image
from dgeo.pipeline.localizer import Localizer, LocalizerConfig
from dgeo.pipeline.runs import read_log

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
#: The options of every run (the images are 320x240: the work runs at full size).
OPTIONS = ["--max-size", "320", "--device", "cpu", "--top-k", "10"]
STAGES = {"read", "extract", "retrieve", "match", "ransac"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the queries are small, and the torchrun test runs two processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(localize_dataset, tmp_path_factory):
    """Paths of the dataset and of the module's shared reference cache."""
    d = localize_dataset
    return {
        "model": d / "sfm",
        "images": d / "images",
        "queries": d / "queries_with_intrinsics.txt",
        "gt": d / "queries_gt.txt",
        "cache": tmp_path_factory.mktemp("localize_cache"),
    }


def localize(data, queries: Path, output: Path, *extra: str):
    """Run ``dgeo localize`` in this process (CliRunner)."""
    args = [str(data["model"]), str(data["images"]), str(queries), "--output", str(output)]
    args += [*OPTIONS, "--cache-dir", str(data["cache"]), *extra]
    return runner.invoke(app, ["localize", *args])


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory):
    """One uninterrupted run over every query: ``(results path, CLI output)``."""
    out = tmp_path_factory.mktemp("baseline") / "results.txt"
    res = localize(data, data["queries"], out)
    assert res.exit_code == 0, res.output
    return out, res.output


def poses_of(path: Path) -> dict[str, torch.Tensor]:
    names, poses = read_hloc_results(path)
    return {n: poses.data[i] for i, n in enumerate(names)}


def assert_same_poses(path: Path, expected: Path, atol: float) -> None:
    got, want = poses_of(path), poses_of(expected)
    assert list(got) == list(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=0, msg=name)


def write_query_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_localize_reaches_full_recall(data, baseline, tmp_path):
    out, output = baseline
    names, _ = read_queries_with_intrinsics(data["queries"])
    # the results parse back, in the query order
    got, poses = read_hloc_results(out)
    assert got == names and bool(torch.isfinite(poses.data).all())
    # one log record per query, with its stage timings, inliers and references
    log = read_log(f"{out}.log.jsonl")
    assert [r["name"] for r in log] == names
    for r in log:
        assert r["success"] and r["reason"] == "ok" and r["num_inliers"] >= 12
        assert STAGES <= set(r["timings"]) and all(v >= 0 for v in r["timings"].values())
        assert r["reference"] in r["retrieved"] and len(r["retrieved"]) == 10
    assert "localized" in output and "median extract" in output
    assert len(list(data["cache"].glob("references-*.pt"))) == 1
    # every overcast query within (0.25 m, 2 deg)
    report = tmp_path / "eval.json"
    res = runner.invoke(
        app, ["evaluate", str(out), str(data["gt"]), "-t", "0.25:2", "--json", str(report)]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(report.read_text())["summary"]["all"]
    assert summary["num_queries"] == len(names) and summary["recall"] == [1.0]


def test_resume_finishes_an_interrupted_run(data, baseline, tmp_path, monkeypatch):
    lines = data["queries"].read_text().splitlines()
    half = write_query_lines(tmp_path / "half.txt", lines[: len(lines) // 2])
    out = tmp_path / "results.txt"
    assert localize(data, half, out).exit_code == 0  # "interrupted" after the first half
    first = {r["name"]: r for r in read_log(f"{out}.log.jsonl")}

    seen: list[str] = []
    original = Localizer.localize_many

    def spy(self, names, *args, **kwargs):
        seen.extend(names)
        return original(self, names, *args, **kwargs)

    monkeypatch.setattr(Localizer, "localize_many", spy)
    res = localize(data, data["queries"], out, "--resume")
    assert res.exit_code == 0, res.output
    names, _ = read_queries_with_intrinsics(data["queries"])
    assert seen == names[len(first) :]  # the first half is not recomputed
    assert "already done" in res.output
    assert_same_poses(out, baseline[0], atol=1e-9)
    log = {r["name"]: r for r in read_log(f"{out}.log.jsonl")}
    assert list(log) == names and all(log[n] == first[n] for n in first)


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="no gloo backend in this torch"
)
def test_torchrun_two_processes_match_one(data, baseline, tmp_path):
    out = tmp_path / "results.txt"
    cache = tmp_path / "cache"  # cold: rank 0 builds it while rank 1 waits, then loads it
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "dgeo", "localize", str(data["model"]), str(data["images"])]
    cmd += [str(data["queries"]), "--output", str(out), *OPTIONS, "--cache-dir", str(cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        pytest.fail(f"torchrun did not finish in 300 s:\n{proc.communicate()[0][-3000:]}")
    assert proc.returncode == 0, output[-5000:]
    assert output.count("dgeo localize:") == 1, output  # only rank 0 prints the summary
    assert "x 2 ranks" in output and "reference index (built)" in output, output
    # the same poses as one process with other batches (every stage is per query)
    assert_same_poses(out, baseline[0], atol=1e-6)
    names, _ = read_queries_with_intrinsics(data["queries"])
    assert [r["name"] for r in read_log(f"{out}.log.jsonl")] == names
    assert not list(tmp_path.glob("results.txt.part*"))  # merged and removed
    assert len(list(cache.glob("references-*.pt"))) == 1


def test_in_memory_api_matches_the_cli(data, baseline):
    names, cameras = read_queries_with_intrinsics(data["queries"])
    config = LocalizerConfig(max_size=320, top_k=10)
    ref = load_reference_map(data["model"])
    localizer = Localizer(ref, data["images"], config, device="cpu", cache_dir=data["cache"])
    assert localizer.from_cache
    i = 1
    result = localizer.localize(read_image(data["images"] / names[i]), cameras[i], name=names[i])
    assert result.success
    # the pose as the results file holds it (R through a unit quaternion: the localizer's R is
    # orthonormal to float32 precision only), alone here and in a batch of six in the CLI
    as_written = Pose.from_quat_t(result.pose.quat(), result.pose.t)
    _, written = read_hloc_results(baseline[0])
    torch.testing.assert_close(as_written.data, written.data[i], atol=1e-9, rtol=0)


def test_bad_queries_fail_alone(data, baseline, tmp_path):
    lines = data["queries"].read_text().splitlines()
    good, other = lines[0].split(), lines[1].split()
    missing = ["queries/overcast-reference/missing.png", *good[1:]]
    # the image is 320x240; these intrinsics claim 640x480
    wrong = [other[0], other[1], "640", "480", *(str(2 * float(v)) for v in other[4:])]
    queries = write_query_lines(
        tmp_path / "queries.txt", [" ".join(f) for f in (good, missing, wrong)]
    )
    out = tmp_path / "results.txt"
    res = localize(data, queries, out, "--batch-size", "3")
    assert res.exit_code == 1, res.output
    log = {r["name"]: r for r in read_log(f"{out}.log.jsonl")}
    assert log[good[0]]["success"]
    assert not log[missing[0]]["success"]
    assert log[missing[0]]["reason"].startswith("error: DataFileNotFoundError")
    assert "missing.png does not exist" in log[missing[0]]["reason"]
    assert not log[wrong[0]]["success"]
    assert "is 320x240 but its intrinsics say 640x480" in log[wrong[0]]["reason"]
    assert f"failed: {missing[0]}: error: DataFileNotFoundError" in res.output
    # the good query is unaffected by its failing batch mates
    assert_same_poses_subset(out, baseline[0], [good[0]])


def assert_same_poses_subset(path: Path, expected: Path, names: list[str]) -> None:
    got, want = poses_of(path), poses_of(expected)
    for name in names:
        torch.testing.assert_close(got[name], want[name], atol=1e-9, rtol=0, msg=name)


def run_main(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    """Run the console entry point; return its exit code and stderr."""
    monkeypatch.setattr(sys, "argv", ["dgeo", "localize", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def test_bad_invocation_is_one_line_and_exit_2(data, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "results.txt")
    model, images, queries = str(data["model"]), str(data["images"]), str(data["queries"])
    empty = tmp_path / "empty.txt"
    empty.write_text("# no queries\n")
    no_points = tmp_path / "no_points"
    rec = pycolmap.Reconstruction(model)
    for point_id in list(rec.point3D_ids()):
        rec.delete_point3D(point_id)
    no_points.mkdir()
    rec.write(str(no_points))
    cases = [
        ([model, images, str(empty)], "lists no query"),
        ([images, images, queries], f"{images} holds no COLMAP model"),
        ([str(no_points), images, queries], "0 3D points"),
        ([model, str(tmp_path), queries], "none of the 6 queries"),
        ([model, images, queries, "--features", "moon"], "features must be one of"),
    ]
    for args, message in cases:
        code, err = run_main(monkeypatch, capsys, [*args, "--output", out, "--device", "cpu"])
        assert code == 2, err
        assert message in err and err.strip().count("\n") == 0, err
    assert not Path(out).exists()
