import dataclasses
import math

import numpy as np
import pytest
import torch

from dgtr.config import load
from dgtr.errors import InputError
from dgtr.model import DGTR, ModelConfig, _fps_torch, build_model, farthest_point_sample

J = 22
LOWER = torch.tensor([-0.349, 0, 0, 0] * 3 + [0, -0.349, 0, 0, 0] + [-1.047, 0, -0.209, -0.524, -1.571])
UPPER = torch.tensor([0.349, 1.571, 1.571, 1.571] * 3 + [0.785, 0.349, 1.571, 1.571, 1.571]
                     + [1.047, 1.222, 0.209, 0.524, 0.0])


def small_cfg(**kw) -> ModelConfig:
    cfg = ModelConfig(n_points=512, sa_centres=[128, 64, 32], sa_k=[16, 8, 8], sa_mlps=[[16, 32], [32, 64], [64, 64]],
                      proj_hidden=[64], pos_hidden=[32], d_model=64, n_layers=3, n_heads=4, ffn_dim=64,
                      head_hidden=32, n_queries=8)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def cloud(B, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=g)
    return 0.05 * x / x.norm(dim=-1, keepdim=True)  # points on a 5 cm sphere


def check_ranges(out, Q, B, t_range):
    assert out["joints"].shape == (B, Q, J) and out["joints_norm"].shape == (B, Q, J)
    assert out["translation"].shape == (B, Q, 3) and out["translation_norm"].shape == (B, Q, 3)
    assert out["quaternion"].shape == (B, Q, 4) and out["rotation"].shape == (B, Q, 3, 3)
    assert ((out["joints"] >= LOWER - 1e-6) & (out["joints"] <= UPPER + 1e-6)).all()
    assert (out["translation"].abs() <= t_range + 1e-6).all()
    for k in ("joints_norm", "translation_norm"):
        assert ((out[k] >= 0) & (out[k] <= 1)).all()
    torch.testing.assert_close(out["quaternion"].norm(dim=-1), torch.ones(B, Q))
    R = out["rotation"]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand(B, Q, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(B, Q), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["joints"], LOWER + out["joints_norm"] * (UPPER - LOWER))


def test_full_default_model_parameters_and_outputs():
    cfg = ModelConfig()
    # the default departs from DESIGN §3 only in the decoder's starting query content and the position-MLP input scale
    assert dataclasses.replace(cfg, query_content="zero", pos_scale=1.0) == ModelConfig.reference()
    model = build_model(cfg, LOWER, UPPER).eval()
    n = sum(p.numel() for p in model.parameters())
    assert 3.6e6 < n < 4.2e6, n  # DESIGN §3: ~3.9 M (this implementation: 3,857,245 + 4,096 query content)
    with torch.no_grad():
        out = model(cloud(2, 4096))
    check_ranges(out, 16, 2, 0.22)
    assert len(out["aux"]) == 3
    for a in out["aux"]:
        check_ranges(a, 16, 2, 0.22)
    assert model.joint_lower.shape == (J,) and "joint_lower" in dict(model.named_buffers())


def test_learned_query_content_separates_queries_without_object_detail():
    """When the encoder tokens carry no distinguishing detail (here: every point the same), zero query content (DETR)
    gives all queries one output whatever the attention does; learned content still gives distinct grasps.  That
    degenerate state is where the bundled training collapsed with zero content (docs/training.md)."""
    pts = torch.full((2, 512, 3), 0.01)
    spread = {}
    for content in ("zero", "learned"):
        torch.manual_seed(0)
        model = build_model(small_cfg(query_content=content), LOWER, UPPER).eval()
        with torch.no_grad():
            spread[content] = model(pts)["joints_norm"].std(1).mean().item()
    assert spread["zero"] < 1e-5 and spread["learned"] > 1e-2, spread


def test_small_model_ranges_and_aux_switch():
    model = build_model(small_cfg(t_range=0.3), LOWER, UPPER)
    out = model(cloud(3, 512))
    check_ranges(out, 8, 3, 0.3)
    assert len(out["aux"]) == 2
    out = build_model(small_cfg(aux_loss=False), LOWER, UPPER)(cloud(1, 512))
    assert out["aux"] == []


