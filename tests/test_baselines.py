"""baselines.py: LoR-VP, border prompts and label mappings, EVP's update (the official rule, by hand), VPT-Deep and LoRA
(q / v slices of a fused qkv, grouped convs)."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame

import baselines
from backbones import Adapted, normalizer
from conftest import state_equal


def test_lorvp_count_zero_init_and_per_channel_product():
    p = baselines.LoRVP(size=224, rank=4)
    assert sum(q.numel() for q in p.parameters()) == 2 * 3 * 224 * 4 == 5_376
    x = torch.rand(2, 3, 224, 224)
    assert torch.equal(p(x), x)
    with torch.no_grad():
        p.B.normal_()
    P = p(x) - x
    for c in range(3):
        assert torch.allclose(P[0, c], p.B[c] @ p.A[c], atol=1e-6)
    assert p.A.std().item() == pytest.approx(0.01, rel=0.05)  # LoR-VP's N(0, 0.01^2)


@pytest.mark.parametrize('canvas,inner,expected', [(224, 32, 147_456), (224, 128, 101_376), (224, 192, 39_936),
                                                   (224, 164, 69_840)])
def test_border_prompt_counts(canvas, inner, expected):
    p = baselines.BorderPrompt(canvas=canvas, inner=inner, squash=True)
    assert sum(q.numel() for q in p.parameters()) == expected


def test_border_prompt_places_the_shrunk_image_and_never_covers_it():
    p = baselines.BorderPrompt(canvas=16, inner=8, squash=False)
    with torch.no_grad():
        p.delta.normal_()
    x = torch.rand(2, 3, 16, 16)
    out = p(x)
    shrunk = F.interpolate(x, size=(8, 8), mode='bilinear', antialias=True, align_corners=False)
    assert torch.allclose(out[:, :, 4:12, 4:12], shrunk)  # image content, no prompt on it
    border = p.border()
    assert torch.count_nonzero(border[:, 4:12, 4:12]) == 0 and torch.count_nonzero(border) == p.delta.numel()
    grey = baselines.BorderPrompt(canvas=16, inner=8, squash=True).border()  # ILM-VP / AutoVP start at 0.5
    assert torch.allclose(grey[:, 0, 0], torch.full((3,), 0.5))
    with pytest.raises(ValueError, match='smaller than the canvas'):
        baselines.BorderPrompt(canvas=16, inner=16, squash=True)


def test_greedy_mapping_recovers_a_planted_permutation_and_is_one_to_one():
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(1000, generator=g)[:10]  # target t <- source perm[t]
    counts = torch.randint(0, 5, (1000, 10), generator=g).float()
    counts[perm, torch.arange(10)] += 50
    assert baselines.greedy_mapping(counts).squeeze(1).tolist() == perm.tolist()
    multi = baselines.greedy_mapping(counts, k=3)
    assert multi.shape == (10, 3) and len(set(multi.flatten().tolist())) == 30 and multi[:, 0].tolist() == perm.tolist()
    # ties everywhere (one source wins every target's count): still one distinct source per target
    crowded = torch.zeros(50, 10)
    crowded[7] = 100.0
    mapping = baselines.greedy_mapping(crowded).squeeze(1).tolist()
    assert len(set(mapping)) == 10 and mapping.count(7) == 1
    with pytest.raises(ValueError, match='source classes'):
        baselines.greedy_mapping(torch.zeros(5, 10))


class FixedSource(nn.Module):
    """A stand-in model whose 'source prediction' for class y is a planted source class."""

    def __init__(self, perm):
        super().__init__()
        self.perm = perm

    def features(self, x):
        return nn.functional.one_hot(self.perm[x[:, 0].long()], 50).float()


def start_epoch(label_map, source, batches, epoch):
    """What train.py does before an epoch (in one process: the counts are not summed)."""
    if label_map.due(epoch):
        label_map.set_mapping(label_map.count_sources(source.features, batches))


def test_label_map_intervals_ilm_flm():
    perm = torch.tensor([7, 3, 41, 0])
    batches = [(torch.tensor([[c]]).float(), torch.tensor([c])) for c in range(4)] * 3
    ilm = baselines.SourceLabelMap(num_classes=4, num_source=50, interval=1)
    start_epoch(ilm, FixedSource(perm), batches, epoch=0)
    assert ilm.mapping.squeeze(1).tolist() == perm.tolist()
    logits = torch.randn(2, 50)
    assert torch.equal(ilm(logits), logits[:, perm])
    flm = baselines.SourceLabelMap(num_classes=4, num_source=50, interval=None)
    start_epoch(flm, FixedSource(perm), batches, epoch=0)
    start_epoch(flm, FixedSource(torch.tensor([1, 2, 3, 4])), batches, epoch=1)  # FLM: computed once only
    assert flm.mapping.squeeze(1).tolist() == perm.tolist()
    start_epoch(ilm, FixedSource(torch.tensor([1, 2, 3, 4])), batches, epoch=1)  # ILM: every epoch
    assert ilm.mapping.squeeze(1).tolist() == [1, 2, 3, 4]


def test_evps_mode_mapping_takes_each_classs_most_frequent_source_prediction():
    """EVP's non-CLIP head: per target class, the mode of the un-prompted backbone's source predictions over its
    training images; two classes may share a source (not one-to-one, unlike the greedy mapping). Hand-made counts:
    class 0's images are predicted 5, 5, 9; class 1's 5, 5, 5, 2; class 2's 9, 2, 2."""
    predictions = {0: [5, 5, 9], 1: [5, 5, 5, 2], 2: [9, 2, 2]}
    batches = [(torch.tensor([[float(s)]]), torch.tensor([c])) for c, ss in predictions.items() for s in ss]

    class Predicts(nn.Module):
        def features(self, x):
            return nn.functional.one_hot(x[:, 0].long(), 12).float()
    mode = baselines.SourceLabelMap(num_classes=3, num_source=12, interval=None, rule='mode')
    start_epoch(mode, Predicts(), batches, epoch=0)
    assert mode.mapping.squeeze(1).tolist() == [5, 5, 2]  # classes 0 and 1 share source 5
    greedy = baselines.SourceLabelMap(num_classes=3, num_source=12, interval=None)
    start_epoch(greedy, Predicts(), batches, epoch=0)
    assert len(set(greedy.mapping.squeeze(1).tolist())) == 3  # the greedy rule would not share
    with pytest.raises(ValueError, match='mode'):
        baselines.SourceLabelMap(num_classes=3, num_source=12, k=2, rule='mode')


