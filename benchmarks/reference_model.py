"""The DGTR forward pass as it was before the fast path (dgtr 0.1.0, commit 5dffca1), kept as a reference.

``reference_forward(model, points)`` runs that plain implementation on a ``dgtr.model.DGTR``'s own parameters (the
parameter names did not change), so the fast path can be checked against it for equal outputs
(tests/test_model_fast.py) and timed beside it (benchmarks/bench_model.py).  Plain = per set-abstraction: FPS on
its input, kNN by ``cdist`` + ``topk``, the grouped rows [xyz_nbr − xyz_centre, feat_nbr] through Linear →
BatchNorm → ReLU, ``max`` over the neighbours; the decoder layers' forward as it was.  Not used by the package.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dgtr.model import _fps_torch


def farthest_point_sample(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """(P, 3) → (n,) long indices into xyz, starting at index 0; all points (in order) when n >= P (fpsample's plain
    FPS on CPU)."""
    P = xyz.shape[0]
    if n >= P:
        return torch.arange(P, device=xyz.device)
    if xyz.device.type == "cpu":
        import fpsample
        pts = np.ascontiguousarray(xyz.detach().numpy(), dtype=np.float32)
        return torch.from_numpy(fpsample.fps_sampling(pts, n, start_idx=0).astype(np.int64))
    return _fps_torch(xyz.detach()[None], n)[0]


@torch.no_grad()
def sample_and_group(xyz: torch.Tensor, n_centres: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """xyz (B, P, 3) → centre indices (B, S), neighbour indices (B, S, k) with S = min(n_centres, P), k <= P."""
    B, P, _ = xyz.shape
    S, k = min(n_centres, P), min(k, P)
    if xyz.device.type != "cpu":
        centres = _fps_torch(xyz, S) if S < P else torch.arange(P, device=xyz.device).expand(B, P)
        d = torch.cdist(gather(xyz, centres), xyz)                        # (B, S, P)
        return centres, d.topk(k, dim=-1, largest=False).indices
    centres, neighbours = [], []
    for b in range(B):
        c = farthest_point_sample(xyz[b], S)
        d = torch.cdist(xyz[b, c], xyz[b])                                # (S, P)
        neighbours.append(d.topk(k, dim=-1, largest=False).indices)
        centres.append(c)
    return torch.stack(centres), torch.stack(neighbours)


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, P, C), idx (B, *S) → (B, *S, C)."""
    B = x.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(x, 1, flat[..., None].expand(-1, -1, x.shape[-1]))
    return out.reshape(*idx.shape, x.shape[-1])


def set_abstraction(sa, xyz: torch.Tensor, feats: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``dgtr.model.SetAbstraction`` sa's parameters: (B, P, 3), (B, P, C) → (B, S, 3), (B, S, C_out)."""
    centre_idx, nbr_idx = sample_and_group(xyz, sa.n_centres, sa.k)
    centres = gather(xyz, centre_idx)                                   # (B, S, 3)
    h = gather(xyz, nbr_idx) - centres[:, :, None]                     # (B, S, k, 3) relative xyz
    if feats is not None:
        h = torch.cat([h, gather(feats, nbr_idx)], -1)                 # (B, S, k, 3 + C)
    for lin, bn in zip(sa.linears, sa.norms):
        h = lin(h)
        h = F.relu(bn(h.reshape(-1, h.shape[-1])).reshape(h.shape))
    return centres, h.max(2).values


def decoder_layer(layer, x, query_pos, memory, memory_pos):
    """``dgtr.model.DecoderLayer`` layer's parameters: x, query_pos (B, Q, d); memory, memory_pos (B, T, d)."""
    def sub(i, x, f):
        if layer.pre_norm:
            return x + layer.drops[i](f(layer.norms[i](x)))
        return layer.norms[i](x + layer.drops[i](f(x)))

    x = sub(0, x, lambda h: layer.self_attn(h + query_pos, h + query_pos, h, need_weights=False)[0])
    x = sub(1, x, lambda h: layer.cross_attn(h + query_pos, memory + memory_pos, memory, need_weights=False)[0])
    return sub(2, x, layer.ffn)


def reference_forward(model, points: torch.Tensor) -> dict:
    """``dgtr.model.DGTR.forward`` as it was: points (B, N, 3) → the same prediction dict."""
    xyz = model._check(points)
    feats = None
    for sa in model.encoder:
        xyz, feats = set_abstraction(sa, xyz, feats)
    memory, memory_pos = model.proj(feats), model.pos_embed(xyz / model.cfg.pos_scale)
    B = xyz.shape[0]
    query_pos = model.query_pos.weight.expand(B, -1, -1)
    x = torch.zeros_like(query_pos) if model.query_content is None else model.query_content.weight.expand(B, -1, -1)
    hs = []
    for layer in model.layers:
        x = decoder_layer(layer, x, query_pos, memory, memory_pos)
        hs.append(x)
    if not model.cfg.aux_loss:
        hs = hs[-1:]
    preds = model.heads(model.out_norm(torch.stack(hs)))
    out = {k: v[-1] for k, v in preds.items()}
    out["aux"] = [{k: v[i] for k, v in preds.items()} for i in range(len(hs) - 1)]
    return out
