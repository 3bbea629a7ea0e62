"""grouped_vp.py: Eq. (3)'s channel expansion (even and uneven), its extremes, counts, and the shared attach rule."""
import pytest
import timm
import torch

import grouped_vp
import lotep


def randomized(prompt):
    with torch.no_grad():
        for p in prompt.parameters():
            p.normal_()
    return prompt


def test_uneven_groups_are_contiguous_and_balanced():
    p = randomized(grouped_vp.GroupedLoRVPPrompt(shape=(10, 6, 5), groups=4, rank=2))
    assert p.group_of_channel.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]  # first C mod g groups get ceil(C / g)
    P = p()
    assert P.shape == (10, 6, 5)
    G = torch.bmm(p.B, p.A)
    for c, k in enumerate(p.group_of_channel.tolist()):
        assert torch.equal(P[c], G[k])
    assert len({tuple(P[c].flatten().tolist()) for c in range(10)}) == 4


def test_one_group_is_one_shared_map_and_c_groups_is_per_channel_lorvp():
    shared = randomized(grouped_vp.GroupedLoRVPPrompt(shape=(7, 4, 4), groups=1, rank=2))()
    assert all(torch.equal(shared[c], shared[0]) for c in range(7))
    per_channel = randomized(grouped_vp.GroupedLoRVPPrompt(shape=(7, 4, 4), groups=7, rank=2))
    P = per_channel()
    for c in range(7):  # deep LoR-VP: channel c is its own B_c A_c
        assert torch.allclose(P[c], per_channel.B[c] @ per_channel.A[c])
    P[3].sum().backward()
    touched = [c for c in range(7) if per_channel.B.grad[c].abs().sum() > 0]
    assert touched == [3]


def test_counts_zero_init_and_the_shared_depth_rule():
    assert grouped_vp.GroupedLoRVPPrompt.num_trainable((64, 56, 56), 8, 4) == 8 * 4 * 112
    bb = timm.create_model('test_resnet', num_classes=0).eval().requires_grad_(False)
    size = (3, 32, 32)
    g = grouped_vp.grouped_lorvp(backbone=bb, input_size=size, groups=4, rank=2, rho=0.5)
    g.detach()
    d = grouped_vp.deep_lorvp(backbone=bb, input_size=size, rank=2, rho=0.5)
    d.detach()
    n = grouped_vp.naive_deep_vp(backbone=bb, input_size=size, rho=0.5)
    n.detach()
    cp = lotep.lotep(backbone=bb, input_size=size, rho=0.5)
    cp.detach()
    assert g.d == d.d == n.d == cp.d and g.shapes == cp.shapes  # the same blocks as LoTeP
    assert sum(q.numel() for q in g.parameters()) == sum(4 * 2 * (H + W) for C, H, W in g.shapes)
    assert sum(q.numel() for q in d.parameters()) == sum(C * 2 * (H + W) for C, H, W in d.shapes)
    assert sum(q.numel() for q in n.parameters()) == sum(C * H * W for C, H, W in n.shapes)
    for prompts in (g, d, n):
        assert all(torch.count_nonzero(p()) == 0 for p in prompts.prompts)
    with pytest.raises(ValueError, match='exceeds the'):
        grouped_vp.grouped_lorvp(backbone=bb, input_size=size, groups=10_000, rank=2, rho=0.5)
