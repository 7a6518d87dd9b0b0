"""``dgeo demo``: localize the queries of the built-in synthetic world, end to end."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from dgeo.cli.common import comma_list, stage_progress
from dgeo.cli.main import app
from dgeo.eval.report import print_report

console = Console()


@app.command()
def demo(
    out: Path = typer.Option(Path("dgeo_demo"), "--out", "-o", help="Output folder."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="A run of well under a minute: queries under three conditions "
        "(overcast-reference, night, snow) instead of ten.",
    ),
    scene: str = typer.Option("street", help="Scene kind: street or room."),
    references: int = typer.Option(24, help="Mapping images."),
    queries: int = typer.Option(4, help="Query images per condition."),
    conditions: str | None = typer.Option(
        None,
        help="Comma-separated query conditions [default: all ten; --quick "
        "overcast-reference,night,snow].",
    ),
    seed: int = typer.Option(0, help="Seed of the world."),
    device: str = typer.Option("cpu", help="Torch device of the localizer, e.g. cpu or cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo in OUT."),
) -> None:
    """Render the built-in world, localize its queries under every condition, evaluate, plot.

    Renders a dataset (OUT/data: references with a COLMAP model, queries under day, night,
    weather and season conditions, as `dgeo synth` does), localizes every query with dgeo's
    default localizer (dense SIFT, retrieval, sparse-to-dense matching, LO-RANSAC,
    feature-metric refinement), writes hloc results (OUT/results.txt), prints the recall per
    condition against the rendered ground truth and draws the map from above with the true and
    estimated query poses (OUT/localization.png).

    Examples:

        dgeo demo

        dgeo demo --quick --out /tmp/demo --overwrite

        dgeo demo --scene room --conditions night,snow --queries 5
    """
    from dgeo.pipeline.demo import DemoConfig, run_demo

    changes = dict(scene=scene, seed=seed, device=device, references=references, queries=queries)
    if conditions is not None:
        changes["conditions"] = comma_list(conditions)
    cfg = DemoConfig.quick(**changes) if quick else DemoConfig(**changes)
    with stage_progress(console) as progress:
        result = run_demo(out, cfg, progress=progress, overwrite=overwrite)
    print_report(result.evaluation, console, title="dgeo demo: recall (%) per condition")
    ms = {k: 1000 * v for k, v in result.stage_seconds.items()}
    console.print(
        f"rendered and mapped {result.num_references} references ({result.num_points3D} points) "
        f"in {result.seconds_render:.1f} s; extracted them in {result.seconds_index:.1f} s; "
        f"localized {result.num_queries} queries in {result.seconds_localize:.1f} s on {device}, "
        f"{sum(not r.success for r in result.results)} without a pose (fallback: the top "
        "retrieved reference's) "
        "(ms per query: " + ", ".join(f"{k} {v:.0f}" for k, v in ms.items()) + ")",
        highlight=False,
    )
    console.print(f"files in {out}: " + ", ".join(p.name for p in result.files.values()))
