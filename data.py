"""Datasets by name, as float images in [0, 1] resized to one square size, for visual prompting.

No augmentation and no normalization: the papers' protocol (LoR-VP, LoTeP, LoRSP) resizes and nothing else, and the
backbone's normalization belongs to the model, after any input-space prompt (the LoR-VP order).

    splits = load('cifar10-sample', data_dir='data', img_size=96, seed=0)   # the sample in sample/, offline
    x, y = splits.train[0]   # x: (3, 128, 128) float in [0, 1], y: int

Where the data comes from:
  cifar10-sample 1,500 real CIFAR-10 images shipped in sample/cifar10-sample.npz (sample/README.md), offline
  cifar10        <data_dir>/cifar10.npz (NPZ_FORMAT below), else torchvision's layout, else download
  tiny-imagenet  <data_dir>/tiny-imagenet-200/ (extracted), tiny-imagenet-200.zip or tiny-imagenet-200-subset.zip
                 (read inside the zip), else the CS231n archive is downloaded; the labelled val set is the test set
  cifar100, eurosat, oxford-pets, food101, dtd, flowers102, svhn, gtsrb
                 torchvision's layout in <data_dir>, else torchvision downloads it there
  synthetic      made here: K classes of smooth colour patterns plus noise (learnable, for smoke tests and tests)
  folder         your own images, in the ImageFolder layout: <data_dir>/train/<class>/*, <data_dir>/test/<class>/*
                 and, if there, <data_dir>/val/<class>/* (the validation images); classes and their order from train/
  vtab-1k:<task> a processed VTAB-1k task (VTAB_1K below): <data_dir>/<task>/ holds train800.txt, val200.txt,
                 train800val200.txt, test.txt (a 'relative/path label' per line) and the images. splits='final'
                 trains on train800val200 and tests on test; splits='tune' trains on train800 and validates on val200
  fgvc:<task>    an FGVC task (FGVC below) in VPT's json splits: <data_dir>/{train,val,test}.json and its images;
                 'final' trains on train + val and tests on test; 'tune' trains on train and validates on val
  imagenet       ImageNet-1K: <data_dir>/train/<wnid>/* and <data_dir>/val/<wnid>/* (val is the test set), or
                 torchvision's ImageNet root (the devkit and the two archives, unpacked into that layout on first use)
  imagenet-r, imagenet-a, imagenet-sketch
                 test sets of wnid folders (200, 200, 1000 classes): <data_dir>/<wnid>/*, as released
  imagenet-v2    a test set of folders named by class index: <data_dir>/0/* ... <data_dir>/999/* (any variant)
                 Labels of the ImageNet family are the standard 1000-class index of the wnid (timm's list; R and A:
                 the position among their 200), whatever folders a copy holds and in whatever order.
"""
import codecs
import io
import json
import os
import pathlib
import pkgutil
import re
import shutil
import time
import zipfile
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torchvision.transforms.v2 import functional as TF

TINY_URL = 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'
SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sample', 'cifar10-sample.npz')  # in the repository
NPZ_FORMAT = ('x_train (N, H, W, 3) uint8, y_train (N,) labels 0..9, x_test, y_test, as numpy.savez writes them; '
              'class ids as in the CIFAR-10 release, 0 airplane ... 9 truck')
CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
NUM_CLASSES = {'cifar10': 10, 'cifar10-sample': 10, 'cifar100': 100, 'tiny-imagenet': 200, 'eurosat': 10,
               'oxford-pets': 37, 'food101': 101, 'dtd': 47, 'flowers102': 102, 'svhn': 10, 'gtsrb': 43,
               'synthetic': 10, 'imagenet': 1000, 'imagenet-r': 200, 'imagenet-a': 200, 'imagenet-sketch': 1000,
               'imagenet-v2': 1000}
