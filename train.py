"""Train one method on a frozen timm backbone: the single entry point of this codebase (one GPU, or the CPU).

    python train.py --method lotep_cp --model resnet18 --dataset cifar100          # the papers' protocol, GPU
    python train.py --method lp --model tf_efficientnet_lite0 --dataset cifar10 --data-dir ../shared/data \\
        --train-per-class 100 --test-limit 1000 --img-size 96 --epochs 2           # offline, CPU, minutes

The run directory (--out, default runs/<method>-<model>-<dataset>-<seed>) gets config.json, metrics.jsonl (a line per
epoch), checkpoint.pt (the trainable state, after every epoch) and summary.json; --resume continues a killed run and
ends where the uninterrupted run would have ended.
"""
import argparse
import copy
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

import baselines
import data
import grouped_vp
import lorsp
import lotep
from backbones import Adapted, BackboneError, create, normalizer

# ---- recipes: each method's optimizer, lr, epochs as its official code uses them (flags override) ----

LORVP_RECIPE = dict(optimizer='sgd', lr=0.02, wd=1e-4, epochs=20, batch_size=256, schedule='cosine')  # LoR-VP script
RECIPES = {
    **{m: LORVP_RECIPE for m in ('lp', 'lorvp', 'lotep_cp', 'lotep_tk', 'grouped_lorvp', 'deep_lorvp',
                                 'naive_deep_vp')},
    **{m: {**LORVP_RECIPE, 'lr': 0.01} for m in ('lorsp', 'lorsp_lpf', 'lorsp_topk', 'lorsp_dropout')},  # LoRSP 4.6
    'ft': {**LORVP_RECIPE, 'optimizer': 'adam', 'lr': 1e-4, 'wd': 0.0},  # ILM-VP's corrected full fine-tuning
    'lora': {**LORVP_RECIPE, 'optimizer': 'adam', 'lr': 1e-3, 'wd': 0.0},  # our choice: no official VP-paper recipe
    **{m: dict(optimizer='adam', lr=0.01, wd=0.0, epochs=200, batch_size=128, schedule='multistep')
       for m in ('ilm_vp', 'flm_vp')},  # ILM-VP
    'autovp': dict(optimizer='adam', lr=1e-3, wd=0.0, epochs=200, batch_size=128, schedule='multistep'),
    'evp': dict(optimizer='evp', lr=0.02, wd=1e-4, epochs=1000, batch_size=256, schedule='cosine_epoch'),
    'vpt_deep': dict(optimizer='sgd', lr=0.25, wd=1e-4, epochs=100, batch_size=128, schedule='warmup_cosine'),
}
DEFAULT_RANK = {'lotep_cp': 6, 'lotep_tk': 6}  # r0 = 6 in all LoTeP results; LoR-VP-style prompts use r = 4
DEFAULT_LABEL_MAP = {'ilm_vp': 'ilm', 'flm_vp': 'flm', 'autovp': 'fm'}
DEFAULT_IMAGE_SCALE = {'ilm_vp': 128 / 224, 'flm_vp': 128 / 224, 'autovp': 192 / 224, 'evp': 164 / 224}
# Prompting depth rho per family (not given in the paper): Fig. 4b has deeper prompts helping ResNet-50 and hurting
# Swin-B; Table 4's 168K/169K fits d = 4 of ViT-B/16's 12 blocks; Table 1's totals fit rho between 1/3 and 1/2.
DEFAULT_RHO = {'ResNet': 0.5, 'EfficientNet': 0.5, 'SwinTransformer': 0.25}  # others (ViT, ConvNeXt, CoAtNet): 1/3


# ---- builders: method name -> the assembled model ----

