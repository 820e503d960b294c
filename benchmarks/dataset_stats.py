"""Summary of a `dgtr synth` dataset: objects and grasps per split, usable training entries, yield, time.

    python benchmarks/dataset_stats.py [data/pybullet] [--min-grasps 16]

Reads ``splits.json``, ``dataset/*.npy``, ``manifest.json`` and the per-object records in ``done/`` (each holds the
wall seconds its worker spent on it).  "Entries" are (object, scale) pairs; an entry is usable for training when it
holds at least ``--min-grasps`` grasps (the model has 16 queries; configs/bundled.yaml sets train.min_grasps 16).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from dgtr.data import load_grasps, read_splits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", default="data/pybullet", type=Path)
    ap.add_argument("--min-grasps", type=int, default=16)
    args = ap.parse_args()
    root = args.root
    splits = read_splits(root)
    manifest = json.loads((root / "manifest.json").read_text())
    records = {p.stem: json.loads(p.read_text()) for p in sorted((root / "done").glob("*.json"))}
    scales = manifest["scales"]
    print(f"{root}: {len(records)} objects done, scales {scales}, seed {manifest['seed']}, "
          f"dgtr {manifest['dgtr_version']}")
    print(f"{'split':<6} {'objects':>7} {'grasps':>7} {'entries':>7} {'usable':>7} {'grasps/entry':>12}")
    total = Counter()
    for name in ("train", "val", "test"):
        codes = [c for c in splits.get(name, []) if (root / "dataset" / f"{c}.npy").is_file()]
        n = entries = usable = 0
        for c in codes:
            g = load_grasps(root / "dataset" / f"{c}.npy")
            n += len(g)
            for s in scales:
                k = len(g.at_scale(s))
                entries += 1
                usable += k >= args.min_grasps
        total.update(objects=len(codes), grasps=n, entries=entries, usable=usable)
        print(f"{name:<6} {len(codes):>7} {n:>7} {entries:>7} {usable:>7} {n / max(1, entries):>12.1f}")
    print(f"{'all':<6} {total['objects']:>7} {total['grasps']:>7} {total['entries']:>7} {total['usable']:>7}")
    per_scale = Counter()
    for r in records.values():
        for s, v in r.get("per_scale", {}).items():
            per_scale[(s, "optimised")] += v.get("optimised", 0)
            per_scale[(s, "kept")] += v.get("kept", 0)
    print("yield per scale (validated / optimised): " + ", ".join(
        f"{s}: {per_scale[(s, 'kept')] / max(1, per_scale[(s, 'optimised')]):.0%}" for s in map("{:g}".format, scales)))
    secs = sum(r.get("seconds", 0.0) for r in records.values())
    kept = sum(r.get("kept", 0) for r in records.values())
    opt = sum(r.get("optimised", 0) for r in records.values())
    print(f"optimised {opt}, validated {kept} (yield {kept / max(1, opt):.0%}); worker time {secs / 3600:.2f} h "
          f"= {kept / max(1e-9, secs):.2f} validated grasps per worker-second "
          f"(x2 with --workers 2 on 2 cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
