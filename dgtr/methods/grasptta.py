"""GraspTTA (Jiang et al., "Hand-Object Contact Consistency Reasoning for Human Grasps Generation", ICCV 2021) for
the ShadowHand: a conditional VAE of grasps given the object cloud, and test-time adaptation towards consistency with
the contact map a ContactNet predicts.

The paper's pieces and ours:
- GraspCVAE.  Encoder: object feature + the ground-truth grasp → q(z | grasp, object) = N(μ, σ²), latent 64;
  decoder: object feature + z → grasp.  The paper encodes MANO hands and decodes MANO parameters; here the object
  feature is the PointNet++ global feature (``common.PointEncoder``, DGTR's backbone) and the grasp is the 31-number
  ShadowHand vector (``common.GraspCoder``).  At test time z ~ N(0, I): 16 draws with the same cloud give 16 grasps.
- Training loss (per ground-truth grasp, ``grasps_per_object`` drawn per object and step):
  reconstruction of the grasp vector (smooth L1) and of the hand surface (mean point distance, the paper's MANO
  vertex loss), KL to N(0, I), object penetration into the hand, the *hand-object contact consistency* terms —
  the hand's contact map on the object matches the ground truth's (``w_cmap``) and the hand's contact candidates
  near the object are pulled onto it (``w_prior``; the paper's "prior contact vertices", DGTR's eq. 1 form).
- ContactNet and test-time adaptation: ``dgtr.methods.contact`` (shared with UniDexGrasp's refinement).  ContactNet
  trains beside the CVAE in the same steps (separate parameters, separate loss).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..losses import vanilla_distance
from .common import (GRASP_DIM, EncoderConfig, GraspCoder, MethodTrainSettings, PointEncoder, SampleConfig,
                     check_points, contact_map, hand_points, mlp, sample_targets)
from .contact import ContactNet, ContactNetConfig, ContactRefineConfig, contact_loss, refine

__all__ = ["GraspTTAConfig", "GraspTTALoss", "GraspTTARun", "GraspTTA"]


@dataclass
class GraspTTAConfig:
    n_points: int = 4096
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    latent: int = 64
    hidden: list[int] = field(default_factory=lambda: [512, 256])
    t_range: float = 0.22
    contact: ContactNetConfig = field(default_factory=ContactNetConfig)

    def check(self) -> None:
        self.encoder.check("model.encoder")
        self.contact.check("model.contact")
        if self.latent < 1 or self.n_points < 64:
            raise InputError("model: need latent >= 1 and n_points >= 64")


@dataclass
class GraspTTALoss:
    grasps_per_object: int = 8  # ground-truth grasps drawn per object and step
    param: float = 1.0          # smooth L1 on the grasp vector
    hand: float = 100.0         # mean distance (m) of corresponding hand surface points
    kl: float = 0.01            # KL(q(z|x) ‖ N(0, I)), summed over latent dimensions
    pen: float = 10.0           # Σ depth (m) of object points inside the hand
    cmap: float = 10.0          # mean (hand map − ground-truth map)² on ContactNet's object points
    prior: float = 10.0         # Σ distance (m) of contact candidates within prior_tau of the object
    prior_tau: float = 0.01
    contactnet: float = 10.0    # ContactNet's own loss (separate parameters)

    def check(self) -> None:
        if self.grasps_per_object < 1 or min(self.param, self.hand, self.kl, self.pen, self.cmap, self.prior,
                                             self.contactnet) < 0 or not self.prior_tau > 0:
            raise InputError("loss: need grasps_per_object >= 1, weights >= 0, prior_tau > 0")


@dataclass
class GraspTTARun:
    """Run config of ``method: grasptta`` (configs/methods/grasptta.yaml)."""

    method: str = "grasptta"
    model: GraspTTAConfig = field(default_factory=GraspTTAConfig)
    loss: GraspTTALoss = field(default_factory=GraspTTALoss)
    train: MethodTrainSettings = field(default_factory=MethodTrainSettings)
    sample: SampleConfig = field(default_factory=SampleConfig)
    refine: ContactRefineConfig = field(default_factory=ContactRefineConfig)

    def check(self) -> None:
        self.model.check(), self.loss.check(), self.train.check(), self.sample.check(), self.refine.check()
        if self.sample.passes != 1:
            raise InputError("sample.passes: only UniDexGrasp samples in several passes (grasptta: 1)")


class GraspTTA(nn.Module):
    def __init__(self, run: GraspTTARun, hand):
        super().__init__()
        cfg = run.model
        cfg.check()
        self.cfg, self.loss_cfg = cfg, run.loss
        self.coder = GraspCoder(hand.joint_lower, hand.joint_upper, cfg.t_range)
        self.encoder = PointEncoder(cfg.encoder)
        d = cfg.encoder.out_dim
        self.posterior = mlp(d + GRASP_DIM, list(cfg.hidden), 2 * cfg.latent)
        self.decoder = mlp(d + cfg.latent, list(cfg.hidden), GRASP_DIM)
        self.contactnet = ContactNet(cfg.contact, hand)

    def decode(self, feat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """feat (…, d), z (…, latent) → grasp vector (…, 31)."""
        return self.decoder(torch.cat([feat, z], -1))

    @torch.no_grad()
    def sample(self, points: torch.Tensor, n: int = 16, generator: torch.Generator | None = None):
        """points (B, N, 3) → R (B, n, 3, 3), t (B, n, 3), q (B, n, 22): n draws z ~ N(0, I) per object (no TTA)."""
        check_points(points)
        feat = self.encoder(points)[2]                                          # (B, d)
        z = torch.randn(feat.shape[0], n, self.cfg.latent, generator=generator).to(feat)
        return self.coder.decode(self.decode(feat[:, None].expand(-1, n, -1), z))

    def refine(self, hand, points: torch.Tensor, R, t, q, cfg: ContactRefineConfig):
        """GraspTTA's test-time adaptation of K grasps of one object: points (N, 3), R (K,3,3), t (K,3), q (K,22)."""
        return refine(self.contactnet, hand, points, R, t, q, cfg)

    def loss(self, batch: dict, hand, generator: torch.Generator):
        """A training batch (``dgtr.data.collate``) → (loss, {term: float})."""
        L = self.loss_cfg
        pts = batch["points"].to(self.coder.lower.device)
        owner, R, t, q = sample_targets(batch, L.grasps_per_object, generator, pts.device)
        x = self.coder.encode(R, t, q)
        feat = self.encoder(pts)[2][owner]                                     # (K, d)
        mu, logvar = self.posterior(torch.cat([feat, x], -1)).chunk(2, -1)
        logvar = logvar.clamp(-10, 10)
        eps = torch.randn(mu.shape, generator=generator).to(mu)
        xh = self.decode(feat, mu + eps * (0.5 * logvar).exp())
        Rh, th, qh = self.coder.decode(xh)

        c = self.cfg.contact
        obj = self.contactnet.subset(pts)[owner]
        hp, hp_gt = hand_points(hand, Rh, th, qh, c.hand_points), hand_points(hand, R, t, q, c.hand_points)
        with torch.no_grad():
            cm_gt = contact_map(obj, hp_gt, c.sharpness)
        terms = {
            "param": F.smooth_l1_loss(xh, x, reduction="none").sum(-1).mean(),
            "hand": (hp - hp_gt).norm(dim=-1).mean(),
            "kl": (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(-1)).mean(),
            "pen": hand.penetration(Rh, th, qh, pts[owner]).mean(),
            "cmap": ((contact_map(obj, hp, c.sharpness) - cm_gt) ** 2).mean(),
            "prior": vanilla_distance(hand.contact_candidates(Rh, th, qh), pts, L.prior_tau, owner).mean(),
            # one grasp per object for ContactNet: its per-point network costs K·P·k rows
            "contactnet": contact_loss(self.contactnet, hand, pts, *(x[::L.grasps_per_object]
                                                                      for x in (owner, R, t, q)), generator),
        }
        loss = sum(getattr(L, k) * v for k, v in terms.items())
        return loss, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
