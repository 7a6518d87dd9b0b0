"""Tests of dgeo.data.sequences: camera files, KFNet sequence folders and the frame datasets."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import SEQ_SYNTH

from dgeo.data.sequences import (
    CAMERA_PRESETS,
    FrameDataset,
    FrameGroupDataset,
    SequenceFolder,
    open_folders,
    parse_camera,
    read_camera_file,
    read_sequence_poses,
    resolve_input_folder,
    rotate_frame,
    write_camera_file,
)
from dgeo.errors import DataFileNotFoundError, InputError, ParseError
from dgeo.geometry import Camera, Pose, cell_pixels
from dgeo.io.formats import read_hloc_results, write_kfnet_label, write_transform

# ---------------------------------------------------------------------------------- helpers
W, H, F = 64, 48, 50.0
#: PINHOLE 64x48, f 50, principal point (31.5, 23.5) in dgeo's convention.
SMALL = f"PINHOLE {W} {H} {F} {F} 32 24"


def plane_labels(pose: Pose, camera: Camera) -> np.ndarray:
    """Full-resolution ``(H, W, 4)`` labels of the plane ``z_world = 0`` seen from ``pose``
    (cam_from_world), rows with no intersection in front marked invalid (xyz = -1)."""
    uv = cell_pixels(H, W, 1, dtype=torch.float64).reshape(-1, 2)
    rays = torch.cat([(uv - camera.c) / camera.f, torch.ones(len(uv), 1, dtype=torch.float64)], 1)
    R, t = pose.R, pose.t
    origin = -R.T @ t
    dirs = rays @ R  # world directions (R^T d)
    s = -origin[2] / dirs[:, 2]
    X = origin + s[:, None] * dirs
    ok = s > 0
    label = torch.cat([X, ok[:, None].double()], 1)
    label[~ok, :3] = -1
    return label.reshape(H, W, 4).numpy().astype(np.float32)


def make_folder(
    root: Path,
    n: int = 5,
    full: bool = True,
    tofile: bool = True,
    seven_scenes: bool = False,
    camera_txt: bool = True,
) -> tuple[Path, Pose]:
    """A hand-made KFNet folder looking at a plane: ``n`` frames, labels at full resolution
    (numpy ``tofile``) or 1/8 (dgeo's writer), poses as poses.txt or 7-Scenes .pose.txt."""
    root.mkdir(parents=True, exist_ok=True)
    camera = parse_camera(SMALL)
    rng = np.random.default_rng(0)
    angles = torch.tensor([[math.pi + 0.1 * i, 0.05 * i, 0.02] for i in range(n)], dtype=float)
    centres = torch.tensor([[0.1 * i, 0.0, 2.0] for i in range(n)], dtype=torch.float64)
    R = Pose.from_axis_angle(angles, torch.zeros(n, 3, dtype=torch.float64)).R
    poses = Pose.from_Rt(R, -(R @ centres[..., None])[..., 0])
    images, labels, lines = [], [], []
    (root / "images").mkdir(exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for i in range(n):
        stem = f"frame-{i:06d}" if seven_scenes else f"f{i:03d}"
        name = f"images/{stem}.color.png" if seven_scenes else f"images/{stem}.png"
        pixels = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        cv2.imwrite(str(root / name), pixels)
        images.append(name)
        label = plane_labels(poses[i], camera)
        lab = f"labels/{stem}.bin"
        if full and tofile:
            label.tofile(root / lab)
        elif full:
            write_kfnet_label(root / lab, label)
        else:
            write_kfnet_label(root / lab, label[4::8, 4::8])
        labels.append(lab)
        if seven_scenes:
            np.savetxt(root / f"images/{stem}.pose.txt", poses[i].inv().matrix().numpy())
        q, t = poses[i].quat().tolist(), poses[i].t.tolist()
        lines.append(" ".join([name, *map(repr, q), *map(repr, t)]))
    (root / "image_list.txt").write_text("\n".join(images) + "\n")
    (root / "label_list.txt").write_text("\n".join(labels) + "\n")
    if not seven_scenes:
        (root / "poses.txt").write_text("\n".join(lines) + "\n")
    write_transform(root / "transform.txt", torch.eye(4, dtype=torch.float64))
    if camera_txt:
        write_camera_file(root / "camera.txt", camera)
    return root, poses


def reprojection(item: dict) -> torch.Tensor:
    """Per valid cell: distance between the cell pixel and the projection of its label with
    the item's pose and K."""
    P, K = item["pose"], item["K"]
    X = item["coords"].permute(1, 2, 0)[item["valid"]].double()
    Xc = X @ P[:3, :3].T + P[:3, 3]
    uv = Xc[:, :2] / Xc[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
    h, w = item["valid"].shape
    return (uv - cell_pixels(h, w, 8, dtype=torch.float64)[item["valid"]]).norm(dim=-1)


# ---------------------------------------------------------------------------------- cameras
def test_camera_files_presets_and_conventions(tmp_path):
    seven = parse_camera("7scenes")
    assert seven.model == "PINHOLE" and seven.dtype == torch.float64
    assert seven.params.tolist() == [525.0, 525.0, 319.5, 239.5]  # COLMAP c - 0.5
    assert seven.size.tolist() == [640.0, 480.0]
    assert torch.equal(parse_camera(CAMERA_PRESETS["7scenes"]).params, seven.params)
    # the same convention as hloc query lists
    from dgeo.io.formats import read_queries_with_intrinsics

    q = tmp_path / "q.txt"
    q.write_text("a.png SIMPLE_RADIAL 100 80 90 50 40 -0.01\n")
    _, ref = read_queries_with_intrinsics(q)
    cam = tmp_path / "cam.txt"
    cam.write_text("# a comment\n\nSIMPLE_RADIAL 100 80 90 50 40 -0.01\n")
    assert torch.equal(read_camera_file(cam).params, ref.params[0])
    cam.write_text("a.png SIMPLE_RADIAL 100 80 90 50 40 -0.01\n")  # hloc line: name tolerated
    assert torch.equal(read_camera_file(cam).params, ref.params[0])
    # write -> read is exact, in every model
    for model, params in [
        ("PINHOLE", [500.25, 499.75, 320.125, 239.875]),
        ("OPENCV", [500.0, 501.0, 320.3, 240.1, 0.01, -0.002, 1e-4, -2e-4]),
        ("SIMPLE_PINHOLE", [300.0, 63.5, 47.5]),
    ]:
        camera = Camera(model, 640, 480, torch.tensor(params, dtype=torch.float64))
        back = read_camera_file(write_camera_file(tmp_path / f"{model}.txt", camera))
        assert back.model == model and torch.equal(back.params, camera.params)
        assert torch.equal(back.size, camera.size)
    assert parse_camera(camera).model == "SIMPLE_PINHOLE"
    assert parse_camera(str(tmp_path / "OPENCV.txt")).model == "OPENCV"
    folder = tmp_path / "seq"
    folder.mkdir()
    with pytest.raises(InputError, match="no camera"):
        parse_camera(None, folder)
    write_camera_file(folder / "camera.txt", seven)
    assert torch.equal(parse_camera(None, folder).params, seven.params)


@pytest.mark.parametrize(
    "text, message",
    [
        ("PINHOLE 640 480 525 525 320\n", "takes 4 parameters"),
        ("FISHEYE 640 480 525 320 240\n", "not supported"),
        ("PINHOLE 640 480 525 x 320 240\n", "not all numbers"),
        ("PINHOLE 640.5 480 525 525 320 240\n", "integers"),
        ("PINHOLE 640 480 -525 525 320 240\n", "must be positive"),
        ("PINHOLE 640 480 525 525 320 240\nPINHOLE 640 480 525 525 320 240\n", "2 camera lines"),
        ("\n# nothing\n", "0 camera lines"),
    ],
)
def test_bad_camera_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "camera.txt"
    path.write_text(text)
    with pytest.raises(ParseError, match=message) as exc:
        read_camera_file(path)
    assert str(path) in str(exc.value)


def test_bad_camera_specs():
    with pytest.raises(InputError, match="takes 4 parameters"):
        parse_camera("PINHOLE 640 480 525 525")
    with pytest.raises(DataFileNotFoundError, match="neither a preset"):
        parse_camera("12scenes")


# ---------------------------------------------------------------------------------- folders
def test_synth_sequences_folder(seq_synth):
    from dgeo.data.synthetic.dataset import SynthConfig

    folders = resolve_input_folder(seq_synth)
    assert [f.name for f in folders] == ["overcast-reference", "night"]
    assert resolve_input_folder(folders[1]) == [folders[1]]
    assert resolve_input_folder(seq_synth / "sequences") == folders
    seq = SequenceFolder(folders[1])
    expected = SynthConfig(**SEQ_SYNTH).camera()
    assert torch.allclose(seq.camera.params, expected.params.double(), atol=1e-9)
    assert len(seq) == 24 and seq.image_size == (96, 128) and seq.names[0].startswith("images/")
    names, poses = read_hloc_results(folders[1] / "poses.txt")
    assert names == seq.names and torch.equal(seq.poses.data, poses.data)
    R = seq.transform[:3, :3]
    assert torch.allclose(R.T @ R, torch.eye(3, dtype=torch.float64), atol=1e-9)
    for i in (0, 11, 23):
        item = seq.frame(i)
        assert item["image"].shape == (3, 96, 128) and item["coords"].shape == (3, 12, 16)
        assert item["valid"].float().mean() > 0.5
        # 1/8 labels are the scene points of the cell pixels (8 j + 4, 8 i + 4)
        assert reprojection(item).max() < 1e-3


@pytest.mark.parametrize("tofile", [True, False])
def test_label_files_by_dgeo_and_numpy_read_back_identically(tmp_path, tofile):
    """Full-resolution labels written with numpy ``tofile`` and with dgeo's writer, and 1/8
    labels, read back to the same cells; full labels are subsampled at the cell pixels."""
    full, poses = make_folder(tmp_path / "full", full=True, tofile=tofile)
    eighth, _ = make_folder(tmp_path / "eighth", full=False)
    a, b = SequenceFolder(full), SequenceFolder(eighth)
    raw = np.fromfile(full / "labels/f002.bin", dtype=np.float32).reshape(H, W, 4)
    xyz, _, stride = a.load_label_raw(2)
    assert stride == 1 and np.array_equal(xyz.permute(1, 2, 0).numpy()[raw[..., 3] > 0.5],
                                          raw[raw[..., 3] > 0.5, :3])  # fmt: skip
    for i in range(len(a)):
        ca, va = a.load_label(i)
        cb, vb = b.load_label(i)
        assert ca.shape == (3, H // 8, W // 8)
        assert torch.equal(ca, cb) and torch.equal(va, vb)
    assert torch.allclose(a.poses.matrix(), poses.matrix(), atol=1e-12)
    c2, _ = a.load_label(2)
    assert torch.equal(c2, torch.from_numpy(raw[4::8, 4::8, :3]).permute(2, 0, 1))
    assert reprojection(a.frame(1)).max() < 1e-3


def test_seven_scenes_layout(tmp_path):
    """``frame-XXXXXX.color.png`` with camera-to-world ``.pose.txt`` next to it, and an inline
    camera instead of camera.txt."""
    root, poses = make_folder(tmp_path / "seq-01", seven_scenes=True, camera_txt=False)
    with pytest.raises(InputError, match="no camera"):
        SequenceFolder(root)
    seq = SequenceFolder(root, camera=SMALL)
    assert torch.allclose(seq.poses.matrix(), poses.matrix(), atol=1e-12)
    assert reprojection(seq.frame(3)).max() < 1e-3
    assert resolve_input_folder(tmp_path) == [root]  # a folder of sequence folders
    # the ground truth alone (dgeo evaluate): no camera needed, the same poses and names
    names, gt = read_sequence_poses(root)
    assert names == seq.names and torch.equal(gt.data, seq.poses.data)
    (root / "images/frame-000002.pose.txt").unlink()
    with pytest.raises(DataFileNotFoundError, match=r"frame-000002.pose.txt"):
        SequenceFolder(root, camera=SMALL)


def test_bad_folders_give_clear_errors(tmp_path):
    root, _ = make_folder(tmp_path / "ok")
    SequenceFolder(root)

    def broken(name: str) -> Path:
        copy = tmp_path / name
        import shutil

        shutil.copytree(root, copy)
        return copy

    # a label file of the wrong byte size
    bad = broken("size")
    (bad / "labels/f001.bin").write_bytes(b"\0" * (H * W * 16 - 16))
    with pytest.raises(ParseError, match="not a KFNet label size") as exc:
        SequenceFolder(bad)  # checked when the folder is opened
    assert "f001.bin" in str(exc.value) and "49,152" in str(exc.value)
    # lists of different lengths
    bad = broken("lengths")
    (bad / "label_list.txt").write_text("labels/f000.bin\nlabels/f001.bin\n")
    with pytest.raises(ParseError, match=r"lists 2 label file.*lists 5 image") as exc:
        SequenceFolder(bad)
    assert "label_list.txt" in str(exc.value)
    # transform.txt that is not rigid
    bad = broken("transform")
    T = torch.eye(4, dtype=torch.float64)
    T[0, 0] = 2.0
    write_transform(bad / "transform.txt", T)
    with pytest.raises(ParseError, match="not a rigid transform") as exc:
        SequenceFolder(bad)
    assert "transform.txt" in str(exc.value)
    (bad / "transform.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    with pytest.raises(ParseError, match="3 rows"):
        SequenceFolder(bad)
    # a sequence of one frame
    bad = broken("one")
    (bad / "image_list.txt").write_text("images/f000.png\n")
    (bad / "label_list.txt").write_text("labels/f000.bin\n")
    with pytest.raises(ParseError, match=r"lists 1 image.*at least 2 frames"):
        SequenceFolder(bad)
    assert len(SequenceFolder(bad, min_frames=1)) == 1
    # missing files, a missing list, images of another size, no poses for an image
    bad = broken("missing")
    (bad / "images/f003.png").unlink()
    with pytest.raises(DataFileNotFoundError, match=r"image_list.txt: entry 4"):
        SequenceFolder(bad)
    bad = broken("nolabels")
    (bad / "label_list.txt").unlink()
    assert SequenceFolder(bad).label_paths is None
    with pytest.raises(InputError, match=r"no label_list.txt"):
        SequenceFolder(bad, require_labels=True)
    bad = broken("size2")
    write_camera_file(bad / "camera.txt", parse_camera(f"PINHOLE {H} {W} 50 50 24 32"))
    with pytest.raises(InputError, match="width and height swapped"):
        SequenceFolder(bad)
    bad = broken("poses")
    lines = (bad / "poses.txt").read_text().splitlines()
    (bad / "poses.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ParseError, match=r"no pose for image images/f004.png"):
        SequenceFolder(bad)
    with pytest.raises(InputError, match=r"holds no image_list.txt"):
        resolve_input_folder(tmp_path / "ok" / "images")
    with pytest.raises(DataFileNotFoundError):
        resolve_input_folder(tmp_path / "nowhere")
    big = _resized_copy(root, tmp_path / "big")
    with pytest.raises(InputError, match="different image sizes"):
        open_folders([root, big], require_labels=False)


def _resized_copy(root: Path, out: Path) -> Path:
    """``root`` with images twice as large (and a matching camera, full labels dropped)."""
    import shutil

    shutil.copytree(root, out, dirs_exist_ok=True)
    for p in (out / "images").glob("*.png"):
        img = cv2.imread(str(p))
        cv2.imwrite(str(p), cv2.resize(img, (2 * W, 2 * H)))
    write_camera_file(out / "camera.txt", parse_camera(f"PINHOLE {2 * W} {2 * H} 100 100 64 48"))
    (out / "label_list.txt").unlink()
    return out


# ---------------------------------------------------------------------------------- datasets
def test_frame_dataset_photometric_augmentation_is_seeded(tmp_path):
    root, _ = make_folder(tmp_path / "seq")
    seq = SequenceFolder(root)
    plain = FrameDataset(seq)
    aug = FrameDataset(seq, augment=True, seed=1)
    item, again = aug[2], aug[2]
    assert torch.equal(item["image"], again["image"])
    assert not torch.equal(item["image"], plain[2]["image"])
    assert torch.equal(item["coords"], plain[2]["coords"])  # labels untouched
    aug.set_epoch(1)
    assert not torch.equal(aug[2]["image"], item["image"])
    # brightness within +-20/255 and contrast within [0.8, 1.2]
    for i in range(len(aug)):
        p = aug.draw(i)
        assert abs(p["brightness"]) <= 20 / 255 and 0.8 <= p["contrast"] <= 1.2
        assert p["angle"] == 0.0 and p["zoom"] == 1.0
    batch = torch.utils.data.default_collate([plain[0], plain[1]])
    assert batch["image"].shape == (2, 3, H, W) and batch["pose"].dtype == torch.float64


def test_rotation_augmentation_keeps_labels_consistent(tmp_path):
    """Rotated + zoomed frames: every valid label projects (with the updated pose and K) to
    its cell pixel within the nearest-sampling error (<= 0.71 px for full labels)."""
    root, _ = make_folder(tmp_path / "seq", n=3)
    seq = SequenceFolder(root)
    ds = FrameDataset(seq, rotation=30.0, zoom=(0.8, 1.0), seed=4)
    angles = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            angles.append(ds.draw(i)["angle"])
            assert item["valid"].sum() > 10
            assert reprojection(item).max() < 0.71
    assert max(abs(a) for a in angles) > math.radians(5)
    assert max(abs(a) for a in angles) <= math.radians(30)
    # angle 0, zoom 1: the identity
    frame = seq.frame(1)
    same = rotate_frame(frame, seq.load_label_raw(1), 0.0, 1.0)
    assert torch.allclose(same["image"], frame["image"], atol=1e-5)
    assert torch.equal(same["coords"], frame["coords"]) and torch.equal(same["pose"], frame["pose"])
    # 1/8 labels: nearest stored cell (up to ~5.7 px away)
    eighth, _ = make_folder(tmp_path / "eighth", n=3, full=False)
    ds8 = FrameDataset(SequenceFolder(eighth), rotation=30.0, seed=4)
    assert reprojection(ds8[1]).max() < 6.0


def test_frame_groups(tmp_path, seq_synth):
    root, _ = make_folder(tmp_path / "seq", n=6)
    seq = SequenceFolder(root)
    pairs = FrameGroupDataset(seq, group=2)
    assert len(pairs) == 5 and pairs[4]["frame"].tolist() == [4, 5]
    groups = FrameGroupDataset([seq, seq], group=4, reverse=True, augment=True, rotation=20.0)
    assert len(groups) == 2 * 3 * 2
    fwd, rev = groups[0], groups[1]
    assert fwd["frame"].tolist() == [0, 1, 2, 3] and rev["frame"].tolist() == [3, 2, 1, 0]
    assert rev["reversed"] and not fwd["reversed"]
    assert fwd["image"].shape == (4, 3, H, W) and fwd["coords"].shape == (4, 3, H // 8, W // 8)
    assert fwd["name"].split("|")[0] == "images/f000.png"
    for k in range(4):  # one augmentation shared by the group: labels stay consistent
        one = {key: fwd[key][k] for key in ("coords", "valid", "pose", "K")}
        assert reprojection(one).max() < 0.71
    with pytest.raises(InputError, match="groups of 8"):
        FrameGroupDataset(seq, group=8)
    folders = [SequenceFolder(p) for p in resolve_input_folder(seq_synth)]
    kf = FrameGroupDataset(folders, group=4, reverse=True)
    assert len(kf) == 2 * 21 * 2
    batch = torch.utils.data.default_collate([kf[0], kf[1]])
    assert batch["image"].shape == (2, 4, 3, 96, 128) and batch["valid"].shape == (2, 4, 12, 16)
