"""Batched LO-RANSAC for absolute pose: many queries, one padded batch, P3P + MSAC + LO.

:func:`pnp_ransac` estimates ``cam_from_world`` poses of ``B`` queries from 2D-3D matches padded to
a common ``N`` (``mask``). All queries run together, in rounds:

1. every active query draws minimal samples of 3 distinct valid matches, as many as it still
   needs but at most ``128 * 2^r`` in round ``r`` (capped by ``batch_hypotheses``; up to 1.5x
   that when it finishes the query), so easy queries stop after one round and hard ones soon run
   at full width; the P3P solver (:func:`dgeo.pnp.p3p.p3p`, float32) turns all samples of all
   active queries into up to 4 poses each, in one call;
2. queries with at least ``6 * pretest_points`` matches pre-test every pose on
   ``pretest_points`` matches drawn at random: a pose goes on only if its inlier count there
   reaches the 5 % binomial quantile of what the query's best pose so far (or the round's best
   pre-test count) would give; the T(d,d) / bail-out idea of Matas and Chum and of Capel,
   batched. Almost every pose of a contaminated sample stops here, so the full scoring costs
   little even at 80 % outliers;
3. the remaining poses are scored on all matches by MSAC (truncated squared reprojection error);
   the best of the round replaces the query's best if its cost is lower;
4. local optimisation (LO-RANSAC): when a query's best improves, the pose is re-fitted on its
   inliers by three iteratively reweighted Gauss-Newton steps in the scoring model (Cauchy
   kernel at half the threshold, like the default final refinement, which then converges in
   about one iteration) and kept if that lowers the cost;
5. each query updates the number of samples it needs, ``log(1 - confidence) / log(1 - w^3)``
   with ``w`` its best inlier ratio (at least ``min_iterations``, at most ``max_iterations``),
   and leaves the active set once it has drawn them, so later rounds shrink.

Finally the best pose is refined on its inliers with the exact camera model (Cauchy at half the
threshold by default) and its covariance computed as :func:`dgeo.pnp.refine.refine_pose` does;
without distortion by the lean guarded IRLS of :mod:`dgeo.ransac.irls` (the same fit, tested
against ``refine_pose``, at a fraction of its fixed cost per call), with distortion by
``refine_pose`` itself. The inliers are recomputed from the refined pose, and the queries whose
inliers are too few or nearly collinear are failed.

Scoring runs in float32 whatever the input dtype (the 3D points are centred per query first, so
float32 resolves them to about 1e-7 of the scene extent), in the undistorted image plane scaled by
the focal lengths, with the projection as one batched matrix product: for cameras without
distortion this *is* the pixel error, and for distorted cameras each match's squared error is
scaled by the determinant of the distortion Jacobian at its observation (the local area scale),
a first-order pixel error that spares evaluating the distortion polynomial for every pose and
match (a 2-3x saving on the dominant cost). The final inliers, the refinement and the reported
pose use the exact camera model in the input dtype. Temporaries are bounded by scoring the
queries in chunks of a few MB.

Randomness is one :class:`torch.Generator` seeded with ``seed``; round ``r`` uses the ``r``-th
block of its stream, of a fixed size, for every query (sample ``k`` of a query with ``n`` valid
matches picks its indices from the same uniforms scaled to ``n``), and MSAC costs are summed so
that padding adds exact zeros. Queries never interact, so a query gives the same result alone or
in any batch (tested to 1e-6), and a seed makes every run identical.

Not differentiable: for training use :mod:`dgeo.ransac.dsac`, or refine the result with
:func:`dgeo.pnp.refine.refine_pose` and ``unroll=True``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from enum import IntEnum

import torch

from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Camera, Pose
from dgeo.geometry.camera import distort
from dgeo.optim import Cauchy, LMOptions, RobustKernel, get_kernel
from dgeo.pnp.p3p import p3p
from dgeo.pnp.refine import pose_covariance, refine_pose, residual_variance
from dgeo.ransac.checks import check_correspondences
from dgeo.ransac.irls import irls_steps, refine_irls

__all__ = ["PnPReason", "PnPResult", "pnp_finish", "pnp_ransac"]

_SCORE_DTYPE = torch.float32
_CHUNK_ELEMENTS = 1 << 19  # (query, pose, match) triples per scoring pass: a few MB, so that
# the temporaries stay in cache and are not fresh pages from the OS (10x slower on CPU)
_GRID = 1024  # resolution of the inlier ratio in the pre-test threshold table
_FIRST_ROUND = 128  # samples per query in the first round; the width doubles every round
_HOPELESS = 100  # samples after which a query that never produced a pose gives up
_LO_C2 = 0.25  # LO's Cauchy scale^2 / threshold^2 (half the threshold, the final refinement's)
_LO_ITERATIONS = 3  # IRLS Gauss-Newton steps of one local optimisation
_P3P_CHUNK = 1 << 15  # minimal samples per P3P call (bounds its temporaries)
_PRETEST_MIN = 6  # queries with fewer than this many times pretest_points skip the pre-test
_PRETEST_ALPHA = 0.05  # a pose as good as the reference fails the pre-test with at most this
_REFINE_COST_TOL = 1e-5  # relative cost decrease that ends the final refinement (Ceres: 1e-6;
# after LO the refinement starts near its optimum, and 1e-5 stops it an iteration earlier; the
# pose errors in benchmarks/pnp.py agree to 4 digits)


class PnPReason(IntEnum):
    """Why a query of :func:`pnp_ransac` succeeded or failed (``PnPResult.reason``).

    Attributes:
        OK: a pose with enough inliers was found (and refined, with ``refine=True``).
        TOO_FEW_MATCHES: fewer than 4 valid matches (masked out, or not back-projectable
            through the camera's distortion).
        NON_FINITE_INPUT: an unmasked match holds NaN or inf; the query is not solved.
        NO_HYPOTHESIS: no minimal sample gave a pose (e.g. all 3D points collinear or
            coincident).
        TOO_FEW_INLIERS: the best pose has fewer than ``min_inliers`` inliers.
        DEGENERATE: the inliers do not determine a pose (3D inliers nearly collinear).
        REFINEMENT_FAILED: the final refinement failed (singular Hessian or non-finite cost);
            the pose is the unrefined RANSAC estimate.
    """

    OK = 0
    TOO_FEW_MATCHES = 1
    NON_FINITE_INPUT = 2
    NO_HYPOTHESIS = 3
    TOO_FEW_INLIERS = 4
    DEGENERATE = 5
    REFINEMENT_FAILED = 6


@dataclasses.dataclass
class PnPResult:
    """The outcome of :func:`pnp_ransac`, per query.

    Attributes:
        pose: ``cam_from_world`` estimates, batch shape ``(B,)``, in the input dtype. A failed
            query holds its best hypothesis if it had one (e.g. ``TOO_FEW_INLIERS``), else the
            identity; check ``success``.
        inliers: ``(B, N)`` bool, matches within the threshold of ``pose`` (exact camera model,
            reprojection error ``< threshold_px``); all False where there is no pose.
        num_inliers: ``(B,)`` int64, ``inliers.sum(-1)``.
        success: ``(B,)`` bool, ``reason == PnPReason.OK``.
        iterations: ``(B,)`` int64, minimal samples drawn.
        covariance: ``(B, 6, 6)`` covariance of the pose in the tangent order ``(dt, dw)`` of
            :meth:`Pose.retract` (metres, radians), from the final refinement
            (:func:`dgeo.pnp.refine.refine_pose`); like there, ``inf`` on the diagonal and 0
            elsewhere where ``success`` is False or ``refine`` is off.
        reason: ``(B,)`` int64, :class:`PnPReason` codes.
        num_matches: ``(B,)`` int64, valid matches of the query (unmasked, finite and
            back-projectable); 0 for ``NON_FINITE_INPUT``.
    """

    pose: Pose
    inliers: torch.Tensor
    num_inliers: torch.Tensor
    success: torch.Tensor
    iterations: torch.Tensor
    covariance: torch.Tensor
    reason: torch.Tensor
    num_matches: torch.Tensor

    def reasons(self) -> list[PnPReason]:
        """The reasons as :class:`PnPReason` members, one per query."""
        return [PnPReason(int(r)) for r in self.reason.tolist()]


@dataclasses.dataclass
class _Problem:
    """Valid matches of every query compacted to the front, in the forms the rounds need.

    ``M`` is the largest number of valid matches of a query; entries past ``n`` are padding.
    """

    order: torch.Tensor  # (B, M) int64, index of the compacted match in the input's N
    n: torch.Tensor  # (B,) int64, valid matches
    centre: torch.Tensor  # (B, 3) work dtype, mean of the valid 3D points
    X: torch.Tensor  # (B, M, 3) work dtype, centred 3D points (padding 0)
    xy: torch.Tensor  # (B, M, 2) work dtype, undistorted normalised observations
    uv: torch.Tensor  # (B, M, 2) work dtype, pixels (padding 0)
    rays: torch.Tensor  # (B, M, 3) work dtype, unit bearing vectors (padding +z)
    Xh: torch.Tensor  # (B, 4, M) float32, homogeneous centred points (padding 0: never inliers)
    obs: torch.Tensor  # (B, 2, M) float32, focal-scaled undistorted observations
    Xh_pm: torch.Tensor  # (B, M, 4) the same, point-major (for gathering subsets)
    obs_pm: torch.Tensor  # (B, M, 2)
    w2: torch.Tensor | None  # (B, M) float32 distortion area scale, None without distortion
    f: torch.Tensor  # (B, 2) float32 focal lengths
    camera: Camera  # batch shape (B,)


def pnp_ransac(
    points2D: torch.Tensor,
    points3D: torch.Tensor,
    camera: Camera,
    mask: torch.Tensor | None = None,
    threshold_px: float = 12.0,
    confidence: float = 0.9999,
    min_iterations: int = 100,
    max_iterations: int = 10000,
    local_optimization: bool = True,
    refine: bool = True,
    seed: int | None = None,
    batch_hypotheses: int = 256,
    min_inliers: int = 6,
    refine_kernel: str | RobustKernel | None = "cauchy",
    refine_scale: float | None = None,
    refine_iterations: int = 100,
    pretest_points: int = 48,
) -> PnPResult:
    """Robust absolute pose of many queries at once by batched LO-RANSAC (P3P + MSAC).

    Args:
        points2D: ``(B, N, 2)`` observed pixels (dgeo convention: the top-left pixel centre is
            (0, 0)).
        points3D: ``(B, N, 3)`` matching world points, same dtype and device as ``points2D``.
        camera: a :class:`Camera` of batch shape ``()`` (shared) or ``(B,)``; distortion is
            honoured (rays come from :meth:`Camera.unproject` once, up front).
        mask: ``(B, N)`` bool, the real matches of each query (padding False); ``None``: all.
        threshold_px: inlier threshold on the reprojection error, pixels.
        confidence: probability of drawing at least one all-inlier sample, which sets each
            query's number of samples from its best inlier ratio.
        min_iterations: fewest samples per query (COLMAP's default; poselib uses 1000); at
            most ``max_iterations``.
        max_iterations: most samples per query.
        local_optimization: re-fit the best pose on its inliers whenever it improves.
        refine: refine the final pose on its inliers and compute its covariance; without it
            the pose is the best (locally optimised) hypothesis.
        seed: seed of the sampling; ``None`` draws one from torch's global generator (so
            ``torch.manual_seed`` makes runs repeatable too).
        batch_hypotheses: most samples per query in one round (the first round draws
            ``min(128, batch_hypotheses)``). Results depend on it, as it sets how often the
            stopping rule is checked, but never on the batch size. Memory stays bounded either
            way, because queries are scored in chunks.
        min_inliers: fewest inliers of a successful pose.
        refine_kernel: robust kernel of the final refinement: a name (``"cauchy"``,
            ``"huber"``, ...), an instance (which keeps its own scale) or ``None`` for least
            squares.
        refine_scale: its scale in pixels; ``None``: ``threshold_px / 2`` (poselib's choice,
            which is close to least squares on the inliers; COLMAP uses 1 px, which loses
            accuracy when the noise is larger than that).
        refine_iterations: most LM iterations of the final refinement.
        pretest_points: matches of the pre-test; queries with fewer than six times as many
            valid matches score every pose on all of them.
    Returns:
        :class:`PnPResult`; bad queries (too few or non-finite matches, degenerate
        geometry) fail with a :class:`PnPReason` instead of raising.
    Raises:
        ShapeError, InputError: malformed arguments (shapes, dtypes, devices, option values).
    """
    _check_options(
        threshold_px, confidence, min_iterations, max_iterations, batch_hypotheses, min_inliers,
        pretest_points, refine_iterations,
    )  # fmt: skip
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    # inference mode skips autograd's dispatch on every op (about 20 % of a small call); the
    # results are cloned out of it so that they are ordinary tensors
    with torch.inference_mode():
        prob, valid, reason, N, M = _setup(points2D, points3D, camera, mask)
        state = _search(
            prob, reason == PnPReason.OK, threshold_px**2, confidence, min_iterations,
            max_iterations, batch_hypotheses, pretest_points, local_optimization, seed,
        )  # fmt: skip
        found = torch.isfinite(state.cost) & (reason == PnPReason.OK)
        reason = torch.where((reason == PnPReason.OK) & ~found, PnPReason.NO_HYPOTHESIS, reason)
        scale = threshold_px / 2 if refine_scale is None else refine_scale
        res = _finish(
            prob, state, reason, found, valid, threshold_px, min_inliers, refine, refine_kernel,
            scale, refine_iterations, M,
        )  # fmt: skip
    return _clone_out(res, N)


def pnp_finish(
    points2D: torch.Tensor,
    points3D: torch.Tensor,
    camera: Camera,
    pose: Pose,
    mask: torch.Tensor | None = None,
    threshold_px: float = 12.0,
    min_inliers: int = 6,
    refine_kernel: str | RobustKernel | None = "cauchy",
    refine_scale: float | None = None,
    refine_iterations: int = 100,
) -> PnPResult:
    """The last stage of :func:`pnp_ransac`, from given poses: inliers, degeneracy checks,
    refinement on the inliers and covariance, inliers again.

    ``pnp_ransac(..., refine=False)`` on many candidates followed by ``pnp_finish`` on the
    chosen ones gives what ``pnp_ransac(..., refine=True)`` gives for those (same seed), at the
    cost of refining only them. Arguments as :func:`pnp_ransac`; ``pose``: ``(B,)``
    ``cam_from_world``, e.g. ``PnPResult.pose``.

    Returns:
        :class:`PnPResult` (``iterations`` 0); a non-finite pose fails with ``NO_HYPOTHESIS``.
    """
    _check_options(threshold_px, 0.5, 0, 1, 1, min_inliers, 1, refine_iterations)
    with torch.inference_mode():
        prob, valid, reason, N, M = _setup(points2D, points3D, camera, mask)
        B = prob.n.shape[0]
        if not isinstance(pose, Pose) or pose.shape != (B,):
            got = pose.shape if isinstance(pose, Pose) else type(pose).__name__
            raise ShapeError(f"pose must be a Pose of batch shape ({B},), got {got}.")
        data = pose.data.to(prob.X)
        found = torch.isfinite(data).all(-1) & (reason == PnPReason.OK)
        reason = torch.where((reason == PnPReason.OK) & ~found, PnPReason.NO_HYPOTHESIS, reason)
        R = data[:, :9].reshape(-1, 3, 3)
        centred = torch.cat([data[:, :9], data[:, 9:] + (R @ prob.centre[..., None])[..., 0]], -1)
        zero = torch.zeros(B, dtype=torch.int64, device=data.device)
        state = _State(pose=torch.where(found[:, None], centred, 0.0), cost=zero.float(),
                       inliers=zero, iterations=zero)  # fmt: skip
        scale = threshold_px / 2 if refine_scale is None else refine_scale
        res = _finish(
            prob, state, reason, found, valid, threshold_px, min_inliers, True, refine_kernel,
            scale, refine_iterations, M,
        )  # fmt: skip
    return _clone_out(res, N)


def _setup(points2D, points3D, camera, mask):
    """Checks, the problem of :func:`_prepare`, the reasons so far, the input's ``N`` and the
    padded width (``N``, or 1 when there are no matches)."""
    B, N = check_correspondences(points2D, points3D, camera, mask)
    device, dtype = points2D.device, points2D.dtype
    mask = torch.ones(B, N, dtype=torch.bool, device=device) if mask is None else mask
    if N == 0:  # no matches at all: one masked-out dummy keeps every shape non-empty
        points2D, points3D = points2D.new_zeros(B, 1, 2), points3D.new_zeros(B, 1, 3)
        mask = torch.zeros(B, 1, dtype=torch.bool, device=device)
    cam = camera if camera.shape == (B,) else _expand_camera(camera, B)
    if cam.dtype != dtype or cam.device != device:
        cam = cam.to(device=device, dtype=dtype)
    finite = torch.isfinite(points2D).all(-1) & torch.isfinite(points3D).all(-1)
    nonfinite = (mask & ~finite).any(-1)
    prob, valid = _prepare(points2D, points3D, cam, mask & finite, nonfinite)
    reason = torch.full((B,), PnPReason.OK, dtype=torch.int64, device=device)
    reason = torch.where(prob.n < 4, PnPReason.TOO_FEW_MATCHES, reason)
    reason = torch.where(nonfinite, PnPReason.NON_FINITE_INPUT, reason)
    return prob, valid, reason, N, mask.shape[1]


def _clone_out(res: PnPResult, N: int) -> PnPResult:
    """Ordinary tensors out of inference mode, inliers cut to the input's ``N``."""
    fields = {f.name: getattr(res, f.name) for f in dataclasses.fields(res)}
    fields["inliers"] = res.inliers[:, :N]
    fields["pose"] = Pose(res.pose.data.clone())
    return PnPResult(**{k: v if k == "pose" else v.clone() for k, v in fields.items()})


# ---------------------------------------------------------------------------------- checks
def _check_options(
    threshold: float,
    confidence: float,
    min_it: int,
    max_it: int,
    batch_hypotheses: int,
    min_inliers: int,
    pretest: int,
    refine_it: int,
) -> None:
    """Raise :class:`InputError` on option values out of range."""
    if not (math.isfinite(threshold) and threshold > 0):
        raise InputError(f"threshold_px must be a positive number, got {threshold}.")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), got {confidence}.")
    if not (isinstance(min_it, int) and isinstance(max_it, int) and min_it >= 0 and max_it >= 1):
        raise InputError(
            f"need integers min_iterations >= 0 and max_iterations >= 1, got {min_it!r} and "
            f"{max_it!r}."
        )
    for name, value, low in (
        ("batch_hypotheses", batch_hypotheses, 1),
        ("min_inliers", min_inliers, 0),
        ("pretest_points", pretest, 1),
        ("refine_iterations", refine_it, 0),
    ):
        if not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}.")


