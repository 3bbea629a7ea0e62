"""Run the arms of a named protocol (methods, or a method with some flags) x seeds, each the same way, and write the
results table, its statistics and its figures.

    python tools/compare.py --protocol offline-cifar10                    # README's table: CPU, offline
    python tools/compare.py --protocol offline-cifar10-long --jobs 2      # tuned on validation, 5 seeds for the claims, Holm
    python tools/compare.py --protocol ablation-lotep-rho                 # one of the papers' ablations
    python tools/compare.py --protocol offline-cifar10-long --report      # the table of the runs finished so far
    python tools/compare.py --list                                        # every protocol, its arms and settings
    python tools/compare.py --protocol vtab-1k --launcher slurm --partition gpu   # a Slurm job per run (docs/gpus.md)

Every run is a plain `python train.py ...` (the one training code path) into runs/<name>/<arm>-s<seed>, its log
beside it. A finished run is read back and a killed one resumed, so a killed comparison continues where it stopped.
Comparisons may share a runs folder: only the one holding a run's launch lock (<run>.launch) starts it, and lets go
once its outcome (summary.json, or a .diverged marker) is on disk; the others wait, then read it back: no run is run
twice, and a run another process holds is never touched. With --launcher slurm each run is a Slurm job instead
(tools/cluster.py, submitit), requeued when preempted or out of time and resumed from its last epoch; --launcher local
runs the same jobs as processes here. Tables: results/<name>.md and .json, name = the protocol
(plus --tag when settings are changed), re-made whole under the table's lock from its record on disk and this
comparison's runs: a run over fewer arms or seeds joins the table made with the same settings, never replaces it;
other settings need their own --tag. Exit status 1 if any run failed (each named).

A separate script rather than a mode of train.py: train.py stays one run; this file launches runs and aggregates
their summary.json files; protocols.py spells out the settings, stats.py the statistics, tables.py the tables.
"""
import argparse
import contextlib
import fcntl
import io
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

if __name__ == '__main__':  # python tools/compare.py from the project root: the project's modules come from there
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from tools import bench, cluster, predict, tables
from tools.cluster import die_with_parent, record, train_command
import train
from flags import NONNEG_INT, POS, POS_INT, parse
from methods import METHODS
from tools.protocols import DATA, PROTOCOLS, WHERE, choice, flag, grid, grown, identity, plan, train_argv
from runs import RunDir, RunDirError

FLAGS = ('model', 'dataset', 'data_dir', 'train_per_class', 'test_limit', 'img_size', 'epochs', 'batch_size',
         'precision')  # the protocol's settings a flag of this script changes
TUNING_RECORD = ('final_val_acc', 'val_acc', 'train_loss', 'diverged', 'wall_s')  # what a table keeps of a tuning run


def read_json(path, default=None):
    """A JSON file's content, or default where there is no such file."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def read_summary(out, wall_s):
    """A finished run's summary.json (+ its wall time), checked: JSON, every number finite, a test accuracy in
    [0, 100], and the figures its metrics.jsonl holds for the last epoch the same. A damaged one is a failed job
    naming the file and what is wrong: its row says so, the table's other rows are as they were."""
    path = os.path.join(out, 'summary.json')

    def damaged(what):
        print(f'{path}: damaged ({what}); remove {out} to run it again', file=sys.stderr, flush=True)
        return {'failed': f'{path} is damaged: {what}', 'log': path}
    try:
        s = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        return damaged(f'not JSON: {e}')
    if not isinstance(s, dict):
        return damaged('not a JSON object')
    odd = [k for k, v in s.items() if isinstance(v, float) and not math.isfinite(v)]
    if odd:
        return damaged(f'{", ".join(odd)} not a finite number')
    accuracy = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100
    key = 'final_val_acc' if s.get('test_acc', 0) is None else 'test_acc'  # a tuning run (--no-test) has no test_acc
    if key not in s:
        return damaged(f'no {key}')
    if not accuracy(s[key]):
        return damaged(f'{key} is {json.dumps(s[key])}, not an accuracy in [0, 100]')
    try:
        last = (RunDir(out).read_metrics() or [{}])[-1]
    except RunDirError as e:
        return damaged(f'its metrics cannot be read: {e}')
    pairs = (('test_acc', 'test_acc'), ('train_loss', 'train_loss'), ('final_val_acc', 'val_acc'))  # summary, epoch
    differ = [k for k, m in pairs if k in s and m in last and s[k] != last[m]]
    if last and s.get('epochs') != last.get('epoch', -1) + 1:  # epochs are counted from 0 there
        differ.append('epochs')
    if differ:
        return damaged(f'{", ".join(differ)} differ from the last epoch in {os.path.join(out, "metrics.jsonl")}')
    return {**s, 'wall_s': wall_s}


