"""Results tables (issue 6): `dgtr eval` of ground truth and of DGTR predictions on the test split and real objects.

    python benchmarks/results.py [--spec benchmarks/results.yaml] [--out results/main] [--workers 2] [--no-sim]
                                 [--suites test,real] [--rows "DGTR + AB-TTA,..."]

The spec (YAML) names the suites (a DexGraspNet-layout grasp folder, its meshes, optionally a split and the scales)
and the rows (ground truth; ``top_k_of: <row>`` with ``top_k``: DGTR* as the best k of that row's own grasps, run
after it; or a checkpoint with AB-TTA on/off, top-k and ``overrides``: ``dgtr predict``'s
``key=value`` list, e.g. ``sample.passes=4`` for a comparison method; benchmarks/methods.yaml holds Tables 1 and 2).  Each prediction row predicts every
(object, scale) entry of its suite: every object of the split (or every grasp file) at every scale of the suite
(``scales:``, else the dataset's ``manifest.json`` scales, else the scales its ground truth holds), with or without
ground-truth grasps (prediction needs none); it writes ``<out>/<suite>/<row>/<code>.npy`` and a ``provenance.json``
(checkpoint sha256, effective AB-TTA config) and scores them with ``dgtr.evaluate.evaluate`` (on its own object
samples, never prediction's) into ``metrics.json`` there.  The ground-truth row scores the entries that have grasps.

A finished row is reused only if its record (``row`` in metrics.json: the row's definition, --sim, the checkpoint's
sha256, the effective AB-TTA config, the evaluation's sampling settings, the scales) equals what this run would
compute; otherwise it is redone (the keys that differ are printed), so a killed run resumes and a re-exported
checkpoint or a changed evaluation is never served from the cache; a row that differs only in --sim is re-scored on
its saved predictions.  ``<out>/results.md`` and ``results.json`` gather the rows of this and earlier invocations (a
row run again replaces its entry), next to the paper's DGTR row (Table 1), with the inference time (forward + AB-TTA,
per object and scale, median, this machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import re
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import yaml

from dgtr.data import GraspSet, load_grasps, mesh_path, read_splits, save_grasps
from dgtr.evaluate import PROVENANCE_FILE, evaluate, sampling_config, sha256_file
from dgtr.files import write_json, write_text
from dgtr.objects import list_objects, load_object

PAPER_DGTR = {"q1": 0.0515, "pen_cm": 0.421, "eta_np": 75.78, "eta_tb": 69.62, "success": 41.0,
              "delta_t": 47.77, "delta_r": 51.66, "delta_q": 27.81}
COLUMNS = [("n", "n", "{:d}"), ("q1", "Q1 ↑", "{:.4f}"), ("pen_cm", "Pen. (cm) ↓", "{:.3f}"),
           ("eta_np", "η_np ↑", "{:.2f}"), ("eta_tb", "η_tb ↑", "{:.2f}"), ("success_any", "succ. any ↑", "{:.2f}"),
           ("success_all6", "succ. all6 ↑", "{:.2f}"), ("delta_t", "δt ↑", "{:.2f}"), ("delta_r", "δr ↑", "{:.2f}"),
           ("delta_q", "δq ↑", "{:.2f}"), ("time_ms", "time (ms)", "{:.0f}")]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def suite_objects(suite: dict, root: Path) -> tuple[Path, Path, list[str]]:
    """(grasp folder, mesh folder, object codes): the split's objects that have a mesh (with or without a grasp
    file; only those with one when the suite says ``with_grasps: true``, e.g. a split of a dataset still being
    synthesised), or every grasp file's object when the suite has no split; ``sample: N`` keeps a fixed subset
    (``sample_from: K``: the N after the first K, e.g. objects a first sample never showed)."""
    grasps, meshes = root / suite["grasps"], root / suite["meshes"]
    if not grasps.is_dir() or not meshes.is_dir():
        raise SystemExit(f"suite: {grasps} or {meshes} not found")
    if suite.get("split"):
        file, name = suite["split"].rsplit(":", 1)
        have_mesh = list_objects(str(meshes))
        codes = sorted(c for c in read_splits(root / file)[name] if c in have_mesh)
        if suite.get("with_grasps"):
            codes = [c for c in codes if (grasps / f"{c}.npy").is_file()]
    else:
        codes = sorted(p.stem for p in grasps.glob("*.npy"))
    if suite.get("sample"):  # a fixed, category-mixed subset: N codes in crc32 order, after the first sample_from
        start = int(suite.get("sample_from", 0))
        codes = sorted(sorted(codes, key=lambda c: zlib.crc32(c.encode()))[start:start + int(suite["sample"])])
    return grasps, meshes, codes


def suite_scales(suite: dict, grasps: Path) -> list[float] | None:
    """The suite's scales (every object is predicted at each): ``scales:`` of the spec, else the dataset's
    manifest.json (``dgtr synth`` writes it), else None (each object at the scales its ground truth holds)."""
    if suite.get("scales"):
        return [float(s) for s in suite["scales"]]
    manifest = grasps.parent / "manifest.json"
    if manifest.is_file():
        scales = json.loads(manifest.read_text()).get("scales")
        if scales:
            return [float(s) for s in scales]
    return None


def object_scales(code: str, grasps: Path, scales: list[float] | None) -> list[float]:
    if scales is not None:
        return sorted(round(s, 6) for s in scales)
    f = grasps / f"{code}.npy"
    return sorted({round(float(s), 6) for s in load_grasps(f).scale}) if f.is_file() else []


LATER_TTA_FIELDS = {"pen_margin": 0.0}  # TTAConfig fields added after rows were recorded, with their defaults


def tta_record(cfg) -> dict:
    """An AB-TTA config as rows record it: its fields, less those added later while at their default (so that the
    rows recorded before them stay valid)."""
    rec = dataclasses.asdict(cfg)
    for key, default in LATER_TTA_FIELDS.items():
        if key in rec and rec[key] == default:
            del rec[key]
    return rec


def load_predictor(row: dict, root: Path):
    """The row's predictor with its AB-TTA overrides applied, and its provenance record (checkpoint sha256, the
    effective AB-TTA config; JSON-normalised so that it compares equal to a record read back)."""
    import dgtr
    from dgtr.predict import DEFAULT_CHECKPOINT

    ckpt = row["checkpoint"]
    path = DEFAULT_CHECKPOINT if ckpt == "default" else root / ckpt
    if not path.is_file():
        raise SystemExit(f"row {row['name']!r}: checkpoint {path} not found (train it; see the spec's comments)")
    predictor = dgtr.load(path)
    if row.get("overrides"):  # ["tta.tau=0.02", ...]; a method's "refine.*" / "sample.*" (dgtr predict's form)
        predictor.set_overrides(list(row["overrides"]))
    # replace() rejects an unknown key in the spec, check() a bad value
    predictor.tta_config = dataclasses.replace(predictor.tta_config, **(row.get("tta_overrides") or {}))
    if hasattr(predictor.tta_config, "check"):
        predictor.tta_config.check()
    prov = {"checkpoint": str(ckpt), "checkpoint_sha256": sha256_file(path), "tta": bool(row.get("tta", True)),
            "tta_config": tta_record(predictor.tta_config) if row.get("tta", True) else None,
            "top_k": row.get("top_k")}
    if getattr(predictor, "method", None):  # a comparison method: what it samples, and how
        prov.update(method=predictor.method, sample_config=dataclasses.asdict(predictor.sample_config))
    return predictor, json.loads(json.dumps(prov))


def predict_row(row: dict, predictor, grasps: Path, meshes: Path, codes: list[str], scales, out: Path) -> list[float]:
    """Predict every object at every scale (``object_scales``); returns the per-(object, scale) inference times (s)."""
    times = []
    for code in codes:
        base = load_object(mesh_path(meshes, code), code=code)
        sets = []
        for s in object_scales(code, grasps, scales):
            pts, obj, _ = predictor.prepare(base, s, code)
            t0 = time.perf_counter()
            sets.append(predictor.predict_points(pts, obj, s, code, tta=row.get("tta", True), top_k=row.get("top_k")))
            times.append(time.perf_counter() - t0)
        save_grasps(out / f"{code}.npy", GraspSet.concat(sets))
        print(f"  {code}: {len(sets)} scales, {sum(len(g) for g in sets)} grasps", flush=True)
    return times


def top_k_of(src: Path, codes: list[str], k: int, out: Path, rank: str = "contacts", meshes: Path | None = None) -> None:
    """DGTR* from another row's grasps: per (object, scale) entry the ``k`` best of ``src``'s by
    ``dgtr.predict.rank_grasps`` (rank 'contacts', the paper's rule, from the scores its files carry; rank 'q1':
    ``metrics.q1`` on the object's mesh at that scale, as ``dgtr predict --rank q1`` computes it); written to ``out``."""
    from dgtr.hand import get_hand
    from dgtr.metrics import q1 as q1_of
    from dgtr.predict import rank_grasps

    for code in codes:
        g = load_grasps(src / f"{code}.npy")
        base = load_object(mesh_path(meshes, code), code=code) if rank == "q1" else None
        keep = []
        for s in np.unique(g.scale):
            idx = np.flatnonzero(g.scale == s)
            sc = {key: g.extra[key][idx] for key in ("penetration", "contact_points")}
            q1 = None
            if rank == "q1":
                sub = g.subset(idx)
                q1 = q1_of(get_hand(), base.with_scale(float(s)), sub.rotation, sub.translation, sub.joints)
            keep.append(idx[rank_grasps(sc, k, rank, q1)])
        save_grasps(out / f"{code}.npy", g.subset(np.concatenate(keep)))


def run_row(row: dict, suite_name: str, suite: dict, args, root: Path) -> dict:
    out = Path(args.out) / suite_name / slug(row["name"])
    report_path = out / "metrics.json"
    grasps, meshes, codes = suite_objects(suite, root)
    scales = suite_scales(suite, grasps)
    predictor = None
    if row.get("top_k_of"):  # the top k of another row's grasps: that row's record stands for how they were made
        src = Path(args.out) / suite_name / slug(row["top_k_of"])
        try:
            src_row = json.loads((src / "metrics.json").read_text())["row"]
        except (OSError, ValueError, KeyError):
            raise SystemExit(f"row {row['name']!r}: run the row {row['top_k_of']!r} of suite {suite_name} first "
                             f"({src / 'metrics.json'} not found)") from None
        prov = dict(src_row["provenance"], top_k=int(row["top_k"]), top_k_of=row["top_k_of"],
                    top_k_of_report=sha256_file(src / "metrics.json"))   # a redone source row is a new row
        if row.get("rank", "contacts") != "contacts":   # (the contact rule is what earlier rows were ranked by)
            prov["rank"] = row["rank"]
    elif row.get("checkpoint"):
        predictor, prov = load_predictor(row, root)
    else:  # the ground truth: a regenerated dataset is a new row
        files = [grasps / f"{c}.npy" for c in codes if (grasps / f"{c}.npy").is_file()]
        prov = {"ground_truth": str(suite["grasps"]),
                "grasps_sha256": hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()}
    # everything the numbers depend on (besides the code): a cached row with another record is recomputed
    record = json.loads(json.dumps(dict(row, suite=suite_name, sim=args.sim, provenance=prov,
                                        sampling=sampling_config(), scales=scales, objects=codes)))
    reuse = None  # a row scored before without (or with) simulation keeps its predictions: they do not depend on it
    if report_path.exists():
        old = json.loads(report_path.read_text()).get("row", {})
        differ = sorted(k for k in set(record) | set(old) if k not in ("wall_s", "time_ms")
                        and old.get(k) != record.get(k))
        if not differ:
            return json.loads(report_path.read_text())
        print(f"[{suite_name}] {row['name']}: recomputing ({', '.join(differ)} changed)", flush=True)
        if differ == ["sim"] and predictor is not None and all((out / f"{c}.npy").is_file() for c in codes):
            reuse = old
    print(f"[{suite_name}] {row['name']}: {len(codes)} objects", flush=True)
    t0 = time.time()
    times = []
    if row.get("top_k_of"):
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / PROVENANCE_FILE, prov)
        top_k_of(src, codes, int(row["top_k"]), out, row.get("rank", "contacts"), meshes)
        grasp_dir, objects = out, codes
    elif reuse is not None:
        print(f"[{suite_name}] {row['name']}: scoring its earlier predictions", flush=True)
        times = [reuse["time_ms"] / 1e3] if reuse.get("time_ms") is not None else []
        grasp_dir, objects = out, codes
    elif predictor is not None:
        out.mkdir(parents=True, exist_ok=True)
        for f in out.glob("*.npy"):  # predictions of a former run (e.g. an object no longer in the split)
            f.unlink()
        write_json(out / PROVENANCE_FILE, prov)
        times = predict_row(row, predictor, grasps, meshes, codes, scales, out)
        grasp_dir, objects = out, codes
    else:  # the entries that have ground truth
        grasp_dir, objects = grasps, [c for c in codes if (grasps / f"{c}.npy").is_file()]
    report = evaluate(grasp_dir, meshes, objects=objects, sim=args.sim, workers=args.workers, progress=False,
                      provenance=prov)
    if row.get("top_k_of"):  # the grasps are the source row's: so is their time
        times = [src_row["time_ms"] / 1e3] if src_row.get("time_ms") is not None else []
    report["row"] = dict(record, wall_s=round(time.time() - t0, 1),
                         time_ms=round(1e3 * statistics.median(times), 1) if times else None)
    write_json(report_path, report)
    return report


