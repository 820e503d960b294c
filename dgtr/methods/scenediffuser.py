"""SceneDiffuser's grasp generation (Huang et al., "Diffusion-based Generation, Optimization, and Planning in 3D
Scenes", CVPR 2023) for the ShadowHand: a conditional denoising diffusion model (DDPM, Ho et al. 2020) over the grasp
vector given object features.

- Forward process: x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε over ``steps`` = 100 steps, β linear from 1e-4 to 0.01 (the
  settings of SceneDiffuser's grasp task); x_0 the 31-number grasp vector (``common.GraspCoder``).
- Denoiser ε_θ(x_t, t, object): the grasp as three tokens (translation, 6D rotation, joints), each embedded,
  plus a sinusoidal timestep embedding; pre-norm transformer layers of self-attention among the tokens,
  cross-attention to the object's PointNet++ tokens (``common.PointEncoder``, DGTR's backbone; a position MLP of
  the token xyz on the keys) and a feed-forward block.  SceneDiffuser's denoiser is a UNet-style network with
  cross-attention to the scene features; the conditioning mechanism (cross-attention to point tokens) is the same.
- Loss: ‖ε − ε_θ‖² (its "simple" objective), ``grasps_per_object`` ground-truth grasps per object and step.
- Sampling: ancestral DDPM from x_T ~ N(0, I), posterior variance β̃_t; n grasps for one object are n chains in one
  batch that share the encoded cloud (the DGTR paper: "sampled 16 times in a batch").  SceneDiffuser's optional
  physics-guided sampling is not used (the DGTR paper's comparison has none).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import InputError
from .common import (EncoderConfig, GraspCoder, MethodTrainSettings, NoRefine, PointEncoder, SampleConfig,
                     check_points, mlp, sample_targets)

__all__ = ["SceneDiffuserConfig", "SceneDiffuserLoss", "SceneDiffuserRun", "SceneDiffuser"]

_PARTS = (3, 6, 22)  # the grasp vector's tokens: translation, 6D rotation, joints


@dataclass
class SceneDiffuserConfig:
    n_points: int = 4096
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    t_range: float = 0.22
    steps: int = 100
    beta_start: float = 1e-4
    beta_end: float = 0.01
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int = 512
    dropout: float = 0.1

    def check(self) -> None:
        self.encoder.check("model.encoder")
        if self.steps < 1 or not 0 < self.beta_start <= self.beta_end < 1:
            raise InputError("model: need steps >= 1 and 0 < beta_start <= beta_end < 1")
        if self.d_model % self.n_heads or min(self.n_layers, self.ffn_dim, self.n_points - 63) < 1:
            raise InputError("model: d_model must divide by n_heads; n_layers, ffn_dim >= 1; n_points >= 64")
        if self.encoder.out_dim != self.d_model:
            raise InputError(f"model: encoder.out_dim ({self.encoder.out_dim}) must equal d_model ({self.d_model})")


@dataclass
class SceneDiffuserLoss:
    grasps_per_object: int = 8

    def check(self) -> None:
        if self.grasps_per_object < 1:
            raise InputError("loss.grasps_per_object: need >= 1")


@dataclass
class SceneDiffuserRun:
    """Run config of ``method: scenediffuser`` (configs/methods/scenediffuser.yaml)."""

    method: str = "scenediffuser"
    model: SceneDiffuserConfig = field(default_factory=SceneDiffuserConfig)
    loss: SceneDiffuserLoss = field(default_factory=SceneDiffuserLoss)
    train: MethodTrainSettings = field(default_factory=MethodTrainSettings)
    sample: SampleConfig = field(default_factory=SampleConfig)
    refine: NoRefine = field(default_factory=NoRefine)

    def check(self) -> None:
        self.model.check(), self.loss.check(), self.train.check(), self.sample.check(), self.refine.check()
        if self.sample.passes != 1:
            raise InputError("sample.passes: only UniDexGrasp samples in several passes (scenediffuser: 1)")


def timestep_embedding(t: torch.Tensor, d: int) -> torch.Tensor:
    """(K,) integer steps → (K, d) sinusoidal features (Transformer / DDPM)."""
    half = d // 2
    f = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(1, half))
    a = t.float()[:, None] * f
    return torch.cat([a.sin(), a.cos(), torch.zeros(t.shape[0], d - 2 * half, device=t.device)], -1)


class DenoiserLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
        self.time = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, h, temb, memory, keys):
        h = h + self.time(temb)[:, None]
        x = self.norms[0](h)
        h = h + self.drop(self.self_attn(x, x, x, need_weights=False)[0])
        h = h + self.drop(self.cross_attn(self.norms[1](h), keys, memory, need_weights=False)[0])
        return h + self.drop(self.ffn(self.norms[2](h)))


class SceneDiffuser(nn.Module):
    def __init__(self, run: SceneDiffuserRun, hand):
        super().__init__()
        cfg = run.model
        cfg.check()
        self.cfg, self.loss_cfg = cfg, run.loss
        d = cfg.d_model
        self.coder = GraspCoder(hand.joint_lower, hand.joint_upper, cfg.t_range)
        self.encoder = PointEncoder(cfg.encoder)
        self.pos = mlp(3, [64, 128], d)
        self.embed = nn.ModuleList(nn.Linear(n, d) for n in _PARTS)
        self.token_type = nn.Parameter(torch.randn(len(_PARTS), d) * 0.02)
        self.time = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.layers = nn.ModuleList(DenoiserLayer(d, cfg.n_heads, cfg.ffn_dim, cfg.dropout)
                                    for _ in range(cfg.n_layers))
        self.out_norm = nn.LayerNorm(d)
        self.out = nn.ModuleList(nn.Linear(d, n) for n in _PARTS)
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.steps, dtype=torch.float64)
        abar = torch.cumprod(1 - betas, 0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        # the schedule is a function of the config: buffers, not weights
        for name, v in (("betas", betas), ("abar", abar), ("post_var", betas * (1 - prev) / (1 - abar))):
            self.register_buffer(name, v.float(), persistent=False)

    def condition(self, points: torch.Tensor):
        """points (B, N, 3) → (memory, keys) (B, T, d): the object tokens and tokens + position embedding."""
        tokens, xyz, _ = self.encoder(points)
        return tokens, tokens + self.pos(xyz / 0.1)

    def denoise(self, x: torch.Tensor, step: torch.Tensor, memory, keys) -> torch.Tensor:
        """x_t (K, 31), steps (K,) long, memory/keys (K, T, d) → predicted noise (K, 31)."""
        h = torch.stack([e(p) for e, p in zip(self.embed, x.split(_PARTS, -1))], 1) + self.token_type
        temb = self.time(timestep_embedding(step, self.cfg.d_model))
        for layer in self.layers:
            h = layer(h, temb, memory, keys)
        h = self.out_norm(h)
        return torch.cat([o(h[:, i]) for i, o in enumerate(self.out)], -1)

    @torch.no_grad()
    def sample(self, points: torch.Tensor, n: int = 16, generator: torch.Generator | None = None):
        """points (B, N, 3) → R (B, n, 3, 3), t (B, n, 3), q (B, n, 22): n ancestral DDPM chains per object."""
        check_points(points)
        B = points.shape[0]
        memory, keys = (m.repeat_interleave(n, 0) for m in self.condition(points))
        noise = lambda: torch.randn(B * n, sum(_PARTS), generator=generator).to(memory)
        x = noise()
        for s in reversed(range(self.cfg.steps)):
            step = torch.full((B * n,), s, dtype=torch.long, device=x.device)
            eps = self.denoise(x, step, memory, keys)
            beta, abar = self.betas[s], self.abar[s]
            x = (x - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt()
            if s > 0:
                x = x + self.post_var[s].sqrt() * noise()
        R, t, q = self.coder.decode(x)
        return R.reshape(B, n, 3, 3), t.reshape(B, n, 3), q.reshape(B, n, 22)

    def loss(self, batch: dict, hand, generator: torch.Generator):
        """A training batch (``dgtr.data.collate``) → (loss, {term: float}): the ε-prediction error."""
        pts = batch["points"].to(self.coder.lower.device)
        owner, R, t, q = sample_targets(batch, self.loss_cfg.grasps_per_object, generator, pts.device)
        x0 = self.coder.encode(R, t, q)
        memory, keys = (m[owner] for m in self.condition(pts))
        step = torch.randint(self.cfg.steps, (x0.shape[0],), generator=generator).to(pts.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0)
        abar = self.abar[step][:, None]
        pred = self.denoise(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, step, memory, keys)
        loss = ((pred - eps) ** 2).mean()
        return loss, {"loss": float(loss.detach()), "eps_mse": float(loss.detach())}
