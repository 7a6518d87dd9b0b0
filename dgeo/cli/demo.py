"""``dgeo demo``: the main job on the built-in synthetic world, in about a minute on a CPU."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.console import Console

from dgeo.cli.common import comma_list, stage_progress
from dgeo.cli.main import app
from dgeo.eval.report import format_table

console = Console()


@app.command()
def demo(
    out: Path = typer.Option(Path("dgeo_demo"), "--out", "-o", help="Output folder."),
    scene: str = typer.Option("street", help="Scene kind: street or room."),
    references: int = typer.Option(24, help="Mapping images of the rendered world."),
    queries: int = typer.Option(8, help="Query images per condition."),
    conditions: str = typer.Option("night,snow,dusk", help="Comma-separated query conditions."),
    outliers: float = typer.Option(0.2, help="Share of 2D observations replaced by outliers."),
    noise: float = typer.Option(1.0, help="Pixel noise (standard deviation) on observations."),
    rotation: float = typer.Option(12.0, help="Initial rotation error, degrees."),
    translation: float = typer.Option(0.5, help="Initial camera-centre error, metres."),
    kernel: str = typer.Option("cauchy", help="Robust kernel: huber, cauchy, tukey, barron, l2."),
    seed: int = typer.Option(0, help="Seed of the world and of the noise."),
    device: str = typer.Option("cpu", help="Torch device of the refinement, e.g. cpu or cuda."),
    float32: bool = typer.Option(False, "--float32", help="Refine in float32."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo in OUT."),
) -> None:
    """Render the built-in world, then refine the perturbed poses of all queries at once.

    Renders a dataset (OUT/data: references with a COLMAP model, queries under several
    conditions, as `dgeo synth` does), gives each query its true 2D-3D matches with the model
    corrupted by noise and outliers, starts it from a perturbed pose, refines all queries in one
    batched robust Levenberg-Marquardt call, writes hloc results and prints recall tables before
    and after.

    Examples:

        dgeo demo

        dgeo demo --out /tmp/demo --scene room --outliers 0.4 --kernel huber --overwrite
    """
    from dgeo.pipeline.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        scene=scene,
        references=references,
        queries=queries,
        conditions=comma_list(conditions),
        outlier_ratio=outliers,
        pixel_noise=noise,
        rotation_noise_deg=rotation,
        translation_noise=translation,
        kernel=kernel,
        seed=seed,
        device=device,
        dtype=torch.float32 if float32 else torch.float64,
    )
    with stage_progress(console) as progress:
        result = run_demo(out, cfg, progress=progress, overwrite=overwrite)
    console.print(format_table(result.initial, title="initial poses"))
    console.print(format_table(result.refined, title="after batched robust LM"))
    ms = 1000 * result.seconds_refine
    console.print(
        f"rendered the world and mapped {result.num_points3D} points in "
        f"{result.seconds_render:.1f} s; refined {result.num_queries} queries "
        f"({result.num_observations} matches, {outliers:.0%} outliers) in {ms:.1f} ms on "
        f"{device} (median {int(result.iterations.median())} iterations)"
    )
    console.print(f"files in {out}: " + ", ".join(p.name for p in result.files.values()))
