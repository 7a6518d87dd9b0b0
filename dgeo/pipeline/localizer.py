"""The localizer: retrieval -> sparse-to-dense matching -> PnP-RANSAC -> feature-metric refinement.

:class:`Localizer` assembles S2DHM (hypercolumn-style dense features, sparse-to-dense matching
against the keypoints of retrieved references that have a 3D point, PnP-RANSAC, best candidate
by inliers) with the GN-Net / PixLoc feature-metric refinement, batched over queries:

1. every query is read at the working resolution (longest side ``max_size``; the camera follows
   through :meth:`Camera.scale`, so poses are poses of the original camera) and its
   :class:`~dgeo.geometry.FeaturePyramid` extracted;
2. retrieval: top-k references by global descriptor (GeM or NetVLAD over one pyramid level), or
   by a pose prior;
3. matching: the cached descriptors of each candidate's keypoints are correlated with the whole
   query map of the matching level (:func:`dgeo.matching.match_sparse_to_dense`);
4. RANSAC: :func:`dgeo.ransac.pnp_ransac` on all candidates of all queries in one call; a
   candidate succeeds with ``min_inliers`` inliers spread over as many grid cells; the winner
   (``select``: inlier ratio or count) alone gets the final PnP refinement
   (:func:`dgeo.ransac.pnp_finish`);
5. refinement: :func:`dgeo.pnp.refine_featuremetric` from the RANSAC pose on the winner's inlier
   points (at most ``refine_points``), their reference descriptors on every level, coarse to
   fine; the refined pose is kept if it still explains at least ``keep_inliers`` of the RANSAC
   inliers;
6. a query whose candidates all fail gets the pose of its top retrieved reference, flagged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dgeo.errors import InputError
from dgeo.geometry import Camera, FeaturePyramid, Pose
from dgeo.io.colmap import ReferenceMap
from dgeo.io.images import check_image_size, resize_max
from dgeo.matching import global_descriptors, match_sparse_to_dense, retrieve, retrieve_by_pose
from dgeo.models import (
    DenseExtractor,
    DenseSIFT,
    ImagePyramid,
    VGGHypercolumn,
    build,
    default_model,
    load,
)
from dgeo.optim import LMOptions
from dgeo.pipeline.references import ReferenceIndex, make_pooling, reference_index
from dgeo.pnp import refine_featuremetric
from dgeo.ransac import pnp_finish, pnp_ransac

FEATURES = ("dense-sift", "unet", "vgg", "image")
#: How the winning candidate is chosen (``LocalizerConfig.select``).
SELECT = ("auto", "inlier-ratio", "inliers")
#: Longest image side at which ``LocalizerConfig.threshold_px`` is measured.
THRESHOLD_SIDE = 1024


@dataclass(frozen=True)
class LocalizerConfig:
    """Settings of :class:`Localizer`.

    Attributes:
        features: ``"unet"`` (a ``dgeo.models.save`` file in ``weights``; without, the U-Net
            shipped in the package, docs/MODELS.md: the default, ahead of dense SIFT on every
            condition of benchmarks/localize.py and faster), ``"dense-sift"`` (weight-free),
            ``"vgg"`` (a VGG-16 checkpoint in ``weights``: S2DHM hypercolumns) or ``"image"``
            (raw pixels).
        weights: path of the model weights, if any.
        max_size: longest image side the work runs at (``None``: full size).
        top_k: references retrieved per query.
        pooling: global descriptor, ``"gem"`` or ``"netvlad"`` (k-means on the references).
        retrieval_level: pyramid level pooled for retrieval (default the coarsest).
        match_level: pyramid level of sparse-to-dense matching (``None``: the stride closest to
            4, S2DHM's hypercolumn cell).
        ratio: S2DHM's modified ratio test threshold (kept: ``s_k <= ratio^2 s_1``).
        threshold_px: RANSAC inlier threshold in pixels of an image whose longest side is
            :data:`THRESHOLD_SIDE` (1024); at other working sizes it scales with the longest
            side (12 px at 1024 is 3.75 px at 320), so one setting is the same tolerance in
            angle at every image size.
        min_inliers: fewest RANSAC inliers of a successful candidate; they must also occupy
            at least this many distinct cells of a grid of ``inlier_grid`` cells along the
            longest image side (:func:`distinct_cells`). Learned features match a flat or noisy
            image at a few spots, and 150 inliers within 20 pixels are no evidence of a pose
            (benchmarks/localize.py: correct poses occupy 35 to 236 cells, the wrong ones that
            passed the inlier count 4 and 10).
        inlier_grid: cells along the longest side for that test (20: 16-pixel cells at 320).
        ransac_iterations: most RANSAC samples per candidate. A candidate stops as soon as its
            best inlier ratio makes more samples pointless (99.99 % confidence), so the cap
            only binds on candidates with fewer than ~17 % inliers, mostly wrong references
            that would otherwise draw 10,000 samples each (S2DHM: 5,000).
        select: how the winner among the successful candidates is chosen: ``"inlier-ratio"``
            (inliers over sparse-to-dense matches), ``"inliers"`` (S2DHM's count) or ``"auto"``
            (the ratio for learned features, the count for dense SIFT and raw pixels).
            Learned descriptors pass the ratio test almost everywhere, so a wrong reference
            with many matches collects many chance inliers while its ratio stays low
            (benchmarks/localize.py, shipped U-Net: synthetic night recall 33 -> 83 %, fox
            night 94 -> 100 %); dense SIFT's matches are fewer and noisier, and the ratio
            picks poorly overlapping references (fox 100 -> 71 %).
        refine: run the feature-metric refinement.
        refine_iterations: most LM iterations per level.
        refine_tolerance: a level stops when a step changes the feature-metric cost by at most
            this fraction (:attr:`LMOptions.cost_tolerance`).
        refine_points: most RANSAC inliers the refinement aligns (a seeded random subset;
            ``None``: all). Its cost grows with the points and its accuracy hardly does
            beyond a thousand (fox: 0.020 deg against 0.021 with all of about 2,000).
        keep_inliers: share of the RANSAC inliers the refined pose must keep within
            ``threshold_px``, else the RANSAC pose stays.
        seed: RANSAC seed (results are deterministic).
    """

    features: str = "unet"
    weights: str | None = None
    max_size: int | None = 1024
    top_k: int = 10
    pooling: str = "gem"
    retrieval_level: int = -1
    match_level: int | None = None
    ratio: float = 0.9
    threshold_px: float = 12.0
    min_inliers: int = 12
    inlier_grid: int = 20
    ransac_iterations: int = 2000
    select: str = "auto"
    refine: bool = True
    refine_iterations: int = 30
    refine_tolerance: float = 1e-4
    refine_points: int | None = 1024
    keep_inliers: float = 0.8
    seed: int = 0

    def __post_init__(self):
        if self.features not in FEATURES:
            raise InputError(
                f"features must be one of {', '.join(FEATURES)}, got {self.features!r}."
            )
        if self.select not in SELECT:
            raise InputError(f"select must be one of {', '.join(SELECT)}, got {self.select!r}.")
        if self.top_k < 1 or self.min_inliers < 4:
            raise InputError(
                f"need top_k >= 1 and min_inliers >= 4, got {self.top_k}, {self.min_inliers}."
            )
        if self.ransac_iterations < 1 or self.refine_tolerance < 0 or self.inlier_grid < 1:
            raise InputError(
                "need ransac_iterations >= 1, refine_tolerance >= 0 and inlier_grid >= 1, got "
                f"{self.ransac_iterations}, {self.refine_tolerance}, {self.inlier_grid}."
            )
        if self.refine_points is not None and self.refine_points < 10:
            raise InputError(
                f"refine_points must be None (all inliers) or >= 10, got {self.refine_points}."
            )


@dataclass
class LocalizationResult:
    """The outcome for one query.

    Attributes:
        name: the query's name.
        pose: ``cam_from_world`` :class:`Pose` ``()`` float64 (the fallback pose if not success).
        success: a candidate gave at least ``min_inliers`` inliers.
        reason: ``"ok"``, ``"no-candidate"`` (every candidate failed; pose of the top retrieved
            reference), or an error message.
        refined: the feature-metric refinement was applied and kept.
        num_matches, num_inliers: sparse-to-dense matches and RANSAC inliers of the winner.
        retrieved: names of the retrieved references, best first.
        reference: the winning reference (or None).
        matches: ``(M, 2)`` query pixels (original resolution) of the winner's matches.
        points: ``(M,)`` int64 indices into the map's points of those matches.
        inliers: ``(M,)`` bool RANSAC inliers among them.
        timings: seconds per stage (batched stages divided by the batch size).
    """

    name: str
    pose: Pose
    success: bool
    reason: str
    refined: bool = False
    num_matches: int = 0
    num_inliers: int = 0
    retrieved: list[str] = field(default_factory=list)
    reference: str | None = None
    matches: torch.Tensor | None = None
    points: torch.Tensor | None = None
    inliers: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict:
        """A JSON-friendly summary (for the run log)."""
        return {
            "name": self.name, "success": self.success, "reason": self.reason,
            "refined": self.refined, "num_matches": self.num_matches,
            "num_inliers": self.num_inliers, "reference": self.reference,
            "retrieved": self.retrieved, "timings": self.timings,
        }  # fmt: skip


def _threshold_scale(camera: Camera) -> float:
    """Factor from a query's working pixels to those of a ``THRESHOLD_SIDE`` image."""
    return THRESHOLD_SIDE / float(camera.size.max())


def distinct_cells(uv: torch.Tensor, inliers: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Distinct grid cells that hold the inliers of each row.

    Args:
        uv: ``(B, N, 2)`` pixels. inliers: ``(B, N)`` bool. cell: ``(B,)`` cell sizes in pixels.
    Returns:
        ``(B,)`` int64 counts of the distinct ``floor(uv / cell)`` among each row's inliers.
    """
    ij = torch.floor(uv / cell.to(uv)[:, None, None]).long()
    ij = ij - ij.amin(dim=(0, 1)).clamp(max=0)  # non-negative
    ids = ij[..., 1] * (int(ij[..., 0].max()) + 1 if ij.numel() else 1) + ij[..., 0]
    ids = torch.where(inliers, ids, -1).sort(-1).values
    new = (ids[:, 1:] != ids[:, :-1]) & (ids[:, 1:] >= 0)
    return new.sum(-1) + (ids[:, :1] >= 0).sum(-1)


def make_extractor(config: LocalizerConfig) -> DenseExtractor:
    """The dense extractor a config names (weights are loaded, never downloaded)."""
    if config.features == "dense-sift":
        return DenseSIFT()
    if config.features == "image":
        return build("image")
    if config.features == "unet":
        if not config.weights:
            return default_model()
        model = load(config.weights)
        if not isinstance(model, DenseExtractor):
            raise InputError(
                f"{config.weights} holds a {type(model).__name__}, not dense features: pass a "
                "model from `dgeo train gnnet|pixloc` (scene-coordinate networks run with "
                "`dgeo localize-sequence`)."
            )
        return model
    if not config.weights:
        raise InputError("features 'vgg' need --weights: a VGG-16 checkpoint (.pth/.pth.tar).")
    return VGGHypercolumn.from_vgg16_checkpoint(config.weights)


@dataclass
class _Query:
    name: str
    camera: Camera  # () original
    work_camera: Camera  # () working resolution
    pyramid: FeaturePyramid
    prior: Pose | None
    timings: dict[str, float]


class Localizer:
    """Localize query images against a COLMAP model and its images (see the module docstring).

    Args:
        reference: the :class:`ReferenceMap`.
        images_dir: folder holding the reference images by the names in the model.
        config: :class:`LocalizerConfig`.
        extractor: a dense extractor (default: the one ``config`` names).
        device: torch device (default: CUDA when available).
        cache_dir: where to cache the reference descriptors (None: no cache).
        progress: optional callback ``progress(done)`` while references are extracted.
    """

    def __init__(
        self,
        reference: ReferenceMap,
        images_dir: str | Path,
        config: LocalizerConfig | None = None,
        *,
        extractor: DenseExtractor | None = None,
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
        progress=None,
    ):
        self.config = config or LocalizerConfig()
        if reference.num_points == 0:
            raise InputError("the reference model has no 3D points; nothing to localize against.")
        self.reference = reference
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.extractor = (extractor or make_extractor(self.config)).to(self.device).eval()
        t = time.perf_counter()
        self.index: ReferenceIndex
        self.index, self.cache_path, self.from_cache = reference_index(
            reference, Path(images_dir), self.extractor, max_size=self.config.max_size,
            pooling=self.config.pooling, retrieval_level=self.config.retrieval_level,
            device=self.device, cache_dir=None if cache_dir is None else Path(cache_dir),
            progress=progress,
        )  # fmt: skip
        self.reference_seconds = time.perf_counter() - t
        dim = self.index.descriptors[0][self._retrieval_level(len(self.index.descriptors[0]))]
        self.pooling = make_pooling(self.config.pooling, dim.shape[-1])
        self.pooling.load_state_dict(self.index.pooling)
        self.pooling.to(self.device)

    # ------------------------------------------------------------------ public API
    def localize(
        self, image: torch.Tensor, camera: Camera, prior: Pose | None = None, name: str = "query"
    ) -> LocalizationResult:
        """Localize one in-memory image ``(3, H, W)`` in [0, 1] taken by ``camera`` (batch shape
        ``()``, the image's size), optionally near a ``prior`` pose (retrieval by pose)."""
        return self.localize_many([name], [image], [camera], None if prior is None else [prior])[0]

    def localize_many(
        self,
        names: Sequence[str],
        images: Sequence[torch.Tensor],
        cameras: Sequence[Camera],
        priors: Sequence[Pose | None] | None = None,
    ) -> list[LocalizationResult]:
        """Localize a batch of queries; stages run batched over the queries.

        Args:
            names: ``Q`` names. images: ``Q`` tensors ``(3, H_q, W_q)`` in [0, 1] (any sizes).
            cameras: ``Q`` :class:`Camera` of batch shape ``()`` matching the images.
            priors: optional ``Q`` pose priors (None entries: retrieval by descriptor).
        Raises:
            InputError: an image whose size disagrees with its camera (callers that must not
            stop, like :func:`dgeo.pipeline.runs.run_queries`, retry one by one).
        """
        priors = list(priors) if priors is not None else [None] * len(names)
        if not (len(names) == len(images) == len(cameras) == len(priors)):
            raise InputError("names, images, cameras and priors must have one entry per query.")
        queries = [
            self._prepare(*args) for args in zip(names, images, cameras, priors, strict=True)
        ]
        if not queries:
            return []
        cands = self._retrieve(queries)
        matches = self._match(queries, cands)
        return self._solve(queries, cands, matches)

    # ------------------------------------------------------------------ stages
    def _retrieval_level(self, n: int) -> int:
        return self.config.retrieval_level % n

    def _match_level(self, pyr: FeaturePyramid) -> int:
        if self.config.match_level is not None:
            return self.config.match_level % len(pyr)
        return min(range(len(pyr)), key=lambda i: abs(pyr.strides[i] - 4.0))

    def _prepare(self, name, image, camera, prior) -> _Query:
        t = time.perf_counter()
        if camera.shape != ():
            raise InputError(f"query {name}: camera must have batch shape (), got {camera.shape}.")
        check_image_size(image, camera, name)
        small, work = resize_max(image.float(), camera, self.config.max_size)
        with torch.no_grad():
            pyr = self.extractor(small[None].to(self.device))
        return _Query(
            name, camera, work.to(self.device), pyr, prior, {"extract": time.perf_counter() - t}
        )

    def _retrieve(self, queries: list[_Query]) -> torch.Tensor:
        """``(Q, k)`` reference indices per query."""
        t = time.perf_counter()
        k = min(self.config.top_k, len(self.index.names))
        level = self._retrieval_level(len(queries[0].pyramid))
        with torch.no_grad():
            desc = torch.cat([global_descriptors(q.pyramid, self.pooling, level) for q in queries])
        _, idx = retrieve(desc.cpu().float(), self.index.global_desc.float(), k)
        for i, q in enumerate(queries):
            if q.prior is not None:
                idx[i] = retrieve_by_pose(
                    q.prior.reshape(1).double(), self.reference.cam_from_world, k
                )[1][0]
        dt = (time.perf_counter() - t) / len(queries)
        for q in queries:
            q.timings["retrieve"] = dt
        return idx

    def _match(self, queries: list[_Query], cands: torch.Tensor) -> list[tuple]:
        """Per query: uv ``(k, N, 2)`` (working pixels), point indices ``(k, N)``, valid.

        Row ``j`` of a query holds the keypoints of its ``j``-th candidate in the index's order
        (padded to the longest). All candidates' keypoints are matched in one call, each with
        its own descriptor (S2DHM: a point seen by several candidates is matched once per
        candidate; sharing one descriptor per point costs a third but loses the candidate whose
        viewpoint and scale are closest to the query's: synthetic street recall 100 -> 67 %).
        """
        out = []
        for q, cand in zip(queries, cands.tolist(), strict=True):
            t = time.perf_counter()
            level = self._match_level(q.pyramid)
            sizes = [self.index.point_index[c].shape[0] for c in cand]
            n = max(1, max(sizes))
            pidx = torch.full((len(cand), n), -1, dtype=torch.int64)
            for j, c in enumerate(cand):
                pidx[j, : sizes[j]] = self.index.point_index[c]
            mask = torch.arange(n) < torch.tensor(sizes)[:, None]
            flat = torch.cat([self.index.descriptors[c][level] for c in cand])  # (sum n_c, C)
            row = mask.flatten().nonzero()[:, 0]  # entry of each row of flat in (k * n)
            dtype = q.pyramid[level].features.dtype
            m = match_sparse_to_dense(
                flat[None].to(self.device, dtype),
                q.pyramid,
                level,
                ratio=self.config.ratio,
                return_ratio=False,
            )
            uv = torch.zeros(len(cand) * n, 2, dtype=torch.float64)
            valid = torch.zeros(len(cand) * n, dtype=torch.bool)
            uv[row] = m.uv[0].cpu().double()
            valid[row] = m.valid[0].cpu()
            out.append((uv.reshape(len(cand), n, 2), pidx, valid.reshape(len(cand), n)))
            q.timings["match"] = time.perf_counter() - t
        return out

    def _solve(self, queries: list[_Query], cands: torch.Tensor, matches: list[tuple]):
        t = time.perf_counter()
        k = cands.shape[1]
        n = max(m[0].shape[1] for m in matches)
        Q = len(queries)
        uv = torch.zeros(Q * k, n, 2, dtype=torch.float64)
        X = torch.zeros(Q * k, n, 3, dtype=torch.float64)
        valid = torch.zeros(Q * k, n, dtype=torch.bool)
        xyz = self.reference.xyz
        for i, (u, p, v) in enumerate(matches):
            s = slice(i * k, (i + 1) * k)
            m = u.shape[1]
            uv[s, :m], valid[s, :m] = u, v
            X[s, :m] = xyz[p.clamp(min=0)]
        # RANSAC runs in pixels of a THRESHOLD_SIDE image, where threshold_px is measured
        scale = torch.tensor([_threshold_scale(q.work_camera) for q in queries]).repeat_interleave(
            k
        )
        cams = Camera.stack(
            [
                q.work_camera.to("cpu", torch.float64).scale(_threshold_scale(q.work_camera))
                for q in queries
                for _ in range(k)
            ]
        )
        obs = (uv + 0.5) * scale[:, None, None] - 0.5
        # every candidate unrefined, then the final PnP refinement of the winners only: a
        # batched refinement runs until its slowest problem converges, usually a wrong candidate
        res = pnp_ransac(
            obs, X, cams, valid, threshold_px=self.config.threshold_px,
            min_inliers=self.config.min_inliers, seed=self.config.seed,
            max_iterations=self.config.ransac_iterations, refine=False,
        )  # fmt: skip
        # inliers piled on a few spots are a degenerate fit (learned features match a flat or
        # noisy image at a few places): count the distinct cells of a coarse grid they occupy
        side = torch.tensor([float(q.work_camera.size.max()) for q in queries])
        cells = distinct_cells(
            uv, res.inliers, (side / self.config.inlier_grid).repeat_interleave(k)
        )
        success = res.success & (cells >= self.config.min_inliers)
        score = res.num_inliers.double()
        select = self.config.select
        if select == "auto":
            handmade = isinstance(self.extractor, (DenseSIFT, ImagePyramid))
            select = "inliers" if handmade else "inlier-ratio"
        if select == "inlier-ratio":
            score = score / valid.sum(-1).clamp_min(1)
        best = torch.where(success, score, -1.0).reshape(Q, k).argmax(-1)
        rows = torch.arange(Q) * k + best
        win = pnp_finish(
            obs[rows], X[rows], cams[rows], res.pose[rows], valid[rows],
            threshold_px=self.config.threshold_px, min_inliers=self.config.min_inliers,
        )  # fmt: skip
        # a winner whose refinement fails keeps its RANSAC pose and inliers
        kept = win.success | ~success[rows]
        pose = Pose(torch.where(kept[:, None], win.pose.data, res.pose[rows].data))
        inliers = torch.where(kept[:, None], win.inliers, res.inliers[rows])
        success = success[rows]
        dt = (time.perf_counter() - t) / Q
        results = []
        for i, q in enumerate(queries):
            q.timings["ransac"] = dt
            names = [self.index.names[c] for c in cands[i].tolist()]
            ok = bool(success[i])
            u, p, v = matches[i]
            j = int(best[i])
            fallback = self.reference.cam_from_world[int(cands[i, 0])]
            r = LocalizationResult(
                name=q.name, pose=pose[i] if ok else fallback,
                success=ok, reason="ok" if ok else "no-candidate", retrieved=names,
                reference=names[j] if ok else None, num_matches=int(v[j].sum()),
                num_inliers=int(inliers[i].sum()) if ok else 0, timings=q.timings,
            )  # fmt: skip
            if ok:
                sel = v[j]
                r.matches = self._to_original(u[j][sel], q)
                r.points = p[j][sel]
                r.inliers = inliers[i][: v.shape[1]][sel]
            results.append(r)
        if self.config.refine:
            self._refine(queries, results, uv[rows], X[rows], pose, inliers)
        for r in results:
            r.pose = r.pose.to("cpu", torch.float64)
        return results

    def _to_original(self, uv: torch.Tensor, q: _Query) -> torch.Tensor:
        s = (q.work_camera.size.cpu() / q.camera.size.cpu()).to(uv)
        return (uv + 0.5) / s - 0.5

    def _refine(self, queries, results, uv, X, pose, inliers) -> None:
        """Feature-metric refinement of the successful queries, one query at a time.

        One at a time: batched, every query was padded to the most inliers and iterated until
        the slowest converged (2-7x slower on a CPU). The solver runs in float64 on the float32
        maps (sampled in float32): orthonormal poses, and results that do not depend on float32
        rounding.
        """
        scale = getattr(self.extractor, "kernel_scale", 0.1)
        for i, r in enumerate(results):
            if not r.success:
                continue
            t = time.perf_counter()
            inl = inliers[i]  # (n,)
            cap = self.config.refine_points
            if cap is not None and int(inl.sum()) > cap:  # a seeded random subset
                keep = inl.nonzero()[:, 0]
                gen = torch.Generator().manual_seed(self.config.seed)
                keep = keep[torch.randperm(keep.shape[0], generator=gen)[:cap]]
                inl = torch.zeros_like(inl).index_fill_(0, keep, True)
            pts, obs = X[i][inl][None], uv[i][inl][None]  # (1, m, 3), (1, m, 2)
            c = self.index.names.index(r.reference)
            keypoint = inl.nonzero()[:, 0]  # match j of a candidate is its keypoint j
            feats = [d.double()[keypoint][None] for d in self.index.descriptors[c]]
            q = queries[i]
            cam = q.work_camera.to(self.device, torch.float64)
            with torch.no_grad():
                out = refine_featuremetric(
                    q.pyramid, pts.to(self.device), [f.to(self.device) for f in feats],
                    cam, pose[i : i + 1].to(self.device, torch.float64),
                    max_iterations=self.config.refine_iterations, scale=scale,
                    options=LMOptions(cost_tolerance=self.config.refine_tolerance),
                )  # fmt: skip
            # keep the refined pose only where it still explains the RANSAC inliers
            p = out.pose.to("cpu", torch.float64)
            proj, ok = cam.to("cpu", torch.float64).project(p.transform(pts))
            limit = self.config.threshold_px / _threshold_scale(q.work_camera)
            kept = (((proj - obs).norm(dim=-1) < limit) & ok).sum()
            r.timings["refine"] = time.perf_counter() - t
            if bool(out.success[0]) and kept >= self.config.keep_inliers * pts.shape[1]:
                r.pose, r.refined = p[0], True
