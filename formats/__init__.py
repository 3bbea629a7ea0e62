"""The formats data sets come in, a file each, imported only when a --dataset names one. data.py, the papers' path (the
sample, CIFAR, torchvision's sets, your own folders), reads the rest through them:

    images.py         image files as a viewer shows them (every PIL mode), decoded fast, checked once per data set
    text.py           text files as editors save them (a byte-order mark, UTF-16)
    vtab.py           VTAB-1k's processed tasks: split files of 'relative/path label' lines
    fgvc.py           the five FGVC tasks in VPT's json splits
    imagenet.py       ImageNet-1K (wnid folders, or torchvision's archives) and its test sets R, A, Sketch, V2
    tiny_imagenet.py  Tiny-ImageNet's release, a folder or its zip
"""


class DataError(Exception):
    """A data set that is not there and cannot be fetched, or a bad data option; the message says how to fix it."""


class NeedsNetwork(DataError):
    """A data set that is not on this machine and that only a download would bring."""


def first_line(e):
    """An exception's first line, for a message of one line."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
