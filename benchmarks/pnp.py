"""Time dgeo's batched LO-RANSAC PnP against its peers on the same 2D-3D correspondences.

Every solver gets the same matches of every scenario and the same inlier threshold
(``--threshold``, 12 px by default, the default of dgeo, poselib and pycolmap):

- ``dgeo batch B``: :func:`dgeo.ransac.pnp_ransac` on all ``B`` queries in one call (CPU float64;
  a CUDA float32 row is added when a GPU is present);
- ``dgeo batch 1``: the same function called once per query;
- ``poselib``: ``poselib.estimate_absolute_pose`` per query (its defaults: at least 1000 and at
  most 100000 iterations, 3x the adaptive count, Cauchy refinement at half the threshold);
- ``pycolmap``: ``estimate_and_refine_absolute_pose`` per query (pixels and principal point
  shifted by +0.5 into COLMAP's convention);
- ``opencv magsac`` / ``opencv sqpnp``: ``cv2.solvePnPRansac`` with ``flags=USAC_MAGSAC`` and with
  ``flags=SOLVEPNP_SQPNP`` (EPnP on minimal sets, SQPnP on the inliers), 10000 iterations at
  most, confidence 0.9999.

Scenarios (``--scenarios``): random problems ``N/outliers/noise`` (a PINHOLE camera of about
640x480 and 450-600 px focal length, points 2-10 m in front, Gaussian pixel noise, outliers =
the 2D point replaced by a uniform random pixel): ``1000/50/1``, ``2000/80/1``, ``200/30/2``;
and ``street``: views of the built-in synthetic street (``make_scene("street")``, ray-cast depth,
a SIMPLE_RADIAL camera with barrel distortion) with 1000 true matches from the depth maps, 1 px
noise and 60 % outliers.

Columns: per-query time and queries/s (per-query loops run on the first ``--peer-queries``
queries, or fewer once ``--budget`` seconds are spent, at least 4, and count each query's best
time of up to ``--repeats`` passes while the budget lasts; dgeo batch rows are the best of
``--repeats`` runs after a warm-up; the minima damp the noise of a shared machine), throughput
relative to poselib, median and 95th-percentile rotation (degrees) and position (cm) errors, and
the success rate: rotation below 1 degree and position below 1 % of the query's median scene
depth; a solver that returns nothing fails. Every row's accuracy is over the first
``--peer-queries`` queries (fewer for a loop whose ``--budget`` ran out), the batched rows too.
torch uses ``--threads`` threads (default 1, like its single-threaded peers).

    python benchmarks/pnp.py [--scenarios 1000/50/1 street] [--batch 256] [--peer-queries 32]
                             [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import torch
from rich.console import Console
from rich.table import Table

from dgeo.eval.metrics import pose_errors
from dgeo.geometry import Camera, Pose
from dgeo.ransac import pnp_ransac

try:
    import poselib
except ImportError:  # optional peer
    poselib = None

WIDTH, HEIGHT = 640, 480
SCENARIOS = ("1000/50/1", "2000/80/1", "200/30/2", "street")


@dataclass
class Problems:
    """One scenario: ``B`` queries of ``N`` matches each, float64 on the CPU."""

    name: str
    camera: Camera  # (B,)
    points2D: torch.Tensor  # (B, N, 2) dgeo pixels
    points3D: torch.Tensor  # (B, N, 3)
    gt: Pose  # (B,)
    depth: torch.Tensor  # (B,) median depth of the true matches, metres


def _add_outliers(uv: torch.Tensor, ratio: float, size, g: torch.Generator) -> torch.Tensor:
    """Replace ``ratio`` of each query's 2D points by uniform random pixels."""
    B, N = uv.shape[:2]
    k = round(ratio * N)
    idx = torch.argsort(torch.rand(B, N, generator=g, dtype=torch.float64), dim=1)[:, :k]
    rnd = torch.rand(B, k, 2, generator=g, dtype=torch.float64) * (size - 1)
    return uv.scatter(1, idx[..., None].expand(-1, -1, 2), rnd)


