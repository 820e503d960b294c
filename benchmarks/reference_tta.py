"""AB-TTA as it was before the faster iteration (dgtr 0.1.0, commit 5dffca1; dgtr/tta.py), kept as a reference.

``reference_adapt(hand, points_or_obj, rot, t, q, cfg, obj)`` is that plain ``adapt``: the hand's kinematics run once
per term, kNN by ``cdist`` + ``topk``.  tests/test_tta_fast.py checks that ``dgtr.tta.adapt`` gives the same grasps,
benchmarks/bench_model.py times both.  Not used by the package.
"""
from __future__ import annotations

import numpy as np
import torch

from dgtr.errors import InputError
from dgtr.rotations import matrix_from_axis_angle, to_matrix
from dgtr.tta import TTAConfig

N_NEIGHBOURS = 8  # object points kept per keypoint between refreshes


def _object_points(obj, B: int, dtype, device) -> torch.Tensor:
    """points (P,3) / (B,P,3) array or tensor, or an ObjectModel → (B, P, 3)."""
    if hasattr(obj, "sample_points"):
        obj = obj.sample_points(4096, seed=0)
    pts = torch.as_tensor(np.asarray(obj) if not isinstance(obj, torch.Tensor) else obj).to(device=device, dtype=dtype)
    if pts.ndim == 2:
        pts = pts[None].expand(B, -1, -1)
    if pts.ndim != 3 or pts.shape[0] != B or pts.shape[-1] != 3 or pts.shape[1] < 1:
        raise InputError(f"points: expected (P, 3) or (B={B}, P, 3) object points, got {tuple(pts.shape)}")
    if not bool(torch.isfinite(pts).all()):
        raise InputError("points: contains NaN or inf")
    return pts