def test_batched_equals_per_object_eval():
    torch.manual_seed(0)
    model = build_model(small_cfg(), LOWER, UPPER).eval()
    pts = cloud(3, 512, seed=1) * torch.tensor([1.0, 2.0, 0.5])
    with torch.no_grad():
        batched = model(pts)
        for b in range(3):
            one = model(pts[b:b + 1])
            for k in ("joints", "translation", "quaternion"):
                torch.testing.assert_close(batched[k][b:b + 1], one[k], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched["aux"][0]["joints"][b:b + 1], one["aux"][0]["joints"],
                                       atol=1e-5, rtol=1e-5)
        # deterministic: FPS starts at index 0, no randomness in eval
        torch.testing.assert_close(model(pts)["joints"], batched["joints"])


@pytest.mark.parametrize("content, inert", [("learned", []), ("zero", ["layers.0.norms.0.weight"])])
def test_gradients_reach_every_parameter(content, inert):
    # With zero query content (DETR) layer 0's self-attention sees identical zero values and its first LayerNorm a zero
    # input: their weights get no gradient until the biases move.  One optimiser step fixes all but layer 0's first
    # LayerNorm *weight*, which multiplies LayerNorm(0) = 0 and is inert by construction.  Learned content: none inert.
    torch.manual_seed(0)
    model = build_model(small_cfg(query_content=content), LOWER, UPPER).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        out = model(cloud(2, 512))
        loss = sum(out[k].sum() * (i + 1) for i, k in enumerate(("joints_norm", "translation_norm", "quaternion")))
        loss = loss + sum((a["joints_norm"] ** 2).sum() + (a["quaternion"] * torch.tensor([1.0, 2, 3, 4])).sum()
                          for a in out["aux"])
        loss.backward()
        opt.step()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert no_grad == inert


@pytest.mark.parametrize("bad, why", [
    (torch.full((1, 100, 3), float("nan")), "NaN"),
    (torch.zeros(1, 63, 3), "N >= 64"),
    (torch.zeros(1, 100, 2), "shape"),
    (torch.zeros(100, 3), "shape"),
    (torch.zeros(1, 100, 3, dtype=torch.long), "floating"),
    (np.zeros((1, 100, 3), np.float32), "torch.Tensor"),
    (torch.zeros(0, 100, 3), "B >= 1"),
])
def test_bad_input_raises_input_error_naming_points(bad, why):
    model = build_model(small_cfg(), LOWER, UPPER)
    with pytest.raises(InputError, match="points") as e:
        model(bad)
    assert why in str(e.value)


def test_few_points_still_work():
    # N smaller than the first layer's 1024 centres: all points become centres, k is capped
    model = build_model(ModelConfig(), LOWER, UPPER).eval()
    with torch.no_grad():
        out = model(cloud(1, 64).double())  # float64 input is cast to the model's dtype
    check_ranges(out, 16, 1, 0.22)


def test_fps_native_matches_torch_and_starts_at_zero():
    pts = torch.rand(3, 700, 3)
    batched = _fps_torch(pts, 50)  # the vectorised GPU path, run here on CPU
    for b in range(3):
        a = farthest_point_sample(pts[b], 50)
        assert a[0] == 0 and a.dtype == torch.long and len(set(a.tolist())) == 50
        assert torch.equal(a, batched[b])
    assert torch.equal(farthest_point_sample(pts[0, :30], 50), torch.arange(30))


def test_config_yaml_overrides_and_checks():
    cfg = load(ModelConfig, overrides=["d_model=128", "sa_k=[16,8,4]", "t_range=0.25"])
    assert cfg.d_model == 128 and cfg.sa_k == [16, 8, 4] and math.isclose(cfg.t_range, 0.25)
    with pytest.raises(InputError):
        DGTR(ModelConfig(rotation="6d"), LOWER, UPPER)
    with pytest.raises(InputError):
        DGTR(ModelConfig(d_model=250), LOWER, UPPER)
    with pytest.raises(InputError):
        DGTR(ModelConfig(), UPPER, LOWER)
