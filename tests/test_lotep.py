"""lotep.py: Eq. (8) and its edge cases, CP / Tucker against independent oracles, the zero-init and gradient-flow
facts of spec 2.3, parameter formulas on the papers' real backbones (meta device: shapes only, no weights), and the
hooks on every backbone family."""
import copy
import itertools

import pytest
import timm
import torch
import torch.nn as nn

import grouped_vp
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


# ---- parameter counts: closed forms from block-input shapes written here (spec 2.1 / 2.5), on the meta device ----

def meta(name, **kw):
    with torch.device('meta'):
        return timm.create_model(name, num_classes=0, **kw)


def repeat(*groups):  # ((C, H), count), ... -> [(C, H, H), ...]
    return [(C, H, H) for (C, H), n in groups for _ in range(n)]


# Each block's input at 224 px (a stage-first block with internal downsampling sees the previous stage's shape)
BLOCK_INPUTS = {
    'resnet18': repeat(((64, 56), 3), ((128, 28), 2), ((256, 14), 2), ((512, 7), 1)),
    'resnet50': repeat(((64, 56), 1), ((256, 56), 3), ((512, 28), 4), ((1024, 14), 6), ((2048, 7), 2)),
    'vit_base_patch16_224': repeat(((768, 14), 12)),  # D x H_p x W_p on the patch tokens
    'vit_base_patch32_224': repeat(((768, 7), 12)),
    'swin_base_patch4_window7_224': repeat(((128, 56), 2), ((256, 28), 2), ((512, 14), 18), ((1024, 7), 2)),
    'convnext_base': repeat(((128, 56), 3), ((256, 28), 3), ((512, 14), 27), ((1024, 7), 3)),
    'coatnet_2_rw_224': repeat(((128, 112), 1), ((128, 56), 2), ((256, 28), 6), ((512, 14), 14), ((1024, 7), 1)),
    'tf_efficientnet_lite0': repeat(((32, 112), 1), ((16, 112), 1), ((24, 56), 2), ((40, 28), 2), ((80, 14), 3),
                                    ((112, 14), 3), ((192, 7), 4)),
}


@pytest.mark.parametrize('name', sorted(BLOCK_INPUTS))
def test_counts_equal_the_closed_forms_of_the_papers_backbones(name):
    shapes = BLOCK_INPUTS[name]
    d = len(shapes) // 2  # rho = 0.5
    ranks = COSINE.get(d) or lotep.rank_schedule(6, d)
    cp = sum(r * (C + H + W) for r, (C, H, W) in zip(ranks, shapes))  # Sum r_l (C_l + H_l + W_l)
    tk = cp + sum(r ** 3 for r in ranks)  # + Sum r_l^3
    for kind, expected in (('cp', cp), ('tk', tk)):
        p = lotep.lotep(backbone=meta(name), input_size=(3, 224, 224), kind=kind, r0=6, rho=0.5)
        assert (p.L, p.d) == (len(shapes), d) and sum(q.numel() for q in p.parameters()) == expected
    naive = sum(C * H * W for C, H, W in shapes[:d])
    assert sum(q.numel() for q in grouped_vp.naive_deep_vp(backbone=meta(name), input_size=(3, 224, 224),
                                                           rho=0.5).parameters()) == naive
    deep = sum(C * 4 * (H + W) for C, H, W in shapes[:d])
    assert sum(q.numel() for q in grouped_vp.deep_lorvp(backbone=meta(name), input_size=(3, 224, 224), rank=4,
                                                        rho=0.5).parameters()) == deep


def test_fig4a_counts_on_resnet18():
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
    assert count(vit_layout='sequence', kind='tk') + head == 168_659
    assert count() + head == 165_740  # Eq. (8) as printed, patch tokens, d = 4: 166K, not the table's 168K


def test_library_defaults_equal_train_defaults():
    from methods import METHODS
    assert METHODS['lotep_cp'].defaults['init_std'] == METHODS['lotep_tk'].defaults['init_std'] == lotep.INIT_STD
    torch.manual_seed(0)
    bb = timm.create_model('test_resnet', num_classes=0).eval()
    for p in (lotep.CPPrompt(shape=(8, 40, 40), rank=30), lotep.lotep(backbone=bb, input_size=(3, 32, 32)).prompts[0]):
        assert p.b.std().item() == pytest.approx(lotep.INIT_STD, rel=0.1)


# ---- hooks: each prompted block gets exactly X_l + P_l in its layout, against hand-written forwards ----

def swin_tiny():
    return timm.create_model('swin_tiny_patch4_window7_224', img_size=64, window_size=2, embed_dim=16,
                             depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), num_classes=0)


