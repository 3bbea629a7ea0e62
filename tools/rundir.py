"""A run directory: one owner at a time, files written whole or not at all, damage reported by name.

    run = RunDir('runs/x')
    run.claim(resume=False)              # refuses a file, a foreign folder, a run with records, a directory in use
    run.write_json('config.json', {...}) # strict JSON (no NaN), written to a temporary file and renamed into place
    run.save_checkpoint({...})           # the previous checkpoint survives a failed write (a full disk)

What a run directory holds: config.json (the arguments), checkpoint.pt (the trainable state, the optimizer, the
epochs' metrics), metrics.jsonl (a line per finished epoch, rewritten from the checkpoint), summary.json (when
finished), .lock (held while a process owns the run; the kernel releases it when that process dies, even by SIGKILL).
"""
import fcntl
import json
import os

import torch

from flags import resolve, saved_args
from methods import build, load_state


class RunDirError(Exception):
    """A run directory that cannot be used as asked; the message names the file and the fix."""


class RunDir:
    def __init__(self, path):
        self.path = path
        self._lock, self.created = None, False

    def file(self, name):
        return os.path.join(self.path, name)

    def exists(self, name):
        return os.path.exists(self.file(name))

    def claim(self, *, resume: bool):
        """Own the directory for this process, or explain why not (before any model or data is loaded)."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunDirError(f'--out {self.path}: is a file, not a directory')
        if set(os.listdir(self.path) if os.path.isdir(self.path) else ()) - {'.lock'} \
                and not self.exists('config.json'):
            raise RunDirError(f'--out {self.path}: a non-empty directory that holds no run (no config.json); this '
                              f'codebase does not write into folders it did not make: choose another --out')
        if resume and not self.exists('config.json'):
            raise RunDirError(f'--resume: no run to resume in {self.path} (no config.json); give --out the run '
                              f'directory')
        self.created = not os.path.exists(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
            self._lock = open(self.file('.lock'), 'a')
        except OSError as e:
            raise RunDirError(f'--out {self.path}: cannot write there ({e.strerror})') from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunDirError(f'--out {self.path}: another process is running this run now; wait for it, or stop '
                              f'it first') from None
        recorded = [n for n in ('summary.json', 'checkpoint.pt', 'metrics.jsonl')
                    if self.exists(n) and os.path.getsize(self.file(n)) > 0]
        if not resume and recorded:  # a finished epoch or a summary is never cleared, even if its checkpoint is gone
            self.release()
            raise RunDirError(f'--out {self.path}: already holds a run ({", ".join(recorded)}); continue it with '
                              f'--resume, or choose another --out')
        # Else the directory holds nothing or the config.json of a run that stopped before its first epoch: set-up
        # writes its own config.json once it has succeeded, and deletes nothing.

    def release(self):
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def abandon(self):
        """Set-up failed: remove what this process wrote if it made the directory (failed runs leave nothing)."""
        self.release()
        if self.created:
            for name in os.listdir(self.path):
                os.remove(self.file(name))
            os.rmdir(self.path)

    def in_use(self) -> bool:
        """Whether another process owns this directory now (for compare.py, which never touches such a run)."""
        if not self.exists('.lock'):
            return False
        with open(self.file('.lock'), 'a') as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False

    # ---- writing: whole files or nothing ----

    def _replace(self, name, write):
        tmp = self.file(name + '.tmp')
        try:
            write(tmp)
            os.replace(tmp, self.file(name))
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write (a full disk) as a RuntimeError
            if isinstance(e, RuntimeError) and not any(w in str(e) for w in ('inline_container', 'write', 'Write')):
                raise  # not a write that failed (its zip container's writer): a bug keeps its traceback
            if os.path.exists(tmp):
                os.remove(tmp)  # a partial file would keep the disk full
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:160]
            raise RunDirError(f'could not write {self.file(name)} ({why}); the previous {name}, if any, is '
                              f'unchanged') from None

    def write_json(self, name, obj):
        text = json.dumps(obj, indent=1, allow_nan=False)  # strict: a NaN is a bug, never a result

        def write(tmp):
            with open(tmp, 'w') as f:
                f.write(text + '\n')
        self._replace(name, write)

    def write_metrics(self, history):
        lines = ''.join(json.dumps(h, allow_nan=False) + '\n' for h in history)

        def write(tmp):
            with open(tmp, 'w') as f:
                f.write(lines)
        self._replace('metrics.jsonl', write)

    def save_checkpoint(self, state):
        self._replace('checkpoint.pt', lambda tmp: torch.save(state, tmp))

    # ---- reading: damage is a message naming the file ----

    def read_json(self, name):
        try:
            with open(self.file(name)) as f:
                return json.load(f)
        except FileNotFoundError:
            raise RunDirError(f'{self.file(name)} is missing') from None
        except (ValueError, UnicodeDecodeError) as e:
            raise RunDirError(f'{self.file(name)} is damaged (not JSON: {e}); the run cannot continue from it') \
                from None

    def read_metrics(self):
        if not self.exists('metrics.jsonl'):
            return []
        rows = []
        with open(self.file('metrics.jsonl')) as f:
            for i, line in enumerate(f, 1):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise RunDirError(f'{self.file("metrics.jsonl")}: line {i} is damaged (not JSON); the run '
                                      f'cannot continue from it') from None
        return rows

    def load_checkpoint(self, device):
        try:
            return torch.load(self.file('checkpoint.pt'), map_location=device, weights_only=False)
        except FileNotFoundError:
            raise RunDirError(f'{self.file("checkpoint.pt")} is missing') from None
        except Exception as e:
            raise RunDirError(f'{self.file("checkpoint.pt")} is damaged ({type(e).__name__}: '
                              f'{str(e).strip().splitlines()[0][:120]}); the run cannot continue from it') from None


def load_run(path, *, device='cpu', base=False):
    """The arguments and trained model of a run directory (cka.py, theory/, predict.py); base=True: the frozen model
    it started from, with a plain linear head. Raises RunDirError for a path that is not such a run."""
    run = RunDir(path)
    if not run.exists('config.json') or not run.exists('checkpoint.pt'):
        raise RunDirError(f'{path}: not a trained run (it needs config.json and checkpoint.pt from train.py)')
    a = saved_args(run.read_json('config.json')['args'])
    a.device, a.resume = device, False
    if base:
        a.method, a.label_map, a.save_prompts, a.compile = 'lp', 'lp', 0, False
    model = build(resolve(a))  # seeded as train.py built it: the same backbone and head init
    if not base:
        load_state(model, run.load_checkpoint(device)['model'], source=run.file('checkpoint.pt'))
    return a, model.eval()
