"""Your own images and VTAB-1k, on real pixels: an image folder and VTAB-format tasks written from the offline
CIFAR-10 and Tiny-ImageNet subset (tests/layouts.py) load with the right classes, labels and counts; every bad layout
is one message naming the folder or the file and line; a folder-trained prompt file names its classes."""
import io
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import data
from formats.vtab import TASKS as VTAB_1K
import layouts
from tools import predict
import train
from conftest import needs_cifar10, needs_tiny

pytestmark = [needs_cifar10, needs_tiny]


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp('layouts')
    return dict(folder=layouts.image_folder(str(root / 'folder')), vtab=layouts.vtab(str(root / 'vtab')),
                fgvc=layouts.fgvc_cub(str(root / 'fgvc')))


def copy(made, key, tmp_path):
    return shutil.copytree(made[key], tmp_path / key)


def test_an_image_folder_loads_its_classes_in_order_with_their_own_images(made):
    s = data.load('folder', data_dir=made['folder'], img_size=32, seed=0)
    assert s.classes == ['airplane', 'automobile', 'bird', 'cat']  # sorted folder names: the labels' order
    assert (len(s.train), len(s.val), len(s.test), s.num_classes) == (32, 8, 20, 4)
    assert np.bincount(s.test.base.labels).tolist() == [5, 5, 5, 5]
    # the pixels and the label of a file, against the CIFAR-10 image it was written from (class 2, test image 0)
    raw = layouts.cifar_images(15, classes=[2])[2][10]
    i = s.test.base.labels.index(2)
    x, y = s.test[i]
    assert y == 2 and torch.equal((x * 255).round().byte().permute(1, 2, 0), torch.from_numpy(raw))
    assert data.num_classes('folder', made['folder']) == 4


def test_vtab_tasks_read_their_split_files_tune_and_final(made):
    tune = data.load('vtab-1k:eurosat', data_dir=made['vtab'], img_size=32, seed=0, splits='tune')
    final = data.load('vtab-1k:eurosat', data_dir=made['vtab'], img_size=32, seed=0)
    assert (len(tune.train), len(tune.val), len(tune.test)) == (80, 20, 50)  # train800 / val200 / test
    assert (len(final.train), final.val, len(final.test)) == (100, None, 50)  # train800val200 / test
    assert tune.num_classes == final.num_classes == 10  # VTAB's eurosat
    raw = layouts.cifar_images(15)
    for label in (0, 7):  # labels as the split file says, on the image the line names
        i = final.train.base.labels.index(label)
        x, y = final.train[i]
        assert y == label and torch.equal((x * 255).round().byte().permute(1, 2, 0), torch.from_numpy(raw[label][0]))
    tiny = data.load('vtab-1k:clevr_dist', data_dir=made['vtab'], img_size=64, seed=0)
    assert tiny.num_classes == 6 and sorted(set(tiny.test.base.labels)) == list(range(6))


def test_every_bad_image_folder_is_one_message_naming_it(made, tmp_path):
    cases = []
    f = copy(made, 'folder', tmp_path / 'a')
    shutil.rmtree(f / 'train' / 'cat')  # a test class missing from train
    cases.append((f, 'val: class folder(s) cat are not in train/'))  # val/ is read before test/
    f = copy(made, 'folder', tmp_path / 'b')
    for p in (f / 'train' / 'bird').iterdir():
        p.unlink()  # an empty class
    cases.append((f, os.path.join('train', 'bird') + ': an empty class folder'))
    f = tmp_path / 'c'
    (f / 'train').mkdir(parents=True)  # no image at all
    cases.append((f, 'holds no class folder'))
    f = copy(made, 'folder', tmp_path / 'd')
    (f / 'test' / 'bird' / 'broken.png').write_text('not a png')  # found when the data is loaded
    cases.append((f, 'broken.png: cannot be read as an image'))
    f = copy(made, 'folder', tmp_path / 'e')
    (f / 'train' / 'cat' / 'notes.txt').write_text('a note')
    cases.append((f, 'notes.txt: not an image file'))
    cases.append((tmp_path / 'nowhere', 'no such folder'))
    for folder, fragment in cases:
        with pytest.raises(data.DataError) as e:
            data.load('folder', data_dir=str(folder), img_size=32, seed=0)
        assert fragment in str(e.value), (fragment, str(e.value))
    with pytest.raises(data.DataError, match='validation images of its own'):
        data.load('folder', data_dir=made['folder'], img_size=32, seed=0, val_split=0.1)