FAMILIES = {'resnet': (lambda: timm.create_model('test_resnet', num_classes=0, zero_init_last=False), 32),
            'vit': (lambda: timm.create_model('test_vit', num_classes=0, img_size=32), 32),
            'swin': (swin_tiny, 64),
            'convnext': (lambda: timm.create_model('test_convnext', num_classes=0), 32),
            'coatnet': (lambda: timm.create_model('test_coatnet', num_classes=0, img_size=64), 64),
            'efficientnet': (lambda: timm.create_model('test_efficientnet', num_classes=0), 32)}


def cp_by_hand(p):  # (P)_{ijk} = sum_t a_ti b_tj c_tk, or the Tucker product
    if isinstance(p, lotep.CPPrompt):
        return (p.a[:, :, None, None] * p.b[:, None, :, None] * p.c[:, None, None, :]).sum(0)
    return torch.einsum('xyz,xi,yj,zk->ijk', p.core, p.U, p.V, p.W)


def hand_forward(family, bb, x, P):
    """timm's forward written out, with P[l] added to block l's input in that family's layout."""
    def add(l, x):
        if l >= len(P):
            return x
        if family == 'vit':  # tokens (B, p + N, D): the patch tokens get P flattened row-major; CLS untouched
            p = bb.num_prefix_tokens
            return torch.cat([x[:, :p], x[:, p:] + P[l].flatten(1).T], 1)
        return x + (P[l].permute(1, 2, 0) if family == 'swin' else P[l])  # Swin: NHWC
    l = 0
    if family == 'resnet':
        x = bb.maxpool(bb.act1(bb.bn1(bb.conv1(x))))
        stages = [(None, layer) for layer in (bb.layer1, bb.layer2, bb.layer3, bb.layer4)]
    elif family == 'vit':
        x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(x))))
        stages = [(None, bb.blocks)]
    elif family == 'swin':
        x = bb.patch_embed(x)
        stages = [(s.downsample, s.blocks) for s in bb.layers]
    elif family == 'convnext':
        x = bb.stem(x)
        stages = [(s.downsample, s.blocks) for s in bb.stages]
    else:  # efficientnet
        x = bb.bn1(bb.conv_stem(x))
        stages = [(None, s) for s in bb.blocks]
    for down, blocks in stages:
        x = down(x) if down is not None else x
        for block in blocks:
            x = block(add(l, x))
            l += 1
    if family == 'vit':
        x = bb.norm(x)
    elif family == 'swin':
        x = bb.norm(x)
    elif family == 'convnext':
        x = bb.norm_pre(x)
    elif family == 'efficientnet':
        x = bb.bn2(bb.conv_head(x))
    return bb.forward_head(x)


