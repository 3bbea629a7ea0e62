"""ImageNet-1K and its four out-of-distribution test sets. Labels are the standard 1000-class index of each wnid
(timm's list; ImageNet-R and -A: the position among their 200), whatever folders a copy holds and in whatever order.

  imagenet         <data_dir>/train/<wnid>/* and <data_dir>/val/<wnid>/* (val is the test set), or torchvision's
                   ImageNet root (the devkit and the two archives, unpacked into that layout on first use)
  imagenet-r, imagenet-a, imagenet-sketch
                   test sets of wnid folders (200, 200, 1000 classes): <data_dir>/<wnid>/*, as released
  imagenet-v2      a test set of folders named by class index: <data_dir>/0/* ... <data_dir>/999/* (any variant)

A prompt trained on imagenet is evaluated on the test sets with tools/predict.py; R and A hold 200 of the 1000
classes, and the model is scored over those 200, as their authors do (RESTRICTED).
"""
import os
import pkgutil
import re

from formats import DataError, first_line
from formats.images import IMAGE_EXTENSIONS, FileImages

TEST_SETS = ('imagenet-r', 'imagenet-a', 'imagenet-sketch', 'imagenet-v2')
RESTRICTED = ('imagenet-r', 'imagenet-a')
LAYOUT = {'imagenet': '<data-dir>/train/<wnid>/* and <data-dir>/val/<wnid>/* (or torchvision\'s ImageNet root: '
                      'ILSVRC2012_devkit_t12.tar.gz, ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar)',
          'imagenet-r': '<data-dir>/<wnid>/* (200 wnid folders, the released imagenet-r/)',
          'imagenet-a': '<data-dir>/<wnid>/* (200 wnid folders, the released imagenet-a/)',
          'imagenet-sketch': '<data-dir>/<wnid>/* (1000 wnid folders, the released sketch/)',
          'imagenet-v2': '<data-dir>/0/* ... <data-dir>/999/* (a released imagenetv2-*-format-val/)'}


def wnids(name='imagenet'):
    """timm's class lists: the 1000 ImageNet-1K wnids in their standard index order, or the 200 of ImageNet-R or -A
    (a subset in the same order)."""
    if name in RESTRICTED:
        return pkgutil.get_data('timm.data', f'_info/{name.replace("-", "_")}_synsets.txt').decode().split()
    from timm.data import ImageNetInfo
    return list(ImageNetInfo().label_names())


def class_folders(folder, name, classes, by_index=False):
    """(files, labels) of a folder of class folders, named by wnid (by_index: by class index, 0 to 999, as
    ImageNet-V2), each label the class's position in `classes`: a partial copy, in any order, keeps the standard
    labels. A folder that is not one of the set's classes, or an empty one, is named."""
    if not os.path.isdir(folder):
        raise DataError(f'{folder}: no such folder; {name} reads {LAYOUT[name]}')
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for d in sorted(f for f in os.listdir(folder) if os.path.isdir(os.path.join(folder, f)) and not f.startswith('.')):
        path = os.path.join(folder, d)
        if by_index and not (re.fullmatch(r'[0-9]+', d) and int(d) < len(classes)):  # ASCII digits: '²' is not one
            raise DataError(f'{path}: {name} names its class folders by index, 0 to {len(classes) - 1}; '
                            f'{d!r} is not one')
        if not by_index and d not in index:
            what = f'a wnid outside its {len(classes)} classes' if re.fullmatch(r'n\d{8}', d) else \
                'neither a wnid (n01440764) nor a class index'
            raise DataError(f'{path}: {name} names its class folders by wnid (timm\'s list); {d!r} is {what}')
        names = sorted(f for f in os.listdir(path) if not f.startswith('.'))
        images = [f for f in names if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not images and os.path.isdir(os.path.join(path, 'images')):
            raise DataError(f'{path}: holds a folder images/ and no image: that is Tiny-ImageNet\'s layout '
                            f'(train/<wnid>/images/); read it with --dataset tiny-imagenet')
        if not images:
            raise DataError(f'{path}: an empty class folder (no image); give it its images, or remove it')
        files += [os.path.join(path, f) for f in images]
        labels += [int(d) if by_index else index[d]] * len(images)
    if not files:
        raise DataError(f'{folder}: holds no class folder; {name} reads {LAYOUT[name]}')
    return files, labels


def sources(data_dir):
    """(train, test) of ImageNet-1K: train/ and val/ class folders; torchvision's ImageNet unpacks its archives into
    them first."""
    classes = wnids()
    if not os.path.isdir(os.path.join(data_dir, 'train')) and \
            os.path.isfile(os.path.join(data_dir, 'ILSVRC2012_devkit_t12.tar.gz')):
        from torchvision.datasets import ImageNet
        try:
            for split in ('train', 'val'):  # checks each archive's md5, then unpacks it (once)
                ImageNet(data_dir, split=split)
        except (RuntimeError, ImportError) as e:
            raise DataError(f'{data_dir}: torchvision could not unpack ImageNet ({first_line(e)})') from None
    train, test = (FileImages(*class_folders(os.path.join(data_dir, split), 'imagenet', classes))
                   for split in ('train', 'val'))
    train.classes = classes
    return train, test


def test_set(name, data_dir):
    """One of the four test sets: its images (FileImages) and the classes its labels index (1000 wnids, or 200)."""
    classes = wnids(name)
    return FileImages(*class_folders(data_dir, name, classes, by_index=name == 'imagenet-v2')), classes
