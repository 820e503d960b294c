"""dgtr.objects: loading, normalisation, union-of-convex-pieces geometry and the grid SDF against exact references."""

import numpy as np
import pytest
import torch
import trimesh

from dgtr.errors import DgtrError, FileFormatError, InputError, MissingFileError
from dgtr.objects import (ObjectModel, closest_point_on_triangles, list_objects, load_from_source, load_object,
                          normalize_mesh, pybullet_default_scale)

CODES = ["core-mug-8570d9a8d24cb0acbebd3c0c0c70fb03", "sem-Bottle-437678d4bc6be981c8724d5673a063a6",
         "sem-Camera-7bff4fd4dc53de7496dece3f86cb5dd5"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DGTR_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def real(request):
    """code -> ObjectModel at unit scale (grids are built lazily and shared by with_scale copies)."""
    root = request.getfixturevalue("dexgraspnet_dir") / "meshdata"
    return {c: load_object(root / c / "coacd" / "decomposed.obj") for c in CODES}


def near_surface_points(obj: ObjectModel, n: int, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = obj.sample_points(n, seed=seed, fps=False).astype(np.float64)
    _, nrm = obj.closest_points(p)
    return p + nrm * rng.uniform(-spread, spread, (n, 1)) + rng.normal(scale=spread / 6, size=(n, 3))


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> ObjectModel:
    """A 4 x 6 x 10 cm box (one piece); its SDF grid is built once for the module."""
    path = tmp_path_factory.mktemp("box") / "box.stl"
    trimesh.creation.box((0.04, 0.06, 0.1)).export(path)
    return load_object(path)


def box_sdf(p: np.ndarray, half: np.ndarray) -> np.ndarray:
    q = np.abs(p) - half
    return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


# ------------------------------------------------------------------------------------------------------ exact pieces
def test_plane_distance_proxy(real):
    """Inside: minus the depth in the deepest piece (>= the union's sdf, same sign); outside: a lower bound of the
    distance; both branches (small batch: all planes; large batch: boxes grown by reach) agree; scales linearly."""
    unit = real[CODES[1]]
    x = near_surface_points(unit, 3000, spread=0.05)
    exact = unit.exact_signed_distance(x)
    proxy = unit.plane_distance(x, reach=1.0)            # > 2**20 point-planes: per-piece boxes grown by reach
    small = np.concatenate([unit.plane_distance(c) for c in np.array_split(x, 300)])  # every plane at once
    np.testing.assert_allclose(small, proxy, atol=1e-6)
    inside = exact < 0
    assert np.array_equal(proxy < 0, inside)
    assert (proxy[inside] >= exact[inside] - 1e-6).all() and (proxy[~inside] <= exact[~inside] + 1e-6).all()
    np.testing.assert_allclose(unit.with_scale(0.1).plane_distance(0.1 * x, reach=0.1), 0.1 * proxy, atol=1e-7)
    assert np.isinf(unit.plane_distance(np.repeat([[5.0, 5, 5]], 20000, 0), reach=0.1)).all()
    planes = unit.with_scale(0.1).face_planes()
    assert len(planes) == len(unit.pieces) and all(p.shape[1] == 4 for p in planes)


def test_closest_point_on_triangles_matches_trimesh():
    rng = np.random.default_rng(0)
    tri, p = rng.normal(size=(3000, 3, 3)), rng.normal(size=(3000, 3)) * 2
    ours = closest_point_on_triangles(p, tri[:, 0], tri[:, 1], tri[:, 2])
    np.testing.assert_allclose(ours, trimesh.triangles.closest_point(tri, p), atol=1e-9)


def test_box_sdf_is_exact_inside_and_outside(box):
    obj = box
    half = np.array([0.02, 0.03, 0.05])
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.08, 0.08, (2000, 3))
    d, n = obj.signed_distance(torch.tensor(x))
    ref = box_sdf(x, half)
    assert d.dtype == torch.float64 and n.shape == (2000, 3)
    err = np.abs(d.numpy() - ref)           # grid cell h = 1 mm here: exact on faces, <h/2 next to edges and corners
    assert np.median(err) < 1e-6 and err.max() < 5e-4
    np.testing.assert_allclose(obj.exact_signed_distance(x), ref, atol=1e-8)   # float32 planes: 10 nm
    np.testing.assert_array_equal(obj.contains(x), ref < 0)
    # far outside the grid: still positive, close to exact, outward normal
    far = rng.normal(size=(200, 3))
    far = far / np.linalg.norm(far, axis=1, keepdims=True) * rng.uniform(0.2, 1.0, (200, 1))
    d, n = obj.signed_distance(torch.tensor(far, dtype=torch.float32))
    assert (np.abs(d.numpy() - box_sdf(far, half)) < 1e-3 * box_sdf(far, half) + 1e-4).all()
    assert ((n.numpy() * far).sum(1) > 0).all()
    # a point off a sharp corner is outside with the corner-to-point direction as normal (DESIGN.md §5)
    corner = half + 0.01
    assert not obj.contains(corner[None])[0]
    c, n = obj.closest_points(corner[None])
    np.testing.assert_allclose(c[0], half, atol=1e-9)
    np.testing.assert_allclose(n[0], np.ones(3) / np.sqrt(3), atol=1e-9)


def test_touching_and_overlapping_pieces_form_a_union(tmp_path):
    """Two pieces meeting at a CoACD-like cut (overlapping by 5 mm): the union is the 10 x 6 x 6 cm box."""
    a = trimesh.creation.box((0.055, 0.06, 0.06))
    a.apply_translation((-0.0225, 0, 0))                   # x in [-0.05, 0.005]
    b = trimesh.creation.box((0.05, 0.06, 0.06))
    b.apply_translation((0.025, 0, 0))                     # x in [0, 0.05]
    path = tmp_path / "two.obj"
    with open(path, "w") as f:                             # two objects in one OBJ, like CoACD's decomposed.obj
        for i, m in enumerate((a, b)):
            f.write(f"o piece_{i}\n" + "".join(f"v {x} {y} {z}\n" for x, y, z in m.vertices))
            f.write("".join(f"f {u + 1 + 8 * i} {v + 1 + 8 * i} {w + 1 + 8 * i}\n" for u, v, w in m.faces))
    obj = load_object(path)
    assert len(obj.pieces) == 2 and all(p.is_convex for p in obj.pieces) and obj.mesh.faces.shape == (24, 3)
    half = np.array([0.05, 0.03, 0.03])
    # no samples on the internal faces x = 0 and x = 0.005
    pts = obj.sample_points(2000, seed=0, fps=False)
    assert np.abs(box_sdf(pts, half)).max() < 1e-7
    # signed distance of the union, not min over pieces (which would be ~0 next to the cut)
    x = np.random.default_rng(0).uniform(-0.07, 0.07, (3000, 3))
    x[:5] = [[0.001, 0, 0], [0.004, 0, 0], [-0.001, 0.01, 0], [0.0, 0.0, 0.0], [0.003, 0.029, 0.0]]
    d, _ = obj.signed_distance(torch.tensor(x))
    err = np.abs(d.numpy() - box_sdf(x, half))
    assert np.median(err) < 1e-6 and err.max() < 7e-4
    np.testing.assert_allclose(obj.exact_signed_distance(x), box_sdf(x, half), atol=1e-8)
    np.testing.assert_array_equal(obj.contains(x), box_sdf(x, half) < 0)


# ----------------------------------------------------------------------------------------------------- real meshes
def test_real_meshes_load_as_convex_pieces(real):
    for code, n in zip(CODES, (27, 5, 5)):
        obj = real[code]
        assert obj.code == code and len(obj.pieces) == n and all(p.is_convex for p in obj.pieces)
        r = np.linalg.norm(obj.mesh.vertices, axis=1).max()
        assert 0.95 < r < 0.99                              # normalised by DexGraspNet: max radius ~0.97


@pytest.mark.parametrize("code", CODES)
def test_real_sdf_accuracy_sign_normals(real, code):
    obj = real[code].with_scale(0.15)
    x = near_surface_points(obj, 300, spread=0.02, seed=3)
    ref, closest, reliable = obj.reference_signed_distance(x)
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    d, n = obj.signed_distance(xt)
    err = np.abs(d.detach().numpy() - ref)
    use = reliable & (np.abs(ref) < 0.02)
    assert use.sum() > 200
    assert np.median(err[use]) < 5e-4 and np.percentile(err[use], 95) < 1.5e-3
    clear = np.abs(ref) > 0.002
    assert (np.sign(d.detach().numpy()[clear]) == np.sign(ref[clear])).all()
    assert (obj.contains(x)[clear] == (ref[clear] < 0)).all()
    # unit normals pointing away from the closest surface point outside
    assert torch.allclose(n.norm(dim=-1), torch.ones(len(x)), atol=1e-5)
    out = ref > 0.001
    direction = (x - closest)[out] / ref[out, None]
    cos = (n.numpy()[out] * direction).sum(1)
    assert np.median(cos) > 0.99 and np.mean(cos > 0.9) > 0.95
    # gradient flows to the points and equals the normal
    d.sum().backward()
    torch.testing.assert_close(xt.grad, n)
    # exact path (closest_points / exact_signed_distance) agrees with brute force everywhere it is defined
    np.testing.assert_allclose(obj.exact_signed_distance(x)[use], ref[use], atol=1e-5)
    c, _ = obj.closest_points(x[ref > 0])
    np.testing.assert_allclose(c, closest[ref > 0], atol=1e-5)


def test_scaling_consistency_and_shared_grid(real):
    unit = real[CODES[2]]
    p = torch.tensor(near_surface_points(unit, 200, spread=0.1), dtype=torch.float32)
    d1, n1 = unit.signed_distance(p)
    for s in (0.06, 0.15):
        obj = unit.with_scale(s)
        assert obj._geo is unit._geo and obj.scale == s and obj.code == unit.code
        ds, ns = obj.signed_distance(p * s)
        torch.testing.assert_close(ds, s * d1, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(ns, n1, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(obj.mesh.bounds, unit.mesh.bounds * s, atol=1e-9)


def test_sample_points_deterministic_on_union_surface(real):
    obj = real[CODES[0]].with_scale(0.1)
    a, b = obj.sample_points(1024, seed=5), obj.sample_points(1024, seed=5)
    assert a.shape == (1024, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, obj.sample_points(1024, seed=6))
    # on the surface of the union: exact signed distance ~0 (a sample inside another piece would be negative)
    assert np.abs(obj.exact_signed_distance(a)).max() < 1e-6
    d, _ = obj.signed_distance(torch.from_numpy(a))
    assert d.abs().max() < 1e-3
    # farthest point sampling spreads the points: no near-duplicates
    nn = np.sort(np.linalg.norm(a[:, None] - a[None], axis=-1), axis=1)[:, 1]
    assert nn.min() > 1e-3
    rand = obj.sample_points(300, seed=1, fps=False)
    assert rand.shape == (300, 3)


# ---------------------------------------------------------------------------------------------------- normalisation
def test_normalisation(tmp_path):
    m = trimesh.creation.box((3.0, 1.0, 2.0))
    m.apply_translation((5.0, -2.0, 1.0))
    out, center, factor = normalize_mesh(m)
    np.testing.assert_allclose(center, (5.0, -2.0, 1.0), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(out.vertices, axis=1).max(), 1 / 1.03, rtol=1e-12)
    np.testing.assert_allclose(out.bounds.mean(0), 0, atol=1e-12)
    m.export(tmp_path / "far_box.ply")
    obj = load_object(tmp_path / "far_box.ply", normalize=True, scale=0.1)
    c, f = obj.normalization
    np.testing.assert_allclose(c, center) and np.testing.assert_allclose(f, factor)
    np.testing.assert_allclose(np.linalg.norm(obj.mesh.vertices, axis=1).max(), 0.1 / 1.03, rtol=1e-9)
    np.testing.assert_allclose(obj.bounds.mean(0), 0, atol=1e-9)


# ---------------------------------------------------------------------------------------------------- object sources
def test_list_objects_pybullet():
    rnd = list_objects("pybullet:random")
    assert len(rnd) == 1000 and list(rnd)[:2] == ["pb_random_000", "pb_random_001"]
    assert all(p.is_file() for p in rnd.values())
    named = list_objects("pybullet:named")
    assert {"pb_mug", "pb_duck", "pb_teddy"} <= set(named) and all(p.is_file() for p in named.values())
    assert list(list_objects("pybullet")) == list(named) + list(rnd)
    assert pybullet_default_scale("pb_random_000") == 0.015 and pybullet_default_scale("pb_duck") == 0.05


def test_load_pybullet_objects_in_metres():
    for code in ("pb_random_000", "pb_random_517", "pb_duck"):
        obj = load_from_source("pybullet", code)
        size = obj.bounds[1] - obj.bounds[0]
        assert obj.code == code and 1 <= len(obj.pieces) <= 8 and all(p.is_convex for p in obj.pieces)
        assert 0.01 < size.max() < 0.2, (code, size)
        assert obj.contains(np.array([obj.pieces[0].centroid, [0.0, 0.0, 0.5]])).tolist() == [True, False]
    with pytest.raises(FileFormatError, match="non-finite"):     # the one broken mesh in pybullet_data
        load_from_source("pybullet:random", "pb_random_168")


def test_list_objects_folders(tmp_path, dexgraspnet_dir):
    assert list(list_objects(str(dexgraspnet_dir / "meshdata"))) == sorted(CODES)
    assert list(list_objects(str(dexgraspnet_dir))) == sorted(CODES)      # the dataset root works too
    trimesh.creation.box((1, 1, 1)).export(tmp_path / "b.stl")
    trimesh.creation.icosphere().export(tmp_path / "a.obj")
    (tmp_path / "notes.txt").write_text("x")
    found = list_objects(str(tmp_path))
    assert list(found) == ["a", "b"] and found["b"] == tmp_path / "b.stl"
    obj = load_from_source(str(tmp_path), "a", scale=0.05)
    assert obj.code == "a" and obj.scale == 0.05


# ------------------------------------------------------------------------------------------------------ decomposition
def l_prism(path):
    v2 = np.array([[0, 0], [2, 0], [2, 1], [1, 1], [1, 2], [0, 2]], float)
    m = trimesh.creation.extrude_triangulation(v2, np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 5]]), 1.0)
    m.export(path)


