"""``dgtr synth``: DexGraspNet-style grasp synthesis and validation (DESIGN.md §7, docs/synthesis.md).

Per object, a batch of hands (every scale at once) is optimised with DexGraspNet's energy

    E = E_fc + w_dis·E_dis + w_pen·E_pen + w_spen·E_spen + w_joints·E_joints

over 4 contact points chosen among the hand's contact candidates, by Metropolis-annealed, RMSProp-scaled gradient
proposals with contact resampling. The hand is (translation, 6D rotation, 22 joints). Each optimised grasp is then
validated: joints clipped to their limits, penetration depth of object surface points into the hand below a threshold,
self-penetration below a threshold, and the MuJoCo test (``dgtr.simulate``) passing under all six gravity directions.
Kept grasps go to ``<out>/dataset/<code>.npy`` (DexGraspNet format, energies and simulation outcome as extra keys), the
normalised mesh that was used to ``<out>/meshdata/<code>/coacd/decomposed.obj``.

Object geometry inside the optimiser: the union of the convex pieces, signed distance = min over pieces of the largest
face-plane excess. That is exact inside a piece and on the face regions outside, a slight underestimate near edges and
corners outside; its gradient is the face normal, the natural contact normal for E_fc. It costs a few µs per contact
point and needs no precomputation (the SDF grid of ``dgtr.objects`` takes minutes per object to build on a CPU).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from . import config as config_mod
from .errors import DgtrError, FileFormatError, InputError
from .files import write_text
from .hand import PenetrationCache
from .objects import PieceSDF
from .rotations import matrix_from_6d, sixd_from_matrix

__all__ = ["InitConfig", "EnergyConfig", "AnnealConfig", "ValidateConfig", "SynthConfig", "PieceSDF", "Energy",
           "initial_poses", "anneal", "validate", "synth_object", "select_objects", "split_of", "category_of",
           "stratified_split", "write_manifest",
           "add_synth_args", "run_synth"]

ENERGY_NAMES = ("E_fc", "E_dis", "E_pen", "E_spen", "E_joints")
NORMALIZATION = "DexGraspNet: centred on the bounding-box centre, max vertex radius 1/1.03 (unit mesh; × scale)"


# ------------------------------------------------------------------------------------------------------------ config
@dataclass
class InitConfig:
    """Initial hands: palm facing a point of the object's convex hull (DESIGN.md §7, adapted: see docs/synthesis.md)."""
    distance_lower: float = 0.03   # m from the hull point to the palm reference point, along the approach
    distance_upper: float = 0.08
    cone_deg: float = 30.0         # approach direction within this angle of the inward hull normal
    jitter: float = 0.1            # joint noise std, fraction of each joint's range (truncated at the limits)
    # relaxed pose (rad, JOINT_NAMES order): real DexGraspNet grasps' mean with the fingers opened a little
    joints: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.4, 0.1] * 3 + [0.1, 0.0, 0.1, 0.4, 0.1]
                                + [0.2, 1.1, 0.0, -0.2, -0.1])


@dataclass
class EnergyConfig:
    n_contacts: int = 4
    pen_points: int = 2000         # E_pen object samples at scale 0.10 (∝ scale² else); energy per 2000 points
    pen_margin: float = 0.01       # m: E_pen candidate points are re-scanned after a hand moved this far (exact)
    w_dis: float = 100.0
    w_pen: float = 100.0
    w_spen: float = 10.0
    w_joints: float = 1.0


@dataclass
class AnnealConfig:
    """DexGraspNet's schedule (step 0.005·0.95^⌊k/50⌋, temperature 18·0.95^⌊k/30⌋, k < 6000), of which the first
    ``schedule_steps`` are compressed into ``steps``: the decay intervals shrink by steps / schedule_steps."""
    steps: int = 600
    schedule_steps: int = 3000       # DexGraspNet steps covered (final step 2.3e-4, temperature 0.11 at 3000)
    step_size: float = 0.005
    step_decay: float = 0.95
    step_decay_every: float = 50.0   # in DexGraspNet steps
    temperature: float = 18.0
    temp_decay: float = 0.95
    temp_decay_every: float = 30.0   # in DexGraspNet steps
    switch_prob: float = 0.1         # each contact index is resampled with this probability per proposal (DGN 0.5)
    rmsprop_mu: float = 0.98
    clamp_joints: bool = False       # keep proposals within the joint limits (DexGraspNet: soft limits only)


@dataclass
class ValidateConfig:
    pen_points: int = 4096           # object surface samples for the penetration gate (as the evaluator's Pen.)
    pen_threshold: float = 0.0015    # m: max depth of object points into the hand
    spen_threshold: float = 0.02     # self-penetration energy (real DexGraspNet grasps: 90% below 0.02)
    dis_threshold: float = 0.05      # m: sum |object sdf| at the 4 contacts; farther hands rarely hold (saves sim)
    fc_threshold: float = 1e9        # E_fc gate, off by default (E_fc < 1 raises Q1 ~5 % at ~20 % of the yield)
    simulate: bool = True
    sim_timestep: float = 1 / 600    # dgtr.simulate default (DESIGN.md §6)