# ImageNet-1K's four out-of-distribution test sets (test only: a prompt trained on imagenet is evaluated on them with
# tools/predict.py). R and A hold 200 of the 1000 classes; the model is scored over those 200, as their authors do.
IMAGENET_OOD = ('imagenet-r', 'imagenet-a', 'imagenet-sketch', 'imagenet-v2')
RESTRICTED = ('imagenet-r', 'imagenet-a')
# The 19 tasks of VTAB-1k as the processed releases name them: group, number of classes
VTAB_1K = {'cifar': ('Natural', 100), 'caltech101': ('Natural', 102), 'dtd': ('Natural', 47),
           'oxford_flowers102': ('Natural', 102), 'oxford_iiit_pet': ('Natural', 37), 'svhn': ('Natural', 10),
           'sun397': ('Natural', 397), 'patch_camelyon': ('Specialized', 2), 'eurosat': ('Specialized', 10),
           'resisc45': ('Specialized', 45), 'diabetic_retinopathy': ('Specialized', 5),
           'clevr_count': ('Structured', 8), 'clevr_dist': ('Structured', 6), 'dmlab': ('Structured', 6),
           'kitti': ('Structured', 4), 'dsprites_loc': ('Structured', 16), 'dsprites_ori': ('Structured', 16),
           'smallnorb_azi': ('Structured', 18), 'smallnorb_ele': ('Structured', 9)}
VTAB_FILES = {'final': ('train800val200.txt', None, 'test.txt'), 'tune': ('train800.txt', 'val200.txt', 'test.txt')}
# The five FGVC tasks as VPT distributes their splits: {image path: class id} in train.json, val.json (10% of the
# official training images) and test.json, in the data set's folder; the image paths are relative to a folder that
# differs by task. Number of classes, and that folder.
FGVC = {'cub': (200, 'images'), 'nabirds': (555, 'images'), 'flowers': (102, ''), 'dogs': (120, 'Images'),
        'cars': (196, '')}
DATASETS = sorted(NUM_CLASSES) + ['folder'] + [f'vtab-1k:{t}' for t in VTAB_1K] + [f'fgvc:{t}' for t in FGVC]
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')


def vtab_task(name):
    """'vtab-1k:cifar' -> 'cifar'; None for another data set."""
    return name.split(':', 1)[1] if name.startswith('vtab-1k:') else None


def fgvc_task(name):
    """'fgvc:cub' -> 'cub'; None for another data set."""
    return name.split(':', 1)[1] if name.startswith('fgvc:') else None


def check_name(name):
    if name not in DATASETS:
        hint = f' (VTAB-1k tasks: {", ".join(VTAB_1K)})' if name.startswith('vtab') else ''
        hint = hint or (f' (FGVC tasks: {", ".join(FGVC)})' if name.startswith('fgvc') else '')
        raise DataError(f'unknown dataset {name!r}; choose one of: {", ".join(sorted(NUM_CLASSES))}, folder, '
                        f'vtab-1k:<task>, fgvc:<task>{hint}')


def num_classes(name, data_dir):
    """K of a data set, before its images are read (the model is built first): a folder's train/ says it."""
    check_name(name)
    if name == 'folder':
        return len(_folder_classes(os.path.join(data_dir, 'train')))
    if vtab_task(name):
        return VTAB_1K[vtab_task(name)][1]
    if fgvc_task(name):
        return FGVC[fgvc_task(name)][0]
    return NUM_CLASSES[name]


class DataError(Exception):
    """A data set that is not there and cannot be fetched, or a bad data option; the message says how to fix it."""


@dataclass
class Splits:
    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    classes: list = None  # class names, where the data set has them


# ---- pixels: every image mode as the picture a person sees ----

WIDE = ('I;16', 'I;16L', 'I;16B', 'I;16N')  # 16-bit greyscale (PNG, TIFF from microscopes, scanners, satellites)
EIGHT_BIT = ('1', 'L', 'P', 'RGB', 'RGBX', 'CMYK', 'YCbCr')  # PIL converts these to RGB exactly


