"""SCoordNet: KFNet's scene-coordinate regression network (ALGORITHMS.md 2.7).

A plain VGG-like stack of 3x3 convolutions with ReLU (no batch norm) down to stride 8, then
1x1 convolutions to 4 channels per cell: ``xyz`` in the *decorrelated* scene frame and
``log sigma`` (metres) of an isotropic Gaussian. The ``"kfnet"`` widths are KFNet's exactly
(24,406,724 parameters, receptive field 79 px); ``"small"`` is a CPU-sized variant with the same
layout (same stride and receptive field, about 0.46 M parameters).

Layout (``widths = [c1a, c1b, c2a, c2b, c3a, c3b, c4a, c4b, c5, c6, c7]``)::

    conv1a 3x3 c1a, conv1b 3x3 c1b,
    conv2a 3x3 c2a stride 2, conv2b 3x3 c2b,
    conv3a 3x3 c3a stride 2, conv3b 3x3 c3b,
    conv4a 3x3 c4a stride 2, conv4b 3x3 c4b,
    conv5 3x3 c5, conv6 3x3 c6, conv7 1x1 c7, prediction 1x1 4 (linear)

Cell alignment: the first two stride-2 convolutions pad one pixel on every side and the last
pads only right and bottom (TensorFlow's ``SAME``), which centres the receptive field of cell
``(i, j)`` exactly on pixel ``(8j + 4, 8i + 4)``, the pixel of dgeo's stride-8 convention
(:func:`dgeo.geometry.cell_pixels`). Images must have ``H`` and ``W`` multiples of 8.

The network regresses ``y = T @ [X_world; 1]`` where ``T`` (``transform`` buffer, float64 4x4,
rigid) is KFNet's ``transform.txt`` (identity by default); :meth:`SCoordNet.predict_world` maps
back with ``T^-1`` and :meth:`SCoordNet.to_decorrelated` maps labels forward. ``sigma`` is
invariant under rigid ``T``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dgeo.errors import InputError, NonFiniteError, RotationError, ShapeError
from dgeo.models.base import as_int_list, check_rgb_images

#: Cell stride of the output maps.
STRIDE = 8
#: Floor of the predicted sigma (metres), as KFNet's ``max(sigma, 1e-5)``.
SIGMA_MIN = 1e-5
#: Channel widths of the 11 hidden layers (conv1a .. conv7), by preset name.
SCOORDNET_WIDTHS: dict[str, tuple[int, ...]] = {
    "kfnet": (64, 64, 256, 256, 512, 512, 1024, 1024, 512, 256, 128),
    "small": (16, 16, 32, 32, 64, 64, 128, 128, 96, 64, 64),
}
#: (kernel, stride) of the 11 hidden layers.
_LAYOUT = ((3, 1), (3, 1), (3, 2), (3, 1), (3, 2), (3, 1), (3, 2), (3, 1), (3, 1), (3, 1), (1, 1))
#: Input normalisation of KFNet: ``(I * 255 - 128) / 160`` with ``I`` in [0, 1].
_IMAGE_OFFSET, _IMAGE_SCALE = 128.0, 1.0 / 160.0


class _TFSamePad(nn.Module):
    """Zero padding by one pixel on the right and bottom (TensorFlow ``SAME`` for a 3x3,
    stride-2 convolution on an even size): output ``i`` is centred on input ``2i + 1``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 1, 0, 1))


