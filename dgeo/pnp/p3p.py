"""Batched minimal absolute pose from three ray-point correspondences (P3P), after Lambda Twist.

Reference: M. Persson and K. Nordberg, "Lambda Twist: An Accurate Fast Robust Perspective Three
Point (P3P) Solver", ECCV 2018. The solver handles any number of problems in one call (every
RANSAC hypothesis of every query at once): no Python loop over problems, no eigen-solver,
branches are ``torch.where`` selections, and the arithmetic runs on contiguous ``(N,)`` rows
("structure of arrays"), one elementwise kernel per step.

The math, with unit bearings ``y_i``, depths ``lambda_i > 0`` and world points ``X_i``:

1. The camera-frame points ``lambda_i y_i`` keep the world distances:
   ``lambda_i^2 + lambda_j^2 - 2 b_ij lambda_i lambda_j = a_ij`` with ``b_ij = y_i . y_j`` and
   ``a_ij = |X_i - X_j|^2``. Writing ``Lambda^T M_ij Lambda`` for the left-hand side, the
   scale-free conics ``D1 = a23 M12 - a12 M23`` and ``D2 = a23 M13 - a13 M23`` both vanish at
   ``Lambda = (lambda_1, lambda_2, lambda_3)``; their four intersections are the four solutions.
2. Some member ``D0 = mu D1 + nu D2`` of their pencil is degenerate: ``det D0 = 0`` is a cubic
   in ``nu / mu`` (coefficients below, divided by ``a23``). A degenerate real conic is a pair of
   lines, and whenever the problem has a real solution every real root gives real lines. We
   take the best separated root (after the depressing shift, the one of largest magnitude:
   closed form, then a Newton step), in the chart ``nu / mu`` or ``mu / nu`` whose leading
   coefficient is larger, scaled so no power overflows. Symmetric configurations, where ``D1``
   or ``D2`` is itself degenerate, need no special case.
3. Lambda Twist splits ``D0`` with an eigen-decomposition; we use its adjugate instead: for
   ``D0 = (p q^T + q p^T) / 2``, ``-adj(D0) = w w^T / 4`` with the vertex ``w = p x q``, and
   ``D0 + [w / 2]x`` is the rank-one ``p q^T`` (or ``q p^T``), whose largest row and column
   are the two lines.
4. Each line through the vertex ``w`` is spanned by ``w`` and ``u = l x w``. On it the conic
   ``E = -nu D1 + mu D2`` (another pencil member, well scaled for every root) is a binary
   quadratic form whose two roots give up to two candidates per line, four per problem.
   Mixed-sign candidates are dropped; the scale comes from the sum of the distance equations.
5. Newton steps on the three distance equations polish the depths (as in Lambda Twist), with
   residuals written in ``c_ij = 1 - b_ij = |y_i - y_j|^2 / 2`` so that narrow fields of view
   keep their precision. A candidate is valid when the polished residuals are below
   ``sqrt(eps)`` (relative), all depths are positive and the world points are not collinear.
6. The rotation maps the orthonormal frame of the world triangle onto that of the camera-frame
   triangle, so it is a rotation to rounding, and ``t = lambda_1 y_1 - R X_1``.

Gradients: when an input requires grad, one more Newton step is taken with autograd on,
from detached depths and a detached Jacobian, so the depths carry the exact implicit-function
derivative ``d lambda / d theta = -J^-1 df / d theta`` of the solution (the branch choices
have none); the pose construction is then differentiated as written.
"""

from __future__ import annotations

import math

import torch

from dgeo.errors import InputError, ShapeError, require_shape
from dgeo.geometry.pose import Pose

__all__ = ["p3p"]

# Newton steps on the depths: one reaches rounding level in float64 (the closed-form candidates
# are already close); float32 gains from a second one on ill-conditioned problems.
_NEWTON_STEPS = {torch.float64: 1, torch.float32: 2}
# Problems per chunk on the CPU: small enough for the temporaries to stay in cache and below
# glibc's mmap threshold (fresh mmapped pages are page-faulted on every call), large enough
# for the ~400 kernel launches per chunk not to matter. In bytes of one (4, n) temporary.
_CPU_CHUNK_BYTES = 1 << 18

