"""Users' own files read right: every image mode as a viewer shows it (the same in training and predict.py), EXIF
orientation, a truncated JPEG found at load, split files and json from any editor, FGVC's ids as the class names,
predict.py matching a folder's classes by name, a damaged summary.json named by compare.py --report."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import data
from formats.images import FileImages
import layouts
import train
from conftest import needs_cifar10, needs_tiny
from flags import parse
from tools import compare, predict

S = 16  # every test image is S x S: the loader's resize leaves it as it is

rng = np.random.default_rng(0)
GREY = rng.integers(0, 256, (S, S), dtype=np.uint8)
RGB = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
ALPHA = rng.integers(0, 256, (S, S), dtype=np.uint8)
WIDE = rng.integers(0, 65536, (S, S)).astype(np.uint16)
INDEX = rng.integers(0, 8, (S, S), dtype=np.uint8)
PALETTE = rng.integers(0, 256, (8, 3), dtype=np.uint8)


def over_white(rgb, alpha):
    """Independent of the loader: c = a c + (1 - a) 255 for a in [0, 1], then rounded, as floats in [0, 1]."""
    a = alpha[..., None].astype(np.float64) / 255
    return np.round(a * rgb + (1 - a) * 255) / 255


def chw(x):
    """(h, w) or (h, w, 3) float in [0, 1] -> (3, h, w) float32 tensor."""
    x = np.asarray(x, dtype=np.float32)
    return torch.from_numpy(np.repeat(x[None], 3, 0) if x.ndim == 2 else x.transpose(2, 0, 1).copy())


def write_modes(folder):
    """{file name: (3, S, S) expected pixels} for an image of each mode, written into folder."""
    cases = {}

    def save(name, image, expected, **kw):
        image.save(os.path.join(folder, name), **kw)
        cases[name] = chw(expected)
    bits = GREY > 127
    save('1.png', Image.fromarray(bits), bits.astype(np.float32))
    save('L.png', Image.fromarray(GREY), GREY / 255)
    save('LA.png', Image.fromarray(np.stack([GREY, ALPHA], -1), 'LA'), over_white(np.repeat(GREY[..., None], 3, -1),
                                                                                    ALPHA))
    p = Image.fromarray(INDEX, 'P')
    p.putpalette(PALETTE.flatten().tolist())
    save('P.png', p, PALETTE[INDEX] / 255)
    see_through = np.where((INDEX == 3)[..., None], 255, PALETTE[INDEX])  # palette entry 3 transparent: white
    save('P-transparent.png', p, see_through / 255, transparency=3)
    save('RGB.png', Image.fromarray(RGB), RGB / 255)
    save('RGBA.png', Image.fromarray(np.concatenate([RGB, ALPHA[..., None]], -1), 'RGBA'), over_white(RGB, ALPHA))
    cmyk = np.concatenate([RGB, ALPHA[..., None]], -1)  # C, M, Y, K
    k = cmyk[..., 3:].astype(np.float64)
    save('CMYK.tif', Image.fromarray(cmyk, 'CMYK'), np.round((255 - cmyk[..., :3]) * (255 - k) / 255) / 255)
    y, cb, cr = (RGB[..., i].astype(np.float64) for i in range(3))  # JFIF's YCbCr -> RGB
    ycc = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    y + 1.772 * (cb - 128)], -1)
    save('YCbCr.tif', Image.fromarray(RGB, 'YCbCr'), np.round(np.clip(ycc, 0, 255)) / 255)
    save('I16.png', Image.fromarray(WIDE), WIDE / 65535)  # PIL reads it as mode I;16
    big_endian = Image.frombytes('I;16B', (S, S), WIDE.astype('>u2').tobytes())
    save('I16B.tif', big_endian, WIDE / 65535)
    save('I.tif', Image.fromarray(WIDE.astype(np.int32)), WIDE / 65535)  # 32-bit integers holding 16-bit values
    floats = rng.random((S, S), dtype=np.float32)
    save('F.tif', Image.fromarray(floats), floats)
    return cases


def test_every_image_mode_reaches_the_model_as_a_viewer_shows_it(tmp_path):
    """PIL's convert('RGB') turns a 16-bit image white and a float one black; each mode is checked against pixels
    computed here, through the training loader and through predict.py's reader."""
    for split in ('train', 'test'):
        os.makedirs(tmp_path / split / 'a')
    cases = write_modes(str(tmp_path / 'train' / 'a'))
    Image.fromarray(RGB).save(tmp_path / 'test' / 'a' / 'x.png')
    opened = {n: Image.open(tmp_path / 'train' / 'a' / n).mode for n in cases}
    assert opened['I16.png'] == 'I;16' and opened['I16B.tif'] == 'I;16B' and opened['F.tif'] == 'F'
    assert opened['CMYK.tif'] == 'CMYK' and opened['YCbCr.tif'] == 'YCbCr' and opened['P-transparent.png'] == 'P'
    s = data.load('folder', data_dir=str(tmp_path), img_size=S, seed=0)
    files = s.train.base.dataset.files
    for name, expected in cases.items():
        path = str(tmp_path / 'train' / 'a' / name)
        x, _ = s.train[s.train.base.indices.index(files.index(path))]
        tol = 1.5 / 255 if name in ('CMYK.tif', 'YCbCr.tif') else 1e-6  # PIL's integer colour conversions
        assert x.shape == (3, S, S) and (x - expected).abs().max() <= tol, (name, opened[name])
        assert torch.equal(predict.Images([path], S)[0], x), name  # predict.py reads it the same way


