"""Speed against the floor: every method's training step and inference latency as a ratio to the bare frozen
backbone's, timed in one process, interleaved, so that both see the same machine load.

    python bench.py --model tf_efficientnet_lite0 --img-size 128 --methods all     # -> results/bench-<model>-<size>.md
    python bench.py --methods lorsp,lorvp --precision fp32 --compile --tag fp32-compiled
    python bench.py --serve lorvp,lotep_cp,lorsp,lotep_tk      # T tasks on one backbone in one batch, against T models
    python bench.py --methods lorsp,ft --profile               # where the time goes: torch.profiler's top ops

The floor of a prompt is what the frozen backbone costs anyway: its forward + backward to its input (training; an
input-space or deep prompt needs that backward), and its forward (inference). Each round times, for every method in
turn: the floor's step, the method's step (forward + backward, the method's own parameters), the floor's forward and
the method's forward (LoRA merged), all on one fixed batch, the floor and the method in
alternating order. Times are the fastest of the rounds (the least disturbed by other work); a ratio is the median over
the rounds of the method's time over its floor's in the same round, so that slow drifts of the machine cancel.
"""
import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import baselines
import train
from backbones import Adapted, create, normalizer
from flags import NONNEG_INT, POS_INT, parse
from methods import METHODS, BuildError, build


def floor_model(a, K):
    """The bare frozen backbone, with the run's weights (random ones can be slower on a CPU: denormal numbers), and a
    frozen head of K classes."""
    bare = create(a.model, pretrained=not a.no_pretrained, weights=a.weights, img_size=a.img_size, num_classes=0)
    floor = Adapted(backbone=bare, normalize=normalizer(bare), head=nn.Linear(bare.feature_dim, K))
    return floor.requires_grad_(False).to(a.device)


def inference_model(model):
    """What inference runs: LoRA merged into its base layers (a copy), the others as they are."""
    if not any(isinstance(m, baselines.LoRA) for m in model.modules()):
        return model
    return baselines.merge_lora(copy.deepcopy(model))


def jobs(a, model, floor, x, y):
    """The four timed jobs of one method: its step and forward, and the floor's."""
    def step(m, input_grad):
        m.train()
        xx = x.clone().requires_grad_(input_grad)
        with train.autocast(a):
            loss = F.cross_entropy(m(xx).float(), y)
        loss.backward()
        m.zero_grad(set_to_none=True)

    def forward(m):
        m.eval()
        with torch.no_grad(), train.autocast(a):
            m(x)
    infer = inference_model(model)
    return {'floor_step': lambda: step(floor, True), 'step': lambda: step(model, False),
            'floor_latency': lambda: forward(floor), 'latency': lambda: forward(infer)}


def interleaved(tasks: dict, reps: int, device: str) -> dict:
    """tasks: name -> {job name -> callable}. Runs reps + 1 rounds (the first warms up), every job of every task once
    per round, in turn (odd rounds in reverse order); returns name -> {job name -> [time in s per round]}."""
    times = {name: {job: [] for job in js} for name, js in tasks.items()}

    def sync():
        if device.startswith('cuda'):
            torch.cuda.synchronize()
    for rep in range(reps + 1):
        for name, js in tasks.items():
            for job, run in (list(js.items()) if rep % 2 else list(js.items())[::-1]):
                sync()
                t0 = time.perf_counter()
                run()
                sync()
                if rep:
                    times[name][job].append(time.perf_counter() - t0)
    return times


def figures(t, batch):
    """The fastest times, and the median of the per-round ratios to the floor."""
    ratio = lambda job: statistics.median(m / f for m, f in zip(t[job], t['floor_' + job]))
    return dict(step_ms=1e3 * min(t['step']), floor_step_ms=1e3 * min(t['floor_step']), step_ratio=ratio('step'),
                latency_ms=1e3 * min(t['latency']) / batch, floor_latency_ms=1e3 * min(t['floor_latency']) / batch,
                latency_ratio=ratio('latency'), speed_batch=batch)


def batch_of(a, K):
    g = torch.Generator().manual_seed(0)
    n = min(a.batch_size, 32)
    return (torch.rand(n, 3, a.img_size, a.img_size, generator=g).to(a.device),
            torch.randint(0, K, (n,), generator=g).to(a.device))


def speed(a, model, K, reps):
    """A run's speed figures (train.py's summary): its step and latency against the floor, batch min(batch, 32)."""
    x, y = batch_of(a, K)
    best = interleaved({'m': jobs(a, model, floor_model(a, K), x, y)}, reps, a.device)['m']
    return figures(best, len(x))


