"""Tests of the run plumbing: crash-safe results, resume, failures, torchrun sharding."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from enum import IntEnum
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from dgeo.errors import DataFileNotFoundError, InputError, ParseError
from dgeo.geometry import Pose
from dgeo.io.formats import read_hloc_results, write_hloc_results
from dgeo.pipeline.runs import (
    DistributedContext,
    ResultsWriter,
    completed_queries,
    init_distributed,
    log_path_for,
    merge_parts,
    part_path,
    pending,
    read_log,
    reason_key,
    run_queries,
    shard,
    to_jsonable,
)

NAMES = [f"seq{i % 3}/img{i:03d}.jpg" for i in range(11)]


def fake_pose(name: str) -> Pose:
    """A pose that depends only on ``name``."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    x = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return Pose.from_axis_angle(x[:3], 10 * x[3:])


def fake_solve(batch: list[str], calls: list[str] | None = None) -> list[tuple[Pose, dict]]:
    """Deterministic solver; a name containing ``bad`` raises, ``weak`` fails softly."""
    if calls is not None:
        calls.extend(batch)
    for name in batch:
        if "bad" in name:
            raise ValueError(f"cannot read {name}")
    out = []
    for name in batch:
        ok = "weak" not in name
        record = {
            "success": ok,
            "reason": "ok" if ok else "too few inliers",
            "num_matches": torch.tensor(len(name)),
            "timings": {"solve": 0.25},
            "retrieved": [Path("db") / name],
        }
        out.append((fake_pose(name), record))
    return out


def reference_file(tmp_path: Path, names: list[str]) -> str:
    """The results an uninterrupted single-process run writes."""
    ref = tmp_path / "reference.txt"
    run_queries(names, fake_solve, ref, batch_size=3, progress=False)
    return ref.read_text()


# ---------------------------------------------------------------------------------- records
class Code(IntEnum):
    OK = 0
    DEGENERATE = 3


def test_to_jsonable_converts_nested_values():
    record = {
        "t": torch.tensor([1.0, float("nan")]),
        "n": torch.tensor(3),
        "path": Path("a/b.jpg"),
        "code": Code.DEGENERATE,
        "nested": [{"x": np.float32(0.5), "y": (1, np.int64(2))}, {Code.OK, "z"} - {"z"}],
        "pose": Pose.identity(),
        "inf": float("inf"),
        3: None,
    }
    out = to_jsonable(record)
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert out["t"] == [1.0, None] and out["n"] == 3 and out["path"] == "a/b.jpg"
    assert out["code"] == "DEGENERATE" and out["nested"] == [{"x": 0.5, "y": [1, 2]}, ["OK"]]
    assert out["pose"] == {"q_wxyz": [1.0, 0.0, 0.0, 0.0], "t": [0.0, 0.0, 0.0]}
    assert out["inf"] is None and out["3"] is None
    with pytest.raises(InputError, match=r"record\['bad'\]\[0\] is a object"):
        to_jsonable({"bad": [object()]})


def test_reason_key_and_pending():
    assert reason_key("error: ValueError: cannot read x: y") == "error: ValueError"
    assert reason_key("too few inliers") == "too few inliers"
    assert pending(["c", "a", "b", "d"], {"a", "d"}) == ["c", "b"]


# ---------------------------------------------------------------------------------- writer
def test_writer_keeps_valid_files_after_every_add(tmp_path):
    path = tmp_path / "out" / "results.txt"
    writer = ResultsWriter(path)
    assert path.read_text() == "" and log_path_for(path).read_text() == ""
    for i, name in enumerate(NAMES[:4]):
        pose, record = fake_solve([name])[0]
        writer.add(name, pose, record)
        names, poses = read_hloc_results(path)  # mid-run, without close: all so far on disk
        assert names == NAMES[: i + 1]
        torch.testing.assert_close(poses[i].data, pose.data)
        log = read_log(log_path_for(path))
        assert [r["name"] for r in log] == NAMES[: i + 1]
        assert log[-1]["num_matches"] == len(name) and log[-1]["retrieved"] == [f"db/{name}"]
    # the writer formats lines exactly as write_hloc_results does
    expected = tmp_path / "expected.txt"
    write_hloc_results(expected, NAMES[:4], Pose.stack([fake_pose(n) for n in NAMES[:4]]))
    assert path.read_text() == expected.read_text()
    with pytest.raises(InputError, match="already"):
        writer.add(NAMES[0], fake_pose(NAMES[0]), {})
    with pytest.raises(InputError, match="whitespace"):
        writer.add("a b", fake_pose("x"), {})
    with pytest.raises(InputError, match="NaN"):
        writer.add("nan", Pose(torch.full((12,), float("nan"))), {})
    writer.close()
    writer.close()
    assert len(read_log(log_path_for(path))) == 4


