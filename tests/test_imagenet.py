"""ImageNet-1K and its four out-of-distribution test sets, on real images with real wnids (the Tiny-ImageNet subset,
tests/layouts.py): each layout as released gives every image its standard label, R and A are scored over their 200
classes, every bad layout is one message naming the path, and a prompt trained on the ImageNet layout is evaluated on
each test set by predict.py against a count made here."""
import json
import os
import shutil

import numpy as np
import pytest
import timm.data
import torch

import data
from formats.imagenet import RESTRICTED
import layouts
import train
from conftest import needs_lite0, needs_tiny
from tools import compare, predict
from runs import save_prompt
from tools.serve import load_task

pytestmark = needs_tiny
INFO = os.path.join(os.path.dirname(timm.data.__file__), '_info')


def timm_list(name):
    """timm's class list, read here from its text file (independent of formats.imagenet.wnids)."""
    with open(os.path.join(INFO, name)) as f:
        return f.read().split()


@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    return layouts.imagenet(str(tmp_path_factory.mktemp('imagenet')))


def wnid_of(path):
    return os.path.basename(path).split('_')[0]  # the Tiny-ImageNet file name starts with its wnid


def test_the_imagenet_layout_gives_each_image_the_standard_index_of_its_wnid(sets, tmp_path):
    folders, wnids = sets
    standard = timm_list('imagenet_synsets.txt')
    s = data.load('imagenet', data_dir=folders['imagenet'], img_size=32, seed=0)
    assert s.num_classes == 1000 and s.classes == standard and len(s.train) == 54 and len(s.test) == 27
    for ds in (s.train, s.test):
        files = ds.base.dataset.files
        for k in range(len(ds)):
            assert ds.base.labels[k] == standard.index(wnid_of(files[ds.base.indices[k]]))
    part = shutil.copytree(folders['imagenet'], tmp_path / 'part')  # a partial copy: the same labels
    for split in ('train', 'val'):
        for w in wnids[:4]:
            shutil.rmtree(part / split / w)
    p = data.load('imagenet', data_dir=str(part), img_size=32, seed=0)
    assert sorted(set(p.test.base.labels)) == sorted(standard.index(w) for w in os.listdir(part / 'val'))


def test_torchvisions_imagenet_root_is_unpacked_and_labelled_by_the_devkit(tmp_path, monkeypatch):
    pytest.importorskip('scipy')  # torchvision reads the devkit's meta.mat with scipy.io
    import torchvision.datasets.imagenet as tv
    md5, val = layouts.imagenet_archives(str(tmp_path))
    monkeypatch.setattr(tv, 'ARCHIVE_META', {k: (name, md5[name]) for k, (name, _) in tv.ARCHIVE_META.items()})
    s = data.load('imagenet', data_dir=str(tmp_path), img_size=32, seed=0)
    standard = timm_list('imagenet_synsets.txt')
    files = s.test.base.dataset.files
    assert len(files) == len(val) == 18
    for k in range(len(s.test)):  # the ground truth's ILSVRC2012 id, through meta.mat, to the standard index
        name = os.path.basename(files[s.test.base.indices[k]])
        assert s.test.base.labels[k] == standard.index(val[name])
    assert len(s.train) == 36 and all(s.classes[y] == wnid_of(f) for f, y in zip(s.train.base.dataset.files,
                                                                                s.train.base.dataset.labels))


def test_the_four_test_sets_label_their_images_as_released(sets):
    folders, wnids = sets
    standard = timm_list('imagenet_synsets.txt')
    by_file = {}
    for name, classes in (('imagenet-r', timm_list('imagenet_r_synsets.txt')),
                          ('imagenet-a', timm_list('imagenet_a_synsets.txt')),
                          ('imagenet-sketch', standard), ('imagenet-v2', standard)):
        s = data.load_test_set(name, data_dir=folders[name], img_size=32)
        assert s.classes == classes and s.num_classes == len(classes) == (200 if name[-1] in 'ra' else 1000)
        files = s.test.base.dataset.files
        labels = {os.path.basename(files[i]): y for i, y in zip(s.test.base.indices, s.test.base.labels)}
        assert len(labels) == 18 and all(classes[y] == wnid_of(f) for f, y in labels.items())
        by_file[name] = labels
    assert by_file['imagenet-v2'] == by_file['imagenet-sketch']  # index folders and wnid folders agree
    v2 = data.load_test_set('imagenet-v2', data_dir=folders['imagenet-v2'], img_size=32)
    for i, y in zip(v2.test.base.indices, v2.test.base.labels):  # V2's folder name is the label itself
        assert y == int(os.path.basename(os.path.dirname(v2.test.base.dataset.files[i])))