def profile(tasks, reps=5, top=6):
    """Where each method's step and forward spend more time than the floor's: torch.profiler's self time per op, the
    method's and its floor's, over reps calls each; the ops that add the most first."""
    from torch.profiler import ProfilerActivity

    def per_op(run):
        run()  # warm-up
        with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                run()
        return {e.key: e.self_cpu_time_total / reps / 1e3 for e in prof.key_averages()}  # op -> ms per call
    lines = []
    for name, js in tasks.items():
        for job in ('step', 'latency'):
            mine, floor = per_op(js[job]), per_op(js['floor_' + job])
            extra = sorted(mine, key=lambda k: floor.get(k, 0.0) - mine[k])
            lines.append(f'{name} {job}: {sum(mine.values()):.1f} ms of op self time per call, the floor '
                         f'{sum(floor.values()):.1f} ms; the ops that add most (method ms, floor ms):')
            lines += [f'   {k[:52]:<52} {mine[k]:8.2f} {floor.get(k, 0.0):8.2f}' for k in extra[:top]]
    return '\n'.join(lines) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='tf_efficientnet_lite0')
    p.add_argument('--img-size', type=POS_INT, default=128)
    p.add_argument('--batch-size', type=POS_INT, default=32)
    p.add_argument('--methods', default='all', help='comma list, or all')
    p.add_argument('--reps', type=NONNEG_INT, default=20, help='timed rounds (after one warm-up round)')
    p.add_argument('--precision', choices=['fp32', 'bf16'], help='default: as train.py (bf16 where fast)')
    p.add_argument('--compile', action='store_true', help='torch.compile the LoRSP prompts')
    p.add_argument('--device', default='auto')
    p.add_argument('--classes', type=POS_INT, default=10, help='K of the heads')
    p.add_argument('--tag', help='results/bench-<model>-<size>-<tag>.md')
    p.add_argument('--no-pretrained', action='store_true', help='random weights, for models without offline weights')
    p.add_argument('--serve', help='comma list of methods: serve.MultiTask of these tasks against one model per task')
    p.add_argument('--profile', action='store_true', help='instead of timing: the ops each method\'s step and forward '
                   'add to its floor\'s (torch.profiler) -> results/profile-<model>-<size>.txt')
    b = p.parse_args(argv)
    b.command = 'python bench.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    if b.serve:
        return serve_bench(b)
    names = list(METHODS) if b.methods == 'all' else b.methods.split(',')
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        p.error(f'unknown method(s) {unknown}; choose from {", ".join(METHODS)}')
    tasks, rows, args = {}, {}, None
    for name in names:
        flags = ['--method', name, '--model', b.model, '--img-size', str(b.img_size), '--batch-size',
                 str(b.batch_size), '--device', b.device, '--dataset', 'synthetic'] + \
            (['--precision', b.precision] if b.precision else []) + (['--no-pretrained'] if b.no_pretrained else []) + \
            (['--compile'] if b.compile and name.startswith('lorsp') else [])
        try:
            args = train.resolve(parse(flags))
            model = build(args)
        except (BuildError, train.UsageError) as e:
            rows[name] = dict(method=name, error=str(e))
            continue
        x, y = batch_of(args, b.classes)
        tasks[name] = jobs(args, model, floor_model(args, b.classes), x, y)
        rows[name] = dict(method=name, trainable=sum(q.numel() for q in model.parameters() if q.requires_grad))
        print(f'built {name}: {rows[name]["trainable"]:,} trainable', flush=True)
    if b.profile:
        path = os.path.join('results', f'profile-{b.model}-{b.img_size}' + (f'-{b.tag}' if b.tag else '') + '.txt')
        text = f'{b.command}\n\n' + profile(tasks)
        os.makedirs('results', exist_ok=True)
        with open(path, 'w') as f:
            f.write(text)
        print(text + f'-> {path}')
        return
    best = interleaved(tasks, b.reps, args.device)
    for name in tasks:
        rows[name].update(figures(best[name], b.batch_size if b.batch_size <= 32 else 32))
    write(b, args, [rows[n] for n in names])


