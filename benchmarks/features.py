"""Dense features across conditions: matching PCK on held-out pairs and localization recall.

Models (each row): ``dense-sift`` (:class:`dgeo.models.DenseSIFT`, weight-free), ``unet random``
(:class:`dgeo.models.UNetPyramid` with seed 0, untrained), ``shipped`` (the U-Net that ships with
dgeo, :func:`dgeo.models.default_model`; skipped with a note when this installation has none),
every ``--weights PATH`` (a ``dgeo.models.save`` file, e.g. ``dgeo train``'s ``model.pt``) and
every ``--vgg-weights PATH`` (a VGG-16 checkpoint: S2DHM hypercolumns).

Matching data (images fitted into ``--size``; ``--num-points`` ground-truth correspondences per
pair):

- ``synthetic night``, ``synthetic snow`` (``--conditions``): ``--pairs`` held-out pairs of
  :class:`dgeo.data.pairs.SyntheticPairs` (``split="val"``: scenes that training never sees,
  nor the localization scene), a = ``overcast-reference``, b = a nearby view under the
  condition. The same viewpoints under every condition. Rendered once into ``--out``.
- ``hpatches``: the real viewpoint sequence ``--hpatches`` (pairs (1, k), k = 2..6, dense
  correspondences from the ground-truth homographies; :class:`dgeo.data.pairs.HPatchesPairs`),
  fitted into ``--hpatches-size``.

Matching, a -> b, scored by :mod:`dgeo.eval.matching`:

- ``NN``: dense nearest neighbour (cosine) of a's descriptor at the true ``uv_a`` among all cells
  of one level of b, at the cell centre: what training validation (``matching_pck``) logs. PCK
  (%) at 1/3/5 px for level 0 (stride 1 for the U-Net and dense SIFT), and the level with the
  best PCK@3 (every level is in the JSON).
- ``S2D``: sparse-to-dense matching as the Localizer runs it (:func:`match_sparse_to_dense` on
  the level whose stride is closest to 4, parabola sub-cell peaks): PCK without a ratio test, and
  with a ratio test (``--ratio 0.9 --ratio-test similarity``: S2DHM's, the Localizer's default;
  ``distance``: Lowe's): coverage (% of the correspondences kept), PCK@3 over all
  correspondences (rejected = miss) and precision@3 (among the kept). The correspondences are
  uniform over the overlap, not keypoints: S2DHM's test keeps almost none of them on the stride-4
  level (for dense SIFT on HPatches the 5 % quantile of ``s_k / s_1`` is 0.85 > 0.81), where the
  Localizer's SIFT-detected reference keypoints pass far more often.

Localization (unless ``--skip-localize``): ``benchmarks/localize.py``'s synthetic street (seed 0,
references under ``overcast-reference``, queries under ``--localize-conditions``), the full
Localizer (retrieval, sparse-to-dense, RANSAC, feature-metric refinement) with each model:
recall (%) at RobotCar's (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°) and medians. It reuses
``localize.py``'s ``synthetic_dataset``, ``dgeo_runs`` and ``summarize``.

A last table checks the issue's target: the shipped model beats dense SIFT on night NN PCK@3 px
(level 0) by at least 15 points and raises the night recall at (0.25 m, 2°).

``--quick`` (8 pairs at 160x120, HPatches at 240x180, 4 localization queries per condition)
takes a few minutes on a 2-core CPU the first time (rendering), far less once ``--out`` caches
the renders; the default (24 pairs at 240x180, 6 queries) about 10-15 minutes.

    python benchmarks/features.py [--quick] [--weights PATH ...] [--vgg-weights PATH ...]
        [--pairs 24] [--size 240x180] [--conditions night,snow] [--hpatches PATH | --no-hpatches]
        [--skip-localize] [--out DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from dgeo.data.pairs import PairDataset, SyntheticPairs
from dgeo.data.pairs.hpatches import HPatchesPairs
from dgeo.data.synthetic.dataset import parse_size
from dgeo.errors import DgeoError
from dgeo.eval.matching import (
    extract_pair,
    match_scores,
    nearest_neighbour_matches,
    pck,
    sparse_to_dense_matches,
)
from dgeo.geometry import FeaturePyramid
from dgeo.models import DenseExtractor, DenseSIFT, UNetPyramid, VGGHypercolumn, load
from dgeo.pipeline.localizer import Localizer, LocalizerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
import localize

THRESHOLDS = (1.0, 3.0, 5.0)
S2D_RATIO = 0.9  # the Localizer's (S2DHM's) ratio-test threshold
TARGET_PCK_GAIN = 15.0  # points of night PCK@3 the shipped model must add over dense SIFT
DENSE_SIFT = "dense-sift"
SHIPPED = "shipped"


# ------------------------------------------------------------------------------------- models
@dataclass
class Model:
    """A row of the tables: a label and its extractor (eval mode, on the device)."""

    label: str
    extractor: DenseExtractor


def build_models(args, notes: list[str]) -> list[Model]:
    """dense SIFT, the random U-Net, the shipped model (left out with a note when this
    installation has none), ``--weights``, ``--vgg-weights`` (a file that does not load is an
    error)."""
    makers: list[tuple[str, Callable[[], DenseExtractor]]] = [
        (DENSE_SIFT, DenseSIFT),
        ("unet random", lambda: UNetPyramid(seed=0)),
        (SHIPPED, _shipped),
    ]
    for path in args.weights:
        makers.append((f"weights:{Path(path).name}", lambda p=path: load(p)))
    for path in args.vgg_weights:
        makers.append(
            (f"vgg:{Path(path).name}", lambda p=path: VGGHypercolumn.from_vgg16_checkpoint(p))
        )
    models = []
    for label, make in makers:
        try:
            models.append(Model(label, make().to(args.device).eval()))
        except (DgeoError, AttributeError) as e:
            if label != SHIPPED:  # a file the user named must load
                raise SystemExit(f"error: {label}: {e}") from None
            notes.append(f"{label}: skipped ({type(e).__name__}: {e})")
    return models


def _shipped() -> DenseExtractor:
    import dgeo.models

    if not hasattr(dgeo.models, "default_model"):
        raise AttributeError("dgeo.models has no default_model() in this version")
    return dgeo.models.default_model()


# ------------------------------------------------------------------------------------ matching
@dataclass
class PairSet:
    """One matching data set: a name, its pairs and what to say about it."""

    name: str
    dataset: PairDataset
    notes: list[str] = field(default_factory=list)


def match_level(pyr: FeaturePyramid) -> int:
    """The Localizer's matching level: the stride closest to 4 (S2DHM's hypercolumn cell)."""
    return min(range(len(pyr)), key=lambda i: abs(pyr.strides[i] - 4.0))


def evaluate_matching(model: Model, data: PairSet, args) -> dict:
    """NN PCK on every level, sparse-to-dense PCK / coverage on the Localizer's level."""
    loader = DataLoader(data.dataset, batch_size=args.batch, shuffle=False)
    nn_pred: dict[int, list[torch.Tensor]] = {}
    s2d_pred, s2d_ratio_pred, s2d_kept, s2d_ratio_kept = [], [], [], []
    uv_b, masks, names = [], [], []
    strides: list[float] = []
    level_s2d, seconds = 0, 0.0
    for batch in loader:
        t = time.perf_counter()
        pyr_a, pyr_b = extract_pair(model.extractor, batch)
        seconds += time.perf_counter() - t
        dev = pyr_a.device
        uv_a, mask = batch["uv_a"].to(dev), batch["mask"].to(dev)
        strides = pyr_a.strides
        for level in range(len(pyr_a)):
            pred = nearest_neighbour_matches(pyr_a, pyr_b, uv_a, level)
            nn_pred.setdefault(level, []).append(pred.cpu())
        level_s2d = match_level(pyr_a)
        pred, kept = sparse_to_dense_matches(pyr_a, pyr_b, uv_a, mask, level_s2d)
        s2d_pred.append(pred.cpu())
        s2d_kept.append(kept.cpu())
        pred, kept = sparse_to_dense_matches(
            pyr_a, pyr_b, uv_a, mask, level_s2d, ratio=args.ratio, ratio_test=args.ratio_test
        )
        s2d_ratio_pred.append(pred.cpu())
        s2d_ratio_kept.append(kept.cpu())
        uv_b.append(batch["uv_b"])
        masks.append(batch["mask"])
        names += list(batch["name"])
    gt, mask = torch.cat(uv_b), torch.cat(masks)
    levels = []
    for level, preds in nn_pred.items():
        nn = pck(torch.cat(preds), gt, mask, THRESHOLDS)
        levels.append({"level": level, "stride": strides[level], "nn": nn})
    best = max(levels, key=lambda r: r["nn"][3.0])
    nn0 = torch.cat(nn_pred[0])
    per_pair = [pck(nn0[i : i + 1], gt[i : i + 1], mask[i : i + 1], (3.0,))[3.0]
                for i in range(len(names))]  # fmt: skip
    s2d = match_scores(torch.cat(s2d_pred), gt, mask, torch.cat(s2d_kept), THRESHOLDS)
    s2d_r = match_scores(torch.cat(s2d_ratio_pred), gt, mask, torch.cat(s2d_ratio_kept), THRESHOLDS)
    return {
        "dataset": data.name, "model": model.label, "pairs": len(names),
        "correspondences": int(mask.sum()), "levels": levels, "nn_level0": levels[0]["nn"],
        "nn_best": best, "s2d_level": level_s2d, "s2d_stride": strides[level_s2d],
        "s2d": s2d, "s2d_ratio": s2d_r, "ms_extract_per_pair": 1e3 * seconds / max(len(names), 1),
        "per_pair_nn_pck3": dict(zip(names, per_pair, strict=True)),
    }  # fmt: skip


