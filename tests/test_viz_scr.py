"""Tests of the scene-coordinate pictures: PLY clouds (parsed back by an independent reader),
the flow colour wheel (against the Middlebury / flow_vis reference code, re-typed here), the
trajectory plot, and the ``dgeo viz`` commands."""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import dgeo.cli.commands  # noqa: F401  (registers the commands)
from dgeo.cli.main import app, main
from dgeo.errors import InputError, ShapeError
from dgeo.geometry import Pose
from dgeo.io.formats import write_hloc_results, write_kfnet_coords, write_kfnet_flow
from dgeo.viz import (
    coords_to_cloud,
    flow_color_wheel,
    flow_to_color,
    plot_trajectory,
    read_ply,
    write_ply,
)
from dgeo.viz.trajectory import view_axes

runner = CliRunner()


# ---------------------------------------------------------------------------------- PLY
def parse_ply(path: Path) -> tuple[list[str], np.ndarray | list[list[str]]]:
    """An independent reader: the header lines and the raw body (binary: one record per vertex
    unpacked with struct for x y z float, r g b uchar, confidence float)."""
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    header = head.decode("ascii").splitlines()
    if "format ascii 1.0" in header:
        return header, [ln.split() for ln in body.decode("ascii").splitlines()]
    rec = struct.Struct("<fffBBBf")
    assert len(body) % rec.size == 0
    return header, np.array([rec.unpack_from(body, k) for k in range(0, len(body), rec.size)])


def test_ply_binary_and_ascii_round_trip(tmp_path):
    gen = np.random.default_rng(0)
    pts = gen.normal(size=(50, 3)).astype(np.float32)
    cols = gen.integers(0, 256, size=(50, 3)).astype(np.uint8)
    conf = gen.uniform(0, 100, size=50).astype(np.float32)
    for binary in (True, False):
        path = tmp_path / f"c{binary}.ply"
        write_ply(path, pts, cols, {"confidence": conf}, binary=binary)
        header, body = parse_ply(path)
        assert header[:2] == ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0"]
        assert "element vertex 50" in header
        props = [h.split()[1:] for h in header if h.startswith("property")]
        assert props == [
            ["float", "x"], ["float", "y"], ["float", "z"], ["uchar", "red"], ["uchar", "green"],
            ["uchar", "blue"], ["float", "confidence"],
        ]  # fmt: skip
        table = np.asarray(body, dtype=np.float64)
        assert table.shape == (50, 7)
        np.testing.assert_allclose(table[:, :3], pts, rtol=1e-6)
        np.testing.assert_array_equal(table[:, 3:6], cols)
        np.testing.assert_allclose(table[:, 6], conf, rtol=1e-6)
        back = read_ply(path)
        np.testing.assert_allclose(np.stack([back["x"], back["y"], back["z"]], 1), pts, rtol=1e-6)
        assert back["red"].dtype == np.uint8


