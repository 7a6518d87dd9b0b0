"""The GN-Net / PixLoc U-Net: a VGG-style encoder, a decoder with skip connections, and
feature + confidence heads at several strides.

Encoder level ``i`` (stride ``2**i``) is a 2x2 max pool (except level 0) followed by
``convs_per_block`` 3x3 convolutions with ReLU, ``widths[i]`` channels. The decoder starts from the
coarsest encoder level; at each finer level it upsamples x2 (bilinear), concatenates the encoder
skip and applies a 3x3 convolution with ReLU (``decoder_widths[i]`` channels). Each output stride
``s`` has a 1x1 feature head (``dims``; L2-normalised per pixel by default) and a 1x1 head ``u``
whose ``sigmoid(-u)`` is the confidence in (0, 1), as in PixLoc.

Any image size works: the normalised image is replicate-padded on the right and bottom to a
multiple of the coarsest encoder stride, so every level of size ``(H' / s, W' / s)`` covers the
padded image ``(H', W')`` exactly: the pyramid's ``canvas_size`` is ``(H', W')`` and its
``image_size`` ``(H, W)``. Padding on the right and bottom leaves pixel coordinates unchanged, so
sampling at pixels of the original image is exact, and points past the original border are
invalid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dgeo.errors import InputError
from dgeo.geometry import FeatureLevel, FeaturePyramid
from dgeo.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DenseExtractor,
    as_int_list,
    check_mean_std,
    l2_normalize,
    pad_to_multiple,
    power_of_two_strides,
    seeded_init_,
)


def _conv_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]


class UNetPyramid(DenseExtractor):
    """U-Net dense extractor with per-level confidences (PixLoc's feature network).

    Args:
        widths: encoder channels per level; level ``i`` has stride ``2**i``.
        decoder_widths: decoder channels at levels ``0 .. len(widths) - 2``.
        convs_per_block: 3x3 convolutions per encoder level.
        strides: output strides, increasing powers of two up to ``2**(len(widths) - 1)``.
        dims: feature channels of each output stride.
        normalize: L2-normalise output features per pixel.
        confidence: add a ``sigmoid(-u)`` confidence head per level.
        mean, std: RGB normalisation of the [0, 1] input (ImageNet by default).
        seed: deterministic initialisation (:meth:`init_weights`); None: torch's default init.
    """

    name = "unet"

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512, 512),
        decoder_widths: Sequence[int] = (64, 64, 128, 256),
        convs_per_block: int = 2,
        strides: Sequence[int] = (1, 4, 16),
        dims: Sequence[int] = (32, 128, 128),
        normalize: bool = True,
        confidence: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        widths = as_int_list(widths, "widths")
        decoder_widths = as_int_list(decoder_widths, "decoder_widths")
        strides, dims = power_of_two_strides(strides), as_int_list(dims, "dims")
        mean, std = check_mean_std(mean, std)
        n = len(widths)
        if len(decoder_widths) != n - 1:
            raise InputError(
                f"decoder_widths needs len(widths) - 1 = {n - 1} entries (one per level finer "
                f"than the coarsest), got {decoder_widths}."
            )
        if max(strides) > 2 ** (n - 1):
            raise InputError(
                f"strides {strides} exceed the coarsest encoder stride {2 ** (n - 1)}; "
                "add encoder widths or drop the coarse strides."
            )
        if len(dims) != len(strides):
            raise InputError(f"dims {dims} must have one entry per stride {strides}.")
        if int(convs_per_block) < 1:
            raise InputError(f"convs_per_block must be >= 1, got {convs_per_block}.")
        self.levels = [s.bit_length() - 1 for s in strides]  # encoder level of each output
        self.finest = min(self.levels)
        self.strides, self.dims = strides, dims
        self.normalize, self.with_confidence = bool(normalize), bool(confidence)
        self.pad_multiple = 2 ** (n - 1)

        self.encoder = nn.ModuleList()
        cin = 3
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for k in range(int(convs_per_block)):
                layers += _conv_relu(cin if k == 0 else w, w)
            self.encoder.append(nn.Sequential(*layers))
            cin = w
        self.decoder = nn.ModuleList()  # decoder[i - finest] produces level i
        out_ch = {n - 1: widths[-1]}
        for i in range(n - 2, self.finest - 1, -1):
            block = nn.Sequential(*_conv_relu(out_ch[i + 1] + widths[i], decoder_widths[i]))
            self.decoder.insert(0, block)
            out_ch[i] = decoder_widths[i]
        self.heads = nn.ModuleList(
            nn.Conv2d(out_ch[lvl], d, 1) for lvl, d in zip(self.levels, dims, strict=True)
        )
        self.confidence_heads = nn.ModuleList(
            nn.Conv2d(out_ch[lvl], 1, 1) for lvl in (self.levels if confidence else [])
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.min_size = max(strides)
        if seed is not None:
            self.init_weights(seed)
        self.config = {
            "widths": widths,
            "decoder_widths": decoder_widths,
            "convs_per_block": int(convs_per_block),
            "strides": strides,
            "dims": dims,
            "normalize": self.normalize,
            "confidence": self.with_confidence,
            "mean": mean,
            "std": std,
            "seed": None if seed is None else int(seed),
        }

    def init_weights(self, seed: int) -> None:
        """Re-initialise every convolution deterministically from ``seed`` (He normal, zero
        bias): ``UNetPyramid(seed=0)`` has the same weights in every process and on every
        device, for reproducible random-init baselines."""
        seeded_init_(self, seed)

    def extract(self, images: torch.Tensor) -> FeaturePyramid:
        """``images (B, 3, H, W)`` -> levels ``(B, dims[k], H' / s_k, W' / s_k)`` with
        confidences ``(B, 1, H' / s_k, W' / s_k)``, ``(H', W')`` the padded size."""
        x = pad_to_multiple((images - self.mean) / self.std, self.pad_multiple)
        size = tuple(x.shape[-2:])
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        feats = {len(skips) - 1: x}
        for i in range(len(skips) - 2, self.finest - 1, -1):
            skip = skips[i]
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.decoder[i - self.finest](torch.cat([up, skip], 1))
            feats[i] = x
        levels = []
        for k, (lvl, s) in enumerate(zip(self.levels, self.strides, strict=True)):
            f = self.heads[k](feats[lvl])
            if self.normalize:
                f = l2_normalize(f)
            conf = None
            if self.with_confidence:
                conf = torch.sigmoid(-self.confidence_heads[k](feats[lvl]))
            levels.append(FeatureLevel(f, conf, float(s)))
        return FeaturePyramid(tuple(levels), tuple(images.shape[-2:]), size)
