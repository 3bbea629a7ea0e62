"""What `python train.py --method NAME` means: one row per method, with everything about it on that row, and all a
method asks of the training loop (train.py names no method).

    row = METHODS['lotep_cp']
    row.recipe    # optimizer, lr, wd, epochs, batch size, lr schedule: the papers' (LoR-VP's where one gives none;
                  # the comment beside each recipe says whose), flags override
    row.defaults  # this method's defaults of shared flags (rank, rho, init std, label map, image scale, ...)
    model = row.build(a, K)  # a: train.py's resolved arguments, K classes -> an Adapted model
    opt = optimizer(a, model)  # the recipe's optimizer over what trains
    loop = Loop(model, features=model.features, batches=...)  # the methods' hooks, called by the loop at their moments

A builder takes the arguments and the options fixed on its row (functools.partial), never the method's name.
"""
import math
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import baselines
import data
import distributed
import lorsp
import lotep
from backbones import Adapted, checkpointed, create, family, normalizer, on_meta

OPTIMIZERS = ('sgd', 'adam', 'evp')  # --optimizer: SGD with momentum 0.9, Adam, or EVP's normalized step (baselines)
LABEL_MAPS = ('lp', 'fm', 'ilm', 'flm', 'freq', 'iter', 'mode')  # --label-map: the head (assemble below)
INPUT_PROMPTS = ('none', 'lorvp', 'cp')  # --input-prompt of LoTeP: none, LoR-VP's, or a CP pixel prompt

# ---- assembling a model: backbone, deep prompts on it, an input prompt, the head ----


def assemble(a, K, *, prompt=None, deep=None, wrap=None, train_backbone=False):
    """Backbone (pooled features for a linear head, or its source logits for a label mapping), deep prompts attached
    to it, an input prompt, the head. Every method is this with some parts filled in."""
    bb = create(a.model, pretrained=not a.no_pretrained, weights=a.weights, img_size=a.img_size,
                num_classes=0 if a.label_map == 'lp' else None)
    backbone_params, feature_dim = sum(p.numel() for p in bb.parameters()), bb.feature_dim
    weights, sha256 = bb.weights_loaded, bb.weights_sha256  # what they are, before a method wraps the backbone
    normalize = normalizer(bb)
    attached = [deep(bb)] if deep else []
    if a.grad_checkpointing:  # before a wrap: VPT-Deep reads the ViT's own flag
        if train_backbone and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in bb.modules()):
            raise BuildError(f'--grad-checkpointing with ft: {a.model} has BatchNorm, whose running statistics the '
                             f'recomputation in train mode would update twice; run ft without it')
        checkpointed(bb, a.model)
    bb = wrap(bb) if wrap else bb
    if a.label_map in ('lp', 'fm'):  # a linear head on pooled features, or on the source logits (AutoVP FullyMap)
        head = nn.Linear(feature_dim, K)
    else:
        k = a.map_k if a.label_map in ('freq', 'iter') else 1
        interval = {'ilm': 1, 'iter': a.map_interval}.get(a.label_map)  # flm, freq, mode: once, before training
        head = baselines.SourceLabelMap(num_classes=K, num_source=feature_dim, k=k, interval=interval,
                                        rule='mode' if a.label_map == 'mode' else 'greedy')
    model = Adapted(backbone=bb.requires_grad_(True) if train_backbone else bb, normalize=normalize, head=head,
                    prompt=prompt, attached=attached, train_backbone=train_backbone, channels_last=a.channels_last)
    model.backbone_params, model.weights_loaded, model.weights_sha256 = backbone_params, weights, sha256
    return model


# ---- builders: each method is assemble() with some parts filled in (lp is assemble itself; ft trains its backbone) ----

def build_lotep(a, K, *, kind):
    pixel = {'none': None, 'lorvp': lambda: baselines.LoRVP(size=a.img_size, rank=4),
             'cp': lambda: lotep.PixelPrompt(size=a.img_size, rank=a.rank, init_std=a.init_std)}[a.input_prompt]
    return assemble(a, K, prompt=pixel() if pixel else None, deep=lambda bb: lotep.lotep(
        backbone=bb, input_size=(3, a.img_size, a.img_size), kind=kind, r0=a.rank, rho=a.rho, schedule=a.schedule, init_std=a.init_std,
        core_init=a.core_init, vit_layout=a.vit_layout))