def stride8_stack(
    cin: int, widths: Sequence[int], layout: Sequence[tuple[int, int]]
) -> list[nn.Module]:
    """Convolutions with ReLU for ``widths`` and ``(kernel, stride)`` ``layout``, padded so that
    after three stride-2 layers cell ``i`` is centred on pixel ``8i + 4`` (the first two
    strided layers pad symmetrically, the third right/bottom only). The ReLU follows every
    layer; callers drop or keep it."""
    layers: list[nn.Module] = []
    n_strided = sum(1 for _, s in layout if s == 2)
    seen = 0
    for cout, (k, s) in zip(widths, layout, strict=True):
        if s == 2:
            seen += 1
            if seen == n_strided:  # the last strided conv: TF SAME padding
                layers += [_TFSamePad(), nn.Conv2d(cin, cout, k, stride=2, padding=0)]
            else:
                layers.append(nn.Conv2d(cin, cout, k, stride=2, padding=k // 2))
        else:
            layers.append(nn.Conv2d(cin, cout, k, padding=k // 2))
        layers.append(nn.ReLU(inplace=True))
        cin = cout
    return layers


def seeded_he_init_(module: nn.Module, seed: int) -> None:
    """Deterministic He-normal init (zero biases) of every Conv2d, ConvTranspose2d and Linear
    of ``module`` from one CPU :class:`torch.Generator` in module order: the same ``seed`` gives
    the same weights on every device. Modules on the ``meta`` device are skipped."""
    gen = torch.Generator().manual_seed(int(seed))
    for m in module.modules():
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            continue
        if m.weight.device.type == "meta":
            continue
        fan_in = (
            m.weight[0].numel()
            if not isinstance(m, nn.ConvTranspose2d)
            else (m.weight.shape[0] * m.weight[0, 0].numel())
        )
        w = torch.randn(m.weight.shape, generator=gen, dtype=torch.float32, device="cpu")
        with torch.no_grad():
            m.weight.copy_(w * math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                m.bias.zero_()


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """KFNet's input normalisation of RGB ``images`` in [0, 1]: ``(I * 255 - 128) / 160``."""
    return (images * 255.0 - _IMAGE_OFFSET) * _IMAGE_SCALE


def check_cell_images(images: Any, module: nn.Module, name: str = "images") -> tuple[int, int]:
    """Check float RGB ``images (B, 3, H, W)`` for a stride-8 network and return ``(h, w)``,
    the cell-map size ``(H / 8, W / 8)``.

    Raises:
        ShapeError: not 4D, not 3 channels, or ``H``/``W`` not positive multiples of 8.
        InputError: not a float tensor, or not on the weights' device and dtype.
    """
    cls = type(module).__name__
    check_rgb_images(images, name)
    h, w = images.shape[-2:]
    if h < STRIDE or w < STRIDE or h % STRIDE or w % STRIDE:
        lo = (max(h // STRIDE, 1) * STRIDE, max(w // STRIDE, 1) * STRIDE)
        hi = (-(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE)
        raise ShapeError(
            f"{name} of size {h}x{w} (HxW): {cls} needs H and W that are positive multiples "
            f"of {STRIDE} (its outputs are stride-{STRIDE} cell maps); crop to "
            f"{lo[0]}x{lo[1]} or pad to {hi[0]}x{hi[1]}."
        )
    p = next(module.parameters(), None)
    if p is not None and (p.device != images.device or p.dtype != images.dtype):
        raise InputError(
            f"{name} are {images.dtype} on {images.device} but the {cls} weights are "
            f"{p.dtype} on {p.device}; call model.to({name}.device, {name}.dtype)."
        )
    return h // STRIDE, w // STRIDE


def check_rigid(T: Any, name: str = "transform", tol: float = 1e-4) -> torch.Tensor:
    """``T`` as a ``(4, 4)`` float64 CPU tensor after checking it is a rigid transform.

    Raises:
        ShapeError: not ``(4, 4)``.
        NonFiniteError: NaN or infinite entries.
        InputError: last row not ``0 0 0 1``.
        RotationError: the top-left 3x3 block is not a rotation (orthonormal, det +1) within
            ``tol``.
    """
    if isinstance(T, torch.Tensor):
        T = T.detach().to("cpu", torch.float64)
    else:
        try:
            T = torch.as_tensor(np.asarray(T, dtype=np.float64))
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a (4, 4) matrix, got {type(T).__name__}.") from None
    if tuple(T.shape) != (4, 4):
        raise ShapeError(f"{name} must have shape (4, 4), got {tuple(T.shape)}.")
    if not bool(torch.isfinite(T).all()):
        raise NonFiniteError(f"{name} holds NaN/inf entries; pass a finite rigid 4x4 matrix.")
    if float((T[3] - T.new_tensor([0.0, 0.0, 0.0, 1.0])).abs().max()) > 1e-6:
        raise InputError(f"{name} must have last row 0 0 0 1, got {T[3].tolist()}.")
    R = T[:3, :3]
    ortho = float((R.T @ R - torch.eye(3, dtype=R.dtype)).abs().max())
    det = float(torch.linalg.det(R))
    if ortho > tol or abs(det - 1.0) > tol:
        raise RotationError(
            f"{name} is not rigid: its 3x3 block deviates from orthonormal by {ortho:.2e} and "
            f"has determinant {det:.6f} (need a rotation within {tol:g}); KFNet's "
            "transform.txt must be a rotation and a translation."
        )
    return T.clone()


def apply_transform(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``T[:3, :3] @ X + T[:3, 3]`` for maps ``points (B, 3, h, w)``, computed in float64 and
    returned in ``points``' dtype (NaN stays NaN)."""
    if not isinstance(points, torch.Tensor) or points.dim() != 4 or points.shape[1] != 3:
        got = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ShapeError(f"coordinate maps must have shape (B, 3, h, w), got {got}.")
    T = T.to(points.device, torch.float64)
    out = torch.einsum("ij,bjhw->bihw", T[:3, :3], points.double()) + T[:3, 3, None, None]
    return out.to(points.dtype)


def rigid_inverse(T: torch.Tensor) -> torch.Tensor:
    """Inverse of a rigid ``(4, 4)`` transform: ``[R^T, -R^T t; 0 1]``."""
    R, t = T[:3, :3], T[:3, 3]
    out = torch.eye(4, dtype=T.dtype, device=T.device)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def resolve_widths(widths: str | Sequence[int]) -> list[int]:
    """The 11 hidden widths of a preset name or an explicit list."""
    if isinstance(widths, str):
        if widths not in SCOORDNET_WIDTHS:
            raise InputError(
                f"unknown SCoordNet widths {widths!r}; choose one of "
                f"{', '.join(SCOORDNET_WIDTHS)} or pass 11 integers."
            )
        return list(SCOORDNET_WIDTHS[widths])
    out = as_int_list(widths, "SCoordNet widths")
    if len(out) != len(_LAYOUT):
        raise InputError(
            f"SCoordNet widths need {len(_LAYOUT)} integers (conv1a, conv1b, conv2a, conv2b, "
            f"conv3a, conv3b, conv4a, conv4b, conv5, conv6, conv7), got {len(out)}: {out}."
        )
    return out


class SCoordNet(nn.Module):
    """Scene-coordinate regression with per-cell uncertainty (KFNet's SCoordNet).

    Args:
        widths: ``"kfnet"`` (ALGORITHMS 2.7 exactly, 24,406,724 parameters), ``"small"``
            (CPU-sized, ~0.46 M) or 11 explicit channel counts (see the module docstring).
        seed: deterministic He initialisation (:func:`seeded_he_init_`); None keeps torch's
            default initialisation.

    Attributes:
        transform: buffer ``(4, 4)`` float64, world -> decorrelated frame (identity by default;
            kept float64 by ``.to()``/``.float()``/``.half()``); saved with the weights.
    """

    def __init__(self, widths: str | Sequence[int] = "kfnet", seed: int | None = 0) -> None:
        super().__init__()
        self._widths_arg: str | list[int] = widths if isinstance(widths, str) else []
        resolved = resolve_widths(widths)
        if not isinstance(widths, str):
            self._widths_arg = resolved
        self.widths = resolved
        self.seed = None if seed is None else int(seed)
        self.body = nn.Sequential(*stride8_stack(3, resolved, _LAYOUT))
        self.prediction = nn.Conv2d(resolved[-1], 4, 1)
        # built on the CPU even under a ``torch.device("meta")`` context (torch.eye on meta
        # goes through slow reference implementations); moved by .to() like any buffer
        self.register_buffer("transform", torch.eye(4, dtype=torch.float64, device="cpu"))
        if self.seed is not None:
            seeded_he_init_(self, self.seed)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON types): ``SCoordNet(**model.config)`` rebuilds
        the architecture."""
        return {"widths": self._widths_arg, "seed": self.seed}

    @property
    def stride(self) -> int:
        """Cell stride of the outputs (8)."""
        return STRIDE

    @property
    def receptive_field(self) -> int:
        """Receptive field of one output cell in pixels (79 for the KFNet layout)."""
        rf, jump = 1, 1
        for k, s in _LAYOUT:
            rf += (k - 1) * jump
            jump *= s
        return rf

    def _apply(self, fn, *args, **kwargs):  # keep the transform float64 across .to()/.half()
        T = self._buffers["transform"]
        out = super()._apply(fn, *args, **kwargs)
        new = self._buffers["transform"]
        if new is not None and new.dtype != torch.float64:
            self._buffers["transform"] = T.to(device=new.device, dtype=torch.float64)
        return out

    def set_transform(self, T: Any) -> None:
        """Set the world -> decorrelated transform ``T`` (``(4, 4)`` tensor or array, rigid).

        Raises:
            ShapeError, NonFiniteError, InputError, RotationError: see :func:`check_rigid`.
        """
        T = check_rigid(T)
        with torch.no_grad():
            self.transform.copy_(T.to(self.transform.device))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene coordinates in the decorrelated frame and their log-sigma.

        Args:
            images: ``(B, 3, H, W)`` float RGB in [0, 1]; ``H``, ``W`` multiples of 8.
        Returns:
            ``xyz (B, 3, H/8, W/8)`` (decorrelated frame, metres) and
            ``log_sigma (B, 1, H/8, W/8)`` (natural log of sigma in metres, unfloored).
        """
        check_cell_images(images, self)
        out = self.prediction(self.body(normalize_images(images)))
        return out[:, :3], out[:, 3:]

    def to_decorrelated(self, world: torch.Tensor) -> torch.Tensor:
        """World coordinates ``(B, 3, h, w)`` -> the decorrelated frame ``T @ [X; 1]`` (for
        labels); float64 arithmetic, returned in ``world``'s dtype."""
        return apply_transform(self.transform, world)

    def to_world(self, xyz: torch.Tensor) -> torch.Tensor:
        """Decorrelated coordinates ``(B, 3, h, w)`` -> world ``T^-1 @ [y; 1]``."""
        return apply_transform(rigid_inverse(self.transform), xyz)

    def predict_world(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World coordinates and sigma of ``images (B, 3, H, W)``.

        Returns:
            ``world (B, 3, H/8, W/8)`` metres and ``sigma (B, 1, H/8, W/8)`` metres,
            ``sigma >= 1e-5``.
        """
        xyz, log_sigma = self(images)
        return self.to_world(xyz), log_sigma.exp().clamp_min(SIGMA_MIN)

    def extra_repr(self) -> str:
        return f"widths={self._widths_arg!r}, seed={self.seed}"
