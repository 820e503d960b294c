"""Benchmark: `dgtr synth` speed, yield and quality on DexGraspNet objects at DexGraspNet's five scales, for the
previous and the current settings, in one run.

    python benchmarks/bench_synth.py [--objects 4] [--workers 2] [--settings old new] [--retest 16] [--json F]

Each setting is a config file (``old`` = configs/synth_v1.yaml, the defaults up to dgtr 0.1's bundled dataset;
``new`` = configs/synth.yaml; or any YAML path) run as ``dgtr synth --source ../shared/dexgraspnet_objects/meshdata
--objects <N objects> --workers W --config <file>`` into a temporary folder. The objects are fixed: the first N codes
of the shared folder ordered by crc32("bench:<code>") (none of them was used to choose the settings).
Printed per setting: validated grasps per wall-clock second, the same from the workers' CPU time (what W free cores
would give), yield per scale, entries with >= 16 grasps; quality of the kept grasps by ``dgtr eval --no-sim``
(Pen., Q1, η_np, η_tb, δt/δr/δq) and a simulation re-test: ``--retest`` evenly spaced grasps per object perturbed
with another seed (benchmarks/sim_recheck.py's perturbation: 1 mm, 1°, 0.02 rad) and simulated again (all six).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dgtr import cli  # noqa: E402
from dgtr.data import grasp_folder, list_grasp_files, load_grasps, save_grasps  # noqa: E402
from dgtr.evaluate import evaluate, select_evenly  # noqa: E402
from sim_recheck import perturbed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "dexgraspnet_objects" / "meshdata"
SETTINGS = {"old": REPO / "configs" / "synth_v1.yaml", "new": REPO / "configs" / "synth.yaml"}


def bench_objects(n: int) -> list[str]:
    codes = sorted(p.name for p in SHARED.iterdir() if (p / "coacd" / "decomposed.obj").is_file())
    return sorted(codes, key=lambda c: zlib.crc32(f"bench:{c}".encode()))[:n]


def run_setting(name: str, cfg: Path, codes: list[str], workers: int, retest: int, tmp: Path) -> dict:
    out = tmp / name
    t0 = time.time()
    rc = cli.main(["synth", "--source", str(SHARED), "--objects", ",".join(codes), "--out", str(out),
                   "--workers", str(workers), "--quiet", "--config", str(cfg)])
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"dgtr synth failed for setting {name} (exit {rc})")
    man = json.loads((out / "manifest.json").read_text())
    objs = list(man["objects"].values())
    kept, opt = man["totals"]["grasps"], man["totals"]["optimised"]
    cpu = sum(o["cpu_seconds"] for o in objs)
    meshes = out / "meshdata" if (out / "meshdata").is_dir() else SHARED
    gdir = grasp_folder(out)
    q = evaluate(gdir, meshes, objects=codes, sim=False, workers=workers, progress=False)["overall"]
    # re-test: perturbed copies of evenly spaced kept grasps, simulated again
    rdir = tmp / f"{name}_retest"
    rdir.mkdir()
    n_re = 0
    for code, f in list_grasp_files(gdir).items():
        g = load_grasps(f)
        if len(g):
            sub = perturbed(g.subset(select_evenly(len(g), retest)), seed=7)
            save_grasps(rdir / f"{code}.npy", sub)
            n_re += len(sub)
    r = evaluate(rdir, meshes, sim=True, workers=workers, progress=False)["overall"] if n_re else {}
    return dict(setting=name, config=str(cfg.relative_to(REPO) if cfg.is_relative_to(REPO) else cfg),
                objects=len(objs), wall_s=round(wall, 1), cpu_s=round(cpu, 1), kept=kept, optimised=opt,
                yield_=round(kept / max(opt, 1), 3), grasps_per_s_wall=round(kept / wall, 3),
                grasps_per_s_cpu=round(kept / (cpu / workers), 3),
                per_scale={s: dict(kept=v["kept"], optimised=v["optimised"], yield_=round(v["yield"], 3))
                           for s, v in man["totals"]["per_scale"].items()},
                entries_16=sum(v["kept"] >= 16 for o in objs for v in o["per_scale"].values()),
                entries=sum(len(o["per_scale"]) for o in objs),
                quality={k: q.get(k) for k in ("n", "pen_cm", "eta_np", "q1", "eta_tb", "delta_t", "delta_r", "delta_q")},
                retest=dict(n=r.get("n", 0), success_all6=r.get("success_all6"), success_any=r.get("success_any")))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=4, help="DexGraspNet objects (default 4)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--settings", nargs="+", default=["old", "new"], help="old, new, or YAML config paths")
    p.add_argument("--retest", type=int, default=16, help="perturbed re-test grasps per object (default 16)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} not found: the benchmark needs the shared DexGraspNet objects")
    codes = bench_objects(args.objects)
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    results = []
    try:
        for s in args.settings:
            results.append(run_setting(s, Path(SETTINGS.get(s, s)), codes, args.workers, args.retest, tmp))
            r = results[-1]
            print(f"[{r['setting']}] {r['kept']} kept in {r['wall_s']:.0f} s wall", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"dgtr synth on {len(codes)} DexGraspNet objects x 5 scales, {args.workers} workers: {', '.join(codes)}")
    cols = [("validated grasps/s (wall)", lambda r: f"{r['grasps_per_s_wall']:.2f}"),
            ("validated grasps/s (CPU time)", lambda r: f"{r['grasps_per_s_cpu']:.2f}"),
            ("kept / optimised", lambda r: f"{r['kept']}/{r['optimised']} ({r['yield_']:.0%})"),
            ("wall / worker CPU s", lambda r: f"{r['wall_s']:.0f} / {r['cpu_s']:.0f}"),
            ("entries with >= 16", lambda r: f"{r['entries_16']}/{r['entries']}")]
    cols += [(f"yield at {s}", (lambda s: lambda r: f"{r['per_scale'][s]['yield_']:.0%}")(s))
             for s in results[0]["per_scale"]]
    cols += [(k, (lambda k: lambda r: "-" if r["quality"][k] is None else f"{r['quality'][k]:.4g}")(k))
             for k in ("pen_cm", "eta_np", "q1", "eta_tb", "delta_t", "delta_r", "delta_q")]
    cols += [("re-test all6 % (perturbed, n)", lambda r: f"{r['retest']['success_all6']:.1f} ({r['retest']['n']})"),
             ("re-test any %", lambda r: f"{r['retest']['success_any']:.1f}")]
    print(f"| {'':32s} | " + " | ".join(f"{r['setting']:>14s}" for r in results) + " |")
    print(f"|{'-' * 34}|" + "|".join("-" * 16 for _ in results) + "|")
    for name, f in cols:
        print(f"| {name:32s} | " + " | ".join(f"{f(r):>14s}" for r in results) + " |")
    if len(results) == 2:
        print(f"speed-up (wall): {results[1]['grasps_per_s_wall'] / max(results[0]['grasps_per_s_wall'], 1e-9):.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(objects=codes, results=results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