def pair_sets(args, console: Console) -> list[PairSet]:
    """The synthetic condition sets and the HPatches sequence (if present)."""
    sets = []
    w, h = parse_size(args.size)
    for cond in args.conditions:
        ds = SyntheticPairs(
            "street", "val", args.pairs, (cond,), args.out / "pairs", height=h, width=w,
            num_points=args.num_points, seed=0, pairs_per_scene=args.pairs_per_scene,
        )  # fmt: skip
        t = time.perf_counter()
        ds.prerender()
        scenes = sorted({ds.scene_seed_of(i) for i in range(len(ds))})
        console.print(f"synthetic {cond}: {len(ds)} val pairs at {w}x{h} (scene seeds {scenes}) "
                      f"ready in {time.perf_counter() - t:.1f} s")  # fmt: skip
        sets.append(PairSet(f"synthetic {cond}", ds, [f"{len(ds)} pairs, {w}x{h}, scenes "
                                                       f"{scenes}"]))  # fmt: skip
    if args.hpatches is not None:
        if not Path(args.hpatches).is_dir():
            console.print(f"hpatches: {args.hpatches} is absent; skipped")
        else:
            w, h = parse_size(args.hpatches_size)
            ds = HPatchesPairs(args.hpatches, height=h, width=w, num_points=args.num_points)
            sets.append(PairSet("hpatches", ds, [f"{Path(args.hpatches).name}: {len(ds)} pairs "
                                                 f"(1, k), fitted into {w}x{h}"]))  # fmt: skip
    return sets


