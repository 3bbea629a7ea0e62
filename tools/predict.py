"""Use trained prompts: classify images, or evaluate on a data set, from prompt files alone (serve.py).

    python tools/predict.py --prompt runs/x/prompt.safetensors cat.png photos/        # top-5 classes of each image
    python tools/predict.py --prompt runs/x/prompt.safetensors --dataset cifar10-sample --split test
    python tools/predict.py --prompt runs/in1k/prompt.safetensors --dataset imagenet-a --data-dir data/imagenet-a
    python tools/predict.py --prompt a.safetensors --prompt b.safetensors 0:cat.png 1:scan.png photos/   # several tasks, one
                                                                                # backbone, one batch; N: picks a task

An image is resized as training did (the run's image size, no crop). With several prompt files every image goes to
every task, unless written N:path (task N only). --out writes the predictions as .csv or .json. Evaluation uses the
run's data settings (seed, --test-limit, batch size, precision): on the device it was trained on, it reproduces the
run's test accuracy exactly. A folder's classes are matched to the prompt file's by name; a prompt trained on
imagenet is also evaluated on its four shifted test sets (ImageNet-R and -A scored over their 200 classes).
"""
import argparse
import csv
import json
import math
import os
import re
import sys

import torch
from torch.utils.data import Dataset

if __name__ == '__main__':  # python tools/predict.py from the project root: the project's modules come from there
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import data
from formats import images, imagenet
import train
from flags import NONNEG_INT, POS_INT, dataset_name, device_name
from tools.serve import MultiTask, PromptFileError, load_task


class Images(Dataset):
    """Image files as [0, 1] tensors at one square size, read and resized as training reads them (formats/images.py),
    or a clear error naming the file."""

    def __init__(self, paths, size):
        self.files = data.Resized(images.FileImages(paths, [0] * len(paths), size=size), size)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return self.files[i][0]


def expand(inputs, tasks):
    """[(task or None, image path)] from files and folders (a folder: its images, sorted); N:path sends path to task
    N only. A file whose own name looks like N:path is read as a file where no path of that name exists."""
    out = []
    for item in inputs:
        n, _, rest = item.partition(':')
        task = int(n) if re.fullmatch(r'[0-9]+', n) and rest and os.path.exists(rest) else None
        if task is not None and os.path.exists(item):
            raise PromptFileError(f'{item}: both a file of that name and {rest} (for task {n}) exist; write '
                                  f'./{item} for the file, or {n}:./{rest} for task {n}')
        path = rest if task is not None else item
        if task is not None and task >= tasks:
            raise PromptFileError(f'{item}: task {task}, but only {tasks} prompt file(s) were given (a file named '
                                  f'{item}? write ./{item})')
        if os.path.isdir(path):
            files = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if f.lower().endswith(images.IMAGE_EXTENSIONS))
            if not files:
                raise data.DataError(f'{path}: a folder without images ({", ".join(images.IMAGE_EXTENSIONS)})')
            out += [(task, f) for f in files]
        elif os.path.isfile(path):
            out.append((task, path))
        else:
            also = f' (nor is {rest}, for task {n})' if re.fullmatch(r'[0-9]+', n) and rest else ''
            raise data.DataError(f'{path}: no such image file or folder{also}')
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--prompt', action='append', required=True, help='a prompt file (repeat for several tasks)')
    p.add_argument('inputs', nargs='*', help='image files or folders; N:path sends them to task N only')
    p.add_argument('--top-k', type=POS_INT, default=5)
    p.add_argument('--out', help='write the predictions to a .csv or .json file')
    p.add_argument('--dataset', type=dataset_name, help='evaluate on a data set instead (as train.py\'s --dataset; '
                   'a prompt trained on imagenet also on imagenet-r, -a, -sketch, -v2, R and A over their 200 classes)')
    p.add_argument('--data-dir', help='where the data set is (default: the run\'s)')
    p.add_argument('--split', default='test', choices=['test'], help='the evaluated split')
    p.add_argument('--test-limit', type=POS_INT, help='N test images spread over the classes, as train.py takes them '
                   '(default: the run\'s)')
    p.add_argument('--batch-size', type=POS_INT, default=32)
    p.add_argument('--device', type=device_name, default='cpu')
    p.add_argument('--workers', type=NONNEG_INT, default=0)
    a = p.parse_args(argv)
    if a.out and not a.out.endswith(('.csv', '.json')):
        p.error(f'--out {a.out}: write .csv or .json')
    if a.out and os.path.exists(a.out):  # never replace a file this run did not make
        p.error(f'--out {a.out}: exists; remove it first, or give another file')
    if a.out and not os.path.isdir(os.path.dirname(os.path.abspath(a.out))):
        p.error(f'--out {a.out}: its folder does not exist')
    if (a.dataset is None) == (not a.inputs):
        p.error('give images (files or folders) or --dataset, one of the two')
    try:
        if a.dataset:
            return evaluate(a)
        return classify(a)
    except (PromptFileError, data.DataError) + train.SETUP_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2) from None


