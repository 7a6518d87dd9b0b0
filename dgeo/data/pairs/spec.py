"""Datasets from short text specs, and their concatenation.

=============================== =========================================================
spec                            dataset
=============================== =========================================================
``synthetic:street``            :class:`~dgeo.data.pairs.synthetic.SyntheticPairs` street
``synthetic:room``              :class:`~dgeo.data.pairs.synthetic.SyntheticPairs` room
``colmap:MODEL_DIR:IMAGES_DIR`` :class:`~dgeo.data.pairs.colmap.ColmapPairs`
``colmap:ROOT``                 the same with ``ROOT/sfm`` and ``ROOT/images`` (the layout
                                of a ``dgeo synth`` folder)
``homography:IMAGE_DIR``        :class:`~dgeo.data.pairs.homography.HomographyPairs`
``robotcar:ROOT``               :class:`~dgeo.data.pairs.seasons.SeasonsPairs` RobotCar
``cmu:ROOT``                    :class:`~dgeo.data.pairs.seasons.SeasonsPairs` CMU
=============================== =========================================================

Keyword arguments (``height``, ``width``, ``num_points``, ``seed``, ``num_pairs``,
``cache_dir``, ...) go to every source whose constructor takes them and are ignored by the
others; one that no source takes raises :class:`InputError`.

Splits: synthetic sources use disjoint scenes for ``"train"`` and ``"val"``; the others hold out
a deterministic ``val_fraction`` (default 10 %) of their pairs for ``"val"``, chosen by a hash
of each pair's key (:func:`~dgeo.data.pairs.base.split_of`): the pair name for COLMAP and
Seasons pairs, the image path for homographies (so a validation image is never trained on).
"""

from __future__ import annotations

import bisect
import inspect
from collections.abc import Sequence
from pathlib import Path

import torch

from dgeo.data.pairs.base import GEOMETRY_KEYS, PairDataset
from dgeo.errors import DataFileNotFoundError, InputError

__all__ = ["SPEC_KINDS", "MixedPairs", "build_dataset", "parse_data_spec"]

#: The kinds a spec may start with.
SPEC_KINDS: tuple[str, ...] = ("synthetic", "colmap", "homography", "robotcar", "cmu")
_USAGE = (
    "use synthetic:street, synthetic:room, colmap:MODEL_DIR:IMAGES_DIR, colmap:ROOT, "
    "homography:IMAGE_DIR, robotcar:ROOT or cmu:ROOT"
)


def _classes() -> dict[str, type[PairDataset]]:
    from dgeo.data.pairs.colmap import ColmapPairs
    from dgeo.data.pairs.homography import HomographyPairs
    from dgeo.data.pairs.seasons import SeasonsPairs
    from dgeo.data.pairs.synthetic import SyntheticPairs

    return {
        "synthetic": SyntheticPairs,
        "colmap": ColmapPairs,
        "homography": HomographyPairs,
        "robotcar": SeasonsPairs,
        "cmu": SeasonsPairs,
    }


