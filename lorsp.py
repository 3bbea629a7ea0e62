"""LoRSP: instance-specific sparse visual prompts from spiking LIF neurons over low-rank prompt factors.

Beyond Low-Rank: Low-Rank Sparse Prompting via Spiking Neural Network and Prompt Factorization (Zhao, Jiang, Wang,
Wan, Wang, Tang; arXiv 2606.01945, 2026); no public code. The paper's equations were lost from its text: this is the
reconstruction of ../shared/spec/methods.md sec. 4.3, which reproduces the paper's own parameter counts
(L r (c + n) = 6,272 for (n, r) = (4, 4) and 2,240 for (2, 2) at L = 224, c = 3). Where sec. 4.3 lists alternatives
(Eq. 9, orientation of Eq. 5, surrogate), they are options of this one module.

    prompt = LoRSP(size=224, factors=4, rank=4)  # 6,272 parameters
    x_hat = prompt(x)  # x: (B, 3, 224, 224) in [0, 1] -> x + P_hat(x): (B, 3, 224, 224); normalization comes after

Dimension letters: B batch, c colour channels, L image side, n factors (= LIF time steps), r rank.
"""
import math

import torch
import torch.nn as nn

# ---- the LIF neuron (Eqs. 6-8) with a surrogate gradient ----


