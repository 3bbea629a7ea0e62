"""train.py: the loop is real (loss falls, only the head moves under lp, the cached linear probe is the same maths),
resume is exact (optimizer state included), a run directory has one owner, and every bad input or fault ends in one
clear message with nothing lost and no NaN written."""
import fcntl
import json
import math
import os
import subprocess
import sys

import pytest
import timm
import torch

import data
import train
from conftest import ROOT, SHARED_DATA, needs_cifar10, needs_lite0, state_equal
from flags import parse
from methods import METHODS, build

SYNTH = ['--model', 'test_vit', '--no-pretrained', '--dataset', 'synthetic', '--img-size', '32', '--batch-size', '32',
         '--precision', 'fp32']


def run(tmp_path, *args, name='run'):
    return train.main([*SYNTH, '--out', str(tmp_path / name), *args])


def metrics(tmp_path, name='run'):
    with open(tmp_path / name / 'metrics.jsonl') as f:
        return [json.loads(line) for line in f]


def fails(capsys, argv, *fragments, code=2):
    """train.main(argv) ends in one message (no traceback) naming every fragment, with this exit code."""
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    for f in fragments:
        assert f in err, (f, err)
    return err


# ---- the loop ----

@pytest.mark.parametrize('method,lr', [('lp', '0.05'), ('ft', '0.001')])
def test_lp_and_ft_lower_the_loss(tmp_path, method, lr):
    s = run(tmp_path, '--method', method, '--epochs', '3', '--lr', lr)
    losses = [m['train_loss'] for m in metrics(tmp_path)]
    assert losses[-1] < 0.6 * losses[0] and losses[-1] < 1.0  # chance level is ln 10 = 2.30
    assert s['test_acc'] > 60  # 10 classes
    assert set(s) >= {'method', 'model', 'weights', 'precision', 'test_acc', 'best_test_acc', 'trainable_params',
                      'backbone_params', 'train_time_s', 'train_images_per_s', 'peak_mem_gb'}


def test_lp_trains_only_the_head_and_keeps_the_backbone_bit_identical(tmp_path):
    a = train.resolve(parse([*SYNTH, '--method', 'lp', '--epochs', '1']))
    splits = data.load('synthetic', data_dir='.', img_size=32, seed=0)
    model = build(a)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a.resume = False
    train.train(a, model, splits, train.RunDir(str(tmp_path)))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {'head.weight', 'head.bias'}
    assert all(p.grad is None for p in model.backbone.parameters())


def test_the_cached_linear_probe_is_the_uncached_one(tmp_path, monkeypatch):
    """lp trains its head on features computed once; the same batches through the whole model give the same head and
    accuracy (to float tolerance: the backbone sees other batch compositions)."""
    args = ['--method', 'lp', '--epochs', '2', '--lr', '0.05', '--val-split', '0.2']
    cached = run(tmp_path, *args, name='cached')
    calls = []
    monkeypatch.setattr(train, 'what_trains', lambda a, model, splits: calls.append(1) or (model, splits))
    uncached = run(tmp_path, *args, name='uncached')  # the whole model trains, its head alone moving
    assert calls
    test_accs = lambda name: [m['test_acc'] for m in metrics(tmp_path, name)]
    assert test_accs('cached') == test_accs('uncached')
    assert cached['val_acc'] == uncached['val_acc']
    a = torch.load(tmp_path / 'cached' / 'checkpoint.pt', weights_only=False)['model']
    b = torch.load(tmp_path / 'uncached' / 'checkpoint.pt', weights_only=False)['model']
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_test_every_evaluates_the_test_set_every_n_epochs_and_after_the_last(tmp_path):
    s = run(tmp_path, '--method', 'lp', '--epochs', '3', '--lr', '0.05', '--test-every', '2')
    assert ['test_acc' in m for m in metrics(tmp_path)] == [False, True, True]
    assert s['test_acc'] == metrics(tmp_path)[-1]['test_acc']


def test_val_split_selects_an_epoch(tmp_path):
    s = run(tmp_path, '--method', 'lp', '--epochs', '2', '--lr', '0.05', '--val-split', '0.2')
    assert s['val_selected_epoch'] in (1, 2)
    assert s['val_selected_test_acc'] == metrics(tmp_path)[s['val_selected_epoch'] - 1]['test_acc']