def test_images_without_a_meaningful_scale_are_refused_naming_file_and_mode(tmp_path):
    cases = {'F.tif': (Image.fromarray(np.full((S, S), 3.5, np.float32)), 'mode F'),
             'I.tif': (Image.fromarray(np.full((S, S), -7, np.int32)), 'mode I'),
             'LAB.tif': (Image.fromarray(RGB).convert('LAB'), 'mode LAB')}
    for name, (image, fragment) in cases.items():
        image.save(tmp_path / name)
        with pytest.raises(data.DataError) as e:
            FileImages([str(tmp_path / name)], [0])[0]
        assert str(tmp_path / name) in str(e.value) and fragment in str(e.value), str(e.value)
        with pytest.raises(data.DataError, match=fragment):
            predict.Images([str(tmp_path / name)], S)[0]


def test_exif_orientation_is_applied_as_viewers_do(tmp_path):
    """A 40 x 20 photo, left half black, tagged 'rotate 90 degrees clockwise to view' (EXIF orientation 6): a viewer
    shows it 20 wide and 40 high with the black half on top."""
    pixels = np.full((20, 40, 3), 255, np.uint8)
    pixels[:, :20] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / 'photo.jpg', exif=exif, quality=95)  # torchvision's decoder
    Image.fromarray(pixels).save(tmp_path / 'scan.png', exif=exif)  # PIL's (pixels())
    for name in ('photo.jpg', 'scan.png'):
        x, _ = FileImages([str(tmp_path / name)], [0])[0]
        assert x.shape == (3, 40, 20), name
        assert x[:, :20].float().mean() < 10 and x[:, 20:].float().mean() > 245, name


