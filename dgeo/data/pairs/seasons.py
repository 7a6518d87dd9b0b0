"""The Cross-Season Correspondence dataset (Larsson et al., CVPR 2019) of RobotCar Seasons and
Extended CMU Seasons: image pairs across conditions with sparse 2D-2D correspondences.

Each ``.mat`` file (MATLAB v7.3, i.e. HDF5) holds one pair:

* ``im_i_path``, ``im_j_path``: the image paths as MATLAB character codes (uint16), decoded
  with ``chr``;
* ``pt_i``, ``pt_j``: the ``N`` corresponding points ``(x, y)`` in the original images. MATLAB
  writes arrays column-major, so an ``N x 2`` MATLAB array reads as ``(2, N)`` through h5py;
  both ``(2, N)`` and ``(N, 2)`` are accepted (``(2, 2)`` is taken as MATLAB's layout, rows x
  and y). The coordinates are used as 0-based pixel centres, as the dataset authors' loader
  uses them (it rounds them to pixel indices); ``one_based=True`` subtracts 1.

Files are opened with h5py read-only and closed right after reading (never ``r+``, never left
open), one file per item, so construction only lists them. Image paths are resolved under the
images folder (``ROOT/images`` if it exists, else ``ROOT``, or ``images_dir``): the stored
path itself, then its trailing components (``overcast-reference/rear/x.jpg``, ``rear/x.jpg``,
...), then the file name anywhere below the folder (also with CMU's ``_rect`` suffix). An image
that cannot be found or decoded skips the pair (counted in ``skipped``); a ``.mat`` file without
the expected keys raises :class:`~dgeo.errors.ParseError` naming the file and the key.

Points outside either image are dropped; ``N`` of the rest are drawn per
``(seed, index, epoch)``. The pairs have no geometry.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import h5py
import numpy as np
import torch

from dgeo.data.pairs.base import (
    LoadError,
    PairDataset,
    check_common,
    check_split,
    fit_image,
    pack_correspondences,
    split_of,
)
from dgeo.data.synthetic.textures import IMAGE_EXTENSIONS
from dgeo.errors import DataFileNotFoundError, InputError, ParseError

__all__ = ["KINDS", "MAT_KEYS", "SeasonsPairs", "read_correspondence_mat"]

#: The dataset kinds.
KINDS = ("robotcar", "cmu")
#: The keys every correspondence file must hold.
MAT_KEYS = ("im_i_path", "im_j_path", "pt_i", "pt_j")


def _decode_chars(path: Path, key: str, data: np.ndarray) -> str:
    codes = np.asarray(data).reshape(-1)
    if codes.dtype.kind not in "iu":
        raise ParseError(
            path, None, f"{key!r} must hold character codes (integers), got dtype {codes.dtype}."
        )
    return "".join(chr(int(c)) for c in codes if c != 0)


def _points(path: Path, key: str, data: np.ndarray) -> np.ndarray:
    a = np.asarray(data, dtype=np.float64)
    if a.ndim != 2 or 2 not in a.shape:
        raise ParseError(path, None, f"{key!r} must be N x 2 or 2 x N, got shape {a.shape}.")
    return a.T if a.shape[0] == 2 else a  # (2, N) is MATLAB's N x 2 read through h5py


def read_correspondence_mat(path: str | Path) -> dict:
    """Read one Cross-Season Correspondence ``.mat`` file (read-only, closed on return).

    Returns:
        ``{"im_i_path": str, "im_j_path": str, "pt_i": (N, 2) float64, "pt_j": (N, 2)
        float64}`` with the points as stored (x, y).
    Raises:
        DataFileNotFoundError: no such file.
        ParseError: not an HDF5 (MATLAB v7.3) file, a missing key, or malformed arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"correspondence file {path} does not exist; check the path.")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ParseError(
            path, None, f"not an HDF5 (MATLAB v7.3) file ({e}); save it with -v7.3."
        ) from e
    with f:
        for key in MAT_KEYS:
            if key not in f:
                raise ParseError(
                    path,
                    None,
                    f"missing key {key!r}; a Cross-Season Correspondence file holds "
                    f"{', '.join(MAT_KEYS)} (found {', '.join(sorted(f.keys())) or 'none'}).",
                )
        raw = {key: f[key][()] for key in MAT_KEYS}
    out = {
        "im_i_path": _decode_chars(path, "im_i_path", raw["im_i_path"]),
        "im_j_path": _decode_chars(path, "im_j_path", raw["im_j_path"]),
        "pt_i": _points(path, "pt_i", raw["pt_i"]),
        "pt_j": _points(path, "pt_j", raw["pt_j"]),
    }
    if out["pt_i"].shape != out["pt_j"].shape:
        raise ParseError(
            path,
            None,
            f"pt_i {out['pt_i'].shape} and pt_j {out['pt_j'].shape} hold different numbers of "
            "points.",
        )
    return out


def _parts(stored: str) -> list[str]:
    """Path components of a stored path (POSIX or Windows), without anchors and dots."""
    pure = PureWindowsPath(stored) if "\\" in stored else PurePosixPath(stored)
    return [p for p in pure.parts if p not in (pure.anchor, "", ".", "/", "\\")]


