"""The DGTR paper's comparison methods (Tables 1 and 2) as methods of this package, built from their papers' ideas on
the ShadowHand, object clouds and data of dgtr (docs/methods.md):

| ``method:``    | paper                                   | model                                                     |
|----------------|-----------------------------------------|-----------------------------------------------------------|
| grasptta       | Jiang et al., ICCV 2021                 | CVAE of grasps + ContactNet test-time adaptation          |
| unidexgrasp    | Xu et al., CVPR 2023                    | GraspIPDF (rotations) + GraspGlow (t, q) + ContactNet     |
| scenediffuser  | Huang et al., CVPR 2023                 | conditional DDPM over the grasp vector                    |
| ddg            | Liu et al., RSS 2020                    | one regressed grasp + differentiable Q1-like loss (cloud) |

A run config names its method (``method: grasptta``, configs/methods/<method>.yaml); each method module holds its
typed run config (``<Name>Run``: method, model, loss, train, sample, refine sections) and its ``nn.Module`` with

    model.loss(batch, hand, generator) -> (loss, {term: float})     # one training step's loss (dgtr.data.collate batch)
    model.sample(points (B,N,3), n, [passes,] generator=None)       # -> R (B,n,3,3), t (B,n,3), q (B,n,22), no refinement
    model.refine(hand, points (N,3), R, t, q, cfg.refine)           # GraspTTA / UniDexGrasp only

This registry maps the names to them (``build``, ``train_step``, ``sample``); ``train_method`` trains one
(``dgtr.methods.train``), ``load_predictor`` runs one like ``dgtr.load`` (``dgtr.methods.predictor``).

The ``dgtr`` commands dispatch here: ``dgtr train`` on the config's ``method`` (``dgtr.train.run_train`` →
``run_method_train``), ``dgtr export`` and ``dgtr.load`` / ``dgtr predict --checkpoint`` on the checkpoint's
(``is_method_checkpoint`` → ``export_method`` / ``load_predictor``); ``dgtr eval`` scores the grasp files as any.
``python -m dgtr.methods train|export`` is an alias of ``dgtr train|export``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import FileFormatError, InputError, MissingFileError

__all__ = ["METHODS", "MethodSpec", "spec", "run_config_class", "build", "train_step", "sample", "method_of",
           "load_config", "config_from_dict", "train_method", "read_method_checkpoint", "load_method",
           "load_predictor", "export_method", "run_method_train", "is_method_checkpoint", "with_inference_overrides"]

DGTR = "dgtr"  # the name of the default model (dgtr.train), for dispatch


@dataclass(frozen=True)
class MethodSpec:
    name: str
    module: str       # dgtr.methods.<module>
    run_config: str   # its run-config dataclass
    model: str        # its nn.Module
    paper: str

    def load(self):
        return importlib.import_module(f"{__name__}.{self.module}")


METHODS: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("grasptta", "grasptta", "GraspTTARun", "GraspTTA", "Jiang et al., ICCV 2021"),
    MethodSpec("unidexgrasp", "unidexgrasp", "UniDexGraspRun", "UniDexGrasp", "Xu et al., CVPR 2023"),
    MethodSpec("scenediffuser", "scenediffuser", "SceneDiffuserRun", "SceneDiffuser", "Huang et al., CVPR 2023"),
    MethodSpec("ddg", "ddg", "DDGRun", "DDG", "Liu et al., RSS 2020"),
)}


def spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise InputError(f"method: unknown method {name!r}; expected {DGTR!r} or one of {sorted(METHODS)}")
    return METHODS[name]


def run_config_class(name: str) -> type:
    s = spec(name)
    return getattr(s.load(), s.run_config)


def build(cfg, hand):
    """The method's model for run config ``cfg`` (its ``method`` names it) and a ``dgtr.hand.ShadowHand``."""
    s = spec(cfg.method)
    cfg.check()
    return getattr(s.load(), s.model)(cfg, hand)


def train_step(model, batch: dict, hand, generator):
    """(loss, logs) of one training batch."""
    return model.loss(batch, hand, generator)


def sample(model, points, n: int, passes: int = 1, generator=None):
    """points (B, N, 3) → R (B, n, 3, 3), t (B, n, 3), q (B, n, 22) (DDG: n = 1; passes: UniDexGrasp only)."""
    if passes != 1:
        if not hasattr(model, "sample_rotations"):
            raise InputError(f"passes={passes}: only UniDexGrasp samples in several passes")
        return model.sample(points, n, passes, generator=generator)
    return model.sample(points, n, generator=generator)


# ---------------------------------------------------------------------------------------------- configs
def method_of(path=None, overrides=()) -> str:
    """The method a run config names: a ``method=...`` override, else the YAML file's top-level ``method`` key, else
    'dgtr' (DGTR's own configs carry no such key)."""
    import yaml

    for ov in reversed(list(overrides)):
        k, _, v = ov.partition("=")
        if k.strip() == "method":
            return str(yaml.safe_load(v)).strip()
    if path is None:
        return DGTR
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise FileFormatError(f"config file {p} is not valid YAML: {e}") from None
    return str(data.get("method", DGTR)) if isinstance(data, dict) else DGTR


def load_config(path=None, overrides=(), method: str | None = None):
    """Run config of a comparison method: its defaults, the YAML file, then ``key=value`` overrides (all checked)."""
    from .. import config

    name = method or method_of(path, overrides)
    cfg = config.load(run_config_class(name), path, overrides)
    if cfg.method != name:
        raise InputError(f"method: the config says {cfg.method!r} but was loaded as {name!r}")
    cfg.check()
    return cfg


def config_from_dict(data: dict, where="checkpoint"):
    """A saved run config (``config.to_dict``) → its run-config dataclass; FileFormatError when it does not fit."""
    from .. import config
    from ..errors import DgtrError

    if not isinstance(data, dict) or data.get("method", DGTR) not in METHODS:
        raise FileFormatError(f"{where}: its config names no comparison method (method: "
                              f"{data.get('method', DGTR) if isinstance(data, dict) else '?'!r})")
    try:
        cfg = config.from_dict(run_config_class(data["method"]), data)
        cfg.check()
    except (DgtrError, TypeError, AttributeError) as e:
        raise FileFormatError(f"{where}: its config does not fit this version of dgtr ({e})") from None
    return cfg


def is_method_checkpoint(ck: dict) -> bool:
    """Whether a checkpoint dict (``dgtr.train.read_checkpoint``) holds a comparison method (not DGTR)."""
    cfg = ck.get("config") if isinstance(ck, dict) else None
    return isinstance(cfg, dict) and cfg.get("method", DGTR) != DGTR


from .predictor import load_predictor  # noqa: E402  (the modules above are what they import)
from .train import (export_method, load_method, read_method_checkpoint, run_method_train, train_method,  # noqa: E402
                    with_inference_overrides)
