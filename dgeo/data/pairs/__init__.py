"""Image pairs with correspondences for training and evaluating dense features.

Every source is a :class:`PairDataset` (the item contract is in :mod:`dgeo.data.pairs.base`):
:class:`SyntheticPairs` (rendered, exact dense correspondences and geometry), :class:`ColmapPairs`
(co-visible images of a COLMAP model), :class:`HomographyPairs` (random homographies and
photometric changes of photos), :class:`SeasonsPairs` (the Cross-Season Correspondence files of
RobotCar and CMU Seasons), :class:`HPatchesPairs` (an HPatches sequence with its ground-truth
homographies, for evaluation). :func:`parse_data_spec` and :func:`build_dataset` build them from
text specs such as ``synthetic:street``; :class:`MixedPairs` concatenates several.
"""

from dgeo.data.pairs.base import (
    GEOMETRY_KEYS,
    ITEM_KEYS,
    Fit,
    LoadError,
    PairDataset,
    check_item,
    fit_image,
    fit_size,
    pack_correspondences,
    split_of,
    subsample,
)
from dgeo.data.pairs.colmap import ColmapPairs, covisible_pairs
from dgeo.data.pairs.homography import HomographyPairs, apply_homography, random_homography
from dgeo.data.pairs.hpatches import HPatchesPairs, read_homography
from dgeo.data.pairs.seasons import SeasonsPairs, read_correspondence_mat
from dgeo.data.pairs.spec import SPEC_KINDS, MixedPairs, build_dataset, parse_data_spec
from dgeo.data.pairs.synthetic import SyntheticPairs, scene_seed

__all__ = [
    "GEOMETRY_KEYS",
    "ITEM_KEYS",
    "SPEC_KINDS",
    "ColmapPairs",
    "Fit",
    "HPatchesPairs",
    "HomographyPairs",
    "LoadError",
    "MixedPairs",
    "PairDataset",
    "SeasonsPairs",
    "SyntheticPairs",
    "apply_homography",
    "build_dataset",
    "check_item",
    "covisible_pairs",
    "fit_image",
    "fit_size",
    "pack_correspondences",
    "parse_data_spec",
    "random_homography",
    "read_correspondence_mat",
    "read_homography",
    "scene_seed",
    "split_of",
    "subsample",
]