def _gather(pts: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """pts (B, P, 3), idx (B, *S) → (B, *S, 3)."""
    flat = idx.reshape(idx.shape[0], -1)
    return torch.gather(pts, 1, flat[..., None].expand(-1, -1, 3)).reshape(*idx.shape, 3)


@torch.no_grad()
def _near_hand(hand, R, t, q, pts, n: int, chunk: int = 32) -> torch.Tensor:
    """Indices (B, min(n,P)) of the object points with the largest hand SDF (inside or closest to the hand)."""
    n = min(n, pts.shape[1])
    return torch.cat([hand.signed_distance(R[s:s + chunk], t[s:s + chunk], q[s:s + chunk], pts[s:s + chunk])
                      .topk(n, dim=1).indices for s in range(0, R.shape[0], chunk)])


@torch.no_grad()
def _knn(kp: torch.Tensor, pts: torch.Tensor, k: int, chunk: int = 32) -> torch.Tensor:
    """kp (B, C, 3), pts (B, P, 3) → (B, C, k) indices of each keypoint's k nearest object points."""
    k = min(k, pts.shape[1])
    return torch.cat([torch.cdist(kp[s:s + chunk], pts[s:s + chunk]).topk(k, dim=-1, largest=False).indices
                      for s in range(0, kp.shape[0], chunk)])


def _sdf_fn(obj, cfg: TTAConfig):
    """The ObjectModel's signed distance as a differentiable (B, C, 3) → (B, C) function, or None."""
    if obj is None or not cfg.mesh_distance or not hasattr(obj, "signed_distance"):
        return None
    try:
        probe = torch.zeros(1, 1, 3, requires_grad=True)
        out = obj.signed_distance(probe)
        out = out[0] if isinstance(out, tuple) else out
        if not (isinstance(out, torch.Tensor) and out.requires_grad):
            return None  # not differentiable: fall back to the point cloud
    except Exception:  # an ObjectModel without a torch SDF: the point cloud does the job
        return None

    def fn(x):
        d = obj.signed_distance(x)
        return (d[0] if isinstance(d, tuple) else d).reshape(x.shape[:-1]).to(x)
    return fn


def tta_losses(hand, R, t, q, near_pts, kp_nbrs_pts, init_close, tau, sdf_fn=None) -> dict[str, torch.Tensor]:
    """Per-grasp AB-TTA terms (B,) each: 'pen', 'dist', 'spen'.

    near_pts (B, n, 3): object points for L_pen; kp_nbrs_pts (B, C, k, 3): candidate nearest object points of each
    keypoint (ignored when ``sdf_fn`` is given); init_close (B, C) bool: keypoint within τ in the initial grasp.
    """
    pen = torch.relu(hand.signed_distance(R, t, q, near_pts)).sum(-1)
    kp = hand.contact_candidates(R, t, q)                                        # (B, C, 3)
    if sdf_fn is not None:
        d = sdf_fn(kp).abs()
    else:
        d = torch.sqrt(((kp[:, :, None] - kp_nbrs_pts) ** 2).sum(-1) + 1e-12).amin(-1)  # (B, C)
    mask = init_close | (d.detach() < tau)
    return {"pen": pen, "dist": (d * mask).sum(-1), "spen": hand.self_penetration(R, t, q)}


def reference_adapt(hand, points_or_obj, rot, t, q, cfg: TTAConfig | None = None, obj=None, return_history: bool = False):
    """Refine B grasps with AB-TTA.

    hand: ``dgtr.hand.ShadowHand``; points_or_obj: object points (P, 3) or (B, P, 3) (tensor/array, metres, object
    frame) or an ``ObjectModel`` (4096 points sampled from it, and it is ``obj``); obj: optional ``ObjectModel`` at
    the grasps' scale whose (differentiable) signed distance drives L_tta-dist instead of the nearest point;
    rot: (B, 3, 3) matrices or (B, 4) wxyz quaternions; t (B, 3); q (B, 22).
    Returns (R (B, 3, 3), t (B, 3), q (B, 22)) detached, in t's dtype; q within the joint limits; t unchanged when
    β_t = 0.  With ``return_history`` also a list of the mean total loss per iteration.
    """
    cfg = cfg or TTAConfig()
    cfg.check()
    t0 = torch.as_tensor(t)
    if not t0.is_floating_point():
        t0 = t0.float()
    dtype, device = t0.dtype, t0.device
    rot = torch.as_tensor(rot).to(device=device, dtype=dtype)
    q0 = torch.as_tensor(q).to(device=device, dtype=dtype)
    J = hand.joint_lower.numel()
    if (t0.ndim != 2 or t0.shape[1] != 3 or q0.shape != (t0.shape[0], J) or rot.shape[0] != t0.shape[0]
            or rot.shape[1:] not in ((3, 3), (4,))):
        raise InputError(f"rot, t, q: expected (B,3,3)|(B,4), (B,3), (B,{J}); got {tuple(rot.shape)}, "
                         f"{tuple(t0.shape)}, {tuple(q0.shape)}")
    for name, x in (("rot", rot), ("t", t0), ("q", q0)):
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"{name}: contains NaN or inf")
    R0 = to_matrix(rot)
    B = t0.shape[0]
    hand = hand.to(device=device, dtype=dtype)
    lower, upper = hand.joint_lower.to(q0), hand.joint_upper.to(q0)
    if obj is None and hasattr(points_or_obj, "sample_points"):
        obj = points_or_obj
    pts = _object_points(points_or_obj, B, dtype, device)
    sdf_fn = _sdf_fn(obj, cfg)

    t0 = t0.detach()
    if cfg.iterations == 0 or B == 0:
        out = (R0.detach().clone(), t0.clone(), q0.detach().clamp(lower, upper))
        return (*out, []) if return_history else out

    omega = torch.zeros(B, 3, dtype=dtype, device=device, requires_grad=True)
    qp = q0.detach().clamp(lower, upper).clone().requires_grad_(True)
    groups = [{"params": [omega, qp], "lr": cfg.lr}]
    tp = t0
    if cfg.beta_t > 0:
        tp = t0.clone().requires_grad_(True)
        groups.append({"params": [tp], "lr": cfg.lr * cfg.beta_t})
    opt = torch.optim.Adam(groups) if cfg.optimizer == "adam" else torch.optim.SGD(groups)

    with torch.no_grad():  # which keypoints touched the object in the coarse grasp (eq. 2, p^c)
        kp0 = hand.contact_candidates(R0, t0, q0)
        if sdf_fn is not None:
            init_close = sdf_fn(kp0).abs() < cfg.tau
        else:
            init_close = (kp0[:, :, None] - _gather(pts, _knn(kp0, pts, 1))).norm(dim=-1).amin(-1) < cfg.tau

    history = []
    for it in range(cfg.iterations):
        R = matrix_from_axis_angle(omega) @ R0
        if it % cfg.refresh == 0:  # re-select the object points that matter (see module docstring)
            with torch.no_grad():
                near = _gather(pts, _near_hand(hand, R, tp, qp, pts, cfg.n_near))
                nbrs = None if sdf_fn is not None else _gather(
                    pts, _knn(hand.contact_candidates(R, tp, qp), pts, N_NEIGHBOURS))
        terms = tta_losses(hand, R, tp, qp, near, nbrs, init_close, cfg.tau, sdf_fn)
        loss = (cfg.alpha_pen * terms["pen"] + cfg.alpha_dist * terms["dist"] + cfg.alpha_spen * terms["spen"])
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # grasps are independent: summing keeps each grasp's gradient its own
        opt.step()
        with torch.no_grad():
            qp.clamp_(lower, upper)
        if return_history:
            history.append(float(loss.detach().mean()))

    out = ((matrix_from_axis_angle(omega) @ R0).detach(), tp.detach().clone(), qp.detach().clone())
    return (*out, history) if return_history else out
