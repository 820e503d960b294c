"""Pictures and MuJoCo scenes of grasps: ``dgtr view`` and the pictures ``dgtr predict`` / ``dgtr demo`` write.

    dgtr view outputs/demo/dataset/pb_mug.npy --meshes outputs/demo/meshdata [--index 0 3] [--limit 16] [--scale 0.1]
              [--out outputs/view] [--mjcf scene.xml]

Works for any DexGraspNet-format grasp file (ours, the dataset's, another method's): the object is
``--meshes``' ``<code>/coacd/decomposed.obj`` (or ``<code>.obj|stl|ply|off``, or a mesh file) × each grasp's scale.

- ``<stem>.png``: every grasp its own small view, in file order (best first when the file is ranked), each the hand's
  surface (its visual meshes, decimated) with the object, seen from the side of the approach, titled with the grasp's
  index, penetration, contact points and flags (``dgtr.predict.score_grasps``).
- ``<stem>.html``: plotly, one grasp at a time with a slider to step through them and an "all" step; the object is one
  shared trace; one colour per grasp (distinct hues for any number of grasps).  ``plotly.min.js`` (4.8 MB) is written
  once beside it, so the page works offline and each HTML stays small (~1 MB for 16 grasps).
- ``--mjcf OUT.xml``: a MuJoCo scene of the hand and the object at the first selected grasp (world = object frame; the
  hand mounted at the grasp's wrist pose, its joints starting at the grasp's angles), built from
  ``dgtr.simulate.build_mjcf``: ``python -m mujoco.viewer --mjcf=OUT.xml``.  Pressing play runs the simulation test's
  physics with gravity along -z of the object frame, the joint servos holding the grasp's angles (their controls are
  offsets from them), without the test's squeeze.
"""
from __future__ import annotations

import argparse
import base64
import colorsys
import math
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

__all__ = ["grasp_colours", "hand_surface", "hand_skeleton", "grasp_figure", "render", "png_panels", "write_png", "write_html", "write_pictures", "grasp_scene_mjcf",
           "add_view_args", "run_view"]

PNG_CELL = 0.005    # m: vertex-clustering cell of the hand in the PNG (small views)
HTML_CELL = 0.005   # m: ... in the HTML (~80 kB per hand)
MAX_OBJECT_FACES = 20000
PNG_PX = 300        # pixels: one grasp's view in the PNG


# ------------------------------------------------------------------------------------------------- geometry
def grasp_colours(n: int) -> list[str]:
    """n distinct colours for any n: n evenly spaced hues, neighbouring hues alternately darker and lighter, handed
    out in a stride so that consecutive grasps get far-apart hues."""
    step = next(k for k in range(max(1, round(n * 0.382)), 0, -1) if math.gcd(k, n) == 1)
    out = []
    for i in range(n):
        j = (i * step) % n
        r, g, b = colorsys.hls_to_rgb(0.6 + j / n, 0.38 if j % 2 else 0.58, 0.85)
        out.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return out


def _cluster(v: np.ndarray, f: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertex-clustering decimation (cell in m): vertices in one cell merge to their mean, collapsed faces go."""
    key = np.floor(v / cell).astype(np.int64)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    n = inv.max() + 1
    out = np.zeros((n, 3))
    np.add.at(out, inv, v)
    out /= np.bincount(inv, minlength=n)[:, None]
    f = inv[f]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    return out, np.unique(f, axis=0)


def _link_surfaces(hand, cell: float) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Each visual link mesh decimated once in its own frame (cached): [(link index, vertices (V, 3), faces (F, 3),
    fingertip or None)]; the fingertip of a distal (leaf) link is its vertex farthest from the joint (the frame's
    origin), taken from the full mesh.  Cached on the hand object (its meshes never change)."""
    cache = hand.__dict__.setdefault("_view_surfaces", {})
    if cell not in cache:
        parents = {link.parent for link in hand.tree}
        out = []
        for i, n in enumerate(hand.link_names):
            m = hand._link_meshes.get(n)
            if m is None:
                continue
            v, f = np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces)
            tip = v[np.linalg.norm(v, axis=1).argmax()] if i not in parents else None
            out.append((i, *_cluster(v, f, cell), tip))
        cache[cell] = out
    return cache[cell]


