"""ShadowHand: FK test vectors, batching, rotation representations, gradients, signed distance, real grasps."""
import sys

import numpy as np
import pytest
import torch

from dgtr.errors import InputError
from dgtr.hand import JOINT_NAMES, ShadowHand, get_hand, hand_asset_dir
from dgtr.rotations import (matrix_from_axis_angle, matrix_from_euler, quaternion_from_matrix,
                            sixd_from_matrix, axis_angle_from_matrix)

BOTTLE = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"


@pytest.fixture(scope="module")
def hand() -> ShadowHand:
    return get_hand()


def idle(B=1, dtype=torch.float32):
    return torch.eye(3, dtype=dtype).expand(B, 3, 3), torch.zeros(B, 3, dtype=dtype), torch.zeros(B, 22, dtype=dtype)


def random_grasps(hand, B, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    R = matrix_from_axis_angle(torch.randn(B, 3, generator=g, dtype=torch.float64)).to(dtype)
    t = (torch.randn(B, 3, generator=g, dtype=torch.float64) * 0.05).to(dtype)
    q = hand.denormalize_joints(torch.rand(B, 22, generator=g, dtype=torch.float64)).to(dtype)
    return R, t, q


def load_grasps(path):
    """DexGraspNet grasp file -> R (B,3,3), t (B,3), q (B,22), scale (B,) float32."""
    gs = np.load(path, allow_pickle=True)
    qpos = lambda keys: torch.tensor([[g["qpos"][k] for k in keys] for g in gs], dtype=torch.float64)
    R = matrix_from_euler(qpos(["WRJRx", "WRJRy", "WRJRz"])).float()
    t = qpos(["WRJTx", "WRJTy", "WRJTz"]).float()
    return R, t, qpos(JOINT_NAMES).float(), torch.tensor([g["scale"] for g in gs], dtype=torch.float32)


# ---------------------------------------------------------------- model structure

def test_asset_dir_and_model(hand):
    assert (hand_asset_dir() / "reach.xml").is_file()
    assert len(JOINT_NAMES) == 22 and JOINT_NAMES[12] == "robot0:LFJ4" and JOINT_NAMES[-1] == "robot0:THJ0"
    assert hand.link_names[0] == "robot0:palm" and len(hand.tree) == len(hand.link_names)
    assert all(l.parent < i for i, l in enumerate(hand.tree))
    assert sorted(l.joint for l in hand.tree if l.joint is not None) == list(range(22))
    kinds = [p.kind for p in hand.primitives]
    assert kinds.count("capsule") == 15 and kinds.count("box") == 3
    sizes = {p.link.split(":")[1]: tuple(np.round(p.size, 5)) for p in hand.primitives if p.kind == "capsule"}
    assert sizes["ffproximal"] == (0.01, 0.0225) and sizes["mfmiddle"] == (0.00805, 0.0125)
    assert sizes["lfdistal"] == (0.00705, 0.012) and sizes["thproximal"] == (0.013, 0.019)
    assert sizes["thmiddle"] == (0.011, 0.016) and sizes["thdistal"] == (0.00918, 0.013)
    assert len(hand.sdf_link_names) == 17 and hand.sdf_link_names[0] == "robot0:palm"


def test_model_loads_without_importing_gymnasium():
    from dgtr.hand import _parse_model
    gym = lambda: {m for m in sys.modules if m.split(".")[0] in ("gymnasium", "gymnasium_robotics")}
    before = gym()
    _parse_model.__wrapped__()  # uncached: really locate and parse the MJCF
    assert gym() == before


def test_missing_assets_is_a_clear_error(monkeypatch):
    import importlib.util

    from dgtr.errors import DgtrError
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DgtrError, match="gymnasium-robotics"):
        hand_asset_dir()


