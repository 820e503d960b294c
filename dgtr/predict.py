"""Inference: ``dgtr predict`` and the Python API ``dgtr.load(checkpoint)``.

    predictor = dgtr.load("default")                       # or a checkpoint written by `dgtr train`
    grasps = predictor("mug.obj", scale=1.0, tta=True, top_k=None)   # dgtr.data.GraspSet (16 grasps)

An object is a mesh file (taken in metres as loaded, × ``scale``; loaded as a union of convex pieces by
``dgtr.objects.load_object``), a point-cloud file (.npy (N,3), .xyz/.txt/.pts, or a .ply without faces), an (N, 3)
array/tensor (metres, × ``scale``), or an ``ObjectModel`` (its own scale × ``scale``).  A cloud of more than
``n_points`` (4096) points is reduced by farthest point sampling; a smaller one (≥ 64 points) is used as it is.

After the forward pass AB-TTA (``dgtr.tta``, settings from the checkpoint's ``tta`` section) refines the grasps.
``top_k`` = DGTR*: keep the k grasps with the most contact points (contact candidates within 5 mm of the object),
ties broken by the smaller penetration.  Each returned grasp carries ``extra`` values 'penetration' (max depth of the
object points inside the hand, m), 'contact_points' and 'links_in_contact' (hand links within 1 cm of the object, the
Q1 protocol's contact rule).

``dgtr predict`` writes ``<code>.npy`` (DexGraspNet format, every scale in one file), ``<code>.html`` (plotly: object
+ one toggleable hand mesh per grasp) and ``<code>.png`` (matplotlib preview) per object; with several ``--scale``
values the pictures are ``<code>_s<scale>.html|png``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .errors import FileFormatError, InputError, MissingFileError

__all__ = ["Predictor", "load", "DEFAULT_CHECKPOINT", "add_predict_args", "run_predict"]

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default.pt"
POINT_CLOUD_EXTENSIONS = (".npy", ".xyz", ".txt", ".pts")
CONTACT_POINT_DISTANCE = 0.005  # m: a contact candidate this close to the object is a contact point (DGTR* ranking)


# --------------------------------------------------------------------------------------------- object input
def _check_cloud(pts, name: str) -> torch.Tensor:
    from .model import MIN_POINTS

    try:
        x = torch.as_tensor(np.asarray(pts.detach().cpu() if torch.is_tensor(pts) else pts, dtype=np.float32))
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


# ----------------------------------------------------------------------------------------------- predictor
class Predictor:
    """A trained DGTR + hand + AB-TTA settings.  ``predictor(obj, scale, tta, top_k) -> GraspSet``."""

    def __init__(self, model, cfg, device="cpu", source: str = ""):
        from .hand import get_hand

        self.model, self.cfg, self.device, self.source = model.eval(), cfg, torch.device(device), source
        self.tta_config = cfg.tta
        self.hand = get_hand(self.device)
        self.cpu_hand = get_hand()

    @property
    def n_points(self) -> int:
        return self.cfg.model.n_points

    def prepare(self, obj, scale: float = 1.0, code: str | None = None):
        """Object input → (points (N, 3) float32 CPU tensor in metres, ObjectModel or None, code)."""
        from .model import farthest_point_sample

        scale = float(scale)
        if not np.isfinite(scale) or scale <= 0:
            raise InputError(f"scale: must be a positive number, got {scale}")
        model_obj = None
        if isinstance(obj, (str, Path)):
            cloud = read_point_cloud(obj)
            if cloud is None:
                from .objects import load_object
                model_obj = load_object(obj, scale=scale)
                code = code or model_obj.code
            else:
                obj, code = np.asarray(cloud, dtype=np.float64) * scale, code or Path(obj).stem
        elif _is_object_model(obj):
            model_obj = obj.with_scale(obj.scale * scale)
            code = code or getattr(obj, "code", "object")
        else:
            obj = _check_cloud(obj, "points") * scale
        if model_obj is not None:
            pts = torch.from_numpy(np.asarray(model_obj.sample_points(self.n_points, seed=0), dtype=np.float32))
        else:
            pts = _check_cloud(obj, "points")
        if pts.shape[0] > self.n_points:
            pts = pts[farthest_point_sample(pts, self.n_points)]
        return pts, model_obj, code or "object"

    @torch.no_grad()
    def raw(self, points: torch.Tensor):
        """points (N, 3) → (R (Q,3,3), t (Q,3), q (Q,22)) of the forward pass, on the CPU."""
        out = self.model(points[None].to(self.device))
        return out["rotation"][0].cpu(), out["translation"][0].cpu(), out["joints"][0].cpu()

    @torch.no_grad()
    def score(self, points: torch.Tensor, R, t, q) -> dict[str, torch.Tensor]:
        """Per grasp (B,): 'penetration' (m), 'contact_points', 'links_in_contact' (see module docstring)."""
        from .metrics import CONTACT_THRESHOLD

        hand, B = self.cpu_hand, R.shape[0]
        P = points[None].expand(B, -1, -1)
        per_link = hand.signed_distance(R, t, q, P, per_link=True)            # (B, P, G), positive inside
        kp = hand.contact_candidates(R, t, q)                                  # (B, C, 3)
        near = torch.cdist(kp, P).amin(-1)                                    # (B, C)
        return {"penetration": per_link.amax((1, 2)).clamp_min(0),
                "contact_points": (near < CONTACT_POINT_DISTANCE).sum(-1),
                "links_in_contact": (per_link.amax(1) > -CONTACT_THRESHOLD).sum(-1)}

    def __call__(self, obj, scale: float = 1.0, tta: bool = True, top_k: int | None = None, code: str | None = None):
        """Grasps for one object → ``GraspSet`` (Q grasps, or ``top_k``), 'scale' = the scale used."""
        pts, model_obj, code = self.prepare(obj, scale, code)
        used = model_obj.scale if model_obj is not None else float(scale)
        return self.predict_points(pts, model_obj, used, code, tta, top_k)

    def predict_points(self, pts: torch.Tensor, model_obj, scale: float, code: str, tta: bool = True,
                       top_k: int | None = None):
        """``prepare``'s output → GraspSet.  pts (N, 3) metres; model_obj: ObjectModel at that scale or None."""
        from .data import GraspSet
        from .tta import adapt

        if top_k is not None and not 1 <= int(top_k) <= self.cfg.model.n_queries:
            raise InputError(f"top_k: expected 1..{self.cfg.model.n_queries}, got {top_k}")
        R, t, q = self.raw(pts)
        if tta:
            dev = self.device
            R, t, q = adapt(self.hand, pts.to(dev), R.to(dev), t.to(dev), q.to(dev), self.tta_config, obj=model_obj)
            R, t, q = R.cpu(), t.cpu(), q.cpu()
        sc = self.score(pts, R, t, q)
        order = torch.arange(R.shape[0])
        if top_k is not None:  # DGTR*: most contact points first, then least penetration (lexsort: last key first)
            order = torch.from_numpy(np.lexsort((sc["penetration"].numpy(), -sc["contact_points"].numpy())))
            order = order[:int(top_k)]
        extra = {k: v[order].numpy() for k, v in sc.items()}
        return GraspSet.from_pose(R[order], t[order], q[order], scale, code=code, extra=extra)


