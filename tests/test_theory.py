"""theory/: Proposition 1's bound holds and is tight where it applies, all four controls exceed it; rank_by_depth
refuses what it cannot analyse."""
import os
import sys

import pytest
import torch

import train
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


@pytest.mark.parametrize('control', ['full_rank', 'adam', 'post_relu', 'nonzero_init'])
def test_every_control_exceeds_the_bound(control):
    rows = prop1.run(small(control=control))
    assert all(rank > bound for _, rank, bound in rows), (control, rows)


def test_effective_rank_by_energy():
    P = torch.zeros(4, 3, 3)
    P[0, 0, 0], P[1, 1, 1], P[2, 2, 2] = 10.0, 3.0, 0.1  # singular values 10, 3, 0.1
    assert rank_by_depth.effective_rank(P, 0.90) == 1  # 100 / 109.01 = 0.917
    assert rank_by_depth.effective_rank(P, 0.99) == 2
    assert rank_by_depth.effective_rank(torch.zeros(2, 2, 2), 0.9) == 0


def test_rank_by_depth_refuses_what_it_cannot_analyse(tmp_path, capsys):
    train.main(['--method', 'lp', '--model', 'test_vit', '--no-pretrained', '--dataset', 'synthetic', '--img-size',
                '32', '--epochs', '1', '--train-per-class', '4', '--out', str(tmp_path / 'lp')])
    (tmp_path / 'empty').mkdir()
    for run, fragment in [(tmp_path / 'lp', 'is a lp run'), (tmp_path / 'empty', 'not a trained run'),
                          (tmp_path / 'missing', 'not a trained run')]:
        with pytest.raises(SystemExit) as e:
            rank_by_depth.main(['--run', str(run)])
        assert e.value.code == 2 and fragment in capsys.readouterr().err
    assert not (tmp_path / 'lp' / 'rank_by_depth.md').exists()
    with pytest.raises(SystemExit):
        rank_by_depth.main(['--epochs', 'nan'])
    with pytest.raises(SystemExit):  # a training flag beside --run would be ignored: refused instead
        rank_by_depth.main(['--run', str(tmp_path / 'lp'), '--epochs', '5'])
    assert '--epochs set the run trained here' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --out holds another run than the one asked for: not continued silently
        rank_by_depth.main(['--out', str(tmp_path / 'lp'), '--epochs', '5'])
    assert 'holds another run' in capsys.readouterr().err