def test_joint_limits_match_design(hand):
    design = {"J3": (-0.349, 0.349), "J2": (0, 1.571), "J1": (0, 1.571), "J0": (0, 1.571)}
    thumb = {"THJ4": (-1.047, 1.047), "THJ3": (0, 1.222), "THJ2": (-0.209, 0.209), "THJ1": (-0.524, 0.524),
             "THJ0": (-1.571, 0)}
    for i, name in enumerate(JOINT_NAMES):
        short = name.split(":")[1]
        lo, hi = thumb.get(short) or ((0, 0.785) if short == "LFJ4" else design[short[2:]])
        assert hand.joint_lower[i].item() == pytest.approx(lo, abs=1e-6), name
        assert hand.joint_upper[i].item() == pytest.approx(hi, abs=1e-6), name


# ---------------------------------------------------------------- kinematics

def link_origin(hand, T, name):
    return T[..., hand.link_names.index(name), :3, 3]


def test_fk_zero_pose_vectors(hand):
    T = hand.link_transforms(*idle())[0]
    for name, expected in [("robot0:ffdistal", (0.033, 0, 0.165)), ("robot0:lfdistal", (-0.034, 0, 0.158)),
                           ("robot0:thdistal", (0.08348, -0.009, 0.07852))]:
        np.testing.assert_allclose(link_origin(hand, T, name).numpy(), expected, atol=1e-5, err_msg=name)


def test_fk_real_grasp_vector(hand, dexgraspnet_dir):
    R, t, q, scale = load_grasps(dexgraspnet_dir / "dataset" / f"{BOTTLE}.npy")
    assert scale[0].item() == pytest.approx(0.12, abs=1e-5)
    T = hand.link_transforms(R[:1], t[:1], q[:1])[0]
    np.testing.assert_allclose(link_origin(hand, T, "robot0:ffdistal").numpy(), (-0.01805, -0.01251, 0.06178), atol=1e-5)
    np.testing.assert_allclose(link_origin(hand, T, "robot0:thdistal").numpy(), (0.05075, 0.01476, -0.00454), atol=1e-5)


def test_batched_equals_loop(hand):
    R, t, q = random_grasps(hand, 6)
    T = hand.link_transforms(R, t, q)
    assert T.shape == (6, len(hand.link_names), 4, 4)
    for i in range(6):
        torch.testing.assert_close(T[i:i + 1], hand.link_transforms(R[i:i + 1], t[i:i + 1], q[i:i + 1]))
    Rw = T[..., :3, :3]
    torch.testing.assert_close(Rw @ Rw.transpose(-1, -2), torch.eye(3).expand_as(Rw), atol=1e-5, rtol=0)
    torch.testing.assert_close(T[:, 0], torch.cat([torch.cat([R, t[..., None]], -1),
                                                   torch.tensor([[[0., 0, 0, 1]]]).expand(6, 1, 4)], 1))


@pytest.mark.parametrize("B", [3, 4])  # B = 3: a (3, 3) axis-angle batch must not be read as one matrix
def test_rotation_representations_agree(hand, B):
    R, t, q = random_grasps(hand, B, seed=1, dtype=torch.float64)
    ref = hand.link_transforms(R, t, q)
    for rot in (quaternion_from_matrix(R), -quaternion_from_matrix(R), sixd_from_matrix(R), axis_angle_from_matrix(R)):
        torch.testing.assert_close(hand.link_transforms(rot, t, q), ref, atol=1e-9, rtol=0)


def test_dtype_follows_inputs_and_cache(hand):
    assert get_hand() is get_hand() and get_hand() is hand
    R, t, q = random_grasps(hand, 2, dtype=torch.float64)
    assert hand.link_transforms(R, t, q).dtype == torch.float64
    h64 = hand.to(dtype=torch.float64)
    assert h64.dtype == torch.float64 and h64.joint_lower.dtype == torch.float64 and hand.joint_lower.dtype == torch.float32
    # numpy input takes the hand's dtype
    out = h64.link_transforms(R.numpy(), t.numpy(), q.numpy())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, hand.link_transforms(R, t, q))


