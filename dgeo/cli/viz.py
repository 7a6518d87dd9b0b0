"""``dgeo viz coords|flow|trajectory``: look at scene-coordinate maps, flows and trajectories."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console

from dgeo.cli.main import app
from dgeo.errors import InputError, require_file
from dgeo.geometry import Pose

console = Console()
viz_app = typer.Typer(
    name="viz",
    help="Pictures of scene-coordinate outputs: `dgeo viz coords|flow|trajectory ...`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(viz_app, name="viz")

COORDS_HELP = (
    "Write a KFNet coordinate map (coord_<i>.npy: h x w x 4, world xyz + 1/sigma, as "
    "`dgeo localize-sequence --coords-dir` writes) as a coloured PLY point cloud for MeshLab, "
    "Open3D or CloudCompare.\n\n"
    "Cells with confidence 1/sigma at most --min-confidence are dropped (20 = sigma 5 cm, "
    "KFNet's viewers' cut; 0 keeps all). Colours come from --image (the frame the map was "
    "predicted from: each cell takes its pixel (8j + 4, 8i + 4)), else from the confidence "
    "(turbo colour map: blue = least, red = most confident). The PLY also holds a float "
    "'confidence' property per point.\n\n"
    "Examples:\n\n"
    "    dgeo viz coords coords/coord_10.npy --out cloud10.ply\n\n"
    "    dgeo viz coords coords/coord_10.npy --out cloud10.ply --image seq/images/frame_00010.png "
    "--min-confidence 50 --ascii"
)
FLOW_HELP = (
    "Colour-code a KFNet flow map (<i>_<i+1>_flow.npy: h x w x 3, u, v in cells + 1/sigma) "
    "with the standard optical-flow colour wheel (Middlebury, as flow_vis and RAFT draw it): "
    "hue = direction, saturation = length; white = no motion. The flow lives on the later "
    "frame and points into the earlier one.\n\n"
    "Examples:\n\n"
    "    dgeo viz flow coords/9_10_flow.npy --out flow10.png\n\n"
    "    dgeo viz flow coords/9_10_flow.npy --out flow10.png --scale 16 --max-radius 3"
)
TRAJECTORY_HELP = (
    "Plot the camera centres of a results file seen from above, against ground truth: a "
    "results-format file (e.g. a sequence folder's poses.txt) or a KFNet sequence folder "
    "(its poses.txt or 7-Scenes *.pose.txt). Names are matched exactly, else by basename; "
    "frames are drawn in the ground truth's order. Failed frames (from RESULTS.log.jsonl, when "
    "present) are crosses. Drawn with OpenCV (no plotting library needed).\n\n"
    "Examples:\n\n"
    "    dgeo viz trajectory night_results.txt --gt data/sequences/night/poses.txt "
    "--out traj.png\n\n"
    "    dgeo viz trajectory chess03.txt --gt chess/seq-03 --axes xz --out traj.png"
)


@viz_app.command("coords", help=COORDS_HELP)
def coords_command(
    coords: Path = typer.Argument(..., metavar="FILE.npy", help="A coord_<i>.npy map."),
    out: Path = typer.Option(..., "--out", "-o", help="The .ply file to write."),
    min_confidence: float = typer.Option(
        20.0, help="Keep cells with 1/sigma above this (0: keep every finite cell)."
    ),
    image: Path | None = typer.Option(None, help="Colour by this image (the map's frame)."),
    ascii_ply: bool = typer.Option(False, "--ascii", help="ASCII PLY instead of binary."),
) -> None:
    """Write the PLY cloud of a coordinate map (see :data:`COORDS_HELP`)."""
    from dgeo.io.formats import read_kfnet_coords
    from dgeo.io.images import read_image
    from dgeo.viz.clouds import coords_to_cloud, write_ply

    if min_confidence < 0 or not math.isfinite(min_confidence):
        raise InputError(f"--min-confidence must be >= 0, got {min_confidence}.")
    arr = read_kfnet_coords(coords)
    img = None if image is None else read_image(image)
    points, colors, conf = coords_to_cloud(arr, img, min_confidence or None)
    if len(points) == 0:
        best = float(arr[..., 3][arr[..., 3].isfinite()].max()) if arr.numel() else math.nan
        raise InputError(
            f"no cell of {coords} has confidence above {min_confidence:g} (best {best:.3g}); "
            "lower --min-confidence (0 keeps every finite cell)."
        )
    write_ply(out, points, colors, {"confidence": conf}, binary=not ascii_ply)
    total = arr.shape[0] * arr.shape[1]
    console.print(f"wrote {out}: {len(points)} of {total} cells", highlight=False)


@viz_app.command("flow", help=FLOW_HELP)
def flow_command(
    flow: Path = typer.Argument(..., metavar="FILE.npy", help="A <i>_<j>_flow.npy map."),
    out: Path = typer.Option(..., "--out", "-o", help="The .png file to write."),
    scale: int = typer.Option(8, help="Pixels per cell in the picture (nearest upsampling)."),
    max_radius: float | None = typer.Option(
        None, help="Flow length (cells) at full saturation (default: the longest)."
    ),
) -> None:
    """Write the colour-coded picture of a flow map (see :data:`FLOW_HELP`)."""
    import numpy as np

    from dgeo.io.formats import read_kfnet_flow
    from dgeo.viz.clouds import flow_to_color, write_png

    if scale < 1:
        raise InputError(f"--scale must be at least 1, got {scale}.")
    if max_radius is not None and not max_radius > 0:
        raise InputError(f"--max-radius must be positive, got {max_radius}.")
    arr = read_kfnet_flow(flow).numpy()
    rgb = flow_to_color(arr[..., :2], max_radius)
    rgb = np.repeat(np.repeat(rgb, scale, 0), scale, 1)
    write_png(out, rgb)
    lengths = np.hypot(arr[..., 0], arr[..., 1])
    longest = float(np.nanmax(lengths)) if np.isfinite(lengths).any() else math.nan
    console.print(f"wrote {out} (longest flow {longest:.2f} cells)", highlight=False)


def _ground_truth(path: Path) -> tuple[list[str], Pose]:
    """``(names, Pose)`` of a results-format file or of a sequence folder (``poses.txt``, or
    7-Scenes ``*.pose.txt`` files through :class:`~dgeo.data.sequences.SequenceFolder`)."""
    from dgeo.io.formats import read_hloc_results

    path = require_file(path, "ground truth")
    if path.is_dir():
        if (path / "poses.txt").is_file():
            return _ground_truth(path / "poses.txt")
        from dgeo.data.sequences import SequenceFolder, parse_camera
        from dgeo.geometry import Camera
        from dgeo.io.formats import read_image_list
        from dgeo.io.images import read_image

        if not (path / "image_list.txt").is_file():
            raise InputError(f"{path} has no image_list.txt; pass a poses file or a sequence.")
        if (path / "camera.txt").is_file():
            camera = parse_camera(None, path)
        else:  # only the poses are needed: any camera of the images' size
            first = read_image_list(path / "image_list.txt", root=path)[0]
            h, w = read_image(first).shape[-2:]
            camera = Camera("PINHOLE", w, h, [1.0, 1.0, (w - 1) / 2, (h - 1) / 2])
        seq = SequenceFolder(path, camera=camera, min_frames=1)
        if seq.poses is None:
            raise InputError(f"sequence {path} has no poses.txt or *.pose.txt ground truth.")
        return list(seq.names), seq.poses
    names, poses = read_hloc_results(path)
    if not names:
        raise InputError(f"ground truth {path} holds no pose.")
    return names, poses


@viz_app.command("trajectory", help=TRAJECTORY_HELP)
def trajectory_command(
    results: Path = typer.Argument(..., metavar="RESULTS", help="hloc results file."),
    gt: Path | None = typer.Option(
        None, "--gt", help="Ground truth: a results-format file or a sequence folder."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The .png file to write."),
    axes: str = typer.Option("auto", help="View: auto, xy, xz or yz (world axes right, up)."),
    size: int = typer.Option(900, help="Longer side of the plot in pixels."),
) -> None:
    """Write the top-down trajectory plot (see :data:`TRAJECTORY_HELP`)."""
    import torch

    from dgeo.eval.metrics import evaluate
    from dgeo.io.formats import read_hloc_results
    from dgeo.pipeline.run_files import log_path_for, read_log
    from dgeo.viz.trajectory import AXES, plot_trajectory

    if axes not in AXES:
        raise InputError(f"unknown --axes {axes!r}; use one of {', '.join(AXES)}.")
    if size < 200:
        raise InputError(f"--size must be at least 200 pixels, got {size}.")
    names, poses = read_hloc_results(results)
    if not names:
        raise InputError(f"results file {results} holds no pose; nothing to plot.")
    flags = {r["name"]: bool(r.get("success", True)) for r in read_log(log_path_for(results))}
    title = results.name
    if gt is None:
        est, truth, order = poses, None, names
    else:
        gt_names, gt_poses = _ground_truth(gt)
        ev = evaluate((names, poses), (gt_names, gt_poses), "ace")
        if ev.matched_by == "exact":
            index = {n: i for i, n in enumerate(names)}
            key = gt_names
        else:
            index = {n.rsplit("/", 1)[-1]: i for i, n in enumerate(names)}
            key = [n.rsplit("/", 1)[-1] for n in gt_names]
        keep = [k for k, n in enumerate(key) if n in index]
        order = [names[index[key[k]]] for k in keep]
        est = poses[torch.tensor([index[key[k]] for k in keep])]
        truth = gt_poses[torch.tensor(keep)]
        s = ev.summary()
        title += (
            f" vs {gt.name}: {len(keep)} frames, median {100 * s.median_translation:.1f} cm / "
            f"{s.median_rotation_deg:.2f} deg"
        )
        if ev.missing:
            console.print(
                f"warning: {len(ev.missing)} ground-truth frame(s) have no result and are not "
                "drawn.",
                highlight=False,
            )
    success = [flags.get(n, True) for n in order]
    assert isinstance(est, Pose)
    plot_trajectory(est, truth, success=success, axes=axes, title=title, size=size, path=out)
    console.print(f"wrote {out}", highlight=False)
