import numpy as np
import pytest
import torch
from kornia.geometry.conversions import rotation_matrix_to_quaternion
from scipy.spatial.transform import Rotation

from dgeo.errors import InputError, NonFiniteError, RotationError, ShapeError
from dgeo.geometry import Pose

torch.manual_seed(0)


def random_pose(*shape, dtype=torch.float64):
    aa = torch.randn(*shape, 3, dtype=dtype)
    return Pose.from_axis_angle(aa, torch.randn(*shape, 3, dtype=dtype))


def test_constructors_agree_with_scipy():
    rot = Rotation.random(50, random_state=1)
    t = np.random.default_rng(1).normal(size=(50, 3))
    q_xyzw = rot.as_quat()
    q_wxyz = q_xyzw[:, [3, 0, 1, 2]]
    R = rot.as_matrix()
    T = np.tile(np.eye(4), (50, 1, 1))
    T[:, :3, :3], T[:, :3, 3] = R, t
    poses = [
        Pose.from_Rt(R, t),
        Pose.from_quat_t(q_wxyz, t),
        Pose.from_axis_angle(rot.as_rotvec(), t),
        Pose.from_matrix(T),
        Pose.from_matrix(T[:, :3]),
    ]
    for p in poses:
        np.testing.assert_allclose(p.R.numpy(), R, atol=1e-12)
        np.testing.assert_allclose(p.t.numpy(), t, atol=1e-15)
        np.testing.assert_allclose(p.numpy(), T, atol=1e-12)
    p = poses[0]
    q = p.quat().numpy()
    q_ref = np.where(q_wxyz[:, :1] < 0, -q_wxyz, q_wxyz)
    np.testing.assert_allclose(q, q_ref, atol=1e-10)
    np.testing.assert_allclose(p.axis_angle().numpy(), rot.as_rotvec(), atol=1e-10)
    # kornia's own conversion agrees too
    q_k = rotation_matrix_to_quaternion(p.R)
    np.testing.assert_allclose((q_k * p.quat()).sum(-1).abs().numpy(), 1.0, atol=1e-10)


def test_group_operations_match_matrices():
    a, b = random_pose(4, 5), random_pose(5)
    np.testing.assert_allclose((a @ b).numpy(), a.numpy() @ b.numpy(), atol=1e-12)
    np.testing.assert_allclose(a.inv().numpy(), np.linalg.inv(a.numpy()), atol=1e-12)
    x = torch.randn(4, 5, 7, 3, dtype=torch.float64)
    ref = (a.numpy()[..., None, :3, :3] @ x.numpy()[..., None])[..., 0] + a.numpy()[
        ..., None, :3, 3
    ]
    np.testing.assert_allclose(a.transform(x).numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(a.inv().transform(a.transform(x)).numpy(), x.numpy(), atol=1e-12)
    c = a.center()
    np.testing.assert_allclose(a.transform(c[..., None, :]).numpy(), 0, atol=1e-12)
    assert a[0].shape == (5,) and a[..., 1].shape == (4,) and a[1:3, 2].shape == (2,)
    assert Pose.stack([a, a], 1).shape == (4, 2, 5)
    assert Pose.cat([a, a], -1).shape == (4, 10)


def test_log_exp_roundtrip_and_kornia():
    p = random_pose(3, 8)
    xi = p.log()
    assert xi.shape == (3, 8, 6) and not xi.requires_grad
    np.testing.assert_allclose(Pose.exp(xi).numpy(), p.numpy(), atol=1e-10)
    np.testing.assert_allclose(Pose.exp(torch.zeros(2, 6)).numpy(), np.tile(np.eye(4), (2, 1, 1)))
    # pure rotation: the log's rotation part is the rotation vector
    r = Pose.from_axis_angle(torch.tensor([0.1, -0.2, 0.3]).double(), torch.zeros(3).double())
    np.testing.assert_allclose(r.log()[3:].numpy(), [0.1, -0.2, 0.3], atol=1e-12)


def test_magnitude_and_retract():
    aa = torch.tensor([[0.0, 0.0, 0.3], [1.0, 2.0, -2.0]], dtype=torch.float64)
    t = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    angle, dist = Pose.from_axis_angle(aa, t).magnitude()
    np.testing.assert_allclose(angle.numpy(), [0.3, 3.0], atol=1e-12)
    np.testing.assert_allclose(dist.numpy(), [5.0, 1.0], atol=1e-10)
    # retract with the rotation part equals left-multiplying by exp(dw)
    p = random_pose(6)
    delta = torch.randn(6, 6, dtype=torch.float64) * 0.1
    left = Pose.from_axis_angle(delta[:, 3:], delta[:, :3])
    np.testing.assert_allclose(p.retract(delta).numpy(), (left @ p).numpy(), atol=1e-12)


def test_transform_jacobian_matches_autograd():
    p = random_pose(2)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    _, J = p.transform(x, return_jacobian=True)

    def f(delta):
        return p.retract(delta).transform(x)

    Ja = torch.autograd.functional.jacobian(f, torch.zeros(2, 6, dtype=torch.float64))
    Ja = torch.stack([Ja[b, :, :, b] for b in range(2)])
    np.testing.assert_allclose(J.numpy(), Ja.numpy(), atol=1e-10)


def test_gradients_are_finite_everywhere():
    aa = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    p = Pose.from_axis_angle(aa, t)
    angle, dist = (p @ p.inv()).magnitude()
    (angle.sum() + dist.sum() + p.log().sum()).backward()
    assert torch.isfinite(aa.grad).all() and torch.isfinite(t.grad).all()
    torch.autograd.gradcheck(
        lambda a: Pose.from_axis_angle(a, torch.ones(3, dtype=torch.float64)).magnitude()[0],
        torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64, requires_grad=True),
    )


