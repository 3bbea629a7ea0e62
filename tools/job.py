"""train.py as a cluster job runs it (tools/cluster.py, TrainRun): Slurm's warning SIGUSR2 (a preemption, or 90 s
before the time limit) goes on to the job's process, whose id is in VP_JOB_PID, which stops the run and requeues it
to resume from its last epoch, whichever of them Slurm signals first, or alone; then this process is train.py.

    VP_JOB_PID=<the job's process> python tools/job.py --method lp ...     # as python train.py --method lp ...
"""
import os
import runpy
import signal
import sys

TRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'train.py')


def warn_the_job(*_):
    try:
        os.kill(int(os.environ['VP_JOB_PID']), signal.SIGUSR2)
    except (KeyError, ValueError, ProcessLookupError):
        pass  # no job, or it is gone: nothing to requeue


if __name__ == '__main__':
    signal.signal(signal.SIGUSR2, warn_the_job)
    sys.argv[0] = TRAIN
    sys.path[0] = os.path.dirname(TRAIN)  # the project's modules, as python train.py finds them
    runpy.run_path(TRAIN, run_name='__main__')
