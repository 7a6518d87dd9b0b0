"""Pose errors, recalls at thresholds and medians for visual localization benchmarks.

Conventions (ALGORITHMS 1.2, 3.4):

- Poses are ``cam_from_world``. The rotation error is the angle of ``R_gt^T R``; the position
  error is the distance between the camera centres ``c = -R^T t``.
- Errors are radians and metres in the API; names ending in ``_deg`` hold degrees.
- A query of the ground truth that has no estimate, or whose estimate holds NaN/inf, is a
  failure: ``e_t = inf`` and ``e_R = pi`` (180 degrees).
- A query counts towards the recall at ``(t_max, R_max)`` when ``e_t <= t_max`` **and**
  ``e_R <= R_max`` (inclusive, "within"; hloc's scripts use ``<``, which only differs for errors
  exactly on a threshold).
- Medians are true medians (mean of the two middle values for an even count, infinities
  included), not ``sorted[n // 2]``.

Everything is batched: the per-query math runs as tensor operations; only the matching of names,
which is dictionary work, loops in Python.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch

from dgeo.errors import InputError, ShapeError, require_shape
from dgeo.geometry.pose import Pose

__all__ = [
    "THRESHOLD_SETS",
    "EvalResult",
    "GroupBy",
    "NamedPoses",
    "Summary",
    "Threshold",
    "ThresholdSpec",
    "evaluate",
    "get_thresholds",
    "median",
    "pose_errors",
    "position_error",
    "recall",
    "rotation_error",
]


# ---------------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class Threshold:
    """One recall threshold: a position error in metres and a rotation error in degrees."""

    translation_m: float
    rotation_deg: float

    def __post_init__(self) -> None:
        for name in ("translation_m", "rotation_deg"):
            value = getattr(self, name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = math.nan
            if not (math.isfinite(value) and value >= 0):
                raise InputError(
                    f"threshold {name} must be a finite number >= 0, got {getattr(self, name)!r}."
                )
            object.__setattr__(self, name, value)

    @property
    def rotation_rad(self) -> float:
        """The rotation threshold in radians."""
        return math.radians(self.rotation_deg)

    @property
    def label(self) -> str:
        """A short label such as ``"0.25m, 2°"``."""
        return f"{self.translation_m:g}m, {self.rotation_deg:g}°"


def _thresholds(*pairs: tuple[float, float]) -> tuple[Threshold, ...]:
    return tuple(Threshold(float(t), float(r)) for t, r in pairs)


_ROBOTCAR = _thresholds((0.25, 2), (0.5, 5), (5, 10))

#: Named threshold sets (ALGORITHMS 3.4). ``robotcar``, ``cmu`` and ``aachen`` are the same
#: visuallocalization.net triple; ``7scenes`` is the 5 cm / 5° recall reported with medians;
#: ``hloc`` is the list printed by hloc's evaluation scripts; ``ace`` is ACE's and DSAC*'s.
THRESHOLD_SETS: dict[str, tuple[Threshold, ...]] = {
    "robotcar": _ROBOTCAR,
    "cmu": _ROBOTCAR,
    "aachen": _ROBOTCAR,
    "7scenes": _thresholds((0.05, 5)),
    "hloc": _thresholds((0.01, 1), (0.02, 2), (0.03, 3), (0.05, 5), (0.25, 2), (0.5, 5), (5, 10)),
    "ace": _thresholds((0.1, 5), (0.05, 5), (0.02, 2), (0.01, 1)),
}

ThresholdSpec = str | Sequence[Threshold | tuple[float, float]]


def get_thresholds(spec: ThresholdSpec) -> tuple[Threshold, ...]:
    """Resolve a threshold specification.

    Args:
        spec: a name of :data:`THRESHOLD_SETS` (case-insensitive); a string of
            ``METRES:DEGREES`` pairs separated by commas, e.g. ``"0.1:5,0.05:5"``; or a sequence
            of :class:`Threshold` or ``(metres, degrees)`` pairs.
    Returns:
        The thresholds, in the given order.
    Raises:
        InputError: unknown name, malformed pair, negative or non-finite value, empty list.
    """
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in THRESHOLD_SETS:
            return THRESHOLD_SETS[key]
        if ":" not in key:
            raise InputError(
                f"unknown threshold set {spec!r}; use one of {', '.join(THRESHOLD_SETS)} "
                "or METRES:DEGREES pairs such as '0.25:2,0.5:5'."
            )
        pairs = []
        for item in key.split(","):
            parts = item.strip().split(":")
            try:
                if len(parts) != 2:
                    raise ValueError
                pairs.append((float(parts[0]), float(parts[1])))
            except ValueError:
                raise InputError(
                    f"bad threshold {item.strip()!r} in {spec!r}; write METRES:DEGREES pairs "
                    "separated by commas, e.g. '0.25:2,0.5:5'."
                ) from None
        return _thresholds(*pairs)
    out = []
    for item in spec:
        if isinstance(item, Threshold):
            out.append(item)
        else:
            try:
                t, r = item
                out.append(Threshold(float(t), float(r)))
            except (TypeError, ValueError):
                raise InputError(
                    f"threshold {item!r} must be a Threshold or a (metres, degrees) pair."
                ) from None
    if not out:
        raise InputError("the threshold list is empty; give at least one (metres, degrees) pair.")
    return tuple(out)


# ---------------------------------------------------------------------------------- errors
def _norm0(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dimension: exactly 0 at 0, with a zero (not NaN) gradient."""
    sq = (x * x).sum(-1)
    pos = sq > 0
    return torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def rotation_error(R: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    """Angle of the relative rotation ``R_gt^T R``, in radians.

    Equal to ``arccos(clamp((tr(R_gt^T R) - 1) / 2, -1, 1))`` but computed as
    ``atan2(|sin|, cos)`` from the symmetric and antisymmetric parts, both clamped to
    ``[-1, 1]``, so that it is accurate for tiny angles and near 180°, never NaN on float noise
    and differentiable (zero gradient at exactly 0).

    Args:
        R: estimated rotations ``(..., 3, 3)``.
        R_gt: ground-truth rotations ``(..., 3, 3)``; leading shapes broadcast.
    Returns:
        Angles in ``[0, pi]``, shape ``(...)``. NaN in, NaN out (see :func:`pose_errors`).
    """
    require_shape(R, "R", last=[3, 3])
    require_shape(R_gt, "R_gt", last=[3, 3])
    M = R_gt.transpose(-1, -2) @ R
    cos = ((M.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    axis = torch.stack(
        [M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]],
        -1,
    )
    sin = (_norm0(axis) / 2).clamp(max=1)
    return torch.atan2(sin, cos)


def position_error(pose: Pose, pose_gt: Pose) -> torch.Tensor:
    """Distance ``||c_gt - c||`` between camera centres ``c = -R^T t``, in metres.

    Args:
        pose: estimated ``cam_from_world`` poses, batch shape ``(...)``.
        pose_gt: ground-truth poses; batch shapes broadcast.
    Returns:
        Distances ``(...)``; exactly 0 for identical poses. NaN in, NaN out.
    """
    return _norm0(pose_gt.center() - pose.center())


def pose_errors(pose: Pose, pose_gt: Pose) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Position and rotation errors with failures made explicit.

    An estimate holding any NaN or inf is a failure: its errors become ``inf`` and ``pi``.

    Args:
        pose: estimated ``cam_from_world`` poses, batch shape ``(...)``.
        pose_gt: ground-truth poses; batch shapes broadcast. Must be finite.
    Returns:
        ``(e_t, e_R, failed)``: metres ``(...)``, radians ``(...)`` and a bool mask ``(...)``.
    """
    failed = ~torch.isfinite(pose.data).all(-1)
    failed = failed.expand(torch.broadcast_shapes(pose.shape, pose_gt.shape))
    e_t = position_error(pose, pose_gt)
    e_R = rotation_error(pose.R, pose_gt.R)
    e_t = torch.where(failed, torch.full_like(e_t, math.inf), e_t)
    e_R = torch.where(failed, torch.full_like(e_R, math.pi), e_R)
    return e_t, e_R, failed


def median(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """True median along ``dim``: the mean of the two middle values when the count is even.

    Infinities are ordinary large values (the median is ``inf`` once more than half are
    infinite, or exactly half for an even count). An empty dimension gives NaN.

    Args:
        x: values ``(..., N, ...)`` without NaN.
        dim: the dimension to reduce.
    Returns:
        ``x`` with ``dim`` removed.
    """
    n = x.shape[dim]
    if n == 0:
        shape = list(x.shape)
        del shape[dim]
        return x.new_full(shape, math.nan)
    s = x.sort(dim=dim).values
    lo = s.narrow(dim, (n - 1) // 2, 1).squeeze(dim)
    hi = s.narrow(dim, n // 2, 1).squeeze(dim)
    # lo + (hi - lo) / 2 would give inf - inf = NaN when both are infinite.
    return torch.where(lo == hi, lo, (lo + hi) / 2)


def recall(
    e_t: torch.Tensor, e_R: torch.Tensor, thresholds: ThresholdSpec = "robotcar"
) -> torch.Tensor:
    """Fraction of queries within each threshold (``e_t <= t_max`` and ``e_R <= R_max``).

    Args:
        e_t: position errors in metres ``(..., N)``.
        e_R: rotation errors in radians ``(..., N)``.
        thresholds: see :func:`get_thresholds`; ``K`` of them.
    Returns:
        Recalls in ``[0, 1]``, shape ``(..., K)``; NaN where ``N == 0``.
    """
    th = get_thresholds(thresholds)
    if e_t.shape != e_R.shape:
        raise ShapeError(f"e_t {tuple(e_t.shape)} and e_R {tuple(e_R.shape)} must match.")
    t_max = e_t.new_tensor([x.translation_m for x in th])
    R_max = e_R.new_tensor([x.rotation_rad for x in th])
    ok = (e_t[..., None] <= t_max) & (e_R[..., None] <= R_max)  # (..., N, K)
    return ok.to(e_t.dtype).mean(-2)


# ---------------------------------------------------------------------------------- evaluate
NamedPoses = Mapping[str, Pose | None] | tuple[Sequence[str], Pose]
GroupBy = Callable[[str], str] | Mapping[str, str] | Literal["dirname"]


@dataclass(frozen=True)
class Summary:
    """Aggregate numbers of one group of queries.

    Attributes:
        label: the group label, or ``"all"``.
        num_queries: ground-truth queries in the group.
        num_failed: of those, missing from the results or non-finite.
        recall: one fraction in ``[0, 1]`` per threshold, in the order of ``thresholds``.
        median_translation: true median position error in metres (``inf`` possible).
        median_rotation: true median rotation error in radians.
        thresholds: the thresholds of ``recall``.
    """

    label: str
    num_queries: int
    num_failed: int
    recall: tuple[float, ...]
    median_translation: float
    median_rotation: float
    thresholds: tuple[Threshold, ...]

    @property
    def median_rotation_deg(self) -> float:
        """The median rotation error in degrees."""
        return math.degrees(self.median_rotation)


@dataclass(frozen=True)
class EvalResult:
    """Per-query errors of a results set against ground truth, and their aggregates.

    Attributes:
        names: the ground-truth query names, ``N`` of them, in ground-truth order.
        translation_error: position errors in metres ``(N,)`` float64; ``inf`` for failures.
        rotation_error: rotation errors in radians ``(N,)`` float64; ``pi`` for failures.
        failed: ``(N,)`` bool, True where the estimate is missing or non-finite.
        missing: ground-truth names without an estimate (a subset of the failures).
        unmatched: result names that match no ground-truth query; they are not evaluated.
        thresholds: the recall thresholds.
        groups: per-query group label (``N``), or None without grouping.
        matched_by: ``"exact"`` or ``"basename"`` (see :func:`evaluate`).
    """

    names: list[str]
    translation_error: torch.Tensor
    rotation_error: torch.Tensor
    failed: torch.Tensor
    missing: list[str]
    unmatched: list[str]
    thresholds: tuple[Threshold, ...]
    groups: list[str] | None = None
    matched_by: Literal["exact", "basename"] = "exact"

    @property
    def num_queries(self) -> int:
        """Number of ground-truth queries ``N``."""
        return len(self.names)

    @property
    def num_failed(self) -> int:
        """Number of failed queries (missing or non-finite)."""
        return int(self.failed.sum())

    @property
    def rotation_error_deg(self) -> torch.Tensor:
        """Rotation errors in degrees ``(N,)``."""
        return torch.rad2deg(self.rotation_error)

    @property
    def recall(self) -> tuple[float, ...]:
        """Recall of all queries per threshold, as fractions."""
        return self.summary().recall

    @cached_property
    def _group_codes(self) -> tuple[list[str], torch.Tensor]:
        """Sorted group labels ``(G,)`` and each query's index into them ``(N,)``."""
        labels = sorted(set(self.groups or []))
        code = {g: i for i, g in enumerate(labels)}
        codes = [code[g] for g in self.groups or []]
        return labels, torch.tensor(codes, dtype=torch.long, device=self.failed.device)

    def summary(self, group: str | None = None) -> Summary:
        """Aggregates of all queries, or of the queries of one group label."""
        if group is None:
            mask = torch.ones_like(self.failed)
            label = "all"
        else:
            labels, codes = self._group_codes
            if group not in labels:
                raise InputError(f"no group {group!r}; the groups are {labels}.")
            mask = codes == labels.index(group)
            label = group
        e_t, e_R = self.translation_error[mask], self.rotation_error[mask]
        return Summary(
            label=label,
            num_queries=int(mask.sum()),
            num_failed=int(self.failed[mask].sum()),
            recall=tuple(recall(e_t, e_R, self.thresholds).tolist()),
            median_translation=float(median(e_t)),
            median_rotation=float(median(e_R)),
            thresholds=self.thresholds,
        )

    def summaries(self) -> list[Summary]:
        """One :class:`Summary` per group (sorted labels), then the one of all queries."""
        groups = self._group_codes[0]
        return [*(self.summary(g) for g in groups), self.summary()]

    @property
    def warnings(self) -> list[str]:
        """Human-readable notes on missing and unmatched names and on basename matching."""
        out = []
        if self.matched_by == "basename":
            out.append("no name matched exactly; names were matched by basename.")
        if self.missing:
            out.append(
                f"{len(self.missing)} ground-truth quer{'y' if len(self.missing) == 1 else 'ies'}"
                f" missing from the results, counted as failures (e.g. {self.missing[0]!r})."
            )
        nonfinite = self.num_failed - len(self.missing)
        if nonfinite:
            out.append(f"{nonfinite} estimate(s) hold NaN/inf, counted as failures.")
        if self.unmatched:
            out.append(
                f"{len(self.unmatched)} result(s) match no ground-truth query and were not "
                f"evaluated (e.g. {self.unmatched[0]!r})."
            )
        return out


def _basename(name: str) -> str:
    return posixpath.basename(name.replace("\\", "/"))


def _named_poses(x: NamedPoses, what: str) -> tuple[list[str], torch.Tensor | None, list[Pose]]:
    """Split ``x`` into names and either a packed ``(N, 12)`` tensor or a list of poses."""
    if isinstance(x, Mapping):
        names = [str(k) for k in x]
        poses = list(x.values())
        for name, p in zip(names, poses, strict=True):
            if p is not None and (not isinstance(p, Pose) or p.data.numel() != 12):
                raise InputError(f"{what}[{name!r}] must be a single Pose or None, got {p!r}.")
        return names, None, poses
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], Pose):
        names, pose = list(map(str, x[0])), x[1]
        if pose.data.dim() != 2 or pose.shape[0] != len(names):
            raise ShapeError(
                f"{what}: the Pose must have batch shape ({len(names)},) to match the "
                f"{len(names)} names, got {tuple(pose.shape)}."
            )
        return names, pose.data, []
    names_attr, pose_attr = getattr(x, "names", None), getattr(x, "cam_from_world", None)
    if names_attr is not None and isinstance(pose_attr, Pose):
        return _named_poses((list(names_attr), pose_attr), what)
    raise InputError(
        f"{what} must be a dict name -> Pose, a (names, Pose) pair or an object with "
        f"`names` and a `cam_from_world` Pose; got {type(x).__name__}."
    )


