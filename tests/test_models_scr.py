"""SCoordNet, OFlowNet and KFNet (dgeo.models.scoordnet / oflownet / kfnet) and their model
files."""

import json
import math

import numpy as np
import pytest
import torch

from dgeo.errors import InputError, ParseError, RotationError, ShapeError
from dgeo.losses import gaussian_nll
from dgeo.models import KFNet, OFlowNet, SCoordNet, load, save
from dgeo.models.io import networks
from dgeo.models.oflownet import cost_volume, soft_argmax_flow, window_offsets


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def texture(h, w, seed=0):
    """A smooth random RGB texture (B=1) in [0, 1]."""
    coarse = rand(1, 3, h // 4, w // 4, seed=seed)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")


def rigid(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.linalg.det(q))
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = q
    T[:3, 3] = torch.randn(3, generator=g, dtype=torch.float64) * 10
    return T


def count(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------- SCoordNet


def test_scoordnet_kfnet_size_is_exact_and_small_is_cpu_sized():
    with torch.device("meta"):
        net = SCoordNet("kfnet")
    assert count(net) == 24_406_724
    assert net.receptive_field == 79 and net.stride == 8
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    widths = [c.out_channels for c in convs]
    assert widths == [64, 64, 256, 256, 512, 512, 1024, 1024, 512, 256, 128, 4]
    assert [c.kernel_size[0] for c in convs] == [3] * 10 + [1, 1]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    small = SCoordNet("small")
    assert 300_000 <= count(small) <= 1_000_000 and small.receptive_field == 79
    explicit = SCoordNet([8] * 11)
    assert explicit.config == {"widths": [8] * 11, "seed": 0}


def test_scoordnet_shapes_normalisation_and_config():
    net = SCoordNet("small", seed=1)
    xyz, log_sigma = net(rand(2, 3, 48, 64))
    assert xyz.shape == (2, 3, 6, 8) and log_sigma.shape == (2, 1, 6, 8)
    cfg = json.loads(json.dumps(net.config))
    assert cfg == {"widths": "small", "seed": 1}
    twin = SCoordNet(**cfg)  # same seed: same weights
    img = rand(1, 3, 32, 24, seed=3)
    torch.testing.assert_close(twin(img)[0], net(img)[0])
    # the input is normalised inside: (I * 255 - 128) / 160 feeds the first conv
    first = net.body[0]
    seen = {}
    first.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    net(img)
    torch.testing.assert_close(seen["x"], (img * 255 - 128) / 160)


def test_scoordnet_clear_input_errors():
    net = SCoordNet("small")
    with pytest.raises(ShapeError, match=r"50x64.*multiples of 8.*crop to 48x64 or pad to 56x64"):
        net(rand(1, 3, 50, 64))
    with pytest.raises(ShapeError, match=r"4D tensor.*images\[None\]"):
        net(rand(3, 48, 64))
    with pytest.raises(ShapeError, match="3 \\(RGB\\) channels"):
        net(rand(1, 1, 48, 64))
    with pytest.raises(InputError, match=r"floating-point.*float\(\) / 255"):
        net(torch.zeros(1, 3, 48, 64, dtype=torch.uint8))
    with pytest.raises(InputError, match=r"torch.float64.*model.to"):
        net(rand(1, 3, 48, 64, dtype=torch.float64))
    with pytest.raises(InputError, match="unknown SCoordNet widths 'big'"):
        SCoordNet("big")
    with pytest.raises(InputError, match="need 11 integers"):
        SCoordNet([16, 32])


def test_scoordnet_receptive_field_is_centred_on_the_cell_pixel():
    net = SCoordNet("small", seed=0).double()
    with torch.no_grad():  # positive weights and inputs: every ReLU is active, support exact
        for p in net.parameters():
            p.abs_()
    img = torch.ones(1, 3, 160, 160, dtype=torch.float64, requires_grad=True)
    xyz, _ = net(img)
    i, j = 10, 9
    xyz[0, 0, i, j].backward()
    support = img.grad[0].abs().sum(0) > 0
    rows = torch.nonzero(support.any(1))[:, 0]
    cols = torch.nonzero(support.any(0))[:, 0]
    assert (rows.min().item(), rows.max().item()) == (8 * i + 4 - 39, 8 * i + 4 + 39)
    assert (cols.min().item(), cols.max().item()) == (8 * j + 4 - 39, 8 * j + 4 + 39)


def test_scoordnet_transform_round_trip_and_checks():
    net = SCoordNet("small")
    assert torch.equal(net.transform, torch.eye(4, dtype=torch.float64))
    T = rigid(2)
    net.set_transform(T.numpy())
    assert net.transform.dtype == torch.float64 and torch.equal(net.transform, T)
    net.float()  # .float() / .to(dtype) keep the transform in float64
    assert net.transform.dtype == torch.float64
    world = rand(2, 3, 4, 5, dtype=torch.float64) * 20
    y = net.to_decorrelated(world)
    expected = torch.einsum("ij,bjhw->bihw", T[:3, :3], world) + T[:3, 3, None, None]
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(net.to_world(y), world)
    img = rand(1, 3, 32, 40)
    xyz, log_sigma = net(img)
    w, sigma = net.predict_world(img)
    torch.testing.assert_close(w, net.to_world(xyz))
    torch.testing.assert_close(sigma, log_sigma.exp().clamp_min(1e-5))
    assert w.dtype == torch.float32

    bad = T.clone()
    bad[:3, :3] *= 2
    with pytest.raises(RotationError, match="not rigid"):
        net.set_transform(bad)
    reflect = torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64))
    with pytest.raises(RotationError, match="determinant -1"):
        net.set_transform(reflect)
    with pytest.raises(ShapeError, match=r"\(4, 4\)"):
        net.set_transform(torch.eye(3))
    last = T.clone()
    last[3, 0] = 1
    with pytest.raises(InputError, match="last row"):
        net.set_transform(last)
    assert torch.equal(net.transform, T)  # unchanged by the failures


