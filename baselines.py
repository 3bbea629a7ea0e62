"""The baselines LoTeP and LoRSP compare against: LoR-VP, border prompts (ILM-VP, AutoVP, EVP) with their output
label mappings, VPT-Deep, and LoRA. Behaviour described in docs/baselines.md; the code is written here.

References (behaviour, not code):
  LoR-VP  Jin et al., ICLR 2025, https://github.com/jincan333/LoR-VP
  ILM-VP  Chen et al., CVPR 2023, https://github.com/OPTML-Group/ILM-VP
  AutoVP  Tsao et al., ICLR 2024, https://github.com/IBM/AutoVP
  EVP     Wu et al., 2022, https://github.com/UCSC-VLAA/EVP
  VPT     Jia et al., ECCV 2022, https://github.com/KMnP/vpt
  LoRA    Hu et al., ICLR 2022 (adapter semantics as in peft: base_layer, B = 0, alpha / r)

    bb = timm.create_model('resnet18', pretrained=True, num_classes=10).eval().requires_grad_(False)
    head = bb.get_classifier().requires_grad_(True)  # the fresh head trains with each prompt; bb stays in eval mode
    norm = torchvision.transforms.Normalize(bb.pretrained_cfg['mean'], bb.pretrained_cfg['std'])
    prompt = LoRVP(size=224, rank=4)  # input prompts take images in [0, 1]; normalization comes after them
    logits = bb(norm(prompt(x)))  # x: (B, 3, 224, 224) in [0, 1] -> (B, 10)
    border = BorderPrompt(canvas=224, inner=160, squash=False)  # EVP's: any input size, shrunk onto the canvas
    logits = bb(norm(border(x)))
    vit = timm.create_model('vit_base_patch16_224', pretrained=True, num_classes=10).eval().requires_grad_(False)
    vpt = VPTDeep(vit=vit, tokens=10)  # tokens at every block of a timm ViT; it takes normalized images, as ViTs do
    logits = vpt(norm(x))
    adapters = add_lora(bb, rank=8)  # LoRA on every conv and linear but the classifier (skip=[...] to choose)
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# ---- LoR-VP: a per-channel low-rank prompt on the whole image ----


class LoRVP(nn.Module):
    """P_c = B_c A_c for each colour channel c, added to the [0, 1] image before normalization.
    B (c, L, r) starts at zero and A (c, r, L) ~ N(0, 0.01^2) (the official script's 'zero,normal'), so P = 0 at
    step 0; no scaling, clamp or sigmoid. 2 c L r parameters: 5,376 at L = 224, r = 4."""

    def __init__(self, *, size: int, rank: int = 4, channels: int = 3, init_std: float = 0.01):
        super().__init__()
        if rank < 1:
            raise ValueError(f'--rank must be >= 1, got {rank}')
        self.B = nn.Parameter(torch.zeros(channels, size, rank))
        self.A = nn.Parameter(torch.randn(channels, rank, size) * init_std)

    def forward(self, x):  # (B, c, L, L) -> (B, c, L, L)
        L = self.A.shape[-1]
        if x.shape[-2:] != (L, L):
            raise ValueError(f'LoRVP was built for {L} x {L} images and got {x.shape[-2]} x {x.shape[-1]}: build it '
                             f'with size={x.shape[-1]} or resize the images')
        return x + torch.bmm(self.B, self.A)  # P = bmm(B, A): (c, L, L), broadcast over the batch

    @staticmethod
    def num_trainable(size, rank, channels=3):
        return 2 * channels * size * rank


# ---- border prompts: shrink the image, pad it onto the canvas, learn the border ----

class BorderPrompt(nn.Module):
    """The image shrunk to s x s and centred on an S x S zero canvas; a learned prompt fills the border only.

    squash=True: the border is sigmoid(delta), a learned image in (0, 1) starting at 0.5 grey (ILM-VP, AutoVP).
    squash=False: the border is delta itself, starting at 0 (EVP). Only border entries are parameters, so the count
    is the effective one, 3 (S^2 - s^2) (ILM-VP at 224 with a 32-px CIFAR image: 147,456).
    For EVP's update, every training forward keeps canvas_grad: the gradient of the loss with respect to a perturbation
    of the whole 3 x S x S canvas (image area included), which is what EVP's official prompt tensor receives."""

    def __init__(self, *, canvas: int, inner: int, squash: bool, channels: int = 3):
        super().__init__()
        if not 0 < inner < canvas:
            raise ValueError(f'the shrunk image ({inner} px) must be smaller than the canvas ({canvas} px)')
        self.canvas, self.inner, self.squash, self.channels = canvas, inner, squash, channels
        self.left = (canvas - inner) // 2
        mask = torch.ones(channels, canvas, canvas, dtype=torch.bool)
        mask[:, self.left:self.left + inner, self.left:self.left + inner] = False
        self.register_buffer('border_index', mask.flatten().nonzero().squeeze(1), persistent=False)
        self.delta = nn.Parameter(torch.zeros(len(self.border_index)))
        self.canvas_grad = None

    def border(self):  # (c, S, S), zero over the image
        values = torch.sigmoid(self.delta) if self.squash else self.delta
        full = values.new_zeros(self.channels * self.canvas ** 2).scatter(0, self.border_index, values)
        return full.view(self.channels, self.canvas, self.canvas)

    def forward(self, x):  # (B, c, S, S) -> (B, c, S, S)
        x = F.interpolate(x, size=(self.inner, self.inner), mode='bilinear', antialias=True, align_corners=False)
        right = self.canvas - self.inner - self.left
        x = F.pad(x, (self.left, right, self.left, right))  # centred on a zero canvas
        x = x + self.border()
        if x.requires_grad and not self.squash:  # EVP: dL/d(a perturbation added to every image) = sum_b dL/dx_b
            x.register_hook(lambda g: setattr(self, 'canvas_grad', g.sum(0)))  # (c, S, S)
        return x

    def after_backward(self, loop):  # a hook (methods.Loop): EVP's canvas gradient over the global batch, averaged
        if self.canvas_grad is not None:
            loop.reduce(self.canvas_grad, mean=True)

    @staticmethod
    def num_trainable(canvas, inner, channels=3):
        return channels * (canvas ** 2 - inner ** 2)


# ---- output label mappings on the frozen 1000-class source logits ----

def greedy_mapping(counts: torch.Tensor, k: int = 1) -> torch.Tensor:
    """ILM-VP / AutoVP FreqMap: repeatedly take the largest cell of the (source, target) count matrix, give that source
    class to that target, and retire the source (and the target once it has k sources). Returns (C, k) indices,
    all distinct. Ties go to the lowest index, which fills targets whose counts ran out in index order."""
    S, C = counts.shape
    if S < C * k:
        raise ValueError(f'{C} target classes x {k} sources each need {C * k} source classes, the backbone has {S}')
    counts = counts.double().clone()
    mapping = torch.full((C, k), -1, dtype=torch.long)
    filled = torch.zeros(C, dtype=torch.long)
    for _ in range(C * k):
        s, t = divmod(int(counts.argmax()), C)
        mapping[t, filled[t]] = s
        filled[t] += 1
        counts[s, :] = -math.inf
        if filled[t] == k:
            counts[:, t] = -math.inf
    return mapping


class SourceLabelMap(nn.Module):
    """Target logit j = mean of the source logits of its k mapped source classes; no parameters.

    The mapping comes from counts of the frozen backbone's source predictions (prompt included) per target class over
    the training set. rule='greedy': one-to-one, by greedy_mapping (ILM-VP, FLM, AutoVP FreqMap / IterMap).
    rule='mode': each target class takes its images' most frequent source prediction, not one-to-one (EVP's mapping
    for a non-CLIP backbone; k = 1).
    interval=None: computed once, before the first epoch, with the initial prompt (FLM; EVP's pre-pass).
    interval=1: recomputed at the start of every epoch with the current prompt (ILM-VP); k epochs: AutoVP IterMap.
    The training loop's hook epoch_start counts, sums the counts over the processes, and sets the mapping."""

    def __init__(self, *, num_classes: int, num_source: int = 1000, k: int = 1, interval: int | None = 1,
                 rule: str = 'greedy'):
        super().__init__()
        if k < 1 or (interval is not None and interval < 1):
            raise ValueError(f'map_k and map_interval must be >= 1, got {k} and {interval}')
        if num_classes * k > num_source:
            raise ValueError(f'{num_classes} target classes x map_k {k} source classes each need {num_classes * k} '
                             f'source classes; the backbone has {num_source}')
        if rule not in ('greedy', 'mode') or (rule == 'mode' and k != 1):
            raise ValueError(f"rule must be 'greedy', or 'mode' with k = 1; got {rule!r} with k = {k}")
        self.num_classes, self.num_source, self.k, self.interval, self.rule = num_classes, num_source, k, interval, rule
        self.register_buffer('mapping', torch.arange(num_classes * k).view(num_classes, k))  # (C, k)
        self.register_buffer('computed', torch.tensor(False))

    def forward(self, source_logits):  # (B, S) -> (B, C)
        return source_logits[:, self.mapping].mean(-1)

    def due(self, epoch) -> bool:
        """Whether the mapping is (re)computed before this epoch."""
        return not bool(self.computed) or (self.interval is not None and epoch % self.interval == 0)

    @torch.no_grad()
    def count_sources(self, features, batches) -> torch.Tensor:
        """(S, C) counts: how often the frozen backbone predicts source class s for an image of class c.
        features: images -> (B, S) source logits (the backbone in eval mode, prompt included); batches: (x, y) pairs."""
        device = self.mapping.device
        counts = torch.zeros(self.num_source, self.num_classes, device=device)
        for x, y in batches:
            pred = features(x.to(device)).argmax(1)  # the source prediction: (B,)
            y = y.to(device)
            counts.index_put_((pred, y), torch.ones(len(y), device=device), accumulate=True)
        return counts

    def epoch_start(self, epoch, loop):  # a hook (methods.Loop): recount before an epoch where the mapping is due
        if self.due(epoch):
            self.set_mapping(loop.reduce(self.count_sources(loop.features, loop.batches())))

    @torch.no_grad()
    def set_mapping(self, counts: torch.Tensor):
        if self.rule == 'greedy':
            self.mapping.copy_(greedy_mapping(counts.cpu(), self.k))
        else:  # the mode: argmax over the sources of each target's column, ties to the lowest index
            self.mapping.copy_(counts.argmax(0).view(-1, 1))
        self.computed.fill_(True)


# ---- EVP's update rule ----

class EVPUpdate(torch.optim.Optimizer):
    """EVP's update rule (docs/baselines.md, sec. 8), for a BorderPrompt with squash=False:
        g = dL/d(prompt) over the whole canvas, g <- g / ||g||_2 (norm over all 3 x S x S entries, image area too),
        masked to the border, prompt <- prompt - lr g;  no momentum, no weight decay.
    The border entries of g are exactly delta.grad, so the step is delta <- delta - lr delta.grad / ||canvas_grad||.
    Groups with normalized=False (the head) take plain SGD with momentum 0.9 and weight decay."""

    def __init__(self, param_groups, *, prompt: BorderPrompt, lr, weight_decay=0.0, momentum=0.9):
        super().__init__(param_groups, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, normalized=False))
        self.prompt = prompt

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is None:
                    continue
                if group['normalized']:  # canvas_grad: the global batch's (train.py averages it over processes)
                    p.sub_(p.grad / (self.prompt.canvas_grad.norm() + 1e-12), alpha=group['lr'])
                    continue
                d_p = p.grad.add(p, alpha=group['weight_decay'])
                buf = self.state[p].get('momentum_buffer')
                buf = d_p.clone() if buf is None else buf.mul_(group['momentum']).add_(d_p)
                self.state[p]['momentum_buffer'] = buf
                p.sub_(buf, alpha=group['lr'])


