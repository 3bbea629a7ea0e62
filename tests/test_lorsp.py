"""lorsp.py: spec 4.8 in full (counts, the LIF scalar example, Theta(0) = 1, zero init, surrogate gradients, LPF as
LoRSP with spikes forced to one, instance-specific prompts, top-k), an oracle for Eqs. (4)-(5), and the one-pass
forward LoRSP runs (eager, and torch.compile'd for --compile) against a stacked implementation written here as the reference."""
import os

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import lorsp
from backbones import Adapted, normalizer
import runs


# ---- the reference: the first implementation, all n factors stacked as (B, n, c, L, L) ----

def reference_prompt(m: lorsp.LoRSP, x):
    b, c, L, _ = x.shape
    A = (x @ m.W).view(b, c, L, m.n, m.r)  # Eq. (4), (B, c, L, n, r)
    if m.orientation == 'cols':  # Eq. (5)
        P = torch.einsum('cit,bcjkt->bkcij', m.B, A)
    else:
        P = torch.einsum('bcikt,cjt->bkcij', A, m.B)
    if m.mode != 'lif':
        P_hat = P.mean(1)
        if m.mode == 'topk':
            flat = P_hat.flatten(1)
            keep = flat.shape[1] - round(m.sparsity * flat.shape[1])
            mask = torch.zeros_like(flat).scatter_(1, flat.abs().topk(keep, dim=1).indices, 1.0)
            P_hat = (flat * mask).view_as(P_hat)
        elif m.mode == 'dropout' and m.training:
            P_hat = P_hat * (torch.rand_like(P_hat) >= m.sparsity)
        return P_hat
    V, S, H = torch.full_like(P[:, 0], m.v_reset), [], []
    for t in range(P.shape[1]):  # Eqs. (6)-(8)
        h = V + (P[:, t] - (V - m.v_reset)) / m.tau
        s = m.spike(h - m.v_th)
        V = h * (1 - s) + m.v_reset * s
        S.append(s)
        H.append(h)
    S, H = torch.stack(S, 1), torch.stack(H, 1)
    return {'mean': (S * P).mean(1), 'sum': (S * P).sum(1), 'last': S[:, -1] * P.mean(1),
            'rate': S.mean(1) * P.mean(1), 'membrane': (S * H).mean(1)}[m.combine]


def outputs_and_grads(m, x, fn):
    torch.manual_seed(5)  # the same dropout masks
    m.zero_grad()
    P = fn(m, x)
    (P * torch.linspace(-1, 1, P.numel()).view_as(P)).sum().backward()
    return P.detach(), m.B.grad.clone(), m.W.grad.clone()


CASES = [('lif', c, o) for c in ('mean', 'sum', 'last', 'rate', 'membrane') for o in ('cols', 'rows')] + \
    [(mode, 'mean', o) for mode in ('mean', 'topk', 'dropout') for o in ('cols', 'rows')]


@pytest.mark.parametrize('mode,combine,orientation', CASES)
def test_one_pass_equals_the_stacked_reference_in_outputs_and_gradients(mode, combine, orientation):
    torch.manual_seed(0)
    m = lorsp.LoRSP(size=20, factors=3, rank=2, mode=mode, sparsity=0.3, combine=combine, orientation=orientation)
    with torch.no_grad():
        m.B.normal_(0, 0.3)
    m.train()
    x = torch.rand(3, 3, 20, 20)
    ours = outputs_and_grads(m, x, lambda m, x: m.sparse_prompt(x)[0])
    ref = outputs_and_grads(m, x, reference_prompt)
    assert 0 < (ours[0] != 0).float().mean() <= 1
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()


@pytest.mark.e2e
def test_compiled_prompt_equals_eager_in_outputs_and_gradients():
    torch.manual_seed(0)
    m = lorsp.LoRSP(size=12, factors=3, rank=2)
    with torch.no_grad():
        m.B.normal_(0, 0.3)
    x = torch.rand(2, 3, 12, 12)
    eager = outputs_and_grads(m, x, lambda m, x: m(x))
    m.compile()
    compiled = outputs_and_grads(m, x, lambda m, x: m(x))
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('n,r,expected', [(4, 4, 6_272), (2, 2, 2_240), (11, 2, 6_272), (7, 1, 2_240)])
def test_parameter_counts_match_the_paper(n, r, expected):
    m = lorsp.LoRSP(size=224, factors=n, rank=r)
    assert sum(p.numel() for p in m.parameters()) == 224 * r * (3 + n) == expected  # L r (c + n)