def _link_poses(hand, R, t, q) -> np.ndarray:
    """(L, 4, 4) float64 link transforms of one grasp R (3,3), t (3,), q (22,)."""
    R, t, q = (torch.as_tensor(np.asarray(x), dtype=torch.float32) for x in (R, t, q))
    with torch.no_grad():
        return hand.link_transforms(R[None], t[None], q[None])[0].double().numpy()


def hand_surface(hand, R, t, q, cell: float = HTML_CELL) -> tuple[np.ndarray, np.ndarray]:
    """The hand's visual meshes at one grasp, each link decimated on its own in its own frame (so touching fingers
    do not merge; once per link and cell, then only moved): R (3,3), t (3,), q (22,) → (vertices (V, 3) float64 m,
    faces (F, 3) int)."""
    T = _link_poses(hand, R, t, q)
    vs, fs, n = [], [], 0
    for i, v, f, _ in _link_surfaces(hand, cell):
        vs.append(v @ T[i, :3, :3].T + T[i, :3, 3])
        fs.append(f + n)
        n += len(v)
    return np.concatenate(vs), np.concatenate(fs)


def hand_skeleton(hand, R, t, q) -> np.ndarray:
    """The hand at one grasp as line segments: every link origin joined to its parent's, and each fingertip (the
    distal link's visual-mesh vertex farthest from its joint) to its link → (S, 3) points, NaN rows between
    segments (a plotly line trace)."""
    T = _link_poses(hand, R, t, q)
    origin = T[:, :3, 3]
    segs = [(origin[link.parent], origin[i]) for i, link in enumerate(hand.tree) if link.parent >= 0]
    segs += [(origin[i], T[i, :3, :3] @ tip + origin[i]) for i, _, _, tip in _link_surfaces(hand, HTML_CELL)
             if tip is not None]
    nan = np.full(3, np.nan)
    return np.array([x for a, b in segs for x in (a, b, nan)])


def _object_geometry(mesh, max_faces: int = MAX_OBJECT_FACES):
    """(vertices, faces) of the object mesh, decimated when it has more than ``max_faces`` faces."""
    v, f = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces)
    cell = float(np.ptp(v, 0).max()) / 100
    while len(f) > max_faces:
        v, f = _cluster(v, f, cell)
        cell *= 1.5
    return v, f


def _ensure_scores(grasps, hand, points) -> dict:
    """grasps.extra with the ``score_grasps`` values, computed on ``points`` when the file lacks them."""
    from .predict import score_grasps

    need = ("penetration", "contact_points", "links_in_contact", "no_contact", "deep_penetration")
    if all(k in grasps.extra for k in need) or points is None or not len(grasps):
        return grasps.extra
    return {**grasps.extra, **score_grasps(hand, torch.as_tensor(np.asarray(points), dtype=torch.float32),
                                           grasps.rotation.float(), grasps.translation.float(),
                                           grasps.joints.float())}


def _label(extra: dict, i: int, index: int) -> str:
    """'#3 · pen 1.2 mm · 14 contacts [· flags]' (what is known)."""
    from .predict import grasp_flags

    parts = [f"#{index}"]
    if "penetration" in extra:
        parts.append(f"pen {float(extra['penetration'][i]) * 1e3:.1f} mm")
    if "contact_points" in extra:
        parts.append(f"{int(extra['contact_points'][i])} contacts")
    flag = grasp_flags(extra, i)
    return " · ".join(parts + ([flag] if flag else []))


def _side_view(centre: np.ndarray, palm: np.ndarray) -> tuple[float, float]:
    """(elev, azim) in degrees of a camera beside the approach direction palm → centre, 25° above it."""
    d = centre - palm
    d = d / (np.linalg.norm(d) + 1e-12)
    side = np.cross(d, [0.0, 0.0, 1.0])
    if np.linalg.norm(side) < 0.3:                      # approach from above or below
        side = np.cross(d, [1.0, 0.0, 0.0])
    side /= np.linalg.norm(side)
    v = side * math.cos(math.radians(25)) + np.array([0, 0, 1.0]) * math.sin(math.radians(25))
    v /= np.linalg.norm(v)
    return math.degrees(math.asin(np.clip(v[2], -1, 1))), math.degrees(math.atan2(v[1], v[0]))


