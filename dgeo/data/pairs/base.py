"""The contract every correspondence source of :mod:`dgeo.data.pairs` follows, and its helpers.

A :class:`PairDataset` is a :class:`torch.utils.data.Dataset` whose items are dicts of tensors
that :func:`torch.utils.data.default_collate` batches:

========== ================ ===================================================================
key        shape, dtype     meaning
========== ================ ===================================================================
image_a/b  (3, H, W) f32    RGB in [0, 1], ``H, W = dataset.height, dataset.width``; images of
                            another size are fitted (:func:`fit_image`: resized keeping the
                            aspect ratio, zero padding right/bottom)
uv_a/b     (N, 2) f32       pixel coordinates (x, y) in the fitted images (top-left pixel
                            centre at (0, 0)), ``N = dataset.num_points``
mask       (N,) bool        true for real correspondences (they come first; padding rows are 0)
name       str              e.g. ``"a.png|b.png"``
points_a   (N, 3) f32       only if ``dataset.has_geometry``: 3D points of uv_a in camera-a
                            coordinates (0 where mask is false)
K_a, K_b   (3, 3) f32       only if ``has_geometry``: pinhole intrinsics of the fitted images
b_from_a   (4, 4) f32       only if ``has_geometry``: rigid transform camera a -> camera b
========== ================ ===================================================================

Randomness (which ``N`` correspondences, augmentation) comes from :meth:`PairDataset.generator`,
a function of ``(seed, index, epoch)`` only, so an item is the same in any worker, batch or
order; :meth:`PairDataset.set_epoch` changes it. The epoch and the record of items that failed
to load live in shared memory, so ``DataLoader`` workers (persistent ones included) see
``set_epoch`` calls made in the main process, and :attr:`PairDataset.skipped` counts the
failures of every worker.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dgeo.errors import DgeoError, InputError, ParseError, ShapeError
from dgeo.io.images import read_image

__all__ = [
    "GEOMETRY_KEYS",
    "ITEM_KEYS",
    "Fit",
    "LoadError",
    "PairDataset",
    "check_item",
    "fit_image",
    "fit_size",
    "mix_seed",
    "pack_correspondences",
    "split_of",
    "subsample",
    "take_rows",
]

log = logging.getLogger("dgeo.data.pairs")

#: Keys of every item.
ITEM_KEYS: tuple[str, ...] = ("image_a", "image_b", "uv_a", "uv_b", "mask", "name")
#: Keys of the items of datasets with ``has_geometry``.
GEOMETRY_KEYS: tuple[str, ...] = ("points_a", "K_a", "K_b", "b_from_a")
#: The splits a source accepts; ``"all"`` takes every pair (non-synthetic sources only).
SPLITS: tuple[str, ...] = ("train", "val", "all")


class LoadError(DgeoError):
    """An item could not be loaded (an image is missing or cannot be decoded): the item is
    skipped, counted and replaced by the next one (:meth:`PairDataset.__getitem__`)."""


# ---------------------------------------------------------------------------------- randomness
def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers and strings (BLAKE2b; the same on every machine/Python)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        if isinstance(p, str):
            h.update(b"s" + p.encode() + b"\0")
        else:
            h.update(b"i" + struct.pack("<q", int(p)))
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


def split_of(key: str, val_fraction: float) -> str:
    """``"val"`` for a deterministic ``val_fraction`` of keys, else ``"train"``.

    The decision hashes ``key`` alone (BLAKE2b, see :func:`mix_seed`), so it does not depend on
    the other keys: adding or removing pairs never moves a pair from one split to the other.
    """
    u = mix_seed("split", key) / 2**63
    return "val" if u < val_fraction else "train"


# ---------------------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class Fit:
    """How an image of ``source = (w, h)`` pixels was fitted into a ``height x width`` canvas.

    The content is resized to ``size = (w', h')`` (aspect ratio kept up to rounding) and placed
    at the top-left; the rest is zero padding. Pixel centres map as
    ``x' = (x + 0.5) * sx - 0.5`` with ``(sx, sy) = (w' / w, h' / h)``.
    """

    source: tuple[int, int]
    size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)``."""
        return self.size[0] / self.source[0], self.size[1] / self.source[1]

    def points(self, uv: torch.Tensor) -> torch.Tensor:
        """Pixels ``(..., 2)`` of the source image -> pixels of the fitted image."""
        s = uv.new_tensor(self.scale)
        return (uv + 0.5) * s - 0.5

    def K(self, K: torch.Tensor) -> torch.Tensor:
        """Pinhole intrinsics ``(..., 3, 3)`` of the source image -> of the fitted image."""
        sx, sy = self.scale
        S = K.new_tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        return S @ K

    def inside(self, uv: torch.Tensor) -> torch.Tensor:
        """Whether fitted pixels ``(..., 2)`` lie on the content's pixel-centre grid
        ``[0, w' - 1] x [0, h' - 1]``: ``(...)`` bool (false for NaN)."""
        hi = uv.new_tensor([self.size[0] - 1.0, self.size[1] - 1.0])
        return ((uv >= 0) & (uv <= hi)).all(-1)


