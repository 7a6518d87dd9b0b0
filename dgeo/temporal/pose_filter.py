"""Constant-velocity pose filter on SE(3) with a Mahalanobis outlier gate, batched over tracks.

Any localiser's per-frame poses (scene-coordinate regression, feature matching, ...) are noisy
and now and then grossly wrong. :class:`PoseFilter` smooths them with an error-state extended
Kalman filter and rejects the gross errors; :func:`filter_poses` runs it over a whole sequence.

Model (documented choices):

- the filter runs on ``T = world_from_cam`` (the inverse of dgeo's ``cam_from_world``
  :class:`~dgeo.geometry.Pose`; :attr:`PoseFilter.pose` converts back), with a **right
  (body-frame) perturbation** ``T_true = T exp(delta)``, ``delta = (dv, dw)`` in kornia's
  tangent order (translation first, camera frame, metres / radians);
- the state is ``(T, xi)`` with ``xi`` the body twist velocity (per second) and a 12 x 12
  covariance over ``(delta, dxi)``; predict ``T <- T exp(xi dt)`` (SE(3) exponential,
  :meth:`Pose.exp`), ``xi <- xi``, with error transition
  ``F = [[Ad(exp(-xi dt)), dt I], [0, I]]`` (the right Jacobian of ``exp`` taken as identity,
  first order) and white-noise acceleration process noise
  ``Q = [[dt^3/3 Qa, dt^2/2 Qa], [dt^2/2 Qa, dt Qa]]``, ``Qa = diag(acc_t^2 I, acc_rot^2 I)``;
- a measurement ``Z`` (also made ``world_from_cam``) gives the residual
  ``r = log(T^-1 Z)`` (:meth:`Pose.log`), ``H = [I 0]``, ``S = P_pose + R``; it is accepted when
  ``r^T S^-1 r <= gate`` (chi^2_6 99 % = 16.812) and fused with the Joseph form; ``R`` is the
  measurement covariance in the same body-frame tangent (``(6, 6)`` or isotropic
  ``(sigma_rot_rad, sigma_t_m)``);
- after ``max_rejects`` consecutive rejections the track resets to the current measurement (the
  filter, not the measurements, was wrong: e.g. a kidnapped camera), as does the first
  measurement of a track (zero velocity, ``init_vel_sigma``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dgeo.errors import InputError
from dgeo.geometry import Pose, skew

logger = logging.getLogger(__name__)

CHI2_6_99 = 16.812
"""Default gate: the 99 % quantile of chi^2 with 6 degrees of freedom."""

CovSpec = torch.Tensor | tuple[float, float] | Sequence[float]


@dataclass
class PoseUpdate:
    """Outcome of :meth:`PoseFilter.update` per track ``(B,)``.

    Attributes:
        accepted: bool, the measurement was used (gate passed, or the track was (re)initialised
            from it).
        rejected: bool, the gate rejected the measurement and it was not used.
        reset: bool, the track was re-initialised from this measurement after ``max_rejects``
            consecutive rejections (a warning is logged).
        d2: squared Mahalanobis distance of the residual (NaN where not tested).
    """

    accepted: torch.Tensor
    rejected: torch.Tensor
    reset: torch.Tensor
    d2: torch.Tensor


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched product of small matrices ``(..., n, k) @ (..., k, m)`` by broadcasting.

    CPU ``bmm`` of 12 x 12 float64 batches (B >= 2) enters an OpenMP region that can stall for
    ~20 ms per call on a loaded machine; the elementwise form stays in the microseconds.
    """
    return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)


def _adjoint(p: Pose) -> torch.Tensor:
    """SE(3) adjoint ``(..., 6, 6)`` in (v, w) order: ``[[R, [t]x R], [0, R]]``."""
    R, t = p.R, p.t
    top = torch.cat([R, skew(t) @ R], -1)
    bottom = torch.cat([torch.zeros_like(R), R], -1)
    return torch.cat([top, bottom], -2)