@pytest.mark.parametrize('family', ['resnet', 'vit', 'swin', 'convnext', 'efficientnet'])
@pytest.mark.parametrize('kind', ['cp', 'tk'])
def test_each_block_gets_exactly_its_prompt_in_its_layout(family, kind):
    torch.manual_seed(0)
    make, size = FAMILIES[family]
    bb = make().eval().requires_grad_(False)
    x = torch.rand(2, 3, size, size)
    deep = lotep.lotep(backbone=bb, input_size=(3, size, size), kind=kind, r0=3, rho=0.5)
    with torch.no_grad():
        for p in deep.parameters():
            p.normal_()
        P = [cp_by_hand(p) for p in deep.prompts]
        assert deep.d == len(lotep.find_blocks(bb)[0]) // 2 >= 2 and all(torch.count_nonzero(q) for q in P)
        prompted = bb(x)
        deep.detach()  # the hand-written forward runs the bare blocks
        by_hand, plain = hand_forward(family, bb, x, P), hand_forward(family, bb, x, [])
        assert torch.allclose(prompted, by_hand, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(prompted, plain, atol=1e-3)  # the prompts change the output
        assert torch.allclose(bb(x), plain, atol=1e-5)  # detach restores timm's forward


@pytest.mark.parametrize('family', sorted(FAMILIES))
@pytest.mark.parametrize('kind', ['cp', 'tk'])
def test_step0_identity_and_a_nonzero_prompt_changes_the_output(family, kind):
    torch.manual_seed(0)
    make, size = FAMILIES[family]
    bb = make().eval().requires_grad_(False)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        plain = bb(x)
    deep = lotep.lotep(backbone=bb, input_size=(3, size, size), kind=kind, r0=3, rho=1.0)
    with torch.no_grad():
        assert torch.equal(bb(x), plain)  # zero channel factors: the frozen model exactly
        for p in deep.prompts:
            (p.a if kind == 'cp' else p.U).normal_()
        assert not torch.allclose(bb(x), plain, atol=1e-3)  # ... and the hooks do apply the prompts


def test_the_hook_adds_out_of_place_and_intermediates_agree_with_and_without_grad():
    torch.manual_seed(0)
    vit = timm.create_model('test_vit', num_classes=0, img_size=32).eval().requires_grad_(False)
    deep = lotep.lotep(backbone=vit, input_size=(3, 32, 32), r0=2, rho=1.0)
    with torch.no_grad():
        for p in deep.parameters():
            p.normal_()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        _, kept_no_grad = vit.forward_intermediates(x)
    _, kept_grad = vit.forward_intermediates(x)
    assert len(kept_grad) == len(vit.blocks)
    assert all(torch.equal(a, b) for a, b in zip(kept_no_grad, kept_grad))
    outputs = []  # a hook that keeps a block's output without copying it sees the same as one that copies
    handles = [b.register_forward_hook(lambda m, a, o: outputs.append((o, o.clone()))) for b in vit.blocks]
    with torch.no_grad():
        vit(x)
    for h in handles:
        h.remove()
    assert all(torch.equal(o, c) for o, c in outputs)


def test_prompts_follow_the_model_through_deepcopy_and_torch_save(tmp_path):
    torch.manual_seed(0)
    bb = timm.create_model('test_resnet', num_classes=0, zero_init_last=False).eval().requires_grad_(False)
    deep = lotep.lotep(backbone=bb, input_size=(3, 32, 32), r0=2, rho=1.0)
    model = Adapted(backbone=bb, normalize=normalizer(bb), head=nn.Linear(bb.num_features, 3), attached=[deep])
    with torch.no_grad():
        for p in deep.parameters():
            p.normal_()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        copy_ = copy.deepcopy(model)
        copy_.attached[0].prompts[0].a.mul_(3)  # the copy's prompt changes: the copy's output, and only it
        assert not torch.allclose(copy_(x), out, atol=1e-4) and torch.equal(model(x), out)
        torch.save(model, tmp_path / 'model.pt')
        loaded = torch.load(tmp_path / 'model.pt', weights_only=False)
        assert torch.equal(loaded(x), out)
        for p in loaded.attached[0].parameters():
            p.zero_()  # the loaded model's hooks read the loaded prompts
        assert not torch.allclose(loaded(x), out, atol=1e-4) and torch.equal(model(x), out)


def test_building_prompts_never_changes_the_backbone():
    """The shape probe runs in eval mode and restores every module's mode: a train-mode forward of a blank image
    would overwrite BatchNorm running statistics."""
    bb = timm.create_model('test_efficientnet', num_classes=0)  # timm's default: train mode
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    modes = {n: m.training for n, m in bb.named_modules()}
    lotep.lotep(backbone=bb, input_size=(3, 32, 32), rho=1.0).detach()
    assert state_equal(before, bb.state_dict())
    assert modes == {n: m.training for n, m in bb.named_modules()}


def test_vit_cls_untouched_and_patch_order():
    vit = timm.create_model('test_vit', num_classes=0, img_size=32).eval()
    deep = lotep.lotep(backbone=vit, input_size=(3, 32, 32), r0=2, rho=1.0)
    C, Hp, Wp = deep.shapes[0]
    one_hot = torch.zeros(C, Hp, Wp)
    one_hot[5, 1, 0] = 1.0  # channel 5 at grid (i, j) = (1, 0)
    tokens = deep.laid_out(one_hot)  # (p + N, D)
    p = vit.num_prefix_tokens
    assert tokens.shape == (p + Hp * Wp, C) and torch.count_nonzero(tokens[:p]) == 0
    assert tokens[p + 1 * Wp + 0, 5] == 1.0 and torch.count_nonzero(tokens) == 1
    deep.detach()
    seq = lotep.lotep(backbone=vit, input_size=(3, 32, 32), rho=0.2, vit_layout='sequence')
    assert seq.shapes[0] == (C, p + Hp * Wp, 1)


def test_unknown_backbone_and_bad_depth_are_clear_errors():
    class NoBlocks(nn.Module):
        def forward(self, x):
            return x
    with pytest.raises(ValueError, match="cannot find the blocks of model 'NoBlocks'"):
        lotep.lotep(backbone=NoBlocks(), input_size=(3, 8, 8))
    bb = timm.create_model('test_resnet', num_classes=0)
    with pytest.raises(ValueError, match='linear probing'):
        lotep.lotep(backbone=bb, input_size=(3, 32, 32), rho=0.05)
