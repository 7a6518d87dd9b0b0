"""Batched COLMAP camera models with distortion, analytic Jacobians and iterative undistortion.

Parameters follow COLMAP's order for each model, but pixel coordinates follow dgeo's convention:
the centre of the top-left pixel is (0, 0), so ``cx = cx_colmap - 0.5`` (``dgeo.io.colmap``
converts). Every model is evaluated through one generic form, the FULL_OPENCV rational model with
tangential terms, whose unused coefficients are zero::

    r2 = u^2 + v^2,   rho = (1 + k1 r2 + k2 r2^2 + k3 r2^3) / (1 + k4 r2 + k5 r2^2 + k6 r2^3)
    u' = u rho + 2 p1 u v + p2 (r2 + 2 u^2),   v' = v rho + p1 (r2 + 2 v^2) + 2 p2 u v
    pixel = f * (u', v') + c
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dgeo.errors import CameraModelError, InputError, require_finite, require_shape
from dgeo.geometry.pose import ArrayLike, as_tensor

# model -> parameter names in COLMAP order
PARAM_NAMES: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
}
# Order of the generic distortion vector, and where each model's coefficients go in it.
DIST_NAMES = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")
_DIST_SLOTS: dict[str, tuple[int, ...]] = {
    "SIMPLE_PINHOLE": (),
    "PINHOLE": (),
    "SIMPLE_RADIAL": (0,),
    "RADIAL": (0, 1),
    "OPENCV": (0, 1, 2, 3),
    "FULL_OPENCV": tuple(range(8)),
}


def _single_focal(model: str) -> bool:
    return PARAM_NAMES[model][0] == "f"


def distort(
    uv: torch.Tensor, dist: torch.Tensor, return_jacobian: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply the generic distortion to normalised image-plane points.

    Args:
        uv: ``(..., N, 2)`` normalised coordinates ``(x/z, y/z)``.
        dist: ``(..., 8)`` coefficients ``(k1, k2, p1, p2, k3, k4, k5, k6)``.
        return_jacobian: also return ``d uv' / d uv`` ``(..., N, 2, 2)``.
    Returns:
        distorted points ``(..., N, 2)``, validity ``(..., N)`` (positive rational denominator and a
        locally invertible mapping), [Jacobian].
    """
    k1, k2, p1, p2, k3, k4, k5, k6 = (d[..., None] for d in dist.unbind(-1))
    u, v = uv.unbind(-1)
    r2 = u * u + v * v
    num = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    den = 1 + r2 * (k4 + r2 * (k5 + r2 * k6))
    rho = num / den
    uv_ = 2 * u * v
    ud = u * rho + p1 * uv_ + p2 * (r2 + 2 * u * u)
    vd = v * rho + p1 * (r2 + 2 * v * v) + p2 * uv_
    # d rho / d r2
    drho = ((k1 + r2 * (2 * k2 + 3 * k3 * r2)) * den - (k4 + r2 * (2 * k5 + 3 * k6 * r2)) * num) / (
        den * den
    )
    j00 = rho + 2 * u * u * drho + 2 * p1 * v + 6 * p2 * u
    j01 = 2 * u * v * drho + 2 * p1 * u + 2 * p2 * v
    j10 = 2 * u * v * drho + 2 * p1 * u + 2 * p2 * v
    j11 = rho + 2 * v * v * drho + 6 * p1 * v + 2 * p2 * u
    valid = (den > 0) & (j00 * j11 - j01 * j10 > 0) & (rho > 0)
    out = torch.stack([ud, vd], -1)
    if not return_jacobian:
        return out, valid
    J = torch.stack([j00, j01, j10, j11], -1).reshape(*out.shape, 2)
    return out, valid, J


