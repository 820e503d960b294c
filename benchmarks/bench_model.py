"""Benchmark: DGTR inference latency, AB-TTA latency and training throughput.

    python benchmarks/bench_model.py [--runs 50] [--device cpu|cuda] [--train-batch 8] [--train-steps 3]

Rows (median wall times; threads: torch's default, or OMP_NUM_THREADS / --threads; the load average is printed too):
- forward: one object (4096 points) → 16 grasps, eval mode, median of ``--runs`` runs after 3 warm-ups, with the
  bundled checkpoint's weights (random ones without it): the plain reference implementation
  (benchmarks/reference_model.py, the forward before the fast path) and the package's forward, timed alternately in
  one run; the floor any implementation of that shape meets here: the encoder's matrix multiplies alone, timed as
  plain ``a @ b`` of their sizes; and ``ModelConfig.reference()`` (the plain DESIGN §3 shape) on the fast path;
- AB-TTA: 16 grasps placed around a 10 cm object, default TTAConfig, with the nearest-point distance (point cloud
  input) and with the mesh SDF (mesh input; its grid is built before timing); and with the setting the bundled
  checkpoint carries (dgtr/checkpoints/default.yaml), point cloud, beside the plain AB-TTA
  (benchmarks/reference_tta.py);
- training: objects/s of full optimiser steps (forward, matching, losses of the stage, backward, Adam) with the
  default config on a synthetic batch of ``--train-batch`` objects × 16 ground-truth grasps, DMT and SMPT stages,
  with the plain reference forward, the package's, and the package's with ``train.compile`` (torch.compile of the
  encoder's training path);
- ``dgtr predict``: the command, start to all outputs (grasps, PNG, HTML), one object at one scale
  (``--predict-mesh``, default the DexGraspNet mug of ../shared/dexgraspnet at scale 0.1), median of
  ``--predict-runs`` runs as it comes and while two other processes keep both cores busy (plain Python loops at
  normal priority, started by the benchmark).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import dgtr
import torch
import trimesh

from dgtr.hand import get_hand
from dgtr.losses import SetCriterion
from dgtr.model import ModelConfig, build_model
from dgtr.objects import ObjectModel
from dgtr.predict import DEFAULT_CHECKPOINT
from dgtr.train import TrainConfig
from dgtr.tta import TTAConfig, adapt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_model import reference_forward  # noqa: E402
from reference_tta import reference_adapt  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, runs: int, device, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def test_object() -> ObjectModel:
    """A 10 x 7 x 5 cm box with rounded-off corners (a convex hull of a box and a sphere): a simple graspable solid."""
    box = trimesh.creation.box((0.10, 0.07, 0.05))
    ball = trimesh.creation.icosphere(3, radius=0.045)
    return ObjectModel([trimesh.convex.convex_hull(trimesh.util.concatenate([box, ball]).vertices)], code="bench")


def grasps_around(B: int, radius: float, device, seed: int = 0):
    """B palms facing the object centre from random directions, fingers half closed."""
    g = torch.Generator().manual_seed(seed)
    hand = get_hand()
    u = torch.nn.functional.normalize(torch.randn(B, 3, generator=g), dim=-1)
    a = torch.nn.functional.normalize(torch.linalg.cross(u, torch.randn(B, 3, generator=g)), dim=-1)
    R = torch.stack([a, u, torch.linalg.cross(a, u)], -1)
    t = u * (radius + 0.012) - 0.05 * R[:, :, 2]
    q = (hand.joint_lower + 0.4 * (hand.joint_upper - hand.joint_lower)).expand(B, -1).clone()
    return R.to(device), t.to(device), q.to(device)


def median_ms_alternating(fns: list, runs: int, device, warmup: int = 3, block: int = 5) -> list[float]:
    """Median ms of each of ``fns`` over ``runs`` timed calls, in alternating blocks of ``block`` calls (so a change
    of machine load hits them alike), each block after one untimed call: every function is timed in its steady
    state.  (Alternating single calls timed each one just after the other had run: the plain reference's large
    temporaries, freed back to the system, made the fast path page-fault its own buffers again, +40 % measured.)"""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    while len(times[0]) < runs:
        for fn, ts in zip(fns, times):
            fn()
            for _ in range(min(block, runs - len(ts))):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                ts.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(ts) for ts in times]


def forward_model(cfg: ModelConfig, device, bundled: bool):
    """The bundled checkpoint's network (when asked and present) or a random-init one, eval mode."""
    if bundled and DEFAULT_CHECKPOINT.exists():
        return dgtr.load("default").model.to(device).eval(), "bundled checkpoint"
    hand = get_hand()
    return build_model(cfg, hand.joint_lower, hand.joint_upper).to(device).eval(), "random init"


