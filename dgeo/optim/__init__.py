"""Layer 1: batched robust Gauss-Newton / Levenberg-Marquardt and robust kernels."""

from dgeo.optim.kernels import (
    KERNEL_NAMES,
    Barron,
    Cauchy,
    Huber,
    RobustKernel,
    TrivialKernel,
    Tukey,
    get_kernel,
)
from dgeo.optim.lm import LMOptions, LMResult, minimize
from dgeo.optim.residuals import ReprojectionResidual

__all__ = [
    "KERNEL_NAMES",
    "Barron",
    "Cauchy",
    "Huber",
    "LMOptions",
    "LMResult",
    "ReprojectionResidual",
    "RobustKernel",
    "TrivialKernel",
    "Tukey",
    "get_kernel",
    "minimize",
]
