"""Grasp quality and diversity metrics of DGTR (paper §4.1, DESIGN.md §5).

Quality (per grasp):
- ``penetration_depth``: max depth (m) of object surface points inside the hand (hand SDF, positive inside).
  Pen. = its mean in cm; η_np = share of grasps with depth < 0.5 cm.
- ``q1``: Ferrari–Canny Q1 of one contact per hand link (DexGraspNet protocol); η_tb = share with raw Q1 > 0; the
  reported "Q1" is ``gated_q1`` (zeroed where the depth is ≥ 0.5 cm).

Diversity (per group of grasps of one object and scale): ``diversity`` gives δt, δr, δq as fractions of ξ = 16 bins
occupied; a single grasp occupies 1/16 = 6.25 % of each.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError

from .rotations import euler_from_matrix

__all__ = [
    "PEN_THRESHOLD", "CONTACT_THRESHOLD", "friction_cone_wrenches", "q1_from_contacts",
    "link_contacts", "q1", "penetration_depth", "gated_q1", "fibonacci_sphere", "occupancy", "diversity",
]

PEN_THRESHOLD = 0.005      # m: a grasp penetrating this deep gets Q1 = 0 and is not "non-penetrating"
CONTACT_THRESHOLD = 0.01   # m: a link counts as touching if its deepest point is inside or within 1 cm
MU = 1.0                   # friction coefficient of the Q1 friction cones
N_EDGES = 8                # edges of each linearised friction cone
TORQUE_SCALE = 10.0        # wrench = [f; 10 (c x f)]: objects are ~0.1 m, so torques get the scale of forces
N_BINS = 16                # ξ of the diversity metrics
_TINY_PRIMITIVE = 0.002    # m: DexGraspNet ignores the two 1 mm boxes (thbase, thhub)


# ------------------------------------------------------------------------------------------------------------ Q1
def friction_cone_wrenches(contacts: np.ndarray, normals: np.ndarray, mu: float = MU, n_edges: int = N_EDGES,
                           torque_scale: float = TORQUE_SCALE) -> np.ndarray:
    """Primitive wrenches of linearised friction cones.

    contacts (K, 3) object-frame points (m); normals (K, 3) outward unit object normals.
    Returns (K * n_edges, 6) rows ``[f; torque_scale * (c x f)]`` with ``f = -n + mu (cos φ u + sin φ v)``: unit
    normal force pushing into the object plus the friction that the cone allows (the classic Ferrari–Canny set).
    """
    c = np.asarray(contacts, dtype=np.float64).reshape(-1, 3)
    n = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    n = n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
    # tangent basis: cross with the world axis least aligned with n
    helper = np.eye(3)[np.argmin(np.abs(n), axis=1)]
    u = np.cross(n, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(n, u)
    phi = 2 * np.pi * np.arange(n_edges) / n_edges
    f = -n[:, None] + mu * (np.cos(phi)[None, :, None] * u[:, None] + np.sin(phi)[None, :, None] * v[:, None])
    tau = torque_scale * np.cross(np.broadcast_to(c[:, None], f.shape), f)
    return np.concatenate([f, tau], -1).reshape(-1, 6)


def q1_from_contacts(contacts: np.ndarray, normals: np.ndarray, mu: float = MU, n_edges: int = N_EDGES,
                     torque_scale: float = TORQUE_SCALE, joggle_fallback: bool = True) -> float:
    """Q1 of point contacts (K, 3) with outward normals (K, 3): distance from the wrench-space origin to the nearest
    facet of the convex hull of the cone wrenches plus the zero wrench, capped at 1.

    0 when the grasp is not force-closed (origin on the hull boundary: the zero wrench is a hull point, so this is
    the only other case) or when the wrenches do not span 6-D (too few contacts: a flat hull, Qhull fails).
    Qhull also fails on some full-rank sets of ~100+ nearly coplanar 6-D points ("wide merge due to dupridge"); with
    ``joggle_fallback`` those are retried with joggled input (``QJ``) instead of scoring 0 as DexGraspNet's code did,
    which zeroes 1.1 % of the real grasps (8 of 700) for reasons unrelated to the grasp (docs/evaluation.md).
    """
    if len(np.asarray(contacts).reshape(-1, 3)) == 0:
        return 0.0
    w = np.vstack([friction_cone_wrenches(contacts, normals, mu, n_edges, torque_scale), np.zeros((1, 6))])
    try:
        hull = ConvexHull(w)
    except (QhullError, ValueError):
        if not joggle_fallback or np.linalg.matrix_rank(w, tol=1e-9) < 6:
            return 0.0
        try:
            hull = ConvexHull(w, qhull_options="QJ")
        except (QhullError, ValueError):
            return 0.0
    # equations: a·x + b <= 0 inside, |a| = 1, so the origin's distance to each facet plane is -b
    q = float((-hull.equations[:, -1]).min())
    return min(q, 1.0) if q > 1e-9 else 0.0


def _link_grid(hand, spacing: float) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The hand's primitive surface grid (DexGraspNet's 1 mm boxes left out) -> points (P, 3) in their link frames,
    link indices (P,) and ``slot`` (P,) = position of each point's link among the links that carry points."""
    pts, link = hand.primitive_grid(spacing, min_size=_TINY_PRIMITIVE)
    _, slot = np.unique(link.numpy(), return_inverse=True)
    return pts, link, slot