def test_writer_flush_every_and_fresh_start(tmp_path):
    path = tmp_path / "results.txt"
    write_hloc_results(path, ["old"], Pose.identity((1,)))
    log_path_for(path).write_text('{"name": "old"}\n')
    with ResultsWriter(path, flush_every=3) as writer:  # not resuming: both files start empty
        assert path.read_text() == "" and read_log(log_path_for(path)) == []
        for name in NAMES[:4]:
            writer.add(name, *fake_solve([name])[0])
        assert read_hloc_results(path)[0] == NAMES[:3]  # rewritten after 3, not yet after 4
        assert len(read_log(log_path_for(path))) == 4  # the log has every query
    assert read_hloc_results(path)[0] == NAMES[:4]


def test_resume_ignores_a_cut_short_last_line(tmp_path):
    path = tmp_path / "results.txt"
    write_hloc_results(path, NAMES[:3], Pose.stack([fake_pose(n) for n in NAMES[:3]]))
    text = path.read_text()
    path.write_text(text + text.splitlines()[0].replace(NAMES[0], NAMES[3])[:25])
    with pytest.warns(UserWarning, match="line 4: ignoring the cut-short"):
        done = completed_queries(path)
    assert list(done) == NAMES[:3]
    torch.testing.assert_close(done[NAMES[1]].data, fake_pose(NAMES[1]).data)
    # an unterminated last line may hold truncated digits that still parse: dropped too
    path.write_text(text[:-3])
    with pytest.warns(UserWarning):
        assert list(completed_queries(path)) == NAMES[:2]
    # a complete last line followed by blanks is kept
    path.write_text(text + "\n  ")
    assert list(completed_queries(path)) == NAMES[:3]
    # a malformed line before the last is an error
    path.write_text("garbage\n" + text)
    with pytest.raises(ParseError, match="line 1"):
        completed_queries(path)
    assert completed_queries(tmp_path / "missing.txt") == {}
    # the log: a cut-short last record is dropped with a warning, an earlier one raises
    log = tmp_path / "log.jsonl"
    log.write_text('{"name": "a"}\n{"name": "b", "x": [1, 2')
    with pytest.warns(UserWarning):
        assert read_log(log) == [{"name": "a"}]
    log.write_text('{"name": "a"\n{"name": "b"}\n')
    with pytest.raises(ParseError, match="line 1"):
        read_log(log)


def test_writer_resume_keeps_earlier_queries_and_their_records(tmp_path):
    path = tmp_path / "results.txt"
    with ResultsWriter(path, flush_every=10) as writer:
        for name in NAMES[:3]:
            writer.add(name, *fake_solve([name])[0])
    # a record logged but not in the results (crash before the rewrite) is dropped on resume
    with open(log_path_for(path), "a") as f:
        f.write(json.dumps({"name": NAMES[5]}) + "\n")
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    with ResultsWriter(path, resume=True) as writer:
        assert writer.names == NAMES[:2] and NAMES[1] in writer and len(writer) == 2
        writer.add(NAMES[7], *fake_solve([NAMES[7]])[0])
    assert read_hloc_results(path)[0] == [*NAMES[:2], NAMES[7]]
    assert [r["name"] for r in read_log(log_path_for(path))] == [*NAMES[:2], NAMES[7]]