def pixels(image, where):
    """A PIL image as a (3, h, w) tensor of the picture an image viewer shows: uint8 for 8-bit modes, float in [0, 1]
    for 16-bit (value / 65535) and float (values already in [0, 1]) images, grey repeated on the 3 channels.
    EXIF orientation is applied as viewers do; transparent pixels are composited onto white. PIL's convert('RGB')
    would clip a 16-bit image to white and a float one to black. A mode with no meaningful scaling is refused."""
    from PIL import ImageOps
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in WIDE or mode in ('I', 'F'):
        x = np.asarray(image)
        if mode == 'F':  # a float image: values must already be intensities in [0, 1]
            lo, hi = float(x.min()), float(x.max())
            if not (np.isfinite(x).all() and 0.0 <= lo and hi <= 1.0):
                raise DataError(f'{where}: a float (mode F) image with values in [{lo:g}, {hi:g}]; only [0, 1] has a '
                                f'meaning as intensities: rescale it to [0, 1], or save it as an 8- or 16-bit image')
            grey = torch.from_numpy(x.astype(np.float32))
        else:  # 16-bit, and mode I (32-bit integers; PIL reads some 16-bit files so) when its values fit 16 bits
            if mode == 'I' and (x.min() < 0 or x.max() > 65535):
                raise DataError(f'{where}: a 32-bit integer (mode I) image with values in [{x.min()}, {x.max()}]; '
                                f'no bit depth says what is white: save it as an 8- or 16-bit image')
            grey = torch.from_numpy(x.astype(np.float32) / 65535)
        return grey.expand(3, *grey.shape).contiguous()  # (h, w) -> (3, h, w)
    if mode in ('LA', 'La', 'PA', 'RGBA', 'RGBa') or 'transparency' in image.info:  # alpha, or a transparent colour
        rgba = torch.from_numpy(np.array(image.convert('RGBA'))).permute(2, 0, 1).float()  # (4, h, w)
        alpha = rgba[3:] / 255
        # over white: c = alpha c_image + (1 - alpha) 255
        return (alpha * rgba[:3] + (1 - alpha) * 255).round().byte()
    if mode not in EIGHT_BIT:
        raise DataError(f'{where}: image mode {mode} is not read here (8-bit, 16-bit or float greyscale, palette, '
                        f'RGB(A), CMYK, YCbCr are); save it as RGB')
    return torch.from_numpy(np.array(image.convert('RGB'))).permute(2, 0, 1).contiguous()  # (h, w, 3) -> (3, h, w)


# ---- image sources: each returns (image (3, h, w): uint8, or float in [0, 1] for 16-bit and float images,
#      label) and exposes .labels ----

class ArrayImages(Dataset):
    """Images held in memory as a uint8 NHWC array (CIFAR-10 from its .npz, synthetic data)."""

    def __init__(self, images: np.ndarray, labels):
        self.images, self.labels = images, [int(y) for y in labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]).permute(2, 0, 1), self.labels[i]


class FileImages(Dataset):
    """Image files, each (path in a zip or on disk, label); a zip is opened once per process (DataLoader workers)."""

    def __init__(self, files, labels, zip_path=None):
        self.files, self.labels, self.zip_path = files, [int(y) for y in labels], zip_path
        self._zip, self._pid = None, None

    def __len__(self):
        return len(self.labels)

    def _where(self, i):
        return f'{self.zip_path}: {self.files[i]}' if self.zip_path else self.files[i]

    def _read(self, i):
        try:
            if self.zip_path is None:
                with open(self.files[i], 'rb') as f:
                    return f.read()
            if self._pid != os.getpid():
                self._zip, self._pid = zipfile.ZipFile(self.zip_path), os.getpid()
            return self._zip.read(self.files[i])
        except OSError as e:
            raise DataError(f'{self._where(i)}: cannot be read ({_first_line(e)})') from None

    def _decode(self, i, raw):
        from PIL import Image
        try:
            with Image.open(io.BytesIO(raw)) as image:
                image.load()  # every pixel decoded: a truncated JPEG fails here
                return pixels(image, self._where(i))
        except DataError:
            raise
        except Exception as e:
            raise DataError(f'{self._where(i)}: cannot be read as an image ({type(e).__name__}: {_first_line(e)}); '
                            f'replace the file, or the archive') from None

    def verify(self, indices, chunk=256):
        """Every image the run will use decodes in full, and its mode reads (pixels): an error at load, not in
        epoch 2. Files are read here, decoded by a pool of threads (PIL lets go of the GIL while decoding)."""
        from concurrent.futures import ThreadPoolExecutor
        indices, said = list(indices), time.time()
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            for start in range(0, len(indices), chunk):
                part = indices[start:start + chunk]
                list(pool.map(self._decode, part, [self._read(i) for i in part]))
                if time.time() - said > 10:  # a large set (ImageNet-1K) takes minutes: say so
                    print(f'checking the images: {start + len(part)}/{len(indices)} decoded', flush=True)
                    said = time.time()

    def __getitem__(self, i):
        return self._decode(i, self._read(i)), self.labels[i]


