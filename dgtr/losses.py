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
- ``pen``     object penetration (λ_pen = 50, SMPT only), ``pen_form``:
              'linear': Σ_p relu(hand_sdf(p)) over the object points p, hand sdf positive inside the hand (m);
              'squared' (the authors' released code): Σ over the points p inside a link of d(p)², d = distance to that
              link's palmar line (capsules) or depth (palm boxes), m² (``palmar_penetration``): ~200x gentler at
              millimetre depths, and a point just under a finger's palmar face costs ~nothing
- ``dist``    vanilla distance loss, paper eq. 1: Σ_i 1[d(p_i) < τ]·d(p_i) over the hand's contact candidates p_i,
              d = Euclidean distance to the nearest object point (τ = 1 cm, the authors' threshold; weight 10, SMPT
              only).  Eq. 1 as printed uses d, not d² (the authors' code summed squared distances).

Hand terms are computed for all decoder layers at once (``SetCriterion.all_layer_terms``): one batched kinematics
call per point set over the L·K matched poses, every ground-truth hand posed and k-d-tree-indexed once however many
layers match it, every object cloud indexed once for all its hands; the k-d tree searches run on
``torch.get_num_threads()`` threads.

Stages (DSMT, paper Alg. 1): 'dmt' Hungarian matching per layer, no pen/dist; 'smw' static matching, no pen/dist;
'smpt' static matching + pen + dist (``LossConfig.pen_stages`` moves pen/dist into other stages for the paper's
ablations).  Deep supervision: every decoder layer is matched (separately in dynamic mode, DETR-style; with the one
static assignment in static mode) and its losses are added to the total.

Hand terms call a hand object injected into ``SetCriterion`` (``dgtr.hand.ShadowHand`` in practice):
``surface_points(R, t, q) → (K, N, 3)``, ``penetration(R, t, q, points (K, P, 3)) → (K,)`` (Σ relu of the hand's
signed distance, positive inside),
``self_penetration(R, t, q) → (K,)``, ``contact_candidates(R, t, q) → (K, Nc, 3)``, ``joint_lower/joint_upper (J,)``;
``pen_form: squared`` also needs ``primitives``, ``link_names`` and ``link_frames(R, t, q)`` (the ShadowHand's).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .errors import InputError
from .geometry import gather as _pick, nearest, nearest_distance
from .matcher import MatcherConfig, check_assignment, from_query_assignment, hungarian_match, to_query_assignment
from .rotations import matrix_from_quaternion, quaternion_from_matrix

__all__ = ["LossConfig", "SetCriterion", "normalise_targets", "chamfer", "vanilla_distance", "object_penetration",
           "palmar_penetration", "PalmarGeometry", "pairs_per_rank", "STAGES", "PEN_FORMS"]

STAGES = ("dmt", "smw", "smpt")
HAND_TERMS = ("chamfer", "spen", "pen", "dist")
PEN_FORMS = ("linear", "squared")


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
    pen_form: str = "linear"   # 'linear': Σ depth (m); 'squared': the authors' Σ d² to the palmar line (m²)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)

    def check(self) -> None:
        if self.pen_form not in PEN_FORMS:
            raise InputError(f"loss.pen_form: expected one of {PEN_FORMS}, got {self.pen_form!r}")
        bad = [s for s in self.pen_stages if s not in STAGES]
        if bad:
            raise InputError(f"loss.pen_stages: unknown stage(s) {bad}; expected names from {STAGES}")
        if self.chamfer_points < 1:
            raise InputError(f"loss.chamfer_points: need >= 1, got {self.chamfer_points}")
        self.matcher.check()

    def weights(self, stage: str) -> dict[str, float]:
        if stage not in STAGES:
            raise InputError(f"stage: expected one of {STAGES}, got {stage!r}")
        self.check()
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
def chamfer(a: torch.Tensor, b: torch.Tensor, b_index: torch.Tensor | None = None) -> torch.Tensor:
    """(K, N, 3), (U, M, 3) → (K,) mean_a min_b ‖a−b‖² + mean_b min_a ‖a−b‖² of each row of ``a`` against its set
    ``b[b_index[k]]`` (default: b_index = arange(K), U = K: row k against row k).

    The nearest neighbours are found without autograd and the squared distances recomputed on them: same value and
    gradient as differentiating the min, without storing K·N·M distances.  A ``b`` set shared by several rows (one
    ground-truth hand matched in several decoder layers) gets one k-d tree.
    """
    if b_index is None:
        if a.shape[0] != b.shape[0]:
            raise InputError(f"chamfer: {a.shape[0]} rows of a but {b.shape[0]} of b (give b_index)")
        b_index = torch.arange(a.shape[0], device=a.device)
    bk = b[b_index]
    with torch.no_grad():
        i_ab = nearest(a, b, b_index)                                           # a → its set (one tree per set)
        i_ba = nearest(bk, a) if a.shape[0] else i_ab[:, :0]                    # each set → its row of a
    return ((a - _pick(bk, i_ab)) ** 2).sum(-1).mean(-1) + ((bk - _pick(a, i_ba)) ** 2).sum(-1).mean(-1)


def vanilla_distance(keypoints: torch.Tensor, obj_points: torch.Tensor, tau: float,
                     obj_index: torch.Tensor | None = None) -> torch.Tensor:
    """Paper eq. 1.  keypoints (K, Nc, 3), obj_points (B, P, 3) (B = K unless ``obj_index`` (K,) names each row's
    cloud) → (K,) Σ_i 1[d_i < τ]·d_i, d_i = min_p ‖p_i − p‖.  Each cloud gets one k-d tree for all its rows."""
    if obj_index is None:
        obj_index = torch.arange(keypoints.shape[0], device=keypoints.device)
    d = nearest_distance(keypoints, obj_points, obj_index)  # √(d² + 1e-12): finite gradient on an object point
    return torch.where(d < tau, d, torch.zeros_like(d)).sum(-1)


def object_penetration(hand_sdf: torch.Tensor) -> torch.Tensor:
    """hand_sdf (K, P) of object points, positive inside the hand → (K,) total penetration depth Σ_p relu(sdf)."""
    return F.relu(hand_sdf).sum(-1)


class PalmarGeometry:
    """The ShadowHand's collision primitives (``hand.primitives``) as tensors for ``palmar_penetration``: per
    primitive its link, frame in the link, bounding-sphere radius; capsules: radius r, half length h and the palmar
    offset o (2,) in the capsule frame (the palmar line is x, y = o: (0, −r) on the fingers, whose flexion turns them
    toward −y, the palm normal; (−r, 0) on the three thumb capsules, which bend toward −x; the contact candidates use
    the same sides); boxes: half extents."""

    def __init__(self, hand, dtype=torch.float32, device="cpu"):
        lid = {n: i for i, n in enumerate(hand.link_names)}
        prims = sorted(hand.primitives, key=lambda p: p.kind != "capsule")   # capsules first, then boxes
        T = lambda x: torch.as_tensor(np.asarray(x), dtype=dtype, device=device)
        self.link = torch.tensor([lid[p.link] for p in prims], device=device)
        self.R = matrix_from_quaternion(torch.as_tensor(np.stack([p.quat for p in prims]))).to(dtype=dtype,
                                                                                              device=device)
        #                                                                    (G, 3, 3) primitive → link
        self.p = T(np.stack([p.pos for p in prims]))                          # (G, 3)
        caps = [p for p in prims if p.kind == "capsule"]
        self.n_caps = len(caps)
        self.r = T([p.size[0] for p in caps])
        self.h = T([p.size[1] for p in caps])
        thumb = [p.link.split(":")[-1].startswith("th") for p in caps]
        self.offset = T([[-p.size[0], 0.0] if th else [0.0, -p.size[0]] for p, th in zip(caps, thumb)])
        self.half = T(np.stack([p.size for p in prims if p.kind == "box"]).reshape(-1, 3))
        self.bound = torch.cat([self.r + self.h, self.half.norm(dim=-1)])    # (G,) bounding-sphere radii


def palmar_penetration(hand, rot, t, q, points: torch.Tensor, geom: PalmarGeometry | None = None,
                       max_elems: int = 1 << 23) -> torch.Tensor:
    """The authors' object-penetration term (their ``get_obj_penetration_loss``): Σ over the object points p inside
    the hand of d(p)² (m²), d = the distance from p to the palmar line of the capsule it is inside (the line on the
    capsule's palmar side, x, y = offset, at p's own axial position clamped to the segment: a point that entered
    through the palmar face is near it, one that crossed to the back of the finger is ~2r from it); for the palm and
    lfmetacarpal boxes (a mesh in their code) d = the depth below the nearest face.  A point inside several
    primitives counts the largest.  Poses (K, ...) as the hand API, points (K, P, 3) → (K,).

    Cost: the (hand, point, primitive) triples within a primitive's bounding sphere are found without autograd (in
    chunks of ~max_elems distances), the inside test and the winning primitive of each point too; autograd then
    evaluates one row per penetrating point (a hand touches few of an object's points).
    """
    g = geom or PalmarGeometry(hand, points.dtype, points.device)
    Rw, pw = hand.link_frames(rot, t, q)                                     # (K, L, 3, 3), (K, L, 3)
    Rl = Rw[:, g.link]
    Rp = Rl @ g.R                                                            # (K, G, 3, 3) primitive frames
    cp = pw[:, g.link] + (Rl @ g.p[:, :, None]).squeeze(-1)                  # (K, G, 3) primitive centres
    points = points.to(cp)
    K, P, G = points.shape[0], points.shape[1], cp.shape[1]
    local = lambda k, p, j, R, c: ((points[k, p] - c[k, j])[:, None, :] @ R[k, j]).squeeze(1)   # (n, 3)
    with torch.no_grad():
        Rd, cd, rows = Rp.detach(), cp.detach(), []
        step = max(1, max_elems // max(1, P * G))
        for k0 in range(0, K, step):
            kk, pp, jj = (torch.cdist(points[k0:k0 + step], cd[k0:k0 + step]) <= g.bound).nonzero(as_tuple=True)
            rows.append((kk + k0, pp, jj))
        k, p, j = (torch.cat(x) for x in zip(*rows))
        val, inside = _palmar_rows(local(k, p, j, Rd, cd), j, g)
        k, p, j, val = k[inside], p[inside], j[inside], val[inside]
        # the winning primitive of each penetrating point: the largest value (sort by value, then stably by point)
        order = torch.argsort(val, descending=True, stable=True)
        order = order[torch.argsort(k[order] * P + p[order], stable=True)]
        key = (k * P + p)[order]
        first = torch.ones_like(key, dtype=torch.bool)
        first[1:] = key[1:] != key[:-1]
        win = order[first]
        k, p, j = k[win], p[win], j[win]
    val, _ = _palmar_rows(local(k, p, j, Rp, cp), j, g)
    return (cp[:, 0, 0] * 0).index_add(0, k, val)                            # connected to the graph when empty


def _palmar_rows(xl: torch.Tensor, j: torch.Tensor, g: PalmarGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Primitive coordinates xl (n, 3) of points in primitive j (n,) → (d² (n,), inside (n,) bool) (see
    ``palmar_penetration``)."""
    C = g.n_caps
    jc, jb = j.clamp(max=C - 1), (j - C).clamp(min=0)
    h, r = g.h[jc], g.r[jc]
    over = xl[:, 2] - torch.minimum(torch.maximum(xl[:, 2], -h), h)          # axial overshoot past the segment
    in_cap = (xl[:, :2] ** 2).sum(-1) + over ** 2 < r ** 2
    d2_cap = ((xl[:, :2] - g.offset[jc]) ** 2).sum(-1) + over ** 2            # to the palmar line, same height
    depth = (g.half[jb] - xl.abs()).amin(-1)                                 # > 0 inside the box
    cap = j < C
    return torch.where(cap, d2_cap, depth ** 2), torch.where(cap, in_cap, depth > 0)


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
        self.cfg.check()
        self._surf_idx = None
        self._palmar = None  # PalmarGeometry of the hand, built on first use (pen_form 'squared')

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
                                                             f"static_assignment[{b}]", self.cfg.matcher.fill != "none"),
                                            outputs["quaternion"].device)
                      for b, a in enumerate(static_assignment)]

        layers = [outputs] + (list(outputs.get("aux", [])) if self.cfg.aux else [])
        matches = [static if static is not None else hungarian_match(layer, gts, self.cfg.matcher) for layer in layers]
        # K is the same in every layer: Σ_b min(Q, M_b) (Hungarian) or the static pairs
        k = sum(len(m[0]) for m in matches[0])
        norm = pairs_per_rank(k, outputs["translation"].device) if self.distributed else float(max(k, 1))
        total, logs = 0.0, {}
        for li, terms in enumerate(self.all_layer_terms(layers, gts, matches, weights, points, norm)):
            loss = sum(weights[k] * v for k, v in terms.items())
            total = total + loss
            if li == 0:
                logs = {k: float(v.detach()) for k, v in terms.items()}
                logs["loss_final"] = float(loss.detach())
                logs["matched"] = float(k)
        logs["loss"] = float(total.detach())
        logs["loss_aux"] = logs["loss"] - logs["loss_final"]
        return total, logs, [to_query_assignment(m, Q) for m in matches[0]]

    def layer_terms(self, pred: dict, gts: list[dict], matches, weights: dict, points,
                    norm: float | None = None) -> dict[str, torch.Tensor]:
        """Unweighted loss terms of one layer: each one's sum over the K matched pairs / ``norm`` (default K: the
        mean; zero when K = 0)."""
        return self.all_layer_terms([pred], gts, [matches], weights, points, norm)[0]

    def all_layer_terms(self, layers: list[dict], gts: list[dict], matches: list, weights: dict, points,
                        norm: float | None = None) -> list[dict[str, torch.Tensor]]:
        """``layer_terms`` of every layer (``matches[l]`` for ``layers[l]``), the hand terms of all layers batched:
        one kinematics call per point set for the L·K matched poses, each ground-truth hand posed and indexed once
        however many layers it is matched in, each object cloud indexed once for all its hands."""
        dev = layers[0]["quaternion"].device
        idx = []
        for m in matches:
            bidx = torch.cat([torch.full_like(p, b) for b, (p, _) in enumerate(m)]).to(dev)
            idx.append((bidx, torch.cat([p for p, _ in m]).to(dev), torch.cat([g for _, g in m]).to(dev)))
        K = int(idx[0][0].numel())
        norm = float(K) if norm is None else norm
        mean = lambda x: x.sum() / norm  # == x.mean() bit for bit when norm = K (CPU)
        if K == 0:  # keep the graph connected so backward() works on a batch without ground truth
            out = []
            for pred in layers:
                zero = pred["translation_norm"].sum() * 0
                out.append({k: zero for k, w in weights.items() if w > 0 or k in ("trans", "joints", "rot")})
            return out
        keys = ("translation_norm", "joints_norm", "quaternion", "rotation", "translation", "joints")
        beta = self.cfg.smooth_l1_beta
        sl1 = lambda a, b: F.smooth_l1_loss(a, b, reduction="none", beta=beta).sum(-1)
        out, P, G = [], [], []
        for pred, m, (bidx, pidx, _) in zip(layers, matches, idx):
            p = {k: pred[k][bidx, pidx] for k in keys}
            gt = {k: torch.cat([gts[b][k][g] for b, (_, g) in enumerate(m)]) for k in keys}
            out.append({"trans": mean(sl1(p["translation_norm"], gt["translation_norm"])),
                        "joints": mean(sl1(p["joints_norm"], gt["joints_norm"])),
                        "rot": mean(1 - (p["quaternion"] * gt["quaternion"]).sum(-1).abs())})
            P.append(p)
        L = len(layers)
        if not any(weights[k] > 0 for k in HAND_TERMS):
            return out
        pose = tuple(torch.cat([p[k] for p in P]) for k in ("rotation", "translation", "joints"))  # (L·K, ...)
        bidx_all = torch.cat([i[0] for i in idx])
        per_layer = lambda v: [mean(c) for c in v.split(K)]
        hand_terms = {}
        if weights["chamfer"] > 0:
            # ground-truth hands: each distinct (object, grasp) matched in any layer, posed once
            M = 1 + max(int(gt["joints"].shape[0]) for gt in gts)
            key = torch.cat([i[0] * M + i[2] for i in idx])
            uniq, inverse = torch.unique(key, return_inverse=True)
            ub, ug = uniq // M, uniq % M
            with torch.no_grad():
                gpose = [torch.stack([gts[int(b)][k][int(g)] for b, g in zip(ub, ug)])
                         for k in ("rotation", "translation", "joints")]
                gt_surface = self._surface(*gpose)
            hand_terms["chamfer"] = [gt_surface.shape[1] * v for v in
                                     per_layer(chamfer(self._surface(*pose), gt_surface, inverse))]
        if weights["spen"] > 0:
            hand_terms["spen"] = per_layer(self.hand.self_penetration(*pose))
        if weights["pen"] > 0:
            if self.cfg.pen_form == "squared":
                if self._palmar is None or self._palmar.r.device != points.device:
                    self._palmar = PalmarGeometry(self.hand, points.dtype, points.device)
                pen = palmar_penetration(self.hand, *pose, points[bidx_all], self._palmar)
            else:
                pen = self.hand.penetration(*pose, points[bidx_all])
            hand_terms["pen"] = per_layer(pen)
        if weights["dist"] > 0:
            hand_terms["dist"] = per_layer(vanilla_distance(self.hand.contact_candidates(*pose), points,
                                                            self.cfg.dist_tau, bidx_all))
        for name, vals in hand_terms.items():
            for li in range(L):
                out[li][name] = vals[li]
        return out