@dataclass(kw_only=True)
class Job:
    """One train.py run of a comparison, into out (its log, wall time and markers beside it)."""
    label: str
    argv: list
    out: str
    arm: str = ''
    seed: int = 0
    result: dict = None  # the summary (+ wall_s), {'diverged': True, ...}, {'failed': why, 'log': path} or pending
    recorded: dict = None  # what the table on disk recorded of this very command, if its run folder is gone
    test_sets: dict = None  # a final run's: the protocol's test sets its prompt file is scored on, {name: folder}

    @property
    def command(self):
        return 'python train.py ' + ' '.join(self.argv)

    @property
    def identity(self):
        return identity(self.command)


# ---- running train.py ----

BUSY = 'busy'  # start(): another process is running this run now


def start(job, report=False):
    """What a job needs: None when it has its result (done before; with report, a run not finished is pending), BUSY
    when another process runs it now (run_all waits for it), else its launch lock, taken, to launch() it under."""
    if (result := done_before(job, report)) is not None or report:
        job.result = {'pending': True} if result is None else result
        return None
    os.makedirs(os.path.dirname(job.out) or '.', exist_ok=True)
    guard = open(job.out + '.launch', 'a')  # held by the comparison that runs it; the kernel lets go if it dies
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another comparison runs it
        guard.close()
        return BUSY
    busy = RunDir(job.out).in_use()  # a train.py of its own runs it now
    job.result = None if busy else done_before(job)  # finished (or diverged) by the process this comparison waited for
    if busy or job.result is not None:
        guard.close()
        return BUSY if busy else None
    return guard


def done_before(job, report=False):
    """A job's result if it has one: read back from its folder, or from the table where its folder is gone, if made
    with the same settings on the same data (with report, the data is not read: the records are tabled as they are); a
    loss that exploded before (a result of its settings, run again only if its .diverged marker is removed); else
    None."""
    summary = os.path.join(job.out, 'summary.json')
    other_data = lambda made: not report and made.get('data') not in (None, data_of(job))
    if job.recorded is not None and not os.path.exists(summary):
        if not other_data(job.recorded):
            print(f'{job.label}: done before, read back from the table', flush=True)
            return dict(job.recorded)
        print(f'{job.label}: the table\'s record of it was made on other data: run again', flush=True)
    config = read_json(os.path.join(job.out, 'config.json')) or {}
    made_by = config.get('command')
    if made_by is not None and identity(made_by) != job.identity:
        raise SystemExit(f'error: {job.out} holds a run made with other settings ({made_by}); remove it, or give '
                         f'this comparison another --tag or --runs-dir')
    if made_by is not None and other_data(config):
        raise SystemExit(f'error: {job.out} holds a run made on other data than {flag_value(job.argv, "--data-dir")} '
                         f'holds now; remove it, or give this comparison another --tag or --runs-dir')
    if os.path.exists(job.out + '.diverged'):
        print(f'{job.label}: diverged before ({job.out}.diverged; remove it to run again)', flush=True)
        return {'diverged': True, 'log': job.out + '.log'}
    if os.path.exists(summary):
        print(f'{job.label}: done before, read back', flush=True)
        return read_summary(job.out, read_json(job.out + '.wall.json', {}).get('wall_s'))
    return None


