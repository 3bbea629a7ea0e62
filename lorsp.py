"""LoRSP: instance-specific sparse visual prompts from spiking LIF neurons over low-rank prompt factors.

Beyond Low-Rank: Low-Rank Sparse Prompting via Spiking Neural Network and Prompt Factorization (Zhao, Jiang, Wang,
Wan, Wang, Tang; arXiv 2606.01945, 2026); no public code. The paper's equations were lost from its text. These are
this codebase's reconstruction (docs/lorsp.md says how and why), which reproduces the paper's own parameter counts
(L r (c + n) = 6,272 for (n, r) = (4, 4) and 2,240 for (2, 2) at L = 224, c = 3):

    (4)  A_x = x W,  W in R^{L x nr}, no bias; Split_n along the last dimension: A^1 .. A^n, each c x L x r
    (5)  P_k = B (A^k)^T,  B in R^{c x L x r} the shared basis (a product per channel, as in LoR-VP)
    (6)  H_t = V_{t-1} + (P_t - (V_{t-1} - V_reset)) / tau,  V_0 = V_reset      (the n factors are the time steps)
    (7)  S_t = Theta(H_t - V_th),  Theta(v) = 1 if v >= 0 else 0                 (surrogate gradient in backward)
    (8)  V_t = H_t (1 - S_t) + V_reset S_t                                      (hard reset)
    (9)  P_hat = (1/n) sum_t S_t P_t
    (10) x_hat = x + P_hat, then the backbone's normalization, the frozen backbone and the linear head
    (13)-(15)  #B = c L r,  #W = L n r,  #LoRSP = L r (c + n)

    bb = timm.create_model('resnet18', pretrained=True, num_classes=10).eval().requires_grad_(False)
    head = bb.get_classifier().requires_grad_(True)  # the fresh 10-class head trains with the prompt
    norm = torchvision.transforms.Normalize(bb.pretrained_cfg['mean'], bb.pretrained_cfg['std'])
    prompt = LoRSP(size=224, factors=4, rank=4)  # 6,272 parameters
    opt = torch.optim.SGD([*prompt.parameters(), *head.parameters()], lr=0.01, momentum=0.9)
    x_hat = prompt(x)  # x: (B, 3, 224, 224) in [0, 1] -> x + P_hat(x): (B, 3, 224, 224)
    logits = bb(norm(x_hat))  # the backbone's normalization comes after the prompt -> (B, 10)

In your own loop, put the prompt in train mode and keep the backbone in eval mode (bb.eval() after any model.train()):
its BatchNorm statistics and dropout stay as pretrained.

Dimension letters: B batch, c colour channels, L image side, n factors (= LIF time steps), r rank.
The readings the reconstruction weighed (Eq. 9, the orientation of Eq. 5, the surrogate) and the paper's ablations
(LPF, top-k, dropout) are options of this one module, written after the method itself (docs/lorsp.md).
"""
import math

import torch
import torch.nn as nn

ORIENTATIONS = ('cols', 'rows')  # Eq. (5): P_k = B (A^k)^T, or its transpose
SURROGATES = ('sigmoid', 'atan')  # the spike's gradient in backward (SpikeFunction)

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


def lif_step(P_t, V, *, tau, v_th, v_reset, spike):
    """One time step of leaky integrate-and-fire neurons, element-wise: input P_t, membrane V_{t-1} -> S_t, H_t, V_t."""
    # Eq. (6): H_t = V_{t-1} + (P_t - (V_{t-1} - V_reset)) / tau   (input scaled by 1/tau: SpikingJelly's decay_input)
    H = V + (P_t - (V - v_reset)) / tau
    # Eq. (7): S_t = Theta(H_t - V_th)
    S = spike(H - v_th)
    # Eq. (8): V_t = H_t (1 - S_t) + V_reset S_t   (hard reset)
    V = H * (1 - S) + v_reset * S
    return S, H, V


# ---- the prompt ----

