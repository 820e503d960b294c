"""Contact refinement (dgtr/refine.py): identity at start, batched == looped, gradients, the REF training stage."""
import json

import pytest
import torch

from dgtr.errors import InputError
from dgtr.hand import get_hand
from dgtr.model import ModelConfig, build_model
from dgtr.refine import ContactRefiner, refine_loss
from dgtr.train import read_checkpoint, train
from dgtr.tta import TTAConfig
from test_train import TINY_MODEL, dataset, make_dataset, tiny_config, weights  # noqa: F401 (fixture)


def tiny_model(refine=True):
    h = get_hand()
    torch.manual_seed(0)
    return build_model(ModelConfig(**TINY_MODEL, refine=refine), h.joint_lower, h.joint_upper).eval()


def randomised(ref: ContactRefiner) -> ContactRefiner:
    torch.manual_seed(1)
    torch.nn.init.normal_(ref.net[-1].weight, std=0.05)
    return ref


def test_untrained_refiner_returns_the_decoder_grasps():
    m = tiny_model()
    x = torch.randn(2, 256, 3) * 0.04
    out, coarse = m(x), m(x, refine=False)
    for k in ("rotation", "translation", "joints", "quaternion", "translation_norm", "joints_norm"):
        assert torch.allclose(out[k], coarse[k], atol=1e-6), k
        assert torch.equal(out["coarse"][k], coarse[k])
    assert "refiner.net.0.weight" in m.state_dict()
    assert "coarse" not in tiny_model(refine=False)(x)


def test_refiner_batched_equals_looped_and_stays_in_limits():
    m = tiny_model()
    randomised(m.refiner)
    x = torch.randn(3, 256, 3) * 0.04
    c = m(x, refine=False)
    R, t, q = m.refiner(x, c["rotation"], c["translation"], c["joints"])
    for b in range(3):
        Rb, tb, qb = m.refiner(x[b:b + 1], c["rotation"][b:b + 1], c["translation"][b:b + 1], c["joints"][b:b + 1])
        assert torch.allclose(Rb[0], R[b], atol=1e-5) and torch.allclose(tb[0], t[b], atol=1e-6)
        assert torch.allclose(qb[0], q[b], atol=1e-6)
    assert not torch.allclose(t, c["translation"])                       # it moved them...
    assert (t - c["translation"]).abs().max() <= 0.015 * 3 ** 0.5 + 1e-6  # ...by at most its step
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)
    assert bool((q >= m.joint_lower - 1e-6).all() and (q <= m.joint_upper + 1e-6).all())


def test_refine_loss_reaches_only_the_refiner():
    m = tiny_model()
    randomised(m.refiner)
    x = torch.randn(2, 256, 3) * 0.04
    c = m(x, refine=False)
    coarse = (c["rotation"].detach(), c["translation"].detach(), c["joints"].detach())
    loss, logs = refine_loss(x, coarse, m.refiner(x, *coarse), TTAConfig(tau=0.05))
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"loss", "pen", "dist", "spen"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.refiner.parameters())
    assert all(p.grad is None for n, p in m.named_parameters() if not n.startswith("refiner."))


def test_ref_stage_trains_the_refiner_alone_from_a_run_without_one(dataset, tmp_path):  # noqa: F811
    first = tiny_config(epochs_dmt=1, epochs_smw=0, epochs_smpt=0, val_every=0)
    train(first, dataset, tmp_path / "a")
    cfg = tiny_config(epochs_dmt=0, epochs_smw=0, epochs_smpt=0, epochs_refine=2)
    cfg.model.refine, cfg.train.init, cfg.tta.tau = True, str(tmp_path / "a" / "checkpoint.pt"), 0.05
    model = train(cfg, dataset, tmp_path / "b")
    start = weights(read_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"])
    end = weights(model)
    for k, v in start.items():  # the decoder is frozen, bit for bit (BatchNorm statistics included)
        assert torch.equal(v, end[k]), k
    assert any(not torch.equal(end[k], torch.zeros_like(end[k])) for k in end if k.startswith("refiner.net.6"))
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert [e["stage"] for e in summary["epochs"]] == ["ref", "ref"]
    assert {"pen", "dist", "spen"} <= set(summary["epochs"][0]["train"])
    assert not (tmp_path / "b" / "static_assignment.json").exists()   # no matching: no ground truth needed

    bad = tiny_config(epochs_refine=1)
    with pytest.raises(InputError, match="model.refine"):
        train(bad, dataset, tmp_path / "c")


def test_ref_stage_resumes_bit_exact(dataset, tmp_path):  # noqa: F811
    cfg = tiny_config(epochs_dmt=1, epochs_smw=0, epochs_smpt=0, epochs_refine=2, val_every=0)
    cfg.model.refine, cfg.tta.tau = True, 0.05
    full = weights(train(cfg, dataset, tmp_path / "a"))
    for n in (2, 1):  # killed after the DMT epoch and after the first REF epoch
        train(cfg, dataset, tmp_path / "b", resume=(tmp_path / "b" / "checkpoint.pt").exists(), max_epochs=n)
    resumed = weights(read_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"])
    assert read_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 3
    for k, v in full.items():
        assert torch.equal(v, resumed[k]), k