@dataclass
class SynthConfig:
    scales: list[float] = field(default_factory=lambda: [0.06, 0.08, 0.10, 0.12, 0.15])
    grasps_per_scale: int = 16       # wanted validated grasps per (object, scale); more rounds run until reached
    hands_per_scale: int = 48        # hands optimised per scale and round
    max_rounds: int = 1              # extra rounds for scales short of grasps_per_scale cost ~10 hands per grasp
    seed: int = 0
    normalize: bool = True
    # 'dexgraspnet': dataset/<code>.npy (dicts with energies and simulation outcome) + the normalised meshes copied to
    # meshdata/; 'compact': grasps/<code>.npy float32 (M, 29), the source meshes used in place (not copied, so they
    # must already be normalised: normalize false), a fixed category-stratified split (``stratified_split``)
    layout: str = "dexgraspnet"
    val_every: int = 10              # pb_random_NNN with NNN % val_every == val_every - 1 go to 'val'
    init: InitConfig = field(default_factory=InitConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    anneal: AnnealConfig = field(default_factory=AnnealConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)


# ---------------------------------------------------------------------------------------------------------- geometry
def _rng(seed: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def initial_poses(hand, hull, scales: torch.Tensor, cfg: InitConfig, seed: int) -> torch.Tensor:
    """Initial hands around the object's convex hull.

    hull: trimesh convex hull of the unit object; scales (B,) -> pose (B, 31) = [t (3) | 6D rotation (6) | q (22)].
    Per scale, approach points are spread over the hull by farthest point sampling; the palm normal (palm −y) points
    within ``cone_deg`` of the inward hull normal, with a random roll about it; the palm reference point
    (palm-frame (0.01, −0.011, 0.05), the front of the palm) sits ``distance`` back from the hull point.
    """
    import fpsample
    import trimesh

    dtype, dev = hand.dtype, hand.device
    B = len(scales)
    rng = np.random.default_rng(seed)
    p = np.zeros((B, 3))
    nrm = np.zeros((B, 3))
    s_np = scales.cpu().double().numpy()
    for s in np.unique(s_np):
        idx = np.flatnonzero(s_np == s)
        cand, face = trimesh.sample.sample_surface(hull, 20 * len(idx), seed=int(rng.integers(2**31)))
        start = int(rng.integers(len(cand)))
        pick = fpsample.fps_sampling(np.asarray(cand, dtype=np.float32), len(idx), start_idx=start)
        p[idx], nrm[idx] = cand[pick] * s, hull.face_normals[face[pick]]
    # approach a: inward normal tilted by a random angle (uniform over the cone's solid angle)
    cos_t = 1 - rng.random(B) * (1 - math.cos(math.radians(cfg.cone_deg)))
    phi = rng.random(B) * 2 * math.pi
    u = np.cross(nrm, np.eye(3)[np.argmin(np.abs(nrm), 1)])
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(nrm, u)
    sin_t = np.sqrt(1 - cos_t**2)
    a = -(cos_t[:, None] * nrm) + sin_t[:, None] * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v)
    # palm axes in the object frame: y = −a (palm normal −y looks along a), z = fingers, random roll about a
    roll = rng.random(B) * 2 * math.pi
    e1 = np.cross(a, np.eye(3)[np.argmin(np.abs(a), 1)])
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(a, e1)
    z = np.cos(roll)[:, None] * e1 + np.sin(roll)[:, None] * e2
    y = -a
    x = np.cross(y, z)
    R = np.stack([x, y, z], -1)  # columns = palm axes
    dist = cfg.distance_lower + rng.random(B) * (cfg.distance_upper - cfg.distance_lower)
    ref = np.array([0.01, -0.011, 0.05])
    t = p - a * dist[:, None] - R @ ref
    # joints: truncated normal around the relaxed pose
    lo, hi = hand.joint_lower.cpu().double().numpy(), hand.joint_upper.cpu().double().numpy()
    mu = np.asarray(cfg.joints, dtype=np.float64)
    if mu.shape != (22,):
        raise InputError(f"init.joints: expected 22 values, got {mu.shape[0]}")
    q = mu + rng.normal(size=(B, 22)) * cfg.jitter * (hi - lo)
    for _ in range(10):  # resample what fell outside the limits, then clip what is left
        bad = (q < lo) | (q > hi)
        if not bad.any():
            break
        q[bad] = (mu + rng.normal(size=(B, 22)) * cfg.jitter * (hi - lo))[bad]
    q = np.clip(q, lo, hi)
    pose = np.concatenate([t, R[:, :, 0], R[:, :, 1], q], 1)
    return torch.as_tensor(pose, dtype=dtype, device=dev)


def split_pose(pose: torch.Tensor):
    """pose (B, 31) -> R (B, 3, 3), t (B, 3), q (B, 22)."""
    return matrix_from_6d(pose[:, 3:9]), pose[:, :3], pose[:, 9:]


def pen_counts(scales, cfg: "EnergyConfig") -> dict[float, int]:
    """E_pen points per scale: ``cfg.pen_points`` at scale 0.10, proportional to the surface area (∝ scale²) else, so
    the point spacing on the object is the same at every scale."""
    return {float(s): max(64, int(round(cfg.pen_points * (float(s) / 0.10) ** 2))) for s in scales}


class Energy:
    """DexGraspNet's energy of a batch of hands on one object at per-hand scales.

    hand: ShadowHand; sdf: PieceSDF; points: ``object_points`` groups; scales (B,).
    ``__call__(pose (B, 31), idx (B, n_contacts) long)`` -> (total (B,), {name: (B,)}).
    E_pen is reported on DexGraspNet's scale (its 2000 points), i.e. Σ relu × 2000 / cfg.pen_points.
    """

    def __init__(self, hand, sdf: PieceSDF, points: torch.Tensor, scales: torch.Tensor, cfg: EnergyConfig):
        self.hand, self.sdf, self.cfg, self.scales, self.points = hand, sdf, cfg, scales, points
        self.pen = PenetrationCache(hand, cfg.pen_margin)
        self.pen_factor = 2000.0 / cfg.pen_points

    def __call__(self, pose: torch.Tensor, idx: torch.Tensor):
        hand, cfg = self.hand, self.cfg
        R, t, q = split_pose(pose)
        frames = hand.link_frames(R, t, q)                                         # kinematics once for all terms
        cand = hand.frame_points(frames, "contact")                               # (B, Nc, 3)
        x = cand.gather(1, idx[..., None].expand(-1, -1, 3))                       # (B, n, 3)
        d, n = self.sdf(x, self.scales)
        parts = {
            "E_fc": (n.sum(1) ** 2).sum(-1) + (torch.cross(x, n, dim=-1).sum(1) ** 2).sum(-1),
            "E_dis": d.abs().sum(1),
            "E_pen": self.pen(frames, self.points) * self.pen_factor,
            "E_spen": hand.keypoint_self_penetration(hand.frame_points(frames, "keypoints")),
            "E_joints": hand.joint_limit_energy(q),
        }
        total = (parts["E_fc"] + cfg.w_dis * parts["E_dis"] + cfg.w_pen * parts["E_pen"]
                 + cfg.w_spen * parts["E_spen"] + cfg.w_joints * parts["E_joints"])
        return total, parts


def object_points(obj, scales: np.ndarray, cfg: EnergyConfig, seed: int, device, dtype) -> list:
    """E_pen point sets: [(indices of the hands at scale s (b,), ``pen_counts`` object samples at s (P, 3) m)]."""
    groups = []
    for s, n in pen_counts(np.unique(scales), cfg).items():
        hands = torch.as_tensor(np.flatnonzero(scales == s), device=device)
        groups.append((hands, torch.as_tensor(obj.sample_points(n, seed=seed), dtype=dtype, device=device) * s))
    return groups


def anneal(energy: Energy, pose: torch.Tensor, n_candidates: int, cfg: AnnealConfig, n_contacts: int, seed: int,
           record_every: int = 0, on_step=None):
    """Metropolis-annealed RMSProp proposals (DexGraspNet). pose (B, 31) -> (pose (B, 31), idx (B, n) long,
    parts {name: (B,)} of the final state, history [(step, mean total energy, acceptance rate since the previous entry,
    {name: mean}) ] every ``record_every`` steps). ``on_step(k)`` is called after step k (progress reports)."""
    dev = pose.device
    gen = _rng(seed, "cpu")  # CPU generator: the same random stream on every device
    B = pose.shape[0]

    def rand(*shape):
        return torch.rand(*shape, generator=gen).to(dev)

    idx = torch.randint(n_candidates, (B, n_contacts), generator=gen).to(dev)

    def evaluate(p, i):
        p = p.detach().requires_grad_(True)
        total, parts = energy(p, i)
        (g,) = torch.autograd.grad(total.sum(), p)
        return total.detach(), {k: v.detach() for k, v in parts.items()}, g

    lim_lo, lim_hi = energy.hand.joint_lower.to(pose), energy.hand.joint_upper.to(pose)
    E, parts, grad = evaluate(pose, idx)
    sq = torch.zeros_like(pose)
    ratio = cfg.steps / cfg.schedule_steps
    history = [(0, float(E.mean()), 1.0, {n: float(v.mean()) for n, v in parts.items()})]
    n_acc = torch.zeros((), device=dev)
    for k in range(cfg.steps):
        lr = cfg.step_size * cfg.step_decay ** math.floor(k / max(cfg.step_decay_every * ratio, 1e-9))
        T = cfg.temperature * cfg.temp_decay ** math.floor(k / max(cfg.temp_decay_every * ratio, 1e-9))
        sq = cfg.rmsprop_mu * sq + (1 - cfg.rmsprop_mu) * grad**2
        sq_hat = sq / (1 - cfg.rmsprop_mu ** (k + 1))   # bias-corrected: the first steps are not 7x too long
        new = pose - lr * grad / (sq_hat.sqrt() + 1e-6)
        q_new = new[:, 9:]
        if cfg.clamp_joints:  # validation clips to the limits anyway: optimise the grasp that will be stored
            q_new = torch.maximum(torch.minimum(q_new, lim_hi), lim_lo)
        new = torch.cat([new[:, :3], sixd_from_matrix(matrix_from_6d(new[:, 3:9])), q_new], 1)
        switch = rand(B, n_contacts) < cfg.switch_prob
        new_idx = torch.where(switch, torch.randint(n_candidates, (B, n_contacts), generator=gen).to(dev), idx)
        E_new, parts_new, grad_new = evaluate(new, new_idx)
        accept = rand(B) < torch.exp(((E - E_new) / T).clamp(max=0))
        a = accept[:, None]
        pose, idx, grad = torch.where(a, new, pose), torch.where(a, new_idx, idx), torch.where(a, grad_new, grad)
        E = torch.where(accept, E_new, E)
        parts = {n: torch.where(accept, parts_new[n], parts[n]) for n in parts}
        if on_step is not None:
            on_step(k + 1)
        if record_every:
            n_acc += accept.float().mean()
            if (k + 1) % record_every == 0:
                history.append((k + 1, float(E.mean()), float(n_acc) / record_every,
                                {n: float(v.mean()) for n, v in parts.items()}))
                n_acc.zero_()
    return pose.detach(), idx, parts, history


# -------------------------------------------------------------------------------------------------------- validation
def validate(hand, obj, pose: torch.Tensor, scales: np.ndarray, parts: dict, cfg: ValidateConfig, seed: int,
             on_grasp=None) -> dict:
    """Gate optimised grasps: joints clipped to their limits, then penetration depth, self-penetration, contact
    distance and (optionally) the MuJoCo test, all on the clipped grasp that is stored.

    obj: unit-scale ObjectModel; pose (B, 31); scales (B,) float64 array; parts: the optimiser's final energies.
    Returns numpy arrays: R (B,3,3), t, q, pen_depth (B,), E_spen_clipped, passed_gates (B,), sim_displacement (B,6)
    (nan where not simulated; inf for the directions skipped after a grasp's first failed one: the all-six verdict
    is all a filter needs, so ``success_any`` is a lower bound for rejected grasps), success_all6, success_any,
    keep (B,). ``on_grasp()`` is called after each simulated grasp (progress reports).
    """
    from .simulate import GraspSimulator, SimConfig

    R, t, q = split_pose(pose.detach())
    q = torch.maximum(torch.minimum(q, hand.joint_upper.to(q)), hand.joint_lower.to(q))
    B = pose.shape[0]
    pts_unit = torch.as_tensor(obj.sample_points(cfg.pen_points, seed=seed + 1), dtype=q.dtype, device=q.device)
    s_np = np.asarray(scales, dtype=np.float64)
    scales = torch.as_tensor(s_np, dtype=q.dtype, device=q.device)
    with torch.no_grad():
        depth = torch.cat([hand.signed_distance(R[i:i + 64], t[i:i + 64], q[i:i + 64],
                                                pts_unit[None] * scales[i:i + 64, None, None]).amax(1)
                           for i in range(0, B, 64)]).clamp_min(0)
        spen = hand.self_penetration(R, t, q)
    R, t, q = (x.double().cpu().numpy() for x in (R, t, q))
    depth, spen = depth.double().cpu().numpy(), spen.double().cpu().numpy()
    gates = ((depth < cfg.pen_threshold) & (spen < cfg.spen_threshold)
             & (parts["E_dis"].double().cpu().numpy() < cfg.dis_threshold)
             & (parts["E_fc"].double().cpu().numpy() < cfg.fc_threshold))
    disp = np.full((B, 6), np.nan)
    if cfg.simulate:
        sim_cfg = SimConfig(timestep=cfg.sim_timestep)
        sim_hand = hand.to("cpu", torch.float64)
        for s in np.unique(s_np[gates]):
            sim = GraspSimulator(sim_hand, obj.with_scale(float(s)), sim_cfg)
            for i in np.flatnonzero(gates & (s_np == s)):
                disp[i] = sim.run(R[i], t[i], q[i], stop_on_failure=True).displacement
                if on_grasp is not None:
                    on_grasp()
    ok = disp < SimConfig().threshold  # nan (not simulated) and inf (unstable) compare False
    all6, any6 = ok.all(1), ok.any(1)
    keep = gates & all6 if cfg.simulate else gates
    return dict(R=R, t=t, q=q, pen_depth=depth, E_spen_clipped=spen, passed_gates=gates, sim_displacement=disp,
                success_all6=all6, success_any=any6, keep=keep)


# ------------------------------------------------------------------------------------------------------ one object
def _object_seed(seed: int, code: str) -> int:
    """A seed that depends only on the run seed and the object (not on sharding, workers or order)."""
    return zlib.crc32(f"{seed}:{code}".encode()) & 0x7FFFFFFF


def prepare_mesh(code: str, path: Path, out: Path, normalize: bool, copy: bool = True):
    """Load a source mesh as convex pieces, normalise it (DexGraspNet), write ``meshdata/<code>/coacd/decomposed.obj``
    and load that file back, so synthesis, simulation and ``dgtr eval`` all use the same geometry.
    Returns (unit ObjectModel, {'center', 'factor'} or None)."""
    from .objects import load_object, normalize_mesh, write_pieces_obj

    src = load_object(path, code=code)
    if not copy:  # the source mesh is the dataset's mesh: grasps refer to it exactly as loaded here (and by dgtr)
        return src, None
    norm = None
    pieces = src.pieces
    if normalize:
        # normalise the pieces actually used (their hull vertices hold the mesh's extreme points)
        _, center, factor = normalize_mesh(src.mesh)
        pieces = [p.copy().apply_translation(-center).apply_scale(factor) for p in pieces]
        norm = {"center": [float(c) for c in center], "factor": float(factor)}
    dst = out / "meshdata" / code / "coacd" / "decomposed.obj"
    write_pieces_obj(dst, pieces)
    return load_object(dst, code=code, decompose=False), norm


def _round_sizes(stats: dict, cfg: SynthConfig) -> dict[float, int]:
    """Hands to optimise per scale in the next round: ``hands_per_scale`` at first; later only for scales short of
    ``grasps_per_scale``, sized by the yield seen so far (×1.25 margin, at least 8, at most ``hands_per_scale``)."""
    sizes = {}
    for s in cfg.scales:
        st = stats[f"{s:g}"]
        short = cfg.grasps_per_scale - st["kept"]
        if short <= 0:
            continue
        if st["optimised"] == 0:
            sizes[s] = cfg.hands_per_scale
        else:
            y = max(st["kept"] / st["optimised"], 0.05)
            sizes[s] = int(min(cfg.hands_per_scale, max(8, math.ceil(1.25 * short / y))))
    return sizes


def grasp_file(out: Path, code: str, cfg: SynthConfig) -> Path:
    return out / ("grasps" if cfg.layout == "compact" else "dataset") / f"{code}.npy"


def short_entries(record: dict, cfg: SynthConfig) -> list[str]:
    """The scales of a finished object's record still short of ``grasps_per_scale``."""
    return [s for s, v in record["per_scale"].items() if v["kept"] < cfg.grasps_per_scale]


def synth_object(code: str, path: str, out: str, cfg: SynthConfig, device: str = "cpu",
                 record_every: int = 0, progress=None, top_up: int = 0) -> dict:
    """Synthesise and validate grasps of one object; write its grasp file, mesh and done marker.

    ``progress(fraction)``: called as the object's work advances (fraction of the work planned so far, in [0, 1);
    a later round adds work, so the fraction can step back). Returns the per-object record (also written to
    ``<out>/done/<code>.json``).

    ``top_up`` R > 0: the object is finished already; run up to R more rounds (new seeds) for its scales still
    short of ``grasps_per_scale`` and append their grasps.  Grasps go to the file before the record is rewritten;
    the record holds how many grasps and rounds are in, so a top-up killed in between drops the orphan grasps and
    redoes the same (seeded) rounds."""
    import trimesh

    from .data import GraspSet, load_grasps, save_grasps
    from .hand import get_hand

    t0, c0 = time.time(), time.process_time()
    out = Path(out)
    hand = get_hand(device)
    compact = cfg.layout == "compact"
    obj, norm = prepare_mesh(code, Path(path), out, cfg.normalize, copy=not compact)
    hull = trimesh.Trimesh(np.concatenate([p.vertices for p in obj.pieces])).convex_hull
    sdf = obj.piece_sdf()
    seed = _object_seed(cfg.seed, code)
    n_cand = int(hand.contact_link_index.shape[0])
    stats = {f"{s:g}": dict(optimised=0, gates=0, kept=0) for s in cfg.scales}
    kept, history = [], []
    timing = {"optimise": 0.0, "validate": 0.0}
    first, n_rounds, prior = 0, cfg.max_rounds, None
    if top_up:
        prior = json.loads((out / "done" / f"{code}.json").read_text())
        stats = {k: dict(v) for k, v in prior["per_scale"].items()}
        first, n_rounds = prior.get("rounds", cfg.max_rounds), top_up   # older records: max_rounds ran at most
        old = load_grasps(grasp_file(out, code, cfg))
        if len(old) < prior["kept"]:
            raise FileFormatError(f"{grasp_file(out, code, cfg)}: {len(old)} grasps, its record says {prior['kept']}")
        kept.append(old.subset(np.arange(prior["kept"])))   # beyond it: grasps of a top-up killed before its record
    work = {"planned": 0.0, "done": 0.0}  # in hands: annealing a hand counts 1, simulating it 1

    def advance(amount: float) -> None:
        work["done"] += amount
        if progress is not None:
            progress(min(work["done"] / max(work["planned"], 1e-9), 0.999))
    rounds = first
    for rnd in range(first, first + n_rounds):
        sizes = _round_sizes(stats, cfg)
        todo = list(sizes)
        if not todo:
            break
        rounds = rnd + 1
        rseed = seed + 1000 * rnd
        s_np = np.repeat(np.asarray(todo, dtype=np.float64), list(sizes.values()))  # exact scales, for grouping
        scales = torch.as_tensor(s_np, dtype=hand.dtype, device=hand.device)
        t1 = time.time()
        pose = initial_poses(hand, hull, scales, cfg.init, rseed)
        points = object_points(obj, s_np, cfg.energy, seed, hand.device, hand.dtype)
        energy = Energy(hand, sdf, points, scales, cfg.energy)
        n = len(s_np)
        work["planned"] += 2 * n
        every = max(1, cfg.anneal.steps // 20)
        pose, idx, parts, hist = anneal(energy, pose, n_cand, cfg.anneal, cfg.energy.n_contacts, rseed, record_every,
                                        on_step=lambda k: advance(n * every / cfg.anneal.steps) if k % every == 0
                                        else None)
        history.append(hist)
        t2 = time.time()
        before = work["done"]
        res = validate(hand, obj, pose, s_np, parts, cfg.validate, rseed, on_grasp=lambda: advance(1))
        work["done"] = before + n  # grasps not simulated (gated out) count as done
        timing["optimise"] += t2 - t1
        timing["validate"] += time.time() - t2
        for s in todo:
            m = s_np == s
            st = stats[f"{s:g}"]
            st["optimised"] += int(m.sum())
            st["gates"] += int((res["passed_gates"] & m).sum())
            st["kept"] += int((res["keep"] & m).sum())
        k = np.flatnonzero(res["keep"])
        if len(k):
            extra = {n: parts[n].double().cpu().numpy()[k] for n in ENERGY_NAMES}
            extra.update(pen_depth=res["pen_depth"][k], sim_displacement=res["sim_displacement"][k],
                         success_all6=res["success_all6"][k], success_any=res["success_any"][k])
            kept.append(GraspSet.from_pose(res["R"][k], res["t"][k], res["q"][k], s_np[k], code, extra))
    grasps = GraspSet.concat(kept) if kept else GraspSet.from_pose(np.zeros((0, 3, 3)), np.zeros((0, 3)),
                                                                   np.zeros((0, 22)), np.zeros(0), code)
    save_grasps(grasp_file(out, code, cfg), grasps, compact=compact)
    n_opt = sum(v["optimised"] for v in stats.values())
    before = prior or {}
    record = dict(code=code, source_path=str(path), n_pieces=len(obj.pieces), normalization=norm, seed=seed,
                  device=str(device), per_scale=stats, optimised=n_opt, kept=len(grasps),
                  yield_=len(grasps) / max(n_opt, 1), rounds=rounds,
                  seconds=round(before.get("seconds", 0) + time.time() - t0, 2),
                  cpu_seconds=round(before.get("cpu_seconds", 0) + time.process_time() - c0, 2),
                  seconds_optimise=round(before.get("seconds_optimise", 0) + timing["optimise"], 2),
                  seconds_validate=round(before.get("seconds_validate", 0) + timing["validate"], 2))
    write_text(out / "done" / f"{code}.json", json.dumps(record, indent=1))
    if record_every:
        record["history"] = history
    return record


# --------------------------------------------------------------------------------------------------- object lists
def select_objects(sources: list[str], objects: str | None = None, limit: int | None = None,
                   shard: str | None = None) -> dict[str, str]:
    """Ordered code -> mesh path. ``limit`` keeps the first N of each source; ``objects`` a comma list of codes;
    ``shard`` 'k/n' (1 <= k <= n) keeps every n-th object starting at the k-th."""
    from .objects import list_objects

    if not sources:
        raise InputError("--source: give at least one object source (pybullet:random, pybullet:named, a folder)")
    out: dict[str, str] = {}
    for src in sources:
        found = list_objects(src)
        codes = list(found)[:limit] if limit is not None else list(found)
        out.update({c: str(found[c]) for c in codes})
    if objects:
        want = [c.strip() for c in objects.split(",") if c.strip()]
        missing = [c for c in want if c not in out]
        if missing:
            raise InputError(f"--objects: {missing[:5]} not in the source(s) {sources}")
        out = {c: out[c] for c in want}
    if shard:
        try:
            k, n = (int(v) for v in shard.split("/"))
        except ValueError:
            raise InputError(f"--shard: expected k/n with integers, got {shard!r}") from None
        if not 1 <= k <= n:
            raise InputError(f"--shard {shard}: need 1 <= k <= n")
        out = {c: p for i, (c, p) in enumerate(out.items()) if i % n == k - 1}
    return out


def split_of(code: str, val_every: int) -> str:
    """Fixed split: pybullet named objects -> 'test'; pb_random_NNN -> 'val' when NNN % val_every == val_every - 1;
    other codes -> 'val' for a stable 1/val_every share by a hash of the code; the rest 'train'."""
    if code.startswith("pb_") and not code.startswith("pb_random_"):
        return "test"
    if code.startswith("pb_random_") and code[10:].isdigit():
        return "val" if int(code[10:]) % val_every == val_every - 1 else "train"
    return "val" if zlib.crc32(code.encode()) % val_every == val_every - 1 else "train"


def category_of(code: str) -> str:
    """DexGraspNet object category: ``core-<category>-<id>`` / ``sem-<Category>-<id>`` -> the lower-cased
    category; other codes (``mujoco-<name>``, ``ddg-<name>``, user meshes) -> their source prefix."""
    parts = code.split("-")
    if parts[0] in ("core", "sem") and len(parts) >= 3:
        return parts[1].lower()
    return re.split(r"[-_]", code)[0]


def stratified_split(codes, every: int = 20) -> dict[str, list[str]]:
    """A fixed split by object, stratified by category: objects ordered by (category, crc32 of the code); the k-th
    object goes to 'test' when k % every == 0, to 'val' when k % every == every // 2, else to 'train'. Each
    category's objects are consecutive in that order, so every category is spread over the splits in proportion
    (5 / 5 / 90 % with every = 20). Depends only on the list of codes."""
    order = sorted(codes, key=lambda c: (category_of(c), zlib.crc32(c.encode()), c))
    splits = {"train": [], "val": [], "test": []}
    for k, c in enumerate(order):
        splits["test" if k % every == 0 else "val" if k % every == every // 2 else "train"].append(c)
    return {k: sorted(v) for k, v in splits.items()}


def write_manifest(out: Path, cfg: SynthConfig, sources: list[str]) -> dict:
    """Rebuild ``manifest.json`` and ``splits.json`` from the per-object done markers (any shard, any run)."""
    records = {}
    for f in sorted((out / "done").glob("*.json")):
        try:
            records[f.stem] = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue  # a marker is written atomically; an unreadable one is not ours
    per_scale: dict[str, dict] = {}
    for r in records.values():
        for s, st in r["per_scale"].items():
            acc = per_scale.setdefault(s, dict(optimised=0, gates=0, kept=0))
            for k in acc:
                acc[k] += st[k]
    for acc in per_scale.values():
        acc["yield"] = acc["kept"] / max(acc["optimised"], 1)
    manifest = dict(
        dgtr_version=__version__, updated=time.strftime("%Y-%m-%dT%H:%M:%S"), sources=sources,
        normalization=NORMALIZATION, scales=list(cfg.scales), seed=cfg.seed, config=config_mod.to_dict(cfg),
        totals=dict(objects=len(records), grasps=sum(r["kept"] for r in records.values()),
                    optimised=sum(r["optimised"] for r in records.values()),
                    seconds=round(sum(r["seconds"] for r in records.values()), 1), per_scale=per_scale),
        objects=records)
    write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    if cfg.layout == "compact":
        return manifest  # its split is fixed when the folder is made (run_synth), never rewritten
    splits = {"train": [], "val": [], "test": []}
    for code, r in records.items():
        if r["kept"] > 0:
            splits[split_of(code, cfg.val_every)].append(code)
    write_text(out / "splits.json", json.dumps(splits, indent=1))
    return manifest


# -------------------------------------------------------------------------------------------------------------- CLI
def add_synth_args(p: argparse.ArgumentParser) -> None:
    from .cli import positive_int

    p.add_argument("--source", action="append", required=True,
                   help="object source: pybullet:random, pybullet:named, pybullet, a mesh folder or a DexGraspNet "
                        "meshdata folder (repeat for several)")
    p.add_argument("--out", required=True, help="output folder (DexGraspNet layout: dataset/, meshdata/)")
    p.add_argument("--objects", help="comma-separated object codes to synthesise (default: all)")
    p.add_argument("--limit", type=positive_int, help="first N objects of each source")
    p.add_argument("--shard", help="k/n: this run does objects k, k+n, k+2n, ... (1 <= k <= n)")
    p.add_argument("--workers", type=positive_int, default=1, help="processes (one torch thread each when > 1)")
    p.add_argument("--device", default="cpu", help="torch device of the optimiser (cpu, cuda); simulation is CPU")
    p.add_argument("--seed", type=int, help="run seed (default: config seed)")
    p.add_argument("--grasps-per-scale", type=positive_int, help="wanted validated grasps per (object, scale)")
    p.add_argument("--scales", help="comma-separated object scales (default 0.06,0.08,0.10,0.12,0.15)")
    p.add_argument("--config", help="YAML config (default: dataclass defaults = configs/synth.yaml)")
    p.add_argument("--top-up", type=positive_int, metavar="R",
                   help="instead of new objects: up to R more rounds for every finished (object, scale) entry still "
                        "short of grasps_per_scale, appended to its grasps (resumable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. anneal.steps=800")


def _build_config(args) -> SynthConfig:
    ov = list(args.overrides or [])
    if args.seed is not None:
        ov.append(f"seed={args.seed}")
    if args.grasps_per_scale is not None:
        ov.append(f"grasps_per_scale={args.grasps_per_scale}")
    if args.scales:
        ov.append(f"scales=[{args.scales}]")
    cfg = config_mod.load(SynthConfig, args.config, ov)
    if not cfg.scales or any(not s > 0 for s in cfg.scales):
        raise InputError(f"scales: need positive values, got {cfg.scales}")
    if cfg.layout not in ("dexgraspnet", "compact"):
        raise InputError(f"layout: expected 'dexgraspnet' or 'compact', got {cfg.layout!r}")
    if cfg.layout == "compact" and cfg.normalize:
        raise InputError("layout=compact uses the source meshes in place, so they must be normalised already: "
                         "add normalize=false (DexGraspNet meshdata is normalised)")
    for name in ("grasps_per_scale", "hands_per_scale", "max_rounds"):
        if getattr(cfg, name) < 1:
            raise InputError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    return cfg


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _check_resume(out: Path, cfg: SynthConfig) -> None:
    """Refuse to mix configurations in one output folder (seeds and settings would silently differ per object).
    Keys missing from an older manifest are not compared: new settings keep the old behaviour by default."""
    f = out / "manifest.json"
    if not f.is_file():
        return
    old = json.loads(f.read_text()).get("config")
    if old is None:
        return
    old, new = _flatten(old), _flatten(config_mod.to_dict(cfg))
    diff = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    if diff:
        changes = ", ".join(f"{k}: {old[k]} -> {new[k]}" for k in diff)
        raise InputError(f"{out} was synthesised with a different config ({changes}); use another --out or the same "
                         f"settings (see {f})")


def _fix_split(out: Path, objects: dict[str, str]) -> None:
    """The split of a compact dataset is made once, over the objects of its first run (all of them, before any is
    synthesised), and never changes; a later run may only use objects it already lists."""
    f = out / "splits.json"
    if not f.is_file():
        write_text(f, json.dumps(stratified_split(objects), indent=1))
        return
    known = {c for v in json.loads(f.read_text()).values() for c in v}
    new = [c for c in objects if c not in known]
    if new:
        raise InputError(f"{f} is fixed and does not list {len(new)} of these objects (e.g. {new[0]}); synthesise "
                         "them into another --out")


_PROGRESS_QUEUE = None  # in a worker: the queue its `dgtr synth` reads progress from


class _QueueProgress:
    """Picklable progress callback of a worker: puts (code, fraction) on the worker's queue, at most every 2 s."""

    def __init__(self, code: str):
        self.code, self.last = code, 0.0

    def __call__(self, fraction: float) -> None:
        if _PROGRESS_QUEUE is not None and time.time() - self.last >= 2.0:
            self.last = time.time()
            _PROGRESS_QUEUE.put((self.code, fraction))


def _worker_init(queue=None) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = queue
    torch.set_num_threads(1)
    _exit_with_parent()


def _exit_with_parent() -> None:
    """A worker whose `dgtr synth` was killed exits too (it would otherwise finish its object unseen, competing
    with the resumed run for the CPU): a daemon thread polls the parent pid."""
    import threading

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()  # (runs once the worker's imports release the GIL)


def _fmt_record(r: dict) -> str:
    per = " ".join(f"{s}:{v['kept']}/{v['optimised']}" for s, v in r["per_scale"].items())
    return f"{r['code']}: kept {r['kept']}/{r['optimised']} ({100 * r['yield_']:.0f}%) [{per}] in {r['seconds']:.0f} s"


def run_synth(args) -> int:
    from concurrent.futures import ProcessPoolExecutor

    from .cli import check_out_dir

    from tqdm import tqdm

    cfg = _build_config(args)
    if args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: CUDA is not available")
    objects = select_objects(args.source, args.objects, args.limit, args.shard)
    out = Path(args.out)
    _check_resume(out, cfg)
    check_out_dir(out)
    if cfg.layout == "compact":
        _fix_split(out, objects)
    write_manifest(out, cfg, args.source)  # records the config before any work: a resumed run is checked against it
    top_up = args.top_up or 0
    if top_up:   # finished objects with short entries whose top-up has rounds left
        records = {c: json.loads((out / "done" / f"{c}.json").read_text()) for c in objects
                   if (out / "done" / f"{c}.json").is_file()}
        todo = {c: objects[c] for c, r in records.items() if short_entries(r, cfg)
                and r.get("rounds", cfg.max_rounds) < cfg.max_rounds + top_up}
        print(f"dgtr synth --top-up {top_up}: {len(records)} objects done, {len(todo)} with entries short of "
              f"{cfg.grasps_per_scale} grasps and rounds left -> {out}", file=sys.stderr)
    else:
        todo = {c: p for c, p in objects.items() if not (out / "done" / f"{c}.json").is_file()}
        print(f"dgtr synth: {len(objects)} objects, {len(objects) - len(todo)} already done, {len(todo)} to do -> "
              f"{out}", file=sys.stderr)
    if cfg.layout == "compact":  # a dataset cut short at any point holds a random, category-mixed share
        todo = dict(sorted(todo.items(), key=lambda kv: zlib.crc32(kv[0].encode())))
    failed = []
    bar = tqdm(total=len(todo), unit="obj", disable=args.quiet or not todo, file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} obj [{elapsed}<{remaining}]")
    shown: dict[str, float] = {}  # the fraction of each object in flight that the bar shows

    def move(code: str, fraction: float) -> None:
        """Advance the bar to ``fraction`` of ``code`` (never backwards: a later round only pauses it)."""
        if fraction > shown.get(code, 0.0):
            bar.update(fraction - shown.get(code, 0.0))
            shown[code] = fraction

    def report(code, get):
        """Log one finished object; a failure is logged and retried on the next run, not fatal to a long run."""
        try:
            bar.write(_fmt_record(get()), file=sys.stderr)
        except DgtrError as e:
            failed.append(code)
            bar.write(f"{code}: FAILED ({e})", file=sys.stderr)
        except Exception as e:  # a bug, or a mesh no module anticipated: log type and message, go on
            failed.append(code)
            bar.write(f"{code}: FAILED ({type(e).__name__}: {e})", file=sys.stderr)
        move(code, 1.0)

    try:
        if args.workers == 1:
            for code, path in todo.items():
                report(code, lambda: synth_object(code, path, str(out), cfg, args.device,
                                                  progress=lambda f, c=code: move(c, f), top_up=top_up))
        else:
            import multiprocessing as mp
            from concurrent.futures import FIRST_COMPLETED, wait

            ctx = mp.get_context("spawn")  # forking a process that already runs torch threads can deadlock in OpenMP
            queue = ctx.Queue()  # (code, fraction) progress reports from the workers (given to them at start-up)
            with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(queue,)) as ex:
                futs = {ex.submit(synth_object, c, p, str(out), cfg, args.device, 0, _QueueProgress(c), top_up): c
                        for c, p in todo.items()}
                pending = set(futs)
                while pending:
                    done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                    while not queue.empty():
                        move(*queue.get())
                    for f in done:
                        report(futs[f], f.result)
    finally:
        bar.close()
        m = write_manifest(out, cfg, args.source)
    tot = m["totals"]
    print(f"dgtr synth: {tot['objects']} objects done, {tot['grasps']} grasps kept of {tot['optimised']} optimised"
          + (f"; {len(failed)} failed: {failed[:10]}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0
