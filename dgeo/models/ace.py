"""ACE-style scene-coordinate regression on frozen dgeo features (ALGORITHMS 2.11).

ACE (Brachmann et al., 2023) splits a scene-coordinate network into a frozen, scene-agnostic
encoder and a small per-scene head of 1x1 convolutions that is the map. dgeo keeps the split
but takes the encoder from its own dense extractors:

- :func:`encode_cells`: features of any :class:`~dgeo.models.DenseExtractor` (dense SIFT, the
  shipped U-Net of :func:`dgeo.models.default_model`, VGG) sampled at the pixels of the
  stride-8 cells (:func:`dgeo.geometry.cell_pixels`: cell ``(i, j)`` is pixel
  ``(8j + 4, 8i + 4)``, the DSAC*/ACE convention), a hypercolumn of the chosen pyramid levels,
  each L2-normalised: ``(B, C, H / 8, W / 8)``.
- :class:`ACEHead`: ACE's head, 1x1 residual blocks and three output layers, with the
  homogeneous output ``w = softplus_beta(h) + w_min``, ``beta = ln 2 / (1 - w_min)`` (so that
  ``h = 0`` gives ``w = 1``), ``w <= w_max``, ``y = xyz / w + mean``; ``mean`` is the mean of
  the mapping cameras' centres (a buffer). ACE's sizes are ``width=512, blocks=1`` on 512-D
  features; dgeo's CPU default is ``width=256`` (a quarter of the hidden weights), which maps
  the synthetic room to ~1 cm in under 3 CPU-minutes (docs: runs/ace_h4 in the issue report).
- :class:`ACEModel`: extractor (by name and options, frozen) + head, rebuildable from its
  ``config`` (``ACEModel(**model.config)``), saved and loaded by :func:`dgeo.models.save` /
  :func:`dgeo.models.load`. :meth:`ACEModel.predict_world` gives world coordinates per cell and
  a **constant** sigma map (ACE has no uncertainty output; see :meth:`ACEModel.predict_world`).

The 1x1 convolutions are :class:`torch.nn.Linear` layers applied to the channel axis, which is
the same map and lets training run on ``(N, C)`` feature buffers without reshaping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dgeo.errors import InputError, ShapeError
from dgeo.geometry import cell_pixels
from dgeo.models.base import DenseExtractor, check_rgb_images, l2_normalize

#: Extractor name of the shipped U-Net (:func:`dgeo.models.default_model`) in ACEModel configs.
DEFAULT_EXTRACTOR = "default"


def check_cell_image(image: torch.Tensor, stride: int, name: str = "image") -> tuple[int, int]:
    """Check ``image (B, 3, H, W)`` float with ``H, W`` multiples of ``stride``; ``(h, w)`` of the
    cell map.

    Raises:
        ShapeError: wrong rank / channels, or a size that ``stride`` does not divide.
        InputError: not a tensor, or not floating point (:func:`check_rgb_images`).
    """
    check_rgb_images(image, name)
    H, W = image.shape[-2:]
    if H % stride or W % stride:
        raise ShapeError(
            f"{name} is {H}x{W} but scene-coordinate maps need sides that are multiples of "
            f"{stride}; crop or resize to {H - H % stride}x{W - W % stride} (and scale the "
            "camera with Camera.scale / Camera.crop)."
        )
    return H // stride, W // stride


def encode_cells(
    extractor: nn.Module,
    image: torch.Tensor,
    stride: int = 8,
    levels: Sequence[int] | None = None,
) -> torch.Tensor:
    """Frozen dense features at the stride-``stride`` cell pixels, as a hypercolumn.

    Runs ``extractor`` (any :class:`~dgeo.models.DenseExtractor`, without gradients), samples
    every chosen pyramid level bilinearly at the cell pixels ``(stride * j + stride // 2,
    stride * i + stride // 2)`` (:meth:`FeaturePyramid.sample`, image pixel coordinates, so the
    strides of the levels never matter), L2-normalises each level's vector and concatenates.

    Args:
        extractor: the dense extractor (weights on ``image``'s device and dtype).
        image: ``(B, 3, H, W)`` RGB in [0, 1], ``H`` and ``W`` multiples of ``stride``.
        stride: cell size in pixels (8 in dgeo's conventions).
        levels: pyramid levels to use (indices, finest first); None: all.
    Returns:
        ``(B, C, H / stride, W / stride)`` features, ``C`` the sum of the levels' channels,
        in ``image``'s dtype.
    Raises:
        ShapeError, InputError: bad image, sizes not multiples of ``stride``, unknown levels.
    """
    h, w = check_cell_image(image, stride)
    with torch.no_grad():
        pyr = extractor(image)
        chosen = list(range(len(pyr))) if levels is None else [int(v) for v in levels]
        if not chosen or any(not 0 <= v < len(pyr) for v in chosen):
            raise InputError(
                f"levels {levels} must be indices of the extractor's {len(pyr)} pyramid levels."
            )
        uv = cell_pixels(h, w, stride, device=image.device, dtype=image.dtype)
        uv = uv.expand(image.shape[0], h, w, 2)
        parts = []
        for lvl in chosen:
            values = pyr.sample(uv, lvl)[0]  # (B, h, w, C_l)
            parts.append(l2_normalize(values.to(image.dtype), dim=-1))
        return torch.cat(parts, -1).permute(0, 3, 1, 2).contiguous()


def homogeneous_to_euclidean(
    out: torch.Tensor,
    mean: torch.Tensor,
    w_min: float = 0.25,
    w_max: float = 100.0,
    dim: int = -1,
) -> torch.Tensor:
    """ACE's homogeneous output: ``(x, y, z, h)`` along ``dim`` -> ``(x, y, z) / w + mean``.

    ``w = softplus_beta(h) + w_min`` with ``beta = ln 2 / (1 - w_min)`` (``h = 0`` gives
    ``w = 1``), clamped to ``w <= w_max``.

    Args:
        out: raw head outputs with 4 channels along ``dim``.
        mean: ``(3,)`` offset added to the result (the mapping cameras' mean centre).
        w_min, w_max: bounds of ``w`` (ACE: ``1 / 4`` and ``1 / 0.01``).
        dim: the channel dimension of ``out``.
    Returns:
        scene coordinates with 3 channels along ``dim``.
    """
    beta = math.log(2.0) / (1.0 - w_min)
    xyz, h = out.narrow(dim, 0, 3), out.narrow(dim, 3, 1)
    wh = (F.softplus(h, beta=beta) + w_min).clamp(max=w_max)
    shape = [1] * out.dim()
    shape[dim] = 3
    return xyz / wh + mean.to(out.dtype).view(shape)


class ACEHead(nn.Module):
    """ACE's scene-coordinate head: 1x1 residual blocks, three output layers, homogeneous
    output.

    Structure (as ``ace/ace_network.py``): ``res = skip(x) + relu-MLP3(x)`` (skip: identity if
    ``in_channels == width``, else a 1x1 projection); ``blocks`` times ``res = res +
    relu-MLP3(res)``; then ``fc1``, ``fc2`` (ReLU) and ``fc3`` to 4 channels (3 without
    ``homogeneous``), mapped by :func:`homogeneous_to_euclidean` and offset by ``mean``.

    Args:
        in_channels: feature channels ``C``.
        width: channels of the hidden 1x1 layers (ACE: 512).
        blocks: residual blocks after the first (ACE: 1).
        homogeneous: homogeneous output (ACE's default) or plain ``xyz + mean``.
        w_min, w_max: bounds of the homogeneous ``w`` (ACE: 1/4 and 100).
        mean: initial ``mean`` buffer ``(3,)``; set it with :meth:`set_mean`.
    Forward:
        features ``(N, C)`` -> ``(N, 3)`` or ``(B, C, h, w)`` -> ``(B, 3, h, w)`` world metres
        (float32 under float16 / bfloat16 autocast: the homogeneous division and the ``mean``
        offset run in float32).
    """

    def __init__(
        self,
        in_channels: int,
        width: int = 256,
        blocks: int = 1,
        homogeneous: bool = True,
        w_min: float = 0.25,
        w_max: float = 100.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> None:
        super().__init__()
        in_channels, width, blocks = int(in_channels), int(width), int(blocks)
        if in_channels < 1 or width < 1 or blocks < 0:
            raise InputError(
                f"ACEHead needs in_channels >= 1, width >= 1, blocks >= 0; got {in_channels}, "
                f"{width}, {blocks}."
            )
        if not 0 < float(w_min) < 1 < float(w_max):
            raise InputError(f"ACEHead needs 0 < w_min < 1 < w_max, got {w_min}, {w_max}.")
        mean = [float(v) for v in mean]
        if len(mean) != 3:
            raise InputError(f"mean must be 3 numbers, got {mean}.")
        self.in_channels, self.width, self.blocks = in_channels, width, blocks
        self.homogeneous, self.w_min, self.w_max = bool(homogeneous), float(w_min), float(w_max)
        self.skip = nn.Identity() if in_channels == width else nn.Linear(in_channels, width)
        self.first = nn.ModuleList(
            [nn.Linear(in_channels, width), nn.Linear(width, width), nn.Linear(width, width)]
        )
        self.res_blocks = nn.ModuleList(
            nn.ModuleList(nn.Linear(width, width) for _ in range(3)) for _ in range(blocks)
        )
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.fc3 = nn.Linear(width, 4 if self.homogeneous else 3)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON types); ``mean`` travels in the state dict."""
        return {
            "in_channels": self.in_channels,
            "width": self.width,
            "blocks": self.blocks,
            "homogeneous": self.homogeneous,
            "w_min": self.w_min,
            "w_max": self.w_max,
        }

    def set_mean(self, mean: torch.Tensor | Sequence[float]) -> None:
        """Set the output offset ``mean (3,)`` (e.g. the mean mapping camera centre)."""
        m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        if m.numel() != 3 or not bool(torch.isfinite(m).all()):
            raise InputError(f"mean must be 3 finite numbers, got {mean}.")
        self.mean.copy_(m.to(self.mean.device))

    @staticmethod
    def _mlp3(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            x = F.relu(layer(x))
        return x

    def raw(self, features: torch.Tensor) -> torch.Tensor:
        """Outputs of ``fc3`` before the homogeneous mapping: ``(N, C) -> (N, 4 or 3)``."""
        res = self.skip(features) + self._mlp3(self.first, features)
        for block in self.res_blocks:
            res = res + self._mlp3(block, res)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(res)))))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """World coordinates of ``features (N, C)`` -> ``(N, 3)`` or ``(B, C, h, w)`` ->
        ``(B, 3, h, w)``."""
        if features.dim() not in (2, 4) or features.shape[1] != self.in_channels:
            raise ShapeError(
                f"ACEHead expects features (N, {self.in_channels}) or (B, {self.in_channels}, h, "
                f"w), got {tuple(features.shape)}."
            )
        x = features.permute(0, 2, 3, 1) if features.dim() == 4 else features
        w = self.fc3.weight
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(w.dtype)  # e.g. a float16 buffer without autocast
        out = self.raw(x)
        if out.dtype in (torch.float16, torch.bfloat16):  # the mapping and mean in float32:
            out = out.float()  # float16 would quantise world metres (6 cm at 100 m)
        if self.homogeneous:
            y = homogeneous_to_euclidean(out, self.mean, self.w_min, self.w_max)
        else:
            y = out + self.mean.to(out.dtype)
        return y.permute(0, 3, 1, 2) if features.dim() == 4 else y


def build_frozen_extractor(name: str, config: dict[str, Any] | None = None) -> DenseExtractor:
    """The extractor ``name`` with ``config`` (:func:`dgeo.models.build`), or the shipped U-Net
    for ``"default"`` (no options), frozen (no gradients) and in eval mode."""
    from dgeo.models.io import build, default_model

    config = dict(config or {})
    if name == DEFAULT_EXTRACTOR:
        if config:
            raise InputError(
                f"extractor 'default' (the shipped U-Net) takes no options, got {config}; use "
                "extractor 'unet' with options for another U-Net."
            )
        model = default_model()
    else:
        model = build(name, **config)
    return model.requires_grad_(False).eval()


class ACEModel(nn.Module):
    """An ACE map: a frozen dgeo extractor (by name) and a trained :class:`ACEHead`.

    Args:
        extractor: ``"default"`` (the shipped U-Net, :func:`dgeo.models.default_model`: its
            features survive illumination changes far better than SIFT's) or a name of
            :data:`dgeo.models.MODELS` (``"dense-sift"``, ``"unet"``, ``"vgg"``, ``"image"``).
        extractor_config: options of the extractor (:func:`dgeo.models.build`).
        levels: pyramid levels of the hypercolumn (None: all).
        stride: cell size (8).
        head: options of :class:`ACEHead` (``in_channels`` is filled in from the extractor).
        sigma: the constant uncertainty (metres) that :meth:`predict_world` reports.

    The extractor's weights (if any) are part of the state dict, so a saved map is
    self-contained (and keeps working if the shipped weights change). The extractor never
    trains: its parameters do not require gradients and :meth:`train` keeps it in eval mode.
    """

    def __init__(
        self,
        extractor: str = DEFAULT_EXTRACTOR,
        extractor_config: dict[str, Any] | None = None,
        levels: Sequence[int] | None = None,
        stride: int = 8,
        head: dict[str, Any] | None = None,
        sigma: float = 0.02,
    ) -> None:
        super().__init__()
        if not isinstance(extractor, str):
            raise InputError(f"extractor must be a model name, got {type(extractor).__name__}.")
        self.extractor_name = extractor
        self.extractor_config = dict(extractor_config or {})
        self.levels = None if levels is None else [int(v) for v in levels]
        self.stride = int(stride)
        if self.stride < 1:
            raise InputError(f"stride must be >= 1, got {stride}.")
        if not float(sigma) > 0:
            raise InputError(f"sigma must be positive, got {sigma}.")
        self.sigma = float(sigma)
        self.extractor = build_frozen_extractor(extractor, self.extractor_config)
        head = dict(head or {})
        if "in_channels" not in head:
            head["in_channels"] = self._feature_dim()
        self.head = ACEHead(**head)

    def _feature_dim(self) -> int:
        """Channels of :meth:`encode`, from one small image."""
        side = max(64, getattr(self.extractor, "min_size", 1))
        side += (-side) % self.stride
        p = next(self.extractor.parameters(), None)
        dtype = p.dtype if p is not None else torch.float32
        image = torch.full((1, 3, side, side), 0.5, dtype=dtype)
        return int(encode_cells(self.extractor, image, self.stride, self.levels).shape[1])

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON types): ``type(model)(**model.config)`` rebuilds it."""
        return {
            "extractor": self.extractor_name,
            "extractor_config": dict(self.extractor_config),
            "levels": None if self.levels is None else list(self.levels),
            "stride": self.stride,
            "head": self.head.config,
            "sigma": self.sigma,
        }

    def train(self, mode: bool = True) -> ACEModel:
        super().train(mode)
        self.extractor.eval()
        return self

    @property
    def feature_dim(self) -> int:
        """Channels of the encoded features (the head's ``in_channels``)."""
        return self.head.in_channels

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Frozen cell features ``(B, 3, H, W) -> (B, C, H / 8, W / 8)`` (:func:`encode_cells`)."""
        return encode_cells(self.extractor, image, self.stride, self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scene coordinates (world metres).

        Args:
            x: images ``(B, 3, H, W)`` in [0, 1] (sides multiples of ``stride``), or encoded
                features ``(N, C)`` (a training buffer).
        Returns:
            ``(B, 3, H / 8, W / 8)`` for images, ``(N, 3)`` for features.
        """
        if x.dim() == 2:
            return self.head(x)
        return self.head(self.encode(x))

    @torch.no_grad()
    def predict_world(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World coordinates and a confidence proxy per cell.

        ACE regresses coordinates only, without an uncertainty, so ``sigma`` is the constant
        :attr:`sigma` (default 2 cm, i.e. confidence 50 > KFNet's viewer cut of 20) at every
        cell: consumers that rank cells by sigma treat all cells alike and RANSAC alone rejects
        the outliers, as in ACE.

        Args:
            image: ``(B, 3, H, W)`` RGB in [0, 1].
        Returns:
            ``(world (B, 3, h, w) float32, sigma (B, 1, h, w) float32)``.
        """
        world = self(image).float()
        sigma = torch.full_like(world[:, :1], self.sigma)
        return world, sigma
