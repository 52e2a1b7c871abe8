"""Model registry: name -> ``nn.Module`` factory for every architecture of the paper's Section 4.

Use :func:`build_model`::

    model = build_model("wrn28_10", num_classes=10)                  # CIFAR-10, 32x32 RGB
    model = build_model("vit_ti16", 100, image_size=48, drop_path_rate=0.1)
    model = build_model("wrn", 10, depth=16, width=4)                # any WideResNet-d-k

Every model maps a float batch ``(B, in_channels, image_size, image_size)`` to logits ``(B, num_classes)``.
Parameter counts are this implementation's (10 classes; 1000 for the ImageNet models); tests check them
against the published figures where those exist.

====================== =============================================================== ===============
registry name          architecture (source)                                            parameters
====================== =============================================================== ===============
small_cnn              3 conv + BatchNorm layers for the 1x8x8 scikit-learn digits      24k
resnet8, resnet20      CIFAR ResNet-(6n+2), option-A shortcuts (He et al. 2016, 4.2);   75k, 0.27M
                       ``cifar_resnet`` takes ``depth``
vgg16, vgg16_bn        VGG-16 conv stack (Simonyan & Zisserman 2015, configuration D)   14.7M, 14.7M
                       with a global-pool + linear CIFAR head
wrn28_10, wrn26_10,    WideResNet-d-k (Zagoruyko & Komodakis 2016); ``wrn`` takes        36.5M, 36.5M,
wrn16_8                ``depth``/``width``/``dropout``                                  11.0M
wrn_ss26_2x96d         Shake-Shake 26 2x96d, Shake-Shake-Image (Gastaldi 2017);         26.2M
                       ``shake_shake`` takes ``depth``/``base_width``
pyramidnet164_270_sd,  bottleneck PyramidNet (Han et al. 2017) with ShakeDrop (Yamada    27.2M, 26.2M
pyramidnet272_200_sd   et al. 2019); ``pyramidnet_sd`` takes ``depth``/``alpha``
vit_ti16, vit_s16      ViT-Ti / ViT-S (Dosovitskiy et al. 2021; sizes of Touvron et al.  5.4M, 21.3M
                       2021), 4x4 patches, timm's ``VisionTransformer``                 (32x32 input)
imagenet_vgg16_bn,     torchvision ``vgg16_bn`` / ``resnet50`` / ``resnet101`` with      138.4M, 25.6M,
resnet50, resnet101    ``weights=None`` (ImageNet, 224x224)                             44.5M
====================== =============================================================== ===============

Stochastic regularisers (Shake-Shake, ShakeDrop, drop path, dropout) draw fresh noise at every forward in
training mode, so the two forward passes of one GNP step (Algorithm 1, lines 4 and 6) see different noise;
this is also how SAM implementations treat them.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MODELS", "build_model", "count_parameters"]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters of ``model`` (buffers such as BatchNorm running means excluded).

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad`` (the convention of the papers'
            "params" columns).
    Returns:
        int, the total number of elements.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _init_cifar_weights(model: nn.Module) -> None:
    """He (Kaiming) normal init for convolutions, unit/zero BatchNorm, zero linear bias.

    Source: He et al. 2015 ("Delving deep into rectifiers") as used by the WRN, Shake-Shake and PyramidNet
    reference code. A model on the meta device (the study check builds one to validate ``model.kwargs``)
    has no values to initialise and is left as is: torch's init functions on meta tensors import
    ``torch._dynamo`` (about 1.8 s of the driver's start, with the machine's other cores idle).
    """
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def _check_size(name: str, image_size: int, minimum: int) -> None:
    if image_size < minimum:
        raise ValueError(f"{name} needs image_size >= {minimum}, got {image_size}")


# ---------------------------------------------------------------------------------------------------------
# small_cnn (scikit-learn digits)


class SmallCNN(nn.Module):
    """A small CNN for the 8x8 scikit-learn digits of the default CPU study.

    Layers: conv3x3(in->16)-BN-ReLU, conv3x3(16->32)-BN-ReLU, 2x2 max-pool, conv3x3(32->64)-BN-ReLU,
    global average pool, linear(64 -> num_classes). About 24k parameters for 10 classes; runs in
    milliseconds per batch on a CPU. Not from the paper: it is the project's CPU stand-in.

    Input ``(B, in_channels, H, W)`` with H, W >= 2; output logits ``(B, num_classes)``.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=True),
            nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(b, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(c, num_classes)
        _init_cifar_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


# ---------------------------------------------------------------------------------------------------------
# CIFAR ResNet (He et al. 2016)


class _CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.extra = planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1:
            shortcut = shortcut[:, :, :: self.stride, :: self.stride]
        if self.extra > 0:  # option A: identity with zero-padded extra channels (no parameters)
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """CIFAR ResNet with 6n+2 layers (He et al. 2016, "Deep residual learning", Section 4.2).

    conv3x3(16) then three stages of n basic blocks with 16, 32, 64 channels (stride 2 at stages 2-3),
    global average pooling and a linear layer. Shortcuts are identities with zero-padded channels and
    strided subsampling ("option A"), so ResNet-20 has 0.27M parameters as in the paper's Table 6.
    ``depth=8`` (n=1, about 78k parameters) is the project's CPU-sized model.

    Input ``(B, in_channels, H, W)``; output ``(B, num_classes)``. Raises ValueError if depth != 6n+2.
    """

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, base_width: int = 16):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        widths = [base_width, 2 * base_width, 4 * base_width]
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        in_planes = widths[0]
        for stage, w in enumerate(widths):
            for i in range(n):
                layers.append(_CifarBasicBlock(in_planes, w, 2 if (stage > 0 and i == 0) else 1))
                in_planes = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_cifar_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------------------
