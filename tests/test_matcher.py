import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgtr.errors import FileFormatError, InputError
from dgtr.matcher import (MatcherConfig, check_assignment, from_query_assignment, hungarian_match, load_assignments,
                          match_cost, save_assignments, to_query_assignment)


def grasps(n, seed, batch=None):
    g = torch.Generator().manual_seed(seed)
    lead = (n,) if batch is None else (batch, n)
    return {"joints_norm": torch.rand(*lead, 22, generator=g), "translation_norm": torch.rand(*lead, 3, generator=g),
            "quaternion": F.normalize(torch.randn(*lead, 4, generator=g), dim=-1)}


def test_cost_formula_and_quaternion_sign():
    p, g = grasps(3, 0), grasps(4, 1)
    cfg = MatcherConfig(w_joints=1.0, w_trans=2.0, w_rot=2.0)
    c = match_cost(p, g, cfg)
    assert c.shape == (3, 4)
    i, j = 2, 1
    want = ((p["joints_norm"][i] - g["joints_norm"][j]).abs().sum()
            + 2 * (p["translation_norm"][i] - g["translation_norm"][j]).abs().sum()
            + 2 * (1 - (p["quaternion"][i] @ g["quaternion"][j]).abs()))
    torch.testing.assert_close(c[i, j], want)
    flipped = dict(g, quaternion=-g["quaternion"])
    torch.testing.assert_close(match_cost(p, flipped, cfg), c)
    assert (match_cost(g, g).diagonal().abs() < 1e-6).all()


def brute_force(cost: np.ndarray) -> float:
    Q, M = cost.shape
    if Q <= M:
        return min(sum(cost[i, c[i]] for i in range(Q)) for c in itertools.permutations(range(M), Q))
    return min(sum(cost[r[j], j] for j in range(M)) for r in itertools.permutations(range(Q), M))


@pytest.mark.parametrize("Q, M", [(5, 5), (5, 3), (3, 5), (4, 1)])
def test_hungarian_equals_brute_force(Q, M):
    p = grasps(Q, 2, batch=1)
    g = grasps(M, 3)
    (pi, gi), = hungarian_match(p, [g])
    cost = match_cost({k: v[0] for k, v in p.items()}, g).numpy()
    assert len(pi) == len(gi) == min(Q, M)
    assert len(set(pi.tolist())) == len(pi) and len(set(gi.tolist())) == len(gi)
    assert torch.equal(pi, torch.sort(pi).values)
    np.testing.assert_allclose(cost[pi.numpy(), gi.numpy()].sum(), brute_force(cost), rtol=1e-6)


def test_batch_permutation_of_gt_and_empty_gt():
    p = grasps(6, 4, batch=3)
    g0, g1 = grasps(4, 5), grasps(9, 6)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    g1p = {k: v[perm] for k, v in g1.items()}
    empty = {k: v[:0] for k, v in g0.items()}
    m = hungarian_match(p, [g0, g1, empty])
    mp = hungarian_match(p, [g0, g1p, empty])
    assert len(m[0][0]) == 4 and len(m[1][0]) == 6 and len(m[2][0]) == 0
    # the same queries are matched to the same grasps, whatever their order in the file
    assert torch.equal(m[1][0], mp[1][0]) and torch.equal(m[1][1], perm[mp[1][1]])
    with pytest.raises(InputError, match="gt_list"):
        hungarian_match(p, [g0])
    bad = dict(g0, joints_norm=torch.full_like(g0["joints_norm"], float("nan")))
    with pytest.raises(InputError, match="NaN"):
        hungarian_match(p, [bad, g1, g0])


def test_query_assignment_round_trip_and_files(tmp_path):
    match = (torch.tensor([0, 2, 5]), torch.tensor([3, 0, 1]))
    a = to_query_assignment(match, 6)
    assert a.tolist() == [3, -1, 0, -1, -1, 1]
    pi, gi = from_query_assignment(a)
    assert pi.tolist() == [0, 2, 5] and gi.tolist() == [3, 0, 1]
    assert check_assignment(a, 6, 4).tolist() == a.tolist()
    for bad, why in (([0, 1], "6 integers"), ([0, 0, -1, -1, -1, -1], "several"), ([4, -1, -1, -1, -1, -1], "-1 or in"),
                     ([-2, -1, -1, -1, -1, -1], "-1 or in"), (np.zeros(6), "integers")):
        with pytest.raises(InputError, match=why):
            check_assignment(bad, 6, 4)
    path = tmp_path / "static.json"
    save_assignments(path, {"objA@0.06": a, "objB@0.1": np.arange(6)})
    back = load_assignments(path)
    assert back.keys() == {"objA@0.06", "objB@0.1"} and back["objA@0.06"].tolist() == a.tolist()
    path.write_text("[1, 2]")
    with pytest.raises(FileFormatError):
        load_assignments(path)


def test_fill_nearest_supervises_every_query():
    """fill='nearest': the Hungarian pairs are kept, every other query gets its cheapest ground truth; with M >= Q or
    M = 0 nothing changes; the static assignment that results passes check_assignment only with shared=True."""
    p, g = grasps(6, 7, batch=1), grasps(3, 8)
    plain, = hungarian_match(p, [g])
    (pi, gi), = hungarian_match(p, [g], MatcherConfig(fill="nearest"))
    assert pi.tolist() == list(range(6))
    cost = match_cost({k: v[0] for k, v in p.items()}, g)
    assert torch.equal(gi[plain[0]], plain[1])
    rest = [i for i in range(6) if i not in plain[0].tolist()]
    assert torch.equal(gi[rest], cost[rest].argmin(1))
    a = to_query_assignment((pi, gi), 6)
    with pytest.raises(InputError, match="several queries"):
        check_assignment(a, 6, 3)
    assert check_assignment(a, 6, 3, shared=True).tolist() == a.tolist()
    for m in (6, 9, 0):
        g2 = grasps(m, 9)
        assert [x.tolist() for x in hungarian_match(p, [g2], MatcherConfig(fill="nearest"))[0]] == \
            [x.tolist() for x in hungarian_match(p, [g2])[0]]
    with pytest.raises(InputError, match="fill"):
        MatcherConfig(fill="all").check()
