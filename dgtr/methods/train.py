"""Training and checkpoints of the comparison methods: ``train_method(cfg, data, out, ...)``.

The same data, splits, clouds, loader order and checkpoint discipline as ``dgtr.train`` (its dataset builder,
loader, RNG capture and checkpoint reader are used, not rewritten): ``RUN/config.yaml`` (resolved), ``RUN/checkpoint.pt``
after every ``checkpoint_every`` epochs (written atomically: config, weights, optimiser, scheduler, RNG, history),
``RUN/summary.json``.  One cosine learning-rate schedule over the run; each method's loss is its module's
``loss(batch, hand, generator)``, whose random draws (ground-truth grasps, noise, diffusion steps) come from a
generator seeded by (seed, step), so ``--resume`` continues exactly where an interrupted run would have been
(a checkpoint is written at the end of an epoch; an interrupted epoch is redone).  ``--resume`` refuses a config that
differs from the run's (but ``train.progress``).

One process (no DDP: the methods' models are small next to the data they read).  Validation: the method's own loss
on the VAL split (never test), with fixed draws, every ``val_every`` epochs.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .. import config as config_mod
from ..errors import DgtrError, FileFormatError, InputError

__all__ = ["CHECKPOINT_FORMAT", "train_method", "read_method_checkpoint", "load_method", "export_method",
           "run_method_train", "validate_method", "with_inference_overrides"]

CHECKPOINT_FORMAT = "dgtr-method-checkpoint-v1"
RESUME_FREE = ("train.progress",)


def read_method_checkpoint(path, ck: dict | None = None):
    """(checkpoint dict, run config) of a comparison method's checkpoint; MissingFileError / FileFormatError (one
    line) for a missing, truncated or foreign file, or a DGTR checkpoint.  ``ck``: the file's contents when the
    caller read them already (``dgtr.train.read_checkpoint``)."""
    from ..train import read_checkpoint
    from . import config_from_dict

    ck = read_checkpoint(path) if ck is None else ck
    return ck, config_from_dict(ck["config"], str(path))


def load_method(path, device="cpu", ck: dict | None = None):
    """(model in eval mode on ``device``, run config) from a checkpoint written by ``train_method`` (``ck``: its
    contents, already read)."""
    from ..hand import get_hand
    from ..train import load_weights
    from . import build

    ck, cfg = read_method_checkpoint(path, ck)
    model = build(cfg, get_hand())
    load_weights(model, ck["model"], path)
    return model.to(device).eval(), cfg


def _device(device: str) -> torch.device:
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise InputError(f"--device: expected cpu or cuda, got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(device)


def _lr_factor(total_steps: int, floor: float):
    """Cosine from 1 to ``floor`` over ``total_steps`` optimiser steps."""
    return lambda k: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(k, total_steps) / max(1, total_steps)))


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@torch.no_grad()
def validate_method(model, ds, cfg, hand, device) -> dict[str, float]:
    """Mean of the method's loss terms over a split (eval mode, fixed draws per batch)."""
    from ..train import _Dist, _loader

    was = model.training
    model.eval()
    sums, n = defaultdict(float), 0
    for i, batch in enumerate(_loader(ds, cfg.train.batch_size, _Dist(), False, cfg.train.seed, 0, 0)):
        batch["points"] = batch["points"].to(device)
        _, logs = model.loss(batch, hand, _step_generator(cfg.train.seed + 7, i))
        B = len(batch["code"])
        for k, v in logs.items():
            sums[k] += v * B
        n += B
    model.train(was)
    return {f"val_{k}": v / max(n, 1) for k, v in sums.items()}