def _index(names: list[str], what: str) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in index:
            raise InputError(f"{what} holds the name {n!r} more than once; names must be unique.")
        index[n] = i
    return index


def _group_labels(names: list[str], group_by: GroupBy) -> list[str]:
    if isinstance(group_by, str):
        if group_by != "dirname":
            raise InputError(f"unknown grouping {group_by!r}; use 'dirname' or a callable.")
        return [posixpath.dirname(n.replace("\\", "/")) or "." for n in names]
    if isinstance(group_by, Mapping):
        return [str(group_by.get(n, "(ungrouped)")) for n in names]
    if callable(group_by):
        return [str(group_by(n)) for n in names]
    raise InputError(f"group_by must be 'dirname', a mapping or a callable, got {group_by!r}.")


def evaluate(
    estimates: NamedPoses,
    ground_truth: NamedPoses,
    thresholds: ThresholdSpec = "robotcar",
    *,
    group_by: GroupBy | None = None,
    match: Literal["auto", "exact", "basename"] = "auto",
) -> EvalResult:
    """Evaluate estimated ``cam_from_world`` poses against ground truth, matching by name.

    Every ground-truth query is evaluated. A query without an estimate, or whose estimate is
    None or holds NaN/inf, is a failure (``e_t = inf``, ``e_R = 180°``). Estimates whose name
    is not in the ground truth are listed in ``EvalResult.unmatched``, not silently dropped.

    Name matching: with ``match="auto"`` names are compared exactly, and only if **no** name
    matches exactly are they compared by basename (the part after the last ``/``), so that
    ``night/123.jpg`` in the ground truth meets ``123.jpg`` in the results. ``"exact"`` and
    ``"basename"`` force one rule. Basename matching requires unique basenames on both sides.

    Args:
        estimates: a dict ``name -> Pose`` (one pose each, or None for a failure), a pair
            ``(names, Pose)`` with batch shape ``(M,)``, or an object with ``names`` and a
            ``cam_from_world`` Pose (such as a reference map).
        ground_truth: the same forms, ``N`` queries; must be finite.
        thresholds: see :func:`get_thresholds`.
        group_by: optional per-query group label: ``"dirname"`` (``night/x.jpg`` -> ``night``,
            no folder -> ``.``), a mapping name -> label (others: ``(ungrouped)``) or a
            callable ``name -> label``. Applied to the ground-truth names.
        match: the name-matching rule, see above.
    Returns:
        An :class:`EvalResult` with float64 errors on the ground truth's device.
    Raises:
        InputError: duplicate names, non-finite ground truth, bad shapes or thresholds, an
            empty ground truth, or no estimate matching any ground-truth query.
    """
    th = get_thresholds(thresholds)
    gt_names, gt_data, gt_list = _named_poses(ground_truth, "ground_truth")
    est_names, est_data, est_list = _named_poses(estimates, "estimates")
    if not gt_names:
        raise InputError("the ground truth holds no query; nothing to evaluate.")
    if gt_data is None:
        if any(p is None for p in gt_list):
            raise InputError("ground_truth holds None poses; every query needs a pose.")
        gt_data = torch.stack([p.data.reshape(12) for p in gt_list])
    device = gt_data.device
    gt_data = gt_data.to(torch.float64)
    if not bool(torch.isfinite(gt_data).all()):
        ok = torch.isfinite(gt_data).all(-1).tolist()
        bad = [n for n, f in zip(gt_names, ok, strict=True) if not f]
        raise InputError(f"ground_truth holds {len(bad)} non-finite pose(s) (e.g. {bad[0]!r}).")
    if est_data is None:
        nan = torch.full((12,), math.nan, dtype=torch.float64, device=device)
        rows = [nan if p is None else p.data.reshape(12).to(nan) for p in est_list]
        est_data = torch.stack(rows) if rows else nan.new_zeros((0, 12))
    est_data = est_data.to(device, torch.float64)

    _index(gt_names, "ground_truth")
    est_index = _index(est_names, "estimates")
    if match not in ("auto", "exact", "basename"):
        raise InputError(f"match must be 'auto', 'exact' or 'basename', got {match!r}.")
    used: Literal["exact", "basename"] = "basename" if match == "basename" else "exact"
    if match == "auto" and not any(n in est_index for n in gt_names):
        used = "basename"
    if used == "exact":
        gt_keys, est_keys = gt_names, est_names
    else:
        gt_keys = [_basename(n) for n in gt_names]
        est_keys = [_basename(n) for n in est_names]
        _index(gt_keys, "ground_truth (by basename)")
        est_index = _index(est_keys, "estimates (by basename)")

    idx = torch.tensor([est_index.get(k, -1) for k in gt_keys], dtype=torch.long, device=device)
    found = idx >= 0
    if not bool(found.any()):
        raise InputError(
            f"no result name matches a ground-truth query, exactly or by basename "
            f"(results: {len(est_names)} name(s), e.g. {est_names[0] if est_names else None!r}; "
            f"ground truth: {len(gt_names)}, e.g. {gt_names[0]!r})."
        )
    gt_set = set(gt_keys)
    unmatched = [n for n, k in zip(est_names, est_keys, strict=True) if k not in gt_set]
    missing = [n for n, f in zip(gt_names, found.tolist(), strict=True) if not f]

    est = est_data[idx.clamp(min=0)]
    est = torch.where(found[:, None], est, torch.full_like(est, math.nan))
    e_t, e_R, failed = pose_errors(Pose(est), Pose(gt_data))
    groups = None if group_by is None else _group_labels(gt_names, group_by)
    return EvalResult(
        names=gt_names,
        translation_error=e_t,
        rotation_error=e_R,
        failed=failed,
        missing=missing,
        unmatched=unmatched,
        thresholds=th,
        groups=groups,
        matched_by=used,
    )