def test_a_cut_test_set_spans_its_classes(sets, capsys):
    """--test-limit on a test set read from class folders: N images spread over the classes, not the first
    folders' (V2's folders sort as 0, 1, 10, 100, ...), the same images every time."""
    folders, wnids = sets
    for name in data.TEST_SETS:
        full = data.load_test_set(name, data_dir=folders[name], img_size=32)
        cut = data.load_test_set(name, data_dir=folders[name], img_size=32, test_limit=6)
        classes = len(set(full.test.base.labels))  # 6 classes of 3 images each in these layouts
        assert len(cut.test) == 6 and len(set(cut.test.base.labels)) == classes == 6, name
        assert cut.test.base.indices == data.load_test_set(name, data_dir=folders[name], img_size=32,
                                                           test_limit=6).test.base.indices


def test_r_and_a_are_scored_over_their_classes_against_a_hand_computation():
    torch.manual_seed(0)
    head = torch.nn.Linear(5, 1000)
    keep = [int(i) for i in timm_list('imagenet_r_indices.txt')]
    x = torch.randn(64, 5)
    logits = head(x)
    by_hand = torch.tensor(keep)[logits[:, keep].argmax(1)]  # the best of the 200, as a 1000-class index
    assert not torch.equal(by_hand, logits.argmax(1))  # the restriction matters here
    assert torch.equal(predict.Restricted(head, keep, 1000)(x).argmax(1), by_hand)


def test_every_bad_layout_is_one_message_naming_the_path(sets, tmp_path):
    folders, wnids = sets
    outside_r = next(w for w in timm_list('imagenet_synsets.txt') if w not in timm_list('imagenet_r_synsets.txt'))
    another_a = next(w for w in timm_list('imagenet_a_synsets.txt') if w not in wnids)

    def broken(name, edit):
        folder = shutil.copytree(folders[name], tmp_path / f'{name}-{len(os.listdir(tmp_path))}')
        edit(folder)
        return str(folder)
    cases = [('imagenet-r', lambda f: shutil.copytree(f / wnids[0], f / 'cats'), 'cats', 'neither a wnid'),
             ('imagenet-r', lambda f: shutil.copytree(f / wnids[0], f / outside_r), outside_r,
              'a wnid outside its 200 classes'),
             ('imagenet-a', lambda f: os.makedirs(f / another_a), another_a, 'an empty class folder'),
             ('imagenet-v2', lambda f: shutil.copytree(f / os.listdir(f)[0], f / '1000'), '1000', 'by index, 0 to 999'),
             ('imagenet-v2', lambda f: shutil.copytree(f / os.listdir(f)[0], f / wnids[0]), wnids[0], 'not one'),
             ('imagenet-v2', lambda f: shutil.copytree(f / os.listdir(f)[0], f / '\u00b2'), '\u00b2', 'not one'),  # '²'
             ('imagenet-r', lambda f: [os.makedirs(f / wnids[0] / 'images'), *[shutil.move(str(p), f / wnids[0] /
              'images') for p in (f / wnids[0]).glob('*.*')]], wnids[0], "Tiny-ImageNet's layout")]
    for name, edit, path, fragment in cases:
        folder = broken(name, edit)
        with pytest.raises(data.DataError) as e:
            data.load_test_set(name, data_dir=folder, img_size=32)
        assert os.path.join(folder, path) in str(e.value) and fragment in str(e.value), str(e.value)
    with pytest.raises(data.DataError, match='no such folder'):
        data.load_test_set('imagenet-sketch', data_dir=str(tmp_path / 'nowhere'), img_size=32)
    with pytest.raises(data.DataError, match='imagenet-r is a test set'):
        data.load('imagenet-r', data_dir=folders['imagenet-r'], img_size=32, seed=0)
    train_dir = tmp_path / 'in1k'
    shutil.copytree(folders['imagenet'], train_dir)
    shutil.copytree(train_dir / 'train' / wnids[0], train_dir / 'train' / 'dogs')
    with pytest.raises(data.DataError, match='dogs'):
        data.load('imagenet', data_dir=str(train_dir), img_size=32, seed=0)


