"""The GPU path, run on a GPU: every method trains in bf16 at 224 px with its frozen backbone untouched, gradient
checkpointing gives the same gradients in less memory, a killed run
resumes, predict.py reproduces a run's test accuracy, torchrun sets up its NCCL group, and each method's peak memory is
recorded. Skipped without CUDA.

    python -m pytest -q tests/test_cuda.py                               # on a machine with a GPU
    VP_CUDA_TEST_DEVICE=cpu python -m pytest -q tests/test_cuda.py       # a dry run of the same code on the CPU
                                                                         # (32 px, gloo), to check the test itself

VP_CUDA_REPORT=path.json writes the peak memory per method there as well as printing it.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from tools import bench
from tools import predict
import methods
import train
from conftest import ROOT
from flags import parse
from methods import METHODS, build

DRY = os.environ.get('VP_CUDA_TEST_DEVICE') == 'cpu'
DEVICE = 'cpu' if DRY else 'cuda'
SIZE = 32 if DRY else 224
pytestmark = pytest.mark.skipif(not DRY and not torch.cuda.is_available(), reason='needs a CUDA GPU')
RUN = ['--model', 'resnet18', '--no-pretrained', '--dataset', 'synthetic', '--img-size', str(SIZE), '--device',
       DEVICE, '--precision', 'bf16', '--train-per-class', '6', '--batch-size', '32']
MEMORY = {}


def model_of(method):
    return 'vit_small_patch16_224' if method == 'vpt_deep' else 'resnet18'


@pytest.mark.parametrize('method', sorted(METHODS))
def test_every_method_trains_two_steps_in_bf16_with_its_backbone_untouched(method):
    a = train.resolve(parse(['--method', method, *RUN, '--model', model_of(method)]))
    model = build(a)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith('backbone.') and k not in trainable
              and not a.method == 'ft'}
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, SIZE, SIZE, generator=g).to(a.device)
    y = torch.randint(0, 10, (8,), generator=g).to(a.device)
    methods.Loop(model.eval(), features=model.features, batches=lambda: [(x, y)]).epoch_start(0)
    opt = methods.optimizer(a, model)
    if a.device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        bench.train_step(a, model, x, y, opt=opt)
    if a.device.startswith('cuda'):
        MEMORY[method] = torch.cuda.max_memory_allocated() / 2 ** 20
    assert all(torch.isfinite(p).all() for p in model.parameters()), method
    model.eval()
    with torch.no_grad(), train.autocast(a):
        assert torch.isfinite(model(x)).all(), method
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items()), method  # BatchNorm statistics included
    assert next(model.parameters()).device.type == DEVICE


@pytest.mark.parametrize('method', ['lorvp', 'lotep_cp', 'vpt_deep'])
def test_grad_checkpointing_gives_the_same_gradients_in_less_memory(method):
    """--grad-checkpointing on the device, in bf16: the trainable tensors' gradients as without it (bf16's tolerance),
    and on CUDA a lower peak of allocated memory for the step."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, SIZE, SIZE, generator=g).to(DEVICE)
    y = torch.randint(0, 10, (8,), generator=g).to(DEVICE)
    grads, peaks = [], []
    for extra in ([], ['--grad-checkpointing']):
        a = train.resolve(parse(['--method', method, *RUN, '--model', model_of(method), *extra]))
        torch.manual_seed(0)
        model = build(a).train()
        with torch.no_grad():  # every trainable tensor non-zero, the same in both models: the prompt acts
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(p))
        if DEVICE == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with train.autocast(a):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        if DEVICE == 'cuda':
            peaks.append(torch.cuda.max_memory_allocated())
        grads.append({n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=2e-2, atol=1e-4, msg=f'{method} {n}')
    assert not peaks or peaks[1] < peaks[0], (method, peaks)


def test_record_peak_memory_per_method():
    if not MEMORY:
        pytest.skip('no CUDA peak memory on the CPU dry run')
    print('\npeak CUDA memory of two training steps (MB, batch 8, bf16, %d px):' % SIZE)
    for method, mb in sorted(MEMORY.items()):
        print(f'  {method:<15} {mb:8.1f}')
    if os.environ.get('VP_CUDA_REPORT'):
        with open(os.environ['VP_CUDA_REPORT'], 'w') as f:
            json.dump(dict(device=torch.cuda.get_device_name(), img_size=SIZE, batch=8, peak_mb=MEMORY), f, indent=1)


def test_a_killed_run_resumes_and_predict_reproduces_its_accuracy(tmp_path, monkeypatch):
    args = [*RUN, '--method', 'lotep_cp', '--epochs', '2', '--lr', '0.05']
    whole = train.main([*args, '--out', str(tmp_path / 'whole')])
    original = train.Progress.update

    def killed_in_epoch_2(self, i, *rest):
        if self.label.startswith('epoch 2'):
            raise KeyboardInterrupt
        return original(self, i, *rest)
    monkeypatch.setattr(train.Progress, 'update', killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train.main([*args, '--out', str(tmp_path / 'killed')])
    monkeypatch.setattr(train.Progress, 'update', original)
    resumed = train.main(['--resume', '--out', str(tmp_path / 'killed')])
    assert resumed['epochs'] == 2 and len((tmp_path / 'killed' / 'metrics.jsonl').read_text().splitlines()) == 2
    a = torch.load(tmp_path / 'whole' / 'checkpoint.pt', weights_only=False, map_location='cpu')['model']
    b = torch.load(tmp_path / 'killed' / 'checkpoint.pt', weights_only=False, map_location='cpu')['model']
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)  # GPU kernels may not be bitwise
    acc = predict.main(['--prompt', str(tmp_path / 'whole' / 'prompt.safetensors'), '--dataset', 'synthetic',
                        '--device', DEVICE])
    assert acc == whole['test_acc']  # the same device and precision: the same evaluation


def test_torchrun_sets_up_its_group_and_trains_through_it(tmp_path):
    """One process still creates the real group (NCCL for CUDA tensors, gloo beside it for CPU ones) and trains
    through DDP."""
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1', '--standalone',
                        os.path.join(ROOT, 'train.py'), *RUN, '--method', 'lorvp', '--epochs', '1',
                        '--out', str(tmp_path / 'r')], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((tmp_path / 'r' / 'summary.json').read_text())
    assert s['processes'] == 1 and ('gloo' if DRY else 'nccl') in s['backend']


