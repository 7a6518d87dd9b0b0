"""Training checkpoints: one atomic ``torch.save`` of plain types, read with ``weights_only``.

A checkpoint is a dict::

    {"format": "dgeo-train-checkpoint", "version": 1, "recipe": "gnnet",
     "model": {"class": "UNetPyramid", "config": {...}, "state_dict": {...}},
     "optimizer": ..., "scheduler": ..., "scaler": ...,
     "step": int, "epoch": int, "batch_in_epoch": int, "world_size": int,
     "best": {"metric": str, "value": float | None, "step": int},
     "rng": [per-rank RNG states], "config": TrainConfig.to_dict(), "task": {...}}

written through :func:`dgeo.io.atomic.atomic_open` (temporary sibling + fsync + rename), so a
process killed at any moment leaves either the previous checkpoint or the new one, never a
truncated file. RNG states are tensors and plain Python types (the ``random`` module's state as an
int64 tensor), so that ``torch.load(weights_only=True)`` reads everything without unpickling code.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgeo.errors import ParseError
from dgeo.io.atomic import atomic_open
from dgeo.models.base import safe_torch_load

FORMAT = "dgeo-train-checkpoint"
VERSION = 1
HINT = "pass a checkpoint.pt written by `dgeo train`, or start a new run in another --out folder."


def rng_state() -> dict[str, Any]:
    """This process's RNG states: torch CPU, every CUDA device, Python ``random``.

    Returns:
        ``{"torch": ByteTensor, "cuda": [ByteTensor, ...], "python": {"version": int,
        "state": (625,) int64 tensor, "gauss": float | None}}``.
    """
    version, state, gauss = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "python": {
            "version": version,
            "state": torch.tensor(state, dtype=torch.int64),
            "gauss": gauss,
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states from :func:`rng_state` (CUDA states only where devices exist)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))


def model_entry(model: nn.Module) -> dict[str, Any]:
    """``{"class", "config", "state_dict"}`` of a dgeo model (weights copied to the CPU)."""
    return {
        "class": type(model).__name__,
        "config": dict(getattr(model, "config", {})),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (the fields of the module docstring, without format/version)
    atomically to ``path``; returns the path."""
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_open(path, "wb") as f:
        torch.save(data, f)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        DataFileNotFoundError: ``path`` does not exist.
        ParseError: not a torch file, a torch file that is not a dgeo training checkpoint (a
            model file, a raw state dict, ...), or one of a newer format; the message names the
            file.
    """
    obj = safe_torch_load(path, "dgeo training checkpoint", HINT, map_location=map_location)
    path = Path(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = "a dgeo model file (dgeo.models.save)" if _is_model_file(obj) else _kind(obj)
        raise ParseError(path, None, f"is {what}, not a dgeo training checkpoint; {HINT}")
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ParseError(
            path, None, f"has checkpoint version {version!r}; this dgeo reads up to {VERSION}."
        )
    missing = [
        k
        for k in ("model", "optimizer", "scheduler", "step", "epoch", "batch_in_epoch", "config")
        if k not in obj
    ]
    if missing:
        raise ParseError(path, None, f"is an incomplete training checkpoint (no {missing}).")
    return obj


def check_model(checkpoint: dict[str, Any], model: nn.Module, path: str | Path) -> None:
    """Raise :class:`ParseError` naming ``path`` unless the checkpoint holds weights of
    ``model``'s class and config."""
    entry = checkpoint.get("model")
    if not isinstance(entry, dict):
        raise ParseError(path, None, "holds no model entry; it is not a dgeo training checkpoint.")
    cls, config = entry.get("class"), entry.get("config")
    want_cls, want_config = type(model).__name__, dict(getattr(model, "config", {}))
    if cls != want_cls or config != want_config:
        diff = (
            f"class {cls} (this run: {want_cls})"
            if cls != want_cls
            else "config "
            + ", ".join(
                f"{k}={config.get(k)!r} (this run: {want_config.get(k)!r})"
                for k in sorted(set(config) | set(want_config))
                if config.get(k) != want_config.get(k)
            )
        )
        raise ParseError(
            path,
            None,
            f"is a checkpoint of another model: {diff}; resume with the options of that run, "
            "or start a new run in another --out folder.",
        )


def _is_model_file(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == "dgeo-model"


def _kind(obj: Any) -> str:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "a raw state dict"
    return f"a {type(obj).__name__}"


def remove_stale_temporaries(folder: str | Path, names: Iterable[str]) -> None:
    """Delete temporaries ``.<name>.*.tmp`` of the files ``names`` in ``folder`` left by a
    killed writer (:func:`dgeo.io.atomic.atomic_open`)."""
    folder = Path(folder)
    for name in names:
        for tmp in folder.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