def bench_forward(cfg: ModelConfig, pts: torch.Tensor, runs: int, device, with_reference: bool) -> tuple:
    """(fast ms, reference ms or None, parameters, weights)."""
    model, weights = forward_model(cfg, device, bundled=with_reference)
    x = pts[None].to(device)
    fns = [lambda: model(x)] + ([lambda: reference_forward(model, x)] if with_reference else [])
    with torch.no_grad():
        ms = median_ms_alternating(fns, runs, device)
    return ms[0], (ms[1] if with_reference else None), sum(p.numel() for p in model.parameters()), weights


def matmul_floor(cfg: ModelConfig, runs: int, device) -> tuple[float, float]:
    """(ms, GFLOP) of the encoder's shared-MLP matrix multiplies alone at ``cfg``'s shape, each timed as one plain
    ``a @ b`` of its size on random data: what no implementation of this network shape computes in less time here
    (the first layer of each level runs per input point, the others per grouped row, as dgtr's forward does)."""
    shapes, n_in, c_in = [], cfg.n_points, 3          # level 1 sees xyz only, the others [xyz, features]
    for S, k, widths in zip(cfg.sa_centres, cfg.sa_k, cfg.sa_mlps):
        shapes.append((n_in, c_in, widths[0]))
        shapes += [(S * k, a, b) for a, b in zip(widths[:-1], widths[1:])]
        n_in, c_in = S, widths[-1] + 3
    ms = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        ms += median_ms(lambda: a @ b, runs, device)
    return ms, sum(2 * m * k * n for m, k, n in shapes) / 1e9


def bench_tta(obj: ObjectModel, pts: torch.Tensor, runs: int, device, cfg: TTAConfig, mesh: bool = False,
              with_reference: bool = False) -> list[float]:
    """Median ms of ``adapt`` (and of the plain ``reference_adapt``, alternating, when asked)."""
    hand = get_hand(device)
    R, t, q = grasps_around(16, 0.05, device)
    p = pts.to(device)
    obj.signed_distance(torch.zeros(1, 3))  # build the SDF grid outside the timing
    fns = [lambda: adapt(hand, p, R, t, q, cfg, obj=obj if mesh else None)]
    if with_reference:
        fns.append(lambda: reference_adapt(hand, p, R, t, q, cfg, obj=obj if mesh else None))
    return median_ms_alternating(fns, runs, device, warmup=1)


def bench_train(batch: int, steps: int, device, stage: str, reference: bool = False, compiled: bool = False) -> float:
    """Objects per second of full training steps with the default config (the plain forward when ``reference``;
    ``compiled``: ``train.compile``, its compilation in the untimed warm-up step)."""
    cfg = TrainConfig()
    hand = get_hand(device)
    model = build_model(cfg.model, hand.joint_lower.cpu(), hand.joint_upper.cpu()).to(device).train()
    if compiled and not model.compile_encoder():
        return float("nan")
    crit = SetCriterion(cfg.loss, hand, t_range=cfg.model.t_range).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    obj = test_object()
    pts = torch.as_tensor(obj.sample_points(cfg.model.n_points)).to(device)
    points = pts[None].expand(batch, -1, -1).contiguous()
    targets = []
    for b in range(batch):
        R, t, q = grasps_around(16, 0.05, device, seed=b)
        targets.append({"rotation": R, "translation": t, "joints": q})
    static = [torch.randperm(16).numpy() for _ in range(batch)] if stage != "dmt" else None

    def step():
        out = reference_forward(model, points) if reference else model(points)
        loss, _, _ = crit(out, targets, static, stage, points)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
    ms = median_ms(step, steps, device, warmup=1)
    return batch / (ms / 1e3)


