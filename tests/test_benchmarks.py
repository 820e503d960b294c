"""The benchmark harness's selection rules (benchmarks/results.py, benchmarks/shape_blind.py)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from results import suite_objects  # noqa: E402
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
