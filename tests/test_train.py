"""DSMT training loop: end-to-end command, overfit, exact resume, DDP, bad input.

A tiny DexGraspNet-layout dataset is written into tmp_path: box/cylinder meshes and hand poses placed around them.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from dgtr import config
from dgtr.cli import main as cli_main
from dgtr.data import GraspSet, save_grasps
from dgtr.errors import FileFormatError, InputError, MissingFileError
from dgtr.hand import get_hand
from dgtr.train import TrainConfig, entry_key, read_checkpoint, train

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = dict(n_points=256, sa_centres=[64, 32, 16], sa_k=[16, 8, 8], sa_mlps=[[16, 32], [32, 64], [64, 64]],
                  proj_hidden=[64], pos_hidden=[32], d_model=64, n_layers=2, n_heads=4, ffn_dim=64, head_hidden=32,
                  n_queries=8)


def tiny_config(**train_kw) -> TrainConfig:
    cfg = TrainConfig()
    for k, v in TINY_MODEL.items():
        setattr(cfg.model, k, v)
    cfg.model.dropout = 0.0
    s = cfg.train
    s.n_points, s.batch_size, s.epochs_dmt, s.epochs_smw, s.epochs_smpt = 256, 2, 1, 1, 1
    s.progress, s.val_metric_objects, s.lr = False, 2, 1e-3
    for k, v in train_kw.items():
        setattr(s, k, v)
    cfg.tta.iterations = 5
    return cfg


def place_grasps(extent: float, scale: float, m: int, seed: int) -> GraspSet:
    """m hand poses around an object of radius ~extent*scale: palm facing the centre from random directions."""
    g = torch.Generator().manual_seed(seed)
    hand = get_hand()
    u = torch.nn.functional.normalize(torch.randn(m, 3, generator=g, dtype=torch.float64), dim=-1)
    # rotation with column y = u (palm normal -y points at the centre), random spin about u
    a = torch.nn.functional.normalize(torch.linalg.cross(u, torch.randn(m, 3, generator=g, dtype=torch.float64)), dim=-1)
    R = torch.stack([a, u, torch.linalg.cross(a, u)], -1)
    t = u * (extent * scale + 0.02) - 0.07 * R[:, :, 2]   # fingers (+z) reach across the object
    lo, hi = hand.joint_lower.double(), hand.joint_upper.double()
    q = lo + (0.2 + 0.3 * torch.rand(m, 22, generator=g, dtype=torch.float64)) * (hi - lo)
    return GraspSet.from_pose(R, t, q, scale)


def make_dataset(root: Path, n_grasps: int = 6, scales=(0.08, 0.1)) -> Path:
    """meshdata/<code>/coacd/decomposed.obj + dataset/<code>.npy + splits.json (2 train objects, 1 val)."""
    meshes = {"box_a": trimesh.creation.box((1.2, 0.8, 0.6)), "cyl_b": trimesh.creation.cylinder(0.4, 1.2, sections=24),
              "box_c": trimesh.creation.box((0.7, 0.7, 1.0))}
    for i, (code, mesh) in enumerate(meshes.items()):
        p = root / "meshdata" / code / "coacd"
        p.mkdir(parents=True, exist_ok=True)
        mesh.export(p / "decomposed.obj")
        sets = [place_grasps(0.5, s, n_grasps, seed=10 * i + j) for j, s in enumerate(scales)]
        g = GraspSet.concat(sets)
        g.code = code
        save_grasps(root / "dataset" / f"{code}.npy", g)
    (root / "splits.json").write_text(json.dumps({"train": ["box_a", "cyl_b"], "val": ["box_c"], "test": []}))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def weights(model_or_state) -> dict:
    sd = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def test_default_yaml_is_the_default_config():
    assert config.to_dict(config.load(TrainConfig, REPO / "configs" / "default.yaml")) == config.to_dict(TrainConfig())


def test_cli_runs_all_stages_and_writes_files(dataset, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    config.save(tiny_config(), cfg_file)
    run = tmp_path / "run"
    assert cli_main(["train", "--data", str(dataset), "--out", str(run), "--config", str(cfg_file),
                     "train.keep_epoch_checkpoints=true"]) == 0
    for f in ("checkpoint.pt", "checkpoint_epoch03.pt", "config.yaml", "static_assignment.json", "summary.json"):
        assert (run / f).is_file(), f
    assert list((run / "tb").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] and [e["stage"] for e in summary["epochs"]] == ["dmt", "smw", "smpt"]
    assert all(np.isfinite(e["train"]["loss"]) for e in summary["epochs"])
    assert "pen" in summary["epochs"][2]["train"] and "pen" not in summary["epochs"][1]["train"]  # SMPT adds L_pen
    assert "val_pen_mm" in summary["epochs"][0]["val"]
    static = json.loads((run / "static_assignment.json").read_text())
    want = {entry_key(c, s) for c in ("box_a", "cyl_b") for s in (0.08, 0.1)}
    assert set(static) == want  # every train entry, none of val
    for a in static.values():
        used = [x for x in a if x >= 0]
        assert len(a) == 8 and len(used) == 6 and len(set(used)) == 6  # Q=8 queries, M=6 grasps
    ck = read_checkpoint(run / "checkpoint.pt")
    assert ck["epoch"] == 3 and ck["static_assignment"] == static
    assert config.load(TrainConfig, run / "config.yaml").model.d_model == 64
    # an existing run is not overwritten by accident
    assert cli_main(["train", "--data", str(dataset), "--out", str(run), "--config", str(cfg_file)]) == 2


def test_overfit_one_object(tmp_path):
    data = make_dataset(tmp_path / "data", n_grasps=4, scales=(0.1,))
    (data / "splits.json").write_text(json.dumps({"train": ["box_a"], "val": []}))
    cfg = tiny_config(epochs_dmt=200, epochs_smw=0, epochs_smpt=0, batch_size=1, lr=2e-3, lr_min=2e-4,
                      checkpoint_every=100)
    cfg.loss.chamfer = cfg.loss.spen = 0.0  # regression only: the hand terms are tested in the 3-stage run
    train(cfg, data, tmp_path / "run")
    hist = json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"]
    first, last = hist[0]["train"]["loss"], hist[-1]["train"]["loss"]
    assert last < first / 10, (first, last)
    assert hist[-1]["instability"] == 0.0  # a converged matching no longer changes


def test_resume_is_bit_exact(dataset, tmp_path):
    cfg = tiny_config(epochs_dmt=2, epochs_smw=1, epochs_smpt=1)
    cfg.model.dropout = 0.1  # exercise the RNG state
    full = weights(train(cfg, dataset, tmp_path / "a"))
    for n in (1, 2):  # interrupted before the static assignment exists, then inside the static stages
        train(cfg, dataset, tmp_path / "b", resume=(n > 1), max_epochs=n)
    assert not json.loads((tmp_path / "b" / "summary.json").read_text())["completed"]
    resumed = weights(train(cfg, dataset, tmp_path / "b", resume=True))
    assert resumed.keys() == full.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    a = json.loads((tmp_path / "a" / "summary.json").read_text())["epochs"]
    b = json.loads((tmp_path / "b" / "summary.json").read_text())["epochs"]
    assert [e["train"]["loss"] for e in a] == [e["train"]["loss"] for e in b]
    assert (tmp_path / "a" / "static_assignment.json").read_text() == (tmp_path / "b" / "static_assignment.json").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_keep_identical_parameters(dataset, tmp_path):
    cfg_file = tmp_path / "tiny.yaml"
    config.save(tiny_config(epochs_dmt=1, epochs_smw=0, epochs_smpt=1, batch_size=4), cfg_file)
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, sys, torch\n"
        "from dgtr import config\nfrom dgtr.train import TrainConfig, train\n"
        "cfg = config.load(TrainConfig, sys.argv[1])\n"
        "model = train(cfg, sys.argv[2], sys.argv[3])\n"
        "torch.save(model.state_dict(), os.path.join(sys.argv[4], f'rank{os.environ[\"RANK\"]}.pt'))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), str(cfg_file), str(dataset), str(tmp_path / "run"), str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    s0, s1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    init = weights(train.__globals__["build_model"](config.load(TrainConfig, cfg_file).model,
                                                     get_hand().joint_lower, get_hand().joint_upper))
    assert any(not torch.equal(s0[k], init[k]) for k in s0)  # it trained
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["completed"]
    ck = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    for k in s0:
        assert torch.equal(ck["model"][k], s0[k]), k


def test_bad_inputs(dataset, tmp_path):
    cfg = tiny_config()
    with pytest.raises(MissingFileError, match="not found"):
        train(cfg, tmp_path / "nope", tmp_path / "r1")
    empty = tmp_path / "empty"
    make_dataset(empty, n_grasps=2, scales=(0.1,))
    (empty / "splits.json").write_text(json.dumps({"train": [], "val": ["box_a"]}))
    with pytest.raises(InputError, match="train split is empty"):
        train(cfg, empty, tmp_path / "r2")
    with pytest.raises(InputError, match="min_grasps"):
        train(tiny_config(min_grasps=50), dataset, tmp_path / "r3")
    with pytest.raises(MissingFileError, match="checkpoint not found"):
        train(cfg, dataset, tmp_path / "r4", resume=True)
    # corrupt checkpoint
    (tmp_path / "r5").mkdir()
    (tmp_path / "r5" / "checkpoint.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(FileFormatError, match="not a readable dgtr checkpoint"):
        train(cfg, dataset, tmp_path / "r5", resume=True)
    # a checkpoint from another model config: shape mismatch is a clear error, also through the CLI
    run = tmp_path / "r6"
    train(tiny_config(epochs_dmt=1, epochs_smw=0, epochs_smpt=0), dataset, run)
    other = tiny_config(epochs_dmt=2, epochs_smw=0, epochs_smpt=0)
    other.model.d_model = 32
    with pytest.raises(FileFormatError, match="another config"):
        train(other, dataset, run, resume=True)
    assert cli_main(["train", "--data", str(dataset), "--out", str(run), "--resume", "model.d_model=32"]) == 2
    assert cli_main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r7")]) == 2
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            train(cfg, dataset, tmp_path / "r8", device="cuda")


def test_penetration_under_dynamic_matching(dataset, tmp_path):
    """The paper's Table 6 setting (pen/dist in DMT): trains, and validation still reports the base loss."""
    cfg = tiny_config(epochs_dmt=1, epochs_smw=0, epochs_smpt=0)
    cfg.loss.pen_stages = ["dmt"]
    train(cfg, dataset, tmp_path / "run")
    rec = json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"][0]
    assert rec["stage"] == "dmt" and rec["train"]["pen"] >= 0 and "dist" in rec["train"]
    assert "val_loss" in rec["val"] and "val_pen" not in rec["val"]


def test_trains_without_tensorboard(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    train(tiny_config(epochs_dmt=1, epochs_smw=0, epochs_smpt=0, val_every=0), dataset, tmp_path / "run")
    assert "tensorboard is not installed" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["completed"]
