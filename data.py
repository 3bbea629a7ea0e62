"""Data sets by name, as float images in [0, 1] resized to one square size, no augmentation and no normalization
(the papers' protocol resizes and nothing else; the backbone's normalization comes after any input-space prompt).

    splits = load('cifar10-sample', data_dir='data', img_size=96, seed=0)   # the sample in sample/, offline
    x, y = splits.train[0]   # x: (3, 96, 96) float in [0, 1], y: int

  cifar10-sample 1,500 real CIFAR-10 images shipped in sample/cifar10-sample.npz (sample/README.md), offline
  cifar10        <data_dir>/cifar10.npz (NPZ_FORMAT below), else torchvision's layout, else download
  folder         your own images: <data_dir>/train/<class>/*, test/<class>/* and, if there, val/<class>/*
and, each read by its file in formats/ (imported only when named): synthetic (made there, for tests), cifar100,
eurosat, oxford-pets, food101, dtd, flowers102, svhn, gtsrb (torchvision's layout in <data_dir>, else downloaded),
tiny-imagenet, vtab-1k:<task>, fgvc:<task>, imagenet and its test sets imagenet-r, -a, -sketch, -v2. A run's data
is known by its fingerprint: the labels and the arrays, or the files' names and contents, of every image it uses.
"""
import hashlib
import os
import unicodedata
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torchvision.transforms.v2 import functional as TF

from formats import DataError, NeedsNetwork, first_line

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sample', 'cifar10-sample.npz')  # in the repository
NPZ_FORMAT = ('x_train (N, H, W, 3) uint8, y_train (N,) labels 0..9, x_test, y_test, as numpy.savez writes them; '
              'class ids as in the CIFAR-10 release, 0 airplane ... 9 truck')
CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
NUM_CLASSES = {'cifar10': 10, 'cifar10-sample': 10, 'cifar100': 100, 'tiny-imagenet': 200, 'eurosat': 10,
               'oxford-pets': 37, 'food101': 101, 'dtd': 47, 'flowers102': 102, 'svhn': 10, 'gtsrb': 43,
               'synthetic': 10, 'imagenet': 1000, 'imagenet-r': 200, 'imagenet-a': 200, 'imagenet-sketch': 1000,
               'imagenet-v2': 1000}
TEST_SETS = ('imagenet-r', 'imagenet-a', 'imagenet-sketch', 'imagenet-v2')  # ImageNet-1K's: test images only


@dataclass
class Splits:
    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    classes: list = None  # class names, where the data set has them
    fingerprint: str = None  # sha256 of the images the run uses (checked())


# ---- names ----

def tasks_of(name):
    """The formats/ module of a 'vtab-1k:<task>' or 'fgvc:<task>' name (imported now) and its task, or None, None."""
    kind, _, task = name.partition(':')
    if kind not in ('vtab-1k', 'fgvc'):
        return None, None
    from formats import fgvc, vtab
    return vtab if kind == 'vtab-1k' else fgvc, task


def check_name(name):
    module, task = tasks_of(name)
    if module is not None and task not in module.TASKS:
        raise DataError(f'unknown dataset {name!r} ({module.__name__.split(".")[1].upper().replace("VTAB", "VTAB-1k")} '
                        f'tasks: {", ".join(module.TASKS)})')
    if module is None and name not in NUM_CLASSES and name != 'folder':
        raise DataError(f'unknown dataset {name!r}; choose one of: {", ".join(sorted(NUM_CLASSES))}, folder, '
                        f'vtab-1k:<task>, fgvc:<task>')


def num_classes(name, data_dir):
    """K of a data set, before its images are read (the model is built first): a folder's train/ says it."""
    check_name(name)
    module, task = tasks_of(name)
    if module is not None:
        return module.num_classes(task)
    return len(_folder_classes(os.path.join(data_dir, 'train'))) if name == 'folder' else NUM_CLASSES[name]