def test_a_truncated_jpeg_is_found_when_the_data_is_loaded(tmp_path):
    for split in ('train', 'test'):
        os.makedirs(tmp_path / split / 'a')
        for k in range(2):
            Image.fromarray(RGB).resize((64, 64)).save(tmp_path / split / 'a' / f'{k}.jpg', quality=90)
    whole = (tmp_path / 'test' / 'a' / '1.jpg').read_bytes()
    (tmp_path / 'test' / 'a' / '1.jpg').write_bytes(whole[:len(whole) // 2])  # its header intact, half its data
    with pytest.raises(data.DataError) as e:
        data.load('folder', data_dir=str(tmp_path), img_size=S, seed=0)  # before any epoch
    assert str(tmp_path / 'test' / 'a' / '1.jpg') in str(e.value) and 'truncated' in str(e.value)


@needs_cifar10
def test_split_files_from_any_editor_load_or_are_named(tmp_path):
    root = tmp_path / 'vtab'
    task = layouts.vtab_task(str(root), 'eurosat', layouts.cifar_images(15, range(10)))
    reference = data.load('vtab-1k:eurosat', data_dir=str(root), img_size=S, seed=0)
    name = os.path.join(task, 'train800val200.txt')
    text = open(name, encoding='utf-8').read()
    for encoded in (b'\xef\xbb\xbf' + text.replace('\n', '\r\n').encode(),  # Notepad: a BOM, Windows line ends
                    text.encode('utf-16')):  # "Unicode" in older Windows editors
        with open(name, 'wb') as f:
            f.write(encoded)
        s = data.load('vtab-1k:eurosat', data_dir=str(root), img_size=S, seed=0)
        assert s.train.base.dataset.files == reference.train.base.dataset.files
        assert s.train.base.labels == reference.train.base.labels
    rows = text.splitlines()
    rows[6] = rows[6].replace('images/', 'images/caf\u00e9_')  # a Latin-1 byte on line 7
    with open(name, 'wb') as f:
        f.write('\n'.join(rows).encode('latin-1'))
    with pytest.raises(data.DataError) as e:
        data.load('vtab-1k:eurosat', data_dir=str(root), img_size=S, seed=0)
    assert f'{name}, line 7: byte 0xe9 is not UTF-8' in str(e.value) and 'save the file as UTF-8' in str(e.value)


def rewrite_json(root, edit):
    for split in ('train', 'val', 'test'):
        path = os.path.join(root, f'{split}.json')
        with open(path) as f:
            rows = json.load(f)
        with open(path, 'w') as f:
            json.dump({k: edit(v) for k, v in rows.items()}, f)


@needs_tiny
def test_fgvc_class_names_are_the_json_ids_and_bad_ids_are_named(tmp_path):
    root = layouts.fgvc_cub(str(tmp_path / 'cub'))  # ids 1..200, as CUB's
    s = data.load('fgvc:cub', data_dir=root, img_size=S, seed=0)
    assert s.classes == [str(i) for i in range(1, 201)]  # the ids, not 0..199
    for split, ds in (('test', s.test),):
        with open(os.path.join(root, f'{split}.json')) as f:
            ids = json.load(f)
        for k in (0, 9, 150):  # the class name of each image's label is the id its json gives it
            path = ds.base.dataset.files[ds.base.indices[k]]
            assert s.classes[ds[k][1]] == str(ids[os.path.relpath(path, os.path.join(root, 'images'))])
    text = shutil.copytree(root, tmp_path / 'text')
    rewrite_json(text, str)  # the same ids as strings: '2' before '10', each image keeps its class
    t = data.load('fgvc:cub', data_dir=str(text), img_size=S, seed=0)
    assert t.classes == s.classes and t.test.base.labels == s.test.base.labels
    with open(text / 'val.json', 'rb') as f:
        raw = f.read()
    with open(text / 'val.json', 'wb') as f:
        f.write(b'\xef\xbb\xbf' + raw)  # a BOM is read
    assert data.load('fgvc:cub', data_dir=str(text), img_size=S, seed=0).classes == s.classes
    for bad, fragment in ((lambda c: [c], 'class id ['), (lambda c: None, 'class id null'),
                          (lambda c: str(c) if c == 7 else c, 'class id "7", expected a integer')):
        broken = shutil.copytree(root, tmp_path / f'bad{len(os.listdir(tmp_path))}')
        rewrite_json(broken, bad)
        with pytest.raises(data.DataError) as e:
            data.load('fgvc:cub', data_dir=str(broken), img_size=S, seed=0)
        assert 'train.json' in str(e.value) and fragment in str(e.value), str(e.value)


@needs_tiny
def test_an_fgvc_run_stores_and_predicts_the_json_ids(tmp_path, capsys):
    root = layouts.fgvc_cub(str(tmp_path / 'cub'))
    s = train.main(['--method', 'lp', '--model', 'test_vit', '--no-pretrained', '--dataset', 'fgvc:cub', '--data-dir',
                    root, '--img-size', '32', '--epochs', '1', '--precision', 'fp32', '--test-limit', '20',
                    '--out', str(tmp_path / 'r')])
    config = json.loads((tmp_path / 'r' / 'config.json').read_text())
    assert config['classes'] == [str(i) for i in range(1, 201)] and s['test_acc'] is not None
    rows = predict.main(['--prompt', str(tmp_path / 'r' / 'prompt.safetensors'),
                         os.path.join(root, 'images', '010.class', '2.jpg'), '--top-k', '200'])
    assert sorted(int(c) for c, _ in rows[0]['top']) == list(range(1, 201))


@needs_cifar10
def test_predict_matches_a_folders_classes_by_name_or_refuses(tmp_path, capsys):
    trained = layouts.image_folder(str(tmp_path / 'four'))  # airplane, automobile, bird, cat
    train.main(['--method', 'lp', '--model', 'test_vit', '--no-pretrained', '--dataset', 'folder', '--data-dir',
                trained, '--img-size', '32', '--epochs', '2', '--precision', 'fp32', '--out', str(tmp_path / 'r')])
    prompt = str(tmp_path / 'r' / 'prompt.safetensors')
    two = shutil.copytree(trained, tmp_path / 'two')  # cat and bird: labels 0 and 1 in this folder, 3 and 2 trained
    for split in ('train', 'val', 'test'):
        for c in ('airplane', 'automobile'):
            shutil.rmtree(two / split / c)
    acc = predict.main(['--prompt', prompt, '--dataset', 'folder', '--data-dir', str(two)])
    rows = predict.main(['--prompt', prompt, '--top-k', '1', *(str(two / 'test' / c) for c in ('bird', 'cat'))])
    right = sum(r['top'][0][0] == os.path.basename(os.path.dirname(r['image'])) for r in rows)  # counted here
    assert len(rows) == 10 and acc == pytest.approx(100.0 * right / len(rows))
    other = shutil.copytree(two, tmp_path / 'other')  # a class the prompt never saw
    for split in ('train', 'test'):
        shutil.copytree(other / split / 'cat', other / split / 'ship')
    capsys.readouterr()
    with pytest.raises(SystemExit):
        predict.main(['--prompt', prompt, '--dataset', 'folder', '--data-dir', str(other)])
    err = capsys.readouterr().err
    assert 'ship' in err and 'airplane, automobile, bird, cat' in err and 'bird, cat, ship' in err


def finished_run(folder, **summary):
    """A run folder as train.py leaves it: summary.json and metrics.jsonl with the same last epoch (a tuning run,
    test_acc None: validation accuracies instead)."""
    os.makedirs(folder)
    tested = summary.get('test_acc', 0) is not None
    epochs = [dict(epoch=0, train_loss=2.0, **(dict(test_acc=30.0) if tested else dict(val_acc=40.0))),
              dict(epoch=1, train_loss=1.5, **(dict(test_acc=41.5) if tested else dict(val_acc=50.0)))]
    with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
        f.write(''.join(json.dumps(e) + '\n' for e in epochs))
    with open(os.path.join(folder, 'summary.json'), 'w') as f:
        json.dump(dict(dict(epochs=2, train_loss=1.5, test_acc=41.5), **summary), f)
    return folder


def test_a_damaged_summary_is_named_and_a_sound_one_read(tmp_path, capsys):
    good = finished_run(str(tmp_path / 'good'))
    assert compare.read_summary(good, 3.0) == dict(epochs=2, train_loss=1.5, test_acc=41.5, wall_s=3.0)
    tuning = finished_run(str(tmp_path / 'tuned'), test_acc=None, final_val_acc=50.0)  # --no-test: validation only
    assert compare.read_summary(tuning, 1.0)['final_val_acc'] == 50.0
    cut = finished_run(str(tmp_path / 'cut'))
    text = open(os.path.join(cut, 'summary.json')).read()
    with open(os.path.join(cut, 'summary.json'), 'w') as f:
        f.write(text[:len(text) // 2])
    cases = {cut: 'not JSON', finished_run(str(tmp_path / 'nan'), train_loss=math.nan): 'train_loss not a finite',
             finished_run(str(tmp_path / 'none'), test_acc=None): 'no final_val_acc',
             finished_run(str(tmp_path / 'tuning'), test_acc=None, final_val_acc=-3.0): 'final_val_acc is -3.0',
             finished_run(str(tmp_path / 'tuning2'), test_acc=None, final_val_acc=45.0): 'final_val_acc differ',
             finished_run(str(tmp_path / 'big'), test_acc=415.0): 'test_acc is 415.0',
             finished_run(str(tmp_path / 'other'), test_acc=40.0): 'test_acc differ from the last epoch',
             finished_run(str(tmp_path / 'short'), epochs=3): 'epochs differ'}
    with open(os.path.join(tmp_path / 'none', 'summary.json')) as f:
        del_acc = json.load(f)
    del del_acc['test_acc']
    missing = finished_run(str(tmp_path / 'missing'))
    with open(os.path.join(missing, 'summary.json'), 'w') as f:
        json.dump(del_acc, f)
    cases[missing] = 'no test_acc'
    for folder, fragment in cases.items():
        result = compare.read_summary(folder, 1.0)
        assert set(result) == {'failed', 'log'} and fragment in result['failed'], (folder, result)
        assert os.path.join(folder, 'summary.json') in result['failed']
    assert capsys.readouterr().err.count(': damaged (') == len(cases)  # each said on the screen too


@needs_tiny
def test_fgvc_runs_as_vpt_does_by_default_and_merged_by_flag(tmp_path, capsys):
    """VPT trains on train.json, chooses the epoch on val.json and reports test.json; --splits final merges train and
    val and validates on nothing."""
    root = layouts.fgvc_cub(str(tmp_path / 'cub'))
    argv = ['--method', 'lp', '--model', 'test_vit', '--no-pretrained', '--dataset', 'fgvc:cub', '--data-dir', root,
            '--img-size', '32', '--epochs', '2', '--precision', 'fp32']
    assert train.resolve(parse(argv)).splits == 'tune' and train.resolve(parse(argv[:4])).splits == 'final'
    vpt = train.main([*argv, '--out', str(tmp_path / 'vpt')])
    assert '(200 train, 200 val, 200 test images' in capsys.readouterr().out
    assert vpt['val_selected_epoch'] in (1, 2) and 'val_selected_test_acc' in vpt
    merged = train.main([*argv, '--splits', 'final', '--out', str(tmp_path / 'merged')])
    assert '(400 train, 0 val, 200 test images' in capsys.readouterr().out and 'val_acc' not in merged
