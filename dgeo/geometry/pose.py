"""Batched rigid transforms in the ``cam_from_world`` convention.

A :class:`Pose` holds rotations ``R`` ``(..., 3, 3)`` and translations ``t`` ``(..., 3)`` packed in
one tensor ``(..., 12)``, so that any leading batch shape works, per-problem selection is a single
``torch.where`` and everything stays differentiable. ``x_cam = R @ x_world + t``.

Tangent vectors follow kornia: ``(v, w)`` with translation part first. :meth:`Pose.exp` and
:meth:`Pose.log` are the SE(3) exponential and logarithm (kornia's ``Se3``); :meth:`Pose.retract`
is the left SO(3) x R^3 update used by the solvers, whose Jacobian on a transformed point is
``d p / d (dt, dw) = [I | -[p]x]`` (see :meth:`Pose.transform`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from kornia.geometry.conversions import (
    axis_angle_to_rotation_matrix,
    quaternion_to_rotation_matrix,
    rotation_matrix_to_axis_angle,
    rotation_matrix_to_quaternion,
)
from kornia.geometry.liegroup import Se3

from dgeo.errors import InputError, RotationError, ShapeError, require_finite, require_shape

ArrayLike = torch.Tensor | np.ndarray | Sequence


def as_tensor(x: ArrayLike, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """Convert to a tensor without losing precision: tensors and float numpy arrays keep their
    dtype; Python numbers, sequences and integer arrays become float64 (as numpy would make
    them). ``dtype`` overrides. Geometry operations run in the dtype of the points they act on."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype or x.dtype, device=device or x.device)
    t = torch.as_tensor(np.asarray(x), device=device)
    if dtype is None and not t.is_floating_point():
        dtype = torch.float64
    return t if dtype is None else t.to(dtype)


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices ``[v]x`` ``(..., 3, 3)`` of vectors ``v`` ``(..., 3)``."""
    z = torch.zeros_like(v[..., 0])
    x, y, w = v.unbind(-1)
    return torch.stack([z, -w, y, w, z, -x, -y, x, z], -1).reshape(*v.shape[:-1], 3, 3)


def _safe_norm(x: torch.Tensor, eps: float = 1e-24) -> torch.Tensor:
    """Euclidean norm over the last dimension with a finite gradient at zero."""
    return torch.sqrt((x * x).sum(-1) + eps) - eps**0.5


class Pose:
    """A batch of rigid transforms ``x_cam = R x_world + t`` of any leading shape.

    Construct with :meth:`from_Rt`, :meth:`from_matrix`, :meth:`from_quat_t`,
    :meth:`from_axis_angle`, :meth:`exp` or :meth:`identity`. The raw constructor takes the
    packed ``(..., 12)`` tensor ``[R.flatten(), t]``.
    """

    def __init__(self, data: torch.Tensor):
        require_shape(data, "Pose data", last=[12])
        self._data = data

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_Rt(cls, R: ArrayLike, t: ArrayLike, *, check: bool = True, tol: float = 1e-4) -> Pose:
        """Poses from rotations ``R`` ``(..., 3, 3)`` and translations ``t`` ``(..., 3)``.

        Leading shapes broadcast. With ``check``, raise :class:`RotationError` if ``R`` is not a
        rotation within ``tol`` (``|R^T R - I|`` and ``|det R - 1|``), and
        :class:`NonFiniteError` on NaN/inf.
        """
        R = as_tensor(R)
        t = as_tensor(t, dtype=R.dtype, device=R.device)
        require_shape(R, "R", last=[3, 3])
        require_shape(t, "t", last=[3])
        if check:
            require_finite(R, "R")
            require_finite(t, "t")
            check_rotation(R, "R", tol)
        shape = torch.broadcast_shapes(R.shape[:-2], t.shape[:-1])
        R = R.expand(*shape, 3, 3)
        t = t.expand(*shape, 3)
        return cls(torch.cat([R.reshape(*shape, 9), t], -1))

    @classmethod
    def from_matrix(cls, T: ArrayLike, *, check: bool = True) -> Pose:
        """Poses from ``(..., 4, 4)`` or ``(..., 3, 4)`` matrices ``[R | t]``."""
        T = as_tensor(T)
        if T.dim() < 2 or tuple(T.shape[-2:]) not in ((4, 4), (3, 4)):
            raise ShapeError(f"T must have shape (..., 4, 4) or (..., 3, 4), got {tuple(T.shape)}.")
        return cls.from_Rt(T[..., :3, :3], T[..., :3, 3], check=check)

    @classmethod
    def from_quat_t(cls, q_wxyz: ArrayLike, t: ArrayLike) -> Pose:
        """Poses from w-first quaternions ``(..., 4)`` (normalised here) and ``t`` ``(..., 3)``."""
        q = as_tensor(q_wxyz)
        require_shape(q, "q_wxyz", last=[4])
        require_finite(q, "q_wxyz")
        norm = q.norm(dim=-1, keepdim=True)
        if bool((norm < 1e-8).any()):
            raise InputError("q_wxyz holds zero quaternion(s); pass unit quaternions (w, x, y, z).")
        R = quaternion_to_rotation_matrix(q / norm)
        return cls.from_Rt(R, t)

    @classmethod
    def from_axis_angle(cls, aa: ArrayLike, t: ArrayLike) -> Pose:
        """Poses from axis-angle vectors ``(..., 3)`` (radians) and translations ``(..., 3)``."""
        aa = as_tensor(aa)
        require_shape(aa, "axis_angle", last=[3])
        require_finite(aa, "axis_angle")
        return cls.from_Rt(axis_angle_to_rotation_matrix_nd(aa), t)

    @classmethod
    def exp(cls, xi: torch.Tensor) -> Pose:
        """SE(3) exponential of tangent vectors ``xi = (v, w)`` ``(..., 6)`` (kornia ``Se3``)."""
        require_shape(xi, "xi", last=[6])
        T = Se3.exp(xi).matrix()
        if not xi.requires_grad:  # kornia wraps translations in nn.Parameter (ALGORITHMS 1.4)
            T = T.detach()
        return cls.from_matrix(T, check=False)

    @classmethod
    def identity(
        cls, batch_shape: Sequence[int] = (), dtype: torch.dtype | None = None, device=None
    ) -> Pose:
        """Identity poses of the given batch shape."""
        eye = torch.eye(3, dtype=dtype or torch.get_default_dtype(), device=device)
        data = torch.cat([eye.reshape(9), eye.new_zeros(3)])
        return cls(data.expand(*batch_shape, 12).clone())

    @classmethod
    def stack(cls, poses: Sequence[Pose], dim: int = 0) -> Pose:
        """Stack poses of equal batch shape along a new batch dimension."""
        dim = dim if dim >= 0 else dim - 1
        return cls(torch.stack([p._data for p in poses], dim))

    @classmethod
    def cat(cls, poses: Sequence[Pose], dim: int = 0) -> Pose:
        """Concatenate poses along an existing batch dimension."""
        dim = dim if dim >= 0 else dim - 1
        return cls(torch.cat([p._data for p in poses], dim))

    # ------------------------------------------------------------------ accessors
    @property
    def data(self) -> torch.Tensor:
        """The packed ``(..., 12)`` tensor ``[R.flatten(), t]``."""
        return self._data

    @property
    def R(self) -> torch.Tensor:
        """Rotations ``(..., 3, 3)``."""
        return self._data[..., :9].reshape(*self.shape, 3, 3)

    @property
    def t(self) -> torch.Tensor:
        """Translations ``(..., 3)``."""
        return self._data[..., 9:]

    @property
    def shape(self) -> torch.Size:
        """The batch shape."""
        return self._data.shape[:-1]

    @property
    def dtype(self) -> torch.dtype:
        return self._data.dtype

    @property
    def device(self) -> torch.device:
        return self._data.device

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of an unbatched Pose")
        return self.shape[0]

    def __getitem__(self, index) -> Pose:
        if isinstance(index, tuple) and any(i is Ellipsis for i in index):
            index = (*index, slice(None))
        return Pose(self._data[index])

    def reshape(self, *shape: int) -> Pose:
        """Reshape the batch dimensions."""
        return Pose(self._data.reshape(*shape, 12))

    def to(self, *args, **kwargs) -> Pose:
        """Move or cast like :meth:`torch.Tensor.to`."""
        return Pose(self._data.to(*args, **kwargs))

    def float(self) -> Pose:
        return Pose(self._data.float())

    def double(self) -> Pose:
        return Pose(self._data.double())

    def detach(self) -> Pose:
        return Pose(self._data.detach())

    def matrix(self) -> torch.Tensor:
        """Homogeneous matrices ``(..., 4, 4)``."""
        bottom = self._data.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(*self.shape, 1, 4)
        return torch.cat([torch.cat([self.R, self.t[..., None]], -1), bottom], -2)

    def numpy(self) -> np.ndarray:
        """Homogeneous matrices ``(..., 4, 4)`` as a float64 numpy array."""
        return self.matrix().detach().cpu().double().numpy()

    def quat(self) -> torch.Tensor:
        """Unit w-first quaternions ``(..., 4)`` with ``w >= 0``."""
        q = rotation_matrix_to_quaternion(self.R.reshape(-1, 3, 3)).reshape(*self.shape, 4)
        return torch.where(q[..., :1] < 0, -q, q)

    def axis_angle(self) -> torch.Tensor:
        """Rotation vectors ``(..., 3)`` in radians."""
        return rotation_matrix_to_axis_angle(self.R.reshape(-1, 3, 3)).reshape(*self.shape, 3)

    def center(self) -> torch.Tensor:
        """Camera centres in world coordinates ``-R^T t`` ``(..., 3)``."""
        return -(self.R.transpose(-1, -2) @ self.t[..., None])[..., 0]

    # ------------------------------------------------------------------ group operations
    def inv(self) -> Pose:
        """Inverse transforms: ``world_from_cam`` for a ``cam_from_world`` pose."""
        Rt = self.R.transpose(-1, -2)
        return Pose.from_Rt(Rt, -(Rt @ self.t[..., None])[..., 0], check=False)

    def __matmul__(self, other: Pose) -> Pose:
        """Composition ``(self @ other)(x) = self(other(x))``; batch shapes broadcast, dtypes
        promote."""
        if not isinstance(other, Pose):
            return NotImplemented
        dtype = torch.promote_types(self.dtype, other.dtype)
        a, b = self._data.to(dtype), other._data.to(dtype)
        Ra, Rb = a[..., :9].unflatten(-1, (3, 3)), b[..., :9].unflatten(-1, (3, 3))
        R = Ra @ Rb
        t = (Ra @ b[..., 9:, None])[..., 0] + a[..., 9:]
        return Pose.from_Rt(R, t, check=False)

    def transform(self, points: torch.Tensor, return_jacobian: bool = False):
        """Apply the transforms to points.

        Args:
            points: ``(..., N, 3)``; the leading shape broadcasts with the pose batch shape. The
                result has the points' dtype.
            return_jacobian: also return ``d p' / d (dt, dw)`` ``(..., N, 3, 6)`` of the left
                perturbation used by :meth:`retract`, i.e. ``[I | -[p']x]``.
        Returns:
            ``p' = R p + t`` ``(..., N, 3)`` [and the Jacobian].
        """
        require_shape(points, "points", last=[None, 3])
        R, t = self.R.to(points.dtype), self.t.to(points.dtype)
        p = points @ R.transpose(-1, -2) + t[..., None, :]
        if not return_jacobian:
            return p
        eye = torch.eye(3, dtype=p.dtype, device=p.device).expand(*p.shape[:-1], 3, 3)
        return p, torch.cat([eye, -skew(p)], -1)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        return self.transform(points)

    def retract(self, delta: torch.Tensor) -> Pose:
        """Left update ``R <- exp(dw) R``, ``t <- exp(dw) t + dt`` with ``delta = (dt, dw)``.

        Args:
            delta: ``(..., 6)`` broadcasting with the batch shape.
        """
        dR = so3_exp(delta[..., 3:])
        R = dR @ self.R
        t = (dR @ self.t[..., None])[..., 0] + delta[..., :3]
        return Pose.from_Rt(R, t, check=False)

    def log(self) -> torch.Tensor:
        """SE(3) logarithm ``(v, w)`` ``(..., 6)`` (kornia ``Se3``); inverse of :meth:`exp`."""
        xi = Se3.from_matrix(self.matrix()).log()
        return xi if self._data.requires_grad else xi.detach()

    def magnitude(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation angle (radians) and translation norm, each ``(...)``; finite gradients."""
        R = self.R
        cos = (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
        sin_axis = torch.stack(
            [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]],
            -1,
        )
        angle = torch.atan2(_safe_norm(sin_axis) / 2, cos)
        return angle, _safe_norm(self.t)

    def __repr__(self) -> str:
        return f"Pose(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"


def axis_angle_to_rotation_matrix_nd(aa: torch.Tensor) -> torch.Tensor:
    """kornia's axis-angle to rotation matrix for any leading shape ``(..., 3) -> (..., 3, 3)``."""
    return axis_angle_to_rotation_matrix(aa.reshape(-1, 3)).reshape(*aa.shape[:-1], 3, 3)


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula ``(..., 3) -> (..., 3, 3)`` for the solvers' hot path.

    Equal to kornia's ``axis_angle_to_rotation_matrix`` (tested) at a fraction of its per-call
    overhead, which dominates small batches; Taylor terms near zero keep values and gradients
    exact there.
    """
    theta2 = (w * w).sum(-1)[..., None, None]
    small = theta2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta.square())
    K = skew(w)
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * K + b * (K @ K)


def check_rotation(R: torch.Tensor, name: str = "R", tol: float = 1e-4):
    """Raise :class:`RotationError` if any ``R`` ``(..., 3, 3)`` is not a proper rotation."""
    if R.numel() == 0:
        return
    with torch.no_grad():
        eye = torch.eye(3, dtype=R.dtype, device=R.device)
        ortho = (R.transpose(-1, -2) @ R - eye).abs().amax((-1, -2))
        det = torch.linalg.det(R.double() if R.device.type == "cpu" else R)
        bad = (ortho > tol) | ((det - 1).abs() > tol)
    if bool(bad.any()):
        n = int(bad.sum())
        raise RotationError(
            f"{name} holds {n} matrix/matrices that are not rotations (|R^T R - I| up to "
            f"{float(ortho.max()):.2e}, det {float(det.flatten()[bad.flatten()][0]):.4f}); "
            "pass orthonormal matrices with determinant +1."
        )
