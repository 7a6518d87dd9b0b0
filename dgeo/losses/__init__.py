"""Layer 3: training losses for dense features and unrolled pose optimisation.

- :func:`contrastive_loss`, :func:`top_m_schedule`: GN-Net's double-margin contrastive loss with
  windowed hard-negative mining (PixLoc's ``gnnet.py`` form).
- :func:`gauss_newton_loss`: GN-Net's Gauss-Newton loss (ALGORITHMS.md 2.5).
- :class:`GNNetLoss`: both, per pyramid level and in both directions, on two
  :class:`~dgeo.geometry.FeaturePyramid` s.
- :func:`reprojection_error`, :func:`reprojection_loss`, :func:`unrolled_pose_loss`: PixLoc's
  robust reprojection pose loss (ALGORITHMS.md 2.6).

Every loss works on batched, padded correspondences with a ``(B, N)`` mask and returns
``(loss, stats)``: a scalar tensor and a dict of Python floats.
"""

from dgeo.losses.contrastive import contrastive_loss, top_m_schedule
from dgeo.losses.gauss_newton import gauss_newton_loss
from dgeo.losses.gnnet import GNNetLoss
from dgeo.losses.reprojection import (
    REPROJECTION_KERNEL,
    reprojection_error,
    reprojection_loss,
    unrolled_pose_loss,
)

__all__ = [
    "REPROJECTION_KERNEL",
    "GNNetLoss",
    "contrastive_loss",
    "gauss_newton_loss",
    "reprojection_error",
    "reprojection_loss",
    "top_m_schedule",
    "unrolled_pose_loss",
]
