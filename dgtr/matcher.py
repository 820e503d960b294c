"""Bipartite matching of Q predicted grasps to M ground-truth grasps per object (paper eq. 5–6, DESIGN.md §3).

Cost of pairing query i with ground truth j:

    C_ij = w_joints · Σ_d |q̂_id − q_jd|  +  w_trans · Σ_d |t̂_id − t_jd|  +  w_rot · (1 − |⟨r̂_i, r_j⟩|)

on normalised joints and translations (each in [0, 1] per dimension) and unit wxyz quaternions; |⟨·,·⟩| makes q and −q
the same rotation.  The L1 terms are SUMS over dimensions (as the authors' matcher does, and as the regression loss
does), so the 22 joints weigh more than the 3 translation axes.

``linear_sum_assignment`` handles rectangular costs: with M < Q, Q − M queries stay unmatched (and get no loss); with
M > Q, only Q ground truths are used.  ``MatcherConfig.fill = 'nearest'`` (not in the paper) gives each query left
unmatched the ground truth of least cost instead (shared with the query Hungarian matched to it), so that every query
is supervised when an object has fewer grasps than queries (docs/training.md, "Unmatched queries").

Static assignments (DSMT, paper Alg. 1) are stored per object as an int array of length Q: the ground-truth index each
query is matched to, −1 for unmatched.  ``save_assignments``/``load_assignments`` keep a ``{key: [Q ints]}`` JSON map.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .errors import FileFormatError, InputError, MissingFileError
from .files import write_json

__all__ = ["MatcherConfig", "match_cost", "hungarian_match", "to_query_assignment", "from_query_assignment",
           "check_assignment", "save_assignments", "load_assignments"]

Match = tuple[torch.Tensor, torch.Tensor]  # (pred_idx (K,), gt_idx (K,)) long, K = min(Q, M), pred_idx ascending


@dataclass
class MatcherConfig:
    w_joints: float = 1.0
    w_trans: float = 2.0
    w_rot: float = 2.0
    fill: str = "none"   # 'none' (paper): with M < Q, Q − M queries get no loss; 'nearest': they get their cheapest GT

    def check(self) -> None:
        if self.fill not in ("none", "nearest"):
            raise InputError(f"loss.matcher.fill: expected 'none' or 'nearest', got {self.fill!r}")


def match_cost(pred: dict, gt: dict, cfg: MatcherConfig | None = None) -> torch.Tensor:
    """Cost matrix (Q, M) for one object.

    pred: 'joints_norm' (Q, J), 'translation_norm' (Q, 3), 'quaternion' (Q, 4) unit;
    gt:   the same keys with M rows.
    """
    cfg = cfg or MatcherConfig()
    l1 = lambda a, b: (a[:, None, :] - b[None, :, :]).abs().sum(-1)
    cost = cfg.w_joints * l1(pred["joints_norm"], gt["joints_norm"].to(pred["joints_norm"]))
    cost = cost + cfg.w_trans * l1(pred["translation_norm"], gt["translation_norm"].to(pred["translation_norm"]))
    dot = pred["quaternion"] @ gt["quaternion"].to(pred["quaternion"]).T
    return cost + cfg.w_rot * (1 - dot.abs())


@torch.no_grad()
def hungarian_match(pred: dict, gt_list: list[dict], cfg: MatcherConfig | None = None) -> list[Match]:
    """Optimal assignment per object.

    pred: batched dict with 'joints_norm' (B, Q, J), 'translation_norm' (B, Q, 3), 'quaternion' (B, Q, 4);
    gt_list: B dicts (keys as in ``match_cost``, M_b rows each, M_b may be 0).
    Returns B pairs (pred_idx, gt_idx) of long tensors of length min(Q, M_b), pred_idx ascending.
    """
    B = pred["quaternion"].shape[0]
    if len(gt_list) != B:
        raise InputError(f"gt_list: expected {B} objects (batch size), got {len(gt_list)}")
    dev = pred["quaternion"].device
    out = []
    for b in range(B):
        one = {k: pred[k][b] for k in ("joints_norm", "translation_norm", "quaternion")}
        cost = match_cost(one, gt_list[b], cfg).detach().cpu().double().numpy()
        if cost.shape[1] == 0:
            out.append((torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.long, device=dev)))
            continue
        if not np.isfinite(cost).all():
            raise InputError(f"hungarian_match: matching cost of object {b} has NaN/inf "
                             "(non-finite predictions or targets)")
        r, c = linear_sum_assignment(cost)
        if cfg is not None and cfg.fill == "nearest" and len(r) < cost.shape[0]:
            a = cost.argmin(1)          # every query its cheapest ground truth, then the Hungarian pairs over it
            a[r] = c
            r, c = np.arange(cost.shape[0]), a
        out.append((torch.as_tensor(r, dtype=torch.long, device=dev), torch.as_tensor(c, dtype=torch.long, device=dev)))
    return out


def to_query_assignment(match: Match, n_queries: int) -> np.ndarray:
    """(pred_idx, gt_idx) → (Q,) int64: ground-truth index of each query, −1 where unmatched."""
    a = np.full(n_queries, -1, dtype=np.int64)
    a[np.asarray(match[0].cpu())] = np.asarray(match[1].cpu())
    return a


def from_query_assignment(assignment, device=None) -> Match:
    """(Q,) ints (−1 = unmatched) → (pred_idx, gt_idx) long tensors, pred_idx ascending."""
    a = torch.as_tensor(np.asarray(assignment, dtype=np.int64), device=device)
    pred_idx = torch.nonzero(a >= 0).flatten()
    return pred_idx, a[pred_idx]


def check_assignment(assignment, n_queries: int, n_gt: int, name: str = "assignment",
                     shared: bool = False) -> np.ndarray:
    """Validate one static assignment against Q queries and M ground truths (``shared``: several queries may have
    the same one, ``MatcherConfig.fill``); returns it as (Q,) int64."""
    a = np.asarray(assignment)
    if a.shape != (n_queries,) or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name}: expected {n_queries} integers, got shape {a.shape} dtype {a.dtype}")
    used = a[a >= 0]
    if (a < -1).any() or (used >= n_gt).any():
        raise InputError(f"{name}: ground-truth indices must be -1 or in [0, {n_gt}), got {a.tolist()}")
    if not shared and len(np.unique(used)) != len(used):
        raise InputError(f"{name}: a ground truth is assigned to several queries: {a.tolist()}")
    return a.astype(np.int64)


def save_assignments(path: str | os.PathLike, assignments: dict) -> None:
    """Write ``{key: (Q,) ints}`` (key = object/sample id) as JSON, atomically."""
    write_json(path, {str(k): [int(x) for x in np.asarray(v).tolist()] for k, v in assignments.items()}, indent=None)


def load_assignments(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read what ``save_assignments`` wrote: ``{key: (Q,) int64 array}``."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"static assignment file not found: {p}")
    try:
        data = json.loads(p.read_text())
        if not isinstance(data, dict):
            raise ValueError("top level is not a mapping")
        return {k: np.asarray(v, dtype=np.int64).reshape(-1) for k, v in data.items()}
    except (ValueError, TypeError) as e:
        raise FileFormatError(f"static assignment file {p} is not a {{key: [ints]}} JSON map: {e}") from None
