"""bench.py: the ratio to the floor, the interleaving, the table, and the profile against the floor."""
import json

import pytest

import bench


def test_ratio_is_the_median_of_per_round_ratios_and_times_the_fastest():
    # Round by round: the method takes 2, 9, 3 s against a floor of 1, 3, 1 -> ratios 2, 3, 3: median 3. A ratio of the
    # fastest times (2 / 1) or of the means would differ; a swapped floor would give 1/3.
    t = {'step': [2.0, 9.0, 3.0], 'floor_step': [1.0, 3.0, 1.0],
         'latency': [0.4, 0.8, 0.6], 'floor_latency': [0.4, 0.4, 0.4]}
    f = bench.figures(t, batch=4)
    assert f['step_ratio'] == 3.0 and f['step_ms'] == 2000.0 and f['floor_step_ms'] == 1000.0
    assert f['latency_ratio'] == pytest.approx(1.5) and f['latency_ms'] == pytest.approx(100.0)  # 0.4 s / 4 images


def test_rounds_alternate_the_order_and_skip_the_warm_up():
    calls = []
    jobs = {'m': {name: (lambda n=name: calls.append(n)) for name in ('floor_step', 'step')}}
    times = bench.interleaved(jobs, reps=2, device='cpu')
    # warm-up (reversed), then round 1 in order, round 2 reversed: the floor and the method take turns going first
    assert calls == ['step', 'floor_step', 'floor_step', 'step', 'step', 'floor_step']
    assert [len(v) for v in times['m'].values()] == [2, 2]


def test_table_has_every_method_and_says_which_cannot_attach(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench.main(['--model', 'test_resnet', '--no-pretrained', '--img-size', '32', '--batch-size', '4', '--reps', '1',
                '--precision', 'fp32', '--methods', 'lorvp,lotep_cp,vpt_deep', '--device', 'cpu'])
    md = (tmp_path / 'results' / 'bench-test_resnet-32.md').read_text()
    rows = {line.split(' | ')[0].strip('| '): line for line in md.splitlines() if line.startswith('| ')}
    assert {'lorvp', 'lotep_cp', 'vpt_deep'} <= set(rows)
    assert 'cannot attach' in rows['vpt_deep'] and 'ViT' in rows['vpt_deep']
    saved = json.loads((tmp_path / 'results' / 'bench-test_resnet-32.json').read_text())['rows']
    timed = [r for r in saved if 'error' not in r]
    assert [r['method'] for r in timed] == ['lorvp', 'lotep_cp']
    assert all(r['step_ratio'] > 0 and r['latency_ratio'] > 0 and r['trainable'] > 0 for r in timed)
    assert md.splitlines()[2].startswith('`python bench.py --model test_resnet')  # the command that made it


def test_profile_names_the_ops_a_method_adds_to_the_floor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench.main(['--model', 'test_resnet', '--no-pretrained', '--img-size', '32', '--batch-size', '4',
                '--precision', 'fp32', '--methods', 'lorvp', '--device', 'cpu', '--profile'])
    text = (tmp_path / 'results' / 'profile-test_resnet-32.txt').read_text()
    # LoR-VP's B A is a batched matrix product the bare backbone never runs: listed with the floor at 0
    bmm = [line.split() for line in text.splitlines() if line.strip().startswith('aten::bmm')]
    assert bmm and float(bmm[0][1]) > 0 and float(bmm[0][2]) == 0.0