@pytest.mark.e2e
def test_a_prompt_trained_on_imagenet_is_evaluated_on_each_test_set(sets, tmp_path, capsys):
    folders, wnids = sets
    out = tmp_path / 'r'
    s = train.main(['--method', 'lorvp', '--model', 'test_vit', '--no-pretrained', '--dataset', 'imagenet', '--data-dir',
                    folders['imagenet'], '--img-size', '32', '--epochs', '1', '--precision', 'fp32', '--out', str(out)])
    prompt = str(out / 'prompt.safetensors')
    args, model, meta = load_task(prompt)
    assert meta['classes'] == timm_list('imagenet_synsets.txt') and s['test_acc'] is not None
    capsys.readouterr()
    for name in data.TEST_SETS:
        acc = predict.main(['--prompt', prompt, '--dataset', name, '--data-dir', folders[name]])
        t = data.load_test_set(name, data_dir=folders[name], img_size=32)
        x = torch.stack([t.test[i][0] for i in range(len(t.test))])
        names = [t.classes[t.test[i][1]] for i in range(len(t.test))]
        with torch.no_grad():
            logits = model(x)  # (18, 1000)
        if name in RESTRICTED:  # the best of the set's 200 classes, by hand
            keep = [int(i) for i in timm_list(f'{name.replace("-", "_")}_indices.txt')]
            pred = np.asarray(keep)[logits[:, keep].argmax(1).numpy()]
            assert (pred != logits.argmax(1).numpy()).any()  # this model predicts classes R and A do not score
        else:
            pred = logits.argmax(1).numpy()
        right = sum(meta['classes'][p] == n for p, n in zip(pred, names))
        assert acc == pytest.approx(100.0 * right / len(names)), name
        assert f'on 18 {name} test images' in capsys.readouterr().out
    # a head that puts the classes R and A do not hold first, then one of theirs: scored over their 200 classes that
    # one is every prediction (3 of its 18 images right); over 1000 (Sketch), a class outside is (none right)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000][-1]
    first = [meta['classes'].index(w) for w in os.listdir(os.path.join(folders['imagenet'], 'train')) if w not in wnids]
    with torch.no_grad():
        head.bias[first] += 1e4
        head.bias[meta['classes'].index(wnids[0])] += 5e3
    save_prompt(model, args, str(tmp_path / 'biased.safetensors'), classes=meta['classes'])
    for name, expected in (('imagenet-r', 100 * 3 / 18), ('imagenet-a', 100 * 3 / 18), ('imagenet-sketch', 0.0)):
        assert predict.main(['--prompt', str(tmp_path / 'biased.safetensors'), '--dataset', name, '--data-dir',
                             folders[name]]) == pytest.approx(expected), name
    with pytest.raises(SystemExit):  # a test set needs its folder
        predict.main(['--prompt', prompt, '--dataset', 'imagenet-r'])
    assert 'needs --data-dir' in capsys.readouterr().err


