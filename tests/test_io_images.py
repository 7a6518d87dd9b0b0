"""Image loading and resizing with intrinsics (dgeo.io.images)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dgeo.errors import DataFileNotFoundError, InputError, ParseError
from dgeo.geometry import Camera
from dgeo.io.images import check_image_size, load_image, read_image, resize_max


def test_read_image_8_and_16_bit(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    img = read_image(tmp_path / "a.png")
    assert img.shape == (3, 6, 9) and img.dtype == torch.float32
    np.testing.assert_allclose(img.permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-7)
    gray16 = rng.integers(0, 65536, (5, 4), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "b.png"), gray16)
    img = read_image(tmp_path / "b.png")
    np.testing.assert_allclose(img[0].numpy(), gray16 / 65535.0, atol=1e-6)
    assert torch.equal(img[0], img[2])


def test_bad_files(tmp_path):
    with pytest.raises(DataFileNotFoundError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ParseError, match=r"bad\.jpg"):
        read_image(tmp_path / "bad.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ParseError):
        read_image(tmp_path / "empty.png")


def test_size_must_match_intrinsics(tmp_path):
    cam = Camera("PINHOLE", 9, 6, [10.0, 10, 4, 2.5])
    check_image_size(torch.zeros(3, 6, 9), cam, "q.jpg")
    with pytest.raises(InputError, match=r"q.jpg is 6x9 .* 9x6 \(width and height swapped"):
        check_image_size(torch.zeros(3, 9, 6), cam, "q.jpg")
    cv2.imwrite(str(tmp_path / "q.png"), np.zeros((7, 9, 3), np.uint8))
    with pytest.raises(InputError, match="intrinsics say 9x6"):
        load_image(tmp_path / "q.png", cam)


@pytest.mark.parametrize("model", ["SIMPLE_RADIAL", "OPENCV"])
def test_resize_keeps_projections(model):
    """A point projects to the same place in the resized image through the scaled camera as
    the original projection mapped by the pixel-centre rule (x + 0.5) s - 0.5."""
    params = [1500.0, 959.5, 539.5, 0.01] if model == "SIMPLE_RADIAL" else [
        1500.0, 1490, 959.5, 539.5, 0.01, -0.002, 0.0, 0.0]  # fmt: skip
    cam = Camera(model, 1920, 1080, params)
    img = torch.rand(3, 1080, 1920)
    small, cam_s = resize_max(img, cam, 1024)
    assert small.shape == (3, 576, 1024)
    assert cam_s.size.tolist() == [1024.0, 576.0]
    X = torch.tensor([[0.3, -0.2, 4.0], [-1.0, 0.5, 6.0]], dtype=torch.float64)
    uv, _ = cam.project(X)
    uv_s, _ = cam_s.project(X)
    s = torch.tensor([1024 / 1920, 576 / 1080], dtype=torch.float64)
    torch.testing.assert_close(uv_s, (uv + 0.5) * s - 0.5, atol=1e-9, rtol=0)
    # area averaging: the mean intensity is preserved; small images are never enlarged
    torch.testing.assert_close(small.mean(), img.mean(), atol=1e-4, rtol=0)
    same, cam_same = resize_max(img[:, :100, :200], cam, 1024)
    assert same.shape == (3, 100, 200) and cam_same is cam