# ---- VPT-Deep: prompt tokens at every transformer block ----

class VPTDeep(nn.Module):
    """T learnable tokens inserted after the prefix (CLS) tokens before block 0, and replaced by fresh ones before
    every later block; stripped before the final pooling so they never reach the pooled feature.
    Tokens ~ U(-v, v), v = sqrt(6 / (3 p^2 + D)) (VPT's xavier-style init), or v = sqrt(3) init_std when init_std is
    given (the same uniform law with that std); unlike pixel prompts they change the model's output at step 0
    (attention sees them). Parameters: blocks x T x D."""

    def __init__(self, *, vit, tokens: int = 10, init_std: float | None = None):
        super().__init__()
        if not all(hasattr(vit, a) for a in ('patch_embed', '_pos_embed', 'blocks', 'num_prefix_tokens')):
            raise ValueError(f'vpt_deep needs a ViT with transformer blocks (timm VisionTransformer); '
                             f'{type(vit).__name__} has none. Try --model vit_base_patch32_224.')
        if tokens < 1:
            raise ValueError(f'tokens must be >= 1, got {tokens}')
        self.vit = vit
        patch, D = vit.patch_embed.patch_size[0], vit.embed_dim
        v = math.sqrt(6.0 / (3 * patch * patch + D)) if init_std is None else math.sqrt(3) * init_std
        self.prompts = nn.Parameter(torch.empty(len(vit.blocks), tokens, D).uniform_(-v, v))  # (blocks, T, D)
        self.num_features, self.num_classes = vit.num_features, vit.num_classes

    def forward(self, img):  # (B, 3, S, S) -> (B, num_features) or logits
        vit, p, T = self.vit, self.vit.num_prefix_tokens, self.prompts.shape[1]
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(img))))  # (B, p + N, D)
        for i, block in enumerate(vit.blocks):
            prompt = self.prompts[i].expand(x.shape[0], -1, -1).to(x.dtype)  # (B, T, D)
            rest = x[:, p:] if i == 0 else x[:, p + T:]  # insert (i = 0) / replace the previous block's prompt outputs
            x = torch.cat([x[:, :p], prompt, rest], dim=1)  # (B, p + T + N, D)
            # with --grad-checkpointing (timm's flag on the ViT) the block recomputes its activations in backward
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) if vit.grad_checkpointing else block(x)
        x = vit.norm(x)
        return vit.forward_head(torch.cat([x[:, :p], x[:, p + T:]], dim=1))  # strip: (B, p + N, D) -> pooled

    @staticmethod
    def num_trainable(blocks, tokens, dim):
        return blocks * tokens * dim


