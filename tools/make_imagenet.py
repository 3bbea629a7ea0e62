"""Write an ImageNet-1K layout of photo-sized JPEGs to measure what a run costs at scale (docs/speed.md, "At
ImageNet's size"): OUT/train/<wnid>/<wnid>_<k>.JPEG and OUT/val/<wnid>/..., across timm's 1,000 wnids, each image its
own picture (a random crop of a smooth random scene, flipped, brightened, with noise), 500 x 375 at JPEG quality 90
(about 60-75 KB, as ImageNet's), so that decoding one costs what decoding a real photo does.

    python tools/make_imagenet.py /scratch/in1k-10k --images 10000          # 10,000 training images, 4% as many val
    python tools/bench_loader.py --startup --data-dir /scratch/in1k-10k    # a first start and a later one, timed
    python tools/bench_loader.py --data-dir /scratch/in1k-10k --img-size 224 --methods lorsp

Not a data set: its labels are random pictures' folders. It never writes into a folder that exists.
"""
import argparse
import os
import sys
from multiprocessing import Pool

import numpy as np
from PIL import Image

if __name__ == '__main__':  # python tools/make_imagenet.py from the project root: the project's modules come from there
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scene(seed, width=800, height=600):
    """A smooth random scene with fine texture: what a photo's JPEG costs to decode, roughly."""
    rng = np.random.default_rng(seed)
    x = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 0.5), (16, 0.25), (64, 0.12), (200, 0.06)):
        small = rng.random((max(2, cells * height // width), cells, 3)).astype(np.float32)
        x += amplitude * np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((width, height),
                                                                                            Image.BICUBIC)) / 255
    return x / x.max()


def write(job):
    """Writes the images of one job: (path, seed) pairs, each a crop of one of a few scenes."""
    paths, size, quality, scenes = job
    bank = [scene(s) for s in scenes]
    for path, seed in paths:
        rng = np.random.default_rng(seed)
        base = bank[seed % len(bank)]
        top, left = rng.integers(0, base.shape[0] - size[1]), rng.integers(0, base.shape[1] - size[0])
        x = base[top:top + size[1], left:left + size[0]]
        x = x[:, ::-1] if rng.random() < 0.5 else x
        x = x * rng.uniform(0.7, 1.2) + rng.normal(0, 0.045, x.shape)
        Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).save(path, quality=quality)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('out', help='the layout\'s folder (must not exist)')
    p.add_argument('--images', type=int, default=10_000, help='training images, spread over the classes')
    p.add_argument('--val', type=float, default=0.04, help='val images, as a fraction of the training images '
                   '(ImageNet: 50,000 / 1,281,167)')
    p.add_argument('--classes', type=int, default=1000, help='wnids used, the first of timm\'s list')
    p.add_argument('--size', default='500x375', help='width x height of every image')
    p.add_argument('--quality', type=int, default=90)
    p.add_argument('--workers', type=int, default=os.cpu_count() or 1)
    a = p.parse_args(argv)
    if os.path.exists(a.out):
        p.error(f'{a.out}: exists; give a new folder')
    from formats.imagenet import wnids
    classes, size = wnids()[:a.classes], tuple(int(v) for v in a.size.split('x'))
    paths = []
    for split, n in (('train', a.images), ('val', round(a.images * a.val))):
        for k in range(n):
            w = classes[k % len(classes)]
            os.makedirs(os.path.join(a.out, split, w), exist_ok=True)
            paths.append((os.path.join(a.out, split, w, f'{w}_{split}_{k}.JPEG'), len(paths)))
    jobs = [(paths[i::a.workers * 8], size, a.quality, range(i, i + 4)) for i in range(a.workers * 8)]
    with Pool(a.workers) as pool:
        for done, _ in enumerate(pool.imap_unordered(write, jobs), 1):
            print(f'{done}/{len(jobs)} parts written', flush=True)
    print(f'{len(paths)} images in {a.out}')


if __name__ == '__main__':
    main()
