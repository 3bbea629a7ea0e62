"""The data sets torchvision downloads (CIFAR-10 without its .npz, CIFAR-100, SVHN, GTSRB, Food-101, DTD, Flowers-102,
Oxford-IIIT Pets, EuroSAT), read from torchvision's layout in data_dir or downloaded there: their arrays (CIFAR, SVHN)
or their image files (the others, read by images.py), with their labels.

    train, test = sources('cifar100', 'data')   # data.ArrayImages or images.FileImages
"""
import os
import shutil

import numpy as np

from formats import NeedsNetwork, first_line
from formats.images import FileImages


def dataset(name, data_dir, train, download):
    import torchvision.datasets as tv
    split = 'train' if train else 'test'
    return {'cifar10': lambda: tv.CIFAR10(data_dir, train=train, download=download),
            'cifar100': lambda: tv.CIFAR100(data_dir, train=train, download=download),
            'svhn': lambda: tv.SVHN(data_dir, split=split, download=download),
            'gtsrb': lambda: tv.GTSRB(data_dir, split=split, download=download),
            'food101': lambda: tv.Food101(data_dir, split=split, download=download),
            'dtd': lambda: tv.DTD(data_dir, split=split, download=download),
            'flowers102': lambda: tv.Flowers102(data_dir, split=split, download=download),
            'oxford-pets': lambda: tv.OxfordIIITPet(data_dir, split='trainval' if train else 'test', download=download),
            'eurosat': lambda: tv.EuroSAT(data_dir, download=download)}[name]()


def images(ds, arrays, chosen=None):
    """A torchvision data set as arrays (CIFAR's (N, H, W, 3), SVHN's (N, 3, H, W)) or as its image files."""
    if isinstance(getattr(ds, 'data', None), np.ndarray):
        x = ds.data if ds.data.shape[-1] == 3 else ds.data.transpose(0, 2, 3, 1)  # -> (N, H, W, 3)
        return arrays(x, getattr(ds, 'targets', None) or ds.labels)
    # (path, label) pairs (GTSRB, EuroSAT's ImageFolder), or image files and labels (the others)
    pairs = getattr(ds, '_samples', None) or getattr(ds, 'samples', None) or \
        list(zip(getattr(ds, '_image_files', None) or ds._images, ds._labels))
    pairs = [pairs[k] for k in chosen] if chosen is not None else pairs
    return FileImages([str(p) for p, _ in pairs], [y for _, y in pairs])


def sources(name, data_dir, arrays, also_looked=()):
    """(train, test) of a torchvision data set; arrays: the class holding in-memory images (data.ArrayImages)."""
    existed = os.path.exists(data_dir)
    try:
        try:
            train, test = dataset(name, data_dir, True, False), dataset(name, data_dir, False, False)
        except RuntimeError:  # torchvision: "Dataset not found or corrupted. You can use download=True"
            train, test = dataset(name, data_dir, True, True), dataset(name, data_dir, False, True)
    except Exception as e:
        if not existed and os.path.isdir(data_dir):  # a mistyped --data-dir is not left behind, nor a partial download
            shutil.rmtree(data_dir)
        looked = ', '.join([*also_looked, f"torchvision's {name} layout in {data_dir}"])
        raise NeedsNetwork(f"dataset {name!r} is not in {data_dir!r} (looked for {looked}) and could not be downloaded "
                           f"({first_line(e)}). Run once with network to let torchvision download it into --data-dir, "
                           f"or copy torchvision's layout there.") from None
    classes = getattr(train, 'classes', None)
    if name == 'eurosat':  # one folder of 27,000 images, no official split: a fixed 80/20 split (seed 0, every run)
        order = np.random.default_rng(0).permutation(len(train))
        cut = int(0.8 * len(order))
        train, test = images(train, arrays, sorted(order[:cut])), images(train, arrays, sorted(order[cut:]))
    else:
        train, test = images(train, arrays), images(test, arrays)
    train.classes = classes
    return train, test