def build_grouped_lorvp(a, K, *, per_channel):
    import grouped_vp  # the Grouped-VP study (LoTeP, Sec. 3): read only when one of its methods is named
    return assemble(a, K, deep=lambda bb: grouped_vp.grouped_lorvp(
        backbone=bb, input_size=(3, a.img_size, a.img_size), groups=None if per_channel else a.groups, rank=a.rank, rho=a.rho,
        init_std=a.init_std, vit_layout=a.vit_layout))


def build_naive_deep_vp(a, K):
    import grouped_vp
    return assemble(a, K, deep=lambda bb: grouped_vp.naive_deep_vp(backbone=bb, input_size=(3, a.img_size, a.img_size), rho=a.rho,
                                                                   vit_layout=a.vit_layout))


def build_lorsp(a, K, *, mode):
    prompt = lorsp.LoRSP(size=a.img_size, factors=a.factors, rank=a.rank, tau=a.tau, v_th=a.v_th, v_reset=a.v_reset,
                         mode=mode, sparsity=a.sparsity, combine=a.eq9, orientation=a.orientation,
                         surrogate=a.surrogate, init_std=a.init_std)
    if a.compile:  # speed only, opt-in: torch.compile of the same readable Eqs. (4)-(9) (fused loops; docs/speed.md)
        prompt.compile()  # nn.Module.compile: forward runs compiled, the module and its state_dict unchanged
    return assemble(a, K, prompt=prompt)


def build_lorvp(a, K):
    return assemble(a, K, prompt=baselines.LoRVP(size=a.img_size, rank=a.rank, init_std=a.init_std))


def build_border(a, K, *, squash):
    return assemble(a, K, prompt=baselines.BorderPrompt(canvas=a.img_size, inner=round(a.image_scale * a.img_size),
                                                        squash=squash))


def build_vpt_deep(a, K):
    return assemble(a, K, wrap=lambda vit: baselines.VPTDeep(vit=vit, tokens=a.prompt_tokens, init_std=a.init_std))


def build_lora(a, K):
    def wrap(bb):
        baselines.add_lora(bb, rank=a.lora_rank, alpha=a.lora_alpha, skip=[bb.get_classifier()],
                           targets=a.lora_targets.split(',') if a.lora_targets else None)
        return bb
    return assemble(a, K, wrap=wrap)


# ---- defaults that depend on other arguments ----

# Prompting depth rho per backbone family (not given in the paper): Fig. 4b has deeper prompts helping ResNet-50 and
# hurting Swin-B; Table 4's 168K / 169K fits d = 4 of ViT-B/16's 12 blocks; Table 1's totals fit rho in [1/3, 1/2].
DEEP_RHO = {'ResNet': 0.5, 'EfficientNet': 0.5, 'SwinTransformer': 0.25}  # others (ViT, ConvNeXt, CoAtNet): 1/3


def deep_rho(a):
    return DEEP_RHO.get(family(a.model), 1 / 3)


def vpt_init_std(a):
    """VPT's token init U(-v, v), v = sqrt(6 / (3 p^2 + D)) for patch p and width D, as a std: v / sqrt(3)."""
    vit = on_meta(a.model)
    if not hasattr(vit, 'patch_embed'):
        return None  # not a ViT: building vpt_deep says so
    return math.sqrt(6.0 / (3 * vit.patch_embed.patch_size[0] ** 2 + vit.embed_dim)) / math.sqrt(3)


def evp_prompt_lr(a):
    """EVP steps its prompt by lr 70 in L2 norm, normalized over the whole 3 x 224 x 224 canvas; at another canvas
    size S the same lr 70 S / 224 moves every entry as far per step."""
    return 70.0 * a.img_size / 224


# ---- the rows ----

@dataclass(frozen=True)
class Method:
    help: str  # one line, listed by python train.py --help
    build: Callable  # build(a, K) -> Adapted
    recipe: dict  # optimizer, lr, wd, epochs, batch_size, schedule_lr (and prompt_lr where it differs from lr)
    defaults: dict = field(default_factory=dict)  # defaults of shared flags; a callable gets the arguments
    flags: tuple = ()  # the flags of OWN_FLAGS this method takes