@pytest.mark.e2e
def test_resume_equals_an_uninterrupted_run_optimizer_state_included(tmp_path, monkeypatch):
    args = ['--method', 'lorsp_dropout', '--epochs', '3', '--lr', '0.05']  # momentum, and random dropout masks
    whole = run(tmp_path, *args, name='whole')
    original = train.Progress.update

    def killed_in_epoch_2(self, i, *rest):
        if self.label.startswith('epoch 2') and i == train.READ_EVERY:  # the first progress update of epoch 2
            raise KeyboardInterrupt
        return original(self, i, *rest)
    monkeypatch.setattr(train.Progress, 'update', killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, *args, name='killed')
    assert len(metrics(tmp_path, 'killed')) == 1
    after_epoch_1 = torch.load(tmp_path / 'killed' / 'checkpoint.pt', weights_only=False)
    assert after_epoch_1['optimizer']['state']  # momentum buffers were saved ...
    monkeypatch.setattr(train.Progress, 'update', original)
    loaded = []
    load = torch.optim.Optimizer.load_state_dict
    monkeypatch.setattr(torch.optim.Optimizer, 'load_state_dict', lambda self, sd: loaded.append(sd) or load(self, sd))
    resumed = train.main(['--resume', '--out', str(tmp_path / 'killed')])
    assert len(loaded) == 1 and loaded[0]['state'].keys() == after_epoch_1['optimizer']['state'].keys()  # ... restored
    assert resumed['test_acc'] == whole['test_acc']
    losses = lambda name: [m['train_loss'] for m in metrics(tmp_path, name)]
    assert losses('killed') == losses('whole')
    a = torch.load(tmp_path / 'whole' / 'checkpoint.pt', weights_only=False)
    b = torch.load(tmp_path / 'killed' / 'checkpoint.pt', weights_only=False)
    assert state_equal(a['model'], b['model'])
    assert all(state_equal(a['optimizer']['state'][k], b['optimizer']['state'][k]) for k in a['optimizer']['state'])
    # a finished run resumes to its summary without training again
    assert train.main(['--resume', '--out', str(tmp_path / 'whole')])['test_acc'] == whole['test_acc']


# ---- bad input: one clear message, nothing written ----

@pytest.mark.parametrize('flag,value', [('--lr', 'nan'), ('--lr', 'inf'), ('--lr', '-1'), ('--wd', 'nan'),
                                        ('--lr-scale', 'nan'), ('--tau', 'nan'), ('--tau', '0.5'),
                                        ('--prompt-lr', '-1'), ('--prompt-lr', 'inf'), ('--seed', '-1'),
                                        ('--epochs', '0'), ('--batch-size', '-4'), ('--rho', '0'), ('--rho', '1.5'),
                                        ('--init-std', 'nan'),
                                        ('--sparsity', '1'), ('--val-split', 'nan'), ('--image-scale', '1.5'),
                                        ('--v-th', 'inf'), ('--warmup-epochs', '-1'), ('--device', 'gpu'),
                                        ('--rank', '0'), ('--img-size', 'abc')])
def test_every_numeric_flag_refuses_nonfinite_and_out_of_range_values(tmp_path, capsys, flag, value):
    fails(capsys, [*SYNTH, '--method', 'lorsp', '--out', str(tmp_path / 'r'), flag, value], flag)
    assert not (tmp_path / 'r').exists()


