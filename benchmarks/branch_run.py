"""Branch a training run: copy run SRC to DEST with config overrides, to be continued with ``dgtr train --resume``.

    python benchmarks/branch_run.py SRC DEST [key=value ...]
    dgtr train --data ... --out DEST --resume

Comparisons that share their first epochs (e.g. DMT + SMW, which have no penetration term, before SMPT with two
penetration losses) train those once (``--max-epochs``) and branch.  ``--resume`` refuses a config that differs from
the run's, so the copy's saved config (in checkpoint.pt and config.yaml) is rewritten with the overrides; its
weights, optimiser state and position in the schedule stay those of SRC.  SRC's per-epoch checkpoints, TensorBoard
logs and clouds are not copied.  A DEST that has a checkpoint already is left alone (so scripts can call it again).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from dgtr import config as config_mod
from dgtr.errors import InputError
from dgtr.files import torch_save
from dgtr.train import TrainConfig


def branch(src: Path, dest: Path, overrides: list[str]) -> None:
    """Copy the run ``src`` to ``dest`` with ``overrides`` applied to its saved config (not to its weights)."""
    if (dest / "checkpoint.pt").exists():
        return
    if not (src / "checkpoint.pt").is_file():
        raise SystemExit(f"branch_run: {src / 'checkpoint.pt'} not found")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("tb", "clouds", "checkpoint_epoch*.pt"))
    ck = torch.load(tmp / "checkpoint.pt", map_location="cpu", weights_only=True)
    cfg = config_mod.from_dict(TrainConfig, config_mod.apply_overrides(ck["config"], overrides))
    ck["config"] = config_mod.to_dict(cfg)
    torch_save(ck, tmp / "checkpoint.pt")
    config_mod.save(cfg, tmp / "config.yaml")
    tmp.rename(dest)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    try:
        branch(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
    except InputError as e:  # an unknown key or a bad value
        raise SystemExit(f"branch_run: {e}")
    print(f"branched {sys.argv[1]} -> {sys.argv[2]}; continue with: dgtr train ... --out {sys.argv[2]} --resume")
