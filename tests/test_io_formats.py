"""dgeo.io.formats: exact values on hand-written files, round trips, malformations, atomicity."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch

from dgeo.errors import CameraModelError, DataFileNotFoundError, InputError, ParseError
from dgeo.geometry import Camera, Pose
from dgeo.io import formats as fio
from dgeo.io.atomic import atomic_directory, atomic_open


def write(tmp_path: Path, text: str, name: str = "f.txt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def assert_parse_error(exc_info, path: Path, line: int | None):
    """The message names the file, the line and the expected format."""
    msg = str(exc_info.value)
    assert str(path) in msg, msg
    if line is not None:
        assert f"line {line}" in msg, msg
    if isinstance(exc_info.value, ParseError):
        assert exc_info.value.line == line


# ---------------------------------------------------------------------------------- queries
QUERIES = """# hloc query list
query/night/001.jpg SIMPLE_RADIAL 1024 768 868.99 512.5 384.25 -0.0399

query/day/002.jpg PINHOLE 640 480 500 510 320 240
"""


def test_queries_exact_values(tmp_path):
    names, cams = fio.read_queries_with_intrinsics(write(tmp_path, QUERIES))
    assert names == ["query/night/001.jpg", "query/day/002.jpg"]
    # SIMPLE_RADIAL + PINHOLE: the simplest common model is OPENCV
    assert cams.model == "OPENCV" and cams.shape == (2,) and cams.dtype == torch.float64
    expect = torch.tensor(
        [
            [868.99, 868.99, 512.0, 383.75, -0.0399, 0, 0, 0],
            [500, 510, 319.5, 239.5, 0, 0, 0, 0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(cams.params, expect, rtol=0, atol=1e-12)
    assert cams.width.tolist() == [1024, 640] and cams.height.tolist() == [768, 480]


def test_queries_single_model_is_kept_and_matches_pycolmap(tmp_path):
    text = (
        "a.jpg SIMPLE_RADIAL 1024 768 868.99 512.5 384.25 -0.0399\n"
        "b.jpg SIMPLE_RADIAL 10 20 5 5 10 0\n"
    )
    _, cams = fio.read_queries_with_intrinsics(write(tmp_path, text))
    assert cams.model == "SIMPLE_RADIAL"
    # same pixel as pycolmap's projection, minus 0.5
    ref = pycolmap.Camera(
        model="SIMPLE_RADIAL", width=1024, height=768, params=[868.99, 512.5, 384.25, -0.0399]
    )
    p = np.array([[0.3, -0.2, 2.0], [0.0, 0.1, 1.0]])
    uv, _ = cams[0].project(torch.from_numpy(p))
    np.testing.assert_allclose(uv.numpy(), ref.img_from_cam(p) - 0.5, rtol=0, atol=1e-9)


@pytest.mark.parametrize("model", list(Camera.PARAM_NAMES))
def test_queries_round_trip(tmp_path, model):
    rng = np.random.default_rng(0)
    n = len(Camera.PARAM_NAMES[model])
    params = torch.from_numpy(rng.uniform(0.01, 0.1, size=(3, n)))
    params[:, : n - len([k for k in Camera.PARAM_NAMES[model] if k[0] in "kp"])] *= 5000
    cams = Camera(model, torch.tensor([640, 800, 1024]), torch.tensor([480, 600, 768]), params)
    names = ["q/0.png", "q/1.png", "q/2.png"]
    path = fio.write_queries_with_intrinsics(tmp_path / "queries.txt", names, cams)
    first = path.read_text().splitlines()[0].split()
    # the file is in COLMAP's convention: cx + 0.5
    cx = Camera.PARAM_NAMES[model].index("cx")
    assert float(first[4 + cx]) == pytest.approx(float(params[0, cx]) + 0.5, abs=1e-12)
    names2, cams2 = fio.read_queries_with_intrinsics(path)
    assert names2 == names and cams2.model == model
    torch.testing.assert_close(cams2.params, params, rtol=0, atol=1e-12)
    torch.testing.assert_close(cams2.size, cams.size.double(), rtol=0, atol=0)


def test_queries_write_mixed_list(tmp_path):
    cams = [
        Camera("SIMPLE_PINHOLE", 64, 48, torch.tensor([50.0, 31.5, 23.5], dtype=torch.float64)),
        Camera("RADIAL", 64, 48, torch.tensor([50.0, 31.5, 23.5, 0.1, 0.01], dtype=torch.float64)),
    ]
    path = fio.write_queries_with_intrinsics(tmp_path / "q.txt", ["a", "b"], cams)
    assert (
        path.read_text()
        == "a SIMPLE_PINHOLE 64 48 50.0 32.0 24.0\nb RADIAL 64 48 50.0 32.0 24.0 0.1 0.01\n"
    )
    _, back = fio.read_queries_with_intrinsics(path)
    assert back.model == "RADIAL"
    torch.testing.assert_close(back[0].params, cams[0].to_model("RADIAL").params)
    with pytest.raises(InputError, match="whitespace"):
        fio.write_queries_with_intrinsics(tmp_path / "q.txt", ["a b", "c"], cams)


BAD_QUERIES = {
    "too few fields": ("a.jpg PINHOLE 640", ParseError, "3 fields"),
    "unknown model": ("a.jpg FISHEYE_X 640 480 1 2 3", CameraModelError, "FISHEYE_X"),
    "unsupported model": (
        "a.jpg OPENCV_FISHEYE 640 480 1 1 2 3 0 0 0 0",
        CameraModelError,
        "supports",
    ),
    "wrong param count": (
        "a.jpg PINHOLE 640 480 500 500 320",
        CameraModelError,
        "takes 4 parameters",
    ),
    "non-number": ("a.jpg PINHOLE 640 480 500 5OO 320 240", ParseError, "'5OO' is not a number"),
    "nan": ("a.jpg PINHOLE 640 480 500 nan 320 240", ParseError, "finite"),
    "inf": ("a.jpg PINHOLE 640 480 500 500 inf 240", ParseError, "finite"),
    "fractional width": ("a.jpg PINHOLE 640.5 480 500 500 320 240", ParseError, "not an integer"),
    "zero height": ("a.jpg PINHOLE 640 0 500 500 320 240", ParseError, "positive"),
    "negative focal": ("a.jpg SIMPLE_PINHOLE 640 480 -500 320 240", ParseError, "focal"),
    "duplicate name": ("a.jpg SIMPLE_PINHOLE 640 480 500 320 240", ParseError, "duplicate"),
}


@pytest.mark.parametrize("kind", list(BAD_QUERIES))
def test_queries_bad_input(tmp_path, kind):
    line, exc, msg = BAD_QUERIES[kind]
    path = write(tmp_path, f"# header\na.jpg SIMPLE_PINHOLE 640 480 500 320 240\n\n{line}\n")
    with pytest.raises(exc, match=msg) as e:
        fio.read_queries_with_intrinsics(path)
    assert_parse_error(e, path, 4)
    assert "name MODEL width height" in str(e.value)  # the expected format


def test_queries_missing_file(tmp_path):
    with pytest.raises(DataFileNotFoundError, match=r"missing\.txt"):
        fio.read_queries_with_intrinsics(tmp_path / "missing.txt")


def test_queries_empty_file(tmp_path):
    names, cams = fio.read_queries_with_intrinsics(write(tmp_path, "# nothing\n\n"))
    assert names == [] and cams.shape == (0,)


# ---------------------------------------------------------------------------------- results
def test_results_exact_values(tmp_path):
    text = "# name qw qx qy qz tx ty tz\nrear/1.jpg 1 0 0 0 1 2 3\n\nrear/2.jpg 0 0 0 1 0.5 -1 2\n"
    names, poses = fio.read_hloc_results(write(tmp_path, text))
    assert names == ["rear/1.jpg", "rear/2.jpg"] and poses.dtype == torch.float64
    torch.testing.assert_close(poses.R[0], torch.eye(3, dtype=torch.float64))
    # 180 degrees about z
    torch.testing.assert_close(
        poses.R[1], torch.diag(torch.tensor([-1.0, -1, 1], dtype=torch.float64))
    )
    torch.testing.assert_close(
        poses.t, torch.tensor([[1.0, 2, 3], [0.5, -1, 2]], dtype=torch.float64)
    )


def test_results_agree_with_pycolmap(tmp_path):
    """w-first in the file, x-first in pycolmap: the same rotation."""
    q_wxyz = np.array([0.8, 0.2, -0.4, 0.4]) / np.linalg.norm([0.8, 0.2, -0.4, 0.4])
    path = write(tmp_path, "x.jpg " + " ".join(map(repr, q_wxyz.tolist())) + " 1 2 3\n")
    _, pose = fio.read_hloc_results(path)
    ref = pycolmap.Rigid3d(pycolmap.Rotation3d(q_wxyz[[1, 2, 3, 0]]), [1.0, 2, 3])
    np.testing.assert_allclose(pose[0].numpy()[:3], ref.matrix(), rtol=0, atol=1e-12)


def test_results_round_trip(tmp_path):
    torch.manual_seed(0)
    poses = Pose.from_axis_angle(
        torch.randn(50, 3, dtype=torch.float64) * 2, torch.randn(50, 3, dtype=torch.float64)
    )
    names = [f"cam{i % 2}/{i:05d}.jpg" for i in range(50)]
    path = fio.write_hloc_results(tmp_path / "results.txt", names, poses)
    lines = path.read_text().splitlines()
    assert len(lines) == 50 and all(float(line.split()[1]) >= 0 for line in lines)  # w >= 0
    names2, poses2 = fio.read_hloc_results(path)
    assert names2 == names
    torch.testing.assert_close(poses2.data, poses.data, rtol=0, atol=1e-12)


BAD_RESULTS = {
    "7 fields": ("b.jpg 1 0 0 0 1 2", "7 fields"),
    "9 fields": ("b.jpg 1 0 0 0 1 2 3 4", "9 fields"),
    "non-number": ("b.jpg 1 0 0 0 1 two 3", "'two' is not a number"),
    "nan": ("b.jpg 1 0 0 0 1 nan 3", "finite"),
    "inf": ("b.jpg 1 0 0 -inf 1 2 3", "finite"),
    "zero quaternion": ("b.jpg 0 0 0 0 1 2 3", "zero quaternion"),
    "non-unit quaternion": ("b.jpg 1 2 3 1 0 0 0", "not 1"),
    "duplicate name": ("a.jpg 1 0 0 0 1 2 3", "duplicate name 'a.jpg' \\(first on line 2\\)"),
}


@pytest.mark.parametrize("kind", list(BAD_RESULTS))
def test_results_bad_input(tmp_path, kind):
    line, msg = BAD_RESULTS[kind]
    path = write(tmp_path, f"\na.jpg 1 0 0 0 0 0 0\n# comment\n{line}\n")
    with pytest.raises(ParseError, match=msg) as e:
        fio.read_hloc_results(path)
    assert_parse_error(e, path, 4)
    assert "name qw qx qy qz tx ty tz" in str(e.value)


def test_results_writer_checks(tmp_path):
    poses = Pose.identity((2,), torch.float64)
    with pytest.raises(InputError, match="whitespace"):
        fio.write_hloc_results(tmp_path / "r.txt", ["a", "b c"], poses)
    with pytest.raises(InputError, match="batch shape"):
        fio.write_hloc_results(tmp_path / "r.txt", ["a"], poses)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- KFNet lists
def test_path_lists(tmp_path):
    (tmp_path / "seq-01").mkdir()
    for i in range(3):
        (tmp_path / "seq-01" / f"frame-{i:06d}.color.png").touch()
    text = (
        "# time order\nseq-01/frame-000000.color.png\n\n"
        "seq-01/frame-000001.color.png\n/abs/x y.png\n"
    )
    path = write(tmp_path, text, "image_list.txt")
    assert fio.read_image_list(path) == [
        Path("seq-01/frame-000000.color.png"),
        Path("seq-01/frame-000001.color.png"),
        Path("/abs/x y.png"),
    ]
    got = fio.read_label_list(path, root=tmp_path)
    assert got[0] == tmp_path / "seq-01/frame-000000.color.png" and got[2] == Path("/abs/x y.png")
    with pytest.raises(DataFileNotFoundError, match="line 5"):
        fio.read_image_list(path, root=tmp_path, check_exists=True)
    dup = write(tmp_path, "a.png\nb.png\na.png\n", "dup.txt")
    with pytest.raises(ParseError, match=r"duplicate path 'a\.png' \(first on line 1\)") as e:
        fio.read_path_list(dup)
    assert_parse_error(e, dup, 3)
    out = fio.write_path_list(tmp_path / "out.txt", [Path("a/b.png"), "c.png"])
    assert fio.read_path_list(out) == [Path("a/b.png"), Path("c.png")]
    with pytest.raises(InputError):
        fio.write_path_list(tmp_path / "out.txt", [" lead.png"])
    assert fio.read_path_list(out) == [Path("a/b.png"), Path("c.png")]


def test_not_utf8(tmp_path):
    p = tmp_path / "bin.txt"
    p.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(ParseError, match="not UTF-8") as e:
        fio.read_path_list(p)
    assert_parse_error(e, p, None)


# ---------------------------------------------------------------------------------- KFNet arrays
@pytest.mark.parametrize("hw", [(480, 640), (60, 80)])
def test_kfnet_label_round_trip(tmp_path, hw):
    rng = np.random.default_rng(0)
    label = rng.normal(size=(*hw, 4)).astype(np.float32)
    label[..., 3] = rng.integers(0, 2, size=hw)
    label[label[..., 3] == 0, :3] = -1
    path = fio.write_kfnet_label(tmp_path / "frame.label.bin", label)
    assert path.stat().st_size == hw[0] * hw[1] * 16
    # the byte layout KFNet's loaders expect: raw float32 C order, no header
    np.testing.assert_array_equal(np.fromfile(path, np.float32).reshape(*hw, 4), label)
    back = fio.read_kfnet_label(path)
    assert back.dtype == torch.float32 and tuple(back.shape) == (*hw, 4)
    np.testing.assert_array_equal(back.numpy(), label)


def test_kfnet_label_exact_bytes(tmp_path):
    values = np.arange(60 * 80 * 4, dtype=np.float32)
    path = tmp_path / "l.bin"
    values.tofile(path)
    label = fio.read_kfnet_label(path)
    assert label[0, 0].tolist() == [0, 1, 2, 3] and label[1, 0, 0] == 80 * 4
    assert label[59, 79, 3] == 60 * 80 * 4 - 1


@pytest.mark.parametrize("nbytes", [0, 100, 4_915_200 - 16, 4_915_200 + 4])
def test_kfnet_label_wrong_size(tmp_path, nbytes):
    path = tmp_path / "bad.bin"
    path.write_bytes(b"\0" * nbytes)
    with pytest.raises(ParseError) as e:
        fio.read_kfnet_label(path)
    msg = str(e.value)
    assert str(path) in msg and f"{nbytes:,} bytes" in msg
    assert "4,915,200 (480x640x4)" in msg and "76,800 (60x80x4)" in msg


def test_kfnet_label_custom_sizes(tmp_path):
    path = fio.write_kfnet_label(tmp_path / "l.bin", np.ones((3, 5, 4), np.float32))
    with pytest.raises(ParseError, match="240 bytes"):
        fio.read_kfnet_label(path)
    assert tuple(fio.read_kfnet_label(path, sizes=[(5, 3), (3, 5)]).shape) == (5, 3, 4)
    with pytest.raises(InputError, match=r"\(H, W, 4\)"):
        fio.write_kfnet_label(tmp_path / "l.bin", np.ones((3, 5, 3), np.float32))


TRANSFORM = """# KFNet transform.txt (chess)
0.95969 0.205793 -0.191428 0.207924
0.0738071 0.47266 0.878149 -0.190767
0.271197 -0.856879 0.438418 1.71634
0 0 0 1
"""


def test_transform_exact_and_round_trip(tmp_path):
    T = fio.read_transform(write(tmp_path, TRANSFORM))
    assert T.dtype == torch.float64 and T.shape == (4, 4)
    assert T[0].tolist() == [0.95969, 0.205793, -0.191428, 0.207924]
    assert T[2, 3].item() == 1.71634 and T[3].tolist() == [0, 0, 0, 1]
    path = fio.write_transform(tmp_path / "t2.txt", T)
    assert torch.equal(fio.read_transform(path), T)


BAD_TRANSFORM = {
    "3 rows": ("1 0 0 0\n0 1 0 0\n0 0 1 0\n", None, "3 rows"),
    "5 rows": ("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n0 0 0 1\n", 5, "fifth row"),
    "3 columns": ("1 0 0 0\n0 1 0\n0 0 1 0\n0 0 0 1\n", 2, "3 numbers"),
    "non-number": ("1 0 0 0\n0 1 0 0\n0 0 one 0\n0 0 0 1\n", 3, "'one' is not a number"),
    "nan": ("1 0 0 0\n0 1 0 0\n0 0 1 nan\n0 0 0 1\n", 3, "finite"),
    "last row": ("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 1 1\n", None, "last row"),
}


@pytest.mark.parametrize("kind", list(BAD_TRANSFORM))
def test_transform_bad_input(tmp_path, kind):
    text, line, msg = BAD_TRANSFORM[kind]
    path = write(tmp_path, text)
    with pytest.raises(ParseError, match=msg) as e:
        fio.read_transform(path)
    assert_parse_error(e, path, line)
    assert "4 lines of 4 numbers" in str(e.value)


def test_kfnet_outputs_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    coords = torch.from_numpy(rng.normal(size=(60, 80, 4)).astype(np.float32))
    flow = rng.normal(size=(60, 80, 3))  # float64 in, float32 on disk
    cpath = fio.write_kfnet_coords(fio.kfnet_coord_path(tmp_path, 17), coords)
    fpath = fio.write_kfnet_flow(fio.kfnet_flow_path(tmp_path, 16), flow)
    assert cpath.name == "coord_17.npy" and fpath.name == "16_17_flow.npy"
    assert fio.kfnet_flow_path(tmp_path, 3, 9).name == "3_9_flow.npy"
    assert np.load(cpath).dtype == np.float32  # what KFNet's viewers load
    assert torch.equal(fio.read_kfnet_coords(cpath), coords)
    np.testing.assert_array_equal(fio.read_kfnet_flow(fpath).numpy(), flow.astype(np.float32))


def test_kfnet_outputs_bad_input(tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((60, 80, 3), np.float32))
    with pytest.raises(ParseError, match=r"\(60, 80, 3\).*\(H, W, 4\)") as e:
        fio.read_kfnet_coords(tmp_path / "wrong.npy")
    assert_parse_error(e, tmp_path / "wrong.npy", None)
    np.save(tmp_path / "ints.npy", np.zeros((6, 8, 3), np.int32))
    with pytest.raises(ParseError, match="dtype int32"):
        fio.read_kfnet_flow(tmp_path / "ints.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ParseError, match=r"not a valid \.npy"):
        fio.read_kfnet_flow(tmp_path / "junk.npy")
    with pytest.raises(DataFileNotFoundError):
        fio.read_kfnet_coords(tmp_path / "coord_0.npy")
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        fio.write_kfnet_flow(tmp_path / "f.npy", np.zeros((6, 8)))


# ---------------------------------------------------------------------------------- atomicity
def _no_temporaries(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in folder.iterdir())


def test_failed_lazy_write_keeps_old_file(tmp_path):
    path = fio.write_path_list(tmp_path / "list.txt", ["old1.png", "old2.png"])
    before = path.read_bytes()

    def paths():
        yield "new1.png"
        yield "new2.png"
        raise RuntimeError("source failed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        fio.write_path_list(path, paths())
    assert path.read_bytes() == before and _no_temporaries(tmp_path)


def test_failed_results_write_keeps_old_file(tmp_path):
    poses = Pose.identity((3,), torch.float64)
    path = fio.write_hloc_results(tmp_path / "results.txt", ["a", "b", "c"], poses)
    before = path.read_bytes()

    class Names(list):
        """Names whose third element blows up while the file is being written."""

        def __iter__(self):
            yield "x"
            yield "y"
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fio.write_hloc_results(path, Names(["x", "y", "z"]), poses)
    assert path.read_bytes() == before and _no_temporaries(tmp_path)
    # a bad name in the middle is caught while writing, with the same guarantee
    with pytest.raises(InputError):
        fio.write_hloc_results(path, ["x", "y z", "w"], poses)
    assert path.read_bytes() == before and _no_temporaries(tmp_path)


def test_atomic_open_binary_and_permissions(tmp_path):
    path = tmp_path / "sub" / "a.npy"
    with atomic_open(path, "wb") as f:
        np.save(f, np.arange(3))
        assert not path.exists()  # invisible until complete
    assert np.load(path).tolist() == [0, 1, 2]
    # default permissions (umask), not tempfile's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(ValueError, match="boom"), atomic_open(path, "wb") as f:
        f.write(b"partial")
        raise ValueError("boom")
    assert np.load(path).tolist() == [0, 1, 2] and _no_temporaries(path.parent)
    with pytest.raises(InputError):
        with atomic_open(path, "a"):
            pass


def test_atomic_directory(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(KeyError), atomic_directory(target, replace_names=["a.txt"]) as tmp:
        (tmp / "b.txt").write_text("2")
        raise KeyError("fail")
    assert sorted(os.listdir(target)) == ["a.txt"] and sorted(os.listdir(tmp_path)) == ["model"]
    with atomic_directory(target, replace_names=["a.txt", "b.txt"]) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(os.listdir(target)) == ["b.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"), atomic_directory(tmp_path / "file"):
        pass
