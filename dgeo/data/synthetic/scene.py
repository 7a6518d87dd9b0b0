"""Data structures of the synthetic world: a scene of textured planar quads, and render buffers.

World frame: metres, ``z`` up (gravity along ``-z``). Cameras follow dgeo's ``cam_from_world``
poses with OpenCV axes (x right, y down, z forward).

A *quad* is the parallelogram ``origin + a * edge_u + b * edge_v`` for ``(a, b)`` in ``[0, 1]^2``;
boxes are six quads, facades and floors one or more. Quads are two-sided. Texture coordinates
are ``(a * repeat_u, b * repeat_v)`` wrapped into ``[0, 1)``, so a texture tiles at a fixed size
in metres whatever the quad's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dgeo.errors import InputError

#: Material kinds the appearance model knows (seasonal shifts act on "vegetation", lamps glow).
MATERIAL_KINDS = (
    "ground",
    "road",
    "sidewalk",
    "facade",
    "window",
    "vegetation",
    "sign",
    "vehicle",
    "pole",
    "lamp",
    "wall",
    "floor",
    "ceiling",
    "furniture",
    "picture",
)


@dataclass
class Scene:
    """A static scene of ``Q`` textured quads, ``M`` materials and ``L`` point lights.

    Attributes:
        kind: ``"street"`` or ``"room"``.
        seed: the seed it was generated from.
        origin, edge_u, edge_v: ``(Q, 3)`` float32 quad geometry (world frame, metres).
        material: ``(Q,)`` int64 index into ``textures``.
        tex_repeat: ``(Q, 2)`` float32 texture repeats along ``edge_u`` and ``edge_v``.
        textures: ``(M, 3, T, T)`` float32 albedo in ``[0, 1]``.
        material_kind: ``M`` names from :data:`MATERIAL_KINDS`.
        light_pos: ``(L, 3)`` float32 point lights (street lamps, ceiling lights).
        light_color: ``(L, 3)`` float32 linear RGB intensity of each light.
        outdoor: rays that hit nothing see the sky (``True``) or black (``False``).
        walkable: ``(2, 3)`` float32 min/max corners of the box where cameras may stand.
        meta: free-form description (street direction and lanes, room size, ...).
    """

    kind: str
    seed: int
    origin: torch.Tensor
    edge_u: torch.Tensor
    edge_v: torch.Tensor
    material: torch.Tensor
    tex_repeat: torch.Tensor
    textures: torch.Tensor
    material_kind: list[str]
    light_pos: torch.Tensor
    light_color: torch.Tensor
    outdoor: bool
    walkable: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        q = self.origin.shape[0]
        for name in ("origin", "edge_u", "edge_v"):
            if tuple(getattr(self, name).shape) != (q, 3):
                raise InputError(f"Scene.{name} must have shape ({q}, 3).")
        if tuple(self.material.shape) != (q,) or tuple(self.tex_repeat.shape) != (q, 2):
            raise InputError(f"Scene.material must be ({q},) and Scene.tex_repeat ({q}, 2).")
        if self.textures.dim() != 4 or self.textures.shape[1] != 3:
            raise InputError("Scene.textures must have shape (M, 3, T, T).")
        if len(self.material_kind) != self.textures.shape[0]:
            raise InputError("Scene.material_kind needs one name per texture.")
        unknown = set(self.material_kind) - set(MATERIAL_KINDS)
        if unknown:
            raise InputError(f"unknown material kinds {sorted(unknown)}; use {MATERIAL_KINDS}.")
        if q and (
            int(self.material.min()) < 0 or int(self.material.max()) >= len(self.material_kind)
        ):
            raise InputError("Scene.material indices must point into Scene.textures.")
        if self.light_pos.shape != self.light_color.shape or self.light_pos.shape[-1:] != (3,):
            raise InputError("Scene.light_pos and Scene.light_color must both be (L, 3).")

    @property
    def num_quads(self) -> int:
        return self.origin.shape[0]

    @property
    def normal(self) -> torch.Tensor:
        """Unit normals ``(Q, 3)`` (``edge_u x edge_v``; quads are two-sided)."""
        return torch.nn.functional.normalize(torch.linalg.cross(self.edge_u, self.edge_v), dim=-1)

    def to(self, device: torch.device | str) -> Scene:
        """The scene with its tensors on ``device``."""
        moved = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()
        }
        return Scene(**moved)


@dataclass
class GBuffer:
    """Per-pixel geometry of ``B`` rendered views of ``H x W`` pixels (ray-casting output).

    Attributes:
        depth: ``(B, 1, H, W)`` z-depth in the camera frame, metres; 0 where nothing was hit.
        valid: ``(B, 1, H, W)`` bool, a quad was hit.
        points: ``(B, 3, H, W)`` world coordinates of the hits (0 where invalid).
        normal: ``(B, 3, H, W)`` world unit normals, flipped to face the camera (0 where invalid).
        albedo: ``(B, 3, H, W)`` texture colour at the hits (0 where invalid).
        material: ``(B, 1, H, W)`` int64 material index, -1 where invalid.
        quad: ``(B, 1, H, W)`` int64 quad index, -1 where invalid.
        ray_dir: ``(B, 3, H, W)`` unit ray directions in the world frame (for the sky).
    """

    depth: torch.Tensor
    valid: torch.Tensor
    points: torch.Tensor
    normal: torch.Tensor
    albedo: torch.Tensor
    material: torch.Tensor
    quad: torch.Tensor
    ray_dir: torch.Tensor
