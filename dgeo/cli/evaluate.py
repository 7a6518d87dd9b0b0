"""``dgeo evaluate``: recalls and median errors of a results file against ground truth."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from dgeo.cli.main import app
from dgeo.errors import InputError, require_file
from dgeo.eval.metrics import THRESHOLD_SETS, evaluate
from dgeo.eval.report import print_report, write_json
from dgeo.geometry.pose import Pose
from dgeo.io.colmap import load_reference_map
from dgeo.io.formats import read_hloc_results, read_queries_with_intrinsics

console = Console()


def load_ground_truth(path: Path) -> tuple[list[str], Pose]:
    """Ground-truth names and ``cam_from_world`` poses ``(N,)`` from a COLMAP model folder
    (every registered image), a KFNet sequence folder (``image_list.txt`` with ``poses.txt`` or
    7-Scenes ``.pose.txt`` files, the names ``dgeo localize-sequence`` writes) or an hloc
    results-format file."""
    path = require_file(path, "ground truth")
    if path.is_dir() and (path / "image_list.txt").is_file():
        from dgeo.data.sequences import read_sequence_poses

        return read_sequence_poses(path)
    if path.is_dir():
        ref = load_reference_map(path)
        return list(ref.names), ref.cam_from_world
    return read_hloc_results(path)


def restrict_to_queries(names: list[str], poses: Pose, queries: Path) -> tuple[list[str], Pose]:
    """Keep the ground-truth entries named in an hloc ``queries_with_intrinsics.txt`` file."""
    wanted, _ = read_queries_with_intrinsics(queries)
    index = {n: i for i, n in enumerate(names)}
    absent = [n for n in wanted if n not in index]
    if absent:
        raise InputError(
            f"{len(absent)} quer{'y' if len(absent) == 1 else 'ies'} of {queries} "
            f"{'is' if len(absent) == 1 else 'are'} not in the ground truth "
            f"(e.g. {absent[0]!r}); the ground truth must hold every listed query."
        )
    keep = [index[n] for n in wanted]
    return wanted, poses[keep]


HELP = (
    "Recall at position/rotation thresholds and median errors of estimated poses.\n\n"
    "Every ground-truth query counts: one missing from RESULTS, or with a non-finite pose, is a "
    "failure (infinite position error, 180°). Results that match no ground-truth query are "
    "listed in a warning.\n\n"
    "Names are compared exactly; if no name matches exactly, they are compared by basename (the "
    "part after the last '/'), so 'night/123.jpg' meets '123.jpg'.\n\n"
    "Errors: the angle of R_gt^T R, and the distance between the camera centres c = -R^T t. A "
    "query is within (m, °) when both errors are at most the thresholds. Medians are true "
    "medians (failures included).\n\n"
    "Examples:\n\n"
    "    dgeo evaluate results.txt sfm_ground_truth/\n\n"
    "    dgeo evaluate results.txt ground_truth.txt --thresholds 7scenes\n\n"
    "    dgeo evaluate results.txt gt.txt -t hloc --group dirname --json eval.json\n\n"
    "    dgeo evaluate results.txt model/ -q queries.txt -t 0.1:5,0.05:5"
)


@app.command("evaluate", help=HELP)
def evaluate_command(
    results: Path = typer.Argument(
        ...,
        help="Estimated poses: hloc results file 'name qw qx qy qz tx ty tz' (world-to-camera).",
    ),
    ground_truth: Path = typer.Argument(
        ...,
        help="Ground truth: a COLMAP model folder (every registered image is a query), a KFNet "
        "sequence folder (image_list.txt with poses.txt or 7-Scenes .pose.txt files) or a file "
        "in the results format.",
    ),
    thresholds: str = typer.Option(
        "robotcar",
        "--thresholds",
        "-t",
        help=f"Threshold set ({', '.join(THRESHOLD_SETS)}) or METRES:DEGREES pairs, "
        "e.g. '0.1:5,0.05:5'.",
    ),
    group: str | None = typer.Option(
        None,
        "--group",
        "-g",
        help="'dirname': one row per folder of the query names (e.g. night/, day/).",
    ),
    queries: Path | None = typer.Option(
        None,
        "--queries",
        "-q",
        help="Evaluate only the queries of this hloc queries_with_intrinsics.txt file (for a "
        "COLMAP model that also holds database images).",
    ),
    match: str = typer.Option(
        "auto", help="Name matching: auto (exact, else by basename), exact or basename."
    ),
    json_out: Path | None = typer.Option(
        None, "--json", help="Also write the summary and per-query errors to this JSON file."
    ),
) -> None:
    """Evaluate RESULTS against GROUND_TRUTH and print the recall table (see :data:`HELP`).

    Raises:
        DgeoError: missing or malformed files, unknown options, no common query names; the
            entry point prints it as one line and exits with code 2.
    """
    if group not in (None, "none", "dirname"):
        raise InputError(f"unknown --group {group!r}; use 'dirname' or 'none'.")
    if match not in ("auto", "exact", "basename"):
        raise InputError(f"unknown --match {match!r}; use 'auto', 'exact' or 'basename'.")
    names, poses = read_hloc_results(results)
    if not names:
        raise InputError(f"results file {results} holds no pose; nothing to evaluate.")
    gt_names, gt_poses = load_ground_truth(ground_truth)
    if queries is not None:
        gt_names, gt_poses = restrict_to_queries(gt_names, gt_poses, queries)
    result = evaluate(
        (names, poses),
        (gt_names, gt_poses),
        thresholds,
        group_by="dirname" if group == "dirname" else None,
        match=match,  # type: ignore[arg-type]
    )
    print_report(result, console, title=f"{results.name} vs {ground_truth.name}: recall (%)")
    if json_out is not None:
        write_json(result, json_out)
        console.print(f"wrote {json_out}", highlight=False)