# flags that only some methods take (a row's flags), and what each does
OWN_FLAGS = {'save_prompts': 'draws LoRSP prompts and factors', 'compile': 'compiles LoRSP prompts'}


LORVP_RECIPE = dict(optimizer='sgd', lr=0.02, wd=1e-4, epochs=20, batch_size=256, schedule_lr='cosine')  # LoR-VP
LORSP_RECIPE = {**LORVP_RECIPE, 'lr': 0.01}  # LoRSP sec. IV-A: SGD lr 0.01, 20 epochs, batch 256
BORDER_RECIPE = dict(optimizer='adam', lr=0.01, wd=0.0, epochs=200, batch_size=128, schedule_lr='multistep')  # ILM-VP
LOTEP = dict(rank=6, rho=deep_rho, init_std=lotep.INIT_STD)  # r0 = 6 in all of LoTeP's results
LORVP = dict(rank=4, init_std=0.01)  # LoR-VP's r = 4, A ~ N(0, 0.01^2)
LORSP = dict(rank=4, init_std=0.01)  # (n, r) = (4, 4): 6,272 parameters at 224 px; W ~ N(0, 0.01^2)
LORSP_FLAGS = ('save_prompts', 'compile')  # its figures (LoRSP.figures), its prompt compiled

METHODS = {
    'lp': Method('linear probe: a fresh linear head on the frozen backbone', assemble, LORVP_RECIPE),
    'ft': Method('full fine-tuning, Adam 1e-4 (ILM-VP\'s corrected baseline)', partial(assemble, train_backbone=True),
                 {**LORVP_RECIPE, 'optimizer': 'adam', 'lr': 1e-4, 'wd': 0.0}),
    'lora': Method('LoRA on every conv and linear (or --lora-targets), B = 0, merged for inference', build_lora,
                   {**LORVP_RECIPE, 'optimizer': 'adam', 'lr': 1e-3, 'wd': 0.0}),  # our choice: no paper recipe
    'lotep_cp': Method('LoTeP-CP: CP-rank prompts at the inputs of blocks 0..d-1, ranks by Eq. (8)',
                       partial(build_lotep, kind='cp'), LORVP_RECIPE, LOTEP),
    'lotep_tk': Method('LoTeP-TK: Tucker-rank prompts at the inputs of blocks 0..d-1, ranks by Eq. (8)',
                       partial(build_lotep, kind='tk'), LORVP_RECIPE, LOTEP),
    'grouped_lorvp': Method('Grouped VP (Eq. 3): g channel groups share a LoR-VP prompt, LoTeP\'s blocks',
                            partial(build_grouped_lorvp, per_channel=False), LORVP_RECIPE,
                            {**LORVP, 'rho': deep_rho, 'groups': 8}),
    'deep_lorvp': Method('naive deep LoR-VP: a LoR-VP prompt per channel (g = C), LoTeP\'s blocks',
                         partial(build_grouped_lorvp, per_channel=True), LORVP_RECIPE, {**LORVP, 'rho': deep_rho}),
    'naive_deep_vp': Method('naive deep VP: a full C x H x W prompt per block, LoTeP\'s blocks', build_naive_deep_vp,
                            LORVP_RECIPE, {'rho': deep_rho}),
    'lorsp': Method('LoRSP: LIF spikes over n instance-specific low-rank factors gate a sparse input prompt',
                    partial(build_lorsp, mode='lif'), LORSP_RECIPE, LORSP, LORSP_FLAGS),
    'lorsp_lpf': Method('LoRSP ablation LPF: the factors averaged, no neurons', partial(build_lorsp, mode='mean'),
                        LORSP_RECIPE, LORSP, LORSP_FLAGS),
    'lorsp_topk': Method('LoRSP ablation: top-k of the mean factor (--sparsity zeroed)',
                         partial(build_lorsp, mode='topk'), LORSP_RECIPE, LORSP, LORSP_FLAGS),
    'lorsp_dropout': Method('LoRSP ablation: random dropout of the mean factor (--sparsity zeroed)',
                            partial(build_lorsp, mode='dropout'), LORSP_RECIPE, LORSP, LORSP_FLAGS),
    'lorvp': Method('LoR-VP: a per-channel low-rank prompt B A added to the image before normalization', build_lorvp,
                    LORVP_RECIPE, LORVP),
    'ilm_vp': Method('ILM-VP: shrunk image, sigmoid border, greedy label mapping every epoch',
                     partial(build_border, squash=True), BORDER_RECIPE, {'label_map': 'ilm', 'image_scale': 128 / 224}),
    'flm_vp': Method('FLM-VP: as ILM-VP with the label mapping computed once', partial(build_border, squash=True),
                     BORDER_RECIPE, {'label_map': 'flm', 'image_scale': 128 / 224}),
    'autovp': Method('AutoVP (one point of its search): resize-then-pad border, FullyMap on the source logits',
                     partial(build_border, squash=True), {**BORDER_RECIPE, 'lr': 1e-3},
                     {'label_map': 'fm', 'image_scale': 192 / 224}),
    'evp': Method('EVP: shrink-and-pad border trained by EVP\'s normalized-gradient step; LP head',
                  partial(build_border, squash=False),
                  dict(optimizer='evp', lr=0.02, wd=1e-4, epochs=1000, batch_size=256, schedule_lr='cosine_epoch'),
                  {'image_scale': 164 / 224, 'prompt_lr': evp_prompt_lr}),
    'vpt_deep': Method('VPT-Deep: tokens before every ViT block, replaced per block, stripped before pooling',
                       build_vpt_deep,
                       dict(optimizer='sgd', lr=0.25, wd=1e-4, epochs=100, batch_size=128, schedule_lr='warmup_cosine'),
                       {'init_std': vpt_init_std}),
}


