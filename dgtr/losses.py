"""DGTR training losses over matched (prediction, ground truth) pairs (paper eq. 1, 4, 7; DESIGN.md §3).

Per matched pair (K pairs over the batch; every term is averaged over the K pairs, paper §3.5; under DDP over the K
pairs of the global batch, see ``SetCriterion(distributed=True)``):
- ``trans``   Σ_d smoothL1(t̂_norm − t_norm)            (λ = 10)  sums over the 3 axes, like the matcher's L1
- ``joints``  Σ_d smoothL1(q̂_norm − q_norm)            (λ = 10)  sums over the J joints
- ``rot``     1 − |⟨r̂, r⟩| on unit wxyz quaternions      (λ = 10)  q ≡ −q
- ``chamfer`` n·mean_a min_b ‖a−b‖² + n·mean_b min_a ‖a−b‖² over n = ``chamfer_points`` = 1024 predicted/GT hand
              surface samples (λ = 1), as the authors (pytorch3d, point_reduction='sum' over their 1024 samples).  The
              n points are an evenly strided subset of the hand's samples (stored link by link, so each link keeps its
              area share); the k-d tree search on 1024 instead of 2048 points halves the cost of this term.
- ``spen``    hand self-penetration (λ = 10)
- ``pen``     Σ_p relu(hand_sdf(p)) over the object points p, hand sdf positive inside the hand (λ_pen = 50, SMPT only)
- ``dist``    vanilla distance loss, paper eq. 1: Σ_i 1[d(p_i) < τ]·d(p_i) over the hand's contact candidates p_i,
              d = Euclidean distance to the nearest object point (τ = 1 cm, the authors' threshold; weight 10, SMPT
              only).  Eq. 1 as printed uses d, not d² (the authors' code summed squared distances).

Stages (DSMT, paper Alg. 1): 'dmt' Hungarian matching per layer, no pen/dist; 'smw' static matching, no pen/dist;
'smpt' static matching + pen + dist (``LossConfig.pen_stages`` moves pen/dist into other stages for the paper's
ablations).  Deep supervision: every decoder layer is matched (separately in dynamic mode, DETR-style; with the one
static assignment in static mode) and its losses are added to the total.

Hand terms call a hand object injected into ``SetCriterion`` (``dgtr.hand.ShadowHand`` in practice):
``surface_points(R, t, q) → (K, N, 3)``, ``penetration(R, t, q, points (K, P, 3)) → (K,)`` (Σ relu of the hand's
signed distance, positive inside),
``self_penetration(R, t, q) → (K,)``, ``contact_candidates(R, t, q) → (K, Nc, 3)``, ``joint_lower/joint_upper (J,)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .errors import InputError
from .matcher import MatcherConfig, check_assignment, from_query_assignment, hungarian_match, to_query_assignment
from .rotations import matrix_from_quaternion, quaternion_from_matrix

__all__ = ["LossConfig", "SetCriterion", "normalise_targets", "chamfer", "vanilla_distance", "object_penetration",
           "pairs_per_rank", "STAGES"]

STAGES = ("dmt", "smw", "smpt")
HAND_TERMS = ("chamfer", "spen", "pen", "dist")


@dataclass
class LossConfig:
    trans: float = 10.0
    joints: float = 10.0
    rot: float = 10.0
    chamfer: float = 1.0
    spen: float = 10.0
    pen: float = 50.0          # applied in the stages of ``pen_stages`` only (default: SMPT)
    dist: float = 10.0         # likewise
    dist_tau: float = 0.01     # m, contact threshold τ of eq. 1
    chamfer_points: int = 1024  # hand surface samples in the chamfer term (sum of squared NN distances over them)
    smooth_l1_beta: float = 1.0
    aux: bool = True           # deep supervision over the earlier decoder layers
    pen_stages: list[str] = field(default_factory=lambda: ["smpt"])  # stages with the pen/dist terms (paper: SMPT;
    #                            its Table 6 ablation trains with them under dynamic matching: ['dmt', 'smpt'])
    matcher: MatcherConfig = field(default_factory=MatcherConfig)

    def weights(self, stage: str) -> dict[str, float]:
        if stage not in STAGES:
            raise InputError(f"stage: expected one of {STAGES}, got {stage!r}")
        bad = [s for s in self.pen_stages if s not in STAGES]
        if bad:
            raise InputError(f"loss.pen_stages: unknown stage(s) {bad}; expected names from {STAGES}")
        on = stage in self.pen_stages
        return {"trans": self.trans, "joints": self.joints, "rot": self.rot, "chamfer": self.chamfer,
                "spen": self.spen, "pen": self.pen if on else 0.0, "dist": self.dist if on else 0.0}


def normalise_targets(gt: dict, joint_lower: torch.Tensor, joint_upper: torch.Tensor, t_range: float,
                      clamp: bool = True, dtype=None) -> dict:
    """Complete one object's ground truth for the criterion.

    gt: 'rotation' (M,3,3) or 'quaternion' (M,4) wxyz; 'translation' (M,3) m; 'joints' (M,J) rad.
    Returns a new dict with all of 'rotation', 'quaternion', 'translation', 'joints', 'translation_norm' (M,3),
    'joints_norm' (M,J).  The normalisation is the inverse of the model's heads.  With ``clamp`` the normalised values
    are clipped to [0, 1], the range the sigmoid heads can reach (real grasps exceed joint limits slightly; an
    out-of-range target would only push a sigmoid into saturation).  Raw values are never changed.
    """
    def take(key, shape_tail):
        x = gt.get(key)
        if x is None:
            return None
        x = torch.as_tensor(x, dtype=dtype or torch.get_default_dtype())
        if x.ndim != 1 + len(shape_tail) or tuple(x.shape[1:]) != shape_tail or not bool(torch.isfinite(x).all()):
            raise InputError(f"targets['{key}']: expected finite (M, {', '.join(map(str, shape_tail))}), "
                             f"got {tuple(x.shape)}")
        return x

    J = joint_lower.numel()
    rot, quat = take("rotation", (3, 3)), take("quaternion", (4,))
    t, q = take("translation", (3,)), take("joints", (J,))
    if t is None or q is None or (rot is None and quat is None):
        raise InputError("targets: each object needs 'translation', 'joints' and 'rotation' or 'quaternion'")
    if quat is None:
        quat = quaternion_from_matrix(rot)
    quat = F.normalize(quat, dim=-1)
    if rot is None:
        rot = matrix_from_quaternion(quat)
    if not (rot.shape[0] == quat.shape[0] == t.shape[0] == q.shape[0]):
        raise InputError("targets: 'rotation'/'quaternion', 'translation' and 'joints' need the same number M "
                         "of grasps")
    lo, hi = joint_lower.to(q), joint_upper.to(q)
    qn, tn = (q - lo) / (hi - lo), (t + t_range) / (2 * t_range)
    if clamp:
        qn, tn = qn.clamp(0, 1), tn.clamp(0, 1)
    return {"rotation": rot, "quaternion": quat, "translation": t, "joints": q, "joints_norm": qn,
            "translation_norm": tn}


# ------------------------------------------------------------------------------------------- geometric terms
@torch.no_grad()
def _nearest(a: torch.Tensor, b: torch.Tensor, both: bool = False, method: str | None = None,
             max_elems: int = 1 << 24):
    """a (K, N, 3), b (K, M, 3) → (K, N) index of each a point's nearest b point (and, with ``both``, the (K, M)
    index of each b point's nearest a point).

    Only indices: callers recompute the distances with autograd.  method 'kdtree' (default on CPU): one k-d tree
    per pair (scipy cKDTree, ~10x faster than brute force for thousands of points); 'brute' (default elsewhere):
    argmin_j |b_j|² − 2 a_i·b_j from a batched matmul, chunked over K so at most ~max_elems distances coexist.
    """
    K, N, M = a.shape[0], a.shape[1], b.shape[1]
    if K == 0 or M == 0 or N == 0:
        z = lambda n: torch.zeros(K, n, dtype=torch.long, device=a.device)
        return (z(N), z(M)) if both else z(N)

    method = method or ("kdtree" if a.device.type == "cpu" else "brute")
    if method == "kdtree":
        from scipy.spatial import cKDTree
        an, bn = a.detach().double().numpy(), b.detach().double().numpy()
        nn = lambda x, y: torch.from_numpy(np.stack([cKDTree(y[i]).query(x[i])[1] for i in range(K)]).astype(np.int64))
        return (nn(an, bn), nn(bn, an)) if both else nn(an, bn)

    def brute(x, y):  # (K, n, 3), (K, m, 3) → (K, n)
        chunk = max(1, max_elems // (x.shape[1] * y.shape[1]))
        return torch.cat([torch.bmm(x[i:i + chunk], y[i:i + chunk].transpose(1, 2)).mul_(-2)
                          .add_((y[i:i + chunk] ** 2).sum(-1)[:, None, :]).argmin(-1) for i in range(0, K, chunk)])

    return (brute(a, b), brute(b, a)) if both else brute(a, b)


def _pick(b: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """b (K, M, 3), idx (K, N) → (K, N, 3)."""
    return torch.gather(b, 1, idx[..., None].expand(-1, -1, 3))


def chamfer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(K, N, 3), (K, M, 3) → (K,) mean_a min_b ‖a−b‖² + mean_b min_a ‖a−b‖².

    The nearest neighbours are found without autograd and the squared distances recomputed on them: same value and
    gradient as differentiating the min, without storing K·N·M distances.
    """
    i_ab, i_ba = _nearest(a, b, both=True)
    return ((a - _pick(b, i_ab)) ** 2).sum(-1).mean(-1) + ((b - _pick(a, i_ba)) ** 2).sum(-1).mean(-1)


