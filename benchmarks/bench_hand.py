"""Benchmark: ShadowHand FK, hand signed distance and object signed distance on the CPU.

    python benchmarks/bench_hand.py [--runs 7]

Prints a table of median wall times (ms) over several runs. Threads: torch's default, or set OMP_NUM_THREADS /
DGTR_BENCH_THREADS. The object SDF row runs only if ``dgtr.objects`` exists (written separately).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from dgtr.hand import get_hand
from dgtr.rotations import matrix_from_axis_angle


def timeit(fn, runs: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (all threads) of fn() in ms, after one warm-up call.
    CPU time is the steadier number on a shared machine; wall time is what a user waits."""
    fn()
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def random_grasps(B: int, gen: torch.Generator):
    hand = get_hand()
    R = matrix_from_axis_angle(torch.randn(B, 3, generator=gen))
    t = torch.randn(B, 3, generator=gen) * 0.05
    q = hand.denormalize_joints(torch.rand(B, 22, generator=gen))
    return R, t, q


def object_sdf_rows(runs: int) -> list[tuple[str, tuple[float, float]]]:
    """Object signed distance for 1e5 points (``dgtr.objects.load_object(...).signed_distance``), on a real
    DexGraspNet mesh at scale 0.1. Hook for the objects module: skipped with a note if it or the data is absent."""
    try:
        import dgtr.objects as objects  # noqa: F401
    except ImportError:
        return []
    try:
        from pathlib import Path
        root = Path(os.environ.get("DGTR_DEXGRASPNET", Path(__file__).resolve().parents[2] / "shared" / "dexgraspnet"))
        mesh = next((root / "meshdata").glob("*/coacd/decomposed.obj"))
        obj = objects.load_object(mesh, scale=0.1)
        pts = (torch.rand(100_000, 3) - 0.5) * 0.3
        return [("object SDF, 1e5 points", timeit(lambda: obj.signed_distance(pts), runs))]
    except Exception as e:  # API changed / data absent: report and go on
        print(f"(object SDF row skipped: {type(e).__name__}: {e})")
        return []


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    if "DGTR_BENCH_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["DGTR_BENCH_THREADS"]))
    hand = get_hand()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for B in (16, 512):
        R, t, q = random_grasps(B, gen)
        pts = t[:, None] + (torch.rand(B, 4096, 3, generator=gen) - 0.5) * 0.25
        with torch.no_grad():
            rows.append((f"FK link_transforms, B={B}", timeit(lambda: hand.link_transforms(R, t, q), args.runs)))
            rows.append((f"surface_points (2048), B={B}", timeit(lambda: hand.surface_points(R, t, q), args.runs)))
            rows.append((f"hand SDF, B={B} x 4096 pts", timeit(lambda: hand.signed_distance(R, t, q, pts), args.runs)))
            rows.append((f"hand SDF per_link, B={B} x 4096 pts",
                         timeit(lambda: hand.signed_distance(R, t, q, pts, per_link=True), args.runs)))

        def fwd_bwd():
            qq = q.clone().requires_grad_()
            tt = t.clone().requires_grad_()
            hand.signed_distance(R, tt, qq, pts).relu().sum().backward()
        rows.append((f"hand SDF fwd+bwd, B={B} x 4096 pts", timeit(fwd_bwd, args.runs)))
    rows += object_sdf_rows(args.runs)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.runs} runs")
    w = max(len(r[0]) for r in rows)
    print(f"{'operation':<{w}}  {'wall ms':>9}  {'cpu ms':>9}")
    for name, (wall, cpu) in rows:
        print(f"{name:<{w}}  {wall:9.2f}  {cpu:9.2f}")


if __name__ == "__main__":
    main()
