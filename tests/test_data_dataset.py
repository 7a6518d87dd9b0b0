"""``dgeo synth`` datasets: a real COLMAP model, exact ground truth, atomic and deterministic."""

from __future__ import annotations

import hashlib
import math
import sys

import numpy as np
import pycolmap
import pytest
import torch
from typer.testing import CliRunner

import dgeo.cli.commands  # noqa: F401  (registers the commands)
from dgeo.cli.main import app, main
from dgeo.data.synthetic.dataset import SynthConfig, write_dataset
from dgeo.data.synthetic.mapping import visible_points
from dgeo.errors import InputError
from dgeo.io.colmap import camera_to_colmap, load_reference_map, pose_from_colmap
from dgeo.io.formats import (
    read_hloc_results,
    read_image_list,
    read_kfnet_label,
    read_queries_with_intrinsics,
    read_transform,
)

SMALL = dict(
    references=10,
    queries=2,
    conditions=("night", "snow"),
    sequence_length=3,
    width=192,
    height=144,
    max_keypoints=400,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "street"
    summary = write_dataset(root, SynthConfig(seed=1, **SMALL))
    return root, summary


def digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_layout_and_formats(dataset):
    root, summary = dataset
    for rel in (
        "sfm",
        "images/references",
        "images/queries/night",
        "images/queries/snow",
        "depth/queries/snow",
        "sequences/night",
        "README.txt",
    ):
        assert (root / rel).exists(), rel
    assert not list(root.parent.glob(".street.tmp-*"))
    names, cams = read_queries_with_intrinsics(root / "queries_with_intrinsics.txt")
    gt_names, _gt = read_hloc_results(root / "queries_gt.txt")
    assert names == gt_names and len(names) == 4 and cams.shape == (4,)
    depth = np.load(root / "depth" / names[0].replace(".png", ".npy"))
    assert depth.shape == (144, 192) and depth.dtype == np.float32
    seq = root / "sequences" / "night"
    images = read_image_list(seq / "image_list.txt", root=seq, check_exists=True)
    labels = read_image_list(seq / "label_list.txt", root=seq, check_exists=True)
    assert len(images) == len(labels) == 3
    label = read_kfnet_label(labels[0], sizes=((144, 192),))
    assert label.shape == (144, 192, 4)
    T = read_transform(seq / "transform.txt")
    torch.testing.assert_close(T[:3, :3] @ T[:3, :3].T, torch.eye(3, dtype=T.dtype))
    assert summary.points3D > 100 and summary.mean_track_length >= 2


def test_colmap_model_tracks_reproject(dataset):
    root, _ = dataset
    rec = pycolmap.Reconstruction(str(root / "sfm"))
    assert rec.num_reg_images() == 10 and rec.num_points3D() > 100
    errors = []
    for _pid, point in rec.points3D.items():
        for el in point.track.elements:
            image = rec.image(el.image_id)
            proj = image.camera.img_from_cam(image.cam_from_world() * point.xyz)
            errors.append(np.linalg.norm(proj - image.points2D[el.point2D_idx].xy))
    assert max(errors) < 0.5 and np.median(errors) < 1e-3  # exact up to float32 poses


def test_scene_coordinate_labels_are_exact(dataset):
    root, _ = dataset
    seq = root / "sequences" / "snow"
    _names, poses = read_hloc_results(seq / "poses.txt")
    label = read_kfnet_label(seq / "labels" / "frame_00001.label", sizes=((144, 192),))
    valid = label[..., 3] > 0
    assert valid.float().mean() > 0.3
    assert bool((label[~valid][:, :3] == -1).all())
    # world points seen by pixel centres: they project back onto their pixels
    cam = SynthConfig(**SMALL).camera().double()
    ys, xs = torch.nonzero(valid, as_tuple=True)
    uv, _ = cam.project(poses[1].transform(label[ys, xs, :3].double()))
    torch.testing.assert_close(uv, torch.stack([xs, ys], -1).double(), atol=2e-3, rtol=0)


def test_pnp_on_true_matches_recovers_query_pose(dataset):
    root, _ = dataset
    ref = load_reference_map(root / "sfm")
    names, cams = read_queries_with_intrinsics(root / "queries_with_intrinsics.txt")
    _, gt = read_hloc_results(root / "queries_gt.txt")
    recovered = 0
    for i, name in enumerate(names):
        depth = torch.from_numpy(np.load(root / "depth" / name.replace(".png", ".npy")))
        uv, xyz = visible_points(ref, cams[i], gt[i], depth[None])
        if len(uv) < 12:
            continue
        out = pycolmap.estimate_and_refine_absolute_pose(
            (uv + 0.5).numpy(), xyz.numpy(), camera_to_colmap(cams[i])
        )
        est = pose_from_colmap(out["cam_from_world"])
        dR, _dt = (est @ gt[i].double().inv()).magnitude()
        assert math.degrees(float(dR)) < 0.1
        assert float((est.center() - gt[i].double().center()).norm()) < 0.01
        recovered += 1
    assert recovered >= 3


def test_same_seed_same_bytes(dataset, tmp_path):
    root, _ = dataset
    again = tmp_path / "again"
    write_dataset(again, SynthConfig(seed=1, **SMALL))
    assert digest(again) == digest(root)


def test_refuses_non_empty_output_and_overwrites_atomically(dataset, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cfg = SynthConfig(references=3, queries=1, conditions=("sun",), width=64, height=48)
    with pytest.raises(InputError, match="not empty"):
        write_dataset(out, cfg)
    assert (out / "keep.txt").read_text() == "mine"
    write_dataset(out, cfg, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "sfm").is_dir()


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(scene="forest"), "unknown scene"),
        (dict(conditions=("night", "fog")), "unknown condition"),
        (dict(references=0), "references"),
        (dict(queries=0), "queries"),
        (dict(conditions=()), "at least one"),
        (dict(sequence_length=-2), "sequence_length"),
        (dict(sequence_fps=0.0), "sequence_fps"),
        (dict(label_stride=4), "label_stride"),
    ],
)
def test_bad_settings(kwargs, msg, tmp_path):
    with pytest.raises(InputError, match=msg):
        write_dataset(tmp_path / "x", SynthConfig(**kwargs))
    assert not (tmp_path / "x").exists()


