"""Every method, one parametrized test per property, each written to fail on the classic visual-prompting bugs:

- a prompt cut off from the gradient (.detach()): every own parameter tensor gets a gradient and moves;
- a prompt added after the normalization: the output equals backbone(normalize(x + P)) computed here;
- a prompt never applied: step-0 equality is paired with a non-zero prompt changing the output;
- a backbone that trains or updates its BatchNorm statistics: bit-identical after training;
- parameter counts: closed forms from the backbone's own dimensions, written here;
- bf16 autocast on the CPU, the path a GPU takes: every method runs forward and backward.
"""
import pytest
import torch
import torch.nn.functional as F

import baselines
import data
import grouped_vp
import lotep
import lorsp
import methods
import train
from flags import parse
from methods import METHODS, autocast, build
from test_lorsp import reference_prompt

SIZE, K = 32, 10  # synthetic data: 10 classes
FAST = ['--no-pretrained', '--dataset', 'synthetic', '--img-size', str(SIZE), '--batch-size', '8', '--precision',
        'fp32', '--device', 'cpu', '--groups', '4']
BORDERS = {'ilm_vp', 'flm_vp', 'autovp', 'evp'}
INPUT_SPACE = {'lorvp', 'lorsp', 'lorsp_lpf', 'lorsp_topk', 'lorsp_dropout'} | BORDERS
DEEP = {'lotep_cp', 'lotep_tk', 'grouped_lorvp', 'deep_lorvp', 'naive_deep_vp'}
NOT_ADDITIVE = BORDERS | {'vpt_deep'}  # shrink-and-pad borders; VPT's tokens join attention: no step-0 identity
# Zero-initialised factors (the gradient reaches them first; their partners get one once they have moved)
FIRST = {'lorvp': {'prompt.B'}, 'lotep_cp': {'.a'}, 'lotep_tk': {'.U'}, 'grouped_lorvp': {'.B'}, 'deep_lorvp': {'.B'},
         'lorsp': {'prompt.B'}, 'lorsp_lpf': {'prompt.B'}, 'lorsp_topk': {'prompt.B'}, 'lorsp_dropout': {'prompt.B'},
         'lora': {'.B'}}


def make(method, *extra, model='test_vit'):
    a = train.resolve(parse(['--method', method, '--model', model, *FAST, *extra]))
    a.dataset = 'synthetic'
    return a, build(a).to('cpu')


