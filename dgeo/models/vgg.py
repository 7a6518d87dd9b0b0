"""VGG-16 trunk in torchvision's layout and the S2DHM / gn_net hypercolumn extractors.

:class:`VGG16` rebuilds ``torchvision.models.vgg16().features`` from ``torch.nn`` with the same
module indices (3x3 convolutions with padding 1, ``ReLU(inplace=False)``, 2x2 max pooling at
indices 4, 9, 16, 23, 30), so that a state dict in torchvision's key layout
(``features.0.weight`` ... ``features.28.bias``) loads directly; torchvision itself is not needed.

:class:`VGGHypercolumn` taps the trunk **before** given indices (S2DHM: ``[14, 17, 21, 24, 28]``,
i.e. relu3_2 (256, /4), pool3 (256, /8), relu4_2 (512, /8), pool4 (512, /16), relu5_2
(512, /16)). With ``hypercolumn=True`` every tap is upsampled bilinearly to the finest tap,
concatenated (2048 channels) and L2-normalised per pixel: one level. With ``hypercolumn=False``
every tap is its own L2-normalised level at its own stride (the gn_net layout).

Images are replicate-padded on the right and bottom to a multiple of the coarsest tap's stride
(so that max pooling drops no pixel and every level covers the padded image exactly): the
pyramid's ``canvas_size`` is the padded size, its ``image_size`` the real one; image pixel
coordinates are unchanged by the padding, so sampling at pixels of the original image is exact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dgeo.errors import InputError, ParseError
from dgeo.geometry import FeatureLevel, FeaturePyramid
from dgeo.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DenseExtractor,
    as_int_list,
    check_mean_std,
    l2_normalize,
    pad_to_multiple,
    safe_torch_load,
    seeded_init_,
)

#: torchvision's ``vgg16`` configuration: channels of each 3x3 conv, "M" for a 2x2 max pool.
VGG16_CFG: tuple[int | str, ...] = (
    *(64, 64, "M", 128, 128, "M", 256, 256, 256, "M"),
    *(512, 512, 512, "M", 512, 512, 512, "M"),
)
S2DHM_LAYERS = (14, 17, 21, 24, 28)


def _layer_table() -> list[tuple[int, int]]:
    """``(channels, stride)`` of the tensor entering each of the 32 positions 0..31."""
    table, ch, stride = [(3, 1)], 3, 1
    for item in VGG16_CFG:
        if item == "M":
            stride *= 2
            table.append((ch, stride))
        else:
            ch = int(item)
            table += [(ch, stride), (ch, stride)]  # conv, relu
    return table


LAYER_INFO = _layer_table()  # LAYER_INFO[i]: (channels, stride) of the input of module i


class VGG16(nn.Module):
    """``torchvision.models.vgg16().features`` (the first ``until`` modules) without torchvision.

    Args:
        until: number of modules to build, 1..31 (31: the whole trunk).
    """

    def __init__(self, until: int = 31) -> None:
        super().__init__()
        if not 1 <= int(until) <= 31:
            raise InputError(f"until must be in 1..31 (torchvision vgg16 indices), got {until}.")
        layers: list[nn.Module] = []
        ch = 3
        for item in VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(ch, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                ch = int(item)
        self.features = nn.Sequential(*layers[: int(until)])

    def forward(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        """Run ``x (B, 3, H, W)`` up to the last tap; return the tensor entering each module
        index of ``taps`` (``(B, C_i, H / s_i, W / s_i)``), in the order of ``taps``."""
        want = {int(t) for t in taps}
        if not want or max(want) > len(self.features) or min(want) < 0:
            raise InputError(f"taps must be in 0..{len(self.features)}, got {list(taps)}.")
        got: dict[int, torch.Tensor] = {}
        for i in range(max(want) + 1):
            if i in want:
                got[i] = x
            if i < max(want):
                x = self.features[i](x)
        return [got[int(t)] for t in taps]


class VGGHypercolumn(DenseExtractor):
    """VGG-16 hypercolumns (S2DHM) or per-layer VGG levels (gn_net).

    Args:
        layers: torchvision ``features`` indices; the tensor entering each is taken.
        hypercolumn: upsample all taps to the finest one, concatenate, one level; else one
            level per tap at its own stride, no upsampling.
        normalize: L2-normalise the output features per pixel.
        align_corners: of the bilinear upsampling (True in S2DHM; False is geometrically exact).
        mean, std: RGB normalisation applied to the [0, 1] input (ImageNet by default).
        seed: deterministic initialisation of the weights; None: torch's default init.
    """

    name = "vgg"

    def __init__(
        self,
        layers: Sequence[int] = S2DHM_LAYERS,
        hypercolumn: bool = True,
        normalize: bool = True,
        align_corners: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        layers = sorted(set(as_int_list(layers, "layers")))
        if max(layers) > 31:
            raise InputError(f"layers must be torchvision vgg16 indices in 1..31, got {layers}.")
        mean, std = check_mean_std(mean, std)
        self.layers = layers
        self.hypercolumn, self.normalize = bool(hypercolumn), bool(normalize)
        self.align_corners = bool(align_corners)
        self.trunk = VGG16(until=max(layers))
        if seed is not None:
            seeded_init_(self.trunk, seed)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.strides = [LAYER_INFO[i][1] for i in layers]
        self.channels = [LAYER_INFO[i][0] for i in layers]
        self.min_size = max(self.strides)
        self.config = {
            "layers": layers,
            "hypercolumn": self.hypercolumn,
            "normalize": self.normalize,
            "align_corners": self.align_corners,
            "mean": mean,
            "std": std,
            "seed": None if seed is None else int(seed),
        }

    def extract(self, images: torch.Tensor) -> FeaturePyramid:
        """``images (B, 3, H, W)`` -> one ``(B, sum C, H'/s0, W'/s0)`` level (hypercolumn) or
        one ``(B, C_i, H'/s_i, W'/s_i)`` level per tap, ``(H', W')`` the padded size."""
        x = pad_to_multiple((images - self.mean) / self.std, max(self.strides))
        size = tuple(x.shape[-2:])
        feats = self.trunk(x, self.layers)
        if self.hypercolumn:
            target = feats[0].shape[-2:]
            ac = self.align_corners
            ups = [
                f
                if f.shape[-2:] == target
                else F.interpolate(f, size=target, mode="bilinear", align_corners=ac)
                for f in feats
            ]
            feats, strides = [torch.cat(ups, 1)], self.strides[:1]
        else:
            strides = self.strides
        if self.normalize:
            feats = [l2_normalize(f) for f in feats]
        levels = [FeatureLevel(f, None, float(s)) for f, s in zip(feats, strides, strict=True)]
        return FeaturePyramid(tuple(levels), tuple(images.shape[-2:]), size)

    @classmethod
    def from_vgg16_checkpoint(cls, path: str | Path, **config) -> VGGHypercolumn:
        """Build with ``config`` and load VGG-16 trunk weights from ``path`` (see
        :func:`load_vgg16_weights`)."""
        config.setdefault("seed", None)
        return load_vgg16_weights(cls(**config), path)


_KEY = re.compile(
    r"^(?:(?:module|model|net)\.)*(?:(?:trunk\.)?features\.|encoder\.)?(\d+)\.(weight|bias)$"
)


def vgg16_trunk_state_dict(state: dict) -> dict[str, torch.Tensor]:
    """Map checkpoint keys to torchvision's ``features.N.{weight,bias}`` layout.

    Accepts ``module.`` prefixes (DataParallel), S2DHM's ``encoder.N.``, dgeo's
    ``trunk.features.N.`` and bare ``N.`` (a saved ``nn.Sequential``); other keys (classifier,
    NetVLAD pool, ...) are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _KEY.match(str(key))
        if m and isinstance(value, torch.Tensor):
            out[f"features.{m.group(1)}.{m.group(2)}"] = value
    return out


