"""Inference: ``dgtr predict`` and the Python API ``dgtr.load(checkpoint)``.

    predictor = dgtr.load("default")                       # or a checkpoint written by `dgtr train`
    grasps = predictor("mug.obj", scale=1.0, tta=True, top_k=None)   # dgtr.data.GraspSet (16 grasps)

An object is a mesh file (taken in metres as loaded, × ``scale``; loaded as a union of convex pieces by
``dgtr.objects.load_object``), a point-cloud file (.npy (N,3), .xyz/.txt/.pts, or a .ply without faces), an (N, 3)
array/tensor (metres, × ``scale``), or an ``ObjectModel`` (its own scale × ``scale``).  A cloud of more than
``n_points`` (4096) points is reduced by farthest point sampling; a smaller one (≥ 64 points) is used as it is.

**Frames.**  The network was trained on DexGraspNet-normalised objects: bounding-box centre at the origin, metres,
in the orientation the meshes were modelled in (no rotation augmentation).  ``to_network`` moves the object there: a
translation by its bounding-box centre (``NetworkInput.offset``).  Sampling happens in that frame (a mesh file is
centred before its convex pieces are computed), so shifted copies of an object give the same cloud.  The forward
pass, AB-TTA and the scores all run in the network frame; ``predict`` moves the grasps back, so what it returns is
in the caller's frame.  Orientation is NOT normalised: a rotated object is grasped as the shape it appears to be
(valid grasps in the caller's frame, but not the rotated grasps of the upright object).

**Units.**  An object whose largest extent is under 1 cm or over 60 cm gets an ``ImplausibleSizeWarning`` naming its
size and the fix (``--units mm|cm`` / ``--scale``; ``scale=`` in Python).

After the forward pass AB-TTA (``dgtr.tta``, settings from the checkpoint's ``tta`` section) refines the grasps.
``top_k`` = DGTR*: keep the k best grasps (``rank_grasps``): by ``rank='q1'`` those penetrating the cloud by at most
3 mm first, then the largest Q1 on the object's mesh (``metrics.q1``, the evaluation's Q1); by ``rank='contacts'``
(the paper's rule; no mesh needed) the most contact points (contact candidates within 5 mm of the object), ties
broken by the smaller penetration; 'auto' (default): q1 for a mesh, contacts for a point cloud.  Ranked by Q1, the
grasps also carry 'q1'.  Each returned grasp carries ``extra`` values (``score_grasps``):
'penetration' (max depth of the object points inside the hand, m), 'contact_points', 'links_in_contact' (hand links
within 1 cm of the object, the Q1 protocol's contact rule) and two flags, 'no_contact' (no contact point) and
'deep_penetration' (penetration > 5 mm, ``metrics.PEN_THRESHOLD``).

``dgtr predict`` writes ``<code>.npy`` (DexGraspNet format, every scale in one file, the values above as extra keys),
``<code>.html`` and ``<code>.png`` (``dgtr.view``: every grasp, best first when ranked) per object; with several
``--scale`` values the pictures are ``<code>_s<scale>.html|png``.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import FileFormatError, InputError, MissingFileError

__all__ = ["Predictor", "NetworkInput", "ImplausibleSizeWarning", "load", "score_grasps", "DEFAULT_CHECKPOINT",
           "add_predict_args", "run_predict"]

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default.pt"
POINT_CLOUD_EXTENSIONS = (".npy", ".xyz", ".txt", ".pts")
CONTACT_POINT_DISTANCE = 0.005  # m: a contact candidate this close to the object is a contact point (DGTR* ranking)
PLAUSIBLE_EXTENT = (0.01, 0.60)  # m: largest extent of an object a ShadowHand can grasp
UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}


class ImplausibleSizeWarning(UserWarning):
    """The object is too small or too large for a hand: probably not in metres."""


# --------------------------------------------------------------------------------------------- object input
def _check_cloud(pts, name: str) -> torch.Tensor:
    """(N, 3) float64 tensor, checked."""
    from .model import MIN_POINTS

    try:
        x = torch.as_tensor(np.asarray(pts.detach().cpu() if torch.is_tensor(pts) else pts, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: cannot be read as an (N, 3) array of numbers ({e})") from None
    if x.ndim != 2 or x.shape[1] != 3:
        raise InputError(f"{name}: expected an (N, 3) point cloud, got shape {tuple(x.shape)}")
    if x.shape[0] < MIN_POINTS:
        raise InputError(f"{name}: needs at least {MIN_POINTS} points, got {x.shape[0]}")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name}: contains NaN or infinite coordinates")
    return x


def read_point_cloud(path) -> np.ndarray | None:
    """(N, 3) points of a point-cloud file, or None when the file is a mesh (a .ply with faces, .obj, ...)."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"object file not found: {p}")
    ext = p.suffix.lower()
    try:
        if ext == ".npy":
            return np.load(p, allow_pickle=False)
        if ext in (".xyz", ".txt", ".pts"):
            return np.loadtxt(p, ndmin=2)[:, :3] if p.stat().st_size else np.zeros((0, 3))
        if ext == ".ply":
            import trimesh
            geom = trimesh.load(p, process=False)
            if isinstance(geom, trimesh.PointCloud) or (hasattr(geom, "faces") and len(geom.faces) == 0):
                return np.asarray(geom.vertices)
    except (ValueError, OSError, IndexError) as e:
        raise FileFormatError(f"{p}: not a readable point cloud ({e})") from None
    return None