def test_scoordnet_small_overfits_one_frame():
    """150 Adam steps of the NLL on one 64x48 textured frame with a smooth label (~5 s)."""
    img = texture(48, 64)
    i, j = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij")
    u, v = 8 * j + 4, 8 * i + 4
    world = torch.stack([0.02 * u + 4.4, 0.02 * v - 3.4, 2 + 0.3 * torch.sin(u / 20)])[None]
    net = SCoordNet("small", seed=0)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, 3] = -world.mean((0, 2, 3)).double()  # centre, as KFNet's transform.txt does
    net.set_transform(T)
    target = net.to_decorrelated(world)
    mask = torch.ones(1, 6, 8, dtype=torch.bool)
    # the NLL is unstable with Adam's default beta2 once sigma shrinks: a fast second moment
    # and a linear decay keep 150 steps reliable
    opt = torch.optim.Adam(net.parameters(), lr=5e-4, betas=(0.9, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / 150)
    with torch.no_grad():
        before = (net.predict_world(img)[0] - world).norm(dim=1).median()
    for _ in range(150):
        xyz, log_sigma = net(img)
        loss = gaussian_nll(xyz, target, log_sigma, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        pred, sigma = net.predict_world(img)
    after = (pred - world).norm(dim=1).median()
    assert before > 0.3
    assert after < 0.05 * before and after < 0.03
    assert sigma.median() < 0.05  # the uncertainty followed the error down


# -------------------------------------------------------------------------------- OFlowNet


def test_cost_volume_matches_a_direct_computation():
    f_t, f_prev = rand(2, 3, 5, 6, seed=1), rand(2, 3, 5, 6, seed=2)
    r = 2
    vol, valid = cost_volume(f_t, f_prev, r)
    assert vol.shape == (2, 5, 6, 3, 4, 4) and valid.shape == (5, 6, 4, 4)
    ref = np.zeros(vol.shape, np.float32)
    ok = np.zeros(valid.shape, bool)
    a, b = f_t.numpy(), f_prev.numpy()
    for i in range(5):
        for j in range(6):
            for ai in range(4):
                for ci in range(4):
                    y, x = i + ai - r, j + ci - r
                    inside = 0 <= y < 5 and 0 <= x < 6
                    src = b[:, :, y, x] if inside else 0.0
                    ref[:, i, j, :, ai, ci] = a[:, :, i, j] - src
                    ok[i, j, ai, ci] = inside
    np.testing.assert_allclose(vol.numpy(), ref, atol=1e-6)
    assert np.array_equal(valid.numpy(), ok)
    off = window_offsets(r)
    assert off.shape == (16, 2) and off[0].tolist() == [-2, -2] and off[1].tolist() == [-1, -2]


def test_soft_argmax_points_at_the_peaked_offset():
    r = 4
    off = window_offsets(r)
    logits = torch.zeros(1, 2, 3, 64)
    logits[0, 1, 2, 37] = 50.0
    flow = soft_argmax_flow(logits, r)
    assert flow.shape == (1, 2, 2, 3)
    torch.testing.assert_close(flow[0, :, 1, 2], off[37], atol=1e-6, rtol=0)
    assert off[37].tolist() == [1, 0]  # 37 = 4 * 8 + 5: dy = 0, dx = 1
    torch.testing.assert_close(flow[0, :, 0, 0], torch.tensor([-0.5, -0.5]))  # uniform


def test_oflownet_match_recovers_a_known_shift_with_an_oracle_patch_net():
    """Replace the learned U-Net by -|D|^2: cost volume, offset order, soft-argmax and the flow
    direction must then give the true shift (frame t cell p sees prev at p + d)."""
    net = OFlowNet(feature_dim=8, radius=4, widths="small")
    net.patch_logits = lambda patches: (  # (N, C, 8, 8) -> (N, 64), bottleneck
        -200.0 * patches.square().sum(1).flatten(1),
        torch.zeros(patches.shape[0], 64),
    )
    h, w = 12, 14  # shift dx = 2, dy = -3
    f_prev = torch.nn.functional.normalize(rand(1, 8, h, w, seed=4) - 0.5, dim=1)
    f_t = torch.zeros_like(f_prev)  # f_t(i, j) = f_prev(i + dy, j + dx)
    f_t[:, :, 3:, : w - 2] = f_prev[:, :, : h - 3, 2:]
    flow, log_sigma_w = net.match(f_t, f_prev)
    inner = flow[0, :, 3:, : w - 2]
    torch.testing.assert_close(inner[0], torch.full_like(inner[0], 2.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(inner[1], torch.full_like(inner[1], -3.0), atol=1e-3, rtol=0)
    assert log_sigma_w.shape == (1, 1, h, w)


def test_oflownet_shapes_noise_head_and_options():
    net = OFlowNet(widths="small", seed=0)
    img_t, img_p = rand(2, 3, 48, 64, seed=1), rand(2, 3, 48, 64, seed=2)
    flow, log_sigma_w = net(img_t, img_p)
    assert flow.shape == (2, 2, 6, 8) and log_sigma_w.shape == (2, 1, 6, 8)
    assert flow.min() >= -4 and flow.max() <= 3
    f = net.features(img_t)
    assert f.shape == (2, 32, 6, 8)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2, 6, 8))
    # sigma_w = 0.01 exp(o): o = 0 gives 1 cm
    with torch.no_grad():
        net.noise_head[-1].weight.zero_()
        net.noise_head[-1].bias.zero_()
    torch.testing.assert_close(net(img_t, img_p)[1], torch.full((2, 1, 6, 8), math.log(0.01)))
    # mask_out_of_frame: the flow never points outside the map
    masked = OFlowNet(widths="small", mask_out_of_frame=True, radius=2)
    flow = masked(img_t, img_p)[0]
    cells = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(6.0), indexing="xy"))
    src = cells + flow
    assert src.min() >= -1e-5 and (src[:, 0] <= 7 + 1e-5).all() and (src[:, 1] <= 5 + 1e-5).all()
    # the kfnet preset follows ALGORITHMS 2.8 (tower 16..128 -> 32, U-Net to 1x1x128, FC 64, 32)
    with torch.device("meta"):
        big = OFlowNet()
    assert [m.out_channels for m in big.tower if isinstance(m, torch.nn.Conv2d)] == [
        16, 32, 32, 64, 64, 128, 32,
    ]  # fmt: skip
    assert [m.out_features for m in big.noise_head if isinstance(m, torch.nn.Linear)] == [64, 32, 1]
    assert big.down[-1][-2].out_channels == 128


