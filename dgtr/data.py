"""Grasp data in the field's formats.

DexGraspNet grasp file ``dataset/<code>.npy``: ``np.save`` of an object array of dicts
``{'qpos': {22 joints, 'WRJRx', 'WRJRy', 'WRJRz', 'WRJTx', 'WRJTy', 'WRJTz'}, 'scale': float, ...}``; the wrist
rotation is sxyz Euler (``R = Rz·Ry·Rx``), the wrist translation is the palm origin in the (scaled) object frame.
Extra per-grasp keys (DexGraspNet stores energies such as ``'E_pen'``) are kept in ``GraspSet.extra``.

DGTR h5 layout (the authors' preprocessed files): datasets ``obj_<i>`` holding an object's unit-scale point cloud
(N, 3) with attributes ``hand_pose`` (M, 28) = ``[22 joints | sxyz Euler | t]``, ``obj_code`` and ``scale``.

Round trips are exact: a ``GraspSet`` keeps the Euler angles it was read with (float64) and writes them back unchanged;
``rotation`` is derived from them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import FileFormatError, InputError, MissingFileError
from .hand import JOINT_NAMES
from .rotations import euler_from_matrix, matrix_from_euler

ROT_KEYS = ("WRJRx", "WRJRy", "WRJRz")
TRANS_KEYS = ("WRJTx", "WRJTy", "WRJTz")
QPOS_KEYS = tuple(JOINT_NAMES) + ROT_KEYS + TRANS_KEYS


@dataclass
class GraspSet:
    """M grasps of one object (float64 tensors).

    joints (M, 22) rad · euler (M, 3) sxyz rad · translation (M, 3) m · scale (M,) · extra: name -> (M, ...) array.
    """

    joints: torch.Tensor
    euler: torch.Tensor
    translation: torch.Tensor
    scale: torch.Tensor
    code: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        m = self.joints.shape[0] if self.joints.ndim == 2 else -1
        for name, x, shape in (("joints", self.joints, (m, 22)), ("euler", self.euler, (m, 3)),
                               ("translation", self.translation, (m, 3)), ("scale", self.scale, (m,))):
            if tuple(x.shape) != shape:
                raise InputError(f"GraspSet.{name}: expected shape {shape} (M={m}), got {tuple(x.shape)}")

    @classmethod
    def from_pose(cls, rotation, translation, joints, scale, code: str = "", extra=None) -> "GraspSet":
        """From rotation (M,3,3), translation (M,3), joints (M,22) and scale (M,) or a float."""
        rotation, translation, joints = (torch.as_tensor(x, dtype=torch.float64) for x in (rotation, translation, joints))
        if rotation.ndim != 3 or rotation.shape[1:] != (3, 3):
            raise InputError(f"rotation: expected (M,3,3), got {tuple(rotation.shape)}")
        scale = torch.as_tensor(scale, dtype=torch.float64)
        if scale.ndim == 0:
            scale = scale.expand(rotation.shape[0]).clone()
        return cls(joints, euler_from_matrix(rotation), translation, scale, code, dict(extra or {}))

    @property
    def rotation(self) -> torch.Tensor:
        """(M, 3, 3) palm → object rotation."""
        return matrix_from_euler(self.euler)

    def __len__(self) -> int:
        return self.joints.shape[0]

    def subset(self, idx) -> "GraspSet":
        idx = torch.as_tensor(idx, dtype=torch.long)
        ni = idx.numpy()
        return GraspSet(self.joints[idx], self.euler[idx], self.translation[idx], self.scale[idx], self.code,
                        {k: np.asarray(v)[ni] for k, v in self.extra.items()})

    def scales(self, atol: float = 1e-4) -> list[float]:
        """Distinct scales (stored as float32 in DexGraspNet, so compared with a tolerance)."""
        out: list[float] = []
        for s in sorted(self.scale.tolist()):
            if not out or abs(s - out[-1]) > atol:
                out.append(s)
        return out

    def at_scale(self, scale: float, atol: float = 1e-4) -> "GraspSet":
        return self.subset(torch.nonzero((self.scale - scale).abs() <= atol).flatten())

    @staticmethod
    def concat(sets: list["GraspSet"]) -> "GraspSet":
        if not sets:
            raise InputError("GraspSet.concat: empty list")
        keys = set.intersection(*(set(s.extra) for s in sets))
        return GraspSet(*(torch.cat([getattr(s, a) for s in sets]) for a in ("joints", "euler", "translation", "scale")),
                        code=sets[0].code, extra={k: np.concatenate([s.extra[k] for s in sets]) for k in keys})


def grasps_from_records(records, code: str = "", source: str = "grasp records") -> GraspSet:
    """DexGraspNet list of dicts -> GraspSet. Missing keys raise ``FileFormatError`` naming the key and grasp index."""
    n = len(records)
    qpos = np.empty((n, len(QPOS_KEYS)), dtype=np.float64)
    scale = np.empty(n, dtype=np.float64)
    extra_keys = None
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "qpos" not in rec or "scale" not in rec:
            got = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            raise FileFormatError(f"{source}: grasp {i} must be a dict with 'qpos' and 'scale' (got {got})")
        q = rec["qpos"]
        missing = [k for k in QPOS_KEYS if k not in q]
        if missing:
            raise FileFormatError(f"{source}: grasp {i} qpos lacks key(s) {missing[:4]}{'...' if len(missing) > 4 else ''}")
        qpos[i] = [q[k] for k in QPOS_KEYS]
        scale[i] = rec["scale"]
        keys = set(rec) - {"qpos", "scale"}
        extra_keys = keys if extra_keys is None else extra_keys & keys
    extra = {k: np.asarray([rec[k] for rec in records]) for k in sorted(extra_keys or ())}
    t = torch.from_numpy(qpos)
    return GraspSet(t[:, :22].clone(), t[:, 22:25].clone(), t[:, 25:28].clone(), torch.from_numpy(scale), code, extra)


def records_from_grasps(grasps: GraspSet) -> list[dict]:
    """GraspSet -> DexGraspNet list of dicts (plain Python floats, as DexGraspNet writes them)."""
    qpos = torch.cat([grasps.joints, grasps.euler, grasps.translation], 1).double().tolist()
    out = []
    for i, row in enumerate(qpos):
        rec = {"qpos": dict(zip(QPOS_KEYS, row)), "scale": float(grasps.scale[i])}
        for k, v in grasps.extra.items():
            rec[k] = v[i].item() if np.ndim(v[i]) == 0 else v[i]
        out.append(rec)
    return out


def load_grasps(path: str | os.PathLike) -> GraspSet:
    """Read a DexGraspNet ``<code>.npy`` grasp file; the code is the file stem."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"grasp file not found: {p}")
    try:
        arr = np.load(p, allow_pickle=True)
    except Exception as e:  # numpy raises several types for corrupt files
        raise FileFormatError(f"{p}: not a readable .npy grasp file ({type(e).__name__}: {e})") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.dtype != object or arr.ndim != 1:
        raise FileFormatError(f"{p}: expected an object array of grasp dicts, got dtype {arr.dtype} shape {arr.shape}")
    return grasps_from_records(list(arr), code=p.stem, source=str(p))


