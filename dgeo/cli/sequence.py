"""``dgeo localize-sequence``: poses of every frame of a KFNet sequence folder from a
scene-coordinate network (SCoordNet, KFNet or ACE)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from dgeo.cli.common import stage_progress
from dgeo.cli.main import app
from dgeo.errors import InputError

if TYPE_CHECKING:
    from dgeo.pipeline.scr.sequence import SequenceSummary

console = Console()
#: Failed frames listed one a line after the summary (the log has them all).
MAX_LISTED = 20

HELP = (
    "Localize every frame of an image sequence with a scene-coordinate network.\n\n"
    "--method scoordnet: SCoordNet per frame; kfnet: SCoordNet measurements + OFlowNet flow "
    "through the per-pixel Kalman filter (KFNet); ace: an ACE map (dgeo train ace). Each frame's "
    "scene-coordinate map gives its pose by confidence-ordered PnP-RANSAC (the pixel of cell "
    "(i, j) is (8j + 4, 8i + 4) in the full image).\n\n"
    "--input-folder is a KFNet sequence folder: image_list.txt (time order), optional "
    "label_list.txt, transform.txt, camera.txt ('MODEL W H PARAMS...', COLMAP convention), and "
    "ground truth poses.txt (hloc format) or 7-Scenes *.pose.txt files. --camera gives the "
    "camera instead: a file, an inline 'PINHOLE 640 480 525 525 320 240', or the preset "
    "7scenes.\n\n"
    "Writes RESULTS in hloc's format ('name qw qx qy qz tx ty tz', world-to-camera; names are "
    "the image_list.txt entries; a failed frame gets the last successful pose) and "
    "RESULTS.log.jsonl (one JSON record per frame: success, reason, cells, inliers, filter "
    "resets, stage timings). With ground truth the summary shows the errors; "
    "`dgeo evaluate RESULTS DIR/poses.txt -t ace` gives the full table. --coords-dir also "
    "writes KFNet's coord_<i>.npy (world xyz + 1/sigma) and <i>_<i+1>_flow.npy files "
    "(see `dgeo viz`).\n\n"
    "Exit code 0 when every frame is localized, 1 when any failed, 2 on bad input.\n\n"
    "Examples:\n\n"
    "    dgeo localize-sequence --method kfnet --input-folder data/sequences/night "
    "--weights runs/kfnet/model.pt --output night_results.txt\n\n"
    "    dgeo localize-sequence -m scoordnet -i chess/seq-03 --camera 7scenes -w scoordnet.pt "
    "-o chess03.txt --coords-dir chess03_coords --device cuda --resume"
)


@app.command("localize-sequence", help=HELP)
def localize_sequence_command(
    method: str = typer.Option(
        ..., "--method", "-m", help="Method: scoordnet, kfnet or ace.", show_default=False
    ),
    input_folder: Path = typer.Option(
        ..., "--input-folder", "-i", metavar="DIR", help="The KFNet sequence folder."
    ),
    weights: Path = typer.Option(
        ...,
        "--weights",
        "-w",
        metavar="PATH",
        help="The network: a dgeo model file (SCoordNet or KFNet for scoordnet, KFNet for "
        "kfnet, ACEModel for ace).",
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", metavar="RESULTS", help="The hloc results file to write."
    ),
    camera: str | None = typer.Option(
        None,
        "--camera",
        metavar="SPEC",
        help="Camera file, inline 'MODEL W H PARAMS...' (COLMAP convention) or 7scenes "
        "(default: DIR/camera.txt).",
    ),
    coords_dir: Path | None = typer.Option(
        None, "--coords-dir", metavar="DIR", help="Also write coord_<i>.npy / flow .npy files."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Skip the frames already in RESULTS."),
    batch_size: int = typer.Option(
        4, help="Frames per network and RANSAC call (scoordnet, ace; kfnet runs frame by frame)."
    ),
    top_fraction: float = typer.Option(
        0.75, help="Share of the cells, most confident first, that RANSAC uses (0-1]."
    ),
    max_sigma: float | None = typer.Option(
        None, help="Drop cells less certain than this (metres; 0.05 = KFNet's viewers' cut)."
    ),
    threshold: float = typer.Option(10.0, help="RANSAC inlier threshold (pixels)."),
    min_inliers: int = typer.Option(20, help="Fewest RANSAC inliers of a successful pose."),
    max_iterations: int = typer.Option(
        10000, help="Most RANSAC samples per frame (fewer: faster on hard frames)."
    ),
    seed: int = typer.Option(0, help="RANSAC seed (the same seed gives the same poses)."),
) -> None:
    """Localize the frames of DIR into RESULTS (see :data:`HELP`); exits 1 if any failed.

    Raises:
        DgeoError: bad input found before the run; the entry point prints it as one line and
            exits with code 2.
    """
    from dgeo.pipeline.scr.sequence import METHODS, PoseOptions, localize_sequence

    if method not in METHODS:
        raise InputError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}.")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}.")
    if min_inliers < 4:
        raise InputError(f"--min-inliers must be at least 4, got {min_inliers}.")
    if max_iterations < 1:
        raise InputError(f"--max-iterations must be at least 1, got {max_iterations}.")
    if output.is_dir():
        raise InputError(f"--output {output} is a folder; pass a results file path.")
    options = PoseOptions(
        top_fraction=top_fraction, max_sigma=max_sigma, threshold_px=threshold,
        ransac={
            "min_inliers": min_inliers,
            "max_iterations": max_iterations,
            "min_iterations": min(100, max_iterations),
        },
    )  # fmt: skip
    options.check()
    with stage_progress(console, transient=False, remaining=True) as progress:
        summary = localize_sequence(
            input_folder, method, weights, output, camera=camera, coords_dir=coords_dir,
            device=device, resume=resume, batch_size=batch_size, pose_options=options, seed=seed,
            progress=progress,
        )  # fmt: skip
    print_summary(summary)
    if not summary.all_localized:
        raise typer.Exit(1)


def _cm_deg(metres: float, degrees: float) -> str:
    if not math.isfinite(metres):
        return "inf"
    return f"{100 * metres:.1f} cm / {degrees:.2f}°"


def print_summary(summary: SequenceSummary) -> None:
    """The summary table, then one line per failed frame (at most :data:`MAX_LISTED`)."""
    table = Table(title=f"dgeo localize-sequence ({summary.method}): {summary.folder}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("frames", str(summary.total))
    if summary.done_before:
        table.add_row("already done (--resume)", str(summary.done_before))
    table.add_row("localized", str(summary.localized))
    reasons = Counter(r.split(":", 2)[0] if r.startswith("error") else r
                      for r in summary.failures.values())  # fmt: skip
    for reason, n in reasons.most_common():
        table.add_row(f"failed: {reason}", str(n))
    restarts = Counter(cause for _, cause in summary.resets if cause != "start")
    if summary.method == "kfnet":
        text = ", ".join(f"{c} {n}" for c, n in restarts.most_common()) or "none"
        table.add_row("filter resets", text)
    if summary.errors is not None:
        s = summary.errors.summary()
        table.add_row("median error", _cm_deg(s.median_translation, s.median_rotation_deg))
        for th, r in zip(s.thresholds, s.recall, strict=True):
            table.add_row(
                f"within {100 * th.translation_m:g} cm / {th.rotation_deg:g}°", f"{100 * r:.1f} %"
            )
    for stage, seconds in summary.stage_seconds.items():
        table.add_row(f"median {stage}", f"{1000 * seconds:.1f} ms")
    if summary.processed:
        fps = summary.processed / max(summary.seconds, 1e-9)
        table.add_row(f"time ({summary.device})", f"{summary.seconds:.1f} s ({fps:.1f} frames/s)")
    console.print(table)
    for i, (name, reason) in enumerate(summary.failures.items()):
        if i == MAX_LISTED:
            console.print(f"... and {len(summary.failures) - MAX_LISTED} more failed frames.")
            break
        console.print(f"failed: {name}: {reason.splitlines()[0]}", highlight=False, soft_wrap=True)
    console.print(f"wrote {summary.results_path} and {summary.log_path}", highlight=False)
