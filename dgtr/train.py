"""DSMT training (paper Alg. 1, DESIGN.md §3): ``dgtr train --data DIR --out RUN [--config YAML] [--resume]``.

One command runs the whole schedule:

1. DMT (``epochs_dmt``): Hungarian matching every step, regression + chamfer + self-penetration losses.
2. After DMT, one full matching pass over the TRAIN split with the final decoder layer (model in eval mode) records the
   static assignment, keyed by dataset entry ``code@scale``, in ``RUN/static_assignment.json`` (and the checkpoint).
   One pass over every entry (not the last DMT epoch's batches) means no entry is ever missing (DESIGN.md §3 traps).
3. SMW (``epochs_smw``): the static assignment, same losses.
4. SMPT (``epochs_smpt``): the static assignment + object penetration and distance losses.
5. REF (``epochs_refine``, ours, not in the paper; needs ``model.refine``): the decoder frozen (eval mode), only the
   contact refiner (dgtr/refine.py) trained, on the AB-TTA objective of the run's ``tta`` settings (no ground truth).

Validation (every ``val_every`` epochs, the VAL split only, never test): the loss with Hungarian matching and the
DMT weights (comparable across stages) and the mean max penetration depth of the object points into the hands
(mm, metrics.penetration_depth) over the first ``val_metric_objects`` entries.
DMT epochs also log the matching instability: the share of queries whose matched ground truth changed since the
previous epoch (paper Fig. 5), from the assignments the training steps actually used.

Files in RUN: ``config.yaml`` (resolved), ``checkpoint.pt`` after every epoch (atomic; ``checkpoint_epochNN.pt`` too
with ``train.keep_epoch_checkpoints``), ``static_assignment.json``, ``tb/`` (TensorBoard), ``summary.json`` (per-epoch
losses, metrics, wall time).

Exact resume: the data order of an epoch is a function of (seed, epoch) only (a seeded sampler and loader generator),
and checkpoints hold model, optimiser, scheduler and every RNG (torch, numpy, python; per rank), so an interrupted run
resumed with ``--resume`` ends with the same weights, bit for bit, as an uninterrupted one (CPU, deterministic
algorithms).  A checkpoint is written at the end of an epoch; an interrupted epoch is redone.

``--resume`` continues the run in ``--out`` with the config it was started with: a config (``--config``, overrides)
that differs from the checkpoint's in any key but ``RESUME_FREE`` (bookkeeping that cannot change the weights) is
refused, naming the keys.

DDP: ``torchrun --nproc_per_node N -m dgtr train ...`` (gloo on CPU, nccl on CUDA).  ``train.batch_size`` is the
global batch (objects per optimiser step over all processes); each rank gets ⌈batch/N⌉ through a DistributedSampler.
A DDP step computes what one process computes on the whole global batch: the losses are averaged over the matched
pairs of all ranks (``losses.pairs_per_rank``, DETR's ``num_boxes``), and BatchNorm layers become ``GlobalBatchNorm``
(statistics of the global batch, so every rank also keeps the same running statistics; torch's SyncBatchNorm refuses
CPU tensors).  Rank 0 validates and writes every file.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist

from . import config as config_mod
from .errors import DgtrError, FileFormatError, InputError, MissingFileError
from .files import torch_save, write_text
from .losses import LossConfig, SetCriterion
from .matcher import hungarian_match, save_assignments, to_query_assignment
from .model import MIN_POINTS, ModelConfig, build_model
from .tta import TTAConfig

__all__ = ["TrainSettings", "TrainConfig", "train", "read_checkpoint", "load_weights", "entry_key", "stage_of",
           "matching_instability", "record_static_assignment", "validate", "add_train_args", "run_train",
           "config_diff", "GlobalBatchNorm", "global_batchnorm", "random_rotations", "rotate_batch"]

CHECKPOINT_FORMAT = "dgtr-checkpoint-v1"
AUGMENT_ROTATIONS = ("none", "z", "so3")


@dataclass
class TrainSettings:
    """Optimisation and bookkeeping of a training run (defaults: paper §4.2 / DESIGN.md §3)."""

    epochs_dmt: int = 15
    epochs_smw: int = 5
    epochs_smpt: int = 5
    epochs_refine: int = 0        # the contact refiner's own stage (model.refine; dgtr/refine.py), after SMPT
    batch_size: int = 32          # objects (dataset entries = object × scale) per optimiser step, all ranks together
    lr: float = 2e-4
    weight_decay: float = 5e-6
    lr_schedule: str = "stage"    # cosine restarted at each stage ('stage') or one cosine over the run ('run')
    lr_min: float = 1e-6          # where each cosine ends
    grad_clip: float = 1.0        # max global gradient norm; 0 = off
    seed: int = 0
    min_grasps: int = 1           # (object, scale) entries with fewer grasps are skipped
    augment_rotation: str = "none"  # random rotation of each training cloud with its grasps: 'none', 'z' (about the
    #                               object's z axis) or 'so3' (uniform); validation stays in the object frame
    n_clouds: int = 1             # point clouds sampled per object; each epoch uses one of them (1: the same cloud)
    num_workers: int = 0          # DataLoader workers (clouds are precomputed in memory: 0 is fine on a CPU)
    val_every: int = 1            # validate every N epochs (and after the last); 0 = never
    val_metric_objects: int = 16  # entries whose 16 grasps get the (costly) penetration metric
    log_every: int = 10           # TensorBoard step logging period
    checkpoint_every: int = 1     # epochs between checkpoints (the last epoch always writes one)
    keep_epoch_checkpoints: bool = False
    deterministic: bool = True    # deterministic CUDA kernels (CPU kernels are); needed for bit-exact resume
    progress: bool = True         # tqdm bars (rank 0)
    compile: bool = False         # torch.compile the encoder's training path (DGTR.compile_encoder; needs a C++
    #                               compiler on a CPU; the same values within float rounding)
    init: str = ""                # checkpoint (training or exported) whose weights start a new run: fine-tuning on
    #                               more or other data, or training across sessions; the optimiser starts afresh


@dataclass
class TrainConfig:
    """The full run config (configs/default.yaml): model shape, losses, training, and the AB-TTA used at inference."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    tta: TTAConfig = field(default_factory=TTAConfig)

    # train.n_points (points per training cloud) was a second copy of model.n_points that silently won over it;
    # model.n_points is now the one setting, and files that carry the old key keep loading (config.renamed)
    RENAMED: ClassVar[dict[str, str]] = {"train.n_points": "model.n_points"}

    def check(self) -> None:
        s = self.train
        self.model.check()
        self.tta.check()
        if min(s.epochs_dmt, s.epochs_smw, s.epochs_smpt, s.epochs_refine) < 0 or self.total_epochs < 1:
            raise InputError("train.epochs_*: need non-negative epochs, at least one in total")
        if s.epochs_refine and not self.model.refine:
            raise InputError("train.epochs_refine: the model has no refiner to train (set model.refine=true)")
        if s.checkpoint_every < 1:
            raise InputError(f"train.checkpoint_every: need >= 1, got {s.checkpoint_every}")
        if s.batch_size < 1 or s.lr <= 0 or s.weight_decay < 0 or s.grad_clip < 0 or s.num_workers < 0:
            raise InputError("train: need batch_size >= 1, lr > 0, weight_decay >= 0, grad_clip >= 0, num_workers >= 0")
        if s.augment_rotation not in AUGMENT_ROTATIONS:
            raise InputError(f"train.augment_rotation: expected one of {AUGMENT_ROTATIONS}, got {s.augment_rotation!r}")
        if s.n_clouds < 1:
            raise InputError(f"train.n_clouds: need >= 1, got {s.n_clouds}")
        self.loss.check()
        if s.lr_schedule not in ("stage", "run"):
            raise InputError(f"train.lr_schedule: expected 'stage' or 'run', got {s.lr_schedule!r}")
        if self.model.n_points < MIN_POINTS:
            raise InputError(f"model.n_points: need >= {MIN_POINTS}, got {self.model.n_points}")

    @property
    def total_epochs(self) -> int:
        return self.train.epochs_dmt + self.train.epochs_smw + self.train.epochs_smpt + self.train.epochs_refine