class SpikeFunction(torch.autograd.Function):
    """Forward: the Heaviside step Theta(v) = 1 if v >= 0 else 0 (so Theta(0) = 1). Backward: a smooth surrogate,
    sigmoid: alpha s (1 - s) with s = sigmoid(alpha v) (SpikingJelly's default, alpha = 4);
    atan: (alpha / 2) / (1 + (pi alpha v / 2)^2)."""

    @staticmethod
    def forward(ctx, v, alpha, surrogate):
        ctx.save_for_backward(v)
        ctx.alpha, ctx.surrogate = alpha, surrogate
        return (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        v, = ctx.saved_tensors
        a = ctx.alpha
        if ctx.surrogate == 'sigmoid':
            s = torch.sigmoid(a * v)
            return grad * a * s * (1 - s), None, None
        return grad * (a / 2) / (1 + (math.pi * a * v / 2) ** 2), None, None


def lif(P, *, tau, v_th, v_reset, spike):
    """Leaky integrate-and-fire over the factor sequence as time steps, element-wise, from a fresh state V_0 = V_reset.
    P: (B, n, ...) -> spikes S and membrane H (before reset), both (B, n, ...)."""
    V = torch.full_like(P[:, 0], v_reset)
    S, H = [], []
    for t in range(P.shape[1]):
        # Eq. (6): H_t = V_{t-1} + (P_t - (V_{t-1} - V_reset)) / tau   (input scaled by 1/tau: decay_input)
        h = V + (P[:, t] - (V - v_reset)) / tau
        # Eq. (7): S_t = Theta(H_t - V_th)
        s = spike(h - v_th)
        # Eq. (8): V_t = H_t (1 - S_t) + V_reset S_t   (hard reset)
        V = h * (1 - s) + v_reset * s
        S.append(s)
        H.append(h)
    return torch.stack(S, 1), torch.stack(H, 1)


# ---- the prompt ----

class LoRSP(nn.Module):
    """x -> n low-rank factors P_1..P_n (instance-specific) -> LIF spikes -> sparse prompt P_hat -> x + P_hat.

    mode      'lif' (LoRSP); 'mean' (ablation LPF: factors averaged, no neurons); 'topk' (keep the (1 - sparsity)
              fraction of largest |mean factor| entries per image); 'dropout' (zero each entry of the mean factor with
              probability `sparsity` in training, no rescaling; identity at evaluation). Sec. 4.7 of the spec.
    combine   Eq. (9): 'mean' (1/n) sum_t S_t P_t (primary, = LPF when S = 1); 'sum' sum_t S_t P_t; 'last' S_n mean(P);
              'rate' mean(S) mean(P); 'membrane' (1/n) sum_t S_t H_t.
    orientation  Eq. (5): 'cols' P_k = B (A^k)^T (primary, the instance factor on the column side); 'rows' its
              transpose, P_k[c, i, j] = sum_t A^k[c, i, t] B[c, j, t].
    B (c, L, r) starts at zero, so P_hat = 0 at step 0 and the prompted model is the plain linear probe;
    W ~ N(0, w_std^2) (spec sec. 4.5). tau, v_th, v_reset are constants, not parameters.
    """
    MODES = ('lif', 'mean', 'topk', 'dropout')
    COMBINES = ('mean', 'sum', 'last', 'rate', 'membrane')

    def __init__(self, *, size: int, channels: int = 3, factors: int = 4, rank: int = 4, tau: float = 4.0,
                 v_th: float = 0.0, v_reset: float = 0.0, mode: str = 'lif', sparsity: float = 0.0,
                 combine: str = 'mean', orientation: str = 'cols', surrogate: str = 'sigmoid', alpha: float = 4.0,
                 w_std: float = 0.01):
        super().__init__()
        if factors < 1 or rank < 1:
            raise ValueError(f'--factors and --rank must be >= 1, got n = {factors}, r = {rank}')
        if tau < 1:
            raise ValueError(f'--tau must be >= 1 (the leak divides the input by tau), got {tau}')
        if mode not in self.MODES or combine not in self.COMBINES:
            raise ValueError(f'mode must be one of {self.MODES} and combine one of {self.COMBINES}')
        if orientation not in ('cols', 'rows') or surrogate not in ('sigmoid', 'atan'):
            raise ValueError("orientation must be 'cols' or 'rows', surrogate 'sigmoid' or 'atan'")
        if mode in ('topk', 'dropout') and not 0.0 <= sparsity < 1.0:
            raise ValueError(f'--sparsity is the fraction of prompt entries zeroed, in [0, 1); got {sparsity}')
        self.n, self.r, self.tau, self.v_th, self.v_reset = factors, rank, tau, v_th, v_reset
        self.mode, self.sparsity, self.combine, self.orientation = mode, sparsity, combine, orientation
        self.surrogate, self.alpha = surrogate, alpha
        self.B = nn.Parameter(torch.zeros(channels, size, rank))  # the shared low-rank basis, (c, L, r)
        self.W = nn.Parameter(torch.randn(size, factors * rank) * w_std)  # the spatial projection, (L, n r), no bias
        self._stats = None

    def spike(self, v):
        return SpikeFunction.apply(v, self.alpha, self.surrogate)

    def factors(self, x):  # (B, c, L, L) -> (B, n, c, L, L)
        b, c, L, _ = x.shape
        # Eq. (4): A_x = x W, each image row projected; Split_n along the last dim: A^k = A_x[..., k r:(k+1) r]
        A = (x @ self.W).view(b, c, L, self.n, self.r)  # (B, c, L, n, r)
        # Eq. (5): P_k = B (A^k)^T, a channel-batched (L x r)(r x L) product
        if self.orientation == 'cols':
            return torch.einsum('cit,bcjkt->bkcij', self.B, A)  # P_k[c, i, j] = sum_t B[c, i, t] A^k[c, j, t]
        return torch.einsum('bcikt,cjt->bkcij', A, self.B)

    def sparse_prompt(self, x):  # (B, c, L, L) -> P_hat: (B, c, L, L)
        P = self.factors(x)  # (B, n, c, L, L)
        if self.mode == 'lif':
            S, H = lif(P, tau=self.tau, v_th=self.v_th, v_reset=self.v_reset, spike=self.spike)
            if self.combine == 'mean':
                P_hat = (S * P).mean(1)  # Eq. (9): (1/n) sum_t S_t P_t
            elif self.combine == 'sum':
                P_hat = (S * P).sum(1)
            elif self.combine == 'last':
                P_hat = S[:, -1] * P.mean(1)
            elif self.combine == 'rate':
                P_hat = S.mean(1) * P.mean(1)
            else:
                P_hat = (S * H).mean(1)
            self._record(P_hat, S)
            return P_hat
        P_hat = P.mean(1)  # LPF: the factors averaged, a dense instance-specific prompt
        if self.mode == 'topk':
            flat = P_hat.flatten(1)  # (B, c L L)
            keep = flat.shape[1] - round(self.sparsity * flat.shape[1])
            mask = torch.zeros_like(flat).scatter_(1, flat.abs().topk(keep, dim=1).indices, 1.0)
            P_hat = (flat * mask).view_as(P_hat)
        elif self.mode == 'dropout' and self.training:
            P_hat = P_hat * (torch.rand_like(P_hat) >= self.sparsity)
        self._record(P_hat, None)
        return P_hat

    def forward(self, x):  # (B, c, L, L) -> (B, c, L, L)
        return x + self.sparse_prompt(x)  # Eq. (10): x_hat = x + P_hat; the backbone's normalization comes after

    # ---- diagnostics: spike rate of each time step and density of P_hat, accumulated in evaluation ----

    @torch.no_grad()
    def _record(self, P_hat, S):
        if self.training:
            return
        if self._stats is None:
            self._stats = {'nonzero': 0.0, 'entries': 0, 'spikes': torch.zeros(self.n), 'images': 0}
        self._stats['nonzero'] += float((P_hat != 0).sum())
        self._stats['entries'] += P_hat.numel()
        if S is not None:
            self._stats['spikes'] += S.float().transpose(0, 1).flatten(1).mean(1).cpu() * len(S)
            self._stats['images'] += len(S)

    def pop_stats(self) -> dict:
        """{'prompt_density': fraction of non-zero P_hat entries, 'spike_rate': [mean S_t for t = 1..n]} since the last
        call, over evaluation forwards only."""
        s, self._stats = self._stats, None
        if s is None:
            return {}
        out = {'prompt_density': s['nonzero'] / max(s['entries'], 1)}
        if s['images']:
            out['spike_rate'] = [round(float(v), 4) for v in s['spikes'] / s['images']]
        return out

    @staticmethod
    def num_trainable(size, factors, rank, channels=3):
        return size * rank * (channels + factors)  # Eqs. (13)-(15): #B = c L r, #W = L n r


# ---- figures: prompts of a few images (the paper's Fig. 5) and factor correlations (Fig. 3b) ----

@torch.no_grad()
def save_figures(prompt: LoRSP, images: torch.Tensor, out_dir: str) -> list[str]:
    """prompts.png: a row per image, (image | prompt | prompted image); factor_correlation.png: the n x n Pearson
    correlation of the factors P_1..P_n, averaged over the images."""
    import os
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from torchvision.utils import save_image

    was_training = prompt.training
    prompt.eval()
    P_hat = prompt.sparse_prompt(images)  # (K, c, L, L)
    factors = prompt.factors(images).flatten(2)  # (K, n, c L L)
    prompt.pop_stats()
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
