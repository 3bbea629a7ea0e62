"""lotep.py: Eq. (8) and its edge cases, CP / Tucker against independent oracles, the zero-init and gradient-flow
facts of spec 2.3, parameter formulas on the papers' real backbones (meta device: shapes only, no weights), and the
hooks on every backbone family."""
import itertools

import pytest
import timm
import torch
import torch.nn as nn

import lotep
from backbones import Adapted, normalizer
from conftest import state_equal

# ---- Eq. (8) ----

COSINE = {1: [6], 2: [6, 1], 3: [6, 4, 1], 4: [6, 5, 3, 1], 5: [6, 6, 4, 2, 1], 6: [6, 6, 5, 3, 2, 1],
          8: [6, 6, 6, 5, 3, 2, 2, 1], 12: [6, 6, 6, 6, 5, 4, 4, 3, 2, 2, 2, 1]}
DEN_D = {1: [6], 2: [6, 4], 3: [6, 5, 3], 4: [6, 6, 4, 2], 5: [6, 6, 5, 3, 2], 6: [6, 6, 5, 4, 3, 2],
         8: [6, 6, 6, 5, 4, 3, 2, 2], 12: [6, 6, 6, 6, 5, 5, 4, 3, 3, 2, 2, 2]}


@pytest.mark.parametrize('d', sorted(COSINE))
def test_rank_schedule_reference_tables(d):
    assert lotep.rank_schedule(6, d, 'cosine') == COSINE[d]
    assert lotep.rank_schedule(6, d, 'cosine_den_d') == DEN_D[d]


def test_rank_schedule_edge_cases():
    assert lotep.rank_schedule(5, 4) == [5, 4, 2, 1]  # naive ceil gives 5, 4, 3, 1
    assert lotep.rank_schedule(9, 4) == [9, 7, 3, 1]  # naive ceil gives 9, 7, 4, 1
    assert lotep.rank_schedule(13, 4) == [13, 10, 4, 1]
    assert lotep.rank_schedule(1, 5) == [1] * 5
    assert lotep.rank_schedule(6, 0) == []
    assert lotep.rank_schedule(6, 4, 'constant') == [6] * 4
    assert lotep.rank_schedule(6, 6, 'linear') == [6, 5, 4, 3, 2, 1]
    for kind, d in itertools.product(lotep.SCHEDULES, range(1, 30)):
        r = lotep.rank_schedule(7, d, kind)
        assert len(r) == d and r[0] == 7 and all(a >= b for a, b in zip(r, r[1:])) and min(r) >= 1
    assert lotep.depth(100, 0.29) == 29 and lotep.depth(12, 1 / 3) == 4 and lotep.depth(12, 0.33) == 3
    with pytest.raises(ValueError, match='r0'):
        lotep.rank_schedule(0, 4)
    with pytest.raises(ValueError, match='rho'):
        lotep.depth(12, 0.0)
    with pytest.raises(ValueError, match='rho'):
        lotep.depth(12, 1.5)


# ---- CP and Tucker against independent loops ----

def test_cp_equals_a_sum_of_rank_one_outer_products():
    p = lotep.CPPrompt(shape=(5, 4, 3), rank=3)
    nn.init.normal_(p.a)
    expected = torch.zeros(5, 4, 3)
    for t in range(3):
        for i, j, k in itertools.product(range(5), range(4), range(3)):
            expected[i, j, k] += p.a[t, i] * p.b[t, j] * p.c[t, k]
    assert torch.allclose(p(), expected, atol=1e-5)


def test_tucker_equals_mode_products_and_cp_with_an_identity_core():
    p = lotep.TuckerPrompt(shape=(5, 4, 3), rank=2, core_init='normal')
    nn.init.normal_(p.U)
    # X x_1 U x_2 V x_3 W as three successive mode products (U, V, W are rank-first: R x dim)
    x = p.core
    x = torch.tensordot(p.U.T, x, dims=([1], [0]))  # mode 1: (C, R, R)
    x = torch.tensordot(p.V.T, x.permute(1, 0, 2), dims=([1], [0])).permute(1, 0, 2)  # mode 2: (C, H, R)
    x = torch.tensordot(x, p.W, dims=([2], [0]))  # mode 3: (C, H, W)
    assert torch.allclose(p(), x, atol=1e-5)
    tk = lotep.TuckerPrompt(shape=(6, 5, 4), rank=3)  # superdiagonal identity core (the default)
    cp = lotep.CPPrompt(shape=(6, 5, 4), rank=3)
    with torch.no_grad():
        for q in (tk.U, tk.V, tk.W):
            q.normal_()
        cp.a.copy_(tk.U), cp.b.copy_(tk.V), cp.c.copy_(tk.W)
    assert torch.allclose(tk(), cp(), atol=1e-5)


