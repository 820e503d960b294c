"""Calibrate the simulation test on real DexGraspNet grasps (docs/evaluation.md).

Evaluates every real grasp in ``--dexgraspnet`` (default ../shared/dexgraspnet) and the same grasps moved 3 cm back
along the palm normal (the palm normal is -y of the palm frame, so back = t + 0.03·R[:, :, 1]), writing
``OUT/real.json``, ``OUT/moved_back.json`` and the moved-back grasp files ``OUT/moved_back/<code>.npy``.
Targets: success_all6 >= 85 % on the real grasps and <= 20 % on the moved-back ones.

    .venv/bin/python benchmarks/calibrate_eval.py --workers 2 --out-dir calib
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dgtr.data import GraspSet, list_grasp_files, load_grasps, save_grasps  # noqa: E402
from dgtr.evaluate import evaluate, format_table  # noqa: E402
from dgtr.files import write_json  # noqa: E402
from dgtr.simulate import SimConfig  # noqa: E402


def write_moved_back(dataset: Path, out: Path, distance: float) -> Path:
    """Copy every grasp file of ``dataset`` to ``out`` with the palm moved ``distance`` m back (+y of the palm)."""
    out.mkdir(parents=True, exist_ok=True)
    for code, f in list_grasp_files(dataset).items():
        g = load_grasps(f)
        moved = GraspSet(g.joints, g.euler, g.translation + distance * g.rotation[:, :, 1], g.scale, g.code, g.extra)
        save_grasps(out / f"{code}.npy", moved)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dexgraspnet", default=str(ROOT.parent / "shared" / "dexgraspnet"))
    p.add_argument("--out-dir", default="calibration")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit-per-object", type=int, default=None)
    p.add_argument("--distance", type=float, default=0.03, help="how far back to move the palm (m)")
    p.add_argument("--timestep", type=float, default=None)
    p.add_argument("--duration", type=float, default=None)
    args = p.parse_args(argv)
    root, out = Path(args.dexgraspnet), Path(args.out_dir)
    cfg = SimConfig(**{k: v for k, v in (("timestep", args.timestep), ("duration", args.duration)) if v})
    back_dir = write_moved_back(root / "dataset", out / "moved_back", args.distance)
    summary = {}
    for name, grasp_dir in (("real", root / "dataset"), ("moved_back", back_dir)):
        t0 = time.time()
        rep = evaluate(grasp_dir, root / "meshdata", limit_per_object=args.limit_per_object, workers=args.workers,
                       sim_config=cfg)
        write_json(out / f"{name}.json", rep)
        print(f"\n== {name} ({time.time() - t0:.0f} s)\n{format_table(rep)}", flush=True)
        o = rep["overall"]
        summary[name] = {k: o[k] for k in ("n", "success_all6", "success_any", "success_by_direction", "pen_cm",
                                           "eta_np", "q1", "q1_raw", "eta_tb", "delta_t", "delta_r", "delta_q")}
        summary[name]["per_object_all6"] = {c: v["success_all6"] for c, v in rep["objects"].items()}
    write_json(out / "summary.json", summary)
    print(json.dumps(summary, indent=1))
    ok = summary["real"]["success_all6"] >= 85 and summary["moved_back"]["success_all6"] <= 20
    print(f"real all6 {summary['real']['success_all6']:.1f}% (target >= 85), moved back all6 "
          f"{summary['moved_back']['success_all6']:.1f}% (target <= 20): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