def test_oflownet_errors():
    net = OFlowNet(widths="small")
    with pytest.raises(ShapeError, match=r"image_prev.*multiples of 8"):
        net(rand(1, 3, 48, 64), rand(1, 3, 44, 64))
    with pytest.raises(ShapeError, match="same shape"):
        net(rand(1, 3, 48, 64), rand(1, 3, 48, 56))
    with pytest.raises(InputError, match="power of two"):
        OFlowNet(radius=3)
    with pytest.raises(InputError, match="unknown OFlowNet widths"):
        OFlowNet(widths="huge")
    with pytest.raises(InputError, match=r"widths\['unet'\] needs 3 integers"):
        OFlowNet(radius=2, widths={"tower": [4] * 6, "unet": [4, 4], "decoder": [4, 4], "fc": []})
    ok = OFlowNet(
        radius=2, widths={"tower": [4] * 6, "unet": [4, 4, 8], "decoder": [4, 2], "fc": []}
    )
    assert ok(rand(1, 3, 32, 32), rand(1, 3, 32, 32))[0].shape == (1, 2, 4, 4)


# ---------------------------------------------------------------------------------- KFNet


def small_kfnet():
    return KFNet(scoordnet={"widths": "small"}, oflownet={"widths": "small", "radius": 2})


def test_kfnet_container():
    net = small_kfnet()
    assert net.config == {
        "scoordnet": {"widths": "small", "seed": 0},
        "oflownet": {
            "feature_dim": 32,
            "radius": 2,
            "widths": "small",
            "mask_out_of_frame": False,
            "seed": 0,
        },
    }
    img_t, img_p = rand(1, 3, 32, 40, seed=1), rand(1, 3, 32, 40, seed=2)
    out = net(img_t, img_p)
    torch.testing.assert_close(out.xyz, net.scoordnet(img_t)[0])
    torch.testing.assert_close(out.flow, net.oflownet(img_t, img_p)[0])
    assert net(img_t).flow is None
    net.set_transform(rigid(1))
    assert torch.equal(net.transform, rigid(1))
    with pytest.raises(InputError, match="KFNet scoordnet must be a SCoordNet"):
        KFNet(scoordnet=3)
    with pytest.raises(InputError, match="not valid"):
        KFNet(oflownet={"depth": 3})


