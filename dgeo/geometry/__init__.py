"""Layer 0: batched poses, cameras and sub-pixel sampling of dense maps (never imports pycolmap)."""

from dgeo.geometry.camera import PARAM_NAMES, Camera, distort, undistort
from dgeo.geometry.pose import Pose, skew
from dgeo.geometry.pyramid import FeatureLevel, FeaturePyramid
from dgeo.geometry.sampling import cell_pixels, sample, spatial_gradient, warp_by_flow

__all__ = [
    "PARAM_NAMES",
    "Camera",
    "FeatureLevel",
    "FeaturePyramid",
    "Pose",
    "cell_pixels",
    "distort",
    "sample",
    "skew",
    "spatial_gradient",
    "undistort",
    "warp_by_flow",
]
