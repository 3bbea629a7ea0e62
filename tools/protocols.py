"""The comparison protocols: what each one runs (data, model, scale, arms, seeds, the tuning grid, the claims it tests).
compare.py runs them; this file is what a reader looks up.

    python tools/compare.py --list                                  # every protocol, its arms and settings
    PROTOCOLS['offline-cifar10-long'].claims                  # (arm a, arm b, the paper's gain of a over b, the paper)

A protocol's settings are train.py flags of every run (True: a flag without a value); an arm is a method, or a method
with flags of its own. Tuning runs train at seed 0 on 90% of the training images and are selected on the other 10%;
final runs use the protocol's seeds.
"""
from dataclasses import dataclass, field

from data import SHARED_DATA, VTAB_1K

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

    def seeds_of(self, arm):
        in_claims = any(arm in claim[:2] for claim in self.claims)
        return self.claim_seeds if in_claims and self.claim_seeds else self.seeds


def methods(*names):
    return {m: ['--method', m] for m in names}


def sweep(method, flag, values, label=None):
    return {f'{method} {label or flag.lstrip("-")}={v}': ['--method', method, flag, str(v)] for v in values}


# how far a grid may grow (multiples of the recipe's lr and of the method's init std), one step at a time while an arm's
# choice lies on its edge: up to x100 on both axes (LoR-VP's official code offers A ~ N(0, 1), x100 its 0.01)
EXTEND = {'lr': (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100), 'init': (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100)}
CIFAR = dict(model='tf_efficientnet_lite0', dataset='cifar10', data_dir=SHARED_DATA)
SHORT = dict(**CIFAR, train_per_class=200, test_limit=2000, img_size=96, epochs=6, batch_size=32, precision='bf16')
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
    'offline-tiny': Protocol(
        'Lite0, Tiny-ImageNet subset 100/class, 64 px, 2 epochs, fp32; lr tuned on validation (x0.03, x0.1, x1)',
        dict(model='tf_efficientnet_lite0', dataset='tiny-imagenet', data_dir=SHARED_DATA, train_per_class=100,
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
