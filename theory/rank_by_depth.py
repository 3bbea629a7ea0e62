"""The empirical side of LoTeP's rank decay: train naive deep prompts (a full C x H x W tensor at every block input,
grouped_vp.naive_deep_vp) on a real pretrained backbone and real data, and measure the effective rank of each learned
prompt, flattened to C x HW, by depth.

    python theory/rank_by_depth.py                       # tf_efficientnet_lite0 (offline ImageNet weights),
                                                         # CIFAR-10 from --data-dir, a small subset, CPU
    python theory/rank_by_depth.py --run runs/some-naive_deep_vp-run   # analyse a finished run instead

Effective rank at 90% / 99%: the fewest singular values whose squares hold that share of ||P||_F^2. The training is a
plain train.py run (method naive_deep_vp, rho = 1: every block prompted); writes rank_by_depth.md / .png beside it.
Unlike the synthetic check (prop1_rank_bound.py), a real backbone's first convolutions are full rank, so Proposition
1's bound is vacuous here: what this measures is whether the learned prompts are low-rank anyway, and how that changes
with depth.
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import train  # noqa: E402
from tools.figures import pyplot  # noqa: E402
from tools.serve import load_run  # noqa: E402
from flags import POS_INT  # noqa: E402
from prop1_rank_bound import numerical_rank  # noqa: E402  (the same rank threshold as the synthetic check)


def effective_rank(P: torch.Tensor, energy: float) -> int:
    sigma2 = torch.linalg.svdvals(P.double().flatten(1)) ** 2  # P: (C, H, W) -> (C, HW)
    if sigma2.sum() == 0:
        return 0
    return int((torch.cumsum(sigma2, 0) / sigma2.sum() < energy - 1e-12).sum()) + 1


def analyse(run_dir):
    """The rank figures of every prompt of a finished naive_deep_vp run; a clear error for any other directory."""
    args, model = load_run(run_dir)
    if args.method != 'naive_deep_vp':
        raise train.UsageError(f'{run_dir} is a {args.method} run; rank_by_depth analyses naive_deep_vp runs (full '
                               f'C x H x W prompts), e.g. the one it trains itself without --run')
    prompts = [(l, p.P.detach()) for l, p in enumerate(model.attached[0].prompts)]
    rows = []
    for l, P in prompts:
        C, H, W = P.shape
        rows.append(dict(block=l, shape=f'{C}x{H}x{W}', max_rank=min(C, H * W), eff90=effective_rank(P, 0.90),
                         eff99=effective_rank(P, 0.99), numerical=numerical_rank(P), norm=float(P.norm())))
    return rows


def report(run_dir, rows, summary):
    """rank_by_depth.md and .png in the run folder; returns the markdown table."""
    lines = [f"# Effective rank of naive deep prompts by depth: {summary['model']}, {summary['dataset']}, "
             f"{summary['img_size']} px, {summary['epochs']} epochs (test acc {summary['test_acc']:.2f}%)", '',
             '| block | prompt C x H x W | min(C, HW) | eff. rank 90% | eff. rank 99% | numerical rank | ||P||_F |',
             '|---|---|---|---|---|---|---|']
    lines += [f"| {r['block']} | {r['shape']} | {r['max_rank']} | {r['eff90']} | {r['eff99']} | {r['numerical']} | "
              f"{r['norm']:.3g} |" for r in rows]
    with open(os.path.join(run_dir, 'rank_by_depth.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    blocks = [r['block'] for r in rows]
    for key, mark in (('eff90', 'o-'), ('eff99', 's-')):
        ax1.plot(blocks, [r[key] for r in rows], mark, label=f'effective rank {key[3:]}%')
        ax2.plot(blocks, [r[key] / r['max_rank'] for r in rows], mark, label=f'{key[3:]}% / min(C, HW)')
    ax1.plot(blocks, [r['max_rank'] for r in rows], ':', color='gray', label='min(C, HW)')
    ax1.set_yscale('log')
    for ax, title in ((ax1, 'effective rank'), (ax2, 'relative to the largest possible')):
        ax.set_xlabel('block')
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"naive deep prompts on {summary['model']}, {summary['dataset']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, 'rank_by_depth.png'), dpi=120)
    plt.close(fig)
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--run', help='a finished naive_deep_vp run to analyse (default: train one now)')
    p.add_argument('--out', default='runs/rank_by_depth', help='run directory for the training (default %(default)s)')
    p.add_argument('--data-dir', default='data', help='where CIFAR-10 is: cifar10.npz, torchvision\'s layout, or '
                                                      'downloaded there (default %(default)s)')
    training = dict(train_per_class=200, epochs=2, img_size=96)  # the training run's settings and their defaults
    for key in training:
        p.add_argument('--' + key.replace('_', '-'), type=POS_INT, help=f'of the run trained here (default '
                       f'{training[key]})')
    a = p.parse_args(argv)
    given = [k for k in training if getattr(a, k) is not None]
    if a.run is not None and given:
        p.error(f'{", ".join("--" + k.replace("_", "-") for k in given)} set the run trained here; --run analyses a '
                f'finished run as it was trained')
    run_dir = a.run
    if run_dir is None:
        run_dir = a.out
        settings = {k: getattr(a, k) or v for k, v in training.items()}
        args = ['--method', 'naive_deep_vp', '--model', 'tf_efficientnet_lite0', '--dataset', 'cifar10',
                '--data-dir', a.data_dir, '--train-per-class', str(settings['train_per_class']), '--test-limit',
                '1000', '--img-size', str(settings['img_size']), '--epochs', str(settings['epochs']), '--batch-size',
                '32', '--rho', '1.0', '--precision', 'fp32', '--out', run_dir]
        if os.path.exists(os.path.join(run_dir, 'config.json')):  # continue the run in --out, if it is this one
            try:
                saved = train.RunDir(run_dir).read_json('config.json')['args']
            except train.RunDirError as e:
                p.error(str(e))
            differ = [f'--{k.replace("_", "-")} {v} (the run there: {saved.get(k)})' for k, v in settings.items()
                      if saved.get(k) != v]
            if differ or saved.get('method') != 'naive_deep_vp':
                p.error(f'--out {run_dir} holds another run ({"; ".join(differ) or saved.get("method")}); give '
                        f'another --out, or analyse it with --run')
            args = ['--resume', '--out', run_dir]
        train.main(args)
    try:
        rows = analyse(run_dir)
        summary = train.RunDir(run_dir).read_json('summary.json')
    except train.SETUP_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2) from None
    print(report(run_dir, rows, summary))
    return rows


if __name__ == '__main__':
    main()
