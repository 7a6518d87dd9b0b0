"""Random absolute-pose problems with exact ground truth, for tests and benchmarks.

The 2D-3D analogue of ``pycolmap.synthesize_dataset``: random cameras look at random points,
observations get Gaussian pixel noise and a share of uniformly random outliers, and every
problem carries its ground-truth pose and a perturbed starting pose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dgeo.errors import InputError
from dgeo.geometry import Camera, Pose


@dataclass
class PnPProblems:
    """``B`` absolute-pose problems of ``N`` correspondences each.

    Attributes:
        camera: :class:`Camera` ``(B,)``.
        points2D: ``(B, N, 2)`` observed pixels (noise and outliers included).
        points3D: ``(B, N, 3)`` world points.
        inlier: ``(B, N)`` bool, False for the outliers.
        gt: ground-truth ``cam_from_world`` :class:`Pose` ``(B,)`` (float64).
        start: ``gt`` rotated by ``angle_deg`` about a random axis and moved by ``shift``.
        depth: ``(B,)`` median depth of the points (metres), for relative position errors.
    """

    camera: Camera
    points2D: torch.Tensor
    points3D: torch.Tensor
    inlier: torch.Tensor
    gt: Pose
    start: Pose
    depth: torch.Tensor


def random_pnp_problems(
    num: int,
    num_points: int,
    *,
    outlier_ratio: float = 0.0,
    noise: float = 1.0,
    angle_deg: float = 20.0,
    shift: float = 1.0,
    model: str = "PINHOLE",
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> PnPProblems:
    """Random PnP problems: focal 450-600 px, principal point near the centre (PINHOLE, or
    SIMPLE_RADIAL with k = -0.08, about 12 px at the corners of 640x480), points 2-10 m deep
    in front of a camera at a random pose, Gaussian noise of ``noise`` px on the observations and
    ``round(outlier_ratio * num_points)`` of them replaced by uniform random pixels.

    Everything is drawn in float64 from one seeded generator, then cast to ``dtype`` (poses stay
    float64).
    """
    if not 0 <= outlier_ratio <= 1:
        raise InputError(f"outlier_ratio must be in [0, 1], got {outlier_ratio}.")
    if model not in ("PINHOLE", "SIMPLE_RADIAL"):
        raise InputError(f"model must be PINHOLE or SIMPLE_RADIAL, got {model!r}.")
    B, N = num, num_points
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def rand(*s: int) -> torch.Tensor:
        return torch.rand(*s, generator=g, dtype=f64)

    def randn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g, dtype=f64)

    f = 450 + 150 * rand(B, 1)
    c = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=f64) + 10 * randn(B, 2)
    if model == "PINHOLE":
        cam = Camera("PINHOLE", width, height, torch.cat([f, f, c], -1))
    else:
        cam = Camera(
            "SIMPLE_RADIAL", width, height, torch.cat([f, c, torch.full_like(f, -0.08)], -1)
        )
    size = torch.tensor([width - 1.0, height - 1.0], dtype=f64)
    uv = rand(B, N, 2) * size
    depth = 2 + 8 * rand(B, N, 1)
    gt = Pose.from_axis_angle(math.pi * (2 * rand(B, 3) - 1), 3 * randn(B, 3))
    X = gt.inv().transform(cam.unproject(uv) * depth)
    uv = uv + noise * randn(B, N, 2)
    k = round(outlier_ratio * N)
    idx = torch.argsort(rand(B, N), dim=1)[:, :k]
    uv = uv.scatter(1, idx[..., None].expand(-1, -1, 2), rand(B, k, 2) * size)
    inlier = torch.ones(B, N, dtype=torch.bool).scatter(1, idx, False)
    axis = torch.nn.functional.normalize(randn(B, 3), dim=-1)
    direction = torch.nn.functional.normalize(randn(B, 3), dim=-1)
    start = Pose.from_axis_angle(axis * math.radians(angle_deg), shift * direction) @ gt
    return PnPProblems(
        camera=cam.to(dtype=dtype),
        points2D=uv.to(dtype),
        points3D=X.to(dtype),
        inlier=inlier,
        gt=gt,
        start=start,
        depth=depth[..., 0].median(-1).values,
    )
