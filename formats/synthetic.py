"""A data set made here: K classes, each a smooth random colour pattern (4x4 upsampled), its samples with brightness
jitter and pixel noise. A linear probe on any reasonable feature extractor learns it, so a training loop that works
lowers its loss (--dataset synthetic: smoke runs and tests).

    train, test = sources(10, data.ArrayImages)   # 60 and 20 images per class, 32 x 32
"""
import torch


def sources(num_classes, arrays, train_per_class=60, test_per_class=20, size=32, seed=0):
    """K classes, each a smooth random colour pattern (4x4 upsampled); samples add brightness jitter and pixel noise.

    A linear probe on any reasonable feature extractor learns it, so a training loop that works lowers its loss."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, 3, 4, 4, generator=g)
    prototypes = torch.nn.functional.interpolate(prototypes, size=(size, size), mode='bilinear', align_corners=False)

    def sample(per_class):
        y = torch.arange(num_classes).repeat_interleave(per_class)
        x = prototypes[y] * (0.7 + 0.6 * torch.rand(len(y), 1, 1, 1, generator=g))
        x = (x + 0.15 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        return arrays((x * 255).round().byte().permute(0, 2, 3, 1).numpy(), y.tolist())

    return sample(train_per_class), sample(test_per_class)