FINGERPRINTS = {}  # (data set and its subset) -> the fingerprint of its data, read once in this process


def data_of(job):
    """The fingerprint of the data a job's flags name (train.read_data: its images listed, checked where the record of
    earlier checks does not know them, fingerprinted), read when a run made before is to be read back."""
    a = train.resolve(parse(job.argv))
    key = tuple(str(getattr(a, k)) for k in ('dataset', 'data_dir', 'seed', 'train_per_class', 'test_limit',
                                             'val_split', 'splits'))
    if key not in FINGERPRINTS:
        try:
            FINGERPRINTS[key] = train.read_data(a).fingerprint
        except train.SETUP_ERRORS as e:
            raise SystemExit(f'error: {job.label}: {e}') from None
    return FINGERPRINTS[key]


def flag_value(argv, name):
    return argv[argv.index(name) + 1] if name in argv else 'its folder'


def launch(job, guard, threads, gpu, launcher=None):
    """The one place a run starts: train.py in a child process, its output appended to <run>.log beside the run
    folder (which belongs to train.py); or, with a launcher (tools/cluster.py), the same command as a cluster job.
    Returns what run_all polls; finish() ends it and lets go of guard, its launch lock."""
    if launcher is not None:
        return launcher.submit(job, guard, threads, gpu)
    cmd = train_command(job.argv, job.out)
    print(f'{job.label}: {"resuming" if "--resume" in cmd else "running"} {" ".join(cmd[1:])}', flush=True)
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    if gpu is not None:
        env['CUDA_VISIBLE_DEVICES'] = str(gpu)
    log = open(job.out + '.log', 'a')
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
    proc.log, proc.guard, proc.t0 = log, guard, time.time()
    return proc


def test_set_accs(job, plan):
    """{test set: accuracy} of a finished run's prompt file, unchanged, on each of the protocol's test sets
    (predict.score_test_sets), kept in <run>.test-sets.json beside its folder: measured once, in the run's cluster job
    where it has one, else here. With --report, or where the prompt file is gone, a set not measured yet is
    'pending'; one predict.py refuses, 'failed'."""
    scored = not plan.report and os.path.exists(os.path.join(job.out, 'prompt.safetensors'))
    kept = predict.score_test_sets(job.out, job.test_sets if scored else {}, job.result.get('test_sets'), job.label)
    return {name: kept.get(name, 'pending') for name in plan.protocol.test_sets}


def finish(job, proc):
    """A run's outcome, on disk before its launch lock is let go: its wall time (summed over resumed sessions), and a
    .diverged marker where train.py stopped an exploded loss (a result of its settings, not a failure of the
    comparison). A cluster job recorded its own; what it left is read the same way."""
    if isinstance(proc, subprocess.Popen):
        proc.log.close()
        record(job.out, proc.returncode, time.time() - proc.t0)
    log, diverged = job.out + '.log', os.path.exists(job.out + '.diverged')  # record() marks an exploded loss
    if diverged:
        job.result = {'diverged': True, 'log': log}
    elif proc.returncode == 0 and os.path.exists(os.path.join(job.out, 'summary.json')):
        job.result = read_summary(job.out, read_json(job.out + '.wall.json', {}).get('wall_s'))
    else:
        code = proc.returncode  # train.py's exit status, or why a cluster job ended with no outcome
        job.result = {'failed': code if isinstance(code, str) else f'exit {code}', 'log': log}
    proc.guard.close()  # closing the file releases its lock
    print(f'{job.label}: {"finished" if "failed" not in job.result else "FAILED, see " + job.result["log"]}',
          flush=True)


