"""Run the arms of a named protocol (methods, or a method with some flags) x seeds, each the same way, and write the
results table, its statistics and its figures.

    python compare.py --protocol offline-cifar10                    # README's table: CPU, offline
    python compare.py --protocol offline-cifar10-long --jobs 2      # tuned on validation, 3 seeds, paired statistics
    python compare.py --protocol ablation-lotep-rho                 # one of the papers' ablations
    python compare.py --protocol offline-cifar10-long --report      # the table of the runs finished so far
    python compare.py --list                                        # every protocol, its arms and settings

Every run is a plain `python train.py ...` (the one training code path) into runs/<name>/<arm>-s<seed>, its log
beside it. A finished run is read back and a killed one resumed, so a killed comparison continues where it stopped;
a run directory that another process is using is never touched. Tables: results/<name>.md and .json, name = the
protocol (plus --tag when settings are changed). A run over fewer arms or seeds merges into the table made with the
same settings, never replaces it; other settings need their own --tag. Exit status 1 if any run failed (each named).

A separate script rather than a mode of train.py: train.py stays one run; this file spells out settings, launches
runs, and aggregates their summary.json files.
"""
import argparse
import ctypes
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch

import train
from data import SHARED_DATA
from flags import NONNEG_INT, POS, POS_INT, parse
from methods import METHODS
from rundir import RunDir

HERE = os.path.dirname(os.path.abspath(__file__))


# ---- the protocols, in one place ----

@dataclass(frozen=True)
class Protocol:
    about: str
    settings: dict  # train.py flags of every run (--key: value)
    arms: dict  # arm name -> its train.py flags (the method, and any flags of its own)
    seeds: tuple
    tune: dict = field(default_factory=dict)  # the grid tried on a validation split at seed 0: 'lr' multipliers,
    # 'init' multipliers of the method's init std, or 'init_std' values; 'epochs' of the tuning runs if fewer
    tuned_arms: tuple = None  # the arms tuned (default: all)
    tuned_like: dict = field(default_factory=dict)  # an ablation arm -> the arm whose tuned flags it takes
    claims: tuple = ()  # (arm a, arm b, the paper's claimed gain of a over b or None, what the paper says)
    final_flags: tuple = ()  # flags of the final runs only (a validation split for the val-selected accuracy)


def methods(*names):
    return {m: ['--method', m] for m in names}


def sweep(method, flag, values, label=None):
    return {f'{method} {label or flag.lstrip("-")}={v}': ['--method', method, flag, str(v)] for v in values}


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
        'Lite0, CIFAR-10 200/class, 96 px, 8 epochs, bf16; lr x init scale tuned per method on a validation split '
        '(3-epoch runs, the same budget for every method); the ablation arms (top-k, dropout, constant rank) take the '
        'choice of the method they ablate; the final runs hold out 10% too, for the val-selected accuracy',
        dict(**CIFAR, train_per_class=200, test_limit=2000, img_size=96, epochs=8, batch_size=32, precision='bf16'),
        {**methods(*LONG_ARMS, 'lorsp_topk', 'lorsp_dropout'),
         'lotep_cp-constant': ['--method', 'lotep_cp', '--schedule', 'constant']}, (0, 1, 2),
        tune={'lr': (0.3, 1, 3), 'init': (0.3, 1, 3), 'epochs': 3}, tuned_arms=tuple(LONG_ARMS),
        final_flags=('--val-split', '0.1'),
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
FLAGS = ('model', 'dataset', 'data_dir', 'train_per_class', 'test_limit', 'img_size', 'epochs', 'batch_size',
         'precision')


def flag(key):
    return '--' + key.replace('_', '-')


# ---- running train.py ----