def test_greyscale_and_rgba_images_become_rgb(made, tmp_path):
    f = copy(made, 'folder', tmp_path)
    Image.new('L', (20, 12), 128).save(f / 'train' / 'cat' / 'grey.png')
    Image.new('RGBA', (12, 20), (10, 20, 30, 40)).save(f / 'train' / 'cat' / 'rgba.png')
    s = data.load('folder', data_dir=str(f), img_size=16, seed=0)
    images = [s.train.base.dataset.files.index(str(f / 'train' / 'cat' / n)) for n in ('grey.png', 'rgba.png')]
    for i in images:
        x, _ = s.train.base.dataset[i]
        assert x.shape[0] == 3


def test_an_fgvc_task_reads_vpts_json_splits_with_one_label_mapping(made, tmp_path):
    tune = data.load('fgvc:cub', data_dir=made['fgvc'], img_size=64, seed=0, splits='tune')
    final = data.load('fgvc:cub', data_dir=made['fgvc'], img_size=64, seed=0)
    assert (len(tune.train), len(tune.val), len(tune.test), tune.num_classes) == (200, 200, 200, 200)
    assert (len(final.train), final.val, len(final.test)) == (400, None, 200)  # train + val, the training images
    raw = layouts.tiny_images(3, 200)
    for i in (0, 57, 199):  # CUB's class id i + 1 is label i; the image is the one the json names
        x, y = tune.test[tune.test.base.labels.index(i)]
        expected = np.array(Image.open(io.BytesIO(raw[i][2])).convert('RGB'))  # (64, 64, 3)
        assert y == i and torch.equal((x * 255).round().byte().permute(1, 2, 0), torch.from_numpy(expected))
    f = copy(made, 'fgvc', tmp_path / 'a')
    (f / 'val.json').unlink()
    with pytest.raises(data.DataError, match='val.json: missing'):
        data.load('fgvc:cub', data_dir=str(f), img_size=64, seed=0)
    with pytest.raises(data.DataError, match='fgvc:dogs has 120'):  # CUB's 200 classes are not Stanford Dogs' 120
        data.load('fgvc:dogs', data_dir=made['fgvc'], img_size=64, seed=0)


def test_every_bad_vtab_task_is_one_message_naming_the_file_and_line(made, tmp_path):
    def broken(name, edit):
        root = copy(made, 'vtab', tmp_path / name)
        edit(root / 'eurosat')
        return str(root)

    def rewrite(file, line, text):
        def edit(task):
            rows = (task / file).read_text().splitlines()
            rows[line - 1] = text
            (task / file).write_text('\n'.join(rows) + '\n')
        return edit
    cases = [(broken('a', lambda t: (t / 'train800val200.txt').unlink()), 'train800val200.txt: missing'),
             (broken('b', rewrite('train800val200.txt', 3, 'images/train_0_2.png')), 'train800val200.txt, line 3'),
             (broken('c', rewrite('test.txt', 2, 'images/test_0_1.png 10')), 'test.txt, line 2: label 10 is out'),
             (broken('d', rewrite('test.txt', 4, 'images/gone.png 3')), 'test.txt, line 4: images/gone.png: no such')]
    for root, fragment in cases:
        with pytest.raises(data.DataError) as e:
            data.load('vtab-1k:eurosat', data_dir=root, img_size=32, seed=0)
        assert fragment in str(e.value), (fragment, str(e.value))
    with pytest.raises(data.DataError, match='VTAB-1k tasks'):
        data.check_name('vtab-1k:cifar10')
    with pytest.raises(data.DataError, match='--splits tune'):
        data.load('synthetic', data_dir='.', img_size=32, seed=0, splits='tune')