# ---------------------------------------------------------------------------------- driver
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    names = NAMES[:5]
    expected = reference_file(tmp_path, names)
    path = tmp_path / "results.txt"
    calls: list[str] = []

    def crashing(batch):
        if len(calls) >= 3:
            raise KeyboardInterrupt  # Ctrl-C after 3 queries
        return fake_solve(batch, calls)

    with pytest.raises(KeyboardInterrupt):
        run_queries(names, crashing, path, batch_size=1, progress=False)
    assert read_hloc_results(path)[0] == names[:3]
    calls.clear()
    summary = run_queries(
        names, lambda b: fake_solve(b, calls), path, batch_size=2, resume=True, progress=False
    )
    assert calls == names[3:]  # the first 3 were not solved again
    assert path.read_text() == expected
    assert [r["name"] for r in read_log(log_path_for(path))] == names
    assert (summary.total, summary.done_before, summary.solved, summary.failed) == (5, 3, 2, 0)
    # resuming a finished run does nothing
    calls.clear()
    again = run_queries(names, lambda b: fake_solve(b, calls), path, resume=True, progress=False)
    assert calls == [] and again.processed == 0 and path.read_text() == expected


def test_a_failing_query_does_not_abort_its_batch(tmp_path):
    names = ["a.jpg", "bad.jpg", "weak.jpg", "b.jpg", "c.jpg"]
    path = tmp_path / "results.txt"
    fallback = Pose.from_axis_angle(torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    seen = []
    summary = run_queries(
        names,
        lambda b: fake_solve(b, seen),
        path,
        batch_size=3,
        fallback_pose=fallback,
        progress=lambda stage, done, total: seen.append((done, total)),
    )
    got, poses = read_hloc_results(path)
    assert got == names  # every query has a line, failed ones their fallback pose
    torch.testing.assert_close(poses[1].data, fallback.data.double())
    torch.testing.assert_close(poses[0].data, fake_pose("a.jpg").data)
    log = {r["name"]: r for r in read_log(log_path_for(path))}
    assert log["bad.jpg"]["success"] is False
    assert log["bad.jpg"]["reason"] == "error: ValueError: cannot read bad.jpg"
    assert "Traceback" in log["bad.jpg"]["traceback"]
    assert log["weak.jpg"]["reason"] == "too few inliers" and log["a.jpg"]["success"] is True
    assert (summary.solved, summary.failed) == (3, 2)
    assert summary.reasons == {"ok": 3, "too few inliers": 1, "error: ValueError": 1}
    assert (0, 5) in seen and (5, 5) in seen


def test_a_malformed_solver_output_is_a_failed_query(tmp_path):
    def solve(batch):
        return [(fake_pose(n), {"x": object()} if n == "b" else {}) for n in batch]

    summary = run_queries(["a", "b", "c"], solve, tmp_path / "r.txt", progress=False)
    log = read_log(log_path_for(tmp_path / "r.txt"))
    assert log[1]["reason"].startswith("error: InputError: record['x'] is a object")
    assert (summary.solved, summary.failed) == (2, 1)
    with pytest.raises(InputError, match="twice"):
        run_queries(["a", "a"], solve, tmp_path / "r.txt", progress=False)
    with pytest.raises(InputError, match="whitespace"):
        run_queries(["a b"], solve, tmp_path / "r.txt", progress=False)


def test_merge_parts_orders_queries_and_removes_parts(tmp_path):
    path = tmp_path / "results.txt"
    ctx = [DistributedContext(rank=r, world_size=2) for r in range(2)]
    for c in ctx:
        with ResultsWriter(part_path(path, c.rank)) as writer:
            for name in shard(NAMES, c):
                writer.add(name, *fake_solve([name])[0])
    assert part_path(path, 1).name == "results.txt.part1"
    merge_parts(path, NAMES, 2)
    assert path.read_text() == reference_file(tmp_path, NAMES)
    assert [r["name"] for r in read_log(log_path_for(path))] == NAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "reference.txt",
        "reference.txt.log.jsonl",
        "results.txt",
        "results.txt.log.jsonl",
    ]
    with pytest.raises(DataFileNotFoundError, match="rank 0 of 1"):
        merge_parts(path, NAMES, 1)


def test_single_process_resume_merges_parts_left_by_torchrun(tmp_path):
    path = tmp_path / "results.txt"
    with ResultsWriter(part_path(path, 1)) as writer:  # a torchrun run died after 2 queries
        for name in NAMES[1:5:2]:
            writer.add(name, *fake_solve([name])[0])
    calls: list[str] = []
    summary = run_queries(NAMES, lambda b: fake_solve(b, calls), path, resume=True, progress=True)
    assert calls == [n for n in NAMES if n not in NAMES[1:5:2]]
    assert summary.done_before == 2 and not part_path(path, 1).exists()
    assert path.read_text() == reference_file(tmp_path, NAMES)