# ---------------------------------------------------------------- gradients

def test_gradients_reach_pose_joints_and_points(hand):
    R, t, q = random_grasps(hand, 3, seed=2)
    pts = (t[:, None] + torch.randn(3, 64, 3, generator=torch.Generator().manual_seed(0)) * 0.05).requires_grad_()
    for rot in (quaternion_from_matrix(R), sixd_from_matrix(R)):
        rot = rot.clone().requires_grad_()
        tt, qq = t.clone().requires_grad_(), q.clone().requires_grad_()
        loss = (hand.signed_distance(rot, tt, qq, pts).sum() + hand.signed_distance(rot, tt, qq, pts, per_link=True).sum()
                + hand.surface_points(rot, tt, qq).sum() + hand.self_penetration(rot, tt, qq).sum())
        loss.backward()
        for x in (rot, tt, qq, pts):
            assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_signed_distance_gradcheck(hand):
    R, t, q = random_grasps(hand, 2, seed=3, dtype=torch.float64)
    pts = t[:, None] + torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.04
    rot = sixd_from_matrix(R).requires_grad_()
    args = (rot, t.requires_grad_(), q.requires_grad_(), pts.requires_grad_())
    w = torch.rand(2, 6, 17, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fn = lambda *a: torch.stack([hand.signed_distance(*a).sum(), (hand.signed_distance(*a, per_link=True) * w).sum(),
                                 hand.self_penetration(*a[:3]).sum(), hand.surface_points(*a[:3])[:, ::50].sum()])
    assert torch.autograd.gradcheck(fn, args, atol=1e-6, fast_mode=True)


# ---------------------------------------------------------------- signed distance

def reference_sdf(hand, R, t, q, pts):
    """Straightforward float64 per-primitive SDF (positive inside) -> (B, P, n_primitives)."""
    T = hand.link_transforms(R.double(), t.double(), q.double()).numpy()
    out = []
    for p in hand.primitives:
        w, x, y, z = p.quat
        Rp = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                       [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                       [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        Tl = T[:, hand.link_names.index(p.link)]
        Rg, cg = Tl[:, :3, :3] @ Rp, Tl[:, :3, :3] @ p.pos + Tl[:, :3, 3]
        xl = np.einsum("bpk,bkj->bpj", pts.double().numpy() - cg[:, None], Rg)
        if p.kind == "capsule":
            r, h = p.size
            closest = np.zeros_like(xl)
            closest[..., 2] = np.clip(xl[..., 2], -h, h)
            out.append(r - np.linalg.norm(xl - closest, axis=-1))
        else:
            d = np.abs(xl) - p.size
            out.append(-(np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(-1), 0)))
    return np.stack(out, -1)


def test_signed_distance_matches_reference(hand):
    R, t, q = random_grasps(hand, 4, seed=4)
    pts = t[:, None] + torch.randn(4, 500, 3, generator=torch.Generator().manual_seed(2)) * 0.06
    ref = reference_sdf(hand, R, t, q, pts)
    ref_link = np.stack([ref[..., [k for k, p in enumerate(hand.primitives) if p.link == n]].max(-1)
                         for n in hand.sdf_link_names], -1)
    per_link = hand.signed_distance(R, t, q, pts, per_link=True)
    assert per_link.shape == (4, 500, 17)
    np.testing.assert_allclose(per_link.numpy(), ref_link, atol=2e-6)
    np.testing.assert_allclose(hand.signed_distance(R, t, q, pts).numpy(), ref.max(-1), atol=2e-6)


def test_penetration_equals_relu_sum_of_sdf(hand):
    """The loss form skips points outside every primitive's bounding sphere: same values and gradients."""
    from dgtr.rotations import axis_angle_from_matrix, matrix_from_axis_angle

    R, t, q = random_grasps(hand, 6, seed=7, dtype=torch.float64)
    pts = t[:, None] + torch.randn(6, 3000, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.05
    # gradients w.r.t. a rotation parameter (axis-angle): both forms agree on SO(3), not off it (R vs R^T)
    aa = axis_angle_from_matrix(R)
    leaves = [x.clone().requires_grad_() for x in (aa, t, q)]
    fast = hand.penetration(matrix_from_axis_angle(leaves[0]), *leaves[1:], pts)
    g_fast = torch.autograd.grad(fast.sum(), leaves)
    leaves2 = [x.clone().requires_grad_() for x in (aa, t, q)]
    full = torch.relu(hand.signed_distance(matrix_from_axis_angle(leaves2[0]), *leaves2[1:], pts)).sum(-1)
    g_full = torch.autograd.grad(full.sum(), leaves2)
    assert (full > 0).all()  # the test is not vacuous: every hand holds some of the points
    torch.testing.assert_close(fast, full, atol=1e-12, rtol=1e-10)
    for a, b in zip(g_fast, g_full):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    far = hand.penetration(*idle(2, torch.float64), torch.full((2, 10, 3), 5.0, dtype=torch.float64))
    assert torch.equal(far, torch.zeros(2, dtype=torch.float64))
    # one point set shared by every grasp, (P, 3): the same as that set given to each grasp
    shared = pts[0]
    torch.testing.assert_close(hand.penetration(R, t, q, shared), hand.penetration(R, t, q, shared.expand(6, -1, -1)),
                               atol=1e-12, rtol=1e-10)
    # a dead zone (AB-TTA's pen_margin): Σ relu(sdf − m), values and gradients
    m = 0.004
    fast = hand.penetration(matrix_from_axis_angle(leaves[0]), *leaves[1:], pts, margin=m)
    full = torch.relu(hand.signed_distance(matrix_from_axis_angle(leaves2[0]), *leaves2[1:], pts) - m).sum(-1)
    assert (full > 0).any() and (full < hand.penetration(R, t, q, pts)).all()
    torch.testing.assert_close(fast, full, atol=1e-12, rtol=1e-10)
    for a, b in zip(torch.autograd.grad(fast.sum(), leaves), torch.autograd.grad(full.sum(), leaves2)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_signed_distance_signs(hand):
    R, t, q = idle()
    T = hand.link_transforms(R, t, q)[0]
    ffprox = link_origin(hand, T, "robot0:ffproximal") + torch.tensor([0, 0, 0.0225])  # capsule centre
    palm0 = torch.tensor([0.011, 0, 0.038])  # centre of the main palm box, half extents (0.032, 0.0111, 0.049)
    pts = torch.stack([ffprox, ffprox + torch.tensor([0.013, 0, 0]), palm0, torch.tensor([0, 0, -1.0])])[None]
    sd = hand.signed_distance(R, t, q, pts)[0]
    assert sd[0].item() == pytest.approx(0.01, abs=1e-6)  # inside: depth = radius
    assert sd[1].item() == pytest.approx(-0.003, abs=1e-6)  # 3 mm outside the capsule
    assert sd[2].item() == pytest.approx(0.0111, abs=1e-6)
    assert sd[3].item() == pytest.approx(-0.989, abs=1e-6)  # below the palm boxes (bottom z = -0.011)


def test_surface_samples_and_contacts(hand):
    R, t, q = idle()
    vis = hand.surface_points(R, t, q)
    assert vis.shape == (1, 2048, 3) and hand.surface_link_index.shape == (2048,)
    assert torch.equal(vis, ShadowHand().surface_points(R, t, q))  # fixed seed: reproducible
    # the palm is the largest visual mesh: it gets the most samples
    assert torch.bincount(hand.surface_link_index).argmax().item() == 0
    # visual meshes hug the collision primitives
    assert hand.signed_distance(R, t, q, vis).abs().median() < 0.003
    coll = hand.surface_points(R, t, q, kind="collision")
    assert coll.shape == (1, 2048, 3) and hand.signed_distance(R, t, q, coll).min() > -1e-6
    cc = hand.contact_candidates(R, t, q)
    assert cc.shape == (1, len(hand.contact_link_index), 3) and len(hand.contact_link_index) >= 140
    assert hand.signed_distance(R, t, q, cc).min() > -1e-6  # on the primitive surfaces
    # at q = 0 the palmar side of the fingers is -y of the palm frame
    fingers = torch.tensor([not hand.link_names[i].split(":")[1].startswith(("th", "palm"))
                            for i in hand.contact_link_index.tolist()])
    assert (cc[0, fingers, 1] < -0.006).all()
    with pytest.raises(InputError, match="kind"):
        hand.surface_points(R, t, q, kind="mesh")


def test_self_penetration(hand):
    R, t, q = idle()
    assert hand.self_penetration(R, t, q).item() == 0
    relaxed = q.clone()
    flex = [i for i, n in enumerate(JOINT_NAMES) if n[-2:] in ("J2", "J1", "J0") and "TH" not in n]
    relaxed[0, flex] = 0.3
    relaxed[0, JOINT_NAMES.index("robot0:THJ3")] = 0.6
    assert hand.self_penetration(R, t, relaxed).item() < 1e-6
    crossed = relaxed.clone()
    crossed[0, JOINT_NAMES.index("robot0:FFJ3")] = -0.349  # index finger toward the middle finger
    crossed[0, JOINT_NAMES.index("robot0:MFJ3")] = 0.349   # middle finger toward the index finger
    crossed[0, [JOINT_NAMES.index(f"robot0:{f}J{j}") for f in ("FF", "MF") for j in (2, 1)]] = 0.8
    assert hand.self_penetration(R, t, crossed).item() > 0.01
    assert hand.penetration_keypoints(R, t, q).shape == (1, len(hand.keypoint_link_index), 3)


def test_joint_helpers(hand):
    q = random_grasps(hand, 5)[2]
    torch.testing.assert_close(hand.denormalize_joints(hand.normalize_joints(q)), q)
    u = hand.normalize_joints(q)
    assert (u >= 0).all() and (u <= 1).all()
    assert torch.equal(hand.joint_limit_energy(q), torch.zeros(5))
    over = q.clone()
    over[:, 1] = hand.joint_upper[1] + 0.1
    over[:, 0] = hand.joint_lower[0] - 0.2
    torch.testing.assert_close(hand.joint_limit_energy(over), torch.full((5,), 0.3))


def test_visual_meshes(hand):
    R, t, q = random_grasps(hand, 1, seed=5)
    meshes = hand.visual_meshes(R[0], t[0], q[0])
    assert len(meshes) == 21 and all(len(m.faces) for m in meshes)
    names = [m.metadata["link"] for m in meshes]
    T = hand.link_transforms(R, t, q)[0]
    tip = meshes[names.index("robot0:ffdistal")]
    assert np.linalg.norm(tip.vertices.mean(0) - link_origin(hand, T, "robot0:ffdistal").numpy()) < 0.03
    assert len(hand.visual_meshes(R, t, q)) == 21


# ---------------------------------------------------------------- bad input

def test_bad_inputs_name_the_argument(hand):
    R, t, q = idle(2)
    pts = torch.zeros(2, 5, 3)
    cases = [
        ((R, t, q[:, :21]), "q"), ((R, t[:, :2], q), "t"), ((R[:, :2], t, q), "rot"), ((R[:1], t, q), "batch"),
        ((R, t.clone().fill_(float("nan")), q), "t"), ((R, t, torch.full_like(q, float("nan"))), "q"),
        ((torch.full_like(R, float("nan")), t, q), "rot"),
    ]
    for args, name in cases:
        with pytest.raises(InputError, match=name):
            hand.link_transforms(*args)
    with pytest.raises(InputError, match="points"):
        hand.signed_distance(R, t, q, pts[:1])
    with pytest.raises(InputError, match="points"):
        hand.signed_distance(R, t, q, torch.full_like(pts, float("nan")))
    with pytest.raises(InputError, match="q"):
        hand.joint_limit_energy(torch.zeros(3, 21))
    with pytest.raises(ValueError):  # InputError is a ValueError
        hand.self_penetration(R, t, q[:, :21])


# ---------------------------------------------------------------- real DexGraspNet grasps

def grasp_contact_stats(hand, R, t, q, pts):
    """Max penetration depth of object points into the hand (m) and number of links within 5 mm, per grasp."""
    with torch.no_grad():
        sd = hand.signed_distance(R, t, q, pts, per_link=True)  # (B, P, 17)
    return sd.amax((1, 2)).clamp_min(0), (sd.amax(1) >= -0.005).sum(1)


def test_real_grasps_touch_without_penetrating(hand, dexgraspnet_dir):
    trimesh = pytest.importorskip("trimesh")
    stats = {"real": [], "R^T": [], "moved back": []}
    for path in sorted((dexgraspnet_dir / "dataset").glob("*.npy")):
        real_grasp_stats(hand, dexgraspnet_dir, path, stats, trimesh)
    summary = {}
    for name, s in stats.items():
        pen, near = (torch.cat(x) for x in zip(*s))
        summary[name] = (pen.median().item(), near.float().median().item(), len(pen))
    print("\n(penetration median m, links within 5 mm median, grasps):", summary)
    pen, near, n = summary["real"]
    assert n >= 600
    assert pen < 0.002 and near >= 6
    for name in ("R^T", "moved back"):  # the check can fail
        pen, near, _ = summary[name]
        assert pen >= 0.002 or near < 6, name


def real_grasp_stats(hand, root, path, stats, trimesh):
    R, t, q, scale = load_grasps(path)
    mesh = trimesh.load(root / "meshdata" / path.stem / "coacd" / "decomposed.obj", force="mesh")
    unit = torch.tensor(trimesh.sample.sample_surface(mesh, 2048, seed=0)[0], dtype=torch.float32)
    pts = unit[None] * scale[:, None, None]
    variants = {"real": (R, t), "R^T": (R.transpose(1, 2), t),
                "moved back": (R, t + 0.03 * R[:, :, 1])}  # 3 cm along +y: away from the palm side (-y)
    for name, (RR, tt) in variants.items():
        stats[name].append(grasp_contact_stats(hand, RR, tt, q, pts))
    if path.stem == BOTTLE:
        check_palmar_side(hand, R[:64], t[:64], q[:64], pts[:64])


def check_palmar_side(hand, R, t, q, pts):
    """The contact candidates face the object: closer to it than their mirror image on the back of each link."""
    T = hand.link_transforms(R, t, q)
    T0 = hand.link_transforms(*idle())[0]
    li = hand.contact_link_index
    keep = li != 0  # palm grid excluded
    cc0 = hand.contact_candidates(*idle())[0]
    local = ((cc0 - T0[li, :3, 3])[:, None] @ T0[li, :3, :3]).squeeze(1)  # link-frame coordinates
    thumb = torch.tensor([hand.link_names[i].split(":")[1].startswith("th") for i in li.tolist()])
    mirror = local.clone()
    mirror[~thumb, 1] *= -1
    mirror[thumb, 0] *= -1
    pose = lambda x: torch.einsum("bnij,nj->bni", T[:, li, :3, :3], x) + T[:, li, :3, 3]
    front = torch.cdist(pose(local)[:, keep], pts).amin(-1).median(1).values
    back = torch.cdist(pose(mirror)[:, keep], pts).amin(-1).median(1).values
    torch.testing.assert_close(pose(local), hand.contact_candidates(R, t, q))
    assert (front < back).float().mean() > 0.95
