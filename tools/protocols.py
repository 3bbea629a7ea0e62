"""The comparison protocols: what each one runs (data, model, scale, arms, seeds, the tuning grid, the claims it tests).
compare.py runs them; this file is what a reader looks up.

    python tools/compare.py --list                                  # every protocol, its arms and settings
    PROTOCOLS['offline-cifar10-long'].claims                  # (arm a, arm b, the paper's gain of a over b, the paper)

A protocol's settings are train.py flags of every run (True: a flag without a value); an arm is a method, or a method
with flags of its own. Tuning runs train at seed 0 on 90% of the training images and are selected on the other 10%;
final runs use the protocol's seeds. After the protocols, what a comparison of some of a protocol's arms runs (Plan)
and how it becomes train.py runs: train_argv (one run's flags), identity (what a run computes), grid (the configurations
an arm tries), choice (the one it keeps) and grown (the grid extended where a choice lies on its edge).
"""
import re
from dataclasses import dataclass, field

from formats.vtab import TASKS as VTAB_1K
from flags import MEMORY, parse, resolve

DATA = 'data'  # train.py's default --data-dir: cifar10.npz or torchvision's layout there, else downloaded there;
#                a comparison reads its data from anywhere with --data-dir (where the data lies is not a setting)
TUNE_FLAGS = ('--val-split', '0.1', '--no-test')  # what makes a run a tuning run: validation images, no test image


@dataclass(frozen=True)
class Protocol:
    about: str
    settings: dict  # train.py flags of every run (--key: value; True: the flag alone)
    arms: dict  # arm name -> its train.py flags (the method, and any flags of its own)
    seeds: tuple  # of the final runs
    tune: dict = field(default_factory=dict)  # the grid tried on a validation split at seed 0: 'lr' multipliers,
    # 'init' multipliers of the method's init std, or 'init_std' values; 'epochs' of the tuning runs if fewer
    tuned_arms: tuple = None  # the arms tuned (default: all)
    tuned_like: dict = field(default_factory=dict)  # an ablation arm -> the arm whose tuned flags it takes
    claims: tuple = ()  # (arm a, arm b, the paper's claimed gain of a over b or None, what the paper says)
    final_flags: tuple = ()  # flags of the final runs only (a validation split for the val-selected accuracy)
    claim_seeds: tuple = ()  # more seeds for the arms of the claims (default: seeds)
    extend: dict = field(default_factory=dict)  # axis -> its longer progression: when an arm's choice lies on an
    # edge of the grid, the axis grows by the next value of the progression, for every arm, until none does
    tune_flags: tuple = TUNE_FLAGS  # what makes a run a tuning run (vtab-1k: its own val200 split)
    tasks: tuple = ()  # a multi-task protocol: each task a data set of its own (vtab-1k:<task>), then their means
    test_sets: tuple = ()  # test sets each final run's prompt file is evaluated on, unchanged (predict.py)
    paper: tuple = ()  # (the paper's row label, {column: its figure}) shown beside the table, labelled as theirs

    def seeds_of(self, arm):
        in_claims = any(arm in claim[:2] for claim in self.claims)
        return self.claim_seeds if in_claims and self.claim_seeds else self.seeds

    def flags_of(self, arm):
        """An arm's train.py flags: the protocol's, or those of a method it does not list (--methods)."""
        return self.arms.get(arm, ['--method', arm])


def shifted(in1k, r, sketch, a, v2, avg=None):
    """A paper's row of its out-of-distribution table, in its column order (ImageNet-1K, R, Sketch, A, V2, the
    average of the four where it prints one), keyed by data set."""
    return {'imagenet': in1k, 'imagenet-r': r, 'imagenet-sketch': sketch, 'imagenet-a': a, 'imagenet-v2': v2,
            **({'avg': avg} if avg is not None else {})}


def methods(*names):
    return {m: ['--method', m] for m in names}


def sweep(method, flag, values, label=None):
    return {f'{method} {label or flag.lstrip("-")}={v}': ['--method', method, flag, str(v)] for v in values}