def run_all(jobs, plan):
    """Runs the jobs, plan.jobs side by side (one GPU each when there are several GPUs; else the CPU threads split;
    with a Slurm launcher, all at once unless --jobs says); a job another process runs now is tried again until it is
    free, then read back (or resumed)."""
    n, report, launcher = plan.jobs or max(1, len(jobs)), plan.report, plan.launcher
    gpus, threads = torch.cuda.device_count(), max(1, (os.cpu_count() or 1) // n)
    queue, running, waiting = list(jobs), {}, set()
    while queue or running:
        for job in list(queue):
            slot = min(set(range(n)) - set(running), default=None)
            if slot is None:
                break
            guard = start(job, report)
            if guard is BUSY:
                if job.out not in waiting:
                    print(f'{job.label}: another process is running it; waiting for it', flush=True)
                    waiting.add(job.out)
                continue
            queue.remove(job)
            if guard is not None:
                gpu = slot % gpus if gpus > 1 or (gpus and launcher) else None  # a local job sees its GPU alone
                running[slot] = (job, launch(job, guard, threads, gpu, launcher))
        for slot, (job, proc) in list(running.items()):
            if proc.poll() is not None:
                finish(job, proc)
                del running[slot]
        time.sleep(0.2 if running or not queue else 2.0)


# ---- tuning on a validation split: the same grid for every arm ----

def tune_arms(plan, name, settings, runs_dir, recorded):
    """arm -> its choice() on its grid (protocols.py's), the failed tuning runs, the notes on the grid (the axes
    extended, the choices left where a progression ends) and the tuning runs' records (command -> TUNING_RECORD).
    The grid grows while a choice lies on its edge. With report, an arm whose grid is not finished gets the best so
    far, marked, and no run starts; recorded: the table's records of tuning runs (by identity). No grid: no tuning."""
    tune, notes, tuning, jobs = dict(plan.tune) or None, [], {}, {}
    while tune is not None:
        jobs, configs = {}, {}  # (arm, config) -> its run; arm -> its grid
        for arm, flags_of_arm in plan.tuned_arms.items():
            configs[arm], added = grid(flags_of_arm, tune, settings, plan.protocol.tune_flags)
            for config, (flags, _) in configs[arm].items():
                out = os.path.join(runs_dir, 'tune', f'{arm}-{config}'.replace(' ', '_').replace('=', ''))
                job = Job(label=f'[tune {name}] {arm} {config}', out=out,
                          argv=train_argv(settings, flags_of_arm + flags + added, 0, out, plan.extra,
                                          plan.how_flags))
                job.recorded = recorded.get(job.identity)
                jobs[arm, config] = job
        run_all(list(jobs.values()), plan)
        tuning = {arm: choice({c: jobs[arm, c].result for c in grid_of}, grid_of) for arm, grid_of in configs.items()}
        for arm, t in tuning.items():
            print(f'[tune {name}] {arm}: ' + ', '.join(f'{c} {v}' for c, v in t['tried'].items()) +
                  f' -> {t["chosen"]}', flush=True)
        tune, said = grown(tune, tuning, plan.extend)  # report too: the configurations an extension adds are pending
        for note in said:
            print(f'[tune {name}] {note}', flush=True)
        notes += said
    done = {j.command: {k: v for k, v in j.result.items() if k in TUNING_RECORD} for j in jobs.values()
            if 'final_val_acc' in j.result or j.result.get('diverged')}
    return tuning, [j for j in jobs.values() if 'failed' in j.result], notes, done


# ---- a comparison: one data set's tuning, final runs and table ----

def compare(plan, name, settings, runs_dir):
    """Tuning, the final runs, the cost columns and the table of one data set: (the table's rows, failed jobs)."""
    on_disk = tables.read(name) or {}  # its runs' records: a run whose folder is gone is read back from them
    tuning, failed, notes, tuning_runs = tune_arms(plan, name, settings, runs_dir, {
        identity(c): r for c, r in on_disk.get('tuning_runs', {}).items()})
    for arm, like in plan.protocol.tuned_like.items():  # an ablation keeps its method's hyper-parameters
        if arm in plan.arms and like in tuning:
            tuning[arm] = dict(chosen=f'as {like}: {tuning[like]["chosen"]}', flags=tuning[like]['flags'], tried={})
    final_argv = {arm: plan.arm_flags[arm] + tuning.get(arm, {}).get('flags', []) + list(plan.protocol.final_flags)
                  for arm in plan.arms}
    jobs = final_jobs(plan, name, settings, runs_dir, final_argv, on_disk.get('runs', []))
    run_all(jobs, plan)
    for j in jobs:  # each finished run's prompt file on the protocol's test sets (ImageNet-R, -Sketch, -A, -V2)
        if plan.protocol.test_sets and 'test_acc' in j.result:
            j.result['test_sets'] = test_set_accs(j, plan)
    failed += [j for j in jobs if 'failed' in j.result]
    runs = [{**j.result, 'arm': j.arm, 'seed': j.seed, 'command': j.command} for j in jobs
            if not j.result.get('pending')]
    costs = {}
    if plan.bench_reps and len(runs) == len(jobs):  # measured once per arm, when no run of this comparison is going
        known = (tables.read(name) or {}).get('bench', {})
        todo = {arm: train_argv(settings, final_argv[arm], 0, 'unused', plan.extra) for arm in plan.arms
                if arm not in known and any(r['arm'] == arm and 'test_acc' in r for r in runs)}
        costs = bench.measure(todo, plan.bench_reps) if todo else {}
    mine = dict(arms=list(plan.arms), runs=runs, tuning=tuning, tuning_runs=tuning_runs, grid_notes=notes, bench=costs)
    with tables.locked(name):  # re-made whole from the record on disk now: another comparison may have written it
        previous = tables.read(name)
        tables.same_settings(name, previous, settings, plan.extra)
        rows, md = tables.write_comparison(name, tables.combined(previous, mine), protocol=plan.protocol,
                                           settings=settings, extra=plan.extra, changes=plan.changes,
                                           final_runs=[(j.arm, j.seed, 'pending' in j.result) for j in jobs])
    print(md)
    return rows, failed


def final_jobs(plan, name, settings, runs_dir, final_argv, recorded_runs):
    """The final runs, seed by seed (a comparison stopped half-way has every arm of its first seeds); each with the
    table's record of its very command (of recorded_runs), read back from it if its folder is gone."""
    recorded = {identity(r['command']): r for r in recorded_runs if 'command' in r and 'test_acc' in r}
    jobs = []
    for seed in sorted({s for seeds in plan.arm_seeds.values() for s in seeds}):
        for arm in [arm for arm in plan.arms if seed in plan.arm_seeds[arm]]:
            out = os.path.join(runs_dir, f'{arm}-s{seed}'.replace(' ', '_').replace('=', ''))
            argv = train_argv(settings, final_argv[arm], seed, out, plan.extra, plan.how_flags)
            jobs.append(Job(label=f'[{name}] {arm} seed {seed}', argv=argv, out=out, arm=arm, seed=seed,
                            test_sets={t: os.path.join(plan.test_sets_dir, t) for t in plan.protocol.test_sets}))
            jobs[-1].recorded = recorded.get(jobs[-1].identity)
    return jobs


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


# ---- the command line ----

def parser():
    """compare.py's flags."""
    p = argparse.ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()),
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--protocol', choices=sorted(PROTOCOLS))
    p.add_argument('--list', action='store_true', help='print every protocol and exit')
    p.add_argument('--methods', help='comma list of arms (default: the protocol\'s)')
    p.add_argument('--seeds', help='comma list for every arm (default: the protocol\'s seeds)')
    p.add_argument('--tag', help='names the results when settings are changed: results/<protocol>-<tag>.md')
    for key in FLAGS:
        p.add_argument(flag(key), dest=key, help=f'change the protocol\'s {flag(key)} ' + (
            '(where the data lies: no --tag needed)' if key in WHERE else '(needs --tag)'))
    p.add_argument('--extra', default='', help='more train.py flags for every run, e.g. "--rho 0.25" (needs --tag)')
    p.add_argument('--grad-checkpointing', action='store_true', help='train.py\'s flag for every run: less memory, '
                   'the same runs (no --tag needed; finished runs are read back either way)')
    p.add_argument('--tune-lr', help='replace the protocol\'s lr multipliers, e.g. 0.03,0.1,1 (needs --tag)')
    p.add_argument('--no-tune', action='store_true', help='skip the protocol\'s tuning (needs --tag)')
    p.add_argument('--jobs', type=POS_INT, help='runs side by side (a GPU each; on a CPU the threads split; default 1; '
                   'with --launcher slurm: jobs submitted at once, default all)')
    p.add_argument('--runs-dir', help='default runs/<name>')
    p.add_argument('--report', action='store_true', help='start no run: write the table of the runs finished so far')
    p.add_argument('--bench-reps', type=NONNEG_INT, default=10, help='rounds of bench.py for the cost columns, '
                   'measured once per arm when every run of the comparison has finished (0: leave them out)')
    p.add_argument('--tasks', help='of a multi-task protocol (vtab-1k): a comma list (default: all of them)')
    p.add_argument('--test-sets-dir', default=DATA, help='of a protocol with test sets (ood-lotep, '
                   'ood-lorsp): the folder of imagenet-r/, imagenet-sketch/, imagenet-a/, imagenet-v2/')
    cluster.add_flags(p)
    return p


