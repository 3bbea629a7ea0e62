"""Run the arms of a named protocol (methods, or a method with some flags) x seeds, each the same way, and write the
results table, its statistics and its figures.

    python tools/compare.py --protocol offline-cifar10                    # README's table: CPU, offline
    python tools/compare.py --protocol offline-cifar10-long --jobs 2      # tuned on validation, 5 seeds for the claims, Holm
    python tools/compare.py --protocol ablation-lotep-rho                 # one of the papers' ablations
    python tools/compare.py --protocol offline-cifar10-long --report      # the table of the runs finished so far
    python tools/compare.py --list                                        # every protocol, its arms and settings

Every run is a plain `python train.py ...` (the one training code path) into runs/<name>/<arm>-s<seed>, its log
beside it. A finished run is read back and a killed one resumed, so a killed comparison continues where it stopped;
a run directory that another process is using is never touched. Tables: results/<name>.md and .json, name = the
protocol (plus --tag when settings are changed). A run over fewer arms or seeds merges into the table made with the
same settings, never replaces it; other settings need their own --tag. Exit status 1 if any run failed (each named).

A separate script rather than a mode of train.py: train.py stays one run; this file spells out settings, launches
runs, and aggregates their summary.json files.
"""
import argparse
import contextlib
import ctypes
import fcntl
import io
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

if __name__ == '__main__':  # python tools/compare.py from the project root: the project's modules come from there
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from tools import bench
import data
from tools import tables
import train
from flags import NONNEG_INT, POS, POS_INT, parse
from methods import METHODS
from tools.protocols import AUTOVP_SEARCH, PROTOCOLS, TUNE_FLAGS
from tools.rundir import RunDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project root, where train.py is


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
    recorded: dict = None  # what the table on disk recorded of this very command, if its run folder is gone

    @property
    def command(self):
        return 'python train.py ' + ' '.join(self.argv)

    @property
    def identity(self):
        return identity(self.command)


WHERE = ('out', 'data_dir')  # where a run and its data lie: a runs folder moves, the data is read from anywhere


def identity(command):
    """What a run computes: its train.py command less the WHERE flags (--out, --data-dir; a value runs to the next
    flag)."""
    return re.sub(f' (?:{"|".join(flag(k) for k in WHERE)}) .*?(?= --|$)', '', command)


BUSY = 'busy'  # start(): another process is running this run now


def start(job, threads, gpu, report=False):
    """Launch one train.py (or read back a finished run); returns a Popen, None when there is nothing to run, or BUSY
    when another process runs it now (run_all waits for it). report: launch nothing; a run not finished is pending."""
    if job.recorded is not None and not os.path.exists(os.path.join(job.out, 'summary.json')):
        job.result = dict(job.recorded)  # its folder was deleted (or never copied here): the table has its summary
        print(f'{job.label}: done before, read back from the table', flush=True)
        return None
    config = read_json(os.path.join(job.out, 'config.json')) or {}
    made_by = config.get('command')
    if made_by is not None and identity(made_by) != job.identity:
        raise SystemExit(f'error: {job.out} holds a run made with other settings ({made_by}); remove it, or give '
                         f'this comparison another --tag or --runs-dir')
    if os.path.exists(job.out + '.diverged'):  # its loss exploded before: a result, run again only if removed
        job.result = {'diverged': True, 'log': job.out + '.log'}
        print(f'{job.label}: diverged before ({job.out}.diverged; remove it to run again)', flush=True)
        return None
    if report:  # nothing is created or started: a run is finished (read back), running now, or not finished
        if launched_elsewhere(job) or RunDir(job.out).in_use():
            job.result = {'pending': 'running now'}
        elif os.path.exists(os.path.join(job.out, 'summary.json')):
            job.result = read_back(job)
        else:
            job.result = {'pending': 'not finished'}
        return None
    os.makedirs(os.path.dirname(job.out) or '.', exist_ok=True)
    guard = launch_lock(job)  # held while this comparison runs it: another comparison waits
    if guard is None:
        return BUSY
    if RunDir(job.out).in_use():  # a train.py of its own runs it now
        guard.close()
        return BUSY
    if os.path.exists(os.path.join(job.out, 'summary.json')):
        guard.close()
        job.result = read_back(job)
        return None
    resume = made_by is not None and os.path.exists(os.path.join(job.out, 'checkpoint.pt'))
    data_dir = job.argv[job.argv.index('--data-dir'):][:2] if '--data-dir' in job.argv else []  # this machine's
    cmd = [sys.executable, os.path.join(ROOT, 'train.py')] + (['--resume', '--out', job.out, *data_dir] if resume
                                                              else job.argv)
    print(f'{job.label}: {"resuming" if resume else "running"} {" ".join(cmd[1:])}', flush=True)
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    if gpu is not None:
        env['CUDA_VISIBLE_DEVICES'] = str(gpu)
    log = open(job.out + '.log', 'a')  # beside the run directory, which belongs to train.py
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
    proc.log, proc.guard, proc.t0 = log, guard, time.time()
    return proc


def launch_lock(job):
    """This run's launch lock, taken: the open file that holds it; None when another comparison holds it."""
    guard = open(job.out + '.launch', 'a')
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        guard.close()
        return None
    return guard


def launched_elsewhere(job):
    """Whether another comparison holds this run's launch lock now (it is running it); creates no file."""
    if not os.path.exists(job.out + '.launch'):
        return False
    guard = launch_lock(job)
    if guard is None:
        return True
    guard.close()
    return False


