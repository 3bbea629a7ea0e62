"""LoTeP: low-rank tensor visual prompts on deep activations (CP and Tucker), with cosine rank decay.

Going Deep: Deep Visual Prompting with LoTeP (Zhao, Wang, Wu, Wang, Zhang, Chan, Li, 2026); no public code.
Implements Eq. (1) (a prompt added to each block input; Eq. (2)'s head is the model's classifier: in train.py a fresh
linear head, backbones.Adapted.forward), Eqs. (4)-(5) (Tucker prompt), (6)-(7) (CP prompt), d = floor(L rho)
(prompting depth) and Eq. (8) (cosine rank decay), each above the line that computes it. Choices where the paper is
silent: docs/lotep.md.

    bb = timm.create_model('resnet18', pretrained=True, num_classes=10).eval().requires_grad_(False)
    prompts = lotep(backbone=bb, input_size=(3, 224, 224), kind='cp', r0=6, rho=0.5)  # hooks on blocks 0..d-1
    print('\n'.join(prompts.describe()))  # each prompted block's shape, rank and parameter count
    head = bb.get_classifier().requires_grad_(True)  # the fresh 10-class head trains with the prompts
    opt = torch.optim.SGD([*prompts.parameters(), *head.parameters()], lr=0.02, momentum=0.9)
    logits = bb(x)  # x: (B, 3, 224, 224) normalized, blocks l < d now see X_l + P_l -> (B, 10)

The prompts act inside bb's own forward (forward pre-hooks, AddPrompt); prompts.detach() removes them. In your own
loop keep bb in eval mode (its BatchNorm statistics and dropout as pretrained): the prompts have no train mode.

Dimension letters: B batch, C/H/W a block input's channels/height/width, T tokens, D token width, R rank.
A block input X_l is NCHW (ResNet, ConvNeXt, CoAtNet, EfficientNet), NHWC (Swin), or tokens (B, T, D) (ViT); the
prompt is always a C x H x W tensor and is laid out to match (ViT: D x H_p x W_p on the patch tokens, CLS untouched).
"""
import math

import torch
import torch.nn as nn

# Std of the random spatial factors (b, c of CP; V, W of Tucker). The paper says only "randomly initialized"; the
# value is chosen on a validation split (docs/choices.md); methods.py's LoTeP rows use this same constant.
INIT_STD = 0.3

# ---- Eq. (8): prompting depth and rank schedule ----

SCHEDULES = ('cosine', 'cosine_den_d', 'linear', 'constant')
CORE_INITS = ('identity', 'normal')  # TuckerPrompt's core ('zero' too, only to show why it cannot be: a deadlock)
VIT_LAYOUTS = ('patches', 'sequence')  # a ViT's deep prompt on its patch grid, or on its whole token sequence


def depth(L: int, rho: float) -> int:
    """d = floor(L rho): blocks 0..d-1 are prompted. The 1e-9 keeps floor(100 * 0.29) = 29, not 28."""
    if not 0.0 < rho <= 1.0:
        raise ValueError(f'rho must be in (0, 1], got {rho}')
    return math.floor(L * rho + 1e-9)


def rank_schedule(r0: int, d: int, kind: str = 'cosine') -> list[int]:
    """Ranks r_0..r_{d-1} of the d prompted blocks.

    cosine        Eq. (8) as printed: r_l = ceil(1 + (r0 - 1)/2 (1 + cos(pi l / (d - 1)))), from r0 down to 1
    cosine_den_d  the same with denominator d (reproduces Table 4's 168K/169K parameter counts on ViT-B/16)
    linear        r_l = ceil(1 + (r0 - 1)(1 - l / (d - 1)))
    constant      r_l = r0
    d = 1 has the 0/0 of Eq. (8): it gets [r0]. d = 0 gets []. The 1e-9 keeps ceil exact where the true value is an
    integer (r0 = 5, d = 4, l = 2 computes 2.0000000000000004: naive ceil gives 3, Eq. (8) gives 2).
    """
    if r0 < 1 or int(r0) != r0:
        raise ValueError(f'the initial rank r0 must be an integer >= 1, got {r0}')
    if kind not in SCHEDULES:
        raise ValueError(f'unknown rank schedule {kind!r}; choose one of {", ".join(SCHEDULES)}')
    if d <= 1:
        return [r0] * d
    ranks = []
    for l in range(d):
        if kind == 'cosine':  # Eq. (8)
            x = 1 + (r0 - 1) / 2 * (1 + math.cos(math.pi * l / (d - 1)))
        elif kind == 'cosine_den_d':
            x = 1 + (r0 - 1) / 2 * (1 + math.cos(math.pi * l / d))
        elif kind == 'linear':
            x = 1 + (r0 - 1) * (1 - l / (d - 1))
        else:
            x = r0
        ranks.append(math.ceil(x - 1e-9))
    return ranks