class LoRSP(nn.Module):
    """x -> n low-rank factors P_1..P_n (instance-specific) -> LIF spikes -> sparse prompt P_hat -> x + P_hat.

    B (c, L, r) starts at zero, so P_hat = 0 at step 0 and the prompted model is the plain linear probe;
    W ~ N(0, init_std^2) (docs/lorsp.md). tau, v_th, v_reset are constants, not parameters.
    mode      'lif' (LoRSP); the paper's ablations: 'mean' (LPF: the factors averaged, no neurons), 'topk'
              (keep the (1 - sparsity) fraction of largest |mean factor| entries per image), 'dropout' (zero each
              entry of the mean factor with probability `sparsity` in training, no rescaling; identity at evaluation).
    combine   Eq. (9): 'mean' (the method) or one of the alternative readings in EQ9 below.
    orientation  Eq. (5): 'cols' P_k = B (A^k)^T (the method); 'rows' its transpose, A^k B^T.
    """

    def __init__(self, *, size: int, channels: int = 3, factors: int = 4, rank: int = 4, tau: float = 4.0,
                 v_th: float = 0.0, v_reset: float = 0.0, mode: str = 'lif', sparsity: float = 0.0,
                 combine: str = 'mean', orientation: str = 'cols', surrogate: str = 'sigmoid', alpha: float = 4.0,
                 init_std: float = 0.01):
        super().__init__()
        if factors < 1 or rank < 1:
            raise ValueError(f'factors and rank must be >= 1, got n = {factors}, r = {rank}')
        if not tau > 1:
            raise ValueError(f'tau must be > 1 (the leak divides the input by tau; at 1 there is no leak), got {tau}')
        if mode not in ('lif', *ABLATIONS) or combine not in ('mean', *EQ9):
            raise ValueError(f'mode must be one of {("lif", *ABLATIONS)} and combine one of {("mean", *EQ9)}')
        if orientation not in ORIENTATIONS or surrogate not in SURROGATES:
            raise ValueError(f'orientation must be one of {ORIENTATIONS}, surrogate one of {SURROGATES}')
        if mode in ('topk', 'dropout') and not 0.0 <= sparsity < 1.0:
            raise ValueError(f'sparsity is the fraction of prompt entries zeroed, in [0, 1); got {sparsity}')
        self.n, self.r, self.tau, self.v_th, self.v_reset = factors, rank, tau, v_th, v_reset
        self.mode, self.sparsity, self.combine, self.orientation = mode, sparsity, combine, orientation
        self.surrogate, self.alpha = surrogate, alpha
        self.B = nn.Parameter(torch.zeros(channels, size, rank))  # the shared low-rank basis, (c, L, r)
        self.W = nn.Parameter(torch.randn(size, factors * rank) * init_std)  # the spatial projection, (L, n r)
        self._stats = None  # diagnostics gathered in evaluation (pop_stats)

    def forward(self, x):  # (B, c, L, L) -> (B, c, L, L)
        L = self.W.shape[0]
        if x.shape[-2:] != (L, L):
            raise ValueError(f'LoRSP was built for {L} x {L} images and got '
                             f'{x.shape[-2]} x {x.shape[-1]}: build it with size={x.shape[-1]} or resize the images')
        P_hat, spike_rate = self.sparse_prompt(x)  # Eqs. (4)-(9)
        if not self.training:
            self._record(P_hat, spike_rate)
        # Eq. (10): x_hat = x + P_hat; the backbone's normalization comes after
        return x + P_hat

    def sparse_prompt(self, x):  # (B, c, L, L) -> P_hat (B, c, L, L), firing rate of each step (n,) or None
        if self.mode != 'lif':
            return ABLATIONS[self.mode](self, x)  # no neurons: the paper's ablations (below)
        if self.combine != 'mean':
            return eq9_variant(self, x)  # another reading of Eq. (9) (below)
        # Eq. (4): A_x = x W, each image row projected; Split_n: A^k = A_x[..., k r:(k + 1) r]
        A = (x @ self.W).unflatten(-1, (self.n, self.r))  # (B, c, L, n r) -> (B, c, L, n, r)
        V = torch.full_like(x, self.v_reset)  # V_0: a fresh state for every image and every forward
        P_hat, rates = torch.zeros_like(x), []
        for k in range(self.n):  # the factors are the neurons' time steps
            P_k = self.prompt_factor(A[..., k, :])  # Eq. (5): (B, c, L, L)
            S_k, _, V = lif_step(P_k, V, tau=self.tau, v_th=self.v_th, v_reset=self.v_reset, spike=self.spike)
            P_hat = P_hat + S_k * P_k  # Eq. (9): sum_t S_t P_t ...
            if not self.training:
                rates.append(S_k.mean())  # a diagnostic (pop_stats)
        return P_hat / self.n, torch.stack(rates) if rates else None  # ... (1/n) sum_t S_t P_t

    def prompt_factor(self, A_k):  # Eq. (5): (B, c, L, r) -> P_k (B, c, L, L)
        if self.orientation == 'cols':
            return self.B @ A_k.transpose(-1, -2)  # P_k[c, i, j] = sum_t B[c, i, t] A^k[c, j, t]
        return A_k @ self.B.transpose(-1, -2)  # rows: P_k[c, i, j] = sum_t A^k[c, i, t] B[c, j, t]

    def prompt_factors(self, x):  # all n factors, stacked: (B, c, L, L) -> (B, n, c, L, L) (figures, Eq. 9 variants)
        A = (x @ self.W).unflatten(-1, (self.n, self.r))  # (B, c, L, n, r)
        return torch.stack([self.prompt_factor(A[..., k, :]) for k in range(self.n)], 1)

    def spike(self, v):
        return SpikeFunction.apply(v, self.alpha, self.surrogate)

    # ---- diagnostics: spike rate of each time step and density of P_hat, accumulated in evaluation ----

    @torch.no_grad()
    def _record(self, P_hat, spike_rate):  # sums kept on the device: no wait for the GPU per batch
        if self._stats is None:
            self._stats = {'nonzero': 0, 'entries': 0, 'spikes': 0, 'images': 0}
        self._stats['nonzero'] = self._stats['nonzero'] + (P_hat != 0).sum(dtype=torch.float64)
        self._stats['entries'] += P_hat.numel()
        if spike_rate is not None:
            self._stats['spikes'] = self._stats['spikes'] + spike_rate.double() * len(P_hat)
            self._stats['images'] += len(P_hat)

    def pop_stats(self) -> dict:
        """{'prompt_density': fraction of non-zero P_hat entries, 'spike_rate': [mean S_t for t = 1..n]} since the last
        call, over evaluation forwards only."""
        s, self._stats = self._stats, None
        if s is None:
            return {}
        out = {'prompt_density': float(s['nonzero']) / max(s['entries'], 1)}
        if s['images']:
            out['spike_rate'] = [round(float(v), 4) for v in (s['spikes'] / s['images']).tolist()]
        return out

    @torch.no_grad()
    def figures(self, images) -> dict:
        """The paper's Fig. 5 and 3b for some images (B, c, L, L): 'prompts', a row per image (the image | P_hat, 0.5
        grey = 0, scaled per image | the prompted image), and 'factor_correlation', the n x n Pearson correlation of
        the factors P_1..P_n, averaged over the images."""
        was_training = self.training
        self.train(False)
        P_hat, _ = self.sparse_prompt(images)  # (B, c, L, L)
        P = self.prompt_factors(images).flatten(2)  # (B, n, c L L)
        self.train(was_training)
        shown = 0.5 + P_hat / (2 * P_hat.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1))
        rows = torch.stack([images, shown, (images + P_hat).clamp(0, 1)], 1)  # (B, 3, c, L, L)
        correlation = torch.stack([torch.corrcoef(p) for p in P]).nan_to_num(0.0).mean(0)  # (n, n)
        return {'prompts': rows.cpu(), 'factor_correlation': correlation.cpu()}

    @staticmethod
    def num_trainable(size, factors, rank, channels=3):
        return size * rank * (channels + factors)  # Eqs. (13)-(15): #B = c L r, #W = L n r