# how far a grid may grow (multiples of the recipe's lr and of the method's init std), one step at a time while an arm's
# choice lies on its edge: up to x100 on both axes (LoR-VP's official code offers A ~ N(0, 1), x100 its 0.01)
EXTEND = {'lr': (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100), 'init': (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100)}
CIFAR = dict(model='tf_efficientnet_lite0', dataset='cifar10', data_dir=DATA)
SHORT = dict(**CIFAR, train_per_class=200, test_limit=2000, img_size=96, epochs=6, batch_size=32, precision='bf16')
SHIFTS = ('imagenet-r', 'imagenet-sketch', 'imagenet-a', 'imagenet-v2')  # the papers' column order
LONG_ARMS = ['lp', 'lora', 'lorvp', 'evp', 'ilm_vp', 'autovp', 'lotep_cp', 'lotep_tk', 'grouped_lorvp', 'deep_lorvp',
             'lorsp', 'lorsp_lpf']
PROTOCOLS = {
    'offline-cifar10': Protocol(
        'Lite0, CIFAR-10 500/class, 128 px, 2 epochs, fp32: each method\'s recipe, its lr untuned; the deep '
        'prompts\' init std selected on validation (one grid, 1-epoch runs)',
        dict(**CIFAR, train_per_class=500, test_limit=2000, img_size=128, epochs=2, batch_size=32, precision='fp32'),
        methods('lp', 'ft', 'lora', 'lorvp', 'ilm_vp', 'autovp', 'evp', 'lotep_cp', 'lotep_tk', 'grouped_lorvp',
                'deep_lorvp', 'lorsp', 'lorsp_lpf'), (0, 1, 2),
        tune={'init_std': (1.0, 0.3, 0.1, 0.01), 'epochs': 1},  # the deep prompts' init: one grid, one budget
        tuned_arms=('lotep_cp', 'lotep_tk', 'grouped_lorvp', 'deep_lorvp')),
    'offline-cifar10-long': Protocol(
        'Lite0, CIFAR-10 200/class, 96 px, 8 epochs, fp32, channels-last; lr x init scale tuned per method on a '
        'validation split in runs as long as the final ones (the same grid for every method; a choice on an edge of '
        'the grid extends that axis for every arm); the ablation arms (top-k, dropout, constant rank) take the choice '
        'of the method they ablate; final runs hold out the same 10% for the val-selected accuracy, 5 seeds for the '
        'arms of the claims and 3 for the others, none of them the tuning seed 0',
        dict(**CIFAR, train_per_class=200, test_limit=2000, img_size=96, epochs=8, batch_size=32, precision='fp32',
             channels_last=True),
        {**methods(*LONG_ARMS, 'lorsp_topk', 'lorsp_dropout'),
         'lotep_cp-constant': ['--method', 'lotep_cp', '--schedule', 'constant'],
         'evp-mode': ['--method', 'evp', '--label-map', 'mode']}, (1, 2, 3),
        tune={'lr': (0.3, 1, 3), 'init': (0.3, 1, 3)}, tuned_arms=(*LONG_ARMS, 'evp-mode'),
        extend=EXTEND,
        final_flags=('--val-split', '0.1'), claim_seeds=(1, 2, 3, 4, 5),
        tuned_like={'lorsp_topk': 'lorsp', 'lorsp_dropout': 'lorsp', 'lotep_cp-constant': 'lotep_cp'},
        claims=(('lotep_cp', 'lorvp', 2.5, 'LoTeP: +2.5 over LoR-VP on average'),
                ('lotep_tk', 'lorvp', 2.5, 'LoTeP: +2.5 over LoR-VP on average'),
                ('lorsp', 'lorvp', 1.24, 'LoRSP: +1.24 over LoR-VP (Table III average)'),
                ('lorsp', 'lorsp_lpf', None, 'LoRSP over its LPF ablation (Table V)'),
                ('lorsp', 'lorsp_topk', None, 'LoRSP over top-k sparsification (Table VI)'),
                ('lorsp', 'lorsp_dropout', None, 'LoRSP over random dropout (Table VI)'),
                ('lorvp', 'lp', None, 'LoR-VP over the linear probe (both papers\' tables)'),
                ('lotep_cp', 'lp', None, 'LoTeP-CP over the linear probe (LoTeP\'s tables)'),
                ('lotep_tk', 'lp', None, 'LoTeP-TK over the linear probe (LoTeP\'s tables)'),
                ('lorsp', 'lp', None, 'LoRSP over the linear probe (LoRSP\'s tables)'),
                ('lotep_cp', 'lotep_cp-constant', None, 'LoTeP\'s cosine rank decay over a constant rank (Fig. 4c)'))),
    'vtab-1k': Protocol(
        'VTAB-1k: 19 tasks of 1,000 training images (train800 + val200), ViT-B/16 pretrained on ImageNet-21K '
        '(Google\'s original weights, as VPT), 224 px, 100 epochs, batch 64, bf16, on a GPU; per task every method '
        'gets the long protocol\'s grid (lr x init scale, an edge extended for every arm), trained on train800 and '
        'selected on val200 at its final epoch, then 3 seeds trained on train800val200 and tested on test.txt after '
        'their last epoch (test sets of up to 73K images: testing every epoch would cost more than training)',
        dict(model='vit_base_patch16_224.orig_in21k', data_dir='data/vtab-1k', img_size=224, epochs=100,
             batch_size=64, precision='bf16'),
        {**methods('lp', 'vpt_deep', 'lorvp', 'lotep_cp', 'lotep_tk', 'lorsp'),
         'lora': ['--method', 'lora', '--lora-targets', 'q,v']}, (0, 1, 2),
        tune={'lr': (0.3, 1, 3), 'init': (0.3, 1, 3)},
        extend=EXTEND,
        tune_flags=('--splits', 'tune', '--no-test'), tasks=tuple(VTAB_1K), final_flags=('--test-every', '1000'),
        claims=(('lotep_cp', 'lorvp', 2.5, 'LoTeP: +2.5 over LoR-VP on average'),
                ('lotep_tk', 'lorvp', 2.5, 'LoTeP: +2.5 over LoR-VP on average'),
                ('lorsp', 'lorvp', 1.24, 'LoRSP: +1.24 over LoR-VP'),
                ('lotep_cp', 'vpt_deep', None, 'LoTeP over VPT-Deep'),
                ('lorsp', 'vpt_deep', None, 'LoRSP over VPT-Deep'),
                ('lorvp', 'lp', None, 'LoR-VP over the linear probe'))),
    'ood-lotep': Protocol(
        'LoTeP Table 3: ConvNeXt-B pretrained on ImageNet-21K, prompted on ImageNet-1K (224 px, 20 epochs as LoRSP '
        'states for all its runs, batch 256, bf16, on GPUs), each prompt file then tested unchanged on ImageNet-R, '
        '-Sketch, -A and -V2 (R and A scored over their 200 classes)',
        dict(model='convnext_base', dataset='imagenet', data_dir='data/imagenet', img_size=224, epochs=20,
             batch_size=256, precision='bf16'),
        methods('lp', 'autovp', 'lorvp', 'lotep_cp', 'lotep_tk'), (0,), test_sets=SHIFTS,
        paper=(('LP', shifted(84.61, 58.56, 45.84, 38.03, 74.32)),
               ('AutoVP', shifted(78.75, 45.71, 34.16, 22.99, 66.94)),
               ('LoR-VP', shifted(84.66, 58.88, 46.22, 39.36, 74.65)),
               ('LoTeP-CP', shifted(84.75, 59.77, 46.76, 43.57, 74.78)),
               ('LoTeP-TK', shifted(84.83, 59.61, 46.15, 44.41, 74.73)))),
    'ood-lorsp': Protocol(
        'LoRSP Table IV: ViT-B/32 (ImageNet-21K, fine-tuned on 1K), prompted on ImageNet-1K (224 px, 20 epochs, batch '
        '256, bf16, on GPUs), LoRSP with (n, r) = (2, 2), 2.24K prompt parameters; each prompt file then tested '
        'unchanged on ImageNet-R, -Sketch, -A and -V2 (R and A scored over their 200 classes)',
        dict(model='vit_base_patch32_224', dataset='imagenet', data_dir='data/imagenet', img_size=224, epochs=20,
             batch_size=256, precision='bf16'),
        {**methods('lp', 'evp', 'lorvp'), 'lorsp': ['--method', 'lorsp', '--factors', '2', '--rank', '2']}, (0,),
        test_sets=SHIFTS,
        paper=(('LP', shifted(77.69, 32.06, 34.18, 19.29, 64.57, 37.53)),
               ('EVP', shifted(77.85, 32.56, 34.19, 20.04, 65.11, 37.98)),
               ('LoR-VP', shifted(77.89, 32.23, 34.02, 19.96, 65.15, 37.84)),
               ('LoRSP', shifted(78.78, 32.86, 35.67, 20.61, 65.74, 38.72)))),
    'offline-tiny': Protocol(
        'Lite0, Tiny-ImageNet subset 100/class, 64 px, 2 epochs, fp32; lr tuned on validation (x0.03, x0.1, x1)',
        dict(model='tf_efficientnet_lite0', dataset='tiny-imagenet', data_dir=DATA, train_per_class=100,
             img_size=64, epochs=2, batch_size=32, precision='fp32'),
        methods('lp', 'lorvp', 'lotep_cp', 'lotep_tk', 'lorsp'), (0,), tune={'lr': (0.03, 0.1, 1)}),
    'paper': Protocol(
        'Tables 1-2 of both papers: ViT-B/16, 224 px, 20 epochs, batch 256 (a GPU and network)',
        dict(model='vit_base_patch16_224', dataset='tiny-imagenet', data_dir='data', img_size=224, epochs=20,
             batch_size=256), methods('lp', 'lorvp', 'lotep_cp', 'lotep_tk', 'lorsp'), (0,)),
    'ablation-lotep-rho': Protocol('LoTeP Fig. 4b: the prompting depth ratio rho (LoTeP-TK)', SHORT,
                                   sweep('lotep_tk', '--rho', (0.25, 0.5, 0.75, 1.0)), (0,)),
    'ablation-lotep-schedule': Protocol(
        'LoTeP Fig. 4c: constant, linear and cosine rank schedules', SHORT,
        {**sweep('lotep_cp', '--schedule', ('constant', 'linear', 'cosine')),
         **sweep('lotep_tk', '--schedule', ('constant', 'linear', 'cosine'))}, (0,)),
    'ablation-lotep-r0': Protocol('LoTeP Fig. 4a (right): the initial rank r0 (LoTeP-CP)', SHORT,
                                  sweep('lotep_cp', '--rank', (1, 2, 4, 6, 8), 'r0'), (0,)),
    'ablation-grouped-g': Protocol(
        'Grouped VP (Fig. 2): g channel groups, from one shared map to g = C (deep LoR-VP)', SHORT,
        {**sweep('grouped_lorvp', '--groups', (1, 2, 4, 8, 16), 'g'), 'deep_lorvp (g=C)': ['--method', 'deep_lorvp']},
        (0,)),
    'ablation-lorsp-nr': Protocol(
        'LoRSP Fig. 3a: factors n at r = 4, rank r at n = 4 (parameters L r (c + n))', SHORT,
        {**{f'lorsp n={n}': ['--method', 'lorsp', '--factors', str(n)] for n in (1, 2, 4, 8)},
         **{f'lorsp r={r}': ['--method', 'lorsp', '--rank', str(r)] for r in (1, 2, 8)}}, (0,)),
    'ablation-lorsp-tau': Protocol('LoRSP Fig. 4: the leak factor tau', SHORT,
                                   sweep('lorsp', '--tau', (1.5, 2.0, 4.0, 8.0)), (0,)),
    'ablation-lorsp-sparsifier': Protocol(
        'LoRSP Table VI: LIF against LPF, top-k and dropout at equal parameters', SHORT,
        {**methods('lorsp', 'lorsp_lpf'), **sweep('lorsp_topk', '--sparsity', (0.2, 0.5, 0.8)),
         **sweep('lorsp_dropout', '--sparsity', (0.2, 0.5, 0.8))}, (0,)),
}
AUTOVP_SEARCH = {'label_map': ('fm', 'freq', 'iter'), 'image_scale': (128 / 224, 160 / 224, 192 / 224)}