# VGG-16 for CIFAR

_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class CifarVGG(nn.Module):
    """VGG-16 for small images: configuration D of Simonyan & Zisserman 2015 (13 conv3x3 layers, five
    2x2 max-pools) with optional BatchNorm after each convolution (``batch_norm=True`` is VGG16-BN), then
    global average pooling and one linear layer 512 -> num_classes, the usual CIFAR head (e.g.
    kuangliu/pytorch-cifar); about 15.0M parameters. The paper does not say which CIFAR head it used.

    Input ``(B, in_channels, H, W)`` with H, W >= 32; output ``(B, num_classes)``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(nn.Conv2d(c, int(v), 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(int(v)))
                layers.append(nn.ReLU(inplace=True))
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)
        _init_cifar_weights(self)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------------------
# WideResNet (Zagoruyko & Komodakis 2016)


class _WideBasic(nn.Module):
    """Pre-activation wide block BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3, 1x1 conv shortcut when the
    shape changes (Zagoruyko & Komodakis 2016, Fig. 1d / Sec. 2)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.dropout(F.relu(self.bn2(y))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WideResNet-d-k (Zagoruyko & Komodakis 2016, "Wide Residual Networks", Table 1).

    conv3x3(16), three groups of n = (d-4)/6 wide blocks with 16k, 32k, 64k channels (stride 1, 2, 2),
    BN-ReLU, global average pooling, linear. Published sizes (their Table 4 / 5): WRN-16-8 11.0M,
    WRN-28-10 36.5M parameters; WRN-26-10 is the paper's parameter-study model (Section 4.1).

    Args:
        depth: d, with (d-4) divisible by 6.
        width: widening factor k.
        num_classes, in_channels: head and input sizes.
        dropout: dropout rate between the two convolutions (0.3 in the WRN paper's dropout runs; 0 here
            by default, as in the SAM and GNP recipes).
    Input ``(B, in_channels, H, W)``; output ``(B, num_classes)``. Raises ValueError for a bad depth.
    """

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        if width < 1:
            raise ValueError(f"WideResNet width must be >= 1, got {width}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for g, w in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(_WideBasic(in_planes, w, (1 if g == 0 else 2) if i == 0 else 1, dropout))
                in_planes = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_cifar_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------------------
# Shake-Shake (Gastaldi 2017)


class _ShakeShakeFn(torch.autograd.Function):
    """Forward alpha*a + (1-alpha)*b, backward beta*g and (1-beta)*g, with alpha, beta ~ U(0,1) drawn
    independently per image ("Shake-Shake-Image", Gastaldi 2017, Sec. 2 and Table 1)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        alpha = torch.rand(a.shape[0], 1, 1, 1, device=a.device, dtype=a.dtype)
        ctx.save_for_backward(alpha)
        return alpha * a + (1 - alpha) * b

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (alpha,) = ctx.saved_tensors
        beta = torch.rand_like(alpha)
        return beta * g, (1 - beta) * g


class _ShakeShortcut(nn.Module):
    """Shortcut for a shape change: ReLU, then two paths (1x1 avg-pool with the stride; the same on the
    input shifted by one pixel) each with a 1x1 conv to half the channels, concatenated, BatchNorm
    (Gastaldi 2017, Sec. 2.1, "Model")."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(in_planes, planes - planes // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(planes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        p1 = F.avg_pool2d(x, 1, self.stride)
        p2 = F.avg_pool2d(F.pad(x, (-1, 1, -1, 1)), 1, self.stride)  # shift by one pixel
        return self.bn(torch.cat([self.conv1(p1), self.conv2(p2)], 1))


class _ShakeBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.branch1 = self._branch(in_planes, planes, stride)
        self.branch2 = self._branch(in_planes, planes, stride)
        self.shortcut = None if (in_planes == planes and stride == 1) else _ShakeShortcut(in_planes, planes, stride)

    @staticmethod
    def _branch(i: int, o: int, s: int) -> nn.Sequential:
        return nn.Sequential(
            nn.ReLU(inplace=False), nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(o),
            nn.ReLU(inplace=True), nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o),
        )

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.branch1(x), self.branch2(x)
        mixed = _ShakeShakeFn.apply(a, b) if self.training else 0.5 * (a + b)
        return mixed + (x if self.shortcut is None else self.shortcut(x))


class ShakeShakeResNet(nn.Module):
    """Shake-Shake ResNet "depth 2xWd" (Gastaldi 2017, "Shake-Shake regularization").

    conv3x3(16)-BN, three stages of (depth-2)/6 blocks with W, 2W, 4W channels (stride 1, 2, 2); each
    block has two residual branches ReLU-conv3x3-BN-ReLU-conv3x3-BN mixed by Shake-Shake-Image in training
    and by 0.5/0.5 in evaluation; then ReLU, global average pooling, linear. ``depth=26, base_width=96``
    is the paper's "WideResNet-SS 2x96" (26.2M parameters in Gastaldi's Table 4).

    Input ``(B, in_channels, H, W)``; output ``(B, num_classes)``. Raises ValueError for a bad depth.
    """

    def __init__(self, depth: int, base_width: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"Shake-Shake depth must be 6n+2 (8, 14, 20, 26, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_planes = 16
        for stage, w in enumerate([base_width, 2 * base_width, 4 * base_width]):
            for i in range(n):
                blocks.append(_ShakeBlock(in_planes, w, 2 if (stage > 0 and i == 0) else 1))
                in_planes = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_cifar_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.blocks(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------------------
# PyramidNet with ShakeDrop (Han et al. 2017; Yamada et al. 2019)


class _ShakeDropFn(torch.autograd.Function):
    """ShakeDrop (Yamada et al. 2019, Eq. 3-4): forward (b + alpha - b*alpha) * x, backward
    (b + beta - b*beta) * g, with b ~ Bernoulli(p_keep), alpha ~ U(-1, 1), beta ~ U(0, 1), each drawn per
    image."""

    @staticmethod
    def forward(ctx, x: Tensor, p_keep: float) -> Tensor:  # type: ignore[override]
        shape = (x.shape[0], 1, 1, 1)
        b = torch.bernoulli(torch.full(shape, p_keep, device=x.device, dtype=x.dtype))
        alpha = torch.empty(shape, device=x.device, dtype=x.dtype).uniform_(-1.0, 1.0)
        ctx.save_for_backward(b)
        return (b + (1 - b) * alpha) * x  # = b + alpha - b alpha, exact for b in {0, 1}

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (b,) = ctx.saved_tensors
        beta = torch.rand_like(b)
        return (b + (1 - b) * beta) * g, None


class ShakeDrop(nn.Module):
    """ShakeDrop on a residual branch output (Yamada et al. 2019). Training: :class:`_ShakeDropFn`;
    evaluation: the expectation ``p_keep * x`` (E[alpha] = 0). ``p_keep = 1`` is the identity."""

    def __init__(self, p_keep: float):
        super().__init__()
        if not 0.0 <= p_keep <= 1.0:
            raise ValueError(f"ShakeDrop p_keep must be in [0, 1], got {p_keep}")
        self.p_keep = float(p_keep)

    def forward(self, x: Tensor) -> Tensor:
        if self.p_keep >= 1.0:
            return x
        if self.training:
            return _ShakeDropFn.apply(x, self.p_keep)
        return self.p_keep * x

    def extra_repr(self) -> str:
        return f"p_keep={self.p_keep:.4f}"


class _PyramidBottleneck(nn.Module):
    """PyramidNet bottleneck unit BN-conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN (Han et al.
    2017, Fig. 6d), ShakeDrop on the branch, shortcut = 2x2 average pool when strided plus zero-padded
    channels (their Sec. 3.2, "zero-padded identity-mapping shortcut")."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, p_keep: float):
        super().__init__()
        out = planes * self.expansion
        self.branch = nn.Sequential(
            nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, planes, 1, bias=False),
            nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out),
        )
        self.shake_drop = ShakeDrop(p_keep)
        self.stride = stride
        self.extra = out - in_planes

    def forward(self, x: Tensor) -> Tensor:
        y = self.shake_drop(self.branch(x))
        shortcut = x if self.stride == 1 else F.avg_pool2d(x, 2, ceil_mode=True)
        if self.extra > 0:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
        return y + shortcut