def assemble(a, K, *, prompt=None, deep=None, wrap=None, train_backbone=False):
    """Backbone (pooled features for a linear head, or its 1000 source logits for a label mapping), deep prompts
    attached to it, an input prompt, the head. Every method is this with some parts filled in."""
    mapping = a.label_map or DEFAULT_LABEL_MAP.get(a.method, 'lp')
    bb = create(a.model, pretrained=not a.no_pretrained, weights=a.weights, img_size=a.img_size,
                num_classes=0 if mapping == 'lp' else None)
    backbone_params = sum(p.numel() for p in bb.parameters())
    normalize = normalizer(bb)
    attached = [deep(bb)] if deep else []
    bb = wrap(bb) if wrap else bb
    if mapping == 'lp':
        head = nn.Linear(bb.num_features, K)
    elif mapping == 'fm':  # AutoVP FullyMap / LoR-VP "fm": a linear layer on the source logits
        head = nn.Linear(bb.num_classes, K)
    else:
        k = a.map_k if mapping in ('freq', 'iter') else 1
        interval = {'ilm': 1, 'iter': a.map_interval}.get(mapping)  # flm, freq: once, before training
        head = baselines.SourceLabelMap(num_classes=K, num_source=bb.num_classes, k=k, interval=interval)
    model = Adapted(backbone=bb.requires_grad_(True) if train_backbone else bb, normalize=normalize, head=head,
                    prompt=prompt, attached=attached, train_backbone=train_backbone)
    model.backbone_params = backbone_params
    return model


def rho(a, bb):
    return a.rho if a.rho is not None else DEFAULT_RHO.get(type(bb).__name__, 1 / 3)


def build_lp(a, K):
    return assemble(a, K)


def build_ft(a, K):
    return assemble(a, K, train_backbone=True)


def build_lotep(a, K):
    return assemble(a, K, deep=lambda bb: lotep.lotep(
        backbone=bb, input_size=(3, a.img_size, a.img_size), kind=a.method[-2:], r0=a.rank, rho=rho(a, bb),
        schedule=a.schedule, init_std=a.init_std, core_init=a.core_init, vit_layout=a.vit_layout))


def build_grouped(a, K):
    size = (3, a.img_size, a.img_size)
    if a.method == 'naive_deep_vp':
        make = lambda bb: grouped_vp.naive_deep_vp(backbone=bb, input_size=size, rho=rho(a, bb),
                                                   vit_layout=a.vit_layout)
    else:
        groups = a.groups if a.method == 'grouped_lorvp' else None  # deep_lorvp: g = C
        make = lambda bb: grouped_vp.grouped_lorvp(backbone=bb, input_size=size, groups=groups, rank=a.rank,
                                                   rho=rho(a, bb), vit_layout=a.vit_layout)
    return assemble(a, K, deep=make)


def build_lorsp(a, K):
    mode = {'lorsp': 'lif', 'lorsp_lpf': 'mean', 'lorsp_topk': 'topk', 'lorsp_dropout': 'dropout'}[a.method]
    return assemble(a, K, prompt=lorsp.LoRSP(
        size=a.img_size, factors=a.factors, rank=a.rank, tau=a.tau, v_th=a.v_th, v_reset=a.v_reset, mode=mode,
        sparsity=a.sparsity, combine=a.eq9, orientation=a.orientation, surrogate=a.surrogate, w_std=a.w_std))


def build_lorvp(a, K):
    return assemble(a, K, prompt=baselines.LoRVP(size=a.img_size, rank=a.rank))


def build_border(a, K):
    scale = a.image_scale or DEFAULT_IMAGE_SCALE[a.method]
    if not 0 < scale < 1:
        raise ValueError(f'--image-scale is the shrunk image side over the canvas side, in (0, 1); got {scale}')
    return assemble(a, K, prompt=baselines.BorderPrompt(canvas=a.img_size, inner=round(scale * a.img_size),
                                                        squash=a.method != 'evp'))


def build_vpt_deep(a, K):
    return assemble(a, K, wrap=lambda vit: baselines.VPTDeep(vit=vit, tokens=a.prompt_tokens))