# -------------------------------------------------------------------------------------------------- pictures
def render(tris: np.ndarray, colours: np.ndarray, elev: float, azim: float, px: int = 300,
           points: np.ndarray | None = None, supersample: int = 2) -> np.ndarray:
    """A z-buffered orthographic picture: tris (T, 3, 3) m with colours (T, 3) in [0, 1], optional points (N, 3)
    drawn as grey dots, seen from (elev, azim) degrees as matplotlib's ``view_init`` (z up), fitted to the frame →
    image (px, px, 3) float in [0, 1], white background.

    Every (supersampled) pixel centre inside a triangle gets that triangle's interpolated depth, and each pixel keeps
    the sample nearest the viewer (a z-buffer, in numpy: no OpenGL, no display)."""
    e, a = math.radians(elev), math.radians(azim)
    right = np.array([-math.sin(a), math.cos(a), 0.0])
    up = np.array([-math.sin(e) * math.cos(a), -math.sin(e) * math.sin(a), math.cos(e)])
    toward = np.cross(right, up)                          # from the scene to the viewer
    W = px * supersample
    pts = np.zeros((0, 3)) if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 3)
    cam = np.stack([right, up, toward], 1)
    tv, pv = tris.reshape(-1, 3) @ cam, pts @ cam         # (u, v, depth)
    both = np.concatenate([tv, pv])
    if not len(both):
        return np.ones((px, px, 3))
    lo, hi = both[:, :2].min(0), both[:, :2].max(0)
    scale = 0.94 * W / max(float((hi - lo).max()), 1e-9)
    centre = (lo + hi) / 2

    def to_px(x):                                          # (..., 3) camera coordinates → column, row, depth
        return np.stack([(x[..., 0] - centre[0]) * scale + W / 2, W / 2 - (x[..., 1] - centre[1]) * scale,
                         x[..., 2]], -1)

    tp = to_px(tv.reshape(-1, 3, 3))
    nz = np.cross(tp[:, 1] - tp[:, 0], tp[:, 2] - tp[:, 0])          # normal of the (column, row, depth) plane
    tid = np.flatnonzero(np.abs(nz[:, 2]) > 1e-9)                      # edge-on triangles cover no pixel
    tp, nz = tp[tid], nz[tid]
    gx, gy = -nz[:, 0] / nz[:, 2], -nz[:, 1] / nz[:, 2]               # depth = gx·column + gy·row + g0
    g0 = tp[:, 0, 2] - gx * tp[:, 0, 0] - gy * tp[:, 0, 1]
    r0 = np.clip(np.ceil(tp[:, :, 1].min(1) - 0.5), 0, W).astype(np.int64)      # rows whose centre it spans
    r1 = np.clip(np.floor(tp[:, :, 1].max(1) - 0.5), -1, W - 1).astype(np.int64)
    nrow = np.maximum(r1 - r0 + 1, 0)
    t = np.repeat(np.arange(len(tp)), nrow)                  # scanlines: (triangle, row) pairs
    row = np.repeat(r0 - np.cumsum(nrow) + nrow, nrow) + np.arange(len(t))
    yc = row + 0.5
    lo_x, hi_x = np.full(len(t), np.inf), np.full(len(t), -np.inf)
    for k in range(3):                                       # where each edge crosses the row's centre line
        ax, ay = tp[:, k, 0][t], tp[:, k, 1][t]
        bx, by = tp[:, (k + 1) % 3, 0][t], tp[:, (k + 1) % 3, 1][t]
        dy = by - ay
        ok = ((yc - ay) * (yc - by) <= 0) & (dy != 0)
        xe = ax + (yc - ay) * (bx - ax) / np.where(dy == 0, 1.0, dy)
        lo_x, hi_x = np.where(ok, np.minimum(lo_x, xe), lo_x), np.where(ok, np.maximum(hi_x, xe), hi_x)
    c0 = np.clip(np.ceil(lo_x - 0.5), 0, W).astype(np.int64)
    c1 = np.clip(np.floor(hi_x - 0.5), -1, W - 1).astype(np.int64)
    ncol = np.maximum(c1 - c0 + 1, 0)
    s_ = np.repeat(np.arange(len(t)), ncol)                  # pixels: (scanline, column) pairs
    col = np.repeat(c0 - np.cumsum(ncol) + ncol, ncol) + np.arange(len(s_))
    depth = [gx[t][s_] * (col + 0.5) + (gy[t] * yc + g0[t])[s_]]
    pix, c = [row[s_] * W + col], [tid[t][s_]]
    pp = to_px(pv)                                           # points: dots of (supersample + 1)² pixels
    off = np.arange(supersample + 1) - (supersample + 1) // 2
    pc = (np.floor(pp[:, 0])[:, None, None].astype(np.int64) + off[None, None, :])
    pr = (np.floor(pp[:, 1])[:, None, None].astype(np.int64) + off[None, :, None])
    ok = (pc >= 0) & (pc < W) & (pr >= 0) & (pr < W)
    pix.append((pr * W + pc)[ok])
    depth.append(np.broadcast_to(pp[:, 2, None, None], ok.shape)[ok])
    c.append(np.full(int(ok.sum()), len(colours)))
    # one list of samples; without points the triangles' arrays are used as they are (a copy costs ~25 ms a view)
    pix, depth, c = (np.concatenate(x) if len(pp) else x[0] for x in (pix, depth, c))
    zbuf = np.full(W * W, -np.inf)
    np.maximum.at(zbuf, pix, depth)                        # per pixel, the depth nearest the viewer
    win = depth == zbuf[pix]
    palette = np.concatenate([np.asarray(colours, dtype=np.float32).reshape(-1, 3), [[0.45, 0.45, 0.45], [1, 1, 1]]])
    idx = np.full(W * W, len(palette) - 1)                 # white background
    idx[pix[win]] = c[win]
    img = palette[idx].reshape(W, W, 3)
    # the mean of each pixel's samples as strided sums (numpy's mean over two non-adjacent axes is ~4x slower)
    return sum(img[i::supersample, j::supersample] for i in range(supersample)
               for j in range(supersample)) / supersample ** 2


