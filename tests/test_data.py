"""data.py: loaders on the shared offline files, synthetic data, reduced protocols, and the offline error paths."""
import os
import zipfile

import numpy as np
import pytest
import torch

import data
from conftest import SHARED_DATA, needs_cifar10, needs_tiny


@needs_cifar10
def test_cifar10_npz_subset_and_order():
    s = data.load('cifar10', data_dir=SHARED_DATA, img_size=48, seed=0, train_per_class=20, test_limit=30)
    assert (len(s.train), len(s.test), s.num_classes, s.val) == (200, 30, 10, None)
    x, y = s.train[0]
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert np.bincount(s.train.base.labels, minlength=10).tolist() == [20] * 10
    raw = np.load(os.path.join(SHARED_DATA, 'cifar10.npz'))
    assert s.test.base.labels == raw['y_test'][s.test.base.indices].tolist()  # in the set's order
    assert np.bincount(s.test.base.labels, minlength=10).tolist() == [3] * 10  # spread: 1,000 a class, 30 of them
    other = data.load('cifar10', data_dir=SHARED_DATA, img_size=48, seed=1, train_per_class=20, test_limit=30)
    assert other.test.base.indices == s.test.base.indices  # the same test images for every seed
    k = s.test.base.indices[0]
    same_size = data.load('cifar10', data_dir=SHARED_DATA, img_size=32, seed=0, train_per_class=1, test_limit=30)
    assert torch.equal(same_size.test[0][0], torch.from_numpy(raw['x_test'][k]).permute(2, 0, 1).float() / 255)  # lossless


@needs_cifar10
def test_seed_fixes_the_subset_and_val_split_is_disjoint():
    kw = dict(data_dir=SHARED_DATA, img_size=32, train_per_class=10, test_limit=5, val_split=0.2)
    a, b, c = (data.load('cifar10', seed=s, **kw) for s in (0, 0, 1))
    assert a.train.base.indices == b.train.base.indices and a.val.base.indices == b.val.base.indices
    assert a.train.base.indices != c.train.base.indices
    assert (len(a.train), len(a.val)) == (80, 20)
    assert not set(a.train.base.indices) & set(a.val.base.indices)
    assert np.bincount(a.val.base.labels, minlength=10).tolist() == [2] * 10


@needs_tiny
@pytest.mark.parametrize('form', ['zip', 'extracted'])
def test_tiny_imagenet_subset_archive(tmp_path, form):
    archive = os.path.join(SHARED_DATA, 'tiny-imagenet-200-subset.zip')
    if form == 'zip':
        data_dir = SHARED_DATA
    else:  # the extracted layout: a few classes' worth, enough to check the reader
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.endswith(('wnids.txt', 'val_annotations.txt'))
                     or '/train/n01443537/' in n or '/val/images/' in n]
            z.extractall(tmp_path, members=names)
        data_dir = str(tmp_path)
    s = data.load('tiny-imagenet', data_dir=data_dir, img_size=64, seed=0, test_limit=20)
    assert s.num_classes == 200 and len(s.test) == 20
    x, y = s.test[0]
    assert x.shape == (3, 64, 64) and 0 <= x.min() and x.max() <= 1
    with zipfile.ZipFile(archive) as z:
        wnids = sorted(z.read('tiny-imagenet-200/wnids.txt').decode().split())
        rows = dict(line.split('\t')[:2] for line in z.read('tiny-imagenet-200/val/val_annotations.txt').decode()
                    .splitlines())  # val_0.JPEG n03444034 ...
    first = s.test.base.dataset.files[s.test.base.indices[0]]
    assert y == wnids.index(rows[first.split('/')[-1]])  # the image's own annotation
    assert len(set(s.test.base.labels)) == 20  # 20 images spread over 20 classes, not the first 20 in the file
    if form == 'zip':
        assert len(s.train) == 200 * 100  # the subset: 100 training images per class


def test_synthetic_is_deterministic_and_balanced():
    a = data.load('synthetic', data_dir='unused', img_size=40, seed=3)
    b = data.load('synthetic', data_dir='unused', img_size=40, seed=3)
    assert torch.equal(a.train[5][0], b.train[5][0]) and a.train[5][0].shape == (3, 40, 40)
    assert np.bincount(a.train.base.labels).tolist() == [60] * 10


def test_missing_dataset_offline_says_what_where_how(tmp_path, no_network):
    with pytest.raises(data.DataError) as e:
        data.load('cifar100', data_dir=str(tmp_path), img_size=32, seed=0)
    msg = str(e.value)
    assert "'cifar100'" in msg and str(tmp_path) in msg and 'download' in msg and '--data-dir' in msg
    with pytest.raises(data.DataError) as e:
        data.load('tiny-imagenet', data_dir=str(tmp_path), img_size=32, seed=0)
    assert 'tiny-imagenet-200.zip' in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(data.DataError, match='cifar10.npz'):
        data.load('cifar10', data_dir=str(tmp_path), img_size=32, seed=0)


def test_bad_options():
    with pytest.raises(data.DataError, match='unknown dataset'):
        data.load('imagenet-42', data_dir='.', img_size=32, seed=0)
    with pytest.raises(data.DataError, match='--val-split'):
        data.load('synthetic', data_dir='.', img_size=32, seed=0, val_split=1.0)
    with pytest.raises(data.DataError, match='--train-per-class'):
        data.load('synthetic', data_dir='.', img_size=32, seed=0, train_per_class=0)


