"""Train one method on a frozen timm backbone: the single entry point of this codebase (one GPU or the CPU; several
processes under torchrun).

    python train.py --method lotep_cp --model tf_efficientnet_lite0 --dataset cifar10-sample --img-size 96 --epochs 1
    python train.py --method lotep_cp --model resnet18 --dataset cifar100          # the papers' protocol, GPU
    torchrun --nproc_per_node 2 train.py --method lorvp ...                        # data-parallel, same result

Arguments -> resolve -> set-up (run directory, model, data) -> the loop -> summary. The run directory (--out, default
runs/<method>-<model>-<dataset>-s<seed>-<settings hash>) gets config.json, metrics.jsonl (a line per epoch),
checkpoint.pt (after every epoch), summary.json and prompt.safetensors; --resume continues a killed run and ends where
the uninterrupted run would. A method takes part in the loop only through methods.py (its optimizer, what trains, its
hooks: methods.Loop); this file names none.
"""
import math
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

import backbones
import data
import distributed
from distributed import GlobalBatches, gather_objects, reduce_numbers, reduce_tensor, share, world
from flags import UsageError, default_out, not_used, parse, resolve, resumed_args, same_run
from methods import BuildError, Loop, StateError, autocast, build, load_state, optimizer, trainable_state, what_trains
from runs import Progress, RunDir, RunDirError, finish, print_start, print_summary

# ---- the learning rate and the batches ----


def lr_factor(a, step, total, steps_per_epoch):
    """The lr schedule: what the base lr of each parameter group is multiplied by at this step."""
    t, epoch = step / total, step // steps_per_epoch
    if a.schedule_lr == 'cosine':  # per step, to 0, no warmup (LoR-VP)
        return 0.5 * (1 + math.cos(math.pi * t))
    if a.schedule_lr == 'cosine_epoch':  # per epoch (EVP)
        return 0.5 * (1 + math.cos(math.pi * epoch / a.epochs))
    if a.schedule_lr == 'multistep':  # x0.1 at 50% and 72% of the epochs (ILM-VP, AutoVP)
        return 1.0 if epoch < 0.5 * a.epochs else 0.1 if epoch < 0.72 * a.epochs else 0.01
    if a.schedule_lr == 'warmup_cosine':  # linear warmup to 1 (never past it, however short), then cosine (VPT)
        warmup = a.warmup_epochs * steps_per_epoch
        if step < warmup:
            return min(1.0, (step + 1) / warmup)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
    return 1.0


def set_lr(opt, factor):
    for group in opt.param_groups:
        group['lr'] = group['base_lr'] * factor


def loader(ds, a, *, seed=None):
    """Training batches (seeded, this process's share of each global batch), or evaluation batches in order."""
    cuda = a.device.startswith('cuda')
    if seed is not None:  # the generator seeds workers; the sampler draws the order from its own
        return DataLoader(ds, batch_sampler=GlobalBatches(len(ds), a.batch_size, seed), num_workers=a.workers,
                          pin_memory=cuda, generator=torch.Generator().manual_seed(seed))
    return DataLoader(ds, batch_size=a.batch_size, num_workers=a.workers, pin_memory=cuda)


# ---- evaluation ----

@torch.no_grad()
def evaluate(net, ds, a, label='evaluating'):
    """(accuracy %, mean loss) on a data set; under torchrun each process evaluates its share and every image counts
    once. The sums stay on the device until the end (no wait for the GPU per batch)."""
    net.eval()
    sums, n = torch.zeros(2, dtype=torch.float64, device=a.device), 0  # correct, summed loss; images
    batches = loader(share(ds), a)
    progress = Progress(len(batches), label, show=world()[0] == 0)
    for i, (x, y) in enumerate(batches):
        x, y = x.to(a.device, non_blocking=True), y.to(a.device, non_blocking=True)
        with autocast(a):
            logits = net(x).float()
        sums += torch.stack([(logits.argmax(1) == y).sum(), F.cross_entropy(logits, y, reduction='sum')])
        n += len(y)
        progress.update(i + 1, n)  # counts batches and images only: nothing is read from the device
    correct, loss, n = reduce_tensor(torch.cat([sums, sums.new_tensor([n])])).tolist()
    return 100.0 * correct / n, loss / n


# ---- the explode rule, and what the loop watches ----

class Diverged(Exception):
    """The loss became NaN or infinite, or exploded: the run stops, its last good checkpoint kept."""


READ_EVERY = 10  # steps between reads of the epoch's running loss from the device (each read waits for the GPU)
EXPLODED = 10  # a mean loss above EXPLODED x max(ln K, the first step's loss) stops the run as diverged


