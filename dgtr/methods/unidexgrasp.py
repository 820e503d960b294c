"""UniDexGrasp's grasp proposal (Xu et al., "UniDexGrasp: Universal Robotic Dexterous Grasping via Learning Diverse
Proposal Generation and Goal-Conditioned Policy", CVPR 2023) for the ShadowHand: GraspIPDF, GraspGlow, ContactNet.

- **GraspIPDF** (an implicit PDF over SO(3), Murphy et al. 2021): a network f(object feature, R) → logit.  Trained
  by classification: the ground-truth rotation among ``ipdf_queries`` uniformly random ones, softmax cross-entropy.
  Sampling: the logits of a fixed uniform set of ``ipdf_grid`` rotations (seeded; the paper's equivolumetric grid)
  → softmax → draws.  The rotation input is the flattened matrix with a sinusoidal positional encoding.
- **GraspGlow** (Glow, Kingma & Dhariwal 2018, conditional): a normalising flow over x = (t', q) — the translation
  t' = Rᵀ t and the 22 joints (normalised) — given the PointNet++ feature of the object cloud *in the sampled
  rotation's frame* (points Rᵀ p): each flow step is ActNorm, an invertible linear map (LU-parametrised) and an
  affine coupling whose scale and shift see the condition.  Trained by maximum likelihood with the ground-truth
  rotation (small Gaussian dequantisation noise on x: synthesized joints sit exactly at their limits).
- **ContactNet refinement**: ``dgtr.methods.contact`` (the same idea as GraspTTA's adaptation).

Passes (the DGTR paper's Table 2): ``sample(points, n, passes)`` draws ``passes`` rotations from GraspIPDF, rotates
the cloud into each (one encoder pass per rotation), and draws n / passes (t', q) from GraspGlow in each: 1×16,
4×4 and 16×1.  Everything else is a shared backbone (``common.PointEncoder``, DGTR's); the three networks have their
own parameters and losses and are trained together in the same steps (their gradients are independent).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import InputError
from ..rotations import matrix_from_quaternion
from .common import (EncoderConfig, GraspCoder, MethodTrainSettings, PointEncoder, SampleConfig, check_points, mlp,
                     rotate_points, sample_targets)
from .contact import ContactNet, ContactNetConfig, ContactRefineConfig, contact_loss, refine

__all__ = ["UniDexGraspConfig", "UniDexGraspLoss", "UniDexGraspRun", "UniDexGrasp", "RotationIPDF", "ConditionalGlow",
           "random_rotations"]

FLOW_DIM = 25  # t' (3) + joints (22)


def random_rotations(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 3, 3) uniform random rotations (normalised Gaussian quaternions)."""
    return matrix_from_quaternion(torch.randn(n, 4, generator=generator, dtype=torch.float64)).float()


@dataclass
class UniDexGraspConfig:
    n_points: int = 4096
    encoder: EncoderConfig = field(default_factory=EncoderConfig)   # GraspIPDF's backbone
    glow_encoder: EncoderConfig = field(default_factory=EncoderConfig)  # GraspGlow's (sees the rotated cloud)
    t_range: float = 0.22
    ipdf_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    ipdf_frequencies: int = 3       # positional encoding of the rotation matrix: x, sin/cos(2^l π x), l < this
    ipdf_grid: int = 4096           # uniform rotations scored at inference
    glow_steps: int = 8
    glow_hidden: int = 256
    temperature: float = 1.0        # std of the flow's base samples at inference
    contact: ContactNetConfig = field(default_factory=ContactNetConfig)

    def check(self) -> None:
        self.encoder.check("model.encoder")
        self.glow_encoder.check("model.glow_encoder")
        self.contact.check("model.contact")
        if min(self.ipdf_grid, self.glow_steps, self.glow_hidden, self.n_points - 63) < 1 or not self.ipdf_hidden:
            raise InputError("model: need ipdf_grid, glow_steps, glow_hidden >= 1, ipdf_hidden non-empty, "
                             "n_points >= 64")
        if self.ipdf_frequencies < 0 or not self.temperature > 0:
            raise InputError("model: need ipdf_frequencies >= 0 and temperature > 0")


