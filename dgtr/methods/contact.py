"""ContactNet and contact-consistency refinement: GraspTTA's test-time adaptation (Jiang et al., ICCV 2021) and
UniDexGrasp's refinement (Xu et al., CVPR 2023) use the same idea, implemented once here.

**Contact map** (GraspTTA): on object points, c = 2 − 2·sigmoid(100·d), d = distance to the nearest hand point (m)
(``common.contact_map``).  **ContactNet** predicts, from the object cloud and a (possibly imperfect) hand, the contact
map a good grasp near that hand would make: trained on ground-truth grasps perturbed by noise (rotation, translation,
joints), with the unperturbed grasp's map as the target.  **Refinement**: starting from a generated grasp, optimise
its rotation (axis-angle delta), translation and joints (Adam) so that the hand's own map matches ContactNet's
prediction for the current hand (recomputed as the hand moves, never differentiated: a target), plus object
penetration and self-penetration (``dgtr.hand``).

Departure: GraspTTA adapts the *weights* of its CVAE decoder at test time (the self-supervised consistency loss);
here, as in UniDexGrasp, the grasp parameters themselves are optimised: the same objective, with the gradient
through the hand instead of through the decoder as well, for every method alike.

ContactNet's input, per object point: its k nearest hand points (offsets, distance, an embedding of the hand link
each belongs to), max-pooled, beside a PointNet global feature of the object and hand clouds together (a flag tells
them apart) and the point's own position.  Both GraspTTA and UniDexGrasp use PointNet-style networks on the joint
hand–object cloud; the kNN offsets give this one the local geometry a contact map depends on at a CPU's cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InputError
from ..model import knn
from ..rotations import matrix_from_axis_angle
from ..tta import Optimizer
from .common import contact_map, hand_points, mlp, perturb

__all__ = ["ContactNetConfig", "ContactNet", "ContactRefineConfig", "contact_loss", "refine"]

_OFFSET_SCALE = 0.02   # m: kNN offsets / 2 cm are O(1)
_POINT_SCALE = 0.1     # m: object-frame coordinates / 10 cm are O(1)


@dataclass
class ContactNetConfig:
    object_points: int = 1024   # object points the map lives on (an evenly strided subset of the cloud)
    hand_points: int = 512      # hand surface samples (evenly strided subset of the hand's 2048)
    k: int = 8                  # nearest hand points per object point
    width: int = 64
    link_embedding: int = 8
    sharpness: float = 100.0    # 1/m in c = 2 − 2 sigmoid(sharpness d)
    noise_rot: float = 0.1      # rad per axis: training input = ground truth perturbed by this noise ...
    noise_trans: float = 0.01   # m
    noise_joints: float = 0.1   # rad

    def check(self, where: str = "contact") -> None:
        if min(self.object_points, self.hand_points, self.k, self.width, self.link_embedding) < 1:
            raise InputError(f"{where}: object_points, hand_points, k, width, link_embedding must be >= 1")
        if not self.sharpness > 0 or min(self.noise_rot, self.noise_trans, self.noise_joints) < 0:
            raise InputError(f"{where}: need sharpness > 0 and noise >= 0")


class ContactNet(nn.Module):
    """(object points (K, P, 3), hand points (K, H, 3) from ``hand_points(…, cfg.hand_points)``) → (K, P) predicted
    contact map in (0, 1)."""

    def __init__(self, cfg: ContactNetConfig, hand):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        n = hand.surface_link_index.numel()
        sel = torch.linspace(0, n - 1, min(cfg.hand_points, n)).round().long()
        self.register_buffer("link_index", hand.surface_link_index.detach().cpu().long()[sel].clone())
        self.link = nn.Embedding(len(hand.link_names), cfg.link_embedding)
        w = cfg.width
        self.local = mlp(4 + cfg.link_embedding, [w], w)
        self.glob = mlp(4, [w], 2 * w)
        self.head = mlp(w + 2 * w + 3, [w], 1)

    def subset(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) → (B, P, 3): the object points the map is predicted on."""
        N = points.shape[1]
        if self.cfg.object_points >= N:
            return points
        return points[:, torch.linspace(0, N - 1, self.cfg.object_points, device=points.device).round().long()]

    def forward(self, obj: torch.Tensor, hand_pts: torch.Tensor) -> torch.Tensor:
        K, P, _ = obj.shape
        if hand_pts.shape[1] != self.link_index.numel():
            raise InputError(f"ContactNet: expected {self.link_index.numel()} hand points, got {hand_pts.shape[1]}")
        idx = knn(obj.detach().cpu(), hand_pts.detach().cpu(), self.cfg.k).to(obj.device)       # (K, P, k)
        nb = hand_pts[torch.arange(K, device=obj.device)[:, None, None], idx]                    # (K, P, k, 3)
        off = (nb - obj[:, :, None]) / _OFFSET_SCALE
        rows = torch.cat([off, off.norm(dim=-1, keepdim=True), self.link(self.link_index[idx])], -1)
        local = self.local(rows).amax(2)                                                          # (K, P, w)
        flag = lambda x, v: torch.cat([x / _POINT_SCALE, torch.full_like(x[..., :1], v)], -1)
        g = self.glob(torch.cat([flag(obj, 0.0), flag(hand_pts, 1.0)], 1)).amax(1)              # (K, 2w)
        h = torch.cat([local, g[:, None].expand(-1, P, -1), obj / _POINT_SCALE], -1)
        return torch.sigmoid(self.head(h).squeeze(-1))