MUG = (Path(__file__).resolve().parents[1] / ".." / "shared" / "dexgraspnet" / "meshdata"
       / "core-mug-8570d9a8d24cb0acbebd3c0c0c70fb03" / "coacd" / "decomposed.obj")


def bench_predict(mesh: Path, scale: float, runs: int, busy: int = 0) -> float:
    """Median wall seconds of the ``dgtr predict`` command (a fresh process: imports included) on one mesh, with
    ``busy`` spinning processes beside it."""
    import subprocess
    import tempfile

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        times = []
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "dgtr", "predict", "--mesh", str(mesh), "--scale", str(scale),
                                "--out", out], check=True, stdout=subprocess.DEVNULL)
                times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        for p in spinners:
            p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--tta-runs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--predict-mesh", type=Path, default=MUG)
    ap.add_argument("--predict-scale", type=float, default=0.1)
    ap.add_argument("--predict-runs", type=int, default=3, help="0: skip the dgtr predict rows")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    obj = test_object()
    pts = torch.as_tensor(obj.sample_points(4096))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    rows = []
    fast, ref, n, weights = bench_forward(ModelConfig(), pts, args.runs, device, with_reference=True)
    rows.append((f"forward, plain reference implementation ({weights}), 4096 pts -> 16 grasps", f"{ref:.1f} ms"))
    rows.append((f"forward, dgtr ({n / 1e6:.2f} M params, {weights}), 4096 pts -> 16 grasps", f"{fast:.1f} ms"))
    floor, gflop = matmul_floor(ModelConfig(), args.runs, device)
    rows.append((f"  of which a floor: the encoder's matrix multiplies alone ({gflop:.2f} GFLOP, plain a @ b)",
                 f"{floor:.1f} ms"))
    ref_cfg = ModelConfig.reference()
    if ref_cfg != ModelConfig():
        ms, _, n, _ = bench_forward(ref_cfg, pts, args.runs, device, with_reference=False)
        rows.append((f"forward, ModelConfig.reference() ({n / 1e6:.2f} M params, random init)", f"{ms:.1f} ms"))
    it = TTAConfig().iterations
    for mesh in (False, True):
        ms = bench_tta(obj, pts, args.tta_runs, device, TTAConfig(), mesh)[0]
        rows.append((f"AB-TTA, 16 grasps, {it} it, {'mesh SDF' if mesh else 'point-cloud'} distance", f"{ms:.0f} ms"))
    if DEFAULT_CHECKPOINT.exists():
        shipped = dgtr.load("default").tta_config
        fast, ref = bench_tta(obj, pts, args.tta_runs, device, shipped, with_reference=True)
        label = f"AB-TTA, 16 grasps, bundled model's setting ({shipped.iterations} it), point cloud"
        rows.append((label + ", plain reference", f"{ref:.0f} ms"))
        rows.append((label, f"{fast:.0f} ms"))
    if not args.skip_train:
        for stage in ("dmt", "smpt"):
            for how in ("plain reference forward", "", "train.compile"):
                ops = bench_train(args.train_batch, args.train_steps, device, stage, how.startswith("plain"),
                                  how == "train.compile")
                rows.append((f"training, default config, batch {args.train_batch}, stage {stage}"
                             + (f", {how}" if how else ""), f"{ops:.2f} objects/s"))
    if args.predict_runs and args.device == "cpu":
        if not args.predict_mesh.is_file():
            print(f"bench_model: --predict-mesh {args.predict_mesh} not found: dgtr predict rows skipped")
        else:
            label = f"dgtr predict, {args.predict_mesh.parent.parent.name} x {args.predict_scale:g}, to all outputs"
            rows.append((label, f"{bench_predict(args.predict_mesh, args.predict_scale, args.predict_runs):.2f} s"))
            rows.append((label + ", 2 busy processes beside",
                         f"{bench_predict(args.predict_mesh, args.predict_scale, args.predict_runs, busy=2):.2f} s"))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"dgtr model benchmark on {name} (torch {torch.__version__}); load average at the end: {load}")
    w = max(len(r[0]) for r in rows)
    for a, b in rows:
        print(f"  {a:<{w}}  {b:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
