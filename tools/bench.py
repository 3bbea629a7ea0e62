"""Speed and memory against the floor: every method's training step and inference latency as a ratio to the bare
frozen backbone's, timed in one process, interleaved, so that both see the same machine load; and the memory of a
training step, counted.

    python tools/bench.py --methods lorsp,lorvp --reps 5       # -> runs/bench/bench-<model>-<size>.md (--out)
    python tools/bench.py --methods all --out results           # adds to the committed table in results/
    python tools/bench.py --methods lorsp --precision fp32 --compile --tag fp32-compiled
    python tools/bench.py --serve lorvp,lotep_cp,lorsp,lotep_tk  # T tasks on one backbone in one batch, against T models
    python tools/bench.py --methods lorsp,ft --profile          # where the time goes: torch.profiler's top ops
    costs = measure({'lotep_cp': train_argv, ...}, reps=10)    # compare.py's cost columns, one row per arm

The floor of a prompt is what the frozen backbone costs anyway: its forward + backward to its input (training; an
input-space or deep prompt needs that backward), and its forward (inference). Each round times, for every method in
turn: the floor's step, the method's step (forward + backward, the method's own parameters), the floor's forward and
the method's forward (LoRA merged), all on one fixed batch, the floor and the method in
alternating order. Times are the fastest of the rounds (the least disturbed by other work); a ratio is the median over
the rounds of the method's time over its floor's in the same round, so that slow drifts of the machine cancel.

Memory is counted, so it is the same on any device and under any load: one training step holds the model's weights,
the gradients of its trainable parameters, the optimizer's state, and the activations autograd saves for backward
(torch.autograd.graph.saved_tensors_hooks, each storage once, the weights themselves not again); the floor holds its
weights and the activations of its backward to the input. On CUDA the table also gives torch.cuda.max_memory_allocated
of each step. Tables merge rows into the table of the same settings, and refuse one of other settings (give --tag).
"""
import argparse
import copy
import itertools
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

if __name__ == '__main__':  # python tools/bench.py from the project root: the project's modules come from there
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import baselines
import data
from tools import tables
import methods
import train
from backbones import Adapted, create, normalizer
from flags import POS_INT, parse, resolve
from methods import METHODS, BuildError, autocast, build


def floor_model(a, K):
    """The bare frozen backbone, with the run's weights (random ones can be slower on a CPU: denormal numbers), and a
    frozen head of K classes."""
    bare = create(a.model, pretrained=not a.no_pretrained, weights=a.weights, img_size=a.img_size, num_classes=0)
    floor = Adapted(backbone=bare, normalize=normalizer(bare), head=nn.Linear(bare.feature_dim, K),
                    channels_last=a.channels_last)
    return floor.requires_grad_(False).to(a.device)


def inference_model(model):
    """What inference runs: LoRA merged into its base layers (a copy), the others as they are."""
    if not any(isinstance(m, baselines.LoRA) for m in model.modules()):
        return model
    return baselines.merge_lora(copy.deepcopy(model))


def train_step(a, model, x, y, *, input_grad=False, opt=None):
    """One training step on a fixed batch: forward and backward (to the input too, for the floor), and the optimizer's
    step when one is given."""
    model.train()
    xx = x.clone().requires_grad_(input_grad)
    with autocast(a):
        loss = F.cross_entropy(model(xx).float(), y)
    loss.backward()
    if opt is not None:
        opt.step()
    model.zero_grad(set_to_none=True)


def jobs(a, model, floor, x, y):
    """The four timed jobs of one method: its step and forward, and the floor's."""
    def forward(m):
        m.eval()
        with torch.no_grad(), autocast(a):
            m(x)
    infer = inference_model(model)
    return {'floor_step': lambda: train_step(a, floor, x, y, input_grad=True),
            'step': lambda: train_step(a, model, x, y),
            'floor_latency': lambda: forward(floor), 'latency': lambda: forward(infer)}


# ---- memory: counted, the same on any device ----

