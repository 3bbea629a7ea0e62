"""Run methods x seeds under one named protocol, each the same way, and write the results table.

    python compare.py --protocol offline-cifar10                  # README's table: CPU, offline, about an hour
    python compare.py --protocol offline-tiny --methods lp,lorvp,lotep_cp,lorsp --seeds 0
    python compare.py --protocol paper --model vit_base_patch32_224 --dataset cifar100 --data-dir data

Every run is a plain `python train.py ...` (the one training code path) into runs/<name>/<method>-s<seed>, with its
log beside it. A finished run is read back and a killed one resumed, so a killed comparison continues where it
stopped. Writes results/<name>.md and results/<name>.json (name: the protocol, plus --tag when settings are changed).

A separate script rather than a mode of train.py: train.py stays one run, readable top to bottom; this file only
spells out settings, launches runs and aggregates their summary.json files.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import train
from data import SHARED_DATA

HERE = os.path.dirname(os.path.abspath(__file__))

# The protocols, in one place. Every method of a comparison gets exactly these settings; the optimizer, lr and schedule
# are each method's recipe (train.RECIPES), the same across seeds.
PROTOCOLS = {
    'offline-cifar10': dict(model='tf_efficientnet_lite0', dataset='cifar10', data_dir=SHARED_DATA,
                            train_per_class=500, test_limit=2000, img_size=128, epochs=2, batch_size=32),
    'offline-tiny': dict(model='tf_efficientnet_lite0', dataset='tiny-imagenet', data_dir=SHARED_DATA,
                         train_per_class=100, img_size=64, epochs=2, batch_size=32),
    'paper': dict(model='vit_base_patch16_224', dataset='tiny-imagenet', data_dir='data', img_size=224, epochs=20,
                  batch_size=256),  # Tables 1-2 of both papers (r0 = 6 is LoTeP's default); needs a GPU, network
}
METHODS = {
    'offline-cifar10': ['lp', 'ft', 'lora', 'lorvp', 'ilm_vp', 'autovp', 'lotep_cp', 'lotep_tk', 'grouped_lorvp',
                        'lorsp', 'lorsp_lpf'],
    'offline-tiny': ['lp', 'lorvp', 'lotep_cp', 'lotep_tk', 'lorsp'],
    'paper': ['lp', 'lorvp', 'lotep_cp', 'lotep_tk', 'lorsp'],
}
SEEDS = {'offline-cifar10': [0, 1, 2], 'offline-tiny': [0], 'paper': [0]}
FLAGS = {'model': '--model', 'dataset': '--dataset', 'data_dir': '--data-dir', 'train_per_class': '--train-per-class',
         'test_limit': '--test-limit', 'img_size': '--img-size', 'epochs': '--epochs', 'batch_size': '--batch-size'}


def train_argv(settings, method, seed, out, extra=(), speed_reps=5):
    argv = ['--method', method, '--seed', str(seed), '--out', out, '--speed-reps', str(speed_reps)]
    for key, value in settings.items():
        argv += [FLAGS[key], str(value)]
    return argv + list(extra)


def read_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def run_one(argv, out, label):
    """One train.py run in its own process (memory freed, a crash contained); returns its summary or None.
    A run directory is reused (read back, or resumed) only if it was made by exactly this command."""
    summary, config, wall = (os.path.join(out, n) for n in ('summary.json', 'config.json', 'wall.json'))
    made_by = (read_json(config) or {}).get('command')
    if made_by is not None and made_by != 'python train.py ' + ' '.join(argv):
        raise SystemExit(f'error: {out} holds a run made with other settings ({made_by}); remove it, or give '
                         f'this comparison another --tag or --runs-dir')
    if os.path.exists(summary):
        print(f'{label}: done before, read back')
    else:
        resume = made_by is not None
        cmd = [sys.executable, os.path.join(HERE, 'train.py')] + (['--resume', '--out', out] if resume else argv)
        os.makedirs(out, exist_ok=True)
        print(f'{label}: {"resuming" if resume else "running"} {" ".join(cmd[1:])}', flush=True)
        t0 = time.time()
        with open(os.path.join(out, 'log.txt'), 'a') as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        wall_s = read_json(wall, {'wall_s': 0.0})['wall_s'] + time.time() - t0  # summed over a resumed run's sessions
        with open(wall, 'w') as f:
            json.dump({'wall_s': wall_s}, f)
        if code != 0:
            print(f'{label}: FAILED (exit {code}); see {out}/log.txt', flush=True)
            return None
    return {**read_json(summary), 'wall_s': read_json(wall, {}).get('wall_s')}


def tune_lr(name, settings, method, scales, extra, runs_dir):
    """Same budget for every method: one run per lr multiplier at seed 0 with 10% of the training images held out;
    the multiplier with the best validation accuracy wins (test accuracy is never looked at)."""
    results, wall = {}, 0.0
    for scale in scales:
        out = os.path.join(runs_dir, 'tune', f'{method}-lr{scale:g}')
        argv = train_argv(settings, method, 0, out, [*extra, '--val-split', '0.1', '--lr-scale', str(scale)], 0)
        s = run_one(argv, out, f'[tune {name}] {method} lr x{scale:g}')
        if s is not None:
            results[scale] = s['val_acc']
            wall += s.get('wall_s') or 0.0
    best = max(results, key=lambda k: (results[k], -abs(k - 1))) if results else 1.0
    return best, results, wall


def fmt_params(n):
    return f'{n / 1e6:.2f}M' if n >= 1e6 else f'{n / 1e3:.1f}K' if n >= 1e4 else f'{n:,}'


def shown(settings):
    return {**settings, 'data_dir': os.path.relpath(settings['data_dir'])}  # ../shared/data, not this machine's path


def table(rows, settings, name, seeds, wall_s, tuned, tune_wall_s):
    head = ('| method | test acc % (mean ± std, n) | trainable params | train time s | train img/s | latency ms/img '
            '| step / bare | latency / bare |')
    lines = [f'# {name}', '', f'Settings: {json.dumps(shown(settings))}; seeds {seeds}.',
             f'Machine: {platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}' +
             (f', {torch.cuda.get_device_name()}' if torch.cuda.is_available() else '') +
             f'. Wall time of all runs: {wall_s / 60:.1f} min' +
             (f' (and {tune_wall_s / 60:.1f} min of lr tuning before them)' if tuned else '') + '.', '',
             'Accuracy: the final epoch on the test images (no selection on test). Speed columns come from the seed-0 '
             'run: its training step and inference latency against the bare frozen backbone with the same head '
             '(forward + backward to the input / forward), batch 32, best of the repetitions.', '', head,
             '|' + '---|' * 8]
    for r in rows:
        accs = r['accs']
        acc = f'{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f} ({len(accs)})' if len(accs) > 1 else \
            f'{accs[0]:.2f} (1)' if accs else 'failed'
        s = r['speed']
        cells = [r['method'] + (f' (lr x{tuned[r["method"]]:g})' if tuned and tuned.get(r['method'], 1) != 1 else ''),
                 acc, fmt_params(r['params']) if r['params'] else '-',
                 f'{statistics.mean(r["times"]):.0f}' if r['times'] else '-',
                 f'{statistics.mean(r["rates"]):.1f}' if r['rates'] else '-']
        cells += [f'{s["latency_ms"]:.2f}', f'{s["step_ratio"]:.3f}', f'{s["latency_ratio"]:.3f}'] if s else \
            ['-'] * 3
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--protocol', required=True, choices=sorted(PROTOCOLS))
    p.add_argument('--methods', help='comma list (default: the protocol\'s list)')
    p.add_argument('--seeds', help='comma list (default: the protocol\'s seeds)')
    p.add_argument('--tag', help='names the results when settings are changed: results/<protocol>-<tag>.md')
    for key, flag in FLAGS.items():
        p.add_argument(flag, dest=key, type=str, help=f'change the protocol\'s {flag} (needs --tag, except for paper)')
    p.add_argument('--tune-lr', help='lr multipliers tried per method on a validation split, e.g. 0.3,1,3')
    p.add_argument('--extra', default='', help='more train.py flags for every run, e.g. "--rho 0.25" (needs --tag)')
    p.add_argument('--runs-dir', help='default runs/<name>')
    a = p.parse_args(argv)

    settings = dict(PROTOCOLS[a.protocol])
    changed = {k: v for k in FLAGS if (v := getattr(a, k)) is not None}
    if (changed or a.extra) and not a.tag and a.protocol != 'paper':
        p.error(f'{", ".join(FLAGS[k] for k in changed) or "--extra"} changes the {a.protocol} protocol: '
                f'add --tag NAME so that its results do not pass for the protocol\'s')
    settings.update(changed)
    methods = a.methods.split(',') if a.methods else METHODS[a.protocol]
    unknown = [m for m in methods if m not in train.METHODS]
    if unknown:
        p.error(f'unknown method(s) {unknown}; choose from {", ".join(sorted(train.METHODS))}')
    seeds = [int(s) for s in a.seeds.split(',')] if a.seeds else SEEDS[a.protocol]
    name = a.protocol + (f'-{a.tag}' if a.tag else '')
    runs_dir = a.runs_dir or os.path.join('runs', name)
    extra = a.extra.split()

    tuned, tuning, tune_wall = {}, {}, 0.0
    if a.tune_lr:
        scales = [float(s) for s in a.tune_lr.split(',')]
        for m in methods:
            tuned[m], tuning[m], w = tune_lr(name, settings, m, scales, extra, runs_dir)
            tune_wall += w
            print(f'[tune {name}] {m}: val acc by lr multiplier {tuning[m]} -> x{tuned[m]:g}', flush=True)

    rows, wall, results = [], 0.0, []
    total, done = len(methods) * len(seeds), 0
    for m in methods:
        row = dict(method=m, accs=[], times=[], rates=[], params=None, speed=None)
        for seed in seeds:
            done += 1
            scale = tuned.get(m, 1.0)
            out = os.path.join(runs_dir, f'{m}-s{seed}' if scale == 1.0 else f'{m}-lr{scale:g}-s{seed}')
            run_extra = extra + (['--lr-scale', str(scale)] if scale != 1.0 else [])
            s = run_one(train_argv(settings, m, seed, out, run_extra, 5 if seed == seeds[0] else 0), out,
                        f'[{done}/{total} {name}] {m} seed {seed}')
            if s is None:
                continue
            results.append(s)
            row['accs'].append(s['test_acc'])
            row['times'].append(s['train_time_s'])
            row['rates'].append(s['train_images_per_s'])
            row['params'] = s['trainable_params']
            wall += s.get('wall_s') or 0.0
            if 'latency_ms' in s:
                row['speed'] = {k: s[k] for k in ('latency_ms', 'step_ratio', 'latency_ratio')}
        rows.append(row)

    os.makedirs('results', exist_ok=True)
    md = table(rows, settings, name, seeds, wall, tuned, tune_wall)
    if tuning:
        md += '\nlr multipliers tried on a validation split (10% of the training images, seed 0), val acc %:\n\n' + \
            '\n'.join(f'- {m}: ' + ', '.join(f'x{k:g} {v:.2f}' for k, v in t.items()) + f' -> x{tuned[m]:g}'
                      for m, t in tuning.items()) + '\n'
    with open(os.path.join('results', f'{name}.md'), 'w') as f:
        f.write(md)
    with open(os.path.join('results', f'{name}.json'), 'w') as f:
        json.dump(dict(protocol=a.protocol, name=name, settings=shown(settings), seeds=seeds, methods=methods,
                       lr_multipliers=tuned, tuning=tuning, wall_s=wall, tune_wall_s=tune_wall, rows=rows,
                       runs=results), f, indent=1)
    print(md)
    return rows


if __name__ == '__main__':
    main()
