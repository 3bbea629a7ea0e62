"""The five FGVC tasks as VPT distributes their splits: {image path: class id} in train.json, val.json (10% of the
official training images) and test.json, in the task's folder; the image paths are relative to a folder that differs
by task. 'tune' trains on train.json and validates on val.json; 'final' trains on both (the official training images)
and tests on test.json.

    train, test, val = sources('cub', data_dir='data/CUB_200_2011', splits='tune')   # FileImages
"""
import json
import os

from formats import DataError, first_line
from formats.images import FileImages
from formats.text import read_text

TASKS = {'cub': (200, 'images'), 'nabirds': (555, 'images'), 'flowers': (102, ''), 'dogs': (120, 'Images'),
         'cars': (196, '')}  # task: its number of classes, the folder its json paths are relative to


def num_classes(task):
    return TASKS[task][0]


def class_ids(read, data_dir):
    """The class ids of VPT's json files, one kind throughout (integers, or strings), sorted (integer-like strings
    by their value, so '2' comes before '10'); a label of another kind is named with its file and key."""
    kinds = {}
    for split, pairs in read.items():
        for image, c in pairs.items():
            kind = 'integer' if isinstance(c, int) and not isinstance(c, bool) else 'string' if isinstance(c, str) \
                else None
            if kind is None or (kinds and kind not in kinds):
                expected = f'a {next(iter(kinds))} like the others' if kinds else 'an integer or a string'
                raise DataError(f'{os.path.join(data_dir, split + ".json")}: {image!r}: class id {json.dumps(c)}, '
                                f'expected {expected}')
            kinds.setdefault(kind, (split, image))
    ids = {c for pairs in read.values() for c in pairs.values()}
    numeric = all(isinstance(c, int) or c.strip().lstrip('-').isdigit() for c in ids)
    return sorted(ids, key=lambda c: (int(c), str(c)) if numeric else c)


def sources(task, data_dir, splits):
    """(train, test, val): class ids become labels 0..K-1 in sorted order, one mapping for every split (VPT maps each
    split's own ids: a split lacking a class would shift its labels); the ids are the class names, as the json files
    spell them."""
    K, images = TASKS[task]
    read = {}
    for split in ('train', 'val', 'test'):
        path = os.path.join(data_dir, f'{split}.json')
        if not os.path.isfile(path):
            raise DataError(f'{path}: missing; an FGVC task folder holds VPT\'s train.json, val.json and test.json '
                            f'({{image path: class id}}) beside its images')
        try:
            read[split] = json.loads(read_text(path))
        except ValueError as e:
            raise DataError(f'{path}: not JSON ({first_line(e)})') from None
        if not isinstance(read[split], dict) or not read[split]:
            raise DataError(f'{path}: expected a non-empty {{image path: class id}} object')
    ids = class_ids(read, data_dir)
    if len(ids) != K:
        raise DataError(f'{data_dir}: its json files name {len(ids)} classes; fgvc:{task} has {K}')
    label = {c: i for i, c in enumerate(ids)}
    root = os.path.join(data_dir, images)

    def split_of(*names):
        files, labels = [], []
        for n in names:
            for image, c in read[n].items():
                if not os.path.isfile(os.path.join(root, image)):
                    raise DataError(f'{os.path.join(data_dir, n + ".json")}: {image}: no such image in {root}')
                files.append(os.path.join(root, image))
                labels.append(label[c])
        return FileImages(files, labels)
    train = split_of('train') if splits == 'tune' else split_of('train', 'val')
    train.classes = [str(c) for c in ids]
    return train, split_of('test'), split_of('val') if splits == 'tune' else None
