"""Inference: `dgtr predict` end to end (mesh, mesh folder, point cloud), the dgtr.load API, DGTR* top-k, bad input."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import dgtr
from dgtr.cli import main as cli_main
from dgtr.data import GraspSet, load_grasps
from dgtr.errors import FileFormatError, InputError, MissingFileError
from dgtr.predict import DEFAULT_CHECKPOINT, ImplausibleSizeWarning
from dgtr.train import train

from test_train import make_dataset, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset root, checkpoint path) of a tiny model trained for one epoch (the stages are tested in test_train)."""
    root = tmp_path_factory.mktemp("pred")
    data = make_dataset(root / "data")
    cfg = tiny_config(epochs_dmt=1, epochs_smw=0, epochs_smpt=0, val_every=0)
    cfg.loss.chamfer = 0.0
    train(cfg, data, root / "run")
    return data, root / "run" / "checkpoint.pt"


def duck() -> Path:
    from dgtr.objects import pybullet_data_dir
    return pybullet_data_dir() / "duck_vhacd.obj"  # ~1.6 units; its URDF scales it by 0.05 (8 cm)


def test_cli_mesh_end_to_end(trained, tmp_path, capsys):
    _, ckpt = trained
    out = tmp_path / "out"
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--mesh", str(duck()), "--scale", "0.05", "--out", str(out),
                     "--threads", str(torch.get_num_threads()), "tta.iterations=3", "tta.mesh_distance=false"]) == 0
    g = load_grasps(out / "duck_vhacd.npy")
    assert len(g) == 8 and np.allclose(g.scale.numpy(), 0.05)  # the tiny model has 8 queries
    assert g.translation.abs().max() < 0.25 and torch.isfinite(g.joints).all()
    assert {"no_contact", "deep_penetration", "penetration", "contact_points"} <= set(g.extra)  # kept in the .npy
    html = (out / "duck_vhacd.html").read_text()
    # one shared object trace, a slider with a step per grasp + "all" (the figure itself: tests/test_view.py)
    assert html.count('"name":"object"') == 1 and html.count('"method":"update"') == 8 + 1 and '"label":"all"' in html
    assert 'src="plotly.min.js"' in html and "cdn.plot.ly" not in html and (out / "plotly.min.js").is_file()  # offline, shared once
    assert (out / "duck_vhacd.png").stat().st_size > 1000
    text = capsys.readouterr().out
    rows = [l for l in text.splitlines() if l.startswith("    ")][1:]   # under the header
    assert "pen (mm)" in text and "flag" in text and len(rows) == 8
    for row, deep, none in zip(rows, g.extra["deep_penetration"], g.extra["no_contact"]):  # the table flags the values
        assert ("pen > 5 mm" in row) == deep and ("no contact" in row) == none


def test_cli_folder_scales_topk_and_point_cloud(trained, tmp_path):
    data, ckpt = trained
    out = tmp_path / "out"
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--meshes", str(data / "meshdata"), "--objects", "box_a",
                     "--scale", "0.08", "--scale", "0.1", "--top-k", "4", "--no-tta", "--out", str(out)]) == 0
    g = load_grasps(out / "box_a.npy")
    assert len(g) == 8 and sorted(g.scales()) == pytest.approx([0.08, 0.1])
    for s in (0.08, 0.1):  # a mesh: DGTR* ranked by the mesh's Q1 (--rank auto), descending
        assert (np.diff(g.at_scale(s).extra["q1"]) <= 0).all()
    out2 = tmp_path / "out2"
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--meshes", str(data / "meshdata"), "--objects", "box_a",
                     "--scale", "0.1", "--top-k", "4", "--rank", "contacts", "--no-tta", "--no-pictures",
                     "--out", str(out2)]) == 0
    c = load_grasps(out2 / "box_a.npy").extra["contact_points"]  # the paper's order: contact points descending
    assert len(c) == 4 and (np.diff(c) <= 0).all()
    assert (out / "box_a_s0.08.html").is_file() and (out / "box_a_s0.1.png").is_file()
    cloud = tmp_path / "cloud.npy"
    from dgtr.objects import load_object
    np.save(cloud, load_object(data / "meshdata" / "cyl_b" / "coacd" / "decomposed.obj", scale=0.1).sample_points(300))
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--mesh", str(cloud), "--out", str(out), "--no-tta"]) == 0
    assert len(load_grasps(out / "cloud.npy")) == 8
    assert '"type":"scatter3d"' in (out / "cloud.html").read_text()  # no mesh: the points are drawn


