"""Feature-metric pose refinement on the built-in synthetic world: how far, how often, how fast.

World: a street (``make_scene("street")``), ``--queries`` reference views spread along it
(``random_viewpoints``, rendered under ``overcast-reference``) and one query near each reference
(``nearby_viewpoints``: up to 1 m and 10 degrees away), rendered under every ``--conditions``
entry (``overcast-reference`` is the same condition with other sensor noise; others change the
light or the season). Each query gets ``--points`` 3D points: reference pixels on a jittered grid
that the query sees too (depth-tested with ``correspondences``), lifted with the reference's exact
depth. The reference descriptors are the reference image's features sampled at those pixels (and
its confidence, for extractors with one).

Starts (``--starts``): the ground truth perturbed by ``2/0.2``, ``5/0.5`` and ``10/1`` (degrees
about a random axis / metres along a random direction of the camera centre, seeded), and
``ransac8``: :func:`dgeo.ransac.pnp_ransac` (12 px) on the true matches with the query pixels
snapped to the centres of an 8-px grid, the quantisation of S2DHM's hypercolumn matches.

Methods: ``dense-sift`` (:class:`dgeo.models.DenseSIFT`, strides 1, 4, 16), ``unet-random``
(:class:`dgeo.models.UNetPyramid` with seed 0 and no training), ``photometric`` (the RGB image
pyramid, :class:`dgeo.models.ImagePyramid`, strides 1, 2, 4: what
:func:`dgeo.pnp.refine_photometric` runs), and trained models given by ``--unet-weights`` (a
``dgeo.models.save`` file) or ``--vgg-weights`` (a VGG-16 checkpoint; S2DHM hypercolumns). Every
method refines the same starts with :func:`dgeo.pnp.refine_featuremetric` (PixLoc's Barron
kernel at the extractor's ``kernel_scale``: 0.1, PixLoc's, for learned features and images, 0.3
for dense SIFT; 100 LM iterations per level, coarse to fine).

Columns: success (rotation < 0.5 degrees and camera position < 5 cm), median rotation/position
error at the start and at the end, and their ratio (start / end; a ratio of 3 is a 3x cut),
median LM iterations (summed over levels), and refinement time per query at batch 1 (one query
per call, over ``--single`` queries, best of 2) and at batch ``--queries`` (one call, best of 2).
Feature extraction is timed apart (``extract ms``: per image, batched). Single-threaded torch by
default (``--threads``).

    python benchmarks/featuremetric.py [--queries 32] [--size 320x240] [--points 256]
        [--conditions overcast-reference night] [--methods dense-sift unet-random photometric]
        [--unet-weights PATH] [--vgg-weights PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dgeo.data.synthetic.correspondences import correspondences
from dgeo.data.synthetic.scenes import make_scene
from dgeo.data.synthetic.trajectories import nearby_viewpoints, random_viewpoints
from dgeo.data.synthetic.views import render_views
from dgeo.eval.metrics import pose_errors
from dgeo.geometry import Camera, FeaturePyramid, Pose
from dgeo.models import DenseExtractor, DenseSIFT, ImagePyramid, UNetPyramid, VGGHypercolumn, load
from dgeo.pnp import refine_featuremetric
from dgeo.ransac import pnp_ransac

STARTS = ("2/0.2", "5/0.5", "10/1", "ransac8")
METHODS = ("dense-sift", "unet-random", "photometric")
SUCCESS_DEG, SUCCESS_M = 0.5, 0.05


@dataclass
class World:
    """References and queries of one condition; everything float32 except the poses."""

    camera: Camera  # ()
    ref_rgb: torch.Tensor  # (B, 3, H, W)
    query_rgb: dict[str, torch.Tensor]  # condition -> (B, 3, H, W)
    uv_ref: torch.Tensor  # (B, N, 2) reference pixels of the points
    uv_query: torch.Tensor  # (B, N, 2) their true query pixels
    points: torch.Tensor  # (B, N, 3) world points
    mask: torch.Tensor  # (B, N) real points (padding False)
    gt: Pose  # (B,) query cam_from_world, float64


def make_world(args) -> World:
    """Render the references and queries and pick the points (see the module docstring)."""
    W, H = args.width, args.height
    f = 0.8 * W
    camera = Camera("PINHOLE", W, H, [f, f, (W - 1) / 2, (H - 1) / 2])
    scene = make_scene("street", seed=args.seed)
    B = args.queries
    refs = random_viewpoints(scene, B, seed=args.seed)
    queries = Pose.cat(
        [
            nearby_viewpoints(scene, refs[b : b + 1], 1, seed=args.seed + b, max_shift=1.0,
                              max_yaw_deg=10.0)
            for b in range(B)
        ]
    )  # fmt: skip
    ref_views = render_views(scene, camera, refs, "overcast-reference", seeds=range(B))
    query_rgb, depth_q = {}, None
    for i, cond in enumerate(args.conditions):
        v = render_views(
            scene, camera, queries, cond, seeds=range(1000 * (i + 1), 1000 * (i + 1) + B)
        )
        query_rgb[cond] = v.rgb
        depth_q = v.depth
    uv_q, visible = correspondences(ref_views.depth, camera, refs, depth_q, camera, queries)
    # a jittered grid of candidate reference pixels, the visible ones in random order
    g = torch.Generator().manual_seed(args.seed)
    step = max(2, int(math.sqrt(H * W / (4 * args.points))))
    ys, xs = torch.meshgrid(
        torch.arange(step // 2, H - 2, step), torch.arange(step // 2, W - 2, step), indexing="ij"
    )
    cand = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # (M, 2) integer pixels
    N = args.points
    uv_ref = torch.zeros(B, N, 2)
    uv_query = torch.zeros(B, N, 2)
    points = torch.zeros(B, N, 3)
    mask = torch.zeros(B, N, dtype=torch.bool)
    for b in range(B):
        ok = visible[b, cand[:, 1], cand[:, 0]]
        sel = cand[ok][torch.randperm(int(ok.sum()), generator=g)[:N]]
        n = sel.shape[0]
        uv_ref[b, :n] = sel.float()
        uv_query[b, :n] = uv_q[b, sel[:, 1], sel[:, 0]].float()
        points[b, :n] = ref_views.points[b, :, sel[:, 1], sel[:, 0]].T.float()
        mask[b, :n] = True
    return World(camera, ref_views.rgb, query_rgb, uv_ref, uv_query, points, mask, queries.double())


def perturb(gt: Pose, deg: float, metres: float, seed: int) -> Pose:
    """``gt`` rotated by ``deg`` about a random axis (about the camera centre) and its centre moved
    by ``metres`` in a random direction."""
    g = torch.Generator().manual_seed(seed)
    B = gt.shape[0]
    axis = torch.nn.functional.normalize(
        torch.randn(B, 3, generator=g, dtype=torch.float64), dim=-1
    )
    move = torch.nn.functional.normalize(
        torch.randn(B, 3, generator=g, dtype=torch.float64), dim=-1
    )
    dR = Pose.from_axis_angle(axis * math.radians(deg), torch.zeros(B, 3, dtype=torch.float64)).R
    R = dR @ gt.R
    c = gt.center() + metres * move
    return Pose.from_Rt(R, -(R @ c[..., None])[..., 0])


def ransac_start(world: World, seed: int) -> Pose:
    """PnP-RANSAC on the true matches snapped to the centres of an 8-px grid (S2DHM)."""
    uv = torch.floor(world.uv_query.double() / 8) * 8 + 3.5
    res = pnp_ransac(uv, world.points.double(), world.camera.double(), world.mask, seed=seed)
    return Pose(torch.where(res.success[:, None], res.pose.data, world.gt.data))


def build_methods(args) -> dict[str, DenseExtractor]:
    out: dict[str, DenseExtractor] = {}
    for name in args.methods:
        if name == "dense-sift":
            out[name] = DenseSIFT()
        elif name == "unet-random":
            out[name] = UNetPyramid(seed=0)
        elif name == "photometric":
            out[name] = ImagePyramid()
    if args.unet_weights:
        out["unet"] = load(args.unet_weights)
    if args.vgg_weights:
        out["vgg"] = VGGHypercolumn.from_vgg16_checkpoint(args.vgg_weights)
    return {k: m.eval() for k, m in out.items()}


def reference_features(pyr: FeaturePyramid, uv: torch.Tensor):
    """Per-level ``(B, N, C_l)`` descriptors and ``(B, N)`` confidences at reference pixels."""
    feats, confs = [], []
    for level in range(len(pyr)):
        out = pyr.sample(uv, level)
        feats.append(out[0])
        confs.append(out[2] if len(out) > 2 else None)
    return feats, (None if confs[0] is None else confs)


def refine(pyr, world: World, feats, confs, init: Pose, sl=slice(None), scale: float = 0.1):
    sub = pyr if sl == slice(None) else pyr.select(sl)
    return refine_featuremetric(
        sub, world.points[sl], [f[sl] for f in feats], world.camera, init[sl].float(),
        world.mask[sl], ref_confidence=None if confs is None else [c[sl] for c in confs],
        scale=scale,
    )  # fmt: skip


def timed(fn, repeats: int = 2):
    best, out = math.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    world = make_world(args)
    B = args.queries
    starts = {}
    for s in args.starts:
        if s == "ransac8":
            starts[s] = ransac_start(world, args.seed)
        else:
            deg, metres = (float(v) for v in s.split("/"))
            starts[s] = perturb(world.gt, deg, metres, args.seed + int(10 * deg))
    console.print(f"world: {B} queries, {int(world.mask.sum(-1).float().mean())} points each, "
                  f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    rows = []
    with torch.no_grad():
        for name, model in build_methods(args).items():
            t_ex, ref_pyr = timed(lambda m=model: m(world.ref_rgb), 1)
            feats, confs = reference_features(ref_pyr, world.uv_ref)
            for cond, rgb in world.query_rgb.items():
                pyr = model(rgb)
                for s, init in starts.items():
                    rows.append(
                        _measure(
                            name, cond, s, world, pyr, feats, confs, init, args, model.kernel_scale
                        )
                    )
                    rows[-1]["ms_extract"] = 1e3 * t_ex / B
                    console.print(f"{name:12s} {cond:20s} {s:8s} success {rows[-1]['success']:.1%}")
    return rows


def _measure(name, cond, start, world, pyr, feats, confs, init, args, scale) -> dict:
    """Refine every query in one call and the first ``--single`` one by one; one row."""
    B = world.points.shape[0]
    t_batch, res = timed(lambda: refine(pyr, world, feats, confs, init, scale=scale))
    k = min(args.single, B)
    t_one = 0.0
    for b in range(k):
        t_one += timed(lambda b=b: refine(pyr, world, feats, confs, init, slice(b, b + 1), scale))[
            0
        ]
    return _row(name, cond, start, world.gt, init, res, t_one / k, t_batch / B)


def _row(method, cond, start, gt, init, res, t_one, t_batch) -> dict:
    e_t0, e_R0, _ = pose_errors(init.double(), gt)
    e_t, e_R, _ = pose_errors(res.pose.double(), gt)
    ok = (e_R < math.radians(SUCCESS_DEG)) & (e_t < SUCCESS_M)
    med = lambda x: float(x.median())  # noqa: E731
    return {
        "method": method, "condition": cond, "start": start,
        "success": float(ok.double().mean()),
        "rot_start_deg": math.degrees(med(e_R0)), "rot_deg": math.degrees(med(e_R)),
        "pos_start_m": med(e_t0), "pos_m": med(e_t),
        "rot_cut": med(e_R0) / max(med(e_R), 1e-12), "pos_cut": med(e_t0) / max(med(e_t), 1e-12),
        "iterations": float(res.iterations.sum(-1).double().median()),
        "refine_failed": float((~res.success).double().mean()),
        "ms_batch1": 1e3 * t_one, "ms_batchB": 1e3 * t_batch,
    }  # fmt: skip


def print_table(rows: list[dict], args) -> None:
    table = Table(
        title=f"Feature-metric refinement, {args.queries} queries of {args.width}x{args.height}, "
        f"success = rot < {SUCCESS_DEG}° and pos < {100 * SUCCESS_M:.0f} cm, "
        f"{args.threads} torch thread(s)"
    )
    cols = ["method", "condition", "start", "success", "rot ° start→end", "pos cm start→end"]
    cols += ["cut rot/pos", "LM its", "ms/query b1", f"ms/query b{args.queries}", "extract ms"]
    for col in cols:
        table.add_column(
            col, justify="left" if col in ("method", "condition", "start") else "right"
        )
    for r in rows:
        table.add_row(
            r["method"], r["condition"], r["start"], f"{r['success']:.1%}",
            f"{r['rot_start_deg']:.3f}→{r['rot_deg']:.3f}",
            f"{100 * r['pos_start_m']:.1f}→{100 * r['pos_m']:.1f}",
            f"{r['rot_cut']:.1f}x / {r['pos_cut']:.1f}x", f"{r['iterations']:.0f}",
            f"{r['ms_batch1']:.1f}", f"{r['ms_batchB']:.1f}", f"{r['ms_extract']:.1f}",
        )  # fmt: skip
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=32, help="queries (and batch size)")
    ap.add_argument("--size", default="320x240", help="image WIDTHxHEIGHT")
    ap.add_argument("--points", type=int, default=256, help="3D points per query")
    ap.add_argument("--conditions", nargs="+", default=["overcast-reference", "night"])
    ap.add_argument("--starts", nargs="+", default=list(STARTS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--unet-weights", type=Path, help="a trained UNetPyramid (dgeo.models.save)")
    ap.add_argument("--vgg-weights", type=Path, help="a VGG-16 checkpoint (S2DHM hypercolumns)")
    ap.add_argument("--single", type=int, default=4, help="queries timed one by one")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the rows to this file")
    args = ap.parse_args(argv)
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    for s in args.starts:
        if s != "ransac8" and len(s.split("/")) != 2:
            ap.error(f"--starts entries are DEG/METRES or ransac8, got {s!r}")
    rows = run(args)
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