def save_grasps(path: str | os.PathLike, grasps: GraspSet) -> None:
    """Write a DexGraspNet ``<code>.npy`` grasp file atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = np.empty(len(grasps), dtype=object)
    arr[:] = records_from_grasps(grasps)
    tmp = p.with_name(p.name + ".tmp.npy")
    np.save(tmp, arr, allow_pickle=True)
    os.replace(tmp, p)


def list_grasp_files(folder: str | os.PathLike) -> dict[str, Path]:
    """code -> path for every ``<code>.npy`` in a DexGraspNet ``dataset/`` folder (sorted)."""
    d = Path(folder)
    if not d.is_dir():
        raise MissingFileError(f"grasp folder not found: {d}")
    return {f.stem: f for f in sorted(d.glob("*.npy"))}


def read_dgtr_h5(path: str | os.PathLike) -> list[tuple[np.ndarray, GraspSet]]:
    """Read the authors' h5 layout -> [(unit-scale cloud (N,3), GraspSet at that object's scale)], in ``obj_i`` order."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"h5 file not found: {p}")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise FileFormatError(f"{p}: not a readable HDF5 file ({e})") from None
    out = []
    with f:
        names = sorted((k for k in f.keys() if k.startswith("obj_")), key=lambda k: int(k[4:]) if k[4:].isdigit() else k)
        for k in names:
            ds = f[k]
            for a in ("hand_pose", "obj_code", "scale"):
                if a not in ds.attrs:
                    raise FileFormatError(f"{p}: dataset {k} lacks attribute {a!r}")
            pose = np.asarray(ds.attrs["hand_pose"], dtype=np.float64).reshape(-1, 28)
            code = ds.attrs["obj_code"]
            code = code.decode() if isinstance(code, bytes) else str(code)
            t = torch.from_numpy(pose)
            m = pose.shape[0]
            g = GraspSet(t[:, :22].clone(), t[:, 22:25].clone(), t[:, 25:].clone(),
                         torch.full((m,), float(np.asarray(ds.attrs["scale"]).reshape(-1)[0]), dtype=torch.float64), code)
            out.append((np.asarray(ds[()], dtype=np.float32), g))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Training data: (object, scale) entries of a DexGraspNet-layout folder