def die_with_parent():
    """In the child: the kernel sends SIGTERM when compare.py dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def read_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


@dataclass
class Job:
    label: str
    argv: list
    out: str
    arm: str = ''
    seed: int = 0
    result: dict = None  # the summary (+ wall_s), {'diverged': True, ...} or {'failed': why, 'log': path}


def start(job, threads, gpu, report=False):
    """Launch one train.py (or read back a finished run); returns a Popen, or None when there is nothing to run.
    report: launch nothing; a run not finished is marked pending."""
    config = read_json(os.path.join(job.out, 'config.json')) or {}
    made_by = config.get('command')
    if made_by is not None and made_by != 'python train.py ' + ' '.join(job.argv):
        raise SystemExit(f'error: {job.out} holds a run made with other settings ({made_by}); remove it, or give '
                         f'this comparison another --tag or --runs-dir')
    if RunDir(job.out).in_use():
        job.result = {'pending': 'running now'} if report else \
            {'failed': 'another process is running it now', 'log': job.out + '.log'}
        return None
    if os.path.exists(os.path.join(job.out, 'summary.json')):
        job.result = {**read_json(os.path.join(job.out, 'summary.json')),
                      'wall_s': read_json(job.out + '.wall.json', {}).get('wall_s')}
        print(f'{job.label}: done before, read back', flush=True)
        return None
    if report:
        job.result = {'pending': 'not finished'}
        return None
    resume = made_by is not None and os.path.exists(os.path.join(job.out, 'checkpoint.pt'))
    cmd = [sys.executable, os.path.join(HERE, 'train.py')] + (['--resume', '--out', job.out] if resume else job.argv)
    print(f'{job.label}: {"resuming" if resume else "running"} {" ".join(cmd[1:])}', flush=True)
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    if gpu is not None:
        env['CUDA_VISIBLE_DEVICES'] = str(gpu)
    os.makedirs(os.path.dirname(job.out) or '.', exist_ok=True)
    log = open(job.out + '.log', 'a')  # beside the run directory, which belongs to train.py
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
    proc.log, proc.t0 = log, time.time()
    return proc


def finish(job, proc):
    proc.log.close()
    wall_path = job.out + '.wall.json'
    wall_s = read_json(wall_path, {'wall_s': 0.0})['wall_s'] + time.time() - proc.t0  # summed over resumed sessions
    with open(wall_path, 'w') as f:
        json.dump({'wall_s': wall_s}, f)
    log = job.out + '.log'
    if proc.returncode == 0:
        job.result = {**read_json(os.path.join(job.out, 'summary.json')), 'wall_s': wall_s}
    elif proc.returncode == 3 and 'training loss became' in open(log).read():
        job.result = {'diverged': True, 'log': log}  # a result of its settings, not a failure of the comparison
    else:
        job.result = {'failed': f'exit {proc.returncode}', 'log': log}
    print(f'{job.label}: {"finished" if "failed" not in job.result else "FAILED, see " + log}', flush=True)


def run_all(jobs, n, report=False):
    """Runs the jobs, n side by side (one GPU each when there are several GPUs; else the CPU threads split)."""
    gpus, threads = torch.cuda.device_count(), max(1, (os.cpu_count() or 1) // n)
    pending, running, free = list(jobs), {}, list(range(n))
    while pending or running:
        while pending and free:
            job, slot = pending.pop(0), free.pop(0)
            proc = start(job, threads, slot % gpus if gpus > 1 else None, report)
            if proc is None:
                free.append(slot)
            else:
                running[slot] = (job, proc)
        for slot, (job, proc) in list(running.items()):
            if proc.poll() is not None:
                finish(job, proc)
                del running[slot]
                free.append(slot)
        time.sleep(0.2)
    return jobs


# ---- tuning on a validation split: the same grid for every arm ----

def grid(arm_flags, tune, settings):
    """The configurations tried for an arm (name -> flags): lr multipliers x init scales (multipliers of the method's
    init std, or values; only where the method has a random prompt factor); AutoVP: its own search space, label
    mapping x image scale, as AutoVP searches. Also the flags every tuning run adds (fewer epochs)."""
    method = arm_flags[arm_flags.index('--method') + 1]
    extra = ['--epochs', str(tune['epochs'])] if 'epochs' in tune else []
    if method == 'autovp':
        return {f'{lm} scale={s:.3f}': ['--label-map', lm, '--image-scale', f'{s:.6g}']
                for lm in AUTOVP_SEARCH['label_map'] for s in AUTOVP_SEARCH['image_scale']}, extra
    init = default_init(arm_flags, settings) if 'init' in tune or 'init_std' in tune else None
    inits = [(None, None)] if init is None else [(f'init x{k:g}', init * k) for k in tune['init']] if 'init' in tune \
        else [(f'init {v:g}', v) for v in tune['init_std']]
    configs = {}
    for lr in tune.get('lr', (None,)):
        for label, std in inits:
            name = ' '.join(x for x in (f'lr x{lr:g}' if lr is not None else None, label) if x) or 'the defaults'
            configs[name] = (['--lr-scale', f'{lr:g}'] if lr is not None else []) + \
                (['--init-std', f'{std:.6g}'] if std is not None else [])
    return configs, extra


def default_init(arm_flags, settings):
    """The init std the arm's method gets by default (None: it has no random prompt factor)."""
    argv = arm_flags + [f for k, v in settings.items() if k in ('model', 'img_size') for f in (flag(k), str(v))]
    return train.resolve(parse([*argv, '--no-pretrained', '--device', 'cpu'])).init_std


