"""compare.py runs arms x seeds through train.py, never destroys a table, names its failures, tunes on validation,
computes paired statistics; cka.py measures linear CKA per block."""
import dataclasses
import fcntl
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest
import torch

from tools import cka
from tools import compare
from tools import protocols
from tools import stats
from tools import tables
import train
from conftest import ROOT, SHARED_DATA
from flags import parse

TINY = ['--model', 'test_vit', '--dataset', 'synthetic', '--img-size', '32', '--epochs', '1', '--train-per-class', '8',
        '--batch-size', '16', '--precision', 'fp32', '--extra=--no-pretrained', '--bench-reps', '0']


def results(tmp_path, name):
    return json.loads((tmp_path / 'results' / f'{name}.json').read_text())


@pytest.mark.e2e
def test_compare_writes_the_table_merges_subsets_and_skips_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = compare.main(['--protocol', 'offline-cifar10', '--tag', 't', '--methods', 'lp,lorvp', '--seeds', '0',
                         *TINY, '--no-tune'])
    assert [r['arm'] for r in rows] == ['lp', 'lorvp'] and all(len(r['accs']) == 1 for r in rows)
    md = (tmp_path / 'results' / 'offline-cifar10-t.md').read_text()
    assert '| lorvp |' in md and '(1)' in md
    assert 'Changed for this table**: --model test_vit;' in md and 'no tuning' in md  # a tagged table says how
    assert results(tmp_path, 'offline-cifar10-t')['settings']['model'] == 'test_vit'
    assert (tmp_path / 'results' / 'offline-cifar10-t-params.png').stat().st_size > 1000
    capsys.readouterr()
    # a subset (one arm, a new seed and an old one) merges into the table; nothing of the two-arm table is lost
    compare.main(['--protocol', 'offline-cifar10', '--tag', 't', '--methods', 'lp', '--seeds', '0,1', *TINY,
                  '--no-tune'])
    assert capsys.readouterr().out.count('done before, read back') == 1
    saved = results(tmp_path, 'offline-cifar10-t')
    assert len(saved['runs']) == 3 and saved['arms'] == ['lp', 'lorvp'] and saved['seeds'] == [0, 1]
    md = (tmp_path / 'results' / 'offline-cifar10-t.md').read_text()
    assert '| lorvp |' in md and '± ' in md  # lp now has two seeds
    changed = [a if a != '1' else '2' for a in TINY]  # --epochs 2: neither the old runs nor the table are these
    with pytest.raises(SystemExit, match='other settings'):
        compare.main(['--protocol', 'offline-cifar10', '--tag', 't', '--methods', 'lp', '--seeds', '0', *changed,
                      '--no-tune'])
    assert len(results(tmp_path, 'offline-cifar10-t')['runs']) == 3


def test_compare_validates_its_arguments_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv, message in [(['--protocol', 'offline-cifar10', '--img-size', '96'], None),
                          (['--protocol', 'offline-cifar10', '--methods', 'lp,nope', '--tag', 'x'], None),
                          (['--protocol', 'offline-cifar10', '--seeds', '0,one'], '--seeds'),
                          (['--protocol', 'offline-cifar10', '--seeds', '-1'], '--seeds'),
                          (['--protocol', 'offline-tiny', '--tag', 'x', '--tune-lr', '0.1,abc'], '--tune-lr'),
                          (['--protocol', 'offline-tiny', '--tag', 'x', '--tune-lr', 'nan'], '--tune-lr'),
                          (['--protocol', 'offline-cifar10', '--jobs', '0'], None),
                          (['--protocol', 'offline-cifar10', '--methods', ''], None),
                          (['--protocol', 'offline-cifar10', '--tag', 'a/b'], None),
                          (['--protocol', 'offline-cifar10', '--tag', 'x', '--extra=--lr nan'],
                           'arm lp: train.py refuses'),
                          (['--protocol', 'offline-cifar10', '--tag', 'x', '--model', 'resnet19'], 'resnet18')]:
        with pytest.raises(SystemExit) as e:
            compare.main(argv)
        assert e.value.code != 0 and (message is None or message in str(e.value.code))
    assert not (tmp_path / 'results').exists() and not (tmp_path / 'runs').exists()
    (tmp_path / 'afile').write_text('x')
    with pytest.raises(SystemExit):
        compare.main(['--protocol', 'offline-cifar10', '--runs-dir', str(tmp_path / 'afile')])
    assert (tmp_path / 'afile').read_text() == 'x' and not (tmp_path / 'results').exists()


