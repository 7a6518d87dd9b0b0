"""The one exception hierarchy of dgeo, and the input checks that raise it.

Every error dgeo raises on bad input derives from :class:`DgeoError`, and its message names the
offending file, line or tensor and says what was expected, so that the CLI can print it as one
line and exit non-zero. The ``require_*`` helpers are the shared way to check tensors at public
boundaries; they are cheap (one reduction) and never run inside solver loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


class DgeoError(Exception):
    """Base class of every error dgeo raises on purpose."""


class InputError(DgeoError, ValueError):
    """A tensor, array or argument does not have the expected shape, type or values."""


class ShapeError(InputError):
    """A tensor has the wrong number of dimensions or the wrong size along one."""


class NonFiniteError(InputError):
    """A tensor holds NaN or infinite values where finite ones are required."""


class CameraModelError(InputError):
    """An unknown camera model, or parameters of the wrong count for a model."""


class RotationError(InputError):
    """A matrix that should be a rotation is not orthonormal with determinant +1."""


class DataFileNotFoundError(DgeoError, FileNotFoundError):
    """A file or folder the caller named does not exist."""


class ParseError(DgeoError, ValueError):
    """A file is malformed; the message gives the file, the line number and what was expected."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path = Path(path)
        self.line = line
        where = f"{self.path}" if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {message}")


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return ``path`` as a :class:`Path`, raising :class:`DataFileNotFoundError` if missing."""
    path = Path(path)
    if not path.exists():
        raise DataFileNotFoundError(f"{what} {path} does not exist; check the path.")
    return path


def require_shape(x: torch.Tensor, name: str, *, last: Sequence[int | None], min_dim: int = 0):
    """Check the trailing dimensions of ``x``.

    Args:
        x: the tensor to check.
        name: the name used in the error message.
        last: expected sizes of the trailing dimensions; ``None`` accepts any size.
        min_dim: minimum total number of dimensions.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    nd = max(len(last), min_dim)
    if x.dim() < nd or any(
        e is not None and s != e for s, e in zip(x.shape[x.dim() - len(last) :], last, strict=True)
    ):
        want = ", ".join("*" if e is None else str(e) for e in last)
        raise ShapeError(f"{name} must have shape (..., {want}), got {tuple(x.shape)}.")


def require_finite(x: torch.Tensor, name: str):
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or infinite values."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteError(f"{name} holds {bad} NaN/inf value(s); pass finite values.")


def require_floating(x: torch.Tensor, name: str):
    """Raise :class:`InputError` unless ``x`` is a floating-point tensor."""
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}.")


def require_mask(mask: torch.Tensor | None, name: str, shape: Sequence[int]):
    """Check an optional per-item bool mask of exactly ``shape`` (e.g. ``(B, N)``); a wrong
    dtype or shape raises :class:`ShapeError`."""
    if mask is None:
        return
    if (
        not isinstance(mask, torch.Tensor)
        or mask.dtype != torch.bool
        or tuple(mask.shape) != tuple(shape)
    ):
        got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, torch.Tensor) else mask
        raise ShapeError(f"{name} must be a {tuple(shape)} bool tensor, got {got}.")


def require_weights(weights: torch.Tensor | None, name: str, shape: Sequence[int]):
    """Check optional per-item weights: floating, finite, non-negative, exactly ``shape``."""
    if weights is None:
        return
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != tuple(shape):
        got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ShapeError(f"{name} must have shape {tuple(shape)}, got {got}.")
    require_floating(weights, name)
    require_finite(weights, name)
    if bool((weights < 0).any()):
        raise InputError(f"{name} must be non-negative.")