def stage_of(cfg: TrainConfig, epoch: int) -> str:
    """Stage of 0-based ``epoch``: 'dmt', 'smw', 'smpt' or 'ref'."""
    s = cfg.train
    ends = np.cumsum([s.epochs_dmt, s.epochs_smw, s.epochs_smpt])
    return next((name for name, end in zip(("dmt", "smw", "smpt"), ends) if epoch < end), "ref")


def entry_key(code: str, scale: float) -> str:
    """Key of a dataset entry (object × scale); scales are float32 in DexGraspNet, so 5 significant digits."""
    return f"{code}@{float(scale):.5g}"


# ------------------------------------------------------------------------------------------------ checkpoints
def read_checkpoint(path) -> dict:
    """Load a checkpoint written by ``dgtr train`` (tensors on the CPU).  Raises MissingFileError / FileFormatError."""
    p = Path(path)
    if p.is_dir():
        hint = f" (did you mean {p / 'checkpoint.pt'}?)" if (p / "checkpoint.pt").is_file() else ""
        raise FileFormatError(f"checkpoint {p} is a folder, not a checkpoint file{hint}")
    if not p.is_file():
        raise MissingFileError(f"checkpoint not found: {p}")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types (and pages of text) for truncated/corrupt/foreign files
        raise FileFormatError(f"{p}: not a readable dgtr checkpoint (truncated, corrupt or another kind of file; "
                              f"{p.stat().st_size} bytes)") from None
    if not isinstance(ck, dict) or not {"model", "config"} <= set(ck):
        raise FileFormatError(f"{p}: not a dgtr checkpoint (needs 'model' and 'config' entries)")
    return ck


def config_from_checkpoint(ck: dict, path="checkpoint") -> TrainConfig:
    try:
        return config_mod.from_dict(TrainConfig, ck["config"])
    except (DgtrError, TypeError, AttributeError) as e:
        raise FileFormatError(f"{path}: its config does not fit this version of dgtr ({e})") from None


# keys a resumed run may change: they cannot change the weights it ends with
RESUME_FREE = ("train.progress", "train.num_workers", "train.log_every", "train.compile")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_diff(old: TrainConfig, new: TrainConfig, ignore=RESUME_FREE) -> list[str]:
    """``['key old -> new', ...]`` for every (dotted) setting that differs, but the ``ignore`` ones."""
    a, b = _flat(config_mod.to_dict(old)), _flat(config_mod.to_dict(new))
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]


