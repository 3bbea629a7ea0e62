"""Image files as the picture a person sees, decoded fast, checked once per data set and remembered.

    images = FileImages(files, labels)        # paths, or names inside a zip (zip_path=...); int labels
    images.check(indices)                     # every image decodes: at the first run on these files, else looked up
    x, y = images[i]                          # x: (3, h, w) uint8, or float in [0, 1] (16-bit and float images)
    images.fingerprint(indices)               # sha256 of the images' names, labels and contents: what a run ran on

Decoding: a JPEG by torchvision's decoder (libjpeg-turbo; the same pixels as PIL's, EXIF orientation applied, without
PIL's copies), one at least 4 times the run's size on both sides at a reduced scale (decode), any other file by PIL
through pixels(). The image comes out in channels-last memory order, which the resize reads fastest (docs/speed.md).

Checking: a truncated or unreadable image is named when the data is loaded, not in epoch 2 (every one of them after one
pass, the others remembered). Decoding every image at
every start would cost ImageNet-1K an hour of CPU time per run, per resume and per process, so what was checked is
remembered: one file per folder of images in $XDG_CACHE_HOME/visual-prompting/checked (~/.cache/...; VP_CHECKED_DIR
elsewhere), a line per image of its path, size, modification time (a zip member: its CRC) and sha256. A later start
lists the files and reads their size and time; an image that is new or changed since is decoded again. Under torchrun
the processes split what is left to check.
"""
import hashlib
import io
import os
import sys
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from formats import DataError, first_line

# torchvision 0.29 deprecates its image decoders for TorchCodec's; they stay the fastest way here (docs/speed.md), and
# where a release has removed them, PIL decodes every file (decode)
warnings.filterwarnings('ignore', message='The image decoding and encoding capabilities of TorchVision are deprecated',
                        category=DeprecationWarning)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')
WIDE = ('I;16', 'I;16L', 'I;16B', 'I;16N')  # 16-bit greyscale (PNG, TIFF from microscopes, scanners, satellites)
EIGHT_BIT = ('1', 'L', 'P', 'RGB', 'RGBX', 'CMYK', 'YCbCr')  # PIL converts these to RGB exactly


# ---- pixels: every image mode as the picture a person sees ----

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
        else:  # 16-bit; mode I (32-bit integers) holding 8-bit values (0..255) or 16-bit ones (0..65535)
            if mode == 'I' and (x.min() < 0 or x.max() > 65535):
                raise DataError(f'{where}: a 32-bit integer (mode I) image with values in [{x.min()}, {x.max()}]; '
                                f'no bit depth says what is white: save it as an 8- or 16-bit image')
            white = 255 if mode == 'I' and x.max() <= 255 else 65535
            grey = torch.from_numpy(x.astype(np.float32) / white)
        return grey.expand(3, *grey.shape).contiguous()  # (h, w) -> (3, h, w)
    if mode in ('LA', 'La', 'PA', 'RGBA', 'RGBa') or 'transparency' in image.info:  # alpha, or a transparent colour
        rgba = torch.from_numpy(np.array(image.convert('RGBA'))).permute(2, 0, 1).float()  # (4, h, w)
        alpha = rgba[3:] / 255
        # over white: c = alpha c_image + (1 - alpha) 255
        return (alpha * rgba[:3] + (1 - alpha) * 255).round().byte()
    if mode not in EIGHT_BIT:
        raise DataError(f'{where}: image mode {mode} is not read here (8-bit, 16-bit or float greyscale, palette, '
                        f'RGB(A), CMYK, YCbCr are); save it as RGB')
    return torch.from_numpy(np.array(image.convert('RGB'))).permute(2, 0, 1)  # (h, w, 3) -> (3, h, w), channels-last