@pytest.mark.e2e
def test_failed_runs_make_a_nonzero_exit_naming_each_with_its_log(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    broken = [a if a != '--extra=--no-pretrained' else '--extra=--no-pretrained --rho 0.01' for a in TINY]
    with pytest.raises(SystemExit) as e:  # lotep_cp cannot prompt 0 blocks: it fails, lp runs
        compare.main(['--protocol', 'offline-cifar10', '--tag', 'f', '--methods', 'lp,lotep_cp', '--seeds', '0',
                      *broken, '--no-tune'])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert 'lotep_cp seed 0' in err and os.path.join('runs', 'offline-cifar10-f', 'lotep_cp-s0.log') in err
    row = {r['arm']: r for r in results(tmp_path, 'offline-cifar10-f')['rows']}
    assert row['lp']['accs'] and not row['lotep_cp']['accs'] and row['lotep_cp']['failed']


@pytest.mark.e2e
def test_report_names_a_damaged_summary_and_keeps_the_other_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ['--protocol', 'offline-cifar10', '--tag', 'd', '--methods', 'lp,lorvp', '--seeds', '0', *TINY, '--no-tune']
    before = {r['arm']: r['accs'] for r in compare.main(argv)}
    summary = tmp_path / 'runs' / 'offline-cifar10-d' / 'lorvp-s0' / 'summary.json'
    summary.write_text(summary.read_text()[:40])  # cut short, as by a full disk
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        compare.main([*argv, '--report'])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert os.path.join('runs', 'offline-cifar10-d', 'lorvp-s0', 'summary.json') + ' is damaged: not JSON' in err
    row = {r['arm']: r for r in results(tmp_path, 'offline-cifar10-d')['rows']}
    assert row['lp']['accs'] == {str(k): v for k, v in before['lp'].items()} and not row['lorvp']['accs'] and row['lorvp']['failed']


@pytest.mark.e2e
@pytest.mark.parametrize('holder', ['train.py', 'comparison'])
def test_a_run_another_process_owns_is_waited_for_not_failed(tmp_path, monkeypatch, capsys, holder):
    """A train.py of its own holds the run (its lock), or another comparison its launch lock (<run>.launch, held until
    the run's outcome is on disk); the comparison never touches the run while it is held, waits, and then runs it.
    Here the holder lets go after 3 s."""
    monkeypatch.chdir(tmp_path)
    busy = tmp_path / 'runs' / 'offline-cifar10-b' / 'lp-s0'
    busy.mkdir(parents=True)
    lock = open(busy / '.lock' if holder == 'train.py' else f'{busy}.launch', 'a')
    fcntl.flock(lock, fcntl.LOCK_EX)
    held = sorted(os.listdir(busy))
    seen = []

    def let_go():
        time.sleep(3)
        seen.append(sorted(os.listdir(busy)))  # untouched while held
        lock.close()
    holder = threading.Thread(target=let_go)
    holder.start()
    rows = compare.main(['--protocol', 'offline-cifar10', '--tag', 'b', '--methods', 'lp', '--seeds', '0', *TINY,
                         '--no-tune'])
    holder.join()
    assert 'another process is running it; waiting for it' in capsys.readouterr().out
    assert seen == [held] and rows[0]['accs'] and not rows[0]['failed']


@pytest.mark.e2e
def test_two_comparisons_on_one_protocol_lose_no_row_and_run_a_shared_arm_once(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'compare.py'), '--protocol', 'offline-cifar10', '--tag', 'two',
           '--seeds', '0', *TINY, '--no-tune']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    procs = [subprocess.Popen([*cmd, '--methods', arms], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for arms in ('lp,lorvp', 'lorvp,lotep_cp')]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outs]
    saved = results(tmp_path, 'offline-cifar10-two')
    assert sorted(r['arm'] for r in saved['runs']) == ['lorvp', 'lotep_cp', 'lp']
    assert all('test_acc' in r for r in saved['runs'])
    printed = ''.join(out for out, _ in outs)
    assert printed.count('lorvp seed 0: running') == 1  # the other comparison waited, then read it back


@pytest.mark.e2e
def test_children_die_with_compare_even_by_sigkill(tmp_path):
    slow = [a if a != '1' else '50' for a in TINY]
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tools', 'compare.py'), '--protocol', 'offline-cifar10', '--tag',
                          'k', '--methods', 'lorvp', '--seeds', '0', *slow, '--no-tune'], cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / 'runs' / 'offline-cifar10-k' / 'lorvp-s0'
    deadline = time.time() + 60
    while not (run_dir / 'config.json').exists() and time.time() < deadline:
        time.sleep(0.1)
    children = [int(c) for c in open(f'/proc/{p.pid}/task/{p.pid}/children').read().split()]
    assert children
    p.send_signal(signal.SIGKILL)
    p.wait()
    alive = lambda: [c for c in children if os.path.exists(f'/proc/{c}/stat') and
                     open(f'/proc/{c}/stat').read().rsplit(')', 1)[1].split()[0] not in 'ZX']
    deadline = time.time() + 30
    while (alive() or compare.RunDir(str(run_dir)).in_use()) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive() and not compare.RunDir(str(run_dir)).in_use()  # the orphan is gone, its run free


