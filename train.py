"""Train one method on a frozen timm backbone: the single entry point of this codebase (a GPU, the CPU, or several
processes under torchrun).

    python train.py --method lotep_cp --model resnet18 --dataset cifar100          # the papers' protocol, GPU
    python train.py --method lp --model tf_efficientnet_lite0 --dataset cifar10 --data-dir ../shared/data \\
        --train-per-class 100 --test-limit 1000 --img-size 96 --epochs 2           # offline, CPU, minutes
    torchrun --nproc_per_node 2 train.py --method lorvp ...                        # data-parallel, same result

Arguments -> resolve -> set-up (run directory, model, data) -> the loop -> summary. The run directory (--out, default
runs/<method>-<model>-<dataset>-<seed>) gets config.json, metrics.jsonl (a line per epoch), checkpoint.pt (after every
epoch), summary.json and prompt.safetensors; --resume continues a killed run and ends where the uninterrupted run would.
"""
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import backbones
import baselines
import data
import distributed
import lorsp
from distributed import GlobalBatches, all_reduce, share, world
from flags import RESUMABLE, UsageError, given_flags, parse, resolve, saved_args
from methods import BuildError, StateError, autocast, build, load_state, trainable_state
from tools.rundir import RunDir, RunDirError
from tools.serve import save_prompt

# ---- training ----

def lr_factor(a, step, total, steps_per_epoch):
    t, epoch, warmup = step / total, step // steps_per_epoch, a.warmup_epochs * steps_per_epoch
    if a.schedule_lr == 'cosine':  # per step, to 0, no warmup (LoR-VP)
        return 0.5 * (1 + math.cos(math.pi * t))
    if a.schedule_lr == 'cosine_epoch':  # per epoch (EVP)
        return 0.5 * (1 + math.cos(math.pi * epoch / a.epochs))
    if a.schedule_lr == 'multistep':  # x0.1 at 50% and 72% of the epochs (ILM-VP, AutoVP)
        return 1.0 if epoch < 0.5 * a.epochs else 0.1 if epoch < 0.72 * a.epochs else 0.01
    if a.schedule_lr == 'warmup_cosine':  # linear warmup, then cosine (VPT)
        return (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) /
                                                                             max(total - warmup, 1)))
    return 1.0


def make_optimizer(a, model):
    head = {id(p) for p in model.head.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
    prompt_lr = (a.prompt_lr or a.lr) * a.lr_scale
    groups = [dict(params=rest, lr=prompt_lr, normalized=a.optimizer == 'evp',
                   weight_decay=0.0 if a.optimizer == 'evp' else a.wd),
              dict(params=[p for p in model.head.parameters() if p.requires_grad], lr=a.lr * a.lr_scale,
                   normalized=False, weight_decay=a.wd)]
    groups = [g for g in groups if g['params']]
    for g in groups:
        g['base_lr'] = g['lr']
    if a.optimizer == 'evp':
        return baselines.EVPUpdate(groups, prompt=model.prompt, lr=a.lr * a.lr_scale, weight_decay=a.wd)
    for g in groups:
        g.pop('normalized')
    if a.optimizer == 'adam':
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=0.9)


def loader(ds, a, *, seed=None):
    """Training batches (seeded, this process's share of each global batch), or evaluation batches in order."""
    if seed is not None:  # the generator seeds workers; the sampler draws the order from its own
        return DataLoader(ds, batch_sampler=GlobalBatches(len(ds), a.batch_size, seed), num_workers=a.workers,
                          pin_memory=a.device.startswith('cuda'), generator=torch.Generator().manual_seed(seed))
    return DataLoader(ds, batch_size=a.batch_size, num_workers=a.workers, pin_memory=a.device.startswith('cuda'))


@torch.no_grad()
def evaluate(net, ds, a):
    """Accuracy on a data set; under torchrun each process evaluates its share and every image counts once. The
    counts stay on the device until the end (no wait for the GPU per batch)."""
    net.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=a.device)  # correct, images
    for x, y in loader(share(ds), a):
        x, y = x.to(a.device, non_blocking=True), y.to(a.device, non_blocking=True)
        with autocast(a):
            counts[0] += (net(x).argmax(1) == y).sum()
        counts[1] += len(y)
    correct, total = distributed.reduce_(counts).tolist()
    return 100.0 * correct / total


