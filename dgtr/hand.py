"""The ShadowHand of DexGraspNet: batched forward kinematics and the geometry used by losses and metrics.

The hand is the subtree of body ``robot0:palm`` of OpenAI's ShadowHand MJCF shipped by ``gymnasium-robotics``, with
the palm body frame as the root (DESIGN.md §2). A grasp is ``(rot, t, q)``: ``rot`` maps the palm frame into the
object frame (any representation :func:`dgtr.rotations.to_matrix` accepts, batched), ``t`` (B, 3) is the palm origin
in the object frame and ``q`` (B, 22) are joint angles in :data:`JOINT_NAMES` order. A palm-frame point ``p`` lies
at ``R @ p + t``.

Geometry
- Collision primitives (MJCF class ``DC_Hand``): 2 palm boxes, 1 lfmetacarpal box, 15 capsules. They give an exact,
  analytic signed distance, **positive inside the hand** (penetration depth), negative outside.
- Visual STL meshes: surface samples (hand chamfer loss) and posed meshes for pictures.
- Contact candidates: palmar side of the 12 finger and 2 distal thumb capsules, plus a small grid on the palm.
- Self-penetration keypoints: points on the capsule axes.

Every per-grasp computation is vectorised over the batch; the only Python loops run over the 6 levels of the
kinematic tree and over chunks of query points.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import pathlib
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import trimesh

from .errors import DgtrError, InputError, MissingFileError
from .rotations import to_matrix

__all__ = ["JOINT_NAMES", "Link", "Primitive", "ShadowHand", "PenetrationCache", "get_hand", "hand_asset_dir"]

JOINT_NAMES: tuple[str, ...] = (
    tuple(f"robot0:{f}J{i}" for f in ("FF", "MF", "RF") for i in (3, 2, 1, 0))
    + tuple(f"robot0:LFJ{i}" for i in (4, 3, 2, 1, 0))
    + tuple(f"robot0:THJ{i}" for i in (4, 3, 2, 1, 0))
)

ROOT = "robot0:palm"
N_CONTACT_PER_LINK = 10
SPEN_THRESHOLD = 0.02  # m; L_spen = sum relu(0.02 - |k_i - k_j|) (DexGraspNet)
# point-primitive pairs per chunk in signed_distance: temporaries of ~16 MB instead of B*P*G*4 bytes (one pass at
# B=512, P=4096 was ~4x slower, mostly page faults); not smaller, as every chunk is ~20 parallel ops and OpenMP
# barriers cost dearly on a loaded CPU
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Link:
    """One body of the hand. ``pos``/``quat`` (wxyz) place it in its parent's frame at q = 0; it then turns by
    ``q[joint]`` about ``axis`` (its own frame, through its origin). The root has ``parent=-1``, ``joint=None``."""
    name: str
    parent: int
    pos: np.ndarray
    quat: np.ndarray
    joint: int | None
    axis: np.ndarray


@dataclass(frozen=True)
class Primitive:
    """A collision primitive in the frame of ``link``, MuJoCo convention: ``pos``/``quat`` (wxyz) place the
    primitive's centre frame. Capsule: ``size = [radius, half_length]``, axis along the primitive's local z from
    ``-half_length`` to ``+half_length`` (for the ShadowHand: from 0 to ``2*half_length`` along the link's +z).
    Box: ``size`` = half extents (3,)."""
    link: str
    kind: str
    size: np.ndarray
    pos: np.ndarray
    quat: np.ndarray


def hand_asset_dir() -> pathlib.Path:
    """Folder ``gymnasium_robotics/envs/assets/hand`` of the installed package, found without importing it
    (importing gymnasium_robotics pulls in Gymnasium and registers environments)."""
    spec = importlib.util.find_spec("gymnasium_robotics")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        d = pathlib.Path(loc) / "envs" / "assets" / "hand"
        if (d / "reach.xml").is_file():
            return d
    raise MissingFileError(
        "ShadowHand model not found: the package gymnasium-robotics (which ships "
        "gymnasium_robotics/envs/assets/hand/reach.xml) is not installed; run `pip install gymnasium-robotics`")


def _quat_to_matrix_np(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@functools.lru_cache(maxsize=1)
def _parse_model() -> dict:
    """Read the palm subtree out of the compiled MJCF: links, joint limits, primitives and visual meshes (numpy)."""
    import mujoco

    path = hand_asset_dir() / "reach.xml"
    try:
        m = mujoco.MjModel.from_xml_path(str(path))
    except Exception as e:  # mujoco raises ValueError with its parser message
        raise DgtrError(f"cannot load the ShadowHand MJCF {path}: {e}") from e
    root = m.body(ROOT).id

    def in_subtree(b: int) -> bool:
        while b != 0:
            if b == root:
                return True
            b = m.body_parentid[b]
        return False

    bodies = [b for b in range(m.nbody) if in_subtree(b)]  # MuJoCo numbers bodies depth-first: parents come first
    index = {b: i for i, b in enumerate(bodies)}
    links, lower, upper = [], np.zeros(22), np.zeros(22)
    for b in bodies:
        name = m.body(b).name
        if b == root:  # the palm frame is the hand frame: drop its offset to the wrist and the wrist joint WRJ0
            links.append(Link(name, -1, np.zeros(3), np.array([1.0, 0, 0, 0]), None, np.zeros(3)))
            continue
        if m.body_jntnum[b] != 1 or int(m.jnt_type[m.body_jntadr[b]]) != int(mujoco.mjtJoint.mjJNT_HINGE):
            raise DgtrError(f"ShadowHand MJCF: body {name} should have exactly one hinge joint")
        j = m.body_jntadr[b]
        if np.abs(m.jnt_pos[j]).max() > 0:  # the FK below turns each link about its own origin
            raise DgtrError(f"ShadowHand MJCF: joint {m.joint(j).name} is not at its body origin")
        ji = JOINT_NAMES.index(m.joint(j).name)
        lower[ji], upper[ji] = m.jnt_range[j]
        links.append(Link(name, index[m.body_parentid[b]], m.body_pos[b].copy(), m.body_quat[b].copy(), ji,
                          m.jnt_axis[j].copy()))
    if sorted(l.joint for l in links if l.joint is not None) != list(range(22)):
        raise DgtrError("ShadowHand MJCF: the palm subtree does not hold the 22 expected joints")

    prims, link_meshes = [], {}
    for g in range(m.ngeom):
        b = m.geom_bodyid[g]
        if b not in index:
            continue
        link, gtype, group = m.body(b).name, int(m.geom_type[g]), int(m.geom_group[g])
        # class DC_Hand = group 4 (collision); class D_Vizual = group 1 meshes. The 1 mm thbase/thhub boxes are
        # group-1 boxes and so are skipped here, as DexGraspNet skips them.
        if group == 4 and gtype in (int(mujoco.mjtGeom.mjGEOM_CAPSULE), int(mujoco.mjtGeom.mjGEOM_BOX)):
            kind = "capsule" if gtype == int(mujoco.mjtGeom.mjGEOM_CAPSULE) else "box"
            size = m.geom_size[g][:2].copy() if kind == "capsule" else m.geom_size[g].copy()
            prims.append(Primitive(link, kind, size, m.geom_pos[g].copy(), m.geom_quat[g].copy()))
        elif group == 1 and gtype == int(mujoco.mjtGeom.mjGEOM_MESH):
            k = m.geom_dataid[g]
            v = m.mesh_vert[m.mesh_vertadr[k]:m.mesh_vertadr[k] + m.mesh_vertnum[k]].astype(np.float64)
            f = m.mesh_face[m.mesh_faceadr[k]:m.mesh_faceadr[k] + m.mesh_facenum[k]]
            # MuJoCo re-centres meshes on compile and moves the offset into geom_pos/geom_quat: apply both
            v = v @ _quat_to_matrix_np(m.geom_quat[g]).T + m.geom_pos[g]
            link_meshes.setdefault(link, []).append(trimesh.Trimesh(v, f.copy(), process=False))
    link_meshes = {k: trimesh.util.concatenate(v) if len(v) > 1 else v[0] for k, v in link_meshes.items()}
    return dict(links=links, lower=lower, upper=upper, primitives=prims, link_meshes=link_meshes)


def _skew_np(axis: np.ndarray) -> np.ndarray:
    """Cross-product matrix K of an axis (3,), normalised -> (3, 3): K @ v = axis x v."""
    x, y, z = axis / np.linalg.norm(axis)
    return np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])


def _largest_remainder(weights: np.ndarray, n: int) -> np.ndarray:
    """Split n into integer counts proportional to weights (each >= 1 when n allows)."""
    w = np.asarray(weights, dtype=np.float64)
    base = np.full(len(w), 1 if n >= len(w) else 0)
    share = w / w.sum() * (n - base.sum())
    counts = base + np.floor(share).astype(int)
    counts[np.argsort(-(share - np.floor(share)))[: n - counts.sum()]] += 1
    return counts


def _box_depth(xl: torch.Tensor, half: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Exact box SDF, negated (positive inside): box-frame coordinates and half extents, xyz along ``dim``
    (broadcasting) -> that dim reduced."""
    qd = xl.abs() - half
    out2 = (torch.relu(qd) ** 2).sum(dim)
    # sqrt only where outside: its gradient at 0 would be inf (and 0 * inf = NaN)
    outside = torch.where(out2 > 0, out2.clamp_min(1e-30).sqrt(), torch.zeros_like(out2))
    return -(outside + qd.amax(dim).clamp(max=0))


def _points_matrix(pts: np.ndarray, link: np.ndarray, n_links: int) -> np.ndarray:
    """Points (N,3) fixed in links (N,) -> E (4L, N) with E[4l:4l+4, n] = [p_n, 1] for l = link[n], so that
    [R_0 | o_0, ..., R_L-1 | o_L-1] (3, 4L) @ E = posed points (3, N)."""
    E = np.zeros((n_links, 4, len(pts)))
    E[link, :3, np.arange(len(pts))] = pts
    E[link, 3, np.arange(len(pts))] = 1
    return E.reshape(4 * n_links, len(pts))


def _sample_primitive(p: Primitive, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniformly on the surface of primitive p, in its link frame -> (n, 3)."""
    if n == 0:
        return np.zeros((0, 3))
    if p.kind == "capsule":
        r, h = p.size
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        on_cyl = rng.random(n) < (4 * np.pi * r * h) / (4 * np.pi * r * h + 4 * np.pi * r * r)
        ang = rng.random(n) * 2 * np.pi
        cyl = np.stack([r * np.cos(ang), r * np.sin(ang), rng.uniform(-h, h, n)], 1)
        caps = r * d + np.stack([np.zeros(n), np.zeros(n), np.where(d[:, 2] >= 0, h, -h)], 1)
        local = np.where(on_cyl[:, None], cyl, caps)
    else:
        a = np.asarray(p.size)
        face_area = np.array([a[1] * a[2], a[0] * a[2], a[0] * a[1]])  # faces normal to x, y, z (twice each)
        axis = rng.choice(3, size=n, p=face_area / face_area.sum())
        local = rng.uniform(-1, 1, size=(n, 3)) * a
        local[np.arange(n), axis] = np.where(rng.random(n) < 0.5, -1, 1) * a[axis]
    return _to_link(p, local)


def _to_link(p: Primitive, local: np.ndarray) -> np.ndarray:
    """Points (n, 3) in primitive p's centre frame -> its link's frame."""
    return local @ _quat_to_matrix_np(p.quat).T + np.asarray(p.pos, dtype=np.float64)


def _grid_box(half: np.ndarray, spacing: float) -> np.ndarray:
    """Grid points on the 6 faces of a box with half extents (3,), in its centre frame: (P, 3), edges once."""
    pts = []
    for ax in range(3):
        a, b = [i for i in range(3) if i != ax]
        ga = np.linspace(-half[a], half[a], max(2, int(np.ceil(2 * half[a] / spacing)) + 1))
        gb = np.linspace(-half[b], half[b], max(2, int(np.ceil(2 * half[b] / spacing)) + 1))
        A, B = np.meshgrid(ga, gb, indexing="ij")
        for sign in (-1, 1):
            p = np.zeros((A.size, 3))
            p[:, a], p[:, b], p[:, ax] = A.ravel(), B.ravel(), sign * half[ax]
            pts.append(p)
    return np.unique(np.concatenate(pts).round(9), axis=0)


def _grid_capsule(radius: float, half_length: float, spacing: float) -> np.ndarray:
    """Rings of points on a capsule whose axis runs along z from -half_length to +half_length, in its centre
    frame: (P, 3) (side rings, cap latitudes and the two poles)."""
    n_ang = max(8, int(np.ceil(2 * np.pi * radius / spacing)))
    ang = 2 * np.pi * np.arange(n_ang) / n_ang
    ring = np.stack([np.cos(ang), np.sin(ang)], 1) * radius
    zs = np.linspace(-half_length, half_length, max(2, int(np.ceil(2 * half_length / spacing)) + 1))
    side = np.concatenate([np.column_stack([ring, np.full(n_ang, z)]) for z in zs])
    lats = np.linspace(0, np.pi / 2, max(2, int(np.ceil(np.pi / 2 * radius / spacing)) + 1))[1:]
    caps = [np.array([[0, 0, -half_length - radius], [0, 0, half_length + radius]])]
    for lat in lats[:-1]:
        r, dz = radius * np.cos(lat), radius * np.sin(lat)
        caps += [np.column_stack([ring / radius * r, np.full(n_ang, -half_length - dz)]),
                 np.column_stack([ring / radius * r, np.full(n_ang, half_length + dz)])]
    return np.concatenate([side] + caps)


def _grid_primitive(p: Primitive, spacing: float) -> np.ndarray:
    """Deterministic surface points of primitive p, about ``spacing`` apart, in its link frame -> (P, 3)."""
    size = np.asarray(p.size, dtype=np.float64).ravel()
    if p.kind == "box":
        return _to_link(p, _grid_box(size, spacing))
    if p.kind == "capsule":
        return _to_link(p, _grid_capsule(float(size[0]), float(size[1]), spacing))
    raise ValueError(f"unknown primitive kind {p.kind!r}")


class ShadowHand:
    """ShadowHand kinematics and geometry (DESIGN.md §2), batched and differentiable.

    Shapes: B grasps, L links (``len(link_names)``), P query points, G primitive groups (``len(sdf_link_names)``).
    Methods taking ``(rot, t, q)`` validate them (shape, finiteness) and raise :class:`dgtr.errors.InputError`
    naming the argument. Results follow the dtype of ``t`` (numpy inputs become ``self.dtype``) and the device of
    the inputs.
    """

    def __init__(self, device="cpu", dtype=torch.float32, n_surface_points: int = 2048, seed: int = 0):
        model = _parse_model()
        self.device, self.dtype = torch.device(device), dtype
        self.n_surface_points, self.seed = int(n_surface_points), int(seed)
        self.tree: list[Link] = list(model["links"])
        self.link_names: list[str] = [l.name for l in self.tree]
        self.primitives: list[Primitive] = list(model["primitives"])
        self._link_meshes: dict[str, trimesh.Trimesh] = model["link_meshes"]
        lid = {n: i for i, n in enumerate(self.link_names)}
        L = len(self.tree)

        # --- kinematics: per-link constants; levels of the tree for the per-depth vectorised FK
        offset_R = np.stack([_quat_to_matrix_np(l.quat) for l in self.tree])
        K = np.stack([_skew_np(l.axis) if l.joint is not None else np.zeros((3, 3)) for l in self.tree])
        depth = [0] * L
        for i, l in enumerate(self.tree):
            depth[i] = 0 if l.parent < 0 else depth[l.parent] + 1
        order = [0]  # links in processing order (by depth); FK results are concatenated in this order
        levels = []
        for d in range(1, max(depth) + 1):
            idx = [i for i in range(L) if depth[i] == d]
            levels.append((torch.tensor(idx), torch.tensor([order.index(self.tree[i].parent) for i in idx])))
            order += idx
        self._levels = levels
        np_consts = dict(
            offset_R=offset_R, offset_p=np.stack([l.pos for l in self.tree]), K=K, KK=K @ K,
            lower=model["lower"], upper=model["upper"],
        )
        long_consts = dict(
            link_joint=torch.tensor([l.joint if l.joint is not None else 0 for l in self.tree]),
            has_joint=torch.tensor([l.joint is not None for l in self.tree]),
            inv_order=torch.tensor(np.argsort(order)),
        )

        # --- primitives: signed_distance evaluates [capsules..., boxes...] ("cat order"); per_link output regroups
        # those rows into one per link that has primitives (sdf_link_names)
        caps = [p for p in self.primitives if p.kind == "capsule"]
        boxes = [p for p in self.primitives if p.kind == "box"]
        cat_order = caps + boxes
        self.sdf_link_names: list[str] = [n for n in self.link_names if any(p.link == n for p in self.primitives)]
        groups = [[k for k, p in enumerate(cat_order) if p.link == n] for n in self.sdf_link_names]
        if any(g != list(range(g[0], g[-1] + 1)) for g in groups):
            raise DgtrError("ShadowHand MJCF: primitives of one link are not consecutive")
        plan = []  # ("rows", a, b): copy rows a..b-1 of the (capsules, boxes) values; ("max", a, b): their max
        for g in groups:
            if len(g) == 1 and plan and plan[-1][0] == "rows" and plan[-1][2] == g[0]:
                plan[-1] = ("rows", plan[-1][1], g[0] + 1)
            else:
                plan.append(("rows" if len(g) == 1 else "max", g[0], g[-1] + 1))
        self._sdf_plan = plan
        np_consts.update(
            cap_R=np.stack([_quat_to_matrix_np(p.quat) for p in caps]),
            cap_p=np.stack([p.pos for p in caps]), cap_r=np.array([p.size[0] for p in caps]),
            cap_h=np.array([p.size[1] for p in caps]),
            box_R=np.stack([_quat_to_matrix_np(p.quat) for p in boxes]),
            box_p=np.stack([p.pos for p in boxes]), box_half=np.stack([p.size for p in boxes]),
        )
        long_consts.update(cap_link=torch.tensor([lid[p.link] for p in caps]),
                           box_link=torch.tensor([lid[p.link] for p in boxes]))

        # --- visual surface samples: counts per link by area; 10x uniform oversampling then farthest point sampling
        # (even coverage for the chamfer loss), fixed seed -> the same points every run
        import fpsample

        vis_links = [n for n in self.link_names if n in self._link_meshes]
        counts = _largest_remainder([self._link_meshes[n].area for n in vis_links], self.n_surface_points)
        pts, idx = [], []
        for k, (n, c) in enumerate(zip(vis_links, counts)):
            cand, _ = trimesh.sample.sample_surface(self._link_meshes[n], 10 * int(c), seed=self.seed + k)
            pts.append(cand[fpsample.fps_sampling(np.asarray(cand, dtype=np.float32), int(c), start_idx=0)])
            idx += [lid[n]] * int(c)
        np_consts["surf_p"] = np.concatenate(pts)
        long_consts["surf_link"] = torch.tensor(idx)

        # --- collision surface samples: uniform on the primitives, counts by area
        areas = [4 * np.pi * p.size[0] * p.size[1] + 4 * np.pi * p.size[0] ** 2 if p.kind == "capsule"
                 else 8 * (p.size[0] * p.size[1] + p.size[1] * p.size[2] + p.size[0] * p.size[2])
                 for p in self.primitives]
        rng = np.random.default_rng(self.seed)
        counts = _largest_remainder(areas, self.n_surface_points)
        np_consts["coll_p"] = np.concatenate([_sample_primitive(p, int(c), rng) for p, c in zip(self.primitives, counts)])
        long_consts["coll_link"] = torch.tensor(np.repeat([lid[p.link] for p in self.primitives], counts))

        # --- contact candidates: the palmar side of the 12 finger capsules (y = -r: flexion about +x turns the
        # fingers toward -y, the palm normal) and of thmiddle/thdistal (x = -r: THJ1/THJ0 bend about +y with
        # negative angles, toward -x), N_CONTACT_PER_LINK evenly along each axis; plus a 3 x 4 grid on the
        # palmar face of the main palm box (y = -half_y).
        cpts, clink = [], []
        for p in caps:
            short = p.link.split(":")[1]
            if short == "thproximal":
                continue  # DESIGN §2: the 12 finger capsules + thmiddle/thdistal (thproximal is the thumb's base)
            r, h = p.size
            z = (np.arange(N_CONTACT_PER_LINK) + 0.5) / N_CONTACT_PER_LINK * 2 * h - h
            side = np.array([-r, 0, 0]) if short.startswith("th") else np.array([0, -r, 0])
            local = side[None] + z[:, None] * np.array([0, 0, 1.0])
            cpts.append(local @ _quat_to_matrix_np(p.quat).T + p.pos)
            clink += [lid[p.link]] * N_CONTACT_PER_LINK
        palm_box = max((p for p in boxes if p.link == ROOT), key=lambda p: np.prod(p.size))
        gx, gz = np.meshgrid(np.linspace(-2, 2, 3) / 3, np.linspace(-3, 3, 4) / 4, indexing="ij")
        grid = np.stack([gx.ravel() * palm_box.size[0], np.full(gx.size, -palm_box.size[1]),
                         gz.ravel() * palm_box.size[2]], 1)
        cpts.append(grid @ _quat_to_matrix_np(palm_box.quat).T + palm_box.pos)
        clink += [lid[ROOT]] * len(grid)
        np_consts["contact_p"] = np.concatenate(cpts)
        long_consts["contact_link"] = torch.tensor(clink)

        # --- self-penetration keypoints: points on each capsule axis, spaced <= 15 mm so that two crossing
        # phalanges always bring a pair closer than the 2 cm threshold. Pairs on the same finger (same chain from
        # the palm) are excluded: consecutive points there are always < 2 cm apart, and the joint limits keep a
        # finger from folding onto itself, so only finger-finger and finger-thumb contacts count.
        kpts, kfinger, klink = [], [], []
        for p in caps:
            r, h = p.size
            n = int(np.ceil(2 * h / 0.015))
            z = np.arange(1, n + 1) / n * 2 * h - h  # from one step past the proximal end to the distal end
            kpts.append(np.stack([np.zeros(n), np.zeros(n), z], 1) @ _quat_to_matrix_np(p.quat).T + p.pos)
            kfinger += [p.link.split(":")[1][:2]] * n
            klink += [lid[p.link]] * n
        np_consts["kp_p"] = np.concatenate(kpts)
        long_consts["kp_link"] = torch.tensor(klink)
        f = np.array(kfinger)
        long_consts["kp_pair"] = torch.tensor(f[:, None] != f[None, :])

        for name in ("surf", "coll", "contact", "kp"):
            np_consts["E_" + name] = _points_matrix(np_consts[name + "_p"], long_consts[name + "_link"].numpy(), L)
        # --- primitives in ``self.primitives`` order for the penetration sum: centre frame in its link, kind, size
        # (capsule: radius, half-length, 0; box: half extents) and bounding-sphere radius
        np_consts.update(
            prim_R=np.stack([_quat_to_matrix_np(p.quat) for p in self.primitives]),
            prim_p=np.stack([p.pos for p in self.primitives]),
            prim_size=np.array([[p.size[0], p.size[1], 0.0] if p.kind == "capsule" else list(p.size)
                                for p in self.primitives]),
            prim_radius=np.array([p.size[0] + p.size[1] if p.kind == "capsule" else np.linalg.norm(p.size)
                                  for p in self.primitives]))
        long_consts.update(prim_link=torch.tensor([lid[p.link] for p in self.primitives]),
                           prim_is_cap=torch.tensor([p.kind == "capsule" for p in self.primitives]))
        self._np_consts, self._long_consts = np_consts, long_consts
        self._buffers: dict = {}
        self._cache: dict = {}
        self._set_public()

    # ------------------------------------------------------------------ device / dtype
    def _consts(self, dtype, device) -> SimpleNamespace:
        """Constant tensors in the given dtype/device (cached; tiny)."""
        key = (dtype, torch.device(device))
        if key not in self._cache:
            c = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in self._np_consts.items()}
            c.update({k: v.to(device) for k, v in self._long_consts.items()})
            c["levels"] = [(i.to(device), p.to(device)) for i, p in self._levels]
            self._cache[key] = SimpleNamespace(**c)
        return self._cache[key]

    def _set_public(self):
        c = self._consts(self.dtype, self.device)
        self.joint_lower, self.joint_upper = c.lower, c.upper
        self.surface_link_index, self.contact_link_index = c.surf_link, c.contact_link
        self.collision_link_index, self.keypoint_link_index = c.coll_link, c.kp_link

    def to(self, device=None, dtype=None) -> "ShadowHand":
        """A copy whose public tensors live on ``device`` in ``dtype`` (constants are shared, not recomputed)."""
        new = copy.copy(self)
        new.device = torch.device(device) if device is not None else self.device
        new.dtype = dtype if dtype is not None else self.dtype
        new._set_public()
        return new

    # ------------------------------------------------------------------ validation
    def _tensor(self, x, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(np.asarray(x), dtype=self.dtype, device=self.device)
            except (TypeError, ValueError) as e:
                raise InputError(f"{name}: cannot be read as a tensor ({e})") from e
        if not x.is_floating_point():
            x = x.to(self.dtype)
        return x

    @staticmethod
    def _finite(x: torch.Tensor, name: str):
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"{name}: contains NaN or inf")

    def _prep(self, rot, t, q):
        """Validate a batch of grasps -> (R (B,3,3), t (B,3), q (B,22)) in t's dtype/device."""
        t = self._tensor(t, "t")
        if t.dim() != 2 or t.shape[1] != 3:
            raise InputError(f"t: expected shape (B, 3), got {tuple(t.shape)}")
        q = self._tensor(q, "q")
        if q.dim() != 2 or q.shape[1] != 22:
            raise InputError(f"q: expected shape (B, 22) joint angles in JOINT_NAMES order, got {tuple(q.shape)}")
        rot = self._tensor(rot, "rot")
        # infer the representation from the number of dims: with a batch of 3, (3, 3) is 3 axis-angles, not a matrix
        if rot.dim() == 3 and rot.shape[1:] == (3, 3):
            kind = "matrix"
        elif rot.dim() == 2 and rot.shape[1] in (3, 4, 6):
            kind = {3: "axis_angle", 4: "quaternion", 6: "6d"}[rot.shape[1]]
        else:
            raise InputError(f"rot: expected (B, 3, 3) matrix, (B, 4) wxyz quaternion, (B, 6) 6D or (B, 3) "
                             f"axis-angle, got {tuple(rot.shape)}")
        if not (rot.shape[0] == t.shape[0] == q.shape[0]):
            raise InputError(f"rot, t, q: batch sizes differ ({rot.shape[0]}, {t.shape[0]}, {q.shape[0]})")
        for x, name in ((rot, "rot"), (t, "t"), (q, "q")):
            self._finite(x, name)
        dtype = t.dtype
        return to_matrix(rot.to(dtype), kind), t, q.to(dtype)

    # ------------------------------------------------------------------ kinematics
    def _fk_palm(self, q: torch.Tensor):
        """Link frames in the palm frame: q (B,22) -> rotations (B,L,3,3), origins (B,L,3)."""
        c = self._consts(q.dtype, q.device)
        B = q.shape[0]
        ang = (q[:, c.link_joint] * c.has_joint)[..., None, None]  # (B,L,1,1); the root has no joint
        # Rodrigues about each fixed unit axis; the joint turns the link after its fixed offset rotation
        R_loc = c.offset_R @ (torch.eye(3, dtype=q.dtype, device=q.device) + torch.sin(ang) * c.K
                              + (1 - torch.cos(ang)) * c.KK)
        R_acc = R_loc[:, :1]  # the root: identity
        p_acc = q.new_zeros(B, 1, 3)
        for idx, parent in c.levels:  # one batched step per tree depth
            Rp = R_acc[:, parent]
            R_acc = torch.cat([R_acc, Rp @ R_loc[:, idx]], 1)
            p_acc = torch.cat([p_acc, p_acc[:, parent] + (Rp @ c.offset_p[idx][..., None]).squeeze(-1)], 1)
        return R_acc[:, c.inv_order], p_acc[:, c.inv_order]

    def _fk(self, rot, t, q):
        """Validated grasp -> (R (B,3,3), t (B,3), q, link rotations (B,L,3,3) and origins (B,L,3) in the object frame)."""
        R, t, q = self._prep(rot, t, q)
        Rl, pl = self._fk_palm(q)
        return R, t, q, R[:, None] @ Rl, (R[:, None] @ pl[..., None]).squeeze(-1) + t[:, None]

    def link_transforms(self, rot, t, q) -> torch.Tensor:
        """Link frames in the object frame -> (B, L, 4, 4), links in ``link_names`` order."""
        _, _, _, Rw, pw = self._fk(rot, t, q)
        top = torch.cat([Rw, pw[..., None]], -1)
        bottom = torch.zeros_like(top[..., :1, :])
        bottom[..., 0, 3] = 1
        return torch.cat([top, bottom], -2)

    def link_frames(self, rot, t, q) -> tuple[torch.Tensor, torch.Tensor]:
        """Link frames in the object frame: rotations (B, L, 3, 3) and origins (B, L, 3), ``link_names`` order.
        Computed once, they serve several point sets (``frame_points``) without repeating the kinematics."""
        return self._fk(rot, t, q)[3:]

    def frame_points(self, frames, kind: str) -> torch.Tensor:
        """A fixed point set posed by ``link_frames`` output -> (B, N, 3); kind: 'visual', 'collision', 'contact'
        (``contact_candidates``) or 'keypoints' (``penetration_keypoints``)."""
        names = {"visual": "surf", "collision": "coll", "contact": "contact", "keypoints": "kp"}
        if kind not in names:
            raise InputError(f"kind: expected one of {sorted(names)}, got {kind!r}")
        Rw, pw = frames
        c = self._consts(pw.dtype, pw.device)
        # one matmul of all link frames [R | o] (B, 3, 4L) with the constant (4L, N) matrix holding each point's
        # homogeneous link coordinates in its link's 4 rows (12x faster than gathering a frame per point)
        A = torch.cat([Rw, pw[..., None]], -1).permute(0, 2, 1, 3).reshape(Rw.shape[0], 3, -1)
        return (A @ getattr(c, "E_" + names[kind])).transpose(1, 2).contiguous()

    def primitive_grid(self, spacing: float = 0.0025, min_size: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic surface points of the collision primitives, about ``spacing`` apart (the evaluation's Q1
        contact search; ``surface_points(kind='collision')`` is the random area-weighted sample used in training).
        Primitives all of whose sizes are below ``min_size`` are left out. Returns points (P, 3) float64 in their
        link frames and their link indices (P,) (into ``link_names``), in ``primitives`` order; cached."""
        key = ("grid", float(spacing), float(min_size))
        if key not in self._cache:
            prims = [p for p in self.primitives if np.max(p.size) >= min_size]
            pts = [_grid_primitive(p, spacing) for p in prims]
            link = np.concatenate([np.full(len(x), self.link_names.index(p.link)) for p, x in zip(prims, pts)])
            self._cache[key] = (torch.from_numpy(np.concatenate(pts)), torch.from_numpy(link))
        return self._cache[key]

    @staticmethod
    def pose_points(frames, points: torch.Tensor, link: torch.Tensor) -> torch.Tensor:
        """Any points fixed in links, posed by ``link_frames`` output: points (P, 3) in their links' frames, link
        (P,) indices into ``link_names`` -> (B, P, 3) in the object frame (``frame_points`` is the precomputed
        fast path of the hand's own point sets)."""
        Rw, pw = frames
        return (Rw[:, link] @ points.to(Rw.dtype)[None, :, :, None]).squeeze(-1) + pw[:, link]

    def _pose_points(self, rot, t, q, kind: str) -> torch.Tensor:
        return self.frame_points(self.link_frames(rot, t, q), kind)

    def surface_points(self, rot, t, q, kind: str = "visual") -> torch.Tensor:
        """Fixed surface samples in the object frame -> (B, N, 3), N = ``n_surface_points``.

        ``kind='visual'``: on the visual STL meshes (link of each point: ``surface_link_index``);
        ``kind='collision'``: on the collision primitives (``collision_link_index``)."""
        if kind == "visual":
            return self._pose_points(rot, t, q, "visual")
        if kind == "collision":
            return self._pose_points(rot, t, q, "collision")
        raise InputError(f"kind: expected 'visual' or 'collision', got {kind!r}")

    def contact_candidates(self, rot, t, q) -> torch.Tensor:
        """Contact candidate points in the object frame -> (B, Nc, 3) (links: ``contact_link_index``; 140 on the
        14 finger/thumb capsules, then 12 on the palm)."""
        return self._pose_points(rot, t, q, "contact")

    def penetration_keypoints(self, rot, t, q) -> torch.Tensor:
        """Self-penetration keypoints (on the capsule axes) in the object frame -> (B, K, 3)."""
        return self._pose_points(rot, t, q, "keypoints")

    def self_penetration(self, rot, t, q) -> torch.Tensor:
        """sum over ordered keypoint pairs on different fingers of relu(0.02 - distance) -> (B,).

        Pairs on the same finger are left out (see the keypoint comment in ``__init__``)."""
        return self.keypoint_self_penetration(self.penetration_keypoints(rot, t, q))

    def keypoint_self_penetration(self, k: torch.Tensor) -> torch.Tensor:
        """``self_penetration`` from posed keypoints (B, K, 3) (``frame_points(frames, 'keypoints')``) -> (B,)."""
        c = self._consts(k.dtype, k.device)
        d2 = ((k[:, :, None] - k[:, None]) ** 2).sum(-1)
        d = d2.clamp_min(1e-12).sqrt()  # clamp: no NaN gradient on the (masked) diagonal
        return (torch.relu(SPEN_THRESHOLD - d) * c.kp_pair).sum((1, 2))

    # ------------------------------------------------------------------ signed distance
    def signed_distance(self, rot, t, q, points, per_link: bool = False) -> torch.Tensor:
        """Signed distance of object-frame points to the hand's collision primitives, POSITIVE INSIDE.

        points (B, P, 3) -> (B, P): the largest penetration depth over primitives when inside, minus the distance
        to the nearest primitive outside. ``per_link=True`` -> (B, P, G), one value per link that has primitives
        (``sdf_link_names``; the two palm boxes form one group). Exact for capsules and boxes (per_link: to ~1e-7 m
        near the surface, ~1e-5 m within 0.1 mm of a capsule axis), differentiable w.r.t. rot, t, q and points.
        """
        R, t, q = self._prep(rot, t, q)
        points = self._tensor(points, "points")
        if points.dim() != 3 or points.shape[2] != 3 or points.shape[0] != t.shape[0]:
            raise InputError(f"points: expected shape (B={t.shape[0]}, P, 3), got {tuple(points.shape)}")
        self._finite(points, "points")
        c = self._consts(t.dtype, t.device)
        Rl, pl = self._fk_palm(q)
        # work in the palm frame: coordinates stay ~0.1 m, which keeps the expanded squared distances accurate
        x = (points.to(t.dtype) - t[:, None]) @ R  # (B,P,3) = R^T (p - t) for each point
        geom = self._primitive_geometry(c, Rl, pl)
        B, G = x.shape[0], len(self.primitives)
        # primitives x points layout (B, G, P): per-primitive rows are contiguous, so slicing, concatenating and
        # regrouping them are block copies (concatenating along a short last dim was half the run time)
        xt = x.transpose(1, 2).contiguous()
        chunk = max(1, _CHUNK_ELEMENTS // max(1, B * G))  # points per chunk: keeps temporaries cache-sized
        if per_link:
            vals = torch.cat([self._all_primitives(c, xc, *geom) for xc in xt.split(chunk, 2)], 2)  # (B,G,P)
            # regroup rows into sdf_link_names order as block copies: runs of consecutive single primitives, and
            # the max over the rows of a multi-primitive group (the two palm boxes)
            pieces = [vals[:, a:b] if kind == "rows" else vals[:, a:b].amax(1, keepdim=True)
                      for kind, a, b in self._sdf_plan]
            return torch.cat(pieces, 1).transpose(1, 2)
        # max over primitives: find the winning primitive of each point without autograd (all B*P*G values), then
        # evaluate only that one, exactly and with autograd. Same gradients as amax, at O(B*P) autograd memory,
        # and exact values also deep inside (the expanded squared distances lose ~1e-5 m near capsule axes).
        with torch.no_grad():
            dgeom = [g.detach() for g in geom]
            best = torch.cat([self._all_primitives(c, xc, *dgeom).max(1).indices for xc in xt.detach().split(chunk, 2)], 1)
        return self._selected_primitive(c, x, best, *geom)

    def penetration(self, rot, t, q, points, frames=None, margin: float = 0.0) -> torch.Tensor:
        """Object-penetration sum: Σ_p relu(signed_distance(p) − margin) -> (B,), over points (B, P, 3) per grasp or
        (P, 3) shared by all grasps. ``frames``: this batch's ``link_frames`` when the caller has them already;
        ``margin`` (m): depths up to it cost nothing (a dead zone; 0: the plain sum).

        Same value and gradients as ``relu(signed_distance(rot, t, q, points)).sum(-1)``, computed on the
        (grasp, point, primitive) triplets whose primitive's bounding sphere holds the point (found by one matrix
        product, without autograd); a hand touches a small part of an object cloud, so this is several times cheaper.
        ``PenetrationCache`` is the same sum with the candidate search cached across calls."""
        if frames is None:  # (given frames were validated when they were made: no second check per call)
            frames = self.link_frames(rot, t, q)
        points = self._tensor(points, "points").to(frames[1].dtype)
        B = frames[1].shape[0]
        if not (points.dim() == 2 and points.shape[1] == 3) and not (points.dim() == 3 and points.shape[0] == B
                                                                     and points.shape[2] == 3):
            raise InputError(f"points: expected shape (B={B}, P, 3) or (P, 3), got {tuple(points.shape)}")
        self._finite(points, "points")
        Rg, cg = self.primitive_frames(frames)
        with torch.no_grad():
            bg, p, x = self._sphere_candidates(cg.detach(), points)
        return self._penetration_sum(Rg, cg, bg, p, x, points.shape[-2], margin)

    def primitive_frames(self, frames) -> tuple[torch.Tensor, torch.Tensor]:
        """``link_frames`` output -> centre frames of the collision primitives (``primitives`` order) in the object
        frame: rotations (B, G, 3, 3), centres (B, G, 3)."""
        Rw, pw = frames
        c = self._consts(pw.dtype, pw.device)
        Rl, pl = Rw.index_select(1, c.prim_link), pw.index_select(1, c.prim_link)
        return Rl @ c.prim_R, (Rl @ c.prim_p[..., None]).squeeze(-1) + pl

    def _sphere_candidates(self, cg: torch.Tensor, points: torch.Tensor, margin: float = 0.0):
        """Triplets whose point lies within ``margin`` of a primitive's bounding sphere: cg (B, G, 3); points (P, 3)
        shared or (B, P, 3) -> (bg = grasp·G + primitive, p = point index, x = the points) (T,). |x − c|² − r² < 0 for
        all pairs at once: one matmul of augmented coordinates [−2c, 1, |c|² − r²]·[x, |x|², 1]."""
        c = self._consts(cg.dtype, cg.device)
        B, G = cg.shape[:2]
        r2 = (c.prim_radius + margin) ** 2
        ca = torch.cat([-2 * cg, torch.ones_like(cg[..., :1]), (cg * cg).sum(-1, keepdim=True) - r2[:, None]], -1)
        xa = torch.cat([points, (points * points).sum(-1, keepdim=True), torch.ones_like(points[..., :1])], -1)
        if points.dim() == 2:
            p, bg = (xa @ ca.reshape(-1, 5).T < 0).nonzero(as_tuple=True)
            return bg, p, points.index_select(0, p)
        b, p, g = (xa @ ca.transpose(1, 2) < 0).nonzero(as_tuple=True)
        return b * G + g, p, points[b, p]

    @staticmethod
    def _primitive_depth(Rg, cg, size, is_cap, x) -> torch.Tensor:
        """Per triplet: primitive frames (T, 3, 3), centres (T, 3), sizes (T, 3), kinds (T,), points (T, 3) -> depth
        inside the primitive (T,), exact inside (positive); <= 0 outside (not the outside distance for boxes)."""
        xl = ((x - cg)[:, None] @ Rg).squeeze(1)                                       # primitive-local coordinates
        z = xl[:, 2].clamp(min=-size[:, 1], max=size[:, 1])          # capsule: radius − distance to its axis segment
        cap = size[:, 0] - torch.stack([xl[:, 0], xl[:, 1], xl[:, 2] - z], -1).norm(dim=-1)
        box = -(xl.abs() - size).amax(-1)
        return torch.where(is_cap, cap, box)

    def _buffer(self, name: str, n: int, dtype, device) -> torch.Tensor:
        """A scratch vector reused across calls (only the entries a call writes are read back)."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != torch.device(device):
            buf = self._buffers[name] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n]

    def _penetration_sum(self, Rg, cg, bg, p, x, n_pts: int, margin: float = 0.0) -> torch.Tensor:
        """Σ relu(hand sdf − margin) per grasp from candidate triplets (``_sphere_candidates``; a superset is fine):
        primitive frames Rg (B, G, 3, 3), cg (B, G, 3); bg, p (T,) long; x (T, 3); n_pts: points per point set
        (p < n_pts)."""
        B, G = cg.shape[:2]
        c = self._consts(cg.dtype, cg.device)
        Rf, cf = Rg.reshape(-1, 3, 3), cg.reshape(-1, 3)  # flat (grasp, primitive) rows: index_select, not 2-D indexing
        with torch.no_grad():
            g = bg % G
            near = ((x - cf.detach().index_select(0, bg)) ** 2).sum(-1) < c.prim_radius.index_select(0, g) ** 2
            i = near.nonzero().squeeze(1)
            bg, g, p, x = bg.index_select(0, i), g.index_select(0, i), p.index_select(0, i), x.index_select(0, i)
            depth = self._primitive_depth(Rf.detach().index_select(0, bg), cf.detach().index_select(0, bg),
                                          c.prim_size.index_select(0, g), c.prim_is_cap.index_select(0, g), x)
            i = (depth > 0).nonzero().squeeze(1)
            bg, g, p, x, depth = (v.index_select(0, i) for v in (bg, g, p, x, depth))
            # the hand sdf is the max over primitives: keep the deepest primitive of each (grasp, point), and one
            # winner per pair even if two primitives tie (a point must not count twice)
            pair = bg // G * n_pts + p
            best = self._buffer("best", B * n_pts, depth.dtype, depth.device)
            best[pair] = -1.0
            best.scatter_reduce_(0, pair, depth, reduce="amax")
            cand = torch.nonzero(depth == best[pair]).squeeze(1)
            pick = self._buffer("pick", B * n_pts, torch.long, depth.device)
            pick[pair[cand]] = -1
            pick.scatter_reduce_(0, pair[cand], cand, reduce="amax")
            sel = cand[pick[pair[cand]] == cand]
            if margin > 0:
                sel = sel[depth.index_select(0, sel) > margin]
            bg, g, x = bg.index_select(0, sel), g.index_select(0, sel), x.index_select(0, sel)
        depth = self._primitive_depth(Rf.index_select(0, bg), cf.index_select(0, bg), c.prim_size.index_select(0, g),
                                      c.prim_is_cap.index_select(0, g), x)
        # 0 * cg.sum: attached to the graph even without contact
        return (0 * cg.sum((1, 2))).index_add(0, bg // G, depth - margin if margin > 0 else depth)

    @staticmethod
    def _primitive_geometry(c, Rl, pl):
        """Primitives in the palm frame for each grasp: capsule axis start a (B,Gc,3) and unit direction u
        (B,Gc,3) (the axis runs from a to a + 2h u); box rotation (B,Gb,3,3) and centre (B,Gb,3)."""
        Rc = Rl[:, c.cap_link] @ c.cap_R
        u = Rc[..., 2]
        a = pl[:, c.cap_link] + (Rl[:, c.cap_link] @ c.cap_p[..., None]).squeeze(-1) - c.cap_h[:, None] * u
        Rb = Rl[:, c.box_link] @ c.box_R
        cb = pl[:, c.box_link] + (Rl[:, c.box_link] @ c.box_p[..., None]).squeeze(-1)
        return u, a, Rb, cb

    @staticmethod
    def _all_primitives(c, xt, u, a, Rb, cb) -> torch.Tensor:
        """Hand SDF (positive inside) of palm-frame points xt (B,3,P) to every primitive -> (B,Gc+Gb,P),
        capsules first, then boxes."""
        # ONE bmm with [x; 1; |x|^2] (B,5,P) gives, per capsule, the axis coordinate s = (x - a).u and
        # e = |x - a|^2, and per box the box-frame coordinates Rb^T (x - cb): no (B,G,P,3) broadcast tensor.
        xx = (xt * xt).sum(1, keepdim=True)
        xaug = torch.cat([xt, torch.ones_like(xx), xx], 1)
        B, Gc, Gb = u.shape[0], u.shape[1], Rb.shape[1]
        one, zero = torch.ones_like(u[..., :1]), torch.zeros_like(u[..., :1])
        box_rows = torch.cat([Rb.transpose(-1, -2), -(cb[:, :, None, :] @ Rb).transpose(-1, -2),
                              torch.zeros_like(Rb[..., :1])], -1).reshape(B, 3 * Gb, 5)  # rows: (box, axis j)
        M = torch.cat([torch.cat([u, -(a * u).sum(-1, keepdim=True), zero], -1),
                       torch.cat([-2 * a, (a * a).sum(-1, keepdim=True), one], -1), box_rows], 1)
        out = M @ xaug  # (B, 2Gc+3Gb, P)
        s, e = out[:, :Gc], out[:, Gc:2 * Gc]
        # squared distance to the segment [0, 2h] = |x - a|^2 - s^2 + (s - clamp(s, 0, 2h))^2
        over = s - torch.minimum(s.clamp_min(0), 2 * c.cap_h[:, None])
        d2 = e - s * s + over * over
        cap = c.cap_r[:, None] - d2.clamp_min(1e-20).sqrt()  # clamp: finite gradient on the axis
        box = _box_depth(out[:, 2 * Gc:].unflatten(1, (Gb, 3)), c.box_half[..., None], dim=2)
        return torch.cat([cap, box], 1)

    @staticmethod
    def _selected_primitive(c, x, best, u, a, Rb, cb) -> torch.Tensor:
        """Hand SDF of x (B,P,3) to primitive ``best`` (B,P) (index into capsules-then-boxes) -> (B,P)."""
        Gc = u.shape[1]
        ic, ib = best.clamp(max=Gc - 1), (best - Gc).clamp(min=0)
        B = best.shape[0]
        # T (B, Gx, ...) -> T[b, i[b, p]] (B, P, ...), as one row gather of the flattened table (faster than gather)
        pick = lambda T, i: T.reshape(-1, *T.shape[2:])[(i + torch.arange(B, device=i.device)[:, None] * T.shape[1])
                                                        .reshape(-1)].reshape(*i.shape, *T.shape[2:])
        d = x - pick(a, ic)
        us = pick(u, ic)
        s = (d * us).sum(-1)
        v = d - torch.minimum(s.clamp_min(0), 2 * c.cap_h[ic])[..., None] * us  # x minus its closest axis point
        cap = c.cap_r[ic] - (v * v).sum(-1).clamp_min(1e-20).sqrt()
        Rs = pick(Rb, ib)
        xl = ((x - pick(cb, ib))[..., None, :] @ Rs).squeeze(-2)
        box = _box_depth(xl, c.box_half[ib])
        return torch.where(best < Gc, cap, box)

    # ------------------------------------------------------------------ joints
    def _q(self, q, name="q") -> torch.Tensor:
        q = self._tensor(q, name)
        if q.shape[-1:] != (22,):
            raise InputError(f"{name}: expected shape (..., 22), got {tuple(q.shape)}")
        return q

    def joint_limit_energy(self, q) -> torch.Tensor:
        """q (..., 22) -> (...,) sum of relu(q - upper) + relu(lower - q) (DexGraspNet's soft limit)."""
        q = self._q(q)
        c = self._consts(q.dtype, q.device)
        return (torch.relu(q - c.upper) + torch.relu(c.lower - q)).sum(-1)

    def normalize_joints(self, q) -> torch.Tensor:
        """q (..., 22) radians -> (..., 22), 0 at the lower limit and 1 at the upper (not clipped)."""
        q = self._q(q)
        c = self._consts(q.dtype, q.device)
        return (q - c.lower) / (c.upper - c.lower)

    def denormalize_joints(self, u) -> torch.Tensor:
        """Inverse of :meth:`normalize_joints`: (..., 22) in [0, 1] -> radians."""
        u = self._q(u, "u")
        c = self._consts(u.dtype, u.device)
        return c.lower + u * (c.upper - c.lower)

    # ------------------------------------------------------------------ pictures
    def visual_meshes(self, rot, t, q) -> list[trimesh.Trimesh]:
        """Posed visual meshes (object frame), one per link with a mesh, for ONE grasp: rot (3,3)/(4,)/(6,)/(3,)
        or with a batch of 1, t (3,) or (1,3), q (22,) or (1,22)."""
        t = self._tensor(t, "t")
        if t.dim() == 1:
            rot, t, q = self._tensor(rot, "rot")[None], t[None], self._tensor(q, "q")[None]
        if t.shape[0] != 1:
            raise InputError(f"t: visual_meshes takes one grasp, got a batch of {t.shape[0]}")
        with torch.no_grad():
            T = self.link_transforms(rot, t, q)[0].double().cpu().numpy()
        out = []
        for i, n in enumerate(self.link_names):
            if n in self._link_meshes:
                mesh = self._link_meshes[n].copy()
                mesh.apply_transform(T[i])
                mesh.metadata["link"] = n
                out.append(mesh)
        return out


class PenetrationCache:
    """``ShadowHand.penetration`` for hands that share point sets, with the candidate search cached across calls
    (``dgtr synth``'s E_pen, called once per annealing step).

    Candidates are found for bounding spheres grown by ``margin`` and reused while none of a hand's primitive centres
    moved farther than ``margin`` from where they were found (they stay a superset of the true candidates, so the
    sum is exact); an annealing step moves a hand by millimetres, so the full search runs for few hands per step.
    ``__call__(frames, groups)``: frames = ``hand.link_frames`` of B hands; groups = [(hand indices (b,) long,
    points (P, 3))], each hand in one group, the same objects on every call -> (B,).
    """

    def __init__(self, hand: "ShadowHand", margin: float = 0.0):
        self.hand, self.margin = hand, float(margin)
        self._cache, self.n_scanned = None, 0

    def __call__(self, frames, groups) -> torch.Tensor:
        Rg, cg = self.hand.primitive_frames(frames)
        with torch.no_grad():
            c = self._candidates(cg.detach(), groups)
        return self.hand._penetration_sum(Rg, cg, c["bg"], c["p"], c["x"], len(c["pts"]))

    def _candidates(self, cg: torch.Tensor, groups) -> dict:
        """The cache {'pts': all points (N, 3), 'bg', 'p' (T,) long (p indexes 'pts'), 'x' (T, 3)}, re-searched for
        the hands that moved by more than ``margin`` since their last search."""
        c = self._cache
        B, G = cg.shape[:2]
        if c is None or c["groups"] is not groups or c["centres"].shape != cg.shape:
            c = self._cache = dict(groups=groups, pts=torch.cat([x for _, x in groups]), centres=cg.clone(), bg=None)
            redo = torch.ones(B, dtype=torch.bool, device=cg.device)
        else:
            redo = ((cg - c["centres"]) ** 2).sum(-1).amax(-1) > self.margin ** 2
        if redo.any():
            found, start = [], 0
            for hands, x in groups:
                h = hands[redo[hands]]
                if len(h):
                    bg, p, xs = self.hand._sphere_candidates(cg[h], x, self.margin)
                    found.append((h[bg // G] * G + bg % G, p + start, xs))
                start += len(x)
            c["centres"][redo] = cg[redo]
            if c["bg"] is not None:
                keep = (~redo.index_select(0, c["bg"] // G)).nonzero().squeeze(1)
                found.append(tuple(c[k].index_select(0, keep) for k in ("bg", "p", "x")))
            c["bg"], c["p"], c["x"] = (torch.cat(v) for v in zip(*found))
            self.n_scanned += int(redo.sum())
        return c


@functools.lru_cache(maxsize=None)
def _cached_hand(device: str, dtype: torch.dtype) -> ShadowHand:
    return ShadowHand(device=device, dtype=dtype)


def get_hand(device="cpu", dtype=torch.float32) -> ShadowHand:
    """A shared ShadowHand (default settings) per device and dtype."""
    return _cached_hand(str(torch.device(device)), dtype)