def test_ply_float_colours_no_colours_and_errors(tmp_path):
    pts = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    path = write_ply(tmp_path / "a.ply", pts, torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    back = read_ply(path)
    np.testing.assert_array_equal(back["green"], [128, 0])
    bare = read_ply(write_ply(tmp_path / "b.ply", pts))
    assert set(bare) == {"x", "y", "z"}
    empty = read_ply(write_ply(tmp_path / "e.ply", np.zeros((0, 3)), np.zeros((0, 3), np.uint8)))
    assert len(empty["x"]) == 0
    with pytest.raises(ShapeError):
        write_ply(tmp_path / "c.ply", torch.zeros(4, 2))
    with pytest.raises(InputError, match="NaN"):
        write_ply(tmp_path / "c.ply", torch.tensor([[math.nan, 0.0, 0.0]]))
    with pytest.raises(ShapeError, match="colors"):
        write_ply(tmp_path / "c.ply", pts, np.zeros((3, 3), np.uint8))


def test_coords_to_cloud_colours_and_confidence():
    h, w = 3, 4
    coords = np.zeros((h, w, 4), np.float32)
    coords[..., 0] = np.arange(w)[None]
    coords[..., 1] = np.arange(h)[:, None]
    coords[..., 3] = np.arange(h * w).reshape(h, w) * 5.0  # confidence 0 .. 55
    coords[0, 0, 2] = np.nan
    # an 8x-stride image whose pixel (x, y) has colour (x, y, 7)
    H, W = 8 * h, 8 * w
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = np.arange(W)[None]
    img[..., 1] = np.arange(H)[:, None]
    img[..., 2] = 7
    pts, cols, conf = coords_to_cloud(coords, img, min_confidence=20)
    keep = coords[..., 3] > 20
    assert len(pts) == keep.sum() == 7
    np.testing.assert_array_equal(pts, coords[..., :3][keep])
    i, j = np.nonzero(keep)
    np.testing.assert_array_equal(cols, np.stack([8 * j + 4, 8 * i + 4, np.full_like(i, 7)], 1))
    np.testing.assert_array_equal(conf, coords[..., 3][keep])
    # the same from a (3, H, W) float image; no threshold keeps the finite cells only
    t_img = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    pts2, cols2, _ = coords_to_cloud(torch.from_numpy(coords), t_img, None)
    assert len(pts2) == h * w - 1
    np.testing.assert_array_equal(cols2[-7:], cols)
    # confidence colours: turbo, low blue-ish, high red-ish
    _, ccols, cconf = coords_to_cloud(coords, None, 0)
    lo, hi = ccols[np.argmin(cconf)], ccols[np.argmax(cconf)]
    assert lo[2] > lo[0] and hi[0] > hi[2]
    with pytest.raises(InputError, match="whole multiple"):
        coords_to_cloud(coords, img[:20], 0)
    with pytest.raises(ShapeError):
        coords_to_cloud(coords[..., :3], None)


# ---------------------------------------------------------------------------------- flow
def reference_color_wheel() -> np.ndarray:
    """``make_colorwheel`` of the Middlebury code as flow_vis ships it (re-typed)."""
    RY, YG, GC, CB, BM, MR = 15, 6, 4, 11, 13, 6
    wheel = np.zeros((RY + YG + GC + CB + BM + MR, 3))
    col = 0
    wheel[0:RY, 0] = 255
    wheel[0:RY, 1] = np.floor(255 * np.arange(0, RY) / RY)
    col += RY
    wheel[col : col + YG, 0] = 255 - np.floor(255 * np.arange(0, YG) / YG)
    wheel[col : col + YG, 1] = 255
    col += YG
    wheel[col : col + GC, 1] = 255
    wheel[col : col + GC, 2] = np.floor(255 * np.arange(0, GC) / GC)
    col += GC
    wheel[col : col + CB, 1] = 255 - np.floor(255 * np.arange(CB) / CB)
    wheel[col : col + CB, 2] = 255
    col += CB
    wheel[col : col + BM, 2] = 255
    wheel[col : col + BM, 0] = np.floor(255 * np.arange(0, BM) / BM)
    col += BM
    wheel[col : col + MR, 2] = 255 - np.floor(255 * np.arange(MR) / MR)
    wheel[col : col + MR, 0] = 255
    return wheel


def reference_flow_to_color(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``flow_uv_to_colors`` of flow_vis after its normalisation by the longest flow."""
    wheel = reference_color_wheel()
    ncols = wheel.shape[0]
    rad = np.sqrt(np.square(u) + np.square(v))
    a = np.arctan2(-v, -u) / np.pi
    fk = (a + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int32)
    k1 = k0 + 1
    k1[k1 == ncols] = 0
    f = fk - k0
    out = np.zeros((*u.shape, 3), np.uint8)
    for i in range(3):
        col0, col1 = wheel[:, i][k0] / 255.0, wheel[:, i][k1] / 255.0
        col = (1 - f) * col0 + f * col1
        idx = rad <= 1
        col[idx] = 1 - rad[idx] * (1 - col[idx])
        col[~idx] = col[~idx] * 0.75
        out[..., i] = np.floor(255 * col)
    return out


def test_flow_wheel_matches_the_reference():
    np.testing.assert_array_equal(flow_color_wheel(), reference_color_wheel())


def test_flow_colours_known_directions():
    # right, down, left, up, none, half-length right (x right, y down)
    flow = np.array([[[1, 0], [0, 1], [-1, 0], [0, -1], [0, 0], [0.5, 0]]], np.float64)
    rgb = flow_to_color(flow).astype(int)[0]
    np.testing.assert_array_equal(rgb[0], [255, 0, 0])  # right: red
    assert rgb[1][0] == 255 and abs(rgb[1][1] - 230) <= 1 and rgb[1][2] == 0  # down: orange
    np.testing.assert_array_equal(rgb[2], [0, 209, 255])  # left: cyan-blue
    assert abs(rgb[3][0] - 88) <= 1 and rgb[3][1] == 0 and rgb[3][2] == 255  # up: violet
    np.testing.assert_array_equal(rgb[4], [255, 255, 255])  # no motion: white
    assert rgb[5][0] == 255 and abs(rgb[5][1] - 128) <= 1 and abs(rgb[5][2] - 128) <= 1
    # a random field against the reference (which floors where we round: within 1)
    gen = np.random.default_rng(1)
    f = gen.normal(size=(9, 11, 2))
    ours = flow_to_color(np.moveaxis(f, -1, 0)).astype(int)  # (2, h, w) input too
    r = np.hypot(f[..., 0], f[..., 1]).max()
    ref = reference_flow_to_color(f[..., 0] / r, f[..., 1] / r).astype(int)
    assert np.abs(ours - ref).max() <= 1
    # lengths above max_radius are darkened; invalid cells are black
    capped = flow_to_color(f, max_radius=0.5, valid=np.abs(f[..., 0]) < 2)
    assert (capped[np.abs(f[..., 0]) >= 2] == 0).all()
    with pytest.raises(ShapeError):
        flow_to_color(np.zeros((4, 4, 3)))


# ---------------------------------------------------------------------------------- trajectory
def circle_poses(n: int, radius: float = 2.0, height: float = 1.5) -> Pose:
    """Cameras on a horizontal circle (world z up) looking outwards."""
    a = torch.linspace(0, 1.5 * math.pi, n, dtype=torch.float64)
    centres = torch.stack([radius * a.cos(), radius * a.sin(), torch.full_like(a, height)], -1)
    z = torch.stack([a.cos(), a.sin(), torch.zeros_like(a)], -1)  # optical axis
    x = torch.stack([-a.sin(), a.cos(), torch.zeros_like(a)], -1)
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z], -2)  # rows: camera axes in world coordinates
    return Pose.from_Rt(R, -(R @ centres[..., None])[..., 0])


def test_trajectory_plot(tmp_path):
    gt = circle_poses(30)
    noisy = Pose.from_Rt(gt.R, gt.t + 0.05 * torch.randn(30, 3, dtype=torch.float64))
    ok = [True] * 30
    ok[7] = False
    img = plot_trajectory(noisy, gt, success=ok, title="test", size=400, path=tmp_path / "t.png")
    assert img.dtype == np.uint8 and img.ndim == 3 and max(img.shape[:2]) >= 400
    back = cv2.imread(str(tmp_path / "t.png"))
    np.testing.assert_array_equal(back, img)
    green = ((img[..., 1] > 140) & (img[..., 0] < 90) & (img[..., 2] < 90)).sum()
    red = ((img[..., 2] > 200) & (img[..., 0] < 80) & (img[..., 1] < 80)).sum()
    assert green > 200 and red > 50
    only = plot_trajectory(gt, size=300)  # without ground truth
    assert only.shape[2] == 3
    with pytest.raises(InputError, match="30 estimated poses but 10"):
        plot_trajectory(noisy, gt[:10])
    with pytest.raises(InputError, match="axes"):
        plot_trajectory(noisy, gt, axes="xw")


def test_view_axes():
    c = np.array([[0.0, 0.0, 5.0], [1.0, 0.0, 5.1], [1.0, 2.0, 4.9]])
    assert view_axes(c) == (0, 1)  # z varies least: top-down view
    assert view_axes(c[:, [0, 2, 1]]) == (0, 2)
    assert view_axes(c, "yz") == (1, 2)


# ---------------------------------------------------------------------------------- CLI
def run_main(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["dgeo", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


def test_viz_commands(tmp_path, monkeypatch, capsys):
    coords = np.zeros((6, 8, 4), np.float32)
    coords[..., :3] = np.random.default_rng(2).normal(size=(6, 8, 3))
    coords[..., 3] = np.linspace(1, 100, 48).reshape(6, 8)
    write_kfnet_coords(tmp_path / "coord_3.npy", coords)
    flow = np.zeros((6, 8, 3), np.float32)
    flow[..., 0], flow[..., 2] = 1.0, 50.0
    write_kfnet_flow(tmp_path / "2_3_flow.npy", flow)
    image = np.full((48, 64, 3), 200, np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), image)
    gt = circle_poses(12)
    write_hloc_results(tmp_path / "gt.txt", [f"seq/f{i}.png" for i in range(12)], gt)
    write_hloc_results(tmp_path / "res.txt", [f"f{i}.png" for i in range(11)], gt[:11])

    ply = tmp_path / "cloud.ply"
    res = runner.invoke(app, ["viz", "coords", str(tmp_path / "coord_3.npy"), "-o", str(ply)])
    assert res.exit_code == 0, res.output
    assert len(read_ply(ply)["x"]) == int((coords[..., 3] > 20).sum())
    args = ["viz", "coords", str(tmp_path / "coord_3.npy"), "-o", str(ply), "--ascii"]
    args += ["--min-confidence", "0", "--image", str(tmp_path / "frame.png")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    back = read_ply(ply)
    assert len(back["x"]) == 48 and (back["red"] == 200).all()
    assert ply.read_bytes().startswith(b"ply\nformat ascii 1.0\n")

    png = tmp_path / "flow.png"
    res = runner.invoke(app, ["viz", "flow", str(tmp_path / "2_3_flow.npy"), "-o", str(png)])
    assert res.exit_code == 0, res.output
    pic = cv2.imread(str(png))
    assert pic.shape == (48, 64, 3) and (pic[..., 2] == 255).all() and (pic[..., :2] == 0).all()

    traj = tmp_path / "traj.png"
    args = ["viz", "trajectory", str(tmp_path / "res.txt"), "--gt", str(tmp_path / "gt.txt")]
    res = runner.invoke(app, [*args, "-o", str(traj)])
    assert res.exit_code == 0, res.output
    assert "1 ground-truth frame(s) have no result" in res.output and traj.is_file()

    cases = [
        (["viz", "coords", str(tmp_path / "coord_3.npy"), "-o", str(ply), "--min-confidence",
          "1000"], "lower --min-confidence"),
        (["viz", "coords", str(tmp_path / "2_3_flow.npy"), "-o", str(ply)], "coordinate map"),
        (["viz", "flow", str(tmp_path / "nope.npy"), "-o", str(png)], "does not exist"),
        (["viz", "flow", str(tmp_path / "2_3_flow.npy"), "-o", str(png), "--scale", "0"],
         "--scale"),
        (["viz", "trajectory", str(tmp_path / "res.txt"), "-o", str(traj), "--axes", "ab"],
         "unknown --axes"),
        (["viz", "trajectory", str(tmp_path / "gt.txt"), "--gt", str(tmp_path / "coord_3.npy"),
          "-o", str(traj)], "coord_3.npy"),
    ]  # fmt: skip
    for args, message in cases:
        code, err = run_main(monkeypatch, capsys, args)
        assert code == 2, (args, err)
        assert message in err and err.strip().count("\n") == 0, (args, err)
