"""A numerical check of Proposition 1 of the LoTeP paper (Sec. 4.3): under Assumption 1 (the first convolution K_i of
every residual block has CP rank <= r), a dense prompt P_i added at the input of block i and trained from zero has

    rank(P_i) <= (1 + L - i) r + 1,        P_i flattened to c_i x h_i w_i, i = 1..L,

on a CNN of L residual blocks whose gradients reach the prompts through linear maps and a global average pool.

    python theory/prop1_rank_bound.py          # the full table (about a minute on a 2-core CPU)
    python theory/prop1_rank_bound.py --quick  # the unit-test size (seconds)

Why it holds (spec 3.2): the gradient of conv(Z, K_i) w.r.t. Z has its channel (column) space inside the span of the
r input-channel factors of K_i, a fixed subspace; the residual path carries later blocks' subspaces back linearly;
global average pooling adds g 1^T / hw, rank 1 whatever g is (the "+1"). SGD (momentum, weight decay) keeps P_i in
the span of past gradients. The conditions the statement leaves implicit are exactly those: P_i(0) = 0, an update that
is a linear combination of gradients (not Adam), no non-linearity on the residual stream after the addition (not
torchvision's relu(out + identity)), a GAP head. Each control below breaks one of them and must exceed the bound.

The network: a frozen stem conv (3 -> c, kernel = stride = s) on random images; L blocks
y = shortcut(z) + conv3x3(relu(conv3x3(z, K_i)), W2_i), z = x + P_i; GAP; a trainable linear head. K_i is built
CP-rank r from random factors, W2_i is dense. Prompts (zero) and head train with SGD on random labels. Numerical rank:
#{sigma_k > 1e-5 sigma_1} of the float64 SVD (the gap between signal and noise is >= 1e4, spec 3.4).
"""
import argparse
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Setting:
    name: str
    c: int = 32  # channels
    side: int = 8  # h = w of the block inputs
    L: int = 4
    r: int = 2
    steps: int = 300
    dtype: torch.dtype = torch.float64
    downsample_at: int | None = None  # 1-based block with a stride-2 conv, a 1x1 projection shortcut, c -> c_down
    c_down: int = 48
    bn: bool = False  # BatchNorm (train mode) right after K_i: allowed, it sits after K_i in the branch
    control: str | None = None  # full_rank | post_relu | adam | nonzero_init: must violate the bound
    seed: int = 0


def cp_kernel(c_out, c_in, k, r, g):
    """K[o, i, u, v] = sum_t A[t, o] B[t, i] U[t, u] V[t, v]: CP rank <= r, so its input-channel mode has rank <= r."""
    A, B, U, V = (torch.randn(r, n, generator=g, dtype=torch.float64) for n in (c_out, c_in, k, k))
    return torch.einsum('to,ti,tu,tv->oiuv', A, B, U, V)


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride, s: Setting, g):
        super().__init__()
        K = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64) if s.control == 'full_rank' \
            else cp_kernel(c_out, c_in, 3, s.r, g)
        self.register_buffer('K', K / K.norm() * math.sqrt(c_out))
        self.register_buffer('W2', torch.randn(c_out, c_out, 3, 3, generator=g, dtype=torch.float64) /
                             math.sqrt(9 * c_out) * 0.5)
        proj = torch.randn(c_out, c_in, 1, 1, generator=g, dtype=torch.float64) / math.sqrt(c_in)
        self.register_buffer('proj', proj if (stride != 1 or c_in != c_out) else None)
        self.stride, self.bn, self.post_relu = stride, s.bn, s.control == 'post_relu'

    def forward(self, z):
        h = F.conv2d(z, self.K.to(z.dtype), stride=self.stride, padding=1)  # the Assumption's K_i
        if self.bn:
            h = F.batch_norm(h, None, None, training=True)
        h = F.conv2d(F.relu(h), self.W2.to(z.dtype), padding=1)
        shortcut = z if self.proj is None else F.conv2d(z, self.proj.to(z.dtype), stride=self.stride)
        y = shortcut + h
        return F.relu(y) if self.post_relu else y  # post_relu: torchvision ResNet's relu(out + identity)


def numerical_rank(P: torch.Tensor) -> int:
    """#{sigma_k > 1e-5 sigma_1} of the float64 SVD of P flattened to (c, hw)."""
    sigma = torch.linalg.svdvals(P.double().flatten(1))  # (c, h, w) -> (c, hw) -> (min(c, hw),)
    return int((sigma > 1e-5 * sigma[0]).sum())


