"""The contract shared by every dense extractor: RGB images in, a :class:`FeaturePyramid` out.

A :class:`DenseExtractor` takes ``images (B, 3, H, W)``, float RGB in [0, 1], applies its own
normalisation (declared in its ``config``, so that training and inference cannot disagree) and
returns a :class:`~dgeo.geometry.FeaturePyramid`, finest level first. Its ``config`` is a plain
JSON-serialisable dict from which ``type(model)(**model.config)`` rebuilds the same architecture;
:mod:`dgeo.models.io` stores it next to the weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from dgeo.errors import InputError, ParseError, ShapeError, require_file
from dgeo.geometry import FeaturePyramid

#: ImageNet RGB statistics, the input normalisation of VGG-based extractors.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_rgb_images(images: Any, name: str = "images") -> None:
    """Raise :class:`ShapeError` / :class:`InputError` (naming ``name`` and the fix) unless
    ``images`` is a floating-point ``(B, 3, H, W)`` tensor: the input check of every network."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor (B, 3, H, W), got {type(images)}.")
    if images.dim() != 4:
        raise ShapeError(
            f"{name} must be a 4D tensor (B, 3, H, W), got shape {tuple(images.shape)}; "
            f"add a batch dimension with {name}[None] for a single image."
        )
    if images.shape[1] != 3:
        raise ShapeError(
            f"{name} must have 3 (RGB) channels, got shape {tuple(images.shape)}; repeat a "
            "grayscale image with images.expand(-1, 3, -1, -1)."
        )
    if not images.is_floating_point():
        raise InputError(
            f"{name} must be floating-point RGB in [0, 1], got dtype {images.dtype}; "
            "convert with images.float() / 255."
        )


class DenseExtractor(nn.Module):
    """Base class of the dense extractors of :mod:`dgeo.models`.

    Subclasses set ``name`` (their key in :data:`dgeo.models.MODELS`), store their constructor
    arguments in ``self.config`` (JSON types only), set ``self.min_size`` (the smallest image side
    they accept) and implement :meth:`extract`. ``learned`` says whether the weights are
    parameters the input must share a device and dtype with. ``kernel_scale`` is the scale of
    the robust kernel that suits the features' residual norms in feature-metric refinement
    (PixLoc's 0.1 for learned unit features).
    """

    name: ClassVar[str] = ""
    learned: ClassVar[bool] = True
    kernel_scale: ClassVar[float] = 0.1

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}
        self.min_size: int = 1

    def check_images(self, images: torch.Tensor) -> None:
        """Raise :class:`ShapeError` / :class:`InputError` unless ``images`` is a float
        ``(B, 3, H, W)`` tensor with ``H, W >= min_size`` (on the weights' device and dtype)."""
        cls = type(self).__name__
        check_rgb_images(images)
        h, w = images.shape[-2:]
        if min(h, w) < self.min_size:
            raise ShapeError(
                f"images of size {h}x{w} are smaller than the {self.min_size} pixels {cls} "
                f"needs on each side; upsample them or use a shallower configuration."
            )
        if self.learned:
            p = next(self.parameters(), None)
            if p is not None and (p.device != images.device or p.dtype != images.dtype):
                raise InputError(
                    f"images are {images.dtype} on {images.device} but the {cls} weights are "
                    f"{p.dtype} on {p.device}; call model.to(images.device, images.dtype)."
                )

    def forward(self, images: torch.Tensor) -> FeaturePyramid:
        """Dense features of ``images (B, 3, H, W)`` (float RGB in [0, 1]) as a pyramid."""
        self.check_images(images)
        return self.extract(images)

    def extract(self, images: torch.Tensor) -> FeaturePyramid:
        """Compute the pyramid of already validated ``images (B, 3, H, W)``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


def seeded_init_(module: nn.Module, seed: int) -> None:
    """Deterministic He (fan-in) initialisation of every Conv2d of ``module`` from ``seed``.

    Weights are drawn on the CPU from one :class:`torch.Generator` in module order, so the same
    seed gives identical weights on any device; biases are zero.
    """
    gen = torch.Generator().manual_seed(int(seed))
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            w = torch.randn(m.weight.shape, generator=gen, dtype=torch.float32)
            with torch.no_grad():
                m.weight.copy_(w * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()


def check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[list, list]:
    """Validate RGB ``mean`` / ``std`` (3 values each, ``std > 0``); return them as lists."""
    try:
        mean, std = [float(v) for v in mean], [float(v) for v in std]
    except (TypeError, ValueError):
        raise InputError(f"mean and std must be 3 numbers each, got {mean!r}, {std!r}.") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise InputError(f"mean and std must be 3 RGB values (std > 0), got {mean}, {std}.")
    return mean, std


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad ``images (B, C, H, W)`` on the right and bottom to multiples of
    ``multiple``; image pixel coordinates are unchanged."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return images
    return nn.functional.pad(images, (0, pw, 0, ph), mode="replicate")


def l2_normalize(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Per-pixel L2 normalisation of ``(B, C, h, w)`` maps along channels (zero stays zero)."""
    return nn.functional.normalize(x, p=2.0, dim=dim, eps=1e-12)


def as_int_list(values: Any, name: str, *, positive: bool = True) -> list[int]:
    """``values`` (a sequence of ints) as a list, or a clear :class:`InputError`."""
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a list of integers, got {values!r}.") from None
    if not out or any(o != v for o, v in zip(out, values, strict=True)):
        raise InputError(f"{name} must be a non-empty list of integers, got {values!r}.")
    if positive and any(v <= 0 for v in out):
        raise InputError(f"{name} must hold positive integers, got {values!r}.")
    return out


def power_of_two_strides(strides: Any, name: str = "strides") -> list[int]:
    """Validate strides that are increasing powers of two (1, 2, 4, ...)."""
    out = as_int_list(strides, name)
    if any(s & (s - 1) for s in out) or out != sorted(set(out)):
        raise InputError(
            f"{name} must be increasing powers of two such as [1, 2, 4], got {strides!r}."
        )
    return out


def describe_bytes(head: bytes) -> str:
    """What the first bytes of a file say it is, for error messages."""
    if head.startswith(b"PK\x03\x04"):
        return "a truncated or corrupt torch file (zip archive)"
    if head.startswith(b"\x80"):
        return "a Python pickle or legacy torch file that torch cannot load safely"
    if not head:
        return "an empty file"
    try:
        head.decode("utf-8")
        if b"\x00" not in head:
            return "a text file"
    except UnicodeDecodeError:
        pass
    return "not a torch file"


def safe_torch_load(path: str | Path, what: str, hint: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with dgeo errors.

    Raises:
        DataFileNotFoundError: ``path`` does not exist.
        ParseError: the file cannot be loaded; the message says what it looks like and ``hint``.
    """
    path = require_file(path, what)
    if path.is_dir():
        raise ParseError(path, None, f"is a folder, not a {what}; {hint}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        with open(path, "rb") as f:
            head = f.read(512)
        kind = describe_bytes(head)
        detail = ""
        if kind == "not a torch file":  # otherwise torch's message adds nothing
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            detail = f" ({type(exc).__name__}: {first})"
        raise ParseError(path, None, f"is {kind}, not a {what}{detail}; {hint}") from None
