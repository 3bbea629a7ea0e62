"""The data path at scale: how fast one loader worker turns image files into the run's tensors, against the plain path
(the one before it: PIL decodes, copies to RGB and to a planar tensor, then the resize) and beside the model's training
step at the same size, so that a run's bound is seen; and what a run's start-up costs, first and later.

    python tools/bench_loader.py --data-dir DIR --img-size 224                      # images/s per worker, both paths
    python tools/bench_loader.py --data-dir DIR --img-size 224 --model vit_base_patch32_224 --methods lorsp,lp
    python tools/bench_loader.py --data-dir DIR --startup                 # the first start, a later one, a plain pass
    python tools/bench_loader.py --data-dir DIR --device cuda --device-decode       # JPEGs decoded on the GPU (nvjpeg)

DIR: an ImageNet-1K layout (train/<wnid>/, val/<wnid>/: tools/make_imagenet.py writes one) or your own folder
(--dataset folder). A worker is one process on one thread, as a DataLoader worker; the rates are over the same image
files, read from disk (the page cache warm after the first round), in rounds that alternate the two paths: the median
over the rounds of their ratio, each path's best round as its rate. A model's rate is its training step (forward,
backward, update: tools/bench.py's) at --batch-size on --device; the workers a run needs to keep it fed are the two
rates' ratio. --startup times data.load on the whole layout with an empty record of checked images (the first start),
again (a later start), and one plain decode pass over the same files (PIL, one thread): the record's point is the
later start over the plain pass.
"""
import argparse
import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

if __name__ == '__main__':  # python tools/bench_loader.py from the project root: the project's modules come from there
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import data
import methods
import train
from flags import parse
from formats import images
from tools import bench


def plain(raw, size):
    """The data path before this one (#50): PIL decodes every pixel, the image copied to RGB, then to a planar
    (C, H, W) tensor, resized from that layout."""
    from PIL import Image, ImageOps
    from torchvision.transforms.v2 import functional as TF
    with Image.open(io.BytesIO(raw)) as image:
        image.load()
        x = torch.from_numpy(np.array(ImageOps.exif_transpose(image).convert('RGB'))).permute(2, 0, 1).contiguous()
    return TF.resize(x, [size, size], antialias=True).float().div_(255)


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def loader(path, size):
    """This codebase's data path for one file: formats.images.decode, then data.resize."""
    return data.resize(images.decode(read(path), path), size)


def files_of(a, n):
    """n training image files of the data set, spread over its classes."""
    train_images, _, _ = data.sources(a.dataset, a.data_dir)
    return [train_images.files[i] for i in data.spread(train_images.labels, n)]


def worker_rates(files, size, rounds):
    """{path: images/s of one worker} and the median ratio, loader over plain, over rounds that alternate them."""
    torch.set_num_threads(1)  # a DataLoader worker's
    ways = {'plain': lambda p: plain(read(p), size), 'loader': lambda p: loader(p, size)}
    best, ratios = {k: float('inf') for k in ways}, []
    for r in range(rounds + 1):  # round 0 warms the page cache and the decoders
        took = {}
        for k in (list(ways) if r % 2 else list(ways)[::-1]):
            t0 = time.perf_counter()
            for p in files:
                ways[k](p)
            took[k] = time.perf_counter() - t0
        if r:
            ratios.append(took['plain'] / took['loader'])
            best = {k: min(best[k], took[k]) for k in ways}
    return {k: len(files) / best[k] for k in ways}, statistics.median(ratios)


def device_decode_rates(files, size, device, batch=128, rounds=3):
    """Decoding on the run's device, measured before it is built (docs/speed.md): images/s of torchvision's decode_jpeg
    there (nvjpeg on CUDA) over batches of the files' bytes, each image resized there as data.resize does, and the
    CPU seconds an image it costs this process (nvjpeg may decode the entropy coding on the host): whether a GPU
    decoder would free the workers or only move their work into the training process."""
    from torchvision.io import ImageReadMode, decode_jpeg
    raws = [torch.frombuffer(bytearray(read(p)), dtype=torch.uint8) for p in files]
    wall, cpu = float('inf'), float('inf')
    for r in range(rounds + 1):  # round 0 warms the decoder (nvjpeg's handles and buffers)
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, len(raws), batch):
            pictures = decode_jpeg(raws[start:start + batch], mode=ImageReadMode.RGB, device=device)
            x = torch.stack([data.resize(picture, size) for picture in pictures])  # (B, 3, S, S) on the device
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        if r:
            wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    assert x.device.type == torch.device(device).type
    return len(raws) / wall, cpu / len(raws)