def test_bad_input_ends_with_one_clear_message(tmp_path, capsys, no_network):
    out = ['--out', str(tmp_path / 'r')]
    fails(capsys, ['--method', 'lotep_XX'], "invalid choice: 'lotep_XX'")
    fails(capsys, ['--method', 'lp', '--dataset', 'mnist'], "unknown dataset 'mnist'", 'cifar10', 'folder')
    fails(capsys, ['--method', 'lp', '--model', 'resnet19', '--no-pretrained', *out], 'resnet18')
    fails(capsys, ['--method', 'lp', '--model', 'resnet18.nope', '--no-pretrained', *out], 'tv_in1k')
    fails(capsys, ['--method', 'lp', '--model', 'test_vit', '--no-pretrained', '--dataset', 'cifar100',
                   '--data-dir', str(tmp_path / 'nodata'), *out], "'cifar100'", 'nodata')
    assert not (tmp_path / 'nodata').exists()  # a mistyped --data-dir is not created
    fails(capsys, ['--resume', '--out', str(tmp_path / 'never')], 'no run to resume')
    fails(capsys, [*SYNTH, '--method', 'grouped_lorvp', '--groups', '1000', *out], 'groups', '--groups')
    fails(capsys, [*SYNTH, '--method', 'autovp', '--label-map', 'freq', '--map-k', '600', *out], 'source classes')
    fails(capsys, ['--method', 'vpt_deep', '--model', 'test_resnet', '--no-pretrained', '--dataset', 'synthetic',
                   *out], 'needs a ViT')
    fails(capsys, [*SYNTH, '--method', 'lp', '--save-prompts', '4', *out], 'lorsp')
    fails(capsys, [*SYNTH, '--method', 'lp', '--compile', *out], 'LoRSP')
    if not torch.cuda.is_available():
        fails(capsys, [*SYNTH, '--method', 'lp', '--device', 'cuda:7', *out], 'cuda')
    assert not (tmp_path / 'r').exists()  # failed runs leave nothing


def test_image_sizes_the_backbone_cannot_see_are_refused(tmp_path, capsys):
    out = ['--out', str(tmp_path / 'r'), '--dataset', 'synthetic', '--no-pretrained', '--method', 'lp']
    fails(capsys, ['--model', 'test_efficientnet', '--img-size', '7', *out], 'at least 32 px')
    fails(capsys, ['--model', 'test_vit', '--img-size', '40', *out], 'multiple of 16', 'remainder')
    fails(capsys, ['--model', 'test_vit', '--img-size', '8', *out], 'multiple of 16')


def test_the_head_is_sized_from_what_the_backbone_outputs(tmp_path):
    s = train.main(['--method', 'lp', '--model', 'mobilenetv3_small_100', '--no-pretrained', '--dataset', 'synthetic',
                    '--img-size', '32', '--epochs', '1', '--train-per-class', '4',
                    '--out', str(tmp_path / 'r')])
    assert s['trainable_params'] == (1024 + 1) * 10  # its head conv makes 1024 features, not num_features = 576


@pytest.fixture
def resnet_file(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model('test_resnet')
    torch.save(src.state_dict(), tmp_path / 'good.pth')
    return src


def test_weights_load_all_of_the_backbone_or_nothing(tmp_path, capsys, resnet_file):
    from backbones import create
    loaded = create('test_resnet', weights=str(tmp_path / 'good.pth'), num_classes=None, img_size=32)
    assert all(torch.equal(a, b) for a, b in zip(resnet_file.state_dict().values(), loaded.state_dict().values()))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    sd = resnet_file.state_dict()
    (tmp_path / 'empty.pth').write_bytes(b'')
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    torch.save({'foo.weight': torch.zeros(3)}, tmp_path / 'nomatch.pth')
    torch.save({k: v for k, v in sd.items() if 'layer4' not in k}, tmp_path / 'partial.pth')
    torch.save(timm.create_model('test_efficientnet').state_dict(), tmp_path / 'other.pth')
    torch.save([1, 2, 3], tmp_path / 'list.pth')
    (tmp_path / 'folder').mkdir()
    base = ['--method', 'lp', '--model', 'test_resnet', '--dataset', 'synthetic', '--img-size', '32',
            '--out', str(tmp_path / 'r'), '--weights']
    for name, fragment in [('missing.pth', 'does not exist'), ('folder', 'is a directory'), ('empty.pth', 'empty'),
                           ('text.pth', 'not a readable'), ('nomatch.pth', 'none of its 1 tensors'),
                           ('partial.pth', 'missing from it'), ('other.pth', 'another architecture'),
                           ('list.pth', 'no state dict')]:
        fails(capsys, [*base, str(tmp_path / name)], str(tmp_path / name), fragment)
    assert not (tmp_path / 'r').exists()


# ---- run directories ----

def test_a_run_directory_has_one_owner_and_foreign_folders_are_refused(tmp_path, capsys):
    (tmp_path / 'busy').mkdir()
    (tmp_path / 'busy' / 'config.json').write_text('{}')
    with open(tmp_path / 'busy' / '.lock', 'a') as lock:  # another process owns it
        fcntl.flock(lock, fcntl.LOCK_EX)
        fails(capsys, [*SYNTH, '--method', 'lp', '--out', str(tmp_path / 'busy')], 'another process')
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'notes.txt').write_text('keep me')
    fails(capsys, [*SYNTH, '--method', 'lp', '--out', str(tmp_path / 'mine')], 'holds no run')
    assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'keep me'
    (tmp_path / 'file').write_text('x')
    fails(capsys, [*SYNTH, '--method', 'lp', '--out', str(tmp_path / 'file')], 'is a file')
    fails(capsys, [*SYNTH, '--method', 'lp', '--out', str(tmp_path / 'file' / 'sub')], 'cannot write')


