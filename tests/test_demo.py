import json

import pytest

import dgtr.predict
from dgtr.cli import main
from dgtr.data import load_grasps


def _check_outputs(tmp_path, capsys, code):
    """The demo made grasps, saved them, drew them and scored every one of them."""
    out = capsys.readouterr().out
    assert "overall" in out and "Q1" in out
    for f in (f"dataset/{code}.npy", f"meshdata/{code}/coacd/decomposed.obj", "metrics.json", f"{code}.png",
              f"{code}.html"):
        assert (tmp_path / f).is_file(), f
    grasps = load_grasps(tmp_path / "dataset" / f"{code}.npy")
    report = json.loads((tmp_path / "metrics.json").read_text())
    n = report["overall"]["n"]
    assert n == len(grasps) > 0 and f"{code} × 0.1: {n} grasps from" in out
    return out, n


def test_demo_end_to_end_without_checkpoint_or_bundle(tmp_path, capsys, monkeypatch):
    # No checkpoint and no bundled data folder: the demo synthesises for pybullet's duck instead.
    monkeypatch.setattr(dgtr.predict, "DEFAULT_CHECKPOINT", tmp_path / "no_checkpoint.pt")
    assert main(["demo", "--out", str(tmp_path), "--data", str(tmp_path / "none"), "--no-sim", "--workers", "1"]) == 0
    out, _ = _check_outputs(tmp_path, capsys, "pb_duck")
    assert "dgtr synth" in out


@pytest.mark.skipif(not dgtr.predict.DEFAULT_CHECKPOINT.is_file(), reason="no bundled default checkpoint")
def test_demo_with_bundled_checkpoint(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--data", str(tmp_path / "none"), "--no-sim", "--workers", "1"]) == 0
    out, n = _check_outputs(tmp_path, capsys, "pb_duck")
    assert "DGTR + AB-TTA" in out and n == 16