def check_loss(loss, K, first_loss, epoch, where):
    """Stops a run whose training loss over some steps, or whose loss on evaluation images (after the epoch's last
    update), is not finite or exceeds 10 x the larger of ln K (chance level) and the loss of the run's first step:
    with K = 10, a model that gives the true class e^-23 of probability on average, which no run that learns comes
    near; a backbone whose initial loss is far above chance (random weights) is held to its own start."""
    line = EXPLODED * max(math.log(K), first_loss)
    if not math.isfinite(loss):
        problem = f'the loss became {loss} at epoch {epoch + 1}, {where}'
    elif loss > line:
        problem = (f'the loss exploded to {loss:.4g} at epoch {epoch + 1}, {where} (above {EXPLODED} x max(ln K, the '
                   f'first step\'s loss) = {line:.3g}; chance level is ln K = {math.log(K):.3g})')
    else:
        return
    kept = f'its last checkpoint (epoch {epoch}) is kept' if epoch else \
        'no epoch had finished, so no checkpoint was written'
    raise Diverged(f'{problem}; the run stopped and {kept}. Try a lower --lr (or --lr-scale), or --precision fp32')


class Watch:
    """An epoch's running loss and accuracy, summed on the device at every step and read from it (a wait for the GPU)
    every READ_EVERY steps for the explode rule, and in one process when the progress line is due."""

    def __init__(self, a, dl, epoch, K, first_loss):
        self.sampler, self.epoch, self.K, self.first_loss = dl.batch_sampler, epoch, K, first_loss
        self.progress = Progress(len(dl), f'epoch {epoch + 1}/{a.epochs}', show=world()[0] == 0)
        self.sums = torch.zeros(2, dtype=torch.float64, device=a.device)  # summed loss, correct predictions
        self.seen, self.read, self.checked = 0, [0.0, 0.0], dict(loss=0.0, seen=0, step=0)  # the last read and check

    def step(self, i, loss_sum, correct):
        real = float(self.sampler.scale(i) > 0)  # 0: this process held a stand-in image (torchrun, a small batch)
        self.sums += torch.stack([loss_sum.double(), correct.sum().double()]) * real
        self.seen += self.sampler.images(i)
        if self.first_loss is None:  # the run's first step, before any update: the explode rule's reference
            self.first_loss = reduce_tensor(loss_sum.double() * real).item() / self.sampler.images(i)
        check = (i + 1) % READ_EVERY == 0 or i + 1 == len(self.sampler)  # every process reads at the same steps
        if check or (world()[1] == 1 and self.progress.due(i + 1)):
            self.read = reduce_tensor(self.sums.clone()).tolist()  # summed loss, correct predictions, all processes
            if check:  # the mean loss of the steps since the last check
                check_loss((self.read[0] - self.checked['loss']) / (self.seen - self.checked['seen']), self.K,
                           self.first_loss, self.epoch, f'steps {self.checked["step"] + 1}-{i + 1}')
                self.checked = dict(loss=self.read[0], seen=self.seen, step=i + 1)
            self.progress.update(i + 1, self.seen, self.read[0] / self.seen, 100.0 * self.read[1] / self.seen)


# ---- the loop ----

def train_epoch(a, net, opt, dl, epoch, loop, watch):
    """One epoch's steps of net, what trains (in DDP under torchrun); returns (summed loss, correct predictions,
    images) over the global batches."""
    steps = len(dl)
    for i, (x, y) in enumerate(dl):
        set_lr(opt, lr_factor(a, epoch * steps + i, a.epochs * steps, steps))  # the lr schedule, per step
        x, y = x.to(a.device, non_blocking=True), y.to(a.device, non_blocking=True)
        with autocast(a):
            logits = net(x)  # forward: input prompt, frozen backbone (deep prompts added at its blocks), head
        loss_sum = F.cross_entropy(logits.float(), y, reduction='sum')  # loss: summed over this batch
        opt.zero_grad(set_to_none=True)
        # backward of the batch's mean loss: loss_sum / n for a batch of n images in one process (under torchrun each
        # process holds a share of the n, and DDP averages the processes' gradients: GlobalBatches.scale)
        (loss_sum * dl.batch_sampler.scale(i)).backward()
        loop.after_backward()  # methods' hooks, if any (EVP: its canvas gradient over the global batch)
        opt.step()  # update
        watch.step(i, loss_sum.detach(), logits.argmax(1) == y)
    return watch.read[0], watch.read[1], watch.seen


