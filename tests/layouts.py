"""Small data sets in the layouts users bring, written from real offline images (../shared/data): an image folder from
CIFAR-10, and VTAB-1k-format tasks from CIFAR-10 and the Tiny-ImageNet subset (real images, real labels, a few
hundred in all). The tests build them in a temporary folder; run it to look at them.

    python tests/layouts.py OUT      # OUT/folder/{train,val,test}/<class>/*.png, OUT/vtab-1k/{eurosat,clevr_dist}/...,
                                     # OUT/fgvc-cub/{images/, train.json, val.json, test.json}

The VTAB tasks borrow two task names for their class counts and groups: 'eurosat' (Specialized, 10 classes) holds
CIFAR-10 images with their labels, 'clevr_dist' (Structured, 6 classes) the first 6 Tiny-ImageNet classes.
"""
import io
import json
import os
import sys
import zipfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from conftest import SHARED_DATA  # noqa: E402
from data import CIFAR10_CLASSES  # noqa: E402

SPLITS = {'train': 8, 'val': 2, 'test': 5}  # images per class in each split


def cifar_images(per_class, classes=range(10)):
    """{class: [per_class uint8 HWC images]} from CIFAR-10's training set, in the original order."""
    with np.load(os.path.join(SHARED_DATA, 'cifar10.npz')) as d:
        x, y = d['x_train'], d['y_train']
    return {c: [x[i] for i in np.flatnonzero(y == c)[:per_class]] for c in classes}


def tiny_images(per_class, n_classes):
    """{class index: [JPEG bytes]} of the first n Tiny-ImageNet classes (sorted wnids), from the subset archive."""
    with zipfile.ZipFile(os.path.join(SHARED_DATA, 'tiny-imagenet-200-subset.zip')) as z:
        wnids = sorted(z.read('tiny-imagenet-200/wnids.txt').decode().split())[:n_classes]
        return {c: [z.read(f'tiny-imagenet-200/train/{w}/images/{w}_{k}.JPEG') for k in range(per_class)]
                for c, w in enumerate(wnids)}


def image_folder(out, classes=(0, 1, 2, 3)):
    """out/{train,val,test}/<class name>/<k>.png: 8 / 2 / 5 CIFAR-10 images per class, names as CIFAR-10's."""
    images = cifar_images(sum(SPLITS.values()), classes)
    for c, ims in images.items():
        start = 0
        for split, n in SPLITS.items():
            folder = os.path.join(out, split, CIFAR10_CLASSES[c])
            os.makedirs(folder, exist_ok=True)
            for k, im in enumerate(ims[start:start + n]):
                Image.fromarray(im).save(os.path.join(folder, f'{k}.png'))
            start += n
    return out


def vtab_task(root, task, images):
    """root/<task>/images/<split>_<class>_<k>.<ext> and the four split files, 'images/... label' per line, from
    {class: [images]}: numpy arrays (saved as PNG) or JPEG bytes (written as they are)."""
    lines = {split: [] for split in SPLITS}
    os.makedirs(os.path.join(root, task, 'images'), exist_ok=True)
    for c, ims in images.items():
        start = 0
        for split, n in SPLITS.items():
            for k, im in enumerate(ims[start:start + n]):
                name = f'images/{split}_{c}_{k}.' + ('jpg' if isinstance(im, bytes) else 'png')
                path = os.path.join(root, task, name)
                if isinstance(im, bytes):
                    with open(path, 'wb') as f:
                        f.write(im)
                else:
                    Image.fromarray(im).save(path)
                lines[split].append(f'{name} {c}')
            start += n
    files = {'train800.txt': lines['train'], 'val200.txt': lines['val'],
             'train800val200.txt': lines['train'] + lines['val'], 'test.txt': lines['test']}
    for name, rows in files.items():
        with open(os.path.join(root, task, name), 'w') as f:
            f.write('\n'.join(rows) + '\n')
    return os.path.join(root, task)