# --------------------------------------------------------------------------------------------------------------------

def read_splits(root: str | os.PathLike) -> dict[str, list[str]]:
    """``<root>/splits.json`` -> {'train': [...], 'val': [...], 'test': [...]}; without the file every code is 'train'."""
    import json

    root = Path(root)
    f = root / "splits.json"
    if not f.is_file():
        return {"train": sorted(list_grasp_files(root / "dataset")), "val": [], "test": []}
    try:
        splits = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise FileFormatError(f"{f}: expected {{split: [codes]}}")
    return splits


def mesh_path(meshdata: str | os.PathLike, code: str) -> Path:
    """Mesh file of ``code`` in a DexGraspNet ``meshdata/`` folder or a folder of ``<code>.<ext>`` meshes."""
    d = Path(meshdata)
    p = d / code / "coacd" / "decomposed.obj"
    if p.is_file():
        return p
    for ext in ("obj", "stl", "ply", "off", "glb"):
        if (d / f"{code}.{ext}").is_file():
            return d / f"{code}.{ext}"
    raise MissingFileError(f"no mesh for object {code!r} in {d} (expected {code}/coacd/decomposed.obj or {code}.<ext>)")


class GraspDataset(torch.utils.data.Dataset):
    """Entries = (object, scale) pairs of one split of a DexGraspNet-layout folder ``root`` (``dataset/``, ``meshdata/``,
    optional ``splits.json``).

    Item: ``{'code', 'scale', 'index', 'points' (n_points, 3) float32 = unit cloud × scale,
    'rotation' (M,3,3), 'translation' (M,3), 'joints' (M,22)}`` (float32, metres, object frame).
    Entries with fewer than ``min_grasps`` grasps are skipped.  Unit clouds are sampled once per object (fixed seed).
    """

    def __init__(self, root, split: str = "train", n_points: int = 4096, min_grasps: int = 1, seed: int = 0,
                 codes: list[str] | None = None):
        from .objects import load_object

        self.root = Path(root)
        splits = read_splits(self.root)
        if codes is None:
            if split not in splits:
                raise InputError(f"split {split!r} not in {self.root / 'splits.json'} (has {sorted(splits)})")
            codes = splits[split]
        files = list_grasp_files(self.root / "dataset")
        missing = [c for c in codes if c not in files]
        if missing:
            raise MissingFileError(f"{self.root / 'dataset'}: no grasp file for {missing[:3]}")
        self.entries: list[tuple[str, float, GraspSet]] = []
        self.clouds: dict[str, np.ndarray] = {}
        for code in codes:
            g = load_grasps(files[code])
            before = len(self.entries)
            for s in g.scales():
                gs = g.at_scale(s)
                if len(gs) >= min_grasps:
                    self.entries.append((code, s, gs))
            if len(self.entries) > before:
                obj = load_object(mesh_path(self.root / "meshdata", code), code=code)
                self.clouds[code] = obj.sample_points(n_points, seed=seed).astype(np.float32)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        code, s, g = self.entries[i]
        return {"code": code, "scale": s, "index": i, "points": torch.from_numpy(self.clouds[code] * np.float32(s)),
                "rotation": g.rotation.float(), "translation": g.translation.float(), "joints": g.joints.float()}


def collate(batch: list[dict]) -> dict:
    """Stack clouds to (B, N, 3); keep per-object grasp tensors (variable M) as lists."""
    out = {k: [b[k] for b in batch] for k in batch[0]}
    out["points"] = torch.stack(out["points"])
    return out
