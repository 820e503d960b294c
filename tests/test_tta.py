"""AB-TTA: lowers penetration of deliberately penetrating grasps, keeps translations with β_t = 0, limits, errors."""
import numpy as np
import pytest
import torch
import trimesh

from dgtr.errors import InputError
from dgtr.hand import get_hand
from dgtr.metrics import penetration_depth
from dgtr.tta import TTAConfig, adapt


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def box_points(n=1024, extents=(0.08, 0.06, 0.05), seed=0) -> torch.Tensor:
    pts, _ = trimesh.sample.sample_surface_even(trimesh.creation.box(extents), n, seed=seed)
    return torch.as_tensor(pts, dtype=torch.float32)


def penetrating_grasps(B=6, depth=0.012, seed=0):
    """Palms facing a 8x6x5 cm box from random directions, pushed ``depth`` past touching, fingers half closed."""
    g = torch.Generator().manual_seed(seed)
    hand = get_hand()
    u = torch.nn.functional.normalize(torch.randn(B, 3, generator=g), dim=-1)
    a = torch.nn.functional.normalize(torch.linalg.cross(u, torch.randn(B, 3, generator=g)), dim=-1)
    R = torch.stack([a, u, torch.linalg.cross(a, u)], -1)          # palm normal (-y) points at the centre
    t = u * (0.03 + 0.01 - depth) - 0.06 * R[:, :, 2]              # palm box ~1 cm thick, fingers across the box
    q = hand.joint_lower + 0.4 * (hand.joint_upper - hand.joint_lower)
    return R, t, q.expand(B, -1).clone()


def test_tta_lowers_penetration_and_keeps_translation():
    hand, pts = get_hand(), box_points()
    R, t, q = penetrating_grasps()
    before = penetration_depth(hand, pts, R, t, q)
    assert before.mean() > 0.005  # the set really penetrates
    R2, t2, q2, hist = adapt(hand, pts, R, t, q, TTAConfig(iterations=40), return_history=True)
    after = penetration_depth(hand, pts, R2, t2, q2)
    assert after.mean() < 0.7 * before.mean(), (before, after)
    assert hist[-1] < hist[0]
    assert torch.equal(t2, t)  # β_t = 0: translation exactly unchanged
    assert ((q2 >= hand.joint_lower) & (q2 <= hand.joint_upper)).all()
    torch.testing.assert_close(R2 @ R2.transpose(1, 2), torch.eye(3).expand(len(R2), 3, 3), atol=1e-5, rtol=0)
    assert not torch.equal(R2, R) and not torch.equal(q2, q)


def test_beta_t_moves_translation_and_quaternion_input():
    hand, pts = get_hand(), box_points(512)
    R, t, q = penetrating_grasps(B=3)
    from dgtr.rotations import quaternion_from_matrix
    R2, t2, q2 = adapt(hand, pts, quaternion_from_matrix(R), t, q, TTAConfig(iterations=5, beta_t=1.0))
    assert not torch.equal(t2, t) and R2.shape == (3, 3, 3)
    # zero iterations: identity up to joint clamping; per-grasp clouds (B, P, 3) accepted
    R3, t3, q3 = adapt(hand, pts.expand(3, -1, -1), R, t, q, TTAConfig(iterations=0))
    assert torch.equal(R3, R) and torch.equal(t3, t) and torch.equal(q3, q)


def test_dist_term_keeps_initial_contacts():
    """A grasp that already touches without penetrating should stay on the object (eq. 2), not drift away."""
    hand, pts = get_hand(), box_points()
    R, t, q = penetrating_grasps(B=4, depth=0.0)
    kp = hand.contact_candidates(R, t, q)
    near = lambda k: torch.cdist(k, pts[None].expand(len(k), -1, -1)).amin(-1)
    touching = (near(kp) < 0.01).sum(-1)
    R2, t2, q2 = adapt(hand, pts, R, t, q, TTAConfig(iterations=30))
    after = (near(hand.contact_candidates(R2, t2, q2)) < 0.01).sum(-1)
    assert after.float().mean() >= 0.8 * touching.float().mean()


def test_mesh_signed_distance_path():
    from dgtr.objects import ObjectModel
    obj = ObjectModel([trimesh.creation.box((0.08, 0.06, 0.05))], code="box")
    hand = get_hand()
    R, t, q = penetrating_grasps(B=2)
    pts = torch.as_tensor(obj.sample_points(512))
    before = penetration_depth(hand, pts, R, t, q)
    R2, t2, q2 = adapt(hand, obj, R, t, q, TTAConfig(iterations=20))  # points sampled from it, its SDF for L_dist
    assert penetration_depth(hand, pts, R2, t2, q2).mean() < before.mean() and torch.equal(t2, t)


def test_bad_input():
    hand, pts = get_hand(), box_points(256)
    R, t, q = penetrating_grasps(B=2)
    with pytest.raises(InputError, match="points"):
        adapt(hand, torch.zeros(5, 2), R, t, q)
    with pytest.raises(InputError, match="NaN"):
        adapt(hand, pts, R, t.clone().fill_(float("nan")), q)
    with pytest.raises(InputError, match="q"):
        adapt(hand, pts, R, t, q[:, :5])
    with pytest.raises(InputError, match="optimizer"):
        adapt(hand, pts, R, t, q, TTAConfig(optimizer="lbfgs"))