def decode(raw: bytes, where: str, size=None) -> torch.Tensor:
    """A file's bytes as the picture a viewer shows (pixels()); a file that is not a whole image is named. size: the
    side the run resizes to; a JPEG at least 4 times as large on both sides is decoded at 1/2, 1/4 or 1/8 of its size
    in the DCT (PIL's draft), never below twice the run's size, from where the resize is as good as from the whole."""
    from PIL import Image
    jpeg = raw[:3] == b'\xff\xd8\xff'
    large = jpeg and size and min(jpeg_size(raw) or (0,)) >= 4 * size
    if jpeg and not large:  # libjpeg-turbo through torchvision, without PIL's two copies
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
            return decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB,
                               apply_exif_orientation=True)  # (3, h, w), channels-last
        except (ImportError, RuntimeError):
            pass  # PIL reads what this decoder does not, or names the damage below
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if large:
                image.draft('RGB', (2 * size, 2 * size))
            image.load()  # every pixel decoded: a truncated file fails here
            return pixels(image, where)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f'{where}: {first_line(e)}; resize the image below that size (PIL refuses larger ones as a '
                        f'guard against decompression bombs)') from None
    except Exception as e:
        raise DataError(f'{where}: cannot be read as an image ({type(e).__name__}: {first_line(e)}); replace the '
                        f'file, or the archive') from None


def jpeg_size(raw: bytes):
    """(width, height) from a JPEG's frame header, read without decoding anything; None where it is not found."""
    i = 2
    while i + 9 < len(raw) and raw[i] == 0xFF:
        marker, length = raw[i + 1], int.from_bytes(raw[i + 2:i + 4], 'big')
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame: SOF0, SOF2, ...
            return int.from_bytes(raw[i + 7:i + 9], 'big'), int.from_bytes(raw[i + 5:i + 7], 'big')
        i += 2 + length
    return None


# ---- image files: read, decoded, checked ----

def checked_folder():
    return os.environ.get('VP_CHECKED_DIR') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'visual-prompting',
        'checked')


