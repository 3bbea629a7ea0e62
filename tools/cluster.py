"""How a comparison's runs execute. train_command, record and die_with_parent serve every run: one that compare.py
starts here as a child process (its default, compare.launch) and one run as a job. The rest submits each run as a
cluster job through submitit: `compare.py --launcher slurm` makes it one Slurm job; `--launcher local` runs the same
jobs as processes of this machine (submitit's local executor: what the tests use).

A job runs the run's own train.py command (TrainRun), its output appended to <run>.log as for a run started here; the
job's own log is <run>.jobs/<job id>_0_log.err (and .out). When Slurm preempts a job, or 90 s before its time limit, it
sends SIGUSR2 to every process of the job: submitit then calls TrainRun.checkpoint, which stops train.py (every
finished epoch is in its checkpoint.pt) and requeues the job, which resumes from there (a job out of time is requeued 3
times at most; a preempted one always). torchrun ignores SIGUSR2, and train.py, started as tools/job.py, passes it on
to the job's process: the job is requeued whichever process Slurm signals first, or alone, and once. A
cluster that preempts with SIGTERM alone (no preempt_send_user_signal) ends train.py: the job then waits for Slurm,
which requeues it (PreemptMode=REQUEUE; it resumes from its last epoch) or cancels it (then the next comparison
submits it again, resuming), and records no outcome of its own.

The job writes its session beside the run with record(), as compare.py does for a run started here, so a comparison
reads it back the same way, whichever machine ran it. The job's id is kept in <run>.job.json: a
comparison that finds that job still queued or running waits for it instead of submitting it again; one that ended
with no outcome is FAILED for this comparison (its log named) and submitted again, resuming, by the next.

Needs submitit (pip install submitit; in requirements.txt), imported only where a job is submitted or followed.
"""
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace

from flags import NONNEG_INT, POS_INT
from tools.protocols import HOW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project root, where train.py is

WAITING = {'PENDING', 'RUNNING', 'REQUEUED', 'REQUEUE_HOLD', 'REQUEUE_FED', 'CONFIGURING', 'COMPLETING', 'SUSPENDED',
           'RESIZING', 'PREEMPTED'}  # Slurm's states of a job not yet ended. Not UNKNOWN (no line in sacct): a job
#   long gone from its records is submitted again, never waited for forever


# ---- a run, wherever it runs: its command, its session on disk (here in a child process, or in a job) ----

def train_command(argv, out):
    """train.py's command for a run: its argv, or --resume where a killed run left a checkpoint (the data read from
    where this machine has it, run as asked: --grad-checkpointing)."""
    if all(os.path.exists(os.path.join(out, f)) for f in ('config.json', 'checkpoint.pt')):
        return [sys.executable, os.path.join(ROOT, 'train.py'), '--resume', '--out', out,
                *(argv[argv.index('--data-dir'):][:2] if '--data-dir' in argv else []), *[f for f in argv if f in HOW]]
    return [sys.executable, os.path.join(ROOT, 'train.py'), *argv]


def die_with_parent():
    """In the child: the kernel sends SIGTERM when compare.py dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def job_child():
    """In a job's child (train.py, or torchrun and its train.py processes): dies with the job's process, and ignores
    Slurm's SIGUSR2 (its default would end it before the job requeues; tools/job.py passes it on to the job)."""
    die_with_parent()
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def record(out, returncode, seconds):
    """A run's session on disk, where it ran (here or in a cluster job): its wall time added to <run>.wall.json, and
    a .diverged marker where train.py stopped an exploded loss (it exits 3, its error line in <run>.log)."""
    wall_path = out + '.wall.json'
    wall_s = seconds
    if os.path.exists(wall_path):  # the sessions before this one
        with open(wall_path) as f:
            wall_s += json.load(f)['wall_s']
    with open(wall_path + '.tmp', 'w') as f:
        json.dump({'wall_s': wall_s}, f)
    os.replace(wall_path + '.tmp', wall_path)
    with open(out + '.log') as f:  # train.py's error line where the loss was NaN or exploded (check_loss)
        exploded = [line for line in f if line.startswith('error: the loss ')] if returncode == 3 else []
    if exploded:
        with open(out + '.diverged', 'w') as f:  # kept: a later comparison reads it back, not runs it again
            f.write(exploded[-1])


# ---- compare.py's flags ----

