"""Pieces the comparison methods share: a PointNet++ cloud encoder (``dgtr.model``'s set abstraction), the grasp
vector, ground-truth sampling from a training batch, hand–object geometry (contact maps, nearest distances, cloud
normals).

Shapes: B objects, N cloud points, K grasps (over the batch), P object points, H hand points, T encoder tokens.
A grasp vector (…, 31) is ``[t / t_range (3), 6D rotation (6), 2·q_norm − 1 (22)]``: every part O(1), the rotation
continuous (Zhou et al. 2019, the first two columns of R, ``dgtr.rotations``), the joints −1 at the lower limit and
+1 at the upper (not clipped: real grasps exceed the limits slightly; ``GraspCoder.decode`` clamps).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import InputError
from ..geometry import nearest_distance  # noqa: F401  (re-exported: the methods' contact maps)
from ..model import MIN_POINTS, SetAbstraction, fps_points, knn
from ..rotations import matrix_from_6d, sixd_from_matrix

__all__ = ["EncoderConfig", "PointEncoder", "GraspCoder", "GRASP_DIM", "check_points", "mlp", "sample_targets",
           "batch_targets", "hand_points", "nearest_distance", "contact_map", "cloud_normals", "perturb",
           "rotate_points", "MethodTrainSettings", "SampleConfig", "NoRefine", "AUGMENT_ROTATIONS"]

GRASP_DIM = 31


@dataclass
class EncoderConfig:
    """PointNet++ with kNN grouping (``dgtr.model.SetAbstraction``); defaults: DGTR's encoder (DESIGN.md §3), so every
    method sees the cloud through the same backbone."""

    sa_centres: list[int] = field(default_factory=lambda: [1024, 512, 128])
    sa_k: list[int] = field(default_factory=lambda: [32, 16, 8])
    sa_mlps: list[list[int]] = field(default_factory=lambda: [[64, 64, 128], [128, 128, 256], [256, 256, 512]])
    out_dim: int = 256                        # token and global feature width after the projection

    def check(self, where: str = "encoder") -> None:
        n = len(self.sa_centres)
        if n == 0 or not (n == len(self.sa_k) == len(self.sa_mlps)) or any(not m for m in self.sa_mlps):
            raise InputError(f"{where}: sa_centres, sa_k and sa_mlps need the same non-zero length")
        if min(self.sa_centres) < 1 or min(self.sa_k) < 1 or self.out_dim < 1:
            raise InputError(f"{where}: sizes must be positive")


def mlp(c_in: int, hidden: list[int], c_out: int) -> nn.Sequential:
    """Linear → LayerNorm → ReLU blocks, then a plain Linear."""
    layers, c = [], c_in
    for w in hidden:
        layers += [nn.Linear(c, w), nn.LayerNorm(w), nn.ReLU(inplace=True)]
        c = w
    layers.append(nn.Linear(c, c_out))
    return nn.Sequential(*layers)


def check_points(points, name: str = "points") -> torch.Tensor:
    """A (B, N >= 64, 3) finite float tensor, or InputError naming ``name``."""
    if not isinstance(points, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor (B, N, 3), got {type(points).__name__}")
    if points.ndim != 3 or points.shape[-1] != 3 or points.shape[0] < 1 or points.shape[1] < MIN_POINTS:
        raise InputError(f"{name}: expected shape (B >= 1, N >= {MIN_POINTS}, 3), got {tuple(points.shape)}")
    if not points.is_floating_point() or not bool(torch.isfinite(points).all()):
        raise InputError(f"{name}: expected finite floating-point coordinates")
    return points


class PointEncoder(nn.Module):
    """points (B, N, 3) metres → tokens (B, T, d), token xyz (B, T, 3), global feature (B, d) (max over tokens).

    The set-abstraction levels of ``dgtr.model`` (same FPS-once rule as ``DGTR.forward``: later centres are prefixes
    of the first level's farthest-point order) and a Linear + LayerNorm + ReLU projection to ``out_dim``."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        cfg.check()
        levels, c = [], 0
        for s, k, widths in zip(cfg.sa_centres, cfg.sa_k, cfg.sa_mlps):
            levels.append(SetAbstraction(s, k, c, list(widths)))
            c = widths[-1]
        self.levels = nn.ModuleList(levels)
        self.proj = nn.Sequential(nn.Linear(c, cfg.out_dim), nn.LayerNorm(cfg.out_dim), nn.ReLU(inplace=True))
        self.out_dim = cfg.out_dim

    def forward(self, points: torch.Tensor):
        xyz, feats = points, None
        ordered = fps_points(points, self.levels[0].n_centres)
        for i, sa in enumerate(self.levels):
            centres = (ordered if i == 0 else xyz)[:, :sa.n_centres]
            xyz, feats = centres, sa(centres, xyz, feats)
        tokens = self.proj(feats)
        return tokens, xyz, tokens.amax(1)


class GraspCoder(nn.Module):
    """(R, t, q) ↔ grasp vector (module docstring).  Holds the joint limits as buffers (they follow ``.to()``)."""

    def __init__(self, joint_lower, joint_upper, t_range: float):
        super().__init__()
        lo = torch.as_tensor(joint_lower, dtype=torch.float32).flatten().clone()
        hi = torch.as_tensor(joint_upper, dtype=torch.float32).flatten().clone()
        if lo.shape != hi.shape or lo.numel() != 22 or not bool((hi > lo).all()):
            raise InputError("joint limits: need 22 lower < upper values")
        if not t_range > 0:
            raise InputError(f"t_range must be > 0, got {t_range}")
        self.register_buffer("lower", lo)
        self.register_buffer("upper", hi)
        self.t_range = float(t_range)

    def joints_norm(self, q: torch.Tensor) -> torch.Tensor:
        """q (…, 22) rad → (…, 22), −1 at the lower limit, +1 at the upper."""
        return 2 * (q - self.lower) / (self.upper - self.lower) - 1

    def joints(self, u: torch.Tensor) -> torch.Tensor:
        """Inverse of ``joints_norm``, clamped to the limits."""
        return (self.lower + (u.clamp(-1, 1) + 1) / 2 * (self.upper - self.lower))

    def encode(self, R: torch.Tensor, t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """R (…, 3, 3), t (…, 3), q (…, 22) → (…, 31)."""
        return torch.cat([t / self.t_range, sixd_from_matrix(R), self.joints_norm(q)], -1)

    def decode(self, x: torch.Tensor):
        """(…, 31) → R (…, 3, 3) (Gram–Schmidt), t (…, 3) m, q (…, 22) rad within the limits."""
        return matrix_from_6d(x[..., 3:9]), x[..., :3] * self.t_range, self.joints(x[..., 9:])


# --------------------------------------------------------------------------------------------- batches
def batch_targets(batch: dict, device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per object of a ``dgtr.data.collate`` batch: (R (M,3,3), t (M,3), q (M,22)) on ``device``."""
    return [(r.to(device), t.to(device), q.to(device))
            for r, t, q in zip(batch["rotation"], batch["translation"], batch["joints"])]


def sample_targets(batch: dict, k: int, generator: torch.Generator, device):
    """k ground-truth grasps per object of a batch (without replacement when the object has >= k, else with):
    (owner (B·k,) long object index, R (B·k,3,3), t (B·k,3), q (B·k,22)).  Drawn with ``generator`` (CPU), so a run's
    draws are a function of its seed and step only."""
    owner, Rs, ts, qs = [], [], [], []
    for b, (R, t, q) in enumerate(batch_targets(batch, device)):
        M = R.shape[0]
        if M == 0:
            raise InputError(f"batch object {batch['code'][b]!r} has no grasps")
        idx = (torch.randperm(M, generator=generator)[:k] if M >= k
               else torch.randint(M, (k,), generator=generator)).to(device)
        owner.append(torch.full((k,), b, dtype=torch.long, device=device))
        Rs.append(R[idx]), ts.append(t[idx]), qs.append(q[idx])
    return torch.cat(owner), torch.cat(Rs), torch.cat(ts), torch.cat(qs)


def rotate_points(points: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Points (K, P, 3) expressed in the frames R (K, 3, 3): x → Rᵀ x (row vectors: x R)."""
    return points @ R


def perturb(R, t, q, generator: torch.Generator, rot: float, trans: float, joints: float):
    """Gaussian noise on K grasps: rotation by a random axis-angle of std ``rot`` rad per axis, translation ``trans``
    m, joints ``joints`` rad.  Used to train the ContactNets on imperfect hands (the ideal map from a noisy grasp)."""
    from ..rotations import matrix_from_axis_angle

    n = lambda *s: torch.randn(*s, generator=generator).to(t)
    K = t.shape[0]
    return matrix_from_axis_angle(n(K, 3) * rot) @ R, t + n(K, 3) * trans, q + n(K, 22) * joints


# ------------------------------------------------------------------------------------------- geometry
def hand_points(hand, R, t, q, n: int) -> torch.Tensor:
    """(K, n, 3): an evenly strided subset of the hand's visual surface samples (stored link by link, so each link
    keeps its area share), posed in the object frame."""
    pts = hand.surface_points(R, t, q)
    if n >= pts.shape[1]:
        return pts
    return pts[:, torch.linspace(0, pts.shape[1] - 1, n, device=pts.device).round().long()]


def contact_map(obj_points: torch.Tensor, hand_pts: torch.Tensor, sharpness: float = 100.0) -> torch.Tensor:
    """GraspTTA's object contact map: obj_points (K, P, 3), hand points (K, H, 3) → (K, P) in (0, 1],
    c = 2 − 2·sigmoid(sharpness · d), d = distance of the object point to the nearest hand point (m): 1 on contact,
    0.54 at 1 cm, → 0 far away."""
    return 2 - 2 * torch.sigmoid(sharpness * nearest_distance(obj_points, hand_pts))


@torch.no_grad()
def cloud_normals(points: torch.Tensor, k: int = 16) -> torch.Tensor:
    """Unit normals (B, N, 3) of clouds (B, N, 3) without normals: the least-variance direction of each point's k
    nearest neighbours, oriented away from the cloud's centroid (right for star-shaped objects; a concave pocket
    gets some inward normals — the price of feeding clouds, not meshes)."""
    idx = knn(points, points, k)                                              # (B, N, k)
    nb = points[torch.arange(points.shape[0], device=points.device)[:, None, None], idx.to(points.device)]
    d = nb - nb.mean(2, keepdim=True)
    cov = d.transpose(-1, -2) @ d                                              # (B, N, 3, 3)
    n = torch.linalg.eigh(cov.double())[1][..., 0].to(points.dtype)          # eigenvalues ascending
    out = points - points.mean(1, keepdim=True)
    return torch.where(((n * out).sum(-1, keepdim=True) < 0), -n, n)


# ------------------------------------------------------------------------------------------ run settings
AUGMENT_ROTATIONS = ("none", "z", "so3")


@dataclass
class MethodTrainSettings:
    """Optimisation of a comparison method (``dgtr.methods.train_method``).  Defaults: DGTR's budget (25 epochs of
    batch 32, Adam 2e-4, wd 5e-6, one cosine to 1e-6, gradient clip 1; configs/default.yaml)."""

    epochs: int = 25
    batch_size: int = 32          # objects (object × scale entries) per optimiser step
    lr: float = 2e-4
    weight_decay: float = 5e-6
    lr_min: float = 1e-6
    grad_clip: float = 1.0        # max global gradient norm; 0 = off
    seed: int = 0
    min_grasps: int = 1           # (object, scale) entries with fewer grasps are skipped
    n_clouds: int = 1             # point clouds sampled per object (one used per epoch)
    augment_rotation: str = "none"  # 'none' | 'z' | 'so3': each training cloud turned with its grasps
    val_every: int = 1            # validation loss every N epochs (and after the last); 0 = never
    checkpoint_every: int = 1
    progress: bool = True

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.n_clouds < 1:
            raise InputError("train: need epochs, batch_size, checkpoint_every, n_clouds >= 1")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.lr_min < 0 or self.val_every < 0:
            raise InputError("train: need lr > 0, weight_decay >= 0, grad_clip >= 0, lr_min >= 0, val_every >= 0")
        if self.augment_rotation not in AUGMENT_ROTATIONS:
            raise InputError(f"train.augment_rotation: expected one of {AUGMENT_ROTATIONS}, got "
                             f"{self.augment_rotation!r}")


@dataclass
class SampleConfig:
    """Inference: ``n`` grasps per object; ``passes`` (UniDexGrasp only): rotations drawn, one cloud pass each."""

    n: int = 16
    passes: int = 1

    def check(self) -> None:
        if self.n < 1 or self.passes < 1 or self.n % self.passes:
            raise InputError(f"sample: need n >= 1 and passes >= 1 dividing n, got n={self.n}, passes={self.passes}")


@dataclass
class NoRefine:
    """The refinement section of a method without one (SceneDiffuser, DDG: none in the DGTR paper's comparison):
    ``dgtr predict --tta`` changes nothing for them."""

    iterations: int = 0

    def check(self) -> None:
        if self.iterations != 0:
            raise InputError("refine.iterations: this method has no refinement (must be 0)")
