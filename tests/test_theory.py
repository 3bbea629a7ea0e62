"""theory/: Proposition 1's bound holds and is tight where it applies, and the controls exceed it."""
import os
import sys

import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'theory'))
import prop1_rank_bound as prop1  # noqa: E402
import rank_by_depth  # noqa: E402


def small(**kw):
    return prop1.Setting('test', **{**dict(c=16, side=6, L=3, r=1, steps=50, dtype=torch.float32), **kw})


def test_the_bound_holds_and_is_tight_in_a_valid_setting():
    rows = prop1.run(small())
    assert [bound for _, _, bound in rows] == [4, 3, 2]  # (1 + L - i) r + 1
    assert all(bound < min(c, h * w) for (c, h, w), _, bound in rows)  # the check can fail
    assert [rank for _, rank, _ in rows] == [4, 3, 2]  # rank <= bound, with equality: tight


def test_controls_exceed_the_bound():
    for control in ('full_rank', 'adam'):
        rows = prop1.run(small(control=control))
        assert all(rank > bound for _, rank, bound in rows), (control, rows)


def test_effective_rank_by_energy():
    P = torch.zeros(4, 3, 3)
    P[0, 0, 0], P[1, 1, 1], P[2, 2, 2] = 10.0, 3.0, 0.1  # singular values 10, 3, 0.1
    assert rank_by_depth.effective_rank(P, 0.90) == 1  # 100 / 109.01 = 0.917
    assert rank_by_depth.effective_rank(P, 0.99) == 2
    assert rank_by_depth.effective_rank(torch.zeros(2, 2, 2), 0.9) == 0
