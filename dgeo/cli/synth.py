"""``dgeo synth``: render a dataset folder from the built-in synthetic world."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dgeo.cli.common import comma_list, stage_progress
from dgeo.cli.main import app

console = Console()


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to create."),
    scene: str = typer.Option("street", help="Scene kind: street or room."),
    seed: int = typer.Option(0, help="Seed of the scene, viewpoints and appearance."),
    references: int = typer.Option(40, help="Mapping images (overcast-reference)."),
    queries: int = typer.Option(10, help="Query images per condition."),
    conditions: str = typer.Option("night,snow", help="Comma-separated query conditions."),
    sequence_length: int = typer.Option(0, help="Frames per temporal sequence (0: none)."),
    sequence_fps: float | None = typer.Option(
        None, help="Frame rate of the sequences (room 30, street 10); lower covers more ground."
    ),
    size: str = typer.Option("640x480", help="Image size WIDTHxHEIGHT."),
    camera: str = typer.Option("SIMPLE_RADIAL", help="Camera model: SIMPLE_RADIAL or PINHOLE."),
    fov: float = typer.Option(70.0, help="Horizontal field of view, degrees."),
    textures: Path | None = typer.Option(None, help="Folder of images wrapped onto surfaces."),
    label_stride: int = typer.Option(1, help="KFNet labels at full (1) or 1/8 (8) resolution."),
    supersample: int = typer.Option(2, help="Anti-aliasing sub-pixels per side."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT."),
) -> None:
    """Render a complete dataset: references with a COLMAP model, queries under several
    conditions with ground truth, and KFNet-style temporal sequences.

    Conditions: overcast-reference, sun, dusk, night, night-rain, rain, snow, overcast-winter,
    overcast-summer, dawn.

    Examples:

        dgeo synth data/street --references 40 --queries 10 --conditions night,snow

        dgeo synth data/room --scene room --sequence-length 100 --size 320x240
    """
    from dgeo.data.synthetic.dataset import SynthConfig, parse_size, write_dataset

    width, height = parse_size(size)
    cfg = SynthConfig(
        scene=scene,
        seed=seed,
        references=references,
        queries=queries,
        conditions=comma_list(conditions),
        sequence_length=sequence_length,
        sequence_fps=sequence_fps,
        width=width,
        height=height,
        camera_model=camera,
        fov_deg=fov,
        supersample=supersample,
        texture_dir=textures,
        label_stride=label_stride,
    )
    with stage_progress(console) as progress:
        summary = write_dataset(out, cfg, overwrite=overwrite, progress=progress)
    table = Table(title=f"dgeo synth: {summary.path}")
    table.add_column("part")
    table.add_column("count", justify="right")
    table.add_row("references", str(summary.references))
    for cond, n in summary.queries.items():
        table.add_row(f"queries/{cond}", str(n))
    for cond, n in summary.sequences.items():
        table.add_row(f"sequences/{cond}", f"{n} frames")
    table.add_row("3D points", str(summary.points3D))
    table.add_row("mean track length", f"{summary.mean_track_length:.1f}")
    table.add_row("time", f"{summary.seconds:.1f} s")
    console.print(table)