def read_back(job):
    print(f'{job.label}: done before, read back', flush=True)
    return {**read_json(os.path.join(job.out, 'summary.json')),
            'wall_s': read_json(job.out + '.wall.json', {}).get('wall_s')}


def finish(job, proc):
    proc.log.close()
    proc.guard.close()  # closing the file releases its lock
    wall_path = job.out + '.wall.json'
    wall_s = read_json(wall_path, {'wall_s': 0.0})['wall_s'] + time.time() - proc.t0  # summed over resumed sessions
    with open(wall_path, 'w') as f:
        json.dump({'wall_s': wall_s}, f)
    log = job.out + '.log'
    exploded = []  # train.py's error line when the loss was NaN or exploded (it exits 3)
    if proc.returncode == 3:
        with open(log) as f:
            exploded = [line for line in f if 'error: the training loss' in line]
    if proc.returncode == 0:
        job.result = {**read_json(os.path.join(job.out, 'summary.json')), 'wall_s': wall_s}
    elif exploded:
        job.result = {'diverged': True, 'log': log}  # a result of its settings, not a failure of the comparison
        with open(job.out + '.diverged', 'w') as f:  # kept: a later comparison reads it back, not runs it again
            f.write(exploded[-1])
    else:
        job.result = {'failed': f'exit {proc.returncode}', 'log': log}
    print(f'{job.label}: {"finished" if "failed" not in job.result else "FAILED, see " + log}', flush=True)


