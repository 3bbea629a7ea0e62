"""A run is what it says: its identity holds its data (other images under the same class names never share a run
folder or a result, the same files moved elsewhere do), a flag that changes nothing a run computes is named when a
finished run is reported, the first message offline names every missing thing and the way to run here, and each
refusal of issue #49 is one line with nothing made by the user touched."""
import json
import os
import shutil
import unicodedata

import numpy as np
import pytest
import torch
from PIL import Image

import data
import flags
import lorsp
import train
from test_train import fails
from tools import predict

RUN = ['--model', 'test_vit', '--no-pretrained', '--img-size', '32', '--batch-size', '16', '--precision', 'fp32',
       '--method', 'lp', '--epochs', '1', '--dataset', 'folder']


def folder(root, seed, classes=('cat', 'dog'), per_class=6):
    """root/{train,test}/<class>/<k>.png: random images of a seed (other seeds, other images, the same names)."""
    rng = np.random.default_rng(seed)
    for split in ('train', 'test'):
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for k in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    os.path.join(root, split, c, f'{k}.png'))
    return str(root)


def snapshot(path):
    return {f: open(os.path.join(path, f), 'rb').read() for f in sorted(os.listdir(path))}


# ---- the silent-wrong: another data set got an earlier run's result ----

def test_runs_on_other_data_never_share_a_folder_or_a_result(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a, b = folder(tmp_path / 'A', 0), folder(tmp_path / 'B', 1)  # the same class names, other images
    first = train.main([*RUN, '--data-dir', a])
    other = train.main([*RUN, '--data-dir', b])
    assert 'has already finished' not in capsys.readouterr().out  # B was run, not reported as A's
    assert len(os.listdir(tmp_path / 'runs')) == 2 and first['data'] != other['data']
    moved = shutil.copytree(a, tmp_path / 'elsewhere' / 'A')  # the same files on another disk: the same run
    again = train.main([*RUN, '--data-dir', str(moved)])
    assert 'has already finished (the same settings on the same data)' in capsys.readouterr().out
    assert again == first and len(os.listdir(tmp_path / 'runs')) == 2
    out = os.path.join('runs', sorted(os.listdir(tmp_path / 'runs'))[0])
    made_on = json.loads(open(os.path.join(out, 'config.json')).read())['data']
    other_data = b if made_on == first['data'] else a
    before = snapshot(out)
    fails(capsys, [*RUN, '--data-dir', other_data, '--out', out], 'made on other data', other_data)
    fails(capsys, ['--resume', '--out', out, '--data-dir', other_data], 'made on other data', 'resume it with the data')
    assert snapshot(out) == before  # nothing touched


def test_a_resume_without_out_reads_its_data_once_or_where_the_run_was_made(tmp_path, monkeypatch):
    """--resume without --out finds the folder by the data at the --data-dir given (here the default, data/) and goes
    on with that data, read once; where the run was made on another --data-dir, on that one, as its saved flags say."""
    monkeypatch.chdir(tmp_path)
    made = folder(tmp_path / 'A', 0)
    with monkeypatch.context() as m:
        m.setattr(train, 'finish', lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
        for data_dir in (made, 'data'):
            with pytest.raises(KeyboardInterrupt):
                train.main([*RUN, '--data-dir', data_dir, '--seed', str(len(data_dir))])
            if data_dir == made:
                shutil.copytree(made, tmp_path / 'data')  # the same images, in the default --data-dir
    loads, load = [], data.load
    monkeypatch.setattr(data, 'load', lambda *args, **kw: loads.append(kw['data_dir']) or load(*args, **kw))
    for data_dir in (made, 'data'):
        assert train.main([*RUN, '--seed', str(len(data_dir)), '--resume'])['epochs'] == 1
    assert loads == [str(tmp_path / 'data'), made, str(tmp_path / 'data')]


def test_a_changed_image_under_the_same_name_is_other_data(tmp_path):
    root = folder(tmp_path / 'A', 0)
    kw = dict(data_dir=root, img_size=32, seed=0)
    first = data.load('folder', **kw).fingerprint
    assert data.load('folder', **kw).fingerprint == first  # the same files: the same fingerprint
    path = os.path.join(root, 'train', 'cat', '0.png')
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)  # another picture, the same name
    assert data.load('folder', **kw).fingerprint != first
    os.rename(os.path.join(root, 'test', 'dog'), os.path.join(root, 'test', 'cat2'))
    os.makedirs(os.path.join(root, 'train', 'cat2'))
    shutil.copy(path, os.path.join(root, 'train', 'cat2', '0.png'))
    assert data.load('folder', **kw).fingerprint != first  # other classes


def test_flags_that_change_nothing_a_run_computes_are_named_with_a_finished_run(tmp_path, capsys):
    root, out = folder(tmp_path / 'A', 0), str(tmp_path / 'r')
    first = train.main([*RUN, '--data-dir', root, '--out', out])
    capsys.readouterr()
    again = train.main([*RUN, '--data-dir', root, '--out', out, '--grad-checkpointing', '--workers', '1'])
    said = capsys.readouterr().out
    assert again == first and 'note: --grad-checkpointing, --workers 1: how a run runs, not what it computes' in said \
        and said.count('note:') == 1
    train.main([*RUN, '--data-dir', root, '--out', out])  # as it was made: no note
    assert 'note:' not in capsys.readouterr().out


# ---- the first message a user meets offline ----

def test_offline_the_first_message_names_every_missing_thing_and_the_way_to_run_here(tmp_path, capsys, no_network,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = fails(capsys, ['--method', 'lotep_cp', '--model', 'resnet18'], 'resnet18.tv_in1k', "'cifar100'",
                '--model tf_efficientnet_lite0 --dataset cifar10-sample --img-size 96')
    assert err.count('error:') == 1 and 'pip install' not in err  # requirements.txt installs Lite0's package
    assert not os.path.exists(tmp_path / 'runs') and not os.path.exists(tmp_path / 'data')
    fails(capsys, ['--method', 'lp', '--model', 'resnet18', '--dataset', 'cifar10-sample'], 'resnet18.tv_in1k',
          '--dataset cifar10-sample --img-size 96')  # the data is here: the weights alone are named


# ---- refusals: one line, nothing touched ----

def test_warmups_that_cannot_work_are_refused(tmp_path, capsys):
    base = ['--model', 'test_vit', '--no-pretrained', '--dataset', 'synthetic', '--img-size', '32', '--epochs', '4',
            '--out', str(tmp_path / 'r')]
    fails(capsys, [*base, '--method', 'vpt_deep', '--warmup-epochs', '5'], 'longer than the run', 'at most 4')
    fails(capsys, [*base, '--method', 'lorvp', '--warmup-epochs', '1'], 'has no warmup', '--schedule-lr warmup_cosine')
    a = train.resolve(flags.parse([*base, '--method', 'vpt_deep', '--warmup-epochs', '4']))
    assert a.warmup_epochs == 4 and train.lr_factor(a, 4 * 10 - 1, 4 * 10, 10) == 1.0  # reaches its base at the end
    assert train.resolve(flags.parse([*base, '--method', 'lorvp'])).warmup_epochs is None
    assert not (tmp_path / 'r').exists()


def test_lorsp_needs_a_leak(capsys):
    for tau in (1.0, 0.5):
        with pytest.raises(ValueError, match='tau must be > 1'):
            lorsp.LoRSP(size=8, tau=tau)
    with pytest.raises(SystemExit):
        flags.parse(['--method', 'lorsp', '--tau', '1'])
    assert 'not a finite number in (1, inf]' in capsys.readouterr().err
    lorsp.LoRSP(size=8, tau=1.0001)


def test_a_blown_up_first_epoch_says_no_checkpoint_was_written():
    with pytest.raises(train.Diverged, match='no epoch had finished, so no checkpoint was written'):
        train.check_loss(float('nan'), 10, 2.3, 0, 'steps 1-10')
    with pytest.raises(train.Diverged, match=r'its last checkpoint \(epoch 2\) is kept'):
        train.check_loss(float('nan'), 10, 2.3, 2, 'steps 1-10')


def test_a_32_bit_image_of_8_bit_values_reads_as_a_viewer_shows_it(tmp_path):
    from formats.images import FileImages
    values = np.arange(256, dtype=np.int32).reshape(16, 16)
    Image.fromarray(values).save(tmp_path / 'eight.tif')
    Image.fromarray(values * 257).save(tmp_path / 'sixteen.tif')  # the same picture at 16 bits
    for name in ('eight.tif', 'sixteen.tif'):
        assert Image.open(tmp_path / name).mode == 'I'
        x, _ = FileImages([str(tmp_path / name)], [0])[0]
        assert torch.allclose(x[0], torch.from_numpy(values / 255.0).float(), atol=1e-6), name


def test_class_folders_written_in_two_unicode_forms_are_one_class(tmp_path, capsys):
    root = folder(tmp_path / 'A', 0, classes=(unicodedata.normalize('NFC', 'caf\u00e9'), 'dog'))
    nfd = unicodedata.normalize('NFD', 'caf\u00e9')
    os.rename(os.path.join(root, 'test', unicodedata.normalize('NFC', 'caf\u00e9')), os.path.join(root, 'test', nfd))
    s = data.load('folder', data_dir=root, img_size=32, seed=0)
    assert s.classes == [unicodedata.normalize('NFC', 'caf\u00e9'), 'dog'] and sorted(set(s.test.base.labels)) == [0, 1]
    os.makedirs(os.path.join(root, 'train', nfd))
    shutil.copy(os.path.join(root, 'train', 'dog', '0.png'), os.path.join(root, 'train', nfd, '0.png'))
    with pytest.raises(data.DataError, match='two Unicode forms'):
        data.load('folder', data_dir=root, img_size=32, seed=0)


def test_an_image_over_pils_pixel_limit_is_named_with_the_fix(tmp_path, monkeypatch):
    from formats.images import FileImages
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / 'big.png')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # 4,096 pixels is over 2 x the limit
    with pytest.raises(data.DataError) as e:
        FileImages([str(tmp_path / 'big.png')], [0])[0]
    assert 'big.png' in str(e.value) and 'resize the image below that size' in str(e.value)


def test_predict_reads_a_folders_test_images_alone(tmp_path, capsys):
    root = folder(tmp_path / 'A', 0, classes=('cat', 'dog', 'eel'))
    s = train.main([*RUN, '--data-dir', root, '--out', str(tmp_path / 'r')])
    prompt = s['prompt_file']
    alone = tmp_path / 'only-test'
    shutil.copytree(os.path.join(root, 'test'), alone / 'test')
    shutil.rmtree(alone / 'test' / 'eel')  # fewer classes, matched by name
    acc = predict.main(['--prompt', prompt, '--dataset', 'folder', '--data-dir', str(alone)])
    assert 0 <= acc <= 100 and '12 folder test images' in capsys.readouterr().out
    shutil.copytree(os.path.join(root, 'train'), alone / 'train')
    os.makedirs(alone / 'train' / 'fox')  # a class of train/ the prompt never saw: test/ is all predict reads
    assert predict.main(['--prompt', prompt, '--dataset', 'folder', '--data-dir', str(alone)]) == acc
    assert predict.main(['--prompt', prompt, '--dataset', 'folder', '--data-dir', root]) == s['test_acc']


def test_a_file_named_like_a_task_is_read_as_a_file(tmp_path):
    odd, plain = tmp_path / '1:cat.png', tmp_path / 'cat.png'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(odd, format='PNG')
    assert predict.expand([str(odd)], 1) == [(None, str(odd))]  # no task 1, no cat.png: the file
    os.chdir(tmp_path)
    assert predict.expand(['1:cat.png'], 1) == [(None, '1:cat.png')]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plain)
    with pytest.raises(predict.PromptFileError, match=r'both a file of that name and cat.png .* write ./1:cat.png'):
        predict.expand(['1:cat.png'], 2)
    assert predict.expand(['./1:cat.png', '1:./cat.png'], 2) == [(None, './1:cat.png'), (1, './cat.png')]
    odd.unlink()
    with pytest.raises(predict.PromptFileError, match='only 1 prompt file.*a file named 1:cat.png'):
        predict.expand(['1:cat.png'], 1)