def resolve_defaults(a):
    """Fill every argument left at None from the method's recipe and defaults (callables see the others); a flag of
    some methods only (OWN_FLAGS) given to another is refused."""
    row = METHODS[a.method]
    for flag, what in OWN_FLAGS.items():
        if getattr(a, flag, None) and flag not in row.flags:
            takers = ', '.join(m for m, r in METHODS.items() if flag in r.flags)
            raise BuildError(f'--{flag.replace("_", "-")} {what}; use it with a lorsp method ({takers})')
    for key, value in {**row.recipe, 'label_map': 'lp', **row.defaults}.items():
        if getattr(a, key, None) is None:
            setattr(a, key, value(a) if callable(value) else value)
    return a


class BuildError(Exception):
    """A method that cannot be built as asked (a method module's ValueError, with the flags that set its argument)."""


def build(a, num_classes=None):
    """The model of a run: seeded, so a resumed or re-built run gets the same head (and prompt) initialisation.
    num_classes: K when it is known without the data (a prompt file's classes); else the data set says it."""
    torch.manual_seed(a.seed)
    try:
        K = num_classes or data.num_classes(a.dataset, a.data_dir)
        return METHODS[a.method].build(a, K).to(a.device)
    except ValueError as e:  # a method module names its own argument: say which flag sets it
        flags = sorted({f'--{w.replace("_", "-")}' for w in re.findall(r'[a-z_0-9]+', str(e)) if w in vars(a)})
        raise BuildError(f'{a.method} on {a.model}: {e}' + (f' (set by {", ".join(flags)})' if flags else '')) \
            from None


def trainable_state(model):
    """What a checkpoint and a prompt file hold: everything under full fine-tuning; else the trainable parameters and
    the method's own buffers (label mappings), never the frozen backbone."""
    if model.train_backbone:
        return model.state_dict()
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in keep or not k.startswith('backbone.')}


class StateError(Exception):
    """A saved state (checkpoint, prompt file) that does not fit the model it is loaded into; the message names it."""


def load_state(model, state, *, source):
    """Loads a run's trainable state into a model made by build() (the frozen backbone is not in it): every trainable
    tensor must be there, with its shape, and nothing else; else a StateError naming the source."""
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ
        raise StateError(f'{source}: its tensors do not fit this {type(model.prompt).__name__} model '
                         f'({str(e).strip().splitlines()[-1].strip()[:200]})') from None
    if result.unexpected_keys or trained - set(state):
        raise StateError(f'{source}: holds the state of another model (missing {sorted(trained - set(state))[:3]}, '
                         f'unexpected {result.unexpected_keys[:3]}); is it from another method\'s run?')


