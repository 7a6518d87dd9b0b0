"""Scene-coordinate regression localization: poses from dense scene-coordinate maps
(:mod:`.pose`), the sequence localizer of SCoordNet, KFNet and ACE (:mod:`.sequence`), and
ACE's fast mapping (:mod:`.ace`)."""

from dgeo.pipeline.scr.ace import (
    ACEAugment,
    ACEBuffer,
    FrameSource,
    ace_loss,
    augment_views,
    build_buffer,
    evaluate_frames,
    localize_frames,
    map_scene,
    soft_clamp_schedule,
)
from dgeo.pipeline.scr.pose import confident_cells, poses_from_coords
from dgeo.pipeline.scr.sequence import (
    METHODS,
    FrameResult,
    PoseOptions,
    SequenceLocalizer,
    SequenceSummary,
    load_sequence_model,
    localize_sequence,
    open_sequence,
    reason_name,
)

__all__ = [
    "METHODS",
    "ACEAugment",
    "ACEBuffer",
    "FrameResult",
    "FrameSource",
    "PoseOptions",
    "SequenceLocalizer",
    "SequenceSummary",
    "ace_loss",
    "augment_views",
    "build_buffer",
    "confident_cells",
    "evaluate_frames",
    "load_sequence_model",
    "localize_frames",
    "localize_sequence",
    "map_scene",
    "open_sequence",
    "poses_from_coords",
    "reason_name",
    "soft_clamp_schedule",
]
