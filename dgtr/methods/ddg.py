"""DDG (Liu et al., "Deep Differentiable Grasp Planner for High-DOF Grippers", RSS 2020) for the ShadowHand: a network
that regresses ONE grasp per object, trained with a differentiable grasp-quality (Q1-like) loss.

**Input: the object point cloud, not DDG's multi-view depth images** (the DGTR paper's comparison fed DDG images;
this harness gives every method the same cloud, through DGTR's PointNet++ backbone, ``common.PointEncoder``).

- Network: global cloud feature → MLP → one grasp vector (``common.GraspCoder``).
- Loss (DDG's terms in its supervised mode, on our hand and clouds):
  * ``reg``: smooth L1 to the *nearest* ground-truth grasp of the object (in grasp-vector space) — one prediction
    cannot match every grasp of a multimodal set, so it is pulled to the closest one;
  * ``q1``: −Q̃1, a differentiable generalised Q1 for inexact contacts (below);
  * ``pen`` (object points inside the hand), ``spen`` (self-collision), ``close`` (contact candidates within
    ``close_tau`` pulled onto the surface: DDG's surface-proximity term, DGTR's eq. 1 form).
- Q̃1.  Q1 is the radius of the largest origin-centred ball in the convex hull W of the contact wrenches and the zero
  wrench: Q1 = min_{‖d‖=1} h_W(d), h_W(d) = max_{w ∈ W} ⟨d, w⟩ (the support function).  DDG bounds it through a
  sensitivity analysis of the induced optimisation; here: every contact candidate p_i of the hand is a contact with
  weight a_i = exp(−d_i / σ) (d_i: distance to the object cloud: inexact contacts count less the farther they are),
  the normal n_i of its nearest cloud point (``common.cloud_normals``, estimated: clouds have no normals), the
  friction cone of ``dgtr.metrics`` (μ = 1, 8 edges, wrench [f; 10·(p × f)]) scaled by a_i; h_W on ``directions``
  fixed unit vectors of R⁶ (an upper bound of the min, as DDG's), and a soft minimum over them,
  −(1/β)·log mean_d exp(−β·h_W(d)) (between the minimum and the mean; β = ``softmin``) so several directions share the
  gradient.  Far from the object every a_i → 0 and Q̃1 → 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..geometry import gather, nearest
from ..losses import vanilla_distance
from ..metrics import MU, N_EDGES, TORQUE_SCALE
from .common import (EncoderConfig, GraspCoder, MethodTrainSettings, NoRefine, PointEncoder, SampleConfig,
                     batch_targets, check_points, cloud_normals, mlp, GRASP_DIM)

__all__ = ["DDGConfig", "DDGLoss", "DDGRun", "DDG", "soft_q1", "wrench_directions"]


@dataclass
class DDGConfig:
    n_points: int = 4096
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    hidden: list[int] = field(default_factory=lambda: [512, 256])
    t_range: float = 0.22

    def check(self) -> None:
        self.encoder.check("model.encoder")
        if self.n_points < 64:
            raise InputError("model.n_points: need >= 64")


@dataclass
class DDGLoss:
    reg: float = 1.0             # smooth L1 to the nearest ground-truth grasp (grasp vector)
    q1: float = 10.0             # −Q̃1
    pen: float = 10.0            # Σ depth (m) of object points inside the hand
    spen: float = 10.0           # self-penetration
    close: float = 10.0          # Σ distance (m) of contact candidates within close_tau of the object
    close_tau: float = 0.01
    contact_sigma: float = 0.005  # m: contact weight exp(−d / σ) in Q̃1
    directions: int = 128        # unit wrench directions for the support function
    softmin: float = 50.0        # β of the soft minimum over directions
    normal_k: int = 16           # neighbours for the cloud normals

    def check(self) -> None:
        if min(self.reg, self.q1, self.pen, self.spen, self.close) < 0 or not (self.close_tau > 0 and
                                                                             self.contact_sigma > 0 and self.softmin > 0):
            raise InputError("loss: need weights >= 0 and close_tau, contact_sigma, softmin > 0")
        if self.directions < 1 or self.normal_k < 3:
            raise InputError("loss: need directions >= 1 and normal_k >= 3")


@dataclass
class DDGRun:
    """Run config of ``method: ddg`` (configs/methods/ddg.yaml).  One grasp per object: ``sample.n`` is 1."""

    method: str = "ddg"
    model: DDGConfig = field(default_factory=DDGConfig)
    loss: DDGLoss = field(default_factory=DDGLoss)
    train: MethodTrainSettings = field(default_factory=MethodTrainSettings)
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(n=1))
    refine: NoRefine = field(default_factory=NoRefine)

    def check(self) -> None:
        self.model.check(), self.loss.check(), self.train.check(), self.sample.check(), self.refine.check()
        if self.sample.n != 1 or self.sample.passes != 1:
            raise InputError("sample: DDG regresses one grasp per object (sample.n = 1, sample.passes = 1)")


def wrench_directions(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 6) fixed unit directions of wrench space (normalised Gaussians)."""
    return F.normalize(torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64),
                       dim=-1).float()


