"""Robust kernels on squared residual norms, with the derivatives IRLS needs.

Every kernel maps ``s = ||r||^2 >= 0`` to ``(rho(s), rho'(s), rho''(s))`` with the Ceres
normalisation ``rho(s) ~ s`` near zero, i.e. ``rho(0) = 0`` and ``rho'(0) = 1``; ``rho'`` is the
IRLS weight of a residual. ``scale`` is the residual norm at which the kernel starts to
down-weight (Ceres' ``a``). Kernels are frozen dataclasses so they can be compared, printed and put
in configs; :func:`get_kernel` builds one from a name.

The branches use :func:`torch.where` on clamped inputs, so values *and* autograd gradients stay
finite for every ``s >= 0`` (kernels sit inside unrolled, differentiable solvers). ``scale`` may be
a float or a tensor broadcasting with ``s`` (e.g. a learned scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dgeo.errors import InputError

KernelOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class RobustKernel:
    """Base class: the trivial (L2) kernel ``rho(s) = s``.

    Attributes:
        scale: residual norm ``c`` beyond which outliers are down-weighted (> 0).
    """

    scale: float | torch.Tensor = 1.0

    def __post_init__(self):
        if not isinstance(self.scale, torch.Tensor) and not (
            math.isfinite(self.scale) and self.scale > 0
        ):
            raise InputError(
                f"{type(self).__name__} scale must be a finite positive number, got {self.scale}."
            )

    def __call__(self, s: torch.Tensor) -> KernelOutput:
        """Evaluate the kernel.

        Args:
            s: squared residual norms ``(...)``, >= 0.
        Returns:
            ``rho``, ``rho'`` (the IRLS weight) and ``rho''``, each of the shape of ``s``.
        """
        return s, torch.ones_like(s), torch.zeros_like(s)


@dataclass(frozen=True)
class TrivialKernel(RobustKernel):
    """Plain least squares: ``rho(s) = s`` (``scale`` is ignored)."""


@dataclass(frozen=True)
class Huber(RobustKernel):
    """Huber: ``rho = s`` for ``s <= c^2``, else ``2 c sqrt(s) - c^2``."""

    def __call__(self, s: torch.Tensor) -> KernelOutput:
        c = self.scale
        inlier = s <= c * c
        s_out = torch.clamp(s, min=c * c)  # the outlier branch only ever sees s >= c^2
        r = torch.sqrt(s_out)
        rho = torch.where(inlier, s, 2 * c * r - c * c)
        d1 = torch.where(inlier, torch.ones_like(s), c / r)
        d2 = torch.where(inlier, torch.zeros_like(s), -c / (2 * s_out * r))
        return rho, d1, d2


@dataclass(frozen=True)
class Cauchy(RobustKernel):
    """Cauchy (Lorentzian): ``rho = c^2 log(1 + s / c^2)``; COLMAP's default refinement loss."""

    def __call__(self, s: torch.Tensor) -> KernelOutput:
        c2 = self.scale * self.scale
        d1 = 1 / (1 + s / c2)
        return c2 * torch.log1p(s / c2), d1, -d1 * d1 / c2


@dataclass(frozen=True)
class Tukey(RobustKernel):
    """Tukey biweight: ``rho = c^2/3 (1 - (1 - s/c^2)^3)`` for ``s <= c^2``, else ``c^2/3``."""

    def __call__(self, s: torch.Tensor) -> KernelOutput:
        c2 = self.scale * self.scale
        u = torch.clamp(1 - s / c2, min=0)  # 0 in the outlier region: rho' = rho'' = 0 there
        # c^2/3 (1 - u^3) = min(s, c^2)/3 (1 + u + u^2), without cancellation at small s
        rho = torch.clamp(s, max=c2) / 3 * (1 + u + u * u)
        return rho, u * u, -2 / c2 * u


@dataclass(frozen=True)
class Barron(RobustKernel):
    """Barron's general and adaptive loss ``rho(s) = 2 c^2 f(sqrt(s), alpha, c)``.

    ``f(x, a, c) = |a - 2| / a * (((x/c)^2 / |a - 2| + 1)^(a/2) - 1)``, evaluated with
    ``expm1``/``log1p`` and with the exact limits at ``alpha`` = 2 (L2), 0
    (``2 c^2 log(1 + s/(2c^2))``, PixLoc's ``scaled_barron(0, c)``), ``-inf`` (Welsch,
    ``2 c^2 (1 - exp(-s/(2c^2)))``) and ``+inf`` (``2 c^2 (exp(s/(2c^2)) - 1)``). ``alpha = 1`` is
    pseudo-Huber, ``-2`` Geman-McClure.

    Attributes:
        scale: ``c`` (> 0).
        alpha: shape parameter in ``[-inf, inf]``.
    """

    alpha: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if math.isnan(self.alpha):
            raise InputError("Barron alpha must be a number in [-inf, inf], got nan.")

    def __call__(self, s: torch.Tensor) -> KernelOutput:
        c2 = self.scale * self.scale
        a = self.alpha
        if a == 2:
            return s, torch.ones_like(s), torch.zeros_like(s)
        if a == 0:
            d1 = 1 / (1 + s / (2 * c2))
            return 2 * c2 * torch.log1p(s / (2 * c2)), d1, -d1 * d1 / (2 * c2)
        if math.isinf(a):
            sign = 1.0 if a > 0 else -1.0
            e = torch.exp(sign * s / (2 * c2))
            return sign * 2 * c2 * torch.expm1(sign * s / (2 * c2)), e, sign * e / (2 * c2)
        b = abs(a - 2)
        log_z = torch.log1p(s / (b * c2))  # z = 1 + s / (|a - 2| c^2)
        rho = 2 * c2 * b / a * torch.expm1(a / 2 * log_z)
        d1 = torch.exp((a / 2 - 1) * log_z)
        d2 = math.copysign(1.0, a - 2) / (2 * c2) * torch.exp((a / 2 - 2) * log_z)
        return rho, d1, d2


_KERNELS: dict[str, type[RobustKernel]] = {
    "trivial": TrivialKernel,
    "l2": TrivialKernel,
    "huber": Huber,
    "cauchy": Cauchy,
    "barron": Barron,
    "tukey": Tukey,
}

KERNEL_NAMES: tuple[str, ...] = tuple(_KERNELS)


def get_kernel(
    name: str | RobustKernel | None, scale: float | torch.Tensor = 1.0, **kwargs
) -> RobustKernel:
    """Build a kernel from its name, e.g. ``get_kernel("barron", 0.1, alpha=0.0)``.

    Args:
        name: one of :data:`KERNEL_NAMES` (case-insensitive); a kernel instance is returned as
            is, ``None`` gives the trivial kernel.
        scale: the kernel scale ``c``.
        kwargs: extra parameters (``alpha`` for Barron).
    Raises:
        InputError: unknown name or parameters.
    """
    if isinstance(name, RobustKernel):
        return name
    if name is None:
        return TrivialKernel(scale)
    cls = _KERNELS.get(str(name).lower())
    if cls is None:
        raise InputError(
            f"unknown robust kernel {name!r}; choose one of: {', '.join(KERNEL_NAMES)}."
        )
    try:
        return cls(scale, **kwargs)
    except TypeError as e:
        raise InputError(f"bad parameters {kwargs} for kernel {name!r}: {e}") from None