def batch(n=8):
    splits = data.load('synthetic', data_dir='.', img_size=SIZE, seed=0)
    idx = range(0, 600, 600 // n)
    return torch.stack([splits.train[i][0] for i in idx]), torch.tensor([splits.train[i][1] % K for i in idx])


def own_parameters(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad and not n.startswith('head.')}


def start_epoch(model, x, y):
    was_training = model.training  # label mappings need their pass over the data first (train.py's epoch_start hook)
    methods.Loop(model.eval(), features=model.features, batches=lambda: [(x, y)]).epoch_start(0)
    model.train(was_training)


def test_every_method_is_classified():
    assert INPUT_SPACE | DEEP | {'lp', 'ft', 'lora', 'vpt_deep'} == set(METHODS)


@pytest.mark.parametrize('method', sorted(METHODS))
def test_every_own_parameter_gets_a_gradient_and_moves(method):
    a, model = make(method)
    own = own_parameters(model)
    if method == 'lp':
        assert not own and all(p.requires_grad for p in model.head.parameters())
        return
    assert own
    x, y = batch()
    opt = methods.optimizer(a, model)
    start_epoch(model, x, y)
    before = {n: p.detach().clone() for n, p in own.items()}
    model.train()
    got = []
    for _ in range(2):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        got.append({n for n, p in own.items() if p.grad is not None and p.grad.abs().sum() > 0})
        opt.step()
    first = {n for n in own if any(n.endswith(f) for f in FIRST[method])} if method in FIRST else set(own)
    assert first and got[0] == first, f'first step: gradient reached {sorted(got[0])}, expected {sorted(first)}'
    assert got[0] | got[1] == set(own), f'never a gradient: {sorted(set(own) - got[0] - got[1])}'
    assert {n for n, p in own.items() if not torch.equal(p, before[n])} == set(own)


def normalized(model, x):  # the backbone's normalization written out: (x - mean) / std of its pretrained config
    cfg = model.backbone.pretrained_cfg
    return (x - torch.tensor(cfg['mean']).view(1, 3, 1, 1)) / torch.tensor(cfg['std']).view(1, 3, 1, 1)


def prompted_by_hand(method, prompt, x):
    """x + P, each input-space prompt computed here from its parameters."""
    if method == 'lorvp':
        return x + torch.stack([prompt.B[c] @ prompt.A[c] for c in range(3)])  # P_c = B_c A_c
    if method.startswith('lorsp'):
        return x + reference_prompt(prompt, x)
    S, s = SIZE, prompt.inner
    left = (S - s) // 2
    mask = torch.ones(3, S, S, dtype=torch.bool)
    mask[:, left:left + s, left:left + s] = False
    border = torch.zeros(3 * S * S)
    border[mask.flatten()] = torch.sigmoid(prompt.delta) if method != 'evp' else prompt.delta
    shrunk = F.interpolate(x, size=(s, s), mode='bilinear', antialias=True, align_corners=False)
    return F.pad(shrunk, (left, S - s - left, left, S - s - left)) + border.view(3, S, S)


@pytest.mark.parametrize('method', sorted(INPUT_SPACE))
def test_an_input_prompt_acts_before_the_normalization(method):
    a, model = make(method)
    x, y = batch(4)
    start_epoch(model, x, y)
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.normal_(0, 0.3)
        model.eval()
        expected = model.head(model.backbone(normalized(model, prompted_by_hand(method, model.prompt, x))))
        assert torch.allclose(model(x), expected, atol=1e-5)
        assert not torch.allclose(model(x), model.head(model.backbone(normalized(model, x))), atol=1e-3)


@pytest.mark.parametrize('method', sorted(set(METHODS) - NOT_ADDITIVE))
def test_step0_is_the_frozen_model_and_a_nonzero_prompt_changes_it(method):
    a, model = make(method, model='test_efficientnet')
    x, _ = batch(4)
    model.eval()
    with torch.no_grad():
        probe = model.head(model.backbone(normalized(model, x))) if method != 'lora' else None
        if method == 'lora':
            adapters = [m for m in model.modules() if isinstance(m, baselines.LoRA)]
            for m in adapters:
                m.B.zero_()
            out = model(x)
            baselines.merge_lora(model)
            probe = model(x)
            assert torch.allclose(out, probe, atol=1e-5)  # B = 0: the base layers exactly
            return
        assert torch.equal(model(x), probe)
        for p in own_parameters(model).values():
            p.normal_()  # a non-zero prompt
        if method != 'lp':
            assert not torch.allclose(model(x), probe, atol=1e-3), 'a non-zero prompt left the output unchanged'


@pytest.mark.parametrize('method', sorted(set(METHODS) - {'ft'}))
def test_the_backbone_is_bit_identical_after_training(method, tmp_path):
    """One epoch of train.train on a backbone with BatchNorm (ViT for VPT): every weight and running statistic of the
    frozen backbone is unchanged (a backbone left in train mode, or trainable, fails)."""
    backbone = 'test_vit' if method == 'vpt_deep' else 'test_efficientnet'
    a, model = make(method, '--epochs', '1', '--train-per-class', '4', '--test-limit', '8', model=backbone)
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items() if not k.endswith(('.A', '.B'))
              and not k.endswith('prompts')}
    splits = data.load('synthetic', data_dir='.', img_size=SIZE, seed=0, train_per_class=4, test_limit=8)
    a.resume, run = False, train.RunDir(str(tmp_path))
    train.train(a, model, splits, run)
    after = {k.replace('.base.', '.'): v for k, v in model.backbone.state_dict().items()}
    changed = [k for k, v in frozen.items() if not torch.equal(v, after[k.replace('.base.', '.')])]
    assert not changed, changed
    assert any('running_mean' in k for k in frozen) or backbone == 'test_vit'


