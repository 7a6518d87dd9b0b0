"""Rendered views of the synthetic world: anti-aliased images under a condition, exact geometry.

Colour is ray-cast and shaded at ``supersample`` times the resolution (``Camera.scale``, so every
sub-pixel keeps dgeo's pixel-centre convention) and box-filtered back, then finished (exposure,
tone mapping, precipitation, sensor noise) at the final size. Depth, normals, world points and
validity come from a separate pass through the exact pixel centres, so they are ground truth for
every pixel and identical under every condition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dgeo.data.synthetic.appearance import finish, shade
from dgeo.data.synthetic.conditions import get_condition
from dgeo.data.synthetic.render import raycast
from dgeo.data.synthetic.scene import Scene
from dgeo.errors import InputError
from dgeo.geometry import Camera, Pose


@dataclass
class Views:
    """``B`` rendered views of ``H x W`` pixels.

    Attributes:
        rgb: ``(B, 3, H, W)`` float32 images in ``[0, 1]``.
        depth: ``(B, 1, H, W)`` z-depth in metres, 0 where nothing was hit (sky).
        valid: ``(B, 1, H, W)`` bool, a surface was hit at the pixel centre.
        points: ``(B, 3, H, W)`` world coordinates of the pixel-centre hits.
        normal: ``(B, 3, H, W)`` world unit normals facing the camera.
        surface: ``(B, 1, H, W)`` int64 index of the quad seen at the pixel centre (-1: none).
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor
    points: torch.Tensor
    normal: torch.Tensor
    surface: torch.Tensor

    def uint8(self) -> torch.Tensor:
        """Images as ``(B, H, W, 3)`` uint8 (RGB)."""
        return (self.rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def render_views(
    scene: Scene,
    camera: Camera,
    cam_from_world: Pose,
    condition: str = "overcast-reference",
    seeds: Sequence[int] | torch.Tensor | None = None,
    supersample: int = 2,
) -> Views:
    """Render ``B`` views of ``scene`` under an appearance condition.

    Args:
        scene: the :class:`Scene`.
        camera: a :class:`Camera` of batch shape ``()`` or ``(B,)`` (one image size).
        cam_from_world: :class:`Pose` ``(B,)``.
        condition: a name from :data:`dgeo.data.synthetic.appearance.CONDITIONS`.
        seeds: ``B`` per-view seeds of the random appearance (exposure, noise, rain, snow);
            ``0..B-1`` if ``None``. A view depends only on its own seed, not on its batch.
        supersample: sub-pixels per pixel side for anti-aliasing (1 disables it).
    Returns:
        :class:`Views`.
    """
    if not isinstance(cam_from_world, Pose) or len(cam_from_world.shape) != 1:
        raise InputError("cam_from_world must be a dgeo Pose of batch shape (B,).")
    if supersample < 1:
        raise InputError(f"supersample must be >= 1, got {supersample}.")
    cond = get_condition(condition)
    b = cam_from_world.shape[0]
    seeds = torch.arange(b) if seeds is None else torch.as_tensor(seeds, dtype=torch.int64)
    if seeds.shape != (b,):
        raise InputError(
            f"seeds must hold one seed per view ({b}), got shape {tuple(seeds.shape)}."
        )
    exact = raycast(scene, camera, cam_from_world)
    fine = exact if supersample == 1 else raycast(scene, camera.scale(supersample), cam_from_world)
    radiance = shade(fine, scene, cond, cam_from_world)
    if supersample > 1:
        radiance = F.avg_pool2d(radiance, supersample)
    rgb = finish(radiance, cond, seeds, outdoor=scene.outdoor)
    return Views(
        rgb=rgb,
        depth=exact.depth,
        valid=exact.valid,
        points=exact.points,
        normal=exact.normal,
        surface=exact.quad,
    )
