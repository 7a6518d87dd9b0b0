"""Per-pixel Kalman filter on scene-coordinate maps (KFNet, ALGORITHMS 2.9), batched and
differentiable.

Every cell of a stride-8 map carries an isotropic Gaussian over its world coordinate: a mean
``(B, 3, h, w)`` and one variance ``(B, 1, h, w)`` shared by the three axes (sigma in metres,
variance = sigma^2). One filter step is

====================  =====================================================================
predict               ``y- = warp(y_{t-1})``, ``P- = max(warp(P_{t-1}), 1e-10) + max(q, 1e-10)``
gain                  ``K = P- / (P- + R)``, ``R = max(var_z, 1e-10)``
update                ``y = y- + K (z - y-)``, ``P = (1 - K) P- = P- R / (P- + R)``
innovation            ``nu = z - y-``, ``S = P- + R``, ``NIS = sum_i nu_i^2 / S``
====================  =====================================================================

Fixes of KFNet's implementation (ALGORITHMS 4, KFNet 1-3), all tested:

- the previous posterior's **variance** is warped, never its sigma;
- the warp (:func:`dgeo.geometry.warp_by_flow`) flags cells whose source lies out of frame or
  blends an invalid source cell as invalid instead of reading zeros; such a cell has an
  **infinite prior variance**, handled explicitly: its gain is exactly 1, so the posterior is the
  measurement and no zero coordinates leak in;
- no reset every N frames by default (:class:`PixelKalmanFilter` resets on evidence instead).

Tensors stay free of NaN and inf so that masked losses and their gradients stay finite: a cell
with ``valid == False`` holds ``mean = 0`` and ``var = INVALID_VARIANCE`` (1e10 m^2), a fill value
that stands for +inf and that the filter never uses numerically (every formula selects with
``torch.where`` on *sanitised* operands, so no ``0 * inf`` reaches autograd either).

The chi-square gate (KFNet): where ``NIS > 7.815`` (chi^2_3, 95 %), the *output* of the step is
replaced by the measurement while the *state* carried to the next frame stays the posterior.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from dgeo.errors import InputError, require_floating
from dgeo.geometry import warp_by_flow

logger = logging.getLogger(__name__)

SIGMA_MIN = 1e-5
"""Floor on every sigma (metres); variances are floored at ``SIGMA_MIN ** 2``."""
VAR_MIN = SIGMA_MIN**2
INVALID_VARIANCE = 1e10
"""Fill value (m^2) of the variance of invalid cells; stands for +inf, never used in formulas."""
CHI2_3_95 = 7.815
"""Default gate: the 95 % quantile of chi^2 with 3 degrees of freedom."""
NIS_AXIS_BOUNDS = (0.0157, 2.706)
"""The 10 % and 90 % quantiles of chi^2_1: ~80 % of per-axis NIS fall inside when consistent."""


@dataclass
class KalmanPrior:
    """Predicted state of frame t.

    Attributes:
        mean: ``(B, 3, h, w)`` predicted coordinates; 0 where invalid.
        var: ``(B, 1, h, w)`` predicted variance (>= 1e-10); ``INVALID_VARIANCE`` where invalid.
        valid: ``(B, h, w)`` bool; False = no prior (infinite variance).
    """

    mean: torch.Tensor
    var: torch.Tensor
    valid: torch.Tensor


@dataclass
class KalmanStep:
    """Result of one update.

    Attributes:
        mean: ``(B, 3, h, w)`` posterior (the state carried to the next frame).
        var: ``(B, 1, h, w)`` posterior variance.
        valid: ``(B, h, w)`` posterior validity (prior or measurement valid).
        output: ``(B, 3, h, w)`` what the filter reports: the posterior, or the measurement where
            the gate fired.
        output_var: ``(B, 1, h, w)`` variance of ``output``.
        innovation: ``(B, 3, h, w)`` ``z - prior`` where ``checked``, else 0.
        S: ``(B, 1, h, w)`` innovation variance ``P- + R`` where ``checked``, else
            ``INVALID_VARIANCE``.
        nis: ``(B, h, w)`` ``sum_i nu_i^2 / S`` where ``checked``, else 0.
        gated: ``(B, h, w)`` bool, the gate fired (output replaced by the measurement).
        gain: ``(B, 1, h, w)`` Kalman gain K (1 without prior, 0 without measurement).
        checked: ``(B, h, w)`` bool, prior and measurement both valid (NIS defined).
    """

    mean: torch.Tensor
    var: torch.Tensor
    valid: torch.Tensor
    output: torch.Tensor
    output_var: torch.Tensor
    innovation: torch.Tensor
    S: torch.Tensor
    nis: torch.Tensor
    gated: torch.Tensor
    gain: torch.Tensor
    checked: torch.Tensor

    @property
    def axis_nis(self) -> torch.Tensor:
        """Per-axis NIS ``nu_i^2 / S`` ``(B, 3, h, w)`` (0 where not ``checked``)."""
        return self.innovation.square() / self.S

    @property
    def prior(self) -> KalmanPrior:
        """The posterior as a :class:`KalmanPrior` (input of the next :func:`kalman_predict`)."""
        return KalmanPrior(self.mean, self.var, self.valid)


# ---------------------------------------------------------------------------- checks
def _check_map(x: torch.Tensor, name: str, channels: int | None, like: torch.Tensor | None):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a (B, {channels or 'C'}, h, w) tensor, got {got}.")
    require_floating(x, name)
    if channels is not None and x.shape[1] != channels:
        raise InputError(
            f"{name} must have {channels} channel(s) (B, {channels}, h, w), got {tuple(x.shape)}."
        )
    if like is not None and (x.shape[0], *x.shape[2:]) != (like.shape[0], *like.shape[2:]):
        raise InputError(
            f"{name} {tuple(x.shape)} must match the maps (B, *, h, w) = "
            f"{(like.shape[0], '*', *like.shape[2:])}."
        )


def _check_valid(v: torch.Tensor | None, name: str, like: torch.Tensor) -> torch.Tensor:
    b, _, h, w = like.shape
    if v is None:
        return torch.ones(b, h, w, dtype=torch.bool, device=like.device)
    if not isinstance(v, torch.Tensor) or v.dtype != torch.bool or tuple(v.shape) != (b, h, w):
        got = f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise InputError(f"{name} must be a {(b, h, w)} bool tensor, got {got}.")
    return v.to(like.device)


def _as_var_map(x, name: str, like: torch.Tensor) -> torch.Tensor:
    """A variance given as a float, a (B, 1, h, w) map or None (0) -> (B, 1, h, w) tensor."""
    b, _, h, w = like.shape
    if x is None:
        return like.new_zeros(b, 1, h, w)
    if not isinstance(x, torch.Tensor):
        return like.new_full((b, 1, h, w), float(x))
    _check_map(x, name, 1, like)
    return x.to(like.dtype)


def _finite_cells(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w) -> (B, h, w)`` True where all channels are finite."""
    return torch.isfinite(x).all(1)