def measurement_covariance(
    cov: CovSpec, batch: int, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """Measurement covariance ``(B, 6, 6)`` from a ``(6, 6)`` / ``(B, 6, 6)`` tensor or an
    isotropic ``(sigma_rot_rad, sigma_t_m)`` pair (floats or ``(B,)`` tensors).

    The (6, 6) order is kornia's tangent (translation, rotation), in the camera frame.
    """
    if isinstance(cov, torch.Tensor) and cov.dim() >= 2:
        cov = cov.to(dtype=dtype, device=device)
        if (
            tuple(cov.shape[-2:]) != (6, 6)
            or cov.dim() > 3
            or (cov.dim() == 3 and cov.shape[0] != batch)
        ):
            raise InputError(
                f"cov must be (6, 6) or ({batch}, 6, 6) (translation first), got "
                f"{tuple(cov.shape)}; or pass (sigma_rot_rad, sigma_t_m)."
            )
        cov = cov.expand(batch, 6, 6)
        if not bool(torch.isfinite(cov).all()):
            raise InputError("cov holds NaN/inf; pass finite covariances.")
        # eigvalsh, not cholesky: CPU potrf can stall ~20 ms per call under thread contention
        asym = (cov - cov.transpose(-1, -2)).abs().amax()
        if asym > 1e-9 * cov.abs().amax() or bool((torch.linalg.eigvalsh(cov) <= 0).any()):
            raise InputError("cov must be symmetric positive definite.")
        return cov
    try:
        s_rot, s_t = cov
    except (TypeError, ValueError):
        raise InputError(
            "cov must be a (6, 6) tensor or a pair (sigma_rot_rad, sigma_t_m), got "
            f"{type(cov).__name__}."
        ) from None
    s_rot = torch.as_tensor(s_rot, dtype=dtype, device=device).expand(batch)
    s_t = torch.as_tensor(s_t, dtype=dtype, device=device).expand(batch)
    if not bool(((s_rot > 0) & (s_t > 0) & torch.isfinite(s_rot + s_t)).all()):
        raise InputError("sigma_rot_rad and sigma_t_m must be positive and finite.")
    diag = torch.cat([s_t[:, None].expand(batch, 3), s_rot[:, None].expand(batch, 3)], 1)
    return torch.diag_embed(diag.square())


class PoseFilter:
    """Constant-velocity EKF on SE(3) for ``B`` independent tracks (see the module docstring).

    The state is created by the first :meth:`update` (its batch size fixes ``B``); before that
    :meth:`predict` does nothing. The filter works in float64 on the device of the first
    measurement.

    Args:
        acc_sigma_t: white-noise acceleration density of the translation (m / s^1.5 when ``dt``
            is in seconds).
        acc_sigma_rot: same for the rotation (rad / s^1.5).
        gate: chi^2_6 threshold on the squared Mahalanobis distance (default 99 %); None or inf
            accepts everything.
        max_rejects: reset a track after this many consecutive rejections.
        init_vel_sigma: ``(sigma_rot, sigma_t)`` of the unknown initial velocity (rad/s, m/s).
    """

    def __init__(
        self,
        acc_sigma_t: float = 1.0,
        acc_sigma_rot: float = 1.0,
        gate: float | None = CHI2_6_99,
        max_rejects: int = 5,
        init_vel_sigma: tuple[float, float] = (1.0, 1.0),
    ):
        if acc_sigma_t < 0 or acc_sigma_rot < 0:
            raise InputError("acc_sigma_t and acc_sigma_rot must be non-negative.")
        if max_rejects < 1:
            raise InputError(f"max_rejects must be >= 1, got {max_rejects}.")
        self.acc_sigma_t = float(acc_sigma_t)
        self.acc_sigma_rot = float(acc_sigma_rot)
        self.gate = gate
        self.max_rejects = int(max_rejects)
        self.init_vel_sigma = (float(init_vel_sigma[0]), float(init_vel_sigma[1]))
        self.dtype = torch.float64
        self._T: Pose | None = None  # world_from_cam (B,)
        self.velocity: torch.Tensor | None = None  # (B, 6) body twist per second
        self.covariance: torch.Tensor | None = None  # (B, 12, 12)
        self.initialized: torch.Tensor | None = None  # (B,) bool
        self.rejects: torch.Tensor | None = None  # (B,) consecutive rejections

    # ------------------------------------------------------------------ state access
    @property
    def batch(self) -> int | None:
        """Number of tracks, or None before the first update."""
        return None if self._T is None else self._T.shape[0]

    @property
    def world_from_cam(self) -> Pose | None:
        """Filtered ``world_from_cam`` poses ``(B,)``."""
        return self._T

    @property
    def pose(self) -> Pose | None:
        """Filtered ``cam_from_world`` poses ``(B,)`` (dgeo's convention)."""
        return None if self._T is None else self._T.inv()

    def reset(self, which: torch.Tensor | None = None) -> None:
        """Forget all tracks (or the ``(B,)`` bool ``which``): next update re-initialises."""
        if which is None or self.initialized is None:
            self._T = self.velocity = self.covariance = self.initialized = self.rejects = None
            return
        self.initialized = self.initialized & ~which.to(self.initialized.device)

    def _allocate(self, batch: int, device) -> None:
        self._T = Pose.identity((batch,), dtype=self.dtype, device=device)
        self.velocity = torch.zeros(batch, 6, dtype=self.dtype, device=device)
        self.covariance = torch.eye(12, dtype=self.dtype, device=device).repeat(batch, 1, 1)
        self.initialized = torch.zeros(batch, dtype=torch.bool, device=device)
        self.rejects = torch.zeros(batch, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ predict
    def predict(self, dt: float | torch.Tensor) -> None:
        """Propagate every initialised track by ``dt`` (float or ``(B,)``, >= 0)."""
        if self._T is None:
            return
        b, dev = self.batch, self._T.device
        dt = torch.as_tensor(dt, dtype=self.dtype, device=dev)
        if dt.dim() > 1 or (dt.dim() == 1 and dt.shape[0] != b):
            raise InputError(f"dt must be a float or a ({b},) tensor, got {tuple(dt.shape)}.")
        dt = dt.expand(b)
        if not bool((torch.isfinite(dt) & (dt >= 0)).all()):
            raise InputError("dt must be finite and non-negative (times must not decrease).")
        step = Pose.exp(self.velocity * dt[:, None])
        T_new = self._T @ step
        eye6 = torch.eye(6, dtype=self.dtype, device=dev).expand(b, 6, 6)
        F = torch.zeros(b, 12, 12, dtype=self.dtype, device=dev)
        F[:, :6, :6] = _adjoint(step.inv())
        F[:, :6, 6:] = dt[:, None, None] * eye6
        F[:, 6:, 6:] = eye6
        qa = torch.tensor(
            [self.acc_sigma_t**2] * 3 + [self.acc_sigma_rot**2] * 3, dtype=self.dtype, device=dev
        )
        qa = torch.diag_embed(qa).expand(b, 6, 6)
        d = dt[:, None, None]
        Q = torch.cat(
            [
                torch.cat([d**3 / 3 * qa, d**2 / 2 * qa], -1),
                torch.cat([d**2 / 2 * qa, d * qa], -1),
            ],
            -2,
        )
        P_new = _mm(_mm(F, self.covariance), F.transpose(-1, -2)) + Q
        P_new = 0.5 * (P_new + P_new.transpose(-1, -2))
        m = self.initialized
        self._T = Pose(torch.where(m[:, None], T_new.data, self._T.data))
        self.covariance = torch.where(m[:, None, None], P_new, self.covariance)

    # ------------------------------------------------------------------ update
    def update(
        self,
        pose: Pose,
        cov: CovSpec = (0.02, 0.05),
        valid: torch.Tensor | None = None,
    ) -> PoseUpdate:
        """Fuse measured ``cam_from_world`` poses ``(B,)`` (or one unbatched pose for B = 1).

        Args:
            pose: measured poses; non-finite ones count as missing.
            cov: ``(6, 6)`` / ``(B, 6, 6)`` covariance (translation first, camera frame) or
                ``(sigma_rot_rad, sigma_t_m)``.
            valid: ``(B,)`` bool, False for frames the localiser failed on (missing).
        Returns:
            :class:`PoseUpdate`.
        """
        if not isinstance(pose, Pose):
            raise InputError(f"pose must be a dgeo Pose (cam_from_world), got {type(pose)}.")
        if len(pose.shape) == 0:
            pose = pose.reshape(1)
        if len(pose.shape) != 1:
            raise InputError(f"pose must have batch shape (B,), got {tuple(pose.shape)}.")
        b = pose.shape[0]
        if self._T is None:
            self._allocate(b, pose.device)
        elif b != self.batch:
            raise InputError(f"pose batch {b} does not match the filter's {self.batch} tracks.")
        dev = self._T.device
        data = pose.data.to(dtype=self.dtype, device=dev)
        ok = torch.isfinite(data).all(-1)
        if valid is not None:
            if not isinstance(valid, torch.Tensor) or tuple(valid.shape) != (b,):
                raise InputError(f"valid must be a ({b},) bool tensor.")
            ok = ok & valid.to(device=dev, dtype=torch.bool)
        ident = Pose.identity((b,), dtype=self.dtype, device=dev).data
        Z = Pose(torch.where(ok[:, None], data, ident)).inv()  # world_from_cam
        R = measurement_covariance(cov, b, self.dtype, dev)

        T, P = self._T, self.covariance
        r = (T.inv() @ Z).log()  # (B, 6)
        S = P[:, :6, :6] + R  # symmetric positive definite
        # one LU solve for S^-1 [r | H P]: 6 x 6 LU is as exact as Cholesky here and avoids
        # CPU potrf stalls (~20 ms per call with 2 contended OpenMP threads)
        sol = torch.linalg.solve(S, torch.cat([r[:, :, None], P[:, :6, :]], -1))  # (B, 6, 13)
        d2 = (r * sol[:, :, 0]).sum(-1)
        tested = ok & self.initialized
        gate = float("inf") if self.gate is None else float(self.gate)
        passed = tested & (d2 <= gate)
        rejected = tested & ~passed
        rejects = torch.where(rejected, self.rejects + 1, torch.where(passed, 0, self.rejects))
        reset = rejected & (rejects >= self.max_rejects)
        init = (ok & ~self.initialized) | reset

        # Kalman update (Joseph form) for the tracks that passed the gate
        K = sol[:, :, 1:].transpose(-1, -2)  # P H^T S^-1 (B, 12, 6)
        dx = (K * r[:, None, :]).sum(-1)
        T_up = T @ Pose.exp(dx[:, :6])
        v_up = self.velocity + dx[:, 6:]
        eye12 = torch.eye(12, dtype=self.dtype, device=dev)
        H = eye12[:6].expand(b, 6, 12)
        IKH = eye12 - _mm(K, H)
        P_up = _mm(_mm(IKH, P), IKH.transpose(-1, -2)) + _mm(_mm(K, R), K.transpose(-1, -2))
        P_up = 0.5 * (P_up + P_up.transpose(-1, -2))

        # (re)initialisation from the measurement
        s_rot, s_t = self.init_vel_sigma
        vdiag = torch.tensor([s_t**2] * 3 + [s_rot**2] * 3, dtype=self.dtype, device=dev)
        P_init = torch.zeros(b, 12, 12, dtype=self.dtype, device=dev)
        P_init[:, :6, :6] = R
        P_init[:, 6:, 6:] = torch.diag_embed(vdiag)

        pm, im = passed[:, None], init[:, None]
        Tdata = torch.where(im, Z.data, torch.where(pm, T_up.data, T.data))
        self._T = Pose(Tdata)
        self.velocity = torch.where(
            im, torch.zeros_like(v_up), torch.where(pm, v_up, self.velocity)
        )
        self.covariance = torch.where(
            init[:, None, None], P_init, torch.where(passed[:, None, None], P_up, P)
        )
        self.initialized = self.initialized | init
        self.rejects = torch.where(init, 0, rejects)
        d2 = torch.where(tested, d2, torch.full_like(d2, float("nan")))
        if bool(reset.any()):
            logger.warning(
                "PoseFilter reset track(s) %s after %d consecutive rejected measurements",
                torch.nonzero(reset).flatten().tolist(),
                self.max_rejects,
            )
        return PoseUpdate(passed | init, rejected & ~reset, reset, d2)


def filter_poses(
    poses: Pose,
    times: torch.Tensor | Sequence[float] | None = None,
    cov: CovSpec = (0.02, 0.05),
    valid: torch.Tensor | None = None,
    *,
    acc_sigma_t: float = 1.0,
    acc_sigma_rot: float = 1.0,
    gate: float | None = CHI2_6_99,
    max_rejects: int = 5,
    init_vel_sigma: tuple[float, float] = (1.0, 1.0),
) -> tuple[Pose, torch.Tensor]:
    """Filter a localiser's per-frame ``cam_from_world`` poses with :class:`PoseFilter`.

    Args:
        poses: ``(N,)`` poses of one sequence or ``(N, B)`` for B sequences in parallel; frames
            with non-finite poses count as failures (predicted only).
        times: ``(N,)`` or ``(N, B)`` non-decreasing timestamps in seconds, or None (frame
            index, so the noise densities are per frame).
        cov: measurement covariance: ``(sigma_rot_rad, sigma_t_m)``, ``(6, 6)``, or per frame
            ``(N, 6, 6)`` / ``(N, B, 6, 6)`` (translation first, camera frame).
        valid: ``(N,)`` / ``(N, B)`` bool, False where the localiser failed.
        acc_sigma_t, acc_sigma_rot, gate, max_rejects, init_vel_sigma: see :class:`PoseFilter`.
    Returns:
        ``(filtered poses, accepted)``: poses of the input's shape and dtype (the filter's
        estimate after each frame; frames before the first usable measurement keep the input)
        and the bool mask of the measurements used.
    """
    if not isinstance(poses, Pose) or len(poses.shape) not in (1, 2):
        raise InputError("poses must be a dgeo Pose of batch shape (N,) or (N, B).")
    single = len(poses.shape) == 1
    seq = poses.reshape(poses.shape[0], 1) if single else poses
    n, b = seq.shape
    dev = poses.device

    def per_frame(x, name: str, dtype) -> torch.Tensor | None:
        if x is None:
            return None
        x = torch.as_tensor(x, device=dev).to(dtype)
        want = (n,) if single else (n, b)
        if x.shape == (n,) and not single:
            x = x[:, None].expand(n, b)
        if tuple(x.shape) != want:
            raise InputError(f"{name} must have shape {want}, got {tuple(x.shape)}.")
        return x.reshape(n, b)

    t = per_frame(times, "times", torch.float64)
    if t is not None and not bool(torch.isfinite(t).all()):
        raise InputError("times hold NaN/inf; pass finite timestamps.")
    if t is not None and n > 1 and bool((t[1:] < t[:-1]).any()):
        raise InputError("times must be non-decreasing; sort the frames by timestamp.")
    ok = per_frame(valid, "valid", torch.bool)
    per_frame_cov = isinstance(cov, torch.Tensor) and cov.dim() >= 3
    if per_frame_cov:
        want = (n, 6, 6) if single else (n, b, 6, 6)
        if tuple(cov.shape) != want:
            raise InputError(f"per-frame cov must have shape {want}, got {tuple(cov.shape)}.")
        cov = cov.reshape(n, b, 6, 6)

    filt = PoseFilter(acc_sigma_t, acc_sigma_rot, gate, max_rejects, init_vel_sigma)
    out, accepted = [], []
    for k in range(n):
        if k > 0:
            filt.predict(1.0 if t is None else t[k] - t[k - 1])
        res = filt.update(seq[k], cov[k] if per_frame_cov else cov, None if ok is None else ok[k])
        est = filt.pose.to(dtype=poses.dtype, device=dev).data
        out.append(torch.where(filt.initialized[:, None], est, seq[k].data))
        accepted.append(res.accepted)
    data = torch.stack(out)
    acc = torch.stack(accepted)
    if single:
        data, acc = data[:, 0], acc[:, 0]
    return Pose(data), acc