def random_problems(spec: str, B: int, seed: int = 0) -> Problems:
    """``"N/outlier percent/noise px"`` random problems (see the module docstring)."""
    N, outliers, noise = (float(x) for x in spec.split("/"))
    N = int(N)
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    randn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    f = 450 + 150 * rand(B, 1)
    c = torch.tensor([(WIDTH - 1) / 2, (HEIGHT - 1) / 2], dtype=torch.float64) + 10 * randn(B, 2)
    cam = Camera("PINHOLE", WIDTH, HEIGHT, torch.cat([f, f, c], -1))
    size = torch.tensor([WIDTH, HEIGHT], dtype=torch.float64)
    uv = rand(B, N, 2) * (size - 1)
    depth = 2 + 8 * rand(B, N, 1)
    gt = Pose.from_axis_angle(math.pi * (2 * rand(B, 3) - 1), 3 * randn(B, 3))
    X = gt.inv().transform(cam.unproject(uv) * depth)
    uv = _add_outliers(uv + noise * randn(B, N, 2), outliers / 100, size, g)
    return Problems(spec, cam, uv, X, gt, depth[..., 0].median(-1).values)


def street_problems(B: int, N: int = 1000, outliers: float = 0.6, seed: int = 0) -> Problems:
    """Queries in the synthetic street: true matches from ray-cast depth (see the docstring)."""
    from dgeo.data.synthetic.render import raycast
    from dgeo.data.synthetic.scenes import make_scene
    from dgeo.data.synthetic.trajectories import random_viewpoints

    views = max(1, min(B, 32))
    scene = make_scene("street", seed=seed, texture_size=16)
    poses = random_viewpoints(scene, views, seed=seed)
    w, h = 320, 240
    cam = Camera("SIMPLE_RADIAL", w, h, torch.tensor([260.0, (w - 1) / 2, (h - 1) / 2, -0.05]))
    gb = raycast(scene, cam.to(dtype=scene.origin.dtype), poses.to(dtype=scene.origin.dtype))
    g = torch.Generator().manual_seed(seed)
    uv_all, X_all, gts, depths = [], [], [], []
    grid = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy"), -1)
    grid = grid.reshape(-1, 2).double()
    for b in range(B):
        v = b % views
        ok = gb.valid[v, 0].reshape(-1) & (gb.depth[v, 0].reshape(-1) > 0.5)
        cand = ok.nonzero()[:, 0]
        pick = cand[torch.randperm(cand.numel(), generator=g)[:N]]
        uv_all.append(grid[pick])
        X_all.append(gb.points[v].reshape(3, -1)[:, pick].T.double())
        gts.append(poses[v].double())
        depths.append(gb.depth[v, 0].reshape(-1)[pick].double().median())
    uv = torch.stack(uv_all)
    uv = uv + torch.randn(uv.shape, generator=g, dtype=torch.float64)
    size = torch.tensor([w, h], dtype=torch.float64)
    uv = _add_outliers(uv, outliers, size, g)
    camB = Camera(cam.model, w, h, cam.params.double().expand(B, -1))
    return Problems("street", camB, uv, torch.stack(X_all), Pose.stack(gts), torch.stack(depths))


# ------------------------------------------------------------------------------------- solvers
# A batch solver maps the first n queries to a list of (4, 4) float64 poses (None: failure); a
# per-query solver maps the query index b to one of those.
Solution = torch.Tensor | None


def run_dgeo(p: Problems, n: int, args, device: str = "cpu", dtype=torch.float64) -> list:
    """All ``n`` first queries in one batched call."""
    cam = p.camera[:n].to(device=device, dtype=dtype)
    uv, X = p.points2D[:n].to(device, dtype), p.points3D[:n].to(device, dtype)
    res = pnp_ransac(uv, X, cam, threshold_px=args.threshold, seed=0)
    if device != "cpu":
        torch.cuda.synchronize()
    T = res.pose.matrix().double().cpu()
    return [T[b] if bool(res.success[b]) else None for b in range(n)]


def dgeo_single(p: Problems, args) -> Callable[[int], Solution]:
    """The same function called once per query."""

    def solve(b: int) -> Solution:
        res = pnp_ransac(
            p.points2D[b : b + 1], p.points3D[b : b + 1], p.camera[b : b + 1],
            threshold_px=args.threshold, seed=0,
        )  # fmt: skip
        return res.pose.matrix()[0] if bool(res.success[0]) else None

    return solve