def pick_rows(rows: list[dict], arg: str, spec: str) -> list[dict]:
    """The rows named in ``arg``, comma-separated; a name may itself hold commas ("DGTR* (AB-TTA, top 4)")."""
    names, want, cur = [r["name"] for r in rows], set(), ""
    for part in arg.split(","):
        cur = f"{cur},{part}" if cur else part
        if cur.strip() in names:
            want.add(cur.strip())
            cur = ""
    if cur.strip():
        raise SystemExit(f"--rows: no row named {cur.strip()!r} in {spec}")
    return [r for r in rows if r["name"] in want]


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
    rows = spec["rows"] if not args.rows else pick_rows(spec["rows"], args.rows, args.spec)
    # results.json/.md keep the rows of earlier invocations (other suites, other rows) next to this one's
    try:
        results = json.loads((Path(args.out) / "results.json").read_text())
    except (OSError, ValueError):
        results = {}
    md = [f"Generated by `python benchmarks/results.py --spec {args.spec} --out {args.out}` on "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.workers} eval workers.  Time: forward + AB-TTA per object and scale, median, 1 thread."]
    for sname, suite in suites.items():
        for row in rows:
            if row.get("suites") and sname not in row["suites"]:
                continue
            rep = run_row(row, sname, suite, args, root)
            results.setdefault(sname, {})[row["name"]] = dict(rep["overall"], time_ms=rep["row"].get("time_ms"))
    order = {r["name"]: i for i, r in enumerate(spec["rows"])}
    for sname, got in results.items():
        # the paper's one success figure is "holds under any one of six directions" (its text): the any column only
        paper = dict(PAPER_DGTR, success_any=PAPER_DGTR["success"])
        title = spec["suites"].get(sname, {}).get("title", sname)
        ranked = sorted(got.items(), key=lambda kv: order.get(kv[0], len(order)))
        md += ["", f"### {title}", "", table(ranked + [("paper DGTR (Table 1, DexGraspNet test)", paper)])]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_text(Path(args.out) / "results.md", "\n".join(md) + "\n")
    write_json(Path(args.out) / "results.json", results)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