def test_zero_prompt_at_init_and_gradient_flow_with_the_tucker_deadlock():
    G = torch.randn(8, 6, 5)  # a gradient arriving at the prompt
    for prompt, channel in [(lotep.CPPrompt(shape=(8, 6, 5), rank=3), 'a'),
                            (lotep.TuckerPrompt(shape=(8, 6, 5), rank=3), 'U'),
                            (lotep.TuckerPrompt(shape=(8, 6, 5), rank=3, core_init='normal'), 'U')]:
        P = prompt()
        assert torch.equal(P, torch.zeros(8, 6, 5))
        (P * G).sum().backward()
        assert getattr(prompt, channel).grad.abs().sum() > 0
    dead = lotep.TuckerPrompt(shape=(8, 6, 5), rank=3, core_init='zero')
    (dead() * G).sum().backward()
    assert torch.count_nonzero(dead.U.grad) == 0 and torch.count_nonzero(dead.core.grad) == 0  # stuck for ever


# ---- parameter formulas on the papers' backbones (meta device) ----

def meta(name, **kw):
    with torch.device('meta'):
        return timm.create_model(name, num_classes=0, **kw)


@pytest.mark.parametrize('name,L', [('resnet18', 8), ('resnet50', 16), ('vit_base_patch16_224', 12),
                                    ('vit_base_patch32_224', 12), ('swin_base_patch4_window7_224', 24),
                                    ('convnext_base', 36), ('coatnet_2_rw_224', 24), ('tf_efficientnet_lite0', 16)])
def test_every_paper_family_attaches_with_the_closed_form_counts(name, L):
    for kind, cls in (('cp', lotep.CPPrompt), ('tk', lotep.TuckerPrompt)):
        p = lotep.lotep(backbone=meta(name), input_size=(3, 224, 224), kind=kind, r0=6, rho=0.5)
        assert p.L == L and p.d == L // 2 and p.ranks == lotep.rank_schedule(6, L // 2)
        closed = sum(cls.num_trainable(s, r) for s, r in zip(p.shapes, p.ranks))
        assert sum(q.numel() for q in p.parameters()) == closed


def test_resnet_shapes_and_the_fig4a_counts():
    p = lotep.lotep(backbone=meta('resnet50'), input_size=(3, 224, 224), rho=1.0)
    assert p.shapes == [(64, 56, 56)] + [(256, 56, 56)] * 3 + [(512, 28, 28)] * 4 + [(1024, 14, 14)] * 6 + \
        [(2048, 7, 7)] * 2  # the stage-first block's input keeps the previous stage's shape
    counts = [sum(q.numel() for q in lotep.lotep(backbone=meta('resnet18'), input_size=(3, 224, 224), r0=r0,
                                                  rho=1.0).parameters()) for r0 in range(1, 9)]
    assert counts == [1990, 3454, 4166, 4878, 5590, 6302, 7122, 7834]  # spec 2.6, Fig. 4(a) check


def test_vit_b16_counts_against_table_4():
    """796 parameters per rank unit on ViT-B/16. Table 4's 168K / 169K (head 153,800) are reproduced by the
    den_d schedule with patch tokens, or by Eq. (8) on the whole sequence; not by Eq. (8) with patch tokens
    (spec 2.6)."""
    head = 768 * 200 + 200
    count = lambda **kw: sum(q.numel() for q in lotep.lotep(backbone=meta('vit_base_patch16_224'),
                                                             input_size=(3, 224, 224), rho=1 / 3, **kw).parameters())
    assert lotep.CPPrompt.num_trainable((768, 14, 14), 1) == 796
    assert count(schedule='cosine_den_d') + head == 168_128
    assert count(schedule='cosine_den_d', kind='tk') + head == 168_632
    assert count(vit_layout='sequence') + head == 168_290
    assert count() + head == 165_740  # Eq. (8) as printed, patch tokens, d = 4: 166K, not the table's 168K


# ---- hooks on every backbone family (small real models) ----

def swin_tiny():
    return timm.create_model('swin_tiny_patch4_window7_224', img_size=64, window_size=2, embed_dim=16,
                             depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), num_classes=0)


FAMILIES = {'resnet': (lambda: timm.create_model('test_resnet', num_classes=0), 32),
            'vit': (lambda: timm.create_model('test_vit', num_classes=0, img_size=32), 32),
            'swin': (swin_tiny, 64),
            'convnext': (lambda: timm.create_model('test_convnext', num_classes=0), 32),
            'coatnet': (lambda: timm.create_model('test_coatnet', num_classes=0, img_size=64), 64),
            'efficientnet': (lambda: timm.create_model('test_efficientnet', num_classes=0), 32)}


def prompted(family, kind='cp', rho=1.0, **kw):
    torch.manual_seed(0)
    make, size = FAMILIES[family]
    bb = make().eval().requires_grad_(False)
    deep = lotep.lotep(backbone=bb, input_size=(3, size, size), kind=kind, r0=3, rho=rho, **kw)
    model = Adapted(backbone=bb, normalize=normalizer(bb), head=nn.Linear(bb.num_features, 5), attached=[deep])
    return model, deep, torch.rand(4, 3, size, size)


