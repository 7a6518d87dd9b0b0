"""Layer 2: batched LO-RANSAC for absolute pose, and its differentiable (DSAC) variant."""

from dgeo.ransac.dsac import DSACResult, dsac_pnp, pose_loss_dsacstar, soft_inlier_scores
from dgeo.ransac.lo_ransac import PnPReason, PnPResult, pnp_finish, pnp_ransac

__all__ = [
    "DSACResult",
    "PnPReason",
    "PnPResult",
    "dsac_pnp",
    "pnp_finish",
    "pnp_ransac",
    "pose_loss_dsacstar",
    "soft_inlier_scores",
]