def add_flags(p):
    """compare.py's flags of the launcher and its Slurm jobs."""
    g = p.add_argument_group('cluster jobs (tools/cluster.py; docs/gpus.md, "On a cluster")')
    g.add_argument('--launcher', choices=['subprocess', 'local', 'slurm'], default='subprocess', help='subprocess '
                   '(the default): each run a child process here; slurm: each run a Slurm job through submitit, '
                   'requeued when preempted or out of time and resumed from its last epoch; local: the same jobs as '
                   'processes here (submitit\'s local executor)')
    g.add_argument('--time-min', type=POS_INT, help='each job\'s time limit in minutes (default 240); a job out of '
                   'time is requeued and resumes, 3 times at most')
    g.add_argument('--partition', help='Slurm: the partition (default: the cluster\'s)')
    g.add_argument('--gpus-per-job', type=NONNEG_INT, help='Slurm: GPUs of each job (default 1)')
    g.add_argument('--cpus-per-job', type=POS_INT, help='Slurm: CPUs of each job, train.py\'s threads (default 8)')
    g.add_argument('--mem-gb', type=POS_INT, help='Slurm: memory of each job in GB (default 64)')
    g.add_argument('--account', help='Slurm: the account charged (default: yours)')
    g.add_argument('--qos', help='Slurm: the quality of service (default: the partition\'s)')
    g.add_argument('--constraint', help='Slurm: node features, e.g. a100 (default none)')
    g.add_argument('--sbatch', action='append', help='Slurm: any other sbatch options of every job, "name=value" '
                   '(repeat the flag, or "name=value,name=value": a comma not followed by name= belongs to the value), '
                   'e.g. "exclude=node1,node2,mail-type=FAIL"')


SLURM_ONLY = ('partition', 'gpus_per_job', 'cpus_per_job', 'mem_gb', 'account', 'qos', 'constraint', 'sbatch')
OWN = {'time': 'from --time-min', 'mem': 'from --mem-gb', 'partition': 'from --partition',
       'gpus-per-node': 'from --gpus-per-job', 'gres': 'from --gpus-per-job', 'cpus-per-task': 'from --cpus-per-job',
       'account': 'from --account', 'qos': 'from --qos', 'constraint': 'from --constraint', 'nodes': 'one node a job',
       'ntasks-per-node': 'one task a job', 'signal': 'USR2 90 s before the time limit', 'job-name': 'train',
       'open-mode': 'append', 'output': 'into the run\'s .jobs folder', 'error': 'into the run\'s .jobs folder'}


def launcher(p, a):
    """The cluster launcher the flags ask for (tools/cluster.py), or None: runs here as child processes."""
    given = ['--' + k.replace('_', '-') for k in SLURM_ONLY if getattr(a, k) is not None]
    if a.launcher != 'slurm' and given:
        p.error(f'{", ".join(given)}: Slurm settings; add --launcher slurm')
    if a.launcher == 'subprocess':
        if a.time_min is not None:
            p.error('--time-min is a job\'s time limit; add --launcher slurm (or local)')
        return None
    sbatch = [kv.split('=', 1) for text in a.sbatch or () for kv in re.split(r',(?=[\w-]+=)', text) if kv]
    if any(len(kv) != 2 or not re.fullmatch(r'[a-z][\w-]*', kv[0]) for kv in sbatch):
        p.error(f'--sbatch takes "name=value,name=value", got {", ".join(a.sbatch)!r}')
    if any(c in v for _, v in sbatch for c in '\r\n'):
        p.error('--sbatch: a value holds a line break, which would write another #SBATCH line into the job script')
    taken = [(k, OWN[k.replace('_', '-')]) for k, _ in sbatch if k.replace('_', '-') in OWN]
    if taken:
        p.error(f'--sbatch {taken[0][0]}=...: compare.py sets {taken[0][0]} itself ({taken[0][1]}); leave it out of '
                f'--sbatch')
    if a.launcher == 'slurm' and not (shutil.which('sbatch') and shutil.which('srun')):
        p.error('--launcher slurm: this machine has no Slurm (sbatch and srun are not on its PATH); run compare.py '
                'on the cluster\'s login node, or use --launcher local')
    given = dict(time_min=a.time_min, partition=a.partition, gpus=a.gpus_per_job, cpus=a.cpus_per_job,
                 mem_gb=a.mem_gb, account=a.account, qos=a.qos, constraint=a.constraint)
    return Launcher(kind=a.launcher, sbatch=dict(sbatch), **{k: v for k, v in given.items() if v is not None})


