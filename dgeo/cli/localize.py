"""``dgeo localize``: localize hloc query lists against a COLMAP model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from dgeo.cli.common import stage_progress
from dgeo.cli.main import app

if TYPE_CHECKING:
    from dgeo.pipeline.localize import LocalizeSummary

console = Console()
#: Failed queries listed one a line after the summary (the log has them all).
MAX_LISTED = 20

HELP = (
    "Localize the queries of an hloc query list against a COLMAP model.\n\n"
    "Retrieval -> sparse-to-dense matching -> PnP-RANSAC -> feature-metric refinement, batched "
    "over queries. Writes RESULTS in hloc's format ('name qw qx qy qz tx ty tz', world-to-camera; "
    "failed queries get a fallback pose) and RESULTS.log.jsonl (one JSON record per query: "
    "success, reason, inliers, retrieved references, stage timings). The reference descriptors "
    "are cached (default: dgeo_cache next to RESULTS), so later runs start at once.\n\n"
    "A bad query (missing or unreadable image, size disagreeing with its intrinsics) fails alone "
    "with its reason; the exit code is 0 when every query is localized, 1 when any failed, 2 on "
    "bad input (missing files, empty query list, a model without 3D points).\n\n"
    "Several processes: torchrun --nproc-per-node N -m dgeo localize ... (each rank takes its "
    "share; rank 0 merges the results and prints the summary; every rank exits with the run's "
    "code, so torchrun reports a run with failed queries as failed).\n\n"
    "Examples:\n\n"
    "    dgeo localize data/sfm data/images data/queries_with_intrinsics.txt -o results.txt\n\n"
    "    dgeo localize sfm/ images/ queries.txt -o out/results.txt --features unet "
    "--weights unet.pt --device cuda --resume"
)


@app.command("localize", help=HELP)
def localize_command(
    model_dir: Path = typer.Argument(
        ..., metavar="MODEL_DIR", help="COLMAP model folder (binary or text)."
    ),
    images_dir: Path = typer.Argument(
        ...,
        metavar="IMAGES_DIR",
        help="Folder holding the reference and query images by the names in the model and "
        "in QUERIES.",
    ),
    queries: Path = typer.Argument(
        ...,
        metavar="QUERIES",
        help="hloc queries_with_intrinsics.txt: 'name MODEL width height params...'.",
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", metavar="RESULTS", help="The hloc results file to write."
    ),
    features: str = typer.Option(
        "unet",
        help="Dense features: unet (without --weights the U-Net shipped in the package), "
        "dense-sift (weight-free), vgg or image.",
    ),
    weights: Path | None = typer.Option(
        None, help="Weights of the features (unet: a dgeo model file; vgg: a VGG-16 checkpoint)."
    ),
    top_k: int = typer.Option(10, help="References retrieved per query."),
    select: str = typer.Option(
        "auto",
        help="Winner among the retrieved references: inlier-ratio (inliers / matches), inliers "
        "(S2DHM's count) or auto (the ratio for learned features, the count for dense-sift).",
    ),
    refine: bool = typer.Option(
        True, "--refine/--no-refine", help="Feature-metric refinement of the RANSAC pose."
    ),
    max_size: int = typer.Option(640, help="Longest image side the work runs at (0: full size)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(8, help="Queries localized together."),
    resume: bool = typer.Option(False, "--resume", help="Skip the queries already in RESULTS."),
    cache_dir: Path | None = typer.Option(
        None, help="Folder of the reference cache (default: dgeo_cache next to RESULTS)."
    ),
) -> None:
    """Localize QUERIES into OUTPUT (see :data:`HELP`); exits 1 if any query failed.

    Raises:
        DgeoError: bad input found before the run; the entry point prints it as one line and
            exits with code 2.
    """
    from dgeo.pipeline.localize import localize_folder
    from dgeo.pipeline.localizer import LocalizerConfig

    config = LocalizerConfig(
        features=features,
        weights=None if weights is None else str(weights),
        max_size=max_size or None,
        top_k=top_k,
        select=select,
        refine=refine,
    )
    main_rank = os.environ.get("RANK", "0") == "0"
    with stage_progress(console if main_rank else Console(quiet=True)) as progress:
        summary = localize_folder(
            model_dir, images_dir, queries, output, config,
            batch_size=batch_size, resume=resume, cache_dir=cache_dir, device=device,
            progress=progress,
        )  # fmt: skip
    if summary.is_main:
        print_summary(summary)
    if not summary.all_localized:
        raise typer.Exit(1)


def print_summary(summary: LocalizeSummary) -> None:
    """The summary table, then one line per failed query (at most :data:`MAX_LISTED`)."""
    table = Table(title=f"dgeo localize: {summary.results_path}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("queries", str(summary.total))
    if summary.done_before:
        table.add_row("already done (--resume)", str(summary.done_before))
    table.add_row("localized", str(summary.localized))
    for reason, n in summary.failures_by_reason().items():
        table.add_row(f"failed: {reason}", str(n))
    for stage, seconds in summary.stage_seconds.items():
        table.add_row(f"median {stage}", f"{1000 * seconds:.0f} ms")
    origin = "loaded from cache" if summary.from_cache else "built"
    table.add_row(f"reference index ({origin})", f"{summary.reference_seconds:.1f} s")
    where = summary.device + (f" x {summary.world_size} ranks" if summary.world_size > 1 else "")
    table.add_row(f"localizing time ({where})", f"{summary.seconds:.1f} s")
    console.print(table)
    for i, (name, reason) in enumerate(summary.failures.items()):
        if i == MAX_LISTED:
            console.print(f"... and {len(summary.failures) - MAX_LISTED} more failed queries.")
            break
        console.print(f"failed: {name}: {reason.splitlines()[0]}", highlight=False, soft_wrap=True)
    console.print(f"wrote {summary.results_path} and {summary.log_path}", highlight=False)