@pytest.mark.e2e
def test_two_processes_never_write_one_run(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), *SYNTH, '--epochs', '3', '--out', str(tmp_path / 'r')]
    first = subprocess.Popen([*cmd, '--method', 'lp'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / 'r' / 'config.json').exists() and first.poll() is None:
        pass
    second = subprocess.run([*cmd, '--method', 'lorvp'], capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=120) == 0
    assert second.returncode == 2 and 'Traceback' not in second.stderr
    assert 'another process' in second.stderr or 'already holds a run' in second.stderr
    assert {json.loads(line)['epoch'] for line in (tmp_path / 'r' / 'metrics.jsonl').read_text().splitlines()} == \
        {0, 1, 2} and json.loads((tmp_path / 'r' / 'config.json').read_text())['args']['method'] == 'lp'


def test_a_run_that_failed_before_its_first_epoch_starts_again_with_corrected_flags(tmp_path, capsys, monkeypatch):
    def no_data(*a, **k):
        raise data.DataError('no data here')
    monkeypatch.setattr(train.data, 'load', no_data)
    (tmp_path / 'r').mkdir()  # a directory the user made for the run
    fails(capsys, [*SYNTH, '--method', 'lp', '--epochs', '1', '--out', str(tmp_path / 'r')], 'no data here')
    assert set(os.listdir(tmp_path / 'r')) <= {'.lock'}  # set-up failed: nothing written (config.json comes after)
    monkeypatch.undo()
    s = run(tmp_path, '--method', 'lorvp', '--epochs', '1', name='r')  # corrected: another method, the same --out
    assert s['method'] == 'lorvp' and json.loads((tmp_path / 'r' / 'config.json').read_text())['args']['method'] == \
        'lorvp'
    fails(capsys, [*SYNTH, '--method', 'lp', '--out', str(tmp_path / 'r')], 'already holds a run')


def test_resume_refuses_other_flags_and_damaged_files(tmp_path, capsys):
    run(tmp_path, '--method', 'lorvp', '--epochs', '1', '--lr', '0.05', '--lr-scale', '0.5')
    out = str(tmp_path / 'run')
    err = fails(capsys, ['--resume', '--out', out, '--lr', '0.1', '--epochs', '4'], '--lr 0.1 (saved: 0.05)',
                '--epochs 4 (saved: 1)', '--device', '--workers')
    assert 'lr-scale' not in err
    assert train.main(['--resume', '--out', out, '--lr-scale', '0.5', '--workers', '0',
                       '--data-dir', str(tmp_path / 'moved')])['method'] == 'lorvp'  # where the data lies may change
    os.remove(tmp_path / 'run' / 'summary.json')
    ckpt = tmp_path / 'run' / 'checkpoint.pt'
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    fails(capsys, ['--resume', '--out', out], 'checkpoint.pt is damaged')
    os.remove(ckpt)
    fails(capsys, ['--resume', '--out', out], 'metrics.jsonl records epochs', 'checkpoint.pt is missing')
    (tmp_path / 'run' / 'config.json').write_text('{"args": {"method": ')
    fails(capsys, ['--resume', '--out', out], 'config.json is damaged')


def test_a_diverging_run_stops_clearly_keeps_its_last_checkpoint_and_writes_no_nan(tmp_path, capsys, monkeypatch):
    original, calls = torch.nn.functional.cross_entropy, []

    def nan_in_epoch_2(logits, y, **kw):
        calls.extend([1] if torch.is_grad_enabled() else [])  # training steps only (evaluation has its own test)
        loss = original(logits, y, **kw)
        return loss * float('nan') if len(calls) > 22 and torch.is_grad_enabled() else loss  # step 4 of epoch 2
    monkeypatch.setattr(train.F, 'cross_entropy', nan_in_epoch_2)
    fails(capsys, [*SYNTH, '--method', 'lorvp', '--epochs', '3', '--out', str(tmp_path / 'r')],
          'epoch 2, steps 1-10', 'nan', '--lr', code=3)  # the loss is read every READ_EVERY = 10 steps
    checkpoint = torch.load(tmp_path / 'r' / 'checkpoint.pt', weights_only=False)
    assert len(checkpoint['history']) == 1 and all(torch.isfinite(v).all() for v in checkpoint['model'].values())
    assert not (tmp_path / 'r' / 'summary.json').exists()
    for name in ('config.json', 'metrics.jsonl'):
        text = (tmp_path / 'r' / name).read_text()
        json.loads(text) if name.endswith('.json') else [json.loads(line) for line in text.splitlines()]
        assert 'NaN' not in text and 'Infinity' not in text


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    original, saves = torch.save, []

    def disk_full_at_epoch_2(obj, f, *a, **k):
        saves.append(1)
        if len(saves) == 2:
            with open(f, 'wb') as partial:
                partial.write(b'half a checkpoint')
            raise OSError(28, 'No space left on device')
        return original(obj, f, *a, **k)
    monkeypatch.setattr(torch, 'save', disk_full_at_epoch_2)
    fails(capsys, [*SYNTH, '--method', 'lorvp', '--epochs', '3', '--out', str(tmp_path / 'r')],
          'checkpoint.pt', 'No space left', code=3)
    assert len(torch.load(tmp_path / 'r' / 'checkpoint.pt', weights_only=False)['history']) == 1
    assert not (tmp_path / 'r' / 'checkpoint.pt.tmp').exists()


@pytest.mark.e2e
def test_cli_offline_resnet18_is_one_message_not_a_traceback(tmp_path, offline_env):
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--method', 'lp', '--model', 'resnet18',
                        '--dataset', 'synthetic', '--out', str(tmp_path / 'r')],
                       capture_output=True, text=True, env=offline_env, timeout=120)
    assert p.returncode == 2
    assert 'Traceback' not in p.stderr
    assert 'weights of resnet18.tv_in1k' in p.stderr and '--weights' in p.stderr and '--no-pretrained' in p.stderr
    assert p.stderr.count('error:') == 1 and 'pip install' not in p.stderr and 'tf_efficientnet_lite0' in p.stderr


