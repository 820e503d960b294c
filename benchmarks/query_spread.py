"""Does a checkpoint's decoder use its queries and the object?  (docs/training.md, query collapse)

    python benchmarks/query_spread.py CHECKPOINT [--data data/pybullet] [--split val] [--objects 8] [--scale 0.08]

On the first ``--objects`` objects of the split at one scale, prints the std of the raw predictions across the 16
queries and across objects (quaternion sign-fixed, translation in mm), and each decoder layer's cross-attention
entropy against its maximum log(tokens) (= uniform attention).
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

import dgtr
from dgtr.data import mesh_path, read_splits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="data/pybullet")
    ap.add_argument("--split", default="val")
    ap.add_argument("--objects", type=int, default=8)
    ap.add_argument("--scale", type=float, default=0.08)
    args = ap.parse_args()
    p = dgtr.load(args.checkpoint)
    m = p.model.eval()
    codes = read_splits(args.data)[args.split][:args.objects]
    pts = torch.stack([p.prepare(mesh_path(f"{args.data}/meshdata", c), args.scale, c)[0] for c in codes])
    entropies = []

    def attention_entropy(module, inputs):  # the layer's own cross-attention inputs, re-run for its weights
        _, w = module.forward(*inputs, need_weights=True)
        entropies.append((-(w * (w + 1e-12).log()).sum(-1).mean().item(), math.log(w.shape[-1])))

    hooks = [layer.cross_attn.register_forward_pre_hook(attention_entropy) for layer in m.layers]
    with torch.no_grad():
        out = m(pts)
    for h in hooks:
        h.remove()
    quat = out["quaternion"] * torch.sign(out["quaternion"][..., :1])
    t = out["translation"] * 1e3
    print(f"{len(codes)} {args.split} objects × {args.scale:g}: std across queries: quaternion "
          f"{quat.std(1).mean():.4f}, translation {t.std(1).mean():.2f} mm; across objects: quaternion "
          f"{quat.std(0).mean():.4f}, translation {t.std(0).mean():.2f} mm")
    for i, (ent, uniform) in enumerate(entropies):
        print(f"layer {i}: cross-attention entropy {ent:.3f} (uniform: {uniform:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