def png_panels(grasps, hand, mesh=None, points=None, indices=None, px: int = PNG_PX) -> list[tuple]:
    """The views of ``write_png``, one per grasp in order: [(image (px, px, 3) float in [0, 1], title, flagged)]."""
    n = len(grasps)
    indices = list(range(n)) if indices is None else list(indices)
    extra = _ensure_scores(grasps, hand, points if points is not None else
                           (mesh.sample(4096, seed=0) if mesh is not None else None))
    if mesh is not None:
        ov, of = _object_geometry(mesh, 4000)
        centre = (ov.min(0) + ov.max(0)) / 2
    else:
        p = np.asarray(points, dtype=np.float64)
        ov = p[:: max(1, len(p) // 1500)]
        centre = (p.min(0) + p.max(0)) / 2
    colours = grasp_colours(n)
    R, t, q = grasps.rotation.numpy(), grasps.translation.numpy(), grasps.joints.numpy()

    def panel(i: int) -> tuple:
        hv, hf = hand_surface(hand, R[i], t[i], q[i], PNG_CELL)
        elev, azim = _side_view(centre, t[i])
        view = np.array([math.cos(math.radians(elev)) * math.cos(math.radians(azim)),
                         math.cos(math.radians(elev)) * math.sin(math.radians(azim)), math.sin(math.radians(elev))])
        rgb = np.array([int(colours[i][k:k + 2], 16) / 255 for k in (1, 3, 5)])
        tris, base = [hv[hf]], [rgb[None].repeat(len(hf), 0)]
        if mesh is not None:
            tris.append(ov[of])
            base.append(np.full((len(of), 3), 0.72))
        tris = np.concatenate(tris)
        nrm = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-18
        shade = 0.35 + 0.65 * np.abs(nrm @ view)          # headlight: lit from the camera
        img = render(tris, np.concatenate(base) * shade[:, None], elev, azim, px, points=ov if mesh is None else None)
        flagged = bool(extra.get("no_contact", [False] * n)[i]) or bool(extra.get("deep_penetration", [False] * n)[i])
        return img, _label(extra, i, indices[i]), flagged

    # the views over the intra-op threads (numpy releases the GIL in the z-buffer's large array operations)
    import torch

    from .geometry import parallel_map

    return parallel_map(panel, list(range(n)), torch.get_num_threads())


def _font(size: int):
    """DejaVu Sans (shipped with matplotlib, a dependency; it has the × and · of the titles, which Pillow's built-in
    font lacks), else Pillow's built-in font."""
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")   # its path only: importing matplotlib costs ~0.3 s
    ttf = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf" if spec and spec.origin else None
    try:
        return ImageFont.truetype(str(ttf), size)
    except (OSError, TypeError):
        return ImageFont.load_default(size=size)


def write_png(path, grasps, hand, mesh=None, points=None, title: str = "", indices=None, cols: int = 4) -> None:
    """Every grasp its own small view (hand surface + object), in order, titled with index, penetration, contacts.

    grasps: GraspSet (its ``extra`` gives the titles; computed on ``points`` when missing); mesh: trimesh of the object
    in the grasps' frame (else ``points`` (P, 3) are drawn); indices: the numbers shown (default 0..n-1).  Composed
    with Pillow (matplotlib took ~1 s to lay out and save 16 images)."""
    from PIL import Image, ImageDraw

    from .files import atomic_path

    panels = png_panels(grasps, hand, mesh=mesh, points=points, indices=indices)
    cols = max(1, min(cols, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    head, strip = (34 if title else 4), 20                 # pixels: the figure's title, each view's title
    canvas = Image.new("RGB", (cols * PNG_PX, head + rows * (strip + PNG_PX)), "white")
    draw = ImageDraw.Draw(canvas)
    font, big = _font(12), _font(15)
    if title:
        draw.text((canvas.width / 2, head / 2), title, fill="black", font=big, anchor="mm")
    for k, (img, label, flagged) in enumerate(panels):
        x, y = (k % cols) * PNG_PX, head + (k // cols) * (strip + PNG_PX)
        draw.text((x + PNG_PX / 2, y + strip / 2 + 2), label, fill=(192, 0, 0) if flagged else "black", font=font,
                  anchor="mm")
        canvas.paste(Image.fromarray(np.round(img * 255).astype(np.uint8)), (x, y + strip))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="png")


def _typed(a: np.ndarray) -> dict:
    """A plotly.js typed array (base64 of the raw little-endian values, what plotly's own validation writes)."""
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))   # f4, u2 or i4 here
    return {"dtype": f"{a.dtype.kind}{a.dtype.itemsize}", "bdata": base64.b64encode(a.tobytes()).decode()}


def grasp_figure(grasps, hand, mesh=None, points=None, title: str = "", indices=None) -> dict:
    """The plotly figure of ``write_html`` as a plain dict (``plotly.graph_objects.Figure(fig)`` makes it an object;
    the page is written without plotly's per-property validation, which cost ~1 s for 16 hands): traces [object,
    n hand meshes, n hand skeletons]; slider steps 0..n-1 show the object and one hand mesh, the last ("all") the
    object and every skeleton.  Arguments as ``write_png``."""
    n = len(grasps)
    indices = list(range(n)) if indices is None else list(indices)
    extra = _ensure_scores(grasps, hand, points if points is not None else
                           (mesh.sample(4096, seed=0) if mesh is not None else None))
    xyz = lambda v: dict(x=_typed(v[:, 0]), y=_typed(v[:, 1]), z=_typed(v[:, 2]))
    ijk = lambda f: dict(i=_typed(f[:, 0]), j=_typed(f[:, 1]), k=_typed(f[:, 2]))
    traces = []
    if mesh is not None:
        v, f = _object_geometry(mesh)
        traces.append(dict(type="mesh3d", **xyz(v.astype(np.float32)), **ijk(f.astype(np.int32)), color="#b0b0b0",
                           opacity=1.0, name="object", flatshading=True, hoverinfo="skip"))
    else:
        traces.append(dict(type="scatter3d", **xyz(np.asarray(points, dtype=np.float32)), mode="markers",
                           name="object", marker=dict(size=1.5, color="#808080"), hoverinfo="skip"))
    colours = grasp_colours(n)
    R, t, q = grasps.rotation.numpy(), grasps.translation.numpy(), grasps.joints.numpy()
    labels = [_label(extra, i, indices[i]) for i in range(n)]
    for i in range(n):
        v, f = hand_surface(hand, R[i], t[i], q[i], HTML_CELL)
        v = np.round(v, 4).astype(np.float32)          # 0.1 mm is far below what the eye sees
        f = f.astype(np.uint16 if len(v) < 65536 else np.int32)
        traces.append(dict(type="mesh3d", **xyz(v), **ijk(f), name=labels[i], color=colours[i], opacity=1.0,
                           visible=i == 0, lighting=dict(ambient=0.45, diffuse=0.7), showlegend=True,
                           hoverinfo="name"))
    for i in range(n):  # the "all" step: skeletons, so that 16 hands do not bury the object
        s = np.round(hand_skeleton(hand, R[i], t[i], q[i]), 4).astype(np.float32)
        traces.append(dict(type="scatter3d", **xyz(s), mode="lines", name=labels[i], visible=False,
                           line=dict(color=colours[i], width=6), hoverinfo="name", connectgaps=False))
    head = f"{title} — " if title else ""
    steps = []
    for i in range(n):
        vis = [True] + [j == i for j in range(n)] + [False] * n
        steps.append(dict(method="update", label=str(indices[i]),
                          args=[{"visible": vis}, {"title.text": head + labels[i]}]))
    steps.append(dict(method="update", label="all",
                      args=[{"visible": [True] + [False] * n + [True] * n},
                            {"title.text": f"{head}all {n} grasps (hand skeletons; click a legend entry to hide it)"}]))
    layout = dict(title=dict(text=head + (labels[0] if n else "no grasps")), scene=dict(aspectmode="data"),
                  margin=dict(l=0, r=0, t=40, b=0), legend=dict(title=dict(text="grasps")),
                  sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="grasp "), pad=dict(t=10))]
                  if n else [])
    return dict(data=traces, layout=layout)