def contact_loss(net: ContactNet, hand, points: torch.Tensor, owner, R, t, q, generator: torch.Generator):
    """ContactNet's training loss: mean squared error between its prediction from the perturbed ground truth and the
    map of the ground truth.  points (B, N, 3); owner (K,) object of each grasp; R, t, q (K, …) ground truth."""
    c = net.cfg
    obj = net.subset(points)[owner]
    with torch.no_grad():
        target = contact_map(obj, hand_points(hand, R, t, q, c.hand_points), c.sharpness)
        Rn, tn, qn = perturb(R, t, q, generator, c.noise_rot, c.noise_trans, c.noise_joints)
        noisy = hand_points(hand, Rn, tn, qn, c.hand_points)
    return ((net(obj, noisy) - target) ** 2).mean()


@dataclass
class ContactRefineConfig:
    """Contact-consistency refinement (module docstring).  Weights on per-grasp sums."""

    iterations: int = 50
    lr: float = 5e-3            # Adam, rad (rotation delta, joints) and m (translation) per step
    w_cmap: float = 1.0         # Σ over ContactNet's object points of (hand map − predicted map)²
    w_pen: float = 100.0        # Σ depth (m) of the object points inside the hand
    w_spen: float = 10.0        # self-penetration (hand.self_penetration)
    target_every: int = 10      # iterations between ContactNet predictions of the target map (its forward pass is
    #                             ~2x the rest of an iteration; the hand moves little in 10 steps)
    translation: bool = True    # optimise the translation too (GraspTTA, UniDexGrasp: the whole pose)

    def check(self) -> None:
        if self.iterations < 0 or not self.lr > 0 or self.target_every < 1:
            raise InputError("refine: need iterations >= 0, lr > 0, target_every >= 1")
        if min(self.w_cmap, self.w_pen, self.w_spen) < 0:
            raise InputError("refine: weights must be >= 0")


def refine(net: ContactNet, hand, points: torch.Tensor, R, t, q, cfg: ContactRefineConfig | None = None,
           return_history: bool = False):
    """Refine K grasps towards consistency with ContactNet's contact map.

    points (K, N, 3) or (N, 3) (one cloud for every grasp), R (K, 3, 3), t (K, 3), q (K, 22) →
    (R, t, q) detached, q within the joint limits (and the mean loss per iteration with ``return_history``)."""
    cfg = cfg or ContactRefineConfig()
    cfg.check()
    R0, t0 = R.detach(), t.detach()
    K = t0.shape[0]
    if R0.shape != (K, 3, 3) or t0.shape != (K, 3) or q.shape != (K, 22):
        raise InputError(f"refine: expected R (K,3,3), t (K,3), q (K,22); got {tuple(R.shape)}, {tuple(t.shape)}, "
                         f"{tuple(q.shape)}")
    points = points.to(t0)
    if points.ndim == 2:
        points = points[None].expand(K, -1, -1)
    lower, upper = hand.joint_lower.to(t0), hand.joint_upper.to(t0)
    qp = q.detach().clamp(lower, upper).clone()
    if cfg.iterations == 0 or K == 0:
        return (R0.clone(), t0.clone(), qp, []) if return_history else (R0.clone(), t0.clone(), qp)
    obj = net.subset(points)
    omega = torch.zeros(K, 3, dtype=t0.dtype, device=t0.device, requires_grad=True)
    qp.requires_grad_(True)
    tp = t0.clone().requires_grad_(True) if cfg.translation else t0
    opt = Optimizer([{"params": [omega, qp] + ([tp] if cfg.translation else []), "lr": cfg.lr}])
    was, history = net.training, []
    net.eval()
    for it in range(cfg.iterations):
        Rc = matrix_from_axis_angle(omega) @ R0
        hp = hand_points(hand, Rc, tp, qp, net.cfg.hand_points)
        if it % cfg.target_every == 0:
            with torch.no_grad():
                target = net(obj, hp.detach())
        cm = contact_map(obj, hp, net.cfg.sharpness)
        loss = (cfg.w_cmap * ((cm - target) ** 2).sum(-1) + cfg.w_pen * hand.penetration(Rc, tp, qp, points)
                + cfg.w_spen * hand.self_penetration(Rc, tp, qp))
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # grasps are independent: the sum keeps each one's gradient its own
        opt.step()
        with torch.no_grad():
            qp.clamp_(lower, upper)
        if return_history:
            history.append(float(loss.detach().mean()))
    net.train(was)
    out = ((matrix_from_axis_angle(omega) @ R0).detach(), tp.detach().clone(), qp.detach().clone())
    return (*out, history) if return_history else out
