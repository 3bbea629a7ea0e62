"""Several processes under torchrun, as data parallelism through PyTorch's DistributedDataParallel: the same result as
one process with the same global batch.

    torchrun --nproc_per_node 2 train.py --method lorvp ...   # CPU (gloo) or GPUs (NCCL, one per process)

Every process holds the whole model and sees its share of every global batch (every world-th image of the batch one
process would draw with the same seed). DDP averages the processes' gradients during backward (bucketed all-reduce,
overlapped with it); GlobalBatches.scale multiplies each process's summed loss by processes / n for a global batch of
n images, so that the average is the gradient of the one-process run's mean loss, the last partial batch weighted by
its real size. Evaluation: each process takes every world-th image, counts are summed. Only process 0 writes the run
directory.

Every collective is legal on an NCCL group: the group has a backend for each device (gloo for CPU tensors, NCCL for
CUDA tensors), and the training loop reduces on the run's device. What a method needs summed besides the gradients
(label-mapping counts, EVP's canvas gradient) is reduced through reduce_tensor(), which the training loop hands to the
methods' hooks (methods.Loop): a method module calls no torch.distributed.
BatchNorm in train mode (ft only) keeps per-process statistics (broadcast_buffers=False: the frozen backbone's buffers
are not sent at every step); process 0's are saved.
"""
import math
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def backend(cuda: bool) -> str:
    """NCCL serves CUDA tensors only: a CUDA run gets gloo beside it for the CPU tensors of set-up."""
    return 'cpu:gloo,cuda:nccl' if cuda else 'gloo'


def init(device: str) -> str:
    """Join the process group when started by torchrun; returns the device this process uses."""
    if 'WORLD_SIZE' not in os.environ or dist.is_initialized():
        return device
    cuda = torch.cuda.is_available() and device != 'cpu'
    if not cuda:
        dist.init_process_group(backend(cuda=False))
        return device
    local = torch.device('cuda', int(os.environ['LOCAL_RANK']))
    torch.cuda.set_device(local)
    dist.init_process_group(backend(cuda=True), device_id=local)
    return str(local)


def world():
    """(rank, number of processes): (0, 1) unless started by torchrun."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def reduce_tensor(t: torch.Tensor, *, mean: bool = False) -> torch.Tensor:
    """Sums (or averages, as DDP does the gradients) a tensor over the processes, in place; a no-op in one process."""
    if dist.is_initialized():
        dist.all_reduce(t)
        if mean:
            t /= dist.get_world_size()
    return t


def reduce_numbers(*values, device):
    """Sums numbers over the processes (a tensor on the run's device; a no-op in one process)."""
    return reduce_tensor(torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)).tolist()


def gather_objects(obj) -> list:
    """Every process's obj (picklable), in rank order: [obj] in one process. Through the CPU's gloo backend."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def data_parallel(module, device):
    """The module that trains, wrapped in DDP when there are several processes (else the module itself).
    find_unused_parameters and static_graph stay off: every trainable parameter gets a gradient at every step."""
    if not dist.is_initialized():
        return module
    device = torch.device(device)
    return DistributedDataParallel(module, device_ids=[device] if device.type == 'cuda' else None,
                                   broadcast_buffers=False)


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

    def images(self, i) -> int:
        """n, the images of global batch i (over every process)."""
        return min(self.batch_size, self.n - i * self.batch_size)

    def scale(self, i) -> float:
        """What this process's summed loss over its share of global batch i is multiplied by: processes / n, so that
        DDP's average of the processes' gradients is the gradient of the batch's mean loss (1 / n in one process); 0
        where this process holds a stand-in image."""
        rank, size = world()
        n = self.images(i)
        return size / n if len(range(rank, n, size)) > 0 else 0.0