@pytest.mark.e2e
def test_jobs_side_by_side_give_the_sequential_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ['--protocol', 'offline-cifar10', '--methods', 'lotep_cp', '--seeds', '0,1', *TINY, '--no-tune']
    one = compare.main([*args, '--tag', 'seq', '--jobs', '1'])  # two threads each, one after the other
    two = compare.main([*args, '--tag', 'par', '--jobs', '2'])  # one thread each, side by side
    assert one[0]['accs'] == two[0]['accs'] and len(one[0]['accs']) == 2
    for seed in (0, 1):
        a, b = (torch.load(tmp_path / 'runs' / f'offline-cifar10-{t}' / f'lotep_cp-s{seed}' / 'checkpoint.pt',
                           weights_only=False)['model'] for t in ('seq', 'par'))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.e2e
def test_tuning_chooses_on_validation_the_same_grid_for_every_arm(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ['--protocol', 'offline-tiny', '--tag', 'tune', '--methods', 'lorvp', '--seeds', '0',
            '--tune-lr', '0.1,1e30', *TINY]
    compare.main(args)
    saved = results(tmp_path, 'offline-tiny-tune')
    assert set(saved['tuning']['lorvp']['tried']) == {'lr x0.1', 'lr x1e+30'}
    assert saved['tuning']['lorvp']['tried']['lr x1e+30'] == 'diverged'  # a result of the grid, not a failure
    log = tmp_path / 'runs' / 'offline-tiny-tune' / 'tune' / 'lorvp-lr_x1e+30.log'
    size = log.stat().st_size
    capsys.readouterr()  # what the first comparison printed
    for again in ([*args, '--report'], args):  # a diverged run is a result: read back, never pending, not run again
        for table in (tmp_path / 'results').glob('offline-tiny-tune.*'):
            table.unlink()  # as when the comparison is killed before it writes its table
        compare.main(again)
        assert 'lorvp lr x1e+30: diverged before' in capsys.readouterr().out and log.stat().st_size == size
        assert results(tmp_path, 'offline-tiny-tune')['tuning']['lorvp']['tried']['lr x1e+30'] == 'diverged'
    assert saved['tuning']['lorvp']['chosen'] == 'lr x0.1' and saved['tune_wall_s'] > 0
    config = json.loads((tmp_path / 'runs' / 'offline-tiny-tune' / 'lorvp-s0' / 'config.json').read_text())
    assert config['args']['lr_scale'] == 0.1 and config['args']['val_split'] == 0.0
    assert 'tuned on validation' in (tmp_path / 'results' / 'offline-tiny-tune.md').read_text()


def test_the_grid_scales_each_methods_own_init_and_autovp_searches_its_space():
    settings = compare.PROTOCOLS['offline-cifar10-long'].settings
    tune = compare.PROTOCOLS['offline-cifar10-long'].tune
    lotep, added = protocols.grid(['--method', 'lotep_cp'], tune, settings)
    assert len(lotep) == 9 and lotep['lr x3 init x0.3'] == (['--lr-scale', '3', '--init-std', '0.09'],  # 0.3 x 0.3
                                                            {'lr': 3, 'init': 0.3})
    assert added == ['--val-split', '0.1', '--no-test']  # as long as the final runs; never a test image
    lorvp, _ = protocols.grid(['--method', 'lorvp'], tune, settings)
    assert lorvp['lr x1 init x3'][0] == ['--lr-scale', '1', '--init-std', '0.03']  # LoR-VP's A: 0.01 x 3
    lp, _ = protocols.grid(['--method', 'lp'], tune, settings)
    assert list(lp) == ['lr x0.3', 'lr x1', 'lr x3']  # no random prompt factor: the lr only
    autovp, _ = protocols.grid(['--method', 'autovp'], tune, settings)
    assert len(autovp) == 9 and {flags[1] for flags, _ in autovp.values()} == {'fm', 'freq', 'iter'}
    deep, shorter = protocols.grid(['--method', 'deep_lorvp'], compare.PROTOCOLS['offline-cifar10'].tune, settings)
    assert deep['init 0.3'][0] == ['--init-std', '0.3'] and shorter[-2:] == ['--epochs', '1']


def test_every_protocol_arm_is_a_valid_train_command():
    for name, protocol in compare.PROTOCOLS.items():
        assert protocol.arms and protocol.seeds, name
        settings = {**protocol.settings, **({'dataset': f'vtab-1k:{protocol.tasks[0]}'} if protocol.tasks else {})}
        for arm, flags in protocol.arms.items():
            argv = protocols.train_argv(settings, flags, 0, 'unused')
            a = parse(argv)
            assert a.method in compare.METHODS, (name, arm)
        for a_, b_, claimed, paper in protocol.claims:
            assert a_ in protocol.arms and b_ in protocol.arms, (name, a_, b_)
    tuning_run = protocols.train_argv(protocols.PROTOCOLS['offline-cifar10'].settings,
                                      ['--method', 'lp', '--epochs', '1'], 0, 'unused')
    assert parse(tuning_run).epochs == 1  # the arm's (or tuning's) flags win over the protocol's settings
    long = compare.PROTOCOLS['offline-cifar10-long']
    assert {'lp', 'lora', 'lorvp', 'evp', 'ilm_vp', 'autovp', 'lotep_cp', 'lotep_tk', 'grouped_lorvp', 'deep_lorvp',
            'lorsp', 'lorsp_lpf'} <= set(long.arms)
    final = parse(protocols.train_argv(long.settings, ['--method', 'lp', *long.final_flags], 0, 'unused'))
    assert final.val_split == 0.1  # the final runs hold out a validation split: the val-selected accuracy too
    assert final.channels_last and final.precision == 'fp32'  # a True setting is a flag alone
    # five seeds for every arm of a claim, three for the others, never the tuning seed 0
    claim_arms = {'lp', 'lorvp', 'lotep_cp', 'lotep_tk', 'lorsp', 'lorsp_lpf', 'lorsp_topk', 'lorsp_dropout',
                  'lotep_cp-constant'}
    assert {arm for arm in long.arms if len(long.seeds_of(arm)) == 5} == claim_arms
    assert all(len(long.seeds_of(arm)) == 3 for arm in set(long.arms) - claim_arms)
    assert not any(0 in long.seeds_of(arm) for arm in long.arms)
    assert {k for k in compare.PROTOCOLS if k.startswith('ablation-')} >= {
        'ablation-lotep-rho', 'ablation-lotep-schedule', 'ablation-lotep-r0', 'ablation-grouped-g',
        'ablation-lorsp-nr', 'ablation-lorsp-tau', 'ablation-lorsp-sparsifier'}


def test_paired_confidence_interval_against_a_hand_computation():
    a = {0: 84.0, 1: 85.5, 2: 83.0, 3: 86.0}
    b = {0: 83.0, 1: 83.5, 2: 83.5, 3: 84.0, 7: 99.0}  # seed 7 has no pair: left out
    d = [1.0, 2.0, -0.5, 2.0]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    half = 3.1824463 * sd / 2  # t(0.975, 3 degrees of freedom) sd / sqrt(4)
    ci = stats.paired(a, b)
    assert ci['n'] == 4 and ci['mean'] == pytest.approx(mean) and ci['sd'] == pytest.approx(sd)
    assert (ci['low'], ci['high']) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert stats.paired({0: 1.0}, {0: 2.0}) is None
    assert stats.verdict(ci).startswith('cannot tell')  # [-0.18, 2.43] contains 0
    assert stats.verdict(dict(mean=0.6, low=0.2, high=1.0), 2.5) == 'holds; the claimed +2.5 is outside the interval'
    assert stats.verdict(dict(mean=-1.0, low=-2.0, high=-0.1)).startswith('does not hold')
    assert statistics.mean(ci['diffs']) == pytest.approx(mean)


def test_the_table_puts_the_val_selected_accuracy_beside_the_final_one():
    run = dict(trainable_params=10, train_time_s=1.0, train_images_per_s=1.0)
    runs = [dict(run, arm='a', seed=0, test_acc=80.0, val_selected_test_acc=78.0),
            dict(run, arm='a', seed=1, test_acc=82.0, val_selected_test_acc=81.0)]
    record = dict(name='n', changes=[], settings={}, seeds=[0, 1], tuning={}, grid_notes=[], claims=[], wall_s=1.0,
                  tune_wall_s=0.0, bench={})
    md_of = lambda runs: tables.markdown(dict(record, rows=tables.rows_of(runs, ['a'])),
                                         compare.PROTOCOLS['offline-tiny'].about)
    row = next(line for line in md_of(runs).splitlines() if line.startswith('| a |')).split(' | ')
    sd = lambda x, y: math.sqrt(((x - y) / 2) ** 2 * 2)  # sample std of two numbers
    assert row[1:3] == [f'81.00 ± {sd(80, 82):.2f} (2)', f'79.50 ± {sd(78, 81):.2f} (2)']
    runs = [{k: v for k, v in r.items() if k != 'val_selected_test_acc'} for r in runs]  # no validation split
    assert 'val-selected' not in md_of(runs)


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 20, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    gram = lambda A: A @ A.T
    assert cka.linear_cka(gram(X), gram(X)) == pytest.approx(1.0)
    assert cka.linear_cka(gram(X), gram(3.0 * X @ Q)) == pytest.approx(1.0)  # rotation and scale invariant
    Y = torch.randn(50, 20, generator=g, dtype=torch.float64)
    assert cka.linear_cka(gram(X), gram(Y)) < 0.6


@pytest.mark.e2e
def test_cka_on_a_finished_run(tmp_path):
    args = ['--model', 'test_vit', '--no-pretrained', '--dataset', 'synthetic', '--img-size', '32', '--epochs', '1',
            '--batch-size', '16', '--lr', '0.5', '--precision', 'fp32']  # bf16 explodes lotep_cp at this lr
    train.main([*args, '--method', 'lotep_cp', '--rho', '1', '--out', str(tmp_path / 'lotep')])
    train.main([*args, '--method', 'ft', '--lr', '0.001', '--out', str(tmp_path / 'ft')])  # Adam at 0.5 explodes
    rows = cka.main([str(tmp_path / 'lotep'), '--ft', str(tmp_path / 'ft'), '--images', '40'])
    assert len(rows) == 6 and all(0 < r['cka_base'] <= 1 + 1e-9 and 0 < r['cka_ft'] <= 1 + 1e-9 for r in rows)
    assert any(r['cka_base'] < 0.9999 for r in rows)  # the trained prompts changed the features
    assert os.path.getsize(tmp_path / 'lotep' / 'cka.png') > 1000


def test_ci_runs_the_readme_test_commands():
    """CI runs README's fast tier, then the end-to-end tier: together, README's --e2e command."""
    ci = [line for line in open(os.path.join(ROOT, '.ci', 'run')).read().splitlines() if 'pytest' in line]
    assert ci == ['python -m pytest -q', 'python -m pytest -q --e2e -m e2e']
    readme = open(os.path.join(ROOT, 'README.md')).read()
    assert 'python -m pytest -q ' in readme and 'python -m pytest -q --e2e ' in readme


def test_cka_refuses_what_it_cannot_compare(tmp_path, capsys):
    args = ['--model', 'test_vit', '--no-pretrained', '--dataset', 'synthetic', '--img-size', '32', '--epochs', '1',
            '--train-per-class', '4', '--precision', 'fp32']
    train.main([*args, '--method', 'lorvp', '--out', str(tmp_path / 'lorvp')])
    for argv, fragment in [([str(tmp_path / 'nowhere')], 'not a trained run'),
                           ([str(tmp_path / 'lorvp'), '--ft', str(tmp_path / 'lorvp')], 'must be an ft run')]:
        with pytest.raises(SystemExit) as e:
            cka.main(argv)
        assert e.value.code == 2 and fragment in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cka.main([str(tmp_path / 'lorvp'), '--images', '0'])
    assert not (tmp_path / 'lorvp' / 'cka.md').exists()
    (tmp_path / 'afile').write_text('x')
    cka.main([str(tmp_path / 'lorvp'), '--images', '8'])  # writes cka.* into the run directory
    for argv, fragment in [(['--out', str(tmp_path / 'afile')], 'is a file'),
                           (['--images', '16'], 'holds another comparison')]:  # would replace the 8-image table
        with pytest.raises(SystemExit) as e:
            cka.main([str(tmp_path / 'lorvp'), *argv])
        assert e.value.code == 2 and fragment in capsys.readouterr().err
    assert json.loads((tmp_path / 'lorvp' / 'cka.json').read_text())['images'] == 8


@pytest.mark.e2e
def test_report_tables_the_finished_runs_and_starts_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = dataclasses.replace(compare.PROTOCOLS['offline-tiny'], final_flags=('--val-split', '0.25'))
    monkeypatch.setitem(compare.PROTOCOLS, 'offline-tiny', tiny)  # final runs hold out validation, as the long one's
    argv = ['--protocol', 'offline-tiny', '--tag', 'r', '--methods', 'lp', '--seeds', '0', *TINY, '--tune-lr', '1']
    compare.main([*argv, '--report'])  # nothing has run: nothing starts, the table says so
    assert not (tmp_path / 'runs').exists()
    md = (tmp_path / 'results' / 'offline-tiny-r.md').read_text()
    assert 'lr x1 pending' in md and 'Incomplete**: 0 of the 1 tuning runs' in md and '0 of the 1 final runs' in md
    assert 'h of runs are left' not in md  # nothing finished: no estimate
    compare.main(argv)  # the tuning run, then the final one
    import matplotlib.figure
    titles = []  # each plot's title as it is saved: a finished table's plots carry its name alone
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig',
                        lambda fig, path, **_: titles.append(fig.axes[0].get_title()))
    compare.main([*argv, '--report'])  # everything finished: read back, nothing pending
    saved = results(tmp_path, 'offline-tiny-r')
    md = (tmp_path / 'results' / 'offline-tiny-r.md').read_text()
    assert 'Incomplete' not in md and len(saved['runs']) == 1 and 'test_acc' in saved['runs'][0]
    assert 'val_selected_test_acc' in saved['runs'][0]  # the protocol's final flags reached the final run
    assert 'val-selected test acc % |' in md
    # tuning time is counted once however often the table is rewritten
    tune_dir = tmp_path / 'runs' / 'offline-tiny-r' / 'tune'
    walls = [json.loads(p.read_text())['wall_s'] for p in tune_dir.glob('*.wall.json')]
    assert len(walls) == 1 and saved['tune_wall_s'] == pytest.approx(sum(walls))
    # a second seed asked for: one run left, estimated at the mean wall time of the two finished ones; the plots of
    # the unfinished table say so in their titles, as the finished table's do not
    compare.main([*argv[:7], '0,1', *argv[8:], '--report'])
    assert titles[:2] == ['offline-tiny-r'] * 2
    unfinished = 'offline-tiny-r\nINCOMPLETE: 1 of the 2 final runs finished (the table says what is left)'
    assert titles[2:] == [unfinished] * 2
    md = (tmp_path / 'results' / 'offline-tiny-r.md').read_text()
    final_wall = json.loads((tmp_path / 'runs' / 'offline-tiny-r' / 'lp-s0.wall.json').read_text())['wall_s']
    assert 'Incomplete**: 1 of the 1 tuning runs' in md and '1 of the 2 final runs' in md
    assert f'about {(walls[0] + final_wall) / 2 / 3600:.1f} h of runs are left' in md
    assert f'({(walls[0] + final_wall) / 2 / 60:.1f} min, as they ran)' in md
    # by hand: 1 tuning run and 3 final runs left, at the mean of 600 and 1200 s (an unknown wall time not counted)
    tuning = {'a': {'tried': {'x1': 80.0, 'x3': 'pending'}}, 'b': {'tried': {}}}
    line = tables.progress(tuning, [600, 1200, None], 3, 5)
    assert '1 of the 2 tuning runs' in line and '2 of the 5 final runs' in line
    assert 'the 2 finished runs (15.0 min, as they ran), about 1.0 h of runs are left' in line
    assert tables.progress({'a': {'tried': {'x1': 80.0}}}, [600], 0, 5) == ''