def test_ranks_that_disagree_on_the_work_stop(tmp_path, monkeypatch):
    import dgeo.pipeline.runs as runs

    monkeypatch.setattr(runs, "gather_objects", lambda obj, ctx: [obj, "another digest"])
    with pytest.raises(InputError, match="ranks disagree"):
        run_queries(NAMES, fake_solve, tmp_path / "r.txt", ctx=DistributedContext(0, 2))
    assert not list(tmp_path.iterdir())  # nothing written


def test_init_distributed_without_torchrun_is_one_process():
    ctx = init_distributed(env={})
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    assert shard(range(5), DistributedContext(rank=1, world_size=2)) == [1, 3]
    with pytest.raises(InputError, match="RANK is not set"):
        init_distributed(env={"WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="MASTER_ADDR"):
        init_distributed(env={"WORLD_SIZE": "2", "RANK": "1"})
    with pytest.raises(InputError, match="not an integer"):
        init_distributed(env={"WORLD_SIZE": "two"})


# ---------------------------------------------------------------------------------- torchrun
SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_pipeline_runs import NAMES, fake_solve
from dgeo.pipeline.runs import finalize, init_distributed, run_queries

ctx = init_distributed(backend="gloo", timeout_s=60)
for out, resume in zip(sys.argv[1:], (False, True)):
    calls = []
    summary = run_queries(
        NAMES, lambda b: fake_solve(b, calls), out, batch_size=2, resume=resume, ctx=ctx,
        progress=False,
    )
    with open(f"{{out}}.calls{{ctx.rank}}", "w") as f:
        json.dump([calls, [summary.done_before, summary.solved, summary.failed]], f)
finalize(ctx)
"""


def torchrun(script: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 script args``, killed after 120 s."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [*cmd, str(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun did not finish within 120 s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def write_part(path: Path, rank: int, names: list[str]) -> None:
    with ResultsWriter(part_path(path, rank)) as writer:
        for name in names:
            writer.add(name, *fake_solve([name])[0])


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="no torch.distributed/gloo"
)
def test_torchrun_two_ranks_equal_one_process(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    expected = reference_file(tmp_path, NAMES)
    expected_log = log_path_for(tmp_path / "reference.txt").read_text()
    shards = [shard(NAMES, DistributedContext(r, 2)) for r in range(2)]

    # a fresh run replaces an old results file and ignores parts of an earlier run
    fresh = tmp_path / "fresh" / "results.txt"
    write_part(fresh, 3, ["stale.jpg"])
    write_hloc_results(fresh, ["old.jpg"], Pose.identity((1,)))
    # a resumed run keeps the merged queries, and the parts of an interrupted 3-rank run
    resumed = tmp_path / "resumed" / "results.txt"
    run_queries(NAMES[:2], fake_solve, resumed, progress=False)
    write_part(resumed, 0, [NAMES[3], NAMES[6]])
    write_part(resumed, 2, [NAMES[8]])
    done = {*NAMES[:2], NAMES[3], NAMES[6], NAMES[8]}

    run = torchrun(script, str(fresh), str(resumed))
    assert run.returncode == 0, run.stdout
    for out in (fresh, resumed):
        assert out.read_text() == expected
        assert log_path_for(out).read_text() == expected_log
        assert sorted(p.name for p in out.parent.iterdir() if ".part" in p.name) == []
    calls = [json.loads(Path(f"{fresh}.calls{r}").read_text()) for r in range(2)]
    assert [c[0] for c in calls] == shards  # round-robin shards
    assert calls[0][1] == calls[1][1] == [0, len(NAMES), 0]  # summaries of all ranks
    calls = [json.loads(Path(f"{resumed}.calls{r}").read_text()) for r in range(2)]
    todo = [n for n in NAMES if n not in done]
    assert [c[0] for c in calls] == [todo[0::2], todo[1::2]]  # only the rest, sharded
    assert calls[0][1] == calls[1][1] == [len(done), len(todo), 0]  # summaries of all ranks
