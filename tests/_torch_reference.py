"""PyTorch reference modules with torchvision's structure, so their state-dict names are torchvision's.

torchvision itself does not import beside the CPU torch build (its compiled ops need CUDA torch), so
the tests build the modules here from plain ``torch.nn`` layers, in torchvision's layout:
``features`` / ``classifier`` Sequentials, ``Conv2dNormActivation`` as ``Sequential(conv, bn, act)``.
"""
import torch
from torch import nn


def make_divisible(value, divisor=8):
    """torchvision's ``_make_divisible``: nearest multiple of ``divisor``, never below 90% of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_act(cin, cout, kernel=3, stride=1, groups=1, eps=1e-5):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout, eps=eps), nn.ReLU6())


class _InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand_ratio, eps):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        layers = [_conv_bn_act(cin, hidden, 1, eps=eps)] if expand_ratio != 1 else []
        layers += [_conv_bn_act(hidden, hidden, 3, stride, groups=hidden, eps=eps),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=eps)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """``torchvision.models.MobileNetV2`` with the stem/last widths and BN epsilon as parameters."""

    def __init__(self, num_classes, width_mult=1.0, inverted_residual_setting=None, stem_channels=32,
                 last_channels=1280, eps=1e-5):
        super().__init__()
        setting = inverted_residual_setting or [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
        channels = make_divisible(stem_channels * width_mult)
        last = make_divisible(last_channels * max(1.0, width_mult))
        features = [_conv_bn_act(3, channels, stride=2, eps=eps)]
        for t, c, n, s in setting:
            out = make_divisible(c * width_mult)
            for i in range(n):
                features.append(_InvertedResidual(channels, out, s if i == 0 else 1, t, eps))
                channels = out
        features.append(_conv_bn_act(channels, last, 1, eps=eps))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class VGG(nn.Module):
    """``torchvision.models.VGG`` on a layout (conv widths, ``"M"`` = max pool) with a ``hidden``-wide classifier."""

    def __init__(self, layers, batch_norm, hidden=4096, num_classes=1000):
        super().__init__()
        features, channels = [], 3
        for v in layers:
            if v == "M":
                features.append(nn.MaxPool2d(2, 2))
                continue
            features.append(nn.Conv2d(channels, v, 3, padding=1))
            features += [nn.BatchNorm2d(v)] if batch_norm else []
            features.append(nn.ReLU())
            channels = v
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(channels * 49, hidden), nn.ReLU(), nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Dropout(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def randomize_batch_norm(net, seed=0):
    """Random BN affine parameters and running statistics (fresh ones are the identity), in place."""
    generator = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.data.uniform_(-0.5, 0.5, generator=generator)
            m.weight.data += 1.0
            m.running_var.data.uniform_(0.5, 2.0, generator=generator)
    return net