def test_evp_update_is_the_official_rule_normalized_over_the_whole_canvas():
    """EVP's official code: gradient of the full 3 x S x S prompt tensor, divided by its L2 norm over the full tensor,
    then masked to the border. Computed here by hand on a full-canvas tensor, against EVPUpdate on the border-only
    parameters (a norm over the border only would step about 4x too far: the test catches it)."""
    torch.manual_seed(0)
    S, s, lr = 12, 6, 3.0
    prompt = baselines.BorderPrompt(canvas=S, inner=s, squash=False)
    with torch.no_grad():
        prompt.delta.normal_()
    head = nn.Parameter(torch.randn(5, 3 * S * S) * 0.1)
    x, y = torch.rand(4, 3, S, S), torch.tensor([0, 1, 2, 3])

    full = prompt.border().detach().clone().requires_grad_(True)  # the official prompt tensor, image area included
    canvas = torch.zeros(4, 3, S, S)
    canvas[:, :, 3:9, 3:9] = F.interpolate(x, size=(s, s), mode='bilinear', antialias=True, align_corners=False)
    F.cross_entropy((canvas + full).flatten(1) @ head.detach().T, y).backward()
    mask = torch.ones(3, S, S)
    mask[:, 3:9, 3:9] = 0
    expected = full.detach() - lr * mask * full.grad / full.grad.norm()
    assert (mask * full.grad).norm() < 0.9 * full.grad.norm()  # the image area carries part of the norm

    opt = baselines.EVPUpdate([dict(params=[prompt.delta], lr=lr, normalized=True),
                               dict(params=[head], lr=0.1, normalized=False)], prompt=prompt, lr=0.1)
    loss = F.cross_entropy(prompt(x).flatten(1) @ head.T, y)
    loss.backward()
    head_before, head_grad = head.detach().clone(), head.grad.clone()
    opt.step()
    assert torch.allclose(prompt.border(), expected, atol=1e-6)
    assert torch.allclose(head, head_before - 0.1 * head_grad)  # the head: plain SGD (first step: no momentum yet)


