"""compare.py --launcher slurm|local (tools/cluster.py): each run a submitit job. Through submitit's local executor a
protocol gives the table local runs give; a preempted job is requeued and resumes from its last epoch; a job killed
outright fails its comparison, names its log, and resumes in the next; Slurm's submission, with a fake sbatch on the
PATH, writes the job script with the flags asked; a job still queued is waited for, not submitted twice."""
import glob
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT
from test_compare import TINY, results
from tools import cluster, compare

ARGS = ['--protocol', 'offline-cifar10', '--methods', 'lp,lotep_cp', '--seeds', '0', *TINY, '--no-tune']
LP = ['--protocol', 'offline-cifar10', '--methods', 'lp', '--seeds', '0', *TINY, '--no-tune']


def weights(run):
    return torch.load(os.path.join(run, 'checkpoint.pt'), weights_only=False)['model']


@pytest.mark.e2e
def test_a_protocol_through_submitits_local_executor_gives_the_local_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    here = compare.main([*ARGS, '--tag', 'here'])
    jobs = compare.main([*ARGS, '--tag', 'jobs', '--launcher', 'local'])
    out = capsys.readouterr().out
    assert out.count('submitted as local job') == 2
    assert [(r['arm'], r['accs'], r['params']) for r in here] == [(r['arm'], r['accs'], r['params']) for r in jobs]
    for arm in ('lp', 'lotep_cp'):
        a, b = (weights(tmp_path / 'runs' / f'offline-cifar10-{t}' / f'{arm}-s0') for t in ('here', 'jobs'))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), arm
        record = json.loads((tmp_path / 'runs' / 'offline-cifar10-jobs' / f'{arm}-s0.job.json').read_text())
        assert os.path.exists(record['log']) and (tmp_path / 'runs' / 'offline-cifar10-jobs' / f'{arm}-s0.wall.json'
                                                  ).exists()
    again = compare.main([*ARGS, '--tag', 'jobs', '--launcher', 'local'])  # finished: read back, nothing submitted
    out = capsys.readouterr().out
    assert 'submitted' not in out and out.count('done before, read back') == 2 and again[0]['accs'] == jobs[0]['accs']
    tabled = [[(r['arm'], r['accs'], r['params']) for r in results(tmp_path, f'offline-cifar10-{t}')['rows']]
              for t in ('here', 'jobs')]
    assert tabled[0] == tabled[1] and len(tabled[0]) == 2