def test_python_api(trained):
    data, ckpt = trained
    predictor = dgtr.load(ckpt)
    predictor.tta_config.iterations = 3
    pts = np.random.default_rng(0).normal(size=(5000, 3)) * 0.03
    g = predictor(pts)
    assert isinstance(g, GraspSet) and len(g) == 8 and float(g.scale[0]) == 1.0
    g2 = predictor(pts, tta=False, top_k=3)
    assert len(g2) == 3 and set(g2.extra) == {"penetration", "contact_points", "links_in_contact", "no_contact",
                                              "deep_penetration"}
    with pytest.raises(InputError, match="q1"):  # a point cloud has no Q1
        predictor(pts, tta=False, top_k=3, rank="q1")
    a, b = predictor(pts, tta=False), predictor(pts, tta=False)
    assert torch.equal(a.joints, b.joints)  # deterministic inference
    from dgtr.objects import load_object
    obj = load_object(data / "meshdata" / "box_a" / "coacd" / "decomposed.obj")
    g3 = predictor(obj, scale=0.1, tta=False)
    assert g3.code == "box_a" and float(g3.scale[0]) == pytest.approx(0.1)
    g4 = predictor(str(data / "meshdata" / "box_a" / "coacd" / "decomposed.obj"), scale=0.1, tta=False)
    # the same object; a file's pieces are re-triangulated canonically (predict.canonical_piece), so it is sampled anew
    assert torch.allclose(g3.joints, g4.joints, atol=1e-3) and torch.allclose(g3.translation, g4.translation, atol=1e-3)
    assert not torch.allclose(g3.joints, predictor(obj, scale=0.2, tta=False).joints, atol=1e-3)  # the bound means it


def test_default_checkpoint_message(tmp_path, monkeypatch):
    monkeypatch.setattr(dgtr.predict, "DEFAULT_CHECKPOINT", tmp_path / "none.pt")
    with pytest.raises(MissingFileError, match="default"):
        dgtr.load("default")


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no bundled default checkpoint")
def test_bundled_default_checkpoint_predicts():
    predictor = dgtr.load("default")
    assert predictor.cfg.model.n_queries == 16 and predictor.n_points == 4096
    pts = torch.as_tensor(np.random.default_rng(0).normal(size=(4096, 3)) * 0.03, dtype=torch.float32)
    g = predictor(pts, scale=1.0, tta=False)
    assert len(g) == 16 and torch.isfinite(g.translation).all() and torch.isfinite(g.joints).all()
    # the bundled model must not have collapsed: its 16 grasps differ (docs/training.md, query collapse)
    assert g.translation.std(0).mean() > 5e-3


