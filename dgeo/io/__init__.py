"""File formats and COLMAP models: the boundary where dgeo's conventions are converted.

- :mod:`dgeo.io.colmap`: COLMAP models via pycolmap (the only module importing it for models):
  cameras, poses, :class:`ReferenceMap`.
- :mod:`dgeo.io.formats`: hloc query lists and results, KFNet inputs and outputs.
- :mod:`dgeo.io.atomic`: atomic writes used by every writer here.
- :mod:`dgeo.io.images`: image files to tensors at a working resolution, with their cameras.
"""

from dgeo.io.atomic import atomic_directory, atomic_open, atomic_write_lines, atomic_write_text
from dgeo.io.colmap import (
    SUPPORTED_MODELS,
    ReferenceMap,
    camera_from_colmap,
    camera_to_colmap,
    load_reference_map,
    pose_from_colmap,
    pose_to_colmap,
    poses_from_colmap,
    read_reconstruction,
    synthesize_reference_map,
    write_reconstruction,
)
from dgeo.io.formats import (
    KFNET_LABEL_SIZES,
    kfnet_coord_path,
    kfnet_flow_path,
    read_hloc_results,
    read_image_list,
    read_kfnet_coords,
    read_kfnet_flow,
    read_kfnet_label,
    read_label_list,
    read_path_list,
    read_queries_with_intrinsics,
    read_transform,
    write_hloc_results,
    write_kfnet_coords,
    write_kfnet_flow,
    write_kfnet_label,
    write_path_list,
    write_queries_with_intrinsics,
    write_transform,
)

__all__ = [
    "KFNET_LABEL_SIZES",
    "SUPPORTED_MODELS",
    "ReferenceMap",
    "atomic_directory",
    "atomic_open",
    "atomic_write_lines",
    "atomic_write_text",
    "camera_from_colmap",
    "camera_to_colmap",
    "kfnet_coord_path",
    "kfnet_flow_path",
    "load_reference_map",
    "pose_from_colmap",
    "pose_to_colmap",
    "poses_from_colmap",
    "read_hloc_results",
    "read_image_list",
    "read_kfnet_coords",
    "read_kfnet_flow",
    "read_kfnet_label",
    "read_label_list",
    "read_path_list",
    "read_queries_with_intrinsics",
    "read_reconstruction",
    "read_transform",
    "synthesize_reference_map",
    "write_hloc_results",
    "write_kfnet_coords",
    "write_kfnet_flow",
    "write_kfnet_label",
    "write_path_list",
    "write_queries_with_intrinsics",
    "write_reconstruction",
    "write_transform",
]
