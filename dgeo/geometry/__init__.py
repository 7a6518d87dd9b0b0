"""Layer 0: batched poses, cameras and sub-pixel sampling of dense maps (never imports pycolmap)."""

from dgeo.geometry.pose import Pose, skew

__all__ = ["Pose", "skew"]