def _accepted(cls: type) -> set[str]:
    return {
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _check_kwargs(common: dict) -> None:
    known = set().union(*(_accepted(c) for c in _classes().values())) - {
        "scene",
        "model_dir",
        "images_dir",
        "image_dir",
        "root_or_mat",
        "kind",
    }
    unknown = sorted(set(common) - known)
    if unknown:
        raise InputError(
            f"unknown dataset option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}."
        )


def _folder(path: str, spec: str, what: str) -> Path:
    if not path:
        raise InputError(f"data spec {spec!r} names no {what}; {_USAGE}.")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataFileNotFoundError(
            f"data spec {spec!r}: {what} {p} does not exist or is not a folder; check the path."
        )
    return p


def parse_data_spec(spec: str, **common) -> PairDataset:
    """The dataset a spec names (see the module docstring).

    Args:
        spec: e.g. ``"synthetic:street"`` or ``"colmap:data/sfm:data/images"``.
        **common: constructor options; each goes to the source if its constructor takes it
            (``split`` defaults to ``"train"``).
    Raises:
        InputError: an unknown kind or option, or a malformed spec.
        DataFileNotFoundError: a folder the spec names does not exist.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise InputError(f"bad data spec {spec!r}; {_USAGE}.")
    _check_kwargs(common)
    common.setdefault("split", "train")
    kind, rest = spec.split(":", 1)
    kind = kind.strip().lower()
    classes = _classes()
    if kind not in classes:
        raise InputError(f"unknown data kind {kind!r} in {spec!r}; {_USAGE}.")
    cls = classes[kind]
    kwargs = {k: v for k, v in common.items() if k in _accepted(cls)}
    if kind == "synthetic":
        return cls(scene=rest.strip(), **kwargs)
    if kind == "colmap":
        parts = rest.split(":")
        if len(parts) == 1:
            root = _folder(parts[0], spec, "dataset folder")
            model, images = root / "sfm", root / "images"
            if not model.is_dir() or not images.is_dir():
                raise DataFileNotFoundError(
                    f"data spec {spec!r}: {root} has no sfm/ and images/ folders; pass "
                    "colmap:MODEL_DIR:IMAGES_DIR."
                )
        elif len(parts) == 2:
            model = _folder(parts[0], spec, "COLMAP model folder")
            images = _folder(parts[1], spec, "images folder")
        else:
            raise InputError(f"bad data spec {spec!r}: expected colmap:MODEL_DIR:IMAGES_DIR.")
        return cls(model, images, **kwargs)
    if kind == "homography":
        return cls(_folder(rest, spec, "image folder"), **kwargs)
    return cls(_folder(rest, spec, f"{kind} root folder"), kind=kind, **kwargs)


def build_dataset(specs: str | Sequence[str], split: str, **common) -> PairDataset:
    """One dataset of the given specs: the dataset itself for one spec, else a
    :class:`MixedPairs` of all.

    Args:
        specs: one spec or several (see :func:`parse_data_spec`).
        split: ``"train"`` or ``"val"``.
        **common: options for every source (see the module docstring).
    """
    if split not in ("train", "val"):
        raise InputError(f"split must be 'train' or 'val', got {split!r}.")
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise InputError(f"name at least one data spec; {_USAGE}.")
    parts = [parse_data_spec(s, split=split, **common) for s in specs]
    return parts[0] if len(parts) == 1 else MixedPairs(parts)


class MixedPairs(PairDataset):
    """The concatenation of datasets of one ``height``, ``width`` and ``num_points``.

    ``has_geometry`` only if every part has it (the geometry keys are dropped otherwise, so
    every item has the same keys and batches mix freely). :meth:`set_epoch` reaches every part;
    :attr:`skipped` sums theirs (each part replaces its own failed items).
    """

    def __init__(self, parts: Sequence[PairDataset]):
        parts = list(parts)
        if not parts or not all(isinstance(p, PairDataset) for p in parts):
            raise InputError("MixedPairs needs at least one PairDataset.")
        first = parts[0]
        for p in parts[1:]:
            got = (p.height, p.width, p.num_points)
            want = (first.height, first.width, first.num_points)
            if got != want:
                raise InputError(
                    f"{p.source} has (height, width, num_points) {got}, {first.source} {want}; "
                    "build every part with the same values."
                )
        self.parts = parts
        self.has_geometry = all(p.has_geometry for p in parts)
        self._ends = list(torch.tensor([len(p) for p in parts]).cumsum(0).tolist())
        super().__init__(
            height=first.height,
            width=first.width,
            num_points=first.num_points,
            seed=first.seed,
            length=0,
            source=" + ".join(p.source for p in parts),
        )

    def __len__(self) -> int:
        return self._ends[-1]

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for p in self.parts:
            p.set_epoch(epoch)

    @property
    def skipped(self) -> int:
        return sum(p.skipped for p in self.parts)

    def locate(self, index: int) -> tuple[PairDataset, int]:
        """The part holding item ``index`` and the index within it."""
        k = bisect.bisect_right(self._ends, index)
        return self.parts[k], index - (self._ends[k - 1] if k else 0)

    def load_item(self, index: int, generator: torch.Generator) -> dict:
        part, local = self.locate(index)
        item = part[local]
        if not self.has_geometry:
            item = {k: v for k, v in item.items() if k not in GEOMETRY_KEYS}
        return item
