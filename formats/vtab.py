"""VTAB-1k's 19 tasks as the processed releases lay them out: <data_dir>/<task>/ holds train800.txt, val200.txt,
train800val200.txt and test.txt (a 'relative/path label' per line) beside the images. splits='final' trains on
train800val200 and tests on test; splits='tune' trains on train800 and validates on val200.

    train, test, val = sources('eurosat', data_dir='data/vtab-1k', splits='final')   # FileImages, val None
"""
import os

from formats import DataError
from formats.images import FileImages
from formats.text import read_text

# task: its group, its number of classes
TASKS = {'cifar': ('Natural', 100), 'caltech101': ('Natural', 102), 'dtd': ('Natural', 47),
         'oxford_flowers102': ('Natural', 102), 'oxford_iiit_pet': ('Natural', 37), 'svhn': ('Natural', 10),
         'sun397': ('Natural', 397), 'patch_camelyon': ('Specialized', 2), 'eurosat': ('Specialized', 10),
         'resisc45': ('Specialized', 45), 'diabetic_retinopathy': ('Specialized', 5),
         'clevr_count': ('Structured', 8), 'clevr_dist': ('Structured', 6), 'dmlab': ('Structured', 6),
         'kitti': ('Structured', 4), 'dsprites_loc': ('Structured', 16), 'dsprites_ori': ('Structured', 16),
         'smallnorb_azi': ('Structured', 18), 'smallnorb_ele': ('Structured', 9)}
FILES = {'final': ('train800val200.txt', None, 'test.txt'), 'tune': ('train800.txt', 'val200.txt', 'test.txt')}


def num_classes(task):
    return TASKS[task][1]


def sources(task, data_dir, splits):
    """(train, test, val) of a task: the split files of `splits` ('final': val is None)."""
    root = os.path.join(data_dir, task)
    if not os.path.isdir(root):
        raise DataError(f'{root}: no such folder; --data-dir is the folder of the processed VTAB-1k tasks '
                        f'(docs/usage.md, VTAB-1k), each task in its own folder')
    train, val, test = (FileImages(*split_file(os.path.join(root, f), root, TASKS[task][1])) if f else None
                        for f in FILES[splits])
    return train, test, val


def split_file(path, root, K):
    """(files, labels) from a split file of 'relative/path label' lines; a bad line is named with its number."""
    if not os.path.isfile(path):
        raise DataError(f'{path}: missing; a processed VTAB-1k task folder holds train800.txt, val200.txt, '
                        f'train800val200.txt and test.txt beside its images')
    files, labels = [], []
    for i, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
            raise DataError(f'{path}, line {i}: expected "relative/path label", got {line.strip()[:80]!r}')
        label = int(parts[1])
        if not 0 <= label < K:
            raise DataError(f'{path}, line {i}: label {label} is out of range for this task\'s {K} classes')
        image = os.path.join(root, parts[0])
        if not os.path.isfile(image):
            raise DataError(f'{path}, line {i}: {parts[0]}: no such image in {root}')
        files.append(image)
        labels.append(label)
    if not files:
        raise DataError(f'{path}: lists no image')
    return files, labels