@pytest.mark.e2e
def test_torchvision_layout_is_read_offline(tmp_path, no_network, monkeypatch):
    """The torchvision data sets read a local copy in torchvision's layout without network (here: CIFAR-10's
    python batches, written from the shared .npz)."""
    import pickle
    if not os.path.isfile(os.path.join(SHARED_DATA, 'cifar10.npz')):
        pytest.skip('needs ../shared/data/cifar10.npz')
    raw = np.load(os.path.join(SHARED_DATA, 'cifar10.npz'))
    folder = tmp_path / 'cifar-10-batches-py'
    folder.mkdir()
    for name, x, y in [('data_batch_%d' % i, raw['x_train'][:10], raw['y_train'][:10]) for i in range(1, 6)] + \
                      [('test_batch', raw['x_test'][:10], raw['y_test'][:10])]:
        with open(folder / name, 'wb') as f:
            pickle.dump({'data': x.transpose(0, 3, 1, 2).reshape(len(x), -1), 'labels': y.tolist()}, f)
    import torchvision.datasets as tv
    monkeypatch.setattr(tv.CIFAR10, '_check_integrity', lambda self: True)  # hand-made batches: other checksums
    monkeypatch.setattr(tv.CIFAR10, '_load_meta', lambda self: setattr(self, 'classes', list('0123456789')))
    s = data.load('cifar10', data_dir=str(tmp_path), img_size=32, seed=0)
    assert len(s.test) == 10 and torch.equal(
        s.test[0][0], torch.from_numpy(raw['x_test'][0]).permute(2, 0, 1).float() / 255)


# ---- damaged files: a clear error naming the file, as early as can be checked ----

def test_damaged_cifar10_npz_files_are_named(tmp_path):
    good = {'x_train': np.zeros((20, 32, 32, 3), np.uint8), 'y_train': np.arange(20) % 10,
            'x_test': np.zeros((10, 32, 32, 3), np.uint8), 'y_test': np.arange(10)}
    cases = {'truncated': None, 'missing': {k: v for k, v in good.items() if k != 'y_test'},
             'badlabels': {**good, 'y_train': np.full(20, 12)}, 'badshape': {**good, 'x_train': np.zeros((20, 32, 32))}}
    for name, arrays in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        if arrays is None:
            np.savez(folder / 'cifar10.npz', **good)
            raw = (folder / 'cifar10.npz').read_bytes()
            (folder / 'cifar10.npz').write_bytes(raw[:len(raw) // 2])
        else:
            np.savez(folder / 'cifar10.npz', **arrays)
        with pytest.raises(data.DataError) as e:
            data.load('cifar10', data_dir=str(folder), img_size=32, seed=0)
        assert str(folder / 'cifar10.npz') in str(e.value), (name, str(e.value))


def tiny_archive(path, corrupt=None):
    """A minimal Tiny-ImageNet zip: 200 class ids, one training image for two of them, two validation images."""
    from PIL import Image
    import io
    wnids = [f'n{i:08d}' for i in range(200)]

    def jpeg():
        buffer = io.BytesIO()
        Image.new('RGB', (8, 8), (120, 30, 200)).save(buffer, format='JPEG')
        return buffer.getvalue()
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('tiny-imagenet-200/wnids.txt', '\n'.join(wnids))
        z.writestr('tiny-imagenet-200/val/val_annotations.txt',
                   f'val_0.JPEG\t{wnids[0]}\t0\t0\t8\t8\nval_1.JPEG\t{wnids[1]}\t0\t0\t8\t8\n')
        for name in (f'train/{wnids[0]}/images/a_0.JPEG', f'train/{wnids[1]}/images/b_0.JPEG', 'val/images/val_0.JPEG',
                     'val/images/val_1.JPEG'):
            z.writestr('tiny-imagenet-200/' + name, b'not a jpeg' if name == corrupt else jpeg())


def test_damaged_tiny_imagenet_archives_are_named_at_load(tmp_path):
    (tmp_path / 'ok').mkdir()
    tiny_archive(tmp_path / 'ok' / 'tiny-imagenet-200.zip')
    assert len(data.load('tiny-imagenet', data_dir=str(tmp_path / 'ok'), img_size=16, seed=0).test) == 2
    (tmp_path / 'bad').mkdir()
    tiny_archive(tmp_path / 'bad' / 'tiny-imagenet-200.zip', corrupt='val/images/val_1.JPEG')
    with pytest.raises(data.DataError, match='val_1.JPEG: cannot be read as an image'):
        data.load('tiny-imagenet', data_dir=str(tmp_path / 'bad'), img_size=16, seed=0)  # at load, not in an epoch
    (tmp_path / 'cut').mkdir()
    raw = (tmp_path / 'ok' / 'tiny-imagenet-200.zip').read_bytes()
    (tmp_path / 'cut' / 'tiny-imagenet-200.zip').write_bytes(raw[:len(raw) // 2])
    with pytest.raises(data.DataError, match='tiny-imagenet-200.zip: not a readable'):
        data.load('tiny-imagenet', data_dir=str(tmp_path / 'cut'), img_size=16, seed=0)
