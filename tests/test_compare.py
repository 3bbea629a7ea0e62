"""compare.py runs methods x seeds through train.py and resumes; cka.py measures linear CKA per block."""
import json
import os

import pytest
import torch

import cka
import compare
import train
from conftest import ROOT

TINY = ['--model', 'test_vit', '--dataset', 'synthetic', '--img-size', '32', '--epochs', '1', '--train-per-class', '8',
        '--batch-size', '16', '--extra', '--no-pretrained --speed-reps 0']


def test_compare_writes_the_table_and_skips_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = compare.main(['--protocol', 'offline-cifar10', '--tag', 't', '--methods', 'lp,lorvp', '--seeds', '0,1',
                         *TINY])
    assert [r['method'] for r in rows] == ['lp', 'lorvp'] and all(len(r['accs']) == 2 for r in rows)
    md = (tmp_path / 'results' / 'offline-cifar10-t.md').read_text()
    assert '| lorvp |' in md and '± ' in md
    saved = json.loads((tmp_path / 'results' / 'offline-cifar10-t.json').read_text())
    assert saved['settings']['model'] == 'test_vit' and len(saved['runs']) == 4
    capsys.readouterr()
    compare.main(['--protocol', 'offline-cifar10', '--tag', 't', '--methods', 'lp,lorvp', '--seeds', '0,1', *TINY])
    assert capsys.readouterr().out.count('done before, read back') == 4
    changed = [a if a != '1' else '2' for a in TINY]  # --epochs 2: the old runs must not pass for these
    with pytest.raises(SystemExit, match='other settings'):
        compare.main(['--protocol', 'offline-cifar10', '--tag', 't', '--methods', 'lp', '--seeds', '0', *changed])


def test_compare_refuses_untagged_changes_and_unknown_methods(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        compare.main(['--protocol', 'offline-cifar10', '--img-size', '96'])
    with pytest.raises(SystemExit):
        compare.main(['--protocol', 'offline-cifar10', '--methods', 'lp,nope', '--tag', 'x'])
    assert not (tmp_path / 'results').exists()


def test_compare_tunes_lr_on_validation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compare.main(['--protocol', 'offline-cifar10', '--tag', 'tune', '--methods', 'lp', '--seeds', '0',
                  '--tune-lr', '0.1,10', *TINY])
    saved = json.loads((tmp_path / 'results' / 'offline-cifar10-tune.json').read_text())
    assert set(map(float, saved['tuning']['lp'])) == {0.1, 10.0}  # json keys are strings
    assert saved['tune_wall_s'] > 0
    assert 'min of lr tuning' in (tmp_path / 'results' / 'offline-cifar10-tune.md').read_text()
    chosen = saved['lr_multipliers']['lp']
    run = 'lp-s0' if chosen == 1 else f'lp-lr{chosen:g}-s0'
    config = json.loads((tmp_path / 'runs' / 'offline-cifar10-tune' / run / 'config.json').read_text())
    assert config['args']['lr'] == pytest.approx(train.RECIPES['lp']['lr'] * chosen)


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 20, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    gram = lambda A: A @ A.T
    assert cka.linear_cka(gram(X), gram(X)) == pytest.approx(1.0)
    assert cka.linear_cka(gram(X), gram(3.0 * X @ Q)) == pytest.approx(1.0)  # rotation and scale invariant
    Y = torch.randn(50, 20, generator=g, dtype=torch.float64)
    assert cka.linear_cka(gram(X), gram(Y)) < 0.6


def test_cka_on_a_finished_run(tmp_path):
    args = ['--model', 'test_vit', '--no-pretrained', '--dataset', 'synthetic', '--img-size', '32', '--epochs', '1',
            '--batch-size', '16', '--speed-reps', '0', '--lr', '0.5']
    train.main([*args, '--method', 'lotep_cp', '--rho', '1', '--out', str(tmp_path / 'lotep')])
    train.main([*args, '--method', 'ft', '--out', str(tmp_path / 'ft')])
    rows = cka.main([str(tmp_path / 'lotep'), '--ft', str(tmp_path / 'ft'), '--images', '40'])
    assert len(rows) == 6 and all(0 < r['cka_base'] <= 1 + 1e-9 and 0 < r['cka_ft'] <= 1 + 1e-9 for r in rows)
    assert any(r['cka_base'] < 0.9999 for r in rows)  # the trained prompts changed the features
    assert os.path.getsize(tmp_path / 'lotep' / 'cka.png') > 1000


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(ROOT, '.ci', 'run')).read().strip().splitlines()[-1]
    assert ci == 'python -m pytest -q'
    assert f'`{ci}`' in open(os.path.join(ROOT, 'README.md')).read()
