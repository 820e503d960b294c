import json

import numpy as np
import pytest
import torch
import trimesh

from dgtr.cli import main
from dgtr.data import GraspSet, load_grasps, save_grasps
from dgtr.evaluate import evaluate, select_evenly, summarize


def _synthetic(tmp_path, n=3, nan_index=1):
    """A 6 cm cube mesh and n grasps of it: the palm 1 m away (no contact), one of them NaN."""
    meshes, grasps = tmp_path / "meshes", tmp_path / "grasps"
    meshes.mkdir()
    grasps.mkdir()
    trimesh.creation.box((0.6, 0.6, 0.6)).export(meshes / "cube.obj")
    t = torch.tensor([[0.0, 1.0, 0.0]]).repeat(n, 1)
    t[nan_index, 0] = float("nan")
    g = GraspSet.from_pose(torch.eye(3).expand(n, 3, 3), t, torch.zeros(n, 22), 0.1, code="cube")
    save_grasps(grasps / "cube.npy", g)
    return grasps, meshes


def test_select_evenly():
    np.testing.assert_array_equal(select_evenly(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(select_evenly(3, 8), [0, 1, 2])
    np.testing.assert_array_equal(select_evenly(5, None), np.arange(5))


def test_summarize_units_and_invalid_grasps():
    depth = np.array([0.001, 0.006, np.nan, 0.0])
    q1 = np.array([0.2, 0.3, 0.0, 0.0])
    succ = np.array([[1] * 6, [1] * 5 + [0], [0] * 6, [0] * 6], dtype=bool)
    s = summarize(depth, q1, succ, [{"delta_t": 0.0625, "delta_r": 0.125, "delta_q": 0.25}])
    assert s["n"] == 4 and s["n_invalid"] == 1
    assert s["pen_cm"] == pytest.approx((0.1 + 0.6 + 0.0) / 3, abs=1e-4)  # mean over valid grasps, in cm
    assert s["eta_np"] == pytest.approx(50.0)                        # 0.1 cm and 0 cm; NaN counts as penetrating
    assert s["q1"] == pytest.approx(0.2 / 4) and s["q1_raw"] == pytest.approx(0.5 / 4)
    assert s["eta_tb"] == pytest.approx(50.0)
    assert s["success_any"] == pytest.approx(50.0) and s["success_all6"] == pytest.approx(25.0)
    assert s["success_by_direction"]["-z"] == pytest.approx(25.0)
    assert s["delta_t"] == pytest.approx(6.25)


def test_cli_synthetic_no_contact_and_nan(tmp_path, capsys):
    grasps, meshes = _synthetic(tmp_path)
    out = tmp_path / "m.json"
    assert main(["eval", str(grasps), "--meshes", str(meshes), "--workers", "1", "--out", str(out), "--quiet"]) == 0
    rep = json.loads(out.read_text())
    o = rep["overall"]
    assert o["n"] == 3 and o["n_invalid"] == 1
    assert o["pen_cm"] == 0 and o["eta_tb"] == 0 and o["success_all6"] == 0 and o["success_any"] == 0
    assert rep["objects"]["cube"]["errors"] == {"1": "non-finite grasp"}
    assert rep["objects"]["cube"]["grasps"]["pen_cm"][1] is None
    table = capsys.readouterr().out
    assert "succ.all6" in table and "overall" in table


def test_cli_missing_mesh_names_the_object(tmp_path, capsys):
    grasps, meshes = _synthetic(tmp_path)
    (meshes / "cube.obj").rename(meshes / "other.obj")
    assert main(["eval", str(grasps), "--meshes", str(meshes), "--no-sim", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "cube" in err and "no mesh" in err
    assert not (tmp_path / "x.json").exists()


@pytest.fixture(scope="module")
def small_real(dexgraspnet_dir, tmp_path_factory):
    """3 grasps of each real object (one scale per object, so diversity groups are whole)."""
    d = tmp_path_factory.mktemp("real") / "dataset"
    d.mkdir()
    for f in sorted((dexgraspnet_dir / "dataset").glob("*.npy")):
        g = load_grasps(f)
        g = g.at_scale(g.scales()[2])
        save_grasps(d / f.name, g.subset([0, 1, 2]))
    return d


def test_real_metrics_and_parallel_determinism(small_real, dexgraspnet_dir):
    meshes = dexgraspnet_dir / "meshdata"
    one = evaluate(small_real, meshes, sim=True, workers=1, progress=False)
    two = evaluate(small_real, meshes, sim=True, workers=2, progress=False)
    for code in one["objects"]:
        assert one["objects"][code]["grasps"] == two["objects"][code]["grasps"]
    o = one["overall"]
    assert o["n"] == 9 and o["n_objects"] == 3
    # real DexGraspNet grasps: ~1 mm interpenetration, force closure, they hold
    assert o["pen_cm"] < 0.3 and o["eta_np"] == 100.0
    assert o["eta_tb"] >= 70 and 0.05 < o["q1"] <= 1
    assert o["success_any"] >= 80
    assert o["n_groups"] == 3 and o["delta_t"] >= 6.25


def test_objects_filter_and_limit(small_real, dexgraspnet_dir):
    code = sorted(p.stem for p in small_real.glob("*.npy"))[1]
    rep = evaluate(small_real, dexgraspnet_dir / "meshdata", objects=[code], limit_per_object=2, sim=False,
                   workers=1, progress=False)
    assert list(rep["objects"]) == [code]
    assert rep["objects"][code]["grasps"]["index"] == [0, 2]
    assert "success_all6" not in rep["overall"]
