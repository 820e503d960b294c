"""``dgtr eval``: the paper's metrics (Table 1) and the MuJoCo success test over a folder of grasp files.

GRASP_DIR holds DexGraspNet grasp files ``<code>.npy`` (or a ``dataset/`` folder with them); ``--meshes`` a DexGraspNet
``meshdata/`` folder or a folder of ``<code>.<ext>`` meshes. Work is split into chunks of grasps of one object and
scale and farmed out to ``--workers`` processes; each chunk is computed the same way whichever process runs it, so
results depend only on the inputs and ``--seed``.

Independent scoring (DESIGN.md §5): the object surface samples of the Pen. metric come from a seed stream of their own
(``eval_seed``: per object, never a seed that prediction, AB-TTA or DGTR*'s ranking samples with), so no grasp is
scored on the points it was optimised or ranked on.

Output (JSON, written atomically): ``overall`` and per-object means and counts, per-grasp values, the grasps that
could not be scored or simulated (``errors``: non-finite, unstable) and the configuration. Units: Pen. in cm;
η_np, η_tb, success and δ in %; Q1 unitless. See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from .errors import DgtrError, FileFormatError, InputError, MissingFileError
from .files import write_json

__all__ = ["evaluate", "summarize", "format_table", "add_eval_args", "run_eval", "select_evenly", "eval_seed",
           "eval_points", "sampling_config", "sha256_file", "read_provenance", "PROVENANCE_FILE"]

CHUNK = 8            # grasps per work item: ~3 s of simulation, small enough to balance 2-16 workers
EVAL_POINTS = 4096   # Pen. samples per object (the paper's 4096): a setting of its own, not the model's n_points
# Evaluation seeds start at 2**20: prediction, AB-TTA and the DGTR* ranking sample objects with seed 0 (topped up
# with 0 + 7919 k, k < 8) and the object k-d tree with 12345, all below it, so no eval sample is one of theirs.
EVAL_SEED_OFFSET = 1 << 20
SEED_RULE = "2**20 + crc32('<code>:<seed>') % 2**30"
SCALE_ATOL = 1e-4    # DexGraspNet stores scales as float32
PROVENANCE_FILE = "provenance.json"  # beside predicted grasp files: checkpoint sha256, AB-TTA config (copied in)


def eval_seed(code: str, seed: int = 0) -> int:
    """Seed of the Pen. surface samples of object ``code`` (``SEED_RULE``): its own stream per object and ``seed``."""
    return EVAL_SEED_OFFSET + zlib.crc32(f"{code}:{int(seed)}".encode()) % (1 << 30)


def eval_points(obj, code: str, seed: int = 0) -> np.ndarray:
    """The evaluation's surface samples of an ObjectModel: (EVAL_POINTS, 3) float32 at the object's scale."""
    return obj.sample_points(EVAL_POINTS, seed=eval_seed(code, seed))


def sampling_config(seed: int = 0) -> dict:
    """How the Pen. samples were drawn (recorded in every report; benchmarks/results.py redoes rows that differ)."""
    return {"points": EVAL_POINTS, "seed": int(seed), "seed_rule": SEED_RULE, "fps": True}


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes (checkpoints are 15 MB: read in 1 MB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_provenance(folder) -> dict | None:
    """``PROVENANCE_FILE`` of a grasp folder (what made the grasps: checkpoint sha256, AB-TTA config), or None."""
    f = Path(folder) / PROVENANCE_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{f}: not JSON ({e})") from None


# ------------------------------------------------------------------------------------------------ per-chunk work
# per process: mesh path -> loaded object, its unit-scale surface samples, scaled copies, simulators
_CACHE: dict = {}


def _object(path: str, code: str, scale: float, seed: int) -> dict:
    """ObjectModel at ``scale``, its EVAL_POINTS surface samples (m, drawn with ``eval_seed(code, seed)``) and a
    simulator slot, cached per process. Scaled copies share the loaded geometry (k-d tree, samples), so each mesh is
    loaded and sampled once per process."""
    import torch

    from .objects import load_object

    if path not in _CACHE:
        if len(_CACHE) >= 4:  # keep memory bounded when a process walks through many objects
            _CACHE.clear()
        _CACHE[path] = {"obj": load_object(path, normalize=False, scale=1.0, code=code), "points": {}, "scaled": {}}
    entry = _CACHE[path]
    if seed not in entry["points"]:
        entry["points"][seed] = torch.as_tensor(eval_points(entry["obj"], code, seed), dtype=torch.float64)
    key = round(scale, 6)
    if key not in entry["scaled"]:
        entry["scaled"][key] = {"obj": entry["obj"].with_scale(scale), "sim": {}}
    return {"obj": entry["scaled"][key]["obj"], "points": entry["points"][seed] * scale,
            "sim": entry["scaled"][key]["sim"]}


def _evaluate_chunk(task: dict) -> dict:
    """Metrics (+ simulation) of one chunk of grasps of one object and scale. Never raises on bad grasps:
    non-finite ones get ``error`` and count as failures."""
    import torch

    from . import metrics
    from .hand import get_hand
    from .simulate import GraspSimulator, SimConfig

    hand = get_hand(dtype=torch.float64)
    entry = _object(task["path"], task["code"], task["scale"], task["seed"])
    rot, t, q = (np.asarray(task[k], dtype=np.float64) for k in ("rot", "t", "q"))
    n = len(rot)
    ok = np.isfinite(rot).all((1, 2)) & np.isfinite(t).all(1) & np.isfinite(q).all(1)
    depth, q1 = np.full(n, np.nan), np.zeros(n)
    if ok.any():
        R, T, Q = (torch.as_tensor(x[ok]) for x in (rot, t, q))
        depth[ok] = metrics.penetration_depth(hand, entry["points"], R, T, Q)
        q1[ok] = metrics.q1(hand, entry["obj"], R, T, Q)
    out = {"id": task["id"], "depth": depth, "q1": q1, "errors": {i: "non-finite grasp" for i in np.flatnonzero(~ok)}}
    if task["sim"]:
        cfg = SimConfig(**task["sim_config"])
        key = tuple(sorted(task["sim_config"].items()))
        if key not in entry["sim"]:
            entry["sim"][key] = GraspSimulator(hand, entry["obj"], cfg)
        sim = entry["sim"][key]
        res = [sim.run(rot[i], t[i], q[i]) for i in range(n)]
        out["displacement"] = np.array([r.displacement for r in res]).reshape(n, 6)
        out["success"] = np.array([r.success for r in res]).reshape(n, 6)
        out["errors"].update({i: r.error for i, r in enumerate(res) if r.error and i not in out["errors"]})
    return out


def _init_worker():
    import torch

    torch.set_num_threads(1)  # one process per core: intra-op threads would only oversubscribe


# --------------------------------------------------------------------------------------------------- selection
def select_evenly(m: int, limit: int | None) -> np.ndarray:
    """Indices of ``limit`` of ``m`` items, evenly spaced, first and last included (all when limit is None/≥ m)."""
    if limit is None or limit >= m:
        return np.arange(m)
    if limit <= 0:
        raise InputError(f"--limit-per-object: must be positive, got {limit}")
    return np.unique(np.linspace(0, m - 1, limit).round().astype(int))


def _scale_groups(scale: np.ndarray) -> list[np.ndarray]:
    """Positions of grasps sharing a scale (within SCALE_ATOL), in order of first appearance of each scale."""
    groups: list[tuple[float, list[int]]] = []
    for i, s in enumerate(scale):
        for s0, members in groups:
            if abs(s - s0) <= SCALE_ATOL:
                members.append(i)
                break
        else:
            groups.append((float(s), [i]))
    return [np.array(members) for _, members in groups]


def _find_grasp_files(grasp_dir: Path) -> dict[str, Path]:
    from .data import list_grasp_files

    files = list_grasp_files(grasp_dir)
    if not files and (grasp_dir / "dataset").is_dir():
        files = list_grasp_files(grasp_dir / "dataset")
    if not files:
        raise MissingFileError(f"no <code>.npy grasp files in {grasp_dir}")
    return files


# -------------------------------------------------------------------------------------------------- evaluation
def evaluate(grasp_dir, meshes, objects: list[str] | None = None, limit_per_object: int | None = None,
             sim: bool = True, group: int = 16, workers: int = 1, seed: int = 0, sim_config=None,
             progress: bool = True, provenance: dict | None = None) -> dict:
    """Evaluate every grasp file in ``grasp_dir`` against the meshes in ``meshes``; returns the JSON-able report.

    objects: codes to keep (default all); limit_per_object: evenly spaced subset per object; group: diversity group
    size (grasps of one object and scale); seed: of the Pen. samples (``eval_seed``); sim_config: ``SimConfig``
    (default DESIGN §6 physics); provenance: what made the grasps (checkpoint sha256, AB-TTA config), recorded as
    is (default: the grasp folder's ``PROVENANCE_FILE``, if any).
    """
    import torch
    from tqdm import tqdm

    from .hand import get_hand
    from .objects import list_objects
    from .simulate import SimConfig

    sim_config = sim_config or SimConfig()
    if group < 1:
        raise InputError(f"--group: must be >= 1, got {group}")
    if workers < 1:
        raise InputError(f"--workers: must be >= 1, got {workers}")
    grasp_dir = Path(grasp_dir)
    files = _find_grasp_files(grasp_dir)
    if provenance is None:
        provenance = read_provenance(next(iter(files.values())).parent)
    if objects:
        unknown = [c for c in objects if c not in files]
        if unknown:
            raise MissingFileError(f"no grasp file for object(s) {unknown} in {grasp_dir}")
        files = {c: files[c] for c in objects}
    mesh_files = list_objects(str(meshes))
    missing = [c for c in files if c not in mesh_files]
    if missing:
        raise MissingFileError(f"no mesh for object {missing[0]!r} in {meshes}"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    # ---- work items: chunks of grasps of one object and scale
    per_object, tasks = {}, []
    for code, f in files.items():
        g = _load_checked(f)
        idx = select_evenly(len(g), limit_per_object)
        g = g.subset(idx)
        rot, t, q = g.rotation.numpy(), g.translation.numpy(), g.joints.numpy()
        scale = g.scale.numpy()
        per_object[code] = {"index": idx, "scale": scale, "rot": rot, "t": t, "q": q, "chunks": []}
        for members in _scale_groups(scale):
            for s in range(0, len(members), CHUNK):
                pos = members[s:s + CHUNK]
                tasks.append({"id": len(tasks), "code": code, "path": str(mesh_files[code]),
                              "scale": float(scale[pos[0]]), "seed": seed, "rot": rot[pos], "t": t[pos],
                              "q": q[pos], "sim": sim, "sim_config": dataclasses.asdict(sim_config)})
                per_object[code]["chunks"].append((len(tasks) - 1, pos))

    # ---- run
    n_total = sum(len(tk["rot"]) for tk in tasks)
    bar = tqdm(total=n_total, desc="eval", unit="grasp", file=sys.stderr, disable=not progress)
    results: dict[int, dict] = {}
    t0 = time.time()
    if workers <= 1:
        for tk in tasks:
            results[tk["id"]] = _evaluate_chunk(tk)
            bar.update(len(tk["rot"]))
    else:
        import multiprocessing as mp

        # fork (like torch's DataLoader workers, one intra-op thread each): no re-import of __main__, fast start
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as ex:
            futures = {ex.submit(_evaluate_chunk, tk): tk for tk in tasks}
            for fut in as_completed(futures):
                r = fut.result()
                results[r["id"]] = r
                bar.update(len(futures[fut]["rot"]))
    bar.close()
    wall = time.time() - t0

    # ---- gather per object
    hand = get_hand(dtype=torch.float64)
    lower, upper = hand.joint_lower.numpy(), hand.joint_upper.numpy()
    report_objects, raw = {}, []
    for code, po in per_object.items():
        n = len(po["index"])
        depth, q1 = np.zeros(n), np.zeros(n)
        disp, succ = np.full((n, 6), np.inf), np.zeros((n, 6), dtype=bool)
        errors = {}
        for tid, pos in po["chunks"]:
            r = results[tid]
            depth[pos], q1[pos] = r["depth"], r["q1"]
            if sim:
                disp[pos], succ[pos] = r["displacement"], r["success"]
            errors.update({int(po["index"][pos[i]]): msg for i, msg in r["errors"].items()})
        groups = _diversity_groups(po, group)
        divs = [_diversity(po, gi, lower, upper) for gi in groups]
        report_objects[code] = summarize(depth, q1, succ if sim else None, divs)
        report_objects[code]["errors"] = {str(k): v for k, v in sorted(errors.items())}
        report_objects[code]["grasps"] = {
            "index": po["index"].tolist(), "scale": po["scale"].round(6).tolist(),
            "pen_cm": _json_floats(depth * 100), "q1_raw": _json_floats(q1),
            **({"success": succ.astype(int).tolist(), "displacement_cm": _json_floats(disp * 100)} if sim else {}),
        }
        raw.append((depth, q1, succ, divs))

    overall = summarize(np.concatenate([r[0] for r in raw]), np.concatenate([r[1] for r in raw]),
                        np.concatenate([r[2] for r in raw]) if sim else None, [d for r in raw for d in r[3]])
    overall["n_objects"] = len(report_objects)
    overall["wall_s"] = round(wall, 2)
    from .simulate import DIRECTIONS

    return {
        "overall": overall,
        "objects": report_objects,
        "directions": list(DIRECTIONS),
        "units": {"pen_cm": "cm", "q1": "gated Q1 (0 where Pen >= 0.5 cm)", "q1_raw": "Q1",
                  "eta_np": "%", "eta_tb": "%", "success_any": "%", "success_all6": "%", "delta_*": "%"},
        "config": {"grasp_dir": str(grasp_dir), "meshes": str(meshes), "objects": objects,
                   "limit_per_object": limit_per_object, "sim": sim, "group": group, "workers": workers,
                   "seed": seed, "sampling": sampling_config(seed),
                   "sim_config": dataclasses.asdict(sim_config) if sim else None},
        "provenance": provenance,
    }


def _load_checked(f: Path):
    """load_grasps with every scale checked: a bad one names its file and grasp (one line, before any work)."""
    from .data import load_grasps

    try:
        g = load_grasps(f)
    except DgtrError:
        raise
    except (ValueError, TypeError) as e:  # e.g. a scale that is not a number
        raise FileFormatError(f"{f}: {e}") from None
    s = g.scale.numpy()
    bad = np.flatnonzero(~(np.isfinite(s) & (s > 0)))
    if len(bad):
        raise InputError(f"{f}: grasp {bad[0]} has scale {s[bad[0]]}: must be a positive number"
                         + (f" ({len(bad) - 1} more)" if len(bad) > 1 else ""))
    return g


def _json_floats(x: np.ndarray) -> list:
    """Rounded floats, with None for NaN and inf (JSON has neither)."""
    return [round(float(v), 6) if np.isfinite(v) else None for v in np.ravel(x)]


def _diversity_groups(po: dict, group: int) -> list[np.ndarray]:
    """Consecutive groups of ``group`` grasps of one scale; a trailing partial group is kept only when a scale has
    fewer than ``group`` grasps (otherwise it would count a few grasps as a whole, less diverse, group)."""
    out = []
    for members in _scale_groups(po["scale"]):
        chunks = [members[s:s + group] for s in range(0, len(members), group)]
        out += [c for c in chunks if len(c) == group] or chunks
    return out


def _diversity(po: dict, members: np.ndarray, lower, upper) -> dict:
    from .metrics import diversity

    ok = np.isfinite(po["rot"][members]).all((1, 2)) & np.isfinite(po["t"][members]).all(1) \
        & np.isfinite(po["q"][members]).all(1)
    m = members[ok]
    if len(m) == 0:
        return {"delta_t": 0.0, "delta_r": 0.0, "delta_q": 0.0}
    return diversity(po["rot"][m], po["t"][m], po["q"][m], lower, upper)


def summarize(depth: np.ndarray, q1_raw: np.ndarray, success: np.ndarray | None, divs: list[dict]) -> dict:
    """Table 1 numbers of a set of grasps: depth (n,) m (NaN = invalid grasp), raw Q1 (n,), success (n, 6) or None,
    diversity dicts of its groups (fractions)."""
    from .metrics import PEN_THRESHOLD, gated_q1
    from .simulate import DIRECTIONS

    n = len(depth)
    valid = np.isfinite(depth)
    d = np.where(valid, depth, np.inf)  # an invalid grasp penetrates "infinitely": never counted as good
    pct = lambda x: round(100.0 * float(np.mean(x)), 3) if n else None  # noqa: E731
    out = {
        "n": n,
        "n_invalid": int((~valid).sum()),
        "q1": round(float(gated_q1(q1_raw, d).mean()), 6) if n else None,
        "q1_raw": round(float(q1_raw.mean()), 6) if n else None,
        "pen_cm": round(float(depth[valid].mean() * 100), 4) if valid.any() else None,
        "eta_np": pct(d < PEN_THRESHOLD),
        "eta_tb": pct(q1_raw > 0),
    }
    if success is not None:
        out.update({"success_any": pct(success.any(1)), "success_all6": pct(success.all(1)),
                    "success_by_direction": {k: pct(success[:, i]) for i, k in enumerate(DIRECTIONS)}})
    out["n_groups"] = len(divs)
    for k in ("delta_t", "delta_r", "delta_q"):
        out[k] = round(100.0 * float(np.mean([g[k] for g in divs])), 3) if divs else None
    return out


# ---------------------------------------------------------------------------------------------------- printing
_COLUMNS = [("n", "n", "{:d}"), ("q1", "Q1", "{:.4f}"), ("pen_cm", "Pen.", "{:.3f}"), ("eta_np", "η_np", "{:.2f}"),
            ("eta_tb", "η_tb", "{:.2f}"), ("success_any", "succ.any", "{:.2f}"),
            ("success_all6", "succ.all6", "{:.2f}"),
            ("delta_t", "δt", "{:.2f}"), ("delta_r", "δr", "{:.2f}"), ("delta_q", "δq", "{:.2f}")]


def format_table(report: dict) -> str:
    """Paper Table 1 columns, one row per object and one for all grasps (success both any-of-6 and all-6)."""
    rows = [(code, o) for code, o in report["objects"].items()] + [("overall", report["overall"])]
    width = max(12, min(48, max(len(c) for c, _ in rows)))
    head = f"{'object':<{width}}" + "".join(f"{h:>10}" for _, h, _ in _COLUMNS)
    lines = [head, "-" * len(head)]
    for code, o in rows:
        name = code if len(code) <= width else code[:width - 1] + "…"
        cells = [("-" if o.get(k) is None else fmt.format(o[k])) for k, _, fmt in _COLUMNS]
        lines.append(f"{name:<{width}}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)




# --------------------------------------------------------------------------------------------------------- CLI
def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grasp_dir", help="folder of DexGraspNet grasp files <code>.npy (or with a dataset/ subfolder)")
    parser.add_argument("--meshes", required=True,
                        help="DexGraspNet meshdata/ folder or folder of <code>.<ext> meshes")
    parser.add_argument("--objects", default=None, help="comma-separated object codes (default: all)")
    parser.add_argument("--limit-per-object", type=int, default=None, metavar="N",
                        help="evaluate N evenly spaced grasps per object")
    parser.add_argument("--sim", action=argparse.BooleanOptionalAction, default=True,
                        help="run the MuJoCo six-direction success test (default: on)")
    parser.add_argument("--group", type=int, default=16, help="diversity group size (grasps of one object and scale)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the Pen. object samples (eval's own stream per object, never prediction's)")
    parser.add_argument("--timestep", type=float, default=None, help="simulation timestep in s (default 1/600)")
    parser.add_argument("--duration", type=float, default=None, help="simulated seconds per direction (default 100/60)")
    parser.add_argument("--out", default="metrics.json", help="JSON report path (default: metrics.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_eval(args: argparse.Namespace) -> int:
    from .cli import check_out_file
    from .simulate import SimConfig

    if args.workers < 1:
        raise InputError(f"--workers: must be >= 1, got {args.workers}")
    check_out_file(args.out, "--out")  # before the work: a bad --out used to fail only after the whole simulation
    over = {k: v for k, v in (("timestep", args.timestep), ("duration", args.duration)) if v is not None}
    for k, v in over.items():
        if not v > 0:
            raise InputError(f"--{k}: must be positive, got {v}")
    objects = [c.strip() for c in args.objects.split(",") if c.strip()] if args.objects else None
    report = evaluate(args.grasp_dir, args.meshes, objects=objects, limit_per_object=args.limit_per_object,
                      sim=args.sim, group=args.group, workers=args.workers, seed=args.seed,
                      sim_config=SimConfig(**over), progress=not args.quiet)
    write_json(args.out, report)
    print(format_table(report))
    errs = sum(len(o["errors"]) for o in report["objects"].values())
    print(f"{report['overall']['n']} grasps of {report['overall']['n_objects']} objects in "
          f"{report['overall']['wall_s']:.1f} s; {errs} invalid or unstable (see 'errors'); report: {args.out}")
    return 0
