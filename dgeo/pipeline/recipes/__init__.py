"""Training recipes on one generic trainer (what ``dgeo train`` runs).

- :class:`TrainConfig` (:mod:`.config`): a run's options; JSON / TOML files; resume layering.
- :class:`Task` (:mod:`.base`): the recipe contract (model, datasets, loss, validation);
  :class:`GNNetTask` (:mod:`.gnnet`), :class:`PixLocTask` (:mod:`.pixloc`); scene
  coordinates on KFNet sequence folders: :class:`ScoordnetTask` (:mod:`.scoordnet`),
  :class:`OflownetTask` (:mod:`.oflownet`), :class:`KfnetTask` (:mod:`.kfnet`).
- :class:`Trainer` (:mod:`.trainer`): seeded data order, AdamW + schedules, AMP, clipping,
  DDP under ``torchrun``, validation, exact resume from atomic checkpoints
  (:mod:`.checkpoint`), ``metrics.csv`` / TensorBoard (:mod:`.logs`).
- :func:`train`: build the recipe of a config and run it.
"""

from __future__ import annotations

from pathlib import Path

from dgeo.errors import InputError
from dgeo.pipeline.recipes.ace import ACETask
from dgeo.pipeline.recipes.base import Task, build_extractor, pair_pyramids
from dgeo.pipeline.recipes.checkpoint import load_checkpoint
from dgeo.pipeline.recipes.config import TrainConfig, read_config_file, resolve_config
from dgeo.pipeline.recipes.gnnet import GNNetTask
from dgeo.pipeline.recipes.kfnet import KfnetTask
from dgeo.pipeline.recipes.logs import read_metrics
from dgeo.pipeline.recipes.oflownet import OflownetTask
from dgeo.pipeline.recipes.pixloc import PixLocTask
from dgeo.pipeline.recipes.scoordnet import ScoordnetTask
from dgeo.pipeline.recipes.trainer import (
    Echo,
    EpochBatchSampler,
    Progress,
    Trainer,
    TrainResult,
    lr_factor,
    resolve_device,
)

#: The recipes ``dgeo train`` knows, by name.
RECIPES: dict[str, type[Task]] = {
    "gnnet": GNNetTask,
    "pixloc": PixLocTask,
    "scoordnet": ScoordnetTask,
    "oflownet": OflownetTask,
    "kfnet": KfnetTask,
    "ace": ACETask,
}

__all__ = [
    "RECIPES",
    "ACETask",
    "EpochBatchSampler",
    "GNNetTask",
    "KfnetTask",
    "OflownetTask",
    "PixLocTask",
    "ScoordnetTask",
    "Task",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_extractor",
    "load_checkpoint",
    "lr_factor",
    "make_task",
    "pair_pyramids",
    "read_config_file",
    "read_metrics",
    "resolve_config",
    "resolve_device",
    "train",
]


def make_task(config: TrainConfig) -> Task:
    """The :class:`Task` of ``config.recipe``."""
    if config.recipe not in RECIPES:
        raise InputError(f"unknown recipe {config.recipe!r}; choose one of {', '.join(RECIPES)}.")
    return RECIPES[config.recipe](config)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    echo: Echo | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``config``'s recipe into ``out_dir`` (see :class:`Trainer`)."""
    trainer = Trainer(make_task(config), out_dir, resume=resume, progress=progress, echo=echo)
    return trainer.fit(stop_after=stop_after)