def load_weights(model: torch.nn.Module, state: dict, path="checkpoint") -> None:
    """``model.load_state_dict`` with a clear error when the checkpoint was made for another model config."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()
        detail = "; ".join(l.strip() for l in first[1:4]) or first[0] if first else ""
        raise FileFormatError(f"{path}: the weights do not fit the model of this config (checkpoint from another "
                              f"config?): {detail[:300]}") from None


def _rng_state() -> dict:
    """Every RNG this process uses, in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                    "cached": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# --------------------------------------------------------------------------------------------- distributed
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def _setup(device: str) -> tuple[_Dist, torch.device]:
    """Process group from torchrun's environment (if any) and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = _Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"--device: expected cpu or cuda, got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available (use --device cpu)")
        dev = torch.device("cuda", d.local_rank if world > 1 else torch.device(device).index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return d, dev


class _GlobalBatchNormFn(torch.autograd.Function):
    """Training-mode BatchNorm of rows x (R, C) with the statistics of all ranks' rows: BatchNorm's forward and
    backward formulas with the per-channel sums all-reduced (two C-sized all-reduces forward, one backward).  Written
    out because autograd through the statistics took 4-5x the time of native BatchNorm (this: ~2.5x, see
    ``GlobalBatchNorm``).  Returns (y, mean, biased var, global row count)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        n = torch.tensor([float(x.shape[0])], dtype=x.dtype, device=x.device)
        mean_l = x.sum(0) / n
        xc = x - mean_l                                        # kept for backward instead of x
        tot = torch.cat([mean_l * n, n])
        dist.all_reduce(tot)
        N, mean = tot[-1:], tot[:-1] / tot[-1:]
        shift = mean_l - mean
        var = torch.linalg.vecdot(xc, xc, dim=0) + n * shift ** 2  # Σ (x − mean)² over this rank's rows, stably
        dist.all_reduce(var)
        var /= N
        invstd = torch.rsqrt(var + eps)
        scale = invstd * weight
        ctx.save_for_backward(xc, weight, shift, invstd, N)
        return torch.addcmul(bias + shift * scale, xc, scale), mean, var, N

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, *_):
        xc, weight, shift, invstd, N = ctx.saved_tensors      # x − mean = xc + shift
        sum_dy = dy.sum(0)
        sum_dy_xmu = torch.linalg.vecdot(dy, xc, dim=0) + shift * sum_dy
        d_weight, d_bias = sum_dy_xmu * invstd, sum_dy          # this rank's parameter gradients (DDP averages them)
        g = torch.cat([sum_dy, sum_dy_xmu])
        dist.all_reduce(g)                                      # every rank's loss depends on every rank's rows
        C = xc.shape[1]
        a = weight * invstd
        b = -a * invstd ** 2 * g[C:] / N
        dx = torch.addcmul(torch.addcmul(b * shift - a * g[:C] / N, xc, b), dy, a)
        return dx, d_weight, d_bias, None


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch over all DDP ranks (what one process
    would compute on the whole batch), so every rank also updates the same running statistics.  torch's
    SyncBatchNorm does this for CUDA only (it refuses CPU tensors, i.e. gloo); this one runs on any device.  Outside
    a multi-process group, or in eval mode, it is plain BatchNorm.  Parameters and buffers are BatchNorm's (same
    state-dict keys).  Input (R, C) or (R, C, *), affine.

    Cost (2-core CPU shared with other jobs, one thread per rank): forward + backward of one layer is ~2x native
    BatchNorm (65536 x 128 rows: 181 vs 89 ms, communication excluded); a DDP step of the default model, 2 gloo ranks
    x 2 objects, took 3.3-3.7 s vs 2.5-2.8 s with per-rank BatchNorm, most of it the two ranks waiting for each
    other at the 27 synchronisation points per step (3 per layer), which busy cores make long.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm: expected (R, C) or (R, C, *) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        rows = x if x.dim() == 2 else x.movedim(1, -1).reshape(-1, x.shape[1])
        y, mean, var, N = _GlobalBatchNormFn.apply(rows, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var * (N / (N - 1).clamp(min=1)), m)  # unbiased, as BatchNorm
        return y if x.dim() == 2 else y.reshape(*x.movedim(1, -1).shape).movedim(-1, 1)


def global_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every BatchNorm layer replaced by a ``GlobalBatchNorm`` holding the same parameters and
    buffers (in place for children; returns the new module when ``module`` itself is a BatchNorm)."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        if not module.affine:
            raise InputError(f"GlobalBatchNorm: {module} has no affine parameters (dgtr's models always do)")
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats).to(next(iter(module.state_dict().values())).device)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, global_batchnorm(child))
    return module


