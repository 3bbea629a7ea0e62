"""A run's folder and what a run shows: train.py writes through RunDir and prints through Progress and print_summary.

    run = RunDir('runs/x')
    run.claim(resume=False)              # refuses a file, a foreign folder, a run with records, a directory in use
    run.write_json('config.json', {...}) # strict JSON (no NaN), written to a temporary file and renamed into place
    run.save_checkpoint({...})           # the previous checkpoint survives a failed write (a full disk)

What a run folder holds: config.json (the arguments and the data's fingerprint), checkpoint.pt (the trainable state,
the optimizer, the epochs' metrics), metrics.jsonl (a line per finished epoch, rewritten from the checkpoint),
summary.json and prompt.safetensors (when finished), .lock (held while a process owns the run; the kernel releases it
when that process dies, even by SIGKILL). A prompt file (safetensors) holds what is not the frozen backbone (the
prompt, the head, label-mapping buffers; LoRA: its A and B; full fine-tuning: the whole model) and in its header what
is needed to use it: the run's arguments, class names, the backbone's normalization and a fingerprint of its weights.
"""
import fcntl
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist

from distributed import world
from methods import trainable_state


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
        """Own the directory for this process, or explain why not (before the model is built)."""
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
        self._replace(name, lambda tmp: _write_text(tmp, text + '\n'))

    def write_metrics(self, history):
        self._replace('metrics.jsonl', lambda tmp: _write_text(tmp, ''.join(json.dumps(h, allow_nan=False) + '\n'
                                                                             for h in history)))

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


def _write_text(path, text):
    with open(path, 'w') as f:
        f.write(text)


# ---- what a run prints ----

