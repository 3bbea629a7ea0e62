"""Makes cifar10-sample.npz, the small real-image sample that ships with this repository, from the full CIFAR-10.

    python sample/make_cifar10_sample.py --source PATH/cifar10.npz    # or a folder with torchvision's cifar-10-batches-py

The first 100 training images of each class and the first 50 test images of each class, in the original order
(1,500 images, 32 x 32 RGB, uint8), saved as cifar10.npz is: x_train (1000, 32, 32, 3), y_train (1000,), x_test
(500, 32, 32, 3), y_test (500,), class ids 0 airplane ... 9 truck. The same source gives the same bytes.
"""
import argparse
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_PER_CLASS, TEST_PER_CLASS = 100, 50


def read(source):
    if source.endswith('.npz'):
        with np.load(source) as d:
            return d['x_train'], d['y_train'], d['x_test'], d['y_test']
    import torchvision  # torchvision's own reader of the released batches
    train, test = (torchvision.datasets.CIFAR10(source, train=t, download=False) for t in (True, False))
    return (train.data, np.asarray(train.targets, np.uint8), test.data, np.asarray(test.targets, np.uint8))


def first_per_class(x, y, n):
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:n] for c in range(10)]))  # the original order
    return x[keep], y[keep].astype(np.uint8)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--source', required=True, help='the full cifar10.npz, or torchvision\'s CIFAR-10 root folder')
    p.add_argument('--out', default=os.path.join(HERE, 'cifar10-sample.npz'))
    a = p.parse_args()
    x_train, y_train, x_test, y_test = read(a.source)
    x_train, y_train = first_per_class(x_train, y_train, TRAIN_PER_CLASS)
    x_test, y_test = first_per_class(x_test, y_test, TEST_PER_CLASS)
    np.savez_compressed(a.out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f'{a.out}: {len(y_train)} train, {len(y_test)} test images, {os.path.getsize(a.out) / 1e6:.2f} MB')


if __name__ == '__main__':
    main()