@torch.no_grad()
def cached_features(model, splits, a):
    """Only the head trains (lp): the frozen backbone's pooled features of the un-augmented images are computed once
    and the head trains on them. The same batches, the same maths: only the repeated backbone forwards go."""
    def cache(ds):
        feats, labels = [], []
        for x, y in DataLoader(ds, batch_size=a.batch_size, num_workers=a.workers):
            with autocast(a):
                feats.append(model.features(x.to(a.device)).float())
            labels.append(y.to(a.device))
        return TensorDataset(torch.cat(feats), torch.cat(labels))
    model.eval()
    return data.Splits(train=cache(splits.train), val=cache(splits.val) if splits.val is not None else None,
                       test=cache(splits.test), num_classes=splits.num_classes)


def only_head_trains(model) -> bool:
    head = {id(p) for p in model.head.parameters()}
    return all(id(p) in head for p in model.parameters() if p.requires_grad) and not label_maps(model)


def label_maps(model):
    return [m for m in model.modules() if isinstance(m, baselines.SourceLabelMap)]


def update_label_maps(model, batches, epoch):
    """ILM, FLM, FreqMap, EVP's mode: before an epoch where one is due, a pass over the training set (this process's
    share of it), the counts summed over the processes."""
    for m in label_maps(model):
        if m.due(epoch):
            m.set_mapping(distributed.reduce_(m.count_sources(model, batches)))


def record_stats(model):
    """Method diagnostics (LoRSP's spike rates and prompt density) at this run's evaluations; off elsewhere."""
    for m in model.modules():
        if hasattr(m, 'record_stats'):
            m.record_stats = True


def pop_stats(model):
    stats = {}
    for m in model.modules():
        if m is not model and hasattr(m, 'pop_stats'):
            stats.update(m.pop_stats())
    return stats