def fit_size(source: tuple[int, int], height: int, width: int) -> Fit:
    """The :class:`Fit` of an image of ``source = (w, h)`` pixels into ``height x width``."""
    w, h = source
    if w < 1 or h < 1:
        raise ShapeError(f"cannot fit an empty image of {w}x{h} pixels.")
    s = min(width / w, height / h)
    size = (min(width, max(1, round(w * s))), min(height, max(1, round(h * s))))
    return Fit((int(w), int(h)), size)


def fit_image(image: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, Fit]:
    """Resize ``image`` ``(C, h, w)`` keeping its aspect ratio to fit ``height x width``, then
    zero-pad right and bottom.

    Shrinking is antialiased (bilinear with a widened kernel, like area averaging); enlarging is
    bilinear. Both follow the pixel-centre convention (``align_corners=False``), so
    :meth:`Fit.points` maps pixels exactly as the resampling does.

    Returns:
        the ``(C, height, width)`` image (same dtype, float) and its :class:`Fit`.
    """
    if image.dim() != 3:
        raise ShapeError(f"image must be (C, H, W), got {tuple(image.shape)}.")
    h, w = image.shape[-2:]
    fit = fit_size((w, h), height, width)
    nw, nh = fit.size
    out = image
    if (nw, nh) != (w, h):
        shrink = nw < w or nh < h
        out = F.interpolate(
            image[None].float(),
            size=(nh, nw),
            mode="bilinear",
            align_corners=False,
            antialias=shrink,
        )[0].clamp(0, 1)
    if (nw, nh) != (width, height):
        out = F.pad(out, (0, width - nw, 0, height - nh))
    return out.contiguous(), fit


