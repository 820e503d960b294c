"""Nearest-point search, once for the whole package: ``knn`` (indices of each query point's k nearest points) is what
the encoder's kNN grouping (``dgtr.model``), the losses' chamfer and eq. 1 distances (``dgtr.losses``), AB-TTA's
keypoint neighbours (``dgtr.tta``), the contact counts of ``dgtr.predict.score_grasps`` and the comparison methods'
contact maps and cloud normals (``dgtr.methods``) all call; ``nearest`` is its k = 1 form and ``nearest_distance``
the differentiable distance to that point; ``gather`` picks the points (or features) the indices name.

Only indices come out of the search (without autograd): callers recompute the distances they need from the points
the indices pick, so gradients flow through the points and never through a K·N·M distance matrix.

Two ways to search, the same answer (up to exact ties in distance, see ``knn``):
- ``'kdtree'`` (default on CPU): a k-d tree (``pykdtree``) per point set in use, exact (float64); a set that
  several query rows share (one object cloud expanded over the grasps, or named several times by ``owner``) is
  indexed once and queried with all its rows at once.  Sets are spread over ``torch.get_num_threads()`` threads
  (tree builds and queries release the GIL).  pykdtree measured 1.5-2x faster than scipy's cKDTree on every use
  here (the encoder's three groupings 9 → 3 ms, a training batch's chamfer 0.48 → 0.27 s; benchmarks/bench_model.py).
- ``'brute'`` (default elsewhere): |y_j|² − 2 x_i·y_j from a batched matmul, then ``argmin`` (k = 1) or ``topk``,
  in chunks of rows (and of query points, for one huge pair) so that at most about ``max_elems`` distances exist
  at once.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .errors import InputError

__all__ = ["knn", "nearest", "nearest_distance", "gather", "parallel_map"]

_POOL = None
_POOL_PID = None


def parallel_map(fn, items: list, n: int) -> list:
    """[fn(x) for x in items] over n threads (a pool kept between calls; made again in a forked child, where the
    parent's threads do not exist)."""
    global _POOL, _POOL_PID
    n = min(n, len(items))
    if n <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    if _POOL is None or _POOL._max_workers < n or _POOL_PID != os.getpid():
        _POOL, _POOL_PID = ThreadPoolExecutor(n, thread_name_prefix="dgtr-nn"), os.getpid()
    parts = np.array_split(np.arange(len(items)), n)
    done = _POOL.map(lambda idx: [fn(items[i]) for i in idx], parts)
    return [r for part in done for r in part]


def _kd_knn(x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor, k: int) -> torch.Tensor:
    """The k-d tree search of ``knn`` (x (K, N, 3), y (U, M, 3), owner (K,)) → (K, N, k) int64 on the CPU."""
    from pykdtree.kdtree import KDTree

    K, N = x.shape[:2]
    xn, yn = x.detach().to("cpu", torch.float64).numpy(), y.detach().to("cpu", torch.float64).numpy()
    own = owner.cpu().numpy()
    order = np.argsort(own, kind="stable")
    sets, starts = np.unique(own[order], return_index=True)
    groups = np.split(order, starts[1:])                  # the rows each set in use serves

    def search(task):
        u, rows = task
        queries = np.ascontiguousarray(xn[rows].reshape(-1, 3))
        return KDTree(np.ascontiguousarray(yn[u])).query(queries, k)[1].reshape(len(rows), N, k)

    out = np.empty((K, N, k), dtype=np.int64)
    for rows, idx in zip(groups, parallel_map(search, list(zip(sets, groups)), torch.get_num_threads())):
        out[rows] = idx
    return torch.from_numpy(out)


def _brute_knn(x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor | None, k: int, max_elems: int) -> torch.Tensor:
    """The matmul search of ``knn``: row i against y[owner[i]] (owner None: y[i]) → (K, N, k) long, on x's device."""
    K, N, M = x.shape[0], x.shape[1], y.shape[1]
    sq = (y ** 2).sum(-1)                                                     # (U, M)
    rows = max(1, max_elems // (N * M))
    cols = N if N * M <= max_elems else max(1, max_elems // M)
    out = []
    for i in range(0, K, rows):
        sel = slice(i, i + rows) if owner is None else owner[i:i + rows]
        yi, si = y[sel], sq[sel][:, None, :]
        for j in range(0, N, cols):
            d = torch.bmm(x[i:i + rows, j:j + cols], yi.transpose(1, 2)).mul_(-2).add_(si)  # |y|² − 2x·y
            out.append(d.argmin(-1, keepdim=True) if k == 1 else d.topk(k, dim=-1, largest=False).indices)
    if cols == N:
        return torch.cat(out)
    per_row = -(-N // cols)
    return torch.cat([torch.cat(out[r:r + per_row], 1) for r in range(0, len(out), per_row)])


@torch.no_grad()
def knn(x: torch.Tensor, y: torch.Tensor, k: int, owner: torch.Tensor | None = None, method: str | None = None,
        max_elems: int = 1 << 24) -> torch.Tensor:
    """x (K, N, 3) query points, y (U, M, 3) point sets → (K, N, min(k, M)) long: indices into row k's set of the
    k nearest points of each x point, nearest first.

    Row k's set: y[owner[k]] with ``owner`` (K,) long; without it y[k] (U = K), or the one cloud for every row when
    y is (1, M, 3) or expanded over the rows (``y[None].expand(K, -1, -1)``, stride 0): one k-d tree for all.
    method: 'kdtree' | 'brute' (default 'kdtree' on CPU, 'brute' elsewhere; see the module docstring); max_elems
    bounds the brute force's distance chunks.  Empty rows or queries give an empty result; an empty set (M = 0)
    index 0, nothing to point at (k = 1 column).

    The two methods return the same indices except between points at exactly the same distance (which one is
    taken is then up to the method; a k-d tree always breaks a tie the same way for the same data), and the brute
    force's float32 distances can also swap two points whose distances agree to rounding (≈1e-7 relative), which
    the exact float64 k-d tree does not.
    """
    K, N, M = x.shape[0], x.shape[1], y.shape[1]
    k = min(k, max(M, 1))
    if owner is None and y.shape[0] != K and y.shape[0] != 1:
        raise InputError(f"knn: {K} query sets but {y.shape[0]} point sets (give owner)")
    if K == 0 or N == 0 or M == 0:
        return torch.zeros(K, N, k, dtype=torch.long, device=x.device)
    method = method or ("kdtree" if x.device.type == "cpu" else "brute")
    if method == "kdtree":
        if owner is None:  # one cloud for every row: index it once
            shared = y.shape[0] == 1 or y.stride(0) == 0
            y, owner = (y[:1], torch.zeros(K, dtype=torch.long)) if shared else (y, torch.arange(K))
        return _kd_knn(x, y, owner, k).to(x.device)
    if owner is None and y.shape[0] == 1:
        y = y.expand(K, -1, -1)
    return _brute_knn(x, y, owner, k, max_elems)


def nearest(x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """``knn`` with k = 1, squeezed: (K, N) long index of each x point's nearest point of its set."""
    return knn(x, y, 1, owner, **kw)[..., 0]


def nearest_distance(x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor | None = None) -> torch.Tensor:
    """x (K, N, 3), y (U, M, 3) → (K, N) distance of each x point to its nearest point of its set (sets as in
    ``knn``).  Indices without autograd, the distance recomputed with it: differentiable with respect to both
    point sets; √(d² + 1e-12), a finite gradient on a coincident pair."""
    idx = nearest(x, y, owner)
    yk = y if owner is None else y[owner]
    if yk.shape[0] != x.shape[0]:
        yk = yk.expand(x.shape[0], -1, -1)
    return ((x - gather(yk, idx)) ** 2).sum(-1).add(1e-12).sqrt()


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, P, C), idx (B, *S) long → (B, *S, C): x[b, idx[b, ...]] (differentiable with respect to x).

    A contiguous x goes through one ``index_select`` on its flattened rows (~5x faster than ``torch.gather``, which
    the encoder's grouping notices); an expanded x (one cloud under many grasps, stride 0) through ``torch.gather``,
    which needs no copy of it."""
    B, C = x.shape[0], x.shape[-1]
    flat = idx.reshape(B, -1)
    if x.is_contiguous():
        rows = (flat + torch.arange(B, device=x.device)[:, None] * x.shape[1]).flatten()
        return x.reshape(-1, C).index_select(0, rows).reshape(*idx.shape, C)
    return torch.gather(x, 1, flat[..., None].expand(-1, -1, C)).reshape(*idx.shape, C)