def _expand_camera(camera: Camera, B: int) -> Camera:
    """A shared camera (batch shape ``()``) as ``B`` copies."""
    size = camera.size.expand(B, 2)
    return Camera(camera.model, size[:, 0], size[:, 1], camera.params.expand(B, -1))


# ---------------------------------------------------------------------------------- set-up
def _prepare(
    points2D: torch.Tensor,
    points3D: torch.Tensor,
    cam: Camera,
    usable: torch.Tensor,
    nonfinite: torch.Tensor,
) -> tuple[_Problem, torch.Tensor]:
    """Back-project, centre and compact the valid matches; returns the problem and ``valid``
    ``(B, N)`` (unmasked, finite, back-projectable, in a query with finite input)."""
    B = usable.shape[0]
    uv = torch.where(usable[..., None], points2D, 0.0)
    X = torch.where(usable[..., None], points3D, 0.0)
    rays, ray_ok = cam.unproject(uv, return_valid=True)
    valid = usable & ray_ok & torch.isfinite(rays).all(-1) & ~nonfinite[:, None]
    n = valid.sum(-1)
    M = max(int(n.max()) if B else 0, 1)
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)[:, :M]
    keep = torch.arange(M, device=uv.device) < n[:, None]  # (B, M)

    def compact(x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        x = torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[-1]))
        return torch.where(keep[..., None], x, fill)

    Xk, uvk, rk = compact(X), compact(uv), compact(rays)
    centre = Xk.sum(1) / n.clamp(min=1)[:, None].to(X.dtype)
    Xk = torch.where(keep[..., None], Xk - centre[:, None], 0.0)
    bearing = torch.nn.functional.normalize(rk, dim=-1)
    bearing = torch.where(keep[..., None], bearing, bearing.new_tensor([0.0, 0.0, 1.0]))
    f = cam.f.to(_SCORE_DTYPE)
    Xh_pm = torch.cat([Xk, keep[..., None].to(Xk.dtype)], -1).to(_SCORE_DTYPE)
    obs_pm = rk[..., :2].to(_SCORE_DTYPE) * f[:, None]
    w2 = None
    if cam.has_distortion:
        _, _, J = distort(rk[..., :2], cam.dist, return_jacobian=True)
        det = (J[..., 0, 0] * J[..., 1, 1] - J[..., 0, 1] * J[..., 1, 0]).abs()
        w2 = torch.where(keep, det, 1.0).to(_SCORE_DTYPE)
    prob = _Problem(
        order=order, n=n, centre=centre, X=Xk, xy=rk[..., :2], uv=uvk, rays=bearing,
        Xh=Xh_pm.transpose(1, 2).contiguous(), obs=obs_pm.transpose(1, 2).contiguous(),
        Xh_pm=Xh_pm, obs_pm=obs_pm, w2=w2, f=f, camera=cam,
    )  # fmt: skip
    return prob, valid