def train(a, model, splits, run, ckpt=None):
    """The epochs (from a checkpoint's, if given); returns the metrics of every epoch, training time, images seen.
    The frozen backbone stays in eval mode all along (its BatchNorm statistics and dropout as pretrained): net.train()
    puts the prompt and the head in train mode, never the backbone (backbones.Adapted.train), unless ft trains it."""
    opt = optimizer(a, model)
    history, train_time, images_seen, first_loss = [], 0.0, 0, None
    if ckpt is not None:  # set-up loaded its model state
        opt.load_state_dict(ckpt['optimizer'])
        history, train_time, images_seen = ckpt['history'], ckpt['train_time_s'], ckpt['images_seen']
        first_loss = ckpt.get('first_loss')
        print(f'resuming {run.path} after epoch {len(history)}/{a.epochs}')
    t0 = time.time()
    net, splits = what_trains(a, model, splits)  # lp: the head, on features computed once (counted as training)
    train_time += time.time() - t0
    loop = Loop(model, features=model.features, batches=lambda: loader(share(splits.train), a))
    ddp = distributed.data_parallel(net, a.device)  # net, or net in DDP under torchrun (it averages the gradients)
    for epoch in range(len(history), a.epochs):
        torch.manual_seed(a.seed * 100_003 + epoch)  # dropout masks etc.: the same with and without a resume
        t0 = time.time()
        model.eval()  # the epoch_start hooks see the model as evaluation does (label mappings count its predictions)
        loop.epoch_start(epoch)
        net.train()
        dl = loader(splits.train, a, seed=a.seed * 100_003 + epoch)
        watch = Watch(a, dl, epoch, splits.num_classes, first_loss)
        loss, correct, seen = train_epoch(a, ddp, opt, dl, epoch, loop, watch)
        first_loss = watch.first_loss
        train_time, images_seen = train_time + time.time() - t0, images_seen + seen
        row = dict(epoch=epoch, train_loss=loss / seen, train_acc=100.0 * correct / seen,
                   lr=opt.param_groups[-1]['lr'], epoch_time_s=time.time() - t0)
        evaluations = [('val', splits.val)] if splits.val is not None else []
        if not a.no_test and ((epoch + 1) % a.test_every == 0 or epoch + 1 == a.epochs):  # tuning runs never do
            evaluations.append(('test', splits.test))
        for name, ds in evaluations:  # the last update may have blown the model up: its evaluation says so
            row[f'{name}_acc'], eval_loss = evaluate(net, ds, a, f'{name} images')
            check_loss(eval_loss, splits.num_classes, first_loss, epoch, f'on the {name} images after its last update')
            stats = loop.pop_stats()
            row.update(stats if name == 'test' else {})  # method diagnostics on the test set
        history.append(row)
        if world()[0] == 0:  # metrics.jsonl's row, its epoch counted from 1, its lr (the head's) named for its step
            shown = {'last lr' if k == 'lr' else k: v for k, v in row.items() if k != 'epoch'}
            print(f'epoch {epoch + 1}/{a.epochs}: ' + ' '.join(
                f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in shown.items()))
            run.save_checkpoint(dict(model=trainable_state(model), optimizer=opt.state_dict(), history=history,
                                     train_time_s=train_time, images_seen=images_seen, first_loss=first_loss))
            run.write_metrics(history)
    return history, train_time, images_seen


# ---- set-up: the data, the run directory, the model; every mistake of the user ends here in one message ----

def read_data(a, processes=None):
    """The run's data (data.load: every image it uses checked); where the backbone's weights cannot be downloaded here
    either, one message naming every missing thing and the way to run offline."""
    missing = [backbones.download_problem(a.model, pretrained=not a.no_pretrained, weights=a.weights)]
    try:
        if missing[0]:  # is the data there? listed, not checked: the run stops anyway
            data.sources(a.dataset, a.data_dir, a.splits)
        else:
            return data.load(a.dataset, data_dir=a.data_dir, img_size=a.img_size, seed=a.seed, splits=a.splits,
                             train_per_class=a.train_per_class, test_limit=a.test_limit, val_split=a.val_split,
                             processes=processes)
    except data.DataError as e:
        if not missing[0] and (backbones.online() or not isinstance(e, data.NeedsNetwork)):
            raise  # its own message: a damaged image, a wrong folder, a bad option
        missing.append(str(e).rstrip('.'))
    raise UsageError(f'this run needs what this machine cannot get: {"; and ".join(m for m in missing if m)}. '
                     f'Without network, train on the sample with Lite0\'s ImageNet weights (both come with the '
                     f'repository and requirements.txt): python train.py --method {a.method} --model '
                     f'tf_efficientnet_lite0 --dataset cifar10-sample --img-size 96; or give --weights PATH (or '
                     f'--no-pretrained: random weights) and a --data-dir that holds the data set')


