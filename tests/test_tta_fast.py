"""dgtr.tta.adapt against the plain AB-TTA it replaced (benchmarks/reference_tta.py): the same iterations.

AB-TTA is chaotic over its full length: a relative change of 1e-7 in the starting joints moves single grasps by up to
~0.4 rad after the bundled model's 150 iterations (mask thresholds and ReLUs flip), so the fast path is checked where
float noise has not yet grown: the loss terms and their gradients at one state, and the first 15 iterations (two
re-selections of the near points and neighbours included).  Quality over full runs is measured in simulation
(dgtr/tta.py docstring).  Timings: benchmarks/bench_model.py.
"""
import dataclasses
import sys
from pathlib import Path

import torch

from dgtr.hand import get_hand
from dgtr.geometry import knn
from dgtr.tta import TTAConfig, adapt, tta_losses

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reference_tta  # noqa: E402
from bench_model import grasps_around, test_object as box_object  # noqa: E402


def case(B=8):
    torch.manual_seed(0)
    pts = torch.as_tensor(box_object().sample_points(2048))
    R, t, q = grasps_around(B, 0.05, "cpu", seed=3)
    return pts, R, t, q


def test_loss_terms_and_gradients_match_reference():
    hand = get_hand()
    pts, R, t, q = case()
    B = R.shape[0]
    P = pts[None].expand(B, -1, -1)
    near = P[:, :512]
    kp = hand.contact_candidates(R, t, q)
    nbrs = reference_tta._gather(P, reference_tta._knn(kp, P, 8))
    close = torch.rand(kp.shape[:2], generator=torch.Generator().manual_seed(1)) < 0.5
    out = []
    for fn in (tta_losses, reference_tta.tta_losses):
        qq = q.clone().requires_grad_(True)
        tt = t.clone().requires_grad_(True)
        terms = fn(hand, R, tt, qq, near, nbrs, close, 0.04)
        sum(v.sum() * w for v, w in zip(terms.values(), (80, 3, 5))).backward()
        out.append((terms, qq.grad, tt.grad))
    (a, ga, ta), (b, gb, tb) = out
    for k in ("pen", "dist", "spen"):
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ta, tb, atol=1e-5, rtol=1e-5)


def test_first_iterations_match_reference():
    hand = get_hand()
    pts, R, t, q = case()
    cfg = dataclasses.replace(TTAConfig(), iterations=15, tau=0.04, alpha_pen=80, beta_t=0.1, n_near=512)
    a = adapt(hand, pts, R, t, q, cfg)
    b = reference_tta.reference_adapt(hand, pts, R, t, q, cfg)
    assert not torch.allclose(a[2], q.clamp(hand.joint_lower, hand.joint_upper), atol=1e-3)  # it did move
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_knn_kd_tree_finds_the_nearest_points():
    pts, R, t, q = case(B=3)
    kp = get_hand().contact_candidates(R, t, q)
    shared = pts[None].expand(3, -1, -1)                       # one cloud for every grasp (one tree)
    own = shared + 0.01 * torch.arange(3.0)[:, None, None]     # a cloud per grasp (a tree each)
    for P in (shared, own):
        idx = knn(kp, P, 8)
        d = torch.cdist(kp.double(), P.double())
        torch.testing.assert_close(torch.gather(d, 2, idx).sort(-1).values,
                                   d.topk(8, dim=-1, largest=False).values, atol=1e-9, rtol=0)