def write_html(path, grasps, hand, mesh=None, points=None, title: str = "", indices=None) -> None:
    """Plotly page of ``grasp_figure``: one grasp at a time with a slider, or all.  plotly.min.js is written beside
    ``path`` (once) and loaded from there, so the page works offline and stays small."""
    import plotly.io as pio

    from .files import atomic_path

    fig = grasp_figure(grasps, hand, mesh=mesh, points=points, title=title, indices=indices)
    p = Path(path)
    if not (p.parent / "plotly.min.js").is_file():
        import shutil

        import plotly
        with atomic_path(p.parent / "plotly.min.js") as tmp:
            shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", tmp)
    # <script src="plotly.min.js">: offline; the dict is plotly's own schema (tests build a Figure from it)
    html = pio.to_html(fig, include_plotlyjs="plotly.min.js", full_html=True, validate=False)
    with atomic_path(p) as tmp:
        tmp.write_text(html, encoding="utf-8")


def write_pictures(stem, grasps, hand=None, mesh=None, points=None, title: str = "", indices=None) -> list[Path]:
    """``<stem>.png`` and ``<stem>.html`` (see ``write_png``; hand: default ``dgtr.hand.get_hand()``; mesh: a trimesh
    or an ObjectModel, in the grasps' frame and at their scale) → the paths written."""
    from .hand import get_hand

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    hand = hand or get_hand()
    mesh = mesh.mesh if hasattr(mesh, "sample_points") else mesh
    png, html = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".html")
    write_png(png, grasps, hand, mesh=mesh, points=points, title=title, indices=indices)
    write_html(html, grasps, hand, mesh=mesh, points=points, title=title, indices=indices)
    return [png, html]