class Progress:
    """A progress line, refreshed by time: every second on a terminal, every 10 s in a log, and at the end."""

    def __init__(self, total, label, *, show=True):
        self.total, self.label, self.t0, self.shown, self.show = total, label, time.time(), -math.inf, show
        self.tty, self.every = sys.stderr.isatty(), 1.0 if sys.stderr.isatty() else 10.0
        if show:  # at once: the first step may take a while (a CPU at a large image size, a GPU's warm-up)
            print(f'{label} [{" " * 20}] 0/{total}', end='\r' if self.tty else '\n', file=sys.stderr, flush=True)

    def due(self, i):
        return self.show and (i == self.total or i == 1 or time.time() - self.shown >= self.every)

    def update(self, i, images, loss=None, acc=None):
        if not self.due(i):
            return
        rate, bar = images / max(time.time() - self.t0, 1e-9), '=' * (20 * i // self.total)
        what = f' loss {loss:.3f} acc {acc:.1f}%' if loss is not None else ''
        end = '\n' if i == self.total or not self.tty else ''
        print(f'\r{self.label} [{bar:<20}] {i}/{self.total}{what} {rate:.0f} img/s', end=end, file=sys.stderr,
              flush=True)
        self.shown = time.time()


def print_start(a, model, splits, trainable, size):
    """What the run trains, on what, where, in which precision, and its folder: before the first step."""
    for m in model.attached:
        print('\n'.join(m.describe()))
    head = sum(p.numel() for p in model.head.parameters() if p.requires_grad)  # the fresh linear head, if it trains
    print(f'{a.method} on {a.model} ({model.weights_loaded}): trainable {trainable:,} (the head {head:,}) || backbone '
          f'{model.backbone_params:,} || {100 * trainable / model.backbone_params:.3f}%  ({len(splits.train)} '
          f'train, {len(splits.val) if splits.val else 0} val, {len(splits.test)} test images, {a.device}, '
          f'{a.precision}{f", {size} processes" if size > 1 else ""})\nrun folder: {a.out}')


def finish(a, model, splits, run, history, train_time, images_seen, trainable):
    """summary.json, prompt.safetensors (and the prompt's figures with --save-prompts), written into the run folder and
    printed; returns the summary."""
    last = history[-1]
    summary = dict(method=a.method, model=a.model, weights=model.weights_loaded, dataset=a.dataset, seed=a.seed,
                   epochs=a.epochs, img_size=a.img_size, precision=a.precision, test_acc=last.get('test_acc'),
                   train_loss=last['train_loss'])
    if not a.no_test:
        summary.update(best_test_acc=max(h['test_acc'] for h in history if 'test_acc' in h),
                       best_test_acc_is="the max over epochs on the test set: LoR-VP's protocol, which selects on test")
    if splits.val is not None:
        best = max(range(len(history)), key=lambda i: (history[i]['val_acc'], -i))  # first epoch of the best val acc
        summary.update(val_acc=history[best]['val_acc'], val_selected_epoch=best + 1, final_val_acc=last['val_acc'])
        if 'test_acc' in history[best]:  # tested at that epoch (--test-every)
            summary['val_selected_test_acc'] = history[best]['test_acc']
    summary.update(trainable_params=trainable, backbone_params=model.backbone_params, train_time_s=train_time,
                   train_images_per_s=images_seen / max(train_time, 1e-9), processes=world()[1],
                   backend=dist.get_backend() if dist.is_initialized() else None,
                   peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9 if a.device.startswith('cuda') else None,
                   device=a.device if a.device == 'cpu' else torch.cuda.get_device_name(), torch=torch.__version__,
                   data=splits.fingerprint)
    summary.update({k: v for k, v in last.items() if k in ('prompt_density', 'spike_rate')})
    summary['prompt_file'] = save_prompt(model, a, run.file('prompt.safetensors'), classes=splits.classes,
                                         test_acc=summary['test_acc'])
    if a.save_prompts:
        images = torch.stack([splits.test[i][0] for i in range(min(a.save_prompts, len(splits.test)))])
        figures = model.prompt.figures(images.to(a.device))
        summary['figures'] = save_figures(figures, run.path)
        summary.update({k: [[round(v, 4) for v in row] for row in x.tolist()]
                        for k, x in figures.items() if x.dim() == 2})  # the factors' correlations, as numbers
    where = '' if a.dataset == 'cifar10-sample' else f' --data-dir {a.data_dir}'  # the sample needs no folder
    summary['predict'] = f'python tools/predict.py --prompt {summary["prompt_file"]} --dataset {a.dataset}{where}'
    run.write_json('summary.json', summary)
    print_summary(summary, run)
    return summary


def print_summary(s, run):
    acc = lambda k, then='': f'{s[k]:.2f}%{then}' if s.get(k) is not None else None
    rows = [('test acc, final epoch', acc('test_acc') or '- (--no-test)'),
            ('best test acc over epochs', acc('best_test_acc', "  (LoR-VP's protocol: selects on test)")),
            ('best val acc', acc('val_acc', f" (epoch {s.get('val_selected_epoch')})")),
            ('test acc at the best val epoch', acc('val_selected_test_acc')),
            ('trainable params', f"{s['trainable_params']:,} ({100 * s['trainable_params'] / s['backbone_params']:.3f}%"
                                 f" of the backbone's {s['backbone_params']:,})"),
            ('train time', f"{s['train_time_s']:.1f} s, {s['train_images_per_s']:.1f} images/s"),
            ('peak GPU memory', f"{s['peak_mem_gb']:.2f} GB" if s['peak_mem_gb'] is not None else '- (cpu)'),
            ('run folder', run.path), ('prompt file', s.get('prompt_file')), ('next', s.get('predict'))]
    print(f"== {s['method']} on {s['model']}, {s['dataset']} (seed {s['seed']}, {s['epochs']} epochs, "
          f"{s['img_size']} px, {s['device']}, {s.get('precision', 'fp32')}) ==")
    print('\n'.join(f'{k:<34} {v}' for k, v in rows if v is not None))


def save_figures(figures, folder) -> list[str]:
    """A prompt's figures (its figures() hook: LoRSP's Fig. 5 and 3b) as PNGs in the run folder: rows of images
    (B, k, c, H, W) in [0, 1] as a grid of B rows; a matrix (n, n) in [-1, 1] as n x n squares, white at 0, red
    towards 1 and blue towards -1 (its numbers go into summary.json)."""
    from torchvision.utils import save_image
    paths = [os.path.join(folder, f'{name}.png') for name in figures]
    for path, x in zip(paths, figures.values()):
        if x.dim() == 2:  # (n, n) -> (3, 32 n, 32 n)
            x = torch.stack([1 + x.clamp(max=0), 1 - x.abs(), 1 - x.clamp(min=0)]).repeat_interleave(32, 1)
            x = x.repeat_interleave(32, 2)[None, None]
        save_image(x.flatten(0, 1), path, nrow=x.shape[1], padding=2, pad_value=1.0)
    return paths


FORMAT = 'visual-prompt/1'  # a prompt file's header says it is one (tools/serve.py reads them)


def save_prompt(model, a, path, *, classes, test_acc=None):
    """Writes the run's trained state that is not the frozen backbone, with what is needed to use it."""
    from safetensors.torch import save_file
    state = {k: v.detach().to('cpu').contiguous() for k, v in trainable_state(model).items()}
    meta = dict(format=FORMAT, method=a.method, model=a.model, weights=model.weights_loaded, img_size=a.img_size,
                classes=list(classes), mean=list(model.normalize.mean.flatten().tolist()),
                std=list(model.normalize.std.flatten().tolist()), test_acc=test_acc, dataset=a.dataset,
                test_limit=a.test_limit, weights_sha256=model.weights_sha256, args=vars(a))
    save_file(state, path, metadata={k: json.dumps(v) for k, v in meta.items()})
    return path
