"""Batched, differentiable rotation conversions (torch).

Conventions
- Matrices act on column vectors: ``x_world = R @ x_local``.
- Quaternions are ``(w, x, y, z)``; ``q`` and ``-q`` are the same rotation.
- Euler angles are transforms3d's ``'sxyz'`` (static axes): ``R = Rz(c) @ Ry(b) @ Rx(a)`` for angles ``(a, b, c)``,
  which is what DexGraspNet stores as ``WRJRx, WRJRy, WRJRz`` (scipy: ``Rotation.from_euler('xyz', ...)``).
- 6D is the first two *columns* of the matrix, ``(..., 6) = [R[:, 0], R[:, 1]]`` (Zhou et al. 2019).
- Axis-angle is the rotation vector ``angle * axis``.

All functions take ``(..., k)`` tensors and broadcast over leading dimensions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "matrix_from_euler", "euler_from_matrix", "matrix_from_quaternion", "quaternion_from_matrix",
    "matrix_from_6d", "sixd_from_matrix", "matrix_from_axis_angle", "axis_angle_from_matrix", "to_matrix",
]


def _axis_rot(angle: torch.Tensor, axis: int) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(angle), torch.zeros_like(angle)
    rows = {
        0: [o, z, z, z, c, -s, z, s, c],
        1: [c, z, s, z, o, z, -s, z, c],
        2: [c, -s, z, s, c, z, z, z, o],
    }[axis]
    return torch.stack(rows, -1).reshape(*angle.shape, 3, 3)


def matrix_from_euler(euler: torch.Tensor) -> torch.Tensor:
    """(..., 3) sxyz Euler angles -> (..., 3, 3)."""
    return _axis_rot(euler[..., 2], 2) @ _axis_rot(euler[..., 1], 1) @ _axis_rot(euler[..., 0], 0)


def euler_from_matrix(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) sxyz Euler angles, pitch in [-pi/2, pi/2]."""
    cy = torch.sqrt(R[..., 0, 0] ** 2 + R[..., 1, 0] ** 2)
    regular = cy > 1e-6
    a = torch.where(regular, torch.atan2(R[..., 2, 1], R[..., 2, 2]), torch.atan2(-R[..., 1, 2], R[..., 1, 1]))
    b = torch.atan2(-R[..., 2, 0], cy)
    c = torch.where(regular, torch.atan2(R[..., 1, 0], R[..., 0, 0]), torch.zeros_like(cy))
    return torch.stack([a, b, c], -1)


def matrix_from_quaternion(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) wxyz quaternion (need not be unit) -> (..., 3, 3)."""
    w, x, y, z = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def quaternion_from_matrix(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 4) unit wxyz quaternion with w >= 0 (numerically stable branch selection)."""
    m = R
    t = torch.stack([
        1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
        1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
        1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
    ], -1)
    # each row is a candidate quaternion scaled by 4*component; pick the one with the largest component
    cand = torch.stack([
        torch.stack([t[..., 0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], t[..., 1], m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], t[..., 2], m[..., 2, 1] + m[..., 1, 2]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2], t[..., 3]], -1),
    ], -2)
    idx = t.argmax(-1)
    q = torch.gather(cand, -2, idx[..., None, None].expand(*idx.shape, 1, 4)).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_from_6d(d6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt; columns are (a1, a2, a1 x a2)."""
    a1 = F.normalize(d6[..., :3], dim=-1)
    a2 = F.normalize(d6[..., 3:] - (a1 * d6[..., 3:]).sum(-1, keepdim=True) * a1, dim=-1)
    return torch.stack([a1, a2, torch.cross(a1, a2, dim=-1)], -1)


def sixd_from_matrix(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6) first two columns."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], -1)


def matrix_from_axis_angle(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) rotation vector -> (..., 3, 3) (Rodrigues; smooth at zero)."""
    theta2 = (v * v).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2.clamp_min(1e-12))
    small = theta2 < 1e-8
    # sin(t)/t and (1-cos t)/t^2 with Taylor fallbacks so gradients exist at 0
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*v.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def axis_angle_from_matrix(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) rotation vector with angle in [0, pi]."""
    q = quaternion_from_matrix(R)
    n = q[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(n, q[..., :1])
    return torch.where(n > 1e-8, q[..., 1:] * angle / n.clamp_min(1e-12), 2 * q[..., 1:])


def to_matrix(rot: torch.Tensor, kind: str | None = None) -> torch.Tensor:
    """Any supported rotation representation -> (..., 3, 3).

    ``kind`` is one of ``'matrix', 'quaternion', '6d', 'axis_angle', 'euler'``; when omitted it is inferred from the
    shape: (..., 3, 3) matrix, (..., 4) quaternion, (..., 6) 6D, (..., 3) axis-angle (Euler must be named).
    """
    if kind is None:
        if rot.shape[-2:] == (3, 3):
            kind = "matrix"
        else:
            kind = {4: "quaternion", 6: "6d", 3: "axis_angle"}.get(rot.shape[-1])
        if kind is None:
            raise ValueError(f"cannot infer rotation representation from shape {tuple(rot.shape)}; "
                             "expected (...,3,3), (...,4), (...,6) or (...,3)")
    fn = {"matrix": lambda r: r, "quaternion": matrix_from_quaternion, "6d": matrix_from_6d,
          "axis_angle": matrix_from_axis_angle, "euler": matrix_from_euler}.get(kind)
    if fn is None:
        raise ValueError(f"unknown rotation kind {kind!r}")
    return fn(rot)