# ---- a comparison of some of a protocol's arms ----

@dataclass(kw_only=True)
class Plan:
    """What a comparison runs, beside its name, settings and runs folder (one per task of a multi-task protocol), and
    how: runs side by side (jobs), none started (report), the rounds of bench.py (bench_reps), the changes it says."""
    protocol: Protocol
    arms: list
    arm_flags: dict  # arm -> its flags
    tuned_arms: dict  # arm -> its flags, for the arms tuned (and those whose choice an ablation among arms takes)
    tune: dict  # the grid (empty: no tuning)
    extend: dict  # the progression of each axis the grid may grow along
    arm_seeds: dict  # arm -> the seeds of its final runs
    extra: list
    jobs: int
    report: bool
    bench_reps: int
    changes: list
    test_sets_dir: str = DATA  # where the protocol's test sets lie: <test_sets_dir>/<set>/ (compare.py --test-sets-dir)
    launcher: object = None  # tools/cluster.py's Launcher of each run's job (None: child processes here)
    how_flags: tuple = ()  # HOW flags of every run (compare.py --grad-checkpointing)


def plan(protocol, arms, *, seeds=None, tune_lr=None, no_tune=False, **how):
    """The Plan of a comparison of arms (protocol's or methods'): seeds for every arm (default: the protocol's), the
    lr multipliers tuned (default: the protocol's, its grid extended; given: these alone), no tuning at all."""
    wanted = set(arms) | {protocol.tuned_like[arm] for arm in arms if arm in protocol.tuned_like}
    tuned_arms = {arm: protocol.flags_of(arm) for arm in [*protocol.arms, *arms]
                  if arm in wanted and (protocol.tuned_arms is None or arm in protocol.tuned_arms)}
    tune = {} if no_tune else {**protocol.tune, **({'lr': tuple(tune_lr)} if tune_lr else {})}
    return Plan(protocol=protocol, arms=arms, arm_flags={arm: protocol.flags_of(arm) for arm in arms},
                tuned_arms=tuned_arms, tune=tune, extend=protocol.extend if not tune_lr else {},
                arm_seeds={arm: seeds or list(protocol.seeds_of(arm)) for arm in arms}, **how)


