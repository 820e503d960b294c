"""Results tables (issue 6): `dgtr eval` of ground truth and of DGTR predictions on the test split and real objects.

    python benchmarks/results.py [--spec benchmarks/results.yaml] [--out results/main] [--workers 2] [--no-sim]
                                 [--suites test,real] [--rows "DGTR + AB-TTA,..."]

The spec (YAML) names the suites (a DexGraspNet-layout grasp folder, its meshes and optionally a split) and the rows
(ground truth, or a checkpoint with AB-TTA on/off and top-k).  Each row of each suite predicts, for every object, at
every scale its ground truth holds (the reference's protocol), writes ``<out>/<suite>/<row>/<code>.npy`` and evaluates
it with ``dgtr.evaluate.evaluate`` into ``metrics.json`` there.  Finished rows are skipped (delete the folder to redo
one; rows scored with a different --sim/--no-sim or defined differently are redone), so a killed run resumes.  ``<out>/results.md`` and ``results.json`` gather every finished row, next to the
paper's DGTR row (Table 1), with the inference time (forward + AB-TTA, per object and scale, median, this machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from dgtr.data import GraspSet, load_grasps, mesh_path, read_splits, save_grasps
from dgtr.evaluate import evaluate, write_json_atomic
from dgtr.objects import load_object

PAPER_DGTR = {"q1": 0.0515, "pen_cm": 0.421, "eta_np": 75.78, "eta_tb": 69.62, "success": 41.0,
              "delta_t": 47.77, "delta_r": 51.66, "delta_q": 27.81}
COLUMNS = [("n", "n", "{:d}"), ("q1", "Q1 ↑", "{:.4f}"), ("pen_cm", "Pen. (cm) ↓", "{:.3f}"),
           ("eta_np", "η_np ↑", "{:.2f}"), ("eta_tb", "η_tb ↑", "{:.2f}"), ("success_any", "succ. any ↑", "{:.2f}"),
           ("success_all6", "succ. all6 ↑", "{:.2f}"), ("delta_t", "δt ↑", "{:.2f}"), ("delta_r", "δr ↑", "{:.2f}"),
           ("delta_q", "δq ↑", "{:.2f}"), ("time_ms", "time (ms)", "{:.0f}")]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def suite_objects(suite: dict, root: Path) -> tuple[Path, Path, list[str]]:
    grasps, meshes = root / suite["grasps"], root / suite["meshes"]
    if not grasps.is_dir() or not meshes.is_dir():
        raise SystemExit(f"suite: {grasps} or {meshes} not found")
    codes = sorted(p.stem for p in grasps.glob("*.npy"))
    if suite.get("split"):
        file, name = suite["split"].rsplit(":", 1)
        keep = set(read_splits(root / file)[name])
        codes = [c for c in codes if c in keep]
    return grasps, meshes, codes


def predict_row(row: dict, grasps: Path, meshes: Path, codes: list[str], out: Path, root: Path) -> list[float]:
    """Predict every object at its ground-truth scales; returns the per-(object, scale) inference times (s)."""
    import dgtr

    ckpt = row["checkpoint"]
    predictor = dgtr.load(ckpt if ckpt == "default" else root / ckpt)
    # replace() rejects an unknown key in the spec, check() a bad value
    predictor.tta_config = dataclasses.replace(predictor.tta_config, **(row.get("tta_overrides") or {}))
    predictor.tta_config.check()
    times = []
    for code in codes:
        scales = sorted({round(float(s), 6) for s in load_grasps(grasps / f"{code}.npy").scale})
        base = load_object(mesh_path(meshes, code), code=code)
        sets = []
        for s in scales:
            pts, obj, _ = predictor.prepare(base, s, code)
            t0 = time.perf_counter()
            sets.append(predictor.predict_points(pts, obj, s, code, tta=row.get("tta", True), top_k=row.get("top_k")))
            times.append(time.perf_counter() - t0)
        save_grasps(out / f"{code}.npy", GraspSet.concat(sets))
        print(f"  {code}: {len(scales)} scales, {sum(len(g) for g in sets)} grasps", flush=True)
    return times


def run_row(row: dict, suite_name: str, suite: dict, args, root: Path) -> dict:
    out = Path(args.out) / suite_name / slug(row["name"])
    report_path = out / "metrics.json"
    if report_path.exists():
        old = json.loads(report_path.read_text())
        # redo a row whose definition changed (e.g. its AB-TTA overrides); a checkpoint re-exported under the same
        # path is not detected: delete the row's folder then
        if old["row"].get("sim") == args.sim and all(old["row"].get(k) == v for k, v in row.items()):
            return old
    grasps, meshes, codes = suite_objects(suite, root)
    print(f"[{suite_name}] {row['name']}: {len(codes)} objects", flush=True)
    t0 = time.time()
    times = []
    if row.get("checkpoint"):
        out.mkdir(parents=True, exist_ok=True)
        times = predict_row(row, grasps, meshes, codes, out, root)
        grasp_dir = out
    else:
        grasp_dir = grasps
    report = evaluate(grasp_dir, meshes, objects=codes, sim=args.sim, workers=args.workers, progress=False)
    report["row"] = dict(row, suite=suite_name, sim=args.sim, wall_s=round(time.time() - t0, 1),
                         time_ms=round(1e3 * statistics.median(times), 1) if times else None)
    write_json_atomic(report_path, report)
    return report


def table(rows: list[tuple[str, dict]]) -> str:
    head = "| row | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, o in rows:
        cells = ["-" if o.get(k) is None else f.format(o[k]) for k, _, f in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default="benchmarks/results.yaml")
    ap.add_argument("--out", default="results/main")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sim", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--suites", default=None, help="comma-separated suite names (default: all in the spec)")
    ap.add_argument("--rows", default=None, help="comma-separated row names (default: all in the spec)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path.cwd()
    spec = yaml.safe_load(Path(args.spec).read_text())
    suites = {k: v for k, v in spec["suites"].items() if not args.suites or k in args.suites.split(",")}
    rows = [r for r in spec["rows"] if not args.rows or r["name"] in args.rows.split(",")]
    results, md = {}, [f"Generated by `python benchmarks/results.py --spec {args.spec} --out {args.out}` on "
                       f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                       f"{args.workers} eval workers.  Time: forward + AB-TTA per object and scale, median, 1 thread."]
    for sname, suite in suites.items():
        got = []
        for row in rows:
            if row.get("suites") and sname not in row["suites"]:
                continue
            rep = run_row(row, sname, suite, args, root)
            o = dict(rep["overall"], time_ms=rep["row"].get("time_ms"))
            got.append((row["name"], o))
            results.setdefault(sname, {})[row["name"]] = o
        paper = dict(PAPER_DGTR, success_any=PAPER_DGTR["success"], success_all6=PAPER_DGTR["success"])  # one success column in the paper
        md += ["", f"### {suite.get('title', sname)}", "", table(got + [("paper DGTR (Table 1, DexGraspNet test)",
                                                                           paper)])]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.md").write_text("\n".join(md) + "\n")
    write_json_atomic(Path(args.out) / "results.json", results)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