def run(s: Setting):
    """Train the prompts; return [(shape, measured rank, bound)] for blocks i = 1..L."""
    g = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(s.seed)
    side = s.side  # images of 4 side x 4 side pixels; the stem (kernel = stride = 4) gives side x side inputs
    stem = torch.randn(s.c, 3, 4, 4, generator=g, dtype=torch.float64) / math.sqrt(3 * 16)
    blocks, shapes, c = nn.ModuleList(), [], s.c
    for i in range(1, s.L + 1):
        stride, c_out = (2, s.c_down) if i == s.downsample_at else (1, c)
        shapes.append((c, side, side))
        blocks.append(Block(c, c_out, stride, s, g))
        c, side = c_out, side // stride
    prompts = nn.ParameterList(nn.Parameter(torch.zeros(shape, dtype=s.dtype)) for shape in shapes)
    if s.control == 'nonzero_init':
        with torch.no_grad():
            for p in prompts:
                p.normal_(0, 0.01)
    head = nn.Linear(c, 10).to(s.dtype)
    images = torch.randn(1024, 3, 4 * s.side, 4 * s.side, generator=g, dtype=torch.float64).to(s.dtype)
    labels = torch.randint(0, 10, (1024,), generator=g)
    params = list(prompts) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3) if s.control == 'adam' else \
        torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=1e-4)
    stem = stem.to(s.dtype)
    for step in range(s.steps):
        idx = torch.randint(0, 1024, (64,), generator=g)
        x = F.conv2d(images[idx], stem, stride=4)
        for block, P in zip(blocks, prompts):
            x = block(x + P)  # Eq. (1): X_{i+1} = f_i(X_i + P_i)
        loss = F.cross_entropy(head(x.mean((2, 3))), labels[idx])  # GAP head
        opt.zero_grad()
        loss.backward()
        opt.step()
    rows = []
    for i, (shape, P) in enumerate(zip(shapes, prompts), start=1):
        rows.append((shape, numerical_rank(P.detach()), (1 + s.L - i) * s.r + 1))
    return rows


FULL = [Setting('c=32, hw=64, L=4, r=2'), Setting('same + BatchNorm (train mode) after K_i', bn=True),
        Setting('r=1', r=1), Setting('r=3, L=6', r=3, L=6),
        Setting('stride-2 block 3, 1x1 projection (32->48 ch, 16^2->8^2)', side=16, downsample_at=3, steps=200,
                dtype=torch.float32),
        Setting('control: full-rank K_i', control='full_rank'),
        Setting('control: post-add ReLU', control='post_relu'),
        Setting('control: Adam', control='adam'),
        Setting('control: non-zero prompt init', control='nonzero_init')]
QUICK = [Setting('c=16, hw=36, L=3, r=1', c=16, side=6, L=3, r=1, steps=50, dtype=torch.float32),
         Setting('control: full-rank K_i', c=16, side=6, L=3, r=1, steps=50, dtype=torch.float32, control='full_rank'),
         Setting('control: Adam', c=16, side=6, L=3, r=1, steps=50, dtype=torch.float32, control='adam')]


def check(settings):
    """Print the table; return the number of failures (a valid setting above its bound, a control within it, or a
    bound too large to be tested)."""
    failures = 0
    print(f'{"setting":<58} {"block":>5} {"shape":>10} {"rank":>5} {"bound":>5}  verdict')
    for s in settings:
        for i, (shape, rank, bound) in enumerate(run(s), start=1):
            c, h, w = shape
            if bound >= min(c, h * w):
                verdict, bad = 'VACUOUS (bound >= min(c, hw))', True
            elif s.control:
                verdict, bad = ('violates, as a control must' if rank > bound else 'CONTROL HOLDS'), rank <= bound
            else:
                verdict, bad = (('holds, tight' if rank == bound else 'holds') if rank <= bound else 'VIOLATED'), \
                    rank > bound
            failures += bad
            print(f'{s.name if i == 1 else "":<58} {i:>5} {f"{c}x{h}x{w}":>10} {rank:>5} {bound:>5}  {verdict}')
    return failures


def main(argv=None):
    p = argparse.ArgumentParser(description='Check Proposition 1 (LoTeP) numerically.')
    p.add_argument('--quick', action='store_true', help='the small settings of the unit test')
    a = p.parse_args(argv)
    failures = check(QUICK if a.quick else FULL)
    print(f'\n{"all settings behave as the proposition says" if not failures else f"{failures} FAILURES"}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
