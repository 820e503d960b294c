import numpy as np
import pytest
import torch

from dgtr.metrics import (diversity, fibonacci_sphere, friction_cone_wrenches, gated_q1, occupancy,
                          q1_from_contacts)
from dgtr.rotations import matrix_from_euler

LOWER, UPPER = np.zeros(22), np.ones(22)


def _cube_faces(a=0.1):
    """Contacts at the 6 face centres of a cube of half size a, outward normals."""
    n = np.concatenate([np.eye(3), -np.eye(3)])
    return a * n, n


def test_cone_edges_push_into_object_with_unit_normal_force():
    w = friction_cone_wrenches(np.array([[0.1, 0, 0]]), np.array([[1.0, 0, 0]]), mu=0.5, n_edges=8)
    assert w.shape == (8, 6)
    np.testing.assert_allclose(w[:, 0], -1)                       # normal part pushes along -n
    np.testing.assert_allclose(np.linalg.norm(w[:, 1:3], axis=1), 0.5)  # tangential part = mu
    np.testing.assert_allclose(w[:, 3:], 10 * np.cross([0.1, 0, 0], w[:, :3]))


def test_q1_hand_derived_cube():
    # With 4 cone edges along the axes, mu = 1 and 10·a = 1, the cone wrenches of the six face contacts are the
    # vertices of three cubes {±1}^3 in the coordinates (f_i, f_j, tau_k), {i, j, k} = {x, y, z}. The hull's support
    # function is h(u) = max_k(|u_fi| + |u_fj| + |u_tk|), whose minimum over unit u is 1/sqrt(3) (pure torque
    # u = (0,0,0, 1,1,1)/sqrt(3)): that is Q1.
    c, n = _cube_faces(0.1)
    assert q1_from_contacts(c, n, mu=1.0, n_edges=4) == pytest.approx(1 / np.sqrt(3), abs=1e-9)
    # 8 edges add wrenches: the hull can only grow
    assert q1_from_contacts(c, n) >= 1 / np.sqrt(3) - 1e-9


def test_q1_independent_of_contact_order():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(12, 3)) * 0.05
    n = c / np.linalg.norm(c, axis=1, keepdims=True)
    q = q1_from_contacts(c, n)
    assert q > 0
    for _ in range(3):
        p = rng.permutation(12)
        assert q1_from_contacts(c[p], n[p]) == pytest.approx(q, abs=1e-9)


def test_q1_pinch_on_a_box():
    # thumb on the +x face against two fingertips on the -x face of a 4 cm box: force closure
    c = np.array([[0.02, 0, 0], [-0.02, 0.01, 0], [-0.02, -0.01, 0]])
    n = np.array([[1.0, 0, 0], [-1, 0, 0], [-1, 0, 0]])
    assert q1_from_contacts(c, n) > 0.01
    # two antipodal point contacts cannot resist torque about their common axis: not force-closed
    assert q1_from_contacts(c[:2] * [1, 0, 0], n[:2]) == 0.0
    # all normals on one side: the object can escape
    assert q1_from_contacts(c[1:], n[1:]) == 0.0


def test_q1_degenerate_inputs_give_zero():
    assert q1_from_contacts(np.array([[0.02, 0, 0]]), np.array([[1.0, 0, 0]])) == 0.0  # single contact
    assert q1_from_contacts(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    c, n = _cube_faces(0.1)
    assert 0 < q1_from_contacts(c * 100, n) <= 1.0  # capped at 1


def test_gated_q1():
    np.testing.assert_array_equal(gated_q1(np.array([0.2, 0.3, 0.4]), np.array([0.001, 0.005, 0.0049])),
                                  [0.2, 0.0, 0.4])


def test_fibonacci_sphere_is_unit_and_spread():
    d = fibonacci_sphere(16)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1)
    cos = d @ d.T - 2 * np.eye(16)
    assert cos.max() < 0.8  # no two directions closer than ~37°


def _grasps(euler, t, q):
    return matrix_from_euler(torch.as_tensor(euler, dtype=torch.float64)), np.asarray(t), np.asarray(q)


def test_diversity_single_grasp_is_one_bin():
    rot, t, q = _grasps([[0.3, 0.2, -1.0]], [[0.1, 0.02, 0.0]], np.full((1, 22), 0.4))
    div = diversity(rot, t, q, LOWER, UPPER)
    assert div == pytest.approx({"delta_t": 0.0625, "delta_r": 0.0625, "delta_q": 0.0625})