def tune_arms(name, arm_flags, tune, settings, extra, runs_dir, jobs_n, report=False):
    """arm -> {chosen configuration, its flags, every configuration's val acc (or 'diverged'), the runs' wall time},
    chosen on validation accuracy only (ties: the lower final training loss); and the failed tuning runs. With report,
    an arm whose grid is not finished gets the best so far, marked."""
    jobs = {}
    for arm, flags_of_arm in arm_flags.items():
        configs, shorter = grid(flags_of_arm, tune, settings)
        for config, flags in configs.items():
            out = os.path.join(runs_dir, 'tune', f'{arm}-{config}'.replace(' ', '_').replace('=', ''))
            argv = train_argv(settings, flags_of_arm + flags + shorter + ['--val-split', '0.1'], 0, out, 0, extra)
            jobs[arm, config] = (Job(f'[tune {name}] {arm} {config}', argv, out), flags)
    run_all([j for j, _ in jobs.values()], jobs_n, report)
    tuning = {}
    for arm in arm_flags:
        mine = {c: j for (a, c), (j, _) in jobs.items() if a == arm}
        tried = {c: j.result['val_acc'] if 'val_acc' in j.result else 'diverged' if j.result.get('diverged')
                 else 'pending' if j.result.get('pending') else 'failed' for c, j in mine.items()}
        ok = {c: v for c, v in tried.items() if isinstance(v, float)}
        best = max(ok, key=lambda c: (ok[c], -mine[c].result['train_loss'])) if ok else None
        unfinished = 'pending' in tried.values()
        tuning[arm] = dict(chosen=f'{best} so far' if unfinished and best else best,
                           flags=jobs[arm, best][1] if best else [], tried=tried,
                           wall_s=sum(j.result.get('wall_s') or 0.0 for j in mine.values()))
        print(f'[tune {name}] {arm}: ' + ', '.join(f'{c} {v}' for c, v in tried.items()) + f' -> {best}', flush=True)
    return tuning, [j for j, _ in jobs.values() if 'failed' in j.result]


def train_argv(settings, arm_flags, seed, out, speed_reps, extra=()):
    """train.py's arguments: the protocol's settings, then the arm's flags and --extra (of a repeated flag, argparse
    keeps the last: a tuning run's --epochs 1 overrides the protocol's)."""
    argv = [f for key, value in settings.items() for f in (flag(key), str(value))]
    return argv + list(arm_flags) + ['--seed', str(seed), '--out', out, '--speed-reps', str(speed_reps)] + list(extra)


# ---- statistics ----

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}  # Student's t, 97.5% quantile, by degrees of freedom


def t975(df):
    return T975.get(df) or T975[max(k for k in T975 if k <= df)] if df < 30 else 1.96


