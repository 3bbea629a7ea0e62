"""Linear CKA between each block's output features of a trained model and those of the frozen base model, and of a
fully fine-tuned model when one is given: the LoTeP paper's Fig. 1(a).

    python tools/cka.py runs/offline-cifar10/lotep_cp-s0 --ft runs/offline-cifar10/ft-s0 --images 256
    # -> cka.md (a table) and cka.png (a plot) in the run directory

CKA(X, Y) = <K_c, L_c>_F / (||K_c||_F ||L_c||_F), with K = X X^T and L = Y Y^T the Gram matrices of the N images'
flattened features and K_c = H K H their centred forms (H = I - 11^T / N) (Kornblith et al., ICML 2019). Grams make
features of different widths comparable (VPT's extra tokens, for instance).
"""
import argparse
import json
import os
import sys

import torch

if __name__ == '__main__':  # python tools/cka.py from the project root: the project's modules come from there
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import data
import lotep
import train
from tools.figures import pyplot
from tools.serve import load_run
from flags import POS_INT


def linear_cka(K: torch.Tensor, L: torch.Tensor) -> float:
    """K, L: (N, N) Gram matrices."""
    N = K.shape[0]
    H = torch.eye(N, dtype=K.dtype) - 1.0 / N
    Kc, Lc = H @ K @ H, H @ L @ H
    return float((Kc * Lc).sum() / (Kc.norm() * Lc.norm()))


def blocks_of(model):
    bb = model.backbone
    return lotep.find_blocks(bb.vit if hasattr(bb, 'vit') else bb)[0]  # VPT-Deep wraps the ViT


@torch.no_grad()
def block_grams(model, images, batch_size=32):
    """(N, N) Gram matrix of every block's flattened output features over the images."""
    feats, handles = {}, []
    for i, b in enumerate(blocks_of(model)):
        handles.append(b.register_forward_hook(
            lambda m, args, out, i=i: feats.setdefault(i, []).append(out.flatten(1).double())))
    try:
        for k in range(0, len(images), batch_size):
            model(images[k:k + batch_size])
    finally:
        for h in handles:
            h.remove()
    grams = []
    for i in sorted(feats):
        X = torch.cat(feats.pop(i))
        grams.append(X @ X.T)
    return grams


def check_out(out, a):
    """cka.md / .json / .png are written only where they are new, or where the same comparison made them."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise train.UsageError(f'--out {out}: is a file, not a folder')
    record = os.path.join(out, 'cka.json')
    if os.path.exists(record):
        with open(record) as f:
            made = json.load(f)
        if (made.get('run'), made.get('ft'), made.get('images')) != (a.run, a.ft, a.images):
            raise train.UsageError(f'{record} holds another comparison ({made.get("run")}, --ft {made.get("ft")}, '
                                   f'{made.get("images")} images); give --out another folder')
    elif any(os.path.exists(os.path.join(out, f)) for f in ('cka.md', 'cka.png')):
        raise train.UsageError(f'{out} holds a cka.md or cka.png that cka.py did not record; give --out another folder')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('run', help='a finished train.py run directory')
    p.add_argument('--ft', help='a finished full fine-tuning run (same model and data) to compare with')
    p.add_argument('--images', type=POS_INT, default=256, help='test images to compute CKA on')
    p.add_argument('--out', help='where to write cka.md, .json and .png (default: the run directory)')
    a = p.parse_args(argv)
    out = a.out or a.run
    try:
        check_out(out, a)
        run_args, model = load_run(a.run)
        _, base = load_run(a.run, base=True)
        ft_args, ft = load_run(a.ft) if a.ft else (None, None)
        if ft_args is not None and (ft_args.method, ft_args.model, ft_args.dataset, ft_args.img_size) != \
                ('ft', run_args.model, run_args.dataset, run_args.img_size):
            raise train.UsageError(f'--ft {a.ft}: a {ft_args.method} run of {ft_args.model} on {ft_args.dataset} at '
                                   f'{ft_args.img_size} px; it must be an ft run of the same model, data and size')
        splits = data.load(run_args.dataset, data_dir=run_args.data_dir, img_size=run_args.img_size,
                           seed=run_args.seed, train_per_class=1, test_limit=a.images)
    except train.SETUP_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2) from None
    images = torch.stack([splits.test[i][0] for i in range(len(splits.test))])
    grams = {'model': block_grams(model, images), 'base': block_grams(base, images)}
    if ft is not None:
        grams['ft'] = block_grams(ft, images)
    rows = [dict(block=i, cka_base=linear_cka(grams['model'][i], grams['base'][i]),
                 **({'cka_ft': linear_cka(grams['model'][i], grams['ft'][i]),
                     'cka_base_ft': linear_cka(grams['base'][i], grams['ft'][i])} if ft is not None else {}))
            for i in range(len(grams['model']))]

    os.makedirs(out, exist_ok=True)
    label = f'{run_args.method} on {run_args.model}, {run_args.dataset}, {len(images)} test images'
    lines = [f'# Linear CKA per block: {label}', '', '| block | CKA(model, base) |' +
             (' CKA(model, FT) | CKA(base, FT) |' if a.ft else ''), '|---|---|' + ('---|---|' if a.ft else '')]
    for r in rows:
        lines.append(f"| {r['block']} | {r['cka_base']:.4f} |" +
                     (f" {r['cka_ft']:.4f} | {r['cka_base_ft']:.4f} |" if a.ft else ''))
    with open(os.path.join(out, 'cka.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(out, 'cka.json'), 'w') as f:
        json.dump(dict(run=a.run, ft=a.ft, images=len(images), rows=rows), f, indent=1)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r['cka_base'] for r in rows], 'o-', label=f'{run_args.method} vs base (frozen)')
    if a.ft:
        ax.plot([r['cka_ft'] for r in rows], 's-', label=f'{run_args.method} vs FT')
        ax.plot([r['cka_base_ft'] for r in rows], '^--', color='gray', label='base vs FT')
    ax.set_xlabel('block')
    ax.set_ylabel('linear CKA')
    ax.set_ylim(0, 1.02)
    ax.set_title(label, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'cka.png'), dpi=120)
    plt.close(fig)
    print('\n'.join(lines))
    return rows


if __name__ == '__main__':
    main()
