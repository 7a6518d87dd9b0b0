"""Layer-0 operations give the same answers on every available device (CUDA when present)."""

import pytest
import torch

from dgeo.geometry import Camera, Pose, sample

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_geometry_follows_the_input_device(device, dtype):
    g = torch.Generator().manual_seed(0)
    pose = Pose.from_axis_angle(
        0.3 * torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    )
    cam = Camera("OPENCV", 640, 480, [500.0, 505, 319.5, 239.5, -0.1, 0.02, 1e-3, -1e-3])
    X = torch.randn(4, 50, 3, generator=g) + torch.tensor([0.0, 0, 6])
    fmap = torch.randn(4, 5, 48, 64, generator=g)

    def run(dev):
        p = pose.to(dev, dtype)
        c = cam.to(dev, dtype)
        x = p.transform(X.to(dev, dtype))
        uv, valid, J = c.project(x, return_jacobian=True)
        rays = c.unproject(uv)
        v, ok, grads = sample(fmap.to(dev, dtype), (uv + 0.5) / 10 - 0.5, return_gradients=True)
        return [t.cpu() for t in (p.inv().data, uv, valid, J, rays, v, ok, grads)]

    out, ref = run(torch.device(device)), run(torch.device("cpu"))
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == b.dtype
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            tol = 1e-4 if dtype == torch.float32 else 1e-10
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)
