"""lorsp.py: spec 4.8 in full (counts, the LIF scalar example, Theta(0) = 1, zero init, surrogate gradients, LPF as
LoRSP with spikes forced to one, instance-specific prompts, top-k), plus an oracle for Eqs. (4)-(5)."""
import os

import pytest
import timm
import torch
import torch.nn as nn

import lorsp
from backbones import Adapted, normalizer


@pytest.mark.parametrize('n,r,expected', [(4, 4, 6_272), (2, 2, 2_240), (11, 2, 6_272), (7, 1, 2_240)])
def test_parameter_counts_match_the_paper(n, r, expected):
    m = lorsp.LoRSP(size=224, factors=n, rank=r)
    assert sum(p.numel() for p in m.parameters()) == lorsp.LoRSP.num_trainable(224, n, r) == expected


def test_lif_scalar_example_and_heaviside_at_zero():
    spike = lambda v: lorsp.SpikeFunction.apply(v, 4.0, 'sigmoid')
    P = torch.tensor([-0.4, 2.0]).view(1, 2)  # (B, n)
    S, H = lorsp.lif(P, tau=4.0, v_th=0.0, v_reset=0.0, spike=spike)
    assert torch.allclose(H, torch.tensor([[-0.1, 0.425]])) and S.tolist() == [[0.0, 1.0]]
    # V_1 = H_1 (no spike) = -0.1 enters step 2: H_2 = -0.1 + (2.0 + 0.1) / 4 = 0.425; then the hard reset to 0
    P3 = torch.tensor([[-0.4, 2.0, 0.0]])
    S3, H3 = lorsp.lif(P3, tau=4.0, v_th=0.0, v_reset=0.0, spike=spike)
    assert H3[0, 2] == 0.0 and S3[0, 2] == 1.0  # V_2 = 0 after the spike; Theta(0) = 1
    assert spike(torch.tensor([0.0, -1e-7, 1e-7])).tolist() == [1.0, 0.0, 1.0]


def test_surrogate_gradients_are_finite_nonzero_while_spikes_stay_binary():
    for surrogate in ('sigmoid', 'atan'):
        m = lorsp.LoRSP(size=16, factors=3, rank=2, surrogate=surrogate)
        with torch.no_grad():
            m.B.normal_()
        P = m.factors(torch.rand(2, 3, 16, 16)).detach().requires_grad_(True)
        S, H = lorsp.lif(P, tau=m.tau, v_th=m.v_th, v_reset=m.v_reset, spike=m.spike)
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
    P = m.factors(x)  # (1, n, c, L, L)
    A = x[0] @ m.W  # Eq. (4): (c, L, n r)
    for k in range(2):
        A_k = A[:, :, k * 3:(k + 1) * 3]  # Split along the last dimension: (c, L, r)
        for c in range(3):
            assert torch.allclose(P[0, k, c], m.B[c] @ A_k[c].T, atol=1e-6)  # Eq. (5): P_k = B (A^k)^T
    m.orientation = 'rows'
    assert torch.allclose(m.factors(x), P.transpose(-1, -2), atol=1e-6)


def test_zero_prompt_at_init_equals_the_linear_probe():
    torch.manual_seed(0)
    bb = timm.create_model('test_vit', num_classes=0, img_size=32).eval().requires_grad_(False)
    head = nn.Linear(bb.num_features, 5)
    prompt = lorsp.LoRSP(size=32)
    x = torch.rand(4, 3, 32, 32)
    assert torch.count_nonzero(prompt.sparse_prompt(x)) == 0
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
    assert torch.allclose(lpf.sparse_prompt(x), forced.sparse_prompt(x), atol=1e-6)
    P = m.sparse_prompt(x)
    assert P.shape == (3, 3, 12, 12) and not torch.allclose(P[0], P[1]) and not torch.allclose(P[1], P[2])
    assert 0 < (P != 0).float().mean() < 1  # sparse: some entries are gated off


@pytest.mark.parametrize('sparsity', [0.1, 0.2, 0.5, 0.8])
def test_topk_keeps_exactly_the_requested_fraction_and_dropout_only_in_training(sparsity):
    m = lorsp.LoRSP(size=10, factors=2, rank=2, mode='topk', sparsity=sparsity)
    with torch.no_grad():
        m.B.normal_()
    x = torch.rand(4, 3, 10, 10)
    P = m.sparse_prompt(x)
    kept = 300 - round(sparsity * 300)
    assert (P != 0).flatten(1).sum(1).tolist() == [kept] * 4
    dense = m.factors(x).mean(1)
    kept_mask = P.flatten(1) != 0
    magnitude = dense.abs().flatten(1)
    for i in range(4):  # the kept entries are the largest |mean factor| ones, unchanged
        assert magnitude[i][kept_mask[i]].min() >= magnitude[i][~kept_mask[i]].max()
    assert torch.equal(P.flatten(1)[kept_mask], dense.flatten(1)[kept_mask])
    d = lorsp.LoRSP(size=10, factors=2, rank=2, mode='dropout', sparsity=sparsity)
    d.load_state_dict(m.state_dict())
    d.eval()
    assert torch.equal(d.sparse_prompt(x), dense)
    d.train()
    torch.manual_seed(1)
    zeroed = (d.sparse_prompt(torch.rand(64, 3, 10, 10)) == 0).float().mean().item()
    assert abs(zeroed - sparsity) < 0.02


def test_stats_and_figures(tmp_path):
    m = lorsp.LoRSP(size=16, factors=3, rank=2)
    with torch.no_grad():
        m.B.normal_()
    m.eval()
    with torch.no_grad():
        m(torch.rand(5, 3, 16, 16))
    stats = m.pop_stats()
    assert len(stats['spike_rate']) == 3 and all(0 < s < 1 for s in stats['spike_rate'])
    assert 0 < stats['prompt_density'] < 1 and m.pop_stats() == {}
    m.train()
    paths = lorsp.save_figures(m, torch.rand(4, 3, 16, 16), str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ['prompts.png', 'factor_correlation.png']
    assert all(os.path.getsize(p) > 500 for p in paths) and m.training  # the mode is restored
    from PIL import Image
    assert Image.open(paths[0]).size[0] > 3 * 16  # a 3-column grid


def test_bad_options_are_clear():
    with pytest.raises(ValueError, match='--tau'):
        lorsp.LoRSP(size=8, tau=0.5)
    with pytest.raises(ValueError, match='--sparsity'):
        lorsp.LoRSP(size=8, mode='topk', sparsity=1.0)
    with pytest.raises(ValueError, match='--factors'):
        lorsp.LoRSP(size=8, factors=0)