# ---- LoRA ----

class LoRA(nn.Module):
    """W' = W + (alpha / r) B A on a frozen nn.Linear or nn.Conv2d (any padding, groups or subclass: timm's
    Conv2dSame too). A (r, fan_in) ~ kaiming-uniform, B (rows, r) = 0, so the layer is unchanged at step 0.
    A grouped or depthwise conv's weight is (out, in / groups, k, k): its fan_in is (in / groups) k^2, and B A is a
    rank-r update of that grouped weight (mergeable; peft instead adds a dense conv A and a grouped conv B, refuses a
    rank not divisible by groups, and cannot merge: docs/choices.md).
    parts: adapt only these row blocks of the weight, each with its own A and B. timm fuses q, k and v into one qkv
    Linear (rows [0, D), [D, 2D), [2D, 3D)); LoRA on q and v, as in peft on separate q / v layers, is parts=[q, v].
    The base layer runs once with the updated weight; merge_lora() writes W' into it for inference."""

    def __init__(self, *, base: nn.Module, rank: int, alpha: float, parts=None):
        super().__init__()
        self.base = base
        out, fan_in = base.weight.shape[0], base.weight[0].numel()  # fan_in: in (Linear), in / groups k^2 (Conv2d)
        self.parts = parts or [(0, out)]
        rows = {stop - start for start, stop in self.parts}
        assert len(rows) == 1, 'parts must be row blocks of one size'
        self.A = nn.Parameter(torch.empty(len(self.parts), rank, fan_in))  # (parts, r, fan_in)
        for A in self.A:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(len(self.parts), rows.pop(), rank))  # (parts, rows, r)
        self.scaling = alpha / rank

    def delta(self):  # (alpha / r) B A in the shape of the base weight, zero outside the adapted parts
        BA = self.B @ self.A  # (parts, rows, fan_in)
        out = self.base.weight.shape[0]
        pieces, row = [], 0
        for (start, stop), block in zip(self.parts, BA):
            pieces += [BA.new_zeros(start - row, BA.shape[-1]), block]
            row = stop
        pieces.append(BA.new_zeros(out - row, BA.shape[-1]))
        return torch.cat(pieces).view_as(self.base.weight) * self.scaling

    def forward(self, x):
        return torch.func.functional_call(self.base, {'weight': self.base.weight + self.delta()}, (x,))

    @staticmethod
    def num_trainable(rows, fan_in, rank, parts=1):
        return parts * rank * (rows + fan_in)


