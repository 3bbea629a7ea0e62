"""A trained run used again: its model rebuilt from a prompt file or a run folder, and many tasks served from one
frozen backbone in one batch.

    a, model, meta = load_task('prompt.safetensors')        # the run's model, rebuilt from the file alone
    a, model = load_run('runs/x')                           # or from its run folder (config.json, checkpoint.pt)
    server = MultiTask(['cifar.safetensors', 'pets.safetensors'])                # one backbone, T tasks
    logits = server(x, task)  # x: (B, 3, S, S) in [0, 1], task: (B,) ints -> a list of B logit vectors

A prompt file (runs.save_prompt writes one for every run) holds what is not the frozen backbone and, in its header, the
run's arguments, its class names, the backbone's normalization, the run's test accuracy, and a fingerprint of the
backbone's weights (backbones.fingerprint), checked when the file is used.

Serving many tasks: input-space prompts (LoR-VP, LoRSP, border prompts) act on their own images, deep prompts
(LoTeP, grouped VP) are added per image at each block (the prompt of the image's task), and every image goes to its
task's head, on pooled features or on the source logits (label mappings). ft and lora change the backbone's weights and
vpt_deep its token sequence: they cannot share a backbone with other tasks and are refused (serve them alone).
"""
import json
import os

import torch
import torch.nn as nn

import lotep
from backbones import create, normalizer
from flags import resolve, saved_args
from methods import StateError, build, load_state
from runs import FORMAT, RunDir, RunDirError

HEADER = ('method', 'model', 'weights', 'img_size', 'classes', 'mean', 'std', 'dataset', 'weights_sha256', 'args')
SHARE_NOTHING = {'ft': 'fine-tunes the backbone', 'lora': 'adapts the backbone\'s weights',
                 'vpt_deep': 'inserts tokens into the backbone\'s sequence'}


class PromptFileError(Exception):
    """A prompt file that cannot be used as asked; the message names the file."""


def read_prompt(path):
    """(trainable state, metadata) of a prompt file, or a PromptFileError naming what is wrong with it."""
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise PromptFileError(f'--prompt {path}: no such file')
    try:
        with safe_open(path, framework='pt') as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        meta = {k: json.loads(v) for k, v in header.items()}
    except Exception as e:
        raise PromptFileError(f'--prompt {path}: not a readable safetensors file ({type(e).__name__}: '
                              f'{str(e).strip().splitlines()[0][:120]})') from None
    if meta.get('format') != FORMAT:
        raise PromptFileError(f'--prompt {path}: a safetensors file, but not a prompt file of this codebase (its '
                              f'header has no format {FORMAT!r}); train.py writes them as prompt.safetensors')
    missing = [k for k in HEADER if k not in meta]
    if missing:
        raise PromptFileError(f'--prompt {path}: a damaged prompt file: its header lacks {", ".join(missing)}')
    return state, meta


def load_task(path, *, device='cpu'):
    """The arguments, model and metadata of a prompt file: the backbone it names (its weights checked against the
    fingerprint), the method built with the run's arguments, the file's state loaded."""
    state, meta = read_prompt(path)
    a = saved_args(meta['args'])
    a.device, a.resume, a.compile, a.save_prompts = device, False, False, 0
    disagree = [f'{k} {meta[k]!r} in the header, {getattr(a, k)!r} in its arguments' for k in ('method', 'img_size')
                if meta[k] != getattr(a, k)]
    if disagree:
        raise PromptFileError(f'--prompt {path}: its header disagrees with itself ({"; ".join(disagree)})')
    model = build(resolve(a), num_classes=len(meta['classes']))  # the file's classes, not the data's folder
    check_backbone(model, meta, path)
    try:
        load_state(model, state, source=f'--prompt {path}')
    except StateError as e:
        raise PromptFileError(str(e)) from None
    return a, model.eval(), meta


def load_run(path, *, device='cpu', base=False):
    """The arguments and trained model of a run directory (cka.py, theory/); base=True: the frozen model it started
    from, with a plain linear head. Raises RunDirError for a path that is not such a run."""
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


def check_backbone(model, meta, path):
    """model: a backbone made by backbones.create, or a model built on one (its weights' fingerprint)."""
    if model.weights_sha256 != meta['weights_sha256']:
        raise PromptFileError(f'--prompt {path}: it was trained on {meta["model"]} with {meta["weights"]}; the '
                              f'backbone here ({model.weights_loaded}) has other weights')


