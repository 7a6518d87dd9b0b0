"""Time dgeo's batched Levenberg-Marquardt on absolute-pose refinement against its peers.

Every solver refines the same random PnP problems (PINHOLE ~640x480 cameras, points 2-10 m in
front, 1 px noise, starts 20 deg / 1 m off) with the same loss, COLMAP's Cauchy(1 px), and its own
convergence tests: ``pycolmap.refine_absolute_pose`` (Ceres), ``poselib.refine_absolute_pose``,
dgeo's ``minimize`` on the whole batch at once, and the same dgeo solver called once per problem.
dgeo's tolerances are set to Ceres' defaults (relative cost decrease 1e-6, gradient 1e-10,
step 1e-8; in float32 dgeo's own defaults) so the accuracy columns compare like with like; a
second dgeo row runs exactly 10 iterations (``unroll``, as in training).

Times are the best of ``--repeats`` runs after a warm-up (the minimum is the least disturbed by
other processes on a shared machine). torch runs on one thread by default, like its peers. The
per-problem loops run on the first ``--loop-max`` problems and are scaled to the batch size; the
accuracy columns of every row are medians over those same problems.

    python benchmarks/lm.py [--sizes 1 64 1024] [--points 200] [--device cuda] [--dtype float32]
                            [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pycolmap
import torch
from rich.console import Console
from rich.table import Table

from dgeo.eval.metrics import pose_errors
from dgeo.geometry import Camera, Pose
from dgeo.optim import Cauchy, LMOptions, ReprojectionResidual, minimize

try:
    import poselib
except ImportError:  # optional peer
    poselib = None

WIDTH, HEIGHT = 640, 480
CERES_LIKE = {  # Ceres' function tolerance; float32 cannot resolve it, so dgeo's default there
    torch.float64: LMOptions(max_iterations=100, cost_tolerance=1e-6),
    torch.float32: LMOptions(max_iterations=100),
}
TEN_STEPS = LMOptions(max_iterations=10, unroll=True, detach=True)


def make_problems(B: int, N: int, seed: int = 0):
    """Random PnP problems in float64 on the CPU: camera, X (B,N,3), uv (B,N,2), GT, start."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    randn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    f = 450 + 150 * rand(B, 2)
    c = torch.tensor([(WIDTH - 1) / 2, (HEIGHT - 1) / 2], dtype=torch.float64) + 10 * randn(B, 2)
    cam = Camera("PINHOLE", WIDTH, HEIGHT, torch.cat([f, c], -1))
    uv = rand(B, N, 2) * torch.tensor([WIDTH - 1.0, HEIGHT - 1.0], dtype=torch.float64)
    gt = Pose.from_axis_angle(math.pi * (2 * rand(B, 3) - 1), 3 * randn(B, 3))
    X = gt.inv().transform(cam.unproject(uv) * (2 + 8 * rand(B, N, 1)))
    axis = torch.nn.functional.normalize(randn(B, 3), dim=-1) * math.radians(20)
    shift = torch.nn.functional.normalize(randn(B, 3), dim=-1)
    return cam, X, uv + randn(B, N, 2), gt, Pose.from_axis_angle(axis, shift) @ gt


def run_dgeo(cam, X, uv, start, opts: LMOptions, sync: Callable[[], None]):
    """dgeo on the whole batch: refined poses (B,) and the mean iteration count."""
    res = minimize(ReprojectionResidual(X, uv, cam), start, kernel=Cauchy(1.0), options=opts)
    sync()
    return res.x, res.iterations.cpu().tolist()


def run_dgeo_loop(cam, X, uv, start, opts: LMOptions, sync: Callable[[], None]):
    """The same dgeo solver called once per problem."""
    out = [run_dgeo(cam[b : b + 1], X[b : b + 1], uv[b : b + 1], start[b : b + 1], opts, sync)
           for b in range(len(X))]  # fmt: skip
    return Pose.cat([o[0] for o in out]), [i for o in out for i in o[1]]


def run_pycolmap(cam, X, uv, start):
    """Corner pixel origin for COLMAP: +0.5 on keypoints and principal points."""
    params, X, uv = cam.params.numpy().copy(), X.numpy(), uv.numpy() + 0.5
    params[:, 2:] += 0.5
    R, t, inliers = start.R.numpy(), start.t.numpy(), np.ones(X.shape[1], dtype=bool)
    out = []
    for b in range(len(X)):
        camera = pycolmap.Camera(model="PINHOLE", width=WIDTH, height=HEIGHT, params=params[b])
        init = pycolmap.Rigid3d(pycolmap.Rotation3d(R[b]), t[b])
        res = pycolmap.refine_absolute_pose(init, uv[b], X[b], inliers, camera)
        out.append(res["cam_from_world"].matrix())
    return Pose.from_matrix(torch.from_numpy(np.stack(out))), []  # no iteration count