def test_vpt_deep_count_init_and_tokens_never_reach_the_pooled_feature():
    vit = timm.create_model('test_vit', num_classes=0, img_size=32, global_pool='avg').eval().requires_grad_(False)
    vpt = baselines.VPTDeep(vit=vit, tokens=5)
    assert vpt.prompts.numel() == len(vit.blocks) * 5 * vit.embed_dim
    v = (6.0 / (3 * vit.patch_embed.patch_size[0] ** 2 + vit.embed_dim)) ** 0.5
    assert vpt.prompts.abs().max() <= v and vpt.prompts.abs().max() > 0.9 * v  # VPT's U(-v, v)
    scaled = baselines.VPTDeep(vit=vit, tokens=5, init_std=0.02)
    assert scaled.prompts.std().item() == pytest.approx(0.02, rel=0.15)
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
    kw = {'test_vit': {'img_size': 32}, 'test_resnet': {'zero_init_last': False}}.get(name, {})  # timm zero-inits
    bb = timm.create_model(name, num_classes=0, **kw).eval().requires_grad_(False)  # ResNet branches' last BN
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        plain = bb(x)
    base_state = {k: v.clone() for k, v in bb.state_dict().items()}
    adapters = baselines.add_lora(bb, rank=2, alpha=4.0)
    kinds = {type(a.base) for a in adapters}
    assert kinds <= {nn.Linear, nn.Conv2d, Conv2dSame} and kinds & {nn.Linear, nn.Conv2d}
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
    assert all(a.B.abs().sum() > 0 for a in adapters)
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


def test_lora_on_a_grouped_conv_factorises_the_grouped_weight():
    conv = nn.Conv2d(8, 16, 3, groups=4, padding=1).requires_grad_(False)  # weight (16, 2, 3, 3)
    lora = baselines.LoRA(base=conv, rank=3, alpha=3.0)
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == 3 * (16 + (8 // 4) * 3 * 3)
    with torch.no_grad():
        lora.B.normal_()
    x = torch.rand(2, 8, 5, 5)
    W = conv.weight + (lora.B[0] @ lora.A[0]).view(16, 2, 3, 3)  # scaling alpha / r = 1
    assert torch.allclose(lora(x), F.conv2d(x, W, conv.bias, padding=1, groups=4), atol=1e-5)


def test_lora_on_q_and_v_of_a_fused_qkv_adapts_only_those_rows():
    vit = timm.create_model('test_vit', num_classes=0, img_size=32).eval().requires_grad_(False)
    D = vit.embed_dim
    adapters = baselines.add_lora(vit, rank=2, alpha=4.0, targets=['q', 'v'])  # scaling alpha / r = 2
    assert len(adapters) == len(vit.blocks) and all(isinstance(a.base, nn.Linear) for a in adapters)
    a = adapters[0]
    assert sum(p.numel() for p in a.parameters() if p.requires_grad) == 2 * 2 * (D + D)  # q and v: r (D + D) each
    with torch.no_grad():
        a.B.normal_()
    delta = a.delta()
    assert torch.count_nonzero(delta[D:2 * D]) == 0  # k untouched
    assert torch.allclose(delta[:D], 2 * a.B[0] @ a.A[0]) and torch.allclose(delta[2 * D:], 2 * a.B[1] @ a.A[1])
    with torch.device('meta'):
        big = timm.create_model('vit_base_patch16_224', num_classes=200)
    adapters = baselines.add_lora(big, rank=8, targets=['q', 'v'], skip=[big.get_classifier()])
    lora = sum(p.numel() for m in adapters for p in (m.A, m.B))
    assert lora == 12 * 2 * 8 * (768 + 768) == 294_912
    assert lora + 768 * 200 + 200 == 448_712  # the LoTeP paper's 449K for LoRA on ViT-B/16, Tiny-ImageNet
