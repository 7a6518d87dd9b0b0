"""Batched Levenberg-Marquardt / Gauss-Newton for many small robust least-squares problems.

:func:`minimize` solves ``B`` independent problems at once, each with a ``D``-dimensional tangent
space and ``N`` residual blocks of size ``K``:

    cost_b(x) = 1/2 sum_i w_bi m_bi v_bi(x) rho(||r_bi(x)||^2)

with per-residual weights ``w``, masks ``m``, validity ``v`` returned by the residual function (e.g.
a point behind the camera) and a robust kernel ``rho`` (:mod:`dgeo.optim.kernels`). Each iteration
builds ``H = sum w rho' J^T J`` and ``g = sum w rho' J^T r`` by one batched matmul, solves
``(H + damping) delta = -g`` by ``torch.linalg.cholesky_ex`` and updates the state by ``retract``.
Everything is batched: the only Python loop is over iterations, problems converge, stall or fail on
their own and are frozen with ``torch.where``. With ``unroll=True`` exactly ``max_iterations`` are
run and autograd flows through the iterations to whatever ``fn`` captures.

Notes:
    - The Hessian is the IRLS one (weights ``rho'``, no ``rho''`` curvature term, as Ceres does
      for kernels with ``rho'' < 0``), so robust problems converge linearly; the relative cost
      decrease tolerance is the usual way they stop.
    - Adaptive damping accepts a step only if the cost strictly decreases, so the state is
      resolved to about ``sqrt(eps * cost / H)``, where cost comparisons reach round-off;
      plain Gauss-Newton (``damping="fixed", lambda_init=0``) converges further.
    - A problem whose residuals are invalid, masked or zero-weighted below ``min_valid`` is not
      touched (``success`` False); a step whose damped system is not positive definite or gives
      non-finite values is rejected like a step that increases the cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, NamedTuple, TypeVar

import torch

from dgeo.errors import (
    InputError,
    ShapeError,
    require_finite,
    require_floating,
    require_mask,
    require_shape,
    require_weights,
)
from dgeo.geometry.pose import Pose
from dgeo.optim.kernels import RobustKernel, get_kernel

State = TypeVar("State", torch.Tensor, Pose)
ResidualFn = Callable[
    [State], tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]
"""``fn(x) -> (r (B, N, K), J (B, N, K, D)[, valid (B, N) bool])``."""

_DEFAULT_TOLERANCES = {  # (gradient max-norm, step norm, relative cost decrease) per dtype
    torch.float64: (1e-10, 1e-8, 1e-10),
    torch.float32: (1e-6, 1e-6, 1e-5),  # float32 sums of many terms resolve ~1e-6 relative
}


@dataclass(frozen=True)
class LMOptions:
    """Options of :func:`minimize`.

    Attributes:
        max_iterations: iterations (linear solves) per problem.
        damping: ``"adaptive"``: a step that does not decrease a problem's cost is rejected and its
            lambda multiplied by ``lambda_factor``, an accepted one divides it; ``"fixed"``: plain
            damped Gauss-Newton with ``lambda_init``, every finite step accepted.
        damping_mode: ``"diag"``: ``H + diag(lambda * diag(H) + damping_floor)`` (Marquardt);
            ``"identity"``: ``H + (lambda + damping_floor) I`` (Levenberg).
        lambda_init, lambda_min, lambda_max, lambda_factor: the damping schedule.
        damping_floor: absolute ridge added to the diagonal so that ``H`` with a zero direction
            stays solvable.
        gradient_tolerance: converged when ``max |g| <=`` this (``None``: 1e-10 in float64,
            1e-6 in float32).
        step_tolerance: converged when a step has ``||delta|| <=`` this (``None``: 1e-8 / 1e-6).
        cost_tolerance: converged when a step changes the cost by at most this fraction,
            accepted or not, as in Ceres (``None``: 1e-10 / 1e-5). IRLS converges linearly
            under robust kernels, so this is the usual stopping rule there; tighten it (or set
            0) for reference-grade agreement.
        min_valid: fewest valid residual blocks a problem needs, else it fails untouched
            (``None``: ``ceil(D / K)``, the fewest that can determine the state).
        unroll: run exactly ``max_iterations`` with no data-dependent stopping (for training).
        detach: run without autograd and return detached results; ``None``: ``not unroll``.
        record_history: keep every iteration's cost in :attr:`LMResult.cost_history`.
    """

    max_iterations: int = 100
    damping: Literal["adaptive", "fixed"] = "adaptive"
    damping_mode: Literal["diag", "identity"] = "diag"
    lambda_init: float = 1e-3
    lambda_min: float = 1e-10
    lambda_max: float = 1e10
    lambda_factor: float = 10.0
    damping_floor: float = 1e-9
    gradient_tolerance: float | None = None
    step_tolerance: float | None = None
    cost_tolerance: float | None = None
    min_valid: int | None = None
    unroll: bool = False
    detach: bool | None = None
    record_history: bool = False

    def __post_init__(self):
        if self.damping not in ("adaptive", "fixed"):
            raise InputError(f"damping must be 'adaptive' or 'fixed', got {self.damping!r}.")
        if self.damping_mode not in ("diag", "identity"):
            raise InputError(
                f"damping_mode must be 'diag' or 'identity', got {self.damping_mode!r}."
            )
        if self.max_iterations < 0:
            raise InputError(f"max_iterations must be >= 0, got {self.max_iterations}.")
        if not (0 <= self.lambda_min <= self.lambda_max and self.lambda_init >= 0):
            raise InputError(
                "need 0 <= lambda_min <= lambda_max and lambda_init >= 0, got "
                f"{self.lambda_min}, {self.lambda_max}, {self.lambda_init}."
            )
        if self.lambda_factor <= 1:
            raise InputError(f"lambda_factor must be > 1, got {self.lambda_factor}.")

    def tolerances(self, dtype: torch.dtype) -> tuple[float, float, float]:
        """The (gradient, step, cost) tolerances in effect for ``dtype``."""
        default = _DEFAULT_TOLERANCES.get(dtype, _DEFAULT_TOLERANCES[torch.float32])
        given = (self.gradient_tolerance, self.step_tolerance, self.cost_tolerance)
        return tuple(d if v is None else v for v, d in zip(given, default, strict=True))


@dataclass
class LMResult(Generic[State]):
    """The outcome of :func:`minimize`, per problem.

    Attributes:
        x: the solution: a tensor ``(B, S)`` or a :class:`Pose` ``(B,)`` like ``x0``; problems
            that failed keep ``x0``.
        cost_initial: ``(B,)`` cost at ``x0``. cost: ``(B,)`` cost at ``x``.
        iterations: ``(B,)`` int64, iterations run on each problem.
        converged: ``(B,)`` bool, a tolerance was met.
        success: ``(B,)`` bool, enough valid residuals, finite cost and a positive-definite
            Hessian at the solution (the state is determined).
        num_valid: ``(B,)`` int64, residual blocks valid, unmasked and non-zero-weighted at ``x``.
        hessian: ``(B, D, D)`` Gauss-Newton Hessian ``sum w rho' J^T J`` at ``x`` (undamped).
        gradient: ``(B, D)`` ``sum w rho' J^T r`` at ``x``.
        cost_history: ``(T + 1, B)`` cost after each iteration if ``record_history``, else None.
    """

    x: State
    cost_initial: torch.Tensor
    cost: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    success: torch.Tensor
    num_valid: torch.Tensor
    hessian: torch.Tensor
    gradient: torch.Tensor
    cost_history: torch.Tensor | None = None


class _Linearization(NamedTuple):
    cost: torch.Tensor  # (B,)
    gradient: torch.Tensor  # (B, D)
    hessian: torch.Tensor  # (B, D, D)
    num_valid: torch.Tensor  # (B,)


def minimize(
    fn: ResidualFn,
    x0: State,
    retract: Callable[[State, torch.Tensor], State] | None = None,
    *,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    kernel: RobustKernel | str | None = None,
    options: LMOptions | None = None,
) -> LMResult[State]:
    """Minimise ``B`` robust least-squares problems at once by Levenberg-Marquardt.

    Args:
        fn: ``fn(x) -> (r, J[, valid])`` with residuals ``r`` ``(B, N, K)``, Jacobians
            ``J = dr / d delta`` ``(B, N, K, D)`` w.r.t. the tangent update of ``retract``, and an
            optional validity ``(B, N)`` bool. Non-finite residuals or Jacobians count as invalid.
        x0: initial states: a tensor ``(B, S)`` or a :class:`Pose` of batch shape ``(B,)``.
        retract: ``retract(x, delta (B, D)) -> x``; defaults to :meth:`Pose.retract` for poses
            and to ``x + delta`` for tensors.
        mask: ``(B, N)`` bool, residuals to use (e.g. padding = False).
        weights: ``(B, N)`` non-negative per-residual weights.
        kernel: a robust kernel or its name (scale 1); ``None``: least squares.
        options: :class:`LMOptions`.
    Returns:
        :class:`LMResult` with ``x`` of the type of ``x0``.
    Raises:
        InputError: bad shapes, dtypes or non-finite values (the message names the tensor).
    """
    opts = options or LMOptions()
    kernel = get_kernel(kernel)
    is_pose = isinstance(x0, Pose)
    data0 = x0.data if is_pose else x0
    require_shape(data0, "x0 data" if is_pose else "x0", last=[None, None], min_dim=2)
    if data0.dim() != 2:
        raise ShapeError(f"x0 must have one batch dimension (B, S), got {tuple(data0.shape)}.")
    require_floating(data0, "x0")
    require_finite(data0, "x0")
    if retract is None:
        retract = _pose_retract if is_pose else _add
    wrap = Pose if is_pose else (lambda d: d)
    detach = (not opts.unroll) if opts.detach is None else opts.detach
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
        data0 = data0.detach() if detach else data0
        out = _solve(fn, data0, wrap, retract, mask, weights, kernel, opts)
    if detach:
        out = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    return LMResult(x=wrap(out.pop("x")), **out)


def _pose_retract(x: Pose, delta: torch.Tensor) -> Pose:
    return x.retract(delta)


def _add(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return x + delta


def _check_residuals(out, B: int, dtype: torch.dtype):
    """Unpack and check ``fn``'s output once, at ``x0``."""
    if not isinstance(out, tuple | list) or len(out) not in (2, 3):
        raise InputError("fn must return a tuple (residuals, jacobians[, valid]).")
    r, J = out[0], out[1]
    require_shape(r, "fn residuals", last=[B, None, None], min_dim=3)
    if r.dim() != 3:
        raise ShapeError(f"fn residuals must have shape (B, N, K), got {tuple(r.shape)}.")
    require_shape(J, "fn jacobians", last=[B, r.shape[1], r.shape[2], None], min_dim=4)
    if J.dim() != 4 or r.dtype != dtype or J.dtype != dtype:
        raise ShapeError(
            f"fn jacobians must have shape (B, N, K, D) and residuals and jacobians the dtype "
            f"{dtype} of x0; got {tuple(J.shape)}, {r.dtype}, {J.dtype}."
        )
    if len(out) == 3 and out[2] is not None:
        require_shape(out[2], "fn valid", last=list(r.shape[:2]))
        if out[2].dim() != 2 or out[2].dtype != torch.bool:
            raise ShapeError(f"fn valid must be a (B, N) bool tensor, got {out[2].dtype}.")


