"""Layer 3: image retrieval and sparse-to-dense matching (S2DHM, ALGORITHMS 2.1 and 2.2).

- :mod:`dgeo.matching.retrieval`: :class:`GeM` and :class:`NetVLAD` pooling (from
  :mod:`dgeo.matching.pooling`), :func:`global_descriptors` of a pyramid level,
  :func:`sample_descriptors` for the NetVLAD k-means initialisation (:func:`kmeans`),
  :class:`PCAProjection`, :func:`retrieve` (top-k by dot product) and :func:`retrieve_by_pose`.
- :mod:`dgeo.matching.sparse_to_dense`: :func:`match_sparse_to_dense` (batched correlation with
  whole query maps, the modified ratio test, sub-pixel peaks) returning :class:`S2DMatches`.
"""

from dgeo.matching.kmeans import kmeans
from dgeo.matching.pooling import GeM, NetVLAD
from dgeo.matching.retrieval import (
    PCAProjection,
    global_descriptors,
    image_cells,
    retrieve,
    retrieve_by_pose,
    sample_descriptors,
)
from dgeo.matching.sparse_to_dense import S2DMatches, match_sparse_to_dense

__all__ = [
    "GeM",
    "NetVLAD",
    "PCAProjection",
    "S2DMatches",
    "global_descriptors",
    "image_cells",
    "kmeans",
    "match_sparse_to_dense",
    "retrieve",
    "retrieve_by_pose",
    "sample_descriptors",
]