def _is_object_model(x) -> bool:
    return hasattr(x, "sample_points") and hasattr(x, "signed_distance") and hasattr(x, "with_scale")


_GENERIC = np.array([0.7236, 0.5257, 0.4472])  # a direction no mesh is symmetric about: orders vertices and faces


def canonical_piece(piece):
    """A convex piece with a triangulation that depends only on its shape: each planar facet (trimesh ``facets``)
    fanned from its vertex lowest along ``_GENERIC``, faces sorted along it.  qhull triangulates coplanar faces (the
    caps of a cylinder, the sides of a box) differently under 1e-16 noise, and area sampling follows triangles, so
    without this a shifted copy of a mesh file would get another point cloud."""
    import trimesh

    v, f = np.asarray(piece.vertices), np.asarray(piece.faces)
    in_facet = np.zeros(len(f), dtype=bool)
    tris = []
    for faces, normal in zip(piece.facets, piece.facets_normal):
        in_facet[faces] = True
        ring = np.unique(f[faces])
        c = v[ring].mean(0)
        u = np.cross(normal, [1.0, 0, 0] if abs(normal[0]) < 0.9 else [0, 1.0, 0])
        u /= np.linalg.norm(u)
        w = np.cross(normal, u)
        ring = ring[np.argsort(np.arctan2((v[ring] - c) @ w, (v[ring] - c) @ u))]  # counter-clockwise: outward
        ring = np.roll(ring, -int(np.argmin(v[ring] @ _GENERIC)))
        tris += [(ring[0], ring[k], ring[k + 1]) for k in range(1, len(ring) - 1)]
    tris = np.array(tris + [tuple(x) for x in f[~in_facet]], dtype=np.int64).reshape(-1, 3)
    area = np.linalg.norm(np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]]), axis=1)
    tris = tris[area > 1e-12 * float(np.ptp(v, 0).max()) ** 2]         # collinear boundary points: no area
    tris = tris[np.argsort(v[tris].mean(1) @ _GENERIC, kind="stable")]
    return trimesh.Trimesh(v, tris, process=False)


def centred_object(obj):
    """(copy of an ObjectModel with its bounding-box centre at the origin, offset (3,) m at its scale): the object is
    ``copy + offset``.  The object itself when it is centred already (DexGraspNet meshdata is)."""
    from .objects import ObjectModel

    unit = obj.with_scale(1.0)
    c = unit.bounds.mean(0)
    if not c.any():
        return obj, np.zeros(3)
    pieces = [p.copy().apply_translation(-c) for p in unit.pieces]
    return ObjectModel(pieces, code=obj.code, source=obj.source, scale=obj.scale), c * obj.scale


def size_warning(extent: float, code: str, scale: float) -> str | None:
    """The message of an ``ImplausibleSizeWarning`` for an object of largest extent ``extent`` m, or None."""
    lo, hi = PLAUSIBLE_EXTENT
    if lo <= extent <= hi:
        return None
    return (f"{code}: largest extent {extent:.3g} m at scale {scale:g} is implausible for a hand (expected "
            f"{lo * 100:g}-{hi * 100:g} cm; coordinates are read as metres): if the object is in millimetres or "
            "centimetres use --units mm|cm (Python: scale=0.001|0.01), or fix --scale")