def link_contacts(hand, obj, rot: torch.Tensor, t: torch.Tensor, q: torch.Tensor,
                  threshold: float = CONTACT_THRESHOLD, spacing: float = 0.0025,
                  candidates: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """One contact per hand link (DexGraspNet Q1 protocol).

    For each link the primitive sample with the smallest object signed distance is its deepest point; the link
    touches if that distance is < ``threshold`` (inside or within 1 cm). The contact is the object surface point
    closest to it, with its outward normal. rot (B,3,3), t (B,3), q (B,22) -> per grasp (contacts (K,3), normals (K,3)).

    The exact signed distance (robust inside test by the convex pieces) is too slow for every sample, so a plane
    proxy picks ``candidates`` samples per link and the exact distance decides among them.
    """
    pts_link, link, slot = _link_grid(hand, spacing)
    dtype = torch.float64
    with torch.no_grad():
        frames = hand.link_frames(rot.to(dtype), t.to(dtype), q.to(dtype))
        x = hand.pose_points(frames, pts_link, link).numpy()               # (B, P, 3)
    B, L = x.shape[0], slot.max() + 1
    phi = obj.plane_distance(x.reshape(-1, 3), reach=threshold).reshape(B, -1)
    cand, cphi = [], []
    for l in range(L):  # the `candidates` samples of each link with the smallest proxy
        xl, pl = x[:, slot == l], phi[:, slot == l]
        k = min(candidates, pl.shape[1])
        i = np.argpartition(pl, k - 1, axis=1)[:, :k]
        cand.append(np.take_along_axis(xl, i[..., None], 1))
        cphi.append(np.take_along_axis(pl, i, 1))
    cand, cphi = np.stack(cand, 1), np.stack(cphi, 1)                  # (B, L, k, 3), (B, L, k)
    # outside, the proxy is a lower bound: samples with proxy >= threshold cannot touch and skip the exact test
    near = cphi < threshold
    exact = np.full(cphi.shape, np.inf)
    if near.any():
        exact[near] = obj.exact_signed_distance(cand[near])
    j = exact.argmin(-1)
    dmin = np.take_along_axis(exact, j[..., None], -1)[..., 0]           # (B, L)
    deepest = np.take_along_axis(cand, j[..., None, None], 2)[:, :, 0]   # (B, L, 3)
    ok = dmin < threshold
    out = []
    for b in range(B):
        if ok[b].any():
            c, n = obj.closest_points(deepest[b][ok[b]])
            out.append((np.asarray(c, dtype=np.float64), np.asarray(n, dtype=np.float64)))
        else:
            out.append((np.zeros((0, 3)), np.zeros((0, 3))))
    return out


def q1(hand, obj, rot: torch.Tensor, t: torch.Tensor, q: torch.Tensor, **kw) -> np.ndarray:
    """Raw Q1 (B,) of grasps rot (B,3,3), t (B,3), q (B,22) on ``obj`` (an ObjectModel at the grasps' scale)."""
    return np.array([q1_from_contacts(c, n) for c, n in link_contacts(hand, obj, rot, t, q, **kw)])


def penetration_depth(hand, obj_points: torch.Tensor, rot: torch.Tensor, t: torch.Tensor, q: torch.Tensor,
                      chunk: int = 64) -> np.ndarray:
    """Max depth (m, >= 0) of object surface points (P, 3) inside the hand for each grasp: (B,)."""
    pts = torch.as_tensor(obj_points)
    out = []
    with torch.no_grad():
        for s in range(0, rot.shape[0], chunk):
            r, tt, qq = rot[s:s + chunk], t[s:s + chunk], q[s:s + chunk]
            p = pts.to(r.dtype)[None].expand(r.shape[0], -1, -1)
            out.append(hand.signed_distance(r, tt, qq, p).amax(1).clamp_min(0).double())
    return torch.cat(out).numpy()


def gated_q1(q1_raw: np.ndarray, depth: np.ndarray, threshold: float = PEN_THRESHOLD) -> np.ndarray:
    """The paper's reported Q1: raw Q1 zeroed where the penetration depth is >= 0.5 cm."""
    return np.where(np.asarray(depth) < threshold, q1_raw, 0.0)


# ----------------------------------------------------------------------------------------------------- diversity
def fibonacci_sphere(n: int = N_BINS) -> np.ndarray:
    """(n, 3) near-uniform unit directions (golden-angle spiral)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = np.pi * (3 - np.sqrt(5)) * i
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def occupancy(values: np.ndarray, low, high, n_bins: int = N_BINS) -> np.ndarray:
    """Share of ``n_bins`` uniform bins over [low, high] hit by values (M, D), per column: (D,).

    Values outside the range count in the edge bins (real grasps exceed joint limits slightly).
    """
    v = np.asarray(values, dtype=np.float64)
    low, high = np.broadcast_to(low, v.shape[1:]), np.broadcast_to(high, v.shape[1:])
    b = np.floor((v - low) / (high - low) * n_bins).astype(int).clip(0, n_bins - 1)  # (M, D)
    return np.array([len(np.unique(b[:, j])) for j in range(v.shape[1])]) / n_bins


def diversity(rot, t, q, joint_lower, joint_upper, n_bins: int = N_BINS) -> dict[str, float]:
    """δt, δr, δq (fractions in [1/n_bins, 1]) of one group of grasps (one object and scale).

    rot (M,3,3), t (M,3), q (M,22); joint limits (22,).
    δt: share of ``n_bins`` Fibonacci directions that are the nearest (max cosine) of some grasp's translation.
    δr: share of ``n_bins`` bins of each sxyz Euler angle over its range (x, z in [-π, π], y in [-π/2, π/2]),
    averaged over the 3 angles. δq: share of ``n_bins`` bins over each joint's limits, averaged over the 22 joints.
    """
    rot, t, q = (torch.as_tensor(np.asarray(x), dtype=torch.float64) for x in (rot, t, q))
    if rot.shape[0] == 0:
        raise ValueError("diversity: empty group")
    dirs = fibonacci_sphere(n_bins)
    tn = t.numpy() / np.linalg.norm(t.numpy(), axis=1, keepdims=True).clip(1e-12)
    dt = len(np.unique((tn @ dirs.T).argmax(1))) / n_bins
    e = euler_from_matrix(rot).numpy()
    dr = occupancy(e, [-np.pi, -np.pi / 2, -np.pi], [np.pi, np.pi / 2, np.pi], n_bins).mean()
    dq = occupancy(q.numpy(), np.asarray(joint_lower, dtype=np.float64), np.asarray(joint_upper, dtype=np.float64),
                   n_bins).mean()
    return {"delta_t": float(dt), "delta_r": float(dr), "delta_q": float(dq)}
