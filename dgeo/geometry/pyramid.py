"""Feature pyramids: dense maps at several resolutions, with the image-to-level pixel transform.

Every dense extractor in :mod:`dgeo.models` returns a :class:`FeaturePyramid`, and every consumer
(feature-metric refinement, sparse-to-dense matching, the GN-Net losses) samples it through
:meth:`FeaturePyramid.sample` with **image** pixel coordinates, so nobody hand-codes strides.

A level of size ``(h, w)`` computed from an image of size ``(H, W)`` covers the image exactly,
as average pooling, strided convolutions and ``interpolate(align_corners=False)`` do; with the
dgeo pixel convention (top-left pixel centre at (0, 0)) image pixel ``x`` maps to

    x_level = (x + 0.5) * (w / W) - 0.5        (and likewise for y with h / H)

which is ``x / s + (1 / s - 1) / 2`` for a stride ``s = W / w`` that divides the size. The scale
is per axis and exact for sizes that a stride does not divide.

Networks that need sizes divisible by their coarsest stride pad the image on the right and bottom
(pixel coordinates do not change): their levels cover the padded ``canvas_size``, which then sets
the scale, while ``image_size`` stays the real image, and a point is valid only inside both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from dgeo.errors import InputError, ShapeError, require_shape
from dgeo.geometry.sampling import Mode, sample


@dataclass(frozen=True)
class FeatureLevel:
    """One level of a :class:`FeaturePyramid`.

    Attributes:
        features: ``(B, C, h, w)`` dense features.
        confidence: ``(B, 1, h, w)`` per-pixel confidence in [0, 1], or None.
        stride: nominal stride w.r.t. the image (informative; the exact transform uses sizes).
    """

    features: torch.Tensor
    confidence: torch.Tensor | None = None
    stride: float = 1.0

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of the level."""
        return tuple(self.features.shape[-2:])


