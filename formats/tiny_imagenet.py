"""Tiny-ImageNet-200 as released: <data_dir>/tiny-imagenet-200/ (extracted), tiny-imagenet-200.zip or
tiny-imagenet-200-subset.zip (read inside the zip), else the CS231n archive is downloaded. The standard layout:
wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG with val/val_annotations.txt; the labelled val set is the
test set, in the order val_0, val_1, ...

    train, test = sources('data')   # FileImages, labels the index of the wnid in sorted order (ImageFolder's)
"""
import os
import pathlib
import shutil
import zipfile

from formats import DataError, first_line
from formats.images import FileImages

URL = 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'


def find_or_download(data_dir):
    candidates = [os.path.join(data_dir, n) for n in
                  ('tiny-imagenet-200', 'tiny-imagenet-200.zip', 'tiny-imagenet-200-subset.zip')]
    found = next((c for c in candidates if os.path.exists(c)), None)
    if found is not None:
        return found
    existed = os.path.exists(data_dir)
    try:
        from torchvision.datasets.utils import download_url
        download_url(URL, data_dir)
        return os.path.join(data_dir, 'tiny-imagenet-200.zip')
    except Exception as e:
        if not existed and os.path.isdir(data_dir):  # a mistyped --data-dir is not left behind
            shutil.rmtree(data_dir)
        raise DataError(
            f"dataset 'tiny-imagenet' is not in {data_dir!r} (looked for {', '.join(candidates)}) and could not be "
            f"downloaded from {URL} ({first_line(e)}). Put tiny-imagenet-200.zip, or the folder it "
            f"extracts to, in --data-dir (or tiny-imagenet-200-subset.zip, the same layout).") from None


def sources(data_dir):
    found = find_or_download(data_dir)
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
        rows.sort(key=lambda r: int(r[0].split('_')[1].split('.')[0]))  # val_0, val_1, ...: the release's order
        test, test_labels = [root + 'val/images/' + r[0] for r in rows], [label[r[1]] for r in rows]
    except (zipfile.BadZipFile, OSError, StopIteration, KeyError, IndexError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f'{found}: not a readable Tiny-ImageNet archive or folder ({type(e).__name__}: '
                        f'{first_line(e)}); it needs wnids.txt, train/<wnid>/images/ and val/val_annotations.txt') \
            from None
    if len(wnids) != 200 or not train or not test:
        raise DataError(f'{found}: {len(wnids)} class ids, {len(train)} training and {len(test)} validation images; '
                        f'Tiny-ImageNet has 200 classes')
    train = FileImages(train, train_labels, zip_path)
    train.classes = wnids
    return train, FileImages(test, test_labels, zip_path)