class TorchvisionImages(Dataset):
    """A torchvision data set (PIL images) with its labels read from wherever that class keeps them."""

    def __init__(self, ds):
        self.ds, self.classes = ds, getattr(ds, 'classes', None)
        for attr in ('targets', 'labels', '_labels'):
            if hasattr(ds, attr):
                self.labels = [int(y) for y in getattr(ds, attr)]
                break
        else:  # GTSRB keeps (path, label) pairs
            self.labels = [int(y) for _, y in ds._samples]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        where = f'{type(self.ds).__name__} in {self.ds.root}: image {i}'
        try:
            image, y = self.ds[i]
        except Exception as e:
            raise DataError(f'{where} cannot be read ({type(e).__name__}: {_first_line(e)})') from None
        return pixels(image, where), int(y)


def resize(image, size):
    """(3, h, w) uint8, or float in [0, 1] -> float (3, size, size) in [0, 1]: bilinear with antialiasing, no crop."""
    if image.shape[-2:] != (size, size):
        image = TF.resize(image, [size, size], antialias=True)
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


# ---- loaders by name: each returns (train source, test source) ----

def _cifar10(data_dir, path=None):
    path = path or os.path.join(data_dir, 'cifar10.npz')
    if path == SAMPLE and not os.path.isfile(path):
        raise DataError(f'{path} is missing: it ships with the repository; restore it with git checkout, or remake '
                        f'it from the full CIFAR-10 with python sample/make_cifar10_sample.py --source ...')
    if not os.path.isfile(path):
        return _torchvision('cifar10', data_dir, also_looked=[path])
    try:
        with np.load(path) as d:
            arrays = {k: d[k] for k in ('x_train', 'y_train', 'x_test', 'y_test')}
    except KeyError as e:
        raise DataError(f'{path}: has no array {e} (it needs {NPZ_FORMAT})') from None
    except Exception as e:
        raise DataError(f'{path}: cannot be read, truncated or corrupt? ({type(e).__name__}: {_first_line(e)})') \
            from None
    for split in ('train', 'test'):
        x, y = arrays[f'x_{split}'], arrays[f'y_{split}']
        if x.ndim != 4 or x.shape[3] != 3 or x.dtype != np.uint8 or len(x) != len(y) or not len(y) or \
                y.min() < 0 or y.max() >= 10:
            raise DataError(f'{path}: x_{split} must be uint8 (N, H, W, 3) and y_{split} N labels in 0..9; got '
                            f'{x.dtype} {x.shape} and {len(y)} labels')
    train = ArrayImages(arrays['x_train'], arrays['y_train'])
    train.classes = CIFAR10_CLASSES
    return train, ArrayImages(arrays['x_test'], arrays['y_test'])


