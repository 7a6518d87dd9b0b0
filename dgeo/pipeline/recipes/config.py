"""The configuration of a training run: one flat dataclass, JSON / TOML files, resume rules.

A :class:`TrainConfig` holds everything that defines a run (data, model, optimisation, schedule,
seed) and the runtime knobs that may change between a run and its resumption (device, how often
to validate, checkpoint or log). It round-trips through plain JSON types (:meth:`to_dict`,
:meth:`from_dict`), which is how it is stored in ``OUT/config.json`` and inside checkpoints.

Files (``--config FILE``, JSON or TOML) hold the same keys at the top level, except that
``model`` may be a table of model constructor options (with an optional ``name``), e.g.::

    recipe = "gnnet"
    data = ["synthetic:street"]
    lr = 3e-4
    batch_size = 8

    [model]
    name = "unet"
    widths = [16, 32, 32, 64, 64]
    decoder_widths = [16, 32, 32, 64]
    dims = [16, 32, 32]
    strides = [1, 4, 16]

    [loss]          # options of the recipe's loss (e.g. GNNetLoss keyword arguments)
    gn = 0.1

    [data_options]  # extra keyword arguments of dgeo.data.pairs.build_dataset
    num_pairs = 256

Layering: :func:`resolve_config` starts from the defaults, applies the stored config of a
checkpoint being resumed, then the file, then the options given on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgeo.errors import InputError, ParseError, require_file

#: Learning-rate schedules (:func:`dgeo.pipeline.recipes.trainer.lr_factor`).
SCHEDULES = ("cosine", "onecycle", "constant")

#: Fields that may differ between a run and its resumption without breaking exactness (or that
#: only extend the run: ``epochs`` and ``steps`` re-stretch the schedule).
RUNTIME_FIELDS = frozenset(
    {
        "device",
        "val_every",
        "checkpoint_every",
        "log_every",
        "workers",
        "tensorboard",
        "keep_best",
        "epochs",
        "steps",
        "init_weights",
        "init_scoordnet",
        "init_oflownet",
    }
)
#: Fields that define the model; a resumed run checks the model itself (class and config of the
#: checkpoint's weights) instead of comparing these.
MODEL_FIELDS = frozenset(
    {"model", "model_config", "init_weights", "init_scoordnet", "init_oflownet"}
)


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
        recipe: the task, a key of :data:`dgeo.pipeline.recipes.RECIPES` (``gnnet``, ``pixloc``).
        data: training data specs (``synthetic:street``, ``colmap:MODEL:IMAGES``, ...); several
            are mixed (:func:`dgeo.data.pairs.build_dataset`).
        val_data: validation specs (split ``val``); None: the training specs' ``val`` split.
        model: extractor name, ``unet`` or ``vgg``.
        model_config: constructor options of the extractor, over the recipe's defaults.
        init_weights: initial weights: a dgeo model file (``unet``) or a VGG-16 checkpoint
            (``vgg``); never downloaded.
        epochs: passes over the training data (ignored when ``steps`` is set).
        steps: total optimiser steps; None: ``epochs`` times the batches of an epoch.
        batch_size: pairs per step and per process.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay.
        schedule: ``cosine`` (decay to ``min_lr_ratio * lr``), ``onecycle`` (rise over 30 % of the
            steps from ``lr / 25``, then cosine decay to ``lr / 1e4``) or ``constant``.
        warmup: steps of linear warm-up from 0 (multiplies the schedule).
        min_lr_ratio: final learning rate of ``cosine`` relative to ``lr``.
        clip: gradient-norm clipping threshold (0 disables).
        amp: mixed precision (float16 autocast + GradScaler) when training on CUDA; never on CPU.
        seed: seeds the data order, the global RNGs and the sampling of the data sets.
        height, width: image size of the pairs (resized / padded by the data sets).
        num_points: correspondences per pair.
        val_pairs: validation pairs used (the first ones of the val split); 0: all.
        val_every: validate every N steps (0: only at the end).
        checkpoint_every: write ``checkpoint.pt`` every N steps (0: only at the end).
        log_every: write averaged training statistics every N steps.
        keep_best: also write ``model_best.pt`` whenever the validation metric improves.
        tensorboard: also log to TensorBoard when ``torch.utils.tensorboard`` imports.
        workers: DataLoader worker processes.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        loss: options of the recipe's loss / task (see each recipe).
        data_options: extra keyword arguments of the data sets (e.g. ``num_pairs``,
            ``cache_dir``).
        input_folder: training sequence folders of the scene-coordinate recipes (``scoordnet``,
            ``oflownet``, ``kfnet``): KFNet folders or `dgeo synth` roots
            (:func:`dgeo.data.sequences.resolve_input_folder`).
        val_folder: their validation folders; None: frames of ``input_folder``.
        camera: camera of the sequence folders (:func:`dgeo.data.sequences.parse_camera`: a
            file, an inline ``"PINHOLE 640 480 525 525 320 240"``, ``"7scenes"``); None: each
            folder's ``camera.txt``.
        init_scoordnet, init_oflownet: model files of a trained SCoordNet / OFlowNet that
            ``kfnet`` fine-tunes (or that ``scoordnet`` / ``oflownet`` start from).
    """

    recipe: str = "gnnet"
    data: list[str] = field(default_factory=list)
    val_data: list[str] | None = None
    model: str = "unet"
    model_config: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None
    epochs: int = 10
    steps: int | None = None
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup: int = 0
    min_lr_ratio: float = 0.01
    clip: float = 1.0
    amp: bool = True
    seed: int = 0
    height: int = 240
    width: int = 320
    num_points: int = 512
    val_pairs: int = 64
    val_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 10
    keep_best: bool = True
    tensorboard: bool = True
    workers: int = 0
    device: str = "auto"
    loss: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    input_folder: list[str] = field(default_factory=list)
    val_folder: list[str] | None = None
    camera: str | None = None
    init_scoordnet: str | None = None
    init_oflownet: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first field with a bad value."""
        if isinstance(self.data, str):
            self.data = [self.data]
        self.data = [str(s) for s in self.data]
        if self.val_data is not None:
            self.val_data = [self.val_data] if isinstance(self.val_data, str) else self.val_data
            self.val_data = [str(s) for s in self.val_data]
        for name in ("input_folder", "val_folder"):
            value = getattr(self, name)
            if value is not None:
                value = [value] if isinstance(value, str) else value
                setattr(self, name, [str(s) for s in value])
        if self.input_folder is None:
            self.input_folder = []
        for name in ("camera", "init_scoordnet", "init_oflownet"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))
        for name in ("epochs", "batch_size", "height", "width", "num_points"):
            _positive_int(self, name)
        for name in ("warmup", "val_pairs", "val_every", "checkpoint_every", "workers", "seed"):
            _positive_int(self, name, allow_zero=True)
        _positive_int(self, "log_every")
        if self.steps is not None:
            _positive_int(self, "steps")
        for name in ("lr", "weight_decay", "clip", "min_lr_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"{name} must be a number, got {value!r}.")
            value = float(value)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise InputError(f"{name} must be a finite number >= 0 (lr > 0), got {value}.")
            setattr(self, name, value)
        if self.schedule not in SCHEDULES:
            raise InputError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}."
            )
        for name in ("model_config", "loss", "data_options"):
            if not isinstance(getattr(self, name), dict):
                raise InputError(f"{name} must be a table / dict, got {getattr(self, name)!r}.")
        for name in ("amp", "keep_best", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists, dicts, str, numbers, bool, None)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict of field values; unknown keys raise :class:`InputError` naming
        ``source``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(
                f"{source}: unknown option(s) {unknown}; the options are "
                f"{', '.join(sorted(names))}."
            )
        return cls(**values)

    def run_differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields (outside :data:`RUNTIME_FIELDS` and :data:`MODEL_FIELDS`) whose values differ:
        ``{name: (self, other)}``."""
        a, b = self.to_dict(), other.to_dict()
        skip = RUNTIME_FIELDS | MODEL_FIELDS
        return {k: (a[k], b[k]) for k in a if k not in skip and a[k] != b[k]}


