"""--grad-checkpointing: the frozen backbone's blocks recompute their activations in backward (timm's
set_grad_checkpointing, VPT-Deep's own loop). The same gradients for every kind of method (an input prompt, deep
prompts added by hooks inside the recomputed blocks, LoRA inside them, VPT's tokens), fewer bytes saved for backward,
and a run with it trains to the same prompt and accuracy as one without."""
import pytest
import torch
from safetensors.torch import load_file

import train
from flags import parse
from methods import BuildError, build
from test_compare import TINY
from test_methods import FAST, batch
from tools import cluster, compare, protocols
from tools.bench import saved_bytes

CASES = [('lorvp', 'test_efficientnet'), ('lotep_cp', 'test_efficientnet'), ('lotep_tk', 'test_vit'),
         ('lora', 'test_vit'), ('vpt_deep', 'test_vit'), ('lorsp', 'test_resnet'), ('ft', 'test_vit')]


def pair(method, model):
    """The method's model without and with checkpointing, the same non-zero trainable weights in both."""
    models = []
    for extra in ([], ['--grad-checkpointing']):
        a = train.resolve(parse(['--method', method, '--model', model, *FAST, *extra]))
        m = build(a)
        torch.manual_seed(1)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))  # the zero-initialised factors too: a prompt that acts
        models.append((a, m))
    return models


@pytest.mark.parametrize('method,model', CASES)
def test_checkpointing_gives_the_same_gradients_and_saves_less(method, model, monkeypatch):
    (a, plain), (_, ckpt) = pair(method, model)
    x, y = batch(8)
    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint', lambda *args, **kw: calls.append(1) or original(*args,
                                                                                                         **kw))
    grads, saved = [], []
    for m in (plain, ckpt):
        m.train()
        n = len(calls)
        saved.append(saved_bytes(m, lambda: torch.nn.functional.cross_entropy(m(x), y).backward()))
        assert (len(calls) > n) == (m is ckpt)  # the blocks ran through torch's checkpoint only when asked
        grads.append({k: p.grad for k, p in m.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert grads[0][k] is not None and grads[0][k].abs().sum() > 0, k
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7, msg=k)
    assert saved[1] < saved[0], saved  # activations inside the blocks are not kept


def test_a_run_with_checkpointing_trains_to_the_same_prompt_and_accuracy(tmp_path):
    for method, model in (('lorvp', 'test_efficientnet'), ('lotep_cp', 'test_efficientnet'), ('lora', 'test_vit')):
        argv = ['--method', method, '--model', model, *FAST, '--epochs', '2', '--train-per-class', '16']
        runs = [train.main([*argv, *extra, '--out', str(tmp_path / f'{method}{len(extra)}')])
                for extra in ([], ['--grad-checkpointing'])]
        files = [load_file(r['prompt_file']) for r in runs]
        assert files[0].keys() == files[1].keys()
        for k in files[0]:
            torch.testing.assert_close(files[1][k], files[0][k], rtol=1e-4, atol=1e-6, msg=f'{method} {k}')
        assert runs[0]['test_acc'] == runs[1]['test_acc'], method


def test_what_cannot_be_checkpointed_is_refused():
    a = train.resolve(parse(['--method', 'ft', '--model', 'test_resnet', *FAST, '--grad-checkpointing']))
    with pytest.raises(BuildError, match='BatchNorm'):  # ft in train mode would update its running stats twice
        build(a)


def test_a_protocols_runs_take_it_as_how_they_run_not_what_they_compute(tmp_path):
    plain, ckpt = 'python train.py --method lp --seed 0 --out a', 'python train.py --method lp --grad-checkpointing --out b'
    assert protocols.identity(plain.replace(' --seed 0', '')) == protocols.identity(ckpt)  # the same run either way
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'config.json').write_text('{}')
    (run / 'checkpoint.pt').write_text('')
    argv = ['--method', 'lp', '--data-dir', 'here', '--out', str(run), '--grad-checkpointing']
    assert cluster.train_command(argv, str(run))[2:] == ['--resume', '--out', str(run), '--data-dir', 'here',
                                                         '--grad-checkpointing']  # a killed run resumes as asked


@pytest.mark.e2e
def test_a_comparison_with_it_reads_back_the_runs_made_without(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ['--protocol', 'offline-cifar10', '--tag', 'g', '--methods', 'lotep_cp', '--seeds', '0', *TINY, '--no-tune']
    first = compare.main(argv)
    again = compare.main([*argv, '--grad-checkpointing'])
    out = capsys.readouterr().out
    assert 'done before, read back' in out and again[0]['accs'] == first[0]['accs']
    other = compare.main([*argv[:6], '--seeds', '0,1', *argv[8:], '--grad-checkpointing'])  # a new run
    assert '--grad-checkpointing' in capsys.readouterr().out and len(other[0]['accs']) == 2