@dataclass
class NetworkInput:
    """An object in the network's frame (module docstring, Frames).

    points (N, 3) float32 · obj: ObjectModel in the same frame at the scale used, or None (a point cloud) · code ·
    scale: the scale written into the grasp records · offset (3,) float64 m: caller's frame = network frame + offset.
    """

    points: torch.Tensor
    obj: object
    code: str
    scale: float
    offset: np.ndarray


def score_grasps(hand, points: torch.Tensor, R, t, q) -> dict[str, np.ndarray]:
    """Per-grasp values (B,) of B grasps on an object given by points (P, 3) (same frame as the grasps, metres):
    'penetration' (m, max depth of the points inside the hand), 'contact_points' (contact candidates within 5 mm),
    'links_in_contact' (links within 1 cm, the Q1 protocol's rule), 'no_contact' (no contact point),
    'deep_penetration' (penetration > ``metrics.PEN_THRESHOLD``, 5 mm).  R (B,3,3), t (B,3), q (B,22)."""
    from .geometry import nearest_distance
    from .metrics import CONTACT_THRESHOLD, PEN_THRESHOLD

    R, t, q = (torch.as_tensor(x, dtype=torch.float32) for x in (R, t, q))
    P = torch.as_tensor(points, dtype=torch.float32)[None].expand(R.shape[0], -1, -1)
    with torch.no_grad():
        per_link = hand.signed_distance(R, t, q, P, per_link=True)             # (B, P, G), positive inside
        near = nearest_distance(hand.contact_candidates(R, t, q), P)          # (B, C), one k-d tree for the cloud
    pen = per_link.amax((1, 2)).clamp_min(0).numpy()
    contacts = (near < CONTACT_POINT_DISTANCE).sum(-1).numpy()
    return {"penetration": pen, "contact_points": contacts,
            "links_in_contact": (per_link.amax(1) > -CONTACT_THRESHOLD).sum(-1).numpy(),
            "no_contact": contacts == 0, "deep_penetration": pen > PEN_THRESHOLD}


RANKS = ("auto", "contacts", "q1")
RANK_PEN = 0.003  # m: rank 'q1' puts grasps that penetrate the cloud deeper last (3 mm chosen on val; 2 and 5 mm close)


def rank_grasps(sc: dict, top_k: int, rank: str = "contacts", q1=None) -> np.ndarray:
    """DGTR*: the indices of the ``top_k`` best grasps by their ``score_grasps`` values ``sc``, best first.

    rank 'contacts' (the paper's rule): most contact points first, ties by the smaller penetration.  rank 'q1':
    grasps penetrating the cloud by at most ``RANK_PEN`` first, among them the largest Q1 first (``q1`` (B,),
    ``metrics.q1`` on the object mesh), ties by the contact rule.  Chosen on val_tune (30 val objects, the shipped
    model; docs/results.md "DGTR* ranking"): the top 4 of 16 held in all six directions 87.0 % of the time (Q1 alone
    84.5 %, the contact rule 74.2 %) with η_np 96.7 % (Q1 alone 79.2 %)."""
    if rank not in ("contacts", "q1"):
        raise InputError(f"rank: expected 'contacts' or 'q1', got {rank!r}")
    keys = [sc["penetration"], -np.asarray(sc["contact_points"])]           # lexsort: the last key sorts first
    if rank == "q1":
        if q1 is None:
            raise InputError("rank 'q1' needs the object's mesh (a point cloud has no Q1); use rank 'contacts'")
        keys += [-np.asarray(q1), np.asarray(sc["penetration"]) > RANK_PEN]
    return np.lexsort(keys)[:int(top_k)]


def grasp_flags(extra: dict, i: int) -> str:
    """The flag text of grasp i ("" when fine): 'no contact', 'pen > 5 mm'."""
    from .metrics import PEN_THRESHOLD

    out = []
    if "no_contact" in extra and bool(extra["no_contact"][i]):
        out.append("no contact")
    if "deep_penetration" in extra and bool(extra["deep_penetration"][i]):
        out.append(f"pen > {PEN_THRESHOLD * 1e3:g} mm")
    return ", ".join(out)


