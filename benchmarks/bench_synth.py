"""Benchmark: `dgtr synth` speed and yield on pybullet random objects at DexGraspNet's scales.

    python benchmarks/bench_synth.py [--limit 20] [--workers 2] [--out DIR] [key=value config overrides]

Runs ``dgtr synth --source pybullet:random --limit N --workers W`` into a fresh folder (a temporary one unless
``--out``) and prints validated grasps per second (wall clock), the same rate computed from the workers' CPU time (what
W free cores would give: this machine is often shared), and the yield (kept / optimised) per scale.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dgtr import cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=20, help="pybullet random objects (default 20)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", help="output folder (default: a temporary folder, deleted afterwards)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_synth_"))
    if args.out and out.exists():
        raise SystemExit(f"{out} exists: the benchmark needs a fresh folder")
    try:
        t0 = time.time()
        rc = cli.main(["synth", "--source", "pybullet:random", "--limit", str(args.limit), "--out", str(out),
                       "--workers", str(args.workers), "--quiet", *args.overrides])
        wall = time.time() - t0
        if rc != 0:
            return rc
        man = json.loads((out / "manifest.json").read_text())
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    objs = man["objects"].values()
    kept, opt = man["totals"]["grasps"], man["totals"]["optimised"]
    cpu = sum(o["cpu_seconds"] for o in objs)
    res = dict(objects=len(man["objects"]), workers=args.workers, wall_s=round(wall, 1), cpu_s=round(cpu, 1),
               kept=kept, optimised=opt, yield_=round(kept / max(opt, 1), 3),
               grasps_per_s_wall=round(kept / wall, 3), grasps_per_s_cpu=round(kept / (cpu / args.workers), 3),
               per_scale={s: dict(kept=v["kept"], optimised=v["optimised"], yield_=round(v["yield"], 3))
                          for s, v in man["totals"]["per_scale"].items()},
               min_per_entry=min(v["kept"] for o in objs for v in o["per_scale"].values()),
               overrides=args.overrides)
    print(f"dgtr synth on {res['objects']} pybullet random objects, {args.workers} workers")
    print(f"  wall {wall:.0f} s, worker CPU {cpu:.0f} s; kept {kept} of {opt} optimised (yield {res['yield_']:.1%})")
    print(f"  validated grasps/s: {res['grasps_per_s_wall']:.2f} (wall clock), "
          f"{res['grasps_per_s_cpu']:.2f} (from CPU time: {args.workers} free cores)")
    print("  scale  kept/optimised  yield")
    for s, v in res["per_scale"].items():
        print(f"  {float(s):5.2f}  {v['kept']:5d}/{v['optimised']:<6d}  {v['yield_']:.1%}")
    print(f"  fewest grasps in one (object, scale) entry: {res['min_per_entry']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