def ancestors(path):
    """A path and every folder above it."""
    path = os.path.abspath(path)
    while os.path.dirname(path) != path:
        yield path
        path = os.path.dirname(path)


def parse_list(text, cast, what):
    """A comma list of a flag (what), each value cast; a value it refuses stops the comparison here."""
    try:
        values = [cast(v) for v in text.split(',')]
    except (ValueError, argparse.ArgumentTypeError):
        raise SystemExit(f'error: {what} takes a comma list, got {text!r}') from None
    return values


def main(argv=None):
    """The comparison the flags ask for, run and tabled: the table's rows (exit status 1 if a run failed)."""
    p = parser()
    a = p.parse_args(argv)
    if a.list:
        for k, pr in PROTOCOLS.items():
            print(f'{k}: {pr.about}\n  arms: {", ".join(pr.arms)}\n  seeds {list(pr.seeds)}; '
                  f'{tables.shown(pr.settings)}')
        return []
    plan, name, settings, named = planned(p, a)
    for table_name, task_settings, _ in named:  # refused now rather than after hours of runs
        for arm in plan.arms:
            check_flags(arm, train_argv(task_settings, plan.arm_flags[arm] + list(plan.protocol.final_flags), 0,
                                        'unused', plan.extra, plan.how_flags))
        try:
            tables.same_settings(table_name, tables.read(table_name), task_settings, plan.extra)
        except tables.ResultsError as e:
            raise SystemExit(f'error: {e}') from None
    outcome = {table_name.rsplit('/', 1)[-1]: compare(plan, table_name, task_settings, task_runs)
               for table_name, task_settings, task_runs in named}
    failed = [j for rows, failed in outcome.values() for j in failed]
    if plan.protocol.tasks:  # the table over the tasks, from every task's table on disk made with these settings
        rows, md = tables.task_summary(name, plan.protocol, plan.arms, settings, extra=plan.extra, changes=plan.changes)
        print(md)
    else:
        rows = outcome[name][0]
    if failed:
        print('FAILED runs:\n' + '\n'.join(f'  {j.label}: {j.result["failed"]}; log {j.result["log"]}'
                                           for j in failed), file=sys.stderr)
        raise SystemExit(1)
    return rows