def nbytes(tensors):
    """Bytes of distinct storages (a view shares its base's)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def saved_bytes(model, fn):
    """The bytes autograd saves for backward while fn() runs, each storage counted once; the model's own parameters
    and buffers, held anyway, are not counted again."""
    held = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in held:
            saved[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def memory(a, model, floor, x, y):
    """One training step's memory, counted, for the method (with its optimizer's step) and for its floor; MB and the
    ratio. On CUDA also the peak the allocator saw in each step."""
    opt = methods.optimizer(a, model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    saved = saved_bytes(model, lambda: train_step(a, model, x, y, opt=opt))
    parts = dict(weights=nbytes(itertools.chain(model.parameters(), model.buffers())), gradients=nbytes(trainable),
                 optimizer=nbytes(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)),
                 saved=saved)
    floor_parts = dict(weights=nbytes(itertools.chain(floor.parameters(), floor.buffers())),
                       saved=saved_bytes(floor, lambda: train_step(a, floor, x, y, input_grad=True)))
    mb = 2 ** 20
    row = dict(memory_mb=sum(parts.values()) / mb, floor_memory_mb=sum(floor_parts.values()) / mb,
               memory_ratio=sum(parts.values()) / sum(floor_parts.values()),
               memory_parts_mb={k: v / mb for k, v in parts.items()},
               floor_memory_parts_mb={k: v / mb for k, v in floor_parts.items()})
    if a.device.startswith('cuda'):
        for key, step in (('cuda_peak_mb', lambda: train_step(a, model, x, y, opt=opt)),
                          ('floor_cuda_peak_mb', lambda: train_step(a, floor, x, y, input_grad=True))):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            row[key] = torch.cuda.max_memory_allocated() / mb
    return row


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
        print(f'round {rep} of {reps} timed' if rep else 'warm-up round done', flush=True)  # progress of a long bench
    return times


def figures(t, batch):
    """The fastest times, and the median of the per-round ratios to the floor."""
    ratio = lambda job: statistics.median(m / f for m, f in zip(t[job], t['floor_' + job]))
    return dict(step_ms=1e3 * min(t['step']), floor_step_ms=1e3 * min(t['floor_step']), step_ratio=ratio('step'),
                latency_ms=1e3 * min(t['latency']) / batch, floor_latency_ms=1e3 * min(t['floor_latency']) / batch,
                latency_ratio=ratio('latency'), speed_batch=batch)


def bench_batch(a):
    """The timed batch's size: the run's batch on a GPU; on a CPU at most 32 (larger ones overflow its caches and time
    the memory system rather than the method)."""
    return a.batch_size if a.device.startswith('cuda') else min(a.batch_size, 32)


def batch_of(a, K):
    g = torch.Generator().manual_seed(0)  # drawn on the CPU, then moved: the same batch on any device
    n = bench_batch(a)
    return (torch.rand(n, 3, a.img_size, a.img_size, generator=g).to(a.device),
            torch.randint(0, K, (n,), generator=g).to(a.device))


def build_tasks(argvs: dict, classes=None):
    """name -> train.py flags: each method's model and its floor, its counted memory, its timed jobs. A method that
    cannot be built gets a row that says why."""
    tasks, rows, args = {}, {}, None
    for name, argv in argvs.items():
        try:
            args = resolve(parse(argv))
            model = build(args)
        except (BuildError, train.UsageError) as e:
            rows[name] = dict(method=name, error=str(e))
            continue
        K = classes or data.num_classes(args.dataset, args.data_dir)
        x, y = batch_of(args, K)
        floor = floor_model(args, K)
        rows[name] = dict(method=name, trainable=sum(q.numel() for q in model.parameters() if q.requires_grad),
                          **memory(args, model, floor, x, y))
        tasks[name] = jobs(args, model, floor, x, y)
        print(f'built {name}: {rows[name]["trainable"]:,} trainable, a step holds {rows[name]["memory_mb"]:.1f} MB '
              f'(x{rows[name]["memory_ratio"]:.3f} the floor)', flush=True)
    return tasks, rows, args


def measure(argvs: dict, reps: int) -> dict:
    """compare.py's cost columns: name -> train.py flags of an arm -> its row (memory, step and latency ratios)."""
    tasks, rows, args = build_tasks(argvs)
    if tasks:
        times = interleaved(tasks, reps, args.device)
        for name in tasks:
            rows[name].update(figures(times[name], bench_batch(args)))
    return rows


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
    p.add_argument('--reps', type=POS_INT, default=20, help='timed rounds (after one warm-up round)')
    p.add_argument('--precision', choices=['fp32', 'bf16'], help='default: as train.py (bf16 on CUDA, fp32 on a CPU)')
    p.add_argument('--compile', action='store_true', help='torch.compile the LoRSP prompts')
    p.add_argument('--channels-last', action='store_true', help='the backbones in channels-last memory order')
    p.add_argument('--grad-checkpointing', action='store_true', help='the methods\' backbones recompute their blocks\' '
                   'activations in backward (the floor stays the bare backbone without it)')
    p.add_argument('--device', default='auto')
    p.add_argument('--classes', type=POS_INT, default=10, help='K of the heads')
    p.add_argument('--tag', help='<out>/bench-<model>-<size>-<tag>.md')
    p.add_argument('--out', default=os.path.join('runs', 'bench'), help='where the tables go (default %(default)s); '
                   '--out results adds to the committed tables in results/')
    p.add_argument('--no-pretrained', action='store_true', help='random weights, for models without offline weights')
    p.add_argument('--serve', help='comma list of methods: serve.MultiTask of these tasks against one model per task')
    p.add_argument('--profile', action='store_true', help='instead of timing: the ops each method\'s step and forward '
                   'add to its floor\'s (torch.profiler) -> results/profile-<model>-<size>.txt')
    b = p.parse_args(argv)
    b.command = 'python tools/bench.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    try:
        tables.check_tag(b.tag)
    except tables.ResultsError as e:
        p.error(str(e))
    if b.serve:
        return serve_bench(b, p)
    names = list(METHODS) if b.methods == 'all' else [m for m in b.methods.split(',') if m]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        p.error(f'unknown method(s) {unknown}; choose from {", ".join(METHODS)}' if unknown else
                '--methods is empty; give a comma list of methods, or all')
    name = table_name(b, f'bench-{b.model}-{b.img_size}' + (f'-{b.tag}' if b.tag else ''))
    argvs = {m: method_argv(b, m) for m in names}
    try:
        a = resolve(parse(argvs[names[0]]))
    except (train.UsageError,) + train.SETUP_ERRORS as e:
        p.error(str(e))
    settings = dict(model=b.model, img_size=b.img_size, batch=bench_batch(a), precision=a.precision,
                    compile=b.compile, channels_last=b.channels_last, classes=b.classes, reps=b.reps,
                    **({'grad_checkpointing': True} if b.grad_checkpointing else {}),
                    pretrained=not b.no_pretrained, machine=machine(a.device))
    if b.profile:
        return write_profile(b, settings, build_tasks(argvs, b.classes)[0])
    try:
        with tables.locked(name):  # refused before minutes of timing, not after
            tables.check_settings(name, tables.read(name), settings)
    except tables.ResultsError as e:
        raise SystemExit(f'error: {e}') from None
    tasks, rows, _ = build_tasks(argvs, b.classes)
    times = interleaved(tasks, b.reps, a.device)
    for m in tasks:
        rows[m].update(figures(times[m], bench_batch(a)))
    ordered, md = write_table(b, name, settings, rows)
    print(md + f'\nwrote {tables.path(name, "md")} and its .json')
    return ordered


