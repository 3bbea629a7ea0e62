"""The papers' weights and configurations are one flag away: docs/usage.md's table of settings builds, flag for flag, to the
parameter counts it states; default weights are the papers'; CLIP's ViT-B/32 runs with every method."""
import os

import pytest
import timm
import torch
import torch.nn.functional as F

import backbones
import methods
import train
from conftest import ROOT
from flags import parse, resolve
from methods import METHODS, build


def readme_settings():
    """The rows of docs/usage.md's 'Reproduce the papers' settings' table: (setting, train.py flags, trainable params)."""
    text = open(os.path.join(ROOT, 'docs', 'usage.md')).read()
    section = text.split('### Reproduce the papers\' settings', 1)[1].split('\n#', 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) == 3 and cells[1].startswith('`--method'):
            rows.append((cells[0], cells[1].strip('`').split(), int(cells[2].replace(',', ''))))
    return rows


ROWS = readme_settings()


def test_the_readme_table_is_there():
    assert len(ROWS) >= 12


@pytest.mark.parametrize('setting,flags,count', ROWS, ids=[r[0][:40] for r in ROWS])
def test_each_papers_setting_builds_to_the_count_readme_states(setting, flags, count):
    a = resolve(parse([*flags, '--no-pretrained', '--device', 'cpu']))
    if a.method in ('ilm_vp', 'flm_vp', 'autovp', 'evp'):  # border prompts index their border: a real (random) model
        model = build(a)
    else:  # shapes only: the meta device builds ViT-B in milliseconds
        a.device = 'meta'
        with torch.device('meta'):
            model = build(a)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count, setting


@pytest.mark.parametrize('name,tag', [('resnet18', 'tv_in1k'), ('resnet50', 'tv2_in1k'),
                                      ('vit_base_patch16_224', 'augreg2_in21k_ft_in1k'),
                                      ('vit_base_patch16_224_miil', 'in21k'),
                                      ('swin_base_patch4_window7_224', 'ms_in22k'),
                                      ('vit_base_patch32_clip_224', 'openai'), ('convnext_base', 'fb_in22k')])
def test_default_weights_are_the_papers(name, tag):
    assert backbones.resolve_name(name) == f'{name}.{tag}'
    assert backbones.resolve_name(f'{name}.{tag}') == f'{name}.{tag}'
    assert train.resolve(parse(['--method', 'lp', '--model', name, '--no-pretrained'])).model == f'{name}.{tag}'


def test_clip_vit_b32_runs_with_every_method(monkeypatch):
    """CLIP's image tower (pre-norm, quick GELU, CLIP's mean / std) at two blocks of width 64: every method builds,
    takes CLIP's normalization, and trains a step."""
    original = timm.create_model

    def small(name, **kw):
        if name.startswith('vit_base_patch32_clip_224'):
            kw.update(depth=2, embed_dim=64, num_heads=2)
        return original(name, **kw)
    monkeypatch.setattr(backbones.timm, 'create_model', small)
    for method in sorted(METHODS):
        a = resolve(parse(['--method', method, '--model', 'vit_base_patch32_clip_224', '--no-pretrained', '--img-size',
                           '64', '--dataset', 'synthetic', '--device', 'cpu', '--precision', 'fp32', '--rho', '1']))
        model = build(a)
        assert model.normalize.mean.flatten().tolist() == pytest.approx([0.48145466, 0.4578275, 0.40821073])
        x = torch.rand(2, 3, 64, 64)
        methods.Loop(model.eval(), features=model.features,
                     batches=lambda: [(x, torch.tensor([0, 1]))]).epoch_start(0)
        model.train()
        loss = F.cross_entropy(model(x), torch.tensor([0, 1]))
        loss.backward()
        assert torch.isfinite(loss), method
        assert any(p.grad is not None for p in model.parameters() if p.requires_grad), method