# ---- images: in memory here, image files in formats/images.py (FileImages); both give (image (3, h, w): uint8, or
#      float in [0, 1], label) and their .labels, check() the indices a run uses and fingerprint() them ----

class ArrayImages(Dataset):
    """Images held in memory as a uint8 NHWC array (CIFAR from its .npz or torchvision's, SVHN, synthetic data)."""

    def __init__(self, images: np.ndarray, labels, classes=None):
        self.images, self.labels, self.classes = images, [int(y) for y in labels], classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]).permute(2, 0, 1), self.labels[i]  # (H, W, 3) -> (3, H, W)

    def check(self, indices, **processes):
        pass  # in memory: nothing to decode

    def fingerprint(self, indices):
        indices = list(indices)
        return hashlib.sha256(np.ascontiguousarray(self.images[indices]).tobytes() +
                              np.asarray(self.labels)[indices].tobytes()).hexdigest()


def resize(image, size):
    """(3, h, w) uint8, or float in [0, 1] -> float (3, size, size) in [0, 1]: bilinear with antialiasing, no crop."""
    if image.shape[-2:] != (size, size):
        image = TF.resize(image, [size, size], antialias=True)  # fastest on channels-last uint8 (formats/images.py)
    return image.float().div_(255) if image.dtype == torch.uint8 else image


class Resized(Dataset):
    """A source's images at one square size (resize), no crop, no flip: (x (3, S, S) float in [0, 1], label)."""

    def __init__(self, base: Dataset, size: int):
        self.base, self.size = base, size

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, y = self.base[i]
        return resize(image, self.size), y


# ---- the data sets read here: each gives (train images, test images[, its own validation images]) ----

def _cifar10(data_dir, path=None):
    path = path or os.path.join(data_dir, 'cifar10.npz')
    if path == SAMPLE and not os.path.isfile(path):
        raise DataError(f'{path} is missing: it ships with the repository; restore it with git checkout, or remake '
                        f'it from the full CIFAR-10 with python sample/make_cifar10_sample.py --source ...')
    if not os.path.isfile(path):
        from formats import torchvision_sets
        return torchvision_sets.sources('cifar10', data_dir, ArrayImages, also_looked=[path])
    try:
        with np.load(path) as d:
            x, y = {k: d[k] for k in ('x_train', 'x_test')}, {k: d[k] for k in ('y_train', 'y_test')}
    except KeyError as e:
        raise DataError(f'{path}: has no array {e} (it needs {NPZ_FORMAT})') from None
    except Exception as e:
        raise DataError(f'{path}: cannot be read, truncated or corrupt? ({type(e).__name__}: {first_line(e)})') \
            from None
    for s in ('train', 'test'):
        xs, ys = x[f'x_{s}'], y[f'y_{s}']
        if xs.ndim != 4 or xs.shape[3] != 3 or xs.dtype != np.uint8 or len(xs) != len(ys) or not len(ys) or \
                ys.min() < 0 or ys.max() >= 10:
            raise DataError(f'{path}: x_{s} must be uint8 (N, H, W, 3) and y_{s} N labels in 0..9; got {xs.dtype} '
                            f'{xs.shape} and {len(ys)} labels')
    return ArrayImages(x['x_train'], y['y_train'], CIFAR10_CLASSES), ArrayImages(x['x_test'], y['y_test'])


def _folder_classes(folder):
    """The class folders of an ImageFolder split, sorted (their order gives the labels)."""
    if not os.path.isdir(folder):
        raise DataError(f'{folder}: no such folder; --dataset folder reads --data-dir/train/<class>/ and '
                        f'--data-dir/test/<class>/ (and --data-dir/val/<class>/ if you have validation images)')
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith('.'))
    if not classes:
        raise DataError(f'{folder}: holds no class folder; put each class\'s images in {folder}/<class>/')
    return classes