def train_method(cfg, data, out, resume: bool = False, device: str = "cpu", max_epochs: int | None = None,
                 meshes=None, cloud_cache=None):
    """Train (or continue) a comparison method; returns its model (on ``device``).  Arguments as ``dgtr.train.train``:
    data: grasp set folder with ``splits.json``; meshes: mesh folder (default DATA/meshdata); out: run folder (checked
    writable first); max_epochs (>= 1): epochs of this invocation; cloud_cache: sampled clouds (default OUT/clouds)."""
    from ..cli import check_out_dir
    from ..files import torch_save, write_json
    from ..hand import get_hand
    from ..train import (_datasets, _Dist, _loader, _rng_state, _set_rng_state, config_diff, load_weights,
                         random_rotations, rotate_batch)
    from . import build

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("the comparison methods train in one process (no torchrun)")
    if max_epochs is not None and max_epochs < 1:
        raise InputError(f"--max-epochs: need >= 1, got {max_epochs}")
    cfg.check()
    out, data = Path(out), Path(data)
    ckpt_path = out / "checkpoint.pt"
    ck = None
    if resume:  # before anything is created: a wrong --out or config leaves no trace
        from ..train import read_checkpoint
        from . import is_method_checkpoint

        ck = read_checkpoint(ckpt_path)
        if not is_method_checkpoint(ck):
            raise InputError(f"--resume: {out} holds a DGTR run, not a {cfg.method} one: resume it without --config "
                             "(its config.yaml) or start a new --out")
        ck, old = read_method_checkpoint(ckpt_path, ck)
        diff = config_diff(old, cfg, ignore=RESUME_FREE)
        if diff:
            raise InputError(f"--resume: the config differs from the one {out} was trained with (run -> now): "
                             f"{'; '.join(diff)}. Resume with the run's config or start a new --out")
    elif ckpt_path.exists():
        raise InputError(f"{out} already holds a run (checkpoint.pt): continue it with --resume or choose another --out")
    check_out_dir(out, "--out")
    dev = _device(device)
    s = cfg.train
    random.seed(s.seed)
    np.random.seed(s.seed)
    torch.manual_seed(s.seed)
    # dgtr.train's dataset builder reads these settings only
    shim = SimpleNamespace(model=SimpleNamespace(n_points=cfg.model.n_points),
                           train=SimpleNamespace(min_grasps=s.min_grasps, seed=s.seed, n_clouds=s.n_clouds))
    train_ds, val_ds = _datasets(shim, data, meshes, Path(cloud_cache) if cloud_cache else out / "clouds",
                                 progress=True)
    hand = get_hand(dev)
    model = build(cfg, hand).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps_per_epoch = len(_loader(train_ds, s.batch_size, _Dist(), True, s.seed, 0, 0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(s.epochs * steps_per_epoch, min(s.lr_min / s.lr, 1.0)))

    start, step, history, wall = 0, 0, [], 0.0
    if ck is not None:
        load_weights(model, ck["model"], ckpt_path)
        try:
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise FileFormatError(f"{ckpt_path}: optimiser/scheduler state does not fit this config ({e})") from None
        start, step, wall = int(ck["epoch"]), int(ck["step"]), float(ck.get("wall_time", 0.0))
        history = list(ck.get("history", []))
        if ck.get("rng"):
            _set_rng_state(ck["rng"])
        where = f"epoch {start + 1} of {s.epochs}" if start < s.epochs else f"the end: all {s.epochs} epochs are done"
        print(f"dgtr train: resuming {ckpt_path} ({cfg.method}) after epoch {start} (step {step}) at {where}",
              file=sys.stderr, flush=True)

    config_mod.save(cfg, out / "config.yaml")
    last = s.epochs if max_epochs is None else min(s.epochs, start + max_epochs)
    from tqdm import tqdm

    for epoch in range(start, last):
        t0 = time.perf_counter()
        model.train()
        train_ds.set_epoch(epoch)
        sums, count = defaultdict(float), 0
        loader = _loader(train_ds, s.batch_size, _Dist(), True, s.seed, epoch, 0)
        for batch in tqdm(loader, desc=f"{cfg.method} epoch {epoch + 1}/{s.epochs}", leave=False,
                          disable=not s.progress, dynamic_ncols=True):
            if s.augment_rotation != "none":  # a function of (seed, step): a resumed epoch sees the same rotations
                gen = torch.Generator().manual_seed(s.seed * 1_000_003 + 7919 + step)
                batch = rotate_batch(batch, random_rotations(len(batch["code"]), s.augment_rotation, gen))
            batch["points"] = batch["points"].to(dev)
            loss, logs = model.loss(batch, hand, _step_generator(s.seed, step))
            if not torch.isfinite(loss):
                raise DgtrError(f"training diverged: loss is {float(loss)} at step {step + 1} (epoch {epoch + 1}); "
                                "try a lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip > 0:
                logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip))
            opt.step()
            sched.step()
            step += 1
            B = len(batch["code"])
            for k, v in logs.items():
                sums[k] += v * B
            count += B
        rec = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"],
               "train": {k: v / max(count, 1) for k, v in sums.items()}}
        if val_ds is not None and s.val_every > 0 and ((epoch + 1) % s.val_every == 0 or epoch + 1 == s.epochs):
            rec["val"] = validate_method(model, val_ds, cfg, hand, dev)
        rec["time_s"] = time.perf_counter() - t0
        wall += rec["time_s"]
        history.append(rec)
        msg = f"{cfg.method} epoch {epoch + 1}: loss {rec['train'].get('loss', float('nan')):.4f}"
        if "val" in rec:
            msg += f", val loss {rec['val'].get('val_loss', float('nan')):.4f}"
        print(msg + f" ({rec['time_s']:.0f} s)", file=sys.stderr, flush=True)
        if (epoch + 1) % s.checkpoint_every == 0 or epoch + 1 == last:
            torch_save({"format": CHECKPOINT_FORMAT, "method": cfg.method, "epoch": epoch + 1, "step": step,
                        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "rng": _rng_state(), "config": config_mod.to_dict(cfg), "history": history,
                        "wall_time": wall}, ckpt_path)
    write_json(out / "summary.json", {"method": cfg.method, "completed": len(history) >= s.epochs,
                                      "epochs": history, "wall_time_s": wall, "device": str(dev),
                                      "train_entries": len(train_ds), "val_entries": len(val_ds or []),
                                      "parameters": sum(p.numel() for p in model.parameters())})
    return model


