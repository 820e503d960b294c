import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from dgtr import rotations as rot


@pytest.fixture
def mats():
    return torch.from_numpy(Rotation.random(64, random_state=0).as_matrix())


def test_euler_matches_scipy_sxyz():
    e = torch.from_numpy(np.random.default_rng(0).uniform(-3, 3, (50, 3)))
    ref = Rotation.from_euler("xyz", e.numpy()).as_matrix()
    assert np.allclose(rot.matrix_from_euler(e).numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("fwd,inv", [
    (rot.euler_from_matrix, rot.matrix_from_euler),
    (rot.quaternion_from_matrix, rot.matrix_from_quaternion),
    (rot.sixd_from_matrix, rot.matrix_from_6d),
    (rot.axis_angle_from_matrix, rot.matrix_from_axis_angle),
])
def test_roundtrip(mats, fwd, inv):
    assert torch.allclose(inv(fwd(mats)), mats, atol=1e-9)


def test_quaternion_sign_and_scipy(mats):
    q = rot.quaternion_from_matrix(mats)
    assert (q[:, 0] >= 0).all()
    ref = Rotation.from_matrix(mats.numpy()).as_quat()[:, [3, 0, 1, 2]]
    ref *= np.sign(ref[:, :1])
    assert np.allclose(q.numpy(), ref, atol=1e-9)
    assert torch.allclose(rot.matrix_from_quaternion(-q), mats, atol=1e-9)  # q == -q


def test_special_angles():
    for e in ([0, np.pi / 2, 0], [0.3, -np.pi / 2, 1.0], [np.pi, 0, 0], [0, 0, 0]):
        R = rot.matrix_from_euler(torch.tensor(e, dtype=torch.float64))
        for f, g in ((rot.euler_from_matrix, rot.matrix_from_euler), (rot.axis_angle_from_matrix, rot.matrix_from_axis_angle),
                     (rot.quaternion_from_matrix, rot.matrix_from_quaternion)):
            assert torch.allclose(g(f(R)), R, atol=1e-7), (e, f.__name__)


def test_to_matrix_dispatch_and_errors(mats):
    assert torch.allclose(rot.to_matrix(rot.sixd_from_matrix(mats)), mats, atol=1e-9)
    assert torch.allclose(rot.to_matrix(rot.quaternion_from_matrix(mats)), mats, atol=1e-9)
    assert torch.allclose(rot.to_matrix(rot.euler_from_matrix(mats), "euler"), mats, atol=1e-9)
    with pytest.raises(ValueError, match="shape"):
        rot.to_matrix(torch.zeros(5, 5))


def test_gradients_finite_at_identity():
    v = torch.zeros(2, 3, requires_grad=True)
    rot.matrix_from_axis_angle(v).sum().backward()
    assert torch.isfinite(v.grad).all()
    d6 = torch.randn(4, 6, requires_grad=True)
    rot.matrix_from_6d(d6).sum().backward()
    assert torch.isfinite(d6.grad).all()
