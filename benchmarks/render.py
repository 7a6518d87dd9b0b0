"""Time dgeo's tiled ray caster against the brute-force reference (every ray against every quad).

The scene is ``dgeo.data.synthetic.scenes.make_scene("street", seed)`` when that module exists,
else a street-like scene of ~150 quads built here (ground, road, sidewalks, 20 facade segments,
10 boxes, 10 poles with lamps). Views stand at eye height inside the scene's walkable box and
look along random headings. Each row renders ``B`` views of 640x480 PINHOLE cameras, at 1x or
supersampled 2x (``camera.scale(2)``, 1280x960), and reports the best of ``--repeats`` runs
after a warm-up. The brute force runs one view per row (its cost per view does not depend on
the batch) and gives the speedup column.

    python benchmarks/render.py [--batches 1 16] [--scales 1 2] [--device cuda] [--repeats 3]
                                [--no-brute] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dgeo.data.synthetic.render import raycast
from dgeo.data.synthetic.scene import Scene
from dgeo.geometry import Camera, Pose

WIDTH, HEIGHT = 640, 480


def box(center, size, yaw: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The six faces ``(origin, edge_u, edge_v)`` of a box turned by ``yaw`` about ``z``."""
    c, s = math.cos(yaw), math.sin(yaw)
    axes = torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    ex, ey, ez = (axes[i] * size[i] for i in range(3))
    lo = torch.tensor(center, dtype=torch.float32) - (ex + ey + ez) / 2
    return [
        (lo, ex, ey),
        (lo + ez, ey, ex),
        (lo, ez, ex),
        (lo + ey, ex, ez),
        (lo, ey, ez),
        (lo + ex, ez, ey),
    ]


def street_scene(seed: int = 0) -> Scene:
    """A street of ~150 quads along ``x``: ground, road, sidewalks, facades, cars, poles, lamps."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda: float(torch.rand((), generator=g))  # noqa: E731
    quads, material = [], []

    def add(qs, m):
        quads.extend(qs)
        material.extend([m] * len(qs))

    v3 = lambda *x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    add([(v3(-80, -60, 0), v3(160, 0, 0), v3(0, 120, 0))], 0)  # ground
    add([(v3(-60, -4, 0.01), v3(120, 0, 0), v3(0, 8, 0))], 1)  # road
    add([(v3(-60, -7, 0.15), v3(120, 0, 0), v3(0, 3, 0))], 2)  # sidewalks
    add([(v3(-60, 4, 0.15), v3(120, 0, 0), v3(0, 3, 0))], 2)
    for side in (-1, 1):
        for i in range(10):
            y = side * (7 + 0.5 * rand())
            add([(v3(-60 + 12 * i, y, 0), v3(12, 0, 0), v3(0, 0, 8 + 12 * rand()))], 3)
    for _ in range(10):
        add(box([-55 + 110 * rand(), 3 * (2 * rand() - 1), 0.8], [4.2, 1.8, 1.6], rand()), 4)
    for i in range(10):
        x, y = -55 + 11 * i, 4.6 if i % 2 else -4.6
        add(box([x, y, 3.0], [0.15, 0.15, 6.0])[2:], 5)  # pole: four sides
        add(box([x, y, 6.1], [0.5, 0.5, 0.2])[:2], 6)  # lamp: bottom and top
    o, u, v = (torch.stack([q[i] for q in quads]) for i in range(3))
    textures = torch.rand(7, 3, 256, 256, generator=g)
    kinds = ["ground", "road", "sidewalk", "facade", "vehicle", "pole", "lamp"]
    return Scene(
        kind="street",
        seed=seed,
        origin=o,
        edge_u=u,
        edge_v=v,
        material=torch.tensor(material),
        tex_repeat=torch.ones(len(quads), 2) * 4,
        textures=textures,
        material_kind=kinds,
        light_pos=torch.zeros(0, 3),
        light_color=torch.zeros(0, 3),
        outdoor=True,
        walkable=torch.tensor([[-50.0, -3.0, 1.5], [50.0, 3.0, 2.0]]),
    )


def load_scene(seed: int) -> tuple[Scene, str]:
    try:
        from dgeo.data.synthetic.scenes import make_scene
    except ImportError:
        return street_scene(seed), "built-in street"
    return make_scene("street", seed), 'make_scene("street")'


def views(scene: Scene, n: int, seed: int = 0) -> Pose:
    """``n`` cameras inside the walkable box, looking along random headings, 5 deg down."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = scene.walkable.cpu().double()
    eye = lo + (hi - lo) * torch.rand(n, 3, generator=g, dtype=torch.float64)
    yaw = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    pitch = math.radians(-5)
    z = torch.stack([yaw.cos(), yaw.sin(), torch.full_like(yaw, math.sin(pitch))], -1)
    z = torch.nn.functional.normalize(z, dim=-1)
    x = torch.nn.functional.normalize(torch.stack([z[:, 1], -z[:, 0], 0 * yaw], -1), dim=-1)
    R = torch.stack([x, torch.linalg.cross(z, x), z], 1)  # rows: camera axes in the world
    return Pose.from_Rt(R, -(R @ eye[..., None])[..., 0]).float()


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
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-brute", action="store_true", help="skip the brute-force reference")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    scene, source = load_scene(args.seed)
    scene = scene.to(device)
    poses = views(scene, max(args.batches), args.seed).to(device)
    camera = Camera("PINHOLE", WIDTH, HEIGHT, [500.0, 500.0, (WIDTH - 1) / 2, (HEIGHT - 1) / 2])
    rows = []
    for s in args.scales:
        cam = camera.scale(s).to(device=device, dtype=torch.float32)
        brute = None
        if not args.no_brute:
            brute = best_time(lambda c=cam: raycast(scene, c, poses[:1], cull=False), 1, sync)
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
        title=f"raycast, {source} ({scene.num_quads} quads), {device.type}, "
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
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