def _folder_split(folder, classes):
    """The images of one split of a folder, its class folders named as in `classes`, however the file system composes
    their letters ('é' as one character, NFC, or as 'e' and an accent, NFD)."""
    from formats.images import IMAGE_EXTENSIONS, FileImages
    label = {unicodedata.normalize('NFC', c): k for k, c in enumerate(classes)}
    found = {c: label.get(unicodedata.normalize('NFC', c)) for c in _folder_classes(folder)}
    if None in found.values():
        raise DataError(f'{folder}: class folder(s) {", ".join(c for c, k in found.items() if k is None)} are not in '
                        f'train/ ({", ".join(classes)}); every class needs training images')
    files, labels = [], []
    for c in sorted(found, key=found.get):
        names = sorted(f for f in os.listdir(os.path.join(folder, c)) if not f.startswith('.'))
        others = [f for f in names if not f.lower().endswith(IMAGE_EXTENSIONS)]
        if others or not names:
            raise DataError(f'{os.path.join(folder, c, others[0])}: not an image file ({", ".join(IMAGE_EXTENSIONS)})'
                            f'; move it out of the class folder' if others else f'{os.path.join(folder, c)}: an '
                            f'empty class folder; give it images, or remove it')
        files += [os.path.join(folder, c, f) for f in names]
        labels += [found[c]] * len(names)
    return FileImages(files, labels, classes=classes)


def _folder(data_dir):
    """Your own images: train/<class>/*, test/<class>/*, and val/<class>/* if there."""
    classes, val = _folder_classes(os.path.join(data_dir, 'train')), os.path.join(data_dir, 'val')
    if len({unicodedata.normalize('NFC', c) for c in classes}) < len(classes):
        raise DataError(f'{data_dir}/train: two class folders have one name in two Unicode forms; merge them')
    train = _folder_split(os.path.join(data_dir, 'train'), classes)
    val = _folder_split(val, classes) if os.path.isdir(val) else None
    return train, _folder_split(os.path.join(data_dir, 'test'), classes), val


def sources(name, data_dir, splits='final'):
    """(train, test, its own validation images or None) of a data set."""
    module, task = tasks_of(name)
    if module is not None:
        return module.sources(task, data_dir, splits)
    if name in ('imagenet', 'tiny-imagenet'):
        from formats import imagenet, tiny_imagenet
        return (*(imagenet if name == 'imagenet' else tiny_imagenet).sources(data_dir), None)
    if name == 'folder':
        return _folder(data_dir)
    if name == 'synthetic':
        from formats import synthetic
        return (*synthetic.sources(NUM_CLASSES[name], ArrayImages), None)
    if name in ('cifar10', 'cifar10-sample'):
        return (*_cifar10(data_dir, SAMPLE if name == 'cifar10-sample' else None), None)
    from formats import torchvision_sets
    return (*torchvision_sets.sources(name, data_dir, ArrayImages), None)


# ---- splits ----

def load(name, *, data_dir, img_size, seed, train_per_class=None, test_limit=None, val_split=0.0, splits='final',
         processes=None) -> Splits:
    """Train/val/test of a data set by name: train_per_class images per class drawn with the seed, a val_split
    fraction of each class held out for model selection (unless the data set has validation images of its own: a
    folder's val/; VTAB-1k's val200 and FGVC's val.json with splits='tune'), test_limit test images spread over the
    classes (spread). Every image the run uses is checked now, not in epoch 2 (checked)."""
    check_name(name)
    if name in TEST_SETS:
        raise DataError(f'{name} is a test set (no training images): train on imagenet, then evaluate the prompt '
                        f'file with tools/predict.py --dataset {name} --data-dir <its folder>')
    if splits == 'tune' and tasks_of(name)[0] is None:
        raise DataError(f'--splits tune reads the split files of a VTAB-1k or FGVC task; {name} has none (hold out '
                        f'validation images with --val-split)')
    if not 0 <= val_split < 1 or any(n is not None and n < 1 for n in (train_per_class, test_limit)):
        raise DataError('--val-split, --train-per-class or --test-limit out of range: a fraction in [0, 1), a '
                        'positive number of images')
    K, (train, test, own_val) = num_classes(name, data_dir), sources(name, data_dir, splits)
    if own_val is not None and val_split:
        raise DataError(f'--val-split {val_split}: {name} has validation images of its own; leave --val-split out')
    rng, labels, train_idx, val_idx = np.random.default_rng(seed), np.asarray(train.labels), [], []
    for c in range(K):
        idx = rng.permutation(np.flatnonzero(labels == c))[:train_per_class]
        n_val = int(round(val_split * len(idx))) if val_split else 0
        if val_split and len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    if val_split and not val_idx:
        raise DataError(f'--val-split {val_split} holds out no image: no class has 2 training images to split '
                        f'(--train-per-class {train_per_class}); give more training images, or no --val-split')
    val, val_idx = (own_val, range(len(own_val))) if own_val is not None else (train, sorted(val_idx))
    used = [(train, sorted(train_idx)), (val, val_idx), (test, spread(test.labels, test_limit))]
    classes = list(getattr(train, 'classes', None) or [str(k) for k in range(K)])
    train, val, test = (Resized(_labelled_subset(source, indices), img_size) for source, indices in used)
    return Splits(train=train, val=val if val_idx else None, test=test, num_classes=K, classes=classes,
                  fingerprint=checked(used, classes, img_size, processes))


