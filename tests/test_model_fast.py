"""The fast DGTR forward (dgtr/model.py) against the plain one it replaced (benchmarks/reference_model.py).

Equal outputs within 1e-4 on the bundled checkpoint and on random-init models, in eval and in train mode (same
gradients, same BatchNorm running statistics), and the pieces it rests on: the native FPS equals fpsample's plain
FPS, FPS of an FPS prefix is that prefix, the KD-tree kNN finds the nearest points.  Timings: benchmarks/bench_model.py.
"""
import copy
import sys
from pathlib import Path

import fpsample
import numpy as np
import pytest
import torch

import dgtr.model as M
from dgtr.model import ModelConfig, build_model
from dgtr.predict import DEFAULT_CHECKPOINT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reference_model import reference_forward  # noqa: E402

from test_model import LOWER, UPPER, cloud, small_cfg  # noqa: E402

KEYS = ("joints", "joints_norm", "translation", "translation_norm", "quaternion", "rotation")


def assert_outputs_close(a: dict, b: dict, atol: float = 1e-4):
    assert len(a["aux"]) == len(b["aux"])
    for x, y in zip([a, *a["aux"]], [b, *b["aux"]]):
        for k in KEYS:
            torch.testing.assert_close(x[k], y[k], atol=atol, rtol=0, msg=k)


def object_cloud(n=4096, shuffle_seed=None) -> torch.Tensor:
    """Points of a rounded box (what dgtr predict feeds the network, FPS-ordered), optionally shuffled so that the
    network's own FPS has work to do."""
    import trimesh

    from dgtr.objects import ObjectModel

    box = trimesh.creation.box((0.10, 0.07, 0.05))
    ball = trimesh.creation.icosphere(3, radius=0.045)
    obj = ObjectModel([trimesh.convex.convex_hull(trimesh.util.concatenate([box, ball]).vertices)], code="t")
    pts = torch.as_tensor(obj.sample_points(n))
    if shuffle_seed is not None:
        pts = pts[torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))]
    return pts


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no bundled checkpoint")
def test_bundled_checkpoint_matches_reference():
    import dgtr

    model = dgtr.load("default").model.eval()
    pts = torch.stack([object_cloud(), object_cloud(shuffle_seed=1)])
    with torch.no_grad():  # the decoder's grasps (the reference has no contact refiner: tests/test_refine.py)
        assert_outputs_close(model(pts, refine=False), reference_forward(model, pts))
        assert_outputs_close(model(pts[1:], refine=False), reference_forward(model, pts[1:]))


@pytest.mark.parametrize("small", [False, True])
def test_random_init_model_matches_reference_in_eval(small):
    torch.manual_seed(0)
    model = build_model(small_cfg() if small else ModelConfig(), LOWER, UPPER)
    # non-trivial BatchNorm statistics and affine (negative scales too), so folding them is really tested
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(-1.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    pts = cloud(2, 512 if small else 4096, seed=3) * torch.tensor([1.0, 2.0, 0.5])
    with torch.no_grad():
        assert_outputs_close(model(pts), reference_forward(model, pts))


def test_train_mode_matches_reference_outputs_gradients_and_running_stats():
    torch.manual_seed(0)
    fast = build_model(small_cfg(), LOWER, UPPER).train()
    ref = copy.deepcopy(fast)
    pts = cloud(3, 512, seed=4)

    def run(model, fwd):
        torch.manual_seed(1)  # the same dropout masks: the decoder draws them in the same order
        out = fwd(model, pts)
        loss = sum((o["joints_norm"] * (i + 1)).sum() + o["quaternion"][..., 1].sum() + o["translation"].sum()
                   for i, o in enumerate([out, *out["aux"]]))
        loss.backward()
        return out

    a = run(fast, lambda m, p: m(p))
    b = run(ref, reference_forward)
    assert_outputs_close(a, b, atol=1e-5)
    ga, gb = dict(fast.named_parameters()), dict(ref.named_parameters())
    for name, p in ga.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, gb[name].grad, atol=1e-4, rtol=1e-3, msg=name)
    for (name, x), (_, y) in zip(fast.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, msg=name)