def test_network_points_change_only_what_the_network_sees():
    """The shape-blind control's hook: another cloud for the network, the object's own for scoring."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from shape_blind import sphere_like

    predictor = dgtr.load("default")
    pts = torch.as_tensor(np.random.default_rng(1).normal(size=(4096, 3)) * [0.05, 0.02, 0.01], dtype=torch.float32)
    inp = predictor.to_network(pts)
    plain = predictor.predict(inp, tta=False)
    same = predictor.predict(inp, tta=False, network_points=inp.points)
    sphere = sphere_like(inp.points)
    assert torch.allclose(sphere.norm(dim=-1), inp.points.norm(dim=-1).mean().expand(4096), atol=1e-5)
    blind = predictor.predict(inp, tta=False, network_points=sphere)
    assert torch.equal(plain.translation, same.translation)
    assert (plain.translation - blind.translation).abs().max() > 1e-4     # the network saw something else
    R, t, q = predictor.raw(sphere)                                      # ... but it is scored on the object
    assert np.array_equal(blind.extra["penetration"], predictor.score(inp.points, R, t, q)["penetration"])


def test_bad_input(trained, tmp_path):
    _, ckpt = trained
    predictor = dgtr.load(ckpt)
    with pytest.raises(InputError, match="at least 64"):
        predictor(np.zeros((10, 3)))
    bad = np.random.default_rng(0).normal(size=(100, 3)) * 0.03
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        predictor(bad)
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        predictor(np.zeros((100, 2)))
    with pytest.raises(InputError, match="top_k"):
        predictor(np.random.default_rng(0).normal(size=(100, 3)) * 0.03, tta=False, top_k=99)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(FileFormatError, match="not a readable dgtr checkpoint"):
        dgtr.load(corrupt)
    ck = torch.load(ckpt, weights_only=True)
    ck["config"]["model"]["d_model"] = 32  # weights of one config under another
    other = tmp_path / "other.pt"
    torch.save(ck, other)
    with pytest.raises(FileFormatError, match="another config"):
        dgtr.load(other)
    with pytest.raises(MissingFileError):
        dgtr.load(tmp_path / "missing.pt")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            dgtr.load(ckpt, device="cuda")
    out = str(tmp_path / "o")
    assert cli_main(["predict", "--checkpoint", str(corrupt), "--mesh", str(duck()), "--out", out]) == 2
    np.save(tmp_path / "few.npy", np.zeros((10, 3)))
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--mesh", str(tmp_path / "few.npy"), "--out", out]) == 2
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--mesh", str(tmp_path / "nope.obj"), "--out", out]) == 2
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--mesh", str(duck()), "--out", out, "lr=3"]) == 2
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--mesh", str(duck()), "--out", out, "--threads", "0"]) == 2


def test_export_gives_a_smaller_equivalent_checkpoint(trained, tmp_path):
    data, ckpt = trained
    dest = tmp_path / "ship" / "model.pt"
    assert cli_main(["export", str(ckpt), str(dest)]) == 0
    assert dest.stat().st_size < 0.6 * ckpt.stat().st_size  # no optimiser state
    assert dest.with_suffix(".yaml").is_file() and (dest.parent / "model_summary.json").is_file()
    pts = np.random.default_rng(1).normal(size=(3000, 3)) * 0.03
    a, b = dgtr.load(ckpt)(pts, tta=False), dgtr.load(dest)(pts, tta=False)
    assert torch.equal(a.joints, b.joints) and torch.equal(a.translation, b.translation)
    assert cli_main(["export", str(tmp_path / "missing.pt"), str(dest)]) == 2


def test_export_stores_tta_settings_and_nothing_else(trained, tmp_path):
    _, ckpt = trained
    dest = tmp_path / "model.pt"
    assert cli_main(["export", str(ckpt), str(dest), "tta.tau=0.02", "tta.iterations=7"]) == 0
    tta = dgtr.load(dest).tta_config
    assert tta.tau == 0.02 and tta.iterations == 7 and dgtr.load(ckpt).tta_config.tau != 0.02
    assert cli_main(["export", str(ckpt), str(tmp_path / "bad.pt"), "model.d_model=8"]) == 2
    assert not (tmp_path / "bad.pt").exists()


# ------------------------------------------------------------------------------------- frames, units, flags
def _rigid(g: GraspSet, rot: np.ndarray, shift: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, t) of grasps g moved with the object by x -> rot @ x + shift."""
    rot = torch.as_tensor(rot, dtype=torch.float64)
    return rot @ g.rotation, g.translation @ rot.T + torch.as_tensor(shift, dtype=torch.float64)


def _same(a: GraspSet, b: GraspSet, shift, rot=np.eye(3), atol=1e-5):
    R, t = _rigid(a, rot, shift)
    assert torch.allclose(R, b.rotation, atol=atol) and torch.allclose(t, b.translation, atol=atol)
    assert torch.allclose(a.joints, b.joints, atol=atol)
    assert np.array_equal(a.extra["contact_points"], b.extra["contact_points"])


def test_shifted_copies_give_the_same_grasps(trained, tmp_path):
    """Any placement: the object is centred for the network (sampling included) and the grasps moved back, so a
    shifted copy gets the same grasps relative to the object, with AB-TTA too (it runs in the network frame)."""
    data, ckpt = trained
    predictor = dgtr.load(ckpt)
    predictor.tta_config.iterations = 5
    shift = np.array([0.3, -0.1, 0.05])
    cloud = np.random.default_rng(0).normal(size=(5000, 3)) * [0.03, 0.02, 0.05]
    _same(predictor(cloud), predictor(cloud + shift), shift)
    # a mesh file moved by `shift` (its convex pieces are computed after centring, so they match too)
    import trimesh
    mesh = trimesh.load(data / "meshdata" / "cyl_b" / "coacd" / "decomposed.obj", force="mesh")
    mesh.export(tmp_path / "a.obj")
    mesh.apply_translation(shift / 0.1)
    mesh.export(tmp_path / "b.obj")
    a, b = predictor(tmp_path / "a.obj", scale=0.1), predictor(tmp_path / "b.obj", scale=0.1)
    _same(a, b, shift)
    assert np.allclose(a.extra["penetration"], b.extra["penetration"], atol=1e-6)
    # an ObjectModel moved by `shift`
    from dgtr.objects import ObjectModel, load_object
    obj = load_object(tmp_path / "a.obj", scale=0.1)
    moved = ObjectModel([p.copy().apply_translation(shift) for p in obj.pieces], code="moved")
    _same(predictor(obj, tta=False), predictor(moved, tta=False), shift)
    # the network never saw the offset: without centring, the shifted copy's grasps would sit 0.33 m away
    assert (b.translation.mean(0) - torch.as_tensor(shift)).norm() < 0.15


