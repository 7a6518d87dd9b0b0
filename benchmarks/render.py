"""Render throughput of the synthetic world at 640x480: the tiled ray caster against the
brute-force reference (every ray against every quad), and whole anti-aliased images.

The scene is ``make_scene("street", seed)``, the views ``random_viewpoints``. The first table
times ``raycast`` for ``B`` views of 640x480 PINHOLE cameras at 1x or supersampled 2x
(``camera.scale(2)``, 1280x960); the brute force runs one view per row (its cost per view does
not depend on the batch) and gives the speedup column. The second table times ``render_views``
(exact 1x pass + 2x pass + shading + finishing) under a day and a night condition. Each number
is the best of ``--repeats`` runs after a warm-up.

    python benchmarks/render.py [--batches 1 16] [--scales 1 2] [--device cuda] [--repeats 5]
                                [--no-brute] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dgeo.data.synthetic.render import raycast
from dgeo.data.synthetic.scenes import make_scene
from dgeo.data.synthetic.trajectories import random_viewpoints
from dgeo.data.synthetic.views import render_views
from dgeo.geometry import Camera

WIDTH, HEIGHT = 640, 480


def best_time(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-brute", action="store_true", help="skip the brute-force reference")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    scene = make_scene("street", args.seed).to(device)
    poses = random_viewpoints(scene, max(args.batches), args.seed).to(device)
    camera = Camera("PINHOLE", WIDTH, HEIGHT, [500.0, 500.0, (WIDTH - 1) / 2, (HEIGHT - 1) / 2])
    rows = []
    for s in args.scales:
        cam = camera.scale(s).to(device=device, dtype=torch.float32)
        brute = None
        if not args.no_brute:
            brute = best_time(
                lambda c=cam: raycast(scene, c, poses[:1], cull=False), args.repeats, sync
            )
        for b in args.batches:
            t = best_time(lambda c=cam, b=b: raycast(scene, c, poses[:b]), args.repeats, sync)
            hit = float(raycast(scene, cam, poses[:b]).valid.float().mean())
            rows.append(
                {
                    "scale": s,
                    "size": f"{WIDTH * s}x{HEIGHT * s}",
                    "batch": b,
                    "ms_per_view": 1000 * t / b,
                    "views_per_s": b / t,
                    "brute_ms_per_view": None if brute is None else 1000 * brute,
                    "speedup": None if brute is None else brute / (t / b),
                    "hit_fraction": hit,
                }
            )

    table = Table(
        title=f"raycast, street ({scene.num_quads} quads), {device.type}, "
        f"{torch.get_num_threads()} threads"
    )
    for col in ("scale", "image", "batch", "ms/view", "views/s", "brute ms/view", "speedup", "hit"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['scale']}x",
            r["size"],
            str(r["batch"]),
            f"{r['ms_per_view']:.1f}",
            f"{r['views_per_s']:.1f}",
            "-" if r["brute_ms_per_view"] is None else f"{r['brute_ms_per_view']:.0f}",
            "-" if r["speedup"] is None else f"{r['speedup']:.0f}x",
            f"{r['hit_fraction']:.0%}",
        )
    Console().print(table)

    full = Table(title="render_views: 640x480 images, 2x supersampling, shading and finishing")
    for col in ("condition", "batch", "ms/view", "views/s"):
        full.add_column(col, justify="right")
    camera = camera.to(device=device)
    for cond in ("overcast-reference", "night-rain"):
        for b in args.batches:
            t = best_time(
                lambda b=b, c=cond: render_views(scene, camera, poses[:b], c),
                max(1, args.repeats // 2),
                sync,
            )
            rows.append({"render_views": cond, "batch": b, "ms_per_view": 1000 * t / b})
            full.add_row(cond, str(b), f"{1000 * t / b:.0f}", f"{b / t:.2f}")
    Console().print(full)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