def model_rate(b, method, size):
    """Images/s of a method's training step (tools/bench.py's) at this size, batch and device."""
    a = train.resolve(parse(['--method', method, '--model', b.model, '--img-size', str(size), '--batch-size',
                             str(b.batch_size), '--device', b.device, '--dataset', 'synthetic', '--no-pretrained']))
    model = methods.build(a, num_classes=10)
    x, y = bench.batch_of(a, 10)
    opt = methods.optimizer(a, model)
    times = []
    for r in range(b.rounds + 1):
        t0 = time.perf_counter()
        bench.train_step(a, model, x, y, opt=opt)
        if a.device.startswith('cuda'):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return len(x) / statistics.median(times[1:])


def startup(b):
    """Seconds of data.load on the whole layout, first and later, and of one plain decode pass over its files."""
    kept = os.environ.get('VP_CHECKED_DIR')
    with tempfile.TemporaryDirectory() as record:
        os.environ['VP_CHECKED_DIR'] = record  # an empty record: the first start
        took = []
        for _ in ('first', 'later'):
            t0 = time.perf_counter()
            s = data.load(b.dataset, data_dir=b.data_dir, img_size=b.img_size, seed=0)
            took.append(time.perf_counter() - t0)
    os.environ.pop('VP_CHECKED_DIR') if kept is None else os.environ.update(VP_CHECKED_DIR=kept)
    from PIL import Image
    torch.set_num_threads(1)
    files = [s.train.base.dataset.files[i] for i in s.train.base.indices] + \
        [s.test.base.dataset.files[i] for i in s.test.base.indices]
    t0 = time.perf_counter()
    for p in files:
        with Image.open(p) as image:
            image.load()
    return len(files), took[0], took[1], time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--data-dir', required=True)
    p.add_argument('--dataset', default='imagenet', choices=['imagenet', 'folder'])
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--images', type=int, default=200, help='files a worker\'s rate is measured over')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--methods', default='', help='comma list: each one\'s training step rate beside the loader\'s')
    p.add_argument('--model', default='tf_efficientnet_lite0')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--device', default='cpu')
    p.add_argument('--startup', action='store_true', help='time the start-up instead')
    p.add_argument('--device-decode', action='store_true', help='also: JPEGs decoded on --device in batches of '
                   '--batch-size (nvjpeg on CUDA), and the CPU time it costs the process that asks')
    b = p.parse_args(argv)
    try:
        if b.startup:
            n, first, later, plain_pass = startup(b)
            print(f'| images | first start s | later start s | one plain decode pass s | later / plain |\n|---|---|---|'
                  f'---|---|\n| {n:,} | {first:.1f} | {later:.2f} | {plain_pass:.1f} | {later / plain_pass:.3f} |')
            return n, first, later, plain_pass
        rates, ratio = worker_rates(files_of(b, b.images), b.img_size, b.rounds)
        print(f'one worker at {b.img_size} px, {b.images} files of {b.data_dir}: the plain path '
              f'{rates["plain"]:.0f} images/s, this loader {rates["loader"]:.0f} images/s ({ratio:.2f}x, median of '
              f'{b.rounds} interleaved rounds)')
        if b.device_decode:
            rate, cpu = device_decode_rates(files_of(b, b.images), b.img_size, b.device, b.batch_size, b.rounds)
            print(f'decoded on {b.device} (torchvision\'s decode_jpeg, batches of {b.batch_size}) and resized there: '
                  f'{rate:.0f} images/s, {1e3 * cpu:.2f} ms of this process\'s CPU an image')
        steps = {m: model_rate(b, m, b.img_size) for m in b.methods.split(',') if m}
        for m, rate in steps.items():
            print(f'{m} on {b.model}, {b.device}, batch {b.batch_size}: {rate:.0f} images/s a training step; '
                  f'{rate / rates["loader"]:.2f} loader workers keep it fed')
        return rates, ratio, steps
    except (data.DataError, *train.SETUP_ERRORS) as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == '__main__':
    main()