def _tiny_imagenet(data_dir):
    """The standard archive layout: train/<wnid>/images/*.JPEG, val/images/*.JPEG + val/val_annotations.txt."""
    candidates = [os.path.join(data_dir, n) for n in
                  ('tiny-imagenet-200', 'tiny-imagenet-200.zip', 'tiny-imagenet-200-subset.zip')]
    found = next((c for c in candidates if os.path.exists(c)), None)
    if found is None:
        existed = os.path.exists(data_dir)
        try:
            from torchvision.datasets.utils import download_url
            download_url(TINY_URL, data_dir)
            found = os.path.join(data_dir, 'tiny-imagenet-200.zip')
        except Exception as e:
            if not existed and os.path.isdir(data_dir):  # a mistyped --data-dir is not left behind
                shutil.rmtree(data_dir)
            raise DataError(
                f"dataset 'tiny-imagenet' is not in {data_dir!r} (looked for {', '.join(candidates)}) and could not be "
                f"downloaded from {TINY_URL} ({_first_line(e)}). Put tiny-imagenet-200.zip, or the folder it "
                f"extracts to, in --data-dir (or tiny-imagenet-200-subset.zip, the same layout).") from None
    texts = ('wnids.txt', 'val/val_annotations.txt')
    try:
        if found.endswith('.zip'):
            zip_path = found
            with zipfile.ZipFile(found) as z:
                names = z.namelist()
                root = next(n[:-len('wnids.txt')] for n in names if n.endswith('wnids.txt'))
                wnids_txt, val_txt = [z.read(root + rel).decode() for rel in texts]
        else:
            zip_path, root = None, found + os.sep
            names = [os.path.relpath(os.path.join(d, f), found).replace(os.sep, '/')
                     for d, _, fs in os.walk(found) for f in fs]
            names = [root + n for n in names]
            wnids_txt, val_txt = [pathlib.Path(root + rel).read_text() for rel in texts]
        wnids = sorted(wnids_txt.split())  # label = index in sorted wnids (torchvision ImageFolder order)
        label = {w: i for i, w in enumerate(wnids)}
        train = sorted(n for n in names if n.startswith(root + 'train/') and n.endswith('.JPEG'))
        train_labels = [label[n[len(root + 'train/'):].split('/')[0]] for n in train]
        rows = [line.split('\t') for line in val_txt.splitlines() if line.strip()]
        rows.sort(key=lambda r: int(r[0].split('_')[1].split('.')[0]))  # val_0, val_1, ...: the "first N" images
        test, test_labels = [root + 'val/images/' + r[0] for r in rows], [label[r[1]] for r in rows]
    except (zipfile.BadZipFile, OSError, StopIteration, KeyError, IndexError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f'{found}: not a readable Tiny-ImageNet archive or folder ({type(e).__name__}: '
                        f'{_first_line(e)}); it needs wnids.txt, train/<wnid>/images/ and val/val_annotations.txt') \
            from None
    if len(wnids) != 200 or not train or not test:
        raise DataError(f'{found}: {len(wnids)} class ids, {len(train)} training and {len(test)} validation images; '
                        f'Tiny-ImageNet has 200 classes')
    train = FileImages(train, train_labels, zip_path)
    train.classes = wnids
    return train, FileImages(test, test_labels, zip_path)


def _torchvision(name, data_dir, also_looked=()):
    import torchvision.datasets as tv
    make = {
        'cifar10': lambda train, dl: tv.CIFAR10(data_dir, train=train, download=dl),
        'cifar100': lambda train, dl: tv.CIFAR100(data_dir, train=train, download=dl),
        'svhn': lambda train, dl: tv.SVHN(data_dir, split='train' if train else 'test', download=dl),
        'gtsrb': lambda train, dl: tv.GTSRB(data_dir, split='train' if train else 'test', download=dl),
        'food101': lambda train, dl: tv.Food101(data_dir, split='train' if train else 'test', download=dl),
        'dtd': lambda train, dl: tv.DTD(data_dir, split='train' if train else 'test', download=dl),
        'flowers102': lambda train, dl: tv.Flowers102(data_dir, split='train' if train else 'test', download=dl),
        'oxford-pets': lambda train, dl: tv.OxfordIIITPet(data_dir, split='trainval' if train else 'test',
                                                          download=dl),
        'eurosat': lambda train, dl: tv.EuroSAT(data_dir, download=dl),
    }[name]
    existed = os.path.exists(data_dir)
    try:
        try:
            train, test = make(True, False), make(False, False)
        except RuntimeError:  # torchvision: "Dataset not found or corrupted. You can use download=True"
            train, test = make(True, True), make(False, True)
    except Exception as e:
        if not existed and os.path.isdir(data_dir):  # a mistyped --data-dir is not left behind, nor a partial download
            shutil.rmtree(data_dir)
        looked = ', '.join([*also_looked, f"torchvision's {name} layout in {data_dir}"])
        raise DataError(
            f"dataset {name!r} is not in {data_dir!r} (looked for {looked}) and could not be downloaded "
            f"({_first_line(e)}). Run once with network to let torchvision download it into --data-dir, or copy "
            f"torchvision's layout there.") from None
    train, test = TorchvisionImages(train), TorchvisionImages(test)
    if name == 'eurosat':  # one folder of 27,000 images, no official split: a fixed 80/20 split (seed 0, every run)
        order = np.random.default_rng(0).permutation(len(train))
        cut = int(0.8 * len(order))
        train, test = _labelled_subset(train, sorted(order[:cut])), _labelled_subset(train, sorted(order[cut:]))
    return train, test


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
    """(files, labels) of one split of an image folder, its class folders named as in train/."""
    found = _folder_classes(folder)
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DataError(f'{folder}: class folder(s) {", ".join(unknown)} are not in train/ ({", ".join(classes)}); '
                        f'every class needs training images')
    files, labels = [], []
    for label, c in enumerate(classes):
        if c not in found:
            continue
        names = sorted(f for f in os.listdir(os.path.join(folder, c)) if not f.startswith('.'))
        others = [f for f in names if not f.lower().endswith(IMAGE_EXTENSIONS)]
        if others:
            raise DataError(f'{os.path.join(folder, c, others[0])}: not an image file ({", ".join(IMAGE_EXTENSIONS)})'
                            f'; move it out of the class folder')
        if not names:
            raise DataError(f'{os.path.join(folder, c)}: an empty class folder; give it images, or remove it')
        files += [os.path.join(folder, c, f) for f in names]
        labels += [label] * len(names)
    return files, labels