def poselib_single(p: Problems, args) -> Callable[[int], Solution]:
    """poselib with its defaults; any consistent pixel convention works (no shift)."""
    params, uv, X = p.camera.params.numpy(), p.points2D.numpy(), p.points3D.numpy()
    ransac = {"max_reproj_error": args.threshold}
    w, h = int(p.camera.width[0]), int(p.camera.height[0])

    def solve(b: int) -> Solution:
        cam = {"model": p.camera.model, "width": w, "height": h, "params": list(params[b])}
        pose, _ = poselib.estimate_absolute_pose(uv[b], X[b], cam, ransac, {})
        return torch.from_numpy(np.vstack([pose.Rt, [0, 0, 0, 1]]))

    return solve


def pycolmap_single(p: Problems, args) -> Callable[[int], Solution]:
    """COLMAP's corner pixel origin: +0.5 on keypoints and principal points."""
    params, uv, X = p.camera.params.numpy().copy(), p.points2D.numpy() + 0.5, p.points3D.numpy()
    c = 1 if p.camera.model.startswith("SIMPLE") or p.camera.model == "RADIAL" else 2
    params[:, c : c + 2] += 0.5
    opts = {"ransac": {"max_error": args.threshold}}
    w, h = int(p.camera.width[0]), int(p.camera.height[0])
    pycolmap.set_random_seed(0)

    def solve(b: int) -> Solution:
        cam = pycolmap.Camera(model=p.camera.model, width=w, height=h, params=params[b])
        res = pycolmap.estimate_and_refine_absolute_pose(uv[b], X[b], cam, opts, {})
        return None if res is None else torch.from_numpy(res["cam_from_world"].matrix())

    return solve


def opencv_single(p: Problems, args, flags: int) -> Callable[[int], Solution]:
    """``cv2.solvePnPRansac``; OpenCV's pixel convention is dgeo's."""
    K, dist = p.camera.K.numpy(), p.camera.dist.numpy()[:, :5]  # k1 k2 p1 p2 k3
    uv, X = p.points2D.numpy(), p.points3D.numpy()
    cv2.setRNGSeed(0)

    def solve(b: int) -> Solution:
        ok, rvec, tvec, _ = cv2.solvePnPRansac(
            X[b], uv[b], K[b], dist[b], iterationsCount=10000, reprojectionError=args.threshold,
            confidence=0.9999, flags=flags,
        )  # fmt: skip
        if not ok:
            return None
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = cv2.Rodrigues(rvec)[0], tvec[:, 0]
        return torch.from_numpy(T)

    return solve


# ------------------------------------------------------------------------------------- harness
def timed(fn: Callable, repeats: int) -> tuple[float, list]:
    """Best wall-clock time of ``repeats`` runs and the last output."""
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def timed_loop(
    solve: Callable[[int], Solution], L: int, budget: float, repeats: int
) -> tuple[float, list]:
    """Run ``solve`` on queries 0, 1, ... until ``L`` are done or ``budget`` seconds are spent
    (at least 4 queries); then repeat the pass while the budget lasts, up to ``repeats`` passes.
    Returns the sum over queries of each query's best time, and the solutions of the first pass.
    """
    out, best, spent = [], [], 0.0
    for b in range(L):
        t0 = time.perf_counter()
        out.append(solve(b))
        best.append(time.perf_counter() - t0)
        spent += best[-1]
        if spent > budget and b >= 3:
            break
    for _ in range(repeats - 1):
        if spent + sum(best) > 2 * budget:
            break
        for b in range(len(out)):
            t0 = time.perf_counter()
            solve(b)
            dt = time.perf_counter() - t0
            best[b], spent = min(best[b], dt), spent + dt
    return sum(best), out


def accuracy(p: Problems, poses: list) -> dict:
    """Median / p95 errors and success rate of ``poses`` (None = failure) on the first queries."""
    n = len(poses)
    nan = torch.full((4, 4), math.nan, dtype=torch.float64)
    T = torch.stack([nan if x is None else x.double() for x in poses])
    est = Pose(torch.cat([T[:, :3, :3].reshape(n, 9), T[:, :3, 3]], -1))
    e_t, e_R, _ = pose_errors(est, p.gt[:n])
    rot = np.degrees(e_R.numpy())
    pos = e_t.numpy()
    ok = (rot < 1.0) & (pos < 0.01 * p.depth[:n].numpy())
    return dict(
        median_rot_deg=float(np.median(rot)),
        p95_rot_deg=float(np.percentile(rot, 95, method="higher")),
        median_pos_cm=100 * float(np.median(pos)),
        p95_pos_cm=100 * float(np.percentile(pos, 95, method="higher")),
        success=float(ok.mean()),
        queries=n,
    )


