"""The ``dgeo demo`` job: the built-in synthetic world, end to end, in about a minute on a CPU.

Until the full localization pipeline lands, the demo runs what is built on the built-in world:
it renders a street (or room) dataset with ``dgeo synth`` (references with a COLMAP model from
SIFT keypoints lifted with exact depth, queries under day/night/season conditions), reads it back
through the same file formats as real data, gives every query its true 2D-3D matches with the
model (visibility from the query's depth) corrupted by pixel noise and gross outliers, starts
every query from a perturbed pose and refines all of them in **one** batched robust
Levenberg-Marquardt call, then writes hloc results and evaluates them against the ground truth.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from dgeo.data.synthetic.dataset import SynthConfig, write_dataset
from dgeo.data.synthetic.mapping import visible_points
from dgeo.errors import InputError
from dgeo.eval import EvalResult, evaluate
from dgeo.geometry import Camera, Pose
from dgeo.io.colmap import load_reference_map
from dgeo.io.formats import read_hloc_results, read_queries_with_intrinsics, write_hloc_results
from dgeo.optim import LMOptions, ReprojectionResidual, get_kernel, minimize


@dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`run_demo`.

    Attributes:
        scene: ``"street"`` or ``"room"``.
        references: mapping images.
        queries: query images per condition.
        conditions: query conditions.
        width, height: image size.
        rotation_noise_deg, translation_noise: magnitude of the initial pose perturbation.
        pixel_noise: standard deviation of the Gaussian noise on the 2D observations, pixels.
        outlier_ratio: share of observations replaced by uniformly random pixels.
        kernel, kernel_scale: robust kernel of the refinement and its scale in pixels.
        iterations: maximum LM iterations.
        seed: seed of the world and of the noise.
        device: torch device of the refinement.
        dtype: float64 or float32.
    """

    scene: str = "street"
    references: int = 24
    queries: int = 8
    conditions: tuple[str, ...] = ("night", "snow", "dusk")
    width: int = 320
    height: int = 240
    rotation_noise_deg: float = 12.0
    translation_noise: float = 0.5
    pixel_noise: float = 1.0
    outlier_ratio: float = 0.2
    kernel: str = "cauchy"
    kernel_scale: float = 4.0
    iterations: int = 50
    seed: int = 0
    device: str = "cpu"
    dtype: torch.dtype = torch.float64


@dataclass
class DemoResult:
    """What :func:`run_demo` produced: evaluations before and after refinement, timings, files."""

    initial: EvalResult
    refined: EvalResult
    num_queries: int
    num_points3D: int
    num_observations: int
    seconds_render: float
    seconds_refine: float
    iterations: torch.Tensor
    files: dict[str, Path]


def _true_matches(data: Path, names: list[str], cams: Camera, gt: Pose):
    """Each query's visible model points: padded ``(B, N, 2)``, ``(B, N, 3)`` and mask."""
    ref = load_reference_map(data / "sfm")
    uvs, xyzs = [], []
    for i, name in enumerate(names):
        depth = torch.from_numpy(np.load((data / "depth" / name).with_suffix(".npy")))
        uv, xyz = visible_points(ref, cams[i], gt[i], depth[None])
        uvs.append(uv)
        xyzs.append(xyz)
    lengths = torch.tensor([len(u) for u in uvs])
    uv = pad_sequence(uvs, batch_first=True)
    mask = torch.arange(uv.shape[1])[None] < lengths[:, None]
    return uv, pad_sequence(xyzs, batch_first=True), mask, ref.num_points


def _corrupt(uv, mask, size, cfg: DemoConfig, gen: torch.Generator) -> torch.Tensor:
    """Pixel noise on every observation, uniformly random pixels for ``outlier_ratio`` of them."""
    uv = uv + cfg.pixel_noise * torch.randn(uv.shape, generator=gen, dtype=uv.dtype)
    random_uv = torch.rand(uv.shape, generator=gen, dtype=uv.dtype) * size - 0.5
    outlier = torch.rand(mask.shape, generator=gen) < cfg.outlier_ratio
    return torch.where(outlier[..., None], random_uv, uv)