@needs_lite0
@pytest.mark.e2e
def test_the_ood_protocol_tables_each_runs_test_sets_beside_the_papers_figures(sets, tmp_path, monkeypatch,
                                                                             capsys):
    folders, _ = sets
    monkeypatch.chdir(tmp_path)
    argv = ['--protocol', 'ood-lorsp', '--tag', 't', '--methods', 'lp,lorsp', '--model', 'tf_efficientnet_lite0',
            '--data-dir', folders['imagenet'], '--img-size', '64', '--epochs', '3', '--batch-size', '16', '--precision',
            'fp32', '--bench-reps', '0', '--test-sets-dir', os.path.dirname(folders['imagenet'])]
    rows = compare.main(argv)
    md = (tmp_path / 'results' / 'ood-lorsp-t.md').read_text()
    table = [line for line in md.splitlines() if line.startswith('| lp |') or line.startswith('| lorsp |')][-2:]
    for r, line in zip(rows, table):  # each cell is predict.py's accuracy of that run's prompt file, made again here
        prompt = os.path.join('runs', 'ood-lorsp-t', f'{r["arm"]}-s0', 'prompt.safetensors')
        accs = [predict.main(['--prompt', prompt, '--dataset', t, '--data-dir', folders[t]]) for t in
                ('imagenet-r', 'imagenet-sketch', 'imagenet-a', 'imagenet-v2')]
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert 0 < sum(accs) and any(0 < a < 100 for a in accs)  # the ImageNet weights see some of the shifted images
        assert cells[2:] == [f'{a:.2f} (1)' for a in accs] + [f'{sum(accs) / 4:.2f} (1)'], (cells, accs)
    assert '| LoRSP (the paper\'s figures, not run here) | 78.78 | 32.86 | 35.67 | 20.61 | 65.74 | 38.72 |' in md
    kept = json.loads((tmp_path / 'runs' / 'ood-lorsp-t' / 'lp-s0.test-sets.json').read_text())
    assert set(kept) == {'imagenet-r', 'imagenet-sketch', 'imagenet-a', 'imagenet-v2'}
    capsys.readouterr()
    compare.main([*argv, '--report'])  # read back: the same rows, nothing measured again
    assert 'testing its prompt file' not in capsys.readouterr().out
    again = (tmp_path / 'results' / 'ood-lorsp-t.md').read_text()
    assert [line for line in again.splitlines() if line.startswith('| ')] == \
        [line for line in md.splitlines() if line.startswith('| ')]
    assert again.count('(the paper') == 4
    with pytest.raises(SystemExit):  # no test sets there: refused before any run
        compare.main([*argv[:-1], str(tmp_path / 'nowhere')])


@needs_lite0
@pytest.mark.e2e
def test_with_a_cluster_launcher_each_run_scores_its_test_sets_in_its_own_job(sets, tmp_path, monkeypatch, capsys):
    """On Slurm compare.py waits on a login node: the four test sets are scored in each run's job, on its GPU, not in
    compare.py's process (submitit's local executor standing in); the table reads what the job measured."""
    import glob
    folders, _ = sets
    monkeypatch.chdir(tmp_path)
    argv = ['--protocol', 'ood-lorsp', '--tag', 'j', '--methods', 'lp', '--model', 'tf_efficientnet_lite0',
            '--data-dir', folders['imagenet'], '--img-size', '64', '--epochs', '1', '--batch-size', '16', '--precision',
            'fp32', '--bench-reps', '0', '--test-sets-dir', os.path.dirname(folders['imagenet']), '--launcher', 'local']
    compare.main(argv)
    assert 'testing its prompt file' not in capsys.readouterr().out
    run = tmp_path / 'runs' / 'ood-lorsp-j' / 'lp-s0'
    job_out = ''.join(open(f).read() for f in glob.glob(str(run.parent / 'lp-s0.jobs' / '*_0_log.*')))
    assert all(f'testing its prompt file on {t}' in job_out for t in ('imagenet-r', 'imagenet-sketch', 'imagenet-a',
                                                                     'imagenet-v2')), job_out
    kept = json.loads((run.parent / 'lp-s0.test-sets.json').read_text())
    assert kept['imagenet-v2'] == predict.main(['--prompt', str(run / 'prompt.safetensors'), '--dataset',
                                                'imagenet-v2', '--data-dir', folders['imagenet-v2']])
    md = (tmp_path / 'results' / 'ood-lorsp-j.md').read_text()
    assert f'{kept["imagenet-r"]:.2f} (1)' in md
