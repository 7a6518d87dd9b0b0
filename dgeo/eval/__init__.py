"""Layer 4: pose errors, recalls at benchmark thresholds, medians and their reports."""

from dgeo.eval.metrics import (
    THRESHOLD_SETS,
    EvalResult,
    Summary,
    Threshold,
    evaluate,
    get_thresholds,
    median,
    pose_errors,
    position_error,
    recall,
    rotation_error,
)

__all__ = [
    "THRESHOLD_SETS",
    "EvalResult",
    "Summary",
    "Threshold",
    "evaluate",
    "get_thresholds",
    "median",
    "pose_errors",
    "position_error",
    "recall",
    "rotation_error",
]