# ------------------------------------------------------------------------------------------------ data
def _datasets(cfg: TrainConfig, root: Path, meshes=None, cache=None, progress: bool = False):
    from .data import GraspDataset, grasp_folder, read_splits

    if not root.is_dir():
        raise MissingFileError(f"--data: folder not found: {root}")
    try:
        grasp_folder(root)
    except MissingFileError:
        raise MissingFileError(f"--data {root}: no grasp files (expected dataset/<code>.npy (DexGraspNet layout) or "
                               "grasps/<code>.npy (compact layout))") from None
    # checked when a cloud has to be sampled (GraspDataset): with every cloud in the cache no meshes are needed
    if meshes is not None:
        meshes = Path(meshes)
        missing = f"--meshes: folder not found: {meshes}"
    else:
        missing = (f"--data {root}: no meshdata/ folder beside the grasps: give the object meshes with --meshes DIR"
                   f"{_manifest_hint(root)}")
    splits = read_splits(root)
    s = cfg.train
    if not splits.get("train"):
        raise InputError(f"--data {root}: the train split is empty")
    kw = dict(n_points=cfg.model.n_points, min_grasps=s.min_grasps, seed=s.seed, meshes=meshes, cache=cache,
              progress=progress, missing_meshes=missing)
    train_ds = GraspDataset(root, "train", n_clouds=s.n_clouds, **kw)
    if len(train_ds) == 0:
        raise InputError(f"--data {root}: no train entry has >= {s.min_grasps} grasps (train.min_grasps)")
    val_ds = None
    if splits.get("val"):
        val_ds = GraspDataset(root, "val", **kw)
        val_ds = val_ds if len(val_ds) else None
    if progress:
        missing = train_ds.n_missing + (val_ds.n_missing if val_ds is not None else 0)
        print(f"dgtr train: {len(train_ds)} train entries ({len(train_ds.clouds)} objects), "
              f"{len(val_ds or [])} val entries" + (f"; {missing} split objects have no grasp file yet" if missing
                                                     else ""), file=sys.stderr, flush=True)
    return train_ds, val_ds


def _manifest_hint(root: Path) -> str:
    """' (its manifest.json names the mesh source X)' for a dataset made by ``dgtr synth`` with layout compact."""
    try:
        src = json.loads((root / "manifest.json").read_text()).get("sources") or []
    except (OSError, ValueError, AttributeError):
        return ""
    return f" (its manifest.json names the mesh source {src[0]})" if src else ""