# ---------------------------------------------------------------------------- predict / update
def kalman_predict(
    mean: torch.Tensor,
    var: torch.Tensor,
    valid: torch.Tensor | None,
    flow: torch.Tensor | None,
    process_var: torch.Tensor | float | None = None,
) -> KalmanPrior:
    """Propagate the posterior of frame t-1 to frame t.

    ``prior(p) = warp(posterior_{t-1})(p + flow(p))`` (bilinear on the mean *and the variance*,
    :func:`dgeo.geometry.warp_by_flow`), ``P- = max(warp(P), 1e-10) + max(process_var, 1e-10)``.
    Cells whose source lies outside the map or blends an invalid (or non-finite) source cell are
    invalid: mean 0, variance ``INVALID_VARIANCE`` (= +inf, see the module docstring).

    Args:
        mean: ``(B, 3, h, w)`` posterior coordinates of frame t-1.
        var: ``(B, 1, h, w)`` posterior variance (m^2) of frame t-1.
        valid: ``(B, h, w)`` bool validity of frame t-1, or None (all cells).
        flow: ``(B, 2, h, w)`` flow of frame t into frame t-1 in cells (``dx, dy``), or None for
            a static camera (identity).
        process_var: process noise variance ``sigma_w^2`` ``(B, 1, h, w)`` on frame t, a float,
            or None (0, floored at 1e-10).
    Returns:
        :class:`KalmanPrior` of frame t; differentiable w.r.t. all float inputs.
    """
    _check_map(mean, "mean", 3, None)
    _check_map(var, "var", 1, mean)
    valid = _check_valid(valid, "valid", mean) & _finite_cells(mean) & _finite_cells(var)
    q = _as_var_map(process_var, "process_var", mean)
    # sanitise before the warp: invalid source cells may hold NaN/inf (or the fill values)
    src = torch.cat([mean, var.clamp_min(VAR_MIN)], 1)
    src = torch.where(valid[:, None], src, torch.zeros_like(src))
    if flow is None:
        warped, pvalid = src, valid
    else:
        _check_map(flow, "flow", 2, mean)
        flow_ok = _finite_cells(flow)
        flow = torch.where(flow_ok[:, None], flow.to(mean.dtype), torch.zeros_like(flow))
        warped, pvalid = warp_by_flow(src, flow, valid)
        pvalid = pvalid & flow_ok
    q_ok = _finite_cells(q)
    pvalid = pvalid & q_ok
    q = torch.where(q_ok[:, None], q, torch.zeros_like(q)).clamp_min(VAR_MIN)
    pm = torch.where(pvalid[:, None], warped[:, :3], torch.zeros_like(warped[:, :3]))
    pv = warped[:, 3:].clamp_min(VAR_MIN) + q
    pv = torch.where(pvalid[:, None], pv, torch.full_like(pv, INVALID_VARIANCE))
    return KalmanPrior(pm, pv, pvalid)