# ---- what the loop asks of a method: its optimizer, what trains, its hooks ----

def optimizer(a, model):
    """The run's optimizer over what trains, two groups: everything but the head at --prompt-lr (default --lr), the
    head at --lr, both x --lr-scale (each group's base_lr: the lr schedule multiplies it). SGD with momentum 0.9, Adam,
    or EVP's normalized step on its prompt (baselines.EVPUpdate) with SGD on the head."""
    head = {id(p) for p in model.head.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
    evp = a.optimizer == 'evp'
    groups = [dict(params=rest, lr=(a.prompt_lr or a.lr) * a.lr_scale, normalized=evp, weight_decay=0 if evp else a.wd),
              dict(params=[p for p in model.head.parameters() if p.requires_grad], lr=a.lr * a.lr_scale,
                   normalized=False, weight_decay=a.wd)]
    groups = [dict(g, base_lr=g['lr']) for g in groups if g['params']]
    if evp:
        return baselines.EVPUpdate(groups, prompt=model.prompt, lr=a.lr * a.lr_scale, weight_decay=a.wd)
    groups = [{k: v for k, v in g.items() if k != 'normalized'} for g in groups]
    return torch.optim.Adam(groups) if a.optimizer == 'adam' else torch.optim.SGD(groups, momentum=0.9)


def what_trains(a, model, splits):
    """(the module the loop trains, the data it trains on): the model on the images; or, where only the head trains
    (lp), the head on the frozen backbone's pooled features of the images, computed once here (the same batches and the
    same maths: only the repeated backbone forwards go)."""
    head = {id(p) for p in model.head.parameters()}
    label_maps = any(isinstance(m, baselines.SourceLabelMap) for m in model.modules())
    if label_maps or not all(id(p) in head for p in model.parameters() if p.requires_grad):
        return model, splits

    @torch.no_grad()
    def cache(ds):
        feats, labels = [], []
        for x, y in DataLoader(ds, batch_size=a.batch_size, num_workers=a.workers):
            with autocast(a):
                feats.append(model.features(x.to(a.device)).float())
            labels.append(y.to(a.device))
        return TensorDataset(torch.cat(feats), torch.cat(labels))
    model.eval()
    return model.head, data.Splits(train=cache(splits.train), val=cache(splits.val) if splits.val is not None else None,
                                   test=cache(splits.test), num_classes=splits.num_classes, classes=splits.classes)


class Loop:
    """How a method takes part in the loop: at each moment the loop calls the method of that name on every module of
    the model that has one (the hooks), handing it this Loop:
        epoch_start(epoch, loop)  before each epoch (label mappings: recount the source predictions when due)
        after_backward(loop)      after each backward (EVP's prompt: its canvas gradient, averaged over processes)
        pop_stats()               after each evaluation: diagnostics for metrics.jsonl (LoRSP: spike rates, density)
    features: images -> the frozen backbone's output, prompt included; batches: () -> this process's share of the
    training images, in order; reduce: sums a tensor over the processes in place (the loop owns every collective)."""

    def __init__(self, model, *, features, batches, reduce=distributed.reduce_tensor):
        self.features, self.batches, self.reduce = features, batches, reduce
        self.hooks = {name: [getattr(m, name) for m in model.modules() if m is not model and callable(getattr(
            m, name, None))] for name in ('epoch_start', 'after_backward', 'pop_stats')}  # looked up once

    def epoch_start(self, epoch):
        for hook in self.hooks['epoch_start']:
            hook(epoch, self)

    def after_backward(self):
        for hook in self.hooks['after_backward']:
            hook(self)

    def pop_stats(self) -> dict:
        return {k: v for hook in self.hooks['pop_stats'] for k, v in (hook() or {}).items()}


def autocast(a):
    """The run's precision as a context: bf16 autocast on its device (the loss is computed in fp32 after it), or
    fp32."""
    if a.precision != 'bf16':
        return nullcontext()
    return torch.autocast('cuda' if a.device.startswith('cuda') else 'cpu', dtype=torch.bfloat16)
