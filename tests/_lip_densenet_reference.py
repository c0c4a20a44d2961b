"""The published LIP-DenseNet-121, written from the architecture's description (issue #16, the
authors' ``imagenet/lip_densenet.py``) with plain torch modules and none of lip_det's: its
attribute names give the published checkpoint's layout (torchvision's names plus
``features.pool0.logit.*`` and ``features.transition{i}.pool.logit.*``).

- stem: conv 7x7/2 -> BN -> ReLU -> LIP 3x3/2, padding 1; logits: 3x3 conv -> IN -> SoftGate;
- transitions: BN -> ReLU -> conv 1x1 (halving) -> LIP 2x2/2, padding 0; logits from the
  transition's output: conv 1x1 (128) -> IN -> ReLU -> conv 3x3 -> IN -> ReLU -> conv 1x1 back ->
  IN -> SoftGate (12);
- DenseNet-121 otherwise: growth 32, blocks (6, 12, 24, 16), bn_size 4, 64 initial features,
  final BN (norm5), ReLU, classifier.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

GATE_COEFF = 12.0
WIDTH = 128
BLOCKS = (6, 12, 24, 16)
GROWTH = 32
BN_SIZE = 4
INIT_FEATURES = 64


def lip_pool(x, logit, kernel, stride, padding):
    """The operator as the authors' PyTorch code writes it (logits in (0, 12): no overflow)."""
    weight = logit.exp()
    return F.avg_pool2d(x * weight, kernel, stride, padding) / F.avg_pool2d(
        weight, kernel, stride, padding
    )


class SoftGate(nn.Module):
    def forward(self, x):
        return GATE_COEFF * torch.sigmoid(x)


class SimplifiedLIP(nn.Module):  # features.pool0
    def __init__(self, channels):
        super().__init__()
        self.logit = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            bn1=nn.InstanceNorm2d(channels, affine=True), gate=SoftGate(),
        ))  # fmt: skip

    def forward(self, x):
        return lip_pool(x, self.logit(x), 3, 2, 1)


class BottleneckLIP(nn.Module):  # features.transition{i}.pool
    def __init__(self, channels):
        super().__init__()
        self.logit = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(channels, WIDTH, 1, bias=False),
            bn1=nn.InstanceNorm2d(WIDTH, affine=True), relu1=nn.ReLU(),
            conv2=nn.Conv2d(WIDTH, WIDTH, 3, padding=1, bias=False),
            bn2=nn.InstanceNorm2d(WIDTH, affine=True), relu2=nn.ReLU(),
            conv3=nn.Conv2d(WIDTH, channels, 1, bias=False),
            bn3=nn.InstanceNorm2d(channels, affine=True), gate=SoftGate(),
        ))  # fmt: skip

    def forward(self, x):
        return lip_pool(x, self.logit(x), 2, 2, 0)


class DenseLayer(nn.Sequential):
    def __init__(self, in_channels):
        super().__init__(OrderedDict(
            norm1=nn.BatchNorm2d(in_channels), relu1=nn.ReLU(),
            conv1=nn.Conv2d(in_channels, BN_SIZE * GROWTH, 1, bias=False),
            norm2=nn.BatchNorm2d(BN_SIZE * GROWTH), relu2=nn.ReLU(),
            conv2=nn.Conv2d(BN_SIZE * GROWTH, GROWTH, 3, padding=1, bias=False),
        ))  # fmt: skip

    def forward(self, x):
        return torch.cat([x, super().forward(x)], 1)


class Transition(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        super().__init__(OrderedDict(
            norm=nn.BatchNorm2d(in_channels), relu=nn.ReLU(),
            conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
            pool=BottleneckLIP(out_channels),
        ))  # fmt: skip


class PublishedLIPDenseNet121(nn.Module):
    def __init__(self):
        super().__init__()
        features = OrderedDict(
            conv0=nn.Conv2d(3, INIT_FEATURES, 7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(INIT_FEATURES),
            relu0=nn.ReLU(),
            pool0=SimplifiedLIP(INIT_FEATURES),
        )
        channels = INIT_FEATURES
        for index, num_layers in enumerate(BLOCKS, start=1):
            layers = OrderedDict()
            for j in range(num_layers):
                layers[f"denselayer{j + 1}"] = DenseLayer(channels + j * GROWTH)
            features[f"denseblock{index}"] = nn.Sequential(layers)
            channels += num_layers * GROWTH
            if index < len(BLOCKS):
                features[f"transition{index}"] = Transition(channels, channels // 2)
                channels //= 2
        features["norm5"] = nn.BatchNorm2d(channels)
        self.features = nn.Sequential(features)
        self.classifier = nn.Linear(channels, 1000)

    def stages(self, x):
        """-> the outputs of denseblock1, 2, 3 and ReLU(norm5(denseblock4)): detectron2's
        dense2 .. dense5."""
        outputs = []
        for name, module in self.features.named_children():
            x = module(x)
            if name in ("denseblock1", "denseblock2", "denseblock3"):
                outputs.append(x)
        outputs.append(F.relu(x))
        return outputs

    def forward(self, x):
        x = self.stages(x)[-1]
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def randomise(model, generator, size=64):
    """Random weights everywhere (the LIP heads included, which a fresh LIP has at zero) and
    BatchNorm statistics of a random batch, then perturbed: every LIP, IN and BN term is
    non-trivial and activations stay of order one."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                std = (2.0 / module.weight[0].numel()) ** 0.5
                module.weight.normal_(0.0, std, generator=generator)
            elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.01, generator=generator)
                module.bias.normal_(0.0, 0.01, generator=generator)
        batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in batch_norms:
            bn.momentum = 1.0  # running statistics = this batch's
        model.train()
        model(torch.randn(2, 3, size, size, generator=generator))
        for bn in batch_norms:
            bn.momentum = 0.1
            bn.running_mean.add_(0.1 * torch.randn(bn.num_features, generator=generator))
            bn.running_var.mul_(
                torch.empty(bn.num_features).uniform_(0.7, 1.4, generator=generator)
            )
            bn.num_batches_tracked.fill_(450_000)
    return model.eval()


def lip_parameter_names(model):
    return [n for n, _ in model.named_parameters() if ".logit." in n]