class Progress:
    def __init__(self, total, label):
        self.total, self.label, self.t0, self.shown = total, label, time.time(), -1
        self.tty = sys.stderr.isatty()

    def update(self, i, images, loss, acc):
        """At step i of the epoch (every READ_EVERY steps): a bar on a terminal, a line per quarter in a log."""
        rate = images / max(time.time() - self.t0, 1e-9)
        quarter = 4 * i // self.total
        if self.tty or quarter > self.shown or i == self.total:
            bar = '=' * (20 * i // self.total)
            end = '\n' if i == self.total or not self.tty else ''
            print(f'\r{self.label} [{bar:<20}] {i}/{self.total} loss {loss:.3f} acc {acc:.1f}% {rate:.0f} img/s',
                  end=end, file=sys.stderr, flush=True)
            self.shown = quarter


class Diverged(Exception):
    """The training loss became NaN or infinite, or exploded: the run stops, its last good checkpoint kept."""


READ_EVERY = 10  # steps between reads of the epoch's running loss from the device (each read waits for the GPU)
EXPLODED = 10  # a window's mean loss above EXPLODED x max(ln K, the first step's loss) stops the run as diverged


def check_loss(window_loss, K, first_loss, epoch, first, last):
    """Stops a run whose training loss is not finite, or whose mean over steps first..last exceeds 10 x the larger of
    ln K (chance level) and the loss of the run's first step: with K = 10 and a fresh head (which starts near ln K),
    a model that gives the true class e^-23 of probability on average, which no run that learns comes near; a
    backbone whose initial loss is far above chance (random weights) is held to its own start. Healthy runs of every
    method stay far below it (README, When things go wrong)."""
    where = f'at epoch {epoch + 1}, steps {first}-{last}'
    line = EXPLODED * max(math.log(K), first_loss)
    if not math.isfinite(window_loss):
        problem = f'the training loss became {window_loss} {where}'
    elif window_loss > line:
        problem = (f'the training loss exploded to {window_loss:.4g} {where} (above {EXPLODED} x max(ln K, the first '
                   f'step\'s loss) = {line:.3g}; chance level is ln K = {math.log(K):.3g})')
    else:
        return
    raise Diverged(f'{problem}; the run stopped and its last checkpoint (epoch {epoch}) is kept. Try a lower --lr '
                   f'(or --lr-scale), or --precision fp32')


def train(a, model, splits, run, ckpt=None):
    """The epochs (from a checkpoint's, if given); returns the metrics of every epoch, training time, images seen."""
    rank, size = world()
    opt = make_optimizer(a, model)
    history, start, train_time, images_seen, first_loss = [], 0, 0.0, 0, None
    if ckpt is not None:  # set-up loaded its model state
        opt.load_state_dict(ckpt['optimizer'])
        history, train_time, images_seen = ckpt['history'], ckpt['train_time_s'], ckpt['images_seen']
        first_loss = ckpt.get('first_loss')
        start = len(history)
        print(f'resuming {run.path} after epoch {start}/{a.epochs}')
    net = model
    if only_head_trains(model):  # lp: the backbone's forwards happen once, here, and count as training time
        t0 = time.time()
        splits, net = cached_features(model, splits, a), model.head
        train_time += time.time() - t0
    ddp = distributed.data_parallel(net, a.device)  # torchrun: DDP averages the gradients in backward
    record_stats(model)
    steps_per_epoch = math.ceil(len(splits.train) / a.batch_size)
    total = a.epochs * steps_per_epoch
    for epoch in range(start, a.epochs):
        torch.manual_seed(a.seed * 100_003 + epoch)  # dropout masks etc.: the same with and without a resume
        t0 = time.time()
        update_label_maps(model, loader(share(splits.train), a), epoch)
        net.train()
        dl = loader(splits.train, a, seed=a.seed * 100_003 + epoch)
        progress = Progress(len(dl), f'epoch {epoch + 1}/{a.epochs}') if rank == 0 else None
        sums = torch.zeros(2, dtype=torch.float64, device=a.device)  # the epoch's summed loss and correct predictions
        read = dict(loss=0.0, correct=0.0, seen=0, step=0)  # their values at the last read
        seen = 0
        for i, (x, y) in enumerate(dl):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g['lr'] = g['base_lr'] * lr_factor(a, step, total, steps_per_epoch)
            x, y = x.to(a.device, non_blocking=True), y.to(a.device, non_blocking=True)
            mine, global_n = dl.batch_sampler.share(i)  # images of the global batch in this process: 0 = a stand-in
            with autocast(a):
                logits = ddp(x)
            batch_loss = F.cross_entropy(logits.float(), y, reduction='sum') * (mine > 0)  # this process's share
            # the mean loss over the global batch; DDP averages the processes' gradients, hence x size
            loss = batch_loss * size / global_n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if isinstance(opt, baselines.EVPUpdate):  # EVP's canvas gradient, a gradient outside the parameters
                distributed.reduce_(opt.prompt.canvas_grad, mean=True)  # averaged as DDP averages the others
            opt.step()
            sums += torch.stack([batch_loss.detach(), (logits.argmax(1) == y).sum() * (mine > 0)])
            seen += global_n
            if first_loss is None:  # the run's first step, before any update: the explode rule's reference (one read)
                first_loss = distributed.reduce_(batch_loss.detach().double()).item() / global_n
            if (i + 1) % READ_EVERY == 0 or i + 1 == len(dl):  # one wait for the device per READ_EVERY steps
                loss_sum, correct = distributed.reduce_(sums.clone()).tolist()
                check_loss((loss_sum - read['loss']) / (seen - read['seen']), splits.num_classes, first_loss, epoch,
                           read['step'] + 1, i + 1)
                read = dict(loss=loss_sum, correct=correct, seen=seen, step=i + 1)
                if progress:
                    progress.update(i + 1, seen, loss_sum / seen, 100.0 * correct / seen)
        train_time += time.time() - t0
        images_seen += seen
        row = dict(epoch=epoch, train_loss=read['loss'] / seen, train_acc=100.0 * read['correct'] / seen,
                   lr=opt.param_groups[-1]['lr'], epoch_time_s=time.time() - t0)
        if splits.val is not None:
            row['val_acc'] = evaluate(net, splits.val, a)
        pop_stats(model)
        if not a.no_test and ((epoch + 1) % a.test_every == 0 or epoch + 1 == a.epochs):  # tuning runs never do
            row['test_acc'] = evaluate(net, splits.test, a)
            row.update(pop_stats(model))  # method diagnostics on the test set (LoRSP spike rates, prompt density)
        history.append(row)
        if rank == 0:
            print(f'epoch {epoch + 1}/{a.epochs}: ' + ' '.join(
                f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in row.items() if k != 'epoch'))
            run.save_checkpoint(dict(model=trainable_state(model), optimizer=opt.state_dict(), history=history,
                                     train_time_s=train_time, images_seen=images_seen, first_loss=first_loss))
            run.write_metrics(history)
    return history, train_time, images_seen


# ---- set-up: the run directory, the model, the data; every mistake of the user ends here in one message ----

def setup(a, argv, rank):
    """Resolved arguments, the claimed run directory, the model, the data and the checkpoint to resume from (None:
    from the start); or a UsageError-like exception."""
    if a.resume:
        if not a.out:
            raise UsageError('--resume needs --out, the run directory')
        run = RunDir(a.out)
        if not run.exists('config.json'):
            raise RunDirError(f'--resume: no run to resume in {a.out} (no config.json); give --out the run directory')
        saved, given = saved_args(run.read_json('config.json')['args']), given_flags(argv) - {'resume', 'out'}
        a.model, a.data_dir = backbones.resolve_name(a.model), os.path.abspath(a.data_dir)  # as saved
        differ = [f'--{k.replace("_", "-")} {getattr(a, k)} (saved: {getattr(saved, k)})' for k in sorted(given)
                  if k not in RESUMABLE and getattr(a, k) != getattr(saved, k)]
        if differ:
            raise UsageError(f'--resume continues {a.out} with its saved flags; these differ: {"; ".join(differ)}. '
                             f'Only {", ".join("--" + k for k in RESUMABLE)} may change')
        vars(saved).update({k: getattr(a, k) for k in given if k in RESUMABLE}, resume=True, out=a.out)
        a = saved
    a = resolve(a)
    a.out = a.out or os.path.join('runs', f'{a.method}-{a.model}-{a.dataset.replace(":", "-")}-{a.seed}')
    run, ckpt = RunDir(a.out), None
    if rank == 0:
        run.claim(resume=a.resume)
    try:
        if a.resume and run.exists('summary.json'):
            return a, run, None, None, None
        if a.resume and run.exists('checkpoint.pt'):
            ckpt = run.load_checkpoint(a.device)
        elif a.resume and run.read_metrics():
            raise RunDirError(f'{run.file("metrics.jsonl")} records epochs but {run.file("checkpoint.pt")} is '
                              f'missing: the run cannot continue from it')
        model = build(a)  # model errors before data loading
        if ckpt is not None:
            load_state(model, ckpt['model'], source=run.file('checkpoint.pt'))
        if a.save_prompts and not isinstance(model.prompt, lorsp.LoRSP):
            raise UsageError('--save-prompts draws LoRSP prompts and factors; use it with a lorsp method')
        if a.compile and not isinstance(model.prompt, lorsp.LoRSP):
            raise UsageError('--compile compiles the LoRSP prompt; the other methods have nothing it would speed up')
        splits = data.load(a.dataset, data_dir=a.data_dir, img_size=a.img_size, seed=a.seed,
                           train_per_class=a.train_per_class, test_limit=a.test_limit, val_split=a.val_split,
                           splits=a.splits)
        if a.no_test and splits.val is None:
            raise UsageError('--no-test needs validation images (--val-split, a folder\'s val/, or --splits tune): '
                             'a run that never sees the test images is evaluated on them')
        if rank == 0 and not a.resume:  # written once set-up has succeeded: a failed set-up changes nothing
            run.write_json('config.json', dict(args=vars(a), command='python train.py ' + ' '.join(argv),
                                               classes=splits.classes, torch=torch.__version__,
                                               timm=__import__('timm').__version__))
    except BaseException:
        run.abandon() if not a.resume else run.release()
        raise
    return a, run, model, splits, ckpt


SETUP_ERRORS = (UsageError, BuildError, data.DataError, backbones.BackboneError, RunDirError, StateError)


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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse(argv)
    device = a.device = distributed.init(a.device)  # torchrun: one process per GPU, or gloo on the CPU
    rank, size = world()
    try:
        a, run, model, splits, ckpt = setup(a, argv, rank)
        error = None
    except SETUP_ERRORS as e:
        error = e
    # every process stops if one could not set up (under torchrun on GPUs, a tensor on this process's GPU)
    if all_reduce(error is not None, device=device if size > 1 and device.startswith('cuda') else 'cpu')[0]:
        print(f'error: {error}' if error else 'error: another process could not set up (see its message)',
              file=sys.stderr)
        raise SystemExit(2)
    if model is None:
        run.release()
        print(f'{a.out} has already finished; its summary:')
        summary = run.read_json('summary.json')
        print_summary(summary)
        return summary
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if rank == 0:
        for m in model.attached:
            print('\n'.join(m.describe()))
        print(f'{a.method} on {a.model} ({model.weights_loaded}): trainable {trainable:,} || backbone '
              f'{model.backbone_params:,} || {100 * trainable / model.backbone_params:.3f}%  ({len(splits.train)} '
              f'train, {len(splits.val) if splits.val else 0} val, {len(splits.test)} test images, {a.device}, '
              f'{a.precision}{f", {size} processes" if size > 1 else ""})')
    if a.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    try:
        history, train_time, images_seen = train(a, model, splits, run, ckpt)
        summary = finish(a, model, splits, run, history, train_time, images_seen, trainable) if rank == 0 else None
    except (Diverged, RunDirError, data.DataError) as e:  # not bugs: a diverged run, a full disk, a corrupt image
        print(f'error: {str(e).strip().splitlines()[-1].removeprefix("data.DataError: ")}', file=sys.stderr)
        raise SystemExit(3) from None
    finally:
        run.release()
    if size > 1:
        dist.destroy_process_group()
    return summary


def finish(a, model, splits, run, history, train_time, images_seen, trainable):
    summary = dict(method=a.method, model=a.model, weights=model.weights_loaded,
                   dataset=a.dataset, seed=a.seed, epochs=a.epochs, img_size=a.img_size, precision=a.precision,
                   test_acc=history[-1].get('test_acc'), train_loss=history[-1]['train_loss'])
    if not a.no_test:
        summary.update(best_test_acc=max(h['test_acc'] for h in history if 'test_acc' in h),
                       best_test_acc_is="the max over epochs on the test set: LoR-VP's protocol, which selects on test")
    if splits.val is not None:
        best = max(range(len(history)), key=lambda i: (history[i]['val_acc'], -i))  # first epoch of the best val acc
        summary.update(val_acc=history[best]['val_acc'], val_selected_epoch=best + 1,
                       final_val_acc=history[-1]['val_acc'])
        if 'test_acc' in history[best]:  # tested at that epoch (--test-every)
            summary['val_selected_test_acc'] = history[best]['test_acc']
    summary.update(trainable_params=trainable, backbone_params=model.backbone_params, train_time_s=train_time,
                   train_images_per_s=images_seen / max(train_time, 1e-9), processes=world()[1],
                   backend=dist.get_backend() if dist.is_initialized() else None,
                   peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9 if a.device.startswith('cuda') else None,
                   device=a.device if a.device == 'cpu' else torch.cuda.get_device_name(), torch=torch.__version__)
    summary.update({k: v for k, v in history[-1].items() if k in ('prompt_density', 'spike_rate')})
    summary['prompt_file'] = save_prompt(model, a, run.file('prompt.safetensors'), classes=splits.classes,
                                         test_acc=summary['test_acc'])
    if a.save_prompts:
        from tools.figures import lorsp_figures
        images = torch.stack([splits.test[i][0] for i in range(min(a.save_prompts, len(splits.test)))])
        summary['figures'] = lorsp_figures(model.prompt, images.to(a.device), run.path)
    run.write_json('summary.json', summary)
    print_summary(summary)
    return summary


def print_summary(s):
    rows = [('test acc, final epoch', f"{s['test_acc']:.2f}%" if s['test_acc'] is not None else '- (--no-test)'),
            ('best test acc over epochs', f"{s['best_test_acc']:.2f}%  (LoR-VP's protocol: selects on test)"
             if 'best_test_acc' in s else None),
            ('best val acc', f"{s['val_acc']:.2f}% (epoch {s['val_selected_epoch']})" if 'val_acc' in s else None),
            ('test acc at the best val epoch', f"{s['val_selected_test_acc']:.2f}%"
             if 'val_selected_test_acc' in s else None),
            ('trainable params', f"{s['trainable_params']:,} ({100 * s['trainable_params'] / s['backbone_params']:.3f}%"
                                 f" of the backbone's {s['backbone_params']:,})"),
            ('train time', f"{s['train_time_s']:.1f} s, {s['train_images_per_s']:.1f} images/s"),
            ('peak GPU memory', f"{s['peak_mem_gb']:.2f} GB" if s['peak_mem_gb'] is not None else '- (cpu)')]
    print(f"== {s['method']} on {s['model']}, {s['dataset']} (seed {s['seed']}, {s['epochs']} epochs, "
          f"{s['img_size']} px, {s['device']}, {s.get('precision', 'fp32')}) ==")
    print('\n'.join(f'{k:<34} {v}' for k, v in rows if v is not None))


if __name__ == '__main__':
    main()
