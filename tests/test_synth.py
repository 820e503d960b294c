"""dgtr synth: geometry pieces, optimisation, validation, output layout, resume, sharding, errors (tiny runs)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dgtr import cli, config, synth
from dgtr.data import load_grasps
from dgtr.errors import InputError, MissingFileError
from dgtr.hand import PenetrationCache, get_hand
from dgtr.objects import load_object

REPO = Path(__file__).resolve().parents[1]
# tiny settings: 2 scales, 2 hands each, a short schedule, every gate open and no simulation, so grasps are kept
TINY = ["hands_per_scale=2", "max_rounds=1", "anneal.steps=20", "energy.pen_points=200", "validate.pen_points=256",
        "validate.pen_threshold=1", "validate.spen_threshold=100", "validate.dis_threshold=100",
        "validate.simulate=false"]


def _synth(out, *extra, objects="pb_cube"):
    argv = ["synth", "--source", "pybullet:named", "--objects", objects, "--out", str(out), "--scales", "0.08,0.12",
            "--quiet", *TINY, *extra]
    return cli.main(argv)


@pytest.fixture(scope="module")
def cube():
    from dgtr.objects import list_objects

    obj = load_object(list_objects("pybullet:named")["pb_cube"], code="pb_cube")
    return obj


def test_config_file_matches_defaults():
    assert config.to_dict(config.load(synth.SynthConfig, REPO / "configs" / "synth.yaml")) == \
        config.to_dict(synth.SynthConfig())


def test_piece_sdf_signs(cube):
    sdf = cube.piece_sdf()
    lo, hi = cube.bounds
    c = torch.tensor((lo + hi) / 2, dtype=torch.float32)
    half = float((hi - lo).min() / 2)
    x = torch.stack([c, c + torch.tensor([0, 0, half + 0.1])])[None]
    d, n = sdf(x, torch.ones(1))
    assert d[0, 0] == pytest.approx(-half, rel=1e-4)
    assert d[0, 1] == pytest.approx(0.1, rel=1e-4)
    assert torch.allclose(n[0, 1], torch.tensor([0.0, 0, 1]), atol=1e-5)


def test_penetration_matches_hand_sdf(cube):
    """Culled E_pen = Σ relu(hand sdf) over the points, value and gradient."""
    hand = get_hand()
    obj = cube
    scales = np.array([0.08, 0.08, 0.12])
    groups = synth.object_points(obj, scales, synth.EnergyConfig(pen_points=300), 0, "cpu", torch.float32)
    hull = __import__("trimesh").Trimesh(np.concatenate([p.vertices for p in obj.pieces])).convex_hull
    pose = synth.initial_poses(hand, hull, torch.as_tensor(scales, dtype=torch.float32),
                               synth.InitConfig(distance_lower=-0.03, distance_upper=0.0), 0)  # pushed into the object
    pen = PenetrationCache(hand, margin=0.01)

    def culled(p):
        return pen(hand.link_frames(*synth.split_pose(p)), groups)

    def dense(p):
        R, t, q = synth.split_pose(p)
        out = []
        for hands, pts in groups:
            out.append(hand.signed_distance(R[hands], t[hands], q[hands], pts.expand(len(hands), -1, -1))
                       .clamp_min(0).sum(1))
        order = torch.cat([h for h, _ in groups])
        return torch.cat(out)[torch.argsort(order)]

    p1, p2 = pose.clone().requires_grad_(), pose.clone().requires_grad_()
    e1, e2 = culled(p1), dense(p2)
    assert float(e2.detach().min()) > 0, "test poses should penetrate"
    assert torch.allclose(e1, e2, rtol=1e-4, atol=1e-6)
    g1, = torch.autograd.grad(e1.sum(), p1)
    g2, = torch.autograd.grad(e2.sum(), p2)
    assert torch.allclose(g1, g2, rtol=1e-3, atol=1e-3 * float(g2.abs().max()))


def test_energy_decreases(cube):
    hand = get_hand()
    cfg = synth.SynthConfig()
    scales_np = np.repeat([0.08, 0.12], 6)
    scales = torch.as_tensor(scales_np, dtype=torch.float32)
    hull = __import__("trimesh").Trimesh(np.concatenate([p.vertices for p in cube.pieces])).convex_hull
    pose = synth.initial_poses(hand, hull, scales, cfg.init, 0)
    energy = synth.Energy(hand, cube.piece_sdf(),
                          synth.object_points(cube, scales_np, cfg.energy, 0, "cpu", torch.float32), scales, cfg.energy)
    acfg = synth.AnnealConfig(steps=60)
    _, idx, parts, hist = synth.anneal(energy, pose, hand.contact_link_index.shape[0], acfg, 4, 0, record_every=20)
    means = [h[1] for h in hist]
    assert [h[0] for h in hist] == [0, 20, 40, 60]
    assert means[-1] < 0.5 * means[0], means
    assert idx.shape == (12, 4) and set(parts) == set(synth.ENERGY_NAMES)


def test_validate_runs_simulation(cube):
    """The simulation gate fills the per-grasp outcome (a hand far from the object fails, never raises)."""
    hand = get_hand()
    scales = np.array([0.1, 0.1])
    hull = __import__("trimesh").Trimesh(np.concatenate([p.vertices for p in cube.pieces])).convex_hull
    pose = synth.initial_poses(hand, hull, torch.as_tensor(scales, dtype=torch.float32), synth.InitConfig(), 0)
    parts = {n: torch.zeros(2) for n in synth.ENERGY_NAMES}
    cfg = synth.ValidateConfig(pen_points=256, pen_threshold=1, spen_threshold=100, dis_threshold=100)
    res = synth.validate(hand, cube, pose, scales, parts, cfg, 0)
    d = res["sim_displacement"]  # simulated (not nan); directions after the first failure are skipped (inf)
    assert d.shape == (2, 6) and not np.isnan(d).any() and np.isfinite(d[:, 0]).all()
    assert not res["keep"].any()  # open hands 3-8 cm away hold nothing
    assert res["R"].shape == (2, 3, 3) and res["q"].shape == (2, 22)


def test_tiny_run_layout_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "synth"
    assert _synth(out) == 0
    g = load_grasps(out / "dataset" / "pb_cube.npy")
    assert len(g) == 4 and sorted(round(s, 4) for s in g.scales()) == [0.08, 0.12]
    assert set(synth.ENERGY_NAMES) <= set(g.extra) and "pen_depth" in g.extra
    # the stored mesh is the normalised unit mesh (DexGraspNet): bbox-centred, max radius 1/1.03
    mesh = out / "meshdata" / "pb_cube" / "coacd" / "decomposed.obj"
    obj = load_object(mesh)
    v = np.concatenate([p.vertices for p in obj.pieces])
    assert np.allclose(v.min(0) + v.max(0), 0, atol=1e-6)
    assert np.linalg.norm(v, axis=1).max() == pytest.approx(1 / 1.03, rel=1e-6)
    man = json.loads((out / "manifest.json").read_text())
    assert man["objects"]["pb_cube"]["kept"] == 4 and man["totals"]["grasps"] == 4
    assert json.loads((out / "splits.json").read_text()) == {"train": [], "val": [], "test": ["pb_cube"]}

    # resume: a second run does no work
    def boom(*a, **k):
        raise AssertionError("finished object synthesised again")

    monkeypatch.setattr(synth, "synth_object", boom)
    assert _synth(out) == 0
    # the same folder with another config is refused
    assert _synth(out, "anneal.steps=21") == 2


def test_shard_partitions_objects():
    full = list(synth.select_objects(["pybullet:random"], limit=10))
    parts = [list(synth.select_objects(["pybullet:random"], limit=10, shard=f"{k}/3")) for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(full) and sum(map(len, parts)) == len(full)
    assert all(set(a).isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1:])
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(InputError):
            synth.select_objects(["pybullet:random"], limit=3, shard=bad)


def test_splits():
    assert synth.split_of("pb_mug", 10) == "test"
    assert synth.split_of("pb_random_009", 10) == "val"
    assert synth.split_of("pb_random_010", 10) == "train"
    codes = [f"pb_random_{i:03d}" for i in range(150)]
    assert sum(synth.split_of(c, 10) == "val" for c in codes) == 15


def test_bad_source(tmp_path, capsys):
    with pytest.raises(MissingFileError):
        synth.select_objects([str(tmp_path / "nope")])
    with pytest.raises(InputError):
        synth.select_objects(["pybullet:bogus"])
    with pytest.raises(InputError):
        synth.select_objects(["pybullet:named"], objects="not_an_object")
    assert cli.main(["synth", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "object source not found" in capsys.readouterr().err


def test_penetration_cache_is_exact(cube):
    """With a scan margin the candidate triplets are reused across calls; after small and large moves of the hands
    the value equals a fresh scan (margin 0), and the cache re-scans only the hands that moved beyond the margin."""
    hand = get_hand()
    scales = np.array([0.08, 0.08, 0.12, 0.12])
    groups = synth.object_points(cube, scales, synth.EnergyConfig(pen_points=300), 0, "cpu", torch.float32)
    hull = __import__("trimesh").Trimesh(np.concatenate([p.vertices for p in cube.pieces])).convex_hull
    pose = synth.initial_poses(hand, hull, torch.as_tensor(scales, dtype=torch.float32),
                               synth.InitConfig(distance_lower=-0.03, distance_upper=0.0), 0)
    cached = PenetrationCache(hand, margin=0.01)
    g = torch.Generator().manual_seed(0)
    for step, size in enumerate([0.0, 0.001, 0.002, 0.03, 0.001]):
        move = torch.zeros_like(pose)
        move[:2, :3] = size * torch.randn(2, 3, generator=g)  # only the first two hands move
        pose = pose + move
        frames = hand.link_frames(*synth.split_pose(pose))
        fresh = PenetrationCache(hand)(frames, groups)
        assert float(fresh.min()) > 0
        torch.testing.assert_close(cached(frames, groups), fresh)
        if step == 3:
            assert cached.n_scanned == 4 + 2  # the first call scanned all four; the 3 cm move re-scanned two


def test_stratified_split_fixed_and_proportional():
    cats = {"mug": 40, "bottle": 21, "bowl": 3}
    codes = [f"core-{c}-{i:04x}" for c, n in cats.items() for i in range(n)] + [f"mujoco-obj{i}" for i in range(36)]
    sp = synth.stratified_split(codes)
    assert sorted(sum(sp.values(), [])) == sorted(codes)
    assert (len(sp["train"]), len(sp["val"]), len(sp["test"])) == (90, 5, 5)
    assert synth.stratified_split(list(reversed(codes))) == sp  # depends on the set of codes, not their order
    for c, n in [("mug", 40), ("mujoco", 36)]:  # large categories are spread over the splits in proportion
        k = sum(synth.category_of(x) == c for x in sp["test"])
        assert n // 20 <= k <= n // 20 + 1, (c, k)
    assert synth.category_of("sem-Bottle-437678d4") == "bottle" and synth.category_of("ddg-gd_box") == "ddg"


def test_compact_layout(tmp_path, capsys):
    """layout=compact: float32 grasp files in grasps/, the source mesh used in place (no meshdata/ copy), a split
    fixed over all objects of the first run, normalize=true refused."""
    import trimesh

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.box(extents=[1.2, 0.8, 1.6]).export(meshes / "box.obj")
    trimesh.creation.cylinder(radius=0.6, height=1.6).export(meshes / "can.obj")
    trimesh.creation.icosphere(radius=0.8).export(meshes / "ball.obj")

    def run(objects, *extra):
        return cli.main(["synth", "--source", str(meshes), "--objects", objects, "--out", str(out), "--scales",
                         "0.08,0.12", "--quiet", "layout=compact", *TINY, *extra])

    out = tmp_path / "c"
    assert run("box", "normalize=true") == 2
    assert "normalize=false" in capsys.readouterr().err
    assert run("box,can", "normalize=false") == 0
    assert not (out / "meshdata").exists() and not (out / "dataset").exists()
    arr = np.load(out / "grasps" / "box.npy")
    assert arr.dtype == np.float32 and arr.shape == (4, 29)
    split = json.loads((out / "splits.json").read_text())
    assert sorted(sum(split.values(), [])) == ["box", "can"]
    before = (out / "splits.json").read_text()
    assert run("can", "normalize=false") == 0  # resume: split unchanged
    assert (out / "splits.json").read_text() == before
    assert run("ball", "normalize=false") == 2  # not in the fixed split
    assert run("box", "normalize=false", "--top-up", "1") == 0   # compact files are topped up in place
    assert np.load(out / "grasps" / "box.npy").shape == (8, 29)
    assert "ball" in capsys.readouterr().err
    # the grasps refer to the source mesh as loaded by dgtr (the frame train and eval use)
    from dgtr.data import GraspDataset

    ds = GraspDataset(out, n_points=256, codes=["box"], meshes=meshes)
    assert len(ds) == 2 and ds[0]["points"].shape == (256, 3)
    assert float(ds[0]["points"].abs().max()) == pytest.approx(0.8 * 0.08, rel=1e-3)


def test_progress_moves_within_an_object(tmp_path, cube):
    """synth_object reports its progress as it goes (the bar of `dgtr synth` moves within an object)."""
    cfg = config.load(synth.SynthConfig, None, [o for o in TINY] + ["scales=[0.08,0.12]"])
    seen = []
    synth.synth_object("pb_cube", cube.source, str(tmp_path), cfg, progress=seen.append)
    assert len(seen) >= 10 and seen == sorted(seen) and 0 < seen[0] < 0.5 < seen[-1] < 1


@pytest.mark.parametrize("bad", ["file", "readonly"])
def test_unwritable_out_is_one_line_before_work(tmp_path, capsys, bad):
    if bad == "file":
        out = tmp_path / "f"
        out.write_text("x")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        out = Path("/proc/dgtr_synth_out")  # writable by nobody, root included
    assert _synth(out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0], err


def test_bad_numbers_are_refused(capsys):
    for argv in (["--workers", "0"], ["--limit", "-1"], ["--grasps-per-scale", "0"]):
        assert cli.main(["synth", "--source", "pybullet:named", "--out", "/tmp/x", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and argv[0] in err[0], err


def test_top_up_fills_short_entries_and_resumes(tmp_path):
    """--top-up R: more rounds only for (object, scale) entries short of grasps_per_scale, appended; rerunning does
    nothing; a top-up killed between its grasp file and its record redoes the same rounds (no duplicates)."""
    out = tmp_path / "t"
    assert _synth(out, "--grasps-per-scale", "3") == 0            # 2 hands per scale, every one kept: 2 < 3
    done = out / "done" / "pb_cube.json"
    first = json.loads(done.read_text())
    assert first["kept"] == 4 and first["rounds"] == 1
    g0 = load_grasps(out / "dataset" / "pb_cube.npy")
    assert _synth(out, "--grasps-per-scale", "3", "--top-up", "1") == 0
    after = json.loads(done.read_text())
    g = load_grasps(out / "dataset" / "pb_cube.npy")
    assert after["kept"] == len(g) == 8 and after["rounds"] == 2
    assert {k: v["kept"] for k, v in after["per_scale"].items()} == {"0.08": 4, "0.12": 4}
    assert after["cpu_seconds"] > first["cpu_seconds"]
    assert torch.equal(g.subset(np.arange(4)).joints, g0.joints)        # appended after the grasps it had
    assert _synth(out, "--grasps-per-scale", "3", "--top-up", "1") == 0   # no rounds left: unchanged
    assert json.loads(done.read_text()) == after
    done.write_text(json.dumps(first))                                   # killed after the grasps, before the record
    assert _synth(out, "--grasps-per-scale", "3", "--top-up", "1") == 0
    again = load_grasps(out / "dataset" / "pb_cube.npy")
    assert len(again) == 8 and torch.equal(again.joints, g.joints)