def build_lora(a, K):
    def wrap(bb):
        baselines.add_lora(bb, rank=a.lora_rank, alpha=a.lora_alpha, skip=[bb.get_classifier()],
                           targets=a.lora_targets.split(',') if a.lora_targets else None)
        return bb
    return assemble(a, K, wrap=wrap)


METHODS = {
    'lp': build_lp, 'ft': build_ft,
    'lotep_cp': build_lotep, 'lotep_tk': build_lotep,
    'grouped_lorvp': build_grouped, 'deep_lorvp': build_grouped, 'naive_deep_vp': build_grouped,
    'lorsp': build_lorsp, 'lorsp_lpf': build_lorsp, 'lorsp_topk': build_lorsp, 'lorsp_dropout': build_lorsp,
    'lorvp': build_lorvp, 'ilm_vp': build_border, 'flm_vp': build_border, 'autovp': build_border,
    'evp': build_border, 'vpt_deep': build_vpt_deep, 'lora': build_lora,
}


# ---- command line ----

def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--method', choices=sorted(METHODS), help='required unless --resume')
    p.add_argument('--model', default='resnet18', help='a timm model name (default resnet18)')
    p.add_argument('--dataset', default='cifar100', choices=data.DATASETS)
    p.add_argument('--data-dir', default='data', help='where data sets are read or downloaded (default ./data)')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--epochs', type=int, help='default: the method recipe (20 for the LoR-VP family)')
    p.add_argument('--batch-size', type=int, help='default: the method recipe (256 for the LoR-VP family)')
    p.add_argument('--lr', type=float, help='default: the method recipe (0.02 for the LoR-VP family)')
    p.add_argument('--prompt-lr', type=float, help='lr of everything but the head (default: --lr; evp: 70)')
    p.add_argument('--wd', type=float, help='weight decay (default: the method recipe, 1e-4 for the LoR-VP family)')
    p.add_argument('--lr-scale', type=float, default=1.0, help='multiplies --lr and --prompt-lr (a tuning grid)')
    p.add_argument('--optimizer', choices=['sgd', 'adam', 'evp'], help='default: the method recipe')
    p.add_argument('--schedule-lr', choices=['cosine', 'cosine_epoch', 'multistep', 'warmup_cosine', 'constant'],
                   help='lr schedule, per step (default: the method recipe)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--train-per-class', type=int, help='reduced protocol: this many training images per class')
    p.add_argument('--test-limit', type=int, help='reduced protocol: the first N test images')
    p.add_argument('--val-split', type=float, default=0.0, help='fraction of training images held out for selection')
    p.add_argument('--weights', help='a local checkpoint for --model (timm or lukemelas EfficientNet naming)')
    p.add_argument('--no-pretrained', action='store_true', help='random backbone weights, on purpose')
    p.add_argument('--device', default='auto', help='auto (cuda if there is one, else cpu), cpu, cuda, cuda:1 ...')
    p.add_argument('--workers', type=int, help='DataLoader workers (default 0 on cpu, 8 on cuda)')
    p.add_argument('--out', help='run directory (default runs/<method>-<model>-<dataset>-<seed>)')
    p.add_argument('--resume', action='store_true', help='continue the run in --out from its last saved epoch')
    p.add_argument('--speed-reps', type=int, default=5, help='timed repetitions for step/latency figures (0: skip)')
    g = p.add_argument_group('prompt shapes (LoTeP, grouped VP, LoR-VP, LoRSP)')
    g.add_argument('--rank', type=int, help='r0 of LoTeP (default 6); r of LoR-VP, grouped VP and LoRSP (default 4)')
    g.add_argument('--rho', type=float, help='prompting depth ratio, d = floor(L rho) (default: per family)')
    g.add_argument('--schedule', default='cosine', choices=lotep.SCHEDULES, help='LoTeP rank schedule (Eq. 8)')
    g.add_argument('--vit-layout', default='patches', choices=['patches', 'sequence'])
    g.add_argument('--init-std', type=float, default=0.3,
                   help='std of LoTeP spatial factors (0.3: chosen on a validation split, see README)')
    g.add_argument('--core-init', default='identity', choices=['identity', 'normal'], help='LoTeP-TK core init')
    g.add_argument('--groups', type=int, default=8, help='grouped_lorvp: channel groups g')
    g = p.add_argument_group('LoRSP')
    g.add_argument('--factors', type=int, default=4, help='n prompt factors = LIF time steps')
    g.add_argument('--tau', type=float, default=4.0)
    g.add_argument('--v-th', type=float, default=0.0)
    g.add_argument('--v-reset', type=float, default=0.0)
    g.add_argument('--sparsity', type=float, default=0.5, help='lorsp_topk / lorsp_dropout: fraction zeroed')
    g.add_argument('--eq9', default='mean', choices=lorsp.LoRSP.COMBINES, help='how spikes gate the factors')
    g.add_argument('--orientation', default='cols', choices=['cols', 'rows'])
    g.add_argument('--surrogate', default='sigmoid', choices=['sigmoid', 'atan'])
    g.add_argument('--w-std', type=float, default=0.01, help='init std of the spatial projection W')
    g.add_argument('--save-prompts', type=int, default=0, help='K: PNGs of K test prompts and factor correlations')
    g = p.add_argument_group('baselines')
    g.add_argument('--label-map', choices=['lp', 'fm', 'ilm', 'flm', 'freq', 'iter'],
                   help='head: lp (linear probe, default), fm (linear on source logits, autovp default), ilm (greedy '
                        'mapping every epoch, ilm_vp default), flm (once, flm_vp), freq / iter (k sources each)')
    g.add_argument('--map-k', type=int, default=1, help='freq / iter: source classes per target')
    g.add_argument('--map-interval', type=int, default=1, help='iter: recompute every N epochs')
    g.add_argument('--image-scale', type=float, help='border prompts: shrunk image side / canvas side')
    g.add_argument('--prompt-tokens', type=int, default=10, help='vpt_deep: tokens per block')
    g.add_argument('--lora-rank', type=int, default=8)
    g.add_argument('--lora-alpha', type=float, default=8.0)
    g.add_argument('--lora-targets', help='comma list of layer names to adapt (default: every conv and linear)')
    return p.parse_args(argv)


