"""Grasp data in the field's formats.

DexGraspNet grasp file ``dataset/<code>.npy``: ``np.save`` of an object array of dicts
``{'qpos': {22 joints, 'WRJRx', 'WRJRy', 'WRJRz', 'WRJTx', 'WRJTy', 'WRJTz'}, 'scale': float, ...}``; the wrist
rotation is sxyz Euler (``R = Rz·Ry·Rx``), the wrist translation is the palm origin in the (scaled) object frame.
Extra per-grasp keys (DexGraspNet stores energies such as ``'E_pen'``) are kept in ``GraspSet.extra``.

DGTR h5 layout (the authors' preprocessed files): datasets ``obj_<i>`` holding an object's unit-scale point cloud
(N, 3) with attributes ``hand_pose`` (M, 28) = ``[22 joints | sxyz Euler | t]``, ``obj_code`` and ``scale``.

Compact grasp file ``grasps/<code>.npy`` (dgtr's dataset layout, ``data/dexgraspnet``): a float32 array (M, 29) with
the columns :data:`COMPACT_COLUMNS` = DexGraspNet's 28 qpos values in ``QPOS_KEYS`` order, then the scale: 116 bytes per
grasp instead of ~900 for the pickled dicts; no extra keys. ``load_grasps`` reads either kind of file.

Round trips are exact: a ``GraspSet`` keeps the Euler angles it was read with (float64) and writes them back unchanged;
``rotation`` is derived from them. DexGraspNet -> compact is exact for values that float32 holds (dgtr's own data is
made float32 from the start); compact -> DexGraspNet -> compact is always exact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import FileFormatError, InputError, MissingFileError
from .files import save_npy
from .hand import JOINT_NAMES
from .rotations import euler_from_matrix, matrix_from_euler

ROT_KEYS = ("WRJRx", "WRJRy", "WRJRz")
TRANS_KEYS = ("WRJTx", "WRJTy", "WRJTz")
QPOS_KEYS = tuple(JOINT_NAMES) + ROT_KEYS + TRANS_KEYS
COMPACT_COLUMNS = QPOS_KEYS + ("scale",)
GRASP_FOLDERS = ("dataset", "grasps")  # DexGraspNet's layout, dgtr's compact layout


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
    """Read a grasp file, DexGraspNet (object array of dicts) or compact (float32 (M, 29)); the code is the file stem."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"grasp file not found: {p}")
    try:
        arr = np.load(p, allow_pickle=True)
    except Exception as e:  # numpy raises several types for corrupt files
        raise FileFormatError(f"{p}: not a readable .npy grasp file ({type(e).__name__}: {e})") from None
    if arr.dtype != object and arr.ndim == 2:
        return _from_compact(arr, p)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.dtype != object or arr.ndim != 1:
        raise FileFormatError(f"{p}: expected an object array of grasp dicts (DexGraspNet) or a float32 array "
                              f"(M, {len(COMPACT_COLUMNS)}) (compact), got dtype {arr.dtype} shape {arr.shape}")
    return grasps_from_records(list(arr), code=p.stem, source=str(p))