def undistort(
    uv_d: torch.Tensor, dist: torch.Tensor, iterations: int = 30, tol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert :func:`distort` by Newton's method, differentiable by implicit differentiation.

    The iterations run without autograd; one final Newton step with a detached Jacobian carries
    the exact first-order gradient to ``uv_d`` and ``dist`` (implicit function theorem).

    Args:
        uv_d: ``(..., N, 2)`` distorted normalised points.
        dist: ``(..., 8)`` coefficients as in :func:`distort`.
        iterations: most Newton steps.
        tol: stop once every step is below this (default: 4 ulps of the dtype at 1).
    Returns:
        undistorted points ``(..., N, 2)`` and convergence validity ``(..., N)``.
    """
    if tol is None:  # steps below a few ulps of normalised coordinates (~1) are rounding noise
        tol = 4 * torch.finfo(uv_d.dtype).eps
    with torch.no_grad():
        x = uv_d.detach().clone()
        d = dist.detach()
        for _ in range(iterations):
            y, _, J = distort(x, d, return_jacobian=True)
            step = torch.nan_to_num(
                _solve2x2(J, uv_d.detach() - y), nan=0.0, posinf=0.0, neginf=0.0
            )
            x = x + step
            if bool((step.abs().amax() < tol).all()):
                break
        y, valid, J = distort(x, d, return_jacobian=True)
        err = (y - uv_d.detach()).abs().amax(-1)
        scale = 1e-9 if x.dtype == torch.float64 else 1e-4
        valid = valid & (err < scale * (1 + uv_d.detach().abs().amax(-1))) & torch.isfinite(err)
    y, _ = distort(x, dist)  # re-evaluated with autograd for gradients to dist
    x = x + torch.nan_to_num(_solve2x2(J, uv_d - y))
    return x, valid


def _solve2x2(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``A x = b`` for ``(..., 2, 2)`` matrices and ``(..., 2)`` vectors (Cramer's rule)."""
    a, c, e, f = A[..., 0, 0], A[..., 0, 1], A[..., 1, 0], A[..., 1, 1]
    det = a * f - c * e
    x0 = (f * b[..., 0] - c * b[..., 1]) / det
    x1 = (a * b[..., 1] - e * b[..., 0]) / det
    return torch.stack([x0, x1], -1)


class Camera:
    """A batch of cameras of one COLMAP model, in dgeo's pixel convention.

    Args:
        model: a COLMAP model name, one of :data:`PARAM_NAMES`.
        width, height: image size in pixels, scalars or tensors broadcasting to the batch shape.
        params: ``(..., P)`` parameters in COLMAP's order for ``model``; principal point with the
            top-left pixel centre at (0, 0).
    """

    PARAM_NAMES = PARAM_NAMES

    def __init__(self, model: str, width: ArrayLike | float, height: ArrayLike | float, params):
        if model not in PARAM_NAMES:
            raise CameraModelError(
                f"unknown camera model {model!r}; dgeo supports {', '.join(PARAM_NAMES)}."
            )
        params = as_tensor(params)
        names = PARAM_NAMES[model]
        if params.dim() == 0 or params.shape[-1] != len(names):
            raise CameraModelError(
                f"camera model {model} takes {len(names)} parameters ({', '.join(names)}), "
                f"got params of shape {tuple(params.shape)}."
            )
        require_finite(params, f"{model} camera params")
        shape = params.shape[:-1]
        size = [as_tensor(s, dtype=params.dtype, device=params.device) for s in (width, height)]
        try:
            width, height = (s.expand(shape) for s in size)
        except RuntimeError as e:
            raise InputError(
                f"camera width/height of shapes {[tuple(s.shape) for s in size]} do not match "
                f"the params batch shape {tuple(shape)}."
            ) from e
        if bool(((width <= 0) | (height <= 0)).any()):
            raise InputError("camera width and height must be positive.")
        self.model = model
        self.params = params
        self.width = width
        self.height = height
        if bool((self.f <= 0).any()):
            raise InputError(f"{model} camera focal lengths must be positive.")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_K(cls, K: ArrayLike, width, height) -> Camera:
        """PINHOLE cameras from intrinsic matrices ``(..., 3, 3)`` in dgeo's pixel convention."""
        K = as_tensor(K)
        require_shape(K, "K", last=[3, 3])
        return cls(
            "PINHOLE",
            width,
            height,
            torch.stack([K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]], -1),
        )

    @classmethod
    def stack(cls, cameras: Sequence[Camera], dim: int = 0) -> Camera:
        """Stack cameras of equal batch shape, promoting them to a common model if needed."""
        return cls._join(cameras, lambda xs: torch.stack(xs, dim if dim >= 0 else dim - 1), dim)

    @classmethod
    def cat(cls, cameras: Sequence[Camera], dim: int = 0) -> Camera:
        """Concatenate cameras along a batch dimension, promoting to a common model if needed."""
        return cls._join(cameras, lambda xs: torch.cat(xs, dim if dim >= 0 else dim - 1), dim)

    @classmethod
    def _join(cls, cameras: Sequence[Camera], fn, dim: int) -> Camera:
        if not cameras:
            raise InputError("cannot join an empty list of cameras.")
        model = common_model([c.model for c in cameras])
        cams = [c.to_model(model) for c in cameras]
        sizes = [torch.stack([c.width, c.height], -1) for c in cams]
        size = fn(sizes)
        return cls(model, size[..., 0], size[..., 1], fn([c.params for c in cams]))

    # ------------------------------------------------------------------ accessors
    @property
    def shape(self) -> torch.Size:
        """The batch shape."""
        return self.params.shape[:-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.params.dtype

    @property
    def device(self) -> torch.device:
        return self.params.device

    @property
    def f(self) -> torch.Tensor:
        """Focal lengths ``(fx, fy)`` ``(..., 2)``."""
        p = self.params
        return torch.stack([p[..., 0], p[..., 0]], -1) if _single_focal(self.model) else p[..., :2]

    @property
    def c(self) -> torch.Tensor:
        """Principal points ``(cx, cy)`` ``(..., 2)`` (top-left pixel centre at 0)."""
        i = 1 if _single_focal(self.model) else 2
        return self.params[..., i : i + 2]

    @property
    def dist(self) -> torch.Tensor:
        """Generic distortion coefficients ``(k1, k2, p1, p2, k3, k4, k5, k6)`` ``(..., 8)``."""
        slots = _DIST_SLOTS[self.model]
        out = self.params.new_zeros(*self.shape, 8)
        if slots:
            first = len(PARAM_NAMES[self.model]) - len(slots)
            out[..., list(slots)] = self.params[..., first:]
        return out

    @property
    def has_distortion(self) -> bool:
        return bool(_DIST_SLOTS[self.model])

    @property
    def size(self) -> torch.Tensor:
        """Image sizes ``(width, height)`` ``(..., 2)``."""
        return torch.stack([self.width, self.height], -1)

    @property
    def K(self) -> torch.Tensor:
        """Intrinsic matrices ``(..., 3, 3)`` of the pinhole part."""
        (fx, fy), (cx, cy) = self.f.unbind(-1), self.c.unbind(-1)
        z, o = torch.zeros_like(fx), torch.ones_like(fx)
        return torch.stack([fx, z, cx, z, fy, cy, z, z, o], -1).reshape(*self.shape, 3, 3)

    def __getitem__(self, index) -> Camera:
        if isinstance(index, tuple) and any(i is Ellipsis for i in index):
            index = (*index, slice(None))
        size = self.size[index]
        return Camera(self.model, size[..., 0], size[..., 1], self.params[index])

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of an unbatched Camera")
        return self.shape[0]

    def to(self, *args, **kwargs) -> Camera:
        """Move or cast like :meth:`torch.Tensor.to`."""
        size = self.size.to(*args, **kwargs)
        return Camera(self.model, size[..., 0], size[..., 1], self.params.to(*args, **kwargs))

    def double(self) -> Camera:
        return self.to(torch.float64)

    def float(self) -> Camera:
        return self.to(torch.float32)

    def __repr__(self) -> str:
        return f"Camera({self.model}, shape={tuple(self.shape)}, dtype={self.dtype})"

    # ------------------------------------------------------------------ projection
    def project(
        self,
        p_cam: torch.Tensor,
        return_jacobian: bool = False,
        check_bounds: bool = True,
        min_depth: float = 1e-6,
    ):
        """Project camera-frame points to pixels.

        Args:
            p_cam: ``(..., N, 3)`` points in the camera frame; the leading shape broadcasts with
                the camera batch shape. The computation runs in ``p_cam``'s dtype.
            return_jacobian: also return ``d uv / d p_cam`` ``(..., N, 2, 3)``.
            check_bounds: whether ``valid`` also requires the pixel to lie inside the image.
            min_depth: smallest depth counted as in front of the camera.
        Returns:
            ``uv`` ``(..., N, 2)``, ``valid`` ``(..., N)`` (in front, inside the distortion
            domain and, with ``check_bounds``, inside the image) [, Jacobian].
        """
        require_shape(p_cam, "p_cam", last=[None, 3])
        z = p_cam[..., 2]
        in_front = z > min_depth
        z_safe = torch.where(in_front, z, torch.ones_like(z))
        xy = p_cam[..., :2] / z_safe[..., None]
        f, c = self.f[..., None, :].to(xy.dtype), self.c[..., None, :].to(xy.dtype)
        if self.has_distortion:
            out = distort(xy, self.dist.to(xy.dtype), return_jacobian)
            xy_d, valid = out[0], in_front & out[1]
        else:
            xy_d, valid = xy, in_front
        uv = xy_d * f + c
        if check_bounds:
            valid = valid & self.in_image(uv)
        if not return_jacobian:
            return uv, valid
        inv_z = 1 / z_safe
        zero = torch.zeros_like(inv_z)
        J_n = torch.stack(
            [inv_z, zero, -xy[..., 0] * inv_z, zero, inv_z, -xy[..., 1] * inv_z], -1
        ).reshape(*uv.shape, 3)
        if self.has_distortion:
            J_n = out[2] @ J_n
        return uv, valid, f[..., None] * J_n

    def unproject(self, uv: torch.Tensor, return_valid: bool = False):
        """Back-project pixels to rays on the plane ``z = 1``.

        Args:
            uv: ``(..., N, 2)`` pixels; the leading shape broadcasts with the camera batch shape.
            return_valid: also return ``(..., N)``, false where undistortion did not converge.
        Returns:
            rays ``(..., N, 3)`` with ``z = 1`` [, validity].
        """
        require_shape(uv, "uv", last=[None, 2])
        xy = (uv - self.c[..., None, :].to(uv.dtype)) / self.f[..., None, :].to(uv.dtype)
        valid = torch.ones_like(xy[..., 0], dtype=torch.bool)
        if self.has_distortion:
            xy, valid = undistort(xy, self.dist.to(uv.dtype))
        rays = torch.cat([xy, torch.ones_like(xy[..., :1])], -1)
        return (rays, valid) if return_valid else rays

    def in_image(self, uv: torch.Tensor, pad: float = 0.0) -> torch.Tensor:
        """Whether pixels ``(..., N, 2)`` lie inside the image shrunk by ``pad``: ``(..., N)``."""
        lo = pad - 0.5
        hi = self.size[..., None, :].to(uv.dtype) - 0.5 - pad
        return ((uv >= lo) & (uv <= hi)).all(-1)

    # ------------------------------------------------------------------ transforms
    def scale(self, s: float | Sequence[float] | torch.Tensor) -> Camera:
        """Cameras of an image resized by ``s`` (scalar, ``(sx, sy)`` or a ``(..., 2)`` tensor).

        Follows the pixel-centre convention: ``c' = (c + 0.5) s - 0.5``, ``f' = f s``, size
        ``round(size * s)``. Anisotropic scaling of single-focal models raises; convert with
        :meth:`to_model` first.
        """
        s = as_tensor(s, dtype=self.dtype, device=self.device)
        s = s.expand(*s.shape, 2) if s.dim() == 0 else s
        if s.shape[-1] == 1:
            s = s.expand(*s.shape[:-1], 2)
        if bool((s <= 0).any()):
            raise InputError("scale factors must be positive.")
        s = s.expand(*self.shape, 2)
        single = _single_focal(self.model)
        if single and bool((s[..., 0] != s[..., 1]).any()):
            raise InputError(
                f"anisotropic scaling of a {self.model} camera; call .to_model('PINHOLE' or "
                "'OPENCV') first."
            )
        f = self.f * s
        c = (self.c + 0.5) * s - 0.5
        size = torch.round(self.size * s)
        return self._with(f, c, size)

    def crop(self, left, top, width, height) -> Camera:
        """Cameras of the crop with top-left pixel ``(left, top)`` and size ``width x height``."""
        offset = torch.stack(
            [as_tensor(x, self.dtype, self.device).expand(self.shape) for x in (left, top)], -1
        )
        size = torch.stack(
            [as_tensor(x, self.dtype, self.device).expand(self.shape) for x in (width, height)], -1
        )
        return self._with(self.f, self.c - offset, size)

    def _with(self, f: torch.Tensor, c: torch.Tensor, size: torch.Tensor) -> Camera:
        """The same model and distortion with new focal lengths, principal points and sizes."""
        head = [f[..., :1], c] if _single_focal(self.model) else [f, c]
        n_dist = len(_DIST_SLOTS[self.model])
        params = torch.cat([*head, self.params[..., self.params.shape[-1] - n_dist :]], -1)
        return Camera(self.model, size[..., 0], size[..., 1], params)

    def to_model(self, model: str) -> Camera:
        """Express the cameras in another model; raises if that would lose information."""
        if model not in PARAM_NAMES:
            raise CameraModelError(
                f"unknown camera model {model!r}; use one of {list(PARAM_NAMES)}."
            )
        if model == self.model:
            return self
        f, c, dist = self.f, self.c, self.dist
        slots = list(_DIST_SLOTS[model])
        dropped = [i for i in range(8) if i not in slots]
        lossy = bool((dist[..., dropped] != 0).any()) if dropped else False
        if _single_focal(model):
            lossy |= bool((f[..., 0] != f[..., 1]).any())
        if lossy:
            raise CameraModelError(
                f"cannot express {self.model} cameras as {model} without losing parameters."
            )
        head = [f[..., :1], c] if _single_focal(model) else [f, c]
        params = torch.cat([*head, dist[..., slots]], -1)
        return Camera(model, self.width, self.height, params)


# models ordered so that each can be expressed losslessly in every later one that contains it
_GENERALITY = ["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV"]


def common_model(models: Sequence[str]) -> str:
    """The simplest model that can represent all ``models`` without loss."""
    models = set(models)
    for cand in _GENERALITY:
        ok = all(
            set(_DIST_SLOTS[m]) <= set(_DIST_SLOTS[cand])
            and (not _single_focal(cand) or _single_focal(m))
            for m in models
        )
        if ok:
            return cand
    raise CameraModelError(f"no common camera model for {sorted(models)}.")