def paired(a: dict, b: dict):
    """a, b: seed -> accuracy. The mean paired difference a - b over their common seeds with its 95% confidence
    interval (Student's t on the differences); None with fewer than two common seeds."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if len(diffs) < 2:
        return None
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return dict(n=len(diffs), mean=mean, sd=sd, low=mean - half, high=mean + half, diffs=diffs)


def verdict(ci, claimed=None):
    if ci is None:
        return 'cannot tell: fewer than two seeds'
    inside = claimed is not None and ci['low'] <= claimed <= ci['high']
    size = '' if claimed is None else f'; the claimed +{claimed:g} is {"inside" if inside else "outside"} the interval'
    if ci['low'] > 0:
        return 'holds' + size
    if ci['high'] < 0:
        return 'does not hold: the opposite order' + size
    return 'cannot tell at this scale' + size


# ---- tables and figures ----

def fmt_params(n):
    return f'{n / 1e6:.2f}M' if n >= 1e6 else f'{n / 1e3:.1f}K' if n >= 1e4 else f'{n:,}'


def shown(settings):
    return {k: os.path.relpath(v) if k == 'data_dir' else v for k, v in settings.items()}


def rows_of(runs, arms):
    rows = []
    for arm in arms:
        mine = sorted((r for r in runs if r['arm'] == arm), key=lambda r: r['seed'])
        ok = [r for r in mine if 'test_acc' in r]
        rows.append(dict(arm=arm, accs={r['seed']: r['test_acc'] for r in ok},
                         val_selected={r['seed']: r['val_selected_test_acc'] for r in ok
                                       if 'val_selected_test_acc' in r},
                         params=ok[0]['trainable_params'] if ok else None,
                         times=[r['train_time_s'] for r in ok], rates=[r['train_images_per_s'] for r in ok],
                         speed={k: ok[0][k] for k in ('latency_ms', 'step_ratio', 'latency_ratio')} if ok and
                         'latency_ms' in ok[0] else None,
                         failed=[r for r in mine if 'test_acc' not in r]))
    return rows


def mean_sd(values):
    v = list(values)
    return f'{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} ({len(v)})' if len(v) > 1 else \
        f'{v[0]:.2f} (1)' if v else '-'


def table(name, protocol, settings, seeds, rows, tuning, claims, wall_s, tune_wall_s, changes, note=''):
    changed = f' **Changed for this table**: {"; ".join(changes)}.' if changes else ''
    val = any(r['val_selected'] for r in rows)  # the runs held out a validation split: its selection beside the final
    lines = [f'# {name}', '', protocol.about + '.' + changed, *([note] if note else []), '',
             f'Settings: {json.dumps(shown(settings))}; seeds {seeds}.',
             f'Machine: {platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}' +
             (f', {torch.cuda.get_device_name()}' if torch.cuda.is_available() else '') +
             f'. Wall time of the runs: {wall_s / 60:.1f} min' +
             (f' (and {tune_wall_s / 60:.1f} min of tuning before them)' if tuning else '') + '.', '',
             'Accuracy: the final epoch on the test images (no selection on test). Speed columns come from the first '
             'seed\'s run: its training step and inference latency against the bare frozen backbone (forward + '
             'backward to the input / forward), best of the repetitions.' +
             (' Val-selected: the test accuracy of the epoch best on the held-out validation images.' if val else ''),
             '', '| arm | test acc % (mean ± std, n) |' + (' val-selected test acc % |' if val else '') +
             ' trainable params | train time s | train img/s | latency ms/img | step / bare | latency / bare |' +
             (' tuned on validation |' if tuning else ''),
             '|' + '---|' * (8 + bool(val) + bool(tuning))]
    for r in rows:
        s = r['speed']
        cells = [r['arm'], mean_sd(r['accs'].values()) + (f', {len(r["failed"])} failed' if r['failed'] else '')]
        cells += [mean_sd(r['val_selected'].values())] if val else []
        cells += [fmt_params(r['params']) if r['params'] else '-',
                  f'{statistics.mean(r["times"]):.0f}' if r['times'] else '-',
                  f'{statistics.mean(r["rates"]):.1f}' if r['rates'] else '-']
        cells += [f'{s["latency_ms"]:.2f}', f'{s["step_ratio"]:.3f}', f'{s["latency_ratio"]:.3f}'] if s else ['-'] * 3
        if tuning:
            cells.append(tuning.get(r['arm'], {}).get('chosen') or '-')
        lines.append('| ' + ' | '.join(cells) + ' |')
    if tuning:
        lines += ['', 'Tuning (seed 0, 10% of the training images held out; validation accuracy %, the best kept):', '']
        lines += [f'- {arm}: ' + ', '.join(f'{c} {v:.2f}' if isinstance(v, float) else f'{c} {v}'
                                           for c, v in t['tried'].items()) + f' -> **{t["chosen"]}**'
                  for arm, t in tuning.items()]
    if claims:
        lines += ['', '| claim | paired difference a - b by seed, mean [95% CI] (n) | val-selected | verdict |',
                  '|---|---|---|---|']
        for c in claims:
            ci, vs = c['ci'], c['ci_val_selected']
            cell = lambda x: f'{x["mean"]:+.2f} [{x["low"]:+.2f}, {x["high"]:+.2f}] ({x["n"]})' if x else '-'
            lines.append(f'| {c["a"]} over {c["b"]} ({c["paper"]}) | {cell(ci)} | {cell(vs)} | {c["verdict"]} |')
    return '\n'.join(lines) + '\n'


def figures(name, rows):
    """Accuracy (mean ± std over seeds) against trainable parameters (log scale) and against training time."""
    from figures import pyplot
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    done = [r for r in rows if r['accs']]
    paths = []
    markers = 'osD^vP*Xph<>H8d'  # one marker (and colour) per method, named in the legend: labels on the points overlap
    for key, xlabel, log in (('params', 'trainable parameters', True), ('time', 'training time per run (s)', False)):
        fig, ax = plt.subplots(figsize=(8, 4.4))
        for i, r in enumerate(done):
            accs = list(r['accs'].values())
            x = r['params'] if key == 'params' else statistics.mean(r['times'])
            ax.errorbar(x, statistics.mean(accs), yerr=statistics.stdev(accs) if len(accs) > 1 else 0,
                        fmt=markers[i % len(markers)], color=f'C{i % 10}', capsize=3, label=r['arm'])
        ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.set_xscale('log' if log else 'linear')
        if log:  # ticks at 1, 2, 5 x 10^k, labelled as the table's counts (matplotlib's minor labels overlap)
            ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_params(x)))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel('test accuracy % (mean ± std)')
        ax.set_title(name, fontsize=9)
        fig.tight_layout()
        paths.append(os.path.join('results', f'{name}-{key}.png'))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


# ---- main ----

def parse_list(text, cast, what):
    try:
        values = [cast(v) for v in text.split(',')]
    except (ValueError, argparse.ArgumentTypeError):
        raise SystemExit(f'error: {what} takes a comma list, got {text!r}') from None
    return values


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--protocol', choices=sorted(PROTOCOLS))
    p.add_argument('--list', action='store_true', help='print every protocol and exit')
    p.add_argument('--methods', help='comma list of arms (default: the protocol\'s)')
    p.add_argument('--seeds', help='comma list (default: the protocol\'s seeds)')
    p.add_argument('--tag', help='names the results when settings are changed: results/<protocol>-<tag>.md')
    for key in FLAGS:
        p.add_argument(flag(key), dest=key, help=f'change the protocol\'s {flag(key)} (needs --tag)')
    p.add_argument('--extra', default='', help='more train.py flags for every run, e.g. "--rho 0.25" (needs --tag)')
    p.add_argument('--tune-lr', help='replace the protocol\'s lr multipliers, e.g. 0.03,0.1,1 (needs --tag)')
    p.add_argument('--no-tune', action='store_true', help='skip the protocol\'s tuning (needs --tag)')
    p.add_argument('--jobs', type=POS_INT, default=1, help='runs side by side (a GPU each; on a CPU the threads split)')
    p.add_argument('--runs-dir', help='default runs/<name>')
    p.add_argument('--report', action='store_true', help='start no run: write the table of the runs finished so far')
    a = p.parse_args(argv)
    if a.list:
        for k, pr in PROTOCOLS.items():
            print(f'{k}: {pr.about}\n  arms: {", ".join(pr.arms)}\n  seeds {list(pr.seeds)}; {shown(pr.settings)}')
        return []
    if not a.protocol:
        p.error('--protocol is required (or --list)')
    protocol = PROTOCOLS[a.protocol]
    settings = dict(protocol.settings)
    changed = {k: int(v) if v.isdigit() else v for k in FLAGS if (v := getattr(a, k)) is not None}
    if (changed or a.extra or a.tune_lr or a.no_tune) and not a.tag and a.protocol != 'paper':
        p.error(f'{", ".join(flag(k) for k in changed) or "--extra / --tune-lr / --no-tune"} changes the '
                f'{a.protocol} protocol: add --tag NAME so that its results do not pass for the protocol\'s')
    settings.update(changed)
    arms = a.methods.split(',') if a.methods else list(protocol.arms)
    unknown = [m for m in arms if m not in protocol.arms and m not in METHODS]
    if unknown:
        p.error(f'unknown arm(s) {unknown}; this protocol has {", ".join(protocol.arms)}')
    arm_flags = {arm: protocol.arms.get(arm, ['--method', arm]) for arm in arms}
    wanted = set(arms) | {protocol.tuned_like[arm] for arm in arms if arm in protocol.tuned_like}
    tuned_arms = {arm: protocol.arms.get(arm, ['--method', arm]) for arm in protocol.arms | arm_flags
                  if arm in wanted and (protocol.tuned_arms is None or arm in protocol.tuned_arms)}
    tune = {} if a.no_tune else {**protocol.tune, **({'lr': tuple(parse_list(a.tune_lr, POS, '--tune-lr'))}
                                                     if a.tune_lr else {})}
    seeds = parse_list(a.seeds, NONNEG_INT, '--seeds') if a.seeds else list(protocol.seeds)
    name = a.protocol + (f'-{a.tag}' if a.tag else '')
    runs_dir = a.runs_dir or os.path.join('runs', name)
    extra = a.extra.split()
    results_path = os.path.join('results', f'{name}.json')
    previous = read_json(results_path)
    if previous is not None and (previous.get('settings'), previous.get('extra', [])) != (shown(settings), extra):
        raise SystemExit(f'error: {results_path} was made with other settings; give these runs their own --tag')

    tuning, failed = {}, []
    if tune:
        tuning, failed = tune_arms(name, tuned_arms, tune, settings, extra, runs_dir, a.jobs, a.report)
    for arm, like in protocol.tuned_like.items():  # an ablation keeps its method's hyper-parameters
        if arm in arms and like in tuning:
            tuning[arm] = dict(chosen=f'as {like}: {tuning[like]["chosen"]}', flags=tuning[like]['flags'], tried={})
    jobs = []
    for seed in seeds:  # seed by seed: a comparison stopped half-way has every arm of its first seeds
        for arm in arms:
            tuned = tuning.get(arm, {}).get('flags', [])
            out = os.path.join(runs_dir, f'{arm}-s{seed}'.replace(' ', '_').replace('=', ''))
            speed_reps = 5 if seed == protocol.seeds[0] else 0  # one speed measurement per arm
            argv = train_argv(settings, arm_flags[arm] + tuned + list(protocol.final_flags), seed, out, speed_reps,
                              extra)
            jobs.append(Job(f'[{name}] {arm} seed {seed}', argv, out, arm, seed))
    run_all(jobs, a.jobs, a.report)
    runs = [{**j.result, 'arm': j.arm, 'seed': j.seed} for j in jobs if not j.result.get('pending')]
    failed += [j for j in jobs if 'failed' in j.result]
    if previous is not None:  # merge: runs of other arms or seeds made with these settings stay in the table
        keep = {(r['arm'], r['seed']) for r in runs}
        runs = [r for r in previous['runs'] if (r['arm'], r['seed']) not in keep] + runs
        tuning = {**previous.get('tuning', {}), **tuning}
        arms = list(dict.fromkeys(previous['arms'] + arms))
        seeds = sorted(set(previous['seeds']) | set(seeds))
    tune_wall = sum(t.get('wall_s', 0.0) for t in tuning.values())
    have = {(r['arm'], r['seed']) for r in runs}  # a merged table may hold a run --report found unfinished
    pending = [j for j in jobs if j.result.get('pending') and (j.arm, j.seed) not in have]
    rows = rows_of(runs, arms)
    by_arm = {r['arm']: r for r in rows}
    claims = []
    for a_, b_, claimed, paper in protocol.claims:
        if a_ in by_arm and b_ in by_arm:
            ci = paired(by_arm[a_]['accs'], by_arm[b_]['accs'])
            ci_val = paired(by_arm[a_]['val_selected'], by_arm[b_]['val_selected'])
            claims.append(dict(a=a_, b=b_, paper=paper, claimed=claimed, ci=ci, ci_val_selected=ci_val,
                               verdict=verdict(ci, claimed)))
    wall = sum(r.get('wall_s') or 0.0 for r in runs)  # every run in the table, merged ones included
    os.makedirs('results', exist_ok=True)
    changes = [f'{flag(k)} {v}' for k, v in changed.items()] + ([f'--extra {a.extra}'] if extra else []) + \
        ([f'lr multipliers tuned: {a.tune_lr}'] if a.tune_lr else []) + (['no tuning'] if a.no_tune else [])
    note = f'**Incomplete**: {len(pending)} of the {len(jobs)} runs are not finished; this table, written by ' \
        f'--report, holds the others.' if pending else ''
    md = table(name, protocol, settings, seeds, rows, tuning, claims, wall, tune_wall, changes, note)
    with open(os.path.join('results', f'{name}.md'), 'w') as f:
        f.write(md)
    with open(results_path, 'w') as f:
        json.dump(dict(protocol=a.protocol, name=name, changes=changes, settings=shown(settings), extra=extra,
                       seeds=seeds, arms=arms, tuning=tuning, claims=claims, wall_s=wall, tune_wall_s=tune_wall,
                       rows=rows, runs=runs),
                  f, indent=1, allow_nan=False)
    if any(r['accs'] for r in rows):
        figures(name, rows)
    print(md)
    if failed:
        print('FAILED runs:\n' + '\n'.join(f'  {j.label}: {j.result["failed"]}; log {j.result["log"]}'
                                           for j in failed), file=sys.stderr)
        raise SystemExit(1)
    return rows


if __name__ == '__main__':
    main()