@dataclass
class UniDexGraspLoss:
    ipdf_grasps: int = 8            # ground-truth rotations per object and step (one encoder pass serves them all)
    ipdf_queries: int = 512         # random rotations beside each ground-truth one
    glow_grasps: int = 1            # ground-truth grasps per object for GraspGlow (one encoder pass each)
    dequantization: float = 0.01    # std of the noise on the flow's training targets
    ipdf: float = 1.0
    glow: float = 1.0               # negative log-likelihood per dimension
    contactnet: float = 10.0

    def check(self) -> None:
        if min(self.ipdf_grasps, self.ipdf_queries, self.glow_grasps) < 1 or min(
                self.dequantization, self.ipdf, self.glow, self.contactnet) < 0:
            raise InputError("loss: need ipdf_grasps, ipdf_queries, glow_grasps >= 1 and weights, noise >= 0")


@dataclass
class UniDexGraspRun:
    """Run config of ``method: unidexgrasp`` (configs/methods/unidexgrasp.yaml)."""

    method: str = "unidexgrasp"
    model: UniDexGraspConfig = field(default_factory=UniDexGraspConfig)
    loss: UniDexGraspLoss = field(default_factory=UniDexGraspLoss)
    train: MethodTrainSettings = field(default_factory=MethodTrainSettings)
    sample: SampleConfig = field(default_factory=SampleConfig)
    refine: ContactRefineConfig = field(default_factory=ContactRefineConfig)

    def check(self) -> None:
        self.model.check(), self.loss.check(), self.train.check(), self.sample.check(), self.refine.check()


# ----------------------------------------------------------------------------------------------- GraspIPDF
class RotationIPDF(nn.Module):
    """feat (B, d), rotations (B, Q, 3, 3) → unnormalised log-densities (B, Q).  The first layer is split into a
    feature part (once per object) and a rotation part (once per query), as in IPDF."""

    def __init__(self, d: int, hidden: list[int], frequencies: int):
        super().__init__()
        self.frequencies = frequencies
        pe = 9 * (1 + 2 * frequencies)
        self.feat = nn.Linear(d, hidden[0])
        self.rot = nn.Linear(pe, hidden[0], bias=False)
        self.out = nn.Sequential(nn.ReLU(inplace=True), mlp(hidden[0], list(hidden[1:]), 1))

    def encode(self, R: torch.Tensor) -> torch.Tensor:
        x = R.flatten(-2)
        f = (2.0 ** torch.arange(self.frequencies, device=x.device, dtype=x.dtype)) * math.pi
        ang = x[..., None] * f                                               # (…, 9, F)
        return torch.cat([x, ang.sin().flatten(-2), ang.cos().flatten(-2)], -1)

    def forward(self, feat: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        return self.out(self.feat(feat)[:, None] + self.rot(self.encode(R))).squeeze(-1)


# ----------------------------------------------------------------------------------------------- GraspGlow
class ActNorm(nn.Module):
    """Per-dimension affine y = (x + loc)·exp(log_scale); initialised from the first training batch (zero mean, unit
    variance), as in Glow, when that batch has more samples than dimensions (else it stays the identity: n <= D
    samples span at most n − 1 directions, and the steps would blow the others up by ~1e4 each, the loss to ~1e9);
    the std is also floored at ``MIN_STD`` (the flow's inputs are O(1) by construction)."""

    MIN_STD = 0.1

    def __init__(self, D: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(D))
        self.log_scale = nn.Parameter(torch.zeros(D))
        self.register_buffer("ready", torch.tensor(False))

    def forward(self, x):
        if self.training and not bool(self.ready):
            with torch.no_grad():
                if x.shape[0] > x.shape[1]:
                    self.loc.copy_(-x.mean(0))
                    self.log_scale.copy_(-torch.log(x.std(0, unbiased=False).clamp_min(self.MIN_STD)))
                self.ready.fill_(True)
        return (x + self.loc) * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y):
        return y * (-self.log_scale).exp() - self.loc