def children(pid, running=''):
    """The processes whose parent is pid (read from /proc) and whose command line holds running: a job's process may
    start short-lived ones of its own (a library lookup) beside train.py."""
    kids = []
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            with open(stat[:-len('stat')] + 'cmdline', 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(errors='replace')
        except OSError:
            continue
        if int(fields[1]) == pid and running in cmdline:
            kids.append(int(stat.split('/')[2]))
    return kids


def mid_run(tmp_path, tag, epochs, request):
    """Starts compare.py --launcher local for one lp run of `epochs` epochs; waits until its job's train.py has
    finished an epoch and stops it there (SIGSTOP): (compare's process, the run folder, the job's task, train.py).
    Whatever the test's outcome, none of them outlives it (a job's task ignores SIGTERM, as on Slurm)."""
    argv = [*LP, '--tag', tag, '--launcher', 'local']
    argv[argv.index('--epochs') + 1] = str(epochs)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tools', 'compare.py'), *argv], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / 'runs' / f'offline-cifar10-{tag}' / 'lp-s0'
    deadline, found = time.time() + 240, []  # the job's processes first (train.py still starting: imports take seconds)
    while len(found) < 3:
        assert time.time() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else ''
        if (run.parent / 'lp-s0.job.json').exists():
            found = [int(json.loads((run.parent / 'lp-s0.job.json').read_text())['job_id'])]
            found += children(found[0], running='submitit.core._submit')[:1]  # the job's process
            found += children(found[1], running='job.py')[:1] if len(found) == 2 else []  # train.py, run by job.py
        time.sleep(0.001)
    controller, task, trainer = found
    request.addfinalizer(lambda: [os.kill(p, signal.SIGKILL) for p in (proc.pid, controller, task, trainer)
                                  if os.path.exists(f'/proc/{p}')])
    os.kill(trainer, signal.SIGSTOP)  # from here it runs in 1 ms slices, frozen between them: a tiny run's epochs
    while not ((run / 'checkpoint.pt').exists() and (run / 'metrics.jsonl').exists()):  # cannot all pass unseen
        assert time.time() < deadline, 'no epoch finished'
        os.kill(trainer, signal.SIGCONT)
        time.sleep(0.001)
        os.kill(trainer, signal.SIGSTOP)
    assert not (run / 'summary.json').exists(), 'the run ended before it could be stopped'
    return proc, run, task, trainer


@pytest.mark.e2e
def test_a_preempted_job_is_requeued_and_resumes_from_its_last_epoch(tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    plain = compare.main([*LP, '--tag', 'plain', '--epochs', '4'])
    proc, run, task, trainer = mid_run(tmp_path, 'pre', 4, request)
    os.kill(task, signal.SIGUSR2)  # what Slurm sends a job it preempts, or 90 s before its time limit
    time.sleep(1.0)
    os.kill(trainer, signal.SIGCONT)  # its pending SIGTERM (from checkpoint()) ends it now
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    job_out = ''.join(open(f).read() for f in glob.glob(str(run.parent / 'lp-s0.jobs' / '*_0_log.*')))
    assert 'the job requeued to resume from its last epoch' in job_out and 'resuming ' in job_out, job_out
    assert [json.loads(line)['epoch'] for line in open(run / 'metrics.jsonl')] == [0, 1, 2, 3]
    assert json.loads((run / 'summary.json').read_text())['test_acc'] == plain[0]['accs'][0]
    a, b = weights(run), weights(tmp_path / 'runs' / 'offline-cifar10-plain' / 'lp-s0')
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.e2e
def test_a_job_killed_outright_fails_its_comparison_and_resumes_in_the_next(tmp_path, monkeypatch, capsys,
                                                                             request):
    monkeypatch.chdir(tmp_path)
    proc, run, task, trainer = mid_run(tmp_path, 'kill', 3, request)
    os.kill(task, signal.SIGKILL)  # a node lost: no signal handler runs, nothing recorded by the job
    os.kill(trainer, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and 'ended with no outcome' in out and 'lp-s0.jobs' in out, out
    rows = compare.main([*LP, '--tag', 'kill', '--launcher', 'local', '--epochs', '3'])
    job_out = ''.join(open(f).read() for f in glob.glob(str(run.parent / 'lp-s0.jobs' / '*_0_log.out')))
    assert 'resuming ' in job_out and rows[0]['accs'] and 'submitted as local job' in capsys.readouterr().out
    assert [json.loads(line)['epoch'] for line in open(run / 'metrics.jsonl')] == [0, 1, 2]


FAKE_SBATCH = '''#!/bin/sh
cp "$1" "{record}/$(ls {record} | wc -l).sh"
echo "Submitted batch job 4242"
'''
FAKE_SACCT = '''#!/bin/sh
echo "JobID|State|NodeList"
echo "4242|$(cat {state})|node1"
'''


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch, srun and sacct on the PATH: sbatch keeps each script it is given in <tmp>/scripts; sacct says the state
    written in <tmp>/state."""
    bin_, record, state = tmp_path / 'bin', tmp_path / 'scripts', tmp_path / 'state'
    for d in (bin_, record):
        d.mkdir()
    for name, text in (('sbatch', FAKE_SBATCH), ('sacct', FAKE_SACCT), ('srun', '#!/bin/sh\nexit 1\n')):
        (bin_ / name).write_text(text.format(record=record, state=state))
        (bin_ / name).chmod(0o755)
    monkeypatch.setenv('PATH', f'{bin_}{os.pathsep}{os.environ["PATH"]}')
    import submitit
    watcher = submitit.slurm.slurm.SlurmInfoWatcher(delay_s=0)
    monkeypatch.setattr(submitit.SlurmJob, 'watcher', watcher)

    def set_state(text):  # as a fresh comparison sees it: no state cached from before
        state.write_text(text)
        watcher.clear()
    return record, set_state


def test_slurm_jobs_get_the_flags_asked_and_a_queued_one_is_not_submitted_twice(tmp_path, monkeypatch, capsys,
                                                                                 fake_slurm):
    record, set_state = fake_slurm
    monkeypatch.chdir(tmp_path)
    set_state('FAILED')  # the job "ends" at once, with nothing on disk: a FAILED run naming its log
    argv = [*LP, '--tag', 's', '--launcher', 'slurm', '--partition', 'gpu', '--time-min', '30',
            '--gpus-per-job', '2', '--cpus-per-job', '4', '--mem-gb', '16', '--account', 'acct', '--qos', 'high',
            '--constraint', 'a100', '--sbatch', 'exclude=node7,mail-type=FAIL']
    with pytest.raises(SystemExit) as e:
        compare.main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert 'job 4242 ended with no outcome' in err and os.path.join('lp-s0.jobs', '4242_0_log.err') in err
    (script,) = record.iterdir()
    lines = script.read_text().splitlines()
    for asked in ('--partition=gpu', '--time=30', '--gpus-per-node=2', '--cpus-per-task=4', '--mem=16GB',
                  '--account=acct', '--qos=high', '--constraint=a100', '--exclude=node7', '--mail-type=FAIL',
                  '--nodes=1', '--ntasks-per-node=1', '--signal=USR2@90', '--open-mode=append'):
        assert f'#SBATCH {asked}' in lines, (asked, lines)
    folder = tmp_path / 'runs' / 'offline-cifar10-s' / 'lp-s0.jobs'
    assert any(line.startswith('srun ') and line.endswith(f'-m submitit.core._submit {folder}') for line in lines)
    with open(folder / '4242_submitted.pkl', 'rb') as f:
        run = pickle.load(f).function  # what the job runs: this run's train.py flags, into its folder
    assert run.argv[run.argv.index('--out') + 1] == os.path.join('runs', 'offline-cifar10-s', 'lp-s0')
    assert run.argv[run.argv.index('--method') + 1] == 'lp' and run.threads == 2  # 4 CPUs over 2 GPUs
    assert run.command()[1:5] == ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']  # one per GPU
    assert run.command()[5:] == [os.path.join(ROOT, 'tools', 'job.py'), *run.argv]  # train.py, as a job runs it

    set_state('PENDING')  # a comparison run again while that job waits in the queue: no second submission
    p = compare.parser()
    launcher = cluster.launcher(p, p.parse_args(argv))
    job = compare.Job(label='lp', argv=run.argv, out=run.out)
    handle = launcher.submit(job, None, 1, None)
    assert handle.job is None and handle.poll() is None and len(list(record.iterdir())) == 1
    assert 'job 4242 submitted before is PENDING; waiting for it' in capsys.readouterr().out
    set_state('COMPLETED')  # ended with nothing on disk: failed, its log named
    assert 'job 4242 ended with no outcome' in handle.poll()
    set_state('CANCELLED')  # the next comparison submits it again
    launcher.submit(job, None, 1, None)
    assert len(list(record.iterdir())) == 2


def test_cluster_flags_are_refused_without_their_launcher(capsys):
    for argv, says in ((['--partition', 'gpu'], '--partition: Slurm settings; add --launcher slurm'),
                       (['--launcher', 'local', '--gpus-per-job', '2'], '--gpus-per-job: Slurm settings'),
                       (['--time-min', '5'], '--time-min is a job\'s time limit'),
                       (['--launcher', 'slurm', '--sbatch', 'exclude'], '--sbatch takes "name=value')):
        with pytest.raises(SystemExit):
            compare.main(['--protocol', 'offline-cifar10', *argv])
        assert says in capsys.readouterr().err, argv


def test_submitit_is_imported_only_for_cluster_jobs():
    code = ('import sys; import train; from tools import compare; compare.parser(); '
            'print("submitit" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == 'False'


# ---- issue #49: preemption whatever process Slurm signals first, and one line for every refusal ----

def requeued_like_the_plain_run(tmp_path, proc, run, plain):
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    job_out = ''.join(open(f).read() for f in glob.glob(str(run.parent / 'lp-s0.jobs' / '*_0_log.*')))
    assert 'the job requeued to resume from its last epoch' in job_out and 'resuming ' in job_out, job_out
    assert job_out.count('the job requeued to resume') == 1  # once, however many processes were warned
    assert [json.loads(line)['epoch'] for line in open(run / 'metrics.jsonl')] == [0, 1, 2, 3]
    assert json.loads((run / 'summary.json').read_text())['test_acc'] == plain[0]['accs'][0]


@pytest.mark.e2e
@pytest.mark.parametrize('order', ['train.py first', 'train.py alone'])
def test_a_preempted_job_is_requeued_whichever_process_slurm_signals_first(tmp_path, monkeypatch, request, order):
    """On a cluster --signal=USR2@90 reaches every process of the job step: train.py (which used to die of it, exit
    -12, the run FAILED) as well as submitit's. train.py passes it on; the job requeues once and resumes."""
    monkeypatch.chdir(tmp_path)
    plain = compare.main([*LP, '--tag', 'plain', '--epochs', '4'])
    proc, run, task, trainer = mid_run(tmp_path, 'pre', 4, request)
    os.kill(trainer, signal.SIGUSR2)
    os.kill(trainer, signal.SIGCONT)  # train.py handles it now: it passes it on to the job's process
    if order == 'train.py first':
        time.sleep(0.5)
        try:
            os.kill(task, signal.SIGUSR2)  # Slurm's own signal to the job's process, after train.py's
        except ProcessLookupError:
            pass  # already requeued and gone
    requeued_like_the_plain_run(tmp_path, proc, run, plain)


def test_a_job_slurm_refuses_is_one_line_and_the_other_runs_go_on(tmp_path, monkeypatch, capsys, fake_slurm):
    record, _ = fake_slurm
    (tmp_path / 'bin' / 'sbatch').write_text('#!/bin/sh\necho "sbatch: error: invalid partition specified: gpuz" '
                                             '>&2\nexit 1\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        compare.main([*ARGS, '--tag', 's', '--launcher', 'slurm', '--partition', 'gpuz'])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert 'Traceback' not in err and err.count('not submitted: sbatch refused the job') == 2  # lp and lotep_cp
    assert 'invalid partition specified: gpuz' in err


def test_cluster_refusals_are_one_line_and_touch_nothing(tmp_path, monkeypatch, capsys, fake_slurm):
    record, _ = fake_slurm
    monkeypatch.chdir(tmp_path)
    slurm = [*LP, '--tag', 's', '--launcher', 'slurm']
    for extra, says in (
            (['--sbatch', 'time=10'], '--sbatch time=...: compare.py sets time itself (from --time-min)'),
            (['--sbatch', 'exclude=a,mem=4G'], '--sbatch mem=...: compare.py sets mem itself (from --mem-gb)'),
            (['--sbatch', 'comment=a\nb'], 'line break'),
            (['--runs-dir', str(tmp_path / 'afile' / 'runs')], 'afile is a file, not a folder')):
        (tmp_path / 'afile').write_text('mine')
        with pytest.raises(SystemExit):
            compare.main([*slurm, *extra])
        err = capsys.readouterr().err
        assert says in err and 'Traceback' not in err, (extra, err)
    assert (tmp_path / 'afile').read_text() == 'mine' and not list(record.iterdir())
    os.makedirs(tmp_path / 'runs' / 'offline-cifar10-s')
    (tmp_path / 'runs' / 'offline-cifar10-s' / 'lp-s0.jobs').write_text('mine')  # where the job's folder goes
    with pytest.raises(SystemExit):
        compare.main(slurm)
    err = capsys.readouterr().err
    assert 'lp-s0.jobs: a file where the run\'s job folder goes; move it away' in err and 'Traceback' not in err
    assert (tmp_path / 'runs' / 'offline-cifar10-s' / 'lp-s0.jobs').read_text() == 'mine'
    monkeypatch.setenv('PATH', os.path.dirname(sys.executable))  # no sbatch, no srun
    with pytest.raises(SystemExit):
        compare.main(slurm)
    assert 'this machine has no Slurm' in capsys.readouterr().err


def test_sbatch_values_may_hold_commas(tmp_path, monkeypatch, fake_slurm):
    record, _ = fake_slurm
    monkeypatch.chdir(tmp_path)
    argv = [*LP, '--tag', 's', '--launcher', 'slurm', '--sbatch', 'exclude=node1,node2,mail-type=FAIL', '--sbatch',
            'comment=a,b']
    p = compare.parser()
    os.makedirs(tmp_path / 'runs')
    compare.launch(compare.Job(label='lp', argv=['--method', 'lp'], out=str(tmp_path / 'runs' / 'lp-s0')), None, 1,
                   None, cluster.launcher(p, p.parse_args(argv)))  # submitted: the script is all there is to see
    (script,) = record.iterdir()
    lines = script.read_text().splitlines()
    for asked in ('--exclude=node1,node2', '--mail-type=FAIL', '--comment=a,b'):
        assert f'#SBATCH {asked}' in lines, (asked, lines)


@pytest.mark.parametrize('signalled', ['the job and train.py', 'train.py alone'])
def test_a_job_slurm_ends_waits_for_slurm_and_a_train_py_ended_alone_returns(tmp_path, monkeypatch, capsys, signalled):
    """Slurm ends a job (cancelled, or its time up) with SIGTERM to every process of it: train.py dies of it, and the
    job waits for Slurm's SIGKILL (which requeues or cancels it) instead of reporting an outcome of its own. A train.py
    ended by a SIGTERM the job did not get is an outcome: the job returns it at once."""
    import threading
    slept = []
    monkeypatch.setattr(cluster.time, 'sleep', slept.append)  # Slurm's SIGKILL would end the wait
    monkeypatch.setattr(cluster.TrainRun, 'command', lambda self: [sys.executable, '-c', 'import time; time.sleep(60)'])
    job = cluster.TrainRun(argv=[], out=str(tmp_path / 'run'), threads=1)

    def slurm():
        if signalled == 'the job and train.py':
            os.kill(os.getpid(), signal.SIGTERM)
        os.kill(job.proc.pid, signal.SIGTERM)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        threading.Timer(1.0, slurm).start()
        assert job() == -signal.SIGTERM
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert (tmp_path / 'run.wall.json').exists()  # the session recorded either way
    if signalled == 'the job and train.py':
        assert slept == [600] and 'waiting for it to requeue or cancel the job' in capsys.readouterr().err
    else:
        assert slept == [] and 'waiting' not in capsys.readouterr().err