def method_argv(b, m):
    """train.py's flags for method m at the bench's settings."""
    return (['--method', m, '--model', b.model, '--img-size', str(b.img_size), '--batch-size', str(b.batch_size),
             '--device', b.device, '--dataset', 'synthetic'] + (['--precision', b.precision] if b.precision else [])
            + (['--no-pretrained'] if b.no_pretrained else []) + (['--channels-last'] if b.channels_last else [])
            + (['--grad-checkpointing'] if b.grad_checkpointing else [])
            + (['--compile'] if b.compile and m.startswith('lorsp') else []))


def write_table(b, name, settings, rows):
    """Merged with what is on disk now, under the table's lock: rows of other methods stay."""
    with tables.locked(name):
        previous = tables.read(name)
        tables.check_settings(name, previous, settings)
        merged = {r['method']: r for r in (previous or {}).get('rows', [])}
        merged.update(rows)
        ordered = [merged[m] for m in METHODS if m in merged]
        commands = list(dict.fromkeys((previous or {}).get('commands', []) + [b.command]))
        md = bench_table(b, settings, ordered, commands)
        tables.write(name, dict(settings=settings, commands=commands, torch=torch.__version__, rows=ordered), md)
    return ordered, md


def table_name(b, name):
    """A table's name for tools.tables: in results/ with --out results (the committed tables), else under --out."""
    out = os.path.abspath(b.out)
    return name if out == os.path.abspath(tables.DIR) else os.path.join(out, name)


def machine(device):
    return f'{platform.machine()} CPU ({os.cpu_count()} cores)' if not device.startswith('cuda') \
        else torch.cuda.get_device_name()


