"""The benchmark harness's selection rules (benchmarks/results.py, benchmarks/shape_blind.py)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from results import suite_objects, top_k_of  # noqa: E402
from shape_blind import results_row  # noqa: E402


def _suite(tmp_path, codes, **kw):
    (tmp_path / "grasps").mkdir()
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    for c in codes:
        (meshes / f"{c}.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    (tmp_path / "splits.json").write_text(json.dumps({"train": [], "val": codes, "test": []}))
    return dict(grasps="grasps", meshes="meshes", split=".:val", **kw)


def test_suite_sample_is_a_fixed_subset(tmp_path):
    codes = [f"obj{i:03d}" for i in range(40)]
    suite = _suite(tmp_path, codes)
    _, _, every = suite_objects(suite, tmp_path)
    assert every == codes
    _, _, some = suite_objects(dict(suite, sample=10), tmp_path)
    _, _, again = suite_objects(dict(suite, sample=10), tmp_path)
    assert some == again and len(some) == 10 and set(some) < set(codes) and some == sorted(some)
    assert some != codes[:10]                                   # not the alphabetical head (one category there)


def test_shape_blind_reuses_only_a_matching_results_row(tmp_path):
    tta = {"tau": 0.01, "iterations": 50}
    row = {"provenance": {"checkpoint_sha256": "abc", "tta": True, "top_k": None, "tta_config": tta},
           "objects": ["a", "b"], "sim": True, "scales": [0.06, 0.1]}
    (tmp_path / "metrics.json").write_text(json.dumps({"overall": {"n": 64}, "row": row}))
    assert results_row(tmp_path, "abc", tta, ["a", "b"], [0.06, 0.1], True)["overall"]["n"] == 64
    assert results_row(tmp_path, "abd", tta, ["a", "b"], [0.06, 0.1], True) is None       # another checkpoint
    assert results_row(tmp_path, "abc", dict(tta, tau=0.02), ["a", "b"], [0.06, 0.1], True) is None
    assert results_row(tmp_path, "abc", tta, ["a"], [0.06, 0.1], True) is None            # other objects
    assert results_row(tmp_path, "abc", tta, ["a", "b"], [0.06, 0.1], False) is None      # no simulation
    assert results_row(tmp_path / "missing", "abc", tta, ["a", "b"], [0.06, 0.1], True) is None


def test_top_k_of_keeps_the_best_per_entry_by_the_predictors_rule(tmp_path):
    import numpy as np
    import torch

    from dgtr.data import GraspSet, load_grasps, save_grasps

    n = 12
    rng = np.random.default_rng(0)
    R = torch.eye(3).expand(n, 3, 3)
    scale = np.repeat([0.06, 0.1], 6)
    contacts = np.array([3, 5, 5, 1, 0, 2, 4, 4, 4, 9, 1, 0])
    pen = rng.random(n) * 1e-3
    g = GraspSet.from_pose(R, torch.zeros(n, 3), torch.zeros(n, 22), scale, "obj",
                           {"penetration": pen, "contact_points": contacts})
    (tmp_path / "src").mkdir()
    save_grasps(tmp_path / "src" / "obj.npy", g)
    top_k_of(tmp_path / "src", ["obj"], 2, tmp_path / "out")
    got = load_grasps(tmp_path / "out" / "obj.npy")
    want = []
    for s in (0.06, 0.1):
        idx = np.flatnonzero(scale == s)
        want += sorted(idx, key=lambda i: (-contacts[i], pen[i]))[:2]
    assert np.array_equal(got.extra["contact_points"], contacts[want])
    assert np.allclose(got.extra["penetration"], pen[want]) and np.allclose(got.scale, scale[want])


def test_rows_are_picked_by_names_that_may_hold_commas():
    from results import pick_rows

    rows = [{"name": "DGTR + AB-TTA"}, {"name": "DGTR* (AB-TTA, top 4)"}, {"name": "ground truth (reference)"}]
    got = pick_rows(rows, "DGTR + AB-TTA,DGTR* (AB-TTA, top 4)", "spec.yaml")
    assert [r["name"] for r in got] == ["DGTR + AB-TTA", "DGTR* (AB-TTA, top 4)"]
    with pytest.raises(SystemExit, match="no row named 'nope'"):
        pick_rows(rows, "DGTR + AB-TTA,nope", "spec.yaml")
