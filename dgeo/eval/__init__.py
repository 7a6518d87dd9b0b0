"""Layer 4: pose errors, recalls at benchmark thresholds, medians and their reports; the PCK of
dense matching on image pairs (:mod:`dgeo.eval.matching`)."""

from dgeo.eval.matching import (
    MatchScores,
    match_scores,
    matching_pck,
    nearest_neighbour_matches,
    pck,
    sparse_to_dense_matches,
)
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
    "MatchScores",
    "Summary",
    "Threshold",
    "evaluate",
    "get_thresholds",
    "match_scores",
    "matching_pck",
    "median",
    "nearest_neighbour_matches",
    "pck",
    "pose_errors",
    "position_error",
    "recall",
    "rotation_error",
    "sparse_to_dense_matches",
]
