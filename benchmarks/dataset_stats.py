"""Summary of a `dgtr synth` dataset: objects and grasps per split, usable training entries, yield, time.

    python benchmarks/dataset_stats.py [data/dexgraspnet] [--min-grasps 16]

Reads ``splits.json``, the grasp files (``dataset/*.npy`` or the compact ``grasps/*.npy``), ``manifest.json`` and the per-object records in ``done/`` (each holds the
wall seconds its worker spent on it).  "Entries" are (object, scale) pairs; an entry is usable for training when it
holds at least ``--min-grasps`` grasps (the model has 16 queries; configs/bundled.yaml sets train.min_grasps 16).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from dgtr.data import grasp_folder, list_grasp_files, load_grasps, read_splits
from dgtr.synth import category_of


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", default="data/dexgraspnet", type=Path)
    ap.add_argument("--min-grasps", type=int, default=16)
    args = ap.parse_args()
    root = args.root
    splits = read_splits(root)
    manifest = json.loads((root / "manifest.json").read_text())
    records = {p.stem: json.loads(p.read_text()) for p in sorted((root / "done").glob("*.json"))}
    scales = manifest["scales"]
    print(f"{root}: {len(records)} objects done, scales {scales}, seed {manifest['seed']}, "
          f"dgtr {manifest['dgtr_version']}")
    files = list_grasp_files(grasp_folder(root))
    print(f"{'split':<6} {'objects':>7} {'grasps':>7} {'entries':>7} {'usable':>7} {'grasps/entry':>12}  "
          f"(split size: objects listed, done or not)")
    total, cats, nbytes = Counter(), {}, 0
    for name in ("train", "val", "test"):
        codes = [c for c in splits.get(name, []) if c in records and c in files]
        n = entries = usable = 0
        for c in codes:
            g = load_grasps(files[c])
            nbytes += files[c].stat().st_size
            n += len(g)
            cat = cats.setdefault(category_of(c), Counter())
            cat.update(objects=1, grasps=len(g), **{name: 1})
            for s in scales:
                k = len(g.at_scale(s))
                entries += 1
                usable += k >= args.min_grasps
        total.update(objects=len(codes), grasps=n, entries=entries, usable=usable)
        print(f"{name:<6} {len(codes):>7} {n:>7} {entries:>7} {usable:>7} {n / max(1, entries):>12.1f}  "
              f"({len(splits.get(name, []))} listed)")
    print(f"{'all':<6} {total['objects']:>7} {total['grasps']:>7} {total['entries']:>7} {total['usable']:>7}")
    print(f"entries with >= {args.min_grasps} grasps: {total['usable'] / max(1, total['entries']):.1%}; "
          f"storage {nbytes / max(1, total['grasps']):.0f} bytes per grasp (files included headers)")
    print(f"categories: {len(cats)}; largest: " + ", ".join(
        f"{c} {v['objects']} obj/{v['grasps']} grasps (train/val/test {v['train']}/{v['val']}/{v['test']})"
        for c, v in sorted(cats.items(), key=lambda kv: -kv[1]["objects"])[:8]))
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
    cpu = sum(r.get("cpu_seconds", 0.0) for r in records.values())
    if cpu:  # wall time counts waits for a core shared with other jobs; CPU time is what free cores would give
        print(f"worker CPU time {cpu / 3600:.2f} h = {kept / cpu:.2f} validated grasps per CPU-second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
