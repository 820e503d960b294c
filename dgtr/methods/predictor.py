"""A comparison method run like DGTR: ``load_predictor(checkpoint)`` → a ``dgtr.predict.Predictor`` whose forward pass
is the method's sampler and whose "TTA" is the method's own refinement.

Everything about objects (mesh files, clouds, frames, units, scores, DGTR*'s top-k ranking, the caller's frame) is
the ``Predictor``'s; only three things differ:
- ``raw(points)`` draws ``sample_config.n`` grasps (``sample_config.passes`` passes for UniDexGrasp: the DGTR paper's
  Table 2) with a generator seeded by ``seed`` (the same input gives the same grasps);
- ``tta=True`` runs the method's refinement (GraspTTA's test-time adaptation, UniDexGrasp's ContactNet refinement;
  nothing for SceneDiffuser and DDG) with ``tta_config`` = the checkpoint's ``refine`` section;
- ``top_k`` ranges over the n grasps drawn.

``dgtr.load`` returns one for a method's checkpoint, so ``dgtr predict --checkpoint METHOD.pt`` runs it like DGTR:
``--tta`` (the default) is the method's refinement, and changes nothing for SceneDiffuser and DDG (they have none:
the printed line says "no refinement"); ``--top-k K`` needs K ≤ ``sample.n`` (DDG: 1); the overrides are
``refine.*`` (``tta.*`` is taken as ``refine.*``) and ``sample.*`` (e.g. ``sample.passes=4`` for Table 2's 4×4).
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import InputError
from ..predict import Predictor

__all__ = ["MethodPredictor", "load_predictor"]


class MethodPredictor(Predictor):
    def __init__(self, model, cfg, device="cpu", source: str = ""):
        # the Predictor reads its AB-TTA settings from cfg.tta; a method's refinement settings stand in for them
        super().__init__(model, SimpleNamespace(tta=cfg.refine, model=cfg.model), device, source)
        self.cfg = cfg
        self.method = cfg.method
        self.sample_config = dataclasses.replace(cfg.sample)
        self.seed = 0

    @property
    def refinement(self) -> str | None:
        """What ``tta=True`` runs (the method's refinement), or None when it runs nothing."""
        if hasattr(self.model, "refine") and getattr(self.tta_config, "iterations", 0) > 0:
            return f"{self.method} ContactNet refinement"
        return None

    def set_overrides(self, overrides) -> None:
        """Inference settings changed by ``refine.key=value`` / ``sample.key=value`` (``tta.*`` = ``refine.*``), as
        ``dgtr predict`` takes them; checked (InputError, one line)."""
        from .train import with_inference_overrides

        self.cfg = with_inference_overrides(self.cfg, overrides)
        self.tta_config = self.cfg.refine
        self.sample_config = dataclasses.replace(self.cfg.sample)

    @torch.no_grad()
    def raw(self, points: torch.Tensor):
        """points (N, 3) network frame → (R (n,3,3), t (n,3), q (n,22)) sampled, on the CPU."""
        from . import sample

        s = self.sample_config
        s.check()
        gen = torch.Generator().manual_seed(self.seed)
        R, t, q = sample(self.model, points[None].to(self.device), s.n, s.passes, generator=gen)
        return R[0].cpu(), t[0].cpu(), q[0].cpu()

    def check_top_k(self, top_k: int | None) -> None:
        """InputError unless ``top_k`` is None or 1..the grasps drawn per object (checked before any work)."""
        n = self.sample_config.n
        if top_k is not None and not 1 <= int(top_k) <= n:
            raise InputError(f"top_k: expected 1..{n} ({self.method} draws sample.n = {n} grasps per object), "
                             f"got {top_k}")

    def predict(self, inp, tta: bool = True, top_k: int | None = None, network_points: torch.Tensor | None = None,
                rank: str = "auto"):
        """``NetworkInput`` → GraspSet in the caller's frame (n grasps, or the best ``top_k``).  The same steps as
        ``Predictor.predict`` with the method's refinement in place of AB-TTA (``network_points``: what the sampler
        sees instead of ``inp.points``; refinement and scores still use the object)."""
        from ..data import GraspSet

        self.check_top_k(top_k)
        pts = inp.points
        R, t, q = self.raw(pts if network_points is None else network_points)
        if tta and self.refinement:
            dev = self.device
            R, t, q = self.model.refine(self.hand, pts.to(dev), R.to(dev), t.to(dev), q.to(dev), self.tta_config)
            R, t, q = R.cpu(), t.cpu(), q.cpu()
        sc = self.score(pts, R, t, q)
        order = np.arange(R.shape[0])
        if top_k is not None:  # DGTR*'s ranking (dgtr.predict.rank_grasps)
            order = self.rank(inp, sc, R, t, q, top_k, rank)
        idx = torch.from_numpy(order)
        t_user = t[idx].double() + torch.from_numpy(inp.offset)
        return GraspSet.from_pose(R[idx], t_user, q[idx], inp.scale, code=inp.code,
                                  extra={k: v[order] for k, v in sc.items()})


def load_predictor(checkpoint, device="cpu", ck: dict | None = None) -> MethodPredictor:
    """A ``MethodPredictor`` from a comparison method's checkpoint (``train_method`` / ``export_method``); ``ck``:
    the file's contents when the caller has read them (``dgtr.load`` does, to see which model it holds)."""
    from .train import _device, load_method

    model, cfg = load_method(checkpoint, _device(str(device)), ck)
    return MethodPredictor(model, cfg, device, source=str(checkpoint))
