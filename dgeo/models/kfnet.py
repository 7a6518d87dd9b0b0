"""KFNet: SCoordNet (measurements) and OFlowNet (process model) in one module
(ALGORITHMS.md 2.7-2.9).

The per-pixel Kalman filter itself lives in :mod:`dgeo.temporal`; this container only holds
the two networks so that they are trained, saved (:func:`dgeo.models.save`) and loaded
together. ``config = {"scoordnet": {...}, "oflownet": {...}}`` rebuilds it with
``KFNet(**config)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from dgeo.errors import InputError
from dgeo.models.oflownet import OFlowNet
from dgeo.models.scoordnet import SCoordNet


class KFNetOutput(NamedTuple):
    """Outputs of :meth:`KFNet.forward` for one frame ``t`` (maps at stride 8).

    Attributes:
        xyz: ``(B, 3, h, w)`` SCoordNet measurement, decorrelated frame.
        log_sigma: ``(B, 1, h, w)`` its log-sigma (metres).
        flow: ``(B, 2, h, w)`` t -> t-1 in cells, or None without a previous image.
        log_sigma_w: ``(B, 1, h, w)`` process-noise log-sigma, or None.
    """

    xyz: torch.Tensor
    log_sigma: torch.Tensor
    flow: torch.Tensor | None
    log_sigma_w: torch.Tensor | None


def _build(value: Any, cls: type[nn.Module], name: str) -> nn.Module:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls(**value)
        except TypeError as exc:
            raise InputError(f"KFNet {name} config {dict(value)!r} is not valid: {exc}") from None
    raise InputError(
        f"KFNet {name} must be a {cls.__name__}, a dict of its options or None, got "
        f"{type(value).__name__}."
    )


class KFNet(nn.Module):
    """SCoordNet + OFlowNet.

    Args:
        scoordnet: a :class:`SCoordNet`, its config dict, or None (KFNet widths).
        oflownet: an :class:`OFlowNet`, its config dict, or None (KFNet widths).
    """

    def __init__(
        self,
        scoordnet: SCoordNet | Mapping[str, Any] | None = None,
        oflownet: OFlowNet | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.scoordnet: SCoordNet = _build(scoordnet, SCoordNet, "scoordnet")  # type: ignore[assignment]
        self.oflownet: OFlowNet = _build(oflownet, OFlowNet, "oflownet")  # type: ignore[assignment]

    @property
    def config(self) -> dict[str, Any]:
        """``{"scoordnet": {...}, "oflownet": {...}}`` (JSON types)."""
        return {"scoordnet": self.scoordnet.config, "oflownet": self.oflownet.config}

    @property
    def transform(self) -> torch.Tensor:
        """The SCoordNet's world -> decorrelated transform ``(4, 4)`` float64."""
        return self.scoordnet.transform

    def set_transform(self, T: Any) -> None:
        """Set the SCoordNet's transform (see :meth:`SCoordNet.set_transform`)."""
        self.scoordnet.set_transform(T)

    def forward(self, image_t: torch.Tensor, image_prev: torch.Tensor | None = None) -> KFNetOutput:
        """Measurement of frame ``t`` and, given the previous image, the flow t -> t-1.

        Args:
            image_t, image_prev: ``(B, 3, H, W)`` float RGB in [0, 1], multiples of 8.
        """
        xyz, log_sigma = self.scoordnet(image_t)
        if image_prev is None:
            return KFNetOutput(xyz, log_sigma, None, None)
        flow, log_sigma_w = self.oflownet(image_t, image_prev)
        return KFNetOutput(xyz, log_sigma, flow, log_sigma_w)
