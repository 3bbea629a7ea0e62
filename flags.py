"""train.py's command line: every flag with its type and range (a NaN, an infinity or a value out of range is refused
by name), its help, which flags may change on --resume, and resolve(): the defaults a run actually uses.

    a = resolve(parse(['--method', 'lorvp', '--lr', '0.01']))  # the recipe, the method's defaults, device, precision
"""
import argparse
import hashlib
import json
import math
import os
import re

import torch

import backbones
import data
import lorsp
import lotep
from methods import INPUT_PROMPTS, LABEL_MAPS, METHODS, OPTIMIZERS, resolve_defaults

RESUMABLE = ('device', 'workers', 'data_dir', 'grad_checkpointing')  # may differ on --resume: where it runs, its
#   data lies, how much memory its step holds
LR_SCHEDULES = ('cosine', 'cosine_epoch', 'multistep', 'warmup_cosine', 'constant')  # train.lr_factor's


def number(cast, lo=-math.inf, hi=math.inf, *, lo_open=False, hi_open=False):
    """An argparse type: a finite int or float in the interval [lo, hi] (open ends where asked)."""
    interval = f'{"(" if lo_open else "["}{lo:g}, {hi:g}{")" if hi_open else "]"}'

    def check(text):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not {"an integer" if cast is int else "a number"}')
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            raise argparse.ArgumentTypeError(f'{text} is not a finite number in {interval}')
        return v
    return check


POS_INT, NONNEG_INT, POS, NONNEG = number(int, 1), number(int, 0), number(float, 0, lo_open=True), number(float, 0)
FRACTION = number(float, 0, 1, hi_open=True)


def dataset_name(text):
    try:
        data.check_name(text)
    except data.DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def device_name(text):
    if not re.fullmatch(r'auto|cpu|mps|cuda(:\d+)?', text):
        raise argparse.ArgumentTypeError(f'{text!r} is not a device: auto, cpu, cuda, cuda:N or mps')
    return text