def _linearize(out: tuple, kernel, mask, weights) -> _Linearization:
    """Cost, gradient and Gauss-Newton Hessian of every problem from ``fn``'s output."""
    r, J = out[0], out[1]
    finite = torch.isfinite(r.sum(-1) + J.sum((-2, -1)))  # one reduction: NaN/inf propagate
    if not bool(finite.all()):  # rare: scrub, so that a zero weight zeroes the row (0 * nan = nan)
        r = torch.where(finite[..., None], r, 0.0)
        J = torch.where(finite[..., None, None], J, 0.0)
    valid = finite
    if len(out) == 3 and out[2] is not None:
        valid = valid & out[2]
    if mask is not None:
        valid = valid & mask
    if weights is not None:
        valid = valid & (weights > 0)
    r = torch.where(valid[..., None], r, 0.0)  # invalid rows of J are finite and get weight 0
    w = valid.to(r.dtype) if weights is None else torch.where(valid, weights, 0.0)
    rho, d1, _ = kernel((r * r).sum(-1))
    cost = 0.5 * (w * rho).sum(-1)
    Jw = (J * (w * d1)[..., None, None]).flatten(1, 2).transpose(-1, -2)  # (B, D, N*K)
    hessian = Jw @ J.flatten(1, 2)
    gradient = (Jw @ r.flatten(1)[..., None])[..., 0]
    return _Linearization(cost, gradient, hessian, valid.sum(-1))


