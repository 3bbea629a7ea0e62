"""ImageNet at its real size (#50): a later start decodes no image (the record of checked images), a new or changed
image is decoded again, a damaged one is named before any epoch with nothing lost, under torchrun each process
decodes its own share, a JPEG decodes to the pixels PIL gives, and a cut test set spans its classes."""
import io
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import data
import train
from formats import images
from test_train import fails

RUN = ['--model', 'test_vit', '--no-pretrained', '--img-size', '32', '--batch-size', '16', '--precision', 'fp32',
       '--method', 'lp', '--epochs', '1', '--dataset', 'folder']


def photo(seed, size=(120, 90)):
    """A smooth random picture with some noise (a photo's statistics, roughly), as PIL RGB."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    x = np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC), dtype=np.float32)
    return Image.fromarray(np.clip(x + rng.normal(0, 12, x.shape), 0, 255).astype(np.uint8))


def photos(root, per_class=4, classes=('a', 'b', 'c')):
    for split in ('train', 'test'):
        for i, c in enumerate(classes):
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for k in range(per_class):
                photo(1000 * (split == 'test') + 100 * i + k).save(os.path.join(root, split, c, f'{k}.jpg'), quality=90)
    return str(root)


@pytest.fixture
def decoded(monkeypatch):
    """The files decoded (their 'where'), in order, counted through formats.images.decode."""
    seen, original = [], images.decode

    def counted(raw, where, size=None):
        seen.append(where)
        return original(raw, where, size)
    monkeypatch.setattr(images, 'decode', counted)
    return seen


def test_a_later_start_decodes_nothing_and_a_new_or_changed_image_is_decoded_again(tmp_path, decoded, monkeypatch,
                                                                                   capsys):
    monkeypatch.setenv('VP_CHECKED_DIR', str(tmp_path / 'record'))
    root = photos(tmp_path / 'data')
    first = data.load('folder', data_dir=root, img_size=32, seed=0)
    assert len(decoded) == 24 and len(os.listdir(tmp_path / 'record')) == 2  # train/ and test/: a record each
    said = capsys.readouterr().out  # where the record is, said when images were checked
    assert f'checked 12 images of {os.path.join(root, "train")} (0 others known from {tmp_path / "record"}' in said
    decoded.clear()
    again = data.load('folder', data_dir=root, img_size=32, seed=0)
    assert decoded == [] and again.fingerprint == first.fingerprint and 'checked' not in capsys.readouterr().out
    changed = os.path.join(root, 'train', 'b', '1.jpg')
    photo(999).save(changed, quality=90)  # another picture under the same name
    photo(998).save(os.path.join(root, 'test', 'c', 'new.jpg'), quality=90)
    third = data.load('folder', data_dir=root, img_size=32, seed=0)
    assert sorted(decoded) == sorted([changed, os.path.join(root, 'test', 'c', 'new.jpg')])
    assert f'checked 1 image of {os.path.join(root, "test")} (12 others known' in capsys.readouterr().out
    assert third.fingerprint != first.fingerprint
    decoded.clear()
    same_size = os.path.join(root, 'test', 'a', '0.jpg')
    raw = bytearray(open(same_size, 'rb').read())
    dqt = raw.index(b'\xff\xdb') + 5  # the first quantization table's entries
    raw[dqt + 1] += 1 if raw[dqt + 1] < 255 else -1  # the picture changed, still a whole JPEG, as large as it was
    open(same_size, 'wb').write(raw)
    assert data.load('folder', data_dir=root, img_size=32, seed=0).fingerprint != third.fingerprint
    assert decoded == [same_size]
    assert not [f for _, _, fs in os.walk(root) for f in fs if not f.endswith('.jpg')]  # nothing of ours in it


def test_damaged_images_are_all_named_after_one_pass_and_the_others_are_remembered(tmp_path, decoded, monkeypatch):
    """At ImageNet's size a pass is minutes: one names every damaged image, and what decoded is not checked again."""
    monkeypatch.setenv('VP_CHECKED_DIR', str(tmp_path / 'record'))
    root = photos(tmp_path / 'data')
    bad = [os.path.join(root, 'train', 'a', '1.jpg'), os.path.join(root, 'train', 'c', '3.jpg')]
    whole = {f: open(f, 'rb').read() for f in bad}
    for f in bad:
        open(f, 'wb').write(whole[f][:len(whole[f]) // 2])
    with pytest.raises(data.DataError) as e:
        data.load('folder', data_dir=root, img_size=32, seed=0)
    assert bad[0] in str(e.value) and '1 more cannot be read either: ' + bad[1] in str(e.value)
    for f in bad:
        open(f, 'wb').write(whole[f])
    decoded.clear()
    data.load('folder', data_dir=root, img_size=32, seed=0)
    assert sorted(f for f in decoded if os.sep + 'train' + os.sep in f) == bad  # the 10 others: from the record

def test_train_and_val_drawn_from_one_source_are_checked_at_once(tmp_path, decoded, monkeypatch):
    monkeypatch.setenv('VP_CHECKED_DIR', str(tmp_path / 'record'))
    root, reads, read = photos(tmp_path / 'data'), [], images.Checked.read
    monkeypatch.setattr(images.Checked, 'read', lambda self: reads.append(self.path) or read(self))
    s = data.load('folder', data_dir=root, img_size=32, seed=0, val_split=0.5)
    assert len(s.train) == len(s.val) == 6 and len(decoded) == 24
    assert len(reads) == len(set(reads)) == 2  # train/'s record read once for train and val, test/'s once


def test_a_record_that_cannot_be_written_is_said_once_and_the_run_goes_on(tmp_path, decoded, monkeypatch, capsys):
    (tmp_path / 'afile').write_text('')
    monkeypatch.setenv('VP_CHECKED_DIR', str(tmp_path / 'afile' / 'record'))  # under a file: not even root can
    root = photos(tmp_path / 'data', per_class=2)
    data.load('folder', data_dir=root, img_size=32, seed=0)
    err = capsys.readouterr().err
    assert err.count('note: could not record the checked images') == 2 and 'VP_CHECKED_DIR' in err  # train/, test/
    decoded.clear()
    data.load('folder', data_dir=root, img_size=32, seed=0)
    assert len(decoded) == 12  # checked again, as said


def test_a_truncated_jpeg_in_train_is_named_before_any_epoch_and_nothing_is_lost(tmp_path, capsys, monkeypatch):
    """Also on a machine without network (a cluster's compute node): the damaged file's own message, not the offline
    advice, which is for what a download would bring."""
    monkeypatch.setenv('VP_CHECKED_DIR', str(tmp_path / 'record'))
    monkeypatch.setattr(train.backbones, 'online', lambda: False)
    root = photos(tmp_path / 'data')
    out = str(tmp_path / 'r')
    s = train.main([*RUN, '--data-dir', root, '--out', out])
    bad = os.path.join(root, 'train', 'a', '2.jpg')
    whole = open(bad, 'rb').read()
    open(bad, 'wb').write(whole[:len(whole) // 2])  # after a run on it: a changed file, checked again
    before = {f: open(os.path.join(out, f), 'rb').read() for f in os.listdir(out)}
    for argv in ([*RUN, '--data-dir', root, '--out', str(tmp_path / 'r2')], [*RUN, '--data-dir', root, '--out', out]):
        err = fails(capsys, argv, bad, 'truncated')  # named at set-up, before any epoch
        assert 'without network' not in err.lower()
    assert not os.path.exists(tmp_path / 'r2')  # a failed set-up leaves nothing
    assert {f: open(os.path.join(out, f), 'rb').read() for f in os.listdir(out)} == before  # nothing lost
    open(bad, 'wb').write(whole)
    assert train.main([*RUN, '--data-dir', root, '--out', out]) == s  # whole again: the run made on it, reported


class Group:
    """Two processes' collectives, for threads: gather(obj) returns every rank's obj once all have given theirs."""

    def __init__(self, size):
        self.size, self.slots, self.barrier = size, [None] * size, threading.Barrier(size)

    def gather(self, rank):
        def gather(obj):
            self.slots[rank] = obj
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()
            return out
        return gather


def test_under_torchrun_each_process_decodes_its_own_share(tmp_path, decoded, monkeypatch):
    monkeypatch.setenv('VP_CHECKED_DIR', str(tmp_path / 'record'))
    root = photos(tmp_path / 'data', per_class=5)
    group, out, by = Group(2), [None, None], {}
    original = images.FileImages._decode_all

    def noted(self, indices, **kw):
        by.setdefault(threading.current_thread().name, []).extend(self.files[i] for i in indices)
        return original(self, indices, **kw)
    monkeypatch.setattr(images.FileImages, '_decode_all', noted)

    def process(rank):
        out[rank] = data.load('folder', data_dir=root, img_size=32, seed=0,
                              processes=dict(rank=rank, size=2, gather=group.gather(rank)))
    threads = [threading.Thread(target=process, args=(r,), name=f'rank{r}') for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out[0].fingerprint == out[1].fingerprint is not None
    assert not set(by['rank0']) & set(by['rank1']) and (len(by['rank0']), len(by['rank1'])) == (16, 14)  # 8 + 7 twice
    assert sorted(decoded) == sorted(by['rank0'] + by['rank1'])  # every image once, none twice
    decoded.clear()
    assert data.load('folder', data_dir=root, img_size=32, seed=0).fingerprint == out[0].fingerprint
    assert decoded == []  # process 0 wrote what both checked


def as_pil_decodes_it(raw):
    """The plain path, written here: PIL decodes, EXIF orientation applied, RGB."""
    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        return torch.from_numpy(np.array(ImageOps.exif_transpose(im).convert('RGB'))).permute(2, 0, 1).contiguous()


def test_a_jpeg_decodes_to_the_pixels_pil_gives_in_the_order_the_resize_reads_fastest(monkeypatch):
    """JPEGs through torchvision's decoder (libjpeg-turbo without PIL's copies: docs/speed.md), other files through
    PIL; either way the pixels PIL gives, (h, w, 3) in memory, which the resize reads at its fastest."""
    import torchvision.io
    calls, jpeg = [], torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, 'decode_jpeg', lambda *a, **k: calls.append(1) or jpeg(*a, **k))
    src = photo(0, (200, 150))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    cases = {'4:2:0': dict(quality=90), '4:4:4': dict(quality=95, subsampling=0), 'progressive':
             dict(quality=85, progressive=True), 'exif': dict(quality=90, exif=exif.tobytes())}
    raws = {name: io.BytesIO() for name in [*cases, 'grey', 'cmyk']}
    for name, kw in cases.items():
        src.save(raws[name], 'JPEG', **kw)
    src.convert('L').save(raws['grey'], 'JPEG', quality=90)
    src.convert('CMYK').save(raws['cmyk'], 'JPEG', quality=90)
    raws['png'] = io.BytesIO()
    src.save(raws['png'], 'PNG')
    for name, raw in raws.items():
        x = images.decode(raw.getvalue(), name)
        assert torch.equal(x, as_pil_decodes_it(raw.getvalue())), name
        if name != 'exif':  # as libjpeg writes it: (h, w, 3) in memory
            assert x.stride() == (1, 3 * x.shape[2], 3), name
        assert torch.equal(data.resize(x, 64), data.resize(x.contiguous(), 64)), name  # the same resize either way
    assert len(calls) == 6  # the JPEGs, not the PNG


def test_a_large_jpeg_is_decoded_no_larger_than_the_run_needs(tmp_path):
    """At least 4 times the run's size on both sides: decoded at a reduced scale, never below twice the run's size,
    and resized from there to what a whole decode gives, within a grey level; smaller ones whole."""
    big = photo(1, (1024, 768))
    raw = io.BytesIO()
    big.save(raw, 'JPEG', quality=95)
    assert images.jpeg_size(raw.getvalue()) == (1024, 768)
    for size, decoded_as in ((64, (3, 192, 256)), (96, (3, 192, 256)), (192, (3, 384, 512)), (200, (3, 768, 1024)),
                             (None, (3, 768, 1024))):
        x = images.decode(raw.getvalue(), 'big.jpg', size)
        assert x.shape == decoded_as, size
    whole = data.resize(as_pil_decodes_it(raw.getvalue()), 64)
    assert (data.resize(images.decode(raw.getvalue(), 'big.jpg', 64), 64) - whole).abs().mean() < 1 / 255
    assert images.jpeg_size(b'\xff\xd8\xff\xe0not a jpeg') is None


def test_a_cut_test_set_spans_its_classes_the_same_for_every_run():
    labels = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 10, 10, 10, 10, 210])  # 500 images, grouped by class
    for n in (7, 10, 50, 123):
        picked = data.spread(labels, n)
        assert picked == sorted(set(picked)) and len(picked) == n and picked == data.spread(labels, n)
        counts = np.bincount(labels[picked], minlength=10)
        share = n * np.bincount(labels) / len(labels)  # each class's share of the n, computed here
        assert np.all(np.abs(counts - share) <= 1), (n, counts, share)
    balanced = np.repeat(np.arange(200), 50)  # ImageNet-R's 200 classes, say, in class order
    assert len(set(balanced[data.spread(balanced, 150)])) == 150  # fewer images than classes: each from another one
    assert data.spread(labels, None) == data.spread(labels, 10_000) == list(range(500))


def test_bench_loader_reports_a_worker_the_device_decoder_and_a_step(tmp_path, capsys):
    """tools/bench_loader.py on a small layout: one worker's rate against the plain path, JPEGs decoded on --device
    (here the CPU's decoder, the same code that times nvjpeg on a GPU) and a method's step beside them."""
    from tools import bench_loader, make_imagenet
    layout = str(tmp_path / 'in1k')
    make_imagenet.main([layout, '--images', '30', '--val', '0.1', '--classes', '3', '--size', '160x120', '--workers',
                        '1'])
    threads = torch.get_num_threads()
    try:  # the tool times one worker on one thread, as a DataLoader worker runs
        rates, ratio, steps = bench_loader.main(['--data-dir', layout, '--img-size', '32', '--images', '12', '--rounds',
                                                 '1', '--device-decode', '--batch-size', '4', '--methods', 'lp',
                                                 '--model', 'test_vit'])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert rates['plain'] > 0 and rates['loader'] > 0 and ratio > 0 and steps['lp'] > 0
    assert 'one worker at 32 px, 12 files' in out and 'decoded on cpu' in out and 'lp on test_vit' in out


def test_offline_a_data_set_only_a_download_would_bring_gets_the_offline_advice(tmp_path, capsys, no_network):
    """The other side of the damaged file's message: CIFAR-100 not in --data-dir, no network to fetch it."""
    err = fails(capsys, ['--method', 'lp', '--model', 'test_vit', '--no-pretrained', '--dataset', 'cifar100',
                         '--data-dir', str(tmp_path / 'nothing'), '--img-size', '32', '--out', str(tmp_path / 'r')],
                'could not be downloaded', 'Without network, train on the sample')
    assert err.count('error:') == 1 and not (tmp_path / 'r').exists()