class InvertibleLinear(nn.Module):
    """y = W x with W = P·(L + I)·(U + diag(sign·exp(log_s))) (Glow's LU form: log|det W| = Σ log_s), W random
    orthogonal at the start."""

    def __init__(self, D: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(D, D))[0]
        P, L, U = torch.linalg.lu(w)
        s = torch.diagonal(U)
        self.register_buffer("P", P)
        self.register_buffer("sign", torch.sign(s))
        self.register_buffer("eye", torch.eye(D))
        self.L = nn.Parameter(torch.tril(L, -1))
        self.U = nn.Parameter(torch.triu(U, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> torch.Tensor:
        L = torch.tril(self.L, -1) + self.eye
        U = torch.triu(self.U, 1) + torch.diag(self.sign * self.log_s.exp())
        return self.P @ L @ U

    def forward(self, x):
        return x @ self.weight().T, self.log_s.sum().expand(x.shape[0])

    def inverse(self, y):
        return torch.linalg.solve(self.weight(), y.T).T


class AffineCoupling(nn.Module):
    """Second part of x scaled and shifted by a network of the first part and the condition; the scale is
    exp(tanh(·)) (bounded, for stable training); the last layer starts at zero (the step starts as the identity)."""

    def __init__(self, D: int, c: int, hidden: int):
        super().__init__()
        self.d1 = D // 2
        self.net = mlp(self.d1 + c, [hidden, hidden], 2 * (D - self.d1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _st(self, xa, cond):
        s, b = self.net(torch.cat([xa, cond], -1)).chunk(2, -1)
        return torch.tanh(s), b

    def forward(self, x, cond):
        xa, xb = x[:, :self.d1], x[:, self.d1:]
        s, b = self._st(xa, cond)
        return torch.cat([xa, xb * s.exp() + b], -1), s.sum(-1)

    def inverse(self, y, cond):
        ya, yb = y[:, :self.d1], y[:, self.d1:]
        s, b = self._st(ya, cond)
        return torch.cat([ya, (yb - b) * (-s).exp()], -1)


class ConditionalGlow(nn.Module):
    """Conditional Glow on R^D: ``log_prob(x (K, D), cond (K, c)) → (K,)``, ``sample(cond, temperature) → (K, D)``."""

    def __init__(self, D: int, c: int, steps: int, hidden: int):
        super().__init__()
        self.D = D
        self.steps = nn.ModuleList(nn.ModuleList([ActNorm(D), InvertibleLinear(D), AffineCoupling(D, c, hidden)])
                                   for _ in range(steps))

    def log_prob(self, x, cond):
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for norm, lin, coup in self.steps:
            x, a = norm(x)
            x, b = lin(x)
            x, c = coup(x, cond)
            logdet = logdet + a + b + c
        return -0.5 * (x ** 2).sum(-1) - 0.5 * self.D * math.log(2 * math.pi) + logdet

    def sample(self, cond, temperature: float = 1.0, generator: torch.Generator | None = None):
        z = torch.randn(cond.shape[0], self.D, generator=generator).to(cond) * temperature
        for norm, lin, coup in reversed(self.steps):
            z = norm.inverse(lin.inverse(coup.inverse(z, cond)))
        return z


# ----------------------------------------------------------------------------------------------- the method
class UniDexGrasp(nn.Module):
    def __init__(self, run: UniDexGraspRun, hand):
        super().__init__()
        cfg = run.model
        cfg.check()
        self.cfg, self.loss_cfg = cfg, run.loss
        self.coder = GraspCoder(hand.joint_lower, hand.joint_upper, cfg.t_range)
        self.encoder = PointEncoder(cfg.encoder)
        self.ipdf = RotationIPDF(cfg.encoder.out_dim, list(cfg.ipdf_hidden), cfg.ipdf_frequencies)
        self.glow_encoder = PointEncoder(cfg.glow_encoder)
        self.glow = ConditionalGlow(FLOW_DIM, cfg.glow_encoder.out_dim, cfg.glow_steps, cfg.glow_hidden)
        self.contactnet = ContactNet(cfg.contact, hand)
        # the inference grid: a function of the config only (seeded), so not part of the weights
        self.register_buffer("grid", random_rotations(cfg.ipdf_grid, torch.Generator().manual_seed(0)),
                             persistent=False)

    @torch.no_grad()
    def sample_rotations(self, points: torch.Tensor, n: int, generator: torch.Generator | None = None):
        """points (B, N, 3) → (B, n, 3, 3) rotations drawn from GraspIPDF's distribution on the grid."""
        feat = self.encoder(points)[2]
        logits = self.ipdf(feat, self.grid[None].expand(feat.shape[0], -1, -1, -1))       # (B, G)
        idx = torch.multinomial(logits.softmax(-1).cpu(), n, replacement=True, generator=generator)
        return self.grid[idx.to(self.grid.device)]

    @torch.no_grad()
    def sample(self, points: torch.Tensor, n: int = 16, passes: int = 1, generator: torch.Generator | None = None):
        """points (B, N, 3) → R (B, n, 3, 3), t (B, n, 3), q (B, n, 22): ``passes`` rotations from GraspIPDF, the
        cloud rotated into each and encoded, n / passes GraspGlow draws per pass (no refinement)."""
        check_points(points)
        if n < 1 or passes < 1 or n % passes:
            raise InputError(f"sample: passes ({passes}) must divide n ({n})")
        B, N, _ = points.shape
        m = n // passes
        R = self.sample_rotations(points, passes, generator).reshape(B * passes, 3, 3)
        clouds = rotate_points(points.repeat_interleave(passes, 0), R)                  # (B·passes, N, 3)
        feat = self.glow_encoder(clouds)[2].repeat_interleave(m, 0)
        x = self.glow.sample(feat, self.cfg.temperature, generator)                     # (B·n, 25)
        Rn = R.repeat_interleave(m, 0)
        t = (Rn @ (x[:, :3] * self.cfg.t_range)[..., None]).squeeze(-1)
        return Rn.reshape(B, n, 3, 3), t.reshape(B, n, 3), self.coder.joints(x[:, 3:]).reshape(B, n, 22)

    def refine(self, hand, points: torch.Tensor, R, t, q, cfg: ContactRefineConfig):
        """ContactNet-based refinement of K grasps of one object: points (N, 3), R (K,3,3), t (K,3), q (K,22)."""
        return refine(self.contactnet, hand, points, R, t, q, cfg)

    def loss(self, batch: dict, hand, generator: torch.Generator):
        """A training batch (``dgtr.data.collate``) → (loss, {term: float})."""
        L = self.loss_cfg
        pts = batch["points"].to(self.coder.lower.device)
        # GraspIPDF: the ground-truth rotation is class 0 among ipdf_queries random ones
        owner, R, _, _ = sample_targets(batch, L.ipdf_grasps, generator, pts.device)
        queries = torch.cat([R[:, None], random_rotations(R.shape[0] * L.ipdf_queries, generator).to(R)
                             .reshape(R.shape[0], L.ipdf_queries, 3, 3)], 1)
        logits = self.ipdf(self.encoder(pts)[2][owner], queries)
        ipdf = nn.functional.cross_entropy(logits, torch.zeros(R.shape[0], dtype=torch.long, device=R.device))
        # GraspGlow: (t', q) in the ground-truth rotation's frame, given the cloud in that frame
        owner, R, t, q = sample_targets(batch, L.glow_grasps, generator, pts.device)
        feat = self.glow_encoder(rotate_points(pts[owner], R))[2]
        x = torch.cat([(R.transpose(1, 2) @ t[..., None]).squeeze(-1) / self.cfg.t_range, self.coder.joints_norm(q)],
                      -1)
        x = x + L.dequantization * torch.randn(x.shape, generator=generator).to(x)
        glow = -self.glow.log_prob(x, feat).mean() / FLOW_DIM
        terms = {"ipdf": ipdf, "glow": glow,
                 "contactnet": contact_loss(self.contactnet, hand, pts, owner, R, t, q, generator)}
        loss = sum(getattr(L, k) * v for k, v in terms.items())
        return loss, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