# ---- Eqs. (4)-(7): the prompt tensors ----


class CPPrompt(nn.Module):
    """LoTeP-CP, a CP-rank-R tensor. Channel factors start at zero and spatial factors random (N(0, init_std^2)),
    so P = 0 at step 0 and the prompted model is exactly the frozen one; the first step's gradient moves a alone (b
    and c get none while a = 0, as with LoR-VP's zero factor; weight decay, where the optimizer has it, shrinks them)."""

    def __init__(self, *, shape: tuple[int, int, int], rank: int, init_std: float = INIT_STD):
        super().__init__()
        C, H, W = shape
        self.shape, self.rank = tuple(shape), rank
        self.a = nn.Parameter(torch.zeros(rank, C))  # channel factors a_t, zero-init
        self.b = nn.Parameter(torch.randn(rank, H) * init_std)  # b_t
        self.c = nn.Parameter(torch.randn(rank, W) * init_std)  # c_t

    def forward(self):
        # Eq. (6): P = sum_t a_t o b_t o c_t (outer products), entry by entry Eq. (7):
        # (P)_{i,j,k} = sum_t a_{t,i} b_{t,j} c_{t,k}
        return torch.einsum('ti,tj,tk->ijk', self.a, self.b, self.c)  # (C, H, W)

    @staticmethod
    def num_trainable(shape, rank):
        C, H, W = shape
        return rank * (C + H + W)


class TuckerPrompt(nn.Module):
    """LoTeP-TK, a Tucker-rank-(R, R, R) tensor. U (channel mode) starts at zero, V and W random.

    The core must not start at zero: with U = 0 and core = 0, dL/dU is proportional to the core and dL/dcore to U,
    so both stay zero for ever (tests/test_lotep.py shows it). core_init='identity' (superdiagonal ones) makes the
    Tucker prompt equal the CP prompt with the same factors at init; 'normal' draws it from N(0, 1)."""

    def __init__(self, *, shape: tuple[int, int, int], rank: int, init_std: float = INIT_STD,
                 core_init: str = 'identity'):
        super().__init__()
        C, H, W = shape
        self.shape, self.rank = tuple(shape), rank
        if core_init == 'identity':
            core = torch.zeros(rank, rank, rank)
            core[range(rank), range(rank), range(rank)] = 1.0
        elif core_init == 'normal':
            core = torch.randn(rank, rank, rank)
        elif core_init == 'zero':  # only to show the deadlock
            core = torch.zeros(rank, rank, rank)
        else:
            raise ValueError(f"core_init must be one of {(*CORE_INITS, 'zero')}, got {core_init!r}")
        self.core = nn.Parameter(core)  # core tensor, (R, R, R)
        self.U = nn.Parameter(torch.zeros(rank, C))  # channel factor, zero-init
        self.V = nn.Parameter(torch.randn(rank, H) * init_std)
        self.W = nn.Parameter(torch.randn(rank, W) * init_std)

    def forward(self):
        # Eq. (4): P = core x_1 U x_2 V x_3 W (mode products), entry by entry Eq. (5):
        # (P)_{i,j,k} = sum_{t1,t2,t3} core_{t1 t2 t3} U_{t1,i} V_{t2,j} W_{t3,k}
        return torch.einsum('xyz,xi,yj,zk->ijk', self.core, self.U, self.V, self.W)  # (C, H, W)

    @staticmethod
    def num_trainable(shape, rank):
        C, H, W = shape
        return rank ** 3 + rank * (C + H + W)


# ---- attach to backbone: a prompt at the input of each of the first d blocks ----