def soft_q1(contacts: torch.Tensor, normals: torch.Tensor, weights: torch.Tensor, directions: torch.Tensor,
            beta: float, mu: float = MU, n_edges: int = N_EDGES, torque_scale: float = TORQUE_SCALE) -> torch.Tensor:
    """Q̃1 (module docstring): contacts (K, C, 3) m, outward unit normals (K, C, 3), weights (K, C) in [0, 1],
    directions (D, 6) → (K,).  The cone is ``dgtr.metrics.friction_cone_wrenches``' (f = −n + μ(cos φ u + sin φ v))."""
    n = F.normalize(normals, dim=-1)
    helper = torch.eye(3, dtype=n.dtype, device=n.device)[n.abs().argmin(-1)]
    u = F.normalize(torch.linalg.cross(n, helper), dim=-1)
    v = torch.linalg.cross(n, u)
    phi = 2 * torch.pi * torch.arange(n_edges, dtype=n.dtype, device=n.device) / n_edges
    f = -n[:, :, None] + mu * (phi.cos()[:, None] * u[:, :, None] + phi.sin()[:, None] * v[:, :, None])  # (K,C,E,3)
    tau = torque_scale * torch.linalg.cross(contacts[:, :, None].expand_as(f), f)
    w = (torch.cat([f, tau], -1) * weights[:, :, None, None]).flatten(1, 2)                             # (K,C·E,6)
    h = (w @ directions.to(w).T).amax(1).clamp_min(0)      # support function of hull(W ∪ {0}) per direction (K, D)
    return -(torch.logsumexp(-beta * h, -1) - torch.log(torch.tensor(float(h.shape[-1])))) / beta


class DDG(nn.Module):
    def __init__(self, run: DDGRun, hand):
        super().__init__()
        cfg = run.model
        cfg.check()
        self.cfg, self.loss_cfg = cfg, run.loss
        self.coder = GraspCoder(hand.joint_lower, hand.joint_upper, cfg.t_range)
        self.encoder = PointEncoder(cfg.encoder)
        self.head = mlp(cfg.encoder.out_dim, list(cfg.hidden), GRASP_DIM)
        self.register_buffer("directions", wrench_directions(run.loss.directions), persistent=False)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3) → grasp vectors (B, 31)."""
        return self.head(self.encoder(points)[2])

    @torch.no_grad()
    def sample(self, points: torch.Tensor, n: int = 1, generator: torch.Generator | None = None):
        """points (B, N, 3) → R (B, 1, 3, 3), t (B, 1, 3), q (B, 1, 22): DDG's one grasp per object (n must be 1)."""
        if n != 1:
            raise InputError(f"DDG regresses one grasp per object: n must be 1, got {n}")
        R, t, q = self.coder.decode(self(check_points(points)))
        return R[:, None], t[:, None], q[:, None]

    def loss(self, batch: dict, hand, generator: torch.Generator | None = None):
        """A training batch (``dgtr.data.collate``) → (loss, {term: float})."""
        L = self.loss_cfg
        pts = batch["points"].to(self.coder.lower.device)
        x = self(pts)                                                           # (B, 31)
        R, t, q = self.coder.decode(x)
        reg = torch.stack([F.smooth_l1_loss(x[b].expand(len(r), -1), self.coder.encode(r, tt, qq),
                                            reduction="none").sum(-1).amin()
                           for b, (r, tt, qq) in enumerate(batch_targets(batch, pts.device))]).mean()
        kp = hand.contact_candidates(R, t, q)                                   # (B, C, 3)
        idx = nearest(kp, pts)
        d = ((kp - gather(pts, idx)) ** 2).sum(-1).add(1e-12).sqrt()
        normals = gather(cloud_normals(pts, L.normal_k), idx)
        q1 = soft_q1(kp, normals, torch.exp(-d / L.contact_sigma), self.directions, L.softmin)
        terms = {"reg": reg, "q1": -q1.mean(), "pen": hand.penetration(R, t, q, pts).mean(),
                 "spen": hand.self_penetration(R, t, q).mean(),
                 "close": vanilla_distance(kp, pts, L.close_tau).mean()}
        loss = sum(getattr(L, k) * v for k, v in terms.items())
        return loss, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()},
                      "q1_soft": float(q1.detach().mean())}