def _loader(ds, batch: int, d: _Dist, shuffle: bool, seed: int, epoch: int, workers: int):
    """Loader whose order depends on (seed, epoch) only: a DistributedSampler (also for one process) + a seeded
    generator, so no global RNG is consumed and a resumed epoch sees the same batches."""
    from torch.utils.data import DataLoader, DistributedSampler

    from .data import collate

    sampler = DistributedSampler(ds, num_replicas=d.world, rank=d.rank, shuffle=shuffle, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    return DataLoader(ds, batch_size=batch, sampler=sampler, collate_fn=collate, num_workers=workers, generator=gen)


def _targets(batch: dict, device) -> list[dict]:
    return [{"rotation": r.to(device), "translation": t.to(device), "joints": j.to(device)}
            for r, t, j in zip(batch["rotation"], batch["translation"], batch["joints"])]


def _keys(batch: dict) -> list[str]:
    return [entry_key(c, s) for c, s in zip(batch["code"], batch["scale"])]


def random_rotations(n: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) random rotations: 'so3' uniform (Haar: normalised Gaussian quaternions), 'z' about the z axis by a
    uniform angle, 'none' identities."""
    from .rotations import matrix_from_axis_angle, matrix_from_quaternion

    if mode == "so3":
        return matrix_from_quaternion(torch.randn(n, 4, generator=generator, dtype=torch.float64)).float()
    if mode == "z":
        angle = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
        return matrix_from_axis_angle(torch.stack([torch.zeros_like(angle), torch.zeros_like(angle), angle], -1)).float()
    if mode == "none":
        return torch.eye(3).expand(n, 3, 3).clone()
    raise InputError(f"rotation augmentation: expected one of {AUGMENT_ROTATIONS}, got {mode!r}")


def rotate_batch(batch: dict, R: torch.Tensor) -> dict:
    """The batch turned about each object's origin by R (B, 3, 3): clouds p → R p, grasps (R_g, t) → (R R_g, R t),
    joints unchanged, so every hand keeps its place on its object (R_g x + t → R (R_g x + t))."""
    out = dict(batch)
    out["points"] = batch["points"] @ R.transpose(1, 2).to(batch["points"])
    out["rotation"] = [R[b].to(r) @ r for b, r in enumerate(batch["rotation"])]
    out["translation"] = [t @ R[b].T.to(t) for b, t in enumerate(batch["translation"])]
    return out


# --------------------------------------------------------------------------------------------- schedule
def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """Factor on the base lr at optimiser step k: cosine from 1 to lr_min/lr over each stage (or the whole run)."""
    s = cfg.train
    bounds = [0, *np.cumsum([s.epochs_dmt, s.epochs_smw, s.epochs_smpt]).tolist(), cfg.total_epochs]
    if s.lr_schedule == "run":
        bounds = [0, cfg.total_epochs]
    bounds = [b * steps_per_epoch for b in bounds]
    floor = min(s.lr_min / s.lr, 1.0)

    def f(k: int) -> float:
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a <= k < b:
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (k - a) / max(1, b - a)))
        return floor
    return f


# ------------------------------------------------------------------------------------------ matching passes
@torch.no_grad()
def record_static_assignment(model, criterion, ds, cfg: TrainConfig, d: _Dist, device) -> dict[str, list[int]]:
    """One matching pass over every entry of ``ds`` with the final decoder layer (eval mode): {code@scale: (Q,) ints}."""
    was = model.training
    model.eval()
    out: dict[str, list[int]] = {}
    loader = _loader(ds, max(1, math.ceil(cfg.train.batch_size / d.world)), d, False, cfg.train.seed, 0, 0)
    for batch in loader:
        pred = model(batch["points"].to(device), refine=False)
        gts = criterion.prepare_targets(_targets(batch, device), pred["translation"].dtype, device)
        for k, m in zip(_keys(batch), hungarian_match(pred, gts, cfg.loss.matcher)):
            out[k] = to_query_assignment(m, cfg.model.n_queries).tolist()
    merged = {}
    for part in d.gather(out):
        merged.update(part)
    missing = [entry_key(c, s) for c, s, _ in ds.entries if entry_key(c, s) not in merged]
    if missing:  # cannot happen with a full pass; a loud error beats a crash in the static stage
        raise DgtrError(f"static assignment: entries {missing[:3]} were not matched")
    model.train(was)
    return merged


@torch.no_grad()
def validate(model, criterion, ds, cfg: TrainConfig, hand, device) -> dict[str, float]:
    """Loss (Hungarian, DMT weights) over the val split and the mean max penetration (mm) of the first
    ``val_metric_objects`` entries' grasps.  Rank 0 only.  The loss never includes pen/dist (whatever
    ``loss.pen_stages`` says), so validation losses compare across stages and runs."""
    import dataclasses

    from .metrics import penetration_depth

    criterion = SetCriterion(dataclasses.replace(criterion.cfg, pen_stages=[]), criterion.hand, criterion.joint_lower,
                             criterion.joint_upper, criterion.t_range)
    was = model.training
    model.eval()
    sums, n, pens = defaultdict(float), 0, []
    loader = _loader(ds, max(1, cfg.train.batch_size), _Dist(), False, cfg.train.seed, 0, 0)
    for batch in loader:
        pts = batch["points"].to(device)
        pred = model(pts)
        _, logs, _ = criterion(pred, _targets(batch, device), None, "dmt")
        B = pts.shape[0]
        for k, v in logs.items():
            sums[k] += v * B
        n += B
        for b in range(B):
            if len(pens) >= cfg.train.val_metric_objects:
                break
            pens.append(penetration_depth(hand, pts[b].cpu(), pred["rotation"][b].cpu(), pred["translation"][b].cpu(),
                                          pred["joints"][b].cpu()) * 1e3)  # metrics work on the CPU
    model.train(was)
    out = {f"val_{k}": v / max(n, 1) for k, v in sums.items() if k in ("loss", "loss_final", "trans", "joints", "rot",
                                                                        "chamfer", "spen")}
    if pens:
        pens = np.concatenate(pens)
        out["val_pen_mm"] = float(pens.mean())
        out["val_eta_np"] = float((pens < 5.0).mean())
    return out


def _log_epoch(writer, rec: dict) -> None:
    """Epoch record → TensorBoard and one line on stderr."""
    e = rec["epoch"]
    for k, v in rec["train"].items():
        writer.add_scalar(f"train/{k}", v, e)
    for k, v in rec.get("val", {}).items():
        writer.add_scalar(f"val/{k[4:]}", v, e)
    if "instability" in rec:
        writer.add_scalar("train/matching_instability", rec["instability"], e)
    writer.add_scalar("train/lr", rec["lr"], e)
    writer.flush()
    msg = f"epoch {e} {rec['stage']}: loss {rec['train'].get('loss', float('nan')):.4f}"
    if "instability" in rec:
        msg += f", matching instability {rec['instability']:.3f}"
    v = rec.get("val", {})
    if "val_loss" in v:
        msg += f", val loss {v['val_loss']:.4f}"
    if "val_pen_mm" in v:
        msg += f", val pen {v['val_pen_mm']:.2f} mm"
    print(msg, file=sys.stderr, flush=True)


class _NullWriter:
    def add_scalar(self, *args, **kwargs) -> None:
        pass

    flush = close = lambda self: None


def matching_instability(prev: dict, cur: dict) -> float:
    """Share of queries whose matched ground truth (−1 = unmatched) differs between two epochs' assignments
    ({entry key: (Q,) ints}), over the entries present in both (paper Fig. 5)."""
    common = [k for k in cur if k in prev]
    changed = sum(int((np.asarray(cur[k]) != np.asarray(prev[k])).sum()) for k in common)
    return changed / max(1, sum(len(cur[k]) for k in common))


def _run_epoch(model, criterion, opt, sched, loader, stage: str, static, cfg: TrainConfig, dev, step: int, writer,
               desc: str, main: bool):
    """One pass over ``loader`` with optimiser steps.  Returns (sums of batch-weighted logs, objects seen,
    {entry key: final-layer assignment used}, global step)."""
    from tqdm import tqdm

    s = cfg.train
    model.train()
    sums, count, assign = defaultdict(float), 0, {}
    bar = tqdm(loader, desc=desc, leave=False, disable=not (main and s.progress), dynamic_ncols=True)
    rank = dist.get_rank() if dist.is_initialized() else 0
    for batch in bar:
        if s.augment_rotation != "none":  # a function of (seed, step, rank): a resumed epoch sees the same rotations
            gen = torch.Generator().manual_seed(s.seed * 1_000_003 + 7919 * rank + step)
            batch = rotate_batch(batch, random_rotations(len(batch["code"]), s.augment_rotation, gen))
        pts = batch["points"].to(dev)
        keys = _keys(batch)
        if stage == "ref":
            (loss, logs), used = _refine_step(model, pts, cfg), []
        else:
            pred = model(pts, refine=False)
            sa = None if stage == "dmt" else [static[k] for k in keys]
            loss, logs, used = criterion(pred, _targets(batch, dev), sa, stage, pts)
        if not torch.isfinite(loss):
            raise DgtrError(f"training diverged: loss is {float(loss)} at step {step + 1} ({desc}); try a lower train.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if stage == "ref" and dist.is_initialized():  # the refiner runs outside DDP's wrapper: average its grads
            for p in _core(model).refiner.parameters():
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        if s.grad_clip > 0:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip))
        opt.step()
        sched.step()
        step += 1
        assign.update({k: a.tolist() for k, a in zip(keys, used)})
        for k, v in logs.items():
            sums[k] += v * pts.shape[0]
        count += pts.shape[0]
        bar.set_postfix(loss=f"{logs['loss']:.3f}")
        if writer is not None and step % max(1, s.log_every) == 0:
            for k, v in logs.items():
                writer.add_scalar(f"step/{k}", v, step)
            writer.add_scalar("step/lr", opt.param_groups[0]["lr"], step)
    return sums, count, assign, step


def _core(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _refine_step(model, pts, cfg: TrainConfig):
    """The REF stage's loss for one batch: the frozen decoder's grasps (eval mode, no gradient), refined, scored by
    ``dgtr.refine.refine_loss`` with the run's AB-TTA settings."""
    from .refine import refine_loss

    core = _core(model)
    core.eval()
    with torch.no_grad():
        coarse = core(pts, refine=False)
    coarse = (coarse["rotation"], coarse["translation"], coarse["joints"])
    return refine_loss(pts, coarse, core.refiner(pts, *coarse), cfg.tta)