# ----------------------------------------------------------------------------------------------- predictor
class Predictor:
    """A trained DGTR + hand + AB-TTA settings.  ``predictor(obj, scale, tta, top_k) -> GraspSet``."""

    def __init__(self, model, cfg, device="cpu", source: str = ""):
        from .hand import get_hand

        self.model, self.cfg, self.device, self.source = model.eval(), cfg, torch.device(device), source
        self.tta_config = cfg.tta
        self.hand = get_hand(self.device)
        self.cpu_hand = get_hand()
        self._loaded: tuple = (None, None)  # (key, normalised ObjectModel) of the last mesh file: scales share it

    @property
    def n_points(self) -> int:
        return self.cfg.model.n_points

    @property
    def refinement(self) -> str | None:
        """What ``tta=True`` runs ('AB-TTA'; a comparison method's predictor: its own refinement, or None)."""
        return "AB-TTA"

    def set_overrides(self, overrides) -> None:
        """AB-TTA settings changed by ``tta.key=value`` overrides (what ``dgtr predict`` takes), checked."""
        from .tta import with_overrides

        self.tta_config = with_overrides(self.tta_config, overrides)

    def _load_mesh(self, path: Path, code: str | None):
        """A mesh file as an ObjectModel normalised like DexGraspNet (centred BEFORE its convex pieces are computed,
        and triangulated by ``canonical_piece``: a shifted file gives the same pieces), cached for the next call with
        the same file."""
        from .objects import load_object

        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size, code)
        if self._loaded[0] != key:
            from .objects import ObjectModel

            obj = load_object(path, normalize=True, code=code)
            pieces = [canonical_piece(p) for p in obj.pieces]
            self._loaded = (key, ObjectModel(pieces, code=obj.code, source=obj.source,
                                             normalization=obj.normalization))
        return self._loaded[1]

    def to_network(self, obj, scale: float = 1.0, code: str | None = None) -> NetworkInput:
        """Object input (module docstring) × scale → ``NetworkInput`` in the network's frame; warns
        (``ImplausibleSizeWarning``) when the object is not hand-sized."""
        from .model import farthest_point_sample

        scale = float(scale)
        if not np.isfinite(scale) or scale <= 0:
            raise InputError(f"scale: must be a positive number, got {scale}")
        model_obj, used, offset = None, scale, np.zeros(3)
        if isinstance(obj, (str, Path)):
            cloud = read_point_cloud(obj)
            if cloud is None:
                base = self._load_mesh(Path(obj), code)
                centre, factor = base.normalization  # file = loaded / factor + centre
                model_obj, offset = base.with_scale(scale / factor), np.asarray(centre, dtype=np.float64) * scale
                code = code or base.code
            else:
                obj, code = _check_cloud(cloud, str(obj)), code or Path(obj).stem
        elif _is_object_model(obj):
            model_obj, used = obj.with_scale(obj.scale * scale), obj.scale * scale
            code = code or getattr(obj, "code", "object")
        else:
            obj = _check_cloud(obj, "points")
        if model_obj is not None:
            model_obj, c = centred_object(model_obj)
            offset = offset + c
            pts = torch.from_numpy(np.asarray(model_obj.sample_points(self.n_points, seed=0), dtype=np.float32))
            extent = float((model_obj.bounds[1] - model_obj.bounds[0]).max())
        else:
            x = obj * scale                                                     # float64
            c = ((x.amin(0) + x.amax(0)) / 2).numpy()
            pts, offset = (x - torch.from_numpy(c)).float(), c
            extent = float((x.amax(0) - x.amin(0)).max())
            if pts.shape[0] > self.n_points:
                pts = pts[farthest_point_sample(pts, self.n_points)]
        code = code or "object"
        msg = size_warning(extent, code, used)
        if msg:
            warnings.warn(msg, ImplausibleSizeWarning, stacklevel=2)
        return NetworkInput(pts, model_obj, code, used, offset)

    @torch.no_grad()
    def raw(self, points: torch.Tensor):
        """points (N, 3) network frame → (R (Q,3,3), t (Q,3), q (Q,22)) of the forward pass, on the CPU."""
        out = self.model(points[None].to(self.device))
        return out["rotation"][0].cpu(), out["translation"][0].cpu(), out["joints"][0].cpu()

    def score(self, points: torch.Tensor, R, t, q) -> dict[str, np.ndarray]:
        """``score_grasps`` with this predictor's hand."""
        return score_grasps(self.cpu_hand, points, R, t, q)

    def check_top_k(self, top_k: int | None) -> None:
        """InputError unless ``top_k`` is None or 1..Q (the model's queries), checked before any work."""
        if top_k is not None and not 1 <= int(top_k) <= self.cfg.model.n_queries:
            raise InputError(f"top_k: expected 1..{self.cfg.model.n_queries}, got {top_k}")

    def predict(self, inp: NetworkInput, tta: bool = True, top_k: int | None = None,
                network_points: torch.Tensor | None = None, rank: str = "auto"):
        """``NetworkInput`` → GraspSet in the caller's frame (Q grasps, or the best ``top_k`` by ``rank``:
        ``rank_grasps``; 'auto' = 'q1' for a mesh, 'contacts' for a point cloud).  network_points (N, 3): what the
        network sees instead of ``inp.points`` (AB-TTA and scores still use the object), for controls such as
        ``benchmarks/shape_blind.py``."""
        from .data import GraspSet
        from .tta import adapt

        self.check_top_k(top_k)
        pts = inp.points
        R, t, q = self.raw(pts if network_points is None else network_points)
        if tta:  # in the network frame, like the forward pass: shifted copies get the same refinement
            dev = self.device
            R, t, q = adapt(self.hand, pts.to(dev), R.to(dev), t.to(dev), q.to(dev), self.tta_config, obj=inp.obj)
            R, t, q = R.cpu(), t.cpu(), q.cpu()
        sc = self.score(pts, R, t, q)
        order = np.arange(R.shape[0])
        if top_k is not None:
            order = self.rank(inp, sc, R, t, q, top_k, rank)
        idx = torch.from_numpy(order)
        t_user = t[idx].double() + torch.from_numpy(inp.offset)
        return GraspSet.from_pose(R[idx], t_user, q[idx], inp.scale, code=inp.code,
                                  extra={k: v[order] for k, v in sc.items()})

    def rank(self, inp: NetworkInput, sc: dict, R, t, q, top_k: int, rank: str = "auto") -> np.ndarray:
        """``rank_grasps`` for grasps R, t, q in the network frame of ``inp`` (Q1 on ``inp.obj`` when ranked by it,
        and then also in ``sc['q1']``)."""
        if rank not in RANKS:
            raise InputError(f"rank: expected one of {', '.join(RANKS)}, got {rank!r}")
        if rank == "auto":
            rank = "q1" if inp.obj is not None else "contacts"
        q1 = None
        if rank == "q1" and inp.obj is not None:
            from .metrics import q1 as q1_of

            q1 = sc["q1"] = q1_of(self.cpu_hand, inp.obj, R, t, q)
        return rank_grasps(sc, top_k, rank, q1)

    def __call__(self, obj, scale: float = 1.0, tta: bool = True, top_k: int | None = None, code: str | None = None,
                 rank: str = "auto"):
        """Grasps for one object in its own frame → ``GraspSet`` (Q grasps, or ``top_k`` by ``rank``), 'scale' = the
        scale used."""
        return self.predict(self.to_network(obj, scale, code), tta, top_k, rank=rank)

    # The two halves of __call__ in the caller's frame, for callers that time the prediction alone
    # (benchmarks/results.py): prepare = to_network moved back; predict_points moves its input to the network frame.
    def prepare(self, obj, scale: float = 1.0, code: str | None = None):
        """Object input → (points (N, 3) float32 in the caller's frame, ObjectModel (caller's frame) or None, code)."""
        inp = self.to_network(obj, scale, code)
        pts = (inp.points.double() + torch.from_numpy(inp.offset)).float()
        obj = inp.obj
        if obj is not None and inp.offset.any():
            from .objects import ObjectModel
            obj = ObjectModel([p.copy().apply_translation(inp.offset) for p in obj.pieces], code=obj.code,
                              source=obj.source, scale=1.0)
        return pts, obj, inp.code

    def predict_points(self, pts: torch.Tensor, model_obj, scale: float, code: str, tta: bool = True,
                       top_k: int | None = None, rank: str = "auto"):
        """``prepare``'s output → GraspSet (caller's frame).  pts (N, 3) metres; model_obj: ObjectModel at that scale
        or None."""
        pts = torch.as_tensor(pts).double()
        if model_obj is not None:
            model_obj, offset = centred_object(model_obj)
        else:
            offset = ((pts.amin(0) + pts.amax(0)) / 2).numpy()
        inp = NetworkInput((pts - torch.from_numpy(offset)).float(), model_obj, code, float(scale), offset)
        return self.predict(inp, tta, top_k, rank=rank)


