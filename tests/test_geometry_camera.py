import numpy as np
import pycolmap
import pytest
import torch

from dgeo.errors import CameraModelError, InputError, NonFiniteError
from dgeo.geometry import PARAM_NAMES, Camera

W, H = 640, 480
# COLMAP convention parameters (corner origin); realistic distortion
COLMAP_PARAMS = {
    "SIMPLE_PINHOLE": [500, 320, 240],
    "PINHOLE": [500, 510, 321, 239],
    "SIMPLE_RADIAL": [500, 320, 240, -0.08],
    "RADIAL": [500, 320, 240, -0.1, 0.03],
    "OPENCV": [500, 510, 320, 240, -0.1, 0.03, 0.001, -0.002],
    "FULL_OPENCV": [500, 510, 320, 240, -0.1, 0.03, 0.001, -0.002, 0.01, 0.02, -0.01, 0.005],
}


def to_dgeo(model, params):
    p = np.array(params, dtype=np.float64)
    i = 1 if PARAM_NAMES[model][0] == "f" else 2
    p[i : i + 2] -= 0.5
    return Camera(model, W, H, torch.from_numpy(p))


def random_points(n, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-0.6, 0.6, (n, 2))
    return np.c_[xy, np.ones(n)] * rng.uniform(0.5, 10, (n, 1))


@pytest.mark.parametrize("model", list(COLMAP_PARAMS))
def test_project_unproject_match_pycolmap(model):
    ref = pycolmap.Camera(model=model, width=W, height=H, params=COLMAP_PARAMS[model])
    cam = to_dgeo(model, COLMAP_PARAMS[model])
    X = random_points(2000)
    uv, valid = cam.project(torch.from_numpy(X), check_bounds=False)
    assert valid.all()
    np.testing.assert_allclose(uv.numpy(), ref.img_from_cam(X) - 0.5, atol=1e-6, rtol=0)
    rays, ok = cam.unproject(uv, return_valid=True)
    assert ok.all()
    np.testing.assert_allclose(rays[:, 2].numpy(), 1.0)
    ref_rays = ref.cam_from_img(uv.numpy() + 0.5)
    f = cam.f[0].numpy()
    np.testing.assert_allclose(rays[:, :2].numpy() * f, ref_rays * f, atol=1e-6, rtol=0)
    # round trip is exact up to solver precision
    np.testing.assert_allclose(rays[:, :2].numpy(), X[:, :2] / X[:, 2:], atol=1e-10)


@pytest.mark.parametrize("model", list(COLMAP_PARAMS))
def test_project_jacobian_matches_autograd(model):
    cam = to_dgeo(model, COLMAP_PARAMS[model])
    X = torch.from_numpy(random_points(64, seed=1))
    _, _, J = cam.project(X, return_jacobian=True)
    Ja = torch.autograd.functional.jacobian(lambda x: cam.project(x)[0].sum(0), X)
    np.testing.assert_allclose(J.numpy(), Ja.permute(1, 0, 2).numpy(), atol=1e-9)


def test_unproject_gradient_is_implicit_derivative():
    cam = to_dgeo("OPENCV", COLMAP_PARAMS["OPENCV"])
    uv = torch.tensor([[100.0, 50.0], [600.0, 400.0]], dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: cam.unproject(x), (uv,))


def test_batched_cameras_and_validity():
    cams = Camera.stack([to_dgeo(m, COLMAP_PARAMS[m]) for m in COLMAP_PARAMS])
    assert cams.model == "FULL_OPENCV" and cams.shape == (6,)
    X = torch.from_numpy(random_points(100)).expand(6, 100, 3)
    uv, _ = cams.project(X, check_bounds=False)
    for i, m in enumerate(COLMAP_PARAMS):
        uv_i, _ = to_dgeo(m, COLMAP_PARAMS[m]).project(X[i], check_bounds=False)
        np.testing.assert_allclose(uv[i].numpy(), uv_i.numpy(), atol=1e-9)
    cam = to_dgeo("PINHOLE", COLMAP_PARAMS["PINHOLE"])
    pts = torch.tensor([[0.0, 0, 1], [0, 0, -1], [10, 0, 1], [0, 0, 0]], dtype=torch.float64)
    _, valid = cam.project(pts)
    assert valid.tolist() == [True, False, False, False]
    # strong barrel distortion folds over beyond some radius: flagged invalid
    barrel = Camera("SIMPLE_RADIAL", W, H, [500.0, 319.5, 239.5, -0.5])
    _, valid = barrel.project(torch.tensor([[0.1, 0, 1], [2.0, 0, 1]]).double(), check_bounds=False)
    assert valid.tolist() == [True, False]


