"""``dgeo demo``: the main job on the built-in synthetic data, in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from dgeo.cli.main import app
from dgeo.eval.report import format_table
from dgeo.pipeline.demo import DemoConfig, run_demo

console = Console()


@app.command()
def demo(
    out: Path = typer.Option(Path("dgeo_demo"), "--out", "-o", help="Output folder."),
    images: int = typer.Option(64, help="Images in the synthetic scene; each is a query."),
    points: int = typer.Option(800, help="3D points in the synthetic scene."),
    outliers: float = typer.Option(0.2, help="Share of 2D observations replaced by outliers."),
    noise: float = typer.Option(1.0, help="Pixel noise (standard deviation) on observations."),
    rotation: float = typer.Option(12.0, help="Initial rotation error, degrees."),
    translation: float = typer.Option(0.5, help="Initial camera-centre error, scene units."),
    kernel: str = typer.Option("cauchy", help="Robust kernel: huber, cauchy, tukey, barron, l2."),
    seed: int = typer.Option(0, help="Seed of the scene and of the noise."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
    float32: bool = typer.Option(False, "--float32", help="Refine in float32."),
) -> None:
    """Synthesise a COLMAP scene, perturb every image's pose and refine all of them at once.

    Writes the model (sfm/), the ground truth and the initial and refined poses (hloc results
    format) into OUT, and prints recall tables before and after the batched robust refinement.

    Examples:

        dgeo demo

        dgeo demo --out /tmp/demo --images 256 --outliers 0.4 --kernel huber
    """
    cfg = DemoConfig(
        num_images=images,
        num_points=points,
        outlier_ratio=outliers,
        pixel_noise=noise,
        rotation_noise_deg=rotation,
        translation_noise=translation,
        kernel=kernel,
        seed=seed,
        device=device,
        dtype=torch.float32 if float32 else torch.float64,
    )
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)
        result = run_demo(out, cfg, progress=lambda msg: bar.update(task, description=msg))
    console.print(format_table(result.initial, title="initial poses"))
    console.print(format_table(result.refined, title="after batched robust LM"))
    ms = 1000 * result.seconds_refine
    console.print(
        f"refined {result.num_queries} queries ({result.num_observations} observations, "
        f"{outliers:.0%} outliers) in {ms:.1f} ms on {device} "
        f"({ms / result.num_queries:.2f} ms per query; median "
        f"{int(result.iterations.median())} iterations)"
    )
    console.print(f"files in {out}: " + ", ".join(p.name for p in result.files.values()))
