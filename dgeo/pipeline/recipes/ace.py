"""The ACE recipe: ``dgeo train ace --input-folder DIR --out DIR`` (ALGORITHMS 2.11).

Maps sequences with known poses on the generic
:class:`~dgeo.pipeline.recipes.trainer.Trainer`. Each ``config.input_folder`` entry contributes
its first sequence folder (:func:`dgeo.data.sequences.resolve_input_folder`: a KFNet folder
itself, or the reference condition of a ``dgeo synth`` root) to the mapping frames; cameras come
from each folder's ``camera.txt`` or ``config.camera``.

- **model** (:class:`dgeo.models.ace.ACEModel`): ``config.model`` names the frozen extractor
  (``default``: the shipped U-Net, the default; ``dense-sift``, ``unet``, ``vgg``);
  ``config.model_config`` holds its options plus the ACEModel keys ``head``
  (:class:`~dgeo.models.ace.ACEHead` options), ``levels`` and ``sigma``;
  ``config.init_weights`` may give a dgeo model file of the extractor instead. The head's
  ``mean`` is the mean centre of the mapping cameras.
- **training set**: the :class:`~dgeo.pipeline.scr.ace.ACEBuffer`, every mapping frame encoded
  once (kept on the CPU; batches are gathered by one indexing operation through
  :meth:`Task.collate_fn`), so an epoch is one pass over the buffer's cells and
  ``batch_size`` counts cells (ACE: 5120).
- **loss**: :func:`~dgeo.pipeline.scr.ace.ace_loss` with the threshold schedule over the run's
  steps.
- **validation**: RANSAC poses (:func:`~dgeo.pipeline.scr.ace.evaluate_frames`) of frames not
  mapped: every ``holdout``-th frame of each mapped folder (index ``i % holdout == 1``) and the
  frames of ``config.val_folder`` (default: the other sequences of the input roots, e.g. the
  other conditions of a ``dgeo synth`` root); without any, the mapping frames themselves. At
  most ``config.val_pairs`` evenly spaced frames per source. Metrics: ``pct_5cm_5deg``
  (selects ``model_best.pt``), ``median_cm``, ``median_deg`` over all of them and
  ``pct_5cm_5deg_<source>`` per source.

Options in ``config.loss`` (:data:`ACETask.OPTIONS`): ``samples_per_image`` (1024), ``passes``
(1), ``augment`` (false, true or a table of :class:`~dgeo.pipeline.scr.ace.ACEAugment` ranges),
``depth_target`` (10 m; about the scene's size for small scenes), ``soft_clamp`` (50),
``soft_clamp_min`` (1), ``holdout`` (0: none), ``threshold_px`` (10, RANSAC).
:data:`ACE_DEFAULTS` are the run options ``dgeo train ace`` starts from (batch 5120, AdamW at
5e-3 with the one-cycle schedule, 16 epochs, no clipping, validation at the end).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from dgeo.errors import InputError
from dgeo.geometry import Pose
from dgeo.pipeline.recipes.base import Batch, Task, identity_collate

#: Run options of ``dgeo train ace`` that differ from :class:`TrainConfig`'s defaults (ACE's).
ACE_DEFAULTS: dict[str, Any] = {
    "recipe": "ace",
    "model": "default",
    "batch_size": 5120,
    "lr": 5e-3,
    "schedule": "onecycle",
    "epochs": 16,
    "clip": 0.0,
    "weight_decay": 0.01,
    "val_every": 0,
    "checkpoint_every": 0,
}

#: ACEModel keys allowed in ``config.model_config`` besides the extractor's options.
_MODEL_KEYS = ("head", "levels", "sigma")


class _Indices(Dataset):
    """Validation items ``{"source": k, "index": i}``: the task loads the frames itself."""

    def __init__(self, items: list[tuple[int, int]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, int]:
        s, j = self.items[i]
        return {"source": s, "index": j}


class ACETask(Task):
    """ACE mapping on the generic trainer (see the module docstring)."""

    name = "ace"
    best_metric: ClassVar[str] = "pct_5cm_5deg"
    best_mode: ClassVar[str] = "max"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "samples_per_image": 1024,
        "passes": 1,
        "augment": False,
        "depth_target": 10.0,
        "soft_clamp": 50.0,
        "soft_clamp_min": 1.0,
        "holdout": 0,
        "threshold_px": 10.0,
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        unknown = sorted(set(config.loss) - set(self.OPTIONS))
        if unknown:
            raise InputError(
                f"unknown ACE option(s) {unknown} in the config's [loss] table; the options are "
                f"{', '.join(self.OPTIONS)}."
            )
        self.options = {**self.OPTIONS, **config.loss}
        holdout = self.options["holdout"]
        if not isinstance(holdout, int) or holdout < 0 or holdout == 1:
            raise InputError(f"holdout must be 0 (none) or an integer >= 2, got {holdout!r}.")
        self._mapping: list[Any] | None = None
        self._val: list[Any] = []
        self._model: nn.Module | None = None
        self._num_samples = 0
        self._total: int | None = None

    # ------------------------------------------------------------------------------ data
    def _open(self) -> None:
        """Open the mapping and validation folders (once)."""
        if self._mapping is not None:
            return
        from dgeo.data.sequences import SequenceFolder, resolve_input_folder

        cfg = self.config
        paths = list(cfg.input_folder or [])
        if not paths:
            raise InputError(
                "dgeo train ace needs --input-folder DIR: a sequence folder with poses.txt "
                "(and camera.txt or --camera), or a `dgeo synth` root (its reference sequence "
                "is mapped, the other conditions validate)."
            )
        mapping, others = [], []
        for path in paths:
            found = resolve_input_folder(path)
            mapping.append(found[0])
            others += found[1:]
        if cfg.val_folder:
            others = [p for v in cfg.val_folder for p in resolve_input_folder(v)]

        def open_folder(p: Path) -> Any:
            return SequenceFolder(p, cfg.camera, require_labels=False)

        self._mapping = [open_folder(p) for p in mapping]
        for f in self._mapping:
            if f.poses is None:
                raise InputError(
                    f"{f.root} has no poses.txt (or *.pose.txt): ACE maps from known camera poses."
                )
        sizes = {f.image_size for f in self._mapping}
        if len(sizes) > 1:
            raise InputError(f"the mapping folders have different image sizes: {sorted(sizes)}.")
        self._val = [open_folder(p) for p in others]

    def mapping_folders(self) -> list[Any]:
        """The mapped :class:`~dgeo.data.sequences.SequenceFolder` s: the first folder of each
        ``--input-folder``."""
        self._open()
        return list(self._mapping)

    def mapping_indices(self) -> list[int]:
        """Frames of the concatenated mapping folders used for mapping (all but the
        held-out ones: index ``i % holdout == 1`` within each folder)."""
        k, out, start = self.options["holdout"], [], 0
        for f in self.mapping_folders():
            out += [start + i for i in range(len(f)) if not (k and i % k == 1)]
            start += len(f)
        return out

    def validation_sets(self) -> list[tuple[str, Any, list[int]]]:
        """``(label, folder, frame indices)`` of every validation source: the held-out frames
        of each mapping folder, then every validation folder with poses (without either: the
        mapping frames themselves), each limited to ``config.val_pairs`` evenly spaced frames
        (0: all)."""
        self._open()
        k, m = self.options["holdout"], int(self.config.val_pairs)
        sets = []
        if k:
            for f in self._mapping:
                sets.append((f"{f.root.name}-holdout", f, list(range(1, len(f), k))))
        sets += [(f.root.name, f, list(range(len(f)))) for f in self._val if f.poses is not None]
        if not sets:
            sets = [(f"{f.root.name}-mapping", f, list(range(len(f)))) for f in self._mapping]
        out = []
        for label, f, idx in sets:
            if m > 0 and len(idx) > m:
                step = len(idx) / m
                idx = [idx[int(j * step)] for j in range(m)]
            out.append((label, f, idx))
        return out

    # ------------------------------------------------------------------------------ contract
    def build_model(self) -> nn.Module:
        from dgeo.models.ace import ACEModel

        cfg = self.config
        options = dict(cfg.model_config)
        model_kw = {k: options.pop(k) for k in _MODEL_KEYS if k in options}
        name, init = cfg.model, None
        if cfg.init_weights:
            from dgeo.models import DenseExtractor, load

            init = load(cfg.init_weights)
            if not isinstance(init, DenseExtractor) or not getattr(init, "name", ""):
                raise InputError(
                    f"--init-weights {cfg.init_weights} holds a {type(init).__name__}, not a "
                    "dense extractor; pass a model file of dgeo train gnnet / pixloc."
                )
            if options:
                raise InputError(
                    f"--init-weights {cfg.init_weights} defines the extractor; drop its options "
                    f"{sorted(options)} from the model table."
                )
            name, options = init.name, dict(init.config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = ACEModel(name, options, **model_kw)
        if init is not None:
            model.extractor.load_state_dict(init.state_dict())
        poses = Pose.cat([f.poses.to(torch.float64) for f in self.mapping_folders()])
        poses = poses[torch.tensor(self.mapping_indices())]
        model.head.set_mean(poses.center().float().mean(0))
        self._model = model
        return model

    def parameter_groups(self, model: nn.Module) -> Iterable[Any]:
        return [p for p in model.head.parameters() if p.requires_grad]

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        from dgeo.pipeline.scr.ace import ACEAugment, build_buffer

        if self._model is None:
            raise InputError("ACETask.build_datasets needs build_model() first.")
        aug = self.options["augment"]
        if isinstance(aug, dict):
            try:
                aug = ACEAugment(**aug)
            except TypeError as exc:
                raise InputError(f"bad augment table in [loss]: {exc}") from None
        buffer = build_buffer(
            self._model,
            self.mapping_folders(),
            indices=self.mapping_indices(),
            samples_per_image=int(self.options["samples_per_image"]),
            passes=int(self.options["passes"]),
            augment=aug,
            seed=self.config.seed,
        ).to("cpu")
        self._num_samples, self._total = len(buffer), None
        items = [(s, i) for s, (_, _, idx) in enumerate(self.validation_sets()) for i in idx]
        return buffer, (_Indices(items) if items else None)

    def collate_fn(self):
        return identity_collate

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        from dgeo.pipeline.recipes.trainer import batches_per_epoch
        from dgeo.pipeline.scr.ace import ace_loss, soft_clamp_schedule

        cfg = self.config
        if self._total is None:  # the trainer's run length, for the threshold schedule
            world = 1
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                world = torch.distributed.get_world_size()
            nb = batches_per_epoch(self._num_samples, cfg.batch_size, world)
            self._total = cfg.steps if cfg.steps is not None else cfg.epochs * nb
        pred = model(batch["features"])
        tau = soft_clamp_schedule(
            step, self._total, self.options["soft_clamp"], self.options["soft_clamp_min"]
        )
        return ace_loss(
            pred.float(), Pose(batch["pose"].float()), batch["rays"], batch["focal"], tau,
            depth_target=float(self.options["depth_target"]),
        )  # fmt: skip

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable[Batch], step: int) -> dict[str, float]:
        from dgeo.pipeline.scr.ace import evaluate_frames

        ace = getattr(model, "model", model)
        wanted: dict[int, list[int]] = {}
        for batch in loader:
            for s, i in zip(batch["source"].tolist(), batch["index"].tolist(), strict=True):
                wanted.setdefault(s, []).append(i)
        sets = self.validation_sets()
        e_t, e_R, out = [], [], {}
        for s, idx in sorted(wanted.items()):
            label, folder, _ = sets[s]
            r = evaluate_frames(
                ace, folder, indices=idx, threshold_px=float(self.options["threshold_px"]),
                seed=self.config.seed,
            )  # fmt: skip
            out[f"pct_5cm_5deg_{label}"] = r["pct_5cm_5deg"]
            e_t.append(r["e_t"])
            e_R.append(r["e_R"])
        if not e_t:
            return out
        from dgeo.eval.metrics import median

        et, eR = torch.cat(e_t), torch.cat(e_R)
        out["pct_5cm_5deg"] = 100.0 * float(((et <= 0.05) & (eR <= 5.0)).double().mean())
        out["median_cm"] = 100.0 * float(median(et))
        out["median_deg"] = float(median(eR))
        return out

    def save_model(self, model: nn.Module, path: str | Path) -> Path:
        from dgeo.models import save

        return save(model, path)
