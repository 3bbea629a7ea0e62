"""Grouped VP, the LoTeP paper's preliminary study (Sec. 3, Eq. 3): deep prompts shared by groups of channels.

Going Deep: Deep Visual Prompting with LoTeP (Zhao et al., 2026), Sec. 3; choices: docs/lotep.md, sec. 7.

    grouped_lorvp  each of g groups of contiguous channels shares one LoR-VP prompt G_k = B_k A_k (H x r)(r x W)
    deep_lorvp     g = C: a LoR-VP prompt per channel ("naive deep LoR-VP", O(C r (H + W)) parameters)
    naive_deep_vp  a full C x H x W tensor per block ("naive deep VP", O(C H W) parameters)

All three attach to the same blocks as LoTeP (blocks 0..d-1, d = floor(L rho)) through lotep.DeepPrompts.

    bb = timm.create_model('resnet18', pretrained=True, num_classes=10).eval().requires_grad_(False)
    prompts = grouped_lorvp(backbone=bb, input_size=(3, 224, 224), groups=8, rank=4, rho=0.5)
    head = bb.get_classifier().requires_grad_(True)  # the fresh head trains with the prompts; bb stays in eval mode
    logits = bb(x)  # x: (B, 3, 224, 224) -> (B, 10)
"""
import torch
import torch.nn as nn

from lotep import DeepPrompts  # one attach mechanism for every deep prompt


class GroupedLoRVPPrompt(nn.Module):
    """Eq. (3): P = [G_1 (x C_1) || ... || G_g (x C_g)], each G_k = B_k A_k a rank-r LoR-VP matrix.

    Uneven C / g: the first (C mod g) groups get ceil(C / g) channels, the rest floor(C / g) (torch.tensor_split).
    B starts at zero and A ~ N(0, init_std^2) (LoR-VP's init), so P = 0 at step 0."""

    def __init__(self, *, shape: tuple[int, int, int], groups: int, rank: int, init_std: float = 0.01):
        super().__init__()
        C, H, W = shape
        if not 1 <= groups <= C or rank < 1:
            raise ValueError(f'groups must be in [1, C] and rank >= 1: {groups} groups of rank {rank} for a '
                             f'{C}-channel block input')
        sizes = torch.tensor([len(s) for s in torch.tensor_split(torch.arange(C), groups)])
        self.register_buffer('group_of_channel', torch.repeat_interleave(torch.arange(groups), sizes),
                             persistent=False)  # (C,) channel -> its group
        self.shape, self.groups, self.rank = tuple(shape), groups, rank
        self.B = nn.Parameter(torch.zeros(groups, H, rank))  # zero-init
        self.A = nn.Parameter(torch.randn(groups, rank, W) * init_std)

    def forward(self):
        G = torch.bmm(self.B, self.A)  # G_k = B_k A_k: (g, H, W)
        return G[self.group_of_channel]  # (C, H, W)

    @staticmethod
    def num_trainable(shape, groups, rank):
        C, H, W = shape
        return groups * rank * (H + W)


class DensePrompt(nn.Module):
    """Naive deep VP: an unconstrained C x H x W prompt, zero-init."""

    def __init__(self, *, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = tuple(shape)
        self.P = nn.Parameter(torch.zeros(shape))

    def forward(self):
        return self.P  # (C, H, W)

    @staticmethod
    def num_trainable(shape):
        C, H, W = shape
        return C * H * W


def grouped_lorvp(*, backbone, input_size, groups, rank=4, rho=0.5, init_std=0.01,
                  vit_layout='patches') -> DeepPrompts:
    """Grouped LoR-VP with g groups on every prompted block (g = C of each block: pass groups=None)."""
    def make_prompt(l, shape, _rank):
        g = shape[0] if groups is None else groups
        if g > shape[0]:
            raise ValueError(f'groups {g} exceeds the {shape[0]} channels of block {l}\'s input; '
                             f'choose groups <= the smallest channel count of the prompted blocks')
        return GroupedLoRVPPrompt(shape=shape, groups=g, rank=rank, init_std=init_std)
    return DeepPrompts(backbone=backbone, input_size=input_size, make_prompt=make_prompt, rho=rho,
                       vit_layout=vit_layout)


def deep_lorvp(*, backbone, input_size, rank=4, rho=0.5, init_std=0.01, vit_layout='patches') -> DeepPrompts:
    """g = C: an independent LoR-VP prompt for every channel of every prompted block."""
    return grouped_lorvp(backbone=backbone, input_size=input_size, groups=None, rank=rank, rho=rho,
                         init_std=init_std, vit_layout=vit_layout)


def naive_deep_vp(*, backbone, input_size, rho=0.5, vit_layout='patches') -> DeepPrompts:
    return DeepPrompts(backbone=backbone, input_size=input_size, rho=rho, vit_layout=vit_layout,
                       make_prompt=lambda l, shape, _: DensePrompt(shape=shape))