@pytest.mark.e2e
@pytest.mark.parametrize('method,label_map', [('lorvp', 'ilm'), ('evp', 'lp')])
def test_torchrun_on_two_cpu_processes_equals_one_process(tmp_path, method, label_map):
    """DDP over gloo: the same global batch gives the same accuracy (exactly: validation and test) and the same trained
    prompt to atol 1e-5 (the processes' gradients are averaged in another order of summation than one process's).
    Every reduction the loop makes goes through it: LoR-VP's gradients (by DDP) with ILM's label-mapping counts; EVP's
    canvas gradient beside its head's gradients. 80 training images in batches of 79: the last global batch holds one
    image, so one process trains on a stand-in weighted 0."""
    args = [*SYNTH, '--method', method, '--label-map', label_map, '--epochs', '2', '--train-per-class', '10',
            '--batch-size', '79', '--val-split', '0.2', '--lr', '0.05']
    one = train.main([*args, '--out', str(tmp_path / 'one')])
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone',
                        os.path.join(ROOT, 'train.py'), *args, '--out', str(tmp_path / 'two')],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    two = json.loads((tmp_path / 'two' / 'summary.json').read_text())
    assert two['processes'] == 2 and two['test_acc'] == one['test_acc'] and two['val_acc'] == one['val_acc']
    a = torch.load(tmp_path / 'one' / 'checkpoint.pt', weights_only=False)['model']
    b = torch.load(tmp_path / 'two' / 'checkpoint.pt', weights_only=False)['model']
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert a['prompt.B' if method == 'lorvp' else 'head.weight'].abs().sum() > 0  # it trained