class SeasonsPairs(PairDataset):
    """Cross-Season Correspondence pairs of RobotCar or CMU Seasons (module docstring).

    Args:
        root_or_mat: a dataset root (``.mat`` files anywhere below it, images in
            ``ROOT/images`` or ``ROOT``) or one ``.mat`` file.
        kind: ``"robotcar"`` or ``"cmu"``.
        images_dir: the folder the image paths are resolved under (default: ``ROOT/images``
            if it exists, else ``ROOT``; for a ``.mat`` file, the nearest ancestor's
            ``images`` folder, else the file's folder).
        split: ``"all"``, or ``"train"`` / ``"val"`` (files whose path relative to the root
            hashes outside / inside ``val_fraction``, :func:`~dgeo.data.pairs.base.split_of`).
        val_fraction: share of the pairs held out for ``"val"``.
        one_based: the stored points are 1-based (subtract 1).
        height, width, num_points, seed: see :class:`PairDataset`.
    Raises:
        DataFileNotFoundError: ``root_or_mat`` or ``images_dir`` does not exist.
        InputError: no ``.mat`` file (in the split).
        ParseError: the first ``.mat`` file is malformed (checked at construction).
    """

    def __init__(
        self,
        root_or_mat: str | Path,
        kind: str = "robotcar",
        images_dir: str | Path | None = None,
        *,
        split: str = "all",
        val_fraction: float = 0.1,
        one_based: bool = False,
        height: int = 240,
        width: int = 320,
        num_points: int = 512,
        seed: int = 0,
    ):
        check_common(height, width, num_points, seed)
        if kind not in KINDS:
            raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}.")
        val_fraction = check_split(split, val_fraction)
        root = Path(root_or_mat)
        if not root.exists():
            raise DataFileNotFoundError(
                f"{kind} correspondence data {root} does not exist; pass the dataset root or a "
                ".mat file."
            )
        if root.is_file():
            mats, base = [root], root.parent
            default_images = next(
                (p / "images" for p in root.parents if (p / "images").is_dir()), root.parent
            )
        else:
            base = root
            mats = sorted(p for p in root.rglob("*.mat") if p.is_file())
            default_images = root / "images" if (root / "images").is_dir() else root
        self.images_dir = Path(images_dir) if images_dir is not None else default_images
        if not self.images_dir.is_dir():
            raise DataFileNotFoundError(
                f"images folder {self.images_dir} does not exist; pass images_dir."
            )
        if not mats:
            raise InputError(
                f"{root} holds no .mat correspondence files; pass the {kind} correspondence "
                "dataset root or a .mat file."
            )
        keys = [p.relative_to(base).as_posix() for p in mats]
        if split != "all":
            keep = [split_of(k, val_fraction) == split for k in keys]
            mats = [m for m, k in zip(mats, keep, strict=True) if k]
            keys = [m for m, k in zip(keys, keep, strict=True) if k]
            if not mats:
                raise InputError(
                    f"{root}: no correspondence file falls in the {split!r} split "
                    f"(val_fraction {val_fraction}); change val_fraction."
                )
        read_correspondence_mat(mats[0])  # fail early on a wrong format
        self.kind, self.mats, self.keys, self.one_based = kind, mats, keys, bool(one_based)
        self._by_name: dict[str, Path] | None = None
        self._depth: int | None = None  # leading components to drop that worked last time
        super().__init__(
            height=height,
            width=width,
            num_points=num_points,
            seed=seed,
            length=len(mats),
            source=f"{kind}:{root}",
        )

    def __len__(self) -> int:
        return len(self.mats)

    # ------------------------------------------------------------------ image paths
    def _index(self) -> dict[str, Path]:
        if self._by_name is None:
            found: dict[str, Path] = {}
            for folder, _, files in os.walk(self.images_dir):
                for f in files:
                    if Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                        found.setdefault(f, Path(folder) / f)
            self._by_name = found
        return self._by_name

    def resolve(self, stored: str) -> Path:
        """The image file of a stored path (see the module docstring).

        Raises:
            LoadError: no such image under the images folder.
        """
        parts = _parts(stored)
        if parts:
            order = range(len(parts))
            if self._depth is not None and self._depth < len(parts):
                order = [self._depth, *(k for k in order if k != self._depth)]
            for k in order:
                candidate = self.images_dir.joinpath(*parts[k:])
                if candidate.is_file():
                    self._depth = k
                    return candidate
            name = parts[-1]
            stem, suffix = os.path.splitext(name)
            index = self._index()
            for candidate in (name, f"{stem}_rect{suffix}", f"{stem}_rect.jpg"):
                if candidate in index:
                    return index[candidate]
        raise LoadError(f"image {stored!r} not found under {self.images_dir}.")

    # ------------------------------------------------------------------ items
    def load_item(self, index: int, generator: torch.Generator) -> dict:
        data = read_correspondence_mat(self.mats[index])
        path_a, path_b = self.resolve(data["im_i_path"]), self.resolve(data["im_j_path"])
        image_a, fit_a = fit_image(self.read_image(path_a), self.height, self.width)
        image_b, fit_b = fit_image(self.read_image(path_b), self.height, self.width)
        shift = 1.0 if self.one_based else 0.0
        pt_a = torch.from_numpy(data["pt_i"] - shift)
        pt_b = torch.from_numpy(data["pt_j"] - shift)
        ok = torch.isfinite(pt_a).all(-1) & torch.isfinite(pt_b).all(-1)
        for pt, fit in ((pt_a, fit_a), (pt_b, fit_b)):
            w, h = fit.source
            ok &= (pt[:, 0] >= -0.5) & (pt[:, 0] <= w - 0.5) & (pt[:, 1] >= -0.5)
            ok &= pt[:, 1] <= h - 0.5
        item = pack_correspondences(
            fit_a.points(pt_a[ok]), fit_b.points(pt_b[ok]), self.num_points, generator
        )
        return {
            "image_a": image_a,
            "image_b": image_b,
            **item,
            "name": f"{data['im_i_path']}|{data['im_j_path']}",
        }
