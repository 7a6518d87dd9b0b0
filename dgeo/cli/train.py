"""``dgeo train gnnet|pixloc``: train dense features; ``dgeo train scoordnet|oflownet|kfnet``:
train scene-coordinate networks on KFNet sequence folders; ``dgeo train ace``: ACE-style
mapping (:mod:`dgeo.pipeline.recipes`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from dgeo.cli.common import stage_progress
from dgeo.cli.main import app

if TYPE_CHECKING:
    from dgeo.pipeline.recipes import TrainResult

console = Console()
train_app = typer.Typer(
    name="train",
    help=(
        "Train dense features (`dgeo train gnnet|pixloc ...`) or scene-coordinate networks on "
        "KFNet sequence folders (`dgeo train scoordnet|oflownet|kfnet ...`), or map a scene "
        "ACE-style (`dgeo train ace ...`)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(train_app, name="train")

_COMMON_HELP = (
    "DATA SPECs: synthetic:street, synthetic:room, colmap:MODEL_DIR:IMAGES_DIR (or colmap:ROOT "
    "of a `dgeo synth` folder), homography:IMAGE_DIR, robotcar:ROOT, cmu:ROOT; several --data "
    "are mixed. Validation uses the `val` split of --val-data (default: of --data).\n\n"
    "Writes into OUT: config.json, checkpoint.pt (atomic, every --checkpoint-every steps and at "
    "the end), metrics.csv (and TensorBoard events when tensorboard is installed), model.pt "
    "(the final model, a dgeo model file: `dgeo localize --features unet --weights "
    "OUT/model.pt`) and model_best.pt (best validation loss).\n\n"
    "--resume continues the run in OUT exactly where its last checkpoint left it (options not "
    "given are taken from the checkpoint; run-defining options that differ are refused). "
    "--config FILE (JSON or TOML) holds any option by its long name with underscores, a "
    "\\[model] table of model options (e.g. widths, decoder_widths, dims, strides of the U-Net) "
    "and a \\[loss] table of recipe options; options on the command line win.\n\n"
    "Several processes: torchrun --nproc-per-node K -m dgeo train ... (DistributedDataParallel, "
    "NCCL on GPUs, gloo on CPUs; rank 0 writes every file)."
)
HELP = {
    "gnnet": (
        "Train dense features with GN-Net's contrastive + Gauss-Newton loss on image pairs with "
        "correspondences; validation reports the loss and the nearest-neighbour matching PCK at "
        "1/3/5 px.\n\n" + _COMMON_HELP + "\n\nExamples:\n\n"
        "    dgeo train gnnet --data synthetic:street --model unet --out runs/gnnet --steps "
        "20000\n\n"
        "    dgeo train gnnet --data colmap:data/sfm:data/images --data synthetic:room --out "
        "runs/mix --config small_unet.toml --device cuda --resume"
    ),
    "pixloc": (
        "Train dense features through unrolled feature-metric pose refinement (PixLoc): image a "
        "with its 3D points is the reference, image b the query; the loss is the robust "
        "reprojection error of the pose after each pyramid level. Needs data with geometry "
        "(synthetic, or COLMAP with pinhole cameras). Validation adds the pose recall.\n\n"
        + _COMMON_HELP
        + "\n\nExamples:\n\n"
        "    dgeo train pixloc --data synthetic:street --out runs/pixloc --steps 20000 --lr "
        "1e-5\n\n"
        "    dgeo train pixloc --data synthetic:street --out runs/pixloc --init-weights "
        "runs/gnnet/model.pt"
    ),
}


def _make_command(recipe: str) -> Callable[..., None]:
    """The command function of ``recipe`` (both recipes share every option)."""

    def command(
        out: Path = typer.Option(..., "--out", "-o", help="Run folder (created)."),
        data: list[str] | None = typer.Option(
            None, "--data", metavar="SPEC", help="Training data spec; repeat to mix sources."
        ),
        val_data: list[str] | None = typer.Option(
            None, "--val-data", metavar="SPEC", help="Validation data spec (default: --data)."
        ),
        model: str | None = typer.Option(None, help="Model: unet (default) or vgg."),
        config: Path | None = typer.Option(None, "--config", help="JSON or TOML run options."),
        init_weights: Path | None = typer.Option(
            None, help="Initial weights: a dgeo model file (unet) or a VGG-16 checkpoint (vgg)."
        ),
        epochs: int | None = typer.Option(None, help="Passes over the data (default 10)."),
        steps: int | None = typer.Option(None, help="Optimiser steps (overrides --epochs)."),
        batch_size: int | None = typer.Option(None, help="Pairs per step and process (4)."),
        lr: float | None = typer.Option(None, help="Peak learning rate of AdamW (1e-4)."),
        weight_decay: float | None = typer.Option(None, help="AdamW weight decay (0.01)."),
        schedule: str | None = typer.Option(None, help="cosine (default), onecycle, constant."),
        warmup: int | None = typer.Option(None, help="Linear warm-up steps (0)."),
        clip: float | None = typer.Option(None, help="Gradient-norm clipping, 0: off (1.0)."),
        amp: bool | None = typer.Option(
            None, "--amp/--no-amp", help="Mixed precision on CUDA (default on)."
        ),
        seed: int | None = typer.Option(None, help="Seed of data order and sampling (0)."),
        height: int | None = typer.Option(None, help="Image height of the pairs (240)."),
        width: int | None = typer.Option(None, help="Image width of the pairs (320)."),
        num_points: int | None = typer.Option(None, help="Correspondences per pair (512)."),
        val_every: int | None = typer.Option(None, help="Validate every N steps (500)."),
        val_pairs: int | None = typer.Option(None, help="Validation pairs, 0: all (64)."),
        checkpoint_every: int | None = typer.Option(None, help="Checkpoint every N steps (500)."),
        log_every: int | None = typer.Option(None, help="Log training stats every N steps (10)."),
        workers: int | None = typer.Option(None, help="DataLoader worker processes (0)."),
        device: str | None = typer.Option(None, help="auto (default), cpu, cuda or cuda:N."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT."),
    ) -> None:
        given = dict(locals())
        _train(recipe, given)

    command.__name__ = f"train_{recipe}"
    return command


for _recipe in ("gnnet", "pixloc"):
    train_app.command(_recipe, help=HELP[_recipe])(_make_command(_recipe))


_SCR_HELP = (
    "INPUT FOLDERs: KFNet sequence folders (image_list.txt, label_list.txt with raw float32 "
    "HxWx4 labels at full or 1/8 resolution, transform.txt, optional camera.txt and poses.txt "
    "or 7-Scenes *.pose.txt) or `dgeo synth` roots (their sequences/<condition>/ folders); "
    "repeat --input-folder to train on several. --camera gives the camera of folders without "
    "camera.txt: 7scenes, an inline 'PINHOLE 640 480 525 525 320 240' (COLMAP convention) or a "
    "camera file. Validation uses --val-folder (default: evenly spaced frames of the training "
    "folders, --val-frames of them).\n\n"
    "--widths small trains the CPU-sized network (default: KFNet's); recipe options go in the "
    "\\[loss] table of --config (see `dgeo.pipeline.recipes.scoordnet` / oflownet / kfnet). "
    "Writes into OUT: config.json, checkpoint.pt, metrics.csv, model.pt (a dgeo model file: "
    "dgeo.models.load) and model_best.pt; --resume continues the run in OUT."
)
HELP["scoordnet"] = (
    "Train SCoordNet (scene coordinates + uncertainty at 1/8 resolution) with the Gaussian NLL "
    "on labelled sequence frames; validation reports the loss and the RANSAC poses of the "
    "predicted maps (median cm / deg, % under 5 cm / 5 deg).\n\n" + _SCR_HELP + "\n\nExamples:"
    "\n\n    dgeo train scoordnet --input-folder data/room --out runs/scoordnet --steps 20000"
    "\n\n    dgeo train scoordnet --input-folder 7scenes/chess/seq-01 --input-folder "
    "7scenes/chess/seq-02 --camera 7scenes --out runs/chess --device cuda"
)
HELP["oflownet"] = (
    "Train OFlowNet (flow between consecutive frames + process noise) with KFNet's label-free "
    "loss on pairs of frames, both directions.\n\n" + _SCR_HELP + "\n\nExample:\n\n"
    "    dgeo train oflownet --input-folder data/room --out runs/oflownet --steps 20000"
)
HELP["kfnet"] = (
    "Fine-tune KFNet (SCoordNet + OFlowNet through the per-pixel Kalman filter) on groups of 4 "
    "frames and their reversed copies with the 0.2/0.2/0.6 measurement/prior/posterior loss; "
    "start from the two trained stages.\n\n" + _SCR_HELP + "\n\nExample:\n\n"
    "    dgeo train kfnet --input-folder data/room --scoordnet runs/scoordnet/model.pt "
    "--oflownet runs/oflownet/model.pt --out runs/kfnet --steps 5000 --fix-flownet"
)


def _make_scr_command(recipe: str) -> Callable[..., None]:
    """The command function of a scene-coordinate recipe (``kfnet`` shows its stage options)."""
    stages_hidden = recipe != "kfnet"

    def command(
        out: Path = typer.Option(..., "--out", "-o", help="Run folder (created)."),
        input_folder: list[Path] | None = typer.Option(
            None, "--input-folder", "-i", metavar="DIR", help="Training sequences; repeatable."
        ),
        val_folder: list[Path] | None = typer.Option(
            None, "--val-folder", metavar="DIR", help="Validation sequences; repeatable."
        ),
        camera: str | None = typer.Option(
            None, help="Camera of folders without camera.txt: 7scenes, 'MODEL W H PARAMS', FILE."
        ),
        config: Path | None = typer.Option(None, "--config", help="JSON or TOML run options."),
        init_weights: Path | None = typer.Option(
            None, "--init-weights", "--weights", help="Start from this dgeo model file."
        ),
        scoordnet: Path | None = typer.Option(
            None, help="Trained SCoordNet model file (stage 1).", hidden=stages_hidden
        ),
        oflownet: Path | None = typer.Option(
            None, help="Trained OFlowNet model file (stage 2).", hidden=stages_hidden
        ),
        fix_flownet: bool = typer.Option(
            False, "--fix-flownet", help="Freeze OFlowNet.", hidden=stages_hidden
        ),
        widths: str | None = typer.Option(
            None, help="Network size: kfnet (default) or small (CPU-sized)."
        ),
        epochs: int | None = typer.Option(None, help="Passes over the data (default 10)."),
        steps: int | None = typer.Option(None, help="Optimiser steps (overrides --epochs)."),
        batch_size: int | None = typer.Option(None, help="Items per step and process (4)."),
        lr: float | None = typer.Option(None, help="Peak learning rate of AdamW (1e-4)."),
        weight_decay: float | None = typer.Option(None, help="AdamW weight decay (0.01)."),
        schedule: str | None = typer.Option(None, help="cosine (default), onecycle, constant."),
        warmup: int | None = typer.Option(None, help="Linear warm-up steps (0)."),
        clip: float | None = typer.Option(None, help="Gradient-norm clipping, 0: off (1.0)."),
        amp: bool | None = typer.Option(
            None, "--amp/--no-amp", help="Mixed precision on CUDA (default on)."
        ),
        seed: int | None = typer.Option(None, help="Seed of data order and augmentation (0)."),
        val_every: int | None = typer.Option(None, help="Validate every N steps (500)."),
        val_frames: int | None = typer.Option(None, help="Validation items, 0: all (64)."),
        checkpoint_every: int | None = typer.Option(None, help="Checkpoint every N steps (500)."),
        log_every: int | None = typer.Option(None, help="Log training stats every N steps (10)."),
        workers: int | None = typer.Option(None, help="DataLoader worker processes (0)."),
        device: str | None = typer.Option(None, help="auto (default), cpu, cuda or cuda:N."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT."),
    ) -> None:
        given = dict(locals())
        given["init_scoordnet"] = given.pop("scoordnet")
        given["init_oflownet"] = given.pop("oflownet")
        given["val_pairs"] = given.pop("val_frames")
        fix = given.pop("fix_flownet")
        given["loss"] = {"fix_flownet": True} if fix else None
        size = given.pop("widths")
        if size is not None:
            parts = ("scoordnet", "oflownet") if recipe == "kfnet" else None
            given["model_config"] = (
                {p: {"widths": size} for p in parts} if parts else {"widths": size}
            )
        _train(recipe, given)

    command.__name__ = f"train_{recipe}"
    return command


for _recipe in ("scoordnet", "oflownet", "kfnet"):
    train_app.command(_recipe, help=HELP[_recipe])(_make_scr_command(_recipe))

HELP["ace"] = (
    "ACE-style fast mapping: every frame of the first sequence of each --input-folder goes "
    "once through a frozen extractor (--model: default = the shipped U-Net, dense-sift, unet, "
    "vgg); a small head of 1x1 layers learns the scene coordinates of stride-8 cells from the "
    "frames' poses alone (reprojection loss, no labels needed), AdamW one-cycle over shuffled "
    "batches of --batch-size cells. Validation localizes held-out frames by RANSAC (% under "
    "5 cm / 5 deg, median cm / deg): every --holdout-th frame of the mapped sequence and the "
    "--val-folder sequences (default: the other conditions of a `dgeo synth` root).\n\n"
    "Defaults: batch 5120, lr 5e-3, onecycle, 16 epochs, no clipping. Recipe options go in the "
    "\\[loss] table of --config (see `dgeo.pipeline.recipes.ace`), extractor options and "
    "`head` options in the \\[model] table. Writes OUT/model.pt (the map, an ACEModel: "
    "dgeo.models.load) with config.json, checkpoint.pt, metrics.csv.\n\nExamples:\n\n"
    "    dgeo train ace --input-folder data/room --out runs/ace\n\n"
    "    dgeo train ace -i 7scenes/chess/seq-01 -i 7scenes/chess/seq-02 --camera 7scenes "
    "--model default --holdout 10 --out runs/chess-ace --device cuda"
)


@train_app.command("ace", help=HELP["ace"])
def train_ace(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (created)."),
    input_folder: list[Path] | None = typer.Option(
        None, "--input-folder", "-i", metavar="DIR", help="Sequences to map; repeatable."
    ),
    val_folder: list[Path] | None = typer.Option(
        None, "--val-folder", metavar="DIR", help="Validation sequences; repeatable."
    ),
    camera: str | None = typer.Option(
        None, help="Camera of folders without camera.txt: 7scenes, 'MODEL W H PARAMS', FILE."
    ),
    config: Path | None = typer.Option(None, "--config", help="JSON or TOML run options."),
    init_weights: Path | None = typer.Option(
        None, "--init-weights", help="A dgeo model file of the extractor (e.g. a trained U-Net)."
    ),
    model: str | None = typer.Option(
        None, help="Frozen extractor: default (the shipped U-Net), dense-sift, unet, vgg."
    ),
    head_width: int | None = typer.Option(None, help="Channels of the head's layers (256)."),
    samples_per_image: int | None = typer.Option(None, help="Cells kept per frame (1024)."),
    holdout: int | None = typer.Option(
        None, help="Hold out every N-th mapped frame for validation (0: none)."
    ),
    augment: bool | None = typer.Option(
        None, "--augment/--no-augment", help="ACE's rotation/zoom/colour augmentation (off)."
    ),
    depth_target: float | None = typer.Option(
        None, help="Depth (m) that invalid predictions are pulled to (10; ~ the scene size)."
    ),
    epochs: int | None = typer.Option(None, help="Passes over the buffer (16)."),
    steps: int | None = typer.Option(None, help="Optimiser steps (overrides --epochs)."),
    batch_size: int | None = typer.Option(None, help="Cells per step (5120)."),
    lr: float | None = typer.Option(None, help="Peak learning rate of AdamW (5e-3)."),
    weight_decay: float | None = typer.Option(None, help="AdamW weight decay (0.01)."),
    schedule: str | None = typer.Option(None, help="onecycle (default), cosine, constant."),
    clip: float | None = typer.Option(None, help="Gradient-norm clipping, 0: off (0)."),
    amp: bool | None = typer.Option(
        None, "--amp/--no-amp", help="Mixed precision on CUDA (default on)."
    ),
    seed: int | None = typer.Option(None, help="Seed of the buffer, head and order (0)."),
    val_every: int | None = typer.Option(None, help="Validate every N steps (0: at the end)."),
    val_frames: int | None = typer.Option(None, help="Validation frames per sequence (64)."),
    checkpoint_every: int | None = typer.Option(None, help="Checkpoint every N steps (0)."),
    log_every: int | None = typer.Option(None, help="Log training stats every N steps (10)."),
    device: str | None = typer.Option(None, help="auto (default), cpu, cuda or cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT."),
) -> None:
    given = dict(locals())
    from dgeo.pipeline.recipes.ace import ACE_DEFAULTS

    options = {k: given.pop(k) for k in ("samples_per_image", "holdout", "augment", "depth_target")}
    given["loss"] = {k: v for k, v in options.items() if v is not None} or None
    width = given.pop("head_width")
    given["model_config"] = {"head": {"width": width}} if width is not None else None
    given["val_pairs"] = given.pop("val_frames")
    _train("ace", given, defaults=ACE_DEFAULTS)


def _train(recipe: str, given: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """Resolve the run's config (recipe ``defaults`` or checkpoint < --config < options) and
    train.

    Raises:
        DgeoError: bad input; the entry point prints it as one line and exits with code 2.
    """
    from dgeo.pipeline.recipes import load_checkpoint, resolve_config, train

    out: Path = given.pop("out")
    resume: bool = given.pop("resume")
    config_file = given.pop("config")
    for key in ("data", "val_data", "input_folder", "val_folder"):
        values = given.get(key)  # typer gives [] for an unused multiple option
        given[key] = [str(v) for v in values] if values else None
    for key in ("init_weights", "init_scoordnet", "init_oflownet"):
        if given.get(key) is not None:
            given[key] = str(given[key])
    given["recipe"] = recipe
    stored = defaults
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.exists():
        stored = load_checkpoint(checkpoint)["config"]
    cfg = resolve_config(given, file=config_file, stored=stored)
    main_rank = os.environ.get("RANK", "0") == "0"
    out_console = console if main_rank else Console(quiet=True)
    with stage_progress(out_console, remaining=True) as progress:
        result = train(
            cfg,
            out,
            resume=resume,
            progress=progress,
            echo=lambda line: out_console.print(line, highlight=False, soft_wrap=True),
        )
    if main_rank:
        print_summary(recipe, result)


def print_summary(recipe: str, result: TrainResult) -> None:
    """A table of the run: steps, timing, last validation metrics, best, files."""
    table = Table(title=f"dgeo train {recipe}: {result.out_dir}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("steps", f"{result.step} / {result.total_steps}")
    if result.resumed_from is not None:
        table.add_row("resumed from step", str(result.resumed_from))
    table.add_row("time per step", f"{1000 * result.seconds_per_step:.0f} ms")
    if result.skipped_steps:
        table.add_row("skipped (non-finite gradients)", str(result.skipped_steps))
    for name, value in result.metrics.items():
        table.add_row(f"val {name}", f"{value:.4g}")
    if result.best.get("value") is not None:
        table.add_row(
            f"best val {result.best['metric']}",
            f"{result.best['value']:.4g} (step {result.best['step']})",
        )
    console.print(table)
    console.print(f"wrote {result.out_dir / 'model.pt'} and {result.out_dir / 'checkpoint.pt'}")