class HelpFormatter(argparse.RawTextHelpFormatter):
    """--help shows every flag's default; a flag the run resolves (the recipe, the device) says how in its help."""

    def _get_help_string(self, action):
        shown = action.help or ''
        if 'default' not in shown and action.option_strings and action.default not in (None, argparse.SUPPRESS) \
                and action.default is not False:
            shown += ' (default: %(default)s)'
        return shown


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='train.py', description='Train one method on a frozen timm backbone.',
                                formatter_class=HelpFormatter, epilog=f'--resume takes the saved flags; of the others, '
                                f'only {", ".join(flag(k) for k in RESUMABLE)} may change.')
    p.add_argument('--method', choices=sorted(METHODS), metavar='METHOD', help='required unless --resume:\n' +
                   '\n'.join(f'  {k:<14} {row.help}' for k, row in METHODS.items()))
    p.add_argument('--model', default='resnet18', help='a timm model name, or name.tag; without a tag, the papers\' '
                                                       'weights (backbones.PAPER_TAGS), e.g. resnet18.tv_in1k')
    p.add_argument('--dataset', default='cifar100', type=dataset_name, metavar='DATASET',
                   help=f'{", ".join(n for n in sorted(data.NUM_CLASSES) if n not in data.TEST_SETS)}; folder (your '
                        f'images: --data-dir/train/<class>/*, test/<class>/*, val/<class>/* if any); vtab-1k:<task>, '
                        f'fgvc:<task> (docs/usage.md)')
    p.add_argument('--data-dir', default='data', help='where data sets are read or downloaded (default ./data)')
    p.add_argument('--splits', choices=['final', 'tune'], help='vtab-1k (default final): train800val200 and test.txt, '
                   'or train800 and val200; fgvc (default tune, VPT\'s): train.json, val.json each epoch, test.json, '
                   'or train + val')
    p.add_argument('--img-size', type=POS_INT, default=224, help='image side in pixels (training and evaluation)')
    p.add_argument('--epochs', type=POS_INT, help='default: the method recipe (20 for the LoR-VP family)')
    p.add_argument('--batch-size', type=POS_INT, help='global batch (default: the recipe, 256 for the LoR-VP family)')
    p.add_argument('--lr', type=POS, help='default: the method recipe (0.02 for the LoR-VP family)')
    p.add_argument('--prompt-lr', type=POS, help='lr of everything but the head (default: --lr; evp: 70 S / 224)')
    p.add_argument('--wd', type=NONNEG, help='weight decay (default: the recipe, 1e-4 for the LoR-VP family)')
    p.add_argument('--lr-scale', type=POS, default=1.0, help='multiplies --lr and --prompt-lr (a tuning grid)')
    p.add_argument('--optimizer', choices=OPTIMIZERS, help='default: the method recipe')
    p.add_argument('--schedule-lr', choices=LR_SCHEDULES, help='lr schedule, per step (default: the method recipe)')
    p.add_argument('--warmup-epochs', type=NONNEG, help='warmup_cosine: epochs of linear warmup (default 10%% of '
                                                        '--epochs: VPT\'s 10 of 100)')
    p.add_argument('--seed', type=NONNEG_INT, default=0, help='seeds the subset, split, batch order, init')
    p.add_argument('--train-per-class', type=POS_INT, help='this many training images per class (default: all)')
    p.add_argument('--test-limit', type=POS_INT, help='N test images spread over the classes, the same for every '
                                                      'seed (default: all)')
    p.add_argument('--val-split', type=FRACTION, default=0.0, help='fraction of training images held out for selection')
    p.add_argument('--no-test', action='store_true', help='evaluate no test image (a tuning run: --val-split selects)')
    p.add_argument('--test-every', type=POS_INT, default=1, help='evaluate the test set every N epochs and after the '
                                                                 'last (default 1; large test sets, e.g. VTAB-1k\'s)')
    p.add_argument('--weights', help='a local checkpoint for --model, all of its backbone or the run stops (timm\'s or '
                                     'lukemelas\' naming, .safetensors; default: the tag\'s weights, from timm)')
    p.add_argument('--no-pretrained', action='store_true', help='random backbone weights, on purpose')
    p.add_argument('--precision', choices=['fp32', 'bf16'], help='bf16 autocast or fp32 (default: bf16 on CUDA, fp32 '
                                                                 'on a CPU, whatever its instructions)')
    p.add_argument('--compile', action='store_true', help='torch.compile the LoRSP prompt (docs/speed.md)')
    p.add_argument('--channels-last', action='store_true', help='the backbone and its input in channels-last memory '
                   'order: faster convolutions (1.4x a Lite0 step on a CPU), the same maths (docs/speed.md)')
    p.add_argument('--grad-checkpointing', action='store_true', help='the frozen backbone\'s blocks recompute their '
                   'activations in backward: less memory, a slower step, the same gradients (docs/speed.md)')
    p.add_argument('--device', type=device_name, default='auto', help='auto (cuda if there is one), cpu, cuda:N')
    p.add_argument('--workers', type=NONNEG_INT, help='DataLoader workers (default 0 on cpu; on cuda 8, or '
                   'one fewer than this process\'s share of the CPUs where that is less)')
    p.add_argument('--out', help='run directory (default: runs/<method>-<model>-<dataset>-s<seed>-<hash of the '
                                  'settings and the data>, printed when the run starts)')
    p.add_argument('--resume', action='store_true', help='continue the run in --out (or the same command\'s default '
                   'folder) from its last saved epoch')
    g = p.add_argument_group('prompt shapes (LoTeP, grouped VP, LoR-VP, LoRSP)')
    g.add_argument('--rank', type=POS_INT, help='r0 of LoTeP (default 6); r of LoR-VP, grouped VP, LoRSP (default 4)')
    g.add_argument('--rho', type=number(float, 0, 1, lo_open=True), help='deep prompts: d = floor(L rho) (default by '
                   'backbone family, methods.DEEP_RHO: 0.5 ResNet and EfficientNet, 0.25 Swin, 1/3 the others)')
    g.add_argument('--schedule', default='cosine', choices=lotep.SCHEDULES, help='LoTeP\'s rank schedule over the '
                   'prompted blocks (not the lr: --schedule-lr): LoTeP Eq. (8) as printed; cosine_den_d fits its '
                   'Table 4\'s counts')
    g.add_argument('--vit-layout', default='patches', choices=lotep.VIT_LAYOUTS, help='ViT deep prompts: on the '
                   'patch grid or the token sequence (docs/lotep.md)')
    g.add_argument('--init-std', type=POS, help='std of the prompt\'s random factor: LoTeP\'s spatial factors, '
                                                'LoR-VP\'s and grouped VP\'s A, LoRSP\'s W, VPT\'s tokens (default: '
                                                'per method)')
    g.add_argument('--core-init', default='identity', choices=lotep.CORE_INITS, help='LoTeP-TK core init')
    g.add_argument('--input-prompt', default='none', choices=INPUT_PROMPTS,
                   help='LoTeP: also a pixel prompt (docs/lotep.md): LoR-VP r = 4, or CP of rank --rank')
    g.add_argument('--groups', type=POS_INT, help='grouped_lorvp: channel groups g (default 8)')
    g = p.add_argument_group('LoRSP')
    g.add_argument('--factors', type=POS_INT, default=4, help='n prompt factors = LIF time steps')
    g.add_argument('--tau', type=number(float, 1, lo_open=True), default=4.0, help='LIF time constant tau > 1 (LoRSP Eq. 6)')
    g.add_argument('--v-th', type=number(float), default=0.0, help='LIF threshold V_th (LoRSP Eq. 7)')
    g.add_argument('--v-reset', type=number(float), default=0.0, help='LIF reset V_reset (LoRSP Eq. 8)')
    g.add_argument('--sparsity', type=FRACTION, default=0.5, help='lorsp_topk / lorsp_dropout: fraction zeroed')
    g.add_argument('--eq9', default='mean', choices=['mean', *lorsp.EQ9], help='LoRSP Eq. (9), how the spikes gate the '
                   'factors: mean (the method: (1/n) sum_t S_t P_t) or another reading of the equation: sum, last, '
                   'rate, membrane (lorsp.EQ9, docs/lorsp.md)')
    g.add_argument('--orientation', default='cols', choices=lorsp.ORIENTATIONS, help='LoRSP Eq. (5): P = B A^T (cols) or '
                   'its transpose')
    g.add_argument('--surrogate', default='sigmoid', choices=lorsp.SURROGATES, help='the spike\'s surrogate gradient')
    g.add_argument('--save-prompts', type=NONNEG_INT, default=0, help='K: PNGs of K test prompts, factor correlations')
    g = p.add_argument_group('baselines')
    g.add_argument('--label-map', choices=LABEL_MAPS, help='head: lp (linear probe, default), fm (linear on source '
                   'logits, autovp\'s), ilm (greedy mapping every epoch, ilm_vp\'s), flm (once, flm_vp\'s), freq / '
                   'iter (k sources each), mode (each class its most frequent source prediction: EVP\'s non-CLIP head)')
    g.add_argument('--map-k', type=POS_INT, default=1, help='freq / iter: source classes per target')
    g.add_argument('--map-interval', type=POS_INT, default=1, help='iter: recompute every N epochs')
    g.add_argument('--image-scale', type=number(float, 0, 1, lo_open=True, hi_open=True), help='border prompts: '
                   'shrunk image side / canvas side (ILM-VP at CIFAR\'s 32 px in 224: 0.143; default: per method)')
    g.add_argument('--prompt-tokens', type=POS_INT, default=10, help='vpt_deep: tokens per block')
    g.add_argument('--lora-rank', type=POS_INT, default=8, help='LoRA rank r')
    g.add_argument('--lora-alpha', type=POS, default=8.0, help='LoRA alpha (the update is scaled by alpha / r)')
    g.add_argument('--lora-targets', help='comma list of layer names to adapt (default: every conv and linear); '
                                          'q, k, v adapt those slices of a fused qkv')
    return p


