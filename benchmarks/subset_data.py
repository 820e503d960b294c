"""A small grasp set cut from a bigger one, for overfit diagnostics (docs/training.md, "Overfitting 8 train objects").

    python benchmarks/subset_data.py runs/data_v1 runs/data_tiny8 --train 8 --val 2

DEST gets the first N train objects that have a grasp file, in crc32 order of their codes (a fixed, category-mixed
pick), the first M such val objects in the split's order, their grasp files, a ``splits.json`` listing only them and
SRC's ``manifest.json``.  SRC is a compact grasp set (``grasps/``, ``splits.json``) as ``dgtr synth`` writes it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import zlib
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--train", type=int, default=8)
    ap.add_argument("--val", type=int, default=2)
    a = ap.parse_args(argv)
    splits = a.src / "splits.json"
    if not splits.is_file() or not (a.src / "grasps").is_dir():
        print(f"subset_data: {a.src} has no splits.json and grasps/ (a compact grasp set)", file=sys.stderr)
        return 2
    if a.dest.exists():
        print(f"subset_data: {a.dest} exists; remove it first", file=sys.stderr)
        return 2
    sp = json.loads(splits.read_text())
    have = lambda c: (a.src / "grasps" / f"{c}.npy").is_file()
    train = sorted((c for c in sp["train"] if have(c)), key=lambda c: zlib.crc32(c.encode()))[:a.train]
    val = [c for c in sp["val"] if have(c)][:a.val]
    tmp = a.dest.with_name(a.dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "grasps").mkdir(parents=True)
    for c in train + val:
        shutil.copy(a.src / "grasps" / f"{c}.npy", tmp / "grasps" / f"{c}.npy")
    (tmp / "splits.json").write_text(json.dumps({"train": train, "val": val, "test": []}, indent=1))
    if (a.src / "manifest.json").is_file():
        shutil.copy(a.src / "manifest.json", tmp / "manifest.json")
    tmp.rename(a.dest)
    print(f"wrote {a.dest}: {len(train)} train, {len(val)} val objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