# -------------------------------------------------------------------------------- localization
def localization_rows(models: list[Model], args, console: Console) -> tuple[list[dict], list]:
    """The synthetic localization of ``localize.py`` with each model: its summary rows (refined
    and RANSAC-only) and the dataset's thresholds."""
    largs = argparse.Namespace(
        size=args.localize_size, seed=0, references=args.references, queries=args.queries,
        conditions=list(args.localize_conditions), out=args.out / "localize",
        query_features=2048,
    )  # fmt: skip
    largs.out.mkdir(parents=True, exist_ok=True)
    data = localize.synthetic_dataset(largs, console)
    rows = []
    for model in models:
        t = time.perf_counter()
        loc = Localizer(
            data.reference, data.images_dir, LocalizerConfig(),
            extractor=model.extractor, device=args.device, cache_dir=largs.out / "cache",
        )  # fmt: skip
        for cond, (names, images, cams) in data.queries.items():
            runs = localize.dgeo_runs(loc, model.label, cond, names, images, cams, args.chunk)
            for run, refined in zip(runs, (True, False), strict=True):
                row = localize.summarize(data, run)
                rows.append(row | {"model": model.label, "refined": refined})
        console.print(f"localization with {model.label}: {time.perf_counter() - t:.1f} s")
    return rows, list(data.thresholds)


