"""The comparison methods (dgtr.methods: GraspTTA, UniDexGrasp, SceneDiffuser, DDG): shapes, a tiny overfit, sampling
diversity, save/load round trips, resume, bad checkpoints, and the pieces (contact map, soft Q1, Glow, refinement).

Tiny networks on the synthetic box/cylinder dataset of test_train (hand poses placed around the objects)."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dgtr import config, methods
from dgtr.data import GraspDataset, collate
from dgtr.errors import FileFormatError, InputError, MissingFileError
from dgtr.hand import get_hand
from dgtr.metrics import q1_from_contacts
from dgtr.methods.common import contact_map, cloud_normals
from dgtr.methods.contact import ContactRefineConfig, refine
from dgtr.methods.ddg import soft_q1, wrench_directions
from dgtr.methods.unidexgrasp import ConditionalGlow
from test_train import make_dataset, tiny_config

REPO = Path(__file__).resolve().parents[1]
NAMES = sorted(methods.METHODS)
TINY_ENC = dict(sa_centres=[64, 32, 16], sa_k=[16, 8, 8], sa_mlps=[[16, 32], [32, 64], [64, 64]], out_dim=64)
TINY_CONTACT = ["model.contact.object_points=128", "model.contact.hand_points=128", "model.contact.width=32"]
TINY = {
    "grasptta": ["model.hidden=[64]", "model.latent=16", *TINY_CONTACT],
    "unidexgrasp": [f"model.glow_encoder.{k}={v}" for k, v in TINY_ENC.items()] + [
        "model.ipdf_grid=256", "model.ipdf_hidden=[64,64]", "model.glow_hidden=64", "model.glow_steps=4",
        "loss.ipdf_queries=64", *TINY_CONTACT],
    "scenediffuser": ["model.d_model=64", "model.ffn_dim=64", "model.n_layers=2", "model.steps=20",
                      "model.dropout=0"],
    "ddg": ["model.hidden=[64]"],
}


def tiny(name: str, *more: str):
    ov = ([f"method={name}", "model.n_points=256"] + [f"model.encoder.{k}={v}" for k, v in TINY_ENC.items()]
          + TINY[name] + ["train.batch_size=2", "train.epochs=1", "train.progress=false", "train.lr=3e-3",
                          "refine.iterations=0" if name in ("scenediffuser", "ddg") else "refine.iterations=3"])
    return methods.load_config(None, ov + list(more))


def n_of(name: str) -> int:
    return 1 if name == "ddg" else 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("mdata"), n_grasps=8)


@pytest.fixture(scope="module")
def batch(dataset) -> dict:
    ds = GraspDataset(dataset, "train", n_points=256)
    return collate([ds[i] for i in range(len(ds))])


def build(name: str, seed: int = 0, *more: str):
    torch.manual_seed(seed)
    return methods.build(tiny(name, *more), get_hand())


# ------------------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("name", NAMES)
def test_sample_shapes_and_valid_grasps(name, batch):
    model = build(name).eval()
    hand = get_hand()
    pts = batch["points"][:2]
    n = n_of(name)
    R, t, q = methods.sample(model, pts, n, generator=torch.Generator().manual_seed(0))
    assert R.shape == (2, n, 3, 3) and t.shape == (2, n, 3) and q.shape == (2, n, 22)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)
    assert torch.allclose(torch.det(R), torch.ones(2, n), atol=1e-5)
    assert bool(((q >= hand.joint_lower - 1e-6) & (q <= hand.joint_upper + 1e-6)).all())
    assert bool(torch.isfinite(t).all())
    loss, logs = methods.train_step(model.train(), batch, hand, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and logs["loss"] == pytest.approx(float(loss.detach()))
    with pytest.raises(InputError, match="points"):
        model.sample(torch.zeros(2, 10, 3), n)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_overfit(name, batch):
    """40 steps on 4 (object, scale) entries with 4 recurring draws: the training loss falls by a clear margin."""
    model = build(name)
    hand = get_hand()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for it in range(40):
        loss, _ = model.loss(batch, hand, torch.Generator().manual_seed(it % 4))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < first - 0.25 * abs(first), (name, losses)


@pytest.mark.parametrize("name", ["grasptta", "unidexgrasp", "scenediffuser"])
def test_generative_methods_draw_distinct_grasps(name, batch):
    model = build(name).eval()
    R, t, q = methods.sample(model, batch["points"][:1], 16, generator=torch.Generator().manual_seed(1))
    x = torch.cat([t[0], q[0], R[0].flatten(1)], -1)
    gaps = torch.cdist(x, x) + torch.eye(16) * 1e9
    assert float(gaps.min()) > 1e-4  # no two of the 16 are the same grasp
    # a fixed generator gives the same grasps again (predictions are reproducible)
    again = methods.sample(model, batch["points"][:1], 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[1], t)


def test_ddg_gives_one_grasp(batch):
    model = build("ddg").eval()
    R, t, q = model.sample(batch["points"][:3])
    assert R.shape == (3, 1, 3, 3)
    with pytest.raises(InputError, match="one grasp"):
        model.sample(batch["points"][:3], 16)
    with pytest.raises(InputError, match="sample.n = 1"):
        tiny("ddg", "sample.n=16")


def test_unidexgrasp_passes_share_one_rotation_each(batch):
    """Table 2: n = passes × per-pass draws; the grasps of one pass share its IPDF rotation."""
    model = build("unidexgrasp").eval()
    pts = batch["points"][:2]
    for passes in (1, 4, 16):
        R, t, q = methods.sample(model, pts, 16, passes, generator=torch.Generator().manual_seed(0))
        assert R.shape == (2, 16, 3, 3) and t.shape == (2, 16, 3)
        per = R.reshape(2, passes, 16 // passes, 9)
        assert torch.equal(per, per[:, :, :1].expand_as(per))
    assert len({tuple(r.flatten().tolist()) for r in R[0]}) > 1  # 16 passes draw more than one rotation
    with pytest.raises(InputError, match="passes"):
        methods.sample(model, pts, 16, 3)
    with pytest.raises(InputError, match="passes"):
        methods.sample(build("ddg"), pts, 1, 4)


def test_glow_is_invertible_and_normalised():
    torch.manual_seed(0)
    flow = ConditionalGlow(5, 3, steps=3, hidden=16)
    x, c = torch.randn(64, 5), torch.randn(64, 3)
    flow.train()
    flow.log_prob(x, c)  # ActNorm data initialisation
    flow.eval()
    for _, _, coup in flow.steps:  # a non-trivial coupling (it starts as the identity)
        torch.nn.init.normal_(coup.net[-1].weight, std=0.3)
    z = x.clone()
    for norm, lin, coup in flow.steps:
        z = coup(lin(norm(z)[0])[0], c)[0]
    back = z
    for norm, lin, coup in reversed(flow.steps):
        back = norm.inverse(lin.inverse(coup.inverse(back, c)))
    assert torch.allclose(back, x, atol=1e-4)
    # the density integrates to ~1 in 1-D (trapezoid on a grid)
    f1 = ConditionalGlow(1, 1, steps=2, hidden=8).eval()
    grid = torch.linspace(-12, 12, 4001)[:, None]
    with torch.no_grad():
        p = f1.log_prob(grid, torch.zeros(4001, 1)).exp()
    assert float(torch.trapezoid(p, grid[:, 0])) == pytest.approx(1.0, abs=1e-3)


# ------------------------------------------------------------------------------------------------------ pieces
def test_contact_map_values():
    obj = torch.tensor([[[0.0, 0, 0], [0.01, 0, 0], [1.0, 0, 0]]])
    hand_pts = torch.zeros(1, 5, 3)
    c = contact_map(obj, hand_pts)
    assert c[0, 0] == pytest.approx(1.0, abs=1e-4) and c[0, 1] == pytest.approx(2 - 2 / (1 + np.exp(-1)), abs=1e-4)
    assert c[0, 2] < 1e-6


def test_soft_q1_bounds_the_metric():
    """Q̃1 with many directions and a sharp minimum is close to (and, being a minimum over sampled directions, at
    least) the exact Q1 of dgtr.metrics; zero contact weights give 0."""
    c = torch.tensor([[0.03, 0, 0], [-0.03, 0, 0], [0, 0.03, 0], [0, -0.03, 0], [0, 0, 0.03], [0, 0, -0.03]])
    n = c / 0.03
    exact = q1_from_contacts(c.numpy(), n.numpy())
    assert exact > 0
    soft = float(soft_q1(c[None], n[None], torch.ones(1, 6), wrench_directions(20000), beta=1e4)[0])
    assert exact - 1e-3 <= soft <= exact * 1.25, (soft, exact)
    assert float(soft_q1(c[None], n[None], torch.zeros(1, 6), wrench_directions(64), beta=50)[0]) == pytest.approx(0)


def test_cloud_normals_point_outward():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(1, 500, 3, generator=g), dim=-1) * 0.05  # a 5 cm sphere
    n = cloud_normals(x)
    assert float(((n * x / 0.05).sum(-1)).min()) > 0.95


def test_refinement_lowers_its_objective(batch):
    model = build("grasptta").eval()
    hand = get_hand()
    R, t, q = methods.sample(model, batch["points"][:1], 4, generator=torch.Generator().manual_seed(0))
    cfg = ContactRefineConfig(iterations=15)
    R2, t2, q2, hist = refine(model.contactnet, hand, batch["points"][0], R[0], t[0], q[0], cfg, return_history=True)
    assert hist[-1] < hist[0] and R2.shape == (4, 3, 3) and not torch.equal(t2, t[0])
    assert torch.allclose(R2 @ R2.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-5)
    t3 = refine(model.contactnet, hand, batch["points"][0], R[0], t[0], q[0],
                ContactRefineConfig(iterations=5, translation=False))[1]
    assert torch.equal(t3, t[0])


# ------------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", NAMES)
def test_config_file_is_the_default(name):
    path = REPO / "configs" / "methods" / f"{name}.yaml"
    assert methods.method_of(path) == name
    cfg = methods.load_config(path)
    assert config.to_dict(cfg) == config.to_dict(methods.run_config_class(name)())


def test_bad_configs(tmp_path):
    assert methods.method_of(None) == "dgtr" and methods.method_of(None, ["method=ddg"]) == "ddg"
    with pytest.raises(InputError, match="unknown method 'graspnet'"):
        methods.load_config(None, ["method=graspnet"])
    with pytest.raises(InputError, match="unknown key"):
        methods.load_config(None, ["method=ddg", "model.widht=3"])
    with pytest.raises(InputError, match="passes"):
        methods.load_config(None, ["method=unidexgrasp", "sample.passes=3"])
    with pytest.raises(MissingFileError):
        methods.method_of(tmp_path / "none.yaml")


# ---------------------------------------------------------------------------------------- training, checkpoints
@pytest.mark.parametrize("name", NAMES)
def test_train_save_load_predict(name, dataset, tmp_path):
    cfg = tiny(name)
    run = tmp_path / "run"
    trained = methods.train_method(cfg, dataset, run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] and summary["method"] == name
    assert abs(summary["epochs"][0]["train"]["loss"]) < 1e3 and abs(summary["epochs"][0]["val"]["val_loss"]) < 1e3
    model, loaded_cfg = methods.load_method(run / "checkpoint.pt")
    assert config.to_dict(loaded_cfg) == config.to_dict(cfg)
    a, b = trained.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    small = methods.export_method(run / "checkpoint.pt", tmp_path / f"{name}.pt")
    assert "optimizer" not in torch.load(small, weights_only=True)
    pred = methods.load_predictor(small)
    pts = GraspDataset(dataset, "val", n_points=256)[0]["points"]
    g = pred(pts, tta=True)
    assert len(g) == n_of(name) and g.extra["penetration"].shape == (n_of(name),)
    # a shifted cloud: the same grasps, shifted (before refinement: Adam's first steps are ±lr wherever a gradient
    # is ~0, so refinement amplifies the 1e-8 rounding of the shift)
    g0, g1 = pred(pts, tta=False), pred(pts + torch.tensor([0.3, 0.0, 0.0]), tta=False)
    assert torch.allclose(g1.translation - g0.translation, torch.tensor([0.3, 0, 0], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(g1.joints, g0.joints, atol=1e-5)
    if name != "ddg":
        assert len(pred(pts, tta=False, top_k=4)) == 4
    # inference defaults may change at export, nothing else
    tuned = methods.export_method(run / "checkpoint.pt", tmp_path / "tuned.pt", ["sample.n=2"] if name != "ddg" else [])
    assert methods.load_predictor(tuned).sample_config.n == (2 if name != "ddg" else 1)
    with pytest.raises(InputError, match="after training"):
        methods.export_method(run / "checkpoint.pt", tmp_path / "x.pt", ["model.n_points=128"])


def test_resume_is_exact(dataset, tmp_path):
    cfg = tiny("grasptta", "train.epochs=3")
    full = methods.train_method(cfg, dataset, tmp_path / "a").state_dict()
    methods.train_method(cfg, dataset, tmp_path / "b", max_epochs=1)
    methods.train_method(cfg, dataset, tmp_path / "b", resume=True, max_epochs=1)
    resumed = methods.train_method(cfg, dataset, tmp_path / "b", resume=True).state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    with pytest.raises(InputError, match="train.lr"):
        methods.train_method(tiny("grasptta", "train.epochs=3", "train.lr=1e-3"), dataset, tmp_path / "b", resume=True)
    with pytest.raises(InputError, match="already holds a run"):
        methods.train_method(cfg, dataset, tmp_path / "b")


def test_bad_checkpoints_are_one_clear_error(dataset, tmp_path):
    cfg = tiny("ddg")
    run = tmp_path / "run"
    methods.train_method(cfg, dataset, run)
    ck = run / "checkpoint.pt"
    with pytest.raises(MissingFileError):
        methods.load_predictor(tmp_path / "nothing.pt")
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(ck.read_bytes()[:1000])
    with pytest.raises(FileFormatError, match="truncated"):
        methods.load_method(bad)
    with pytest.raises(FileFormatError, match="is a folder"):
        methods.load_method(run)
    # a DGTR checkpoint is not a method's
    dgtr_ck = tmp_path / "dgtr.pt"
    torch.save({"model": {}, "config": config.to_dict(tiny_config())}, dgtr_ck)
    with pytest.raises(FileFormatError, match="names no comparison method"):
        methods.load_method(dgtr_ck)
    # weights of another shape than the config's
    data = torch.load(ck, weights_only=True)
    data["config"]["model"]["hidden"] = [32]
    other = tmp_path / "other.pt"
    torch.save(data, other)
    with pytest.raises(FileFormatError, match="do not fit"):
        methods.load_method(other)
    data["config"]["model"]["bogus"] = 1
    torch.save(data, other)
    with pytest.raises(FileFormatError, match="does not fit this version"):
        methods.load_method(other)


def test_cli_entry_point_errors_are_one_line(dataset, tmp_path):
    cfg_file = tmp_path / "m.yaml"
    config.save(tiny("ddg"), cfg_file)
    r = subprocess.run([sys.executable, "-m", "dgtr.methods", "train", "--data", str(dataset), "--out",
                        str(tmp_path / "run"), "--config", str(cfg_file), "model.hiddn=[3]"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown key" in r.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ the dgtr commands run a method (issue 16)
def _method_yaml(tmp_path, name: str, *more: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    config.save(tiny(name, *more), path)
    return path


def test_dgtr_train_export_load_predict_eval_a_method(dataset, tmp_path, capsys):
    """`dgtr train` on a config naming a method, `dgtr export`, `dgtr.load`, `dgtr predict --checkpoint` and
    `dgtr eval` of what it wrote: the DGTR commands, a comparison method's files."""
    import dgtr
    from dgtr.cli import main
    from dgtr.data import load_grasps
    from dgtr.methods.predictor import MethodPredictor

    cfg_file, run = _method_yaml(tmp_path, "grasptta"), tmp_path / "run"
    argv = ["train", "--config", str(cfg_file), "--data", str(dataset), "--out", str(run)]
    assert main(argv) == 0
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["method"] == "grasptta" and methods.is_method_checkpoint(ck)
    assert json.loads((run / "summary.json").read_text())["completed"]
    # DGTR's run checks: an existing run needs --resume; --resume without --config continues it (its config.yaml
    # names the method); --max-epochs 0 is refused by argparse
    capsys.readouterr()
    assert main(argv) == 2 and "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", "--data", str(dataset), "--out", str(run)]) == 0
    assert "all 1 epochs are done" in capsys.readouterr().err
    assert main(argv[:-2] + ["--out", str(tmp_path / "r2"), "--max-epochs", "0"]) == 2
    assert "--max-epochs" in capsys.readouterr().err and not (tmp_path / "r2").exists()
    # DGTR resumed on a method's run: one line naming it
    assert main(["train", "--resume", "--config", str(REPO / "configs" / "default.yaml"), "--data", str(dataset),
                 "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a grasptta run" in err

    small = tmp_path / "grasptta.pt"
    assert main(["export", str(run / "checkpoint.pt"), str(small), "tta.iterations=2"]) == 0
    assert small.with_suffix(".yaml").is_file() and (tmp_path / "grasptta_summary.json").is_file()
    assert "optimizer" not in torch.load(small, weights_only=True)
    assert main(["export", str(run / "checkpoint.pt"), str(tmp_path / "x.pt"), "model.latent=3"]) == 2
    assert "after training" in capsys.readouterr().err

    pred = dgtr.load(small)
    assert isinstance(pred, MethodPredictor) and pred.method == "grasptta" and pred.tta_config.iterations == 2
    pts = GraspDataset(dataset, "val", n_points=256)[0]["points"]
    g = pred(pts, scale=1.0, tta=True)
    assert len(g) == 16 and g.rotation.shape == (16, 3, 3) and g.translation.shape == (16, 3)
    assert g.joints.shape == (16, 22) and g.extra["contact_points"].shape == (16,)
    assert len(pred.predict_points(*pred.prepare(pts)[:2], 1.0, "c", tta=False, top_k=3)) == 3

    # benchmarks/results.py (Tables 1 and 2) runs a method's row with dgtr predict's overrides
    sys.path.insert(0, str(REPO / "benchmarks"))
    import results
    suite = {"grasps": str(dataset / "dataset"), "meshes": str(dataset / "meshdata"), "split": f"{dataset}:val"}
    row = {"name": "GraspTTA 4", "checkpoint": str(small), "tta": False, "overrides": ["sample.n=4"]}
    args = SimpleNamespace(out=str(tmp_path / "tables"), sim=False, workers=1)
    rep = results.run_row(row, "val", suite, args, Path("/"))
    prov = rep["row"]["provenance"]
    assert prov["method"] == "grasptta" and prov["sample_config"]["n"] == 4
    assert rep["overall"]["n"] == 4 * sum(len(set(load_grasps(dataset / "dataset" / f"{c}.npy").scale.tolist()))
                                          for c in rep["row"]["objects"])
    assert results.run_row(row, "val", suite, args, Path("/")) == rep          # the finished row is reused
    # a row that differs only in --sim is re-scored on its saved predictions, not predicted again
    with pytest.MonkeyPatch.context() as mp:
        seen = {}
        mp.setattr(results, "predict_row", lambda *a, **k: pytest.fail("predicted again"))
        mp.setattr(results, "evaluate", lambda d, m, **k: seen.update(k, grasp_dir=d) or {"overall": {"n": 0}})
        rep_sim = results.run_row(row, "val", suite, SimpleNamespace(**dict(vars(args), sim=True)), Path("/"))
        assert seen["sim"] is True and seen["grasp_dir"] == tmp_path / "tables" / "val" / results.slug(row["name"])
        assert rep_sim["row"]["sim"] is True and rep_sim["row"]["time_ms"] == rep["row"]["time_ms"]
    with pytest.raises(SystemExit, match="not found"):
        results.run_row(dict(row, checkpoint=str(tmp_path / "none.pt")), "val", suite, args, Path("/"))

    out = tmp_path / "pred"
    mesh = dataset / "meshdata" / "box_c" / "coacd" / "decomposed.obj"
    assert main(["predict", "--checkpoint", str(small), "--mesh", str(mesh), "--scale", "0.1", "--out", str(out),
                 "--top-k", "4", "refine.iterations=1"]) == 0
    text = capsys.readouterr().out
    assert "box_c scale 0.1: 4 grasps" in text and "grasptta ContactNet refinement" in text and "pen (mm)" in text
    saved = load_grasps(out / "box_c.npy")
    assert len(saved) == 4 and saved.joints.shape == (4, 22)
    assert (out / "box_c.png").stat().st_size > 1000 and (out / "box_c.html").is_file()
    assert main(["eval", str(out), "--meshes", str(dataset / "meshdata"), "--no-sim", "--workers", "1",
                 "--out", str(tmp_path / "metrics.json"), "--quiet"]) == 0
    assert (tmp_path / "metrics.json").is_file()


def test_dgtr_commands_method_override_and_options_without_meaning(dataset, tmp_path, capsys):
    """method=NAME on the command line; DDG (one grasp, no refinement) through `dgtr predict`: --tta is a no-op
    (said so), --top-k > 1 and refine.iterations > 0 are one-line errors."""
    import dgtr
    from dgtr.cli import main

    cloud = tmp_path / "cloud.npy"
    np.save(cloud, GraspDataset(dataset, "val", n_points=256)[0]["points"].numpy().astype(np.float64))
    ov = ["method=ddg", "model.n_points=256", *[f"model.encoder.{k}={v}" for k, v in TINY_ENC.items()], *TINY["ddg"],
          "train.batch_size=2", "train.epochs=1", "train.progress=false"]
    run = tmp_path / "run"
    assert main(["train", "--data", str(dataset), "--out", str(run), *ov]) == 0
    assert dgtr.load(run / "checkpoint.pt").method == "ddg"
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), "--mesh", str(cloud), "--out", str(out),
                 "--no-pictures"]) == 0
    assert "cloud scale 1: 1 grasps" in (text := capsys.readouterr().out) and "(ddg: no refinement)" in text
    assert len(np.load(out / "cloud.npy", allow_pickle=True)) == 1
    for extra, needle in ((["--top-k", "4"], "sample.n = 1"), (["refine.iterations=5"], "no refinement"),
                          (["tta.iterations=5"], "no refinement"), (["model.hidden=[3]"], "after training")):
        assert main(["predict", "--checkpoint", str(run / "checkpoint.pt"), "--mesh", str(cloud), "--out", str(out),
                     "--no-pictures", *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, (extra, err)


def test_dgtr_train_unknown_method_is_one_line(dataset, tmp_path, capsys):
    from dgtr.cli import main

    bad, odd = tmp_path / "bad.yaml", tmp_path / "odd.yaml"
    bad.write_text("method: graspnet\n")
    odd.write_text("method: [ddg]\n")
    for argv, name in ((["--config", str(bad)], "'graspnet'"), (["method=graspnet"], "'graspnet'"),
                       (["--config", str(odd)], "ddg"), (["--config", str(REPO / "configs/methods/ddg.yaml"),
                                                          "method=graspnet"], "'graspnet'")):
        assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "run"), *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "unknown method" in err and name in err, err
    assert not (tmp_path / "run").exists()


def test_dgtr_configs_still_train_dgtr(dataset, tmp_path):
    """No `method` key (or method=dgtr): `dgtr train` is DGTR's as before, and its checkpoint loads as DGTR's."""
    import dgtr
    from dgtr.cli import main
    from dgtr.methods.predictor import MethodPredictor

    cfg_file = tmp_path / "dgtr.yaml"
    config.save(tiny_config(), cfg_file)
    assert methods.method_of(cfg_file) == "dgtr"
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_file), "--data", str(dataset), "--out", str(run), "--max-epochs", "1",
                 "method=dgtr"]) == 0
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert not methods.is_method_checkpoint(ck) and "method" not in ck["config"]
    pred = dgtr.load(run / "checkpoint.pt")
    from dgtr.predict import Predictor

    assert type(pred) is Predictor and not isinstance(pred, MethodPredictor)