def test_the_loader_keeps_pace_with_the_model_at_224_px(tmp_path):
    """One loader worker's images/s at 224 px from photo-sized JPEGs (tools/bench_loader.py, this codebase's path
    against the plain PIL one) beside a training step of ViT-B/32 (lorsp) and ConvNeXt-B (lotep_cp) on the device: the
    workers a run needs to keep each fed, printed and, with VP_CUDA_REPORT, recorded; and JPEGs decoded on the GPU
    (nvjpeg) with the host CPU it takes, which says whether decoding there is worth building. A dry run: 64 px, small
    models, the CPU's decoder."""
    from tools import bench_loader, make_imagenet
    layout = tmp_path / 'in1k'
    make_imagenet.main([str(layout), '--images', '200', '--val', '0.05', '--workers', '2'])
    size = 64 if DRY else 224
    rates, ratio = bench_loader.worker_rates(bench_loader.files_of(parse_loader(layout), 100), size, rounds=3)
    assert rates['loader'] > 0 and ratio > 1  # the plain path is the slower one
    steps = {}
    for method, model in (('lorsp', 'vit_base_patch32_224'), ('lotep_cp', 'convnext_base')):
        b = parse_loader(layout, model='test_vit' if DRY else model, batch=32 if DRY else 128)
        steps[f'{method} on {b.model}'] = bench_loader.model_rate(b, method, size)
    report = {name: dict(images_per_s=rate, workers_needed=rate / rates['loader']) for name, rate in steps.items()}
    report['loader'] = dict(images_per_s_per_worker=rates['loader'], over_the_plain_path=ratio)
    decoded, cpu = bench_loader.device_decode_rates(bench_loader.files_of(parse_loader(layout), 200), size, DEVICE)
    assert decoded > 0 and cpu >= 0
    report['decoded_on_the_device'] = dict(images_per_s=decoded, host_cpu_ms_per_image=1e3 * cpu)  # nvjpeg, if CUDA
    print(json.dumps(report, indent=1))
    if os.environ.get('VP_CUDA_REPORT'):
        with open(os.environ['VP_CUDA_REPORT'] + '.loader.json', 'w') as f:
            json.dump(report, f, indent=1)


def parse_loader(layout, model='tf_efficientnet_lite0', batch=32):
    import argparse
    return argparse.Namespace(dataset='imagenet', data_dir=str(layout), model=model, batch_size=batch, device=DEVICE,
                              rounds=3)
