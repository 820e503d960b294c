import pytest
import torch
import torch.nn.functional as F

from dgtr.errors import InputError
from dgtr.hand import get_hand  # a hard dependency (gymnasium-robotics' Shadow Hand): a broken loader fails here
from dgtr.geometry import nearest
from dgtr.losses import (LossConfig, SetCriterion, chamfer, normalise_targets, object_penetration,
                         vanilla_distance)
from dgtr.model import build_model
from dgtr.rotations import matrix_from_quaternion

from test_model import LOWER, UPPER, cloud, small_cfg

J = 22


class FakeHand:
    """Tiny stand-in with the ShadowHand API: a rigid point cloud whose points shift with the first joints,
    spheres for the signed distance (positive inside) and three keypoints for self-penetration."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.base = torch.randn(48, 3, generator=g) * 0.02 + torch.tensor([0.0, 0.0, 0.05])
        self.spheres = torch.tensor([[0.0, 0.0, 0.02], [0.0, 0.0, 0.06], [0.02, 0.0, 0.09]])
        self.keypoints = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.015], [0.0, 0.01, 0.03]])
        self.radius = 0.015
        self.joint_lower, self.joint_upper = LOWER, UPPER

    def _pose(self, rot, t, q, pts):
        """(K,3,3), (K,3), (K,J), (N,3) → (K,N,3); each point moves with q[:, :3] by its own amount."""
        w = torch.linspace(0.0, 1.0, pts.shape[0])[None, :, None]
        local = pts + 0.03 * w * q[:, None, :3]
        return local @ rot.transpose(-1, -2) + t[:, None]

    def surface_points(self, rot, t, q):
        return self._pose(rot, t, q, self.base)

    def contact_candidates(self, rot, t, q):
        return self._pose(rot, t, q, self.base[:12])

    def signed_distance(self, rot, t, q, points):
        c = self._pose(rot, t, q, self.spheres)
        return (self.radius - torch.cdist(points, c)).amax(-1)

    def penetration(self, rot, t, q, points):
        return F.relu(self.signed_distance(rot, t, q, points)).sum(-1)

    def self_penetration(self, rot, t, q):
        k = self._pose(rot, t, q, self.keypoints)
        d = torch.cdist(k, k) + torch.eye(3) * 1.0
        return F.relu(0.02 - d).sum((1, 2))


def random_gt(M, seed, near=None):
    """M ground-truth grasps within limits; with ``near`` (P,3) the palm sits on object points."""
    g = torch.Generator().manual_seed(seed)
    quat = F.normalize(torch.randn(M, 4, generator=g), dim=-1)
    if near is None:
        t = (torch.rand(M, 3, generator=g) - 0.5) * 0.3
    else:
        t = near[torch.randint(len(near), (M,), generator=g)]
    return {"rotation": matrix_from_quaternion(quat), "translation": t,
            "joints": LOWER + torch.rand(M, J, generator=g) * (UPPER - LOWER)}


def outputs_from_features(model, h):
    """Model heads on a leaf feature tensor h (B,Q,d): outputs whose per-query gradients we can inspect."""
    out = model.heads(h)
    out["aux"] = [model.heads(h * 0.5)]
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(small_cfg(), LOWER, UPPER).eval()


def test_normalise_targets_round_trip_and_errors():
    gt = random_gt(5, 0)
    n = normalise_targets(gt, LOWER, UPPER, 0.22)
    torch.testing.assert_close(matrix_from_quaternion(n["quaternion"]), gt["rotation"], atol=1e-5, rtol=0)
    torch.testing.assert_close(LOWER + n["joints_norm"] * (UPPER - LOWER), gt["joints"])
    torch.testing.assert_close(n["translation_norm"] * 0.44 - 0.22, gt["translation"].clamp(-0.22, 0.22))
    from_q = normalise_targets({"quaternion": -n["quaternion"], "translation": gt["translation"],
                                "joints": gt["joints"]}, LOWER, UPPER, 0.22)
    torch.testing.assert_close(from_q["rotation"], gt["rotation"], atol=1e-5, rtol=0)
    over = dict(gt, joints=gt["joints"] + 0.5)
    n2 = normalise_targets(over, LOWER, UPPER, 0.22)
    assert n2["joints_norm"].max() <= 1 and torch.equal(n2["joints"], over["joints"])  # raw values untouched
    assert normalise_targets(over, LOWER, UPPER, 0.22, clamp=False)["joints_norm"].max() > 1
    with pytest.raises(InputError, match="joints"):
        normalise_targets(dict(gt, joints=gt["joints"][:, :5]), LOWER, UPPER, 0.22)
    with pytest.raises(InputError, match="rotation"):
        normalise_targets({"translation": gt["translation"], "joints": gt["joints"]}, LOWER, UPPER, 0.22)


def test_loss_invariant_to_gt_permutation_and_quaternion_sign(model):
    crit = SetCriterion(LossConfig(), FakeHand(), t_range=0.22)
    pts = cloud(2, 512)
    with torch.no_grad():
        out = model(pts)
    gts = [random_gt(5, 1), random_gt(11, 2)]
    loss, logs, assign = crit(out, gts)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(3))
    gts_p = [gts[0], {k: v[perm] for k, v in gts[1].items()}]
    loss_p, _, assign_p = crit(out, gts_p)
    torch.testing.assert_close(loss_p, loss)
    assert (perm[assign_p[1]] == torch.as_tensor(assign[1])).all()
    # q ≡ -q: ground truth given as negated quaternions instead of matrices
    gts_q = [{"quaternion": -normalise_targets(g, LOWER, UPPER, 0.22)["quaternion"], "translation": g["translation"],
              "joints": g["joints"]} for g in gts]
    torch.testing.assert_close(crit(out, gts_q)[0], loss, rtol=1e-5, atol=1e-6)
    out_neg = dict(out, quaternion=-out["quaternion"], aux=[dict(a, quaternion=-a["quaternion"]) for a in out["aux"]])
    torch.testing.assert_close(crit(out_neg, gts)[0], loss, rtol=1e-5, atol=1e-6)
    assert logs["matched"] == 5 + 8 and set(logs) >= {"trans", "joints", "rot", "chamfer", "spen", "loss", "loss_aux"}
    assert "pen" not in logs and "dist" not in logs  # off in DMT


def test_unmatched_queries_get_no_gradient_and_static_mode(model):
    crit = SetCriterion(LossConfig(chamfer=0, spen=0), None, LOWER, UPPER, t_range=0.22)
    h = torch.randn(2, 8, 64, requires_grad=True)
    gts = [random_gt(3, 4), random_gt(20, 5)]  # M < Q and M > Q
    # without deep supervision only the final layer's matched queries get gradient (aux layers match on their own)
    loss, logs, assign = SetCriterion(LossConfig(chamfer=0, spen=0, aux=False), None, LOWER, UPPER)(
        outputs_from_features(model, h), gts)
    loss.backward()
    assert (assign[0] >= 0).sum() == 3 and (assign[1] >= 0).all()
    moved = h.grad.abs().sum(-1) > 0
    assert torch.equal(moved[0], torch.as_tensor(assign[0] >= 0)) and moved[1].all()

    # static mode: the given assignment is used for every layer and handed back unchanged
    static = [torch.tensor([-1, 2, -1, 0, -1, -1, 1, -1]).numpy(), assign[1]]
    h.grad = None
    loss_s, _, assign_s = crit(outputs_from_features(model, h), gts, static_assignment=static, stage="smw")
    loss_s.backward()
    assert all((a == b).all() for a, b in zip(assign_s, static))
    assert torch.equal(h.grad[0].abs().sum(-1) > 0, torch.as_tensor(static[0] >= 0))
    # reusing the dynamic result as static assignment gives the same final-layer loss
    no_aux = SetCriterion(LossConfig(chamfer=0, spen=0, aux=False), None, LOWER, UPPER)
    out = outputs_from_features(model, h.detach())
    l_dyn, _, a_dyn = no_aux(out, gts)
    torch.testing.assert_close(no_aux(out, gts, static_assignment=a_dyn, stage="smw")[0], l_dyn)

    with pytest.raises(InputError, match="static_assignment"):
        crit(out, gts, stage="smw")
    with pytest.raises(InputError, match="static_assignment"):
        crit(out, gts, static_assignment=[static[0], static[0][:4]], stage="smw")
    with pytest.raises(InputError, match="stage"):
        crit(out, gts, stage="warmup")
    with pytest.raises(InputError, match="targets"):
        crit(out, gts[:1])


def test_fill_nearest_supervises_every_query_in_both_modes(model):
    """loss.matcher.fill = 'nearest': with M < Q every query gets gradient, dynamically and from the recorded (shared)
    static assignment, which the plain criterion refuses."""
    cfg = LossConfig(chamfer=0, spen=0, aux=False)
    cfg.matcher.fill = "nearest"
    crit = SetCriterion(cfg, None, LOWER, UPPER)
    h = torch.randn(1, 8, 64, requires_grad=True)
    gts = [random_gt(3, 4)]
    loss, logs, assign = crit(outputs_from_features(model, h), gts)
    loss.backward()
    assert logs["matched"] == 8 and (assign[0] >= 0).all() and (h.grad.abs().sum(-1) > 0).all()
    out = outputs_from_features(model, h.detach())
    torch.testing.assert_close(crit(out, gts, static_assignment=assign, stage="smw")[0], loss.detach())
    with pytest.raises(InputError, match="several queries"):
        SetCriterion(LossConfig(chamfer=0, spen=0, aux=False), None, LOWER, UPPER)(out, gts, assign, "smw")


def test_smpt_terms_match_their_definitions(model):
    hand = FakeHand()
    crit = SetCriterion(LossConfig(), hand, t_range=0.22)
    pts = cloud(2, 512)
    with torch.no_grad():
        out = model(pts)
    gts = [random_gt(4, 6, near=pts[0]), random_gt(4, 7, near=pts[1])]
    static = crit(out, gts)[2]
    loss, logs, _ = crit(out, gts, static_assignment=static, stage="smpt", points=pts)
    assert torch.isfinite(loss) and {"pen", "dist"} <= set(logs)
    # recompute pen and dist of the final layer by brute force
    pens, dists = [], []
    for b in range(2):
        for i in range(8):
            if static[b][i] < 0:
                continue
            pose = (out["rotation"][b, i:i + 1], out["translation"][b, i:i + 1], out["joints"][b, i:i + 1])
            pens.append(F.relu(hand.signed_distance(*pose, pts[b:b + 1])).sum())
            d = torch.cdist(hand.contact_candidates(*pose)[0], pts[b]).min(-1).values
            dists.append(d[d < 0.01].sum())
    assert abs(logs["pen"] - torch.stack(pens).mean().item()) < 1e-5
    assert abs(logs["dist"] - torch.stack(dists).mean().item()) < 1e-5
    # the weights: smpt = dmt-terms + 50 pen + 10 dist on the final layer
    dmt_terms = sum(LossConfig().weights("dmt")[k] * logs[k] for k in ("trans", "joints", "rot", "chamfer", "spen"))
    want = dmt_terms + 50 * logs["pen"] + 10 * logs["dist"]
    assert abs(logs["loss_final"] - want) < 1e-4 * (1 + want)
    with pytest.raises(InputError, match="points"):
        crit(out, gts, static_assignment=static, stage="smpt")


def test_loss_config_from_yaml_overrides():
    from dgtr.config import load
    cfg = load(LossConfig, overrides=["matcher.w_rot=3", "pen=5", "aux=false"])
    assert cfg.matcher.w_rot == 3.0 and cfg.pen == 5.0 and cfg.aux is False
    assert cfg.weights("dmt")["pen"] == 0 and cfg.weights("smw")["dist"] == 0 and cfg.weights("smpt")["pen"] == 5
    dyn = load(LossConfig, overrides=["pen_stages=[dmt, smpt]", "pen=500"])  # the paper's Table 6 setting
    assert dyn.weights("dmt")["pen"] == 500 and dyn.weights("dmt")["dist"] == 10 and dyn.weights("smw")["pen"] == 0
    with pytest.raises(InputError, match="pen_stages"):
        load(LossConfig, overrides=["pen_stages=[dmt, warmup]"]).weights("dmt")


def test_geometric_helpers_against_brute_force():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 40, 3, generator=g, requires_grad=True)
    b = torch.randn(3, 25, 3, generator=g)
    d = torch.cdist(a, b) ** 2
    ref = d.min(-1).values.mean(-1) + d.min(-2).values.mean(-1)
    (ga,) = torch.autograd.grad(ref.sum(), a)
    val = chamfer(a, b)
    (gv,) = torch.autograd.grad(val.sum(), a)
    torch.testing.assert_close(val, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gv, ga, rtol=1e-4, atol=1e-5)
    # the k-d tree (CPU) and matmul (GPU) nearest-neighbour searches agree, also when chunked
    for x, y in ((a, b), (b, a)):
        ref_idx = torch.cdist(x, y).argmin(-1)
        assert torch.equal(nearest(x, y, method="kdtree"), ref_idx)
        assert torch.equal(nearest(x, y, method="brute", max_elems=1000), ref_idx)
        assert torch.equal(nearest(x, y, owner=torch.tensor([2, 1, 0]), method="kdtree"),
                           torch.cdist(x, y.flip(0)).argmin(-1))                # row k against set 2 − k
    # eq. 1: keypoints 5 mm and 20 mm from the only object point, τ = 1 cm → 5 mm
    kp = torch.tensor([[[0.0, 0, 0.005], [0.0, 0, 0.02]]])
    torch.testing.assert_close(vanilla_distance(kp, torch.zeros(1, 1, 3), 0.01), torch.tensor([0.005]))
    torch.testing.assert_close(object_penetration(torch.tensor([[0.002, -0.1, 0.003]])), torch.tensor([0.005]))


def test_empty_targets_give_zero_loss_with_graph(model):
    crit = SetCriterion(LossConfig(), FakeHand())
    h = torch.randn(1, 8, 64, requires_grad=True)
    empty = {k: v[:0] for k, v in random_gt(2, 0).items()}
    loss, logs, assign = crit(outputs_from_features(model, h), [empty])
    loss.backward()
    assert loss.item() == 0 and (assign[0] == -1).all() and logs["matched"] == 0


def test_tiny_overfit_lowers_regression_loss_tenfold():
    # one object, three grasps, a ~30 k-parameter model: the regression loss must fall >= 10x well within 200 steps
    torch.manual_seed(0)
    cfg = small_cfg(n_points=256, sa_centres=[64, 32, 16], sa_k=[8, 8, 8], sa_mlps=[[16], [32], [32]], proj_hidden=[],
                    pos_hidden=[16], d_model=32, n_heads=2, ffn_dim=32, head_hidden=32, n_layers=2, n_queries=4,
                    dropout=0.0)
    net = build_model(cfg, LOWER, UPPER)
    crit = SetCriterion(LossConfig(chamfer=0, spen=0), None, LOWER, UPPER, t_range=cfg.t_range)
    pts = cloud(1, 256)
    gts = [random_gt(3, 8, near=pts[0] * 1.5)]
    opt = torch.optim.Adam(net.parameters(), lr=5e-3, foreach=True)
    first = None
    for step in range(120):
        loss, logs, _ = crit(net(pts), gts)
        first = first if first is not None else logs["loss_final"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        _, logs, _ = crit(net(pts), gts)
    assert logs["loss_final"] < first / 10, (first, logs)


def test_with_real_hand(model):
    hand = get_hand()
    torch.testing.assert_close(hand.joint_lower, LOWER, atol=1e-3, rtol=0)
    crit = SetCriterion(LossConfig(), hand, t_range=0.22)
    pts = cloud(1, 512)
    h = torch.randn(1, 8, 64, requires_grad=True)
    out = outputs_from_features(model, h)
    gts = [random_gt(3, 9, near=pts[0])]
    loss, logs, assign = crit(out, gts, static_assignment=[torch.tensor([0, -1, 1, -1, 2, -1, -1, -1]).numpy()],
                              stage="smpt", points=pts)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    # each hand term is the real hand's own quantity, averaged over the 3 matched queries (0, 2, 4)
    with torch.no_grad():
        pose = (out["rotation"][0, [0, 2, 4]], out["translation"][0, [0, 2, 4]], out["joints"][0, [0, 2, 4]])
        obj = pts.expand(3, -1, -1)
        want = {"pen": hand.penetration(*pose, obj), "spen": hand.self_penetration(*pose),
                "dist": vanilla_distance(hand.contact_candidates(*pose), obj, 0.01)}
    for k, v in want.items():
        assert logs[k] == pytest.approx(float(v.mean()), rel=1e-5, abs=1e-9), k
    assert logs["pen"] > 0 and logs["dist"] > 0 and logs["chamfer"] > 0
    # a prediction equal to its ground truth has zero chamfer
    n = normalise_targets(gts[0], LOWER, UPPER, 0.22)
    keys = ("rotation", "quaternion", "translation", "joints", "joints_norm", "translation_norm")
    same = {k: n[k][None] for k in keys}
    _, logs, _ = SetCriterion(LossConfig(aux=False), hand)(same, gts)
    assert logs["chamfer"] < 1e-8 and logs["trans"] < 1e-10 and logs["rot"] < 1e-6


def test_chamfer_subset_keeps_link_shares():
    hand = get_hand()
    crit = SetCriterion(LossConfig(chamfer_points=1024), hand)
    R, t, q = torch.eye(3)[None], torch.zeros(1, 3), hand.joint_lower[None]
    sub = crit._surface(R, t, q)
    assert sub.shape == (1, 1024, 3)
    links = hand.surface_link_index
    full = torch.bincount(links, minlength=int(links.max()) + 1).double() / links.numel()
    part = torch.bincount(links[crit._surf_idx], minlength=full.numel()).double() / 1024
    assert (part - full).abs().max() < 2 / 1024 + 1e-9  # each link's share of the samples is kept
    assert torch.equal(SetCriterion(LossConfig(chamfer_points=10 ** 6), hand)._surface(R, t, q),
                       hand.surface_points(R, t, q))


# ------------------------------------------------------------------------------- the authors' squared penetration
def _palmar_brute(hand, rot, t, q, points):
    """palmar_penetration written out plainly: every point × every primitive, link frames from link_transforms."""
    from dgtr.rotations import matrix_from_quaternion

    T = hand.link_transforms(rot, t, q)                                     # (K, L, 4, 4)
    out = torch.zeros(points.shape[:2])
    for p in hand.primitives:
        li = hand.link_names.index(p.link)
        Rp = T[:, li, :3, :3] @ matrix_from_quaternion(torch.as_tensor(p.quat, dtype=torch.float32))
        c = T[:, li, :3, 3] + (T[:, li, :3, :3] @ torch.as_tensor(p.pos, dtype=torch.float32))
        x = torch.einsum("kpi,kij->kpj", points - c[:, None], Rp)           # primitive coordinates
        if p.kind == "capsule":
            r, h = float(p.size[0]), float(p.size[1])
            zc = x[..., 2].clamp(-h, h)
            inside = x[..., 0] ** 2 + x[..., 1] ** 2 + (x[..., 2] - zc) ** 2 < r * r
            o = (-r, 0.0) if p.link.split(":")[1].startswith("th") else (0.0, -r)
            val = (x[..., 0] - o[0]) ** 2 + (x[..., 1] - o[1]) ** 2 + (x[..., 2] - zc) ** 2
        else:
            depth = (torch.as_tensor(p.size, dtype=torch.float32) - x.abs()).amin(-1)
            inside, val = depth > 0, depth ** 2
        out = torch.maximum(out, torch.where(inside, val, torch.zeros_like(val)))
    return out.sum(-1)


def test_squared_penetration_matches_its_definition():
    from dgtr.losses import palmar_penetration

    hand = get_hand()
    g = torch.Generator().manual_seed(0)
    K = 6
    rot = matrix_from_quaternion(F.normalize(torch.randn(K, 4, generator=g), dim=-1))
    t = torch.randn(K, 3, generator=g) * 0.02
    q = LOWER + torch.rand(K, J, generator=g) * (UPPER - LOWER)
    pts = (torch.rand(K, 3000, 3, generator=g) - 0.5) * 0.25              # many points inside the hand
    t.requires_grad_(True)
    val = palmar_penetration(hand, rot, t, q, pts)
    ref = _palmar_brute(hand, rot, t, q, pts)
    assert (ref > 0).all()
    torch.testing.assert_close(val, ref, rtol=1e-4, atol=1e-9)
    (g1,) = torch.autograd.grad(val.sum(), t)
    (g2,) = torch.autograd.grad(ref.sum(), t)
    torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-8)
    # its scale: a point 1 mm under the palmar face of a distal phalanx costs ~(1 mm)², one 1 mm under the back of
    # it ~(2r - 1 mm)²; the linear form charges 1 mm for both
    p = next(p for p in hand.primitives if p.link == "robot0:ffdistal")
    r = float(p.size[0])
    T = hand.link_transforms(torch.eye(3)[None], torch.zeros(1, 3), q[:1])[0, hand.link_names.index(p.link)]
    local = torch.tensor([[0.0, -r + 1e-3, float(p.pos[2])], [0.0, r - 1e-3, float(p.pos[2])]])
    x = (local @ T[:3, :3].T + T[:3, 3])                                     # the phalanx's frame is the capsule's
    one = lambda y: palmar_penetration(hand, torch.eye(3)[None], torch.zeros(1, 3), q[:1], y[None, None]).item()
    assert one(x[0]) == pytest.approx(1e-6, rel=1e-2) and one(x[1]) == pytest.approx((2 * r - 1e-3) ** 2, rel=1e-2)
    lin = hand.penetration(torch.eye(3)[None].expand(2, 3, 3), torch.zeros(2, 3), q[:1].expand(2, -1), x[:, None])
    torch.testing.assert_close(lin, torch.full((2,), 1e-3), rtol=1e-3, atol=1e-7)


def test_pen_form_option():
    hand = get_hand()
    with pytest.raises(InputError, match="pen_form"):
        SetCriterion(LossConfig(pen_form="cubic"), hand)
    pts = cloud(1, 512)
    g = random_gt(3, 9, near=pts[0])
    n = normalise_targets(g, LOWER, UPPER, 0.22)
    keys = ("rotation", "quaternion", "translation", "joints", "joints_norm", "translation_norm")
    pred = {k: n[k][None] for k in keys}
    static = [torch.arange(3).numpy()]
    logs = {f: SetCriterion(LossConfig(aux=False, pen_form=f), hand)(pred, [g], static, "smpt", pts)[1]
            for f in ("linear", "squared")}
    from dgtr.losses import palmar_penetration
    want = palmar_penetration(hand, n["rotation"], n["translation"], n["joints"], pts.expand(3, -1, -1)).mean()
    assert logs["squared"]["pen"] == pytest.approx(float(want), rel=1e-5) and logs["squared"]["pen"] > 0
    assert logs["linear"]["pen"] > 10 * logs["squared"]["pen"]  # m vs m² at mm depths


# -------------------------------------------------------------------------- speed paths keep the values exactly
def test_batched_hand_terms_equal_per_layer_terms(model):
    """all_layer_terms (hand terms of all layers in one call, shared ground-truth and object k-d trees, threads)
    gives each layer exactly what layer_terms computes for that layer alone."""
    hand = get_hand()
    crit = SetCriterion(LossConfig(), hand, t_range=0.22)
    pts = cloud(2, 512)
    h = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(1))
    out = outputs_from_features(model, h)
    out["aux"] = [model.heads(h * s) for s in (0.5, 0.8)]
    gts = [random_gt(5, 10, near=pts[0]), random_gt(11, 11, near=pts[1])]
    layers = [out] + out["aux"]
    weights = crit.cfg.weights("smpt")
    gts_p = crit.prepare_targets(gts, torch.float32, "cpu")
    from dgtr.matcher import hungarian_match
    matches = [hungarian_match(layer, gts_p) for layer in layers]   # different matches per layer
    torch.set_num_threads(2)
    try:
        batched = crit.all_layer_terms(layers, gts_p, matches, weights, pts)
    finally:
        torch.set_num_threads(1)
    for layer, m, terms in zip(layers, matches, batched):
        alone = crit.layer_terms(layer, gts_p, m, weights, pts)
        assert terms.keys() == alone.keys() == {"trans", "joints", "rot", "chamfer", "spen", "pen", "dist"}
        for k in terms:
            torch.testing.assert_close(terms[k], alone[k], rtol=1e-6, atol=1e-9)