def find_blocks(model) -> tuple[list[nn.Module], str]:
    """The L blocks f_0..f_{L-1} of Eq. (1) in forward order, and the layout of their input tensor."""
    name = type(model).__name__
    if hasattr(model, 'patch_embed') and hasattr(model, 'num_prefix_tokens') and hasattr(model, 'blocks'):
        return list(model.blocks), 'tokens'  # ViT / DeiT / EVA: (B, p + N, D)
    if all(hasattr(model, f'layer{i}') for i in range(1, 5)):
        return [b for i in range(1, 5) for b in getattr(model, f'layer{i}')], 'nchw'  # ResNet
    if 'Swin' in name and hasattr(model, 'layers'):
        return [b for layer in model.layers for b in layer.blocks], 'nhwc'  # timm >= 0.9 Swin: (B, H, W, C)
    if hasattr(model, 'stages') and all(hasattr(s, 'blocks') for s in model.stages):
        return [b for s in model.stages for b in s.blocks], 'nchw'  # ConvNeXt, CoAtNet / MaxViT
    if hasattr(model, 'blocks') and all(isinstance(s, nn.Sequential) for s in model.blocks):
        return [b for s in model.blocks for b in s], 'nchw'  # EfficientNet, MobileNet
    raise ValueError(
        f'cannot find the blocks of model {name!r}: deep prompts know ResNet (layer1..4), ViT (blocks + '
        f'num_prefix_tokens), Swin (layers[i].blocks), ConvNeXt/CoAtNet/MaxViT (stages[i].blocks) and '
        f'EfficientNet/MobileNet (blocks[i][j]). Use an input-space method (lorvp, lorsp) with this backbone.')


class AddPrompt:
    """The forward pre-hook of block l: its input X_l becomes X_l + P_l (Eq. 1), a new tensor, nothing else.

    A plain object rather than a closure, so that copy.deepcopy(model) and torch.save(model) carry the hook along with
    the DeepPrompts it reads: the copy's blocks add the copy's prompts."""

    def __init__(self, prompts: 'DeepPrompts', l: int):
        self.prompts, self.l = prompts, l

    def __call__(self, block, args):
        x, expected = args[0], self.prompts.input_shapes[self.l]
        if x.shape[1:] != expected:  # a prompt copied to another project and fed another image size
            raise ValueError(f'block {self.l} was prompted for inputs of {expected} per image and got '
                             f'{tuple(x.shape[1:])}: build the prompts with the input_size of these images')
        # Eq. (1): block l computes f_l(X_l + P_l), P_l broadcast over the batch
        return (x + self.prompts.prompt(self.l).to(x.dtype),) + args[1:]


