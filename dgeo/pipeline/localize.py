"""Localize a folder of query images against a COLMAP model: the job behind ``dgeo localize``.

:func:`localize_folder` reads hloc's ``queries_with_intrinsics.txt``, builds a
:class:`~dgeo.pipeline.localizer.Localizer` on the model (its reference index cached on disk),
and hands a ``solve`` callback to :func:`dgeo.pipeline.runs.run_queries`, which batches, resumes,
shards over ``torchrun`` ranks and writes the hloc results with a JSON-lines log. ``solve``
reads a batch's images, checks them against their intrinsics and calls
:meth:`Localizer.localize_many`; a batch that raises is retried one query at a time by
``run_queries``, so a missing, unreadable or wrongly sized image fails only its own query (with
the error as its reason).

Under ``torchrun`` rank 0 builds (and caches) the reference index first while the other ranks
wait, then they load it from the shared cache instead of extracting every reference again.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dgeo.errors import DgeoError, InputError, require_file
from dgeo.geometry import Camera, Pose
from dgeo.io.colmap import ReferenceMap, load_reference_map
from dgeo.io.formats import read_queries_with_intrinsics
from dgeo.io.images import check_image_size, read_image
from dgeo.pipeline.localizer import LocalizationResult, Localizer, LocalizerConfig
from dgeo.pipeline.runs import (
    DistributedContext,
    RunSummary,
    finalize,
    gather_objects,
    init_distributed,
    log_path_for,
    read_log,
    reason_key,
    run_queries,
)

ProgressFn = Callable[[str, int, int], None]
#: Stages of a query's log record, in pipeline order (``read`` is the image file).
STAGES = ("read", "extract", "retrieve", "match", "ransac", "refine")


@dataclass
class LocalizeSummary(RunSummary):
    """:class:`RunSummary` of the run plus the state of the whole results file.

    Attributes:
        failures: ``name -> reason`` of every query of the list whose latest record failed
            (this run's and, with ``resume``, earlier runs').
        localized: queries of the list whose latest record succeeded.
        stage_seconds: median seconds per stage over the queries' records (see :data:`STAGES`;
            ``total`` is the median of their sums).
        reference_seconds: time to build or load the reference index.
        from_cache: the reference index was loaded from ``cache_path``.
        cache_path: the reference cache file (None: not cached).
        device: the torch device the localizer ran on.
        world_size: number of ``torchrun`` processes.
        is_main: this process is rank 0 (the one that reports).
    """

    failures: dict[str, str] = field(default_factory=dict)
    localized: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    reference_seconds: float = 0.0
    from_cache: bool = False
    cache_path: Path | None = None
    device: str = "cpu"
    world_size: int = 1
    is_main: bool = True

    @property
    def all_localized(self) -> bool:
        """Every query of the list has a successful pose."""
        return not self.failures and self.localized == self.total

    def failures_by_reason(self) -> dict[str, int]:
        """Failed queries counted by :func:`~dgeo.pipeline.runs.reason_key`, most frequent
        first."""
        return dict(Counter(reason_key(r) for r in self.failures.values()).most_common())


def default_cache_dir(results_path: str | Path) -> Path:
    """Where the reference cache goes by default: ``dgeo_cache`` next to the results file."""
    return Path(results_path).parent / "dgeo_cache"


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``"auto"``/None: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; ``"cuda"``
    without an index under ``torchrun``: ``cuda:LOCAL_RANK``; anything else as given.

    Raises:
        InputError: an unknown device name, or CUDA asked for but not available.
    """
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but CUDA is not available here.")
        if dev.index is None:
            return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    return dev


def start_distributed(device: str | torch.device | None) -> tuple[DistributedContext, torch.device]:
    """Join the ``torchrun`` process group (if any) and pick this rank's device.

    The backend is always ``gloo``: the ranks only synchronise and exchange small objects, and
    ``nccl`` would fail with more ranks than GPUs (two ranks on one device).
    """
    resolve_device(device)  # check the name before any process group exists
    ctx = init_distributed(backend="gloo")
    return ctx, resolve_device(device, ctx.local_rank)


