"""The ``dgeo demo`` job: batched robust pose refinement of every image of a synthetic COLMAP scene.

Until the full localization pipeline lands, the demo exercises what is built end to end: a COLMAP
model is synthesised by pycolmap and written to disk, loaded back as a :class:`ReferenceMap`;
every image becomes a query whose 2D-3D observations get pixel noise and gross outliers; all
queries start from perturbed poses and are refined in **one** batched robust Levenberg-Marquardt
call; results are written in the hloc format and evaluated against the model's poses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from dgeo.errors import InputError
from dgeo.eval import EvalResult, evaluate
from dgeo.geometry import Pose
from dgeo.io.colmap import ReferenceMap, load_reference_map, synthesize_reference_map
from dgeo.io.formats import write_hloc_results
from dgeo.optim import LMOptions, ReprojectionResidual, get_kernel, minimize


@dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`run_demo`.

    Attributes:
        num_images: images in the synthetic scene (each one is a query).
        num_points: 3D points in the scene.
        camera_model: COLMAP model of the synthetic cameras.
        rotation_noise_deg, translation_noise: magnitude of the initial pose perturbation.
        pixel_noise: standard deviation of the Gaussian noise on the 2D observations, pixels.
        outlier_ratio: share of observations replaced by uniformly random pixels.
        kernel, kernel_scale: robust kernel of the refinement and its scale in pixels.
        iterations: maximum LM iterations.
        seed: seed of pycolmap's synthesis and of the noise.
        device: torch device of the refinement.
        dtype: float64 or float32.
    """

    num_images: int = 64
    num_points: int = 800
    camera_model: str = "OPENCV"
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
    num_observations: int
    seconds_refine: float
    iterations: torch.Tensor
    files: dict[str, Path]


def _noisy_queries(ref: ReferenceMap, cfg: DemoConfig, gen: torch.Generator):
    """Padded observations ``(B, N, 2)``, ``(B, N, 3)``, mask ``(B, N)`` with noise and outliers."""
    obs = [ref.observations(i)[:2] for i in range(ref.num_images)]
    uv = pad_sequence([o[0] for o in obs], batch_first=True)
    xyz = pad_sequence([o[1] for o in obs], batch_first=True)
    lengths = torch.tensor([len(o[0]) for o in obs])
    mask = torch.arange(uv.shape[1])[None] < lengths[:, None]
    uv = uv + cfg.pixel_noise * torch.randn(uv.shape, generator=gen, dtype=uv.dtype)
    size = ref.cameras.size[:, None, :].to(uv.dtype)
    random_uv = torch.rand(uv.shape, generator=gen, dtype=uv.dtype) * size - 0.5
    outlier = torch.rand(mask.shape, generator=gen) < cfg.outlier_ratio
    return torch.where(outlier[..., None], random_uv, uv), xyz, mask


def _perturb(poses: Pose, cfg: DemoConfig, gen: torch.Generator) -> Pose:
    """Rotate each pose by ``rotation_noise_deg`` about a random axis, move its centre by
    ``translation_noise`` in a random direction."""
    b = poses.shape[0]
    axes = torch.nn.functional.normalize(
        torch.randn(b, 3, generator=gen, dtype=poses.dtype), dim=-1
    )
    dirs = torch.nn.functional.normalize(
        torch.randn(b, 3, generator=gen, dtype=poses.dtype), dim=-1
    )
    rot = Pose.from_axis_angle(axes * math.radians(cfg.rotation_noise_deg), torch.zeros_like(axes))
    world_from_cam = poses.inv()
    moved = Pose.from_Rt(world_from_cam.R, world_from_cam.t + cfg.translation_noise * dirs)
    return rot @ moved.inv()


def run_demo(
    out_dir: str | Path,
    config: DemoConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the demo and write its files into ``out_dir``.

    Writes ``sfm/`` (the synthetic COLMAP model), ``ground_truth.txt``, ``results_initial.txt``
    and ``results.txt`` (hloc format, world-to-camera).

    Args:
        out_dir: output folder (created).
        config: :class:`DemoConfig`.
        progress: called with a short message as each stage starts.
    Returns:
        :class:`DemoResult`.
    """
    cfg = config or DemoConfig()
    if not 0 <= cfg.outlier_ratio < 1:
        raise InputError(f"outlier_ratio must be in [0, 1), got {cfg.outlier_ratio}.")
    if cfg.num_images < 1 or cfg.num_points < 10:
        raise InputError("the demo needs at least 1 image and 10 points.")
    say = progress or (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"model": out / "sfm"}

    say("synthesising a COLMAP scene with pycolmap")
    synth = synthesize_reference_map(
        cfg.num_images, cfg.num_points, camera_model=cfg.camera_model, seed=cfg.seed
    )
    synth.write(files["model"])
    ref = load_reference_map(files["model"])

    say("adding noise and outliers to the 2D-3D observations")
    gen = torch.Generator().manual_seed(cfg.seed)
    uv, xyz, mask = _noisy_queries(ref, cfg, gen)
    gt = ref.cam_from_world
    init = _perturb(gt, cfg, gen)

    say(f"refining {ref.num_images} poses in one batched LM call")
    device, dtype = torch.device(cfg.device), cfg.dtype
    residual = ReprojectionResidual(
        xyz.to(device, dtype), uv.to(device, dtype), ref.cameras.to(device, dtype)
    )
    options = LMOptions(max_iterations=cfg.iterations)
    kernel = get_kernel(cfg.kernel, cfg.kernel_scale)
    start = time.perf_counter()
    result = minimize(
        residual, init.to(device, dtype), mask=mask.to(device), kernel=kernel, options=options
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    refined = result.x.to("cpu", torch.float64)

    say("writing results and evaluating")
    files["ground_truth"] = write_hloc_results(out / "ground_truth.txt", ref.names, gt)
    files["initial"] = write_hloc_results(out / "results_initial.txt", ref.names, init)
    files["results"] = write_hloc_results(out / "results.txt", ref.names, refined)
    truth = (ref.names, gt)
    return DemoResult(
        initial=evaluate((ref.names, init), truth, "robotcar"),
        refined=evaluate((ref.names, refined), truth, "robotcar"),
        num_queries=ref.num_images,
        num_observations=int(mask.sum()),
        seconds_refine=seconds,
        iterations=result.iterations.cpu(),
        files=files,
    )