def test_train_and_predict_on_a_folder_name_its_classes(made, tmp_path, capsys):
    s = train.main(['--method', 'lorvp', '--model', 'test_vit', '--no-pretrained', '--dataset', 'folder', '--data-dir',
                    made['folder'], '--img-size', '32', '--epochs', '1', '--precision', 'fp32', '--out', str(tmp_path / 'r')])
    config = (tmp_path / 'r' / 'config.json').read_text()
    assert '"classes": [\n  "airplane"' in config and s['val_acc'] is not None  # val/ is the validation split
    image = os.path.join(made['folder'], 'test', 'bird', '0.png')
    capsys.readouterr()
    rows = predict.main(['--prompt', str(tmp_path / 'r' / 'prompt.safetensors'), image, '--top-k', '4'])
    assert {c for c, _ in rows[0]['top']} == {'airplane', 'automobile', 'bird', 'cat'}
    assert 'airplane' in capsys.readouterr().out
    prompt = str(tmp_path / 'r' / 'prompt.safetensors')
    assert predict.main(['--prompt', prompt, '--dataset', 'folder']) == s['test_acc']


def test_the_two_vtab_averages_against_a_hand_computation():
    """The mean over the tasks and the mean of the three group means differ whenever the groups differ in size:
    Natural 7, Specialized 4, Structured 8 tasks. Made-up accuracies: every Natural task 70, Specialized 80,
    Structured 50."""
    from tools import tables
    accs = {t: {'Natural': 70.0, 'Specialized': 80.0, 'Structured': 50.0}[g] for t, (g, _) in VTAB_1K.items()}
    m = tables.task_means(accs)
    assert m['tasks'] == 19 and m['task_mean'] == pytest.approx((7 * 70 + 4 * 80 + 8 * 50) / 19)  # 63.16
    assert m['group_means'] == {'Natural': 70.0, 'Specialized': 80.0, 'Structured': 50.0}
    assert m['mean_of_group_means'] == pytest.approx((70 + 80 + 50) / 3)  # 66.67, not the task mean


@pytest.mark.e2e
def test_the_vtab_protocol_end_to_end_on_two_tasks(made, tmp_path, monkeypatch):
    """Tuning on train800 / val200 (no test image), final runs on train800val200 tested on test.txt, every task's
    table and JSON, both averages labelled; on the CPU with a tiny budget."""
    import json
    from tools import compare
    monkeypatch.chdir(tmp_path)
    rows = compare.main(['--protocol', 'vtab-1k', '--tasks', 'eurosat,clevr_dist', '--tag', 't', '--data-dir',
                         made['vtab'], '--model', 'test_vit', '--img-size', '32', '--epochs', '1', '--batch-size', '16',
                         '--precision', 'fp32', '--extra=--no-pretrained', '--methods', 'lp,lora', '--seeds', '1',
                         '--tune-lr', '1', '--bench-reps', '0'])
    assert {r['arm'] for r in rows} == {'lp', 'lora'} and all(set(r['per_task']) == {'eurosat', 'clevr_dist'}
                                                              for r in rows)
    for task in ('eurosat', 'clevr_dist'):
        record = json.loads((tmp_path / 'results' / 'vtab-1k-t' / f'{task}.json').read_text())
        assert {(r['arm'], r['seed']) for r in record['runs']} == {(a, s) for a in ('lp', 'lora') for s in (1,)}
        tune = json.loads((tmp_path / 'runs' / 'vtab-1k-t' / task / 'tune' / 'lp-lr_x1' / 'config.json').read_text())
        assert tune['args']['splits'] == 'tune' and tune['args']['no_test'] and tune['args']['val_split'] == 0.0
        final = json.loads((tmp_path / 'runs' / 'vtab-1k-t' / task / 'lp-s1' / 'config.json').read_text())
        assert final['args']['splits'] == 'final' and final['args']['dataset'] == f'vtab-1k:{task}'
        assert final['args']['test_every'] == 1000  # tested after the last epoch only
    md = (tmp_path / 'results' / 'vtab-1k-t.md').read_text()
    assert '**2 of the 19 tasks**' in md and '**mean over the 2 tasks**' in md and '**mean of the group means**' in md
    lp = next(r for r in rows if r['arm'] == 'lp')
    assert lp['means']['mean_of_group_means'] == pytest.approx(  # eurosat is Specialized, clevr_dist Structured
        (lp['per_task']['eurosat'] + lp['per_task']['clevr_dist']) / 2)