def vanilla_distance(keypoints: torch.Tensor, obj_points: torch.Tensor, tau: float) -> torch.Tensor:
    """Paper eq. 1.  keypoints (K, Nc, 3), obj_points (K, P, 3) → (K,) Σ_i 1[d_i < τ]·d_i, d_i = min_p ‖p_i − p‖."""
    diff = keypoints - _pick(obj_points, _nearest(keypoints, obj_points))
    d = torch.sqrt((diff ** 2).sum(-1) + 1e-12)  # eps: finite gradient when a keypoint sits on an object point
    return torch.where(d < tau, d, torch.zeros_like(d)).sum(-1)


def object_penetration(hand_sdf: torch.Tensor) -> torch.Tensor:
    """hand_sdf (K, P) of object points, positive inside the hand → (K,) total penetration depth Σ_p relu(sdf)."""
    return F.relu(hand_sdf).sum(-1)


def pairs_per_rank(k: int, device) -> float:
    """DETR's ``num_boxes``: the matched pairs of all ranks / world size (this batch's K in one process), at least 1.

    DDP averages gradients over the W ranks, so with each rank's loss = Σ_its pairs / (K_global / W) the averaged
    gradient is that of Σ_all pairs / K_global: the mean over the global batch, whatever K each rank holds.  Every rank
    must call it at every step (an all-reduce).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(max(k, 1))
    n = torch.tensor([float(k)], dtype=torch.float64, device=device)
    dist.all_reduce(n)
    return max(float(n) / dist.get_world_size(), 1.0)


# ---------------------------------------------------------------------------------------------- the criterion
class SetCriterion(nn.Module):
    """Matching + weighted losses over all decoder layers.

    cfg: LossConfig; hand: object with the hand API above (may be None when every hand term has weight 0);
    joint_lower/joint_upper (J,): default to the hand's; t_range: the model's translation range (ModelConfig.t_range);
    distributed: under DDP, average every term over the global batch's pairs (``pairs_per_rank``: one all-reduce per
    call, so every rank must call it together; validation on one rank needs a criterion without it).
    """

    def __init__(self, cfg: LossConfig | None = None, hand=None, joint_lower=None, joint_upper=None,
                 t_range: float = 0.22, distributed: bool = False):
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.distributed = distributed
        self.hand = hand
        if joint_lower is None or joint_upper is None:
            if hand is None:
                raise InputError("SetCriterion: give joint_lower/joint_upper or a hand that has them")
            joint_lower, joint_upper = hand.joint_lower, hand.joint_upper
        self.register_buffer("joint_lower", torch.as_tensor(joint_lower, dtype=torch.float32).flatten().clone())
        self.register_buffer("joint_upper", torch.as_tensor(joint_upper, dtype=torch.float32).flatten().clone())
        self.t_range = float(t_range)
        self._surf_idx = None

    def _surface(self, rot, t, q) -> torch.Tensor:
        """(K, n, 3) hand surface samples for the chamfer term, n = min(chamfer_points, the hand's count)."""
        pts = self.hand.surface_points(rot, t, q)
        if self._surf_idx is None or self._surf_idx.device != pts.device:
            N, n = pts.shape[1], min(self.cfg.chamfer_points, pts.shape[1])
            self._surf_idx = torch.linspace(0, N - 1, n, device=pts.device).round().long()
        return pts[:, self._surf_idx]

    def prepare_targets(self, targets: list[dict], dtype, device) -> list[dict]:
        """Complete each object's ground truth with ``normalise_targets`` (unless it already holds all six keys)."""
        out = []
        for gt in targets:
            if not all(k in gt for k in ("joints_norm", "translation_norm", "quaternion", "rotation",
                                         "translation", "joints")):
                gt = normalise_targets(gt, self.joint_lower, self.joint_upper, self.t_range)
            out.append({k: torch.as_tensor(v).to(device=device, dtype=dtype) for k, v in gt.items()
                        if k in ("rotation", "quaternion", "translation", "joints", "joints_norm", "translation_norm")})
        return out

    def forward(self, outputs: dict, targets: list[dict], static_assignment=None, stage: str = "dmt",
                points: torch.Tensor | None = None):
        """Total loss over all (supervised) decoder layers.

        outputs: the model's dict ('rotation' (B,Q,3,3), 'quaternion', 'translation', 'joints', *_norm, 'aux');
        targets: B ground-truth dicts (see ``normalise_targets``; M_b grasps each);
        static_assignment: None (Hungarian matching, needed for 'dmt') or B arrays (Q,) of GT indices, −1 unmatched
            (required for 'smw'/'smpt'); reused for every layer.  The indices refer to the order of each object's
            grasps in ``targets``: the loader must give every object the same grasps in the same order each epoch;
        points: object point clouds (B, P, 3), needed when 'pen' or 'dist' is active (stage 'smpt').
        Returns (total loss (scalar tensor), logs {name: float}, final-layer assignments: B arrays (Q,) int64).
        Logs hold the unweighted final-layer terms, 'loss' (total), 'loss_final', 'loss_aux', 'matched' (K, this
        rank's).  With ``distributed`` each term is Σ over this rank's pairs / ``pairs_per_rank``: the mean of the
        logs over the ranks is the global mean.
        """
        weights = self.cfg.weights(stage)
        B, Q = outputs["quaternion"].shape[:2]
        if len(targets) != B:
            raise InputError(f"targets: expected {B} objects (batch size), got {len(targets)}")
        if stage != "dmt" and static_assignment is None:
            raise InputError(f"static_assignment: stage {stage!r} needs the static assignment recorded after DMT")
        if any(weights[k] > 0 for k in HAND_TERMS) and self.hand is None:
            raise InputError("SetCriterion: hand terms have non-zero weight but no hand was given")
        if (weights["pen"] > 0 or weights["dist"] > 0):
            if points is None or points.ndim != 3 or points.shape[0] != B or points.shape[-1] != 3:
                raise InputError(f"points: stage {stage!r} needs the object point clouds (B={B}, P, 3), got "
                                 f"{None if points is None else tuple(points.shape)}")
            points = points.to(outputs["translation"])
        gts = self.prepare_targets(targets, outputs["translation"].dtype, outputs["translation"].device)

        static = None
        if static_assignment is not None:
            if len(static_assignment) != B:
                raise InputError(f"static_assignment: expected {B} entries, got {len(static_assignment)}")
            static = [from_query_assignment(check_assignment(a, Q, gts[b]["joints"].shape[0],
                                                             f"static_assignment[{b}]"), outputs["quaternion"].device)
                      for b, a in enumerate(static_assignment)]

        layers = [outputs] + (list(outputs.get("aux", [])) if self.cfg.aux else [])
        total, logs, final_matches, norm = 0.0, {}, None, None
        for li, layer in enumerate(layers):
            matches = static if static is not None else hungarian_match(layer, gts, self.cfg.matcher)
            if norm is None:  # K is the same in every layer: Σ_b min(Q, M_b) (Hungarian) or the static pairs
                k = sum(len(m[0]) for m in matches)
                norm = pairs_per_rank(k, outputs["translation"].device) if self.distributed else float(max(k, 1))
            terms = self.layer_terms(layer, gts, matches, weights, points, norm)
            loss = sum(weights[k] * v for k, v in terms.items())
            total = total + loss
            if li == 0:
                final_matches = matches
                logs = {k: float(v.detach()) for k, v in terms.items()}
                logs["loss_final"] = float(loss.detach())
                logs["matched"] = float(sum(len(m[0]) for m in matches))
        logs["loss"] = float(total.detach())
        logs["loss_aux"] = logs["loss"] - logs["loss_final"]
        return total, logs, [to_query_assignment(m, Q) for m in final_matches]

    def layer_terms(self, pred: dict, gts: list[dict], matches, weights: dict, points,
                    norm: float | None = None) -> dict[str, torch.Tensor]:
        """Unweighted loss terms of one layer: each one's sum over the K matched pairs / ``norm`` (default K: the
        mean; zero when K = 0)."""
        dev = pred["quaternion"].device
        bidx = torch.cat([torch.full_like(p, b) for b, (p, _) in enumerate(matches)]).to(dev)
        pidx = torch.cat([p for p, _ in matches]).to(dev)
        K = int(bidx.numel())
        norm = float(K) if norm is None else norm
        mean = lambda x: x.sum() / norm  # == x.mean() bit for bit when norm = K (CPU)
        if K == 0:  # keep the graph connected so backward() works on a batch without ground truth
            zero = pred["translation_norm"].sum() * 0
            return {k: zero for k, w in weights.items() if w > 0 or k in ("trans", "joints", "rot")}
        P = {k: pred[k][bidx, pidx] for k in ("translation_norm", "joints_norm", "quaternion", "rotation",
                                               "translation", "joints")}
        G = {k: torch.cat([gts[b][k][g] for b, (_, g) in enumerate(matches)]) for k in P}

        beta = self.cfg.smooth_l1_beta
        sl1 = lambda a, b: F.smooth_l1_loss(a, b, reduction="none", beta=beta).sum(-1)
        terms = {
            "trans": mean(sl1(P["translation_norm"], G["translation_norm"])),
            "joints": mean(sl1(P["joints_norm"], G["joints_norm"])),
            "rot": mean(1 - (P["quaternion"] * G["quaternion"]).sum(-1).abs()),
        }
        pose = (P["rotation"], P["translation"], P["joints"])
        if weights["chamfer"] > 0:
            with torch.no_grad():
                gt_surface = self._surface(G["rotation"], G["translation"], G["joints"])
            terms["chamfer"] = gt_surface.shape[1] * mean(chamfer(self._surface(*pose), gt_surface))
        if weights["spen"] > 0:
            terms["spen"] = mean(self.hand.self_penetration(*pose))
        if weights["pen"] > 0:
            terms["pen"] = mean(self.hand.penetration(*pose, points[bidx]))
        if weights["dist"] > 0:
            terms["dist"] = mean(vanilla_distance(self.hand.contact_candidates(*pose), points[bidx],
                                                  self.cfg.dist_tau))
        return terms