# ---------------------------------------------------------------------------------- search
@dataclasses.dataclass
class _State:
    pose: torch.Tensor  # (B, 12) work dtype, centred frame
    cost: torch.Tensor  # (B,) float32 MSAC cost of pose (inf: none yet)
    inliers: torch.Tensor  # (B,) int64 inliers of pose (scoring model)
    iterations: torch.Tensor  # (B,) int64 samples drawn


def _search(
    prob: _Problem,
    run: torch.Tensor,
    thr2: float,
    confidence: float,
    min_it: int,
    max_it: int,
    H: int,
    pretest: int,
    lo: bool,
    seed: int,
) -> _State:
    """The rounds: sample, solve, pre-test, score, keep the best, LO, update the stopping rule.

    Round ``r`` draws up to ``cap = min(H, _FIRST_ROUND * 2^r)`` samples per query, fewer when
    the query needs fewer to reach its stopping count (up to ``1.5 cap`` when that finishes it),
    so easy queries stop after the first round and hard ones soon run at full width.
    """
    B = prob.X.shape[0]
    device, dtype = prob.X.device, prob.X.dtype
    eye = torch.eye(3, dtype=dtype, device=device).reshape(9)
    state = _State(
        pose=torch.cat([eye, eye.new_zeros(3)]).expand(B, 12).clone(),
        cost=torch.full((B,), math.inf, dtype=_SCORE_DTYPE, device=device),
        inliers=torch.zeros(B, dtype=torch.int64, device=device),
        iterations=torch.zeros(B, dtype=torch.int64, device=device),
    )
    needed = torch.full((B,), max_it, dtype=torch.int64, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    log_fail = math.log1p(-confidence)
    lims = (min(max(min_it, 1), max_it), max_it)
    active = run.clone()
    r = 0
    while bool(active.any()):
        q = active.nonzero()[:, 0]
        cap = min(H, _FIRST_ROUND << min(r, 30))
        width = cap + cap // 2
        # fixed-size random blocks per round: a query's samples never depend on the batch
        U = torch.rand(width, 3, generator=gen, device=device, dtype=torch.float64)
        V = torch.rand(pretest, generator=gen, device=device, dtype=torch.float64)
        left = needed[q] - state.iterations[q]
        h = torch.where(left <= width, left, left.clamp(max=cap))
        Hr = int(h.max())
        data, valid = _hypotheses(prob, q, h, U[:Hr])  # (Q, K, 12), (Q, K)
        K = data.shape[1]
        pose_r = prob.X.new_zeros(q.shape[0], 12)
        cost_r = torch.full((q.shape[0],), math.inf, dtype=_SCORE_DTYPE, device=device)
        large = prob.n[q] >= _PRETEST_MIN * pretest
        for sel, pre in ((~large).nonzero()[:, 0], False), (large.nonzero()[:, 0], True):
            if sel.numel() == 0:
                continue
            depth = pretest if pre else int(prob.n[q[sel]].max())
            size = max(1, _CHUNK_ELEMENTS // (K * depth))
            for c in sel.split(size):
                if pre:
                    p, cst = _best_pretested(prob, q[c], data[c], valid[c], V, thr2, state)
                else:
                    p, cst = _best_scored(prob, q[c], data[c], valid[c], thr2)
                pose_r[c], cost_r[c] = p, cst
        state.iterations[q] += h
        better = cost_r < state.cost[q]
        if bool(better.any()):
            qb = q[better]
            pose_b, cost_b = pose_r[better], cost_r[better]
            if lo:
                pose_b, cost_b, count_b = _local_optimization(prob, qb, pose_b, cost_b, thr2)
            else:
                count_b = _score(prob, qb, pose_b, thr2)[1]
            state.pose[qb] = pose_b
            state.cost[qb] = cost_b
            state.inliers[qb] = count_b
        needed[q] = _needed(state.inliers[q], prob.n[q], log_fail, lims)
        it = state.iterations[q]
        # no pose at all after this many samples: the matches are degenerate, stop
        hopeless = ~torch.isfinite(state.cost[q]) & (it >= max(min_it, _HOPELESS))
        active[q] = (it < needed[q]) & ~hopeless
        r += 1
    return state


def _needed(
    count: torch.Tensor, n: torch.Tensor, log_fail: float, lims: tuple[int, int]
) -> torch.Tensor:
    """Samples a query needs, ``log(1 - confidence) / log(1 - w^3)`` with its inlier ratio
    ``w = count / n``, clamped to ``lims = (min, max)``: ``(Q,)`` int64."""
    w = count.to(torch.float64) / n.clamp(min=1).to(torch.float64)
    p_all = w.clamp(0, 1) ** 3
    k = log_fail / torch.log1p(-p_all.clamp(max=1 - 1e-12)).clamp(max=-1e-300)
    return k.clamp(max=lims[1]).ceil().to(torch.int64).clamp(lims[0], lims[1])


def _sample_indices(U: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Three distinct indices in ``[0, n)`` per sample: ``U`` ``(H, 3)``, ``n`` ``(Q,)`` ->
    ``(Q, H, 3)``."""
    nf = n[:, None].to(U.dtype)
    i0 = (U[:, 0] * nf).long().clamp(max=(n - 1)[:, None])
    i1 = (U[:, 1] * (nf - 1)).long().clamp(max=(n - 2)[:, None])
    i2 = (U[:, 2] * (nf - 2)).long().clamp(max=(n - 3)[:, None])
    i1 = i1 + (i1 >= i0).long()
    lo, hi = torch.minimum(i0, i1), torch.maximum(i0, i1)
    i2 = i2 + (i2 >= lo).long()
    i2 = i2 + (i2 >= hi).long()
    return torch.stack([i0, i1, i2], -1)


def _gather(x: torch.Tensor, q: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[q[:, None], idx]`` for ``x`` ``(B, M, C)``, ``idx`` ``(Q, K)`` -> ``(Q, K, C)``."""
    M = x.shape[1]
    flat = (q[:, None] * M + idx).reshape(-1)
    return x.reshape(-1, x.shape[-1]).index_select(0, flat).reshape(*idx.shape, x.shape[-1])


def _msac_cost(e2: torch.Tensor, thr2: float) -> torch.Tensor:
    """MSAC cost ``sum min(e2, thr2)`` over the last dimension, shifted by ``-thr2`` per match:
    ``sum min(e2 - thr2, 0)``. The shift is the same for every pose of a query, so it ranks
    poses alike, but outliers, padding and NaN (``nansum``) add exact zeros: float32 keeps the
    resolution of the inlier terms, and padding never changes a sum. (``clamp`` + ``nansum`` is
    about 8x faster on the CPU than ``torch.fmin``, which has no vectorised kernel.)"""
    return torch.sub(e2, thr2).clamp_(max=0).nansum(-1)


def _score_matrices(pose: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Projection matrices of poses ``(Q, K, 12)`` with focal lengths ``f`` ``(Q, 2)`` folded in,
    arranged as ``(Q, 3 K, 4)``: rows ``[x of all K; y of all K; z of all K]``."""
    Q, K = pose.shape[:2]
    P = torch.cat([pose[..., :9].reshape(Q, K, 3, 3), pose[..., 9:, None]], -1)
    P = P.to(_SCORE_DTYPE).transpose(1, 2)  # (Q, 3, K, 4)
    scale = torch.cat([f, f.new_ones(Q, 1)], -1)  # (Q, 3)
    return (P * scale[:, :, None, None]).reshape(Q, 3 * K, 4)


def _squared_errors(
    P: torch.Tensor, Xh: torch.Tensor, obs: torch.Tensor, w2: torch.Tensor | None
) -> torch.Tensor:
    """Squared (focal-scaled) reprojection errors ``(Q, K, D)`` of ``K`` poses ``P``
    ``(Q, 3K, 4)`` at ``D`` points ``Xh`` ``(Q, 4, D)`` observed at ``obs`` ``(Q, 2, D)``.

    Points behind a camera and padding (``w = 0`` points) give ``inf`` or NaN, which fail every
    ``e2 < thr2`` test and count as outliers in :func:`_msac_cost`.
    """
    K = P.shape[1] // 3
    proj = torch.bmm(P, Xh)  # (Q, 3K, D)
    inv_z = proj[:, 2 * K :].clamp_(min=0).reciprocal_()
    e2 = torch.mul(proj[:, :K], inv_z).sub_(obs[:, :1]).square_()
    ey = torch.mul(proj[:, K : 2 * K], inv_z).sub_(obs[:, 1:]).square_()
    e2.add_(ey)
    if w2 is not None:
        e2.mul_(w2[:, None])
    return e2


def _hypotheses(
    prob: _Problem, q: torch.Tensor, h: torch.Tensor, U: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """P3P poses of the minimal samples of queries ``q`` ``(Q,)``, each drawing ``h`` ``(Q,)``
    samples from the uniforms ``U`` ``(H, 3)``: float32 poses ``(Q, K, 12)`` in the centred
    frame, the valid ones first in sample order (zeros after), and their validity ``(Q, K)``,
    ``K <= 4H`` the largest number of valid poses of a query."""
    Q, H = q.shape[0], U.shape[0]
    idx = _sample_indices(U, prob.n[q])  # (Q, H, 3)
    full = bool((h == H).all())  # the usual case: every query draws the whole block
    if full:
        X3 = _gather(prob.X, q, idx.reshape(Q, 3 * H)).reshape(Q * H, 3, 3)
        r3 = _gather(prob.rays, q, idx.reshape(Q, 3 * H)).reshape(Q * H, 3, 3)
    else:
        qs, hs = (torch.arange(H, device=q.device) < h[:, None]).nonzero(as_tuple=True)
        X3 = _gather(prob.X, q[qs], idx[qs, hs])  # (S, 3, 3)
        r3 = _gather(prob.rays, q[qs], idx[qs, hs])
    X3, r3 = X3.to(_SCORE_DTYPE), r3.to(_SCORE_DTYPE)
    # degenerate samples (coincident or collinear 3D points) never reach the solver
    e1, e2 = X3[:, 1] - X3[:, 0], X3[:, 2] - X3[:, 0]
    area2 = torch.linalg.cross(e1, e2).square().sum(-1)
    ok = (area2 > 1e-10 * e1.square().sum(-1) * e2.square().sum(-1)) & (area2 > 0)
    X3 = torch.where(ok[:, None, None], X3, X3.new_tensor(_SAFE_TRIANGLE))
    sol, valid = [], []
    for Xc, rc in zip(X3.split(_P3P_CHUNK), r3.split(_P3P_CHUNK), strict=True):
        poses, v = p3p(rc, Xc)
        sol.append(poses.data)
        valid.append(v)
    sol, valid = torch.cat(sol), torch.cat(valid)  # (S, 4, 12) float32, (S, 4)
    valid = valid & ok[:, None] & torch.isfinite(sol).all(-1)
    sol = torch.where(valid[..., None], sol, 0.0)
    if full:
        data, valid = sol.reshape(Q, 4 * H, 12), valid.reshape(Q, 4 * H)
    else:
        data = sol.new_zeros(Q, H, 4, 12)
        data[qs, hs] = sol
        good = torch.zeros(Q, H, 4, dtype=torch.bool, device=q.device)
        good[qs, hs] = valid
        data, valid = data.reshape(Q, 4 * H, 12), good.reshape(Q, 4 * H)
    # valid poses first, in sample order (about half the slots hold no solution)
    idx, valid = _compact_mask(valid)
    return torch.gather(data, 1, idx[..., None].expand(-1, -1, 12)), valid


def _best_scored(
    prob: _Problem, q: torch.Tensor, data: torch.Tensor, valid: torch.Tensor, thr2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best of the poses ``data`` ``(Q, K, 12)`` of queries ``q`` ``(Q,)`` by MSAC on all their
    matches, in one batched product (for queries with few matches): pose ``(Q, 12)`` in the
    work dtype and cost ``(Q,)`` (inf where no pose is valid)."""
    m = int(prob.n[q].max())
    P = _score_matrices(data, prob.f[q])
    w2 = None if prob.w2 is None else prob.w2[q, :m]
    e2 = _squared_errors(P, prob.Xh[q, :, :m], prob.obs[q, :, :m], w2)  # (Q, K, m)
    cost = _msac_cost(e2, thr2)
    cost = torch.where(valid, cost, math.inf)
    best_cost, k = cost.min(-1)
    best = torch.gather(data, 1, k[:, None, None].expand(-1, 1, 12))[:, 0]
    return best.to(prob.X.dtype), best_cost


def _best_pretested(
    prob: _Problem,
    q: torch.Tensor,
    data: torch.Tensor,
    valid: torch.Tensor,
    V: torch.Tensor,
    thr2: float,
    state: _State,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`_best_scored` for queries with many matches: a pre-test on ``d`` random
    matches (uniforms ``V`` ``(d,)``) first, then MSAC on all matches for the poses whose
    pre-test inlier count is not far below that of the query's best pose (or of the round's)."""
    Q, d = q.shape[0], V.shape[0]
    n = prob.n[q]
    P = _score_matrices(data, prob.f[q])  # (Q, 3K, 4)
    sidx = (V[None, :] * n[:, None].to(V.dtype)).long().clamp(max=(n - 1)[:, None])
    Xs = _gather(prob.Xh_pm, q, sidx).transpose(1, 2)
    os_ = _gather(prob.obs_pm, q, sidx).transpose(1, 2).contiguous()
    ws = None if prob.w2 is None else _gather(prob.w2[..., None], q, sidx)[..., 0]
    count = (_squared_errors(P, Xs, os_, ws) < thr2).sum(-1)  # (Q, K)
    count = torch.where(valid, count, -1)
    ratio = state.inliers[q].to(torch.float64) / n.to(torch.float64)
    ratio = torch.maximum(ratio, count.amax(-1).clamp(min=0).to(torch.float64) / d)
    need = _binomial_lower_quantile(d, ratio, _PRETEST_ALPHA).clamp(min=1)
    qi, ki = (valid & (count >= need[:, None])).nonzero(as_tuple=True)
    best_cost = torch.full((Q,), math.inf, dtype=_SCORE_DTYPE, device=q.device)
    best_pose = prob.X.new_zeros(Q, 12)
    if qi.numel() == 0:
        return best_pose, best_cost
    cost = _msac(prob, q[qi], data[qi, ki], thr2)  # (S,)
    best_cost = best_cost.scatter_reduce(0, qi, cost, "amin")
    S = qi.shape[0]
    pos = torch.where(cost == best_cost[qi], torch.arange(S, device=q.device), S)
    first = torch.full((Q,), S, dtype=torch.int64, device=q.device).scatter_reduce(
        0, qi, pos, "amin"
    )
    sel = first.clamp(max=S - 1)
    best = data[qi[sel], ki[sel]].to(prob.X.dtype)
    return torch.where((first < S)[:, None], best, best_pose), best_cost


_SAFE_TRIANGLE = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


@functools.lru_cache(maxsize=16)
def _quantile_table(d: int, alpha: float, device: torch.device) -> torch.Tensor:
    """``table[i]``: the largest ``c`` with ``P(X < c) <= alpha`` for ``X ~ Binomial(d, i / G)``,
    ``i = 0 .. G`` (``G = _GRID``); int64 ``(G + 1,)``, computed once per process."""
    k = torch.arange(d + 1, dtype=torch.float64)
    logc = math.lgamma(d + 1) - torch.lgamma(k + 1) - torch.lgamma(d - k + 1)
    p = (torch.arange(_GRID + 1, dtype=torch.float64) / _GRID).clamp(1e-12, 1 - 1e-12)[:, None]
    cdf = torch.exp(logc + k * torch.log(p) + (d - k) * torch.log1p(-p)).cumsum(-1)
    return (cdf <= alpha).sum(-1).to(device)


def _binomial_lower_quantile(d: int, p: torch.Tensor, alpha: float) -> torch.Tensor:
    """Pre-test threshold for inlier ratios ``p`` ``(Q,)``: the table entry at ``p`` rounded
    down (a slightly lower, more permissive threshold). ``(Q,)`` int64."""
    table = _quantile_table(d, alpha, p.device)
    return table[(p.clamp(0, 1) * _GRID).long()]


def _msac(prob: _Problem, qs: torch.Tensor, pose: torch.Tensor, thr2: float) -> torch.Tensor:
    """MSAC costs ``(S,)`` of poses ``(S, 12)`` (centred frame) of queries ``qs`` ``(S,)`` on all
    their matches; chunks bound the memory."""
    S, M = qs.shape[0], prob.X.shape[1]
    out = []
    step = max(1, _CHUNK_ELEMENTS // (4 * M))
    for s in range(0, S, step):
        qq, pp = qs[s : s + step], pose[s : s + step]
        P = _score_matrices(pp[:, None], prob.f[qq])
        w2 = None if prob.w2 is None else prob.w2[qq]
        e2 = _squared_errors(P, prob.Xh[qq], prob.obs[qq], w2)[:, 0]
        out.append(_msac_cost(e2, thr2))
    return torch.cat(out)


def _score(
    prob: _Problem, q: torch.Tensor, pose: torch.Tensor, thr2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scoring-model inliers ``(Q, M)``, their count ``(Q,)`` and MSAC cost ``(Q,)`` of one pose
    ``(Q, 12)`` per query ``q``."""
    P = _score_matrices(pose[:, None], prob.f[q])
    w2 = None if prob.w2 is None else prob.w2[q]
    e2 = _squared_errors(P, prob.Xh[q], prob.obs[q], w2)[:, 0]
    inl = e2 < thr2
    return inl, inl.sum(-1), _msac_cost(e2, thr2)


def _compact_mask(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(Q, K)`` of the True entries of ``m`` ``(Q, M)`` first, and their mask."""
    k = max(int(m.sum(-1).max()) if m.shape[0] else 0, 1)
    idx = torch.argsort((~m).to(torch.uint8), dim=1, stable=True)[:, :k]
    return idx, torch.gather(m, 1, idx)


def _local_optimization(
    prob: _Problem, q: torch.Tensor, pose: torch.Tensor, cost: torch.Tensor, thr2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-fit poses ``(Q, 12)`` on their inliers; keep the re-fit where it lowers the MSAC
    cost. Returns the poses, their costs and inlier counts ``(Q,)``."""
    inl, count, _ = _score(prob, q, pose, thr2)
    X, xy, f, w = _inlier_problem(prob, q, inl)
    Q = q.shape[0]
    R, t = irls_steps(
        X, xy, f, w, pose[:, :9].reshape(Q, 3, 3), pose[:, 9:],
        Cauchy(math.sqrt(_LO_C2 * thr2)), _LO_ITERATIONS,
    )  # fmt: skip
    new = torch.cat([R.reshape(Q, 9), t], -1)
    _, new_count, new_cost = _score(prob, q, new, thr2)
    take = new_cost < cost
    return (
        torch.where(take[:, None], new, pose),
        torch.where(take, new_cost, cost),
        torch.where(take, new_count, count),
    )


def _inlier_problem(
    prob: _Problem, q: torch.Tensor, use: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The matches ``use`` ``(Q, M)`` of queries ``q`` compacted for :mod:`dgeo.ransac.irls`:
    centred 3D points, normalised observations, focal lengths and weights (the distortion area
    scale, 0 on padding)."""
    idx, m = _compact_mask(use)
    X = _gather(prob.X, q, idx)
    w = m.to(X.dtype)
    if prob.w2 is not None:
        w = w * _gather(prob.w2[..., None], q, idx)[..., 0].to(X.dtype)
    return X, _gather(prob.xy, q, idx), prob.camera.f[q], w


# ---------------------------------------------------------------------------------- finish
def _finish(
    prob: _Problem,
    state: _State,
    reason: torch.Tensor,
    found: torch.Tensor,
    valid: torch.Tensor,
    threshold: float,
    min_inliers: int,
    refine: bool,
    kernel: str | RobustKernel | None,
    scale: float,
    refine_iterations: int,
    N: int,
) -> PnPResult:
    """Exact inliers, degeneracy checks, final refinement; back to the world frame."""
    B = prob.X.shape[0]
    device, dtype = prob.X.device, prob.X.dtype
    thr2 = threshold**2
    data = state.pose
    inl = _exact_inliers(prob, Pose(data), thr2) & found[:, None]
    few = found & (inl.sum(-1) < min_inliers)
    reason = torch.where(few, PnPReason.TOO_FEW_INLIERS, reason)
    flat = (reason == PnPReason.OK) & _collinear(prob.X, inl)
    reason = torch.where(flat, PnPReason.DEGENERATE, reason)
    eye6 = torch.eye(6, dtype=dtype, device=device)
    unknown = torch.where(eye6 > 0, math.inf, 0.0).to(dtype)  # as refine_pose reports a failure
    cov = unknown.expand(B, 6, 6).clone()
    go = reason == PnPReason.OK
    if refine and bool(go.any()):
        every = bool(go.all())  # the usual case: no selection, no scatter
        qg = torch.arange(B, device=device) if every else go.nonzero()[:, 0]
        sel = inl if every else inl[qg]
        start = data if every else data[qg]
        new, new_cov, ok = _refine(prob, qg, sel, start, kernel, scale, refine_iterations)
        new_cov = torch.where(ok[:, None, None], new_cov, unknown)
        if every:
            data = torch.where(ok[:, None], new, data)
            cov, failed = new_cov, ~ok
        else:
            data = data.clone()
            data[qg] = torch.where(ok[:, None], new, data[qg])
            cov[qg] = new_cov
            failed = torch.zeros(B, dtype=torch.bool, device=device)
            failed[qg] = ~ok
        reason = torch.where(failed, PnPReason.REFINEMENT_FAILED, reason)
        refined = go & ~failed
        inl = torch.where(refined[:, None], _exact_inliers(prob, Pose(data), thr2), inl)
        few = refined & (inl.sum(-1) < min_inliers)
        reason = torch.where(few, PnPReason.TOO_FEW_INLIERS, reason)
    # back to the world frame: x_cam = R (x - c) + t, so t_world = t - R c; identity if no pose
    R = data[:, :9].reshape(B, 3, 3)
    t = data[:, 9:] - (R @ prob.centre[..., None])[..., 0]
    world = torch.cat([data[:, :9], t], -1)
    world = torch.where(found[:, None], world, Pose.identity((B,), dtype, device).data)
    inliers = torch.zeros(B, N, dtype=torch.bool, device=device)
    inliers.scatter_(1, prob.order, inl)  # inl is False on padding, order a permutation prefix
    inliers = inliers & valid
    success = reason == PnPReason.OK
    cov = torch.where(success[:, None, None], cov, unknown)
    return PnPResult(
        pose=Pose(world), inliers=inliers, num_inliers=inliers.sum(-1), success=success,
        iterations=state.iterations, covariance=cov, reason=reason, num_matches=prob.n,
    )  # fmt: skip


def _refine(
    prob: _Problem,
    q: torch.Tensor,
    inl: torch.Tensor,
    pose: torch.Tensor,
    kernel: str | RobustKernel | None,
    scale: float,
    iterations: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final refinement of poses ``(Q, 12)`` (centred frame) of queries ``q`` on their inliers
    ``(Q, M)``: the refined poses, covariances ``(Q, 6, 6)`` and success ``(Q,)``.

    Without distortion the scoring model is the exact pixel error, and the lean guarded IRLS of
    :mod:`dgeo.ransac.irls` gives what :func:`refine_pose` would (tested) at a fraction of its
    fixed cost; with distortion :func:`refine_pose` fits the exact model."""
    robust = get_kernel(kernel, scale)
    if prob.camera.has_distortion:
        idx, m = _compact_mask(inl)
        res = refine_pose(
            _gather(prob.uv, q, idx), _gather(prob.X, q, idx), prob.camera[q], Pose(pose),
            mask=m, kernel=robust,
            options=LMOptions(max_iterations=iterations, cost_tolerance=_REFINE_COST_TOL),
        )  # fmt: skip
        ok = res.success & torch.isfinite(res.pose.data).all(-1)
        return res.pose.data.to(pose.dtype), res.covariance.to(pose.dtype), ok
    X, xy, f, w = _inlier_problem(prob, q, inl)
    Q = q.shape[0]
    res = refine_irls(
        X, xy, f, w, pose[:, :9].reshape(Q, 3, 3), pose[:, 9:], robust, iterations,
        _REFINE_COST_TOL,
    )  # fmt: skip
    sigma2, n = residual_variance(res.at.sq, robust, weights=res.at.weight)
    cov, ok = pose_covariance(res.at.hessian, sigma2)
    new = torch.cat([res.R.reshape(Q, 9), res.t], -1)
    ok = ok & (n >= 4) & torch.isfinite(res.at.cost) & torch.isfinite(new).all(-1)
    return new, cov, ok


def _exact_inliers(prob: _Problem, pose: Pose, thr2: float) -> torch.Tensor:
    """Inliers ``(B, M)`` of ``pose`` by the exact camera model (distortion included)."""
    R, t = pose.data[:, :9].reshape(-1, 3, 3), pose.data[:, 9:]
    p = torch.baddbmm(t[:, None], prob.X, R.transpose(1, 2))
    uv, ok = prob.camera.project(p, check_bounds=False)
    e2 = (uv - prob.uv).square().sum(-1)
    keep = torch.arange(prob.X.shape[1], device=p.device) < prob.n[:, None]
    return ok & (e2 < thr2) & keep


def _collinear(X: torch.Tensor, inl: torch.Tensor) -> torch.Tensor:
    """Whether the inlier 3D points ``X`` ``(B, M, 3)`` of each query are nearly collinear (or
    coincident): ``(B,)``. With ``l1 >= l2 >= l3`` the eigenvalues of their scatter ``S``, the
    test is ``l1 l2 + l1 l3 + l2 l3 = (tr(S)^2 - |S|^2) / 2 <= 1e-10 tr(S)^2``, i.e. about
    ``l2 <= 1e-10 l1``, without an eigen-decomposition."""
    w = inl.to(X.dtype)[..., None]
    mean = (X * w).sum(1) / w.sum(1).clamp(min=1)
    D = (X - mean[:, None]) * w
    S = (D.transpose(1, 2) @ D).double()  # (B, 3, 3)
    tr2 = S.diagonal(dim1=-2, dim2=-1).sum(-1).square()
    e2 = (tr2 - S.square().sum((-2, -1))) / 2
    return e2 <= 1e-10 * tr2
