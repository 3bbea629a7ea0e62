"""Several processes under torchrun, as data parallelism: the same result as one process with the same global batch.

    torchrun --nproc_per_node 2 train.py --method lorvp ...   # CPU (gloo) or GPUs (NCCL, one per process)

Every process holds the whole model and sees its share of every global batch (every world-th image of the batch one
process would draw with the same seed); each process's loss is its share of the global batch's mean, so the summed
gradients are those of the one-process run. Evaluation: each process takes every world-th image, counts are summed.
Only process 0 writes the run directory. BatchNorm in train mode (ft only) keeps per-process statistics.
"""
import math
import os

import torch
import torch.distributed as dist


def init(device: str) -> str:
    """Join the process group when started by torchrun; returns the device this process uses."""
    if 'WORLD_SIZE' not in os.environ or dist.is_initialized():
        return device
    cuda = torch.cuda.is_available() and device != 'cpu'
    dist.init_process_group('nccl' if cuda else 'gloo')
    if not cuda:
        return device
    torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
    return f'cuda:{os.environ["LOCAL_RANK"]}'


def world():
    """(rank, number of processes): (0, 1) unless started by torchrun."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def all_reduce(*values, device):
    """Sums over the processes (a no-op in one process)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def sum_gradients(model):
    """After backward: every process holds the sum of all processes' gradients."""
    if not dist.is_initialized():
        return
    for p in model.parameters():
        if p.requires_grad:
            p.grad = p.grad if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(p.grad)


def share(ds):
    """This process's every-world-th images of a data set (evaluation)."""
    rank, size = world()
    return torch.utils.data.Subset(ds, range(rank, len(ds), size)) if size > 1 else ds


class GlobalBatches:
    """The shuffled batches of a one-process run (same seed, same order); each process yields its share. A process
    whose share of a (last, small) batch is empty gets one image, which the loop weighs 0."""

    def __init__(self, n, batch_size, seed):
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __len__(self):
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        rank, size = world()
        g = torch.Generator().manual_seed(self.seed)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # DataLoader(shuffle=True) draws this first: the
        order = torch.randperm(self.n, generator=g).tolist()  # same order as runs made before this sampler
        for i in range(0, self.n, self.batch_size):
            batch = order[i:i + self.batch_size]
            yield batch[rank::size] or batch[:1]

    def share(self, i):
        """How many images of global batch i this process holds, and the global batch's size."""
        rank, size = world()
        n = min(self.batch_size, self.n - i * self.batch_size)
        return len(range(rank, n, size)), n
