"""``dgtr demo`` (what ``make demo`` runs): grasps for a test object, pictures, and the paper's metrics.

The object is normalised like DexGraspNet and written to ``<out>/meshdata/<code>/coacd/decomposed.obj`` so that the
grasps are evaluated on exactly the geometry they were made for.  With the bundled checkpoint
(``dgtr/checkpoints/default.pt``) the demo predicts 16 grasps with AB-TTA for a test-split object (one the model never
saw); without one it says so and runs the other half of the pipeline instead: ``dgtr synth``'s optimiser with a small
budget.  Either way it writes ``<out>/dataset/<code>.npy`` (DexGraspNet format), ``<out>/<code>.html`` (interactive),
``<out>/<code>.png`` and ``<out>/metrics.json``, and prints the metrics table of ``dgtr eval``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .errors import MissingFileError

REPO_DATA = Path(__file__).resolve().parents[1] / "data" / "pybullet"
PREFERRED = ("pb_mug", "pb_duck", "pb_teddy", "pb_bunny")


def demo_object(data: Path, code: str | None) -> tuple[str, Path]:
    """(code, mesh path): a test-split object of the bundled dataset if present, else one of pybullet's named objects
    that needs no convex decomposition (the duck ships already decomposed)."""
    from .data import mesh_path, read_splits
    from .objects import list_objects

    if (data / "meshdata").is_dir():
        test = read_splits(data).get("test") or []
        pick = code or next((c for c in PREFERRED if c in test), test[0] if test else None)
        if pick:
            return pick, mesh_path(data / "meshdata", pick)
    named = list_objects("pybullet:named")
    pick = code or "pb_duck"
    if pick not in named:
        raise MissingFileError(f"demo object {pick!r} is neither in {data} nor one of pybullet's named objects "
                               f"({', '.join(named)})")
    return pick, named[pick]


def add_demo_args(p: argparse.ArgumentParser) -> None:
    from .cli import positive_float, positive_int

    p.add_argument("--out", default="outputs/demo", help="output folder (checked for writing before anything runs)")
    p.add_argument("--object", default=None, help="object code (default: a bundled test object, else pb_duck)")
    p.add_argument("--scale", type=positive_float, default=0.1, help="scale of the unit-normalised object")
    p.add_argument("--data", default=str(REPO_DATA), help="bundled dataset folder")
    p.add_argument("--sim", action=argparse.BooleanOptionalAction, default=True, help="MuJoCo simulation test")
    p.add_argument("--workers", type=positive_int, default=2, help="processes for the evaluation")


def run_demo(args) -> int:
    import torch

    from . import config
    from .cli import check_out_dir
    from .data import save_grasps
    from .evaluate import evaluate, format_table
    from .files import write_json
    from .predict import DEFAULT_CHECKPOINT, print_table
    from .synth import SynthConfig, prepare_mesh, synth_object
    from .view import write_pictures

    torch.set_num_threads(1)  # small batches: a second thread costs more than it gives on 2 cores
    t0 = time.perf_counter()
    code, mesh = demo_object(Path(args.data), args.object)
    out = check_out_dir(args.out)
    obj, _ = prepare_mesh(code, mesh, out, normalize=True)
    obj = obj.with_scale(args.scale)
    grasp_file = out / "dataset" / f"{code}.npy"
    t1 = time.perf_counter()
    if DEFAULT_CHECKPOINT.is_file():
        from .predict import load

        predictor = load("default")
        grasps = predictor(obj, 1.0, tta=True, code=code)   # grasps in obj's frame, at obj's scale (args.scale)
        what = "DGTR + AB-TTA"
        save_grasps(grasp_file, grasps)
    else:
        print(f"no bundled checkpoint at {DEFAULT_CHECKPOINT}: running grasp synthesis (small budget) instead")
        cfg = config.load(SynthConfig, None, [f"scales=[{args.scale}]", "grasps_per_scale=8", "hands_per_scale=24",
                                              "max_rounds=1", "normalize=false"])
        synth_object(code, str(out / "meshdata" / code / "coacd" / "decomposed.obj"), str(out), cfg)
        from .data import load_grasps
        grasps = load_grasps(grasp_file)
        what = "dgtr synth (validated)"
    print(f"{code} × {args.scale:g}: {len(grasps)} grasps from {what} in {time.perf_counter() - t1:.1f} s")
    from .hand import get_hand

    if len(grasps):
        if "no_contact" in grasps.extra:
            print_table(grasps)
        write_pictures(out / code, grasps, get_hand(), mesh=obj.mesh, title=f"{code} × {args.scale:g} ({what})")
        report = evaluate(out / "dataset", out / "meshdata", objects=[code], sim=args.sim, workers=args.workers,
                          progress=False)
        write_json(out / "metrics.json", report)
        print(format_table(report))
    print(f"outputs in {out}/ (dataset/{code}.npy, {code}.html, {code}.png, metrics.json); "
          f"total {time.perf_counter() - t0:.1f} s")
    return 0
