"""The contract between the generic :class:`~dgeo.pipeline.recipes.trainer.Trainer` and a recipe.

A recipe is a :class:`Task` subclass. The trainer owns everything generic (devices, seeding,
data order, DDP, AMP, optimiser and schedule, checkpoints, resume, logs, progress); the task
supplies only what is specific to what is learned:

- :meth:`Task.build_model`: the network (an ``nn.Module`` with a JSON ``config``);
- :meth:`Task.build_datasets`: the training and validation ``Dataset`` s;
- :meth:`Task.training_loss`: ``(model, batch, step) -> (loss, stats)``;
- :meth:`Task.validate`: ``(model, loader, step) -> metrics``;
- :meth:`Task.save_model`: the final model file.

New recipes (scene coordinates, optical flow, ...) subclass :class:`Task` and register in
:data:`dgeo.pipeline.recipes.RECIPES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from dgeo.errors import InputError
from dgeo.geometry import FeaturePyramid
from dgeo.pipeline.recipes.config import TrainConfig

Batch = dict[str, Any]


class Task:
    """A training recipe (see the module docstring).

    Attributes:
        name: the recipe's key in :data:`~dgeo.pipeline.recipes.RECIPES`.
        best_metric: the validation metric that selects ``model_best.pt``.
        best_mode: ``"min"`` or ``"max"``: which way ``best_metric`` improves.
        find_unused_parameters: passed to DistributedDataParallel. The trainer ties every model
            output into the loss with weight 0 under DDP, so parameters that reach the outputs
            always get gradients; set True only for models with parameters that reach none.
        config: the run's :class:`TrainConfig`.
    """

    name: ClassVar[str] = ""
    best_metric: ClassVar[str] = "loss"
    best_mode: ClassVar[str] = "min"
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def build_model(self) -> nn.Module:
        """The network to train (on the CPU; the trainer moves it)."""
        raise NotImplementedError

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """``(train, val)``; the default reads ``config.data`` / ``config.val_data`` with
        :func:`dgeo.data.pairs.build_dataset` (val: the first ``val_pairs`` of split ``val``)."""
        return build_pair_datasets(self.config)

    def collate_fn(self) -> Callable[[Any], Batch] | None:
        """The collate function of the training loader (None: torch's ``default_collate``).

        A training set whose ``__getitems__(indices)`` returns a whole batch at once (e.g. ACE's
        feature buffer, gathered by one indexing operation instead of thousands of items)
        pairs with :func:`identity_collate`.
        """
        return None

    def parameter_groups(self, model: nn.Module) -> Iterable[Any]:
        """What AdamW optimises (default: every parameter that requires grad)."""
        return [p for p in model.parameters() if p.requires_grad]

    def training_loss(
        self, model: nn.Module, batch: Batch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss of ``batch`` (tensors on the model's device) and statistics."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable[Batch], step: int) -> dict[str, float]:
        """Metrics over the validation ``loader`` (batches already on the model's device;
        the model in eval mode, gradients off, RNGs seeded and restored by the trainer)."""
        raise NotImplementedError

    def save_model(self, model: nn.Module, path: str | Path) -> Path:
        """Write the trained model (default :func:`dgeo.models.save`)."""
        from dgeo.models import save

        return save(model, path)


def identity_collate(batch: Any) -> Any:
    """A collate function that returns what the data set's ``__getitems__`` gave (a finished
    batch); see :meth:`Task.collate_fn`."""
    return batch


def build_pair_datasets(config: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """Training and validation pair datasets of ``config`` (:mod:`dgeo.data.pairs`).

    Returns:
        ``(train, val)``: split ``train`` of ``config.data``; split ``val`` of
        ``config.val_data`` (default ``config.data``) limited to its first ``val_pairs`` items
        (all when 0).
    """
    from dgeo.data.pairs import build_dataset

    if not config.data:
        raise InputError("no training data: give at least one --data SPEC (e.g. synthetic:street).")
    common = {
        "height": config.height,
        "width": config.width,
        "num_points": config.num_points,
        "seed": config.seed,
        **config.data_options,
    }
    train = build_dataset(config.data, split="train", **common)
    val = build_dataset(config.val_data or config.data, split="val", **common)
    if config.val_pairs and len(val) > config.val_pairs:
        val = Subset(val, range(config.val_pairs))
    return train, val


def prerender(dataset: Dataset, progress: Callable[[int, int], None] | None = None) -> None:
    """Fill the caches of the data sets inside ``dataset`` that have a ``prerender`` method
    (rendered synthetic pairs: in scene order, each scene built once, onto their disk cache),
    looking through :class:`~torch.utils.data.Subset` and mixed data sets (``parts``).

    Args:
        dataset: a training or validation data set.
        progress: ``progress(done, total)`` over the items to prepare.
    """
    from dgeo.data.pairs import MixedPairs

    jobs: list[tuple[Any, list[int] | None]] = []

    def walk(ds: Any, indices: list[int] | None) -> None:
        if isinstance(ds, Subset):
            inner = list(ds.indices) if indices is None else [ds.indices[i] for i in indices]
            walk(ds.dataset, inner)
        elif isinstance(ds, MixedPairs):
            ends = torch.tensor([len(p) for p in ds.parts]).cumsum(0).tolist()
            for part, lo, hi in zip(ds.parts, [0, *ends[:-1]], ends, strict=True):
                sub = None if indices is None else [i - lo for i in indices if lo <= i < hi]
                if sub is None or sub:
                    walk(part, sub)
        elif hasattr(ds, "prerender"):
            jobs.append((ds, indices))

    walk(dataset, None)
    total = sum(len(ds) if idx is None else len(idx) for ds, idx in jobs)
    done = 0
    for ds, idx in jobs:
        report = None if progress is None else (lambda _s, d, _n, b=done: progress(b + d, total))
        ds.prerender(idx, report)
        done += len(ds) if idx is None else len(idx)


#: The extractors that can be trained, and their default options for training.
TRAINABLE = {"unet": {}, "vgg": {"hypercolumn": False}}


def build_extractor(config: TrainConfig, defaults: dict[str, Any] | None = None) -> nn.Module:
    """The dense extractor of a run: ``config.model`` built with ``defaults`` then
    ``config.model_config``, initialised from ``config.init_weights``.

    ``unet``: :class:`~dgeo.models.UNetPyramid`; ``init_weights`` is a dgeo model file of a
    U-Net, whose architecture it defines (options of ``model_config`` must agree with it).
    ``vgg``: :class:`~dgeo.models.VGGHypercolumn` with ``hypercolumn=False`` (one level per tap,
    the gn_net layout); ``init_weights`` is a VGG-16 checkpoint (torchvision or S2DHM keys).

    Raises:
        InputError: a model that cannot be trained, unknown options, or ``init_weights`` of
            another architecture.
        DataFileNotFoundError, ParseError: ``init_weights`` missing or unreadable.
    """
    from dgeo.models import build, load, load_vgg16_weights

    name = config.model
    if name not in TRAINABLE:
        raise InputError(f"model {name!r} cannot be trained; choose one of {', '.join(TRAINABLE)}.")
    options = {**TRAINABLE[name], **(defaults or {}), **config.model_config}
    if name == "unet" and config.init_weights:
        model = load(config.init_weights)
        if type(model).__name__ != "UNetPyramid":
            raise InputError(
                f"--init-weights {config.init_weights} holds a {type(model).__name__}, not a "
                "UNetPyramid; pass a U-Net written by dgeo.models.save (e.g. a model.pt of "
                "`dgeo train`)."
            )
        clash = {
            k: (v, model.config.get(k))
            for k, v in config.model_config.items()
            if k != "seed" and model.config.get(k) != v
        }
        if clash:
            raise InputError(
                f"--init-weights {config.init_weights} defines the U-Net, but the model options "
                f"disagree with it: {clash} (option, file); drop them from --config."
            )
        return model
    model = build(name, **options)
    if name == "vgg" and config.init_weights:
        load_vgg16_weights(model, config.init_weights)
    return model


class ModelForward(nn.Module):
    """Runs an extractor under autocast (if enabled) and returns a float32 pyramid.

    The trainer wraps the model in this module (and DDP around it), so losses always see float32
    maps whatever the precision of the network. ``last_outputs`` keeps the tensors of the last
    call (the trainer ties them into the loss under DDP).
    """

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        self.amp_dtype = amp_dtype
        self.last_outputs: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> FeaturePyramid:
        """``images (B, 3, H, W)`` -> the model's :class:`FeaturePyramid`, float32."""
        if self.amp_dtype is not None:
            with torch.autocast(images.device.type, dtype=self.amp_dtype):
                out = self.model(images)
        else:
            out = self.model(images)
        if isinstance(out, FeaturePyramid):
            out = out.map(lambda x: x.float())
            self.last_outputs = [
                t
                for lvl in out.levels
                for t in (lvl.features, lvl.confidence)
                if t is not None and t.requires_grad
            ]
        return out


def pair_pyramids(model: nn.Module, batch: Batch) -> tuple[FeaturePyramid, FeaturePyramid]:
    """Pyramids of ``batch["image_a"]`` and ``batch["image_b"]`` (each ``(B, 3, H, W)``) from
    one forward pass over both (DDP needs one forward per backward)."""
    a, b = batch["image_a"], batch["image_b"]
    pyr = model(torch.cat([a, b], 0))
    n = a.shape[0]
    return pyr.select(slice(0, n)), pyr.select(slice(n, 2 * n))
