"""Render docs/synthetic_world.png: one street and one room viewpoint under every condition.

python docs/synthetic_world.py [--out docs/synthetic_world.png] [--size 320x240]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import torch

from dgeo.data.synthetic.appearance import CONDITION_NAMES, condition_grid, to_uint8
from dgeo.data.synthetic.dataset import SynthConfig, parse_size
from dgeo.data.synthetic.scenes import make_scene
from dgeo.data.synthetic.trajectories import driving_trajectory, handheld_trajectory
from dgeo.data.synthetic.views import render_views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("synthetic_world.png"))
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    width, height = parse_size(args.size)
    camera = SynthConfig(width=width, height=height).camera()
    rows = []
    for kind, trajectory in (("street", driving_trajectory), ("room", handheld_trajectory)):
        scene = make_scene(kind, args.seed)
        pose = trajectory(scene, 8, seed=args.seed)[4:5]
        images = {
            name: render_views(scene, camera, pose, name, seeds=[args.seed]).rgb[0]
            for name in CONDITION_NAMES
        }
        rows.append(condition_grid(images, columns=5))
    grid = torch.cat([rows[0], torch.ones(3, 6, rows[0].shape[-1]), rows[1]], 1)
    img = to_uint8(grid[None])[0].numpy()
    cv2.imwrite(str(args.out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]})")


if __name__ == "__main__":
    main()