def _select(cond: torch.Tensor, a: _Linearization, b: _Linearization) -> _Linearization:
    """Per-problem ``where(cond, a, b)`` over all fields."""
    return _Linearization(
        *(torch.where(cond.view(-1, *[1] * (u.dim() - 1)), u, v) for u, v in zip(a, b, strict=True))
    )


def _solve(fn, data, wrap, retract, mask, weights, kernel, opts: LMOptions) -> dict:
    B = data.shape[0]
    first = fn(wrap(data))
    _check_residuals(first, B, data.dtype)
    N, K, D = first[1].shape[1:]
    require_mask(mask, "mask", (B, N))
    require_weights(weights, "weights", (B, N))
    if retract is _add and data.shape[1] != D:
        raise ShapeError(
            f"x0 has shape {tuple(data.shape)} but the Jacobians give {D}-dimensional steps; "
            "pass a retract function for states that are not plain vectors."
        )
    gtol, xtol, ftol = opts.tolerances(data.dtype)
    min_valid = math.ceil(D / K) if opts.min_valid is None else opts.min_valid

    lin = _linearize(first, kernel, mask, weights)
    cost_initial = lin.cost
    ok = (lin.num_valid >= min_valid) & torch.isfinite(lin.cost)
    running = ok.clone()
    converged = torch.zeros_like(ok)
    iterations = torch.zeros(B, dtype=torch.int64, device=data.device)
    lam = torch.full((B,), opts.lambda_init, dtype=data.dtype, device=data.device)
    eye = torch.eye(D, dtype=data.dtype, device=data.device)
    history = [lin.cost] if opts.record_history else None
    adaptive = opts.damping == "adaptive"

    for _ in range(opts.max_iterations):
        if not opts.unroll:
            small_grad = running & (lin.gradient.abs().amax(-1) <= gtol)
            converged = converged | small_grad
            running = running & ~small_grad
            if not bool(running.any()):
                break
        diag = lin.hessian.diagonal(dim1=-2, dim2=-1)
        if opts.damping_mode == "diag":
            damp = lam[:, None] * diag + opts.damping_floor
        else:
            damp = (lam[:, None] + opts.damping_floor).expand(B, D)
        L, info = torch.linalg.cholesky_ex(lin.hessian + torch.diag_embed(damp))
        solved = running & (info == 0)
        L = torch.where(solved[:, None, None], L, eye)  # a failed factor never reaches the solve
        delta = -torch.cholesky_solve(lin.gradient[..., None], L)[..., 0]
        solved = solved & torch.isfinite(delta).all(-1)
        delta = torch.where(solved[:, None], delta, 0.0)

        new_data = _data(retract(wrap(data), delta))
        new = _linearize(fn(wrap(new_data)), kernel, mask, weights)
        usable = solved & (new.num_valid >= min_valid) & torch.isfinite(new.cost)
        accept = usable & (new.cost < lin.cost) if adaptive else usable

        if not opts.unroll:  # tolerances on this step, before the state moves
            small_step = solved & (delta.norm(dim=-1) <= xtol)
            # like Ceres, on every evaluated step: a change within ftol, accepted or not, means
            # the cost is flat to the precision asked for (float32 rounding, say)
            small_decrease = usable & ((lin.cost - new.cost).abs() <= ftol * lin.cost)
        data = torch.where(accept[:, None], new_data, data)
        lin = _select(accept, new, lin)
        iterations = iterations + running.long()
        if adaptive:
            stalled = running & ~accept & (lam >= opts.lambda_max)
            lam = torch.where(accept, lam / opts.lambda_factor, lam * opts.lambda_factor)
            lam = lam.clamp(opts.lambda_min, opts.lambda_max)
        else:  # a fixed step that cannot be taken now never can
            stalled = running & ~usable
        if not opts.unroll:
            newly = running & (small_step | small_decrease)
            converged = converged | newly
            running = running & ~(newly | stalled)
        if history is not None:
            history.append(lin.cost)

    converged = converged | (ok & (lin.gradient.abs().amax(-1) <= gtol))
    final_ok = torch.linalg.cholesky_ex(lin.hessian)[1] == 0
    success = ok & torch.isfinite(lin.cost) & final_ok & (lin.num_valid >= min_valid)
    return dict(
        x=data,
        cost_initial=cost_initial,
        cost=lin.cost,
        iterations=iterations,
        converged=converged & ok,
        success=success,
        num_valid=lin.num_valid,
        hessian=lin.hessian,
        gradient=lin.gradient,
        cost_history=None if history is None else torch.stack(history),
    )


def _data(x: torch.Tensor | Pose) -> torch.Tensor:
    return x.data if isinstance(x, Pose) else x