def _folder(data_dir):
    """Your own images: train/<class>/*, test/<class>/*, and val/<class>/* if there."""
    classes = _folder_classes(os.path.join(data_dir, 'train'))
    splits = {}
    for split in ('train', 'val', 'test'):
        path = os.path.join(data_dir, split)
        if split == 'val' and not os.path.isdir(path):
            splits[split] = None
            continue
        splits[split] = FileImages(*_folder_split(path, classes))
    splits['train'].classes = classes
    return splits['train'], splits['test'], splits['val']


def read_text(path):
    """A text file as editors write it: UTF-8 with or without a byte-order mark (Notepad writes one), or UTF-16 with
    its mark; any other encoding is named with the line of its first byte that is not UTF-8."""
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return raw.decode('utf-16')
        return raw.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b'\n') + 1
        raise DataError(f'{path}, line {line}: byte 0x{raw[e.start]:02x} is not {e.encoding[:6].upper()} (saved as '
                        f'Latin-1 or Windows-1252?); save the file as UTF-8') from None


def _split_file(path, root, K):
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


def _vtab(task, data_dir, splits):
    """A processed VTAB-1k task: the split files of `splits` ('final' or 'tune')."""
    root = os.path.join(data_dir, task)
    if not os.path.isdir(root):
        raise DataError(f'{root}: no such folder; --data-dir is the folder of the processed VTAB-1k tasks '
                        f'(docs/usage.md, VTAB-1k), each task in its own folder')
    train, val, test = (FileImages(*_split_file(os.path.join(root, f), root, VTAB_1K[task][1])) if f else None
                        for f in VTAB_FILES[splits])
    return train, test, val


def _fgvc_ids(read, data_dir):
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


def _fgvc(task, data_dir, splits):
    """An FGVC task in VPT's json splits: tune trains on train.json and validates on val.json; final trains on both
    (the official training images) and tests on test.json. Class ids become labels 0..K-1 in sorted order, one
    mapping for every split (VPT maps each split's own ids: a split lacking a class would shift its labels); the
    ids themselves are the class names, as the json files spell them."""
    K, images = FGVC[task]
    read = {}
    for split in ('train', 'val', 'test'):
        path = os.path.join(data_dir, f'{split}.json')
        if not os.path.isfile(path):
            raise DataError(f'{path}: missing; an FGVC task folder holds VPT\'s train.json, val.json and test.json '
                            f'({{image path: class id}}) beside its images')
        try:
            read[split] = json.loads(read_text(path))
        except ValueError as e:
            raise DataError(f'{path}: not JSON ({_first_line(e)})') from None
        if not isinstance(read[split], dict) or not read[split]:
            raise DataError(f'{path}: expected a non-empty {{image path: class id}} object')
    ids = _fgvc_ids(read, data_dir)
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


def imagenet_wnids(name='imagenet'):
    """timm's class lists: the 1000 ImageNet-1K wnids in their standard index order, or the 200 of ImageNet-R or -A
    (a subset in the same order)."""
    if name in RESTRICTED:
        return pkgutil.get_data('timm.data', f'_info/{name.replace("-", "_")}_synsets.txt').decode().split()
    from timm.data import ImageNetInfo
    return list(ImageNetInfo().label_names())