def bench_scenario(p: Problems, args) -> list[dict]:
    """Every solver on one scenario; one row each."""
    B, L = len(p.gt), min(len(p.gt), args.peer_queries)
    batch: list[tuple[str, Callable[[], list]]] = [
        (f"dgeo batch {B}", lambda: run_dgeo(p, B, args)),
    ]
    if torch.cuda.is_available():
        cuda = lambda: run_dgeo(p, B, args, "cuda", torch.float32)  # noqa: E731
        batch.append((f"dgeo batch {B} cuda f32", cuda))
    loops: list[tuple[str, Callable[[int], Solution]]] = [("dgeo batch 1", dgeo_single(p, args))]
    if poselib is not None:
        loops.append(("poselib", poselib_single(p, args)))
    loops += [
        ("pycolmap", pycolmap_single(p, args)),
        ("opencv magsac", opencv_single(p, args, cv2.USAC_MAGSAC)),
        ("opencv sqpnp", opencv_single(p, args, cv2.SOLVEPNP_SQPNP)),
    ]
    run_dgeo(p, min(B, 4), args)  # warm-up (allocator, lazy imports, caches)
    dgeo_single(p, args)(0)
    rows = []
    for name, fn in batch:
        seconds, poses = timed(fn, args.repeats)
        rows.append(_row(p, name, seconds, poses, accuracy_queries=L))
    for name, solve in loops:
        seconds, poses = timed_loop(solve, L, args.budget, args.repeats)
        rows.append(_row(p, name, seconds, poses))
    ref = next((r["seconds_per_query"] for r in rows if r["method"] == "poselib"), None)
    for r in rows:
        r["vs_poselib"] = None if ref is None else ref / r["seconds_per_query"]
    return rows


def _row(
    p: Problems, name: str, seconds: float, poses: list, accuracy_queries: int | None = None
) -> dict:
    """Timing over all ``poses``; accuracy over the first ``accuracy_queries`` (the queries the
    per-query loops ran, so that every row's errors are over the same queries)."""
    row = dict(scenario=p.name, method=name, seconds_per_query=seconds / len(poses))
    row.update(accuracy(p, poses[:accuracy_queries]))
    ms = 1e3 * row["seconds_per_query"]
    print(f"  {p.name:>10} {name:<24} {ms:9.3f} ms/query ({len(poses)})", file=sys.stderr)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse options, run every scenario, print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    ap.add_argument("--batch", type=int, default=256, help="queries per scenario")
    ap.add_argument("--peer-queries", type=int, default=32, help="queries the loops run")
    ap.add_argument("--threshold", type=float, default=12.0, help="inlier threshold, pixels")
    ap.add_argument("--repeats", type=int, default=3, help="passes per row (best time counts)")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per per-query loop")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (peers use 1)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.scenarios:
        p = street_problems(args.batch) if spec == "street" else random_problems(spec, args.batch)
        rows += bench_scenario(p, args)
    print_table(rows, args)
    if args.json is not None:
        config = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"config": config, "rows": rows}, indent=2))
    return rows


def print_table(rows: list[dict], args) -> None:
    table = Table(title=f"PnP RANSAC, threshold {args.threshold:g} px, "
                  f"{torch.get_num_threads()} torch thread(s); success = rot < 1° and "
                  "pos < 1 % of scene depth")  # fmt: skip
    for col in ("scenario", "method", "ms/query", "queries/s", "vs poselib", "rot med/p95 °",
                "pos med/p95 cm", "success", "n"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("scenario", "method") else "right")
    for r in rows:
        vs = r["vs_poselib"]
        table.add_row(
            r["scenario"],
            r["method"],
            f"{1e3 * r['seconds_per_query']:.2f}",
            f"{1 / r['seconds_per_query']:.0f}",
            "-" if vs is None else f"{vs:.2f}x",
            f"{r['median_rot_deg']:.3f} / {r['p95_rot_deg']:.3f}",
            f"{r['median_pos_cm']:.2f} / {r['p95_pos_cm']:.2f}",
            f"{100 * r['success']:.1f} %",
            str(r["queries"]),
        )
    Console(width=None if sys.stdout.isatty() else 140).print(table)


if __name__ == "__main__":
    main()
