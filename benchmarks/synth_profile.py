"""Where `dgtr synth`'s time goes on one object, and whether a cheaper simulation gives the same verdicts.

    python benchmarks/synth_profile.py [--object CODE] [--variants base,dt300,nomulticcd,hull128,giveup2cm]

One round of the default settings (48 hands per scale, DexGraspNet's five scales) on one object of
``../shared/dexgraspnet_objects`` (default: the first of bench_synth.py's fixed order), one thread: annealing time
with the share of E_pen's forward pass, validation time, then the grasps that passed the gates simulated again under
each variant of the MuJoCo test, printed with its time and its agreement with the default test's all-six verdicts.
Variants: ``dt300`` timestep 1/300 s (default 1/600), ``nomulticcd`` MuJoCo's multi-contact CCD off, ``hullN`` the
object's convex pieces reduced to at most N hull vertices (MuJoCo ``maxhullvert``), ``giveup2cm`` a direction
stops as soon as the object moved 2 cm (default 10 cm).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import mujoco
import numpy as np
import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_synth import SHARED, bench_objects  # noqa: E402
from dgtr import synth as S  # noqa: E402
from dgtr.hand import get_hand  # noqa: E402
from dgtr.simulate import GraspSimulator, SimConfig  # noqa: E402


def simulator(name: str, hand, obj, scale: float) -> GraspSimulator:
    cfg = dataclasses.replace(SimConfig(), timestep=1 / 300) if name == "dt300" else \
        dataclasses.replace(SimConfig(), give_up=0.02) if name == "giveup2cm" else SimConfig()
    sim = GraspSimulator(hand, obj.with_scale(scale), cfg)
    if name.startswith("hull"):
        xml = sim.xml.replace("<mesh name=", f'<mesh maxhullvert="{name[4:]}" name=')
        sim.model = mujoco.MjModel.from_xml_string(xml)
        sim.data = mujoco.MjData(sim.model)
    if name == "nomulticcd":
        sim.model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_MULTICCD
    return sim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--object", default=None, help="object code in ../shared/dexgraspnet_objects/meshdata")
    ap.add_argument("--variants", default="base,dt300,nomulticcd,hull128,giveup2cm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    code = args.object or bench_objects(1)[0]
    cfg = S.SynthConfig(layout="compact", normalize=False)
    hand = get_hand("cpu")
    obj, _ = S.prepare_mesh(code, SHARED / code / "coacd" / "decomposed.obj", Path("."), False, copy=False)
    hull = trimesh.Trimesh(np.concatenate([p.vertices for p in obj.pieces])).convex_hull
    s_np = np.repeat(np.asarray(cfg.scales, dtype=np.float64), cfg.hands_per_scale)
    scales = torch.as_tensor(s_np, dtype=hand.dtype)
    seed = S._object_seed(cfg.seed, code)
    energy = S.Energy(hand, obj.piece_sdf(), S.object_points(obj, s_np, cfg.energy, seed, "cpu", hand.dtype), scales,
                      cfg.energy)
    pen, spent = energy.pen, [0.0]

    def timed_pen(*a):
        t = time.perf_counter()
        out = pen(*a)
        spent[0] += time.perf_counter() - t
        return out

    energy.pen = timed_pen
    t0 = time.perf_counter()
    pose, _, parts, _ = S.anneal(energy, S.initial_poses(hand, hull, scales, cfg.init, seed), int(
        hand.contact_link_index.shape[0]), cfg.anneal, cfg.energy.n_contacts, seed)
    t_anneal = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = S.validate(hand, obj, pose, s_np, parts, cfg.validate, seed)
    t_val = time.perf_counter() - t0
    gated = np.flatnonzero(res["passed_gates"])
    print(f"{code} ({len(obj.pieces)} pieces), {len(s_np)} hands, {cfg.anneal.steps} steps, 1 thread")
    print(f"anneal {t_anneal:.1f} s (E_pen forward {spent[0]:.1f} s, {len(pen._cache['bg'])} candidate triplets at the "
          f"end); validate {t_val:.1f} s; gates passed {len(gated)}, kept {int(res['keep'].sum())}")
    sim_hand = hand.to("cpu", torch.float64)
    base = None
    for name in args.variants.split(","):
        t0, ok = time.perf_counter(), np.zeros(len(gated), bool)
        for s in np.unique(s_np[gated]):
            sim = simulator(name, sim_hand, obj, float(s))
            for j in np.flatnonzero(s_np[gated] == s):
                i = gated[j]
                ok[j] = (sim.run(res["R"][i], res["t"][i], res["q"][i], stop_on_failure=True).displacement
                         < SimConfig().threshold).all()
        dt = time.perf_counter() - t0
        base = ok if base is None else base
        print(f"  sim {name:>11}: {dt:6.1f} s, {dt / max(ok.sum(), 1):.2f} s per passing grasp, pass {ok.sum()}/"
              f"{len(gated)}, verdicts equal to the first variant's {100 * (ok == base).mean():.1f} %")


if __name__ == "__main__":
    main()