# ------------------------------------------------------------------------------------------------- training
def train(cfg: TrainConfig, data, out, resume: bool = False, device: str = "cpu", max_epochs: int | None = None,
          meshes=None, cloud_cache=None):
    """Run (or continue) DSMT.  Returns the trained model (unwrapped, on ``device``).

    data: grasp set folder: DexGraspNet layout (``dataset/``, ``meshdata/``) or compact (``grasps/``), with
    ``splits.json``; meshes: the object meshes (default ``data/meshdata``); out: run folder (checked writable
    first); max_epochs (>= 1): stop after this many epochs of this invocation (continue later with ``resume=True``).
    resume: continue the run in ``out``; ``cfg`` must equal its config (but ``RESUME_FREE``).
    cloud_cache: folder of the sampled object clouds (default ``out/clouds``; share one between runs on the same data
    and meshes to sample once).
    """
    from .cli import check_out_dir
    from .hand import get_hand

    if max_epochs is not None and max_epochs < 1:
        raise InputError(f"--max-epochs: need >= 1, got {max_epochs}")
    cfg.check()
    out, data = Path(out), Path(data)
    ckpt_path = out / "checkpoint.pt"
    ck = None
    if resume:  # before anything is created: a wrong --out or config leaves no trace
        ck = read_checkpoint(ckpt_path)
        other = ck["config"].get("method") if isinstance(ck["config"], dict) else None
        if other not in (None, "dgtr"):
            raise InputError(f"--resume: {out} holds a {other} run, not a DGTR one: resume it without --config (its "
                             f"config.yaml names the method) or with --config configs/methods/{other}.yaml")
        diff = config_diff(config_from_checkpoint(ck, ckpt_path), cfg)
        if diff:
            raise InputError(f"--resume: the config differs from the one {out} was trained with (run -> now): "
                             f"{'; '.join(diff)}. Resume with the run's config (no --config, no overrides) or "
                             "start a new --out")
    elif ckpt_path.exists():
        raise InputError(f"{out} already holds a run (checkpoint.pt): continue it with --resume or choose another --out")
    init = read_checkpoint(cfg.train.init) if cfg.train.init and not resume else None  # before any work
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 writes every file
        check_out_dir(out, "--out")
    d, dev = _setup(device)
    s = cfg.train
    if s.deterministic and dev.type == "cuda":
        # CPU kernels are deterministic already (and the call imports torch._inductor: ~5 s)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)

    random.seed(s.seed)
    np.random.seed(s.seed)
    torch.manual_seed(s.seed)
    train_ds, val_ds = _datasets(cfg, data, meshes, Path(cloud_cache) if cloud_cache else out / "clouds",
                                 progress=d.main)
    hand = get_hand(dev)
    model = build_model(cfg.model, hand.joint_lower.cpu(), hand.joint_upper.cpu()).to(dev)
    criterion = SetCriterion(cfg.loss, hand, t_range=cfg.model.t_range, distributed=d.world > 1).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    per_rank = max(1, math.ceil(s.batch_size / d.world))
    steps_per_epoch = len(_loader(train_ds, per_rank, d, True, s.seed, 0, 0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps_per_epoch))

    start_epoch, step, static, prev_assign, history, wall = 0, 0, None, None, [], 0.0
    if ck is not None:
        load_weights(model, ck["model"], ckpt_path)
        try:
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise FileFormatError(f"{ckpt_path}: optimiser/scheduler state does not fit this config ({e})") from None
        start_epoch, step, wall = int(ck["epoch"]), int(ck["step"]), float(ck.get("wall_time", 0.0))
        static, prev_assign, history = ck.get("static_assignment"), ck.get("prev_assignment"), list(ck.get("history", []))
        if static is not None:
            missing = [entry_key(c, sc) for c, sc, _ in train_ds.entries if entry_key(c, sc) not in static]
            if missing:
                raise InputError(f"{ckpt_path}: its static assignment lacks train entries {missing[:3]}: the data "
                                 "changed since the run started")
        rngs = ck.get("rng") or []
        if len(rngs) == d.world:
            _set_rng_state(rngs[d.rank])
        else:
            torch.manual_seed(s.seed + 1000 * start_epoch + d.rank)
        if d.main:
            where = (f"epoch {start_epoch + 1} of {cfg.total_epochs} ({stage_of(cfg, start_epoch)})"
                     if start_epoch < cfg.total_epochs else f"the end: all {cfg.total_epochs} epochs are done")
            print(f"dgtr train: resuming {ckpt_path} after epoch {start_epoch} (optimiser step {step}) at {where}",
                  file=sys.stderr, flush=True)
    else:
        if init is not None:
            state = init["model"]
            if model.refiner is not None and not any(k.startswith("refiner.") for k in state):
                # a model trained without a refiner: this run's refiner starts as the identity it is built as
                state = dict(state, **{f"refiner.{k}": v for k, v in model.refiner.state_dict().items()})
            load_weights(model, state, f"train.init {s.init}")
            if d.main:
                print(f"dgtr train: starting from the weights of {s.init} (epoch {init.get('epoch', '?')} of its run)",
                      file=sys.stderr, flush=True)
        torch.manual_seed(s.seed + d.rank)  # same init on every rank (above); own dropout stream per rank from here

    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(global_batchnorm(model),
                                                          device_ids=[dev.index] if dev.type == "cuda" else None)
    core = model.module if d.world > 1 else model
    if s.compile:
        core.compile_encoder()

    writer = None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        config_mod.save(cfg, out / "config.yaml")
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tb"), purge_step=step if ck is not None else None)
        except ImportError:  # a bare cluster/GPU image without tensorboard: summary.json still records every epoch
            print("dgtr train: tensorboard is not installed; logging to summary.json only", file=sys.stderr)
            writer = _NullWriter()

    last = cfg.total_epochs if max_epochs is None else min(cfg.total_epochs, start_epoch + max_epochs)
    try:
        for epoch in range(start_epoch, last):
            stage = stage_of(cfg, epoch)
            t_epoch = time.perf_counter()
            train_ds.set_epoch(epoch)  # this epoch's clouds (train.n_clouds), also for the static assignment pass
            if stage in ("smw", "smpt") and static is None:
                static = record_static_assignment(core, criterion, train_ds, cfg, d, dev)
                if d.main:
                    save_assignments(out / "static_assignment.json", static)
            loader = _loader(train_ds, per_rank, d, True, s.seed, epoch, s.num_workers)
            sums, count, assign, step = _run_epoch(model, criterion, opt, sched, loader, stage, static, cfg, dev, step,
                                                   writer, f"epoch {epoch + 1}/{cfg.total_epochs} {stage}", d.main)

            # epoch means over every rank's samples
            tot = d.gather((dict(sums), count, assign))
            agg, n = defaultdict(float), 0
            assign = {}
            for sm, c, a in tot:
                n += c
                assign.update(a)
                for k, v in sm.items():
                    agg[k] += v
            rec = {"epoch": epoch + 1, "stage": stage, "step": step, "lr": opt.param_groups[0]["lr"],
                   "train": {k: v / max(n, 1) for k, v in agg.items()}}
            if stage == "dmt":
                if prev_assign is not None:
                    rec["instability"] = matching_instability(prev_assign, assign)
                prev_assign = assign
            if d.main and val_ds is not None and s.val_every > 0 and (
                    (epoch + 1) % s.val_every == 0 or epoch + 1 == cfg.total_epochs):
                rec["val"] = validate(core, criterion, val_ds, cfg, get_hand(), dev)
            wall += time.perf_counter() - t_epoch
            rec["time_s"] = time.perf_counter() - t_epoch
            history.append(rec)

            save = (epoch + 1) % s.checkpoint_every == 0 or epoch + 1 == last
            rngs = d.gather(_rng_state()) if save else None
            if d.main:
                _log_epoch(writer, rec)
                if save:
                    state = {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "step": step,
                             "model": core.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "rng": rngs, "config": config_mod.to_dict(cfg),
                             "static_assignment": static, "prev_assignment": prev_assign, "history": history,
                             "wall_time": wall, "world_size": d.world}
                    torch_save(state, ckpt_path)
                    if s.keep_epoch_checkpoints:
                        torch_save(state, out / f"checkpoint_epoch{epoch + 1:02d}.pt")
            d.barrier()

        if d.main:
            done = len(history) >= cfg.total_epochs
            summary = {"completed": done, "epochs": history, "wall_time_s": wall, "world_size": d.world,
                       "device": str(dev), "train_entries": len(train_ds), "val_entries": len(val_ds or []),
                       "static_assignment": "static_assignment.json" if static is not None else None}
            write_text(out / "summary.json", json.dumps(summary, indent=1))
    finally:
        if writer is not None:
            writer.close()
    return core


