"""Contract tests for every METHODS key: train.main runs it end to end, trainable_params equals the method's closed
form, the output has K logits, additive methods are the frozen model at step 0, and two steps of the method's own
optimizer change only the method's parameters (the backbone's state_dict stays bit-identical)."""
import pytest
import torch
import torch.nn.functional as F

import baselines
import data
import grouped_vp
import lorsp
import lotep
import train
from conftest import state_equal

SIZE, K = 32, 10
ARGS = ['--model', 'test_vit', '--no-pretrained', '--dataset', 'synthetic', '--img-size', str(SIZE), '--batch-size',
        '16', '--speed-reps', '1']
ADDITIVE = {'lp', 'ft', 'lotep_cp', 'lotep_tk', 'grouped_lorvp', 'deep_lorvp', 'naive_deep_vp', 'lorsp', 'lorsp_lpf',
            'lorsp_topk', 'lorsp_dropout', 'lorvp', 'lora'}
NOT_ADDITIVE = {'ilm_vp', 'flm_vp', 'autovp', 'evp', 'vpt_deep'}  # shrink-and-pad borders; VPT tokens join attention


def test_every_method_is_classified():
    assert ADDITIVE | NOT_ADDITIVE == set(train.METHODS) and not ADDITIVE & NOT_ADDITIVE


def build(method, *extra):
    a = train.resolve(train.parse([*ARGS, '--method', method, '--groups', '4', *extra]))
    torch.manual_seed(0)
    return a, train.METHODS[method](a, K)


def closed_form(method, model, a):
    """Each paper's parameter count, from the method's own formula and the block shapes."""
    F_dim, S = model.backbone.num_features, SIZE
    mapping = a.label_map or train.DEFAULT_LABEL_MAP.get(method, 'lp')
    head = {'lp': (F_dim + 1) * K, 'fm': (1000 + 1) * K}.get(mapping, 0)  # label mappings have no parameters
    if method == 'ft':
        return sum(p.numel() for p in model.parameters())
    if method.startswith('lotep'):
        deep = model.attached[0]
        cls = lotep.CPPrompt if method == 'lotep_cp' else lotep.TuckerPrompt
        return head + sum(cls.num_trainable(s, r) for s, r in zip(deep.shapes, deep.ranks))
    if method in ('grouped_lorvp', 'deep_lorvp'):
        return head + sum(grouped_vp.GroupedLoRVPPrompt.num_trainable(s, 4 if method == 'grouped_lorvp' else s[0], 4)
                          for s in model.attached[0].shapes)
    if method == 'naive_deep_vp':
        return head + sum(grouped_vp.DensePrompt.num_trainable(s) for s in model.attached[0].shapes)
    if method.startswith('lorsp'):
        return head + lorsp.LoRSP.num_trainable(S, a.factors, a.rank)
    if method == 'lorvp':
        return head + baselines.LoRVP.num_trainable(S, a.rank)
    if method in ('ilm_vp', 'flm_vp', 'autovp', 'evp'):
        return head + baselines.BorderPrompt.num_trainable(S, model.prompt.inner)
    if method == 'vpt_deep':
        vit = model.backbone.vit
        return head + baselines.VPTDeep.num_trainable(len(vit.blocks), a.prompt_tokens, vit.embed_dim)
    if method == 'lora':
        return head + sum(baselines.LoRA.num_trainable(m.base.weight.shape, a.lora_rank) for m in model.modules()
                          if isinstance(m, baselines.LoRA))
    return head  # lp


@pytest.mark.parametrize('method', sorted(train.METHODS))
def test_train_main_runs_and_counts_the_closed_form(method, tmp_path):
    s = train.main([*ARGS, '--method', method, '--groups', '4', '--epochs', '1', '--out', str(tmp_path / 'r')])
    a, model = build(method)
    assert s['trainable_params'] == closed_form(method, model, a) > 0
    assert 0 <= s['test_acc'] <= 100 and s['latency_ms'] > 0 and s['step_ratio'] > 0


@pytest.mark.parametrize('method', sorted(train.METHODS))
def test_step0_and_two_steps_change_only_the_method(method):
    a, model = build(method)
    splits = data.load('synthetic', data_dir='.', img_size=SIZE, seed=0)
    x = torch.stack([splits.train[i][0] for i in range(0, 600, 75)])  # 8 images of 8 classes
    y = torch.tensor([splits.train[i][1] for i in range(0, 600, 75)])
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (8, K)
    if method in ADDITIVE:  # the frozen backbone + the same head, without the method's additions
        probe_args = train.resolve(train.parse([*ARGS, '--method', 'lp']))
        probe = train.METHODS['lp'](probe_args, K)
        probe.backbone.load_state_dict({k.replace('.base.', '.'): v for k, v in model.backbone.state_dict().items()
                                        if not k.endswith(('.A', '.B'))})
        probe.head.load_state_dict(model.head.state_dict())
        with torch.no_grad():
            assert torch.allclose(out, probe(x), atol=1e-5) if method == 'lora' else torch.equal(out, probe(x))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = train.make_optimizer(a, model)
    for m in model.modules():
        if hasattr(m, 'on_epoch_start'):
            m.on_epoch_start(model, [(x, y)], 0)
    model.train()
    for _ in range(2):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    moved = {n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])}
    assert moved, 'two optimizer steps changed nothing'
    if method == 'ft':
        return
    frozen_state = [k for k in buffers if 'backbone.' + k not in trainable]  # VPT tokens, LoRA A / B live there
    after = model.backbone.state_dict()
    assert state_equal({k: buffers[k] for k in frozen_state}, {k: after[k] for k in frozen_state})
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize('method,mapping', [('vpt_deep', 'fm'), ('lotep_cp', 'ilm'), ('lorvp', 'freq'),
                                            ('lorsp', 'flm')])
def test_any_method_takes_any_output_mapping(method, mapping):
    a, model = build(method, '--label-map', mapping, '--map-k', '2')
    x = torch.rand(3, 3, SIZE, SIZE)
    for m in model.modules():
        if hasattr(m, 'on_epoch_start'):
            m.on_epoch_start(model, [(x, torch.tensor([0, 1, 2]))], 0)
    with torch.no_grad():
        assert model(x).shape == (3, K)