def read_queries(queries_path: str | Path, images_dir: str | Path) -> tuple[list[str], Camera]:
    """The query names and cameras ``(N,)`` of an hloc ``queries_with_intrinsics.txt``.

    Raises:
        DataFileNotFoundError: no such file or folder.
        InputError: the list is empty, or none of its images is in ``images_dir`` (a wrong
            folder; a few missing images only fail their own queries).
    """
    queries_path = require_file(queries_path, "query list")
    images_dir = require_file(images_dir, "images folder")
    if not images_dir.is_dir():
        raise InputError(f"{images_dir} is a file; pass the folder holding the images.")
    names, cameras = read_queries_with_intrinsics(queries_path)
    if not names:
        raise InputError(f"query list {queries_path} lists no query; nothing to localize.")
    if not any((images_dir / n).is_file() for n in names):
        raise InputError(
            f"none of the {len(names)} queries of {queries_path} is in {images_dir} (e.g. "
            f"{images_dir / names[0]}); pass the folder the query names are relative to."
        )
    return names, cameras


def load_model(model_dir: str | Path) -> ReferenceMap:
    """The reference map of a COLMAP model folder, which must hold 3D points."""
    ref = load_reference_map(model_dir)
    if ref.num_points == 0 or ref.num_images == 0:
        raise InputError(
            f"COLMAP model {model_dir} has {ref.num_images} registered images and "
            f"{ref.num_points} 3D points; a reference model needs both."
        )
    return ref


def build_localizer(
    ref: ReferenceMap,
    images_dir: Path,
    config: LocalizerConfig,
    *,
    device: torch.device,
    cache_dir: Path | None,
    ctx: DistributedContext,
    progress: ProgressFn | None = None,
) -> Localizer:
    """The localizer, on rank 0 first: the others wait and load its reference cache.

    An error on any rank is raised on every rank (the others raise :class:`DgeoError` with its
    message), so no rank waits for ever at the next collective.
    """
    total = ref.num_images

    def report(done: int) -> None:
        if progress is not None:
            progress("extracting references", done, total)

    def build() -> Localizer:
        return Localizer(
            ref, images_dir, config, device=device, cache_dir=cache_dir, progress=report
        )

    if not ctx.is_distributed:
        return build()
    localizer: Localizer | None = None
    error: Exception | None = None

    def attempt() -> None:
        nonlocal localizer, error
        try:
            localizer = build()
        except Exception as e:  # told to the other ranks, then raised here
            error = e

    if ctx.is_main:
        attempt()
    if gather_objects(error is None, ctx)[0] and not ctx.is_main:  # wait for rank 0's cache
        attempt()
    messages = gather_objects(None if error is None else str(error), ctx)
    if error is not None:
        raise error
    for rank, message in enumerate(messages):
        if message is not None:
            raise DgeoError(f"rank {rank} could not build the localizer: {message}")
    assert localizer is not None
    return localizer


def make_solve(
    localizer: Localizer, images_dir: Path, names: list[str], cameras: Camera
) -> Callable[[list[str]], list[tuple[Pose, dict]]]:
    """The ``solve(names)`` of :func:`run_queries`: read, check and localize a batch."""
    index = {n: i for i, n in enumerate(names)}

    def solve(batch: list[str]) -> list[tuple[Pose, dict]]:
        images, cams, read = [], [], []
        for name in batch:
            t = time.perf_counter()
            image = read_image(images_dir / name)
            cam = cameras[index[name]]
            check_image_size(image, cam, name)  # before any extraction of the batch
            images.append(image)
            cams.append(cam)
            read.append(time.perf_counter() - t)
        results = localizer.localize_many(batch, images, cams)
        return [(r.pose, result_record(r, s)) for r, s in zip(results, read, strict=True)]

    return solve


def result_record(result: LocalizationResult, read_seconds: float = 0.0) -> dict:
    """The log record of one query: :meth:`LocalizationResult.record` with the read time."""
    record = result.record()
    record["timings"] = {"read": read_seconds, **record["timings"]}
    return record


