"""The generic trainer: one loop for every recipe, with exact resume and torchrun DDP.

:class:`Trainer` runs a :class:`~dgeo.pipeline.recipes.base.Task` for ``config.steps`` optimiser
steps (or ``config.epochs`` passes over the data):

- **Data order.** Epoch ``e`` visits the training set in the permutation drawn from
  ``(seed, e)`` (:class:`EpochBatchSampler`); under ``torchrun`` rank ``r`` of ``K`` takes every
  ``K``-th index of it (DistributedSampler's sharding, padded by wrapping so every rank gets the
  same number of full batches). The data sets' own randomness depends on ``(seed, index,
  epoch)`` (``set_epoch``), so the batches of a step never depend on what ran before.
- **Optimisation.** AdamW, :func:`lr_factor` schedules (cosine, one-cycle, constant) with an
  optional linear warm-up, gradient-norm clipping, float16 autocast + GradScaler on CUDA (off on
  the CPU); a step whose gradient norm is not finite is skipped (and counted).
- **Checkpoints** (:mod:`~dgeo.pipeline.recipes.checkpoint`) every ``checkpoint_every`` steps and
  at the end: model, optimiser, scheduler, scaler, step, epoch, batches done in the epoch, the
  RNG states of every rank and the config, written atomically by rank 0. ``resume`` restores all
  of it and skips the batches already done, so ``k`` steps + resume to ``n`` give the weights of
  ``n`` uninterrupted steps bit for bit (on the CPU; same device and world size).
- **Validation** every ``val_every`` steps and at the end, on rank 0 only (the other ranks wait),
  with the RNGs seeded from ``seed`` and restored afterwards, so validating never changes the
  training run.
- **Logs**: :class:`~dgeo.pipeline.recipes.logs.MetricsLog` (``metrics.csv``, TensorBoard),
  ``config.json``, the ``progress(stage, done, total)`` callback and ``echo(message)`` lines, on
  rank 0.

Files in ``out_dir``: ``config.json``, ``checkpoint.pt``, ``metrics.csv``, ``model.pt`` (the
final model, :meth:`Task.save_model`), ``model_best.pt`` (``keep_best``), ``tensorboard/``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from dgeo.errors import InputError
from dgeo.io.atomic import atomic_write_text
from dgeo.pipeline.distributed import (
    barrier,
    finalize,
    gather_objects,
    init_distributed,
)
from dgeo.pipeline.recipes.base import Batch, ModelForward, Task, prerender
from dgeo.pipeline.recipes.checkpoint import (
    check_model,
    load_checkpoint,
    model_entry,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dgeo.pipeline.recipes.config import TrainConfig
from dgeo.pipeline.recipes.logs import MetricsLog

Progress = Callable[[str, int, int], None]
#: The files a run writes into its folder (besides ``tensorboard/``).
OUTPUT_FILES = ("config.json", "checkpoint.pt", "metrics.csv", "model.pt", "model_best.pt")
Echo = Callable[[str], None]


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` (``cuda:LOCAL_RANK``) or ``cuda:N``.

    Raises:
        InputError: an unknown spec, or CUDA asked for but not available.
    """
    spec = str(spec).strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {spec} but this torch sees no CUDA device; use --device cpu or auto."
            )
        if spec == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        try:
            return torch.device(spec)
        except RuntimeError:
            pass
    raise InputError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N.")


def lr_factor(
    step: int, total: int, schedule: str, warmup: int = 0, min_ratio: float = 0.01
) -> float:
    """Learning-rate multiplier at ``step`` (0-based) of ``total``.

    ``cosine``: from 1 down to ``min_ratio`` (half a cosine); ``onecycle``: cosine rise from
    1/25 to 1 over the first 30 % of the steps, cosine decay to 1e-4 over the rest (the shape of
    :class:`torch.optim.lr_scheduler.OneCycleLR`); ``constant``: 1. A linear warm-up over the
    first ``warmup`` steps multiplies the schedule.
    """
    total = max(int(total), 1)
    t = min(max(step, 0), total) / total
    if schedule == "constant":
        f = 1.0
    elif schedule == "cosine":
        f = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    elif schedule == "onecycle":
        peak, start, end = 0.3, 1 / 25, 1e-4
        if t < peak:
            f = start + (1 - start) * 0.5 * (1 - math.cos(math.pi * t / peak))
        else:
            f = end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (t - peak) / (1 - peak)))
    else:
        raise InputError(f"unknown schedule {schedule!r}.")
    if warmup > 0 and step < warmup:
        f *= (step + 1) / (warmup + 1)
    return f