class UsageError(Exception):
    pass


def resolve(a):
    """Fill recipe defaults and check the values that torch would only complain about deep inside."""
    if a.method is None:
        raise UsageError(f'--method is required; choose one of: {", ".join(sorted(METHODS))}')
    recipe = RECIPES[a.method]
    for key in ('optimizer', 'lr', 'wd', 'epochs', 'batch_size', 'prompt_lr'):
        if getattr(a, key) is None:
            setattr(a, key, recipe.get(key))
    if a.schedule_lr is None:
        a.schedule_lr = recipe['schedule']
    if a.rank is None:
        a.rank = DEFAULT_RANK.get(a.method, 4)
    if a.method == 'evp' and a.prompt_lr is None:
        # EVP steps its 69,840-entry border (30 px at 224) by lr 70 in L2 norm; a normalized step spreads over all
        # entries, so other borders get lr 70 sqrt(n / 69,840): every entry moves as far per step as in EVP
        scale = a.image_scale or DEFAULT_IMAGE_SCALE['evp']
        n = baselines.BorderPrompt.num_trainable(a.img_size, round(scale * a.img_size))
        a.prompt_lr = 70.0 * math.sqrt(n / 69_840)
    if a.lr_scale <= 0:
        raise UsageError(f'--lr-scale must be positive, got {a.lr_scale}')
    if a.lr_scale != 1.0:
        a.lr, a.prompt_lr = a.lr * a.lr_scale, a.prompt_lr and a.prompt_lr * a.lr_scale
        a.lr_scale = 1.0  # applied once: a resumed run re-resolves its saved, already scaled values
    for flag, v in (('--epochs', a.epochs), ('--batch-size', a.batch_size), ('--img-size', a.img_size)):
        if v <= 0:
            raise UsageError(f'{flag} must be a positive integer, got {v}')
    if a.lr <= 0:
        raise UsageError(f'--lr must be positive, got {a.lr}')
    if a.save_prompts and not a.method.startswith('lorsp'):
        raise UsageError('--save-prompts draws LoRSP prompts and factors; use it with a lorsp method')
    if a.device == 'auto':
        a.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    elif a.device.startswith('cuda') and not torch.cuda.is_available():
        raise UsageError(f'--device {a.device}: torch sees no CUDA device here; use --device cpu')
    if a.workers is None:
        a.workers = 8 if a.device.startswith('cuda') else 0
    return a