def planned(p, a):
    """The comparison the flags ask for, refused with p.error where they make none: (its Plan, its name, its settings,
    [(table name, settings, runs folder)] a data set each: one, or a task each of a multi-task protocol)."""
    if not a.protocol:
        p.error('--protocol is required (or --list)')
    try:
        tables.check_tag(a.tag)
    except tables.ResultsError as e:
        p.error(str(e))
    protocol = PROTOCOLS[a.protocol]
    changed = {k: int(v) if v.isdigit() else v for k in FLAGS if (v := getattr(a, k)) is not None}
    if (set(changed) - set(WHERE) or a.extra or a.tune_lr or a.no_tune) and not a.tag and a.protocol != 'paper':
        p.error(f'{", ".join(flag(k) for k in changed) or "--extra / --tune-lr / --no-tune"} changes the '
                f'{a.protocol} protocol: add --tag NAME so that its results do not pass for the protocol\'s')
    settings = {**protocol.settings, **changed}
    arms = [m for m in a.methods.split(',') if m] if a.methods is not None else list(protocol.arms)
    unknown = [m for m in arms if m not in protocol.arms and m not in METHODS]
    if not arms:
        p.error('--methods is empty; give a comma list of arms (default: all of the protocol\'s)')
    if unknown:
        p.error(f'unknown arm(s) {unknown}; this protocol has {", ".join(protocol.arms)}')
    tune_lr = parse_list(a.tune_lr, POS, '--tune-lr') if a.tune_lr else None
    seeds = parse_list(a.seeds, NONNEG_INT, '--seeds') if a.seeds else None
    name = a.protocol + (f'-{a.tag}' if a.tag else '')
    runs_dir = a.runs_dir or os.path.join('runs', *name.split('/'))
    blocked = next((d for d in ancestors(runs_dir) if os.path.exists(d) and not os.path.isdir(d)), None)
    if blocked:
        p.error(f'--runs-dir {runs_dir}: {blocked} is a file, not a folder')
    tasks = [t for t in a.tasks.split(',') if t] if a.tasks is not None else list(protocol.tasks)
    if a.tasks is not None and not protocol.tasks:
        p.error(f'--tasks: {a.protocol} has no tasks; it is one data set')
    if protocol.tasks and (not tasks or set(tasks) - set(protocol.tasks)):
        p.error(f'--tasks takes a comma list of {", ".join(protocol.tasks)}')
    changes = [f'{flag(k)} {v}' for k, v in changed.items()] + ([f'--extra {a.extra}'] if a.extra.split() else []) + \
        ([f'lr multipliers tuned: {a.tune_lr}'] if a.tune_lr else []) + (['no tuning'] if a.no_tune else [])
    named = [(f'{name}/{task}', {**settings, 'dataset': f'vtab-1k:{task}'}, os.path.join(runs_dir, task))
             for task in tasks] if protocol.tasks else [(name, settings, runs_dir)]
    missing = [os.path.join(a.test_sets_dir, t) for t in protocol.test_sets
               if not os.path.isdir(os.path.join(a.test_sets_dir, t))]
    if missing and not a.report:  # refused now rather than after the runs
        p.error(f'--test-sets-dir {a.test_sets_dir}: {", ".join(missing)} missing; {a.protocol} tests every prompt '
                f'file on {", ".join(protocol.test_sets)} (docs/usage.md, ImageNet)')
    return plan(protocol, arms, seeds=seeds, tune_lr=tune_lr, no_tune=a.no_tune, extra=a.extra.split(),
                jobs=a.jobs or (None if a.launcher == 'slurm' else 1), launcher=cluster.launcher(p, a),
                how_flags=('--grad-checkpointing',) if a.grad_checkpointing else (),
                report=a.report, bench_reps=a.bench_reps, changes=changes, test_sets_dir=a.test_sets_dir), name, \
        settings, named


if __name__ == '__main__':
    main()