@dataclass(kw_only=True)
class Launcher:
    """Where and with what each job runs: compare.py's --launcher and its Slurm flags."""
    kind: str  # 'slurm' or 'local'
    partition: str = None
    time_min: int = 240
    gpus: int = 1
    cpus: int = 8
    mem_gb: int = 64
    account: str = None
    qos: str = None
    constraint: str = None
    sbatch: dict = field(default_factory=dict)  # any other sbatch option: {name: value}

    def executor(self, folder, gpu):
        """submitit's executor for one run's job; gpu: the GPU of a local job's slot (None: this machine has none)."""
        paths = os.environ.get('PYTHONPATH', '')
        if ROOT not in paths.split(os.pathsep):  # the job unpickles TrainRun from this project (submitit passes the
            os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, paths]))  # environment on to the job)
        import submitit
        if self.kind == 'local':
            ex = submitit.LocalExecutor(folder=folder)
            ex.update_parameters(timeout_min=self.time_min, gpus_per_node=0 if gpu is None else 1,
                                 visible_gpus=() if gpu is None else (gpu,))
            return ex
        ex = submitit.SlurmExecutor(folder=folder)
        given = dict(partition=self.partition, account=self.account, qos=self.qos, constraint=self.constraint)
        ex.update_parameters(job_name='train', time=self.time_min, nodes=1, ntasks_per_node=1,
                             gpus_per_node=self.gpus or None,
                             cpus_per_task=self.cpus, mem=f'{self.mem_gb}GB', additional_parameters=self.sbatch,
                             **{k: v for k, v in given.items() if v is not None})
        return ex

    def submit(self, job, guard, threads, gpu):
        """job (a compare.Job) as a cluster job, or the job an earlier comparison submitted for it while that one is
        still queued or running: a Handle that run_all polls."""
        record = read_record(job.out)
        if record and record['launcher'] == self.kind and in_flight(record):
            print(f'{job.label}: job {record["job_id"]} submitted before is {record.get("state", "running")}; '
                  f'waiting for it', flush=True)
            return Handle(job=None, out=job.out, record=record, guard=guard)
        folder = job.out + '.jobs'
        gpus = self.gpus if self.kind == 'slurm' else 1
        threads = max(1, self.cpus // max(1, gpus)) if self.kind == 'slurm' else threads
        if os.path.exists(folder) and not os.path.isdir(folder):
            return refused(job, guard, f'{folder}: a file where the run\'s job folder goes; move it away')
        try:
            submitted = self.executor(folder, gpu).submit(TrainRun(argv=job.argv, out=job.out, threads=threads,
                                                                   gpus=gpus, test_sets=job.test_sets))
        except Exception as e:  # sbatch refused it: an unknown partition, account or qos, a limit
            return refused(job, guard, f'{"sbatch" if self.kind == "slurm" else "submitit"} refused the job '
                                       f'({" ".join(str(e).split())[-300:]})')
        record = dict(launcher=self.kind, job_id=str(submitted.job_id), folder=folder,
                      log=str(submitted.paths.stderr).replace('%t', '0'))
        with open(job.out + '.job.json.tmp', 'w') as f:
            json.dump(record, f)
        os.replace(job.out + '.job.json.tmp', job.out + '.job.json')
        print(f'{job.label}: submitted as {self.kind} job {record["job_id"]} (its log: {record["log"]})', flush=True)
        return Handle(job=submitted, out=job.out, record=record, guard=guard)


def refused(job, guard, why):
    """A job that could not be submitted: a run that failed with why, said in one line; the other runs go on."""
    print(f'{job.label}: not submitted: {why}', file=sys.stderr, flush=True)
    return Handle(job=None, out=job.out, record={'log': job.out + '.log'}, guard=guard, returncode=why)


def read_record(out):
    """The job last submitted for a run (<run>.job.json), or None."""
    if not os.path.exists(out + '.job.json'):
        return None
    with open(out + '.job.json') as f:
        return json.load(f)


def in_flight(record):
    """Whether a recorded job is still queued or running: Slurm's state (sacct), or a local job's controller process
    alive on this machine."""
    if record['launcher'] == 'local':
        return os.path.exists(f'/proc/{record["job_id"]}')
    import submitit
    record['state'] = submitit.SlurmJob(folder=record['folder'], job_id=record['job_id']).state.split(' ')[0]
    return record['state'].upper() in WAITING


@dataclass(kw_only=True)
class Handle:
    """A cluster job as run_all sees it: poll() is None while it is queued or running, then its returncode: the exit
    status train.py returned, or why the job ended without one (with its log)."""
    job: object  # submitit's Job (None: a job submitted by an earlier comparison, followed by its record)
    out: str
    record: dict
    guard: object
    returncode: object = None

    def poll(self):
        if self.returncode is not None or (in_flight(self.record) if self.job is None else not self.job.done()):
            return self.returncode
        died = f'job {self.record["job_id"]} ended with no outcome (its log: {self.record["log"]})'
        if self.job is None:  # followed by its record: its outcome is what it left on disk
            self.returncode = 0 if os.path.exists(os.path.join(self.out, 'summary.json')) else died
            return self.returncode
        try:
            self.returncode = self.job.result()
        except Exception:  # killed, out of memory, out of requeues: no status from train.py
            self.returncode = died
        return self.returncode


@dataclass(kw_only=True)
class TrainRun:
    """What a job runs: one run's train.py (resumed where its checkpoint is), its session recorded beside the run."""
    argv: list
    out: str
    threads: int  # each train.py process's CPU threads
    gpus: int = 1
    test_sets: dict = None  # {name: folder}: scored with the run's prompt file in the job, on its GPU

    def command(self):
        """train.py's command (train_command) as a job runs it (tools/job.py); on a job with several GPUs, under
        torchrun, a process each."""
        cmd = train_command(self.argv, self.out)
        cmd[1] = os.path.join(ROOT, 'tools', 'job.py')  # train.py, passing Slurm's warning on to the job
        if self.gpus > 1:  # data-parallel over the job's GPUs (docs/gpus.md): the same run, its batch shared
            cmd = [cmd[0], '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={self.gpus}', *cmd[1:]]
        return cmd

    def __call__(self):
        cmd = self.command()
        print(f'{"resuming" if "--resume" in cmd else "running"} {" ".join(cmd[1:])}', flush=True)
        self.t0, self.ended = time.time(), False
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's: checkpoint(), then the job requeued
        bypass = signal.getsignal(signal.SIGTERM)  # submitit's: logged, ignored (Slurm requeues or cancels the job)

        def warned(*args):  # once: a second warning (train.py passes Slurm's on) is ignored, even while it exits
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
            requeue(*args)

        def ended(*args):
            self.ended = True
            if callable(bypass):
                bypass(*args)
        signal.signal(signal.SIGUSR2, warned)
        signal.signal(signal.SIGTERM, ended)
        with open(self.out + '.log', 'a') as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=job_child,
                                         env={**os.environ, 'OMP_NUM_THREADS': str(self.threads),
                                              'VP_JOB_PID': str(os.getpid())})
            returncode = self.proc.wait()
        if self.proc is not None:  # not stopped by checkpoint(), which recorded the session
            record(self.out, returncode, time.time() - self.t0)
            self.proc = None  # a warning while the test sets are scored records no second session
        if self.ended and returncode == -signal.SIGTERM:  # Slurm ends the job: it requeues it, or cancels it
            print('ended by Slurm (SIGTERM): waiting for it to requeue or cancel the job', file=sys.stderr, flush=True)
            time.sleep(600)  # its SIGKILL comes first (KillWait); the job reports no outcome of its own
        if returncode == 0 and self.test_sets:  # here, not on the login node where compare.py waits (requeued, the
            from tools import predict  # sets not scored yet)
            predict.score_test_sets(self.out, self.test_sets)
        return returncode

    def checkpoint(self, *args, **kwargs):
        """Called by submitit in the job on SIGUSR2 (preempted, or near the time limit): train.py stopped, its
        session recorded, the job requeued to resume it."""
        from submitit.helpers import DelayedSubmission
        if getattr(self, 'proc', None) is not None:
            proc, self.proc = self.proc, None
            proc.terminate()
            try:  # os.waitpid, not proc.wait(): this runs in a signal handler that may have interrupted proc.wait()
                os.waitpid(proc.pid, 0)  # gone before the requeued job starts its train.py
            except ChildProcessError:  # already reaped
                pass
            record(self.out, None, time.time() - self.t0)
        print('preempted or near the time limit: train.py stopped, the job requeued to resume from its last epoch',
              file=sys.stderr, flush=True)
        return DelayedSubmission(replace(self))  # the same run, its fields (not its process)
