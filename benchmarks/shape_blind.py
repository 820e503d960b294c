"""Shape-blind control (issue 14 item 3): does the network read the object's shape, or does AB-TTA do the grasping?

    python benchmarks/shape_blind.py [--checkpoint default] [--spec benchmarks/results.yaml] [--suite test]
                                     [--out results/shape_blind] [--workers 2] [--no-sim] [--limit N]
                                     [--object-from RESULTS_ROW_DIR]

Two rows on the same objects and scales (the suite's, as ``benchmarks/results.py`` predicts them), both with the
checkpoint's shipped AB-TTA on the real object:
- **real**: the network sees the object's cloud (what ``dgtr predict`` does);
- **sphere**: the network sees a sphere instead, centred where the object's cloud is centred (the network frame's
  origin), its radius the mean distance of the object's points from that centre, with as many points, evenly spread
  (a Fibonacci lattice: no randomness).  AB-TTA and the scores then use the real object.
If the network read shape, *sphere* trails *real* by a wide margin (the target: ≥ 25 points of success in all six
directions).  Scored by ``dgtr.evaluate.evaluate`` (its own object samples); ``<out>/results.md`` holds the table.
Resumable: a row whose ``metrics.json`` exists with the same checkpoint sha256 and settings is reused.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

import dgtr
from dgtr.data import GraspSet, mesh_path, save_grasps
from dgtr.evaluate import evaluate
from dgtr.files import write_json, write_text
from dgtr.objects import load_object

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import object_scales, suite_objects, suite_scales, table, tta_record  # noqa: E402


def sphere_like(points: torch.Tensor) -> torch.Tensor:
    """points (N, 3) centred on the origin → (N, 3) an evenly spread sphere of their mean radius about the origin."""
    n = points.shape[0]
    r = points.norm(dim=-1).mean()
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))                        # golden angle
    rho = (1 - z ** 2).sqrt()
    return (torch.stack([rho * phi.cos(), rho * phi.sin(), z], -1) * r).to(points.dtype)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def results_row(folder: Path, ckpt_sha: str, tta: dict, codes: list[str], scales, sim: bool) -> dict | None:
    """The report of a ``benchmarks/results.py`` row folder that predicted what the *object* row would (same
    checkpoint, AB-TTA config, objects, scales, simulation; all 16 grasps), else None."""
    try:
        report = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    row = report.get("row", {})
    prov = row.get("provenance", {})
    same = (prov.get("checkpoint_sha256") == ckpt_sha and prov.get("tta") and prov.get("top_k") is None
            and prov.get("tta_config") == json.loads(json.dumps(tta)) and row.get("objects") == codes
            and row.get("sim") == sim and row.get("scales") == (None if scales is None else list(scales)))
    return report if same else None


def run(kind: str, predictor, ckpt_sha: str, suite: dict, args) -> dict:
    out = Path(args.out) / args.suite / kind
    grasps, meshes, codes = suite_objects(suite, Path.cwd())
    codes = codes[:args.limit] if args.limit else codes
    scales = suite_scales(suite, grasps)
    key = {"kind": kind, "checkpoint_sha256": ckpt_sha, "tta": tta_record(predictor.tta_config), "sim": args.sim,
           "suite": suite, "limit": args.limit, "scales": scales}
    report_path = out / "metrics.json"
    if report_path.exists():
        old = json.loads(report_path.read_text())
        if old.get("row") and {k: old["row"].get(k) for k in key} == key:
            return old
    if kind == "object" and args.object_from:
        report = results_row(Path(args.object_from), ckpt_sha, key["tta"], codes, scales, args.sim)
        if report is None:
            raise SystemExit(f"--object-from {args.object_from}: not a finished results.py row of this checkpoint, "
                             "AB-TTA setting, objects, scales and --sim")
        print(f"[{args.suite}] object: the results.py row {args.object_from}", flush=True)
        return report
    print(f"[{args.suite}] {kind}: {len(codes)} objects", flush=True)
    times = []
    for code in codes:
        base = load_object(mesh_path(meshes, code), code=code)
        sets = []
        for s in object_scales(code, grasps, scales):
            inp = predictor.to_network(base, s, code)
            seen = sphere_like(inp.points) if kind == "sphere" else None
            t0 = time.perf_counter()
            sets.append(predictor.predict(inp, tta=True, network_points=seen))
            times.append(time.perf_counter() - t0)
        save_grasps(out / f"{code}.npy", GraspSet.concat(sets))
    report = evaluate(out, meshes, objects=codes, sim=args.sim, workers=args.workers, progress=False)
    report["row"] = dict(key, time_ms=round(1e3 * statistics.median(times), 1))
    write_json(report_path, report)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--spec", default="benchmarks/results.yaml")
    ap.add_argument("--suite", default="test", help="a suite of --spec (default: test)")
    ap.add_argument("--out", default="results/shape_blind")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first N objects of the suite (a smoke run)")
    ap.add_argument("--sim", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--object-from", help="a benchmarks/results.py row folder (<out>/<suite>/<row>) of the same "
                                          "checkpoint and AB-TTA: its report is the object row (not predicted again)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    suites = yaml.safe_load(Path(args.spec).read_text())["suites"]
    if args.suite not in suites:
        raise SystemExit(f"--suite: {args.suite!r} is not in {args.spec} (choose from {sorted(suites)})")
    predictor = dgtr.load(args.checkpoint)
    ckpt_sha = sha256(Path(predictor.source))
    # the sphere row first: with --object-from, the results.py row may still be running beside it
    reports = {k: run(k, predictor, ckpt_sha, suites[args.suite], args) for k in ("sphere", "object")}
    got = [(f"network sees the {k}, AB-TTA on the object", reports[k]["overall"]) for k in ("object", "sphere")]
    gap = got[0][1].get("success_all6", 0) - got[1][1].get("success_all6", 0)
    md = [f"Generated by `python benchmarks/shape_blind.py --checkpoint {args.checkpoint} --spec {args.spec} "
          f"--suite {args.suite} --out {args.out}` "
          f"(checkpoint sha256 {ckpt_sha[:12]}, {'with' if args.sim else 'without'} simulation).", "",
          table(got), "", f"Success in all six directions: object − sphere = {gap:+.1f} points."]
    write_text(Path(args.out) / args.suite / "results.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
