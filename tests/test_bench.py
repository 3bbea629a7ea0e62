"""bench.py: the ratio to the floor, the interleaving, the memory count, the table (merged, never replaced by one of
other settings), and the profile against the floor."""
import json
import os

import pytest
import torch
import torch.nn as nn

from tools import bench
import lotep
import train
from flags import parse
from methods import build


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
    md = (tmp_path / 'runs' / 'bench' / 'bench-test_resnet-32.md').read_text()
    rows = {line.split(' | ')[0].strip('| '): line for line in md.splitlines() if line.startswith('| ')}
    assert {'lorvp', 'lotep_cp', 'vpt_deep'} <= set(rows)
    assert 'cannot attach' in rows['vpt_deep'] and 'ViT' in rows['vpt_deep']
    saved = json.loads((tmp_path / 'runs' / 'bench' / 'bench-test_resnet-32.json').read_text())['rows']
    timed = [r for r in saved if 'error' not in r]
    assert sorted(r['method'] for r in timed) == ['lorvp', 'lotep_cp']  # rows in METHODS' order
    assert all(r['step_ratio'] > 0 and r['latency_ratio'] > 0 and r['trainable'] > 0 for r in timed)
    assert all(r['memory_mb'] == pytest.approx(sum(r['memory_parts_mb'].values())) for r in timed)
    assert md.splitlines()[2].startswith('`python tools/bench.py --model test_resnet')  # the command that made it
    assert not (tmp_path / 'results').exists()  # an ad hoc bench leaves the committed results/ as it was


def test_a_bench_says_where_it_wrote_and_writes_results_only_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ['--model', 'test_resnet', '--no-pretrained', '--img-size', '32', '--batch-size', '4', '--reps', '1',
            '--precision', 'fp32', '--methods', 'lp', '--device', 'cpu']
    bench.main(base)
    assert f'wrote {os.path.join(str(tmp_path), "runs", "bench", "bench-test_resnet-32.md")}' in capsys.readouterr().out
    bench.main([*base, '--out', 'results'])
    assert 'wrote results/bench-test_resnet-32.md' in capsys.readouterr().out
    assert (tmp_path / 'results' / 'bench-test_resnet-32.json').exists()


def test_saved_bytes_against_a_hand_computation():
    """A Linear(5, 4) and a ReLU on 3 inputs (float32, 4 bytes). With frozen weights and the input's gradient wanted,
    autograd keeps W (a weight, held anyway: not counted) and the ReLU's output, 3 x 4; with trainable weights and no
    input gradient, the input 3 x 5 and the ReLU's output; the product of two views of x keeps two tensors that share
    one storage: counted once."""
    lin = nn.Linear(5, 4)
    model = nn.Sequential(lin, nn.ReLU())
    x = torch.randn(3, 5)
    step = lambda xx: model(xx).sum().backward()
    lin.requires_grad_(False)
    assert bench.saved_bytes(model, lambda: step(x.clone().requires_grad_())) == 3 * 4 * 4
    lin.requires_grad_(True)
    assert bench.saved_bytes(model, lambda: step(x)) == (3 * 5 + 3 * 4) * 4
    xx = x.clone().requires_grad_()
    assert bench.saved_bytes(model, lambda: (xx.view(15) * xx.view(15)).sum().backward()) == 3 * 5 * 4


def test_a_deep_prompt_keeps_nothing_of_the_block_inputs_size():
    """X_l + P_l saves nothing for backward (an addition's gradient needs neither operand): what a prompted block's hook
    keeps is at most the prompt built from its factors (C x H x W), never a tensor the size of the batch's block input.
    A hook that kept one (a mask multiplied in, an expanded copy) would multiply a deep prompt's memory by the batch."""
    a = train.resolve(parse(['--method', 'lotep_cp', '--model', 'test_resnet', '--no-pretrained', '--dataset',
                             'synthetic', '--img-size', '32', '--device', 'cpu', '--precision', 'fp32']))
    model = build(a)
    deep = model.attached[0]
    blocks, _ = lotep.find_blocks(model.backbone)
    for l in range(deep.d):
        C, H, W = deep.shapes[l]
        x = torch.randn(16, C, H, W, requires_grad=True)  # a batch of 16 block inputs
        hook = blocks[l]._forward_pre_hooks[next(iter(blocks[l]._forward_pre_hooks))]
        saved = bench.saved_bytes(model, lambda: hook(blocks[l], (x,))[0].sum().backward())
        assert saved <= C * H * W * 4 < 16 * C * H * W * 4, (l, saved)