def test_rotated_copy_is_grasped_in_its_own_frame(trained):
    """What holds for orientation until rotation augmentation (README): the grasps of a rotated (and shifted) copy
    are in the caller's frame, at the object, and their per-grasp values are right there; they are not the rotated
    grasps of the upright object (the network sees another shape)."""
    from dgtr.predict import score_grasps
    from dgtr.rotations import matrix_from_euler

    _, ckpt = trained
    predictor = dgtr.load(ckpt)
    predictor.tta_config.iterations = 5
    cloud = np.random.default_rng(1).normal(size=(4096, 3)) * [0.05, 0.02, 0.03]
    rot = matrix_from_euler(torch.tensor([0.3, -0.5, 1.2], dtype=torch.float64)).numpy()
    shift = np.array([-0.2, 0.4, 0.1])
    user = cloud @ rot.T + shift
    inp = predictor.to_network(user)
    g = predictor.predict(inp)
    seen = inp.points.double() + torch.from_numpy(inp.offset)     # the network's points, in the caller's frame
    sc = score_grasps(predictor.cpu_hand, seen, g.rotation, g.translation, g.joints)
    assert np.allclose(sc["penetration"], g.extra["penetration"], atol=1e-5)
    assert np.array_equal(sc["contact_points"], g.extra["contact_points"])
    assert (g.translation.mean(0) - torch.as_tensor(shift)).norm() < 0.15
    upright = predictor(cloud)
    R, t = _rigid(upright, rot, shift)
    assert not torch.allclose(t, g.translation, atol=1e-3)  # orientation is not normalised (documented)


def test_size_warning_and_units(trained, tmp_path, capsys):
    _, ckpt = trained
    predictor = dgtr.load(ckpt)
    cloud = np.random.default_rng(2).normal(size=(3000, 3)) * 0.03          # ~22 cm across: fine
    extent = np.ptp(cloud, 0).max()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImplausibleSizeWarning)
        ok = predictor(cloud, tta=False)
    with pytest.warns(ImplausibleSizeWarning, match=rf"largest extent {extent * 1000:.3g} m .*--units mm"):
        predictor(cloud * 1000, tta=False)                                    # the same object in millimetres
    with pytest.warns(ImplausibleSizeWarning, match=rf"largest extent {extent / 50:.3g} m"):
        predictor(cloud / 50, tta=False)                                      # 4 mm
    np.save(tmp_path / "mm.npy", cloud * 1000)
    out = tmp_path / "out"
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--mesh", str(tmp_path / "mm.npy"), "--no-tta",
                     "--no-pictures", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "--units mm" in err and len(err.strip().splitlines()) == 1
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--mesh", str(tmp_path / "mm.npy"), "--no-tta",
                     "--no-pictures", "--units", "mm", "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    mm = load_grasps(out / "mm.npy")
    assert np.allclose(mm.scale.numpy(), 0.001)      # the records say how the file's coordinates become metres
    assert torch.allclose(mm.translation, ok.translation, atol=1e-5) and torch.allclose(mm.joints, ok.joints, atol=1e-5)