def load(checkpoint="default", device="cpu") -> Predictor:
    """A ``Predictor`` from a checkpoint written by ``dgtr train`` (or "default": ``dgtr/checkpoints/default.pt``)."""
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
    cfg = config_from_checkpoint(ck, path)
    cfg.check()
    hand = get_hand()
    model = build_model(cfg.model, hand.joint_lower, hand.joint_upper)
    load_weights(model, ck["model"], path)
    return Predictor(model.to(device), cfg, device, source=str(path))


# ------------------------------------------------------------------------------------------------- pictures
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]


def _cluster(mesh, cell: float = 0.003):
    """Vertex-clustering decimation (cell in m): the hand's STL meshes have ~20k faces; 3 mm keeps the shape and
    makes a 16-hand HTML a few MB instead of tens."""
    key = np.floor(mesh.vertices / cell).astype(np.int64)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    n = inv.max() + 1
    v = np.zeros((n, 3))
    np.add.at(v, inv, mesh.vertices)
    v /= np.bincount(inv, minlength=n)[:, None]
    f = inv[mesh.faces]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    return v, np.unique(f, axis=0)


def write_html(path, grasps, hand, mesh=None, points=None, title: str = "") -> None:
    """Plotly scene: the object (mesh, else points) and each grasp's hand as one mesh trace, toggled in the legend."""
    import plotly.graph_objects as go
    import trimesh

    traces = []
    if mesh is not None:
        v, f = np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces)
        traces.append(go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2], color="lightgray",
                                opacity=1.0, name="object", showlegend=True, flatshading=True))
    else:
        p = np.asarray(points, dtype=np.float32)
        traces.append(go.Scatter3d(x=p[:, 0], y=p[:, 1], z=p[:, 2], mode="markers", name="object",
                                   marker=dict(size=1.5, color="gray")))
    R, t, q = grasps.rotation.float(), grasps.translation.float(), grasps.joints.float()
    pen = grasps.extra.get("penetration")
    for i in range(len(grasps)):
        v, f = _cluster(trimesh.util.concatenate(hand.visual_meshes(R[i], t[i], q[i])))
        v = v.astype(np.float32)
        name = f"grasp {i}" + (f" (pen {pen[i] * 1e3:.1f} mm)" if pen is not None else "")
        traces.append(go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2], name=name,
                                color=_COLOURS[i % len(_COLOURS)], opacity=0.9, showlegend=True, flatshading=True))
    fig = go.Figure(traces)
    fig.update_layout(title=title, scene=dict(aspectmode="data"), margin=dict(l=0, r=0, t=40, b=0),
                      legend=dict(title="click to show/hide"))
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)  # self-contained: works offline


