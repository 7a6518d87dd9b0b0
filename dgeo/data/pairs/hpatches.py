"""HPatches-style sequences: planar scenes seen in 6 images related by known homographies.

A sequence folder (HPatches' ``hpatches-sequences-release/<name>``) holds the images ``1.ppm``
.. ``6.ppm`` (any image extension OpenCV reads) and plain-text 3x3 matrices ``H_1_k``
(k = 2..6) with ``x_k ~ H_1_k [x_1, y_1, 1]^T``. :class:`HPatchesPairs` yields the pairs
``(1, k)`` of one sequence, or of every sequence under a root folder, with dense
correspondences: every pixel centre of the fitted image 1 whose image under the homography
lands on the fitted image k.

**Pixel convention.** dgeo puts the top-left pixel centre at (0, 0). A homography can be stated
in that convention (``"centre"``) or with the top-left pixel *corner* at (0, 0) (``"corner"``,
pixel centres at ``i + 0.5``), in which case ``x_k = H (x_1 + 0.5) - 0.5`` in dgeo pixels.
HPatches' matrices are in the **centre** convention (OpenCV's ``warpPerspective``, with which its
benchmark code uses them): on ``v_churchill`` (``shared/data/hpatches_v_churchill``) the mean
absolute grey-level difference between image 1 and image k sampled at ``H (x + o) - o`` is
lowest at ``o = 0`` for every k (parabolic fits of a scan of ``o``: +0.03, +0.04, -0.01,
-0.15, -0.15 px for k = 2..6), and clearly higher at the corner convention's ``o = 0.5``
(e.g. k = 2, whose homography scales by 2.4: 7.51 against 7.56 grey levels at full size;
k = 6: 13.71 against 14.03). The default is therefore ``"centre"``; pass ``"corner"`` for
homographies estimated with corner-origin coordinates.

Images are fitted into ``height x width`` (:func:`dgeo.data.pairs.base.fit_image`: aspect kept,
zero padding right/bottom), and the homography is composed with the two fits, so
correspondences are exact in the fitted images (up to float32). No augmentation: the pairs are
for evaluation; only the choice of the ``N`` correspondences depends on ``(seed, index, epoch)``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dgeo.data.pairs.base import Fit, LoadError, PairDataset, fit_image, pack_correspondences
from dgeo.errors import DataFileNotFoundError, InputError, ParseError

__all__ = ["CONVENTIONS", "HPatchesPairs", "find_sequences", "read_homography", "warp_points"]

#: Pixel conventions of homography files (see the module docstring).
CONVENTIONS: tuple[str, ...] = ("centre", "corner")
_OFFSET = {"centre": 0.0, "corner": 0.5}
_H_NAME = re.compile(r"^H_1_(\d+)$")


def read_homography(path: str | Path) -> torch.Tensor:
    """A plain-text 3x3 homography (whitespace-separated, 3 rows) as ``(3, 3)`` float64.

    Raises:
        DataFileNotFoundError: no such file.
        ParseError: not 3 rows of 3 finite numbers, or singular.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"homography file {path} does not exist.")
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        values = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as e:
        raise ParseError(path, None, f"is not a 3x3 matrix of numbers ({e}).") from None
    if values.shape != (3, 3) or not np.isfinite(values).all():
        raise ParseError(
            path, None, f"must hold 3 rows of 3 finite numbers, got shape {values.shape}."
        )
    if abs(np.linalg.det(values)) < 1e-12 * max(1.0, float(np.abs(values).max()) ** 3):
        raise ParseError(path, None, "holds a singular matrix, not a homography.")
    return torch.from_numpy(values)


