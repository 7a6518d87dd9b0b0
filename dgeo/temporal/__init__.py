"""Layer 3: temporal filtering of localisation outputs.

- :mod:`dgeo.temporal.kalman`: KFNet's per-pixel Kalman filter on scene-coordinate maps
  (ALGORITHMS 2.9), batched and differentiable, with its zero-padding / sigma-warp bugs fixed.
- :mod:`dgeo.temporal.pose_filter`: a constant-velocity SE(3) pose filter with a chi-square
  outlier gate, for any localiser's per-frame poses.
"""

from dgeo.temporal.kalman import (
    CHI2_3_95,
    INVALID_VARIANCE,
    NIS_AXIS_BOUNDS,
    SIGMA_MIN,
    KalmanPrior,
    KalmanStep,
    PixelKalmanFilter,
    initial_state,
    kalman_predict,
    kalman_update,
    nis_consistency,
)
from dgeo.temporal.pose_filter import (
    CHI2_6_99,
    PoseFilter,
    PoseUpdate,
    filter_poses,
    measurement_covariance,
)

__all__ = [
    "CHI2_3_95",
    "CHI2_6_99",
    "INVALID_VARIANCE",
    "NIS_AXIS_BOUNDS",
    "SIGMA_MIN",
    "KalmanPrior",
    "KalmanStep",
    "PixelKalmanFilter",
    "PoseFilter",
    "PoseUpdate",
    "filter_poses",
    "initial_state",
    "kalman_predict",
    "kalman_update",
    "measurement_covariance",
    "nis_consistency",
]