def _from_compact(arr: np.ndarray, p: Path) -> GraspSet:
    if arr.shape[1] != len(COMPACT_COLUMNS) or arr.dtype != np.float32:
        raise FileFormatError(f"{p}: a compact grasp file is float32 (M, {len(COMPACT_COLUMNS)}), got dtype "
                              f"{arr.dtype} shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise FileFormatError(f"{p}: contains NaN or inf")
    if arr.shape[0] and not (arr[:, -1] > 0).all():
        raise FileFormatError(f"{p}: scale column must be positive")
    t = torch.from_numpy(arr.astype(np.float64))
    return GraspSet(t[:, :22].clone(), t[:, 22:25].clone(), t[:, 25:28].clone(), t[:, 28].clone(), p.stem)


def save_grasps(path: str | os.PathLike, grasps: GraspSet, compact: bool = False) -> None:
    """Write a grasp file atomically: DexGraspNet's list of dicts (extra keys kept), or ``compact`` float32 (M, 29)
    (extra keys dropped)."""
    if compact:
        arr = torch.cat([grasps.joints, grasps.euler, grasps.translation, grasps.scale[:, None]], 1)
        save_npy(path, arr.numpy().astype(np.float32))
        return
    arr = np.empty(len(grasps), dtype=object)
    arr[:] = records_from_grasps(grasps)
    save_npy(path, arr)


def list_grasp_files(folder: str | os.PathLike) -> dict[str, Path]:
    """code -> path for every ``<code>.npy`` in a grasp folder (sorted)."""
    d = Path(folder)
    if not d.is_dir():
        raise MissingFileError(f"grasp folder not found: {d}")
    return {f.stem: f for f in sorted(d.glob("*.npy"))}


def grasp_folder(root: str | os.PathLike) -> Path:
    """The folder holding the grasp files of a grasp set: ``root`` itself when it holds ``*.npy`` files, else its
    ``dataset/`` (DexGraspNet) or ``grasps/`` (compact) subfolder."""
    d = Path(root)
    if not d.is_dir():
        raise MissingFileError(f"grasp folder not found: {d}")
    if next(d.glob("*.npy"), None) is not None:
        return d
    for sub in GRASP_FOLDERS:
        if (d / sub).is_dir():
            return d / sub
    raise MissingFileError(f"{d}: no grasp files (expected <code>.npy, dataset/<code>.npy or grasps/<code>.npy)")


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
        return {"train": sorted(list_grasp_files(grasp_folder(root))), "val": [], "test": []}
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
    """Entries = (object, scale) pairs of one split of a grasp set ``root`` (DexGraspNet layout: ``dataset/``,
    ``meshdata/``; or dgtr's compact layout: ``grasps/``, meshes elsewhere) with an optional ``splits.json``.

    meshes: the mesh folder (DexGraspNet ``meshdata/`` or ``<code>.<ext>`` files); default ``root/meshdata``.
    Item: ``{'code', 'scale', 'index', 'points' (n_points, 3) float32 = unit cloud × scale,
    'rotation' (M,3,3), 'translation' (M,3), 'joints' (M,22)}`` (float32, metres, object frame).
    Entries with fewer than ``min_grasps`` grasps are skipped.  Unit clouds are sampled once per object (fixed seed).
    A split may list objects without a grasp file yet (a dataset still being synthesised): they are skipped and
    counted in ``n_missing``; with ``codes`` given explicitly a missing file is an error.

    n_clouds: K unit clouds per object (seeds seed, seed + 1, ...; sampling a 4096-point cloud takes ~0.35 s, so they
    are sampled once); ``set_epoch(e)`` picks each object's cloud for epoch e, a function of (seed, e, object) only
    (a resumed epoch sees the same clouds).  cache: folder for the sampled clouds (``<cache>/n<N>-seed<seed>/<code>.npy``,
    (K, N, 3) float32, written atomically; used when it holds at least K clouds), so a second or resumed run does not
    sample again; one cache per mesh folder (files are named by object code only).  progress: a line on stderr every 100 objects while sampling.
    """

    def __init__(self, root, split: str = "train", n_points: int = 4096, min_grasps: int = 1, seed: int = 0,
                 codes: list[str] | None = None, meshes=None, n_clouds: int = 1, cache=None, progress: bool = False,
                 missing_meshes: str | None = None):
        from .objects import load_object

        if n_clouds < 1:
            raise InputError(f"n_clouds: need >= 1, got {n_clouds}")
        self.root = Path(root)
        meshes = Path(meshes) if meshes is not None else self.root / "meshdata"
        # the meshes are read only for clouds the cache lacks: a run whose clouds are all cached needs none (a GPU
        # machine that has the repository and the cache but not the mesh folder)
        missing_meshes = missing_meshes or f"mesh folder not found: {meshes} (give the objects' meshdata folder)"

        def load(code):
            if not meshes.is_dir():
                raise MissingFileError(missing_meshes + (f"; the cloud of {code!r} is not in the cloud cache {cache}"
                                                         if cache is not None else ""))
            return load_object(mesh_path(meshes, code), code=code)
        files = list_grasp_files(grasp_folder(self.root))
        if codes is None:
            splits = read_splits(self.root)
            if split not in splits:
                raise InputError(f"split {split!r} not in {self.root / 'splits.json'} (has {sorted(splits)})")
            codes = [c for c in splits[split] if c in files]
            self.n_missing = len(splits[split]) - len(codes)
        else:
            missing = [c for c in codes if c not in files]
            if missing:
                raise MissingFileError(f"{grasp_folder(self.root)}: no grasp file for {missing[:3]}")
            self.n_missing = 0
        self.seed, self.n_clouds, self.epoch = int(seed), int(n_clouds), 0
        self.entries: list[tuple[str, float, GraspSet]] = []
        self.clouds: dict[str, np.ndarray] = {}  # code -> (K, n_points, 3) unit clouds
        cache = Path(cache) if cache is not None else None
        for code in codes:
            g = load_grasps(files[code])
            before = len(self.entries)
            for s in g.scales():
                gs = g.at_scale(s)
                if len(gs) >= min_grasps:
                    self.entries.append((code, s, gs))
            if len(self.entries) > before:
                self.clouds[code] = self._clouds(cache, code, lambda: load(code), n_points)
                if progress and len(self.clouds) % 100 == 0:
                    import sys
                    print(f"dgtr: {split} clouds of {len(self.clouds)} objects ready", file=sys.stderr, flush=True)

    def _clouds(self, cache: Path | None, code: str, load, n_points: int) -> np.ndarray:
        f = cache / f"n{n_points}-seed{self.seed}" / f"{code}.npy" if cache is not None else None
        if f is not None and f.is_file():
            try:
                c = np.load(f)
                if c.ndim == 3 and c.shape[0] >= self.n_clouds and c.shape[1:] == (n_points, 3):
                    return c[:self.n_clouds].astype(np.float32)
            except (OSError, ValueError):  # a stale or foreign file: sample again and replace it
                pass
        obj = load()
        c = np.stack([obj.sample_points(n_points, seed=self.seed + k).astype(np.float32) for k in range(self.n_clouds)])
        if f is not None:
            save_npy(f, c)
        return c

    def set_epoch(self, epoch: int) -> None:
        """Choose the clouds of epoch ``epoch`` (with n_clouds > 1; epoch 0 keeps cloud 0 of every object)."""
        self.epoch = int(epoch)

    def cloud_index(self, code: str) -> int:
        """Index (0..K-1) of ``code``'s cloud in the current epoch: 0 at epoch 0, then a hash of (seed, epoch, code)."""
        if self.n_clouds == 1 or self.epoch == 0:
            return 0
        import zlib
        return zlib.crc32(f"{self.seed}:{self.epoch}:{code}".encode()) % self.n_clouds

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        code, s, g = self.entries[i]
        cloud = self.clouds[code][self.cloud_index(code)]
        return {"code": code, "scale": s, "index": i, "points": torch.from_numpy(cloud * np.float32(s)),
                "rotation": g.rotation.float(), "translation": g.translation.float(), "joints": g.joints.float()}


def collate(batch: list[dict]) -> dict:
    """Stack clouds to (B, N, 3); keep per-object grasp tensors (variable M) as lists."""
    out = {k: [b[k] for b in batch] for k in batch[0]}
    out["points"] = torch.stack(out["points"])
    return out


# --------------------------------------------------------------------------------------------------------------------
# dgtr convert: any grasp set dgtr reads -> a DexGraspNet folder or the compact layout
# --------------------------------------------------------------------------------------------------------------------

def read_grasp_sets(src: str | os.PathLike) -> dict[str, GraspSet]:
    """code -> GraspSet of every object of a grasp set: a DexGraspNet folder (``dataset/``), a compact folder
    (``grasps/``), a folder of grasp files, one grasp file, or the authors' DGTR h5 (clouds dropped; an object's
    entries at several scales joined)."""
    p = Path(src)
    if p.is_file() and p.suffix in (".h5", ".hdf5"):
        out: dict[str, GraspSet] = {}
        for _, g in read_dgtr_h5(p):
            out[g.code] = GraspSet.concat([out[g.code], g]) if g.code in out else g
        return out
    if p.is_file():
        g = load_grasps(p)
        return {g.code: g}
    return {code: load_grasps(f) for code, f in list_grasp_files(grasp_folder(p)).items()}


def convert(src, dest, to: str = "dexgraspnet") -> dict[str, int]:
    """Write the grasp set ``src`` (see ``read_grasp_sets``) as ``dest/dataset/<code>.npy`` (DexGraspNet) or
    ``dest/grasps/<code>.npy`` (compact); ``splits.json`` is copied when ``src`` has one. Files are written one by
    one, atomically: a file that cannot be read stops the run with its name, the files already written stay.
    Returns code -> number of grasps."""
    import shutil

    if to not in ("dexgraspnet", "compact"):
        raise InputError(f"--to: expected 'dexgraspnet' or 'compact', got {to!r}")
    src, dest = Path(src), Path(dest)
    if not src.exists():
        raise MissingFileError(f"SRC not found: {src}")
    folder = dest / ("dataset" if to == "dexgraspnet" else "grasps")
    counts = {}
    if src.is_dir():  # file by file: a bad file is named and the finished ones are kept
        files = list_grasp_files(grasp_folder(src))
        for code, f in files.items():
            g = load_grasps(f)
            save_grasps(folder / f"{code}.npy", g, compact=to == "compact")
            counts[code] = len(g)
        root = grasp_folder(src).parent if grasp_folder(src) != src else src
        if (root / "splits.json").is_file() and (root / "splits.json").resolve() != (dest / "splits.json").resolve():
            shutil.copyfile(root / "splits.json", dest / "splits.json")
        return counts
    for code, g in read_grasp_sets(src).items():
        save_grasps(folder / f"{code}.npy", g, compact=to == "compact")
        counts[code] = len(g)
    return counts


def add_convert_args(p) -> None:
    p.add_argument("src", metavar="SRC", help="grasp set: DexGraspNet folder (dataset/), compact folder (grasps/), "
                                              "a folder of <code>.npy, one grasp file, or a DGTR .h5")
    p.add_argument("dest", metavar="DEST", help="output folder")
    p.add_argument("--to", choices=("dexgraspnet", "compact"), default="dexgraspnet",
                   help="DEST layout: DEST/dataset/<code>.npy (DexGraspNet dicts) or DEST/grasps/<code>.npy "
                        "(float32 (M, 29))")


def run_convert(args) -> int:
    import sys

    from .cli import check_out_dir

    dest = check_out_dir(args.dest, "DEST")
    counts = convert(args.src, dest, args.to)
    print(f"dgtr convert: {len(counts)} objects, {sum(counts.values())} grasps -> {dest} ({args.to})", file=sys.stderr)
    return 0