def kalman_update(
    prior: KalmanPrior,
    z: torch.Tensor,
    var_z: torch.Tensor,
    z_valid: torch.Tensor | None = None,
    gate: float | None = CHI2_3_95,
) -> KalmanStep:
    """Fuse the prior of frame t with its measurement.

    Per cell, by validity of (prior, measurement):

    - both: ``K = P-/(P- + R)``, posterior ``y- + K nu``, ``P = P- R / (P- + R)``, NIS checked
      against ``gate``; where it fires, ``output = z`` (``output_var = R``) but the state stays
      the posterior;
    - measurement only (no prior = infinite prior variance): ``K = 1``, posterior = ``z``, ``R``;
    - prior only: the prior is kept (``K = 0``);
    - neither: invalid.

    Non-finite measurement cells count as invalid. Variances are floored at 1e-10 (sigma >= 1e-5).

    Args:
        prior: :class:`KalmanPrior` from :func:`kalman_predict` (or an initial state).
        z: ``(B, 3, h, w)`` measured coordinates (e.g. SCoordNet).
        var_z: ``(B, 1, h, w)`` measurement variance ``R = sigma_z^2``.
        z_valid: ``(B, h, w)`` bool, or None (all finite cells).
        gate: NIS threshold (default chi^2_3 95 % = 7.815); None or inf disables the gate.
    Returns:
        :class:`KalmanStep`; differentiable through K w.r.t. every float input.
    """
    if not isinstance(prior, KalmanPrior):
        raise InputError(f"prior must be a KalmanPrior (from kalman_predict), got {type(prior)}.")
    _check_map(prior.mean, "prior.mean", 3, None)
    _check_map(prior.var, "prior.var", 1, prior.mean)
    pvalid = _check_valid(prior.valid, "prior.valid", prior.mean)
    _check_map(z, "z", 3, prior.mean)
    _check_map(var_z, "var_z", 1, prior.mean)
    z = z.to(prior.mean.dtype)
    var_z = var_z.to(prior.mean.dtype)
    zvalid = _check_valid(z_valid, "z_valid", z) & _finite_cells(z) & _finite_cells(var_z)
    pvalid = pvalid & _finite_cells(prior.mean) & _finite_cells(prior.var)

    zero3 = torch.zeros_like(z)
    one1 = torch.ones_like(var_z)
    zm, pm = zvalid[:, None], pvalid[:, None]
    # sanitised operands: finite everywhere, so no NaN reaches autograd through torch.where
    zs = torch.where(zm, z, zero3)
    R = torch.where(zm, var_z, one1).clamp_min(VAR_MIN)
    ys = torch.where(pm, prior.mean, zero3)
    P = torch.where(pm, prior.var, one1).clamp_min(VAR_MIN)

    both = zvalid & pvalid
    bm = both[:, None]
    S_full = P + R
    K_full = P / S_full
    nu_full = zs - ys
    post_both = ys + K_full * nu_full
    var_both = (P * R / S_full).clamp_min(VAR_MIN)

    fill_var = torch.full_like(var_z, INVALID_VARIANCE)
    mean = torch.where(bm, post_both, torch.where(zm, zs, torch.where(pm, ys, zero3)))
    var = torch.where(bm, var_both, torch.where(zm, R, torch.where(pm, P, fill_var)))
    gain = torch.where(bm, K_full, torch.where(zm, one1, torch.zeros_like(one1)))
    valid = zvalid | pvalid

    innovation = torch.where(bm, nu_full, zero3)
    S = torch.where(bm, S_full, fill_var)
    nis = (innovation.square() / S).sum(1)
    if gate is None or math.isinf(gate):
        gated = torch.zeros_like(both)
    else:
        gated = both & (nis > gate)
    gm = gated[:, None]
    output = torch.where(gm, zs, mean)
    output_var = torch.where(gm, R, var)
    return KalmanStep(mean, var, valid, output, output_var, innovation, S, nis, gated, gain, both)


