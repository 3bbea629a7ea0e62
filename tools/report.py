"""What a run shows and leaves: its progress line, and at the end summary.json, the prompt file and the summary printed
with the run's folder and the command to use it next (train.py calls these)."""
import math
import sys
import time

import torch
import torch.distributed as dist

from distributed import world
from tools.serve import save_prompt


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
    print(f'{a.method} on {a.model} ({model.weights_loaded}): trainable {trainable:,} || backbone '
          f'{model.backbone_params:,} || {100 * trainable / model.backbone_params:.3f}%  ({len(splits.train)} '
          f'train, {len(splits.val) if splits.val else 0} val, {len(splits.test)} test images, {a.device}, '
          f'{a.precision}{f", {size} processes" if size > 1 else ""})\nrun folder: {a.out}')


def finish(a, model, splits, run, history, train_time, images_seen, trainable):
    """summary.json, prompt.safetensors (and LoRSP's figures with --save-prompts), written into the run folder and
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
                   device=a.device if a.device == 'cpu' else torch.cuda.get_device_name(), torch=torch.__version__)
    summary.update({k: v for k, v in last.items() if k in ('prompt_density', 'spike_rate')})
    summary['prompt_file'] = save_prompt(model, a, run.file('prompt.safetensors'), classes=splits.classes,
                                         test_acc=summary['test_acc'])
    if a.save_prompts:
        from tools.figures import lorsp_figures
        images = torch.stack([splits.test[i][0] for i in range(min(a.save_prompts, len(splits.test)))])
        summary['figures'] = lorsp_figures(model.prompt, images.to(a.device), run.path)
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