@dataclass(frozen=True)
class FeaturePyramid:
    """Dense feature maps of a batch of images at several resolutions, finest first.

    Attributes:
        levels: the :class:`FeatureLevel` s, ordered by increasing stride (finest first).
        image_size: ``(H, W)`` of the images the features were computed from.
        canvas_size: ``(H', W')`` the levels cover: the image padded on the right and bottom
            (``None``: ``image_size``, no padding).
    """

    levels: tuple[FeatureLevel, ...]
    image_size: tuple[int, int]
    canvas_size: tuple[int, int] | None = None

    def __post_init__(self):
        levels = tuple(self.levels)
        size = (int(self.image_size[0]), int(self.image_size[1]))
        canvas = size if self.canvas_size is None else tuple(int(v) for v in self.canvas_size)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "canvas_size", canvas)
        if canvas[0] < size[0] or canvas[1] < size[1]:
            raise InputError(f"canvas_size {canvas} must contain image_size {size}.")
        if not levels:
            raise InputError("a FeaturePyramid needs at least one level.")
        b = levels[0].features.shape[0]
        for i, lvl in enumerate(levels):
            require_shape(lvl.features, f"level {i} features", last=[None, None, None, None])
            if lvl.features.shape[0] != b:
                raise ShapeError(
                    f"level {i} features have batch {lvl.features.shape[0]}, level 0 has {b}."
                )
            if lvl.confidence is not None and (
                lvl.confidence.shape != (b, 1, *lvl.size)
                or lvl.confidence.device != lvl.features.device
            ):
                raise ShapeError(
                    f"level {i} confidence must be (B, 1, h, w) = {(b, 1, *lvl.size)} on "
                    f"{lvl.features.device}, got {tuple(lvl.confidence.shape)}."
                )

    @classmethod
    def from_maps(
        cls,
        maps: Sequence[torch.Tensor],
        image_size: tuple[int, int],
        confidences: Sequence[torch.Tensor | None] | None = None,
        canvas_size: tuple[int, int] | None = None,
    ) -> FeaturePyramid:
        """Build from ``(B, C_l, h_l, w_l)`` maps (any order; sorted finest first)."""
        confidences = confidences or [None] * len(maps)
        if len(confidences) != len(maps):
            raise InputError(f"got {len(maps)} maps but {len(confidences)} confidences.")
        width = (canvas_size or image_size)[1]
        levels = [
            FeatureLevel(m, c, stride=width / m.shape[-1])
            for m, c in zip(maps, confidences, strict=True)
        ]
        levels.sort(key=lambda lvl: lvl.stride)
        return cls(tuple(levels), image_size, canvas_size)

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, index: int) -> FeatureLevel:
        return self.levels[index]

    @property
    def batch_size(self) -> int:
        return self.levels[0].features.shape[0]

    @property
    def strides(self) -> list[float]:
        return [lvl.stride for lvl in self.levels]

    @property
    def channels(self) -> list[int]:
        return [lvl.features.shape[1] for lvl in self.levels]

    @property
    def device(self) -> torch.device:
        return self.levels[0].features.device

    def scale(self, level: int) -> torch.Tensor:
        """``(2,)`` per-axis factor ``(w / W, h / H)`` from image to level pixels."""
        lvl = self.levels[level]
        h, w = lvl.size
        H, W = self.canvas_size
        return lvl.features.new_tensor([w / W, h / H])

    def to_level(self, uv: torch.Tensor, level: int) -> torch.Tensor:
        """Image pixels ``(..., 2)`` to pixels of ``level`` (integer input gives floats)."""
        uv = uv if uv.is_floating_point() else uv.to(self.levels[level].features.dtype)
        return (uv + 0.5) * self.scale(level).to(uv.dtype) - 0.5

    def to_image(self, uv: torch.Tensor, level: int) -> torch.Tensor:
        """Pixels ``(..., 2)`` of ``level`` to image pixels (integer input gives floats)."""
        uv = uv if uv.is_floating_point() else uv.to(self.levels[level].features.dtype)
        return (uv + 0.5) / self.scale(level).to(uv.dtype) - 0.5

    def sample(
        self,
        uv: torch.Tensor,
        level: int,
        mode: Mode = "bilinear",
        return_gradients: bool = False,
        gradient_map: torch.Tensor | None = None,
    ):
        """Sample a level at image pixels.

        Args:
            uv: ``(B, *, 2)`` image pixel coordinates.
            level: level index.
            mode, gradient_map: as :func:`dgeo.geometry.sample` (``gradient_map`` is the
                level's :func:`~dgeo.geometry.spatial_gradient`, reused across iterations).
            return_gradients: also return gradients w.r.t. the **image** coordinates.
        Returns:
            features ``(B, *, C)``, valid ``(B, *)`` (inside the level's pixel-centre grid and
            the image's), [gradients ``(B, *, C, 2)``], and, if the level has a confidence map,
            confidence ``(B, *)`` last (0 where invalid).
        """
        lvl = self.levels[level]
        uv_l = self.to_level(uv, level)
        out = sample(lvl.features, uv_l, mode, return_gradients, gradient_map)
        if self.canvas_size != self.image_size:  # padding: the real image bounds too
            H, W = self.image_size
            x, y = uv[..., 0], uv[..., 1]
            inside = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
            out = (out[0], out[1] & inside, *out[2:])
        if return_gradients:
            out = (*out[:2], out[2] * self.scale(level).to(out[2].dtype))
        if lvl.confidence is not None:
            conf, _ = sample(lvl.confidence, uv_l, mode)
            out = (*out, torch.where(out[1], conf[..., 0], 0.0))
        return out

    def select(self, index: torch.Tensor | slice | Sequence[int]) -> FeaturePyramid:
        """The pyramid of a subset of the batch (any index valid for dim 0)."""
        return self.map(lambda x: x[index])

    def map(self, fn) -> FeaturePyramid:
        """Apply ``fn`` to every features and confidence tensor (e.g. ``.to``, ``.detach``)."""
        levels = tuple(
            replace(
                lvl,
                features=fn(lvl.features),
                confidence=None if lvl.confidence is None else fn(lvl.confidence),
            )
            for lvl in self.levels
        )
        return FeaturePyramid(levels, self.image_size, self.canvas_size)

    def to(self, *args, **kwargs) -> FeaturePyramid:
        return self.map(lambda x: x.to(*args, **kwargs))

    def detach(self) -> FeaturePyramid:
        return self.map(torch.Tensor.detach)