def test_lif_scalar_example_hard_reset_and_heaviside_at_zero():
    spike = lambda v: lorsp.SpikeFunction.apply(v, 4.0, 'sigmoid')
    step = lambda P, V: lorsp.lif_step(torch.tensor([P]), torch.tensor([V]), tau=4.0, v_th=0.0, v_reset=0.0,
                                       spike=spike)
    S1, H1, V1 = step(-0.4, 0.0)
    assert H1.item() == pytest.approx(-0.1) and S1.item() == 0.0 and V1.item() == pytest.approx(-0.1)
    S2, H2, V2 = step(2.0, V1.item())  # H_2 = -0.1 + (2.0 + 0.1) / 4 = 0.425: a spike, then the hard reset to 0
    assert H2.item() == pytest.approx(0.425) and S2.item() == 1.0 and V2.item() == 0.0
    S3, H3, V3 = step(0.0, 0.0)  # H = 0 exactly: Theta(0) = 1
    assert H3.item() == 0.0 and S3.item() == 1.0
    S, H, V = lorsp.lif_step(torch.tensor([2.0]), torch.tensor([0.5]), tau=2.0, v_th=0.5, v_reset=-0.3, spike=spike)
    assert H.item() == pytest.approx(0.5 + (2.0 - 0.8) / 2) and S.item() == 1.0 and V.item() == pytest.approx(-0.3)
    assert spike(torch.tensor([0.0, -1e-7, 1e-7])).tolist() == [1.0, 0.0, 1.0]


def test_surrogate_gradients_are_finite_nonzero_while_spikes_stay_binary():
    for surrogate in ('sigmoid', 'atan'):
        m = lorsp.LoRSP(size=16, factors=3, rank=2, surrogate=surrogate)
        P = torch.randn(2, 3, 16, 16, requires_grad=True)
        S, _, _ = lorsp.lif_step(P, torch.zeros_like(P), tau=m.tau, v_th=m.v_th, v_reset=m.v_reset, spike=m.spike)
        assert set(S.unique().tolist()) <= {0.0, 1.0} and 0 < S.mean() < 1
        S.sum().backward()
        assert torch.isfinite(P.grad).all() and P.grad.abs().sum() > 0
    v = torch.tensor([0.3], requires_grad=True)
    lorsp.SpikeFunction.apply(v, 4.0, 'sigmoid').backward()
    s = torch.sigmoid(torch.tensor(1.2))
    assert torch.allclose(v.grad, 4 * s * (1 - s))


def test_factors_match_an_explicit_loop_and_orientations_are_transposes():
    m = lorsp.LoRSP(size=6, factors=2, rank=3)
    with torch.no_grad():
        m.B.normal_()
    x = torch.rand(1, 3, 6, 6)
    P = m.prompt_factors(x)  # (1, n, c, L, L)
    A = x[0] @ m.W  # Eq. (4): (c, L, n r)
    for k in range(2):
        A_k = A[:, :, k * 3:(k + 1) * 3]  # Split along the last dimension: (c, L, r)
        for c in range(3):
            assert torch.allclose(P[0, k, c], m.B[c] @ A_k[c].T, atol=1e-6)  # Eq. (5): P_k = B (A^k)^T
    m.orientation = 'rows'
    assert torch.allclose(m.prompt_factors(x), P.transpose(-1, -2), atol=1e-6)


def test_zero_prompt_at_init_equals_the_linear_probe():
    torch.manual_seed(0)
    bb = timm.create_model('test_vit', num_classes=0, img_size=32).eval().requires_grad_(False)
    head = nn.Linear(bb.num_features, 5)
    prompt = lorsp.LoRSP(size=32)
    x = torch.rand(4, 3, 32, 32)
    assert torch.count_nonzero(prompt.sparse_prompt(x)[0]) == 0
    with_prompt = Adapted(backbone=bb, normalize=normalizer(bb), head=head, prompt=prompt)
    probe = Adapted(backbone=bb, normalize=normalizer(bb), head=head)
    with torch.no_grad():
        assert torch.equal(with_prompt(x), probe(x))
    nn.functional.cross_entropy(with_prompt(x), torch.arange(4)).backward()
    assert prompt.B.grad.abs().sum() > 0  # B learns first; W's gradient is zero while B = 0, as in LoR-VP


def test_lpf_is_lorsp_with_spikes_forced_to_one_and_prompts_are_instance_specific():
    torch.manual_seed(0)
    m = lorsp.LoRSP(size=12, factors=4, rank=2)
    with torch.no_grad():
        m.B.normal_()
    x = torch.rand(3, 3, 12, 12)
    lpf = lorsp.LoRSP(size=12, factors=4, rank=2, mode='mean')
    lpf.load_state_dict(m.state_dict())
    forced = lorsp.LoRSP(size=12, factors=4, rank=2)
    forced.load_state_dict(m.state_dict())
    forced.spike = lambda v: torch.ones_like(v)
    assert torch.allclose(lpf.sparse_prompt(x)[0], forced.sparse_prompt(x)[0], atol=1e-6)
    P = m.sparse_prompt(x)[0]
    assert P.shape == (3, 3, 12, 12) and not torch.allclose(P[0], P[1]) and not torch.allclose(P[1], P[2])
    assert 0 < (P != 0).float().mean() < 1  # sparse: some entries are gated off


