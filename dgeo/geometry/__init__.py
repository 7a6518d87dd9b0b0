"""Layer 0: batched poses, cameras and sub-pixel sampling of dense maps (never imports pycolmap)."""

from dgeo.geometry.camera import PARAM_NAMES, Camera, distort, undistort
from dgeo.geometry.pose import Pose, skew
from dgeo.geometry.pyramid import FeatureLevel, FeaturePyramid
from dgeo.geometry.sampling import sample, spatial_gradient

__all__ = [
    "PARAM_NAMES",
    "Camera",
    "FeatureLevel",
    "FeaturePyramid",
    "Pose",
    "distort",
    "sample",
    "skew",
    "spatial_gradient",
    "undistort",
]