def _perturb(poses: Pose, cfg: DemoConfig, gen: torch.Generator) -> Pose:
    """Rotate each pose by ``rotation_noise_deg`` about a random axis, move its centre by
    ``translation_noise`` in a random direction."""
    b = poses.shape[0]
    axes, dirs = torch.nn.functional.normalize(
        torch.randn(2, b, 3, generator=gen, dtype=poses.dtype), dim=-1
    )
    rot = Pose.from_axis_angle(axes * math.radians(cfg.rotation_noise_deg), torch.zeros_like(axes))
    world_from_cam = poses.inv()
    moved = Pose.from_Rt(world_from_cam.R, world_from_cam.t + cfg.translation_noise * dirs)
    return rot @ moved.inv()


def run_demo(
    out_dir: str | Path,
    config: DemoConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
) -> DemoResult:
    """Run the demo and write its files into ``out_dir``.

    Writes ``data/`` (the rendered dataset, see ``dgeo synth``), ``results_initial.txt`` and
    ``results.txt`` (hloc format, world-to-camera).

    Args:
        out_dir: output folder (created).
        config: :class:`DemoConfig`.
        progress: ``progress(stage, done, total)``, called as stages advance.
        overwrite: replace an existing dataset in ``out_dir/data``.
    Returns:
        :class:`DemoResult`.
    """
    cfg = config or DemoConfig()
    if not 0 <= cfg.outlier_ratio < 1:
        raise InputError(f"outlier_ratio must be in [0, 1), got {cfg.outlier_ratio}.")
    if cfg.queries < 1:
        raise InputError(f"the demo needs at least 1 query per condition, got {cfg.queries}.")
    report = progress or (lambda *_: None)
    out = Path(out_dir)
    data = out / "data"
    start = time.perf_counter()
    write_dataset(
        data,
        SynthConfig(
            scene=cfg.scene,
            seed=cfg.seed,
            references=cfg.references,
            queries=cfg.queries,
            conditions=cfg.conditions,
            width=cfg.width,
            height=cfg.height,
        ),
        overwrite=overwrite,
        progress=report,
    )
    seconds_render = time.perf_counter() - start

    report("matching queries to the model", 0, 1)
    names, cams = read_queries_with_intrinsics(data / "queries_with_intrinsics.txt")
    gt_names, gt = read_hloc_results(data / "queries_gt.txt")
    uv, xyz, mask, num_points = _true_matches(data, names, cams, gt)
    gen = torch.Generator().manual_seed(cfg.seed)
    uv = _corrupt(uv, mask, cams.size[:, None, :].to(uv.dtype), cfg, gen)
    init = _perturb(gt, cfg, gen)

    report(f"refining {len(names)} poses in one batched LM call", 0, 1)
    device, dtype = torch.device(cfg.device), cfg.dtype
    residual = ReprojectionResidual(
        xyz.to(device, dtype), uv.to(device, dtype), cams.to(device, dtype)
    )
    kernel = get_kernel(cfg.kernel, cfg.kernel_scale)
    start = time.perf_counter()
    result = minimize(
        residual,
        init.to(device, dtype),
        mask=mask.to(device),
        kernel=kernel,
        options=LMOptions(max_iterations=cfg.iterations),
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds_refine = time.perf_counter() - start
    refined = result.x.to("cpu", torch.float64)

    files = {"data": data}
    files["initial"] = write_hloc_results(out / "results_initial.txt", names, init)
    files["results"] = write_hloc_results(out / "results.txt", names, refined)
    truth = (gt_names, gt)
    return DemoResult(
        initial=evaluate((names, init), truth, "robotcar", group_by="dirname"),
        refined=evaluate((names, refined), truth, "robotcar", group_by="dirname"),
        num_queries=len(names),
        num_points3D=num_points,
        num_observations=int(mask.sum()),
        seconds_render=seconds_render,
        seconds_refine=seconds_refine,
        iterations=result.iterations.cpu(),
        files=files,
    )