def bench_table(b, settings, rows, commands):
    s = settings
    cuda = any('cuda_peak_mb' in r for r in rows)
    lines = [f'# Speed and memory against the floor: {s["model"]}, {s["img_size"]} px, batch {s["batch"]}, '
             f'{s["precision"]}{", LoRSP compiled" if s["compile"] else ""}'
             f'{", channels-last" if s["channels_last"] else ""}'
             f'{", gradient checkpointing" if s.get("grad_checkpointing") else ""}', '',
             f'{"; ".join(f"`{c}`" for c in commands)}; {s["machine"]}, torch {torch.__version__}; the fastest of '
             f'{s["reps"]} interleaved rounds. Step: forward + backward (floor: the bare frozen backbone\'s forward + '
             f'backward to its input). Latency: forward (floor: the bare backbone\'s). Memory: one training step, '
             f'counted (weights, gradients, optimizer state, activations saved for backward; floor: weights and the '
             f'activations of its backward to the input).', '',
             '| method | trainable params | step ms | step ratio | latency ms/img | latency ratio | memory MB | '
             'memory ratio |' + (' CUDA peak MB | floor CUDA peak MB |' if cuda else ''),
             '|---|---|---|---|---|---|---|---|' + ('---|---|' if cuda else '')]
    for r in rows:
        if 'error' in r:
            lines.append(f'| {r["method"]} | cannot attach: {r["error"]} | | | | | | |' + (' | |' if cuda else ''))
            continue
        lines.append(f'| {r["method"]} | {r["trainable"]:,} | {r["step_ms"]:.1f} | {r["step_ratio"]:.3f} | '
                     f'{r["latency_ms"]:.3f} | {r["latency_ratio"]:.3f} | {r["memory_mb"]:.1f} | '
                     f'{r["memory_ratio"]:.3f} |' +
                     (f' {r.get("cuda_peak_mb", 0):.0f} | {r.get("floor_cuda_peak_mb", 0):.0f} |' if cuda else ''))
    return '\n'.join(lines) + '\n'


def write_profile(b, settings, tasks):
    """results/profile-<model>-<size>[-tag].txt; a file made by another command is not replaced (give --tag)."""
    path = tables.path(table_name(b, f'profile-{b.model}-{b.img_size}' + (f'-{b.tag}' if b.tag else '')), 'txt')
    if os.path.exists(path):
        with open(path) as f:
            made_by = f.readline().strip()
        if made_by != b.command:
            raise SystemExit(f'error: {path} was made by another command ({made_by}); give this one its own --tag')
    text = f'{b.command}\n\n' + profile(tasks)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    print(text + f'-> {path}')


def serving_tasks(b, methods):
    """Each method's model with non-zero prompts, written as a prompt file; served together (MultiTask) and alone."""
    import tempfile
    from runs import save_prompt
    from tools.serve import MultiTask, load_task
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        for t, method in enumerate(methods):
            a = resolve(parse(['--method', method, '--model', b.model, '--img-size', str(b.img_size),
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
    return a, server, alone


def serve_bench(b, p):
    """T tasks (prompts made non-zero, written as prompt files) served mixed in one batch of 8 T images by one
    backbone, against T separate models each running its own 8 images: time per batch and the weights held."""
    methods = [m for m in b.serve.split(',') if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        p.error(f'--serve: unknown method(s) {unknown}' if unknown else
                '--serve is empty; give a comma list of methods')
    name = table_name(b, f'serve-{b.model}-{b.img_size}' + (f'-{b.tag}' if b.tag else ''))
    settings = dict(tasks=methods, model=b.model, img_size=b.img_size, reps=b.reps, pretrained=not b.no_pretrained,
                    machine=machine('cuda' if b.device != 'cpu' and torch.cuda.is_available() else 'cpu'))
    try:
        with tables.locked(name):
            tables.check_settings(name, tables.read(name), settings)
    except tables.ResultsError as e:
        raise SystemExit(f'error: {e}') from None
    a, server, alone = serving_tasks(b, methods)
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
    where = machine(a.device)
    lines = [f'# Serving {len(methods)} tasks ({", ".join(methods)}) on {b.model}, {b.img_size} px, a batch of '
             f'{len(x)} (8 per task), fp32', '', f'`{b.command}`; the fastest of '
             f'{b.reps} interleaved rounds; {where}, torch {torch.__version__}', '',
             '| serving | ms per batch | images/s | weights held MB |', '|---|---|---|---|']
    lines += [f'| {r["serving"]} | {r["ms"]:.1f} | {len(x) / r["ms"] * 1e3:.0f} | {r["mb"]:.1f} |' for r in rows]
    with tables.locked(name):  # the same settings: a new measurement of the same table replaces it
        tables.check_settings(name, tables.read(name), settings)
        tables.write(name, dict(settings=settings, command=b.command, torch=torch.__version__, rows=rows),
                      '\n'.join(lines) + '\n')
    print('\n'.join(lines) + f'\nwrote {tables.path(name, "md")} and its .json')
    return rows


if __name__ == '__main__':
    main()