def test_diversity_hand_built_spread():
    # 8 grasps: translations along 8 distinct Fibonacci directions -> δt = 8/16; Euler x in 8 bins, y in 4 bins,
    # z in 1 bin -> δr = (8 + 4 + 1) / 48; joints 0..10 in 8 bins, the other 11 in 2 bins
    # -> δq = (11·8 + 11·2) / (22·16)
    k = np.arange(8)
    centre = lambda lo, hi, b: lo + (b + 0.5) * (hi - lo) / 16  # noqa: E731
    euler = np.column_stack([centre(-np.pi, np.pi, 2 * k), centre(-np.pi / 2, np.pi / 2, 4 + k // 2),
                             np.full(8, centre(-np.pi, np.pi, 5))])
    t = fibonacci_sphere(16)[2 * k] * np.linspace(0.05, 0.2, 8)[:, None]
    q = np.zeros((8, 22))
    q[:, :11] = centre(0, 1, 2 * k)[:, None]
    q[:, 11:] = centre(0, 1, 3 + (k % 2))[:, None]
    div = diversity(*_grasps(euler, t, q), LOWER, UPPER)
    assert div["delta_t"] == pytest.approx(0.5)
    assert div["delta_r"] == pytest.approx(13 / 48)
    assert div["delta_q"] == pytest.approx((11 * 8 + 11 * 2) / (22 * 16))


def test_occupancy_clips_out_of_range_into_edge_bins():
    v = np.array([[-0.1], [0.0], [1.0], [1.2]])
    assert occupancy(v, 0.0, 1.0)[0] == pytest.approx(2 / 16)


# --------------------------------------------------------------------------------- hand/object geometry (synthetic)
@pytest.fixture(scope="module")
def palm_on_cube(tmp_path_factory):
    """A 20 cm cube at the origin and the hand (R = I, q = 0) whose palm sinks 2 mm into its +y face."""
    import trimesh

    from dgtr.hand import get_hand
    from dgtr.objects import load_object

    f = tmp_path_factory.mktemp("cube") / "cube.obj"
    trimesh.creation.box((0.2, 0.2, 0.2)).export(f)
    hand = get_hand(dtype=torch.float64)
    palm = hand.primitives[0]  # the big palm box: its -y face is the palm surface
    assert palm.kind == "box" and palm.link == hand.link_names[0]
    t = torch.tensor([[0.0, 0.1 + palm.size[1] - palm.pos[1] - 0.002, 0.0]], dtype=torch.float64)
    R, q = torch.eye(3, dtype=torch.float64)[None], torch.zeros(1, 22, dtype=torch.float64)
    return hand, load_object(f, code="cube"), R, t, q


def test_penetration_depth_palm_on_cube(palm_on_cube):
    from dgtr.metrics import penetration_depth

    hand, obj, R, t, q = palm_on_cube
    # the cube's face point under the palm centre is 2 mm deep in the palm box; 1 mm below it, 1 mm deep
    palm = hand.primitives[0]
    face = torch.tensor([[palm.pos[0], 0.1, palm.pos[2]]], dtype=torch.float64)  # (P=1, 3)
    assert penetration_depth(hand, face, R, t, q)[0] == pytest.approx(0.002, abs=1e-9)
    assert penetration_depth(hand, face - torch.tensor([0, 0.001, 0]), R, t, q)[0] == pytest.approx(0.001, abs=1e-9)
    # (the thumb at q = 0 hangs ~1 cm below the palm plane, so the surface samples penetrate deeper)
    pts = torch.as_tensor(obj.sample_points(4096, seed=0), dtype=torch.float64)
    assert 0.002 < penetration_depth(hand, pts, R, t, q)[0] < 0.02
    far = t + torch.tensor([[0.0, 0.05, 0.0]], dtype=torch.float64)
    assert penetration_depth(hand, pts, R, far, q)[0] == 0.0


def test_link_contacts_palm_on_cube(palm_on_cube):
    from dgtr.metrics import link_contacts

    hand, obj, R, t, q = palm_on_cube
    (c, n), = link_contacts(hand, obj, R, t, q)
    assert len(c) >= 1
    # every accepted contact lies on the cube surface with an axis-aligned outward normal; the palm's is +y
    np.testing.assert_allclose(np.abs(c).max(1), 0.1, atol=1e-6)
    np.testing.assert_allclose(np.abs(n).max(1), 1.0, atol=1e-6)
    assert any(np.allclose(ni, [0, 1, 0]) and ci[1] == pytest.approx(0.1) for ci, ni in zip(c, n))
    # moved 2 cm away, nothing is within 1 cm
    (c2, _), = link_contacts(hand, obj, R, t + torch.tensor([[0.0, 0.03, 0.0]], dtype=torch.float64), q)
    assert len(c2) == 0


# 17 link contacts of a real mug grasp (DexGraspNet core-mug-8570d9a8, grasp 6): plain Qhull reports a topology error
# ("wide merge due to dupridge") although the wrench set has full rank
_MUG_C = np.array(
    [[0.02404022055525189, -0.05959591233163069, -0.016404940126802606], [-0.017626767284208186,
    -0.062159206308404095, -0.01693227802631653], [-0.042682278782785486, -0.06190443082703223,
    0.01761616041323681], [-0.042795644717512876, -0.06184788410467155, 0.024125863369429214],
    [0.0070926407468088655, -0.06222490000000001, -0.017597467722746927], [-0.031058687130531296,
    -0.062224100000000004, 0.040161302603600985], [-0.035362904358943154, -0.06106900202617486,
    0.04952169506750864], [0.0265318105437368, -0.06222490000000001, -0.006708556489586364],
    [-0.009398693909184038, -0.062224100000000004, 0.051875572600780254], [-0.016247489152360784,
    -0.062224100000000004, 0.06190292421702705], [0.040229942844454976, -0.054710958827402595,
    -0.004220748368294697], [0.04191936407159413, -0.06222490000000001, 0.013605241139251094],
    [0.015273274505996451, -0.062081893838924956, 0.06311783329102315], [0.011314834231521477,
    -0.06082692911614457, 0.0655555236515118], [0.006330155266278924, -0.015049926788269108,
    -0.06765917661006553], [0.006413833523285327, -0.007573248076819843, -0.06514508852486145],
    [0.005188844397715113, 0.029435115252040046, -0.03142088407400264]])
_MUG_N = np.array(
    [[0.5365132392579339, -0.44737270480783714, -0.7155495839519989], [-0.2068926109519056, -0.830590145183019,
    -0.5170255876243988], [-0.4463530258169669, -0.8948569585939632, -0.0], [-0.44635302581698305,
    -0.8948569585939553, 3.974459454823755e-14], [-2.575909780818603e-15, -1.0, -5.151819561637206e-15],
    [1.5924944789621511e-13, -1.0, 7.962472394810756e-14], [-0.6748918043877312, -0.457722622767714,
    0.5788013933785208], [0.0, -1.0, -1.6131822864550787e-14], [0.0, -1.0, 0.0], [-1.8916468131716844e-15, -1.0,
    -0.0], [0.6960747368534433, -0.4528211321513087, -0.5571651308109802], [0.0, -1.0, 0.0], [0.116208172205707,
    -0.9298590201195659, 0.3490814567044338], [0.1747316517591151, -0.4559571240161936, 0.8726808986865777],
    [0.9367000962616951, -0.1564612340418528, -0.3132296472325562], [0.9404094487932777, 0.06477180481979596,
    0.3338183367053253], [0.05630596533059423, -0.05617067869103837, -0.9968322291757917]])


def test_q1_qhull_precision_failure_falls_back_to_joggle():
    q = q1_from_contacts(_MUG_C, _MUG_N)
    assert q == pytest.approx(0.247, abs=1e-3)
    # DexGraspNet's rule (Qhull error -> 0) zeroes it (measured with scipy 1.17)
    # Whether Qhull fails on this set depends on the scipy build, so the failure is forced here: the plain hull
    # raises as it did with scipy 1.17; DexGraspNet's rule then scores 0, the fallback the joggled hull's value
    import scipy.spatial

    import dgtr.metrics as metrics

    def failing_plain_hull(points, qhull_options=None):
        if qhull_options is None:
            raise scipy.spatial.QhullError("QH6271 wide merge due to dupridge (forced)")
        return scipy.spatial.ConvexHull(points, qhull_options=qhull_options)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "ConvexHull", failing_plain_hull)
        assert q1_from_contacts(_MUG_C, _MUG_N, joggle_fallback=False) == 0.0
        assert q1_from_contacts(_MUG_C, _MUG_N) == pytest.approx(q, abs=1e-3)
        # a rank-deficient set (all contacts on one point) is 0 even with the fallback: no 6-D hull to joggle
        assert q1_from_contacts(np.repeat(_MUG_C[:1], 5, 0), np.repeat(_MUG_N[:1], 5, 0)) == 0.0
    # Q1 is monotone in the contact set: no subset may score higher
    for k in range(len(_MUG_C)):
        assert q1_from_contacts(np.delete(_MUG_C, k, 0), np.delete(_MUG_N, k, 0)) <= q + 1e-9