# ------------------------------------------------------------------------------------------------ MuJoCo scene
def _fmt(x) -> str:
    return " ".join(f"{float(v):.9g}" for v in np.ravel(x))


def grasp_scene_mjcf(hand, obj, R, t, q) -> str:
    """MJCF of the object (free body at the origin: world = object frame) and the hand at grasp (R (3,3), t (3,),
    q (22,)); loads with the hand's joints at q.

    ``build_mjcf`` (the simulation test's scene: palm fixed at the world origin) with its hand subtree moved under a
    fixed body at (t, R), each jointed body's rotation by q baked into its quat and the joint's ``ref`` = q, so that
    qpos0 = q with the same kinematics and limits; the joint actuators (position servos, kp/kv of the simulation
    test) target q + ctrl, so at rest (ctrl 0) they hold the grasp; keyframe "grasp" restores it.  The hand
    is drawn with its visual meshes (no collisions, geom group 2); its collision primitives are geom group 3 (hidden
    by default; the viewer's group toggles show them)."""
    import xml.etree.ElementTree as ET

    import mujoco

    from .hand import JOINT_NAMES
    from .simulate import build_mjcf

    R, t, q = (np.asarray(x, dtype=np.float64) for x in (R, t, q))
    pieces = [(np.asarray(p.vertices, dtype=np.float64), np.asarray(p.faces)) for p in obj.pieces]
    root = ET.fromstring(build_mjcf(hand, pieces))
    root.set("model", "dgtr_grasp_scene")
    world = root.find("worldbody")
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(R).ravel())
    mount = ET.Element("body", name="hand_mount", pos=_fmt(t), quat=_fmt(quat))
    for b in [b for b in world.findall("body") if b.get("name") != "object"]:
        world.remove(b)
        mount.append(b)
    world.append(mount)
    for body in mount.iter("body"):
        joint = body.find("joint")
        if joint is None:
            continue
        angle = float(q[JOINT_NAMES.index(joint.get("name"))])
        axis = np.array([float(a) for a in joint.get("axis").split()])
        rot, bq = np.zeros(4), np.array([float(a) for a in body.get("quat", "1 0 0 0").split()])
        mujoco.mju_axisAngle2Quat(rot, axis / np.linalg.norm(axis), angle)
        new = np.zeros(4)
        mujoco.mju_mulQuat(new, bq, rot)
        body.set("quat", _fmt(new))
        joint.set("ref", f"{angle:.9g}")
    _add_visual_hand(hand, root)
    for act in root.find("actuator").findall("position"):  # target = q + ctrl: at ctrl 0 the hand holds the grasp
        j, kp, kv = act.get("joint"), float(act.get("kp")), float(act.get("kv", 0))
        act.tag = "general"
        for k in ("kp", "kv"):
            act.attrib.pop(k, None)
        target = float(q[JOINT_NAMES.index(j)])
        act.set("gainprm", f"{kp:g}")
        act.set("biastype", "affine")
        act.set("biasprm", f"{kp * target:.9g} {-kp:g} {-kv:g}")
    ET.SubElement(world, "light", name="top", pos=_fmt(np.r_[0, 0, 1.0]), dir="0 0 -1", directional="true")
    model = mujoco.MjModel.from_xml_string(ET.tostring(root, encoding="unicode"))
    key = ET.SubElement(root, "keyframe")               # qpos0 is the grasp already; the key restores it
    ET.SubElement(key, "key", name="grasp", qpos=_fmt(model.qpos0))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _add_visual_hand(hand, root, cell: float = 0.002) -> None:
    """Add the hand's visual meshes (decimated, in their links' frames) to an MJCF tree as non-colliding geoms."""
    import xml.etree.ElementTree as ET

    eye, zero = torch.eye(3), torch.zeros(3)
    with torch.no_grad():
        T = hand.link_transforms(eye[None], zero[None], torch.zeros(1, hand.joint_lower.numel()))[0].double().numpy()
    names = [link.name for link in hand.tree]
    bodies = {b.get("name"): b for b in root.iter("body")}
    asset = root.find("asset")
    for g in root.iter("geom"):
        if g.get("name", "").startswith("hand_geom"):
            g.set("group", "3")
    for k, m in enumerate(hand.visual_meshes(eye, zero, torch.zeros(hand.joint_lower.numel()))):
        i = names.index(m.metadata["link"])
        inv = np.linalg.inv(T[i])
        v, f = _cluster(np.asarray(m.vertices) @ inv[:3, :3].T + inv[:3, 3], np.asarray(m.faces), cell)
        ET.SubElement(asset, "mesh", name=f"hand_visual{k}", vertex=_fmt(v), face=" ".join(map(str, f.ravel())))
        ET.SubElement(bodies[names[i]], "geom", name=f"hand_visual{k}", type="mesh", mesh=f"hand_visual{k}",
                      contype="0", conaffinity="0", group="2", rgba="0.85 0.68 0.55 1")


