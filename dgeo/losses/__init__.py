"""Layer 3: training losses for dense features and unrolled pose optimisation.

- :func:`contrastive_loss`, :func:`top_m_schedule`: GN-Net's double-margin contrastive loss with
  windowed hard-negative mining (PixLoc's ``gnnet.py`` form).
- :func:`gauss_newton_loss`: GN-Net's Gauss-Newton loss (ALGORITHMS.md 2.5).
- :class:`GNNetLoss`: both, per pyramid level and in both directions, on two
  :class:`~dgeo.geometry.FeaturePyramid` s.
- :func:`reprojection_error`, :func:`reprojection_loss`, :func:`unrolled_pose_loss`: PixLoc's
  robust reprojection pose loss (ALGORITHMS.md 2.6).
- :func:`gaussian_nll`, :func:`gaussian_nll_variance`: KFNet's scene-coordinate NLL with a
  per-cell sigma (ALGORITHMS.md 2.7), masked and optionally truncated.
- :func:`oflownet_loss`, :func:`kfnet_loss`, :func:`photometric_loss`,
  :func:`smoothness_loss`: OFlowNet's label-free loss and the joint KFNet loss (2.8, 2.9).

The correspondence losses work on batched, padded correspondences with a ``(B, N)`` mask and
return ``(loss, stats)``: a scalar tensor and a dict of Python floats. The scene-coordinate
losses work on stride-8 cell maps ``(B, C, h, w)`` with ``(B, h, w)`` masks; the NLLs and the
photometric / smoothness terms return a scalar, :func:`oflownet_loss` and :func:`kfnet_loss`
``(loss, stats)``.
"""

from dgeo.losses.contrastive import contrastive_loss, top_m_schedule
from dgeo.losses.flow import (
    cell_images,
    kfnet_loss,
    oflownet_loss,
    photometric_loss,
    smoothness_loss,
    ssim_dissimilarity,
    window_valid,
)
from dgeo.losses.gauss_newton import gauss_newton_loss
from dgeo.losses.gnnet import GNNetLoss
from dgeo.losses.reprojection import (
    REPROJECTION_KERNEL,
    reprojection_error,
    reprojection_loss,
    unrolled_pose_loss,
)
from dgeo.losses.uncertainty import gaussian_nll, gaussian_nll_variance

__all__ = [
    "REPROJECTION_KERNEL",
    "GNNetLoss",
    "cell_images",
    "contrastive_loss",
    "gauss_newton_loss",
    "gaussian_nll",
    "gaussian_nll_variance",
    "kfnet_loss",
    "oflownet_loss",
    "photometric_loss",
    "reprojection_error",
    "reprojection_loss",
    "smoothness_loss",
    "ssim_dissimilarity",
    "top_m_schedule",
    "unrolled_pose_loss",
    "window_valid",
]