def load_test_set(name, *, data_dir, img_size, test_limit=None, processes=None):
    """A test set alone, with no training images: one of ImageNet-1K's four (formats/imagenet.py), labelled in the
    classes it names (1000 wnids, or R's and A's 200), or a folder's test/ (its own class folders: tools/predict.py)."""
    check_name(name)
    if name not in (*TEST_SETS, 'folder'):
        raise DataError(f'{name}: not a test set of its own ({", ".join(TEST_SETS)}, or a folder\'s test/)')
    if name == 'folder':
        classes = _folder_classes(os.path.join(data_dir, 'test'))
        test = _folder_split(os.path.join(data_dir, 'test'), classes)
    else:
        from formats import imagenet
        test, classes = imagenet.test_set(name, data_dir)
    used = [(test, spread(test.labels, test_limit))]
    return Splits(train=None, val=None, test=Resized(_labelled_subset(test, used[0][1]), img_size),
                  num_classes=len(classes), classes=classes, fingerprint=checked(used, classes, img_size, processes))


def spread(labels, n, seed=0):
    """n of the images (all where n is None or more), spread over the classes and the same for every run: every
    (len / n)-th of them ordered by class (a seeded random order within each class), so that each class gets its share
    of the n (its fraction of the images) within one image."""
    if n is None or n >= len(labels):
        return list(range(len(labels)))
    order = np.lexsort((np.random.default_rng(seed).random(len(labels)), np.asarray(labels)))  # by class, then random
    return sorted(order[((np.arange(n) + 0.5) * len(labels) / n).astype(int)].tolist())


def checked(used, classes, img_size, processes=None):
    """Checks the images the run uses (used: (source, indices) pairs) at the run's size, each source once (image files:
    formats/images.py), and returns their fingerprint: sha256 over the class names and each source's fingerprint of its
    indices. Under torchrun (processes: rank, size, gather) each checks its share; process 0 fingerprints and tells."""
    processes, by_source = processes or {}, {}
    for source, indices in used:  # train and val drawn from one source: one check (one read of its record) over both
        by_source[source] = by_source.get(source, []) + list(indices)
    for source, indices in by_source.items():
        source.size = img_size  # image files: a large JPEG is decoded no larger than the run needs
        source.check(indices, **processes)
    if processes.get('rank', 0) != 0:
        return processes['gather'](None)[0]
    h = hashlib.sha256(repr(classes).encode())
    for source, indices in used:
        h.update(source.fingerprint(indices).encode())
    return processes.get('gather', lambda f: [f])(h.hexdigest())[0]


def _labelled_subset(ds, indices):
    sub = Subset(ds, list(map(int, indices)))
    sub.labels = [ds.labels[i] for i in sub.indices]
    return sub