# ------------------------------------------------------------------------------------------------------ CLI
def add_view_args(p: argparse.ArgumentParser) -> None:
    from .cli import positive_float, positive_int

    p.add_argument("grasps", help="DexGraspNet-format grasp file <code>.npy (ours, the dataset's, another method's)")
    p.add_argument("--meshes", required=True,
                   help="DexGraspNet meshdata folder (<code>/coacd/decomposed.obj), a folder of <code>.obj|stl|ply|off, "
                        "or the object's mesh file; the object is used × each grasp's scale")
    p.add_argument("--object", help="object code in --meshes (default: the grasp file's name)")
    p.add_argument("--index", type=int, nargs="+", action="extend", default=None, metavar="I",
                   help="grasps to show, by their index in the file: --index 0 5 7 (default: all)")
    p.add_argument("--scale", type=positive_float, default=None,
                   help="only the grasps at this object scale (default: every scale, one picture per scale)")
    p.add_argument("--limit", type=positive_int, default=16, help="at most this many grasps (the first selected)")
    p.add_argument("--out", default="outputs/view", help="output folder: <code>.png, <code>.html (+ plotly.min.js)")
    p.add_argument("--mjcf", default=None, metavar="OUT.xml",
                   help="also write a MuJoCo scene of the first selected grasp (default: none)")
    p.add_argument("--no-pictures", action="store_true", help="no PNG/HTML (e.g. only --mjcf)")