def score_test_sets(out, sets, kept=None, label=None):
    """{test set: accuracy} of a finished run's prompt file: kept (a table's record), then <out>.test-sets.json, then
    each of sets ({name: folder}) not scored yet, written there as soon as it is measured: compare.py's protocols'
    test sets, scored in the run's cluster job (tools/cluster.py) or by compare.py. A set predict.py refuses is
    'failed'."""
    path = out + '.test-sets.json'
    kept = dict(kept or {})
    if os.path.exists(path):
        with open(path) as f:
            kept.update(json.load(f))
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    for name, folder in (sets or {}).items():
        if isinstance(kept.get(name), float):
            continue
        print(f'{label or out}: testing its prompt file on {name}', flush=True)
        try:
            kept[name] = main(['--prompt', os.path.join(out, 'prompt.safetensors'), '--dataset', name, '--data-dir',
                               folder, '--device', device])
        except SystemExit:  # predict.py said why on stderr
            kept[name] = 'failed'
        with open(path + '.tmp', 'w') as f:
            json.dump(kept, f)
        os.replace(path + '.tmp', path)
    return kept


def evaluate(a):
    """The test accuracy of one prompt file on a data set, through train.py's own evaluation."""
    if len(a.prompt) != 1:
        raise PromptFileError('--dataset evaluates one prompt file at a time')
    args, model, meta = load_task(a.prompt[0], device=a.device)
    ood = a.dataset in data.TEST_SETS and args.dataset == 'imagenet'  # ImageNet-1K's test sets
    if a.dataset != args.dataset and not ood:
        also = f' (its test sets {", ".join(data.TEST_SETS)} need a prompt trained on imagenet)' \
            if a.dataset in data.TEST_SETS else ''
        raise PromptFileError(f'--prompt {a.prompt[0]}: trained on {args.dataset}, not {a.dataset}{also}')
    if ood and not a.data_dir:
        raise PromptFileError(f'--dataset {a.dataset} needs --data-dir, the folder of its class folders')
    limit = a.test_limit or (None if ood else args.test_limit)
    if ood or a.dataset == 'folder':  # the test images alone (a folder's test/: its classes matched by name below)
        splits = data.load_test_set(a.dataset, data_dir=a.data_dir or args.data_dir, img_size=args.img_size,
                                    test_limit=limit)
    else:
        splits = data.load(a.dataset, data_dir=a.data_dir or args.data_dir, img_size=args.img_size, seed=args.seed,
                           train_per_class=1, test_limit=limit, splits=args.splits)
    args.workers = a.workers
    test = by_name(splits.test, splits.classes, meta['classes'], a.prompt[0])
    if a.dataset in imagenet.RESTRICTED:  # ImageNet-R and -A: the 1000-way model scored over their 200 classes
        model = Restricted(model, [meta['classes'].index(c) for c in splits.classes], len(meta['classes']))
    acc, _ = train.evaluate(model, test, args)
    reported = f' (the run reported {meta["test_acc"]:.2f}% on {args.dataset})' if meta.get('test_acc') is not None \
        else ''
    over = f' scored over its {len(splits.classes)} classes' if a.dataset in imagenet.RESTRICTED else ''
    print(f'{meta["method"]} on {meta["model"]}: test acc {acc:.2f}% on {len(splits.test)} {a.dataset} test '
          f'images{over}{reported}')
    return acc