def initial_state(
    z: torch.Tensor, var_z: torch.Tensor, z_valid: torch.Tensor | None = None
) -> KalmanStep:
    """The first step of a sequence: the state is the measurement (KFNet, frame 1).

    Shapes as in :func:`kalman_update`; non-finite cells are invalid.
    """
    _check_map(z, "z", 3, None)
    _check_map(var_z, "var_z", 1, z)
    b, _, h, w = z.shape
    empty = KalmanPrior(
        z.new_zeros(b, 3, h, w),
        z.new_full((b, 1, h, w), INVALID_VARIANCE),
        torch.zeros(b, h, w, dtype=torch.bool, device=z.device),
    )
    return kalman_update(empty, z, var_z, z_valid, gate=None)


def nis_consistency(
    nis: torch.Tensor | KalmanStep,
    valid: torch.Tensor | None = None,
    bounds: tuple[float, float] = NIS_AXIS_BOUNDS,
) -> float:
    """Share of per-axis NIS values inside ``bounds`` (default (0.0157, 2.706), the 10 % and
    90 % quantiles of chi^2_1: ~0.8 for a consistent filter).

    Args:
        nis: per-axis NIS ``nu_i^2 / S``: ``(B, C, h, w)`` (e.g. :attr:`KalmanStep.axis_nis`) or
            ``(B, h, w)`` (one axis), or a :class:`KalmanStep` (its ``axis_nis`` over its
            ``checked`` cells).
        valid: ``(B, h, w)`` bool cells to count, or None (all); ANDed with finiteness.
        bounds: open interval ``(low, high)``.
    Returns:
        the share in [0, 1]; NaN when no cell is valid.
    """
    if isinstance(nis, KalmanStep):
        valid = nis.checked if valid is None else valid & nis.checked
        nis = nis.axis_nis
    if not isinstance(nis, torch.Tensor) or nis.dim() not in (3, 4):
        raise InputError("nis must be a (B, C, h, w) or (B, h, w) tensor of per-axis NIS values.")
    vals = nis if nis.dim() == 4 else nis[:, None]
    if valid is None:
        mask = torch.ones_like(vals, dtype=torch.bool)
    else:
        if tuple(valid.shape) != (vals.shape[0], *vals.shape[2:]):
            raise InputError(
                f"valid must be a {(vals.shape[0], *vals.shape[2:])} bool tensor, got "
                f"{tuple(valid.shape)}."
            )
        mask = valid[:, None].expand_as(vals)
    mask = mask & torch.isfinite(vals)
    n = int(mask.sum())
    if n == 0:
        return float("nan")
    lo, hi = bounds
    inside = (vals > lo) & (vals < hi) & mask
    return float(inside.sum()) / n