def run_view(args) -> int:
    from .cli import check_out_dir, check_out_file
    from .data import load_grasps, mesh_path
    from .errors import MissingFileError
    from .files import write_text
    from .hand import get_hand
    from .objects import load_object
    from .predict import print_table

    g = load_grasps(args.grasps)
    code = args.object or g.code
    meshes = Path(args.meshes)
    if meshes.is_file():
        mesh_file = meshes
    elif meshes.is_dir():
        mesh_file = mesh_path(meshes, code)
    else:
        raise MissingFileError(f"--meshes: not found: {meshes}")
    if not len(g):
        raise InputError(f"{args.grasps}: no grasps")
    idx = np.arange(len(g))
    if args.index is not None:
        bad = [i for i in args.index if not 0 <= i < len(g)]
        if bad:
            raise InputError(f"--index: {bad} out of range (the file has {len(g)} grasps: 0..{len(g) - 1})")
        idx = np.asarray(args.index)
    if args.scale is not None:
        keep = np.abs(g.scale.numpy()[idx] - args.scale) <= 1e-4
        if not keep.any():
            raise InputError(f"--scale: no selected grasp at scale {args.scale:g} (the file has scales "
                             f"{', '.join(f'{s:g}' for s in g.scales())})")
        idx = idx[keep]
    if args.no_pictures and not args.mjcf:
        raise InputError("--no-pictures: nothing to write (add --mjcf OUT.xml)")
    mjcf = check_out_file(args.mjcf, "--mjcf") if args.mjcf else None
    out = None if args.no_pictures else check_out_dir(args.out)
    idx = idx[:args.limit]
    base = load_object(mesh_file, code=code)
    hand = get_hand()
    sel = g.subset(idx)
    scales = sel.scales()
    for s in scales:
        at = np.flatnonzero(np.abs(sel.scale.numpy() - s) <= 1e-4)
        gs, obj = sel.subset(at), base.with_scale(s)
        gs.extra = _ensure_scores(gs, hand, obj.sample_points(4096, seed=0))
        print(f"{code} scale {s:g}: grasps {', '.join(map(str, idx[at]))}")
        print_table(gs, indices=idx[at])
        if out is not None:
            stem = out / (code if len(scales) == 1 else f"{code}_s{s:g}")
            for path in write_pictures(stem, gs, hand, mesh=obj.mesh, title=f"{code} × {s:g}", indices=idx[at]):
                print(f"wrote {path}")
    if mjcf is not None:
        i = int(idx[0])
        obj = base.with_scale(float(g.scale[i]))
        text = grasp_scene_mjcf(hand, obj, g.rotation[i].numpy(), g.translation[i].numpy(), g.joints[i].numpy())
        write_text(mjcf, text)
        print(f"wrote {mjcf} (grasp {i}): python -m mujoco.viewer --mjcf={mjcf}")
    return 0
