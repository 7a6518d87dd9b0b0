"""Co-visible image pairs of a COLMAP model, with the observations of their shared 3D points as
sparse correspondences.

Pairs are the image pairs that observe at least ``min_shared`` common 3D points, ranked by that
count (ties by image order) and capped at ``max_pairs``. The correspondences of a pair are the
2D observations (keypoints, dgeo's pixel convention) of every point both images see, up to
``num_points`` of them drawn per ``(seed, index, epoch)``.

Geometry (``points_a``, ``K_a``, ``K_b``, ``b_from_a``) comes with the items when every camera of
the model is pinhole-type (``PINHOLE``, ``SIMPLE_PINHOLE``): ``points_a`` are the model's
triangulated points in camera a's frame. Models with distortion give correspondences only.

The model is read through :func:`dgeo.io.colmap.load_reference_map` (the one place that talks to
pycolmap).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dgeo.data.pairs.base import (
    LoadError,
    PairDataset,
    check_common,
    check_split,
    fit_image,
    split_of,
    subsample,
    take_rows,
)
from dgeo.errors import DataFileNotFoundError, InputError
from dgeo.io.colmap import ReferenceMap, load_reference_map

__all__ = ["PINHOLE_MODELS", "ColmapPairs", "covisible_pairs"]

#: Camera models whose images get geometry keys.
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")
_BLOCK = 1 << 22  # (pair, point) candidates per block when counting co-visibility


def covisible_pairs(rmap: ReferenceMap, min_shared: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """All image pairs sharing at least ``min_shared`` 3D points, most shared first.

    Counts distinct points per pair from the tracks, in blocks of points so that memory stays
    bounded (a track of length ``L`` makes ``L^2`` candidates).

    Returns:
        ``pairs`` ``(K, 2)`` int64 image indices ``i < j`` and ``counts`` ``(K,)``, sorted by
        decreasing count, ties by ``(i, j)``.
    """
    n_img = rmap.num_images
    offsets = rmap.track_offsets.numpy()
    images = rmap.track_image_index.numpy()
    lengths = np.diff(offsets)
    cost = np.cumsum(lengths.astype(np.int64) ** 2)
    keys, counts = [], []
    start = 0
    while start < len(lengths):
        base = cost[start] - lengths[start] ** 2  # cost of the points before this block
        stop = int(np.searchsorted(cost, base + _BLOCK, side="right"))
        stop = min(max(stop, start + 1), len(lengths))
        lo, hi = offsets[start], offsets[stop]
        elem = np.arange(lo, hi)
        point = np.repeat(np.arange(start, stop), lengths[start:stop])
        rep = lengths[point]
        e = np.repeat(elem, rep)
        first = np.cumsum(rep) - rep
        partner = offsets[np.repeat(point, rep)] + np.arange(int(rep.sum())) - np.repeat(first, rep)
        i, j = images[e], images[partner]
        keep = i < j
        pair = i[keep] * n_img + j[keep]
        pair_point = np.unique(pair * len(lengths) + np.repeat(point, rep)[keep])
        k, c = np.unique(pair_point // len(lengths), return_counts=True)
        keys.append(k)
        counts.append(c)
        start = stop
    if not keys:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    k_all, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    c_all = np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)
    keep = c_all >= max(int(min_shared), 1)
    k_all, c_all = k_all[keep], c_all[keep]
    order = np.lexsort((k_all, -c_all))
    k_all, c_all = k_all[order], c_all[order]
    return np.stack([k_all // n_img, k_all % n_img], -1), c_all


class ColmapPairs(PairDataset):
    """Co-visible pairs of a COLMAP model (see the module docstring).

    Args:
        model_dir: the COLMAP model folder (binary or text), or a loaded :class:`ReferenceMap`.
        images_dir: the folder the model's image names are relative to.
        min_shared: least number of shared 3D points of a pair.
        max_pairs: keep the ``max_pairs`` pairs sharing the most points (``None``: all).
        split: ``"all"``, or ``"train"`` / ``"val"``: the pairs whose name hashes outside /
            inside ``val_fraction`` (:func:`~dgeo.data.pairs.base.split_of`), after ranking and
            capping.
        val_fraction: share of the pairs held out for ``"val"``.
        height, width, num_points, seed: see :class:`PairDataset`.
    Raises:
        DataFileNotFoundError: a missing model or images folder.
        InputError: a model without 3D points, or no pair left.
    """

    def __init__(
        self,
        model_dir: str | Path | ReferenceMap,
        images_dir: str | Path,
        min_shared: int = 20,
        max_pairs: int | None = 10000,
        *,
        split: str = "all",
        val_fraction: float = 0.1,
        height: int = 240,
        width: int = 320,
        num_points: int = 512,
        seed: int = 0,
    ):
        check_common(height, width, num_points, seed)
        val_fraction = check_split(split, val_fraction)
        if isinstance(min_shared, bool) or not isinstance(min_shared, int) or min_shared < 1:
            raise InputError(f"min_shared must be a positive integer, got {min_shared!r}.")
        if max_pairs is not None and (not isinstance(max_pairs, int) or max_pairs < 1):
            raise InputError(f"max_pairs must be a positive integer or None, got {max_pairs!r}.")
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise DataFileNotFoundError(
                f"images folder {self.images_dir} does not exist; pass the folder the COLMAP "
                "image names are relative to."
            )
        where = "the given map" if isinstance(model_dir, ReferenceMap) else str(model_dir)
        rmap = model_dir if isinstance(model_dir, ReferenceMap) else load_reference_map(model_dir)
        if rmap.num_points == 0 or rmap.num_observations == 0:
            raise InputError(
                f"COLMAP model {where} has no 3D points, so no image shares any; pass a "
                "triangulated model."
            )
        pairs, counts = covisible_pairs(rmap, min_shared)
        if max_pairs is not None:
            pairs, counts = pairs[:max_pairs], counts[:max_pairs]
        names = [f"{rmap.names[i]}|{rmap.names[j]}" for i, j in pairs.tolist()]
        if split != "all":
            keep = np.array([split_of(n, val_fraction) == split for n in names], bool)
            pairs, counts = pairs[keep], counts[keep]
            names = [n for n, k in zip(names, keep, strict=True) if k]
        if len(pairs) == 0:
            raise InputError(
                f"COLMAP model {where}: no image pair shares {min_shared} or more 3D points"
                + (f" in the {split!r} split" if split != "all" else "")
                + "; lower min_shared (or val_fraction / split)."
            )
        self.rmap, self.pairs, self.shared, self.names = rmap, pairs, counts, names
        self.split = split
        self.has_geometry = all(m in PINHOLE_MODELS for m in rmap.camera_models)
        super().__init__(
            height=height,
            width=width,
            num_points=num_points,
            seed=seed,
            length=len(pairs),
            source=f"colmap:{where}",
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def correspondences(self, index: int) -> dict[str, torch.Tensor]:
        """All shared observations of pair ``index`` in the original images.

        Returns:
            ``uv_a``, ``uv_b`` ``(M, 2)`` float64 keypoints and ``point`` ``(M,)`` int64 indices
            into ``rmap.xyz``.
        """
        i, j = (int(v) for v in self.pairs[index])
        pi = self.rmap.keypoint_point_index[i].numpy()
        pj = self.rmap.keypoint_point_index[j].numpy()
        ki, kj = np.nonzero(pi >= 0)[0], np.nonzero(pj >= 0)[0]
        common, ai, aj = np.intersect1d(pi[ki], pj[kj], return_indices=True)
        return {
            "uv_a": self.rmap.keypoints[i][torch.from_numpy(ki[ai])],
            "uv_b": self.rmap.keypoints[j][torch.from_numpy(kj[aj])],
            "point": torch.from_numpy(common.astype(np.int64)),
        }

    def _image(self, k: int) -> torch.Tensor:
        name = self.rmap.names[k]
        image = self.read_image(self.images_dir / name)
        w, h = (int(v) for v in self.rmap.cameras.size[k].tolist())
        if tuple(image.shape[-2:]) != (h, w):
            raise LoadError(
                f"image {self.images_dir / name} is {image.shape[-1]}x{image.shape[-2]} but its "
                f"COLMAP camera is {w}x{h}."
            )
        return image

    def load_item(self, index: int, generator: torch.Generator) -> dict:
        i, j = (int(v) for v in self.pairs[index])
        image_a, fit_a = fit_image(self._image(i), self.height, self.width)
        image_b, fit_b = fit_image(self._image(j), self.height, self.width)
        corr = self.correspondences(index)
        uv_a, uv_b = fit_a.points(corr["uv_a"]), fit_b.points(corr["uv_b"])
        size_a = uv_a.new_tensor(fit_a.size) - 0.5
        size_b = uv_b.new_tensor(fit_b.size) - 0.5
        inside = ((uv_a >= -0.5) & (uv_a <= size_a) & (uv_b >= -0.5) & (uv_b <= size_b)).all(-1)
        uv_a, uv_b, point = uv_a[inside], uv_b[inside], corr["point"][inside]
        idx, mask = subsample(len(point), self.num_points, generator)
        item = {
            "image_a": image_a,
            "image_b": image_b,
            "uv_a": take_rows(uv_a, idx, mask).float(),
            "uv_b": take_rows(uv_b, idx, mask).float(),
            "mask": mask,
            "name": self.names[index],
        }
        if self.has_geometry:
            poses = self.rmap.cam_from_world
            points_a = poses[i].transform(self.rmap.xyz[point].double())
            cams = self.rmap.cameras
            item |= {
                "points_a": take_rows(points_a, idx, mask).float(),
                "K_a": fit_a.K(cams[i].K.double()).float(),
                "K_b": fit_b.K(cams[j].K.double()).float(),
                "b_from_a": (poses[j] @ poses[i].inv()).matrix().float(),
            }
        return item
