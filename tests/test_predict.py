"""Inference: `dgtr predict` end to end (mesh, mesh folder, point cloud), the dgtr.load API, DGTR* top-k, bad input."""
from pathlib import Path

import numpy as np
import pytest
import torch

import dgtr
from dgtr.cli import main as cli_main
from dgtr.data import GraspSet, load_grasps
from dgtr.errors import FileFormatError, InputError, MissingFileError
from dgtr.predict import DEFAULT_CHECKPOINT
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
    html = (out / "duck_vhacd.html").read_text()
    assert html.count('"name":"object"') == 1 and html.count('"name":"grasp ') == 8  # one toggleable mesh per grasp
    assert (out / "duck_vhacd.png").stat().st_size > 1000
    text = capsys.readouterr().out
    assert "pen (mm)" in text and "links" in text and len([l for l in text.splitlines() if l.startswith("    ")]) >= 8


def test_cli_folder_scales_topk_and_point_cloud(trained, tmp_path):
    data, ckpt = trained
    out = tmp_path / "out"
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--meshes", str(data / "meshdata"), "--objects", "box_a",
                     "--scale", "0.08", "--scale", "0.1", "--top-k", "4", "--no-tta", "--out", str(out)]) == 0
    g = load_grasps(out / "box_a.npy")
    assert len(g) == 8 and sorted(g.scales()) == pytest.approx([0.08, 0.1])
    for s in (0.08, 0.1):  # DGTR* order: contact points descending, then penetration ascending
        c = g.at_scale(s).extra["contact_points"]
        assert (np.diff(c) <= 0).all()
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
    assert len(g2) == 3 and set(g2.extra) == {"penetration", "contact_points", "links_in_contact"}
    a, b = predictor(pts, tta=False), predictor(pts, tta=False)
    assert torch.equal(a.joints, b.joints)  # deterministic inference
    from dgtr.objects import load_object
    obj = load_object(data / "meshdata" / "box_a" / "coacd" / "decomposed.obj")
    g3 = predictor(obj, scale=0.1, tta=False)
    assert g3.code == "box_a" and float(g3.scale[0]) == pytest.approx(0.1)
    g4 = predictor(str(data / "meshdata" / "box_a" / "coacd" / "decomposed.obj"), scale=0.1, tta=False)
    assert torch.allclose(g3.joints, g4.joints)


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


def test_bad_input(trained, tmp_path):
    _, ckpt = trained
    predictor = dgtr.load(ckpt)
    with pytest.raises(InputError, match="at least 64"):
        predictor(np.zeros((10, 3)))
    bad = np.random.default_rng(0).normal(size=(100, 3))
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        predictor(bad)
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        predictor(np.zeros((100, 2)))
    with pytest.raises(InputError, match="top_k"):
        predictor(np.random.default_rng(0).normal(size=(100, 3)), tta=False, top_k=99)
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
