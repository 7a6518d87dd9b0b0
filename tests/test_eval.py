"""Tests of dgeo.eval: pose errors, recalls, medians, evaluate() and the reports."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rich.console import Console
from scipy.spatial.transform import Rotation

from dgeo.errors import DgeoError, InputError, ShapeError
from dgeo.eval import (
    THRESHOLD_SETS,
    Threshold,
    evaluate,
    get_thresholds,
    median,
    pose_errors,
    position_error,
    recall,
    rotation_error,
)
from dgeo.eval.report import format_table, print_report, to_dict, write_json
from dgeo.geometry import Pose

D = torch.float64


def random_poses(n: int, seed: int = 0) -> Pose:
    g = torch.Generator().manual_seed(seed)
    R = torch.from_numpy(Rotation.random(n, random_state=seed).as_matrix())
    return Pose.from_Rt(R, torch.randn(n, 3, generator=g, dtype=D) * 10)


def rotate_about(axis: torch.Tensor, angle: float) -> Pose:
    """A pure rotation by ``angle`` radians about a unit ``axis`` (3,)."""
    return Pose.from_axis_angle(axis * angle, torch.zeros(3, dtype=D))


def with_centers(pose: Pose, c: torch.Tensor) -> Pose:
    """Poses with the rotations of ``pose`` and camera centres ``c`` (..., 3)."""
    return Pose.from_Rt(pose.R, -(pose.R @ c[..., None])[..., 0])


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("axis", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)])
@pytest.mark.parametrize("side", ["left", "right"])
def test_rotation_error_closed_form_3_degrees(axis, side):
    gt = random_poses(8)
    a = torch.tensor(axis, dtype=D)
    d = rotate_about(a / a.norm(), math.radians(3))
    est = d @ gt if side == "left" else gt @ d
    e_R = rotation_error(est.R, gt.R)
    assert e_R.shape == (8,)
    torch.testing.assert_close(torch.rad2deg(e_R), torch.full((8,), 3.0, dtype=D))
    # A left rotation about the origin keeps the camera centre; a right one moves it.
    if side == "left":
        assert float(position_error(est, gt).max()) < 1e-12


def test_rotation_error_float32():
    gt = random_poses(16).float()
    d = rotate_about(torch.tensor([0.0, 0.0, 1.0], dtype=D), math.radians(3)).float()
    e_R = rotation_error((d @ gt).R, gt.R)
    assert e_R.dtype == torch.float32
    torch.testing.assert_close(torch.rad2deg(e_R), torch.full((16,), 3.0), atol=1e-3, rtol=0)


def test_rotation_error_matches_scipy_magnitude():
    R_gt = Rotation.random(200, random_state=1)
    R = Rotation.random(200, random_state=2)
    # include tiny and near-180° relative rotations
    small = Rotation.from_rotvec([[1e-7, 0, 0], [0, 2e-5, 0]])
    near_pi = Rotation.from_rotvec([[math.pi - 1e-6, 0, 0], [0, 0, math.pi]])
    R = Rotation.concatenate([R, R_gt[:2] * small, R_gt[2:4] * near_pi])
    R_gt = Rotation.concatenate([R_gt, R_gt[:2], R_gt[2:4]])
    want = (R_gt.inv() * R).magnitude()
    got = rotation_error(torch.from_numpy(R.as_matrix()), torch.from_numpy(R_gt.as_matrix()))
    torch.testing.assert_close(got, torch.from_numpy(want), rtol=1e-6, atol=1e-9)


def test_position_error_known_offsets():
    gt = random_poses(4)
    c_gt = gt.center()
    offsets = torch.tensor([[0.3, 0.4, 0], [0, 0, 2.0], [-1, 2, -2], [0, 0, 0]], dtype=D)
    est = with_centers(gt, c_gt + offsets)
    torch.testing.assert_close(position_error(est, gt), torch.tensor([0.5, 2.0, 3.0, 0.0], dtype=D))
    # the rotation is untouched
    assert float(rotation_error(est.R, gt.R).max()) < 1e-7


def test_position_error_is_between_centres_not_translations():
    d = rotate_about(torch.tensor([0.0, 1.0, 0.0], dtype=D), math.pi / 2)
    est = Pose.from_Rt(d.R, torch.tensor([3.0, 0.0, 0.0], dtype=D))
    gt = Pose.from_Rt(torch.eye(3, dtype=D), torch.tensor([0.0, 0.0, 3.0], dtype=D))
    # ||t - t_gt|| = 3 sqrt(2), but both cameras sit at c = -R^T t = (0, 0, -3)
    torch.testing.assert_close(est.center(), torch.tensor([0.0, 0.0, -3.0], dtype=D))
    assert position_error(est, gt).item() == pytest.approx(0, abs=1e-12)


def test_identical_poses_zero_without_nan_and_finite_gradient():
    gt = random_poses(5)
    data = gt.data.clone().requires_grad_(True)
    est = Pose(data)
    e_t, e_R, failed = pose_errors(est, gt)
    assert torch.equal(e_t.detach(), torch.zeros(5, dtype=D))
    assert float(e_R.detach().max()) < 1e-7
    assert not bool(failed.any())
    (e_t.sum() + e_R.sum()).backward()
    assert bool(torch.isfinite(data.grad).all())


def test_rotation_error_robust_to_float_noise():
    R = torch.eye(3, dtype=D).expand(3, 3, 3) * torch.tensor([1 + 1e-9, 1 - 1e-9, 1 + 1e-6])[
        :, None, None
    ].to(D)
    e = rotation_error(R, torch.eye(3, dtype=D))
    assert bool(torch.isfinite(e).all()) and float(e.max()) < 1e-6
    flip = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=D)) * (1 + 1e-9)
    assert rotation_error(flip, torch.eye(3, dtype=D)).item() == pytest.approx(math.pi)


def test_pose_errors_non_finite_is_failure():
    gt = random_poses(3)
    data = gt.data.clone()
    data[1, 0] = math.nan
    data[2, 10] = math.inf
    e_t, e_R, failed = pose_errors(Pose(data), gt)
    assert failed.tolist() == [False, True, True]
    assert e_t[1:].tolist() == [math.inf, math.inf]
    assert e_R[1:].tolist() == [math.pi, math.pi]
    assert e_t[0] == 0


def test_rotation_error_bad_shape():
    with pytest.raises(ShapeError):
        rotation_error(torch.eye(4), torch.eye(3))


# ---------------------------------------------------------------------------------- thresholds
def test_threshold_sets():
    assert [(t.translation_m, t.rotation_deg) for t in THRESHOLD_SETS["robotcar"]] == [
        (0.25, 2),
        (0.5, 5),
        (5, 10),
    ]
    assert THRESHOLD_SETS["cmu"] == THRESHOLD_SETS["aachen"] == THRESHOLD_SETS["robotcar"]
    assert get_thresholds("7scenes") == (Threshold(0.05, 5),)
    assert len(get_thresholds("HLOC")) == 7
    assert get_thresholds("hloc")[4] == Threshold(0.25, 2)
    assert get_thresholds("0.1:5, 0.05:5") == (Threshold(0.1, 5), Threshold(0.05, 5))
    assert get_thresholds([(1, 2), Threshold(3, 4)]) == (Threshold(1, 2), Threshold(3, 4))
    assert Threshold(0.25, 2).label == "0.25m, 2°"
    assert Threshold(1, 180).rotation_rad == pytest.approx(math.pi)


@pytest.mark.parametrize("spec", ["nope", "0.1:5,abc", "0.1:5:3", "-1:5", [], [(1, "x")], "1:inf"])
def test_bad_thresholds(spec):
    with pytest.raises(InputError):
        get_thresholds(spec)


# ---------------------------------------------------------------------------------- recall
def test_recall_threshold_edges_are_inclusive():
    th = [(0.25, 2.0)]
    r2 = math.radians(2.0)
    e_t = torch.tensor([0.25, 0.25, math.nextafter(0.25, 1), 0.1, 0.0], dtype=D)
    e_R = torch.tensor([r2, math.nextafter(r2, 1), 0.0, r2, 0.0], dtype=D)
    ok = recall(e_t[:, None], e_R[:, None], th)[:, 0]  # one query each: 0 or 1
    assert ok.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert recall(e_t, e_R, th).item() == pytest.approx(3 / 5)


def test_recall_counts_and_batch():
    e_t = torch.tensor([[0.1, 0.3, 1.0, math.inf], [0.1, 0.1, 0.1, 0.1]], dtype=D)
    e_R = torch.deg2rad(torch.tensor([[1.0, 1.0, 1.0, 180.0], [20.0, 4.0, 1.0, 1.0]], dtype=D))
    r = recall(e_t, e_R, "robotcar")
    assert r.shape == (2, 3)
    torch.testing.assert_close(r, torch.tensor([[0.25, 0.5, 0.75], [0.5, 0.75, 0.75]], dtype=D))
    assert math.isnan(recall(e_t[:, :0], e_R[:, :0])[0, 0].item())


# ---------------------------------------------------------------------------------- median
@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([3.0, 1.0, 2.0], 2.0),
        ([4.0, 1.0, 2.0, 3.0], 2.5),  # sorted[n // 2] would give 3
        ([1.0, math.inf, 2.0], 2.0),
        ([1.0, math.inf, 2.0, math.inf], math.inf),  # half failed, even count
        ([1.0, math.inf, 2.0, 3.0], 2.5),
        ([math.inf, math.inf], math.inf),
        ([5.0], 5.0),
    ],
)
def test_median(values, want):
    assert median(torch.tensor(values, dtype=D)).item() == want


def test_median_matches_quantile_and_dims():
    x = torch.randn(4, 7, 10, dtype=D)
    torch.testing.assert_close(median(x, dim=1), torch.quantile(x, 0.5, dim=1))
    torch.testing.assert_close(median(x), torch.quantile(x, 0.5, dim=-1))
    assert math.isnan(median(torch.zeros(0, dtype=D)).item())


# ---------------------------------------------------------------------------------- evaluate
def scenario():
    """Four GT queries; estimates: exact, 3° off, 0.5 m off, and one missing."""
    gt = random_poses(4, seed=3)
    names = ["day/a.jpg", "day/b.jpg", "night/c.jpg", "night/d.jpg"]
    d = rotate_about(torch.tensor([0.0, 0.0, 1.0], dtype=D), math.radians(3))
    moved = with_centers(gt[2], gt[2].center() + torch.tensor([0.3, 0.4, 0.0], dtype=D))
    est = {"day/a.jpg": gt[0], "day/b.jpg": d @ gt[1], "night/c.jpg": moved}
    return names, gt, est


def test_evaluate_missing_query_is_failure():
    names, gt, est = scenario()
    r = evaluate(est, (names, gt), "robotcar")
    assert r.names == names and r.num_queries == 4 and r.num_failed == 1
    assert r.missing == ["night/d.jpg"] and r.unmatched == [] and r.matched_by == "exact"
    assert r.failed.tolist() == [False, False, False, True]
    torch.testing.assert_close(r.translation_error[:3], torch.tensor([0, 0, 0.5], dtype=D))
    assert r.translation_error[3].item() == math.inf
    torch.testing.assert_close(r.rotation_error_deg, torch.tensor([0, 3, 0, 180.0], dtype=D))
    # (0.25 m, 2°): a only; (0.5 m, 5°): a, b, c (0.5 m is inclusive up to float noise); (5, 10)
    rec = r.recall
    assert rec[0] == 0.25 and rec[2] == 0.75
    s = r.summary()
    assert s.label == "all" and s.num_queries == 4 and s.num_failed == 1
    # medians with the failure: t sorted (0, 0, 0.5, inf) -> 0.25; R (0, 0, 3, 180) -> 1.5°
    assert s.median_translation == pytest.approx(0.25)
    assert s.median_rotation_deg == pytest.approx(1.5)


def test_evaluate_failed_estimates_and_unmatched_names():
    names, gt, est = scenario()
    nan = Pose(torch.full((12,), math.nan, dtype=D))
    est = {**est, "night/d.jpg": None, "day/a.jpg": nan, "extra.jpg": gt[0]}
    r = evaluate(est, (names, gt), [(1.0, 10.0)])
    assert r.failed.tolist() == [True, False, False, True]
    assert r.missing == [] and r.unmatched == ["extra.jpg"]
    assert r.recall == (0.5,)
    text = " ".join(r.warnings)
    assert "extra.jpg" in text and "2 estimate(s) hold NaN/inf" in text


def test_evaluate_pair_input_float32_and_order_independent():
    names, gt, _ = scenario()
    perm = [2, 0, 3, 1]
    est = (
        [names[i] for i in perm],
        Pose(gt.data[perm].float()),
    )
    r = evaluate(est, (names, gt), "7scenes")
    assert r.num_failed == 0 and r.recall == (1.0,)
    assert float(r.translation_error.max()) < 1e-5 and r.translation_error.dtype == D


def test_evaluate_basename_fallback():
    names, gt, est = scenario()
    est = {k.split("/")[1]: v for k, v in est.items()}
    r = evaluate(est, (names, gt))
    assert r.matched_by == "basename" and r.missing == ["night/d.jpg"]
    assert "basename" in r.warnings[0]
    with pytest.raises(InputError, match="no result name matches"):
        evaluate(est, (names, gt), match="exact")
    # results with folders against a GT without them
    r2 = evaluate((names, gt), ([n.split("/")[1] for n in names], gt))
    assert r2.matched_by == "basename" and r2.num_failed == 0


def test_evaluate_exact_match_has_priority():
    names, gt, est = scenario()
    est = {**est, "d.jpg": gt[3]}  # would match night/d.jpg by basename
    r = evaluate(est, (names, gt))
    assert r.matched_by == "exact" and r.missing == ["night/d.jpg"] and r.unmatched == ["d.jpg"]


def test_evaluate_bad_inputs():
    names, gt, est = scenario()
    with pytest.raises(InputError, match="no result name matches"):
        evaluate({"x.jpg": gt[0]}, (names, gt))
    with pytest.raises(InputError, match="more than once"):
        evaluate((["a", "a"], gt[:2]), (names, gt))
    with pytest.raises(InputError, match="by basename"):
        evaluate({"a.jpg": gt[0]}, (["x/a.jpg", "y/a.jpg"], gt[:2]))
    with pytest.raises(ShapeError):
        evaluate((names[:3], gt), (names, gt))
    with pytest.raises(InputError, match="no query"):
        evaluate(est, ([], Pose.identity((0,), D)))
    bad = gt.data.clone()
    bad[0, 9] = math.nan
    with pytest.raises(InputError, match="non-finite"):
        evaluate(est, (names, Pose(bad)))
    with pytest.raises(InputError):
        evaluate(est, [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(InputError):
        evaluate(est, (names, gt), group_by="prefix")  # type: ignore[arg-type]
    assert issubclass(InputError, DgeoError)


def test_evaluate_groups():
    names, gt, est = scenario()
    r = evaluate(est, (names, gt), "robotcar", group_by="dirname")
    assert r.groups == ["day", "day", "night", "night"]
    sums = r.summaries()
    assert [s.label for s in sums] == ["day", "night", "all"]
    day, night, _ = sums
    assert (day.num_queries, day.num_failed, night.num_queries, night.num_failed) == (2, 0, 2, 1)
    assert day.recall == (0.5, 1.0, 1.0)
    assert night.median_translation == math.inf  # (0.5, inf) -> inf
    with pytest.raises(InputError, match="no group"):
        r.summary("dusk")
    r2 = evaluate(est, (names, gt), group_by=lambda n: n[-5])
    assert sorted({s.label for s in r2.summaries()}) == ["a", "all", "b", "c", "d"]
    r3 = evaluate(est, (names, gt), group_by={"day/a.jpg": "A"})
    assert r3.groups == ["A", "(ungrouped)", "(ungrouped)", "(ungrouped)"]
    r4 = evaluate(est, (["a.jpg", *names[1:]], gt), group_by="dirname")
    assert r4.groups[0] == "."


def test_evaluate_reference_map_like_object():
    names, gt, est = scenario()

    class Map:
        def __init__(self):
            self.names, self.cam_from_world = names, gt

    r = evaluate(est, Map())
    assert r.num_queries == 4 and r.num_failed == 1


# ---------------------------------------------------------------------------------- reports
def test_report_table_and_json(tmp_path):
    names, gt, est = scenario()
    r = evaluate({**est, "extra.jpg": gt[0]}, (names, gt), "hloc", group_by="dirname")
    console = Console(record=True, width=60)
    print_report(r, console, title="T")
    text = console.export_text()
    for piece in ("day", "night", "all", "75.0", "50.0", "0.250", "1.50", "inf", "extra.jpg"):
        assert piece in text, piece
    assert "…" not in text  # printed at its natural width off a terminal
    assert console.width == 60
    assert format_table(r).row_count == 3

    d = to_dict(r)
    json.dumps(d, allow_nan=False)
    assert d["summary"]["all"]["num_failed"] == 1
    assert d["summary"]["night"]["median_translation_m"] is None
    assert d["summary"]["all"]["median_rotation_deg"] == pytest.approx(1.5)
    assert d["thresholds"][0] == {"translation_m": 0.01, "rotation_deg": 1.0}
    q = {x["name"]: x for x in d["queries"]}
    assert q["night/d.jpg"] == {
        "name": "night/d.jpg",
        "group": "night",
        "translation_error_m": None,
        "rotation_error_deg": None,
        "failed": True,
    }
    assert q["day/b.jpg"]["rotation_error_deg"] == pytest.approx(3.0)
    assert d["unmatched"] == ["extra.jpg"] and d["missing"] == ["night/d.jpg"]
    assert "queries" not in to_dict(r, per_query=False)

    path = write_json(r, tmp_path / "sub" / "eval.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(d))
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]