def run_poselib(cam, X, uv, start):
    """poselib's LM with the same Cauchy loss; pinhole pixels need no shift."""
    params, X, uv, R, t = (a.numpy() for a in (cam.params, X, uv, start.R, start.t))
    opts = {"loss_type": "CAUCHY", "loss_scale": 1.0}
    out, iters = [], []
    for b in range(len(X)):
        camera = {"model": "PINHOLE", "width": WIDTH, "height": HEIGHT, "params": list(params[b])}
        init = poselib.CameraPose()
        init.R, init.t = R[b], t[b]
        pose, info = poselib.refine_absolute_pose(uv[b], X[b], init, camera, opts)
        out.append(pose.Rt)
        iters.append(info["iterations"])
    return Pose.from_matrix(torch.from_numpy(np.stack(out))), iters


def timed(fn: Callable, repeats: int, warmup: Callable | None = None) -> tuple[float, tuple]:
    """Best wall-clock time of ``repeats`` runs after a warm-up, and the last output."""
    (warmup or fn)()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def bench_size(B: int, args: argparse.Namespace) -> list[dict]:
    """Time every solver on ``B`` problems; one row per solver."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = partial(torch.cuda.synchronize, device) if device.type == "cuda" else (lambda: None)
    cam, X, uv, gt, start = make_problems(B, args.points, seed=B)
    on_dev = (cam.to(device, dtype), X.to(device, dtype), uv.to(device, dtype))
    on_dev = (*on_dev, start.to(device, dtype))
    L = min(B, args.loop_max)  # loops are timed on a prefix and scaled to B
    cpu = (cam, X, uv, start)
    runs = [  # name, solver, its inputs, problems timed
        ("dgeo batched", partial(run_dgeo, opts=CERES_LIKE[dtype], sync=sync), on_dev, B),
        ("dgeo batched, 10 it", partial(run_dgeo, opts=TEN_STEPS, sync=sync), on_dev, B),
        ("dgeo loop", partial(run_dgeo_loop, opts=CERES_LIKE[dtype], sync=sync), on_dev, L),
        ("pycolmap loop", run_pycolmap, cpu, L),
    ]
    if poselib is not None:
        runs.append(("poselib loop", run_poselib, cpu, L))
    rows = []
    for name, solver, inputs, n in runs:
        loop = name.endswith("loop")  # warm up on one problem; time a loop once if it is long
        seconds, (x, iters) = timed(
            partial(solver, *(a[:n] for a in inputs)),
            args.repeats if not loop or n <= 16 else 1,
            partial(solver, *(a[:1] for a in inputs)) if loop else None,
        )
        e_t, e_R, _ = pose_errors(x[:L].to("cpu", torch.float64), gt[:L])  # same problems
        row = dict(problems=B, method=name, seconds=seconds * B / n, timed_on=n)
        row["mean_iterations"] = statistics.mean(iters) if iters else None
        row["max_iterations"] = max(iters) if iters else None
        row["median_rot_deg"] = math.degrees(float(e_R.median()))
        row["median_pos_m"] = float(e_t.median())
        rows.append(row)
    ref = next(r["seconds"] for r in rows if r["method"] == "pycolmap loop")
    for r in rows:
        r["vs_pycolmap"] = ref / r["seconds"]
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse options, run every batch size, print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024])
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (peers use 1)")
    ap.add_argument("--loop-max", type=int, default=128, help="problems timed in the loops")
    ap.add_argument("--json", type=Path, default=None, help="write the rows to this file")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = [row for B in args.sizes for row in bench_size(B, args)]
    print_table(rows, args)
    if args.json is not None:
        config = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"config": config, "rows": rows}, indent=2))
    return rows


def print_table(rows: list[dict], args) -> None:
    table = Table(title=f"Absolute-pose LM: {args.points} points/problem, Cauchy(1 px), "
                  f"{args.device} {args.dtype}, {torch.get_num_threads()} torch threads; "
                  "errors are medians vs GT")  # fmt: skip
    for col in ("B", "method", "total ms", "µs/problem", "vs pycolmap", "iters mean/max",
                "rot err °", "pos err mm"):  # fmt: skip
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        its = r["mean_iterations"]
        scaled = "" if r["timed_on"] == r["problems"] else f" (x{r['problems'] // r['timed_on']})"
        table.add_row(
            str(r["problems"]),
            r["method"] + scaled,
            f"{1e3 * r['seconds']:.1f}",
            f"{1e6 * r['seconds'] / r['problems']:.0f}",
            f"{r['vs_pycolmap']:.2f}x",
            "-" if its is None else f"{its:.1f} / {r['max_iterations']}",
            f"{r['median_rot_deg']:.4f}",
            f"{1e3 * r['median_pos_m']:.2f}",
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)


if __name__ == "__main__":
    main()