def _class_folders(folder, name, classes, by_index=False):
    """(files, labels) of a folder of class folders, named by wnid (by_index: by class index, 0 to 999, as
    ImageNet-V2), each label the class's position in `classes`: a partial copy, in any order, keeps the standard
    labels. A folder that is not one of the set's classes, or an empty one, is named."""
    if not os.path.isdir(folder):
        raise DataError(f'{folder}: no such folder; {name} reads {LAYOUT[name]}')
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for d in sorted(f for f in os.listdir(folder) if os.path.isdir(os.path.join(folder, f)) and not f.startswith('.')):
        path = os.path.join(folder, d)
        if by_index and not (d.isdigit() and int(d) < len(classes)):
            raise DataError(f'{path}: {name} names its class folders by index, 0 to {len(classes) - 1}; '
                            f'{d!r} is not one')
        if not by_index and d not in index:
            what = f'a wnid outside its {len(classes)} classes' if re.fullmatch(r'n\d{8}', d) else \
                'neither a wnid (n01440764) nor a class index'
            raise DataError(f'{path}: {name} names its class folders by wnid (timm\'s list); {d!r} is {what}')
        names = sorted(f for f in os.listdir(path) if not f.startswith('.'))
        images = [f for f in names if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not images:
            raise DataError(f'{path}: an empty class folder (no image); give it its images, or remove it')
        files += [os.path.join(path, f) for f in images]
        labels += [int(d) if by_index else index[d]] * len(images)
    if not files:
        raise DataError(f'{folder}: holds no class folder; {name} reads {LAYOUT[name]}')
    return files, labels


LAYOUT = {'imagenet': '<data-dir>/train/<wnid>/* and <data-dir>/val/<wnid>/* (or torchvision\'s ImageNet root: '
                      'ILSVRC2012_devkit_t12.tar.gz, ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar)',
          'imagenet-r': '<data-dir>/<wnid>/* (200 wnid folders, the released imagenet-r/)',
          'imagenet-a': '<data-dir>/<wnid>/* (200 wnid folders, the released imagenet-a/)',
          'imagenet-sketch': '<data-dir>/<wnid>/* (1000 wnid folders, the released sketch/)',
          'imagenet-v2': '<data-dir>/0/* ... <data-dir>/999/* (a released imagenetv2-*-format-val/)'}


def _imagenet(data_dir):
    """ImageNet-1K: train/ and val/ class folders; torchvision's ImageNet unpacks its archives into them first."""
    wnids = imagenet_wnids()
    if not os.path.isdir(os.path.join(data_dir, 'train')) and \
            os.path.isfile(os.path.join(data_dir, 'ILSVRC2012_devkit_t12.tar.gz')):
        from torchvision.datasets import ImageNet
        try:
            for split in ('train', 'val'):  # checks each archive's md5, then unpacks it (once)
                ImageNet(data_dir, split=split)
        except (RuntimeError, ImportError) as e:
            raise DataError(f'{data_dir}: torchvision could not unpack ImageNet ({_first_line(e)})') from None
    train, test = (FileImages(*_class_folders(os.path.join(data_dir, split), 'imagenet', wnids))
                   for split in ('train', 'val'))
    train.classes = wnids
    return train, test


def load_test_set(name, *, data_dir, img_size, test_limit=None):
    """An out-of-distribution test set of ImageNet-1K (IMAGENET_OOD) as Splits with no training images: its images
    (the first test_limit in folder order), labelled in the classes it names (1000 wnids, or R's and A's 200)."""
    check_name(name)
    if name not in IMAGENET_OOD:
        raise DataError(f'{name} is not one of the test sets {", ".join(IMAGENET_OOD)}')
    classes = imagenet_wnids(name)
    test = FileImages(*_class_folders(data_dir, name, classes, by_index=name == 'imagenet-v2'))
    indices = list(range(len(test)))[:test_limit]
    test.verify(indices)
    return Splits(train=None, val=None, test=Resized(_labelled_subset(test, indices), img_size),
                  num_classes=len(classes), classes=classes)


def synthetic(num_classes=10, train_per_class=60, test_per_class=20, size=32, seed=0):
    """K classes, each a smooth random colour pattern (4x4 upsampled); samples add brightness jitter and pixel noise.

    A linear probe on any reasonable feature extractor learns it, so a training loop that works lowers its loss."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, 3, 4, 4, generator=g)
    prototypes = torch.nn.functional.interpolate(prototypes, size=(size, size), mode='bilinear', align_corners=False)

    def sample(per_class):
        y = torch.arange(num_classes).repeat_interleave(per_class)
        x = prototypes[y] * (0.7 + 0.6 * torch.rand(len(y), 1, 1, 1, generator=g))
        x = (x + 0.15 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        return ArrayImages((x * 255).round().byte().permute(0, 2, 3, 1).numpy(), y.tolist())

    return sample(train_per_class), sample(test_per_class)


# ---- splits ----

def load(name, *, data_dir, img_size, seed, train_per_class=None, test_limit=None, val_split=0.0,
         splits='final') -> Splits:
    """Train/val/test of a data set by name. Subsets are drawn per class with a seeded generator; the test subset is
    the first `test_limit` images in the original order; `val_split` holds out that fraction of each class's
    training images for model selection, unless the data set has validation images of its own (a folder's val/,
    VTAB-1k's val200 with splits='tune')."""
    check_name(name)
    if splits not in VTAB_FILES:
        raise DataError(f'--splits must be final or tune, got {splits!r}')
    if name in IMAGENET_OOD:
        raise DataError(f'{name} is a test set (no training images): train on imagenet, then evaluate the prompt '
                        f'file with tools/predict.py --dataset {name} --data-dir <its folder>')
    if splits == 'tune' and not (vtab_task(name) or fgvc_task(name)):
        raise DataError(f'--splits tune reads the split files of a VTAB-1k or FGVC task; {name} has none (hold out '
                        f'validation images with --val-split)')
    if not 0.0 <= val_split < 1.0:
        raise DataError(f'--val-split must be in [0, 1), got {val_split}')
    for flag, value in (('--train-per-class', train_per_class), ('--test-limit', test_limit)):
        if value is not None and value <= 0:
            raise DataError(f'{flag} must be a positive number of images, got {value}')
    K, own_val = num_classes(name, data_dir), None
    if name == 'synthetic':
        train, test = synthetic(K)
    elif name in ('cifar10', 'cifar10-sample'):
        train, test = _cifar10(data_dir, SAMPLE if name == 'cifar10-sample' else None)
    elif name == 'tiny-imagenet':
        train, test = _tiny_imagenet(data_dir)
    elif name == 'folder':
        train, test, own_val = _folder(data_dir)
    elif name == 'imagenet':
        train, test = _imagenet(data_dir)
    elif vtab_task(name):
        train, test, own_val = _vtab(vtab_task(name), data_dir, splits)
    elif fgvc_task(name):
        train, test, own_val = _fgvc(fgvc_task(name), data_dir, splits)
    else:
        train, test = _torchvision(name, data_dir)
    if own_val is not None and val_split:
        raise DataError(f'--val-split {val_split}: {name} has validation images of its own; leave --val-split out')

    rng = np.random.default_rng(seed)
    labels = np.asarray(train.labels)
    train_idx, val_idx = [], []
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
    test_idx = list(range(len(test)))[:test_limit]
    if own_val is not None:
        val, val_idx = own_val, list(range(len(own_val)))
    else:
        val = train
    for source, indices in ((train, train_idx), (val, val_idx), (test, test_idx)):
        if isinstance(source, FileImages):  # every image the run will use is an image: an error now, not in epoch 2
            source.verify(indices)
    return Splits(train=Resized(_labelled_subset(train, sorted(train_idx)), img_size),
                  val=Resized(_labelled_subset(val, sorted(val_idx)), img_size) if val_idx else None,
                  test=Resized(_labelled_subset(test, test_idx), img_size),
                  num_classes=K, classes=list(getattr(train, 'classes', None) or [str(k) for k in range(K)]))


def _labelled_subset(ds, indices):
    sub = Subset(ds, list(map(int, indices)))
    sub.labels = [ds.labels[i] for i in sub.indices]
    return sub


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