def load(checkpoint="default", device="cpu") -> Predictor:
    """A ``Predictor`` from a checkpoint written by ``dgtr train`` / ``dgtr export`` (or "default":
    ``dgtr/checkpoints/default.pt``).  A comparison method's checkpoint (its config names the method:
    ``dgtr.methods``) gives that method's predictor (``dgtr.methods.load_predictor``: a ``Predictor`` whose forward
    pass is the method's sampler and whose ``tta`` is its own refinement)."""
    from .hand import get_hand
    from .model import build_model
    from .train import config_from_checkpoint, load_weights, read_checkpoint

    if str(checkpoint) == "default":
        path = DEFAULT_CHECKPOINT
        if not path.is_file():
            raise MissingFileError(f"no bundled default checkpoint yet ({path} does not exist): train one with "
                                   "`dgtr train` and pass its RUN/checkpoint.pt")
    else:
        path = Path(checkpoint)
    if str(device) != "cpu" and not str(device).startswith("cuda"):
        raise InputError(f"device: expected cpu or cuda, got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device cuda: no CUDA device is available (use cpu)")
    ck = read_checkpoint(path)
    from .methods import is_method_checkpoint

    if is_method_checkpoint(ck):
        from .methods import load_predictor

        return load_predictor(path, device, ck)
    cfg = config_from_checkpoint(ck, path)
    cfg.check()
    hand = get_hand()
    model = build_model(cfg.model, hand.joint_lower, hand.joint_upper)
    load_weights(model, ck["model"], path)
    return Predictor(model.to(device), cfg, device, source=str(path))


