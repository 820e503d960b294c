"""Evaluation speed (docs/evaluation.md): MuJoCo test of one grasp in six directions, and the full metric set with
the simulation for 100 real grasps on ``--workers`` processes. Optional: verdict agreement of two simulation settings.

    .venv/bin/python benchmarks/bench_eval.py                      # speed
    .venv/bin/python benchmarks/bench_eval.py --compare-per-object 20 --b timestep=0.000833333 --b duration=1.6667
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dgtr.data import list_grasp_files, load_grasps, save_grasps  # noqa: E402
from dgtr.evaluate import evaluate, format_table, select_evenly  # noqa: E402
from dgtr.hand import get_hand  # noqa: E402
from dgtr.objects import list_objects, load_object  # noqa: E402
from dgtr.simulate import GraspSimulator, SimConfig  # noqa: E402


def _real(root: Path, per_object: int):
    """(code, ObjectModel at unit scale, GraspSet of evenly spaced grasps) per real object."""
    meshes = list_objects(str(root / "meshdata"))
    for code, f in list_grasp_files(root / "dataset").items():
        g = load_grasps(f)
        yield code, load_object(meshes[code], code=code), g.subset(select_evenly(len(g), per_object))


def bench_sim(root: Path, per_object: int) -> None:
    hand = get_hand(dtype=torch.float64)
    cpu, wall = [], []
    for code, obj, g in _real(root, per_object):
        R, t, q = g.rotation.numpy(), g.translation.numpy(), g.joints.numpy()
        for i in range(len(g)):
            sim = GraspSimulator(hand, obj.with_scale(float(g.scale[i])))
            c0, w0 = time.process_time(), time.perf_counter()
            sim.run(R[i], t[i], q[i])
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    steps = 6 * round(SimConfig().duration / SimConfig().timestep)
    print(f"simulation, one grasp x 6 directions ({steps} steps of {SimConfig().timestep * 1e3:.3f} ms): "
          f"CPU {np.mean(cpu):.3f} s mean, {np.max(cpu):.3f} s max; wall {np.mean(wall):.3f} s mean "
          f"over {len(cpu)} grasps (target <= 1 s CPU)")


def bench_eval(root: Path, n: int, workers: int) -> None:
    codes = list(list_grasp_files(root / "dataset"))
    per = [n // len(codes) + (k < n % len(codes)) for k in range(len(codes))]
    with tempfile.TemporaryDirectory() as tmp:
        for code, m in zip(codes, per):
            g = load_grasps(root / "dataset" / f"{code}.npy")
            save_grasps(Path(tmp) / f"{code}.npy", g.subset(select_evenly(len(g), m)))
        c0, k0, w0 = time.process_time(), _children_cpu(), time.perf_counter()
        rep = evaluate(tmp, root / "meshdata", sim=True, workers=workers, progress=False)
        wall = time.perf_counter() - w0
    cpu = time.process_time() - c0 + _children_cpu() - k0
    print(format_table(rep))
    print(f"full metrics + simulation, {rep['overall']['n']} grasps, {workers} workers: wall {wall:.1f} s "
          f"(target <= 90 s on 2 cores); CPU {cpu:.1f} s in all processes ({cpu / rep['overall']['n']:.2f} s/grasp)")


def _children_cpu() -> float:
    """CPU seconds of finished child processes (the evaluation workers)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def compare(root: Path, per_object: int, a: dict, b: dict) -> None:
    hand = get_hand(dtype=torch.float64)
    ca, cb = SimConfig(**a), SimConfig(**b)
    va, vb, ta, tb = [], [], 0.0, 0.0
    for code, obj, g in _real(root, per_object):
        R, t, q = g.rotation.numpy(), g.translation.numpy(), g.joints.numpy()
        for i in range(len(g)):
            o = obj.with_scale(float(g.scale[i]))
            for back in (0.0, 0.03):
                tt = t[i] + back * R[i][:, 1]
                c0 = time.process_time()
                va.append(GraspSimulator(hand, o, ca).run(R[i], tt, q[i]).success)
                c1 = time.process_time()
                vb.append(GraspSimulator(hand, o, cb).run(R[i], tt, q[i]).success)
                ta, tb = ta + c1 - c0, tb + time.process_time() - c1
    va, vb = np.array(va), np.array(vb)
    print(f"A={a} B={b}: {len(va)} grasps (real and moved back), "
          f"all6 A {va.all(1).mean():.3f} B {vb.all(1).mean():.3f}; "
          f"all6 verdicts agree {np.mean(va.all(1) == vb.all(1)):.3f}, per-direction {np.mean(va == vb):.3f}; "
          f"CPU/grasp A {ta / len(va):.3f} s B {tb / len(vb):.3f} s")


def _kv(items):
    out = {}
    for s in items or []:
        k, v = s.split("=")
        out[k] = float(v)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dexgraspnet", default=str(ROOT.parent / "shared" / "dexgraspnet"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n", type=int, default=100, help="grasps for the full-evaluation timing")
    p.add_argument("--sim-per-object", type=int, default=4, help="grasps per object for the simulation timing")
    p.add_argument("--compare-per-object", type=int, default=0, help="run the A/B verdict comparison instead")
    p.add_argument("--a", action="append", help="SimConfig field=value of setting A (default: defaults)")
    p.add_argument("--b", action="append", help="SimConfig field=value of setting B")
    args = p.parse_args(argv)
    root = Path(args.dexgraspnet)
    if not (root / "dataset").is_dir():
        print(f"skipped: real DexGraspNet samples not found at {root}")
        return 0
    if args.compare_per_object:
        compare(root, args.compare_per_object, _kv(args.a), _kv(args.b))
        return 0
    bench_sim(root, args.sim_per_object)
    bench_eval(root, args.n, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