def test_student_t_p_values_and_holms_correction_against_hand_computations():
    for df, q in {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042}.items():  # a printed table
        assert stats.t_two_sided(q, df) == pytest.approx(0.05, abs=3e-4), df  # of the 97.5% quantiles
        assert stats.t_quantile(0.05, df) == pytest.approx(q, abs=5e-4), df
    assert stats.t_two_sided(1.0, 1) == pytest.approx(0.5)  # df = 1, the Cauchy law: P(|T| >= 1) = 1/2
    assert stats.t_two_sided(3.0, 2) == pytest.approx(1 - 3 / math.sqrt(11))  # df = 2: 1 - t / sqrt(2 + t^2)
    assert stats.t_two_sided(0.0, 4) == pytest.approx(1.0)
    for alpha, q in ((0.05, 2.776), (0.01, 4.604), (0.005, 5.598), (0.001, 8.610)):  # a printed t table, df = 4
        assert stats.t_quantile(alpha, 4) == pytest.approx(q, abs=5e-4), alpha
    # Holm, m = 4: sorted 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.2, None, 0.01]) == [pytest.approx(0.2), None, pytest.approx(0.02)]


def test_holm_turns_a_marginal_holds_into_cannot_tell():
    """Three claims tested together: one marginal (p about 0.035 alone), two with nothing to show. Raw, the marginal
    one holds; with Holm's correction, as the smallest of three p-values, it is tripled and cannot be told. Its
    claimed +3 lies outside the raw 95% interval and inside the interval widened for three claims at once."""
    rows = {'a': dict(accs={0: 80.0, 1: 81.0, 2: 82.0}, val_selected={}),
            'b': dict(accs={0: 79.0, 1: 79.5, 2: 80.0}, val_selected={}),  # a - b: 1.0, 1.5, 2.0
            'c': dict(accs={0: 79.0, 1: 82.0, 2: 81.5}, val_selected={}),  # a - c: 1.0, -1.0, 0.5
            'd': dict(accs={0: 80.5, 1: 80.2, 2: 81.9}, val_selected={})}  # a - d: -0.5, 0.8, 0.1
    protocol = dataclasses.replace(compare.PROTOCOLS['offline-tiny'], claims=tuple(
        ('a', other, 3.0 if other == 'b' else None, 'a paper') for other in 'bcd'))
    marginal, *nulls = stats.claim_verdicts(protocol.claims, rows)
    d = [1.0, 1.5, 2.0]  # computed here
    t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(3))
    assert marginal['p'] == pytest.approx(stats.t_two_sided(t, 2)) and 0.03 < marginal['p'] < 0.04
    assert marginal['verdict'] == 'holds; the claimed +3 is outside the interval'  # 1.5 + 4.303 x 0.5 / sqrt 3
    assert marginal['p_holm'] == pytest.approx(3 * marginal['p'])
    # Bonferroni for 3 claims: P(|T| >= t) = 0.05 / 3 with df = 2, where P(|T| >= t) = 1 - t / sqrt(2 + t^2)
    q = 1 - 0.05 / 3
    half = math.sqrt(2 * q ** 2 / (1 - q ** 2)) * 0.5 / math.sqrt(3)  # sd of d = 0.5
    assert marginal['verdict_holm'] == (f'cannot tell at this scale; the claimed +3 is inside the 98.33% Bonferroni '
                                        f'interval [{1.5 - half:+.2f}, {1.5 + half:+.2f}]')
    assert all(c['verdict'].startswith('cannot tell') and c['p_holm'] >= c['p'] for c in nulls)
    assert marginal['verdict_val_selected'].startswith('cannot tell: fewer than two seeds')


