"""Contact refinement (ours, not in the paper): one learned step from the decoder's grasps to the object's surface.

Why: the decoder regresses each grasp from global features, and its hands land several millimetres off the surface
(inside as often as outside: docs/training.md, "The raw network's contact/penetration frontier").  AB-TTA fixes that
with 100 gradient steps per grasp; this module learns to take most of that way in one forward pass, from what AB-TTA
looks at: where the object is around each of the hand's contact candidates.

Input per grasp (R (3,3), t (3), q (22)) and its object's cloud (N, 3): the offset from each of the hand's 152
contact candidates to its nearest cloud point, in the palm frame (2 cm units, clipped at 6 cm) and its length, the
joints scaled to [-1, 1] by their limits, and the cloud's origin in the palm frame (10 cm units): 633 numbers →
MLP (Linear-LayerNorm-ReLU ×2, width 512) → a rotation step ω (axis-angle, |ω_i| ≤ 0.3 rad), a translation step in
the palm frame (≤ 1.5 cm per axis) and a joint step (≤ 0.5 rad), each a tanh of the MLP's output; R' = exp(ω)·R,
t' = t + R·δt, q' = q + δq clamped to the joint limits.  The last layer starts at zero, so an untrained refiner
returns its input exactly.  Nearest points are indices without gradient (as the encoder's kNN).

Training (``dgtr train``'s 'ref' stage, ``train.epochs_refine``): the trunk frozen in eval mode, the refiner's
output scored by the AB-TTA objective of the run's ``tta`` settings (``refine_loss``: ``dgtr.tta.tta_losses`` with
the same point selection), so no ground truth is needed.  docs/training.md "Contact refinement" has the measurements.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .geometry import knn
from .rotations import matrix_from_axis_angle

__all__ = ["ContactRefiner", "refine_loss", "N_CONTACT"]

N_CONTACT = 152           # ShadowHand contact candidates (dgtr.hand: 140 on the finger capsules, 12 on the palm)
MAX_ROT, MAX_T, MAX_Q = 0.3, 0.015, 0.5   # rad, m (per axis), rad: the largest step per grasp


def _hand(x: torch.Tensor):
    from .hand import get_hand
    return get_hand(x.device, x.dtype)


def _nearest(kp: torch.Tensor, points: torch.Tensor, owner: torch.Tensor, k: int = 1) -> torch.Tensor:
    """kp (G, C, 3), points (B, N, 3), owner (G,) object of each grasp → (G, C, k, 3) nearest object points."""
    idx = knn(kp.detach(), points.detach(), k, owner=owner)              # (G, C, k)
    return points[owner[:, None, None], idx]


class ContactRefiner(nn.Module):
    """(points (B, N, 3), R (B, Q, 3, 3), t (B, Q, 3), q (B, Q, J)) → refined (R, t, q), same shapes."""

    def __init__(self, joint_lower: torch.Tensor, joint_upper: torch.Tensor, width: int = 512):
        super().__init__()
        J = joint_lower.numel()
        self.register_buffer("lower", joint_lower.detach().clone().float().flatten(), persistent=False)
        self.register_buffer("upper", joint_upper.detach().clone().float().flatten(), persistent=False)
        self.net = nn.Sequential(nn.Linear(N_CONTACT * 4 + J + 3, width), nn.LayerNorm(width), nn.ReLU(inplace=True),
                                 nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU(inplace=True),
                                 nn.Linear(width, 6 + J))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def features(self, points, R, t, q, owner) -> torch.Tensor:
        """Per-grasp input (G, 4·152 + J + 3) for grasps (G, ...) of objects ``owner`` (G,) (module docstring)."""
        kp = _hand(t).contact_candidates(R, t, q)                            # (G, C, 3)
        off = torch.einsum("gci,gij->gcj", _nearest(kp, points, owner)[:, :, 0] - kp, R) / 0.02
        lo, hi = self.lower.to(q), self.upper.to(q)
        return torch.cat([off.clamp(-3, 3).flatten(1), off.norm(dim=-1).clamp(max=3), (2 * q - lo - hi) / (hi - lo),
                          torch.einsum("gi,gij->gj", -t, R) / 0.1], -1)

    def forward(self, points, R, t, q):
        B, Q = t.shape[:2]
        owner = torch.arange(B, device=t.device).repeat_interleave(Q)
        Rf, tf, qf = R.reshape(B * Q, 3, 3), t.reshape(B * Q, 3), q.reshape(B * Q, -1)
        y = self.net(self.features(points, Rf, tf, qf, owner))
        w, dt, dq = MAX_ROT * torch.tanh(y[:, :3]), MAX_T * torch.tanh(y[:, 3:6]), MAX_Q * torch.tanh(y[:, 6:])
        R2 = matrix_from_axis_angle(w) @ Rf
        t2 = tf + torch.einsum("gij,gj->gi", Rf, dt)
        q2 = torch.minimum(torch.maximum(qf + dq, self.lower.to(qf)), self.upper.to(qf))
        return R2.reshape(B, Q, 3, 3), t2.reshape(B, Q, 3), q2.reshape(B, Q, -1)


def refine_loss(points, coarse, refined, tta) -> tuple[torch.Tensor, dict[str, float]]:
    """The AB-TTA objective (``tta``: a ``TTAConfig``; its τ and α1–α3) of the refined grasps, as AB-TTA would score
    them had it started from the coarse ones: object points for L_pen chosen near the coarse hand (``tta.n_near``),
    keypoints that touched the object (within τ) in the coarse grasp kept in L_tta-dist, each keypoint's distance to
    its nearest of 8 object points found at the refined pose.  coarse, refined: (R (B,Q,3,3), t (B,Q,3), q (B,Q,J)).
    Returns (mean over grasps, logs)."""
    from .geometry import gather
    from .tta import _near_hand, tta_losses

    B, Q = coarse[1].shape[:2]
    R0, t0, q0 = (x.reshape(B * Q, *x.shape[2:]).detach() for x in coarse)
    R, t, q = (x.reshape(B * Q, *x.shape[2:]) for x in refined)
    owner = torch.arange(B, device=t.device).repeat_interleave(Q)
    hand = _hand(t)
    per_grasp = points.detach()[owner]                                   # (G, N, 3)
    with torch.no_grad():
        near = gather(per_grasp, _near_hand(hand, R0, t0, q0, per_grasp, tta.n_near))
        kp0 = hand.contact_candidates(R0, t0, q0)
        init_close = (kp0 - _nearest(kp0, points, owner)[:, :, 0]).norm(dim=-1) < tta.tau
        nbrs = _nearest(hand.contact_candidates(R, t, q), points, owner, 8)
    L = tta_losses(hand, R, t, q, near, nbrs, init_close, tta.tau)
    loss = (tta.alpha_pen * L["pen"] + tta.alpha_dist * L["dist"] + tta.alpha_spen * L["spen"]).mean()
    return loss, {"loss": float(loss.detach()), **{k: float(v.detach().mean()) for k, v in L.items()}}