# ---------------------------------------------------------------------------- stateful filter
class PixelKalmanFilter:
    """Stateful per-pixel Kalman filter over a sequence of measurement maps (B sequences).

    The first frame (and every reset) is initialised by its measurement. A batch element resets
    itself when the gate rejects more than ``reset_fraction`` of its checked cells (the scene
    jumped: relocalisation, a wrong flow), or on non-finite input (NaN flow / process noise, or
    a measurement with no finite cell): a per-frame failure, never a crash. Each reset logs a
    warning (``logging``, logger ``dgeo.temporal.kalman``) and appends the frame index to
    :attr:`resets` (once per frame; :attr:`reset_log` has ``(frame, batch index, reason)``).
    A reset every ``reset_every`` frames is available but not the default (KFNet resets every
    500 frames for every scene, ALGORITHMS 4).

    The state keeps the autograd graph of its inputs (differentiable through K, as KFNet's joint
    training needs); run long sequences under ``torch.no_grad()``.

    Args:
        gate: NIS gate (chi^2_3 95 % = 7.815); None disables it (and gate-triggered resets).
        reset_fraction: share of gated cells that triggers a reset; None disables.
        reset_every: optional periodic reset period in frames (None: never).
        process_var: default process noise variance used when :meth:`step` gets none.
        min_checked: a gate-triggered reset needs at least this many checked cells.
    """

    def __init__(
        self,
        gate: float | None = CHI2_3_95,
        reset_fraction: float | None = 0.5,
        reset_every: int | None = None,
        process_var: float = 0.0,
        min_checked: int = 1,
    ):
        if reset_fraction is not None and not 0.0 <= reset_fraction <= 1.0:
            raise InputError(f"reset_fraction must be in [0, 1] or None, got {reset_fraction}.")
        if reset_every is not None and reset_every < 1:
            raise InputError(
                f"reset_every must be a positive frame count or None, got {reset_every}."
            )
        self.gate = gate
        self.reset_fraction = reset_fraction
        self.reset_every = reset_every
        self.process_var = process_var
        self.min_checked = min_checked
        self.state: KalmanStep | None = None
        self.frame = 0
        self.resets: list[int] = []
        self.reset_log: list[tuple[int, int, str]] = []

    def reset(self) -> None:
        """Forget the state: the next :meth:`step` is initialised by its measurement."""
        self.state = None

    def _log_reset(self, indices: list[int], reason: str) -> None:
        if not indices:
            return
        logger.warning(
            "PixelKalmanFilter reset at frame %d (batch %s): %s", self.frame, indices, reason
        )
        if not self.resets or self.resets[-1] != self.frame:
            self.resets.append(self.frame)
        self.reset_log.extend((self.frame, i, reason) for i in indices)

    def step(
        self,
        z: torch.Tensor,
        var_z: torch.Tensor,
        z_valid: torch.Tensor | None = None,
        flow: torch.Tensor | None = None,
        process_var: torch.Tensor | float | None = None,
    ) -> KalmanStep:
        """Filter frame ``self.frame`` and advance.

        Args:
            z: ``(B, 3, h, w)`` measurement; var_z ``(B, 1, h, w)``; z_valid ``(B, h, w)`` bool
                or None.
            flow: ``(B, 2, h, w)`` flow of this frame into the previous one (cells), or None
                (static).
            process_var: ``(B, 1, h, w)`` or float, or None (the constructor's default).
        Returns:
            :class:`KalmanStep` of this frame (after any reset).
        """
        _check_map(z, "z", 3, None)
        _check_map(var_z, "var_z", 1, z)
        zvalid = _check_valid(z_valid, "z_valid", z)
        b = z.shape[0]
        q = self.process_var if process_var is None else process_var
        fresh = self.state is None or (
            self.reset_every is not None and self.frame > 0 and self.frame % self.reset_every == 0
        )
        if self.state is not None and tuple(self.state.mean.shape) != tuple(z.shape):
            raise InputError(
                f"z {tuple(z.shape)} does not match the filter state "
                f"{tuple(self.state.mean.shape)}; call reset() before changing the map size."
            )
        init = initial_state(z, var_z, zvalid)
        if fresh:
            if self.state is not None:
                self._log_reset(list(range(b)), f"periodic reset every {self.reset_every} frames")
            out = init
        else:
            # per-frame failure: non-finite inputs (cells of z are masked per cell instead)
            bad = torch.zeros(b, dtype=torch.bool, device=z.device)
            if flow is not None:
                _check_map(flow, "flow", 2, z)
                bad |= ~torch.isfinite(flow).flatten(1).all(1)
            if isinstance(q, torch.Tensor):
                _check_map(q, "process_var", 1, z)
                bad |= ~torch.isfinite(q).flatten(1).all(1)
            elif not math.isfinite(float(q)):
                bad |= True
            finite_z = zvalid & _finite_cells(z) & _finite_cells(var_z)
            bad |= zvalid.flatten(1).any(1) & ~finite_z.flatten(1).any(1)
            prior = kalman_predict(self.state.mean, self.state.var, self.state.valid, flow, q)
            out = kalman_update(prior, z, var_z, zvalid, self.gate)
            jump = torch.zeros_like(bad)
            if self.reset_fraction is not None and self.gate is not None:
                n_checked = out.checked.flatten(1).sum(1)
                n_gated = out.gated.flatten(1).sum(1)
                jump = (n_checked >= self.min_checked) & (n_gated > self.reset_fraction * n_checked)
                jump &= ~bad
            self._log_reset(torch.nonzero(bad).flatten().tolist(), "non-finite input")
            if bool(jump.any()):
                self._log_reset(
                    torch.nonzero(jump).flatten().tolist(),
                    f"gate rejected more than {self.reset_fraction:.0%} of the checked cells",
                )
            redo = bad | jump
            if bool(redo.any()):
                out = _select_step(redo, init, out)
        self.state = out
        self.frame += 1
        return out


def _select_step(which: torch.Tensor, a: KalmanStep, b: KalmanStep) -> KalmanStep:
    """Per batch element: ``a`` where ``which`` ``(B,)`` else ``b``."""
    fields = {}
    for name in KalmanStep.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        m = which.reshape(-1, *([1] * (x.dim() - 1)))
        fields[name] = torch.where(m, x, y)
    return KalmanStep(**fields)