def batches_per_epoch(num_items: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches each rank runs per epoch: ``ceil(n / K) // batch_size``, at least 1 (a data
    set smaller than one batch per rank is repeated)."""
    if num_items < 1:
        raise InputError("the training data set is empty.")
    per_rank = -(-num_items // world_size)
    return max(1, per_rank // batch_size)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s permutation."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**62)


class EpochBatchSampler(Sampler[list[int]]):
    """This rank's batches of one epoch, starting after ``start`` batches.

    The epoch's order is ``torch.randperm(n)`` drawn from :func:`epoch_seed` ``(seed, epoch)``,
    repeated to ``batches * batch_size * K`` indices; rank ``r`` takes ``order[r::K]`` and cuts
    it into ``batches`` batches (:func:`batches_per_epoch`).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        self.batches = batches_per_epoch(num_items, batch_size, world_size)
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(num_items, generator=gen)
        need = self.batches * batch_size * world_size
        order = order.repeat(-(-need // num_items))[:need]
        self.indices = order[rank::world_size].view(self.batches, batch_size)
        self.start = min(max(int(start), 0), self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(self.start, self.batches):
            yield self.indices[i].tolist()

    def __len__(self) -> int:
        return self.batches - self.start


def move_batch(batch: Batch, device: torch.device) -> Batch:
    """Tensors of ``batch`` on ``device`` (others, e.g. names, as they are)."""
    nb = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did.

    Attributes:
        step: optimiser steps done in total (including those before a resume).
        total_steps: the run's length.
        epoch: the epoch the next step belongs to.
        finished: the run reached ``total_steps`` (False when stopped by ``stop_after``).
        resumed_from: the step of the checkpoint the run resumed from (None: fresh start).
        metrics: the last validation metrics (empty if none ran).
        best: ``{"metric", "value", "step"}`` of the best validation so far.
        seconds: wall time of this call's training loop.
        seconds_per_step: mean wall time of this call's steps (data, forward, backward and
            optimiser; validation and checkpoints excluded).
        skipped_steps: steps skipped for a non-finite gradient.
        out_dir: the run folder.
    """

    step: int
    total_steps: int
    epoch: int
    finished: bool
    resumed_from: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    skipped_steps: int = 0
    out_dir: Path | None = None


class Trainer:
    """Trains ``task`` into ``out_dir`` (see the module docstring).

    Args:
        task: the recipe; its ``config`` is the run's :class:`TrainConfig`.
        out_dir: the run folder (created).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists (a fresh start if it does
            not). Without ``resume`` an existing checkpoint is an error, never overwritten.
        progress: ``progress(stage, done, total)`` callback (rank 0), e.g.
            :func:`dgeo.progress.stage_progress`.
        echo: receives one-line messages (rank 0), e.g. ``print``.
    """

    def __init__(
        self,
        task: Task,
        out_dir: str | Path,
        *,
        resume: bool = False,
        progress: Progress | None = None,
        echo: Echo | None = None,
    ) -> None:
        self.task = task
        self.config: TrainConfig = task.config
        self.out_dir = Path(out_dir)
        self.resume = bool(resume)
        self._progress = progress
        self._echo = echo
        self.checkpoint_path = self.out_dir / "checkpoint.pt"

    # ------------------------------------------------------------------------------ helpers
    def _say(self, message: str) -> None:
        if self._echo is not None and self.ctx.is_main:
            self._echo(message)

    def _show(self, stage: str, done: int, total: int) -> None:
        if self._progress is not None and self.ctx.is_main:
            self._progress(stage, done, total)

    def _seed(self) -> None:
        seed = self.config.seed * 1_000 + self.ctx.rank
        torch.manual_seed(seed)
        random.seed(seed)

    # ------------------------------------------------------------------------------ fit
    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train until ``config.steps`` (or ``epochs``) steps are done, or until step
        ``stop_after`` (then a checkpoint is written and the run can be resumed).

        Returns:
            :class:`TrainResult` (on every rank).
        Raises:
            InputError: a checkpoint exists without ``resume``, or the resumed run's options
                differ from the checkpoint's; bad config values.
            ParseError: ``checkpoint.pt`` is not a training checkpoint, or one of another model.
        """
        cfg = self.config
        self.ctx = init_distributed(device=_device_hint(cfg.device))
        try:
            return self._fit(stop_after)
        finally:
            finalize(self.ctx)

    def _fit(self, stop_after: int | None) -> TrainResult:
        cfg, ctx, task = self.config, self.ctx, self.task
        device = resolve_device(cfg.device, ctx.local_rank)
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out_dir, OUTPUT_FILES)
        exists = self.checkpoint_path.exists()
        if exists and not self.resume:
            raise InputError(
                f"{self.checkpoint_path} already exists; pass --resume to continue that run, or "
                "choose another --out folder."
            )
        self._seed()
        model = task.build_model().to(device)
        train_set, val_set = task.build_datasets()
        if ctx.is_main:  # render / cache expensive items once, in the order that is cheap
            prerender(train_set, lambda d, n: self._show("prepare data", d, n))
            if val_set is not None:
                prerender(val_set, lambda d, n: self._show("prepare validation", d, n))
        barrier(ctx)
        nb = batches_per_epoch(len(train_set), cfg.batch_size, ctx.world_size)
        total = cfg.steps if cfg.steps is not None else cfg.epochs * nb
        use_amp = cfg.amp and device.type == "cuda"

        optimizer = torch.optim.AdamW(
            task.parameter_groups(model), lr=cfg.lr, weight_decay=cfg.weight_decay
        )

        def factor(step: int) -> float:
            return lr_factor(step, total, cfg.schedule, cfg.warmup, cfg.min_lr_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
        step, epoch, in_epoch = 0, 0, 0
        best: dict[str, Any] = {"metric": task.best_metric, "value": None, "step": 0}
        resumed_from = None
        if exists:
            ckpt = load_checkpoint(self.checkpoint_path)
            check_model(ckpt, model, self.checkpoint_path)
            stored = TrainConfig.from_dict(ckpt["config"], str(self.checkpoint_path))
            diffs = cfg.run_differences(stored)
            if diffs:
                listed = "; ".join(f"{k}: {a!r} (checkpoint: {b!r})" for k, (a, b) in diffs.items())
                raise InputError(
                    f"--resume continues the run in {self.checkpoint_path}, but these options "
                    f"differ from it: {listed}. Drop them, or start a new run in another --out."
                )
            if ckpt.get("recipe") not in (None, task.name):
                raise InputError(
                    f"{self.checkpoint_path} is a {ckpt.get('recipe')} run, not {task.name}."
                )
            model.load_state_dict(ckpt["model"]["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            step, epoch = int(ckpt["step"]), int(ckpt["epoch"])
            in_epoch = int(ckpt["batch_in_epoch"])
            best = dict(ckpt.get("best") or best)
            old_world = int(ckpt.get("world_size", 1))
            rngs = ckpt.get("rng") or []
            if old_world == ctx.world_size and len(rngs) == ctx.world_size:
                set_rng_state(rngs[ctx.rank])
            else:  # same global position in the epoch, fresh RNG streams
                in_epoch = in_epoch * old_world // ctx.world_size
                self._say(
                    f"note: the checkpoint was written by {old_world} process(es), this run has "
                    f"{ctx.world_size}: the data position is kept, random streams are not."
                )
            if in_epoch >= nb:
                epoch, in_epoch = epoch + 1, 0
            resumed_from = step
            self._say(f"resumed from {self.checkpoint_path} at step {step} (epoch {epoch}).")
            del ckpt
        elif self.resume:
            self._say(f"no checkpoint in {self.out_dir}: starting a new run.")

        if ctx.is_main:
            atomic_write_text(
                self.out_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n"
            )
        log = MetricsLog(
            self.out_dir, start_step=step, enabled=ctx.is_main, tensorboard=cfg.tensorboard
        )
        forward = ModelForward(model, torch.float16 if use_amp else None)
        train_module: nn.Module = forward
        if ctx.is_distributed:
            train_module = nn.parallel.DistributedDataParallel(
                forward,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=task.find_unused_parameters,
            )
        params = [p for g in optimizer.param_groups for p in g["params"]]
        state = _State(step=step, epoch=epoch, in_epoch=in_epoch, best=best)
        run = _Run(self, model, forward, train_module, optimizer, scheduler, scaler, log, device)
        run.total, run.nb, run.params = total, nb, params
        run.train_set, run.val_set = train_set, val_set
        try:
            result = run.loop(state, stop_after)
        finally:
            log.close()
        result.resumed_from = resumed_from
        return result


@dataclass
class _State:
    step: int
    epoch: int
    in_epoch: int
    best: dict[str, Any]


class _Run:
    """The objects of one :meth:`Trainer.fit` call and its loop."""

    def __init__(
        self,
        trainer: Trainer,
        model: nn.Module,
        forward: ModelForward,
        train_module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        log: MetricsLog,
        device: torch.device,
    ) -> None:
        self.t, self.cfg, self.ctx, self.task = trainer, trainer.config, trainer.ctx, trainer.task
        self.model, self.forward, self.train_module = model, forward, train_module
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.log, self.device = log, device
        self.total = self.nb = 0
        self.params: list[nn.Parameter] = []
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.metrics: dict[str, float] = {}
        self.skipped = 0
        self.overhead = 0.0  # seconds spent validating and checkpointing

    def loader(self, state: _State) -> DataLoader:
        cfg, ctx = self.cfg, self.ctx
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(state.epoch)
        sampler = EpochBatchSampler(
            len(self.train_set), cfg.batch_size, cfg.seed, state.epoch,
            ctx.rank, ctx.world_size, start=state.in_epoch,
        )  # fmt: skip
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=self.task.collate_fn(),
            # its own generator: creating an iterator never draws from the global RNG, so a
            # resumed run's RNG stream matches the uninterrupted one's
            generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, state.epoch)),
        )

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        cfg = self.cfg
        batch = move_batch(batch, self.device)
        loss, stats = self.task.training_loss(self.train_module, batch, step)
        if self.ctx.is_distributed:  # every output gets a (zero) gradient: DDP needs them all
            tie = sum(t.sum() for t in self.forward.last_outputs)
            loss = loss + 0.0 * tie
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.clip if cfg.clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        finite = bool(torch.isfinite(norm))
        if finite or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # the scaler skips non-finite steps by itself
        if not finite:
            self.skipped += 1
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        out = {"loss": float(loss.detach()), "lr": float(lr), "grad_norm": float(norm)}
        out.update({k: float(v) for k, v in stats.items() if k != "loss"})
        return out

    def validate(self, state: _State) -> dict[str, float]:
        """Validation on rank 0 with seeded, restored RNGs; the other ranks wait."""
        ctx, cfg = self.ctx, self.cfg
        t = time.perf_counter()
        metrics: dict[str, float] = {}
        if ctx.is_main and self.val_set is not None and len(self.val_set) > 0:
            self.t._show(f"validating at step {state.step}", state.step, self.total)
            loader = DataLoader(
                self.val_set,
                batch_size=cfg.batch_size,
                shuffle=False,
                num_workers=cfg.workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(cfg.seed),
            )
            if hasattr(self.val_set, "set_epoch"):
                self.val_set.set_epoch(0)
            devices = [self.device] if self.device.type == "cuda" else []
            py_state = random.getstate()
            was_training = self.model.training
            self.forward.eval()
            try:
                with torch.random.fork_rng(devices=devices), torch.no_grad():
                    torch.manual_seed(cfg.seed)
                    random.seed(cfg.seed)
                    batches = (move_batch(b, self.device) for b in loader)
                    metrics = self.task.validate(self.forward, batches, state.step)
            finally:
                random.setstate(py_state)
                self.forward.train(was_training)
            metrics = {k: float(v) for k, v in metrics.items()}
            self.log.log(state.step, state.epoch, "val", metrics)
            self._update_best(state, metrics)
            self.t._say(
                f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            )
        barrier(ctx)
        self.metrics = metrics or self.metrics
        self.overhead += time.perf_counter() - t
        return metrics

    def _update_best(self, state: _State, metrics: dict[str, float]) -> None:
        name = self.task.best_metric
        value = metrics.get(name)
        if value is None or not math.isfinite(value):
            return
        old = state.best.get("value")
        better = old is None or (value < old if self.task.best_mode == "min" else value > old)
        if better:
            state.best = {"metric": name, "value": value, "step": state.step}
            if self.cfg.keep_best:
                self.task.save_model(self.model, self.t.out_dir / "model_best.pt")

    def checkpoint(self, state: _State) -> None:
        t = time.perf_counter()
        rngs = gather_objects(rng_state(), self.ctx)
        if self.ctx.is_main:
            self.log.sync()
            save_checkpoint(
                self.t.checkpoint_path,
                {
                    "recipe": self.task.name,
                    "model": model_entry(self.model),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "step": state.step,
                    "epoch": state.epoch,
                    "batch_in_epoch": state.in_epoch,
                    "world_size": self.ctx.world_size,
                    "best": state.best,
                    "rng": rngs,
                    "config": self.cfg.to_dict(),
                },
            )
        barrier(self.ctx)
        self.overhead += time.perf_counter() - t

    def loop(self, state: _State, stop_after: int | None) -> TrainResult:
        cfg, total = self.cfg, self.total
        acc: dict[str, list[float]] = defaultdict(list)
        finished = state.step >= total
        stopped = False
        self.forward.train()
        if state.step == 0 and cfg.val_every and total > 0:
            self.validate(state)  # the baseline of a fresh run (step 0)
        t0, steps_run, self.overhead = time.perf_counter(), 0, 0.0
        while state.step < total and not stopped:
            for batch in self.loader(state):
                stats = self.train_step(batch, state.step)
                ep = state.epoch  # the epoch this step belongs to
                state.step += 1
                state.in_epoch += 1
                steps_run += 1
                if state.in_epoch >= self.nb:
                    state.epoch, state.in_epoch = state.epoch + 1, 0
                for k, v in stats.items():
                    acc[k].append(v)
                self.t._show(
                    f"{self.task.name} epoch {ep} loss {stats['loss']:.4f}",
                    state.step,
                    total,
                )
                if state.step % cfg.log_every == 0 or state.step == total:
                    means = {k: sum(v) / len(v) for k, v in acc.items()}
                    busy = time.perf_counter() - t0 - self.overhead
                    means["seconds_per_step"] = busy / steps_run
                    self.log.log(state.step, ep, "train", means)
                    acc.clear()
                done = state.step >= total
                if cfg.val_every and state.step % cfg.val_every == 0 and not done:
                    self.validate(state)
                stopped = stop_after is not None and state.step >= stop_after and not done
                if (
                    done
                    or stopped
                    or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0)
                ):
                    if done:
                        self.validate(state)
                    self.checkpoint(state)
                if done or stopped or state.in_epoch == 0:
                    break
        seconds = time.perf_counter() - t0
        if state.step >= total:
            finished = True
            if self.ctx.is_main:
                self.task.save_model(self.model, self.t.out_dir / "model.pt")
            barrier(self.ctx)
        return TrainResult(
            step=state.step,
            total_steps=total,
            epoch=state.epoch,
            finished=finished,
            resumed_from=None,
            metrics=dict(self.metrics),
            best=dict(state.best),
            seconds=seconds,
            seconds_per_step=(seconds - self.overhead) / max(steps_run, 1),
            skipped_steps=self.skipped,
            out_dir=self.t.out_dir,
        )


def _device_hint(spec: str) -> str | None:
    """The device kind for choosing the DDP backend (None: let CUDA availability decide)."""
    spec = str(spec).strip().lower()
    return None if spec == "auto" else ("cpu" if spec == "cpu" else "cuda")