# ------------------------------------------------------------------------------------- tables
def _f(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def matching_table(data: PairSet, rows: list[dict], args) -> Table:
    t = Table(title=f"{data.name}: matching a -> b, PCK (%) ({'; '.join(data.notes)})")
    cols = ["model", "NN L0\n@1", "@3", "@5", "best NN\nlevel", "@3", "S2D\nlevel",
            "S2D @1", "@3", "@5", f"ratio {args.ratio:g}\ncoverage", "PCK\n@3", "precision\n@3",
            "extract\nms/pair"]  # fmt: skip
    for c in cols:
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        best, s2d, s2r = r["nn_best"], r["s2d"], r["s2d_ratio"]
        t.add_row(
            r["model"], *(_f(r["nn_level0"][th]) for th in THRESHOLDS),
            f"{best['level']} (s{best['stride']:g})", _f(best["nn"][3.0]),
            f"{r['s2d_level']} (s{r['s2d_stride']:g})", *(_f(s2d.pck[th]) for th in THRESHOLDS),
            _f(s2r.coverage), _f(s2r.pck[3.0]), _f(s2r.precision[3.0]),
            _f(r["ms_extract_per_pair"], 0),
        )  # fmt: skip
    return t


def localization_table(rows: list[dict], thresholds) -> Table:
    labels = [f"{x.translation_m:g}m\n{x.rotation_deg:g}°" for x in thresholds]
    t = Table(title="synthetic street localization: recall (%), medians (full Localizer; "
                    "'no refine' = RANSAC pose)")  # fmt: skip
    for c in ("condition", "model", "N", "fail", *labels, "med\nm", "med\n°", "ms/query"):
        t.add_column(c, justify="left" if c in ("condition", "model") else "right")
    prev = None
    for r in sorted(rows, key=lambda r: r["condition"]):
        if prev is not None and r["condition"] != prev:
            t.add_section()
        prev = r["condition"]
        t.add_row(
            r["condition"], r["model"] + ("" if r["refined"] else " no refine"),
            str(r["num_queries"]), str(r["num_failed"]), *(_f(100 * x) for x in r["recall"]),
            f"{r['median_position']:.3f}", f"{r['median_rotation_deg']:.2f}",
            f"{r['ms_total']:.0f}",
        )  # fmt: skip
    return t


def targets(match_rows: list[dict], loc_rows: list[dict], notes: list[str]) -> tuple[Table, list]:
    """The issue's check: shipped vs dense SIFT on night PCK@3 (nearest neighbour on the finest
    and on the best level, sparse-to-dense) and night recall at the finest threshold."""
    t = Table(title="target: shipped model against dense SIFT (night)")
    for c in ("measure", SHIPPED, DENSE_SIFT, "gain", "needed", "met"):
        t.add_column(c, justify="left" if c == "measure" else "right")
    out = []
    pk = {(r["dataset"], r["model"]): r for r in match_rows}
    sh, ds = pk.get(("synthetic night", SHIPPED)), pk.get(("synthetic night", DENSE_SIFT))
    missing = "no shipped model" if not any(r["model"] == SHIPPED for r in match_rows) else None
    if sh and ds:  # the finest level, each model's best level, and sparse-to-dense matching
        for label, key, get in (
            ("night NN PCK@3px (L0)", "night_pck3", lambda r: r["nn_level0"][3.0]),
            ("night NN PCK@3px (best level)", "night_pck3_best", lambda r: r["nn_best"]["nn"][3.0]),
            ("night S2D PCK@3px", "night_s2d_pck3", lambda r: r["s2d"].pck[3.0]),
        ):
            a, b = get(sh), get(ds)
            ok = a - b >= TARGET_PCK_GAIN
            t.add_row(label, _f(a), _f(b), f"{a - b:+.1f}", f">= +{TARGET_PCK_GAIN:g}",
                      "yes" if ok else "no")  # fmt: skip
            out.append({"measure": key, "shipped": a, "dense_sift": b, "met": ok})
    else:
        t.add_row("night NN PCK@3px (L0)", "-", "-", "-", f">= +{TARGET_PCK_GAIN:g}",
                  f"n/a ({missing or 'no night pairs'})")  # fmt: skip
    lk = {(r["condition"], r["model"]): r for r in loc_rows if r["refined"]}
    sh, ds = lk.get(("night", SHIPPED)), lk.get(("night", DENSE_SIFT))
    if sh and ds:
        a, b = 100 * sh["recall"][0], 100 * ds["recall"][0]
        ok = a > b
        t.add_row("night recall (0.25 m, 2°)", _f(a), _f(b), f"{a - b:+.1f}", "> 0",
                  "yes" if ok else "no")  # fmt: skip
        out.append({"measure": "night_recall_fine", "shipped": a, "dense_sift": b, "met": ok})
    else:
        why = missing or ("localization skipped" if not loc_rows else "no night queries")
        t.add_row("night recall (0.25 m, 2°)", "-", "-", "-", "> 0", f"n/a ({why})")
    if missing:
        notes.append("target not checked: the shipped model is missing")
    return t, out


def _jsonable(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if hasattr(v, "to_dict"):
            v = v.to_dict()
        elif isinstance(v, dict) and v and all(isinstance(x, float) for x in v):
            v = {f"{x:g}": y for x, y in v.items()}
        elif k == "nn_best":
            v = v | {"nn": {f"{x:g}": y for x, y in v["nn"].items()}}
        elif k == "levels":
            v = [r | {"nn": {f"{x:g}": y for x, y in r["nn"].items()}} for r in v]
        out[k] = v
    return out


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="8 pairs at 160x120, HPatches at 240x180, 4 queries per condition",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        type=Path,
        help="a dgeo model file (dgeo.models.save); repeatable",
    )
    p.add_argument(
        "--vgg-weights",
        action="append",
        default=[],
        type=Path,
        help="a VGG-16 checkpoint (S2DHM hypercolumns); repeatable",
    )
    p.add_argument("--pairs", type=int, default=24, help="synthetic pairs per condition")
    p.add_argument("--pairs-per-scene", type=int, default=8, help="synthetic pairs per scene")
    p.add_argument("--size", default="240x180", help="synthetic pair size WIDTHxHEIGHT")
    p.add_argument("--conditions", default="night,snow", help="conditions of image b")
    p.add_argument("--num-points", type=int, default=1024, help="correspondences per pair")
    p.add_argument("--batch", type=int, default=4, help="pairs per extractor call")
    p.add_argument("--ratio", type=float, default=S2D_RATIO, help="S2D ratio-test threshold")
    p.add_argument(
        "--ratio-test",
        default="similarity",
        choices=("similarity", "distance"),
        help="S2D ratio test: S2DHM's on similarities (the Localizer's) or Lowe's on distances",
    )
    p.add_argument(
        "--hpatches",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "hpatches_v_churchill",
        help="an HPatches sequence folder",
    )
    p.add_argument("--no-hpatches", action="store_true", help="skip HPatches")
    p.add_argument("--hpatches-size", default="320x240", help="HPatches fitted size")
    p.add_argument("--no-synthetic", action="store_true", help="skip the synthetic pairs")
    p.add_argument("--skip-localize", action="store_true", help="skip the localization runs")
    p.add_argument("--localize-conditions", default="night,snow", help="query conditions")
    p.add_argument("--localize-size", default="320x240", help="localization image size")
    p.add_argument("--references", type=int, default=24, help="localization references")
    p.add_argument("--queries", type=int, default=6, help="localization queries per condition")
    p.add_argument("--chunk", type=int, default=8, help="queries per Localizer batch")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dgeo-bench-features",
        help="cache of rendered pairs, localization data and reference indices",
    )
    p.add_argument("--json", type=Path, help="write every number here")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.size, args.hpatches_size, args.queries = 8, "160x120", "240x180", 4
        args.num_points = min(args.num_points, 512)
    args.conditions = [] if args.no_synthetic else _split(args.conditions)
    args.localize_conditions = _split(args.localize_conditions)
    if args.no_hpatches:
        args.hpatches = None
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(width=200)
    start = time.perf_counter()
    notes: list[str] = []
    models = build_models(args, notes)
    for n in notes:
        console.print(f"[yellow]{n}[/yellow]")
    match_rows = []
    for data in pair_sets(args, console):
        rows = []
        for model in models:
            t = time.perf_counter()
            rows.append(evaluate_matching(model, data, args))
            print(f"  {data.name:<18} {model.label:<24} {time.perf_counter() - t:6.1f} s",
                  file=sys.stderr)  # fmt: skip
        console.print(matching_table(data, rows, args))
        match_rows += rows
    loc_rows, thresholds = [], []
    if not args.skip_localize and args.localize_conditions:
        loc_rows, thresholds = localization_rows(models, args, console)
        console.print(localization_table(loc_rows, thresholds))
    table, target_rows = targets(match_rows, loc_rows, notes)
    console.print(table)
    for n in notes:
        console.print(f"note: {n}")
    console.print(f"total {time.perf_counter() - start:.0f} s")
    result = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models": [m.label for m in models], "notes": notes,
        "matching": [_jsonable(r) for r in match_rows],
        "localization": {"thresholds": [[x.translation_m, x.rotation_deg] for x in thresholds],
                         "rows": loc_rows},
        "targets": target_rows,
    }  # fmt: skip
    if args.json:
        text = json.dumps(_finite(result), indent=1, default=str, allow_nan=False)
        args.json.write_text(text + "\n")
    return result


def _finite(obj):
    """``obj`` with NaN / inf floats as None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _split(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


if __name__ == "__main__":
    main()