class DeepPrompts(nn.Module):
    """Eq. (1): X_{l+1} = f_l(X_l + P_l) for l < d = floor(L rho); blocks l >= d get nothing.

    make_prompt(l, (C, H, W), rank) -> a module whose forward() returns the (C, H, W) prompt of block l.
    ranks(d) -> [r_0, ..., r_{d-1}], the rank of each prompted block (None: prompts without a rank schedule).
    Prompts are added by forward pre-hooks (AddPrompt), so timm's own forward runs unchanged; detach() removes them.
    Every forward builds each P_l from its factors (a few small products: building them once for inference saved
    nothing measurable, docs/speed.md).
    """

    def __init__(self, *, backbone, input_size, make_prompt, rho, ranks=None, vit_layout='patches'):
        super().__init__()
        if vit_layout not in VIT_LAYOUTS:
            raise ValueError(f"vit_layout must be 'patches' or 'sequence', got {vit_layout!r}")
        blocks, self.layout = find_blocks(backbone)
        self.L, self.d = len(blocks), depth(len(blocks), rho)
        if self.d == 0:
            raise ValueError(f'rho = {rho} prompts d = floor({self.L} * {rho}) = 0 of the {self.L} blocks: that is '
                             f'linear probing. Use rho >= {1 / self.L:.3g}.')
        self.ranks = ranks(self.d) if ranks is not None else [None] * self.d
        self.prefix = getattr(backbone, 'num_prefix_tokens', 0)
        self.vit_layout = vit_layout
        self.grid = tuple(backbone.patch_embed.grid_size) if self.layout == 'tokens' else None
        input_shapes = _block_input_shapes(backbone, blocks[:self.d], input_size)
        self.input_shapes = [s[1:] for s in input_shapes]  # each prompted block's input, per image
        self.shapes = [self._prompt_shape(s) for s in input_shapes]  # (C, H, W) per prompted block
        self.prompts = nn.ModuleList(make_prompt(l, self.shapes[l], self.ranks[l]) for l in range(self.d))
        self._handles = [blocks[l].register_forward_pre_hook(AddPrompt(self, l)) for l in range(self.d)]

    def _prompt_shape(self, s):
        if self.layout == 'nchw':
            return tuple(s[1:])
        if self.layout == 'nhwc':
            return (s[3], s[1], s[2])
        if self.vit_layout == 'sequence':  # the whole sequence as D x (p + N) x 1: CLS is prompted too
            return (s[2], s[1], 1)
        Hp, Wp = self.grid
        if Hp * Wp != s[1] - self.prefix:
            raise ValueError(f'{s[1] - self.prefix} patch tokens do not form the {Hp}x{Wp} grid of patch_embed')
        return (s[2], Hp, Wp)

    def laid_out(self, P: torch.Tensor) -> torch.Tensor:
        """A (C, H, W) prompt in the layout of the block inputs, ready to broadcast over the batch."""
        if self.layout == 'nchw':
            return P  # (C, H, W)
        if self.layout == 'nhwc':
            return P.permute(1, 2, 0)  # (H, W, C)
        tokens = P.flatten(1).T  # (H_p W_p, D): the patch at grid (i, j) is token i W_p + j, timm's order
        if self.vit_layout == 'sequence':
            return tokens  # (p + N, D)
        return nn.functional.pad(tokens, (0, 0, self.prefix, 0))  # (p + N, D), zero rows for CLS / prefix tokens

    def prompt(self, l: int) -> torch.Tensor:
        """P_l built from its factors and laid out for block l."""
        return self.laid_out(self.prompts[l]())

    def detach(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def describe(self) -> list[str]:
        lines = [f'prompted blocks: d = {self.d} of L = {self.L} ({self.layout} inputs)']
        for l, (shape, r, p) in enumerate(zip(self.shapes, self.ranks, self.prompts)):
            n = sum(q.numel() for q in p.parameters())
            lines.append(f'  block {l:2d}: {"x".join(map(str, shape)):>12}' + (f'  rank {r}' if r else '') +
                         f'  params {n:,}')
        lines.append(f'  total prompt params {sum(q.numel() for q in self.parameters()):,}')
        return lines


@torch.no_grad()
def _block_input_shapes(backbone, blocks, input_size):
    """One forward of a blank image, in eval mode, records each block's input shape. Every module's mode is restored
    afterwards and nothing of the backbone changes (a train-mode forward would overwrite BatchNorm statistics)."""
    shapes, handles = {}, []
    modes = {m: m.training for m in backbone.modules()}

    def record(i):
        def hook(module, args):
            shapes.setdefault(i, tuple(args[0].shape))  # returns None: the input passes unchanged
        return hook
    for i, b in enumerate(blocks):
        handles.append(b.register_forward_pre_hook(record(i)))
    p = next(backbone.parameters())
    backbone.eval()
    try:
        backbone(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return [shapes[i] for i in range(len(blocks))]


class PixelPrompt(nn.Module):
    """LoTeP's optional input-pixel prompt (docs/lotep.md, sec. 1; input_prompt='cp'): a CP-rank-R prompt on the
    3 x S x S image, added before normalization like LoR-VP's. Zero at init (colour factors zero)."""

    def __init__(self, *, size: int, rank: int, init_std: float = INIT_STD, channels: int = 3):
        super().__init__()
        self.P = CPPrompt(shape=(channels, size, size), rank=rank, init_std=init_std)

    def forward(self, x):  # (B, 3, S, S) -> (B, 3, S, S)
        return x + self.P()


def lotep(*, backbone, input_size, kind='cp', r0=6, rho=0.5, schedule='cosine', init_std=INIT_STD,
          core_init='identity', vit_layout='patches') -> DeepPrompts:
    """LoTeP-CP (kind='cp') or LoTeP-TK (kind='tk') prompts on the first floor(L rho) blocks, ranks by Eq. (8)."""
    def make_prompt(l, shape, rank):
        if kind == 'cp':
            return CPPrompt(shape=shape, rank=rank, init_std=init_std)
        return TuckerPrompt(shape=shape, rank=rank, init_std=init_std, core_init=core_init)
    if kind not in ('cp', 'tk'):
        raise ValueError(f"kind must be 'cp' or 'tk', got {kind!r}")
    return DeepPrompts(backbone=backbone, input_size=input_size, make_prompt=make_prompt, rho=rho,
                       ranks=lambda d: rank_schedule(r0, d, schedule), vit_layout=vit_layout)