class FileImages(Dataset):
    """Image files, each (path in a zip or on disk, label); a zip is opened once per process (DataLoader workers).
    size: the side the run resizes to (data.load sets it), so that a large JPEG is decoded no larger than needed;
    classes: the names of the labels 0..K-1, where the data set names them."""

    def __init__(self, files, labels, zip_path=None, size=None, classes=None):
        self.files, self.labels, self.zip_path, self.size = files, [int(y) for y in labels], zip_path, size
        self.classes = classes  # the class names, where the data set names them
        self._zip, self._pid, self.sha256 = None, None, {}  # index -> the file's sha256, once checked
        self.root = zip_path or (os.path.commonpath([os.path.dirname(f) for f in files]) if files else '')

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
            raise DataError(f'{self._where(i)}: cannot be read ({first_line(e)})') from None

    def __getitem__(self, i):
        return decode(self._read(i), self._where(i), self.size), self.labels[i]

    def name(self, i):
        """The file's path in its folder (or zip): what a run's fingerprint and the remembered check know it by."""
        f = self.files[i]
        if self.zip_path:
            return f
        return f[len(self.root) + 1:] if f.startswith(self.root + os.sep) else os.path.relpath(f, self.root)

    def stamps(self, indices):
        """name -> (size, time) of each image: its size and modification time in ns (a zip member: its CRC)."""
        if self.zip_path:
            with zipfile.ZipFile(self.zip_path) as z:
                info = {m.filename: (m.file_size, m.CRC) for m in z.infolist()}
            return {self.name(i): info.get(self.files[i], (-1, -1)) for i in indices}
        out = {}
        for i in indices:
            try:
                st = os.stat(self.files[i])
            except OSError as e:
                raise DataError(f'{self._where(i)}: cannot be read ({first_line(e)})') from None
            out[self.name(i)] = (st.st_size, st.st_mtime_ns)
        return out

    def check(self, indices, *, rank=0, size=1, gather=lambda obj: [obj]):
        """Every image of indices decodes in full (its mode read by pixels()), or those that do not are named after one
        pass, the others remembered; decoded here where the record of earlier checks does not know it as it is now.
        Under torchrun (rank, size, gather: distributed.gather_objects) process 0 reads the record, each process
        decodes its share of what is left, and process 0 keeps the images' sha256 and writes the record."""
        indices, record = list(indices), Checked(self.root)
        if rank == 0:
            stamps, known = self.stamps(indices), record.read()
            todo = [i for i in indices if known.get(self.name(i), (None,))[:2] != stamps[self.name(i)]]
        todo = gather(todo if rank == 0 else None)[0]  # process 0's list: the processes split the same work
        parts = gather(self._decode_all(todo[rank::size]))
        failed = sorted(f for part in parts for f in part['failed'])
        if rank == 0:  # what decoded is remembered, damaged images or not: a later start checks only what changed
            new = {i: sha for part in parts for i, sha in part['sha256'].items() if sha}
            if new:
                record.write({**known, **{self.name(i): (*stamps[self.name(i)], new[i]) for i in new}})
            if todo:
                n = len(todo)
                print(f'checked {n:,} image{"s" * (n > 1)} of {self.root} ({len(indices) - n:,} others known from '
                      f'{record.path})', flush=True)
        if failed:
            others = [self._where(i) for i, _ in failed[1:]]  # the first's message names it; the next five by name
            more = f'; {len(others)} more cannot be read either: {", ".join(others[:5])}{", ..." * (len(others) > 5)}'
            raise DataError(failed[0][1] + (more if others else ''))
        if rank == 0:
            self.sha256.update({i: new[i] if i in new else known[self.name(i)][2] for i in indices})

    def _decode_all(self, indices, chunk=256):
        """{'sha256': {index: hex}, 'failed': [(index, message)]}: files read here, decoded by a pool of threads."""
        out, said = {'sha256': {}, 'failed': []}, time.time()

        def one(i, raw):
            try:
                decode(raw, self._where(i), self.size)
                return i, hashlib.sha256(raw).hexdigest(), None
            except DataError as e:
                return i, None, str(e)
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            for start in range(0, len(indices), chunk):
                part = indices[start:start + chunk]
                for i, sha, error in pool.map(one, part, [self._read(i) for i in part]):
                    out['sha256'][i] = sha
                    if error:  # named at the end of the pass, the images that decode remembered
                        out['failed'].append((i, error))
                if time.time() - said > 10:  # a large set (ImageNet-1K) takes minutes the first time: say so
                    bad = f', {len(out["failed"])} cannot be read' if out['failed'] else ''
                    print(f'checking the images: {start + len(part)}/{len(indices)} decoded{bad}', flush=True)
                    said = time.time()
        return out

    def fingerprint(self, indices) -> str:
        """sha256 over the checked images' names, labels and contents, in order."""
        h = hashlib.sha256()
        for i in indices:
            h.update(f'{self.name(i)}\t{self.labels[i]}\t{self.sha256[i]}\n'.encode())
        return h.hexdigest()


class Checked:
    """The record of the images checked in one folder (or zip): name -> (size, time, sha256), a line each."""

    def __init__(self, root):
        key = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:20]
        self.path = os.path.join(checked_folder(), f'{key}.tsv')

    def read(self) -> dict:
        try:
            with open(self.path, encoding='utf-8') as f:
                rows = [line.rstrip('\n').split('\t') for line in f]
        except (OSError, UnicodeDecodeError):
            return {}  # none yet, or unreadable: the images are checked again
        return {r[0]: (int(r[1]), int(r[2]), r[3]) for r in rows if len(r) == 4 and r[1].lstrip('-').isdigit()
                and r[2].lstrip('-').isdigit() and len(r[3]) == 64}

    def write(self, rows: dict):
        """Written whole (a temporary file renamed into place); where that fails, said once, and the run goes on."""
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path + f'.{os.getpid()}.tmp', 'w', encoding='utf-8') as f:
                f.writelines(f'{name}\t{size}\t{stamp}\t{sha}\n' for name, (size, stamp, sha) in rows.items()
                             if '\t' not in name and '\n' not in name)
            os.replace(self.path + f'.{os.getpid()}.tmp', self.path)
        except OSError as e:
            print(f'note: could not record the checked images in {self.path} ({e.strerror}); the next run checks them '
                  f'again (set VP_CHECKED_DIR to a writable folder)', file=sys.stderr, flush=True)