# ---- a protocol's runs as train.py flags: the settings, an arm's tuning grid, its choice, where the grid grows ----

def flag(key):
    """A setting's train.py flag: 'data_dir' -> '--data-dir'."""
    return '--' + key.replace('_', '-')


WHERE = ('out', 'data_dir')  # where a run and its data lie: a runs folder moves, the data is read from anywhere
HOW = tuple(flag(k) for k in MEMORY)  # how a run runs, not what it computes: --grad-checkpointing


def identity(command):
    """What a run computes: its train.py command less the WHERE flags (--out, --data-dir; a value runs to the next
    flag) and the HOW flags."""
    command = re.sub(f' (?:{"|".join(flag(k) for k in WHERE)}) .*?(?= --|$)', '', command)
    return re.sub(f' (?:{"|".join(HOW)})(?= --|$)', '', command)


def train_argv(settings, arm_flags, seed, out, extra=(), how=()):
    """train.py's arguments: the protocol's settings, then the arm's flags and --extra (of a repeated flag, argparse
    keeps the last: a tuning run's --epochs 1 overrides the protocol's), then the HOW flags asked."""
    argv = [f for key, value in settings.items() if value is not False
            for f in ((flag(key),) if value is True else (flag(key), str(value)))]
    return argv + list(arm_flags) + ['--seed', str(seed), '--out', out] + list(extra) + list(how)