Rows = list[torch.Tensor]


def p3p(rays: torch.Tensor, points3D: torch.Tensor) -> tuple[Pose, torch.Tensor]:
    """All camera poses that see three world points along three rays (Lambda Twist P3P).

    Args:
        rays: ``(..., 3, 3)`` bearing vectors in the camera frame, one per row (row ``i`` sees
            point ``i``); they need not be unit vectors (e.g. ``K^-1 [u, v, 1]``).
        points3D: ``(..., 3, 3)`` world points, one per row. Leading shapes broadcast with those
            of ``rays``.

    Returns:
        ``poses``: :class:`Pose` ``(..., 4)`` (``cam_from_world``), up to four solutions per
        problem, each with all three points in front of the camera: ``R X_i + t = lambda_i y_i``
        with ``lambda_i > 0`` for the unit rays ``y_i``; and ``valid`` ``(..., 4)`` bool. Valid
        solutions come in no particular order; invalid slots hold the identity. Degenerate
        problems (collinear or coincident world points, zero rays, NaN/inf) give
        ``valid = False`` and finite poses, never an exception.

    Runs in the dtype and on the device of the inputs (float16/bfloat16 are solved in float32 and
    cast back). Valid float64 solutions are exact to about 1e-12 for well-conditioned problems;
    float32 ones to about 1e-6 (median; see the tests). Gradients with respect to both inputs
    are the exact implicit derivatives of each solution (see the module docstring).
    """
    require_shape(rays, "rays", last=[3, 3])
    require_shape(points3D, "points3D", last=[3, 3])
    if not (rays.is_floating_point() and points3D.is_floating_point()):
        raise InputError(
            f"rays and points3D must be floating-point tensors, got {rays.dtype} and "
            f"{points3D.dtype}."
        )
    if rays.device != points3D.device:
        raise InputError(
            f"rays and points3D must be on one device, got {rays.device} and {points3D.device}."
        )
    try:
        shape = torch.broadcast_shapes(rays.shape[:-2], points3D.shape[:-2])
    except RuntimeError as err:
        raise ShapeError(
            f"the batch shapes of rays {tuple(rays.shape)} and points3D "
            f"{tuple(points3D.shape)} do not broadcast."
        ) from err
    out_dtype = torch.promote_types(rays.dtype, points3D.dtype)
    dtype = out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32
    # (3 rows, 3 coordinates, N problems)
    y = rays.to(dtype).expand(*shape, 3, 3).reshape(-1, 3, 3).permute(1, 2, 0).contiguous()
    X = points3D.to(dtype).expand(*shape, 3, 3).reshape(-1, 3, 3).permute(1, 2, 0).contiguous()
    n = y.shape[-1]
    if torch.is_grad_enabled() and (y.requires_grad or X.requires_grad):
        data, valid = _solve(y, X, differentiable=True)
    else:
        data = y.new_empty(n, 4, 12)
        valid = torch.empty(n, 4, dtype=torch.bool, device=y.device)
        step = _CPU_CHUNK_BYTES // (4 * y.element_size()) if y.device.type == "cpu" else n
        with torch.no_grad():
            for i in range(0, n, max(step, 1)):
                chunk = slice(i, i + step)
                _solve(y[..., chunk], X[..., chunk], out=(data[chunk], valid[chunk]))
    return Pose(data.to(out_dtype).reshape(*shape, 4, 12)), valid.reshape(*shape, 4)


def _cross(a: Rows, b: Rows) -> Rows:
    """Cross product of vectors given as lists of their three coordinate rows."""
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _dot(a: Rows, b: Rows) -> torch.Tensor:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cbrt(x: torch.Tensor) -> torch.Tensor:
    """Real cube root."""
    return x.abs().pow(1.0 / 3.0).copysign(x)