class PyramidNetShakeDrop(nn.Module):
    """Additive bottleneck PyramidNet (Han et al. 2017, "Deep Pyramidal Residual Networks") with ShakeDrop
    (Yamada et al. 2019, "ShakeDrop regularization for deep residual learning").

    conv3x3(16)-BN, then 3 x n bottleneck units with n = (depth-2)/9 (stride 2 at the first unit of stages
    2 and 3); the bottleneck width grows by alpha/(3n) per unit from 16 (rounded), the output is 4x that;
    then BN-ReLU, global average pooling, linear. ShakeDrop's keep probability falls linearly from 1 to
    ``1 - p_drop_last`` over the units (Yamada et al.: p_l = 1 - l/L (1 - p_L), p_L = 0.5).

    Published sizes (Han et al. Table 4): depth 164 alpha 270: 27.0M; depth 272 alpha 200: 26.0M.

    Input ``(B, in_channels, H, W)``; output ``(B, num_classes)``. Raises ValueError for a bad depth.
    """

    def __init__(self, depth: int, alpha: float, num_classes: int, in_channels: int = 3,
                 p_drop_last: float = 0.5):
        super().__init__()
        if depth < 11 or (depth - 2) % 9:
            raise ValueError(f"bottleneck PyramidNet depth must be 9n+2 (11, 20, ..., 164, 272), got {depth}")
        n = (depth - 2) // 9
        total = 3 * n
        add = alpha / total
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        units: list[nn.Module] = []
        dim = 16.0
        in_planes = 16
        for u in range(total):
            dim += add
            planes = int(round(dim))
            stride = 2 if u in (n, 2 * n) else 1
            p_keep = 1.0 - (u + 1) / total * p_drop_last
            units.append(_PyramidBottleneck(in_planes, planes, stride, p_keep))
            in_planes = planes * _PyramidBottleneck.expansion
        self.units = nn.Sequential(*units)
        self.bn_final = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_cifar_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn_final(self.units(self.bn(self.conv(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------------------
# Vision transformers (timm)

_VIT_SIZES = {"vit_ti16": (192, 12, 3), "vit_s16": (384, 12, 6)}


def _vit(size: str, num_classes: int, in_channels: int, image_size: int, patch_size: int = 4,
         drop_path_rate: float = 0.0, drop_rate: float = 0.0, **kwargs) -> nn.Module:
    """ViT-Ti / ViT-S (Dosovitskiy et al. 2021; Ti = 192 wide, 3 heads and S = 384 wide, 6 heads, 12
    layers each, as in Touvron et al. 2021) built with ``timm.models.vision_transformer.VisionTransformer``.

    The paper's Section 4.1 uses 4x4 patches on 32x32 (basic) and 48x48 (heavy) inputs, i.e. 64 or 144
    tokens plus the class token; ``patch_size`` changes that. ``drop_path_rate`` is the stochastic-depth
    rate the heavy recipe uses (Dosovitskiy et al.); label smoothing belongs to the trainer's loss.
    Extra ``kwargs`` go to timm's constructor.
    Raises ValueError if image_size is not a multiple of patch_size.
    """
    from timm.models.vision_transformer import VisionTransformer

    if image_size % patch_size:
        raise ValueError(f"{size}: image_size {image_size} is not a multiple of patch_size {patch_size}")
    dim, depth, heads = _VIT_SIZES[size]
    return VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=in_channels,
                             num_classes=num_classes, embed_dim=dim, depth=depth, num_heads=heads,
                             drop_path_rate=drop_path_rate, drop_rate=drop_rate, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# torchvision ImageNet models


def _torchvision(ctor_name: str, num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    """A torchvision ImageNet classifier (``weights=None``: random init, nothing is downloaded).

    For ``in_channels != 3`` the first convolution is replaced by one with the same shape otherwise.
    ``image_size`` is only checked (>= 32); the models pool adaptively.
    """
    import torchvision.models as tvm

    _check_size(ctor_name, image_size, 32)
    model = getattr(tvm, ctor_name)(weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        if ctor_name.startswith("resnet"):
            old = model.conv1
            model.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                    bias=False)
        else:
            old = model.features[0]
            model.features[0] = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride,
                                          old.padding)
    return model


# ---------------------------------------------------------------------------------------------------------
# registry


def _small_cnn(num_classes: int, in_channels: int = 1, image_size: int = 8, **kw) -> nn.Module:
    _check_size("small_cnn", image_size, 2)
    return SmallCNN(num_classes, in_channels, **kw)


def _cifar_resnet(num_classes: int, in_channels: int = 3, image_size: int = 32, depth: int = 20, **kw):
    _check_size("cifar_resnet", image_size, 8)
    return CifarResNet(depth, num_classes, in_channels, **kw)


def _vgg(batch_norm: bool):
    def factory(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        _check_size("vgg16", image_size, 32)
        return CifarVGG(num_classes, in_channels, batch_norm=batch_norm)
    factory.__doc__ = CifarVGG.__doc__
    return factory


def _wrn(num_classes: int, in_channels: int = 3, image_size: int = 32, depth: int = 28, width: int = 10,
         dropout: float = 0.0) -> nn.Module:
    _check_size("wrn", image_size, 8)
    return WideResNet(depth, width, num_classes, in_channels, dropout)


def _shake(num_classes: int, in_channels: int = 3, image_size: int = 32, depth: int = 26,
           base_width: int = 96) -> nn.Module:
    _check_size("shake_shake", image_size, 8)
    return ShakeShakeResNet(depth, base_width, num_classes, in_channels)


def _pyramid(num_classes: int, in_channels: int = 3, image_size: int = 32, depth: int = 272,
             alpha: float = 200, p_drop_last: float = 0.5) -> nn.Module:
    _check_size("pyramidnet_sd", image_size, 8)
    return PyramidNetShakeDrop(depth, alpha, num_classes, in_channels, p_drop_last)


def _fixed(factory: Callable[..., nn.Module], doc: str, **fixed) -> Callable[..., nn.Module]:
    def made(num_classes: int, in_channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
        clash = set(kw) & set(fixed)
        if clash:
            raise ValueError(f"{sorted(clash)} are fixed by this registry entry ({fixed}); use the generic name")
        return factory(num_classes, in_channels=in_channels, image_size=image_size, **fixed, **kw)
    made.__doc__ = doc
    return made


def _vit_factory(size: str):
    def made(num_classes: int, in_channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
        return _vit(size, num_classes, in_channels, image_size, **kw)
    made.__doc__ = _vit.__doc__
    return made


def _tv_factory(ctor: str):
    def made(num_classes: int, in_channels: int = 3, image_size: int = 224, **kw) -> nn.Module:
        return _torchvision(ctor, num_classes, in_channels, image_size, **kw)
    made.__doc__ = _torchvision.__doc__
    return made


_WRN26_DOC = """WideResNet-26-10 of the paper's parameter study (Section 4.1, Figure 2).

    Depth 26 is not of Zagoruyko & Komodakis' form 6n+4. Counted the way ResNet and Shake-Shake count
    depth (6n+2: convolutions on the main path plus the linear layer, without the three 1x1 shortcut
    convolutions), 26 means n = 4 blocks per group, which is exactly WRN-28-10 in the WRN paper's
    counting (the SAM code base the authors built on calls it ``WideResnet28x10``: 4 blocks per group,
    multiplier 10). So this entry builds the same network as ``wrn28_10``.
    """

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": _small_cnn,
    "resnet8": _fixed(_cifar_resnet, "CIFAR ResNet-8 (He et al. 2016, n=1).", depth=8),
    "resnet20": _fixed(_cifar_resnet, "CIFAR ResNet-20 (He et al. 2016, n=3).", depth=20),
    "cifar_resnet": _cifar_resnet,
    "vgg16": _vgg(batch_norm=False),
    "vgg16_bn": _vgg(batch_norm=True),
    "wrn": _wrn,
    "wrn28_10": _fixed(_wrn, "WideResNet-28-10 (Table 1).", depth=28, width=10),
    "wrn26_10": _fixed(_wrn, _WRN26_DOC, depth=28, width=10),
    "wrn16_8": _fixed(_wrn, "WideResNet-16-8 (cheaper option).", depth=16, width=8),
    "shake_shake": _shake,
    "wrn_ss26_2x96d": _fixed(_shake, "Shake-Shake 26 2x96d (Table 1).", depth=26, base_width=96),
    "pyramidnet_sd": _pyramid,
    "pyramidnet164_270_sd": _fixed(_pyramid, "PyramidNet-164 bottleneck alpha=270 + ShakeDrop (Table 1).",
                                   depth=164, alpha=270),
    "pyramidnet272_200_sd": _fixed(_pyramid, "PyramidNet-272 bottleneck alpha=200 + ShakeDrop.",
                                   depth=272, alpha=200),
    "vit_ti16": _vit_factory("vit_ti16"),
    "vit_s16": _vit_factory("vit_s16"),
    "imagenet_vgg16_bn": _tv_factory("vgg16_bn"),
    "resnet50": _tv_factory("resnet50"),
    "resnet101": _tv_factory("resnet101"),
}


#: Prefixes of model names taken from a library rather than the registry.
LIBRARIES = ("torchvision", "timm")


def model_kind(name: str) -> str:
    """How a study's ``model.name`` is resolved: ``"registry"`` (a key of :data:`MODELS`), ``"torchvision"``
    (``torchvision:<name>``), ``"timm"`` (``timm:<name>``) or ``"import"`` (``package.module:attribute``,
    the user's class or function); ``"unknown"`` otherwise."""
    from gnp_study.user_code import is_target

    if name in MODELS:
        return "registry"
    lib = name.split(":", 1)[0] if ":" in name else ""
    if lib in LIBRARIES and name.split(":", 1)[1]:
        return lib
    return "import" if is_target(name) else "unknown"


def _library_model(lib: str, model: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    """``torchvision.models.get_model(model, weights=None, num_classes=...)`` or ``timm.create_model(model,
    pretrained=False, num_classes=..., in_chans=...)``: random initial weights, nothing downloaded."""
    if lib == "torchvision":
        import torchvision.models as tvm

        if model not in tvm.list_models():
            raise ValueError(f"torchvision has no model {model!r} (torchvision.models.list_models())")
        if in_channels != 3:
            raise ValueError(f"torchvision:{model} takes 3-channel images; the data has {in_channels} channels")
        return tvm.get_model(model, weights=None, **dict({"num_classes": num_classes}, **kwargs))
    try:
        import timm
    except ImportError:
        raise ValueError("timm models need the optional extra: pip install 'gnp-study[timm]'") from None
    if model not in timm.list_models():
        raise ValueError(f"timm has no model {model!r} (timm.list_models())")
    return timm.create_model(model, pretrained=False,
                             **dict({"num_classes": num_classes, "in_chans": in_channels}, **kwargs))


def build_model(name: str, num_classes: int, *, in_channels: int = 3, image_size: int = 32,
                in_features: int | None = None, **kwargs) -> nn.Module:
    """Build a model with fresh random weights.

    Args:
        name: a key of :data:`MODELS` (e.g. ``"wrn28_10"``, ``"vit_ti16"``, ``"resnet50"``), a library name
            ``torchvision:<name>`` (``torchvision.models.get_model``) or ``timm:<name>``
            (``timm.create_model``; the ``timm`` extra), or an import path ``package.module:attribute`` to
            the user's ``nn.Module`` class or a function returning one.
        num_classes: number of output logits.
        in_channels: input channels (1 for MNIST / digits, 3 for RGB).
        image_size: input height = width in pixels (32 CIFAR, 48 ViT heavy, 224 ImageNet, 8 digits);
            ViTs size their position embedding from it, convolutional nets pool adaptively and only
            check a minimum.
        in_features: the length of a sample that is a vector (tabular data), None for images.
        **kwargs: model-specific options, e.g. ``depth``/``width``/``dropout`` for ``wrn``,
            ``drop_path_rate`` for ViTs, ``p_drop_last`` for PyramidNet-SD; for the user's callable, its
            own keyword arguments. The user's callable also gets ``num_classes``, ``in_channels``,
            ``image_size`` and ``in_features`` when its signature names them (or takes ``**kwargs``).
    Returns:
        ``nn.Module`` mapping ``(B, in_channels, image_size, image_size)`` floats (or ``(B, in_features)``)
        to ``(B, num_classes)``.
    Raises:
        ValueError: unknown name (the message lists the accepted forms), bad sizes, a kwarg that a fixed
            registry entry already sets, a library model that does not exist, or the ``timm`` extra
            missing. TypeError: a kwarg the model does not take.
        gnp_study.user_code.UserCodeError: the user's module does not import, lacks the attribute, raises
            when called, or returns something other than an ``nn.Module``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    kind = model_kind(name)
    if kind == "registry":
        return MODELS[name](num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    if kind in LIBRARIES:
        return _library_model(kind, name.split(":", 1)[1], num_classes, in_channels, kwargs)
    if kind == "unknown":
        raise ValueError(f"unknown model {name!r}; accepted: a registry name ({', '.join(sorted(MODELS))}), "
                         f"torchvision:<name>, timm:<name>, or an import path package.module:attribute")
    from gnp_study import user_code

    offered = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
               "in_features": in_features}
    model = user_code.call(user_code.load(name, "model.name"), "model.name", kwargs, offered)
    if not isinstance(model, nn.Module):
        raise user_code.UserCodeError(f"model.name: {name} returned a {type(model).__name__}, not a "
                                      f"torch.nn.Module")
    return model
