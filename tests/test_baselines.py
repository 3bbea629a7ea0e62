"""baselines.py: LoR-VP, border prompts and label mappings, EVP's update, VPT-Deep and LoRA."""
import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import Conv2dSame

import baselines
from backbones import Adapted, normalizer
from conftest import state_equal


def test_lorvp_count_zero_init_and_per_channel_product():
    p = baselines.LoRVP(size=224, rank=4)
    assert sum(q.numel() for q in p.parameters()) == baselines.LoRVP.num_trainable(224, 4) == 5_376
    x = torch.rand(2, 3, 224, 224)
    assert torch.equal(p(x), x)
    with torch.no_grad():
        p.B.normal_()
    P = p(x) - x
    for c in range(3):
        assert torch.allclose(P[0, c], p.B[c] @ p.A[c], atol=1e-6)


@pytest.mark.parametrize('canvas,inner,expected', [(224, 32, 147_456), (224, 128, 101_376), (224, 192, 39_936),
                                                   (224, 164, 69_840)])
def test_border_prompt_counts(canvas, inner, expected):
    p = baselines.BorderPrompt(canvas=canvas, inner=inner, squash=True)
    assert sum(q.numel() for q in p.parameters()) == baselines.BorderPrompt.num_trainable(canvas, inner) == expected


def test_border_prompt_places_the_shrunk_image_and_never_covers_it():
    p = baselines.BorderPrompt(canvas=16, inner=8, squash=False)
    with torch.no_grad():
        p.delta.normal_()
    x = torch.rand(2, 3, 16, 16)
    out = p(x)
    shrunk = nn.functional.interpolate(x, size=(8, 8), mode='bilinear', antialias=True, align_corners=False)
    assert torch.allclose(out[:, :, 4:12, 4:12], shrunk)  # image content, no prompt on it
    border = p.border()
    assert torch.count_nonzero(border[:, 4:12, 4:12]) == 0 and torch.count_nonzero(border) == p.delta.numel()
    grey = baselines.BorderPrompt(canvas=16, inner=8, squash=True).border()  # ILM-VP / AutoVP start at 0.5
    assert torch.allclose(grey[:, 0, 0], torch.full((3,), 0.5))
    with pytest.raises(ValueError, match='smaller than the canvas'):
        baselines.BorderPrompt(canvas=16, inner=16, squash=True)


def test_greedy_mapping_recovers_a_planted_permutation():
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(1000, generator=g)[:10]  # target t <- source perm[t]
    counts = torch.randint(0, 5, (1000, 10), generator=g).float()
    counts[perm, torch.arange(10)] += 50
    assert baselines.greedy_mapping(counts).squeeze(1).tolist() == perm.tolist()
    multi = baselines.greedy_mapping(counts, k=3)
    assert multi.shape == (10, 3) and len(set(multi.flatten().tolist())) == 30 and multi[:, 0].tolist() == perm.tolist()
    with pytest.raises(ValueError, match='source classes'):
        baselines.greedy_mapping(torch.zeros(5, 10))


class FixedSource(nn.Module):
    """A stand-in model whose 'source prediction' for class y is a planted source class."""

    def __init__(self, perm):
        super().__init__()
        self.perm = perm

    def features(self, x):
        return nn.functional.one_hot(self.perm[x[:, 0].long()], 50).float()


def test_label_map_intervals_ilm_flm():
    perm = torch.tensor([7, 3, 41, 0])
    batches = [(torch.tensor([[c]]).float(), torch.tensor([c])) for c in range(4)] * 3
    ilm = baselines.SourceLabelMap(num_classes=4, num_source=50, interval=1)
    ilm.on_epoch_start(FixedSource(perm), batches, epoch=0)
    assert ilm.mapping.squeeze(1).tolist() == perm.tolist()
    logits = torch.randn(2, 50)
    assert torch.equal(ilm(logits), logits[:, perm])
    flm = baselines.SourceLabelMap(num_classes=4, num_source=50, interval=None)
    flm.on_epoch_start(FixedSource(perm), batches, epoch=0)
    flm.on_epoch_start(FixedSource(torch.tensor([1, 2, 3, 4])), batches, epoch=1)  # FLM: computed once only
    assert flm.mapping.squeeze(1).tolist() == perm.tolist()
    ilm.on_epoch_start(FixedSource(torch.tensor([1, 2, 3, 4])), batches, epoch=1)  # ILM: every epoch
    assert ilm.mapping.squeeze(1).tolist() == [1, 2, 3, 4]