# ------------------------------------------------------------------------------------------------------ CLI
def add_predict_args(p: argparse.ArgumentParser) -> None:
    from .cli import positive_float, positive_int

    p.add_argument("--checkpoint", default="default", help="checkpoint of `dgtr train` / `dgtr export` (DGTR or a "
                                                           "comparison method, docs/methods.md); 'default': the "
                                                           "bundled one")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mesh", help="one mesh (obj/stl/ply/off) or point cloud (.npy (N,3), .xyz, .ply), anywhere "
                                    "in its own frame (it is centred for the network and the grasps moved back)")
    src.add_argument("--meshes", help="folder of meshes: DexGraspNet meshdata (<code>/coacd/decomposed.obj) or "
                                      "<code>.obj|stl|ply|off")
    p.add_argument("--objects", help="with --meshes: comma-separated codes to predict (default: all)")
    p.add_argument("--scale", type=positive_float, nargs="+", action="extend", default=None,
                   help="object scale(s): --scale 0.06 0.1 or repeated (default: 1, the mesh as loaded)")
    p.add_argument("--units", choices=sorted(UNITS), default="m",
                   help="unit of the file's coordinates (× --scale); the grasp records store the combined scale")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="AB-TTA refinement (a comparison method: its own refinement; none for SceneDiffuser, DDG)")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="DGTR*: keep the best K grasps, best first (default: all, unranked)")
    p.add_argument("--rank", choices=RANKS, default="auto",
                   help="DGTR*'s order: q1 (the mesh's Q1, ~1-3 s more per object and scale), contacts (the paper's: "
                        "most contact points, then least penetration; no mesh needed), auto (q1 for a mesh, contacts "
                        "for a point cloud)")
    p.add_argument("--out", required=True, help="output folder (checked for writing before anything runs)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: 1 when other jobs keep the cores busy, i.e. the 1-minute "
                        "load average is at least the number of cores minus 0.5; else torch's choice)")
    p.add_argument("--no-pictures", action="store_true", help="write only the .npy files")
    p.add_argument("overrides", nargs="*", metavar="tta.key=value",
                   help="AB-TTA overrides, e.g. tta.iterations=100 (a comparison method: refine.key=value, "
                        "sample.key=value, e.g. sample.passes=4)")


def _objects_from_args(args) -> list[tuple[str, Path]]:
    if args.mesh:
        path = Path(args.mesh)
        if not path.is_file():
            raise MissingFileError(f"--mesh: file not found: {path}")
        code = path.parent.parent.name if path.name == "decomposed.obj" and path.parent.name == "coacd" else path.stem
        return [(code, path)]
    from .objects import list_objects

    if not Path(args.meshes).is_dir():
        raise MissingFileError(f"--meshes: folder not found: {args.meshes}")
    found = list_objects(args.meshes)
    if args.objects:
        want = [c.strip() for c in args.objects.split(",") if c.strip()]
        missing = [c for c in want if c not in found]
        if missing:
            raise InputError(f"--objects: {missing} not in {args.meshes} (has {len(found)} objects)")
        found = {c: found[c] for c in want}
    return list(found.items())


