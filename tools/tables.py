"""Tables under results/: written whole, under a lock, merged with what is on disk when they are written, and never
replaced by a table made with other settings (compare.py's and bench.py's rule); and what a comparison's table shows:
its markdown, made from its .json record, its figures, and the VTAB-1k summary over the tasks' tables.

    with tables.locked('bench-tf_efficientnet_lite0-128'):   # two processes never lose each other's rows
        previous = tables.read(name)                         # None, or the .json record
        tables.check_settings(name, previous, settings)      # a ResultsError naming --tag if they differ
        tables.write(name, record, markdown)                 # .json and .md, each a temporary file renamed
    md = tables.markdown(record, protocol.about)             # a comparison's table, from its .json record
"""
import fcntl
import json
import os
import platform
import re
import statistics
from contextlib import contextmanager

import torch

from formats.vtab import TASKS as VTAB_1K
from tools import stats
from tools.protocols import WHERE, identity

DIR = 'results'


class ResultsError(Exception):
    """A results file this program must not write (another program's, or other settings'): the message says why."""


def check_tag(tag):
    """A --tag becomes part of a file name: letters, digits, '.', '_' and '-' only."""
    if tag is not None and not re.fullmatch(r'[A-Za-z0-9._-]+', tag):
        raise ResultsError(f'--tag {tag!r}: use letters, digits, ".", "_" and "-" only (it names a file in {DIR}/)')


def path(name, ext):
    return os.path.join(DIR, f'{name}.{ext}')