def test_evp_update_steps_by_lr_in_l2_norm_and_sgd_for_the_head():
    prompt, head = nn.Parameter(torch.zeros(100)), nn.Parameter(torch.zeros(3))
    opt = baselines.EVPUpdate([dict(params=[prompt], lr=7.0, normalized=True), dict(params=[head], lr=0.1)], lr=0.1)
    prompt.grad, head.grad = torch.randn(100) * 1e-4, torch.ones(3)
    opt.step()
    assert torch.allclose(prompt.norm(), torch.tensor(7.0)) and torch.allclose(head, torch.full((3,), -0.1))


def test_vpt_deep_count_and_tokens_never_reach_the_pooled_feature():
    vit = timm.create_model('test_vit', num_classes=0, img_size=32, global_pool='avg').eval().requires_grad_(False)
    vpt = baselines.VPTDeep(vit=vit, tokens=5)
    assert vpt.prompts.numel() == baselines.VPTDeep.num_trainable(len(vit.blocks), 5, vit.embed_dim)
    lengths = []
    vit.blocks[0].register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))
    seen = {}
    original = vit.forward_head
    vit.forward_head = lambda x, **kw: (seen.setdefault('len', x.shape[1]), original(x, **kw))[1]
    out = vpt(torch.rand(2, 3, 32, 32))
    N = vit.patch_embed.num_patches
    p = vit.num_prefix_tokens
    assert lengths == [p + 5 + N] and seen['len'] == p + N and out.shape == (2, vit.num_features)
    with pytest.raises(ValueError, match='needs a ViT'):
        baselines.VPTDeep(vit=timm.create_model('test_resnet', num_classes=0))


@pytest.mark.parametrize('name', ['test_vit', 'test_resnet', 'test_efficientnet'])
def test_lora_step0_merge_and_frozen_base(name):
    torch.manual_seed(0)
    kw = {'img_size': 32} if name == 'test_vit' else {}
    bb = timm.create_model(name, num_classes=0, **kw).eval().requires_grad_(False)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        plain = bb(x)
    base_state = {k: v.clone() for k, v in bb.state_dict().items()}
    adapters = baselines.add_lora(bb, rank=2, alpha=4.0)
    kinds = {type(a.base) for a in adapters}
    assert kinds <= {nn.Linear, nn.Conv2d, Conv2dSame} and kinds & {nn.Linear, nn.Conv2d}
    assert sum(p.numel() for p in bb.parameters() if p.requires_grad) == sum(
        baselines.LoRA.num_trainable(a.base.weight.shape, 2) for a in adapters)
    with torch.no_grad():
        assert torch.equal(bb(x), plain)  # B = 0
    model = Adapted(backbone=bb, normalize=normalizer(bb), head=nn.Linear(bb.num_features, 4))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    base_now = {k.replace('.base.', '.'): v for k, v in bb.state_dict().items() if not k.endswith(('.A', '.B'))}
    assert state_equal(base_state, base_now)  # base weights unchanged
    assert any(a.B.abs().sum() > 0 for a in adapters)
    model.eval()
    with torch.no_grad():
        unmerged = model(x)
        baselines.merge_lora(model)
        merged = model(x)
    assert not any(isinstance(m, baselines.LoRA) for m in model.modules())
    assert torch.allclose(unmerged, merged, atol=1e-5) and not torch.allclose(unmerged, model.head(plain))


def test_lora_on_a_same_padding_conv():
    conv = Conv2dSame(4, 6, 3, stride=2).requires_grad_(False)
    lora = baselines.LoRA(base=conv, rank=2, alpha=2.0)
    with torch.no_grad():
        lora.B.normal_()
    x = torch.rand(1, 4, 9, 9)
    expected = Conv2dSame(4, 6, 3, stride=2)
    with torch.no_grad():
        expected.weight.copy_(conv.weight + lora.delta())
        expected.bias.copy_(conv.bias)
    assert torch.allclose(lora(x), expected(x), atol=1e-6)