def test_flags_for_no_contact_and_deep_penetration(trained, tmp_path, capsys):
    from dgtr.predict import score_grasps

    _, ckpt = trained
    predictor = dgtr.load(ckpt)
    box = np.random.default_rng(3).uniform(-0.03, 0.03, size=(4000, 3))
    g = predictor(box, tta=False)
    R, t, q = g.rotation[:3].clone(), g.translation[:3].clone(), g.joints[:3].clone()
    t[1] += 1.0                                    # a metre away: touches nothing
    t[2] = 0.0
    R[2] = torch.eye(3, dtype=R.dtype)             # palm in the middle of a solid block of points: deep inside
    dense = np.random.default_rng(4).uniform(-0.1, 0.1, size=(20000, 3))
    sc = score_grasps(predictor.cpu_hand, torch.as_tensor(dense), R, t, q)
    assert sc["no_contact"][1] and not sc["deep_penetration"][1]
    assert sc["deep_penetration"][2] and sc["penetration"][2] > 0.005
    from dgtr.predict import print_table
    print_table(GraspSet.from_pose(R, t, q, 1.0, extra=sc))
    rows = capsys.readouterr().out.splitlines()[1:4]
    assert rows[1].endswith("no contact") and "pen > 5 mm" in rows[2] and "pen > 5 mm" not in rows[1]
    # end to end: a 6 cm object at a wrong --scale 100 is 6 m across; the hand is deep inside and touches no surface
    np.save(tmp_path / "big.npy", box)
    out = tmp_path / "out"
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--mesh", str(tmp_path / "big.npy"), "--no-tta",
                     "--scale", "100", "--no-pictures", "--out", str(out)]) == 0
    text = capsys.readouterr()
    assert "implausible" in text.err
    big = load_grasps(out / "big.npy")
    assert big.extra["no_contact"].all() and "none of the 8 grasps touches the object" in text.out
    assert text.out.count("no contact") == 8 + 1


def _one_line_error(capsys, *names) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in names:
        assert n in err, (n, err)
    return err


def test_cli_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys, monkeypatch):
    _, ckpt = trained
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    base = ["predict", "--checkpoint", str(ckpt), "--mesh", str(duck()), "--scale", "0.05", "--no-tta"]
    cases = [(["--top-k", "0"], "--top-k"), (["--top-k", "-2"], "--top-k"), (["--top-k", "x"], "--top-k"),
             (["--threads", "0"], "--threads"), (["--scale", "0"], "--scale"), (["--scale", "nan"], "--scale"),
             (["--scale", "-1"], "--scale"), (["--units", "km"], "--units"), (["--top-k", "99"], "--top-k"),
             (["tta.iterations=-1"], "TTAConfig"), (["lr=3"], "overrides")]
    for extra, name in cases:
        assert cli_main(base + ["--out", str(out)] + extra) == 2, extra
        _one_line_error(capsys, name)
        assert not out.exists() or not any(out.iterdir()), extra
    assert cli_main(["predict", "--mesh", str(tmp_path / "nope.obj"), "--out", str(out)]) == 2
    _one_line_error(capsys, "--mesh", "nope.obj")
    assert cli_main(["predict", "--meshes", str(tmp_path / "nope"), "--out", str(out)]) == 2
    _one_line_error(capsys, "--meshes")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for bad in (a_file, a_file / "sub", ""):
        assert cli_main(base + ["--out", str(bad)]) == 2
        _one_line_error(capsys, "--out")
    assert a_file.read_text() == "x"
    assert list(cwd.iterdir()) == []               # nothing written outside --out
    assert not out.exists() or not any(out.iterdir())


def test_cli_unwritable_out_fails_before_work(trained, tmp_path, capsys):
    import os
    _, ckpt = trained
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        target = ro / "out"
        if os.access(ro, os.W_OK):                 # root ignores permissions: use a folder nobody can write
            target = Path("/sys/dgtr-test-out")
            if not Path("/sys").is_dir():
                pytest.skip("running as root without /sys: no unwritable folder to test with")
        assert cli_main(["predict", "--checkpoint", str(ckpt), "--mesh", str(duck()), "--out", str(target)]) == 2
        _one_line_error(capsys, "--out", str(target))
        assert not target.exists()
    finally:
        ro.chmod(0o755)


def test_rank_grasps():
    """DGTR*'s orders: the paper's (contact points, then penetration) and Q1 first (ties by the paper's rule)."""
    from dgtr.predict import rank_grasps

    sc = {"contact_points": np.array([3, 9, 9, 1, 5]), "penetration": np.array([0.0, 0.004, 0.001, 0.0, 0.002])}
    assert rank_grasps(sc, 3).tolist() == [2, 1, 4]
    q1 = np.array([0.1, 0.0, 0.2, 0.2, 0.05])
    assert rank_grasps(sc, 5, "q1", q1).tolist() == [2, 3, 0, 4, 1]
    sc["penetration"][2] = 0.004  # 1 and 2 deeper than RANK_PEN: last, whatever their Q1 (between them by Q1)
    assert rank_grasps(sc, 5, "q1", q1).tolist() == [3, 0, 4, 2, 1]
    with pytest.raises(InputError, match="q1"):
        rank_grasps(sc, 3, "q1")
    with pytest.raises(InputError, match="rank"):
        rank_grasps(sc, 3, "best")
