"""Saving and loading dense extractors and networks, and the registry the CLI builds
extractors from.

A dgeo model file is one ``torch.save`` of a plain dict::

    {"format": "dgeo-model", "version": 1, "class": "UNetPyramid",
     "config": {...JSON types...}, "state_dict": {...tensors...}}

written atomically (:func:`dgeo.io.atomic.atomic_open`) and read back with
``torch.load(weights_only=True)``, so loading never runs code from the file. The model is rebuilt
with ``cls(**config)`` and its state dict loaded strictly. Besides the extractors of
:data:`MODELS`, the scene-coordinate and flow networks of :data:`NETWORKS` (``SCoordNet``,
``OFlowNet``, ``KFNet``, and ACE's ``ACEHead``/``ACEModel`` from :mod:`dgeo.models.ace`)
use the same file format; their ``config`` property gives the JSON constructor kwargs.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgeo.errors import DataFileNotFoundError, InputError, ParseError
from dgeo.io.atomic import atomic_open
from dgeo.models.base import DenseExtractor, safe_torch_load
from dgeo.models.dense_sift import DenseSIFT, ImagePyramid
from dgeo.models.kfnet import KFNet
from dgeo.models.oflownet import OFlowNet
from dgeo.models.scoordnet import SCoordNet
from dgeo.models.unet import UNetPyramid
from dgeo.models.vgg import VGGHypercolumn, vgg16_trunk_state_dict

FORMAT = "dgeo-model"
VERSION = 1

#: The model shipped inside the package: a small U-Net trained with ``dgeo train gnnet`` on the
#: synthetic world and homography pairs (its command, data and figures: docs/MODELS.md).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "unet-small.pt"

#: CLI names of the dense extractors.
MODELS: dict[str, type[DenseExtractor]] = {
    "vgg": VGGHypercolumn,
    "unet": UNetPyramid,
    "dense-sift": DenseSIFT,
    "image": ImagePyramid,
}
CLASSES: dict[str, type[DenseExtractor]] = {cls.__name__: cls for cls in MODELS.values()}
#: Networks other than extractors that :func:`save` / :func:`load` handle, by class name (each
#: has a ``config`` property of JSON constructor kwargs). See :func:`networks` for the full set.
NETWORKS: dict[str, type[nn.Module]] = {
    "SCoordNet": SCoordNet,
    "OFlowNet": OFlowNet,
    "KFNet": KFNet,
}


def networks() -> dict[str, type[nn.Module]]:
    """:data:`NETWORKS` plus ACE's ``ACEHead`` and ``ACEModel`` from :mod:`dgeo.models.ace`
    (imported lazily, as it may import this module)."""
    out = dict(NETWORKS)
    from dgeo.models import ace

    for name in ("ACEHead", "ACEModel"):
        cls = getattr(ace, name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            out[name] = cls
    return out


def build(name: str, **config: Any) -> DenseExtractor:
    """The extractor registered as ``name`` in :data:`MODELS`, built with ``config``.

    Raises:
        InputError: unknown name (the message lists the choices) or unknown option.
    """
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    cls = MODELS[name]
    options = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(config) - set(options))
    if unknown:
        raise InputError(
            f"model {name!r} has no option(s) {unknown}; its options are {', '.join(options)}."
        )
    return cls(**config)


def save(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (class name, config and weights) to one file at ``path``, atomically.

    ``model`` is a dgeo extractor (:data:`CLASSES`) or network (:func:`networks`).

    Returns:
        the path written. Weights (and buffers, e.g. SCoordNet's transform) are stored on the
        CPU.
    """
    name = type(model).__name__
    nets = networks()
    is_extractor = isinstance(model, DenseExtractor) and name in CLASSES
    if not is_extractor and not (name in nets and isinstance(model, nets[name])):
        raise InputError(
            f"save expects one of the dgeo extractors {', '.join(CLASSES)} or networks "
            f"{', '.join(nets)}, got {name}."
        )
    try:
        config = json.loads(json.dumps(model.config))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{type(model).__name__}.config is not JSON-serialisable: {exc}") from None
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "class": type(model).__name__,
        "config": config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def _what_is(obj: Any) -> str:
    """A hint about a loaded object that is not a dgeo model file."""
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if vgg16_trunk_state_dict(obj):
            return (
                "looks like a raw VGG-16 state dict: use "
                "dgeo.models.VGGHypercolumn.from_vgg16_checkpoint(path)."
            )
        return (
            "looks like a raw state dict without dgeo's header: build the model and call "
            "model.load_state_dict(torch.load(path)), then dgeo.models.save(model, path)."
        )
    if isinstance(obj, dict) and any(k in obj for k in ("state_dict", "model_state_dict")):
        return (
            "looks like a training checkpoint, not a dgeo model file: for VGG-16 weights use "
            "dgeo.models.VGGHypercolumn.from_vgg16_checkpoint(path)."
        )
    return f"holds a {type(obj).__name__}, not a dgeo model file written by dgeo.models.save."


def load(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load an extractor or network written by :func:`save`, on ``map_location``.

    Raises:
        DataFileNotFoundError: ``path`` does not exist.
        ParseError: the file is not a dgeo model (raw state dict, other pickle, truncated or
            text file, unknown class, config or weights that do not match); the message names
            the file and what to do.
    """
    hint = "pass a file written by dgeo.models.save."
    obj = safe_torch_load(path, "dgeo model file", hint)
    path = Path(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ParseError(path, None, _what_is(obj))
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ParseError(
            path,
            None,
            f"has format version {version!r}; this dgeo reads up to {VERSION}, upgrade dgeo.",
        )
    name, config, state = obj.get("class"), obj.get("config"), obj.get("state_dict")
    known = {**CLASSES, **networks()}
    if name not in known:
        raise ParseError(
            path, None, f"holds an unknown model class {name!r}; known: {', '.join(known)}."
        )
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ParseError(path, None, "lacks a 'config' or 'state_dict' dict; save it again.")
    try:
        model = known[name](**config)
    except (TypeError, InputError) as exc:
        raise ParseError(path, None, f"has a config that {name} rejects: {exc}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ParseError(
            path, None, f"has weights that do not fit {name}({config}): {first}"
        ) from None
    return model.to(torch.device(map_location))


def default_weights() -> Path:
    """Path of the model shipped inside the package (:data:`DEFAULT_WEIGHTS`).

    Raises:
        DataFileNotFoundError: the file is missing from this installation (an install from a
            source tree without package data); the message says how to get it.
    """
    if not DEFAULT_WEIGHTS.is_file():
        raise DataFileNotFoundError(
            f"the shipped model {DEFAULT_WEIGHTS} is missing from this installation; reinstall "
            "dgeo with its package data, or pass your own weights (a file from dgeo train)."
        )
    return DEFAULT_WEIGHTS


def default_model(map_location: str | torch.device = "cpu") -> DenseExtractor:
    """The shipped U-Net (:func:`default_weights`), loaded on ``map_location``, in eval mode."""
    model = load(default_weights(), map_location).eval()
    assert isinstance(model, DenseExtractor)
    return model