QKV = {'q': 0, 'k': 1, 'v': 2}  # row block of timm's fused attention.qkv Linear


def add_lora(model: nn.Module, *, rank: int = 8, alpha: float = 8.0, targets=None, skip=None) -> list[LoRA]:
    """Wrap every nn.Linear and nn.Conv2d of the model (or those whose name ends with one of `targets`), except the
    modules in `skip` (default: a timm model's classifier, model.get_classifier(), which trains as a head instead).
    Targets q, k, v adapt those slices of timm's fused qkv Linear. Returns the adapters."""
    if rank < 1:
        raise ValueError(f'rank must be >= 1, got {rank}')
    if skip is None:
        skip = [model.get_classifier()] if hasattr(model, 'get_classifier') else []
    targets = None if targets is None else list(targets)
    slices = [t for t in targets or [] if t in QKV]
    skip_ids = {id(m) for m in skip}
    chosen = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)) or id(m) in skip_ids:
            continue
        leaf, parts = name.split('.')[-1], None
        if slices and leaf == 'qkv' and isinstance(m, nn.Linear):
            D = m.out_features // 3
            parts = [(QKV[t] * D, (QKV[t] + 1) * D) for t in sorted(slices, key=QKV.get)]
        elif targets is not None and leaf not in targets:
            continue
        chosen.append((name, m, parts))
    if not chosen:
        raise ValueError(f'no layer of {type(model).__name__} matches the LoRA targets {targets}')
    adapters = []
    for name, m, parts in chosen:
        parent_name, _, child = name.rpartition('.')
        adapter = LoRA(base=m, rank=rank, alpha=alpha, parts=parts)
        setattr(model.get_submodule(parent_name) if parent_name else model, child, adapter)
        adapters.append(adapter)
    return adapters


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Write W + (alpha / r) B A into every base layer and put the base layer back in place of its adapter."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRA):
            m.base.weight.add_(m.delta())
            parent_name, _, child = name.rpartition('.')
            setattr(model.get_submodule(parent_name) if parent_name else model, child, m.base)
    return model