# ------------------------------------------------------------------------------------------------------ CLI
def add_train_args(p: argparse.ArgumentParser) -> None:
    from .cli import positive_int

    p.add_argument("--data", required=True, help="grasp set folder: dataset/ (DexGraspNet) or grasps/ (compact), "
                                                 "splits.json; meshdata/ unless --meshes")
    p.add_argument("--meshes", help="object mesh folder (DexGraspNet meshdata/ or <code>.<ext> files; default "
                                    "DATA/meshdata)")
    p.add_argument("--cloud-cache", help="folder for the sampled object clouds (default OUT/clouds); one per data "
                                         "and mesh folder, shared by runs")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, config.yaml, tb/, summary.json)")
    p.add_argument("--config", help="YAML run config (default: built-in defaults = configs/default.yaml; "
                                    "with --resume: the run's config.yaml); one with `method: NAME` "
                                    "(configs/methods/NAME.yaml) or a method=NAME override trains that comparison "
                                    "method (docs/methods.md)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--max-epochs", type=positive_int, default=None,
                   help="stop after this many epochs of this invocation (fit a job time limit; continue with --resume)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-4")


def run_train(args) -> int:
    """``dgtr train``: DGTR, or the comparison method the run's config names (``method:`` in the YAML file, or a
    ``method=NAME`` override; ``dgtr.methods``), with the same arguments and checks."""
    from .methods import DGTR, method_of, run_method_train

    cfg_file = args.config
    run_cfg = Path(args.out) / "config.yaml"
    if cfg_file is None and args.resume and run_cfg.is_file():
        cfg_file = run_cfg
    if method_of(cfg_file, args.overrides) != DGTR:  # one dispatch point: the method's own loop (dgtr.methods.train)
        return run_method_train(args, cfg_file)
    overrides = [o for o in args.overrides if o.partition("=")[0].strip() != "method"]  # method=dgtr: the default
    cfg = config_mod.load(TrainConfig, cfg_file, overrides)
    try:
        train(cfg, args.data, args.out, resume=args.resume, device=args.device, max_epochs=args.max_epochs,
              meshes=args.meshes, cloud_cache=args.cloud_cache)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------------------------------- export
