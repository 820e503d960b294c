"""dgtr.geometry: the one gather and nearest-point search every module uses."""
import torch

from dgtr.geometry import gather, knn, nearest_distance


def test_gather_contiguous_and_expanded_agree_with_torch_gather():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 50, 4, generator=g, requires_grad=True)
    idx = torch.randint(50, (3, 7, 5), generator=g)
    ref = torch.stack([x[0][idx[b]] for b in range(3)])                       # (3, 7, 5, 4) by plain indexing
    expanded, copied = x.expand(3, -1, -1), x.expand(3, -1, -1).contiguous()
    assert not expanded.is_contiguous() and copied.is_contiguous()
    for src in (expanded, copied):
        out = gather(src, idx)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        (gr,) = torch.autograd.grad(out.sum(), x)
        (gref,) = torch.autograd.grad(ref.sum(), x, retain_graph=True)
        torch.testing.assert_close(gr, gref)


def test_shared_cloud_search_equals_per_row_search():
    g = torch.Generator().manual_seed(1)
    cloud = torch.randn(1, 300, 3, generator=g)
    q = torch.randn(4, 20, 3, generator=g)
    shared = knn(q, cloud.expand(4, -1, -1), 3)                              # one k-d tree for all rows
    per_row = knn(q, cloud.expand(4, -1, -1).contiguous(), 3, owner=torch.arange(4) * 0)
    brute = knn(q, cloud, 3, method="brute")
    assert torch.equal(shared, per_row) and torch.equal(shared, brute)
    d = nearest_distance(q, cloud.expand(4, -1, -1))
    torch.testing.assert_close(d, torch.cdist(q, cloud.expand(4, -1, -1)).amin(-1), rtol=0, atol=1e-5)