@pytest.mark.parametrize('sparsity', [0.1, 0.2, 0.5, 0.8])
def test_topk_keeps_exactly_the_requested_fraction_and_dropout_only_in_training(sparsity):
    m = lorsp.LoRSP(size=10, factors=2, rank=2, mode='topk', sparsity=sparsity)
    with torch.no_grad():
        m.B.normal_()
    x = torch.rand(4, 3, 10, 10)
    P = m.sparse_prompt(x)[0]
    kept = 300 - round(sparsity * 300)
    assert (P != 0).flatten(1).sum(1).tolist() == [kept] * 4
    dense = m.prompt_factors(x).mean(1)
    kept_mask = P.flatten(1) != 0
    magnitude = dense.abs().flatten(1)
    for i in range(4):  # the kept entries are the largest |mean factor| ones, unchanged
        assert magnitude[i][kept_mask[i]].min() >= magnitude[i][~kept_mask[i]].max()
    assert torch.allclose(P.flatten(1)[kept_mask], dense.flatten(1)[kept_mask], atol=1e-6)
    d = lorsp.LoRSP(size=10, factors=2, rank=2, mode='dropout', sparsity=sparsity)
    d.load_state_dict(m.state_dict())
    d.eval()
    assert torch.allclose(d.sparse_prompt(x)[0], dense, atol=1e-6)
    d.train()
    torch.manual_seed(1)
    zeroed = (d.sparse_prompt(torch.rand(64, 3, 10, 10))[0] == 0).float().mean().item()
    assert abs(zeroed - sparsity) < 0.02


def test_stats_in_evaluation_only_and_figures(tmp_path):
    m = lorsp.LoRSP(size=16, factors=3, rank=2)
    with torch.no_grad():
        m.B.normal_()
    m.train()
    m(torch.rand(5, 3, 16, 16))
    assert m.pop_stats() == {}  # training forwards gather none
    m.eval()
    with torch.no_grad():
        m(torch.rand(5, 3, 16, 16))
    stats = m.pop_stats()
    assert len(stats['spike_rate']) == 3 and all(0 < s < 1 for s in stats['spike_rate'])
    assert 0 < stats['prompt_density'] < 1 and m.pop_stats() == {}
    m.train()
    x = torch.rand(4, 3, 16, 16)
    figures = m.figures(x)
    assert figures['prompts'].shape == (4, 3, 3, 16, 16) and torch.equal(figures['prompts'][:, 0], x)
    P = m.prompt_factors(x[:1]).flatten(2)[0]  # (n, c L L): the correlation of image 0, computed by hand
    P = (P - P.mean(1, keepdim=True)) / P.std(1, keepdim=True)
    one = lorsp.LoRSP(size=16, factors=3, rank=2)
    one.load_state_dict(m.state_dict())
    assert torch.allclose(one.figures(x[:1])['factor_correlation'], P @ P.T / (P.shape[1] - 1), atol=1e-5)
    paths = runs.save_figures(figures, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ['prompts.png', 'factor_correlation.png']
    assert m.training  # the mode is restored
    from PIL import Image
    assert Image.open(paths[0]).size == (2 + 3 * 18, 2 + 4 * 18)  # 3 columns, 4 rows of 16 px, 2 px apart
    heat = np.asarray(Image.open(paths[1]).convert('RGB'))
    assert heat.shape == (3 * 32, 3 * 32, 3)  # n x n squares of 32 px
    assert heat[16, 16].tolist() == heat[80, 80].tolist() == [255, 0, 0]  # the diagonal: a correlation of 1, red


def test_bad_options_are_clear():
    with pytest.raises(ValueError, match='tau'):
        lorsp.LoRSP(size=8, tau=0.5)
    with pytest.raises(ValueError, match='sparsity'):
        lorsp.LoRSP(size=8, mode='topk', sparsity=1.0)
    with pytest.raises(ValueError, match='factors'):
        lorsp.LoRSP(size=8, factors=0)


def test_topk_keeps_entries_tied_with_its_threshold(monkeypatch):
    """The keep-th largest |entry| is the threshold; entries tied with it are kept, so at least the requested fraction
    is: |x| = 3, 1, 1, 2, 0.5, 1 with half kept (3): the threshold is 1, and only 0.5 is zeroed. All zero (at init):
    all kept, so that the gradient reaches B."""
    m = lorsp.LoRSP(size=3, factors=1, rank=1, mode='topk', sparsity=0.5)
    P = torch.tensor([3.0, -1.0, 1.0, 2.0, 0.5, 1.0]).view(1, 1, 2, 3)
    monkeypatch.setattr(lorsp, 'mean_factor', lambda m, x: P)
    out, _ = lorsp.topk(m, None)
    assert out.flatten().tolist() == [3.0, -1.0, 1.0, 2.0, 0.0, 1.0]
    P = torch.zeros(1, 1, 2, 3)
    assert torch.equal(lorsp.topk(m, None)[0], P)