def fgvc_cub(root):
    """A CUB-200-format FGVC task in root, as VPT's json splits have it: images/<class folder>/<file> and
    {train,val,test}.json of {path under images/: class id}, ids 1-200 as CUB's; from the 200 Tiny-ImageNet classes,
    one image of each in each split."""
    images = tiny_images(3, 200)
    splits = {split: {} for split in ('train', 'val', 'test')}
    for c, ims in images.items():
        folder = os.path.join(root, 'images', f'{c + 1:03d}.class')
        os.makedirs(folder, exist_ok=True)
        for k, (split, im) in enumerate(zip(splits, ims)):
            with open(os.path.join(folder, f'{k}.jpg'), 'wb') as f:
                f.write(im)
            splits[split][f'{c + 1:03d}.class/{k}.jpg'] = c + 1
    for split, rows in splits.items():
        with open(os.path.join(root, f'{split}.json'), 'w') as f:
            json.dump(rows, f)
    return root


def vtab(root):
    """Two VTAB-1k-format tasks in root: eurosat (CIFAR-10, 10 classes) and clevr_dist (Tiny-ImageNet, 6 classes)."""
    per_class = sum(SPLITS.values())
    vtab_task(root, 'eurosat', cifar_images(per_class))
    vtab_task(root, 'clevr_dist', tiny_images(per_class, 6))
    return root


# ---- ImageNet-1K and its four test sets, from the Tiny-ImageNet subset's real wnids ----

IMAGENET_SPLITS = {'train': 6, 'val': 3, 'ood': 3}  # images per class: ImageNet train/ and val/, then the test sets


def tiny_wnid_images(wnids, per_class):
    """{wnid: [JPEG bytes]}: the first per_class training images of each Tiny-ImageNet class named."""
    with zipfile.ZipFile(os.path.join(SHARED_DATA, 'tiny-imagenet-200-subset.zip')) as z:
        return {w: [z.read(f'tiny-imagenet-200/train/{w}/images/{w}_{k}.JPEG') for k in range(per_class)]
                for w in wnids}


def imagenet_classes(n=6):
    """n Tiny-ImageNet wnids that are classes of ImageNet-R and of ImageNet-A too (sorted), so that every set holds
    them."""
    from formats.imagenet import wnids as imagenet_wnids
    with zipfile.ZipFile(os.path.join(SHARED_DATA, 'tiny-imagenet-200-subset.zip')) as z:
        tiny = set(z.read('tiny-imagenet-200/wnids.txt').decode().split())
    both = sorted(tiny & set(imagenet_wnids('imagenet-r')) & set(imagenet_wnids('imagenet-a')))
    return both[:n]


