"""Copying one module works: each method module, alone in an empty folder (grouped_vp.py with the lotep.py it builds
on), runs the usage lines of its own docstring on plain timm models, with nothing else of this project importable."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

COPIES = {'lotep': ['lotep.py'], 'grouped_vp': ['lotep.py', 'grouped_vp.py'], 'lorsp': ['lorsp.py'],
          'baselines': ['baselines.py']}


def usage_lines(path):
    """The docstring's indented lines that are Python statements (the usage example), pretrained weights off."""
    doc = ast.get_docstring(ast.parse(open(path).read()))
    lines = []
    for line in doc.splitlines():
        if line.startswith('    '):
            try:
                ast.parse(line.strip())
            except SyntaxError:
                continue
            lines.append(line.strip().replace('pretrained=True', 'pretrained=False'))
    return lines


@pytest.mark.e2e
@pytest.mark.parametrize('module', sorted(COPIES))
def test_a_copied_module_runs_its_docstring_on_plain_timm_models(tmp_path, module):
    for f in COPIES[module]:
        shutil.copy(os.path.join(ROOT, f), tmp_path / f)
    lines = usage_lines(os.path.join(ROOT, f'{module}.py'))
    assert len(lines) >= 3, lines
    script = '\n'.join(['import sys, timm, torch, torchvision', f'from {module} import *',
                        'x = torch.rand(2, 3, 224, 224)', *lines,
                        'assert not any(m in sys.modules for m in ("train", "methods", "backbones", "data"))',
                        'print("ran", len(logits) if "logits" in dir() else "")'])
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    p = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and 'ran' in p.stdout, (script, p.stderr[-2000:])


def test_a_prompt_fed_another_image_size_names_both_sizes():
    import timm
    import torch

    import baselines
    import lorsp
    import lotep
    for prompt in (lorsp.LoRSP(size=32), baselines.LoRVP(size=32)):
        with pytest.raises(ValueError, match='32 x 32 images and got 24 x 24'):
            prompt(torch.rand(1, 3, 24, 24))
    bb = timm.create_model('test_resnet', pretrained=False).eval()
    lotep.lotep(backbone=bb, input_size=(3, 32, 32), kind='cp', r0=2, rho=0.5)
    with pytest.raises(ValueError, match=r'block 0 was prompted for inputs of \(\d+, 8, 8\) per image and got'):
        bb(torch.rand(1, 3, 24, 24))
