"""Weight-free dense extractors: dense SIFT and the photometric image pyramid.

Both build an image pyramid by repeated :func:`kornia.geometry.transform.pyrdown` (5x5 Gaussian
blur with reflected borders, then bilinear resampling to ``floor(side / 2)``), so level ``k`` of
an ``(H, W)`` image has size ``(h, w)`` and covers the image exactly with scale ``w / W`` per axis,
which is the transform :class:`~dgeo.geometry.FeaturePyramid` assumes (also for odd sizes).

Dense SIFT descriptors are centred exactly on the pixels of their level. kornia's
:class:`~kornia.feature.DenseSIFTDescriptor` centres a descriptor with an even number of spatial
bins half way between pixels; it is then run with a padding that gives an ``(h + 1, w + 1)`` grid
of centres at ``(i - 1/2, j - 1/2)``, and the four descriptors around each pixel are averaged
and re-normalised, a descriptor on a window one pixel wider, centred on the pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia
import torch
import torch.nn.functional as F
from kornia.feature import DenseSIFTDescriptor

from dgeo.errors import InputError
from dgeo.geometry import FeatureLevel, FeaturePyramid
from dgeo.models.base import DenseExtractor, as_int_list, l2_normalize, power_of_two_strides


def image_pyramid(images: torch.Tensor, strides: Sequence[int]) -> list[torch.Tensor]:
    """``images (B, C, H, W)`` at each power-of-two stride by repeated ``pyrdown``:
    ``(B, C, h_s, w_s)`` with ``h_s = floor(h_{s/2} / 2)``."""
    out, x, s = [], images, 1
    for target in strides:
        while s < target:
            x = kornia.geometry.transform.pyrdown(x)
            s *= 2
        out.append(x)
    return out


def _min_size(strides: Sequence[int]) -> int:
    """Smallest side for which every ``pyrdown`` input is at least 3 pixels (reflect padding)."""
    return 1 if max(strides) == 1 else 3 * max(strides) // 2


class DenseSIFT(DenseExtractor):
    """Dense SIFT on the grayscale image at several strides; no weights, no confidence.

    Args:
        strides: pyramid strides (increasing powers of two); stride-1 descriptors on each level.
            The default (1, 4, 16) is the U-Net's: the stride-16 level widens the basin of
            feature-metric refinement (5 degree / 0.5 m starts: 92 % success against 62 % with
            (1, 2, 4) in benchmarks/featuremetric.py).
        descriptor: ``"rootsift"`` (RootSIFT, then unit L2 norm) or ``"l2"`` (clipped SIFT with
            unit L2 norm).
        num_ang_bins, num_spatial_bins, spatial_bin_size, clipval: as
            :class:`kornia.feature.DenseSIFTDescriptor` (128 dimensions by default).
    """

    name = "dense-sift"
    learned = False
    # SIFT of two views of a surface differ by ~0.2-0.4 (unit norm): a kernel at 0.1 treats
    # most correct points as outliers far from the optimum (benchmarks/featuremetric.py)
    kernel_scale = 0.3

    def __init__(
        self,
        strides: Sequence[int] = (1, 4, 16),
        descriptor: str = "rootsift",
        num_ang_bins: int = 8,
        num_spatial_bins: int = 4,
        spatial_bin_size: int = 4,
        clipval: float = 0.2,
    ) -> None:
        super().__init__()
        self.strides = power_of_two_strides(strides)
        if descriptor not in ("rootsift", "l2"):
            raise InputError(f"descriptor must be 'rootsift' or 'l2', got {descriptor!r}.")
        nab, nsb, sbs = as_int_list([num_ang_bins, num_spatial_bins, spatial_bin_size], "bins")
        # descriptor centre of output j: j - pad + c with 2c = (nsb - 1) * sbs - e (kornia)
        twice_c = (nsb - 1) * sbs - (1 - sbs % 2)
        self.average = twice_c % 2 == 1  # centres half way between pixels
        pad = (twice_c + 1) // 2 if self.average else twice_c // 2
        self.sift = DenseSIFTDescriptor(
            num_ang_bins=nab,
            num_spatial_bins=nsb,
            spatial_bin_size=sbs,
            rootsift=descriptor == "rootsift",
            clipval=float(clipval),
            stride=1,
            padding=pad,
        ).requires_grad_(False)
        self.dim = nab * nsb**2
        self.min_size = _min_size(self.strides)
        self.config = {
            "strides": self.strides,
            "descriptor": descriptor,
            "num_ang_bins": nab,
            "num_spatial_bins": nsb,
            "spatial_bin_size": sbs,
            "clipval": float(clipval),
        }

    def describe(self, gray: torch.Tensor) -> torch.Tensor:
        """Unit-norm descriptors ``(B, D, h, w)`` centred on the pixels of ``gray (B, 1, h, w)``."""
        d = self.sift(gray)
        if self.average:
            d = F.avg_pool2d(d, 2, stride=1)
        return l2_normalize(d)

    def extract(self, images: torch.Tensor) -> FeaturePyramid:
        """``images (B, 3, H, W)`` -> one ``(B, D, h_s, w_s)`` level per stride ``s``."""
        gray = kornia.color.rgb_to_grayscale(images)
        levels = [
            FeatureLevel(self.describe(g), None, float(s))
            for g, s in zip(image_pyramid(gray, self.strides), self.strides, strict=True)
        ]
        return FeaturePyramid(tuple(levels), tuple(images.shape[-2:]))


class ImagePyramid(DenseExtractor):
    """The photometric baseline: the image itself at several strides (Gaussian pyramid).

    Args:
        strides: pyramid strides (increasing powers of two).
        grayscale: one gray channel instead of RGB.
        normalize: L2-normalise the colour vector of each pixel (RGB only).
    """

    name = "image"
    learned = False

    def __init__(
        self, strides: Sequence[int] = (1, 2, 4), grayscale: bool = False, normalize: bool = False
    ) -> None:
        super().__init__()
        self.strides = power_of_two_strides(strides)
        self.grayscale, self.normalize = bool(grayscale), bool(normalize)
        if self.grayscale and self.normalize:
            raise InputError(
                "normalize=True makes every pixel of a one-channel image 1; use RGB "
                "(grayscale=False) or normalize=False."
            )
        self.min_size = _min_size(self.strides)
        self.config = {
            "strides": self.strides,
            "grayscale": self.grayscale,
            "normalize": self.normalize,
        }

    def extract(self, images: torch.Tensor) -> FeaturePyramid:
        """``images (B, 3, H, W)`` -> one ``(B, 1 or 3, h_s, w_s)`` level per stride ``s``."""
        x = kornia.color.rgb_to_grayscale(images) if self.grayscale else images
        maps = image_pyramid(x, self.strides)
        if self.normalize:
            maps = [l2_normalize(m) for m in maps]
        levels = [FeatureLevel(m, None, float(s)) for m, s in zip(maps, self.strides, strict=True)]
        return FeaturePyramid(tuple(levels), tuple(images.shape[-2:]))