# ---- many tasks, one backbone ----

class TaskPrompts:
    """The forward pre-hook of block l for a batch sorted by task: each task's images (a contiguous segment) get that
    task's deep prompt at this block, added in place; the other segments are not touched. In place is safe here, and
    only here: serving runs without autograd and nothing else keeps a block's input (training adds out of place,
    lotep.AddPrompt, because hooks and forward_intermediates may keep it)."""

    def __init__(self, server, l):
        self.server, self.l = server, l

    def __call__(self, block, args):
        x = args[0]
        for (start, stop), d in zip(self.server.segments, self.server.deep):
            if d is not None and self.l < d.d and stop > start:
                x[start:stop] += d.prompt(self.l).to(x.dtype)  # X_l + P_l of the task, on its images only
        return None  # the input, changed in place


class MultiTask(nn.Module):
    """One frozen backbone and T prompt files trained on it; forward(x, task) runs a batch of mixed tasks at once."""

    def __init__(self, paths, *, device='cpu'):
        super().__init__()
        tasks = [load_task(p, device=device) for p in paths]
        first = tasks[0][2]
        for path, (a, model, meta) in zip(paths, tasks):
            if a.method in SHARE_NOTHING:
                raise PromptFileError(f'--prompt {path}: {a.method} {SHARE_NOTHING[a.method]}, so it cannot share a '
                                      f'backbone with other tasks; serve it alone')
            if (meta['model'], meta['img_size'], meta['weights_sha256']) != \
                    (first['model'], first['img_size'], first['weights_sha256']):
                raise PromptFileError(f'--prompt {path}: trained on {meta["model"]} at {meta["img_size"]} px, the '
                                      f'first prompt on {first["model"]} at {first["img_size"]} px (or other weights); '
                                      f'tasks served together share one backbone and one image size')
        a = tasks[0][0]
        sources = any(t[0].label_map != 'lp' for t in tasks)  # some head reads the source logits: keep the classifier
        self.backbone = create(a.model, pretrained=not a.no_pretrained, weights=a.weights, img_size=a.img_size,
                               num_classes=None if sources else 0).to(device)
        check_backbone(self.backbone, first, paths[0])
        self.normalize = normalizer(self.backbone)
        self.prompts = nn.ModuleList(model.prompt for _, model, _ in tasks)  # nn.Identity for deep-only tasks
        self.heads = nn.ModuleList(model.head for _, model, _ in tasks)
        self.label_maps = [t[0].label_map for t in tasks]
        self.deep = [model.attached[0] if model.attached else None for _, model, _ in tasks]
        for d in self.deep:
            if d is not None:
                d.detach()  # their hooks were on each task's own backbone; TaskPrompts adds them here
        self._deep = nn.ModuleList(d for d in self.deep if d is not None)  # their parameters, moved with .to()
        blocks, _ = lotep.find_blocks(self.backbone)
        depth = max((d.d for d in self.deep if d is not None), default=0)
        self._handles = [blocks[l].register_forward_pre_hook(TaskPrompts(self, l)) for l in range(depth)]
        self.meta = [t[2] for t in tasks]
        self.segments = []  # per task, (start, stop) of its images in the batch being served

    @torch.no_grad()
    def forward(self, x, task):  # x: (B, 3, S, S) in [0, 1], task: (B,) -> list of B logit vectors (each K_t)
        order = torch.argsort(task, stable=True)  # the batch sorted by task: each task's images are one segment
        counts = torch.bincount(task, minlength=len(self.heads)).tolist()
        bounds = [sum(counts[:t]) for t in range(len(counts) + 1)]
        self.segments = list(zip(bounds[:-1], bounds[1:]))
        x = x[order]
        for (start, stop), prompt in zip(self.segments, self.prompts):
            if stop > start and not isinstance(prompt, nn.Identity):
                x[start:stop] = prompt(x[start:stop])  # input-space prompts on their own task's images
        pooled = self.backbone.forward_head(self.backbone.forward_features(self.normalize(x)), pre_logits=True)
        sorted_out = []
        for (start, stop), head, label_map in zip(self.segments, self.heads, self.label_maps):
            features = pooled[start:stop] if label_map == 'lp' else self.backbone.get_classifier()(pooled[start:stop])
            sorted_out += list(head(features)) if stop > start else []
        out = [None] * len(x)
        for i, logits in zip(order.tolist(), sorted_out):
            out[i] = logits
        return out