def test_a_grid_of_lr_by_init_is_tabled_rows_lr_columns_init():
    tried = {'lr x3 init x10': 'diverged', 'lr x0.3 init x10': 80.0, 'lr x0.3 init x3': 77.0, 'lr x3 init x3': 37.0,
             'lr x0.3 init x1': 78.5}  # lr x3 init x1 not tried (yet)
    lines = tables.tuning_lines('lorvp', {'tried': tried, 'chosen': 'lr x0.3 init x10 so far'})
    assert [line for line in lines if line] == ['lorvp -> **lr x0.3 init x10 so far**',
                                                '| lr \\ init | x1 | x3 | x10 |', '|---|---|---|---|',
                                                '| x0.3 | 78.50 | 77.00 | **80.00** |', '| x3 | - | 37.00 | diverged |']
    assert tables.tuning_lines('lp', {'tried': {'lr x1': 79.0, 'lr x3': 'pending'}, 'chosen': 'lr x1 so far'}) == [
        '', '- lp: lr x1 79.00, lr x3 pending -> **lr x1 so far**']  # one axis: a line


def test_a_choice_on_an_edge_extends_that_axis_for_every_arm():
    tune, extend = {'lr': (0.3, 1, 3), 'init': (0.3, 1, 3)}, {'lr': (0.1, 0.3, 1, 3, 10), 'init': (0.3, 1, 3)}
    tuning = {'a': {'point': {'lr': 3, 'init': 1}}, 'b': {'point': {'lr': 1, 'init': 3}}, 'c': {'point': {'lr': 0.3}}}
    # a and c chose lr edges the progression goes beyond; b's init x3 ends the init progression: not extendable
    assert protocols.edges(tuning, tune, extend) == [('lr', 0.3, 0.1, ['c']), ('lr', 3, 10, ['a']),
                                                   ('init', 3, None, ['b'])]
    assert protocols.edges({'a': {'point': {'lr': 1, 'init': 1}}}, tune, extend) == []
    # a --report made half-way named fewer arms for the same extension: the table keeps one note per axis and edge
    earlier = ['init axis extended to x30 for every arm: a chose its edge', 'lr axis extended to x10 for every arm: c '
               'chose its edge']  # the second: another comparison's (other arms), kept
    now = ['init axis extended to x30 for every arm: a, b chose its edge']
    assert tables.merged_notes(earlier, now) == [earlier[1], now[0]]


