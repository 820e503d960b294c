import json

from dgtr.cli import main


def test_demo_end_to_end_without_checkpoint_or_bundle(tmp_path, capsys):
    # No bundled data folder: the demo falls back to pybullet's duck; outputs and a metrics table must appear.
    assert main(["demo", "--out", str(tmp_path), "--data", str(tmp_path / "none"), "--no-sim", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "Q1" in out
    for f in ("dataset/pb_duck.npy", "meshdata/pb_duck/coacd/decomposed.obj", "metrics.json"):
        assert (tmp_path / f).is_file(), f
    report = json.loads((tmp_path / "metrics.json").read_text())
    n = report["overall"]["n"]
    assert n == 0 or ((tmp_path / "pb_duck.png").is_file() and (tmp_path / "pb_duck.html").is_file())