def write_png(path, grasps, hand, points, n_hands: int = 4, title: str = "") -> None:
    """Small matplotlib preview: object points and the first ``n_hands`` hands as surface points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = np.asarray(points)[:: max(1, len(points) // 1500)]
    fig = plt.figure(figsize=(4, 4), dpi=100)
    ax = fig.add_subplot(projection="3d")
    ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=1, c="gray", depthshade=False)
    k = min(n_hands, len(grasps))
    if k:
        with torch.no_grad():
            h = hand.surface_points(grasps.rotation[:k].float(), grasps.translation[:k].float(),
                                    grasps.joints[:k].float()).numpy()[:, ::4]
        for i in range(k):
            ax.scatter(h[i, :, 0], h[i, :, 1], h[i, :, 2], s=1, c=_COLOURS[i % len(_COLOURS)], depthshade=False)
        p = np.concatenate([p, h.reshape(-1, 3)])
    lo, hi = p.min(0), p.max(0)
    ax.set_box_aspect(np.maximum(hi - lo, 1e-6), zoom=1.4)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.subplots_adjust(0, 0, 1, 0.95)
    fig.savefig(str(path))
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ CLI
def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="default", help="checkpoint of `dgtr train` (default: the bundled one)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mesh", help="one mesh (obj/stl/ply/off, metres) or point cloud (.npy (N,3), .xyz, .ply)")
    src.add_argument("--meshes", help="folder of meshes: DexGraspNet meshdata (<code>/coacd/decomposed.obj) or "
                                      "<code>.obj|stl|ply|off")
    p.add_argument("--objects", help="with --meshes: comma-separated codes to predict (default: all)")
    p.add_argument("--scale", type=float, nargs="+", action="extend", default=None,
                   help="object scale(s): --scale 0.06 0.1 or repeated (default 1: the mesh as loaded, in metres)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True, help="AB-TTA refinement (default on)")
    p.add_argument("--top-k", type=int, default=None, help="DGTR*: keep the best K grasps (e.g. 4)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice); 1 is faster when other jobs share the cores")
    p.add_argument("--no-pictures", action="store_true", help="write only the .npy files")
    p.add_argument("overrides", nargs="*", metavar="tta.key=value", help="AB-TTA overrides, e.g. tta.iterations=100")


def _objects_from_args(args) -> list[tuple[str, Path]]:
    if args.mesh:
        path = Path(args.mesh)
        if not path.is_file():
            raise MissingFileError(f"--mesh: file not found: {path}")
        code = path.parent.parent.name if path.name == "decomposed.obj" and path.parent.name == "coacd" else path.stem
        return [(code, path)]
    from .objects import list_objects

    found = list_objects(args.meshes)
    if args.objects:
        want = [c.strip() for c in args.objects.split(",") if c.strip()]
        missing = [c for c in want if c not in found]
        if missing:
            raise InputError(f"--objects: {missing} not in {args.meshes} (has {len(found)} objects)")
        found = {c: found[c] for c in want}
    return list(found.items())


def run_predict(args) -> int:
    import time

    from .data import GraspSet, save_grasps
    from .tta import with_overrides

    if args.top_k is not None and args.top_k < 1:
        raise InputError(f"--top-k: expected a positive number, got {args.top_k}")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads: expected a positive number, got {args.threads}")
        torch.set_num_threads(args.threads)  # OpenMP oversubscription beside other jobs costs up to ~20x
    scales = args.scale or [1.0]
    objects = _objects_from_args(args)
    predictor = load(args.checkpoint, args.device)
    predictor.tta_config = with_overrides(predictor.tta_config, args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for code, path in objects:
        cloud = read_point_cloud(path)
        if cloud is None:  # a mesh: load (and decompose) once, then every scale shares it
            from .objects import load_object
            base = load_object(path, code=code)
        else:
            base = _check_cloud(cloud, str(path))
        sets = []
        for s in scales:
            t0 = time.perf_counter()
            pts, obj, _ = predictor.prepare(base, s, code)
            g = predictor.predict_points(pts, obj, s, code, tta=args.tta, top_k=args.top_k)
            dt = time.perf_counter() - t0
            sets.append(g)
            print(f"{code} scale {s:g}: {len(g)} grasps in {dt:.2f} s ({'AB-TTA' if args.tta else 'no TTA'})")
            print(f"  {'#':>3} {'pen (mm)':>9} {'links ≤1cm':>10} {'contact pts':>11}")
            for i in range(len(g)):
                print(f"  {i:>3} {g.extra['penetration'][i] * 1e3:9.2f} {int(g.extra['links_in_contact'][i]):10d} "
                      f"{int(g.extra['contact_points'][i]):11d}")
            if not args.no_pictures:
                stem = code if len(scales) == 1 else f"{code}_s{s:g}"
                title = f"{code} × {s:g}"
                write_html(out / f"{stem}.html", g, predictor.cpu_hand, mesh=obj.mesh if obj is not None else None,
                           points=pts.numpy(), title=title)
                write_png(out / f"{stem}.png", g, predictor.cpu_hand, pts.numpy(), title=title)
        save_grasps(out / f"{code}.npy", GraspSet.concat(sets))
    print(f"wrote {len(objects)} object(s) to {out}")
    return 0
