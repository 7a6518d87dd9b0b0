"""The ``dgeo demo`` job: localize the queries of the built-in synthetic world, end to end.

The demo is the whole mission on data that ships with dgeo: it renders a street (or room)
dataset as ``dgeo synth`` does (references under an overcast sky with a COLMAP model of their
SIFT keypoints lifted with exact depth; queries under day, night, weather and season
conditions), reads it back through the same file formats as real data, localizes every query
with the default :class:`~dgeo.pipeline.localizer.Localizer` (the shipped U-Net's features,
retrieval, sparse-to-dense matching, LO-RANSAC, feature-metric refinement), writes hloc
results, evaluates them against the rendered ground truth per condition, and draws a top-down
plot of the map with the true and estimated query poses.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dgeo.data.synthetic.conditions import CONDITION_NAMES
from dgeo.data.synthetic.dataset import SynthConfig, write_dataset
from dgeo.errors import InputError
from dgeo.eval import EvalResult, evaluate
from dgeo.geometry import Pose
from dgeo.io.colmap import load_reference_map
from dgeo.io.formats import read_hloc_results, read_queries_with_intrinsics, write_hloc_results
from dgeo.io.images import read_image
from dgeo.pipeline.localizer import LocalizationResult, Localizer, LocalizerConfig
from dgeo.viz import plot_localization

STAGES = ("extract", "retrieve", "match", "ransac", "refine")
QUICK_CONDITIONS = ("overcast-reference", "night", "snow")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`run_demo`.

    Attributes:
        scene: ``"street"`` or ``"room"``.
        references: mapping images.
        queries: query images per condition.
        conditions: query conditions (default: all ten, ``overcast-reference`` first).
        width, height: image size.
        seed: seed of the world.
        device: torch device of the localizer (``None``: CUDA when available).
        localizer: :class:`LocalizerConfig` (default: dgeo's defaults, the shipped U-Net).
        batch: queries localized per batch.
    """

    scene: str = "street"
    references: int = 24
    queries: int = 4
    conditions: tuple[str, ...] = CONDITION_NAMES
    width: int = 320
    height: int = 240
    seed: int = 0
    device: str | None = "cpu"
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
    batch: int = 8

    @classmethod
    def quick(cls, **changes) -> DemoConfig:
        """A run of well under a minute on a CPU: the same world, queries under three conditions
        (overcast, night, snow) instead of ten."""
        settings: dict = dict(conditions=QUICK_CONDITIONS)
        settings.update(changes)
        return cls(**settings)


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        evaluation: errors and recalls against the ground truth, grouped by condition.
        results: one :class:`LocalizationResult` per query, in query order.
        num_references, num_points3D: the map.
        seconds_render: rendering and mapping. seconds_index: extracting the references.
        seconds_localize: localizing every query.
        stage_seconds: mean seconds per query of each localizer stage.
        files: ``data`` (the dataset), ``results`` (hloc results), ``plot`` (PNG).
    """

    evaluation: EvalResult
    results: list[LocalizationResult]
    num_references: int
    num_points3D: int
    seconds_render: float
    seconds_index: float
    seconds_localize: float
    stage_seconds: dict[str, float]
    files: dict[str, Path]

    @property
    def num_queries(self) -> int:
        return len(self.results)


def _condition(name: str) -> str:
    """``queries/night/q_0000.png`` -> ``night``."""
    return posixpath.basename(posixpath.dirname(name)) or "."


def run_demo(
    out_dir: str | Path,
    config: DemoConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
) -> DemoResult:
    """Run the demo and write its files into ``out_dir``.

    Writes ``data/`` (the rendered dataset, see ``dgeo synth``), ``results.txt`` (hloc format,
    world-to-camera) and ``localization.png`` (the top-down plot).

    Args:
        out_dir: output folder (created).
        config: :class:`DemoConfig`.
        progress: ``progress(stage, done, total)``, called as stages advance.
        overwrite: replace an existing dataset in ``out_dir/data``.
    Returns:
        :class:`DemoResult`.
    """
    cfg = config or DemoConfig()
    if cfg.queries < 1:
        raise InputError(f"the demo needs at least 1 query per condition, got {cfg.queries}.")
    if cfg.batch < 1:
        raise InputError(f"batch must be at least 1, got {cfg.batch}.")
    report = progress or (lambda *_: None)
    out = Path(out_dir)
    data = out / "data"
    start = time.perf_counter()
    write_dataset(
        data,
        SynthConfig(
            scene=cfg.scene, seed=cfg.seed, references=cfg.references, queries=cfg.queries,
            conditions=tuple(cfg.conditions), width=cfg.width, height=cfg.height,
        ),
        overwrite=overwrite,
        progress=report,
    )  # fmt: skip
    seconds_render = time.perf_counter() - start

    ref = load_reference_map(data / "sfm")
    start = time.perf_counter()
    localizer = Localizer(
        ref, data / "images", cfg.localizer, device=cfg.device,
        progress=lambda done: report("extracting references", done, ref.num_images),
    )  # fmt: skip
    seconds_index = time.perf_counter() - start

    names, cams = read_queries_with_intrinsics(data / "queries_with_intrinsics.txt")
    gt_names, gt = read_hloc_results(data / "queries_gt.txt")
    results: list[LocalizationResult] = []
    start = time.perf_counter()
    report("localizing", 0, len(names))
    for s in range(0, len(names), cfg.batch):
        batch = names[s : s + cfg.batch]
        images = [read_image(data / "images" / n) for n in batch]
        results += localizer.localize_many(batch, images, [cams[s + i] for i in range(len(batch))])
        report("localizing", len(results), len(names))
    seconds_localize = time.perf_counter() - start

    poses = Pose.stack([r.pose for r in results])
    files = {"data": data, "results": write_hloc_results(out / "results.txt", names, poses)}
    evaluation = evaluate(
        (names, poses), (gt_names, gt), "robotcar", group_by={n: _condition(n) for n in gt_names}
    )
    gt_by_name = dict(zip(gt_names, range(len(gt_names)), strict=True))
    true = Pose(gt.data[[gt_by_name[n] for n in names]])
    files["plot"] = out / "localization.png"
    recall = evaluation.recall[0]
    plot_localization(
        ref.xyz, true, poses, reference_poses=ref.cam_from_world,
        success=[r.success for r in results],
        title=f"dgeo demo: {len(names)} queries, {len(cfg.conditions)} conditions, "
              f"{100 * recall:.0f}% within 0.25 m / 2 deg",
        path=files["plot"],
    )  # fmt: skip
    stage = {k: sum(r.timings.get(k, 0.0) for r in results) / len(results) for k in STAGES}
    return DemoResult(
        evaluation=evaluation, results=results, num_references=ref.num_images,
        num_points3D=ref.num_points, seconds_render=seconds_render, seconds_index=seconds_index,
        seconds_localize=seconds_localize, stage_seconds=stage, files=files,
    )  # fmt: skip
