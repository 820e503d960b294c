"""DGTR network: PointNet++ encoder (kNN grouping) → pre-norm transformer decoder over learnable grasp queries → heads.

Shapes: B objects, N input points, Q queries (16), J joints (22), L decoder layers (4), d model width (256).

Design (DESIGN.md §3; paper §3.2):
- Encoder: 3 set-abstraction layers.  Each samples centres by farthest point sampling (FPS, start index 0, so the
  encoder is deterministic), groups the k nearest neighbours of each centre (kNN, not ball query), concatenates their
  xyz relative to the centre with their features, runs a shared MLP (Linear + BatchNorm + ReLU) and max-pools over
  the k neighbours.  1024/k32 → 512/k16 → 128/k8 tokens; 512 features projected to d by an MLP.
- Decoder: DETR-style.  Q learnable query position embeddings; query content starts as a second learnable embedding
  per query (``query_content="learned"``; DETR's zero content is ``"zero"``, see ModelConfig for why it is not the
  default).  Each pre-norm layer does self-attention among queries, cross-attention to the encoder tokens
  (keys = token feature + MLP(token xyz / pos_scale)), FFN.
  One shared final LayerNorm is applied to every layer's output before the heads (pre-norm leaves outputs unnormalised).
- Heads (shared by all layers): joints → sigmoid → [lower, upper]; translation → sigmoid → [-t_range, t_range];
  rotation → 4 numbers → L2-normalised wxyz quaternion (q and -q are the same rotation; the losses know it).

FPS runs in native code (``fpsample``) on CPU tensors, and in a vectorised torch loop elsewhere; both pick the same
indices (up to distance ties).  It runs once per cloud: the later levels' centres are prefixes of the first level's
(see ``DGTR.forward``).  kNN is a KD-tree on CPU.  Sampling and kNN indices are not differentiated; gradients flow
through the features.  The forward is an exact rewrite of the plain one (benchmarks/reference_model.py, tested equal
in tests/test_model_fast.py; see ``SetAbstraction``), ~3x faster on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import InputError
from .geometry import gather as _gather, knn  # the grouping's search and gather (dgtr.model.knn: the methods use it)
from .refine import ContactRefiner
from .rotations import matrix_from_quaternion, quaternion_from_matrix

__all__ = ["ModelConfig", "DGTR", "build_model", "farthest_point_sample", "MIN_POINTS"]

_CHUNK_ELEMENTS = 2 ** 19  # floats per grouped-row chunk in eval mode (2 MB: an L2 cache)
MIN_POINTS = 64  # the kNN of the first set-abstraction layer needs at least k=32 points; 64 leaves room to sample


@dataclass
class ModelConfig:
    """Network shape.  The defaults are the faithful configuration of DESIGN.md §3 (≈3.9 M parameters)."""

    n_points: int = 4096                      # expected input size (any N >= 64 is accepted)
    sa_centres: list[int] = field(default_factory=lambda: [1024, 512, 128])
    sa_k: list[int] = field(default_factory=lambda: [32, 16, 8])
    # output widths of each set-abstraction MLP; input width = 3 (relative xyz) + previous layer's output width
    sa_mlps: list[list[int]] = field(default_factory=lambda: [[64, 64, 128], [128, 128, 256], [256, 256, 512]])
    proj_hidden: list[int] = field(default_factory=lambda: [512, 512])   # encoder 512 → d projection MLP
    pos_hidden: list[int] = field(default_factory=lambda: [64, 128, 256])  # token xyz → d position-embedding MLP
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int = 256
    dropout: float = 0.1
    pre_norm: bool = True
    head_hidden: int = 128                    # each head: d → head_hidden → out
    n_queries: int = 16
    t_range: float = 0.22                     # translation head covers [-t_range, t_range] m per axis
    rotation: str = "quaternion"
    aux_loss: bool = True                     # return every decoder layer's predictions (deep supervision)
    # Query content at the first decoder layer: "zero" (DETR, DESIGN.md §3) or "learned" (one embedding per query).
    # With zero content the queries differ only through cross-attention weights; over encoder tokens that barely
    # differ at the start of training that attention is uniform, every query gets the same output and the gradient
    # that could separate them is ~0: trained on the bundled set, the zero-content model put all 16 queries on one
    # grasp (std across queries 1e-5 rad after 2 epochs, attention entropy = log 128).  See docs/training.md.
    query_content: str = "learned"
    # token xyz (m) / pos_scale → position MLP, so its input is O(1).  No measurable effect on its own (1-epoch small
    # run: val loss 27.37 at 1.0 vs 27.49 at 0.1); kept for conditioning.
    pos_scale: float = 0.1
    # A learned contact refinement after the heads (dgtr/refine.py; ours, not in the paper): the final grasps take
    # one step towards touching the object without penetrating it.  Trained by ``train.epochs_refine``.
    refine: bool = False
    refine_width: int = 512

    @classmethod
    def reference(cls) -> "ModelConfig":
        """The plain DESIGN.md §3 shape (zero query content, position MLP on raw metres)."""
        return cls(query_content="zero", pos_scale=1.0)

    def check(self) -> None:
        n = len(self.sa_centres)
        if not (n == len(self.sa_k) == len(self.sa_mlps)) or n == 0:
            raise InputError("ModelConfig: sa_centres, sa_k and sa_mlps need the same (non-zero) length")
        if self.d_model % self.n_heads:
            raise InputError(f"ModelConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.rotation != "quaternion":
            raise InputError(f"ModelConfig.rotation: only 'quaternion' is implemented, got {self.rotation!r}")
        if self.query_content not in ("zero", "learned"):
            raise InputError(f"ModelConfig.query_content: 'zero' or 'learned', got {self.query_content!r}")
        if not self.pos_scale > 0:
            raise InputError(f"ModelConfig.pos_scale must be > 0, got {self.pos_scale}")
        if self.refine_width < 1:
            raise InputError(f"ModelConfig.refine_width must be >= 1, got {self.refine_width}")
        if not self.t_range > 0:
            raise InputError(f"ModelConfig.t_range must be > 0, got {self.t_range}")
        if min(self.sa_k) < 1 or min(self.sa_centres) < 1 or self.n_queries < 1 or self.n_layers < 1:
            raise InputError("ModelConfig: sizes must be positive")


# --------------------------------------------------------------------------------------------- sampling / grouping
def _fps_torch(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """(B, P, 3) → (B, n) long.  Plain FPS from index 0 for every object at once; no host synchronisation inside
    the loop, so it suits a GPU (on CPU the native ``fpsample`` is much faster)."""
    B, P, _ = xyz.shape
    idx = torch.zeros(B, n, dtype=torch.long, device=xyz.device)
    dist = torch.full((B, P), float("inf"), dtype=xyz.dtype, device=xyz.device)
    rows = torch.arange(B, device=xyz.device)
    for i in range(1, n):
        last = xyz[rows, idx[:, i - 1]]                                   # (B, 3)
        dist = torch.minimum(dist, ((xyz - last[:, None]) ** 2).sum(-1))
        idx[:, i] = dist.argmax(-1)
    return idx


def farthest_point_sample(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """(P, 3) → (n,) long indices into xyz, starting at index 0; all points (in order) when n >= P."""
    P = xyz.shape[0]
    if n >= P:
        return torch.arange(P, device=xyz.device)
    if xyz.device.type == "cpu":
        return torch.from_numpy(_fps_native(np.ascontiguousarray(xyz.detach().numpy(), dtype=np.float32), n))
    return _fps_torch(xyz.detach()[None], n)[0]


def _fps_native(pts: np.ndarray, n: int) -> np.ndarray:
    """(P, 3) float32 → (n,) int64: FPS from index 0 in native code (``fpsample``).

    fpsample's bucket FPS (QuickFPS) picks the same points as its plain FPS (up to the tie-break between points at
    equal float32 distance) 5-7x faster, but (fpsample 1.0.2) it takes its start point *after* reordering the
    points for its KD-tree.  The first split of that tree leaves a point in place when it lies below the mean, so
    the axes are reflected to put point 0 below the mean on each axis (a sign flip: the distances stay bitwise the
    same), and the first pick is checked: a tree of height 3, else 1 (only the root split), else the plain FPS.
    """
    import fpsample

    flipped = pts * np.where(pts[0] > pts.mean(0), np.float32(-1), np.float32(1))
    for h in (3, 1):
        if 2 ** h <= len(pts):
            idx = fpsample.bucket_fps_kdline_sampling(flipped, n, h=h, start_idx=0)
            if idx[0] == 0:
                return idx.astype(np.int64)
    return fpsample.fps_sampling(pts, n, start_idx=0).astype(np.int64)


@torch.no_grad()
def fps_points(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """(B, P, 3) → (B, min(n, P), 3): the points in farthest-point order from index 0 (all of them, in order, when
    n >= P).  On CPU one object at a time in native code; elsewhere the whole batch at once."""
    B, P, _ = xyz.shape
    if n >= P:
        return xyz
    if xyz.device.type == "cpu":
        idx = torch.stack([farthest_point_sample(xyz[b], n) for b in range(B)])
    else:
        idx = _fps_torch(xyz, n)
    return _gather(xyz, idx)


class SetAbstraction(nn.Module):
    """One PointNet++ level with kNN grouping: centres (B, S, 3), points (B, P, 3) with features (B, P, C) or None
    → centre features (B, S, C_out).

    Each centre's k nearest points give rows [xyz_nbr − xyz_centre, feat_nbr] for a shared MLP (Linear, BatchNorm,
    ReLU), max-pooled over the k rows.  Computed exactly, but cheaper than written:
    - the first Linear is linear in its input, W·[xyz_n − c, f_n] = (W·[xyz, f])_n − W_xyz·c, so it runs once per
      point (P rows) and is gathered, instead of once per grouped row (S·k rows: 8x more at the default shape);
    - in eval mode each BatchNorm is folded into its Linear (W' = s·W, b' = β − s·μ, s = γ/√(σ² + ε));
    - and the last layer's bias and ReLU are monotone per channel, so they commute with the max: applied to the S
      pooled rows instead of the S·k grouped ones.
    """

    def __init__(self, n_centres: int, k: int, c_in: int, widths: list[int]):
        super().__init__()
        self.n_centres, self.k = n_centres, k
        # shared point-wise MLP as Linear + BatchNorm1d on channel-last rows (a 1x1 Conv2d takes a slow im2col
        # path on CPU); no bias before BatchNorm
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        c = c_in + 3
        for w in widths:
            self.linears.append(nn.Linear(c, w, bias=False))
            self.norms.append(nn.BatchNorm1d(w))
            c = w

    compiled = None  # ``DGTR.compile_encoder``: ``grouped`` compiled by torch.compile (training only)

    def grouped(self, x: torch.Tensor, nbr: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Training path: point features x (B, P, C), neighbour indices nbr (B, S, k), centres (B, S, 3) →
        (B, S, C_out), every BatchNorm on the batch statistics of all B·S·k grouped rows."""
        W = self.linears[0].weight
        # + of the negated centre term: a - b would negate the whole (B·S·k, C1) gradient in backward
        h = (_gather(x @ W.T, nbr) + (centres @ -W[:, :3].T)[:, :, None]).flatten(0, 2)  # (B·S·k, C1)
        for i, (lin, bn) in enumerate(zip(self.linears, self.norms)):
            h = F.relu(bn(lin(h) if i else h))
        # max() rather than amax(): same values, and its backward scatters through the argmax (amax's
        # tie-splitting backward was ~13 % of a CPU training step)
        return h.unflatten(0, nbr.shape).max(2).values

    def _folded(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Eval mode: (W', b') per layer with bn(lin(x)) = x W'ᵀ + b'."""
        out = []
        for lin, bn in zip(self.linears, self.norms):
            s = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            out.append((lin.weight * s[:, None], bn.bias - bn.running_mean * s))
        return out

    def forward(self, centres: torch.Tensor, xyz: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
        B, S, _ = centres.shape
        nbr = knn(centres, xyz, self.k)                                       # (B, S, k)
        x = xyz if feats is None else torch.cat([xyz, feats], -1)            # (B, P, 3 + C)
        if self.training:  # batch statistics: each BatchNorm sees all B·S·k grouped rows, as written
            return (self.compiled or self.grouped)(x, nbr, centres)
        layers = self._folded()
        W, b = layers[0]
        y, yc = x @ W.T, centres @ W[:, :3].T - b                             # layer 1 per point, its centre term
        # chunks of centres keep the grouped rows cache-sized (one pass over all S·k rows at once was 2-3x slower:
        # fresh multi-MB buffers cost a page fault per 4 kB)
        step = max(1, _CHUNK_ELEMENTS // (nbr.shape[-1] * max(w.shape[0] for w, _ in layers)))
        pooled = []
        for s in range(0, S, step):
            h = _gather(y, nbr[:, s:s + step]).sub_(yc[:, s:s + step, None])   # (B, step, k, C1) before ReLU
            for i, (W, b) in enumerate(layers[1:], 1):
                h = h.relu_() @ W.T
                if i < len(layers) - 1:
                    h = h.add_(b)
            pooled.append(h.amax(2))
        h = torch.cat(pooled, 1)
        return (h.add_(layers[-1][1]) if len(layers) > 1 else h).relu_()


def _mlp(c_in: int, hidden: list[int], c_out: int, norm_out: bool) -> nn.Sequential:
    """Linear → LayerNorm → ReLU blocks, then a Linear (with LayerNorm+ReLU too when norm_out)."""
    layers, c = [], c_in
    for w in hidden:
        layers += [nn.Linear(c, w), nn.LayerNorm(w), nn.ReLU(inplace=True)]
        c = w
    layers.append(nn.Linear(c, c_out))
    if norm_out:
        layers += [nn.LayerNorm(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------------------------- decoder
class DecoderLayer(nn.Module):
    """Transformer decoder layer; pre-norm by default (x + f(norm(x))), post-norm (norm(x + f(x))) optional."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
        self.drops = nn.ModuleList(nn.Dropout(dropout) for _ in range(3))
        self.pre_norm = pre_norm

    def forward(self, x, query_pos, memory, memory_keys):
        """x, query_pos (B, Q, d); memory, memory_keys = memory + its position embedding (B, T, d) → (B, Q, d)."""
        def sub(i, x, f):
            if self.pre_norm:
                return x + self.drops[i](f(self.norms[i](x)))
            return self.norms[i](x + self.drops[i](f(x)))

        def self_attn(h):
            qk = h + query_pos
            return self.self_attn(qk, qk, h, need_weights=False)[0]

        # position embeddings go into queries/keys only, never into values (DETR)
        x = sub(0, x, self_attn)
        x = sub(1, x, lambda h: self.cross_attn(h + query_pos, memory_keys, memory, need_weights=False)[0])
        return sub(2, x, self.ffn)


# ------------------------------------------------------------------------------------------------------- model
class DGTR(nn.Module):
    """points (B, N, 3) in the object frame, metres → Q grasps per object (see ``forward``)."""

    def __init__(self, cfg: ModelConfig, joint_lower: torch.Tensor, joint_upper: torch.Tensor):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        lower = torch.as_tensor(joint_lower, dtype=torch.float32).flatten()
        upper = torch.as_tensor(joint_upper, dtype=torch.float32).flatten()
        if lower.shape != upper.shape or not bool((upper > lower).all()):
            raise InputError("joint_lower/joint_upper: need equal shapes and upper > lower for every joint")
        self.register_buffer("joint_lower", lower)
        self.register_buffer("joint_upper", upper)
        J, d = lower.numel(), cfg.d_model

        sa, c = [], 0
        for s, k, widths in zip(cfg.sa_centres, cfg.sa_k, cfg.sa_mlps):
            sa.append(SetAbstraction(s, k, c, list(widths)))
            c = widths[-1]
        self.encoder = nn.ModuleList(sa)
        self.proj = _mlp(c, list(cfg.proj_hidden), d, norm_out=True)
        self.pos_embed = _mlp(3, list(cfg.pos_hidden), d, norm_out=False)
        self.query_pos = nn.Embedding(cfg.n_queries, d)
        self.query_content = nn.Embedding(cfg.n_queries, d) if cfg.query_content == "learned" else None
        self.layers = nn.ModuleList(DecoderLayer(d, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.pre_norm)
                                    for _ in range(cfg.n_layers))
        self.out_norm = nn.LayerNorm(d) if cfg.pre_norm else nn.Identity()
        hh = cfg.head_hidden
        head = lambda n: nn.Sequential(nn.Linear(d, hh), nn.ReLU(inplace=True), nn.Linear(hh, n))
        self.joint_head, self.trans_head, self.rot_head = head(J), head(3), head(4)
        self.refiner = ContactRefiner(lower, upper, cfg.refine_width) if cfg.refine else None

    def compile_encoder(self) -> bool:
        """Compile each set abstraction's training path (``SetAbstraction.grouped``: Linear, BatchNorm, ReLU and the
        max over the grouped rows) with torch.compile, which fuses the memory-bound steps between the matrix
        multiplies.  Same values within float rounding; the first training step of each batch shape pays the
        compilation (~30 s on a CPU).  Needs a C++ compiler on a CPU: without one it warns and returns False."""
        import shutil
        import warnings

        if self.joint_lower.device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
            warnings.warn("train.compile: no C++ compiler found (torch.compile needs one on a CPU); training uncompiled")
            return False
        for sa in self.encoder:
            sa.compiled = torch.compile(sa.grouped)
        return True

    @property
    def n_joints(self) -> int:
        return self.joint_lower.numel()

    def _check(self, points) -> torch.Tensor:
        if not isinstance(points, torch.Tensor):
            raise InputError(f"points: expected a torch.Tensor (B, N, 3), got {type(points).__name__}")
        if points.ndim != 3 or points.shape[-1] != 3:
            raise InputError(f"points: expected shape (B, N, 3), got {tuple(points.shape)}")
        if not points.is_floating_point():
            raise InputError(f"points: expected a floating-point tensor, got {points.dtype}")
        if points.shape[0] < 1 or points.shape[1] < MIN_POINTS:
            raise InputError(f"points: need B >= 1 objects of N >= {MIN_POINTS} points, got {tuple(points.shape)}")
        if not bool(torch.isfinite(points).all()):
            raise InputError("points: contains NaN or infinite values")
        return points.to(self.joint_lower.dtype)

    def heads(self, h: torch.Tensor) -> dict:
        """Decoder features (..., Q, d) → prediction dict (see ``forward``)."""
        j = torch.sigmoid(self.joint_head(h))
        t = torch.sigmoid(self.trans_head(h))
        q = F.normalize(self.rot_head(h), dim=-1, eps=1e-8)
        return {
            "joints_norm": j,
            "joints": self.joint_lower + j * (self.joint_upper - self.joint_lower),
            "translation_norm": t,
            "translation": (2 * t - 1) * self.cfg.t_range,
            "quaternion": q,
            "rotation": matrix_from_quaternion(q),
        }

    def forward(self, points: torch.Tensor, refine: bool = True) -> dict:
        """points (B, N ≥ 64, 3) → dict of the final decoder layer's predictions:

        'rotation' (B,Q,3,3), 'quaternion' (B,Q,4) unit wxyz, 'translation' (B,Q,3) m, 'joints' (B,Q,J) rad,
        'translation_norm' (B,Q,3) and 'joints_norm' (B,Q,J) in [0,1], 'aux': list (L-1) of the same dicts for
        the earlier layers in order (empty when cfg.aux_loss is False).
        With a refiner (cfg.refine) and ``refine``, the final grasps are the refiner's and the decoder's own are in
        'coarse' (the same keys); ``refine=False`` gives the decoder's (what the DSMT losses train).
        """
        xyz = self._check(points)
        # FPS runs once: farthest-point sampling from index 0 of points that are themselves a farthest-point prefix
        # returns that prefix (each next point was the farthest of the whole cloud, so also of any subset holding
        # it), so every later level's centres are the first S of its input points, in order
        ordered, feats = fps_points(xyz, self.encoder[0].n_centres), None
        for i, sa in enumerate(self.encoder):
            centres = (ordered if i == 0 else xyz)[:, :sa.n_centres]
            xyz, feats = centres, sa(centres, xyz, feats)      # → (B, T, 3), (B, T, C)
        memory = self.proj(feats)
        memory_keys = memory + self.pos_embed(xyz / self.cfg.pos_scale)
        B = xyz.shape[0]
        query_pos = self.query_pos.weight.expand(B, -1, -1)    # (B, Q, d)
        x = torch.zeros_like(query_pos) if self.query_content is None else self.query_content.weight.expand(B, -1, -1)
        hs = []
        for layer in self.layers:
            x = layer(x, query_pos, memory, memory_keys)
            hs.append(x)
        if not self.cfg.aux_loss:
            hs = hs[-1:]
        preds = self.heads(self.out_norm(torch.stack(hs)))     # every value (L', B, Q, ...)
        out = {k: v[-1] for k, v in preds.items()}
        out["aux"] = [{k: v[i] for k, v in preds.items()} for i in range(len(hs) - 1)]
        if self.refiner is not None and refine:
            out = self.refined(points.to(self.joint_lower.dtype), out)
        return out

    def refined(self, points: torch.Tensor, out: dict) -> dict:
        """The prediction dict ``out`` (of ``forward(points, refine=False)``) with its final grasps refined."""
        R, t, q = self.refiner(points, out["rotation"], out["translation"], out["joints"])
        lo, hi = self.joint_lower, self.joint_upper
        quat = quaternion_from_matrix(R)
        quat = quat * torch.where((quat * out["quaternion"]).sum(-1, keepdim=True) < 0, -1.0, 1.0)  # the coarse sign
        return dict(out, coarse={k: v for k, v in out.items() if k != "aux"}, rotation=R, translation=t, joints=q,
                    quaternion=quat, translation_norm=(t / self.cfg.t_range + 1) / 2,
                    joints_norm=(q - lo) / (hi - lo))


def build_model(cfg: ModelConfig, joint_lower: torch.Tensor, joint_upper: torch.Tensor) -> DGTR:
    """DGTR for a hand with joint limits ``joint_lower``/``joint_upper`` (J,) in radians."""
    return DGTR(cfg, joint_lower, joint_upper)