# ---------------------------------------------------------------------------------- sampling
def subsample(
    count: int, num: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``num`` of ``count`` correspondences uniformly without replacement.

    Returns:
        indices ``(num,)`` int64 (a random order of all ``count`` followed by zeros when
        ``count < num``) and ``mask`` ``(num,)`` bool, true for the chosen ones.
    """
    perm = torch.randperm(count, generator=generator)[:num]
    k = perm.shape[0]
    idx = torch.cat([perm, perm.new_zeros(num - k)])
    mask = torch.arange(num) < k
    return idx, mask


def take_rows(x: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows ``x[idx]`` ``(N, ...)`` of ``x`` ``(M, ...)``, zero where ``mask`` ``(N,)`` is false
    (all zero when ``M == 0``)."""
    if x.shape[0] == 0:
        return x.new_zeros(idx.shape[0], *x.shape[1:])
    return torch.where(mask.reshape(-1, *[1] * (x.dim() - 1)), x[idx], 0)


def pack_correspondences(
    uv_a: torch.Tensor,
    uv_b: torch.Tensor,
    num: int,
    generator: torch.Generator | None = None,
    points_a: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Subsample or pad ``M`` correspondences to exactly ``num`` (see :func:`subsample`).

    Args:
        uv_a, uv_b: ``(M, 2)`` pixels.
        num: ``N``.
        generator: the draw.
        points_a: optional ``(M, 3)`` camera-a points.
    Returns:
        ``{"uv_a", "uv_b", "mask"[, "points_a"]}``: ``(N, 2)`` / ``(N,)`` / ``(N, 3)`` float32
        (bool mask), zero in padding rows.
    """
    idx, mask = subsample(uv_a.shape[0], num, generator)
    out = {
        "uv_a": take_rows(uv_a, idx, mask).float(),
        "uv_b": take_rows(uv_b, idx, mask).float(),
        "mask": mask,
    }
    if points_a is not None:
        out["points_a"] = take_rows(points_a, idx, mask).float()
    return out


def check_item(item: Mapping, dataset: PairDataset) -> None:
    """Raise :class:`ShapeError` naming the first key of ``item`` that breaks the item contract
    of ``dataset`` (keys, shapes, dtypes, padding; see the module docstring)."""
    h, w, n = dataset.height, dataset.width, dataset.num_points
    want = {
        "image_a": ((3, h, w), torch.float32),
        "image_b": ((3, h, w), torch.float32),
        "uv_a": ((n, 2), torch.float32),
        "uv_b": ((n, 2), torch.float32),
        "mask": ((n,), torch.bool),
    }
    if dataset.has_geometry:
        want |= {
            "points_a": ((n, 3), torch.float32),
            "K_a": ((3, 3), torch.float32),
            "K_b": ((3, 3), torch.float32),
            "b_from_a": ((4, 4), torch.float32),
        }
    keys = set(want) | {"name"}
    if set(item) != keys:
        raise ShapeError(f"item keys {sorted(item)} != expected {sorted(keys)}.")
    if not isinstance(item["name"], str):
        raise ShapeError(f"item['name'] must be a str, got {type(item['name']).__name__}.")
    for key, (shape, dtype) in want.items():
        x = item[key]
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape or x.dtype != dtype:
            got = (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"item[{key!r}] must be {shape} {dtype}, got {got}.")
    mask = item["mask"]
    k = int(mask.sum())
    if not bool(mask[:k].all()):
        raise ShapeError("item['mask']: real correspondences must come first.")
    for key in ("uv_a", "uv_b", "points_a"):
        if key in item and bool(item[key][~mask].any()):
            raise ShapeError(f"item[{key!r}] must be 0 in padding rows.")


# ---------------------------------------------------------------------------------- the base
def check_split(split: str, val_fraction: float) -> float:
    """Check a split name of :data:`SPLITS` and the held-out share; returns the share as a
    float in [0, 1]."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    return _finite_float(val_fraction, "val_fraction", 0.0, 1.0)


def check_common(height: int, width: int, num_points: int, seed: int) -> None:
    """Raise :class:`InputError` for bad ``height``, ``width``, ``num_points`` or ``seed``."""
    for name, v, lo in (("height", height, 8), ("width", width, 8), ("num_points", num_points, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int, got {seed!r}.")


class PairDataset(Dataset, abc.ABC):
    """Base class of the correspondence sources (the item contract is in the module docstring).

    Subclasses implement :meth:`__len__` and :meth:`load_item`, reading image files through
    :meth:`read_image` (which turns a missing or undecodable file into :class:`LoadError`), and
    call ``PairDataset.__init__`` once their length is known.

    Attributes:
        height, width: the size of every image.
        num_points: ``N`` correspondences per item.
        seed: the seed of everything random.
        has_geometry: items carry ``points_a``, ``K_a``, ``K_b``, ``b_from_a``.
        source: a short description used in messages (e.g. ``"colmap:/data/sfm"``).
    """

    has_geometry: bool = False

    def __init__(
        self,
        *,
        height: int,
        width: int,
        num_points: int,
        seed: int,
        length: int,
        source: str,
    ):
        check_common(height, width, num_points, seed)
        self.height, self.width, self.num_points, self.seed = height, width, num_points, seed
        self.source = source
        # shared with DataLoader workers (torch.multiprocessing shares tensor storage)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._bad = torch.zeros(max(int(length), 0), dtype=torch.bool).share_memory_()
        self._last_error: str | None = None

    # ------------------------------------------------------------------ interface
    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of items."""

    @abc.abstractmethod
    def load_item(self, index: int, generator: torch.Generator) -> dict:
        """Item ``index`` (``0 <= index < len(self)``) drawing its randomness from ``generator``.

        Raises:
            LoadError: the item cannot be loaded (it is then skipped and counted).
        """

    # ------------------------------------------------------------------ epochs and skipping
    @property
    def epoch(self) -> int:
        """The epoch set by :meth:`set_epoch` (0 initially)."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Change the per-epoch randomness (augmentation, choice of the ``N`` correspondences)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise InputError(f"epoch must be a non-negative int, got {epoch!r}.")
        self._epoch[0] = epoch

    @property
    def skipped(self) -> int:
        """Number of distinct items that failed to load and were replaced (all workers)."""
        return int(self._bad.sum())

    def generator(self, index: int, stream: int = 0) -> torch.Generator:
        """A CPU generator seeded by ``(seed, index, epoch, stream)``."""
        return torch.Generator().manual_seed(
            mix_seed(self.seed, int(index), self.epoch, int(stream))
        )

    def read_image(self, path: str | Path) -> torch.Tensor:
        """:func:`dgeo.io.images.read_image`, raising :class:`LoadError` for a missing or
        undecodable file: ``(3, h, w)`` float32 RGB in [0, 1]."""
        try:
            return read_image(path)
        except (ParseError, OSError) as e:
            raise LoadError(str(e)) from e

    def __getitem__(self, index: int) -> dict:
        """Item ``index``; an item that fails to load is replaced by the next one (cyclically).

        Raises:
            IndexError: ``index`` out of range.
            InputError: every item failed to load (the message names the source).
        """
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items of {self.source}.")
        index %= n
        for k in range(n):
            j = (index + k) % n
            if j < len(self._bad) and bool(self._bad[j]):
                continue
            try:
                return self.load_item(j, self.generator(j))
            except LoadError as e:
                if j < len(self._bad):
                    self._bad[j] = True
                self._last_error = str(e)
                log.warning("%s: skipping item %d: %s", self.source, j, e)
        hint = f" (last error: {self._last_error})" if self._last_error else ""
        raise InputError(
            f"no item of {self.source} could be loaded: all {n} failed{hint}; check that the "
            "images exist and are readable."
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.source!r}, {len(self)} items, "
            f"{self.width}x{self.height}, N={self.num_points}, geometry={self.has_geometry})"
        )


def _finite_float(v: float, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """``v`` as a float in ``[lo, hi]``, else :class:`InputError` naming ``name``."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {v!r}.") from None
    if not (math.isfinite(f) and lo <= f <= hi):
        raise InputError(f"{name} must be a finite number in [{lo}, {hi}], got {v!r}.")
    return f
