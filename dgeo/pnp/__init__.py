"""Layer 2: minimal and linear absolute-pose solvers, geometric and feature-metric refinement."""

from dgeo.pnp.featuremetric import (
    FeatureMetricReason,
    FeatureMetricResidual,
    FeatureMetricResult,
    refine_featuremetric,
    refine_photometric,
)
from dgeo.pnp.linear import pnp_linear
from dgeo.pnp.p3p import p3p
from dgeo.pnp.refine import (
    RefineResult,
    pose_covariance,
    refine_pose,
    residual_variance,
    tangent_difference,
)

__all__ = [
    "FeatureMetricReason",
    "FeatureMetricResidual",
    "FeatureMetricResult",
    "RefineResult",
    "p3p",
    "pnp_linear",
    "pose_covariance",
    "refine_featuremetric",
    "refine_photometric",
    "refine_pose",
    "residual_variance",
    "tangent_difference",
]