def _positive_int(cfg: TrainConfig, name: str, allow_zero: bool = False) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and value.is_integer():
        value, ok = int(value), True
    if not ok or value < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else ">= 1"
        raise InputError(f"{name} must be an integer {bound}, got {getattr(cfg, name)!r}.")
    setattr(cfg, name, value)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options of a JSON (``.json``) or TOML (any other suffix) run file, as field values.

    A ``model`` table becomes ``model_config`` (its ``name`` key, if any, becomes ``model``).

    Raises:
        DataFileNotFoundError: ``path`` does not exist.
        ParseError: not valid JSON / TOML, or not a table at the top level.
    """
    path = require_file(path, "config file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParseError(path, exc.lineno, f"is not valid JSON: {exc.msg}.") from None
    else:
        try:
            import tomllib  # Python 3.11+
        except ModuleNotFoundError:
            raise InputError(
                f"{path}: TOML config files need Python 3.11 or newer; write it as JSON "
                "(a .json file)."
            ) from None
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ParseError(path, None, f"is not valid TOML: {exc}.") from None
    if not isinstance(values, dict):
        raise ParseError(path, None, "must hold a table (JSON object) of options at the top.")
    values = dict(values)
    model = values.get("model")
    if isinstance(model, dict):
        model = dict(model)
        name = model.pop("name", None)
        values.pop("model")
        if name is not None:
            values["model"] = name
        values["model_config"] = {**values.get("model_config", {}), **model}
    return values


def resolve_config(
    given: dict[str, Any],
    file: str | Path | None = None,
    stored: dict[str, Any] | None = None,
) -> TrainConfig:
    """Layer the sources of a run's configuration: defaults < ``stored`` < ``file`` < ``given``.

    Args:
        given: options given explicitly (e.g. on the command line; None values are ignored).
        file: a JSON / TOML run file (:func:`read_config_file`).
        stored: the config of the checkpoint being resumed (``TrainConfig.to_dict()``).
    Returns:
        the :class:`TrainConfig`. ``model_config``, ``loss`` and ``data_options`` merge key by
        key across the layers; other fields are replaced.
    """
    values: dict[str, Any] = {}
    layers: list[tuple[str, dict[str, Any]]] = []
    if stored:
        layers.append(("checkpoint config", stored))
    if file is not None:
        layers.append((str(file), read_config_file(file)))
    layers.append(("options", {k: v for k, v in given.items() if v is not None}))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for source, layer in layers:
        unknown = sorted(set(layer) - names)
        if unknown:
            raise InputError(
                f"{source}: unknown option(s) {unknown}; the options are "
                f"{', '.join(sorted(names))}."
            )
        for key, value in layer.items():
            if key in ("model_config", "loss", "data_options") and isinstance(value, dict):
                values[key] = {**values.get(key, {}), **value}
            else:
                values[key] = value
    return TrainConfig.from_dict(values)