def _solve(
    y: torch.Tensor,
    X: torch.Tensor,
    differentiable: bool = False,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``N`` problems given in transposed layout.

    Args:
        y: ``(3, 3, N)`` rays, ``y[i, k]`` is coordinate ``k`` of ray ``i``.
        X: ``(3, 3, N)`` world points, same layout.
        differentiable: take the extra autograd-tracked Newton step (see the module docstring).
        out: optional ``(N, 4, 12)`` and ``(N, 4)`` tensors to write the result into.
    Returns:
        ``(N, 4, 12)`` packed poses (identity where invalid) and ``(N, 4)`` validity.
    """
    dtype = y.dtype
    eps = torch.finfo(dtype).eps
    # ---------------------------------------------------------------- per-problem invariants
    y = y * torch.rsqrt((y * y).sum(1, keepdim=True))  # unit rays (zero rays -> NaN -> invalid)
    dy = y[[1, 2, 2]] - y[[0, 0, 1]]
    c = 0.5 * (dy * dy).sum(1)  # (3, N): c_ij = 1 - y_i . y_j for ij = 12, 13, 23
    d = X[[1, 2, 2]] - X[[0, 0, 1]]
    A = (d * d).sum(1)  # (3, N): squared world distances
    scale = A.sum(0)
    a = A / scale
    d12, d13 = list(d[0]), list(d[1])
    nrm = _cross(d12, d13)
    nrm2 = _dot(nrm, nrm)
    ok = nrm2 > (100 * eps) * A[0] * A[1]  # not collinear (nor coincident)
    inv = torch.rsqrt(A[0])
    e1 = [v * inv for v in d12]
    inv = torch.rsqrt(nrm2)
    e3 = [v * inv for v in nrm]
    e2 = _cross(e3, e1)

    with torch.no_grad():
        ad, cd = a.detach(), c.detach()
        lam, cand = _candidates(ad, cd, eps)
        for _ in range(_NEWTON_STEPS[dtype]):
            lam = _newton_step(lam, ad, cd)
    if differentiable:
        lam = _newton_step(lam, a, c, detach_jacobian=True)
    with torch.no_grad():
        l1, l2, l3 = (v.detach() for v in lam)
        f1, f2, f3 = _residuals([l1, l2, l3], ad, cd)
        res = torch.maximum(torch.maximum(f1.abs(), f2.abs()), f3.abs())
        cand &= ok & (res <= math.sqrt(eps)) & (torch.minimum(torch.minimum(l1, l2), l3) > 0)

    # ---------------------------------------------------------------- pose
    # Camera frame of the triangle, like the world frame: f1 along P2 - P1, f3 its normal.
    l1, l2, l3 = lam
    ys = y * scale.sqrt()  # depths are normalised like a
    P1 = [l1 * ys[0, k] for k in range(3)]
    v1 = [l2 * ys[1, k] - P1[k] for k in range(3)]
    v2 = [l3 * ys[2, k] - P1[k] for k in range(3)]
    f3 = _cross(v1, v2)
    inv = torch.rsqrt(_dot(v1, v1))
    f1 = [v * inv for v in v1]
    inv = torch.rsqrt(_dot(f3, f3))
    f3 = [v * inv for v in f3]
    f2 = _cross(f3, f1)
    # R = [f1 f2 f3] [e1 e2 e3]^T, t = P1 - R X1
    R = [f1[r] * e1[c] + f2[r] * e2[c] + f3[r] * e3[c] for r in range(3) for c in range(3)]
    X1 = X[0]
    t = [P1[r] - (R[3 * r] * X1[0] + R[3 * r + 1] * X1[1] + R[3 * r + 2] * X1[2]) for r in range(3)]
    with torch.no_grad():
        cand &= torch.isfinite(t[0] + t[1] + t[2])
    ident = torch.tensor(
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=dtype, device=y.device
    )
    rows = [v.T for v in R + t]
    if out is None:  # autograd
        return torch.where(cand.T[..., None], torch.stack(rows, -1), ident), cand.T
    data, valid = out
    torch.stack(rows, -1, out=data)
    valid.copy_(cand.T)
    if data.device.type == "cpu":
        data[~valid] = ident  # faster than where on the CPU; syncs on CUDA
    else:
        torch.where(valid[..., None], data, ident, out=data)
    return data, valid


def _candidates(a: torch.Tensor, c: torch.Tensor, eps: float) -> tuple[Rows, torch.Tensor]:
    """Up to four depth candidates per problem from the closed-form steps 2-4.

    Args:
        a: ``(3, N)`` squared world distances ``a12, a13, a23``, normalised to sum 1.
        c: ``(3, N)`` ray chords ``c_ij = 1 - y_i . y_j``.
        eps: the machine epsilon of the dtype.
    Returns:
        The three depth rows ``(4, N)`` (normalised like ``a``) and the ``(4, N)`` candidate
        mask; the four candidates are (line 1, line 2) x (root 1, root 2).
    """
    a12, a13, a23 = a
    c12, c13, c23 = c
    n = a.shape[-1]
    b12, b13, b23 = 1 - c12, 1 - c13, 1 - c23

    # ---------------------------------------------------------------- cubic det(mu D1 + nu D2)
    # k3 nu^3 + k2 nu^2 mu + k1 nu mu^2 + k0 mu^3 (divided by a23), with s_ij = 1 - b_ij^2 and
    # bb = b12 b13 b23 - 1 written in c_ij to avoid cancellation.
    s12, s13, s23 = c12 * (2 - c12), c13 * (2 - c13), c23 * (2 - c23)
    bb = (c12 * c13 + c12 * c23 + c13 * c23 - c12 * c13 * c23) - (c12 + c13 + c23)
    a12s23, a13s23 = a12 * s23, a13 * s23
    k3 = a13 * (a13s23 - a23 * s13)
    k0 = a12 * (a12s23 - a23 * s12)
    t2 = 2 * a23 * bb
    k2 = a12 * (2 * a13s23 - a23 * s13) + a13 * (a13s23 + t2) + a23 * a23 * s13
    k1 = a12 * (a12s23 + 2 * a13s23 + t2) + a23 * s12 * (a23 - a13)
    # Chart gamma = nu / mu (monic in k3) or mu / nu (monic in k0), whichever lead is larger.
    rev = k0.abs() > k3.abs()
    lead = torch.where(rev, k0, k3)
    flat = lead == 0  # k3 = k0 = 0: D1 itself is degenerate, take it
    inv_lead = 1 / torch.where(flat, 1.0, lead)
    r2 = torch.where(rev, k1, k2) * inv_lead
    r1 = torch.where(rev, k2, k1) * inv_lead
    r0 = torch.where(rev, k3, k0) * inv_lead
    # Scale the unknown so that no coefficient exceeds 1 (no overflow in p^3 or q^2).
    sig = torch.maximum(torch.maximum(r2.abs(), r1.abs().sqrt()), _cbrt(r0.abs()))
    sig = torch.where(sig > 0, sig, 1.0)
    isig = 1 / sig
    r2, r1, r0 = r2 * isig, r1 * (isig * isig), r0 * (isig * isig * isig)
    # Depressed cubic x^3 + p x + q with z = x - r2 / 3; its root of largest |x| (sign opposite
    # to q) is the best separated one: Cardano's stable form for one real root, the
    # trigonometric form for three.
    r2_3 = r2 * (1.0 / 3.0)
    p = r1 - r2 * r2_3
    q = r2_3 * (2 * r2_3 * r2_3 - r1) + r0
    disc = 0.25 * q * q + (1.0 / 27.0) * p * p * p
    sgn = torch.where(q < 0, -1.0, 1.0)
    u = _cbrt(-0.5 * q - sgn * disc.clamp_min(0).sqrt())
    x1 = u - p / (3 * torch.where(u != 0, u, 1.0))
    rho = (-p * (1.0 / 3.0)).clamp_min(0).sqrt()
    rho3 = rho * rho * rho
    cos3 = (0.5 * q.abs() / torch.where(rho3 > 0, rho3, 1.0)).clamp(max=1)
    x3 = -sgn * 2 * rho * torch.cos(torch.acos(cos3) * (1.0 / 3.0))
    z = torch.where(disc > 0, x1, x3) - r2_3
    f = ((z + r2) * z + r1) * z + r0  # one Newton step on the scaled monic cubic
    df = (3 * z + 2 * r2) * z + r1
    z = z - f / torch.where(df != 0, df, 1.0)
    root = z * sig
    # Pencil coordinates of D0, scaled to max(|mu|, |nu|) = 1.
    mu = torch.where(rev, root, 1.0)
    nu = torch.where(rev, 1.0, root)
    norm = 1 / torch.maximum(mu.abs(), nu.abs())
    mu = torch.where(flat, 1.0, mu * norm)
    nu = torch.where(flat, 0.0, nu * norm)

    # ---------------------------------------------------------------- D0 and E = -nu D1 + mu D2
    # D1 = [[a23, -a23 b12, 0], [., a23 - a12, a12 b23], [., ., -a12]]
    # D2 = [[a23, 0, -a23 b13], [., -a13, a13 b23], [., ., a23 - a13]]
    a23b12, a23b13 = a23 * b12, a23 * b13
    a12b23, a13b23 = a12 * b23, a13 * b23
    a23m12, a23m13 = a23 - a12, a23 - a13
    g11 = (mu + nu) * a23
    g12 = -mu * a23b12
    g13 = -nu * a23b13
    g22 = mu * a23m12 - nu * a13
    g23 = mu * a12b23 + nu * a13b23
    g33 = nu * a23m13 - mu * a12
    h11 = (mu - nu) * a23
    h12 = nu * a23b12
    h13 = -mu * a23b13
    h22 = -nu * a23m12 - mu * a13
    h23 = mu * a13b23 - nu * a12b23
    h33 = nu * a12 + mu * a23m13

    # ---------------------------------------------------------------- split D0 into two lines
    m11 = g23 * g23 - g22 * g33  # -adj(D0) = w w^T / 4 for a pair of real lines
    m22 = g13 * g13 - g11 * g33
    m33 = g12 * g12 - g11 * g22
    m12 = g12 * g33 - g13 * g23
    m13 = g13 * g22 - g12 * g23
    m23 = g11 * g23 - g12 * g13
    pick1 = (m11 >= m22) & (m11 >= m33)
    pick2 = ~pick1 & (m22 >= m33)
    mkk = torch.where(pick1, m11, torch.where(pick2, m22, m33))
    real_lines = mkk > 0
    inv = torch.rsqrt(mkk.clamp_min(torch.finfo(a.dtype).tiny))
    w1 = torch.where(pick1, m11, torch.where(pick2, m12, m13)) * inv
    w2 = torch.where(pick1, m12, torch.where(pick2, m22, m23)) * inv
    w3 = torch.where(pick1, m13, torch.where(pick2, m23, m33)) * inv
    # D0 + [w]x = p q^T is rank one: its row i is p_i q^T and its column j is p q_j; the row
    # and column of largest absolute sum (largest |p_i|, |q_j|) give the lines q and p.
    T = [[g11, g12 - w3, g13 + w2], [g12 + w3, g22, g23 - w1], [g13 - w2, g23 + w1, g33]]
    T_abs = [[v.abs() for v in rw] for rw in T]
    rs = [rw[0] + rw[1] + rw[2] for rw in T_abs]
    cs = [T_abs[0][j] + T_abs[1][j] + T_abs[2][j] for j in range(3)]
    r1 = (rs[0] >= rs[1]) & (rs[0] >= rs[2])
    r2 = ~r1 & (rs[1] >= rs[2])
    k1 = (cs[0] >= cs[1]) & (cs[0] >= cs[2])
    k2 = ~k1 & (cs[1] >= cs[2])
    lines = [
        torch.stack(
            [
                torch.where(k1, T[i][0], torch.where(k2, T[i][1], T[i][2])),
                torch.where(r1, T[0][i], torch.where(r2, T[1][i], T[2][i])),
            ]
        )
        for i in range(3)
    ]  # three coordinate rows (2 lines, N)
    inv = torch.rsqrt(_dot(lines, lines))
    lines = [v * inv for v in lines]
    inv = torch.rsqrt(w1 * w1 + w2 * w2 + w3 * w3)
    w = [w1 * inv, w2 * inv, w3 * inv]
    u = _cross(lines, w)  # (2, N) rows: u _|_ w, on the line

    # ---------------------------------------------------------------- intersect the lines with E
    Ew = [h11 * w[0] + h12 * w[1] + h13 * w[2], h12 * w[0] + h22 * w[1] + h23 * w[2]]
    Ew.append(h13 * w[0] + h23 * w[1] + h33 * w[2])
    Eu = [h11 * u[0] + h12 * u[1] + h13 * u[2], h12 * u[0] + h22 * u[1] + h23 * u[2]]
    Eu.append(h13 * u[0] + h23 * u[1] + h33 * u[2])
    qa = _dot(w, Ew)  # (N,)
    qb = _dot(u, Ew)  # (2, N)
    qc = _dot(u, Eu)  # (2, N)
    # qa al^2 + 2 qb al be + qc be^2 = 0 at (al, be) = (m, qa) and (qc, m), m = -qb -+ sqrt(qd)
    qd = qb * qb - qa * qc
    real = real_lines & (qd >= -(1e3 * eps) * (qb * qb + (qa * qc).abs()))
    double = qd <= 0  # clamped to a double root: one candidate
    m = -(qb + qd.clamp_min(0).sqrt().copysign(qb))
    al = torch.stack([m, qc], 1)  # (2 lines, 2 roots, N)
    be = torch.stack([qa.expand(2, n), m], 1)
    lam = [(al * w[k] + be * u[k][:, None]).view(4, n) for k in range(3)]
    cand = torch.stack([real, real & ~double], 1).view(4, n)

    # ---------------------------------------------------------------- depths: sign, scale
    sign = lam[0].sign()
    l1, l2, l3 = lam[0] * sign, lam[1] * sign, lam[2] * sign
    cand = cand & (torch.minimum(torch.minimum(l1, l2), l3) > 0)
    d1, d2, d3 = l1 - l2, l1 - l3, l2 - l3
    quad = d1 * d1 + d2 * d2 + d3 * d3 + 2 * (c12 * l1 * l2 + c13 * l1 * l3 + c23 * l2 * l3)
    inv = torch.rsqrt(quad)  # now the sum of the three distance equations holds
    return [l1 * inv, l2 * inv, l3 * inv], cand


def _residuals(lam: Rows, a: torch.Tensor, c: torch.Tensor) -> Rows:
    """Residuals of the three distance equations (see :func:`_newton_step`)."""
    l1, l2, l3 = lam
    d12, d13, d23 = l1 - l2, l1 - l3, l2 - l3
    return [
        d12 * d12 + 2 * c[0] * l1 * l2 - a[0],
        d13 * d13 + 2 * c[1] * l1 * l3 - a[1],
        d23 * d23 + 2 * c[2] * l2 * l3 - a[2],
    ]


def _newton_step(
    lam: Rows, a: torch.Tensor, c: torch.Tensor, detach_jacobian: bool = False
) -> Rows:
    """One Newton step on ``f_ij = (l_i - l_j)^2 + 2 c_ij l_i l_j - a_ij = 0``.

    The half Jacobian ``[[x11, x12, 0], [x21, 0, x23], [0, x32, x33]]`` is inverted in closed
    form (a singular one gives NaN, i.e. an invalid candidate). With ``detach_jacobian`` it is
    a constant for autograd, so that from converged depths the derivative of the step is the
    implicit one, ``-J^-1 df/d(a, c)``.

    Args:
        lam: the three depth rows ``(4, N)``; ``a``, ``c``: ``(3, N)`` as in :func:`_candidates`.
    Returns:
        The updated depth rows.
    """
    f1, f2, f3 = _residuals(lam, a, c)
    l1, l2, l3 = lam
    c12, c13, c23 = c
    if detach_jacobian:
        l1, l2, l3 = l1.detach(), l2.detach(), l3.detach()
        c12, c13, c23 = c12.detach(), c13.detach(), c23.detach()
    d12, d13, d23 = l1 - l2, l1 - l3, l2 - l3
    x11, x12 = d12 + c12 * l2, c12 * l1 - d12
    x21, x23 = d13 + c13 * l3, c13 * l1 - d13
    x32, x33 = d23 + c23 * l3, c23 * l2 - d23
    x23x32, x21x33 = x23 * x32, x21 * x33
    s = 0.5 / (x11 * x23x32 + x12 * x21x33)
    return [
        l1 + s * (x12 * (x23 * f3 - x33 * f2) - x23x32 * f1),
        l2 + s * (x11 * (x33 * f2 - x23 * f3) - x21x33 * f1),
        l3 + s * (x21 * (x32 * f1 - x12 * f3) - x11 * x32 * f2),
    ]