@pytest.mark.e2e
@needs_cifar10
@needs_lite0
def test_lp_with_the_offline_imagenet_weights_is_well_above_chance(tmp_path):
    """Measured: 70.4% (96 px, 500 train / 500 test CIFAR-10 images, 2 epochs, batch 32, this CPU); random weights
    give about 14%. Chance is 10%."""
    s = train.main(['--method', 'lp', '--model', 'tf_efficientnet_lite0', '--dataset', 'cifar10', '--data-dir',
                    SHARED_DATA, '--train-per-class', '50', '--test-limit', '500', '--img-size', '96', '--epochs',
                    '2', '--batch-size', '32', '--out', str(tmp_path / 'r')])
    assert s['test_acc'] > 60 and s['model'] == 'tf_efficientnet_lite0.in1k'


# ---- the saved model is the trained model ----

@pytest.mark.e2e
@pytest.mark.parametrize('method', sorted(METHODS))
def test_every_methods_prompt_file_reproduces_its_runs_test_accuracy(tmp_path, method):
    """train.py with every flag at its default but the data and model sizes; then predict.py --dataset on the run's
    prompt file, and the file's tensors against the last epoch's checkpoint. A BatchNorm backbone (test_resnet; a ViT
    for vpt_deep), so that anything that runs the model in train mode between the last epoch and the saving (a speed
    bench once did, for ft: its BatchNorm statistics took the timing batches) changes the saved file."""
    from tools import predict
    from tools.serve import read_prompt
    model = 'test_vit' if method == 'vpt_deep' else 'test_resnet'
    s = train.main(['--method', method, '--model', model, '--no-pretrained', '--dataset', 'synthetic', '--img-size',
                    '32', '--epochs', '1', '--train-per-class', '20', '--out', str(tmp_path / 'r')])
    acc = predict.main(['--prompt', str(tmp_path / 'r' / 'prompt.safetensors'), '--dataset', 'synthetic'])
    assert acc == s['test_acc'], method
    assert ('spike_rate' in s) == (method == 'lorsp') and ('prompt_density' in s) == method.startswith('lorsp')
    saved, _ = read_prompt(str(tmp_path / 'r' / 'prompt.safetensors'))
    trained = torch.load(tmp_path / 'r' / 'checkpoint.pt', weights_only=False)['model']
    assert state_equal(saved, {k: v.cpu() for k, v in trained.items()}), method


# ---- divergence without a NaN ----

def test_the_explode_rule_on_both_sides_of_its_line():
    """A window's mean loss above 10 x max(ln K, the first step's loss) stops the run; at or below it the run goes on.
    A fresh head starts near ln K = 2.30 (K = 10), so the line is at 23.0; a random backbone whose first loss is 100
    is held to 1,000."""
    line = 10 * math.log(10)
    for healthy, first in ((math.log(10), 2.2), (5.0, 2.4), (line - 0.01, 1.0), (999.0, 100.0)):
        train.check_loss(healthy, 10, first, 0, 'steps 1-10')
    for broken, first, fragment in ((line + 0.01, 2.2, 'exploded'), (1001.0, 100.0, 'exploded'),
                                    (float('nan'), 2.2, 'nan'), (float('inf'), 2.2, 'inf')):
        with pytest.raises(train.Diverged, match=fragment):
            train.check_loss(broken, 10, first, 1, 'steps 11-20')


def test_a_loss_that_explodes_without_becoming_nan_stops_the_run(tmp_path, capsys):
    """LoR-VP at 1,500 times its lr: the loss reaches about 1,000 (finite) in its first steps; the run ends with the
    message, exit 3, no summary, as for a NaN."""
    fails(capsys, [*SYNTH, '--method', 'lorvp', '--lr', '30', '--epochs', '2', '--out', str(tmp_path / 'r')],
          'exploded', 'ln K', 'epoch 1, steps 1-10', '--lr', code=3)
    assert not (tmp_path / 'r' / 'summary.json').exists()