EXPORT_SECTIONS = ("refine.", "sample.")  # what may change after training


def _inference_keys(overrides) -> list[str]:
    """``overrides`` with ``tta.*`` (what `dgtr export` / `dgtr predict` take for DGTR) renamed ``refine.*``; anything
    but ``refine.*`` / ``sample.*`` is refused (InputError, one line)."""
    overrides = [("refine." + o.strip()[4:]) if o.strip().startswith("tta.") else o for o in overrides]
    bad = [o for o in overrides if not o.strip().startswith(EXPORT_SECTIONS)]
    if bad:
        raise InputError(f"overrides: only {'/'.join(s + '*' for s in EXPORT_SECTIONS)} settings (tta.* = refine.*) "
                         f"can change after training, got {bad}")
    return overrides


def with_inference_overrides(cfg, overrides):
    """A copy of run config ``cfg`` with inference overrides (``refine.*``, ``sample.*``, ``tta.*`` = ``refine.*``)
    applied and checked: what `dgtr export` and `dgtr predict` accept for a comparison method.  InputError (one line)
    for another key, an unknown one or a value the method refuses (e.g. refine.iterations > 0 on DDG)."""
    overrides = _inference_keys(overrides)
    if not overrides:
        return cfg
    from . import run_config_class

    new = config_mod.from_dict(run_config_class(cfg.method),
                               config_mod.apply_overrides(config_mod.to_dict(cfg), overrides))
    new.check()
    return new


def export_method(src, dest, overrides=(), ck: dict | None = None) -> Path:
    """Inference checkpoint ``dest`` (weights, config, history; no optimiser/RNG state) from a method's training
    checkpoint ``src``, with ``<dest stem>.yaml`` (the resolved config) and ``<dest stem>_summary.json`` beside it
    (the files `dgtr export` writes for DGTR; it calls this for a method's checkpoint).  ``overrides``
    (``refine.key=value``, ``sample.key=value``; ``tta.*`` = ``refine.*``) set the inference defaults it carries
    (e.g. ones measured on the validation split); nothing else can change after training.  ``ck``: the file's
    contents when the caller read them already."""
    from ..cli import check_out_file
    from ..files import torch_save, write_json

    src, dest = Path(src), Path(dest)
    _inference_keys(overrides)  # before any file is read
    check_out_file(dest, "DEST")
    ck, cfg = read_method_checkpoint(src, ck)
    cfg = with_inference_overrides(cfg, overrides)
    if cfg.train.epochs > ck.get("epoch", 0):
        print(f"dgtr export: note: {src} holds {ck.get('epoch', 0)} of {cfg.train.epochs} epochs (an unfinished "
              f"{cfg.method} run)", file=sys.stderr)
    small = {k: ck[k] for k in ("format", "method", "epoch", "step", "history", "wall_time") if k in ck}
    small["config"] = config_mod.to_dict(cfg)
    small["model"] = {k: v.clone() for k, v in ck["model"].items()}
    torch_save(small, dest)
    config_mod.save(cfg, dest.with_suffix(".yaml"))
    write_json(dest.with_name(dest.stem + "_summary.json"),
               {"source": str(src), "method": cfg.method, "epochs_done": ck.get("epoch"),
                "epochs_total": cfg.train.epochs, "wall_time_s": ck.get("wall_time"), "epochs": ck.get("history", [])})
    return dest


def run_method_train(args, cfg_file=None) -> int:
    """``dgtr train`` for a config that names a comparison method (args of ``dgtr.train.add_train_args``;
    ``dgtr.train.run_train`` calls this with the config file it resolved, the run's config.yaml on --resume)."""
    from . import load_config

    cfg_file = cfg_file if cfg_file is not None else args.config
    run_cfg = Path(args.out) / "config.yaml"
    if cfg_file is None and args.resume and run_cfg.is_file():
        cfg_file = run_cfg
    cfg = load_config(cfg_file, args.overrides)
    train_method(cfg, args.data, args.out, resume=args.resume, device=args.device, max_epochs=args.max_epochs,
                 meshes=args.meshes, cloud_cache=args.cloud_cache)
    return 0