def export_checkpoint(src, dest, overrides=()) -> Path:
    """Inference checkpoint ``dest`` from a training checkpoint ``src``: weights, config and the training history only
    (no optimiser/RNG state: about a third of the size).  Writes ``<dest stem>.yaml`` (the resolved config) and
    ``<dest stem>_summary.json`` (epochs, wall time) beside it.  ``dgtr.load(dest)`` reads it like any checkpoint.
    ``overrides`` (``tta.key=value``) set the AB-TTA defaults the checkpoint carries, e.g. ones measured on its
    validation split; nothing else can change after training.  A comparison method's checkpoint (its config names
    the method) is exported by ``dgtr.methods.export_method`` (``refine.*`` / ``sample.*`` overrides; ``tta.*`` names
    ``refine.*`` there)."""
    from .cli import check_out_file

    src, dest = Path(src), Path(dest)
    check_out_file(dest, "DEST")
    ck = read_checkpoint(src)
    from .methods import export_method, is_method_checkpoint

    if is_method_checkpoint(ck):  # a comparison method's run (dgtr.methods): its own export, same files
        return export_method(src, dest, overrides, ck=ck)
    cfg = config_from_checkpoint(ck, src)
    if overrides:
        from .tta import with_overrides

        cfg.tta = with_overrides(cfg.tta, overrides)
        ck = dict(ck, config=config_mod.to_dict(cfg))
    if cfg.total_epochs > ck.get("epoch", 0):
        print(f"dgtr export: note: {src} holds {ck.get('epoch', 0)} of {cfg.total_epochs} epochs (an unfinished run)",
              file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    small = {k: ck[k] for k in ("format", "epoch", "step", "model", "config", "history", "wall_time", "world_size")
             if k in ck}
    small["model"] = {k: v.clone() for k, v in small["model"].items()}  # compact storage, not views of a larger one
    torch_save(small, dest)
    config_mod.save(cfg, dest.with_suffix(".yaml"))
    summary = {"source": str(src), "epochs_done": ck.get("epoch"), "epochs_total": cfg.total_epochs,
               "wall_time_s": ck.get("wall_time"), "world_size": ck.get("world_size"), "epochs": ck.get("history", [])}
    write_text(dest.with_name(dest.stem + "_summary.json"), json.dumps(summary, indent=1))
    return dest


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="training checkpoint (RUN/checkpoint.pt) of DGTR or of a comparison method")
    p.add_argument("dest", help="inference checkpoint to write, e.g. dgtr/checkpoints/default.pt")
    p.add_argument("overrides", nargs="*", metavar="tta.key=value",
                   help="AB-TTA defaults to store with the model (a comparison method: refine.key=value, "
                        "sample.key=value)")


def run_export(args) -> int:
    dest = export_checkpoint(args.checkpoint, args.dest, args.overrides)
    print(f"wrote {dest} ({dest.stat().st_size / 2**20:.1f} MB), {dest.with_suffix('.yaml')}, "
          f"{dest.with_name(dest.stem + '_summary.json')}")
    return 0