# ---- several processes: legal on NCCL ----

def test_a_cuda_run_creates_a_group_where_cpu_tensors_have_a_backend_too(monkeypatch):
    """NCCL serves CUDA tensors only; set-up's check and any CPU tensor need gloo beside it. CUDA is faked here: the
    group's creation is recorded, not made."""
    import distributed
    made = {}
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('LOCAL_RANK', '1')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: made.setdefault('set_device', device))
    monkeypatch.setattr(distributed.dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(distributed.dist, 'init_process_group',
                        lambda backend, **kw: made.update(backend=backend, **kw))
    assert distributed.init('auto') == 'cuda:1'
    assert sorted(made['backend'].split(',')) == ['cpu:gloo', 'cuda:nccl']  # 'nccl' alone serves CUDA tensors only
    assert made['set_device'] == torch.device('cuda', 1) == made['device_id']
    made.clear()
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert distributed.init('auto') == 'auto' and made['backend'] == 'gloo'  # the CPU: gloo for everything


# ---- nothing a user made is lost ----

def test_a_finished_run_without_its_checkpoint_is_never_cleared(tmp_path, capsys):
    """A finished run whose checkpoint.pt was deleted (to save disk) keeps its summary, metrics and config: a new run
    into its folder is refused before anything is touched, also when the new run's own flags are bad."""
    run(tmp_path, '--method', 'lp', '--epochs', '1')
    os.remove(tmp_path / 'run' / 'checkpoint.pt')
    before = {n: (tmp_path / 'run' / n).read_bytes() for n in ('summary.json', 'metrics.jsonl', 'config.json')}
    fails(capsys, [*SYNTH, '--method', 'lorvp', '--out', str(tmp_path / 'run')], 'already holds a run',
          'summary.json')
    fails(capsys, [*SYNTH, '--method', 'lotep_cp', '--rho', '0.01', '--out', str(tmp_path / 'run')],
          'already holds a run')
    assert {n: (tmp_path / 'run' / n).read_bytes() for n in before} == before


@pytest.mark.e2e
def test_a_run_on_a_full_disk_keeps_its_previous_checkpoint_and_leaves_no_partial_file(tmp_path):
    """A real short write: the file size limit (ulimit -f, in 1 KB blocks) lets config.json and the metrics through and
    stops ft's 1.2 MB checkpoint; torch.save reports it as a RuntimeError, which must end as a message, with no .tmp."""
    cmd = ' '.join([sys.executable, os.path.join(ROOT, 'train.py'), *SYNTH, '--method', 'ft', '--epochs', '1',
                    '--train-per-class', '4', '--out', str(tmp_path / 'r')])
    p = subprocess.run(['bash', '-c', f'ulimit -f 300; exec {cmd}'], capture_output=True, text=True, timeout=300)
    assert p.returncode == 3 and 'Traceback' not in p.stderr, p.stderr[-2000:]
    assert 'could not write' in p.stderr and 'checkpoint.pt' in p.stderr
    assert not (tmp_path / 'r' / 'checkpoint.pt.tmp').exists() and not (tmp_path / 'r' / 'checkpoint.pt').exists()


def test_a_validation_split_that_holds_no_image_and_another_methods_checkpoint_are_refused(tmp_path, capsys):
    fails(capsys, [*SYNTH, '--method', 'lp', '--train-per-class', '1', '--val-split', '0.1', '--out',
                   str(tmp_path / 'v')], '--val-split 0.1 holds out no image')
    run(tmp_path, '--method', 'lorvp', '--epochs', '2', name='r')
    ckpt = torch.load(tmp_path / 'r' / 'checkpoint.pt', weights_only=False)
    os.remove(tmp_path / 'r' / 'summary.json')
    ckpt['model'] = {'prompt.a': torch.zeros(3)}  # another method's state, as a copied checkpoint would be
    torch.save(ckpt, tmp_path / 'r' / 'checkpoint.pt')
    fails(capsys, ['--resume', '--out', str(tmp_path / 'r')], 'checkpoint.pt', 'another model')
