"""Figures, kept apart from the method modules: LoRSP's prompts and factor correlations (the paper's Fig. 5 and 3b).

    paths = lorsp_figures(model.prompt, images, 'runs/some-lorsp-run')  # prompts.png, factor_correlation.png
"""
import os

import torch
from torchvision.utils import save_image

from lorsp import LoRSP


def pyplot():
    """matplotlib's pyplot without a display (files only)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


@torch.no_grad()
def lorsp_figures(prompt: LoRSP, images: torch.Tensor, out_dir: str) -> list[str]:
    """prompts.png: a row per image, (image | prompt | prompted image); factor_correlation.png: the n x n Pearson
    correlation of the factors P_1..P_n, averaged over the images."""
    plt = pyplot()
    was_training = prompt.training
    prompt.eval()
    P_hat, _ = prompt.sparse_prompt(images)  # (K, c, L, L)
    factors = prompt.factors(images).flatten(2)  # (K, n, c L L)
    prompt.train(was_training)
    scale = P_hat.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    shown = 0.5 + P_hat / (2 * scale)  # signed prompt, 0.5 grey = 0, per-image scale
    grid = torch.stack([images, shown, (images + P_hat).clamp(0, 1)], 1).flatten(0, 1)  # (3K, c, L, L)
    paths = [os.path.join(out_dir, 'prompts.png'), os.path.join(out_dir, 'factor_correlation.png')]
    save_image(grid, paths[0], nrow=3, padding=2, pad_value=1.0)

    corr = torch.stack([torch.corrcoef(f) for f in factors]).nan_to_num(0.0).mean(0)  # (n, n)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * prompt.n, 1 + 0.8 * prompt.n))
    im = ax.imshow(corr.numpy(), vmin=-1, vmax=1, cmap='coolwarm')
    for i in range(prompt.n):
        for j in range(prompt.n):
            ax.text(j, i, f'{corr[i, j]:.2f}', ha='center', va='center', fontsize=8)
    ticks = [f'P{k + 1}' for k in range(prompt.n)]
    ax.set_xticks(range(prompt.n), ticks)
    ax.set_yticks(range(prompt.n), ticks)
    ax.set_title(f'factor correlation ({len(images)} images)')
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
