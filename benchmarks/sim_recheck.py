"""Is the simulation pass rate of synthesized grasps luck?  Re-run the MuJoCo test under seeded perturbations.

    python benchmarks/sim_recheck.py [--synth data/pybullet] [--split test] [--real ../shared/dexgraspnet]
                                     [--per-object 48] [--seeds 1 2] [--workers 2] [--out results/sim_recheck]
    python benchmarks/sim_recheck.py --synth data/dexgraspnet --meshes ../shared/dexgraspnet_objects/meshdata ...

`dgtr synth` keeps only grasps that pass `dgtr eval`'s all-six-directions test, so their pass rate under that exact
test is 100 % by construction.  The test itself is deterministic (same grasp, same verdict), so "a different seed"
has to enter through the grasp: every grasp is perturbed by seeded noise — translation σ = 1 mm per axis, rotation
1° (σ, random axis), joints σ = 0.02 rad (clamped to the limits) — and simulated again, once per seed, and also
unperturbed at half the timestep (1/1200 s).  The same is done to the real DexGraspNet grasps (filtered by Isaac
Gym, not by us) as the yardstick: if the synthesized grasps only passed by luck, their rate would fall far below
the real grasps' under the same perturbations.  Prints one table; writes the reports under ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from dgtr.data import GraspSet, grasp_folder, load_grasps, read_splits, save_grasps
from dgtr.evaluate import evaluate, select_evenly
from dgtr.files import write_json
from dgtr.hand import get_hand
from dgtr.rotations import matrix_from_axis_angle
from dgtr.simulate import SimConfig

SIGMA_T, SIGMA_R_DEG, SIGMA_Q = 0.001, 1.0, 0.02


def perturbed(gs: GraspSet, seed: int) -> GraspSet:
    g = torch.Generator().manual_seed(seed)
    hand = get_hand(dtype=torch.float64)
    n = len(gs)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    angle = torch.randn(n, 1, generator=g, dtype=torch.float64) * np.deg2rad(SIGMA_R_DEG)
    R = matrix_from_axis_angle(axis * angle) @ gs.rotation
    t = gs.translation + SIGMA_T * torch.randn(n, 3, generator=g, dtype=torch.float64)
    q = (gs.joints + SIGMA_Q * torch.randn(n, gs.joints.shape[1], generator=g, dtype=torch.float64))
    q = q.clamp(hand.joint_lower, hand.joint_upper)
    return GraspSet.from_pose(R, t, q, gs.scale, code=gs.code)


def subset(src: Path, codes: list[str], per_object: int, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for c in codes:
        gs = load_grasps(src / f"{c}.npy")
        save_grasps(dst / f"{c}.npy", gs.subset(select_evenly(len(gs), per_object)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synth", type=Path, default=Path("data/pybullet"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "dexgraspnet")
    ap.add_argument("--meshes", type=Path, help="meshes of --synth (default SYNTH/meshdata; a compact dataset's "
                    "mesh folder, e.g. ../shared/dexgraspnet_objects/meshdata)")
    ap.add_argument("--per-object", type=int, default=48)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/sim_recheck"))
    args = ap.parse_args()
    src = grasp_folder(args.synth)   # split objects without grasps yet (a dataset still being made) are left out
    codes = [c for c in read_splits(args.synth)[args.split] if (src / f"{c}.npy").is_file()]
    sets = {"synthesized (" + args.split + " split)": (src, args.meshes or args.synth / "meshdata", codes)}
    if (args.real / "dataset").is_dir():
        sets["real DexGraspNet"] = (args.real / "dataset", args.real / "meshdata",
                                    sorted(p.stem for p in (args.real / "dataset").glob("*.npy")))
    lines = [f"{'grasps':<28} {'condition':<34} {'n':>5} {'all6 %':>7} {'any %':>7}"]
    for name, (grasps, meshes, codes) in sets.items():
        base = args.out / "grasps" / name.split()[0] / "base"
        subset(grasps, codes, args.per_object, base)
        conds = [("as stored, dt 1/600 s", base, None), ("as stored, dt 1/1200 s", base, SimConfig(timestep=1 / 1200))]
        for seed in args.seeds:
            d = base.parent / f"seed{seed}"
            d.mkdir(parents=True, exist_ok=True)
            for c in codes:
                save_grasps(d / f"{c}.npy", perturbed(load_grasps(base / f"{c}.npy"), seed))
            conds.append((f"perturbed, seed {seed}", d, None))
        for cond, folder, sim_cfg in conds:
            rep = evaluate(folder, meshes, objects=codes, sim=True, workers=args.workers, sim_config=sim_cfg,
                           progress=False)
            write_json(args.out / f"{name.split()[0]}_{cond.replace(' ', '_').replace('/', '')}.json", rep)
            o = rep["overall"]
            lines.append(f"{name:<28} {cond:<34} {o['n']:>5d} {o['success_all6']:7.2f} {o['success_any']:7.2f}")
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    (args.out / "table.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