def run_all(jobs, n, report=False):
    """Runs the jobs, n side by side (one GPU each when there are several GPUs; else the CPU threads split)."""
    gpus, threads = torch.cuda.device_count(), max(1, (os.cpu_count() or 1) // n)
    pending, running, free, waiting = list(jobs), {}, list(range(n)), set()
    while pending or running:
        busy = []
        while pending and free:
            job, slot = pending.pop(0), free.pop(0)
            proc = start(job, threads, slot % gpus if gpus > 1 else None, report)
            if proc is BUSY:  # another process (another comparison) runs it: wait, then read it back
                if job.out not in waiting:
                    print(f'{job.label}: another process is running it; waiting for it', flush=True)
                    waiting.add(job.out)
                busy.append(job)
                free.append(slot)
            elif proc is None:
                free.append(slot)
            else:
                running[slot] = (job, proc)
        pending += busy
        if busy and len(busy) == len(pending) and not running:
            time.sleep(2.0)
        for slot, (job, proc) in list(running.items()):
            if proc.poll() is not None:
                finish(job, proc)
                del running[slot]
                free.append(slot)
        time.sleep(0.2)
    return jobs


# ---- tuning on a validation split: the same grid for every arm ----

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
    return train.resolve(parse([*argv, '--no-pretrained', '--device', 'cpu'])).init_std


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


def tune_arms(name, arm_flags, tune, extend, settings, extra, runs_dir, jobs_n, *, report, tune_flags, recorded):
    """arm -> {chosen configuration, its flags and point, every configuration's val acc (or 'diverged'), the runs'
    wall time}, chosen on the final epoch's validation accuracy (what the final runs report is the final epoch's; ties:
    the lower final training loss); the failed tuning runs; and the axes extended (notes). With report, an arm whose
    grid is not finished gets the best so far, marked, and no run starts."""
    tune, notes = dict(tune), []
    while True:
        jobs = {}
        for arm, flags_of_arm in arm_flags.items():
            configs, added = grid(flags_of_arm, tune, settings, tune_flags)
            for config, (flags, point) in configs.items():
                out = os.path.join(runs_dir, 'tune', f'{arm}-{config}'.replace(' ', '_').replace('=', ''))
                job = Job(f'[tune {name}] {arm} {config}', train_argv(settings, flags_of_arm + flags + added, 0, out,
                                                                      extra), out)
                job.recorded = recorded.get(job.identity)
                jobs[arm, config] = (job, flags, point)
        run_all([j for j, _, _ in jobs.values()], jobs_n, report)
        tuning = {}
        for arm in arm_flags:
            mine = {c: j for (a, c), (j, _, _) in jobs.items() if a == arm}
            tried = {c: j.result['final_val_acc'] if 'final_val_acc' in j.result else
                     'diverged' if j.result.get('diverged') else 'pending' if j.result.get('pending') else 'failed'
                     for c, j in mine.items()}
            ok = {c: v for c, v in tried.items() if isinstance(v, float)}
            best = max(ok, key=lambda c: (ok[c], -mine[c].result['train_loss'])) if ok else None
            unfinished = 'pending' in tried.values()
            tuning[arm] = dict(chosen=f'{best} so far' if unfinished and best else best,
                               flags=jobs[arm, best][1] if best else [], point=jobs[arm, best][2] if best else {},
                               tried=tried, wall_s=sum(j.result.get('wall_s') or 0.0 for j in mine.values()))
            print(f'[tune {name}] {arm}: ' + ', '.join(f'{c} {v}' for c, v in tried.items()) + f' -> {best}',
                  flush=True)
        chosen = edges(tuning, tune, extend)
        grow = [(axis, beyond, arms) for axis, _, beyond, arms in chosen if beyond is not None]
        finished = not any('pending' in t['tried'].values() for t in tuning.values())
        ended = [(axis, edge, arms) for axis, edge, beyond, arms in chosen if beyond is None and finished]
        if not grow:
            for axis, edge, arms in ended:  # a final choice left where the progression ends is said
                notes.append(f'{axis} axis not extended beyond x{edge:g}, the end of the protocol\'s progression: '
                             f'{", ".join(arms)} chose that edge')
                print(f'[tune {name}] {notes[-1]}', flush=True)
            done = {j.command: {k: v for k, v in j.result.items() if k in TUNING_RECORD} for j, _, _ in jobs.values()
                    if 'final_val_acc' in j.result or j.result.get('diverged')}
            return tuning, [j for j, _, _ in jobs.values() if 'failed' in j.result], notes, done
        for axis, value, arms in grow:  # report too: the configurations an extension adds are listed as pending
            tune[axis] = tuple(sorted({*tune[axis], value}))
            notes.append(f'{axis} axis extended to x{value:g} for every arm: {", ".join(arms)} chose its edge')
            print(f'[tune {name}] {notes[-1]}', flush=True)


def merged_notes(previous, now):
    """The grid notes of the table on disk and of this comparison: one note per axis and edge, this comparison's where
    both have one (the arms a note names change while a grid fills: a --report made half-way names fewer)."""
    key = lambda note: note.split(':')[0]  # 'init axis extended to x30 for every arm', without the arms
    mine = {key(n) for n in now}
    return [n for n in previous if key(n) not in mine] + list(now)


TUNING_RECORD = ('final_val_acc', 'val_acc', 'train_loss', 'diverged', 'wall_s')  # what a table keeps of a tuning run


def train_argv(settings, arm_flags, seed, out, extra=()):
    """train.py's arguments: the protocol's settings, then the arm's flags and --extra (of a repeated flag, argparse
    keeps the last: a tuning run's --epochs 1 overrides the protocol's)."""
    argv = [f for key, value in settings.items() if value is not False
            for f in ((flag(key),) if value is True else (flag(key), str(value)))]
    return argv + list(arm_flags) + ['--seed', str(seed), '--out', out] + list(extra)


# ---- statistics ----

def paired(a: dict, b: dict):
    """a, b: seed -> accuracy. The mean paired difference a - b over their common seeds with its 95% confidence
    interval (Student's t on the differences); None with fewer than two common seeds."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if len(diffs) < 2:
        return None
    return t_interval(dict(n=len(diffs), mean=statistics.mean(diffs), sd=statistics.stdev(diffs), diffs=diffs), 0.05)


def p_value(ci):
    """Two-sided p of the paired t-test behind a confidence interval: P(|T| >= |t|), t = mean / (sd / sqrt(n)),
    T Student's t with n - 1 degrees of freedom; None with fewer than two seeds."""
    if ci is None:
        return None
    if ci['sd'] == 0:
        return 0.0 if ci['mean'] != 0 else 1.0
    return t_two_sided(ci['mean'] / (ci['sd'] / math.sqrt(ci['n'])), ci['n'] - 1)


def t_two_sided(t, df):
    """P(|T| >= |t|) for Student's t with an integer df, by the closed forms of Abramowitz & Stegun 26.7.3-4, with
    theta = atan(|t| / sqrt(df)) and c = cos^2 theta:
        df odd:  P(|T| < t) = (2 / pi) (theta + sin theta cos theta (1 + 2/3 c + 2 4 / (3 5) c^2 + ...)),
                 (df - 1) / 2 terms in the series (none for df = 1)
        df even: P(|T| < t) = sin theta (1 + 1/2 c + 1 3 / (2 4) c^2 + ...), df / 2 terms"""
    theta = math.atan(abs(t) / math.sqrt(df))
    c = math.cos(theta) ** 2
    term, series = 1.0, 0.0
    if df % 2:
        for k in range((df - 1) // 2):  # odd: the series is empty for df = 1
            series += term
            term *= c * (2 * k + 2) / (2 * k + 3)
        inside = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    else:
        for k in range(df // 2):
            series += term
            term *= c * (2 * k + 1) / (2 * k + 2)
        inside = math.sin(theta) * series
    return max(0.0, 1.0 - inside)


def t_quantile(alpha, df):
    """The t with P(|T| >= t) = alpha, Student's t with an integer df: t_two_sided, which falls as t grows,
    inverted by bisection."""
    low, high = 0.0, 1.0
    while t_two_sided(high, df) > alpha:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided(mid, df) > alpha else (low, mid)
    return (low + high) / 2


def t_interval(ci, alpha):
    """ci (n, mean, sd of the differences) with its Student's t interval of level 1 - alpha:
    mean ± t_{1 - alpha / 2, n - 1} sd / sqrt(n)."""
    half = t_quantile(alpha, ci['n'] - 1) * ci['sd'] / math.sqrt(ci['n'])
    return {**ci, 'low': ci['mean'] - half, 'high': ci['mean'] + half}


def bonferroni(ci, m):
    """The paired CI widened to hold for m claims at once (Bonferroni): level 1 - 0.05 / m. Holm's correction gives
    p-values, not intervals; a claimed size is read against this one beside them."""
    return {**t_interval(ci, 0.05 / m), 'level': f'{100 - 5 / m:.4g}% Bonferroni '}


def holm(ps):
    """Holm's step-down correction of m p-values for testing them together: sorted ascending, the i-th smallest
    (i = 1..m) becomes min(1, (m - i + 1) p_(i)), then the running maximum, so that the order is kept. None (an
    untestable claim) is left out of the family and stays None."""
    tested = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    adjusted, running = [None] * len(ps), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(ci, claimed=None, p=None):
    """holds / the opposite order / cannot tell: from the 95% CI (does it exclude 0?), or, given p (a corrected
    p-value), from p < 0.05 in the direction of the mean. A claimed size is read against ci (with a corrected p,
    the interval bonferroni() widened)."""
    if ci is None:
        return 'cannot tell: fewer than two seeds'
    inside = claimed is not None and ci['low'] <= claimed <= ci['high']
    where = 'the interval' if 'level' not in ci else f'the {ci["level"]}interval [{ci["low"]:+.2f}, {ci["high"]:+.2f}]'
    size = '' if claimed is None else f'; the claimed +{claimed:g} is {"inside" if inside else "outside"} {where}'
    significant = (ci['low'] > 0 or ci['high'] < 0) if p is None else p < 0.05
    if significant and ci['mean'] > 0:
        return 'holds' + size
    if significant:
        return 'does not hold: the opposite order' + size
    return 'cannot tell at this scale' + size


def test_claims(protocol, by_arm):
    """Every claim of the protocol whose two arms have runs: the paired CI, raw and Holm-corrected verdicts, on the
    final epoch's accuracy and on the val-selected one (each its own family of tests)."""
    claims = [dict(a=a, b=b, paper=paper, claimed=claimed) for a, b, claimed, paper in protocol.claims
              if a in by_arm and b in by_arm]
    for key, suffix in (('accs', ''), ('val_selected', '_val_selected')):
        cis = [paired(by_arm[c['a']][key], by_arm[c['b']][key]) for c in claims]
        ps = [p_value(ci) for ci in cis]
        m = sum(p is not None for p in ps)  # the claims tested together
        for c, ci, p, p_holm in zip(claims, cis, ps, holm(ps)):
            c.update({f'ci{suffix}': ci, f'p{suffix}': p, f'p_holm{suffix}': p_holm,
                      f'verdict{suffix}': verdict(ci, c['claimed']),
                      f'verdict_holm{suffix}': verdict(bonferroni(ci, m), c['claimed'], p_holm) if p_holm is not None
                      else verdict(None)})
    return claims


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
                         failed=[r for r in mine if 'test_acc' not in r]))
    return rows


def mean_sd(values):
    v = list(values)
    return f'{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} ({len(v)})' if len(v) > 1 else \
        f'{v[0]:.2f} (1)' if v else '-'


def tuning_lines(arm, t):
    """One arm's tuning in the table: every configuration tried with its validation accuracy (or why it has none), as
    a line, or as an lr x init table (rows lr, columns init, the choice in bold) where the configurations form one."""
    show = lambda v: f'{v:.2f}' if isinstance(v, float) else v
    chosen = t['chosen'] or '-'
    if not t['tried']:  # an ablation: its method's choice
        return ['', f'- {arm} -> **{chosen}**']
    words = [c.split() for c in t['tried']]  # 'lr x0.3 init x1' -> ['lr', 'x0.3', 'init', 'x1']
    if any(len(w) != 4 or w[0] != 'lr' or w[2] != 'init' or w[3][0] != 'x' for w in words):
        return ['', f'- {arm}: ' + ', '.join(f'{c} {show(v)}' for c, v in t['tried'].items()) + f' -> **{chosen}**']
    by_value = lambda x: float(x[1:])  # 'x0.3' -> 0.3
    lrs, inits = sorted({w[1] for w in words}, key=by_value), sorted({w[3] for w in words}, key=by_value)
    picked = chosen.removesuffix(' so far')

    def cell(c):
        if c not in t['tried']:
            return '-'
        return f'**{show(t["tried"][c])}**' if c == picked else show(t['tried'][c])

    return ['', f'{arm} -> **{chosen}**', '', '| lr \\ init | ' + ' | '.join(inits) + ' |',
            '|---' * (len(inits) + 1) + '|',
            *[f'| {lr} | ' + ' | '.join(cell(f'lr {lr} init {i}') for i in inits) + ' |' for lr in lrs]]


def table(name, protocol, settings, seeds, rows, tuning, claims, wall_s, tune_wall_s, changes, *, bench=None,
          notes=(), incomplete=''):
    """The markdown table of a comparison: accuracy, cost (bench.py's interleaved speed and memory against the bare
    backbone, measured once per arm and settings), tuning, claims."""
    bench = bench or {}
    changed = f' **Changed for this table**: {"; ".join(changes)}.' if changes else ''
    val = any(r['val_selected'] for r in rows)  # the runs held out a validation split: its selection beside the final
    lines = [f'# {name}', '', protocol.about + '.' + changed, *([incomplete] if incomplete else []), '',
             f'Settings: {json.dumps(shown(settings))}; seeds {seeds}.',
             f'Machine: {platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}' +
             (f', {torch.cuda.get_device_name()}' if torch.cuda.is_available() else '') +
             f'. Wall time of the runs: {wall_s / 60:.1f} min' +
             (f' (and {tune_wall_s / 60:.1f} min of tuning before them)' if tuning else '') + '.', '',
             'Accuracy: the final epoch on the test images (no selection on test).' +
             (' Val-selected: the test accuracy of the epoch best on the held-out validation images.' if val else '') +
             ' Cost columns: `bench.py` on this arm\'s model with the protocol\'s settings (one batch; on a CPU '
             'at most 32 images), interleaved with the bare frozen backbone: training step (floor: forward + backward '
             'to the input) and inference latency as ratios, the median of per-round ratios; memory of a training '
             'step (weights, gradients, optimizer state and the activations saved for backward) against the floor\'s.',
             '', '| arm | test acc % (mean ± std, n) |' + (' val-selected test acc % |' if val else '') +
             ' trainable params | train time s | train img/s | latency ms/img | step / bare | latency / bare |'
             ' memory MB | memory / bare |' + (' tuned on validation |' if tuning else ''),
             '|' + '---|' * (10 + bool(val) + bool(tuning))]
    for r in rows:
        b = bench.get(r['arm'])
        cells = [r['arm'], mean_sd(r['accs'].values()) + (f', {len(r["failed"])} failed' if r['failed'] else '')]
        cells += [mean_sd(r['val_selected'].values())] if val else []
        cells += [fmt_params(r['params']) if r['params'] else '-',
                  f'{statistics.mean(r["times"]):.0f}' if r['times'] else '-',
                  f'{statistics.mean(r["rates"]):.1f}' if r['rates'] else '-']
        cells += [f'{b["latency_ms"]:.2f}', f'{b["step_ratio"]:.3f}', f'{b["latency_ratio"]:.3f}',
                  f'{b["memory_mb"]:.1f}', f'{b["memory_ratio"]:.3f}'] if b and 'error' not in b else ['-'] * 5
        if tuning:
            cells.append(tuning.get(r['arm'], {}).get('chosen') or '-')
        lines.append('| ' + ' | '.join(cells) + ' |')
    if tuning:
        lines += ['', 'Tuning (seed 0, 10% of the training images held out; the final epoch\'s validation '
                      'accuracy %, the best kept):']
        lines += [line for arm, t in tuning.items() for line in tuning_lines(arm, t)]
        lines += ['', *[f'- Grid: {note}.' for note in notes]] if notes else []
    if claims:
        cell = lambda x: f'{x["mean"]:+.2f} [{x["low"]:+.2f}, {x["high"]:+.2f}] ({x["n"]})' if x else '-'
        pv = lambda p: f' (p {p:.3f})' if p is not None else ''
        lines += ['', f'Claims: paired differences a − b by seed with their 95% CI; verdicts raw, and with Holm\'s '
                      f'correction across the {len(claims)} claims tested together (each accuracy its own family); '
                      'a claimed size is read against the 95% CI raw and, beside Holm\'s p, against the CI widened '
                      'for the claims at once (Bonferroni).',
                  '', '| claim | final epoch: a − b [95% CI] (n) | verdict | Holm-corrected | '
                      'val-selected: a − b | verdict | Holm-corrected |', '|---|---|---|---|---|---|---|']
        for c in claims:
            lines.append(f'| {c["a"]} over {c["b"]} ({c["paper"]}) | {cell(c["ci"])} | {c["verdict"]}{pv(c["p"])} | '
                         f'{c["verdict_holm"]}{pv(c["p_holm"])} | {cell(c["ci_val_selected"])} | '
                         f'{c["verdict_val_selected"]}{pv(c["p_val_selected"])} | '
                         f'{c["verdict_holm_val_selected"]}{pv(c["p_holm_val_selected"])} |')
    return '\n'.join(lines) + '\n'


def figures(name, rows, incomplete=''):
    """Accuracy (mean ± std over seeds) against trainable parameters (log scale) and against training time; an
    unfinished table's plots say so in their title (incomplete: which runs they hold), as its Markdown does."""
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
        ax.set_title(f'{name}\n{incomplete}' if incomplete else name, fontsize=9)
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
    p.add_argument('--seeds', help='comma list for every arm (default: the protocol\'s seeds)')
    p.add_argument('--tag', help='names the results when settings are changed: results/<protocol>-<tag>.md')
    for key in FLAGS:
        p.add_argument(flag(key), dest=key, help=f'change the protocol\'s {flag(key)} (needs --tag)')
    p.add_argument('--extra', default='', help='more train.py flags for every run, e.g. "--rho 0.25" (needs --tag)')
    p.add_argument('--tune-lr', help='replace the protocol\'s lr multipliers, e.g. 0.03,0.1,1 (needs --tag)')
    p.add_argument('--no-tune', action='store_true', help='skip the protocol\'s tuning (needs --tag)')
    p.add_argument('--jobs', type=POS_INT, default=1, help='runs side by side (a GPU each; on a CPU the threads split)')
    p.add_argument('--runs-dir', help='default runs/<name>')
    p.add_argument('--report', action='store_true', help='start no run: write the table of the runs finished so far')
    p.add_argument('--bench-reps', type=NONNEG_INT, default=10, help='rounds of bench.py for the cost columns, '
                   'measured once per arm when every run of the comparison has finished (0: leave them out)')
    p.add_argument('--tasks', help='of a multi-task protocol (vtab-1k): a comma list (default: all of them)')
    a = p.parse_args(argv)
    if a.list:
        for k, pr in PROTOCOLS.items():
            print(f'{k}: {pr.about}\n  arms: {", ".join(pr.arms)}\n  seeds {list(pr.seeds)}; {shown(pr.settings)}')
        return []
    if not a.protocol:
        p.error('--protocol is required (or --list)')
    try:
        tables.check_tag(a.tag)
    except tables.ResultsError as e:
        p.error(str(e))
    protocol = PROTOCOLS[a.protocol]
    settings = dict(protocol.settings)
    changed = {k: int(v) if v.isdigit() else v for k in FLAGS if (v := getattr(a, k)) is not None}
    if (set(changed) - set(WHERE) or a.extra or a.tune_lr or a.no_tune) and not a.tag and a.protocol != 'paper':
        p.error(f'{", ".join(flag(k) for k in changed) or "--extra / --tune-lr / --no-tune"} changes the '
                f'{a.protocol} protocol: add --tag NAME so that its results do not pass for the protocol\'s')
    settings.update(changed)
    arms = [m for m in a.methods.split(',') if m] if a.methods is not None else list(protocol.arms)
    unknown = [m for m in arms if m not in protocol.arms and m not in METHODS]
    if not arms:
        p.error('--methods is empty; give a comma list of arms (default: all of the protocol\'s)')
    if unknown:
        p.error(f'unknown arm(s) {unknown}; this protocol has {", ".join(protocol.arms)}')
    arm_flags = {arm: protocol.arms.get(arm, ['--method', arm]) for arm in arms}
    wanted = set(arms) | {protocol.tuned_like[arm] for arm in arms if arm in protocol.tuned_like}
    tuned_arms = {arm: protocol.arms.get(arm, ['--method', arm]) for arm in protocol.arms | arm_flags
                  if arm in wanted and (protocol.tuned_arms is None or arm in protocol.tuned_arms)}
    tune = {} if a.no_tune else {**protocol.tune, **({'lr': tuple(parse_list(a.tune_lr, POS, '--tune-lr'))}
                                                     if a.tune_lr else {})}
    given_seeds = parse_list(a.seeds, NONNEG_INT, '--seeds') if a.seeds else None
    arm_seeds = {arm: given_seeds or list(protocol.seeds_of(arm)) for arm in arms}
    name = a.protocol + (f'-{a.tag}' if a.tag else '')
    runs_dir = a.runs_dir or os.path.join('runs', *name.split('/'))
    if os.path.exists(runs_dir) and not os.path.isdir(runs_dir):
        p.error(f'--runs-dir {runs_dir}: is a file, not a folder')
    extra = a.extra.split()
    changes = [f'{flag(k)} {v}' for k, v in changed.items()] + ([f'--extra {a.extra}'] if extra else []) + \
        ([f'lr multipliers tuned: {a.tune_lr}'] if a.tune_lr else []) + (['no tuning'] if a.no_tune else [])
    tasks = [t for t in a.tasks.split(',') if t] if a.tasks is not None else list(protocol.tasks)
    if a.tasks is not None and not protocol.tasks:
        p.error(f'--tasks: {a.protocol} has no tasks; it is one data set')
    if protocol.tasks and (not tasks or set(tasks) - set(protocol.tasks)):
        p.error(f'--tasks takes a comma list of {", ".join(protocol.tasks)}')
    plan = Plan(protocol=protocol, arms=arms, arm_flags=arm_flags, tuned_arms=tuned_arms, tune=tune,
                extend=protocol.extend if not a.tune_lr else {}, arm_seeds=arm_seeds, extra=extra, jobs=a.jobs,
                report=a.report, bench_reps=a.bench_reps, changes=changes)
    named = [(f'{name}/{task}', {**settings, 'dataset': f'vtab-1k:{task}'}, os.path.join(runs_dir, task))
             for task in tasks] if protocol.tasks else [(name, settings, runs_dir)]
    for table_name, task_settings, _ in named:  # refused now rather than after hours of runs
        for arm in arms:
            check_flags(arm, train_argv(task_settings, arm_flags[arm] + list(protocol.final_flags), 0, 'unused',
                                        extra))
        try:
            same_settings(table_name, tables.read(table_name), task_settings, extra)
        except tables.ResultsError as e:
            raise SystemExit(f'error: {e}') from None
    outcome = {table_name.rsplit('/', 1)[-1]: compare(plan, table_name, task_settings, task_runs)
               for table_name, task_settings, task_runs in named}
    failed = [j for rows, failed in outcome.values() for j in failed]
    if protocol.tasks:
        rows = summarize_tasks(name, plan, settings)
    else:
        rows = outcome[name][0]
    if failed:
        print('FAILED runs:\n' + '\n'.join(f'  {j.label}: {j.result["failed"]}; log {j.result["log"]}'
                                           for j in failed), file=sys.stderr)
        raise SystemExit(1)
    return rows


@dataclass
class Plan:
    """What a comparison runs, beside its name, settings and runs folder (one per task of a multi-task protocol)."""
    protocol: object
    arms: list
    arm_flags: dict
    tuned_arms: dict
    tune: dict
    extend: dict
    arm_seeds: dict
    extra: list
    jobs: int
    report: bool
    bench_reps: int
    changes: list


def compare(plan, name, settings, runs_dir):
    """Tuning, the final runs, the cost columns and the table of one data set: (rows, failed jobs)."""
    protocol, extra, arms = plan.protocol, plan.extra, list(plan.arms)
    on_disk = tables.read(name) or {}  # its runs' records: a run whose folder is gone is read back from them
    tuning, failed, notes, tuning_runs = {}, [], [], {}
    if plan.tune:
        tuning, failed, notes, tuning_runs = tune_arms(name, plan.tuned_arms, plan.tune, plan.extend, settings, extra,
                                                       runs_dir, plan.jobs, report=plan.report,
                                                       tune_flags=protocol.tune_flags,
                                                       recorded={identity(c): r for c, r in
                                                                 on_disk.get('tuning_runs', {}).items()})
    for arm, like in protocol.tuned_like.items():  # an ablation keeps its method's hyper-parameters
        if arm in arms and like in tuning:
            tuning[arm] = dict(chosen=f'as {like}: {tuning[like]["chosen"]}', flags=tuning[like]['flags'], tried={})
    final_argv = {arm: plan.arm_flags[arm] + tuning.get(arm, {}).get('flags', []) + list(protocol.final_flags)
                  for arm in arms}
    jobs = []
    for seed in sorted({s for ss in plan.arm_seeds.values() for s in ss}):  # seed by seed: a comparison stopped
        for arm in arms:  # half-way has every arm of its first seeds
            if seed in plan.arm_seeds[arm]:
                out = os.path.join(runs_dir, f'{arm}-s{seed}'.replace(' ', '_').replace('=', ''))
                jobs.append(Job(f'[{name}] {arm} seed {seed}', train_argv(settings, final_argv[arm], seed, out, extra),
                                out, arm, seed))
    recorded = {identity(r['command']): r for r in on_disk.get('runs', []) if 'command' in r and 'test_acc' in r}
    for j in jobs:
        j.recorded = recorded.get(j.identity)
    run_all(jobs, plan.jobs, plan.report)
    runs = [{**j.result, 'arm': j.arm, 'seed': j.seed, 'command': j.command} for j in jobs
            if not j.result.get('pending')]
    failed += [j for j in jobs if 'failed' in j.result]
    pending = [j for j in jobs if j.result.get('pending')]
    costs = {}
    if plan.bench_reps and not pending:  # measured once per arm, when no run of this comparison is still going
        with tables.locked(name):
            known = (tables.read(name) or {}).get('bench', {})
        todo = {arm: train_argv(settings, final_argv[arm], 0, 'unused', extra) for arm in arms
                if arm not in known and any(r['arm'] == arm and 'test_acc' in r for r in runs)}
        if todo:
            costs = bench.measure(todo, plan.bench_reps)
    with tables.locked(name):  # merged with the table on disk now: another process may have written it meanwhile
        previous = tables.read(name)
        same_settings(name, previous, settings, extra)
        if previous is not None:  # runs of other arms or seeds made with these settings stay in the table
            keep = {(r['arm'], r['seed']) for r in runs}
            runs = [r for r in previous['runs'] if (r['arm'], r['seed']) not in keep] + runs
            tuning = {**previous.get('tuning', {}), **tuning}
            arms = list(dict.fromkeys(previous['arms'] + arms))
            costs = {**previous.get('bench', {}), **costs}
            notes = merged_notes(previous.get('grid_notes', []), notes)
            now = {identity(c) for c in tuning_runs}  # a run recorded under another path (moved) is the same run
            tuning_runs = {**{c: r for c, r in previous.get('tuning_runs', {}).items() if identity(c) not in now},
                           **tuning_runs}
        seeds = sorted({r['seed'] for r in runs} | {j.seed for j in jobs})
        tune_wall = sum(t.get('wall_s', 0.0) for t in tuning.values())
        have = {(r['arm'], r['seed']) for r in runs}  # a merged table may hold a run --report found unfinished
        pending = [j for j in pending if (j.arm, j.seed) not in have]
        rows = rows_of(runs, arms)
        claims = test_claims(protocol, {r['arm']: r for r in rows})
        wall = sum(r.get('wall_s') or 0.0 for r in runs)  # every run in the table, merged ones included
        incomplete = progress(tuning, [r.get('wall_s') for r in [*tuning_runs.values(), *runs]], len(pending),
                              len(jobs))
        md = table(name, protocol, settings, seeds, rows, tuning, claims, wall, tune_wall, plan.changes, bench=costs,
                   notes=notes, incomplete=incomplete)
        tables.write(name, dict(protocol=name.split('/')[0], name=name, changes=plan.changes,
                                 settings=shown(settings), extra=extra, seeds=seeds, arms=arms, tuning=tuning,
                                 grid_notes=notes, claims=claims, wall_s=wall, tune_wall_s=tune_wall, bench=costs,
                                 rows=rows, runs=runs, tuning_runs=tuning_runs), md)
        if any(r['accs'] for r in rows):
            figures(name, rows, incomplete and f'INCOMPLETE: {len(jobs) - len(pending)} of the {len(jobs)} final '
                    f'runs finished (the table says what is left)')
    print(md)
    return rows, failed


def progress(tuning, walls, final_left, final_all):
    """The line an unfinished table opens with: what is finished, what is left, and the hours of runs left at the mean
    wall time of the finished runs (walls, None where unknown); '' when everything is finished."""
    tried = [v for t in tuning.values() for v in t['tried'].values()]
    tune_left = tried.count('pending')
    if not tune_left and not final_left:
        return ''
    walls = [w for w in walls if w]
    mean = statistics.mean(walls) if walls else None
    hours = f' At the mean wall time of the {len(walls)} finished runs ({mean / 60:.1f} min, as they ran), about ' \
        f'{(tune_left + final_left) * mean / 3600:.1f} h of runs are left, to divide by the runs side by side ' \
        f'(--jobs).' if walls else ''
    return (f'**Incomplete**: {len(tried) - tune_left} of the {len(tried)} tuning runs (the grid as it stands: it '
            f'grows while a choice lies on its edge) and {final_all - final_left} of the {final_all} final runs are '
            f'finished; this table, written by --report, holds them.' + hours)


def task_means(accs):
    """task -> accuracy (VTAB-1k) -> the two averages the field reports: over the tasks, and over the means of the
    three groups (Natural 7, Specialized 4, Structured 8 tasks); each over the tasks present."""
    groups = {}
    for task, acc in accs.items():
        groups.setdefault(data.VTAB_1K[task][0], []).append(acc)
    group_means = {g: statistics.mean(v) for g, v in groups.items()}
    return dict(tasks=len(accs), task_mean=statistics.mean(accs.values()), group_means=group_means,
                mean_of_group_means=statistics.mean(group_means.values()))


def summarize_tasks(name, plan, settings):
    """The table of a multi-task protocol, from every task's table on disk made with these settings (tasks run in
    other invocations included): per task and arm the final-epoch test accuracy (mean ± std over seeds), the mean
    over the tasks and the mean of the group means, each labelled; the claims paired over the tasks."""
    task_rows = {t: record['rows'] for t in plan.protocol.tasks if (record := tables.read(f'{name}/{t}'))}
    arms = list(dict.fromkeys(plan.arms + [r['arm'] for rows in task_rows.values() for r in rows]))
    tasks = list(task_rows)
    accs = {arm: {t: row['accs'] for t in tasks for row in task_rows[t] if row['arm'] == arm and row['accs']}
            for arm in arms}
    per_task = {arm: {t: statistics.mean(a.values()) for t, a in accs[arm].items()} for arm in arms}
    means = {arm: task_means(per_task[arm]) if per_task[arm] else None for arm in arms}
    claims = test_claims(plan.protocol, {arm: dict(accs=per_task[arm], val_selected={}) for arm in arms})
    missing = [t for t in data.VTAB_1K if t not in tasks]
    lines = [f'# {name}', '', plan.protocol.about + '.' +
             (f' **Changed for this table**: {"; ".join(plan.changes)}.' if plan.changes else ''),
             *([f'**{len(tasks)} of the 19 tasks** (not run: {", ".join(missing)}): the means are over the tasks '
                f'present, not the benchmark\'s.'] if missing else []), '',
             f'Settings: {json.dumps(shown(settings))}; each task\'s table, every run and its tuning: '
             f'results/{name}/<task>.md and .json.', '',
             'Test accuracy % of the final epoch, mean ± std over seeds (n); tuned per task on train800 / val200, '
             'trained on train800val200.', '',
             '| task (group) | ' + ' | '.join(arms) + ' |', '|---|' + '---|' * len(arms)]
    for t in tasks:
        lines.append(f'| {t} ({data.VTAB_1K[t][0]}) | ' + ' | '.join(mean_sd(accs[arm].get(t, {}).values())
                                                                     for arm in arms) + ' |')
    cell = lambda arm, f: f'{f(means[arm]):.2f}' if means[arm] else '-'
    lines.append(f'| **mean over the {len(tasks)} tasks** | ' +
                 ' | '.join(cell(arm, lambda m: m['task_mean']) for arm in arms) + ' |')
    for g in ('Natural', 'Specialized', 'Structured'):
        lines.append(f'| {g} group mean | ' + ' | '.join(
            f'{means[arm]["group_means"][g]:.2f}' if means[arm] and g in means[arm]['group_means'] else '-'
            for arm in arms) + ' |')
    lines.append('| **mean of the group means** | ' +
                 ' | '.join(cell(arm, lambda m: m['mean_of_group_means']) for arm in arms) + ' |')
    if claims:
        ci = lambda x: f'{x["mean"]:+.2f} [{x["low"]:+.2f}, {x["high"]:+.2f}] ({x["n"]} tasks)' if x else '-'
        lines += ['', 'Claims, paired over the tasks (each task\'s mean over seeds): raw and Holm-corrected verdicts.',
                  '', '| claim | a − b [95% CI] | verdict | Holm-corrected |', '|---|---|---|---|']
        lines += [f'| {c["a"]} over {c["b"]} ({c["paper"]}) | {ci(c["ci"])} | {c["verdict"]} | {c["verdict_holm"]} |'
                  for c in claims]
    md = '\n'.join(lines) + '\n'
    with tables.locked(name):
        same_settings(name, tables.read(name), settings, plan.extra)
        tables.write(name, dict(protocol=name, settings=shown(settings), extra=plan.extra, tasks=tasks, arms=arms,
                                 accs=accs, per_task=per_task, means=means, claims=claims), md)
    print(md)
    return [dict(arm=arm, per_task=per_task[arm], means=means[arm]) for arm in arms]


def check_flags(arm, argv):
    """The flags of an arm's runs as train.py will read them: a value it refuses stops the comparison here."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            train.resolve(parse(argv))
    except SystemExit:
        raise SystemExit(f'error: arm {arm}: train.py refuses its flags: {err.getvalue().strip().splitlines()[-1]}') \
            from None
    except train.SETUP_ERRORS as e:
        raise SystemExit(f'error: arm {arm}: {e}') from None


def same_settings(name, previous, settings, extra):
    """A table is merged only with one made with the same settings and --extra flags (wherever its data lies)."""
    if previous is not None:
        what = lambda s: {k: v for k, v in s.items() if k not in WHERE}
        tables.check_settings(name, dict(previous, settings={**what(previous['settings']),
                                                              'extra': previous.get('extra', [])}),
                               {**what(shown(settings)), 'extra': extra})


if __name__ == '__main__':
    main()