def test_the_memory_of_a_step_is_its_parts_counted_by_hand(tmp_path, monkeypatch):
    """LoR-VP trains B, A and the head with SGD (momentum): its gradients and the optimizer's momentum are each the
    trainable parameters' bytes; the floor has neither. The weights are every parameter and buffer, once."""
    monkeypatch.chdir(tmp_path)
    rows = bench.measure({'lorvp': ['--method', 'lorvp', '--model', 'test_resnet', '--no-pretrained', '--img-size',
                                    '32', '--batch-size', '4', '--dataset', 'synthetic', '--precision', 'fp32',
                                    '--device', 'cpu']}, reps=1)
    r, mb = rows['lorvp'], 2 ** 20
    a = train.resolve(parse(['--method', 'lorvp', '--model', 'test_resnet', '--no-pretrained', '--img-size', '32',
                             '--dataset', 'synthetic', '--device', 'cpu']))
    model = build(a)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4
    weights = sum(t.numel() * 4 for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()) + \
        sum(t.numel() * t.element_size() for t in model.buffers() if not t.is_floating_point())
    parts = r['memory_parts_mb']
    assert parts['gradients'] * mb == trainable and parts['optimizer'] * mb == trainable
    assert parts['weights'] * mb == weights and parts['saved'] > 0
    assert r['floor_memory_parts_mb'].keys() == {'weights', 'saved'}
    assert r['memory_ratio'] == pytest.approx(r['memory_mb'] / r['floor_memory_mb'])


def test_a_table_merges_rows_of_the_same_settings_and_refuses_others(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ['--model', 'test_resnet', '--no-pretrained', '--img-size', '32', '--batch-size', '4', '--reps', '1',
            '--precision', 'fp32', '--device', 'cpu']
    bench.main([*base, '--methods', 'lorvp'])
    bench.main([*base, '--methods', 'lp'])  # another method, the same settings: merged
    path = tmp_path / 'runs' / 'bench' / 'bench-test_resnet-32'
    saved = json.loads(path.with_suffix('.json').read_text())
    assert [r['method'] for r in saved['rows']] == ['lp', 'lorvp'] and len(saved['commands']) == 2  # METHODS' order
    before = path.with_suffix('.md').read_text()
    for argv, fragment in [([*base[:-6], '--reps', '2', *base[-4:], '--methods', 'lp'], 'other settings'),
                           ([*base, '--methods', 'lp', '--tag', 'a/b'], '--tag'),
                           ([*base[:-6], '--reps', '0', *base[-4:], '--methods', 'lp'], '--reps'),
                           ([*base, '--methods', ','], 'empty')]:
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        assert e.value.code != 0 and fragment in str(e.value.code) + capsys.readouterr().err, argv
    assert path.with_suffix('.md').read_text() == before  # nothing replaced
    (tmp_path / 'runs' / 'bench' / 'bench-test_resnet-32-old.md').write_text('# a table from before the .json records')
    with pytest.raises(SystemExit, match='no .json record'):
        bench.main([*base, '--methods', 'lp', '--tag', 'old'])


def test_profile_names_the_ops_a_method_adds_to_the_floor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench.main(['--model', 'test_resnet', '--no-pretrained', '--img-size', '32', '--batch-size', '4',
                '--precision', 'fp32', '--methods', 'lorvp', '--device', 'cpu', '--profile'])
    text = (tmp_path / 'runs' / 'bench' / 'profile-test_resnet-32.txt').read_text()
    # LoR-VP's B A is a batched matrix product the bare backbone never runs: listed with the floor at 0
    bmm = [line.split() for line in text.splitlines() if line.strip().startswith('aten::bmm')]
    assert bmm and float(bmm[0][1]) > 0 and float(bmm[0][2]) == 0.0