def print_table(g, indices=None, file=None) -> None:
    """The per-grasp table of ``dgtr predict`` / ``dgtr view`` with the flags, and a warning line when no grasp
    touches the object or some penetrate.  indices: the grasp numbers shown (default 0..n-1)."""
    file = file or sys.stdout
    indices = range(len(g)) if indices is None else indices
    print(f"  {'#':>3} {'pen (mm)':>9} {'links ≤1cm':>10} {'contact pts':>11}  flag", file=file)
    for i, n in zip(range(len(g)), indices):
        print(f"  {int(n):>3} {g.extra['penetration'][i] * 1e3:9.2f} {int(g.extra['links_in_contact'][i]):10d} "
              f"{int(g.extra['contact_points'][i]):11d}  {grasp_flags(g.extra, i)}".rstrip(), file=file)
    from .metrics import PEN_THRESHOLD

    n, none, deep = len(g), int(g.extra["no_contact"].sum()), int(g.extra["deep_penetration"].sum())
    if n and none == n:
        print(f"  warning: none of the {n} grasps touches the object (no contact point within "
              f"{CONTACT_POINT_DISTANCE * 1e3:g} mm): check the object's units and scale", file=file)
    if deep:
        print(f"  warning: {deep} of {n} grasps penetrate the object by more than {PEN_THRESHOLD * 1e3:g} mm "
              "(flagged)", file=file)


def free_cores(samples: int = 5) -> int | None:
    """Cores no other process is running on now, at least 1 (None where it cannot be told).  Linux: the runnable
    tasks of /proc/loadavg (an instantaneous count; the load averages lag by a minute), median of a few reads 10 ms
    apart, less this process."""
    import statistics
    import time

    n = os.cpu_count() or 1
    try:
        counts = []
        for k in range(samples):
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
            if k + 1 < samples:
                time.sleep(0.01)
    except (OSError, ValueError, IndexError):
        return None
    return max(1, min(torch.get_num_threads(), n - int(statistics.median(counts))))


def run_predict(args) -> int:
    import time

    from .cli import check_out_dir
    from .data import GraspSet, save_grasps
    from .view import write_pictures

    threads = args.threads
    if threads is None:
        # beside busy cores an OpenMP thread only waits (a mug beside 2 busy processes: 1 thread 13.3 s, 2: 22-26 s)
        threads = free_cores()
    if threads is not None:
        torch.set_num_threads(threads)
    scales, unit = args.scale or [1.0], UNITS[args.units]
    objects = _objects_from_args(args)
    out = check_out_dir(args.out)
    predictor = load(args.checkpoint, args.device)
    predictor.set_overrides(args.overrides)
    try:
        predictor.check_top_k(args.top_k)
    except InputError as e:
        raise InputError(f"--top-k: {str(e).removeprefix('top_k: ')}") from None
    refined = predictor.refinement if args.tta else None
    label = refined or ("no TTA" if not args.tta else f"{getattr(predictor, 'method', 'dgtr')}: no refinement")
    for code, path in objects:
        sets = []
        for s in scales:
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ImplausibleSizeWarning)
                inp = predictor.to_network(path, s * unit, code)
            for w in caught:
                print(f"dgtr predict: warning: {w.message}", file=sys.stderr)
            g = predictor.predict(inp, tta=args.tta, top_k=args.top_k, rank=args.rank)
            dt = time.perf_counter() - t0
            sets.append(g)
            print(f"{code} scale {s * unit:g}: {len(g)} grasps in {dt:.2f} s ({label})")
            print_table(g)
            if not args.no_pictures:  # in the caller's frame, like the grasps
                stem = code if len(scales) == 1 else f"{code}_s{s:g}"
                mesh = inp.obj.mesh.copy().apply_translation(inp.offset) if inp.obj is not None else None
                order = f"DGTR* top {args.top_k}, best first" if args.top_k else f"{len(g)} grasps"
                write_pictures(out / stem, g, predictor.cpu_hand, mesh=mesh, points=inp.points.numpy() + inp.offset,
                               title=f"{code} × {s * unit:g} ({order})")
        save_grasps(out / f"{code}.npy", GraspSet.concat(sets))
    print(f"wrote {len(objects)} object(s) to {out}")
    return 0