@contextmanager
def locked(name):
    """Holds results/.<name>.lock (the kernel releases it if the process dies)."""
    lock = os.path.join(DIR, os.path.dirname(name), f'.{os.path.basename(name)}.lock')  # name: 'table' or 'dir/table'
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    with open(lock, 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def read(name):
    """The .json record of a table, or None; a damaged or foreign file is a ResultsError, never overwritten."""
    if not os.path.exists(path(name, 'json')):
        if os.path.exists(path(name, 'md')):
            raise ResultsError(f'{path(name, "md")} has no .json record of its settings (an older table, or another '
                               f'program\'s); move it away, or give these results their own --tag')
        return None
    try:
        with open(path(name, 'json')) as f:
            record = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ResultsError(f'{path(name, "json")} is damaged ({e}); move it away to write this table') from None
    if not isinstance(record, dict) or 'settings' not in record:
        raise ResultsError(f'{path(name, "json")} is not a table of this codebase (no settings); move it away, or '
                           f'give these results their own --tag')
    return record


def check_settings(name, previous, settings):
    if previous is not None and previous['settings'] != settings:
        differ = sorted(k for k in set(settings) | set(previous['settings'])
                        if settings.get(k) != previous['settings'].get(k))
        raise ResultsError(f'{path(name, "json")} was made with other settings ({", ".join(differ)} differ); give '
                           f'these results their own --tag')


def write(name, record, markdown):
    os.makedirs(os.path.dirname(path(name, 'md')), exist_ok=True)
    for ext, text in (('json', json.dumps(record, indent=1, allow_nan=False) + '\n'), ('md', markdown)):
        tmp = path(name, ext) + '.tmp'
        with open(tmp, 'w') as f:
            f.write(text)
        os.replace(tmp, path(name, ext))


# ---- a comparison's table: re-made whole from the record on disk and the comparison's runs ----

def same_settings(name, previous, settings, extra):
    """A table is joined only by a comparison with the same settings and --extra flags (wherever its data lies)."""
    if previous is not None:
        what = lambda s: {k: v for k, v in s.items() if k not in WHERE}
        recorded = {**what(previous['settings']), 'extra': previous.get('extra', [])}
        check_settings(name, dict(previous, settings=recorded), {**what(shown(settings)), 'extra': extra})


def combined(previous, mine):
    """The inputs of a table (arms, runs, tuning, tuning_runs, grid_notes, bench): those of the record on disk
    (previous; None: no table yet) and of this comparison (mine). A run, an arm's tuning or cost, a tuning run and a
    grid note of this comparison replace the record's of the same arm and seed, arm, command (wherever its folder
    lies) or axis and edge; the record's others stay (other comparisons' with these settings)."""
    if previous is None:
        return mine
    keep, now = {(r['arm'], r['seed']) for r in mine['runs']}, {identity(c) for c in mine['tuning_runs']}
    return dict(arms=list(dict.fromkeys(previous['arms'] + mine['arms'])),
                runs=[r for r in previous['runs'] if (r['arm'], r['seed']) not in keep] + mine['runs'],
                tuning={**previous.get('tuning', {}), **mine['tuning']},
                tuning_runs={**{c: r for c, r in previous.get('tuning_runs', {}).items() if identity(c) not in now},
                             **mine['tuning_runs']},
                grid_notes=merged_notes(previous.get('grid_notes', []), mine['grid_notes']),
                bench={**previous.get('bench', {}), **mine['bench']})


def merged_notes(previous, now):
    """The grid notes of the table on disk and of this comparison: one note per axis and edge, this comparison's where
    both have one (the arms a note names change while a grid fills: a --report made half-way names fewer)."""
    key = lambda note: note.split(':')[0]  # 'init axis extended to x30 for every arm', without the arms
    mine = {key(n) for n in now}
    return [n for n in previous if key(n) not in mine] + list(now)


def write_comparison(name, inputs, *, protocol, settings, extra, changes, final_runs):
    """A comparison's table re-made whole from its inputs (combined()) and written: .json, .md and figures; returns
    (its rows, its markdown). final_runs: (arm, seed, pending) of the comparison's final runs, whose seeds the table
    lists; those pending, and not in the table, are counted in its progress line."""
    runs, tuning = inputs['runs'], inputs['tuning']
    have = {(r['arm'], r['seed']) for r in runs}  # a table may hold a run --report found unfinished
    left = [(arm, seed) for arm, seed, pending in final_runs if pending and (arm, seed) not in have]
    rows = rows_of(runs, inputs['arms'])
    record = dict(protocol=name.split('/')[0], name=name, changes=changes, settings=shown(settings), extra=extra,
                  seeds=sorted({r['seed'] for r in runs} | {seed for _, seed, _ in final_runs}), arms=inputs['arms'],
                  tuning=tuning, grid_notes=inputs['grid_notes'],
                  claims=stats.claim_verdicts(protocol.claims, {r['arm']: r for r in rows}),
                  wall_s=sum(r.get('wall_s') or 0.0 for r in runs),  # every run in the table, other comparisons' too
                  tune_wall_s=sum(t.get('wall_s', 0.0) for t in tuning.values()), bench=inputs['bench'], rows=rows,
                  test_sets=list(protocol.test_sets), paper=[list(p) for p in protocol.paper],
                  runs=runs, tuning_runs=inputs['tuning_runs'])
    incomplete = progress(tuning, [r.get('wall_s') for r in [*inputs['tuning_runs'].values(), *runs]], len(left),
                          len(final_runs))
    md = markdown(record, protocol.about, incomplete)
    write(name, record, md)
    if any(r['accs'] for r in rows):
        figures(name, rows, incomplete and f'INCOMPLETE: {len(final_runs) - len(left)} of the {len(final_runs)} final '
                f'runs finished (the table says what is left)')
    return rows, md


def shown(settings):
    """Settings as a table shows them: the data folder relative to where the comparison runs."""
    return {k: os.path.relpath(v) if k == 'data_dir' else v for k, v in settings.items()}


def fmt_params(n):
    """A parameter count as the tables show it: 1.23M, 45.6K or 1,234."""
    return f'{n / 1e6:.2f}M' if n >= 1e6 else f'{n / 1e3:.1f}K' if n >= 1e4 else f'{n:,}'


def mean_sd(values):
    """'mean ± std (n)' of accuracies, '81.00 (1)' of one, '-' of none."""
    v = list(values)
    return f'{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} ({len(v)})' if len(v) > 1 else \
        f'{v[0]:.2f} (1)' if v else '-'


def rows_of(runs, arms):
    """A row per arm from the runs of the table: accuracies by seed (final epoch, and val-selected where the runs held
    out validation images), parameters, times, the runs that gave no accuracy."""
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
        sets = {}  # {test set: {seed: accuracy}}, the measured ones
        for r in ok:
            for t, acc in (r.get('test_sets') or {}).items():
                if isinstance(acc, float):
                    sets.setdefault(t, {})[r['seed']] = acc
        rows[-1]['test_sets'] = sets
    return rows


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


def markdown(record, about, incomplete=''):
    """The markdown table of a comparison from its record: accuracy, cost (bench.py's interleaved speed and memory
    against the bare backbone, measured once per arm and settings), tuning, claims. about: the protocol's; incomplete:
    progress()'s line."""
    rows, tuning, changes = record['rows'], record['tuning'], record['changes']
    changed = f' **Changed for this table**: {"; ".join(changes)}.' if changes else ''
    val = any(r['val_selected'] for r in rows)  # the runs held out a validation split: its selection beside the final
    lines = [f'# {record["name"]}', '', about + '.' + changed, *([incomplete] if incomplete else []), '',
             f'Settings: {json.dumps(record["settings"])}; seeds {record["seeds"]}.',
             f'Machine: {platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}' +
             (f', {torch.cuda.get_device_name()}' if torch.cuda.is_available() else '') +
             f'. Wall time of the runs: {record["wall_s"] / 60:.1f} min' +
             (f' (and {record["tune_wall_s"] / 60:.1f} min of tuning before them)' if tuning else '') + '.', '',
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
    lines += ['| ' + ' | '.join(arm_cells(r, record['bench'].get(r['arm']), val, tuning)) + ' |' for r in rows]
    if tuning:
        lines += ['', 'Tuning (seed 0, 10% of the training images held out; the final epoch\'s validation '
                      'accuracy %, the best kept):']
        lines += [line for arm, t in tuning.items() for line in tuning_lines(arm, t)]
        lines += ['', *[f'- Grid: {note}.' for note in record['grid_notes']]] if record['grid_notes'] else []
    return '\n'.join(lines + test_set_lines(record) + claim_lines(record['claims'])) + '\n'


def test_set_lines(record):
    """The out-of-distribution table: each arm's test accuracy, on the data set it was prompted on and, unchanged, on
    each test set (mean ± std over seeds, n), the mean of the test sets (per seed, then over seeds); the paper's rows
    below, labelled as theirs."""
    sets = record.get('test_sets') or []
    if not sets:
        return []
    avg = lambda r: [statistics.mean(r['test_sets'][t][s] for t in sets) for s in r['accs']
                     if all(s in r['test_sets'].get(t, {}) for t in sets)]
    lines = ['', f'Out of distribution: each final run\'s prompt file tested unchanged on {", ".join(sets)} '
                 '(tools/predict.py; ImageNet-R and -A scored over their 200 classes); avg: the mean of the test sets. '
                 'A set not measured yet is left out of n.', '',
             '| arm | ' + ' | '.join([record['settings'].get('dataset', 'source'), *sets, 'avg']) + ' |',
             '|' + '---|' * (len(sets) + 3)]
    lines += ['| ' + ' | '.join([r['arm'], mean_sd(r['accs'].values()),
                                 *[mean_sd(r['test_sets'].get(t, {}).values()) for t in sets], mean_sd(avg(r))]) + ' |'
              for r in record['rows']]
    theirs = lambda v: f'{v:.2f}' if v is not None else '-'
    for label, fig in record.get('paper') or []:  # an average the paper does not print: the mean of its four
        mean = fig.get('avg', statistics.mean(fig[t] for t in sets) if all(t in fig for t in sets) else None)
        lines.append('| ' + ' | '.join([f'{label} (the paper\'s figures, not run here)', theirs(fig.get('imagenet')),
                                        *[theirs(fig.get(t)) for t in sets], theirs(mean)]) + ' |')
    return lines


def arm_cells(r, b, val, tuning):
    """The cells of an arm's row: r its row, b its bench.py costs (None: not measured); val: a val-selected column."""
    cells = [r['arm'], mean_sd(r['accs'].values()) + (f', {len(r["failed"])} failed' if r['failed'] else '')]
    cells += [mean_sd(r['val_selected'].values())] if val else []
    cells += [fmt_params(r['params']) if r['params'] else '-',
              f'{statistics.mean(r["times"]):.0f}' if r['times'] else '-',
              f'{statistics.mean(r["rates"]):.1f}' if r['rates'] else '-']
    cells += [f'{b["latency_ms"]:.2f}', f'{b["step_ratio"]:.3f}', f'{b["latency_ratio"]:.3f}',
              f'{b["memory_mb"]:.1f}', f'{b["memory_ratio"]:.3f}'] if b and 'error' not in b else ['-'] * 5
    return cells + ([tuning.get(r['arm'], {}).get('chosen') or '-'] if tuning else [])


def claim_lines(claims):
    """The claims of a comparison's table (stats.claim_verdicts), final epoch and val-selected, raw and Holm."""
    if not claims:
        return []
    cell = lambda x: f'{x["mean"]:+.2f} [{x["low"]:+.2f}, {x["high"]:+.2f}] ({x["n"]})' if x else '-'
    pv = lambda p: f' (p {p:.3f})' if p is not None else ''
    return ['', f'Claims: paired differences a − b by seed with their 95% CI; verdicts raw, and with Holm\'s '
                f'correction across the {len(claims)} claims tested together (each accuracy its own family); '
                'a claimed size is read against the 95% CI raw and, beside Holm\'s p, against the CI widened '
                'for the claims at once (Bonferroni).',
            '', '| claim | final epoch: a − b [95% CI] (n) | verdict | Holm-corrected | '
                'val-selected: a − b | verdict | Holm-corrected |', '|---|---|---|---|---|---|---|',
            *[f'| {c["a"]} over {c["b"]} ({c["paper"]}) | {cell(c["ci"])} | {c["verdict"]}{pv(c["p"])} | '
              f'{c["verdict_holm"]}{pv(c["p_holm"])} | {cell(c["ci_val_selected"])} | '
              f'{c["verdict_val_selected"]}{pv(c["p_val_selected"])} | '
              f'{c["verdict_holm_val_selected"]}{pv(c["p_holm_val_selected"])} |' for c in claims]]


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


def figures(name, rows, incomplete=''):
    """Accuracy (mean ± std over seeds) against trainable parameters (log scale) and against training time; an
    unfinished table's plots say so in their title (incomplete: which runs they hold), as its Markdown does."""
    from tools.figures import pyplot
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
        paths.append(os.path.join(DIR, f'{name}-{key}.png'))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


# ---- a multi-task protocol (VTAB-1k): the summary of its tasks' tables ----

def task_means(accs):
    """task -> accuracy (VTAB-1k) -> the two averages the field reports: over the tasks, and over the means of the
    three groups (Natural 7, Specialized 4, Structured 8 tasks); each over the tasks present."""
    groups = {}
    for task, acc in accs.items():
        groups.setdefault(VTAB_1K[task][0], []).append(acc)
    group_means = {g: statistics.mean(v) for g, v in groups.items()}
    return dict(tasks=len(accs), task_mean=statistics.mean(accs.values()), group_means=group_means,
                mean_of_group_means=statistics.mean(group_means.values()))


def task_summary(name, protocol, arms, settings, *, extra, changes):
    """The table of a multi-task protocol, written (.json and .md), from every task's table on disk (tasks run in other
    invocations included): per task and arm the final-epoch test accuracy (mean ± std over seeds), the mean over the
    tasks and the mean of the group means, each labelled; the claims paired over the tasks. Returns (a row per arm:
    its accuracy per task and the two means, the markdown)."""
    task_rows = {t: record['rows'] for t in protocol.tasks if (record := read(f'{name}/{t}'))}
    arms = list(dict.fromkeys(arms + [r['arm'] for rows in task_rows.values() for r in rows]))
    tasks = list(task_rows)
    accs = {arm: {t: row['accs'] for t in tasks for row in task_rows[t] if row['arm'] == arm and row['accs']}
            for arm in arms}
    per_task = {arm: {t: statistics.mean(a.values()) for t, a in accs[arm].items()} for arm in arms}
    means = {arm: task_means(per_task[arm]) if per_task[arm] else None for arm in arms}
    claims = stats.claim_verdicts(protocol.claims, {arm: dict(accs=per_task[arm], val_selected={}) for arm in arms})
    record = dict(protocol=name, settings=shown(settings), extra=extra, tasks=tasks, arms=arms, accs=accs,
                  per_task=per_task, means=means, claims=claims)
    md = task_markdown(name, protocol.about, record, changes)
    with locked(name):
        same_settings(name, read(name), settings, extra)
        write(name, record, md)
    return [dict(arm=arm, per_task=per_task[arm], means=means[arm]) for arm in arms], md


def task_markdown(name, about, record, changes):
    """task_summary()'s markdown: a row per task, the two means, the claims paired over the tasks."""
    arms, tasks, accs, means = record['arms'], record['tasks'], record['accs'], record['means']
    missing = [t for t in VTAB_1K if t not in tasks]
    lines = [f'# {name}', '', about + '.' + (f' **Changed for this table**: {"; ".join(changes)}.' if changes else ''),
             *([f'**{len(tasks)} of the 19 tasks** (not run: {", ".join(missing)}): the means are over the tasks '
                f'present, not the benchmark\'s.'] if missing else []), '',
             f'Settings: {json.dumps(record["settings"])}; each task\'s table, every run and its tuning: '
             f'results/{name}/<task>.md and .json.', '',
             'Test accuracy % of the final epoch, mean ± std over seeds (n); tuned per task on train800 / val200, '
             'trained on train800val200.', '',
             '| task (group) | ' + ' | '.join(arms) + ' |', '|---|' + '---|' * len(arms)]
    for t in tasks:
        lines.append(f'| {t} ({VTAB_1K[t][0]}) | ' + ' | '.join(mean_sd(accs[arm].get(t, {}).values())
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
    if record['claims']:
        ci = lambda x: f'{x["mean"]:+.2f} [{x["low"]:+.2f}, {x["high"]:+.2f}] ({x["n"]} tasks)' if x else '-'
        lines += ['', 'Claims, paired over the tasks (each task\'s mean over seeds): raw and Holm-corrected verdicts.',
                  '', '| claim | a − b [95% CI] | verdict | Holm-corrected |', '|---|---|---|---|']
        lines += [f'| {c["a"]} over {c["b"]} ({c["paper"]}) | {ci(c["ci"])} | {c["verdict"]} | {c["verdict_holm"]} |'
                  for c in record['claims']]
    return '\n'.join(lines) + '\n'