def test_float32_and_device_follow_input():
    p = random_pose(3, dtype=torch.float32)
    assert p.dtype == torch.float32 and p.inv().dtype == torch.float32
    assert p.double().dtype == torch.float64


@pytest.mark.parametrize(
    "make, err",
    [
        (lambda: Pose.from_Rt(np.diag([1.0, 1.0, -1.0]), np.zeros(3)), RotationError),
        (lambda: Pose.from_Rt(2 * np.eye(3), np.zeros(3)), RotationError),
        (lambda: Pose.from_Rt(np.eye(3), [0.0, np.nan, 0.0]), NonFiniteError),
        (lambda: Pose.from_Rt(np.eye(4), np.zeros(3)), ShapeError),
        (lambda: Pose.from_quat_t([0.0, 0.0, 0.0, 0.0], np.zeros(3)), InputError),
        (lambda: Pose.from_matrix(np.eye(3)), ShapeError),
    ],
)
def test_bad_input(make, err):
    with pytest.raises(err) as info:
        make()
    assert "must" in str(info.value) or "pass" in str(info.value)


def test_so3_exp_matches_kornia_with_gradients():
    from kornia.geometry.conversions import axis_angle_to_rotation_matrix

    from dgeo.geometry.pose import so3_exp

    w = torch.cat([torch.randn(20, 3), 1e-6 * torch.randn(5, 3), torch.zeros(1, 3)]).double()
    np.testing.assert_allclose(
        so3_exp(w).numpy(), axis_angle_to_rotation_matrix(w).numpy(), atol=1e-14
    )
    for x in (torch.tensor([0.3, -0.2, 0.5]), torch.tensor([1e-5, 0.0, -2e-5]), torch.zeros(3)):
        x = x.double().requires_grad_()
        torch.autograd.gradcheck(so3_exp, (x,))
        ga = torch.autograd.functional.jacobian(so3_exp, x)
        gk = torch.autograd.functional.jacobian(
            lambda v: axis_angle_to_rotation_matrix(v[None])[0], x
        )
        np.testing.assert_allclose(ga.numpy(), gk.numpy(), atol=1e-10)


def test_mixed_dtypes_follow_the_points():
    p64 = Pose.from_axis_angle([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])  # lists: lossless float64
    assert p64.dtype == torch.float64
    x32 = torch.randn(5, 3)
    y = p64.transform(x32)
    assert y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), p64.transform(x32.double()).numpy(), atol=1e-5)
    assert (p64 @ p64.float()).dtype == torch.float64