@pytest.mark.e2e
def test_a_comparison_reads_back_only_runs_made_on_the_same_data(tmp_path, monkeypatch, capsys):
    from test_compare import TINY
    from tools import compare
    monkeypatch.chdir(tmp_path)
    a, b = folder(tmp_path / 'A', 0), folder(tmp_path / 'B', 1)
    tiny = [*TINY, '--dataset', 'folder', '--train-per-class', '4']
    argv = ['--protocol', 'offline-cifar10', '--methods', 'lp', '--seeds', '0', '--no-tune', '--tag', 'f', *tiny]
    first = compare.main([*argv, '--data-dir', a])
    assert compare.main([*argv, '--data-dir', a]) == first  # read back
    with pytest.raises(SystemExit, match='made on other data than .*B holds now'):
        compare.main([*argv, '--data-dir', b])
    summary = tmp_path / 'runs' / 'offline-cifar10-f' / 'lp-s0' / 'summary.json'
    made_on_a = json.loads(summary.read_text())['data']
    shutil.rmtree(tmp_path / 'runs')  # the folder gone: the table's record is all there is
    capsys.readouterr()
    compare.main([*argv, '--data-dir', b])
    assert 'the table\'s record of it was made on other data: run again' in capsys.readouterr().out
    assert json.loads(summary.read_text())['data'] not in (None, made_on_a)  # run on B
