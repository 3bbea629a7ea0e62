"""What a new user meets in the first hour: the shipped sample is real CIFAR-10, the lr never overshoots its warmup,
a model blown up by its last update is no result, run folders never collide, the same command on any CPU is the same
run (fp32), and --help shows every default."""
import argparse
import os
import types

import numpy as np
import pytest
import torch

import data
import flags
import train
from conftest import SHARED_DATA, needs_cifar10
from test_train import SYNTH, fails


# ---- the sample that ships with the repository ----

def test_the_sample_is_the_first_images_of_each_class_and_loads_offline():
    s = data.load('cifar10-sample', data_dir='/nonexistent', img_size=32, seed=0)
    assert (len(s.train), len(s.test), s.num_classes) == (1000, 500, 10) and s.classes == data.CIFAR10_CLASSES
    assert np.bincount([y for _, y in s.test], minlength=10).tolist() == [50] * 10
    assert os.path.getsize(data.SAMPLE) < 5e6


@needs_cifar10
def test_the_sample_equals_the_full_set_where_it_came_from():
    """An independent selection from the full release: the first 100 train / 50 test images of each class in order."""
    with np.load(os.path.join(SHARED_DATA, 'cifar10.npz')) as full, np.load(data.SAMPLE) as sample:
        for split, n in (('train', 100), ('test', 50)):
            y = full[f'y_{split}']
            counts, keep = {}, []
            for i, label in enumerate(y.tolist()):
                if counts.get(label, 0) < n:
                    counts[label] = counts.get(label, 0) + 1
                    keep.append(i)
            assert np.array_equal(sample[f'x_{split}'], full[f'x_{split}'][keep])
            assert np.array_equal(sample[f'y_{split}'], y[keep])


# ---- the learning rate ----

@pytest.mark.parametrize('warmup_epochs', [0.01, 0.1, 0.25, 0.3, 0.5, 1.0, 1.7, 3.0])
@pytest.mark.parametrize('steps_per_epoch', [1, 3, 4, 10])
def test_the_warmup_never_takes_the_lr_past_one(warmup_epochs, steps_per_epoch):
    """VPT's warmup at any length, a fraction of a step included: the factor rises to 1 and never above it."""
    a = types.SimpleNamespace(schedule_lr='warmup_cosine', warmup_epochs=warmup_epochs, epochs=3)
    total = 3 * steps_per_epoch
    factors = [train.lr_factor(a, step, total, steps_per_epoch) for step in range(total)]
    assert max(factors) <= 1.0 and factors[0] > 0
    warm = [f for step, f in enumerate(factors) if step < warmup_epochs * steps_per_epoch]
    assert warm == sorted(warm)  # rising through the warmup


# ---- a blown-up model is no result ----

def test_a_model_blown_up_by_its_last_update_is_not_recorded(tmp_path, capsys):
    """One step at an absurd lr: the loss the step measured came before the update, so only the evaluation after it
    sees the blown-up head. The run stops with the explode rule's message, exit 3, and no summary or prompt file."""
    out = tmp_path / 'r'
    fails(capsys, [*SYNTH, '--method', 'lp', '--lr', '1e6', '--epochs', '1', '--batch-size', '1000', '--out',
                   str(out)], 'on the test images', '--lr', code=3)
    assert not (out / 'summary.json').exists() and not (out / 'prompt.safetensors').exists()


# ---- run folders ----

def test_runs_whose_settings_differ_never_share_a_folder_and_the_same_command_reports_its_run(tmp_path, monkeypatch,
                                                                                              capsys):
    monkeypatch.chdir(tmp_path)
    argv = [*SYNTH, '--method', 'lp', '--epochs', '1']
    first = train.main(argv)
    again = train.main(argv)  # the same command: its finished run, reported, nothing run again
    assert again == first and 'has already finished' in capsys.readouterr().out
    train.main([*argv, '--img-size', '48'])
    train.main([*argv, '--data-dir', str(tmp_path / 'elsewhere')])  # where the data lies is no setting
    folders = sorted(os.listdir(tmp_path / 'runs'))
    assert len(folders) == 2 and all(f.startswith('lp-test_vit.r160_in1k-synthetic-s0-') for f in folders)
    a = train.resolve(flags.parse(argv))
    assert flags.default_out(a, train.read_data(a, {}).fingerprint) in {os.path.join('runs', f) for f in folders}