def serve_bench(b):
    """T tasks (prompts made non-zero, written as prompt files) served mixed in one batch of 8 T images by one
    backbone, against T separate models each running its own 8 images: time per batch and the weights held."""
    import tempfile
    from serve import MultiTask, load_task, save_prompt
    methods, paths = b.serve.split(','), []
    with tempfile.TemporaryDirectory() as tmp:
        for t, method in enumerate(methods):
            a = train.resolve(parse(['--method', method, '--model', b.model, '--img-size', str(b.img_size),
                                     '--dataset', 'synthetic', '--device', b.device, '--precision', 'fp32'] +
                                    (['--no-pretrained'] if b.no_pretrained else [])))
            model = build(a)
            with torch.no_grad():
                for n, q in model.named_parameters():
                    if q.requires_grad and not n.startswith('head.'):
                        q.normal_(0, 0.02)
            paths.append(save_prompt(model, a, os.path.join(tmp, f'{t}.safetensors'), classes=range(10)))
        server = MultiTask(paths, device=a.device)
        alone = [load_task(p, device=a.device)[1] for p in paths]
    x = torch.rand(8 * len(methods), 3, b.img_size, b.img_size, device=a.device)
    task = torch.arange(len(methods), device=a.device).repeat(8)

    bare = floor_model(a, 10)

    @torch.no_grad()
    def separate(models):
        for t, model in enumerate(models):
            model(x[task == t])
    jobs = {'separate': lambda: separate(alone), 'mixed': lambda: server(x, task),
            'bare_split': lambda: separate([bare] * len(alone)), 'bare': lambda: torch.no_grad()(bare)(x)}
    t = interleaved({'serve': jobs}, b.reps, a.device)['serve']
    weights = lambda modules: sum(q.numel() * q.element_size() for m in modules for q in
                                  list(m.parameters()) + list(m.buffers())) / 2 ** 20
    rows = [dict(serving=f'{len(methods)} separate models, 8 images each', ms=1e3 * min(t['separate']),
                 mb=weights(alone)),
            dict(serving=f'one backbone, {len(methods)} tasks mixed in one batch', ms=1e3 * min(t['mixed']),
                 mb=weights([server])),
            dict(serving=f'floor: the bare backbone, {len(methods)} batches of 8', ms=1e3 * min(t['bare_split']),
                 mb=weights([bare])),
            dict(serving=f'floor: the bare backbone, one batch of {len(x)}', ms=1e3 * min(t['bare']),
                 mb=weights([bare]))]
    where = f'{platform.machine()} CPU ({os.cpu_count()} cores)' if a.device == 'cpu' else torch.cuda.get_device_name()
    lines = [f'# Serving {len(methods)} tasks ({", ".join(methods)}) on {b.model}, {b.img_size} px, a batch of '
             f'{len(x)} (8 per task), fp32', '', f'`{b.command}`; the fastest of '
             f'{b.reps} interleaved rounds; {where}, torch {torch.__version__}', '',
             '| serving | ms per batch | images/s | weights held MB |', '|---|---|---|---|']
    lines += [f'| {r["serving"]} | {r["ms"]:.1f} | {len(x) / r["ms"] * 1e3:.0f} | {r["mb"]:.1f} |' for r in rows]
    os.makedirs('results', exist_ok=True)
    with open(os.path.join('results', f'serve-{b.model}-{b.img_size}.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return rows


def write(b, a, rows):
    where = (f'{platform.machine()} CPU ({os.cpu_count()} cores)' if a.device == 'cpu'
             else torch.cuda.get_device_name())
    lines = [f'# Speed against the floor: {b.model}, {b.img_size} px, batch {min(b.batch_size, 32)}, {a.precision}'
             f'{", LoRSP compiled" if b.compile else ""}', '',
             f'`{b.command}`; {where}, torch {torch.__version__}; the fastest of '
             f'{b.reps} interleaved rounds. Step: forward + backward (floor: the bare frozen backbone\'s forward + '
             f'backward to its input). Latency: forward (floor: the bare backbone\'s).', '',
             '| method | trainable params | step ms | step ratio | latency ms/img | latency ratio |',
             '|---|---|---|---|---|---|']
    for r in rows:
        if 'error' in r:
            lines.append(f'| {r["method"]} | cannot attach: {r["error"]} | | | | |')
        else:
            lines.append(f'| {r["method"]} | {r["trainable"]:,} | {r["step_ms"]:.1f} | {r["step_ratio"]:.3f} | '
                         f'{r["latency_ms"]:.3f} | {r["latency_ratio"]:.3f} |')
    os.makedirs('results', exist_ok=True)
    name = os.path.join('results', f'bench-{b.model}-{b.img_size}' + (f'-{b.tag}' if b.tag else ''))
    with open(name + '.md', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(name + '.json', 'w') as f:
        json.dump(dict(model=b.model, img_size=b.img_size, precision=a.precision, compile=b.compile, reps=b.reps,
                       machine=where, torch=torch.__version__, rows=rows), f, indent=1, allow_nan=False)
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