def grid(arm_flags, tune, settings, tune_flags=TUNE_FLAGS):
    """The configurations tried for an arm: name -> (its flags, its point on the axes): lr multipliers x init scales
    (multipliers of the method's init std, or values; only where the method has a random prompt factor); AutoVP: its
    own search space, label mapping x image scale, as AutoVP searches. Also the flags every tuning run adds (its
    validation images, no test image: tune_flags; fewer epochs if the protocol says so)."""
    method = arm_flags[arm_flags.index('--method') + 1]
    extra = list(tune_flags) + (['--epochs', str(tune['epochs'])] if 'epochs' in tune else [])
    if method == 'autovp':
        return {f'{lm} scale={s:.3f}': (['--label-map', lm, '--image-scale', f'{s:.6g}'], {})
                for lm in AUTOVP_SEARCH['label_map'] for s in AUTOVP_SEARCH['image_scale']}, extra
    init = default_init(arm_flags, settings) if 'init' in tune or 'init_std' in tune else None
    inits = [(None, {})] if init is None else \
        [(f'init x{k:g}', {'init': k}) for k in sorted(tune['init'])] if 'init' in tune else \
        [(f'init {v:g}', {'init_std': v}) for v in tune['init_std']]
    configs = {}
    for lr in sorted(tune['lr']) if 'lr' in tune else (None,):
        for label, point in inits:
            name = ' '.join(x for x in (f'lr x{lr:g}' if lr is not None else None, label) if x) or 'the defaults'
            std = init * point['init'] if 'init' in point else point.get('init_std')
            configs[name] = ((['--lr-scale', f'{lr:g}'] if lr is not None else []) +
                             (['--init-std', f'{std:.6g}'] if std is not None else []),
                             {**point, **({'lr': lr} if lr is not None else {})})
    return configs, extra