def write(path, raw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(raw)


def imagenet(root, wnids=None, others=3):
    """root/imagenet/{train,val}/<wnid>/*.JPEG; root/imagenet-r/<wnid>/, root/imagenet-a/<wnid>/,
    root/imagenet-sketch/<wnid>/ and root/imagenet-v2/<1000-class index>/, the test sets holding the same images
    (each class's last 3). ImageNet holds `others` classes more, in neither R nor A (a model can predict a class R
    does not score). Returns {set: folder} and the wnids of the test sets."""
    from formats.imagenet import wnids as imagenet_wnids
    wnids = wnids or imagenet_classes()
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    with zipfile.ZipFile(os.path.join(SHARED_DATA, 'tiny-imagenet-200-subset.zip')) as z:
        tiny = sorted(z.read('tiny-imagenet-200/wnids.txt').decode().split())
    outside = [w for w in tiny if w not in imagenet_wnids('imagenet-r') + imagenet_wnids('imagenet-a')][:others]
    images = tiny_wnid_images(wnids + outside, sum(IMAGENET_SPLITS.values()))
    for w, ims in images.items():
        for k, im in enumerate(ims):
            split = 'train' if k < 6 else 'val' if k < 9 else None
            name = f'{w}_{k}.JPEG'
            if split or w in outside:
                if split:
                    write(os.path.join(root, 'imagenet', split, w, name), im)
                continue
            for folder in ('imagenet-r', 'imagenet-a', 'imagenet-sketch'):
                write(os.path.join(root, folder, w, name), im)
            write(os.path.join(root, 'imagenet-v2', str(index[w]), name), im)
    return {k: os.path.join(root, k) for k in ('imagenet', 'imagenet-r', 'imagenet-a', 'imagenet-sketch',
                                               'imagenet-v2')}, wnids


def imagenet_archives(root, wnids=None):
    """torchvision's ImageNet root in root: ILSVRC2012_devkit_t12.tar.gz (data/meta.mat with the classes' ILSVRC2012
    ids and wnids, data/ILSVRC2012_validation_ground_truth.txt), ILSVRC2012_img_train.tar (a <wnid>.tar per class)
    and ILSVRC2012_img_val.tar (flat ILSVRC2012_val_<k>.JPEG files, labelled by the ground truth, in a shuffled class
    order). Returns {archive: md5} (torchvision checks each) and {val file name: wnid}."""
    import hashlib
    import tarfile
    import scipy.io
    wnids = wnids or imagenet_classes()
    images = tiny_wnid_images(wnids, 9)

    def tar(path, members, mode='w'):
        with tarfile.open(path, mode) as t:
            for name, raw in members:
                info = tarfile.TarInfo(name)
                info.size = len(raw)
                t.addfile(info, io.BytesIO(raw))
    ids = {w: 100 + 7 * i for i, w in enumerate(wnids)}  # ILSVRC2012 ids are not the 1000-class index
    synsets = np.zeros((len(wnids), 1), dtype=[(f, 'O') for f in ('ILSVRC2012_ID', 'WNID', 'words', 'gloss',
                                                                   'num_children')])
    for i, w in enumerate(wnids):
        synsets[i, 0] = (ids[w], w, f'class {w}', '', 0)
    mat = io.BytesIO()
    scipy.io.savemat(mat, {'synsets': synsets})
    order = [(w, k) for k in range(6, 9) for w in reversed(wnids)]  # val files are not grouped by class
    truth = ''.join(f'{ids[w]}\n' for w, _ in order)
    val = {f'ILSVRC2012_val_{n + 1:08d}.JPEG': w for n, (w, _) in enumerate(order)}
    tar(os.path.join(root, 'ILSVRC2012_devkit_t12.tar.gz'),
        [('ILSVRC2012_devkit_t12/data/meta.mat', mat.getvalue()),
         ('ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt', truth.encode())], 'w:gz')
    tar(os.path.join(root, 'ILSVRC2012_img_val.tar'),
        [(name, images[w][k]) for name, (w, k) in zip(val, order)])
    inner = {}
    for w in wnids:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w') as t:
            for k in range(6):
                info = tarfile.TarInfo(f'{w}_{k}.JPEG')
                info.size = len(images[w][k])
                t.addfile(info, io.BytesIO(images[w][k]))
        inner[f'{w}.tar'] = buf.getvalue()
    tar(os.path.join(root, 'ILSVRC2012_img_train.tar'), list(inner.items()))
    md5 = {n: hashlib.md5(open(os.path.join(root, n), 'rb').read()).hexdigest()
           for n in ('ILSVRC2012_devkit_t12.tar.gz', 'ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')}
    return md5, val

if __name__ == '__main__':
    out = sys.argv[1] if len(sys.argv) > 1 else 'layouts'
    image_folder(os.path.join(out, 'folder'))
    vtab(os.path.join(out, 'vtab-1k'))
    fgvc_cub(os.path.join(out, 'fgvc-cub'))
    print(f'wrote {out}/folder, {out}/vtab-1k and {out}/fgvc-cub')