def read_checkpoint_state(path: str | Path, what: str = "checkpoint") -> dict:
    """The state dict inside a ``.pth`` / ``.pth.tar`` file: the file itself, or its
    ``state_dict`` / ``model_state_dict`` / ``model`` entry. Raises
    :class:`~dgeo.errors.DataFileNotFoundError` or :class:`~dgeo.errors.ParseError`."""
    obj = safe_torch_load(path, what, "pass a .pth / .pth.tar file written by torch.save.")
    if isinstance(obj, dict) and obj.get("format") == "dgeo-model":
        raise ParseError(path, None, "is a dgeo model file; load it with dgeo.models.load.")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ParseError(path, None, f"holds a {type(obj).__name__}, not a state dict.")
    return obj


def load_vgg16_weights(model_or_trunk: VGGHypercolumn | VGG16, path: str | Path):
    """Load VGG-16 trunk weights from a checkpoint into a :class:`VGGHypercolumn` or
    :class:`VGG16`; returns the model.

    Args:
        model_or_trunk: the module to fill (only the trunk modules it has are needed).
        path: ``.pth`` or ``.pth.tar``: a raw state dict or a dict with a ``state_dict`` /
            ``model_state_dict`` / ``model`` entry, keys in torchvision layout with optional
            ``module.`` prefix, or S2DHM's ``encoder.N.`` keys.
    Raises:
        DataFileNotFoundError: ``path`` does not exist.
        ParseError: the file is not a torch state dict.
        InputError: trunk weights are missing or have the wrong shape.
    """
    trunk = model_or_trunk.trunk if isinstance(model_or_trunk, VGGHypercolumn) else model_or_trunk
    if not isinstance(trunk, VGG16):
        raise InputError(f"expected a VGGHypercolumn or VGG16, got {type(model_or_trunk)}.")
    state = vgg16_trunk_state_dict(read_checkpoint_state(path, "VGG-16 checkpoint"))
    needed = trunk.state_dict()
    missing = [k for k in needed if k not in state]
    if missing:
        raise InputError(
            f"{path}: {len(missing)} VGG-16 trunk weight(s) missing, e.g. {missing[:4]} (found "
            f"{len(state)} trunk keys); expected torchvision keys 'features.N.weight' (optionally "
            "'module.'-prefixed) or S2DHM's 'encoder.N.weight'."
        )
    bad = [
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in needed.items()
        if state[k].shape != v.shape
    ]
    if bad:
        raise InputError(
            f"{path}: VGG-16 weights of the wrong shape ({'; '.join(bad[:3])}); is this a "
            "VGG-16 (not VGG-11/19 or a batch-norm variant) checkpoint?"
        )
    trunk.load_state_dict({k: state[k] for k in needed})
    return model_or_trunk