def test_cli(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty_textures"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        [
            "synth",
            str(out),
            "--references",
            "3",
            "--queries",
            "1",
            "--conditions",
            "dusk",
            "--size",
            "64x48",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "references" in res.output and (out / "queries_gt.txt").exists()
    for args, msg in (
        (["--size", "64by48"], "WIDTHxHEIGHT"),
        (["--conditions", "fog"], "unknown condition"),
        (["--textures", str(tmp_path / "none")], "does not exist"),
        (["--textures", str(empty)], "no readable image"),
        (["--references", "0"], "references"),
    ):
        monkeypatch.setattr(sys, "argv", ["dgeo", "synth", str(tmp_path / "y"), *args])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and msg in err and len(err.splitlines()) == 1


def test_reference_condition_among_conditions_adds_a_held_out_sequence(tmp_path):
    from conftest import render_synth

    root = render_synth(
        tmp_path / "room", scene="room", seed=5, references=2, queries=1, width=64, height=48,
        conditions=("overcast-reference",), sequence_length=2, label_stride=8, max_keypoints=32,
        sequence_fps=5.0,
    )  # fmt: skip
    mapping, held_out = root / "sequences" / "overcast-reference", root / "sequences"
    held_out = held_out / "overcast-reference-test"
    assert (mapping / "camera.txt").is_file() and (held_out / "camera.txt").is_file()
    _, a = read_hloc_results(mapping / "poses.txt")
    _, b = read_hloc_results(held_out / "poses.txt")
    assert float((a.center() - b.center()).norm(dim=-1).min()) > 0.05  # another path
    step = float((a.center()[1] - a.center()[0]).norm())
    assert abs(step - 0.5 / 5.0) < 0.02  # 0.5 m/s at 5 frames per second


def test_shared_path_sequences_walk_the_mapping_path(tmp_path):
    from conftest import render_synth

    root = render_synth(
        tmp_path / "room", scene="room", seed=5, references=2, queries=1, width=64, height=48,
        conditions=("night",), sequence_length=2, label_stride=8, max_keypoints=32,
        shared_path=True,
    )  # fmt: skip
    _, a = read_hloc_results(root / "sequences" / "overcast-reference" / "poses.txt")
    _, b = read_hloc_results(root / "sequences" / "night" / "poses.txt")
    torch.testing.assert_close(a.data, b.data)