def closed_form(method, a, model):
    """Each paper's parameter count, from the backbone's own dimensions (timm attributes) and the method's formula."""
    vit = model.backbone.vit if method == 'vpt_deep' else model.backbone
    D, grid, blocks = vit.embed_dim, SIZE // vit.patch_embed.patch_size[0], len(vit.blocks)
    head = {'lp': (D + 1) * K, 'fm': (1000 + 1) * K}.get(a.label_map, 0)  # label maps have no parameters
    d = int(blocks * a.rho + 1e-9) if a.rho else 0
    if method.startswith('lotep'):
        ranks = lotep.rank_schedule(a.rank, d)
        return head + sum(r * (D + grid + grid) + (r ** 3 if method == 'lotep_tk' else 0) for r in ranks)
    if method in ('grouped_lorvp', 'deep_lorvp'):
        return head + d * (a.groups if method == 'grouped_lorvp' else D) * a.rank * (grid + grid)
    if method == 'naive_deep_vp':
        return head + d * D * grid * grid
    if method in BORDERS:
        return head + 3 * (SIZE ** 2 - round(a.image_scale * SIZE) ** 2)
    if method.startswith('lorsp'):
        return head + SIZE * a.rank * (3 + a.factors)  # L r (c + n)
    if method == 'lora':  # r (out + fan_in) on every linear and conv, fan_in = in / groups k^2
        return head + sum(a.lora_rank * (m.out_features + m.in_features) for m in vit.modules()
                          if isinstance(m, torch.nn.Linear)) + \
            sum(a.lora_rank * (m.out_channels + m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
                for m in vit.modules() if isinstance(m, torch.nn.Conv2d))
    if method == 'lorvp':
        return head + 2 * 3 * SIZE * a.rank
    if method == 'vpt_deep':
        return head + blocks * a.prompt_tokens * D
    return head + (sum(p.numel() for p in vit.parameters()) if method == 'ft' else 0)


@pytest.mark.parametrize('method', sorted(METHODS))
def test_train_main_runs_and_counts_the_closed_form(method, tmp_path):
    if method == 'lora':  # count the plain ViT's layers before LoRA wraps them
        a, _ = make(method)
        bare = train.resolve(parse(['--method', 'lp', '--model', 'test_vit', *FAST]))
        model = build(bare)
        expected = closed_form(method, a, model)
    else:
        a, model = make(method)
        expected = closed_form(method, a, model)
    s = train.main(['--method', method, '--model', 'test_vit', *FAST, '--epochs', '1', '--train-per-class', '8',
                    '--out', str(tmp_path / 'r')])
    assert s['trainable_params'] == expected > 0
    assert 0 <= s['test_acc'] <= 100


@pytest.mark.parametrize('method', sorted(METHODS))
def test_every_method_trains_under_bf16_autocast_on_the_cpu(method):
    a, model = make(method, '--precision', 'bf16', model='test_vit' if method == 'vpt_deep' else 'test_efficientnet')
    x, y = batch()
    start_epoch(model, x, y)
    opt = methods.optimizer(a, model)
    model.train()
    with autocast(a):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    with torch.no_grad(), autocast(a):
        assert model(x).shape == (8, K)


@pytest.mark.parametrize('method,mapping', [('vpt_deep', 'fm'), ('lotep_cp', 'ilm'), ('lorvp', 'freq'),
                                            ('lorsp', 'flm')])
def test_any_method_takes_any_output_mapping(method, mapping):
    a, model = make(method, '--label-map', mapping, '--map-k', '2')
    x = torch.rand(3, 3, SIZE, SIZE)
    start_epoch(model, x, torch.tensor([0, 1, 2]))
    with torch.no_grad():
        assert model(x).shape == (3, K)


def test_grouped_prompts_reach_each_block_expanded_by_group():
    """Grouped VP on a CNN against a hand-written forward: block l gets G_k of its channel's group (Eq. 3)."""
    import timm
    from test_lotep import hand_forward
    torch.manual_seed(0)
    bb = timm.create_model('test_resnet', num_classes=0, zero_init_last=False).eval().requires_grad_(False)
    deep = grouped_vp.grouped_lorvp(backbone=bb, input_size=(3, 32, 32), groups=2, rank=2, rho=0.5)
    with torch.no_grad():
        for p in deep.parameters():
            p.normal_()
        P = []
        for p in deep.prompts:
            C = p.shape[0]
            G = [p.B[k] @ p.A[k] for k in range(2)]  # G_k = B_k A_k
            P.append(torch.stack([G[0] if c < (C + 1) // 2 else G[1] for c in range(C)]))  # contiguous groups
        x = torch.rand(2, 3, 32, 32)
        prompted = bb(x)
        deep.detach()
        assert torch.allclose(prompted, hand_forward('resnet', bb, x, P), atol=1e-4)


def test_lotep_input_prompt_option_counts():
    """Spec 2.6: Eq. (8) with patch tokens at d = 3 plus a LoR-VP r = 4 input prompt gives 167,932 (CP) and
    168,213 (TK) on ViT-B/16 with a 200-class head, the hypothesis behind Table 4's 168K."""
    counts = {}
    for method in ('lotep_cp', 'lotep_tk'):
        a = train.resolve(parse(['--method', method, '--model', 'vit_base_patch16_224', '--no-pretrained', '--rho',
                                 '0.25', '--input-prompt', 'lorvp', '--dataset', 'tiny-imagenet', '--device', 'cpu']))
        with torch.device('meta'):
            import timm
            vit = timm.create_model('vit_base_patch16_224', num_classes=0)
            deep = lotep.lotep(backbone=vit, input_size=(3, 224, 224), kind=method[-2:], r0=6, rho=0.25)
        counts[method] = sum(p.numel() for p in deep.parameters()) + 2 * 3 * 224 * 4 + 768 * 200 + 200
        assert a.input_prompt == 'lorvp'
    assert counts == {'lotep_cp': 167_932, 'lotep_tk': 168_213}
    a, model = make('lotep_cp', '--input-prompt', 'lorvp')
    assert isinstance(model.prompt, baselines.LoRVP)
    a, model = make('lotep_cp', '--input-prompt', 'cp')
    assert isinstance(model.prompt, lotep.PixelPrompt) and sum(p.numel() for p in model.prompt.parameters()) == \
        6 * (3 + SIZE + SIZE)
    assert isinstance(make('lorsp')[1].prompt, lorsp.LoRSP)


@pytest.mark.parametrize('method', sorted(METHODS))
def test_channels_last_is_a_memory_order_not_other_maths(method):
    """--channels-last stores the backbone's weights and input channels-last (faster convolutions); the same
    parameters give the same outputs, to float rounding, for every method (deep prompts' hooks included)."""
    model_name = 'test_vit' if method == 'vpt_deep' else 'test_efficientnet'
    _, plain = make(method, model=model_name)
    _, cl = make(method, '--channels-last', model=model_name)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in plain.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    cl.load_state_dict(plain.state_dict())  # the same values, each in its own memory order
    convs = [m.weight for m in cl.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x, y = batch()
    start_epoch(plain, x, y)
    start_epoch(cl, x, y)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), cl.eval()(x), atol=1e-5), method