def test_K_scale_crop_conventions():
    cam = to_dgeo("OPENCV", COLMAP_PARAMS["OPENCV"])
    K = cam.K.numpy()
    np.testing.assert_allclose(K, [[500, 0, 319.5], [0, 510, 239.5], [0, 0, 1]])
    X = torch.from_numpy(random_points(50))
    uv, _ = cam.project(X)
    # resizing by s maps pixel centres as (x + 0.5) s - 0.5
    for s in (0.5, 0.25, 2.0):
        uv_s, _ = cam.scale(s).project(X)
        np.testing.assert_allclose(uv_s.numpy(), (uv.numpy() + 0.5) * s - 0.5, atol=1e-9)
    small = cam.scale(0.5)
    assert small.width.item() == 320 and small.height.item() == 240
    # and agrees with COLMAP's own rescale
    ref = pycolmap.Camera(model="OPENCV", width=W, height=H, params=COLMAP_PARAMS["OPENCV"])
    ref.rescale(320, 240)
    np.testing.assert_allclose(small.params.numpy()[2:4] + 0.5, ref.params[2:4], atol=1e-12)
    aniso = cam.scale((0.5, 0.25))
    uv_a, _ = aniso.project(X)
    np.testing.assert_allclose(uv_a.numpy(), (uv.numpy() + 0.5) * [0.5, 0.25] - 0.5, atol=1e-9)
    crop = cam.crop(10, 20, 300, 200)
    uv_c, _ = crop.project(X, check_bounds=False)
    np.testing.assert_allclose(uv_c.numpy(), uv.numpy() - [10, 20], atol=1e-12)
    assert crop.size.tolist() == [300, 200]


def test_to_model_is_lossless_or_raises():
    cam = to_dgeo("SIMPLE_RADIAL", COLMAP_PARAMS["SIMPLE_RADIAL"])
    X = torch.from_numpy(random_points(30))
    for m in ("RADIAL", "OPENCV", "FULL_OPENCV"):
        other = cam.to_model(m)
        np.testing.assert_allclose(other.project(X)[0].numpy(), cam.project(X)[0].numpy())
        assert other.to_model("SIMPLE_RADIAL").params.tolist() == cam.params.tolist()
    with pytest.raises(CameraModelError, match="without losing"):
        to_dgeo("OPENCV", COLMAP_PARAMS["OPENCV"]).to_model("PINHOLE")
    with pytest.raises(InputError, match="anisotropic"):
        cam.scale((0.5, 0.25))


@pytest.mark.parametrize(
    "args, err, msg",
    [
        (("FISHEYE_X", W, H, [1.0, 2, 3]), CameraModelError, "unknown camera model"),
        (("PINHOLE", W, H, [500.0, 320, 240]), CameraModelError, "takes 4 parameters"),
        (("PINHOLE", W, H, [500.0, np.nan, 320, 240]), NonFiniteError, "NaN"),
        (("PINHOLE", -1, H, [500.0, 500, 320, 240]), InputError, "positive"),
        (("PINHOLE", W, H, [-500.0, 500, 320, 240]), InputError, "focal"),
    ],
)
def test_bad_input(args, err, msg):
    with pytest.raises(err, match=msg):
        Camera(*args)


def test_float32():
    cam = to_dgeo("OPENCV", COLMAP_PARAMS["OPENCV"]).float()
    X = torch.from_numpy(random_points(100)).float()
    uv, _valid = cam.project(X, check_bounds=False)
    rays, ok = cam.unproject(uv, return_valid=True)
    assert uv.dtype == torch.float32 and ok.all()
    np.testing.assert_allclose(rays[:, :2].numpy(), (X[:, :2] / X[:, 2:]).numpy(), atol=1e-5)


def test_list_params_are_lossless_and_points_set_the_dtype():
    cam = Camera("SIMPLE_RADIAL", W, H, [500.1, 319.8, 240.2, -0.05])
    assert cam.dtype == torch.float64
    ref = pycolmap.Camera(
        model="SIMPLE_RADIAL", width=W, height=H, params=[500.1, 320.3, 240.7, -0.05]
    )
    X = random_points(100)
    uv, _ = cam.project(torch.from_numpy(X), check_bounds=False)
    np.testing.assert_allclose(uv.numpy(), ref.img_from_cam(X) - 0.5, atol=1e-9)
    uv32, valid32 = cam.project(torch.from_numpy(X).float())
    assert uv32.dtype == torch.float32 and valid32.dtype == torch.bool
    np.testing.assert_allclose(uv32.numpy(), uv.numpy(), atol=1e-3)