class Restricted(torch.nn.Module):
    """A K-way model scored over some of its classes only: the other logits are -inf, so the prediction is the best
    of those (ImageNet-R and -A, 200 of ImageNet-1K's classes, as their authors and LoR-VP score them)."""

    def __init__(self, model, keep, K):
        super().__init__()
        self.model = model
        mask = torch.full((K,), -math.inf, device=next(model.parameters()).device)
        mask[keep] = 0.0
        self.register_buffer('mask', mask)

    def forward(self, x):
        return self.model(x) + self.mask  # (B, K): -inf outside the kept classes


class Relabelled(Dataset):
    """A data set's images with each label moved to the prompt file's index of the same class name."""

    def __init__(self, ds, index):
        self.ds, self.index = ds, index

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return x, self.index[y]


def by_name(test, classes, trained, prompt):
    """The test images labelled by the prompt file's classes, matched by name (a folder's classes may be others, or
    in another order); a class the prompt was not trained on is refused, both lists named."""
    if list(classes) == list(trained):
        return test
    unknown = [c for c in classes if c not in trained]
    if unknown:
        raise PromptFileError(f'--prompt {prompt}: the data names class(es) {", ".join(unknown)} that it was not '
                              f'trained on; its classes: {", ".join(trained)}; the data\'s: {", ".join(classes)}')
    return Relabelled(test, [trained.index(c) for c in classes])


@torch.no_grad()
def classify(a):
    if len(a.prompt) == 1:
        args, model, meta = load_task(a.prompt[0], device=a.device)
        metas, run = [meta], lambda x, task: list(model(x))
    else:
        server = MultiTask(a.prompt, device=a.device)
        metas, run = server.meta, server
    size = metas[0]['img_size']
    items = [(t, path) for task, path in expand(a.inputs, len(metas))
             for t in ([task] if task is not None else range(len(metas)))]
    pictures = Images([path for _, path in items], size)
    rows = []
    for start in range(0, len(items), a.batch_size):
        chunk = items[start:start + a.batch_size]
        x = torch.stack([pictures[start + i] for i in range(len(chunk))]).to(a.device)
        task = torch.tensor([t for t, _ in chunk], device=a.device)
        for (t, path), logits in zip(chunk, run(x, task)):
            probs = logits.float().softmax(-1)
            top = probs.topk(min(a.top_k, len(probs)))
            classes = metas[t]['classes']
            rows.append(dict(image=path, prompt=a.prompt[t], top=[(classes[i], round(float(p), 4))
                                                                  for p, i in zip(top.values, top.indices)]))
    for r in rows:
        print(f'{r["image"]}  [{os.path.basename(os.path.dirname(r["prompt"])) or r["prompt"]}]  ' +
              ', '.join(f'{c} {p:.3f}' for c, p in r['top']))
    if a.out and a.out.endswith('.json'):
        with open(a.out, 'w') as f:
            json.dump(rows, f, indent=1)
    elif a.out:
        with open(a.out, 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['image', 'prompt', 'rank', 'class', 'probability'])
            w.writerows([r['image'], r['prompt'], k + 1, c, p] for r in rows for k, (c, p) in enumerate(r['top']))
    return rows


if __name__ == '__main__':
    main()