def parse(argv):
    return parser().parse_args(argv)


WHERE = ('device', 'workers', 'data_dir', 'out', 'resume')  # where and how a run runs, not what it computes
MEMORY = ('grad_checkpointing',)  # the same gradients with less memory: not part of what a run computes either


def settings(a) -> str:
    """What a run computes, as text: its resolved arguments less WHERE and MEMORY."""
    return json.dumps({k: v for k, v in sorted(vars(a).items()) if k not in WHERE + MEMORY}, default=str)


def default_out(a, data: str) -> str:
    """runs/<method>-<model>-<dataset>-s<seed>-<8 hex digits of its identity: its settings and its data's fingerprint
    (data.Splits.fingerprint)>: runs whose settings or data differ never share a folder, and the same command on the
    same data finds its own run again, wherever the data lies."""
    tag = hashlib.sha256((settings(a) + data).encode()).hexdigest()[:8]
    return os.path.join('runs', f'{a.method}-{a.model}-{a.dataset.replace(":", "-")}-s{a.seed}-{tag}')


def same_run(a, config: dict) -> bool:
    """Whether a run folder's config.json holds the settings the resolved arguments a compute (its data is checked
    beside it: config['data'], the fingerprint train.py's set-up compares)."""
    return json.loads(settings(a)) == json.loads(settings(saved_args(config['args'])))