def warp_points(
    H: torch.Tensor, uv: torch.Tensor, convention: Literal["centre", "corner"] = "centre"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map dgeo pixels ``uv (..., 2)`` of image 1 through ``H (3, 3)`` to image k.

    Args:
        H: the homography of the file, in ``convention``.
        uv: ``(..., 2)`` pixels, top-left pixel centre at (0, 0).
        convention: ``"centre"`` (``x_k = H x_1``) or ``"corner"``
            (``x_k = H (x_1 + 0.5) - 0.5``).
    Returns:
        ``(..., 2)`` pixels of image k (dgeo convention) in ``uv``'s dtype, and ``(...)`` bool:
        in front (positive homogeneous scale) and finite.
    """
    if convention not in _OFFSET:
        raise InputError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")
    o = _OFFSET[convention]
    x = uv.double() + o
    p = x @ H[:2, :2].T.to(x) + H[:2, 2].to(x)
    w = x @ H[2, :2].to(x) + H[2, 2].to(x)
    ok = w > 1e-12
    out = p / torch.where(ok, w, 1.0)[..., None] - o
    ok = ok & torch.isfinite(out).all(-1)
    return out.to(uv.dtype), ok


def _find_image(folder: Path, stem: str) -> Path | None:
    """``folder/stem.<ext>`` for the first image extension present (``.ppm`` first)."""
    for ext in (".ppm", ".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff"):
        for p in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if p.is_file():
                return p
    return None


def find_sequences(root: str | Path) -> list[Path]:
    """The sequence folders of ``root``: ``root`` itself if it holds ``H_1_*`` files, else its
    sub-folders that do (sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise DataFileNotFoundError(
            f"HPatches folder {root} does not exist; pass a sequence folder (1.ppm .. 6.ppm, "
            "H_1_2 .. H_1_6) or the folder holding such sequences."
        )

    def is_sequence(p: Path) -> bool:
        return any(_H_NAME.match(f.name) for f in p.iterdir() if f.is_file())

    if is_sequence(root):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and is_sequence(p))


class HPatchesPairs(PairDataset):
    """The pairs ``(1, k)`` of HPatches sequences with dense correspondences from ``H_1_k``.

    Args:
        sequence_dir: one sequence folder, or a folder of sequence folders (e.g. the
            ``hpatches-sequences-release`` root); every ``H_1_k`` with both images present
            gives one item, sequences in name order, ``k`` increasing.
        height, width: size of the fitted images.
        num_points: ``N`` correspondences per item (drawn uniformly from the dense ones).
        seed: seeds the choice of the ``N`` correspondences (with index and epoch).
        convention: pixel convention of the homography files (see the module docstring;
            HPatches: ``"centre"``).
        image_cache: fitted images kept in memory (LRU; image 1 is shared by 5 items).

    Raises:
        DataFileNotFoundError: the folder does not exist. InputError: it holds no sequence
        with an image pair. ParseError: a homography file is malformed.
    """

    has_geometry = False

    def __init__(
        self,
        sequence_dir: str | Path,
        *,
        height: int = 240,
        width: int = 320,
        num_points: int = 512,
        seed: int = 0,
        convention: Literal["centre", "corner"] = "centre",
        image_cache: int = 12,
    ):
        if convention not in _OFFSET:
            raise InputError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")
        if isinstance(image_cache, bool) or not isinstance(image_cache, int) or image_cache < 0:
            raise InputError(f"image_cache must be an integer >= 0, got {image_cache!r}.")
        self.root, self.convention, self.image_cache = Path(sequence_dir), convention, image_cache
        #: per item: (name, path of image 1, path of image k, H_1_k (3, 3) float64)
        self.pairs: list[tuple[str, Path, Path, torch.Tensor]] = []
        for seq in find_sequences(self.root):
            first = _find_image(seq, "1")
            ks = sorted(
                int(m.group(1)) for f in seq.iterdir() if (m := _H_NAME.match(f.name)) is not None
            )
            for k in ks:
                other = _find_image(seq, str(k))
                if first is None or other is None or k == 1:
                    continue
                H = read_homography(seq / f"H_1_{k}")
                name = f"{seq.name}/{first.name}|{seq.name}/{other.name}"
                self.pairs.append((name, first, other, H))
        if not self.pairs:
            raise InputError(
                f"{self.root} holds no HPatches pair: expected images 1.ppm .. 6.ppm and "
                "homographies H_1_2 .. H_1_6 in it or in its sub-folders."
            )
        super().__init__(
            height=height,
            width=width,
            num_points=num_points,
            seed=seed,
            length=len(self.pairs),
            source=f"hpatches:{self.root}",
        )
        self._images: OrderedDict[Path, tuple[torch.Tensor, Fit]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.pairs)

    def fitted_image(self, path: Path) -> tuple[torch.Tensor, Fit]:
        """``(3, height, width)`` fitted image of ``path`` and its :class:`Fit` (cached)."""
        if path in self._images:
            self._images.move_to_end(path)
            return self._images[path]
        out = fit_image(self.read_image(path), self.height, self.width)
        if self.image_cache:
            self._images[path] = out
            while len(self._images) > self.image_cache:
                self._images.popitem(last=False)
        return out

    def dense_correspondences(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every correspondence of item ``index`` in the fitted images: ``uv_a (M, 2)``, the
        pixel centres of image 1's content, row by row, that land on image k's content, and
        ``uv_b (M, 2)``, float64."""
        _, path_a, path_b, H = self.pairs[index]
        fit_a, fit_b = self.fitted_image(path_a)[1], self.fitted_image(path_b)[1]
        w, h = fit_a.size
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float64),
            torch.arange(w, dtype=torch.float64),
            indexing="ij",
        )
        uv_a = torch.stack([xs, ys], -1).reshape(-1, 2)
        sa = uv_a.new_tensor(fit_a.scale)
        original = (uv_a + 0.5) / sa - 0.5  # fitted -> original pixels of image 1
        uv_k, ok = warp_points(H, original, self.convention)
        uv_b = fit_b.points(uv_k)
        ok = ok & fit_b.inside(uv_b)
        return uv_a[ok], uv_b[ok]

    def load_item(self, index: int, generator: torch.Generator) -> dict:
        """Item ``index``: fitted images 1 and k and ``N`` of their dense correspondences."""
        name, path_a, path_b, _ = self.pairs[index]
        image_a, _ = self.fitted_image(path_a)
        image_b, _ = self.fitted_image(path_b)
        uv_a, uv_b = self.dense_correspondences(index)
        if uv_a.shape[0] == 0:
            raise LoadError(f"{name}: the homography maps no pixel of image 1 into image k.")
        item = pack_correspondences(uv_a, uv_b, self.num_points, generator)
        return {"image_a": image_a.clone(), "image_b": image_b.clone(), **item, "name": name}

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", convention={self.convention!r})"