# ---- the ablations (docs/lorsp.md): no neurons, the mean of the factors instead ----

def mean_factor(m: LoRSP, x):  # (1/n) sum_k P_k: (B, c, L, L)
    # Eq. (5) is linear in A^k, so the mean of the n products is one product with the mean of the A^k
    A = (x @ m.W).unflatten(-1, (m.n, m.r)).mean(-2)  # (B, c, L, n, r) -> (B, c, L, r)
    return m.prompt_factor(A)


def lpf(m, x):  # LPF: a dense instance-specific prompt
    return mean_factor(m, x), None


def topk(m, x):  # keep the largest (1 - sparsity) fraction of |mean factor| per image, zero the rest
    P = mean_factor(m, x)
    flat = P.flatten(1)  # (B, c L L)
    keep = flat.shape[1] - round(m.sparsity * flat.shape[1])  # entries kept in each image
    if keep == 0:
        return torch.zeros_like(P), None
    # a threshold, not a sort: the smallest |entry| that is kept, the keep-th largest, found by one selection per
    # image; entries tied with it are kept too (at init, when every entry is 0, all of them: the gradient reaches B)
    magnitude = flat.abs()
    threshold = magnitude.kthvalue(flat.shape[1] - keep + 1, dim=1, keepdim=True).values  # (B, 1)
    return torch.where(magnitude >= threshold, flat, 0.0).view_as(P), None


def dropout(m, x):  # zero each entry with probability `sparsity` at training time, no rescaling
    P = mean_factor(m, x)
    return (P * (torch.rand_like(P) >= m.sparsity) if m.training else P), None


def eq9_variant(m, x):  # LIF over the stacked factors, then an alternative reading of Eq. (9)
    P = m.prompt_factors(x)  # (B, n, c, L, L)
    V, S, H = torch.full_like(x, m.v_reset), [], []
    for t in range(m.n):
        s, h, V = lif_step(P[:, t], V, tau=m.tau, v_th=m.v_th, v_reset=m.v_reset, spike=m.spike)
        S.append(s)
        H.append(h)
    S, H = torch.stack(S, 1), torch.stack(H, 1)  # (B, n, c, L, L)
    return EQ9[m.combine](S, H, P), S.transpose(0, 1).flatten(1).mean(1)


ABLATIONS = {'mean': lpf, 'topk': topk, 'dropout': dropout}  # mode -> how P_hat is made instead
EQ9 = {  # the other readings of Eq. (9) (docs/lorsp.md); 'mean' (the method) is LoRSP.sparse_prompt
    'sum': lambda S, H, P: (S * P).sum(1),  # sum_t S_t P_t (n times larger: interacts with the lr)
    'last': lambda S, H, P: S[:, -1] * P.mean(1),  # the last step's spikes gate the mean factor
    'rate': lambda S, H, P: S.mean(1) * P.mean(1),  # rate-coded gate
    'membrane': lambda S, H, P: (S * H).mean(1),  # the spikes gate the membrane potential
}
