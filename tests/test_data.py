import numpy as np
import pytest
import torch

from dgtr.data import (GraspSet, QPOS_KEYS, load_grasps, read_dgtr_h5, records_from_grasps, save_grasps)
from dgtr.errors import FileFormatError, InputError, MissingFileError
from dgtr.rotations import matrix_from_euler


def _random_set(m=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GraspSet(torch.rand(m, 22, generator=g, dtype=torch.float64),
                    (torch.rand(m, 3, generator=g, dtype=torch.float64) - 0.5) * 3,
                    (torch.rand(m, 3, generator=g, dtype=torch.float64) - 0.5) * 0.4,
                    torch.full((m,), 0.1, dtype=torch.float64), code="obj",
                    extra={"E_pen": np.arange(m, dtype=np.float64)})


def test_roundtrip_real_files_exact(dexgraspnet_dir, tmp_path):
    for f in sorted((dexgraspnet_dir / "dataset").glob("*.npy")):
        orig = list(np.load(f, allow_pickle=True))
        g = load_grasps(f)
        assert len(g) == len(orig) and g.code == f.stem
        save_grasps(tmp_path / f.name, g)
        back = list(np.load(tmp_path / f.name, allow_pickle=True))
        assert back == orig  # dict equality: every key and every float bit-identical


def test_roundtrip_written_set_exact(tmp_path):
    g = _random_set()
    save_grasps(tmp_path / "obj.npy", g)
    h = load_grasps(tmp_path / "obj.npy")
    for a in ("joints", "euler", "translation", "scale"):
        assert torch.equal(getattr(g, a), getattr(h, a))
    assert np.array_equal(h.extra["E_pen"], g.extra["E_pen"])
    assert records_from_grasps(h) == records_from_grasps(g)


def test_from_pose_rotation_matches():
    g = _random_set()
    h = GraspSet.from_pose(g.rotation, g.translation, g.joints, 0.1)
    assert torch.allclose(h.rotation, g.rotation, atol=1e-12)
    assert torch.allclose(g.rotation, matrix_from_euler(g.euler))


def test_scales_tolerant_to_float32():
    g = _random_set(4)
    g.scale = torch.tensor([0.06, np.float32(0.06), 0.1, np.float32(0.1)], dtype=torch.float64)
    assert len(g.scales()) == 2 and len(g.at_scale(0.1)) == 2


def test_h5_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    g = _random_set(5)
    pose = torch.cat([g.joints, g.euler, g.translation], 1).numpy()
    cloud = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        for i, s in enumerate((0.06, 0.12)):
            ds = f.create_dataset(f"obj_{i}", data=cloud)
            ds.attrs["hand_pose"] = pose
            ds.attrs["obj_code"] = "core-mug-x"
            ds.attrs["scale"] = s
    items = read_dgtr_h5(tmp_path / "d.h5")
    assert len(items) == 2
    pts, h = items[1]
    assert np.array_equal(pts, cloud) and h.code == "core-mug-x" and float(h.scale[0]) == 0.12
    assert torch.equal(h.joints, g.joints) and torch.equal(h.euler, g.euler) and torch.equal(h.translation, g.translation)


def test_bad_files(tmp_path):
    with pytest.raises(MissingFileError, match="nope.npy"):
        load_grasps(tmp_path / "nope.npy")
    bad = tmp_path / "corrupt.npy"
    bad.write_bytes(b"not numpy at all")
    with pytest.raises(FileFormatError, match="corrupt.npy"):
        load_grasps(bad)
    rec = records_from_grasps(_random_set(2))
    del rec[1]["qpos"]["robot0:THJ0"]
    arr = np.empty(2, dtype=object)
    arr[:] = rec
    np.save(tmp_path / "missing.npy", arr)
    with pytest.raises(FileFormatError, match=r"missing.npy: grasp 1 .*THJ0"):
        load_grasps(tmp_path / "missing.npy")
    np.save(tmp_path / "floats.npy", np.zeros((3, 28)))
    with pytest.raises(FileFormatError, match="floats.npy"):
        load_grasps(tmp_path / "floats.npy")


def test_wrong_shapes():
    with pytest.raises(InputError, match="joints"):
        GraspSet(torch.zeros(3, 21), torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(InputError, match="rotation"):
        GraspSet.from_pose(torch.zeros(3, 4), torch.zeros(3, 3), torch.zeros(3, 22), 0.1)


def test_qpos_key_order():
    assert QPOS_KEYS[0] == "robot0:FFJ3" and QPOS_KEYS[21] == "robot0:THJ0" and QPOS_KEYS[-1] == "WRJTz"


def test_grasp_dataset_on_real_layout(dexgraspnet_dir):
    from dgtr.data import GraspDataset, collate

    ds = GraspDataset(dexgraspnet_dir, split="train", n_points=512, min_grasps=16)
    assert len(ds) >= 3 * 4  # 3 objects × (most of) 5 scales
    item = ds[0]
    assert item["points"].shape == (512, 3) and item["joints"].shape[1] == 22
    # the cloud is the unit cloud times the entry's scale: its radius is ~scale
    r = item["points"].norm(dim=1).max().item()
    assert 0.7 * item["scale"] < r < 1.05 * item["scale"]
    batch = collate([ds[0], ds[1]])
    assert batch["points"].shape == (2, 512, 3) and len(batch["rotation"]) == 2
    with pytest.raises(InputError, match="split 'nope'"):
        GraspDataset(dexgraspnet_dir, split="nope")


# ---------------------------------------------------------------------------------------------- compact + convert
def _f32_set(m=9, code="obj", seed=1):
    """A set whose values float32 holds exactly (as dgtr's own data), at two scales."""
    g = _random_set(m, seed)
    f = lambda x: x.float().double()  # noqa: E731
    return GraspSet(f(g.joints), f(g.euler), f(g.translation),
                    torch.tensor([0.06] * (m // 2) + [0.12] * (m - m // 2)).float().double(), code)


def test_compact_file_is_small_and_exact(tmp_path):
    from dgtr.data import COMPACT_COLUMNS

    g = _f32_set(50)
    save_grasps(tmp_path / "obj.npy", g, compact=True)
    arr = np.load(tmp_path / "obj.npy")
    assert arr.dtype == np.float32 and arr.shape == (50, len(COMPACT_COLUMNS)) == (50, 29)
    assert (tmp_path / "obj.npy").stat().st_size <= 150 * 50 + 128  # 116 bytes per grasp + the .npy header
    back = load_grasps(tmp_path / "obj.npy")
    for a in ("joints", "euler", "translation", "scale"):
        assert torch.equal(getattr(back, a), getattr(g, a)), a


def test_convert_round_trips_exact(tmp_path):
    from dgtr import cli

    src = tmp_path / "src"
    sets = {c: _f32_set(5 + i, c, seed=i) for i, c in enumerate(["a", "b", "c"])}
    for c, g in sets.items():
        save_grasps(src / "grasps" / f"{c}.npy", g, compact=True)
    (src / "splits.json").write_text('{"train": ["a", "b"], "val": [], "test": ["c"]}')
    assert cli.main(["convert", str(src), str(tmp_path / "dgn")]) == 0
    assert sorted(p.name for p in (tmp_path / "dgn" / "dataset").iterdir()) == ["a.npy", "b.npy", "c.npy"]
    assert (tmp_path / "dgn" / "splits.json").read_text() == (src / "splits.json").read_text()
    rec = list(np.load(tmp_path / "dgn" / "dataset" / "a.npy", allow_pickle=True))
    assert set(rec[0]) == {"qpos", "scale"} and set(rec[0]["qpos"]) == set(QPOS_KEYS)
    assert cli.main(["convert", str(tmp_path / "dgn"), str(tmp_path / "back"), "--to", "compact"]) == 0
    for c in sets:  # compact -> DexGraspNet -> compact: the same bytes
        assert np.load(src / "grasps" / f"{c}.npy").tobytes() == np.load(tmp_path / "back" / "grasps" / f"{c}.npy").tobytes()
    # and DexGraspNet -> compact -> DexGraspNet gives the same records
    assert cli.main(["convert", str(tmp_path / "back"), str(tmp_path / "dgn2")]) == 0
    assert list(np.load(tmp_path / "dgn2" / "dataset" / "b.npy", allow_pickle=True)) == \
        list(np.load(tmp_path / "dgn" / "dataset" / "b.npy", allow_pickle=True))


def test_convert_h5_and_bad_inputs(tmp_path, capsys):
    import h5py

    from dgtr import cli

    g = _f32_set(4)
    pose = torch.cat([g.joints, g.euler, g.translation], 1).numpy()
    with h5py.File(tmp_path / "x.h5", "w") as f:
        for i, s in enumerate([0.06, 0.12]):
            ds = f.create_dataset(f"obj_{i}", data=np.zeros((8, 3), np.float32))
            ds.attrs["hand_pose"], ds.attrs["obj_code"], ds.attrs["scale"] = pose[2 * i:2 * i + 2], "mug", s
    assert cli.main(["convert", str(tmp_path / "x.h5"), str(tmp_path / "h"), "--to", "compact"]) == 0
    back = load_grasps(tmp_path / "h" / "grasps" / "mug.npy")
    assert len(back) == 4 and back.scales() == pytest.approx([0.06, 0.12])
    torch.testing.assert_close(back.joints, g.joints, rtol=0, atol=0)
    # an h5 without the expected attributes: one line naming the file
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("obj_0", data=np.zeros((8, 3), np.float32))
    capsys.readouterr()
    assert cli.main(["convert", str(tmp_path / "bad.h5"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.h5" in err[0] and "hand_pose" in err[0]
    # a DexGraspNet file with missing keys, after a good one: named, and the good one already written stays
    src = tmp_path / "dgn" / "dataset"
    save_grasps(src / "a.npy", g)
    rec = records_from_grasps(g)
    del rec[1]["qpos"]["WRJTx"]
    arr = np.empty(len(rec), dtype=object)
    arr[:] = rec
    np.save(src / "b.npy", arr, allow_pickle=True)
    assert cli.main(["convert", str(tmp_path / "dgn"), str(tmp_path / "c"), "--to", "compact"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b.npy" in err[0] and "WRJTx" in err[0]
    assert (tmp_path / "c" / "grasps" / "a.npy").is_file() and not (tmp_path / "c" / "grasps" / "b.npy").exists()
    # a bad compact file
    np.save(tmp_path / "c" / "grasps" / "z.npy", np.zeros((3, 28), np.float32))
    with pytest.raises(FileFormatError, match="z.npy"):
        load_grasps(tmp_path / "c" / "grasps" / "z.npy")


# ------------------------------------------------------------------------------ training clouds: pool and cache
def test_cloud_pool_per_epoch_and_cache(tmp_path, monkeypatch):
    import trimesh

    import dgtr.objects
    from dgtr.data import GraspDataset

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    codes = [f"box{i}" for i in range(6)]
    for i, c in enumerate(codes):
        trimesh.creation.box((0.5 + 0.1 * i, 0.8, 0.6)).export(meshes / f"{c}.obj")
        save_grasps(tmp_path / "data" / "grasps" / f"{c}.npy", _random_set(4, i), compact=True)
    one = GraspDataset(tmp_path / "data", codes=codes, n_points=128, meshes=meshes)
    pool = GraspDataset(tmp_path / "data", codes=codes, n_points=128, meshes=meshes, n_clouds=3,
                        cache=tmp_path / "cache")
    assert len(pool) == len(one) > 0
    # epoch 0: cloud 0 of every object, the cloud of a one-cloud dataset (same seed)
    assert all(torch.equal(pool[i]["points"], one[i]["points"]) for i in range(len(one)))
    assert all(not np.allclose(pool.clouds[c][0], pool.clouds[c][k]) for c in codes for k in (1, 2))
    picks = []
    for e in range(1, 6):
        pool.set_epoch(e)
        picks.append([pool.cloud_index(c) for c in codes])
        i = next(i for i, (c, _, _) in enumerate(pool.entries) if c == codes[0])
        want = pool.clouds[codes[0]][picks[-1][0]] * np.float32(pool.entries[i][1])
        assert torch.equal(pool[i]["points"], torch.from_numpy(want))
    assert len({k for p in picks for k in p}) == 3  # every cloud of the pool is used
    pool.set_epoch(3)
    assert [pool.cloud_index(c) for c in codes] == picks[2]  # a function of (seed, epoch, object): resumable
    # cached: a second dataset does not sample (nor load a mesh) again, and reads the same clouds
    monkeypatch.setattr(dgtr.objects, "load_object", lambda *a, **k: pytest.fail("sampled again"))
    again = GraspDataset(tmp_path / "data", codes=codes, n_points=128, meshes=meshes, n_clouds=2,
                         cache=tmp_path / "cache")
    assert all(np.array_equal(again.clouds[c], pool.clouds[c][:2]) for c in codes)
    with pytest.raises(InputError, match="n_clouds"):
        GraspDataset(tmp_path / "data", codes=codes, meshes=meshes, n_clouds=0)