def test_method_predictor_overrides(batch):
    """`dgtr predict`'s overrides on a method: sample.* (Table 2's passes) and refine.* (tta.* = refine.*)."""
    from dgtr.methods.predictor import MethodPredictor

    cfg = tiny("unidexgrasp")
    pred = MethodPredictor(methods.build(cfg, get_hand()), cfg)
    pred.set_overrides(["sample.passes=4", "tta.iterations=0"])
    assert pred.sample_config.passes == 4 and pred.tta_config.iterations == 0 and pred.refinement is None
    g = pred(batch["points"][0], tta=True)
    assert len(g) == 16 and len({tuple(r.flatten().tolist()) for r in g.rotation.float().round(decimals=5)}) <= 4
    with pytest.raises(InputError, match="passes"):
        pred.set_overrides(["sample.passes=3"])
    with pytest.raises(InputError, match="after training"):
        pred.set_overrides(["loss.ipdf_queries=3"])


def test_results_suite_with_grasps_keeps_the_split_objects_that_have_them(dataset, tmp_path):
    """benchmarks/results.py on a dataset still being synthesised: ``with_grasps`` drops split objects without a
    grasp file (prediction rows would otherwise predict them too)."""
    import shutil
    sys.path.insert(0, str(REPO / "benchmarks"))
    import results
    data = tmp_path / "partial"
    shutil.copytree(dataset, data)
    (data / "dataset" / "cyl_b.npy").unlink()
    suite = {"grasps": str(data / "dataset"), "meshes": str(data / "meshdata"), "split": f"{data}:train"}
    assert results.suite_objects(suite, Path("/"))[2] == ["box_a", "cyl_b"]
    assert results.suite_objects(dict(suite, with_grasps=True), Path("/"))[2] == ["box_a"]