# ---- training ----

def lr_factor(kind, step, total, steps_per_epoch):
    t, epoch, epochs = step / total, step // steps_per_epoch, total // steps_per_epoch
    if kind == 'cosine':  # per step, to 0, no warmup (LoR-VP)
        return 0.5 * (1 + math.cos(math.pi * t))
    if kind == 'cosine_epoch':  # per epoch (EVP)
        return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    if kind == 'multistep':  # x0.1 at 50% and 72% of the epochs (ILM-VP, AutoVP)
        return 1.0 if epoch < 0.5 * epochs else 0.1 if epoch < 0.72 * epochs else 0.01
    if kind == 'warmup_cosine':  # linear warmup over the first 10%, then cosine (VPT)
        return (step + 1) / (0.1 * total) if t < 0.1 else 0.5 * (1 + math.cos(math.pi * (t - 0.1) / 0.9))
    return 1.0


def make_optimizer(a, model):
    head = {id(p) for p in model.head.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
    groups = [dict(params=rest, lr=a.prompt_lr or a.lr, normalized=a.optimizer == 'evp',
                   weight_decay=0.0 if a.optimizer == 'evp' else a.wd),
              dict(params=[p for p in model.head.parameters() if p.requires_grad], lr=a.lr, normalized=False,
                   weight_decay=a.wd)]
    groups = [g for g in groups if g['params']]
    for g in groups:
        g['base_lr'] = g['lr']
    if a.optimizer == 'evp':
        return baselines.EVPUpdate(groups, lr=a.lr, weight_decay=a.wd)
    for g in groups:
        g.pop('normalized')
    if a.optimizer == 'adam':
        return torch.optim.Adam(groups, lr=a.lr)
    return torch.optim.SGD(groups, lr=a.lr, momentum=0.9)


def loader(ds, batch_size, a, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(ds, batch_size=batch_size, shuffle=seed is not None, generator=g, num_workers=a.workers,
                      pin_memory=a.device.startswith('cuda'))


def autocast(a):
    return torch.autocast('cuda', dtype=torch.bfloat16) if a.device.startswith('cuda') else nullcontext()


@torch.no_grad()
def evaluate(model, dl, a):
    model.eval()
    correct = total = 0
    for x, y in dl:
        x, y = x.to(a.device, non_blocking=True), y.to(a.device, non_blocking=True)
        with autocast(a):
            correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / total


def pop_stats(model):
    stats = {}
    for m in model.modules():
        if m is not model and hasattr(m, 'pop_stats'):
            stats.update(m.pop_stats())
    return stats


def trainable_state(model):
    """What a checkpoint holds: everything under full fine-tuning; else the trainable parameters and the method's
    own buffers (label mappings), never the frozen backbone."""
    if model.train_backbone:
        return model.state_dict()
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in keep or not k.startswith('backbone.')}


class Progress:
    def __init__(self, total, label):
        self.total, self.label, self.t0, self.shown = total, label, time.time(), -1
        self.tty = sys.stderr.isatty()

    def update(self, i, images, loss, acc):
        rate = images / max(time.time() - self.t0, 1e-9)
        quarter = 4 * i // self.total
        if self.tty or quarter > self.shown or i == self.total:
            bar = '=' * (20 * i // self.total)
            end = '\n' if i == self.total or not self.tty else ''
            print(f'\r{self.label} [{bar:<20}] {i}/{self.total} loss {loss:.3f} acc {acc:.1f}% {rate:.0f} img/s',
                  end=end, file=sys.stderr, flush=True)
            self.shown = quarter


def saved_args(out):
    """The arguments a run in directory out was started with (its config.json, over today's defaults)."""
    with open(os.path.join(out, 'config.json')) as f:
        saved = json.load(f)['args']
    a = parse(['--method', saved['method']])
    vars(a).update(saved)
    return a


def build(a):
    """The model of a run: seeded, so a resumed or re-built run gets the same head (and prompt) initialisation."""
    torch.manual_seed(a.seed)
    return METHODS[a.method](a, data.NUM_CLASSES[a.dataset]).to(a.device)


def load_checkpoint(model, path, device):
    """Loads a run's trainable state into model (the frozen backbone is not in it); returns the checkpoint."""
    ckpt = torch.load(path, map_location=device, weights_only=False)
    result = model.load_state_dict(ckpt['model'], strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return ckpt


def train(a, model, splits, out):
    opt = make_optimizer(a, model)
    metrics_path, ckpt_path = os.path.join(out, 'metrics.jsonl'), os.path.join(out, 'checkpoint.pt')
    history, start, train_time, images_seen = [], 0, 0.0, 0
    if a.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(model, ckpt_path, a.device)
        opt.load_state_dict(ckpt['optimizer'])
        start, train_time, images_seen = ckpt['epoch'] + 1, ckpt['train_time_s'], ckpt['images_seen']
        with open(metrics_path) as f:
            history = [json.loads(line) for line in f if line.strip()][:start]
        print(f'resuming {out} after epoch {start}/{a.epochs}')
    with open(metrics_path, 'w') as f:  # drop lines of an epoch that ended after the last checkpoint
        f.writelines(json.dumps(h) + '\n' for h in history)

    steps_per_epoch = math.ceil(len(splits.train) / a.batch_size)
    total = a.epochs * steps_per_epoch
    eval_dl = lambda ds: loader(ds, a.batch_size, a)
    for epoch in range(start, a.epochs):
        torch.manual_seed(a.seed * 100_003 + epoch)  # dropout masks etc.: the same with and without a resume
        t0, loss_sum, correct, seen = time.time(), 0.0, 0, 0
        for m in model.modules():
            if hasattr(m, 'on_epoch_start'):  # label mappings (ILM, FLM, FreqMap): a pass over the training set
                m.on_epoch_start(model, eval_dl(splits.train), epoch)
        model.train()
        dl = loader(splits.train, a.batch_size, a, seed=a.seed * 100_003 + epoch)
        progress = Progress(len(dl), f'epoch {epoch + 1}/{a.epochs}')
        for i, (x, y) in enumerate(dl):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g['lr'] = g['base_lr'] * lr_factor(a.schedule_lr, step, total, steps_per_epoch)
            x, y = x.to(a.device, non_blocking=True), y.to(a.device, non_blocking=True)
            with autocast(a):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            progress.update(i + 1, seen, loss_sum / seen, 100.0 * correct / seen)
        train_time += time.time() - t0
        images_seen += seen
        row = dict(epoch=epoch, train_loss=loss_sum / seen, train_acc=100.0 * correct / seen,
                   lr=opt.param_groups[-1]['lr'], epoch_time_s=time.time() - t0)
        if splits.val is not None:
            row['val_acc'] = evaluate(model, eval_dl(splits.val), a)
        pop_stats(model)
        row['test_acc'] = evaluate(model, eval_dl(splits.test), a)
        row.update(pop_stats(model))  # method diagnostics on the test set (LoRSP spike rates, prompt density)
        history.append(row)
        print(f'epoch {epoch + 1}/{a.epochs}: ' + ' '.join(
            f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in row.items() if k != 'epoch'))
        with open(metrics_path, 'a') as f:
            f.write(json.dumps(row) + '\n')
        tmp = ckpt_path + '.tmp'
        torch.save(dict(epoch=epoch, model=trainable_state(model), optimizer=opt.state_dict(),
                        train_time_s=train_time, images_seen=images_seen), tmp)
        os.replace(tmp, ckpt_path)
    return history, train_time, images_seen


# ---- speed: training step and inference latency against the bare frozen backbone ----

def measure_speed(a, model, K, reps):
    """Seconds of one training step (forward + backward) and one evaluation forward, for the method and for the
    cost floor: the bare frozen backbone with the same head (training: backward to the input, as an input-space
    prompt needs). Timed alternately on one fixed batch, so both see the same machine load; the minimum over the
    repetitions is the least disturbed by other work on the machine."""
    x = torch.rand(min(a.batch_size, 32), 3, a.img_size, a.img_size, device=a.device)
    y = torch.randint(0, K, (len(x),), device=a.device)
    bare = create(a.model, pretrained=False, img_size=a.img_size, num_classes=0)
    floor = Adapted(backbone=bare, normalize=normalizer(bare), head=nn.Linear(bare.num_features, K)).to(a.device)
    floor.head.requires_grad_(False)
    infer = model
    if any(isinstance(m, baselines.LoRA) for m in model.modules()):  # LoRA is merged for inference
        infer = baselines.merge_lora(copy.deepcopy(model))

    def sync():
        if a.device.startswith('cuda'):
            torch.cuda.synchronize()

    def step(m, needs_input_grad):
        m.train()
        xx = x.clone().requires_grad_(needs_input_grad)
        with autocast(a):
            loss = F.cross_entropy(m(xx).float(), y)
        loss.backward()
        m.zero_grad(set_to_none=True)

    def forward(m):
        m.eval()
        with torch.no_grad(), autocast(a):
            m(x)

    jobs = {'step': lambda: step(model, False), 'floor_step': lambda: step(floor, True),
            'latency': lambda: forward(infer), 'floor_latency': lambda: forward(floor)}
    times = {k: [] for k in jobs}
    for rep in range(reps + 1):
        for k, job in jobs.items():
            sync()
            t0 = time.perf_counter()
            job()
            sync()
            if rep:  # the first round warms up
                times[k].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    return dict(step_ms=1e3 * best['step'], floor_step_ms=1e3 * best['floor_step'],
                step_ratio=best['step'] / best['floor_step'], latency_ms=1e3 * best['latency'] / len(x),
                floor_latency_ms=1e3 * best['floor_latency'] / len(x),
                latency_ratio=best['latency'] / best['floor_latency'], speed_batch=len(x))


# ---- main ----

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(parse(argv), argv)
    except (UsageError, data.DataError, BackboneError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2) from None


def run(a, argv):
    out = a.out or os.path.join('runs', f'{a.method}-{a.model}-{a.dataset}-{a.seed}')
    config_path, summary_path = os.path.join(out, 'config.json'), os.path.join(out, 'summary.json')
    if a.resume:
        if not os.path.exists(config_path):
            raise UsageError(f'no run to resume in {out!r} (no config.json); give --out the run directory')
        a = saved_args(out)
        a.resume, a.out = True, out
        if os.path.exists(summary_path):
            print(f'{out} has already finished; its summary:')
            with open(summary_path) as f:
                summary = json.load(f)
            print_summary(summary)
            return summary
    elif os.path.exists(config_path):
        raise UsageError(f'{out!r} already holds a run; continue it with --resume, or choose another --out')
    a = resolve(a)
    model = build(a)  # model errors before data loading
    splits = data.load(a.dataset, data_dir=a.data_dir, img_size=a.img_size, seed=a.seed,
                       train_per_class=a.train_per_class, test_limit=a.test_limit, val_split=a.val_split)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for m in model.attached:
        print('\n'.join(m.describe()))
    print(f'{a.method} on {a.model}: trainable {trainable:,} || backbone {model.backbone_params:,} || '
          f'{100 * trainable / model.backbone_params:.3f}%  ({len(splits.train)} train, '
          f'{len(splits.val) if splits.val else 0} val, {len(splits.test)} test images, {a.device})')
    os.makedirs(out, exist_ok=True)
    if not a.resume:
        with open(config_path, 'w') as f:
            json.dump(dict(args=vars(a), command='python train.py ' + ' '.join(argv), torch=torch.__version__,
                           timm=__import__('timm').__version__), f, indent=1)
    if a.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    history, train_time, images_seen = train(a, model, splits, out)

    summary = dict(method=a.method, model=a.model, dataset=a.dataset, seed=a.seed, epochs=a.epochs,
                   img_size=a.img_size, test_acc=history[-1]['test_acc'],
                   best_test_acc=max(h['test_acc'] for h in history),
                   best_test_acc_is="the max over epochs on the test set: LoR-VP's protocol, which selects on test")
    if splits.val is not None:
        best = max(range(len(history)), key=lambda i: (history[i]['val_acc'], -i))  # first epoch of the best val acc
        summary.update(val_acc=history[best]['val_acc'], val_selected_epoch=best + 1,
                       val_selected_test_acc=history[best]['test_acc'])
    summary.update(trainable_params=trainable, backbone_params=model.backbone_params, train_time_s=train_time,
                   train_images_per_s=images_seen / max(train_time, 1e-9),
                   peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9 if a.device.startswith('cuda') else None,
                   device=a.device if a.device == 'cpu' else torch.cuda.get_device_name(), torch=torch.__version__)
    if a.speed_reps > 0:
        summary.update(measure_speed(a, model, splits.num_classes, a.speed_reps))
    summary.update({k: v for k, v in history[-1].items() if k in ('prompt_density', 'spike_rate')})
    if a.save_prompts:
        images = torch.stack([splits.test[i][0] for i in range(min(a.save_prompts, len(splits.test)))])
        summary['figures'] = lorsp.save_figures(model.prompt, images.to(a.device), out)
    with open(summary_path, 'w') as f:
        json.dump(summary, f, indent=1)
    print_summary(summary)
    return summary


def print_summary(s):
    pct = 100 * s['trainable_params'] / s['backbone_params']
    lines = [f"== {s['method']} on {s['model']}, {s['dataset']} (seed {s['seed']}, {s['epochs']} epochs, "
             f"{s['img_size']} px, {s['device']}) ==",
             f"test acc, final epoch              {s['test_acc']:.2f}%",
             f"best test acc over epochs          {s['best_test_acc']:.2f}%  (LoR-VP's protocol: selects on test)"]
    if 'val_selected_test_acc' in s:
        lines.append(f"test acc at best val epoch ({s['val_selected_epoch']})      {s['val_selected_test_acc']:.2f}%")
    lines += [f"trainable params                   {s['trainable_params']:,} ({pct:.3f}% of the backbone's "
              f"{s['backbone_params']:,})",
              f"train time                         {s['train_time_s']:.1f} s, {s['train_images_per_s']:.1f} images/s"]
    if 'latency_ms' in s:
        lines += [f"latency                            {s['latency_ms']:.3f} ms/image (x{s['latency_ratio']:.3f} the "
                  f"bare backbone)",
                  f"training step                      {s['step_ms']:.1f} ms (x{s['step_ratio']:.3f} the bare "
                  f"backbone's forward + backward to the input), batch {s['speed_batch']}"]
    lines.append(f"peak GPU memory                    "
                 f"{'%.2f GB' % s['peak_mem_gb'] if s['peak_mem_gb'] is not None else '- (cpu)'}")
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