def default_init(arm_flags, settings):
    """The init std the arm's method gets by default (None: it has no random prompt factor)."""
    argv = arm_flags + [f for k, v in settings.items() if k in ('model', 'img_size') for f in (flag(k), str(v))]
    return resolve(parse([*argv, '--no-pretrained', '--device', 'cpu'])).init_std


def edges(tuning, tune, extend):
    """The edges of the grid that arms chose: [(axis, the edge, the next value of the protocol's progression beyond it
    or None where the progression ends there, the arms whose choice lies on that edge)]."""
    chosen = []
    for axis, progression in extend.items():
        values = sorted(tune.get(axis, ()))
        if not values:
            continue
        for edge, beyond in ((values[0], [v for v in progression if v < values[0]][-1:]),
                             (values[-1], [v for v in progression if v > values[-1]][:1])):
            arms = [arm for arm, t in tuning.items() if t.get('point', {}).get(axis) == edge]
            if arms:
                chosen.append((axis, edge, beyond[0] if beyond else None, arms))
    return chosen


def choice(results, configs):
    """An arm's tuning from the results of its configurations' runs (config -> a summary, {'diverged': True, ...},
    pending or failed; configs: grid()'s): every configuration's validation accuracy or why it has none, the best on
    the final epoch's validation accuracy (what the final runs report is the final epoch's; ties: the lower final
    training loss), marked 'so far' while a run is pending, its flags and point, and the runs' wall time."""
    tried = {c: r['final_val_acc'] if 'final_val_acc' in r else 'diverged' if r.get('diverged') else
             'pending' if r.get('pending') else 'failed' for c, r in results.items()}
    ok = {c: v for c, v in tried.items() if isinstance(v, float)}
    best = max(ok, key=lambda c: (ok[c], -results[c]['train_loss'])) if ok else None
    return dict(chosen=f'{best} so far' if 'pending' in tried.values() and best else best,
                flags=configs[best][0] if best else [], point=configs[best][1] if best else {}, tried=tried,
                wall_s=sum(r.get('wall_s') or 0.0 for r in results.values()))


def grown(tune, tuning, extend):
    """The grid after the arms' choices (tuning: arm -> choice()), and what is said of it: with a choice on an edge the
    progression goes beyond, every such axis grows by its next value, for every arm; else None, and, once no run is
    pending, a note of each choice left on an edge where the progression ends."""
    chosen = edges(tuning, tune, extend)
    grow = [(axis, beyond, arms) for axis, _, beyond, arms in chosen if beyond is not None]
    finished = not any('pending' in t['tried'].values() for t in tuning.values())
    ended = [(axis, edge, arms) for axis, edge, beyond, arms in chosen if beyond is None and finished]
    if not grow:
        return None, [f'{axis} axis not extended beyond x{edge:g}, the end of the protocol\'s progression: '
                      f'{", ".join(arms)} chose that edge' for axis, edge, arms in ended]
    tune = dict(tune)
    for axis, value, _ in grow:  # an axis may grow at both ends
        tune[axis] = tuple(sorted({*tune[axis], value}))
    return tune, [f'{axis} axis extended to x{value:g} for every arm: {", ".join(arms)} chose its edge'
                  for axis, value, arms in grow]