def test_non_convex_mesh_is_decomposed_and_cached(tmp_path):
    l_prism(tmp_path / "L.obj")
    obj = load_object(tmp_path / "L.obj")                          # CoACD: ~1 s for this shape
    assert len(obj.pieces) >= 2 and abs(sum(p.volume for p in obj.pieces) - 3.0) < 0.05
    assert obj.contains(np.array([[1.3, 1.3, 0.5], [0.5, 1.5, 0.5]])).tolist() == [False, True]
    assert len(list((tmp_path / "cache" / "coacd").glob("*.obj"))) == 1
    again = load_object(tmp_path / "L.obj")                        # from the cache
    assert len(again.pieces) == len(obj.pieces)
    with pytest.warns(UserWarning, match="convex hull"):
        hull = load_object(tmp_path / "L.obj", decompose=False)
    assert len(hull.pieces) == 1 and hull.contains(np.array([[1.3, 1.3, 0.5]]))[0]


# ------------------------------------------------------------------------------------------------------------- errors
def test_errors_name_the_file(tmp_path, box):
    missing = tmp_path / "nope.obj"
    with pytest.raises(MissingFileError, match="nope.obj"):
        load_object(missing)
    cases = {
        "empty.obj": b"",
        "garbage.obj": bytes(range(256)) * 20,
        "points.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\n",                           # vertices, zero faces
        "flat.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 3\nf 2 4 3\n",  # zero volume
        "nan.obj": b"v nan 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FileFormatError) as e:
            load_object(tmp_path / name)
        assert str(tmp_path / name) in str(e.value), name
    with pytest.raises(InputError, match="pybullet:nope"):
        list_objects("pybullet:nope")
    with pytest.raises(MissingFileError, match="no_such_source"):
        list_objects(str(tmp_path / "no_such_source"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DgtrError, match="empty_dir"):
        list_objects(str(tmp_path / "empty_dir"))
    with pytest.raises(InputError, match="pb_nothing"):
        pybullet_default_scale("pb_nothing")
    with pytest.raises(InputError, match="scale"):
        box.with_scale(0)
    with pytest.raises(InputError, match="points"):
        box.signed_distance(torch.zeros(4, 2))


def test_tensor_and_array_kinds(box):
    obj = box
    x = np.zeros((2, 5, 3))
    assert isinstance(obj.contains(x), np.ndarray) and obj.contains(x).shape == (2, 5)
    inside = obj.contains(torch.zeros(2, 5, 3))
    assert inside.dtype == torch.bool and inside.all()
    c, n = obj.closest_points(torch.zeros(4, 3, dtype=torch.float64) + 0.1)
    assert c.dtype == torch.float64 and c.shape == n.shape == (4, 3)
    d, n = obj.signed_distance(torch.zeros(2, 5, 3))
    assert d.shape == (2, 5) and n.shape == (2, 5, 3)