@pytest.mark.e2e
def test_tuning_extends_the_grid_until_no_choice_lies_on_an_edge(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a one-point grid: its choice lies on the lower edge, so the grid must grow (by x1, then maybe x0.3)
    tiny = dataclasses.replace(compare.PROTOCOLS['offline-tiny'], tune={'lr': (3,)}, extend={'lr': (0.3, 1, 3)})
    monkeypatch.setitem(compare.PROTOCOLS, 'offline-tiny', tiny)
    compare.main(['--protocol', 'offline-tiny', '--tag', 'e', '--methods', 'lp,lorvp', '--seeds', '0', *TINY])
    saved = results(tmp_path, 'offline-tiny-e')
    lrs = {arm: sorted(float(c.split('x')[1]) for c in t['tried']) for arm, t in saved['tuning'].items()}
    assert lrs['lp'] == lrs['lorvp']  # the same grid for every arm, extended or not
    chosen = protocols.edges(saved['tuning'], {'lr': tuple(lrs['lp'])}, tiny.extend)
    assert all(beyond is None for _, _, beyond, _ in chosen)  # no choice left on an edge the grid could extend
    notes = saved['grid_notes']
    assert 1 in lrs['lp'] and 'lr axis extended to x1 for every arm: lp, lorvp chose its edge' in notes  # and said
    assert all(any(n.startswith(f'lr axis not extended beyond x{edge:g}') and arm in n for n in notes)
               for _, edge, _, arms in chosen for arm in arms)  # a choice where the progression ends is said


@pytest.mark.e2e
def test_the_cost_columns_come_from_bench_once_per_arm(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls, measure = [], compare.bench.measure
    monkeypatch.setattr(compare.bench, 'measure', lambda argvs, reps: calls.append(sorted(argvs)) or
                        measure(argvs, reps))
    args = ['--protocol', 'offline-cifar10', '--tag', 'c', '--seeds', '0', *TINY[:-2], '--bench-reps', '1',
            '--no-tune']
    compare.main([*args, '--methods', 'lp,lorvp'])
    compare.main([*args, '--methods', 'lp'])  # measured before, with these settings: not again
    assert calls == [['lorvp', 'lp']]
    saved = results(tmp_path, 'offline-cifar10-c')
    cost = saved['bench']['lorvp']
    line = next(line for line in (tmp_path / 'results' / 'offline-cifar10-c.md').read_text().splitlines()
                if line.startswith('| lorvp |'))
    cells = [c.strip() for c in line.strip('|').split('|')]
    assert cells[-2:] == [f'{cost["memory_mb"]:.1f}', f'{cost["memory_ratio"]:.3f}']
    assert cells[-4] == f'{cost["step_ratio"]:.3f}' and cost['trainable'] == saved['rows'][1]['params']


@pytest.mark.e2e
def test_runs_are_read_back_from_the_table_or_from_their_folder_moved_elsewhere(tmp_path, monkeypatch, capsys):
    """The table keeps each run's summary and command (and each tuning run's validation figures): a comparison whose
    run folders were deleted, or never copied to this machine, continues from the table and trains nothing again.
    A run is what it computes, not where it lies: a runs folder copied to another place (another machine), its data
    given at another path, reads its finished runs back and resumes the killed one there."""
    monkeypatch.chdir(tmp_path)
    argv = ['--protocol', 'offline-tiny', '--tag', 'g', '--methods', 'lp', '--seeds', '0', *TINY, '--tune-lr', '1']
    first = compare.main(argv)
    moved = tmp_path / 'machine2' / 'kept'
    shutil.copytree(tmp_path / 'runs' / 'offline-tiny-g', moved)
    shutil.rmtree(tmp_path / 'runs')
    capsys.readouterr()
    again = compare.main(argv)
    out = capsys.readouterr().out
    assert 'running' not in out and out.count('read back from the table') == 2  # a tuning run and a final run
    assert again[0]['accs'] == first[0]['accs'] and not (tmp_path / 'runs' / 'offline-tiny-g' / 'lp-s0').exists()
    # moved: no table there; the final run killed after its last checkpoint, before its summary
    os.remove(moved / 'lp-s0' / 'summary.json')
    os.symlink(SHARED_DATA, tmp_path / 'machine2' / 'data')
    monkeypatch.chdir(tmp_path / 'machine2')
    again = compare.main([*argv, '--runs-dir', str(moved), '--data-dir', 'data'])
    out = capsys.readouterr().out
    assert 'tune' in out and out.count('done before, read back') == 1 and ' running ' not in out
    assert f'resuming {os.path.join(ROOT, "train.py")} --resume --out {moved / "lp-s0"} --data-dir data' in out
    assert again[0]['accs'] == first[0]['accs']
    # the table made there merges with the data read from yet another path (where it lies is not a setting)
    assert compare.main([*argv, '--runs-dir', str(moved)])[0]['accs'] == first[0]['accs']
    assert len(results(tmp_path / 'machine2', 'offline-tiny-g')['tuning_runs']) == 1  # recorded once, not per path
