"""serve.py and predict.py: a run's prompt file is small and rebuilds the run's model exactly; predict.py classifies
images and reproduces a run's test accuracy; mixed tasks on one backbone give every image its own task's output; files
that do not fit are refused by name."""
import json
import os

import pytest
import torch
from PIL import Image

from tools import predict
from tools import serve
from tools.serve import read_prompt
from tools.serve import load_run
import train
from conftest import needs_lite0

pytestmark = needs_lite0
SYNTH = ['--model', 'tf_efficientnet_lite0', '--dataset', 'synthetic', '--img-size', '32', '--batch-size', '16',
         '--epochs', '1', '--train-per-class', '8', '--precision', 'fp32', '--lr', '0.2']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Tasks trained on one backbone (the offline ImageNet weights): an input prompt, deep prompts, LoRSP; and ft."""
    root = tmp_path_factory.mktemp('runs')
    out = {}
    for method in ('lorvp', 'lotep_cp', 'lorsp', 'ft'):
        lr = ['--lr', '1e-4'] if method == 'ft' else []  # Adam at 0.2 explodes the fine-tuned backbone's loss
        out[method] = train.main([*SYNTH, '--method', method, *lr, '--out', str(root / method)])
        out[method]['dir'] = root / method
    return out


def test_every_run_writes_a_small_prompt_file_that_rebuilds_it(runs):
    path = runs['lorvp']['dir'] / 'prompt.safetensors'
    assert runs['lorvp']['prompt_file'] == str(path)
    assert os.path.getsize(path) < 80_000  # LoR-VP at 32 px (768) and a 10-class head (12,810): about 55 KB
    state, meta = read_prompt(str(path))
    assert meta['method'] == 'lorvp' and meta['model'] == 'tf_efficientnet_lite0.in1k' and meta['img_size'] == 32
    assert meta['classes'] == [str(k) for k in range(10)] and meta['test_acc'] == runs['lorvp']['test_acc']
    assert meta['mean'] == [0.5, 0.5, 0.5] and len(meta['weights_sha256']) == 64
    assert set(state) == {'prompt.B', 'prompt.A', 'head.weight', 'head.bias'}
    a, model, _ = serve.load_task(str(path))
    _, trained = load_run(str(runs['lorvp']['dir']))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    ft = runs['ft']['dir'] / 'prompt.safetensors'  # full fine-tuning writes what it needs: the whole model
    assert os.path.getsize(ft) > 10 * os.path.getsize(path)
    _, ft_model, _ = serve.load_task(str(ft))
    _, ft_trained = load_run(str(runs['ft']['dir']))
    with torch.no_grad():
        assert torch.equal(ft_model(x), ft_trained(x))


def test_predict_reproduces_the_runs_test_accuracy_exactly(runs):
    for method in ('lorvp', 'lotep_cp', 'lorsp'):
        acc = predict.main(['--prompt', str(runs[method]['dir'] / 'prompt.safetensors'), '--dataset', 'synthetic'])
        assert acc == runs[method]['test_acc']


def test_predict_classifies_image_files_and_folders(runs, tmp_path, capsys):
    folder = tmp_path / 'images'
    folder.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new('RGB', (40, 24), colour).save(folder / f'{i}.png')
    rows = predict.main(['--prompt', str(runs['lorsp']['dir'] / 'prompt.safetensors'), str(folder), '--top-k', '3',
                         '--out', str(tmp_path / 'p.json')])
    assert [os.path.basename(r['image']) for r in rows] == ['0.png', '1.png', '2.png']
    assert all(len(r['top']) == 3 and sum(p for _, p in r['top']) <= 1 + 1e-6 for r in rows)
    assert json.loads((tmp_path / 'p.json').read_text()) == json.loads(json.dumps(rows))
    predict.main(['--prompt', str(runs['lorsp']['dir'] / 'prompt.safetensors'), str(folder / '1.png'),
                  '--out', str(tmp_path / 'p.csv')])
    assert (tmp_path / 'p.csv').read_text().splitlines()[0] == 'image,prompt,rank,class,probability'


def test_a_mixed_batch_gives_every_image_its_own_tasks_output(runs):
    paths = [str(runs[m]['dir'] / 'prompt.safetensors') for m in ('lorvp', 'lotep_cp', 'lorsp')]
    server = serve.MultiTask(paths)
    alone = [serve.load_task(p)[1] for p in paths]
    torch.manual_seed(0)
    x, task = torch.rand(9, 3, 32, 32), torch.tensor([0, 1, 2, 2, 1, 0, 1, 2, 0])
    out = server(x, task)
    for i in range(9):
        with torch.no_grad():
            expected = alone[task[i]](x[i:i + 1])[0]
        assert torch.allclose(out[i], expected, atol=1e-5), (i, int(task[i]))
    assert not torch.allclose(out[0], alone[1](x[0:1])[0], atol=1e-3)  # another task's prompt gives another output


def test_files_that_do_not_fit_are_refused_by_name(runs, tmp_path, capsys):
    from safetensors.torch import save_file
    good = str(runs['lorvp']['dir'] / 'prompt.safetensors')
    save_file({'w': torch.zeros(2)}, str(tmp_path / 'foreign.safetensors'))
    (tmp_path / 'corrupt.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": ')
    (tmp_path / 'bad.png').write_text('not an image')
    other = train.main([*SYNTH, '--method', 'lorvp', '--no-pretrained', '--lr', '0.01', '--out',
                        str(tmp_path / 'random')])
    big = train.main([*SYNTH, '--img-size', '64', '--method', 'lorvp', '--lr', '0.01', '--out', str(tmp_path / 'big')])
    cases = [(['--prompt', str(tmp_path / 'nope.safetensors'), str(tmp_path / 'bad.png')], 'no such file'),
             (['--prompt', str(tmp_path / 'foreign.safetensors'), str(tmp_path / 'bad.png')], 'not a prompt file'),
             (['--prompt', str(tmp_path / 'corrupt.safetensors'), str(tmp_path / 'bad.png')], 'not a readable'),
             (['--prompt', good, str(tmp_path / 'bad.png')], 'bad.png: cannot be read as an image'),
             (['--prompt', good, str(tmp_path / 'missing.png')], 'missing.png: no such image'),
             (['--prompt', good, '--prompt', other['prompt_file'], str(tmp_path / 'bad.png')], 'other weights'),
             (['--prompt', good, '--prompt', big['prompt_file'], str(tmp_path / 'bad.png')], '64 px'),
             (['--prompt', good, '--prompt', str(runs['ft']['dir'] / 'prompt.safetensors'), str(tmp_path / 'x.png')],
              'cannot share a backbone'),
             (['--prompt', good, '--dataset', 'cifar10'], 'trained on synthetic')]
    for argv, fragment in cases:
        with pytest.raises(SystemExit) as e:
            predict.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and fragment in err and 'Traceback' not in err, (fragment, err)


def test_a_prompt_file_that_disagrees_with_itself_and_an_out_file_that_exists_are_refused(runs, tmp_path, capsys):
    """A header whose image size, method or classes disagree with its own arguments or tensors, and tensors of another
    shape, are damaged files, named; predict.py --out never replaces a file."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    good = str(runs['lorvp']['dir'] / 'prompt.safetensors')
    with safe_open(good, framework='pt') as f:
        header = f.metadata()
    state = load_file(good)

    def variant(name, state=state, **changed):
        save_file(state, str(tmp_path / name), metadata={**header, **{k: json.dumps(v) for k, v in changed.items()}})
        return str(tmp_path / name)
    cases = [(variant('size.safetensors', img_size=64), 'disagrees with itself'),
             (variant('method.safetensors', method='lotep_cp'), 'disagrees with itself'),
             (variant('classes.safetensors', classes=['a', 'b']), 'do not fit'),  # 2 names, a 10-class head
             (variant('shapes.safetensors', state={**state, 'prompt.B': torch.zeros(3, 32, 5)}), 'do not fit'),
             (variant('extra.safetensors', state={**state, 'prompt.C': torch.zeros(2)}), 'another model')]
    header_less = {k: v for k, v in header.items() if k != 'classes'}
    save_file(state, str(tmp_path / 'lacks.safetensors'), metadata=header_less)
    cases.append((str(tmp_path / 'lacks.safetensors'), 'lacks classes'))
    image = tmp_path / 'x.png'
    Image.new('RGB', (8, 8)).save(image)
    for path, fragment in cases:
        with pytest.raises(SystemExit) as e:
            predict.main(['--prompt', path, str(image)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and fragment in err and 'Traceback' not in err, (fragment, err)
    (tmp_path / 'mine.csv').write_text('keep me')
    with pytest.raises(SystemExit):
        predict.main(['--prompt', good, str(image), '--out', str(tmp_path / 'mine.csv')])
    assert 'exists' in capsys.readouterr().err and (tmp_path / 'mine.csv').read_text() == 'keep me'