def test_compiled_training_path_matches_eager():
    """``train.compile`` (DGTR.compile_encoder): the fused kernels reassociate the BatchNorm sums (outputs ~1e-5
    apart), which flips the winner of the few max-pools whose two largest rows are that close (and a few ReLUs
    downstream); each flip sends one channel's gradient through another row, so gradients are compared as whole
    tensors (relative norm, measured ≤ 2.1 % on this small model), the running statistics as values."""
    torch.manual_seed(0)
    model = build_model(small_cfg(dropout=0.0), LOWER, UPPER).train()
    eager = copy.deepcopy(model)
    if not model.compile_encoder():
        pytest.skip("no C++ compiler for torch.compile")
    pts = cloud(3, 512, seed=4)
    outs = []
    for m in (model, eager):
        out = m(pts)
        sum((o["joints_norm"] * (i + 1)).sum() + o["translation"].sum() for i, o in enumerate([out, *out["aux"]])).backward()
        outs.append(out)
    assert_outputs_close(*outs, atol=1e-4)
    for (name, p), (_, q) in zip(model.named_parameters(), eager.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        assert p.grad is None or (p.grad - q.grad).norm() <= 5e-2 * q.grad.norm() + 1e-4, name
    for (name, x), (_, y) in zip(model.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4, msg=name)


def test_native_fps_equals_plain_fps_and_falls_back(monkeypatch):
    rng = np.random.default_rng(0)
    clouds = [rng.random((3000, 3)).astype(np.float32), rng.normal(size=(777, 3)).astype(np.float32),
              object_cloud(shuffle_seed=2).numpy()]
    for x in clouds:
        n = min(1024, len(x) // 3)
        assert np.array_equal(M._fps_native(x, n), fpsample.fps_sampling(x, n, start_idx=0))
    # a bucket FPS that does not start at point 0 (its start index is taken after its own reordering): plain FPS
    monkeypatch.setattr(fpsample, "bucket_fps_kdline_sampling", lambda pts, n, h, start_idx: np.arange(1, n + 1))
    assert np.array_equal(M._fps_native(clouds[0], 100), fpsample.fps_sampling(clouds[0], 100, start_idx=0))


def test_fps_of_a_farthest_point_prefix_is_that_prefix():
    """Why the encoder samples once: each later level's centres are the first S of its (FPS-ordered) input."""
    x = cloud(1, 2048, seed=5)[0] * torch.tensor([1.0, 0.6, 1.4])
    ordered = x[M.farthest_point_sample(x, 1024)]
    for n in (512, 128, 7):
        assert torch.equal(M.farthest_point_sample(ordered, n), torch.arange(n))
        assert torch.equal(M._fps_torch(ordered[None], n)[0], torch.arange(n))


def test_knn_finds_the_nearest_points():
    x = cloud(2, 1500, seed=6).double() * torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    centres = x[:, :300]
    idx = M.knn(centres, x, 16)
    assert idx.shape == (2, 300, 16) and idx.dtype == torch.long
    d = torch.cdist(centres, x)
    got = torch.gather(d, 2, idx).sort(-1).values
    torch.testing.assert_close(got, d.topk(16, dim=-1, largest=False).values, atol=1e-12, rtol=0)
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()  # distinct points
    assert M.knn(centres[:, :5], x[:, :10], 32).shape == (2, 5, 10)  # k capped at the number of points


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = build_model(ModelConfig(), LOWER, UPPER).eval()
    pts = cloud(2, 4096, seed=7)
    with torch.no_grad():
        cpu = model(pts)
        gpu = model.cuda()(pts.cuda())
    assert_outputs_close(cpu, {k: (v.cpu() if k != "aux" else [{kk: vv.cpu() for kk, vv in a.items()} for a in v])
                               for k, v in gpu.items()})