def log_state(log_path: Path, names: list[str]) -> tuple[dict[str, str], int, dict[str, float]]:
    """Failures (``name -> reason``), the count localized and median stage seconds of the
    latest records of ``names`` in a run log."""
    latest = {r["name"]: r for r in read_log(log_path)}
    records = [latest[n] for n in names if n in latest]
    failures = {
        r["name"]: str(r.get("reason") or "failed") for r in records if not r.get("success", True)
    }
    stages: dict[str, list[float]] = {}
    totals = []
    for r in records:
        timings = r.get("timings") or {}
        for stage, seconds in timings.items():
            if isinstance(seconds, (int, float)):
                stages.setdefault(stage, []).append(float(seconds))
        if timings:
            totals.append(sum(v for v in timings.values() if isinstance(v, (int, float))))
    order = [s for s in STAGES if s in stages] + sorted(set(stages) - set(STAGES))
    medians = {s: statistics.median(stages[s]) for s in order}
    if totals:
        medians["total"] = statistics.median(totals)
    return failures, len(records) - len(failures), medians


def localize_folder(
    model_dir: str | Path,
    images_dir: str | Path,
    queries_path: str | Path,
    results_path: str | Path,
    config: LocalizerConfig | None = None,
    *,
    batch_size: int = 8,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    device: str | torch.device | None = "auto",
    progress: ProgressFn | None = None,
    ctx: DistributedContext | None = None,
) -> LocalizeSummary:
    """Localize every query of an hloc query list into an hloc results file and its log.

    Args:
        model_dir: a COLMAP model folder (binary or text) with 3D points.
        images_dir: the folder holding the reference images (by the model's names) and the
            query images (by the query list's names).
        queries_path: hloc ``queries_with_intrinsics.txt`` (``name MODEL W H params...``).
        results_path: hloc results (``name qw qx qy qz tx ty tz``, ``cam_from_world``), written
            atomically; its log ``RESULTS.log.jsonl`` gets one JSON record per query (success,
            reason, counts, retrieved and winning references, stage timings).
        config: :class:`LocalizerConfig`.
        batch_size: queries localized together.
        resume: skip the queries already in ``results_path``.
        cache_dir: folder of the reference cache (None: :func:`default_cache_dir`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (see :func:`resolve_device`).
        progress: ``progress(stage, done, total)``, called on rank 0 only.
        ctx: a joined process group (None: join the ``torchrun`` group if there is one, and
            leave it at the end).
    Returns:
        :class:`LocalizeSummary` (the same on every rank; ``is_main`` says which reports).
    Raises:
        DgeoError: bad inputs found before any query runs (missing or empty query list, a
            folder that holds no model or a model without points, no query image in
            ``images_dir``, unreadable reference images); a bad query never raises, it is
            recorded as failed with the error as its reason.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    own = ctx is None
    if own:
        ctx, dev = start_distributed(device)
    else:
        dev = resolve_device(device, ctx.local_rank)
    try:
        config = config or LocalizerConfig()
        results_path = Path(results_path)
        images_dir = Path(images_dir)
        names, cameras = read_queries(queries_path, images_dir)
        ref = load_model(model_dir)
        cache = default_cache_dir(results_path) if cache_dir is None else Path(cache_dir)
        report = progress if progress is not None and ctx.is_main else None
        t = time.perf_counter()
        localizer = build_localizer(
            ref, images_dir, config, device=dev, cache_dir=cache, ctx=ctx, progress=report
        )
        reference_seconds = time.perf_counter() - t
        run = run_queries(
            names, make_solve(localizer, images_dir, names, cameras), results_path,
            batch_size=batch_size, resume=resume, ctx=ctx, progress=report,
            fallback_pose=Pose.identity((), torch.float64), stage="localizing",
        )  # fmt: skip
    finally:
        if own:
            finalize(ctx)
    failures, localized, medians = log_state(run.log_path or log_path_for(results_path), names)
    return LocalizeSummary(
        **vars(run), failures=failures, localized=localized, stage_seconds=medians,
        reference_seconds=reference_seconds, from_cache=localizer.from_cache,
        cache_path=localizer.cache_path, device=str(dev), world_size=ctx.world_size,
        is_main=ctx.is_main,
    )  # fmt: skip