@pytest.mark.parametrize('family', sorted(FAMILIES))
@pytest.mark.parametrize('kind', ['cp', 'tk'])
def test_step0_identity_then_only_prompts_and_head_move(family, kind):
    model, deep, x = prompted(family, kind)
    with torch.no_grad():
        prompted_out = model(x)
        deep.detach()
        plain_out = model(x)
    assert torch.equal(prompted_out, plain_out)
    model, deep, x = prompted(family, kind)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    rest_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    model.train()
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert state_equal(backbone_before, model.backbone.state_dict())
    assert all(p.grad is None for p in model.backbone.parameters())
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, rest_before[n])}
    channel = 'a' if kind == 'cp' else 'U'
    assert {'head.weight', 'head.bias', f'attached.0.prompts.0.{channel}'} <= moved
    assert all(n.startswith(('head.', 'attached.')) for n in moved)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_prompts_reach_only_blocks_below_d_and_detach_restores(family):
    make, size = FAMILIES[family]
    bb = make().eval().requires_grad_(False)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        plain = bb(x)
    deep = lotep.lotep(backbone=bb, input_size=(3, size, size), r0=3, rho=0.5)
    with torch.no_grad():
        for p in deep.parameters():
            p.normal_()
    blocks, _ = lotep.find_blocks(bb)
    raw, seen = {}, {}  # each block's input before the prompt hooks, and as the block receives it
    probes = [b.register_forward_pre_hook(lambda m, a, i=i: raw.__setitem__(i, a[0].clone()), prepend=True)
              for i, b in enumerate(blocks)]
    probes += [b.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, a[0].clone()))
               for i, b in enumerate(blocks)]
    with torch.no_grad():
        assert not torch.allclose(bb(x), plain)
    for h in probes:
        h.remove()
    assert deep.d == len(blocks) // 2 >= 1
    for l in range(len(blocks)):
        added = seen[l] - raw[l]
        if l < deep.d:  # X_l + P_l, P_l laid out for this block and broadcast over the batch
            assert torch.allclose(added, deep.laid_out(deep.prompts[l]()).expand_as(added), atol=1e-5)
            assert torch.count_nonzero(added) > 0
        else:
            assert torch.count_nonzero(added) == 0
    deep.detach()
    assert sum(len(b._forward_pre_hooks) for b in blocks) == 0
    with torch.no_grad():
        assert torch.equal(bb(x), plain)


def test_vit_cls_untouched_and_patch_order():
    model, deep, x = prompted('vit', rho=1.0)
    C, Hp, Wp = deep.shapes[0]
    one_hot = torch.zeros(C, Hp, Wp)
    one_hot[5, 1, 0] = 1.0  # channel 5 at grid (i, j) = (1, 0)
    tokens = deep.laid_out(one_hot)  # (p + N, D)
    p = model.backbone.num_prefix_tokens
    assert tokens.shape == (p + Hp * Wp, C) and torch.count_nonzero(tokens[:p]) == 0
    assert tokens[p + 1 * Wp + 0, 5] == 1.0 and torch.count_nonzero(tokens) == 1
    seq = lotep.lotep(backbone=model.backbone, input_size=(3, 32, 32), rho=0.2, vit_layout='sequence')
    assert seq.shapes[0] == (C, p + Hp * Wp, 1)


def test_swin_prompt_is_laid_out_nhwc():
    model, deep, x = prompted('swin', rho=1.0)
    C, H, W = deep.shapes[0]
    P = torch.randn(C, H, W)
    assert deep.layout == 'nhwc' and torch.equal(deep.laid_out(P), P.permute(1, 2, 0))


def test_eval_builds_prompts_once_until_a_parameter_changes():
    model, deep, x = prompted('resnet')
    calls = {'n': 0}
    original = deep.prompts[0].forward

    def counted():
        calls['n'] += 1
        return original()
    deep.prompts[0].forward = counted
    model.eval()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    assert calls['n'] == 1
    with torch.no_grad():
        deep.prompts[0].a.add_(1.0)
        out = model(x)
    assert calls['n'] == 2
    model.train()
    with torch.no_grad():
        assert torch.allclose(model(x), out, atol=1e-5)  # the cached and rebuilt prompts agree
    assert calls['n'] == 3
    model.eval()
    assert torch.equal(model(x).detach(), out)  # with grad: added out of place; without: in place; same numbers


def test_unknown_backbone_and_bad_depth_are_clear_errors():
    class NoBlocks(nn.Module):
        def forward(self, x):
            return x
    with pytest.raises(ValueError, match="cannot find the blocks of model 'NoBlocks'"):
        lotep.lotep(backbone=NoBlocks(), input_size=(3, 8, 8))
    bb = timm.create_model('test_resnet', num_classes=0)
    with pytest.raises(ValueError, match='linear probing'):
        lotep.lotep(backbone=bb, input_size=(3, 32, 32), rho=0.05)