def not_used(a, argv, config: dict) -> list:
    """The flags given in argv that change how a run runs, not what it computes (WHERE, MEMORY), whose values differ
    from those a finished run in config was made with: they change nothing it computed."""
    saved = saved_args(config['args'])
    differ = [k for k in sorted(given_flags(argv)) if k in RESUMABLE and k != 'data_dir' and getattr(a, k) != getattr(
        saved, k)]
    return [flag(k) + ('' if isinstance(getattr(a, k), bool) else f' {getattr(a, k)}') for k in differ]


def resumed_args(a, argv, run) -> argparse.Namespace:
    """--resume: the saved arguments of the run in `run` (a RunDir), with the RESUMABLE flags given on the command
    line; any other flag given must equal the saved one."""
    if not run.exists('config.json'):
        raise UsageError(f'--resume: no run to resume in {run.path} (no config.json); give --out the run directory, '
                         f'or the flags the run was started with')
    saved, given = saved_args(run.read_json('config.json')['args']), given_flags(argv) - {'resume', 'out'}
    a.model, a.data_dir = backbones.resolve_name(a.model), os.path.abspath(a.data_dir)  # as saved
    differ = [f'{flag(k)} {getattr(a, k)} (saved: {getattr(saved, k)})' for k in sorted(given)
              if k not in RESUMABLE and getattr(a, k) != getattr(saved, k)]
    if differ:
        raise UsageError(f'--resume continues {run.path} with its saved flags; these differ: {"; ".join(differ)}. '
                         f'Only {", ".join(flag(k) for k in RESUMABLE)} may change')
    vars(saved).update({k: getattr(a, k) for k in given if k in RESUMABLE}, resume=True, out=run.path)
    return saved


def flag(dest) -> str:
    return '--' + dest.replace('_', '-')


def given_flags(argv) -> set:
    """The destinations of the flags written on the command line (not left at their defaults)."""
    p = parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def saved_args(saved: dict) -> argparse.Namespace:
    """The arguments a run was started with (the 'args' of its config.json), over today's defaults."""
    a = parse(['--method', saved['method']])
    vars(a).update(saved)
    if a.schedule_lr != 'warmup_cosine':
        a.warmup_epochs = None  # runs made before 2026-12 kept VPT's default under every schedule; it was never read
    return a


class UsageError(Exception):
    pass


def cpus_per_process():
    """The CPUs this process may run on (a Slurm job's, taskset's), shared by the processes torchrun started here."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return max(1, cpus // int(os.environ.get('LOCAL_WORLD_SIZE', '1')))


def resolve(a):
    """Fill the method's recipe and defaults, the weights' tag, device and precision. Nothing is built or written."""
    if a.method is None:
        raise UsageError(f'--method is required; choose one of: {", ".join(sorted(METHODS))}')
    a.model = backbones.resolve_name(a.model)
    resolve_defaults(a)
    a.data_dir = os.path.abspath(a.data_dir)  # a resumed run reads the same data from any working directory
    if a.warmup_epochs is not None and a.schedule_lr != 'warmup_cosine':
        raise UsageError(f'--warmup-epochs: the lr schedule {a.schedule_lr} has no warmup; add --schedule-lr '
                         f'warmup_cosine, or leave --warmup-epochs out')
    if a.warmup_epochs is not None and a.warmup_epochs > a.epochs:
        raise UsageError(f'--warmup-epochs {a.warmup_epochs:g} is longer than the run\'s {a.epochs} epochs: the lr '
                         f'would never reach its base; give at most {a.epochs}')
    if a.warmup_epochs is None and a.schedule_lr == 'warmup_cosine':
        a.warmup_epochs = 0.1 * a.epochs
    if a.device == 'auto':
        a.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    elif a.device.startswith('cuda') and not torch.cuda.is_available():
        raise UsageError(f'--device {a.device}: torch sees no CUDA device here; use --device cpu')
    if a.precision is None:  # the same command gives the same run on every CPU; bf16 on a CPU by asking for it
        a.precision = 'bf16' if a.device.startswith('cuda') else 'fp32'
    if a.workers is None:  # on CUDA 8, fewer where this process's share of the CPUs (Slurm's, torchrun's) is smaller
        a.workers = min(8, max(1, cpus_per_process() - 1)) if a.device.startswith('cuda') else 0
    if a.splits is None:  # FGVC as VPT runs it: train on train.json, choose the epoch on val.json, report test.json
        a.splits = 'tune' if a.dataset.startswith('fgvc:') else 'final'
    return a