def test_the_advice_for_an_unfinished_run_works_as_printed(tmp_path, monkeypatch, capsys):
    """A run killed after its last epoch, before its summary: the same command says to add --resume, and the same
    command with --resume (no --out) finishes it in its folder."""
    monkeypatch.chdir(tmp_path)
    argv = [*SYNTH, '--method', 'lp', '--epochs', '2']
    with monkeypatch.context() as m:
        m.setattr(train, 'finish', lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train.main(argv)
    err = fails(capsys, argv, 'continue it with --resume')
    assert 'Traceback' not in err
    loads, load = [], data.load
    monkeypatch.setattr(data, 'load', lambda *args, **kw: loads.append(kw['data_dir']) or load(*args, **kw))
    summary = train.main([*argv, '--resume'])
    assert summary['epochs'] == 2 and len(os.listdir(tmp_path / 'runs')) == 1
    assert len(loads) == 1  # the data read to find the folder is the run's: read once


# ---- the same run on any CPU ----

def test_the_default_precision_on_a_cpu_is_fp32_whatever_its_instructions(monkeypatch):
    for feature in ('_is_avx512_bf16_supported', '_is_amx_tile_supported'):
        monkeypatch.setattr(torch.cpu, feature, lambda: True, raising=False)
    assert train.resolve(flags.parse(['--method', 'lp', '--device', 'cpu'])).precision == 'fp32'
    assert train.resolve(flags.parse(['--method', 'lp', '--device', 'cpu', '--precision', 'bf16'])).precision == 'bf16'



def test_the_suite_runs_on_the_same_kernels_and_threads_on_every_cpu():
    """conftest pins them for this process and for every process a test starts."""
    import platform
    import subprocess
    import sys
    probe = 'import os, torch; print(torch.get_num_threads(), os.environ.get("ONEDNN_MAX_CPU_ISA"))'
    child = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True).stdout.split()
    x86 = platform.machine().lower() in ('x86_64', 'amd64')
    assert torch.get_num_threads() == 2 and child == ['2', 'AVX2' if x86 else 'None']

# ---- --help ----

def test_help_shows_every_default():
    text = ' '.join(flags.parser().format_help().split())
    for action in flags.parser()._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert f'default: {action.default}' in text or 'default' in (action.help or ''), action.option_strings
    assert '--data_dir' not in text and '--data-dir' in text


# ---- docs/new_method.md: adding a method, run as written ----

def test_the_new_method_recipe_runs_as_written(tmp_path, monkeypatch, capsys):
    """The page's two code blocks, as a reader would paste them: the prompt module, then the row in methods.py. The run
    trains one value per channel of each prompted block (counted here from the ViT's own dimensions) and moves them;
    its start line says how much of what trains is the head, its epoch line which lr it shows."""
    import importlib.util
    import re
    import sys
    import methods
    from safetensors.torch import load_file
    page = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'new_method.md')).read()
    module_code, row_code = re.findall(r'```python\n(.*?)```', page, re.S)
    (tmp_path / 'my_prompts.py').write_text(module_code)
    spec = importlib.util.spec_from_file_location('my_prompts', tmp_path / 'my_prompts.py')
    my_prompts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(my_prompts)
    monkeypatch.setitem(sys.modules, 'my_prompts', my_prompts)
    exec(row_code, dict(vars(methods)))  # as if written in methods.py: its names, its METHODS
    monkeypatch.setitem(methods.METHODS, 'channel_bias', methods.METHODS.pop('channel_bias'))  # removed afterwards
    for model in ('test_vit', 'test_resnet'):  # tokens and NCHW block inputs
        s = train.main(['--method', 'channel_bias', *SYNTH[2:], '--model', model, '--epochs', '1',
                        '--train-per-class', '8', '--out', str(tmp_path / model)])
        prompt = load_file(s['prompt_file'])
        biases = {k: v for k, v in prompt.items() if k.endswith('.b')}
        assert biases and all(v.abs().sum() > 0 for v in biases.values()), model  # zero at start, moved by training
        if model == 'test_vit':
            net = methods.build(train.resolve(flags.parse(['--method', 'lp', *SYNTH])))
            D, L = net.backbone.embed_dim, len(net.backbone.blocks)
            d = L // 3  # rho = 1/3 on a ViT (methods.DEEP_RHO)
            assert s['trainable_params'] == (D + 1) * 10 + d * D
            out = capsys.readouterr().out
            assert f'trainable {(D + 1) * 10 + d * D:,} (the head {(D + 1) * 10:,})' in out and ' last lr ' in out
            assert sorted(v.shape for v in biases.values()) == [(D, 1, 1)] * d


@pytest.mark.parametrize('cpus,processes,workers', [(16, 1, 8), (64, 4, 8), (8, 4, 1), (3, 1, 2), (8, 8, 1)])
def test_the_default_workers_on_cuda_fit_this_processs_share_of_the_cpus(monkeypatch, cpus, processes, workers):
    """A Slurm job of 8 CPUs and 4 GPUs under torchrun gets 1 loader worker a process, not 8 (32 on 8 CPUs)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', str(processes))
    assert train.resolve(flags.parse(['--method', 'lp', '--device', 'cuda'])).workers == workers
    assert train.resolve(flags.parse(['--method', 'lp', '--device', 'cuda', '--workers', '5'])).workers == 5
    assert train.resolve(flags.parse(['--method', 'lp', '--device', 'cpu'])).workers == 0