def setup(a, argv, processes):
    """Resolved arguments, the run directory (claimed), the model, the data and the checkpoint to resume from (None:
    from the start; model None: the run has finished); or a UsageError-like exception. The data comes first: a run's
    identity holds its fingerprint (flags.default_out), so runs on other data never share a folder or a result."""
    first = None  # the data, where --resume without --out read it to find its folder
    if a.resume:  # the saved flags; without --out, those of the folder the same command on the same data made
        given = resolve(parse(argv)) if a.out is None else None
        first = read_data(given, processes) if given else None
        a = resumed_args(a, argv, RunDir(a.out or default_out(given, first.fingerprint)))
    a = resolve(a)  # a folder found by its identity holds these settings: its data is that read, unless saved elsewhere
    splits = first if first and given.data_dir == a.data_dir else read_data(a, processes)
    a.out = a.out or default_out(a, splits.fingerprint)
    run, ckpt = RunDir(a.out), None
    config = run.read_json('config.json') if run.exists('config.json') else None
    if config is not None and config.get('data') not in (None, splits.fingerprint) and \
            (a.resume or run.exists('summary.json')):
        raise UsageError(f'{a.out} {"holds a run" if a.resume else "holds a finished run"} made on other data than '
                         f'{a.data_dir} holds now for {a.dataset} (other images, labels or classes); '
                         f'{"resume it with the data it started on" if a.resume else "choose another --out"}, or leave '
                         f'--out out: a run on this data gets its own folder')
    if run.exists('summary.json') and (a.resume or same_run(a, config)):
        return a, run, None, splits, None  # the same command again: its finished run is reported
    if processes['rank'] == 0:
        run.claim(resume=a.resume)
    try:
        if a.resume and run.exists('checkpoint.pt'):
            ckpt = run.load_checkpoint(a.device)
        elif a.resume and run.read_metrics():
            raise RunDirError(f'{run.file("metrics.jsonl")} records epochs but {run.file("checkpoint.pt")} is '
                              f'missing: the run cannot continue from it')
        if a.no_test and splits.val is None:
            raise UsageError('--no-test needs validation images (--val-split, a folder\'s val/, or --splits tune): '
                             'a run that never sees the test images is evaluated on them')
        model = build(a)
        if ckpt is not None:
            load_state(model, ckpt['model'], source=run.file('checkpoint.pt'))
        if processes['rank'] == 0 and not a.resume:  # written once set-up has succeeded: a failed one changes nothing
            run.write_json('config.json', dict(args=vars(a), command='python train.py ' + ' '.join(argv),
                                               data=splits.fingerprint, classes=splits.classes,
                                               torch=torch.__version__, timm=__import__('timm').__version__))
    except BaseException:
        run.abandon() if not a.resume else run.release()
        raise
    return a, run, model, splits, ckpt


SETUP_ERRORS = (UsageError, BuildError, data.DataError, backbones.BackboneError, RunDirError, StateError)


def report_finished(a, argv, run):
    """The same command again (or --resume of a finished run): its summary, and a line for any flag given that would
    have changed how it ran but changes nothing it computed."""
    run.release()
    config = run.read_json('config.json')
    print(f'{a.out} has already finished (the same settings on the same data); its summary:')
    if not_used(a, argv, config):  # flags that change how a run runs, not what it computes
        print(f'note: {", ".join(not_used(a, argv, config))}: how a run runs, not what it computes; the finished run '
              f'is reported as it was made')
    if config.get('data') is None:
        print(f'note: {a.out} was made before runs recorded their data: which images it ran on cannot be checked')
    summary = run.read_json('summary.json')
    print_summary(summary, run)
    return summary


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse(argv)
    device = a.device = distributed.init(a.device)  # torchrun: one process per GPU, or gloo on the CPU
    rank, size = world()
    try:
        a, run, model, splits, ckpt = setup(a, argv, dict(rank=rank, size=size, gather=gather_objects))
        error = None
    except SETUP_ERRORS as e:
        error = e
    # every process stops if one could not set up (under torchrun on GPUs, a tensor on this process's GPU)
    if reduce_numbers(error is not None, device=device if size > 1 and device.startswith('cuda') else 'cpu')[0]:
        print(f'error: {error}' if error else 'error: another process could not set up (see its message)',
              file=sys.stderr)
        raise SystemExit(2)
    if model is None:
        return report_finished(a, argv, run)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if rank == 0:
        print_start(a, model, splits, trainable, size)
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


if __name__ == '__main__':
    main()