# ----------------------------------------------------------------------------- model files


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kind", ["scoordnet", "oflownet", "kfnet"])
def test_save_load_round_trip(tmp_path, kind):
    model = {
        "scoordnet": lambda: SCoordNet("small"),
        "oflownet": lambda: OFlowNet(widths="small", radius=2, mask_out_of_frame=True),
        "kfnet": small_kfnet,
    }[kind]()
    perturb(model)
    if kind != "oflownet":
        model.set_transform(rigid(5))
    path = save(model, tmp_path / f"{kind}.pt")
    loaded = load(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    img_t, img_p = rand(1, 3, 32, 40, seed=1), rand(1, 3, 32, 40, seed=2)
    with torch.no_grad():
        if kind == "scoordnet":
            a, b = model.predict_world(img_t), loaded.predict_world(img_t)
        elif kind == "oflownet":
            a, b = model(img_t, img_p), loaded(img_t, img_p)
        else:
            a, b = model(img_t, img_p), loaded(img_t, img_p)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    if kind != "oflownet":
        assert loaded.transform.dtype == torch.float64 and torch.equal(loaded.transform, rigid(5))


def test_load_refuses_bad_network_files(tmp_path):
    model = SCoordNet("small")
    payload = {
        "format": "dgeo-model",
        "version": 1,
        "class": "SCoordNet",
        "config": {"widths": "giant"},
        "state_dict": model.state_dict(),
    }
    torch.save(payload, tmp_path / "cfg.pt")
    with pytest.raises(ParseError, match=r"config that SCoordNet rejects.*unknown SCoordNet"):
        load(tmp_path / "cfg.pt")
    payload["config"] = {"widths": "kfnet", "seed": None}
    torch.save(payload, tmp_path / "w.pt")
    with pytest.raises(ParseError, match="weights that do not fit SCoordNet"):
        load(tmp_path / "w.pt")
    payload["class"] = "Transformer"
    torch.save(payload, tmp_path / "cls.pt")
    with pytest.raises(ParseError, match=r"unknown model class 'Transformer'.*SCoordNet, OFlowNet"):
        load(tmp_path / "cls.pt")
    with pytest.raises(InputError, match="or networks SCoordNet, OFlowNet, KFNet"):
        save(torch.nn.Linear(2, 2), tmp_path / "lin.pt")
    assert {"SCoordNet", "OFlowNet", "KFNet", "ACEHead", "ACEModel"} <= set(networks())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_networks_follow_the_device():
    net = small_kfnet()
    net.set_transform(rigid(3))
    img_t, img_p = rand(1, 3, 32, 40, seed=1), rand(1, 3, 32, 40, seed=2)
    with torch.no_grad():
        cpu = net(img_t, img_p)
        cpu_world = net.scoordnet.predict_world(img_t)[0]
        net = net.cuda()
        gpu = net(img_t.cuda(), img_p.cuda())
        gpu_world = net.scoordnet.predict_world(img_t.cuda())[0]
    assert net.transform.device.type == "cuda" and net.transform.dtype == torch.float64
    for a, b in zip(cpu, gpu, strict=True):
        assert b.device.type == "cuda"
        torch.testing.assert_close(a, b.cpu(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cpu_world, gpu_world.cpu(), atol=1e-4, rtol=1e-4)
