"""A data loader that keeps a whole CIFAR-sized data set on one device and augments batches there.

For small images (CIFAR-10/100: 50 000 x 3 x 32 x 32 uint8 = 147 MiB) a GPU trial spends more time waiting
for CPU data-loader workers than computing, and several trials sharing one GPU share the same few CPU
cores. :class:`DeviceLoader` copies the data set to the device once (in its stored dtype, uint8 stays
uint8), and for every batch indexes a shuffled permutation, converts to float, and applies the standard
CIFAR augmentations as batched tensor operations:

* ``"basic"``: random crop with zero padding (``padding`` pixels each side, 4 by default) and random
  horizontal flip with probability 1/2 -- the usual CIFAR recipe (He et al. 2016, Section 4.2;
  ``torchvision.transforms.RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``);
* ``"cutout"``: ``"basic"`` and then Cutout (DeVries & Taylor 2017, "Improved Regularization of
  Convolutional Neural Networks with Cutout"): one ``cutout_size`` x ``cutout_size`` square per image,
  its centre uniform over all pixels, clipped at the image borders, set to 0 *after* normalisation
  (that is, to the per-channel data-set mean ``mean``);
* ``"none"``: no augmentation (test sets).

The order per batch is: gather -> float (uint8 / 255) -> pad-and-crop -> flip -> normalise with
``mean`` / ``std`` -> cutout -> ``dtype`` / memory format. The padding value is 0 in the stored image
units (black for pixel data), as torchvision pads before ``Normalize``.

All random draws (the permutation, crop offsets, flips, cutout centres) come from one ``torch.Generator``
so a seeded generator reproduces an epoch exactly. The same code runs on CPU tensors (tests) and on CUDA.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("none", "basic", "cutout")


def pad_crop(x: Tensor, padding: int, dy: Tensor, dx: Tensor) -> Tensor:
    """Crop each image of a batch from its zero-padded version at a given offset.

    Args:
        x: images ``[B, C, H, W]`` (float).
        padding: pixels of zeros added on every side before cropping (>= 0).
        dy, dx: integer offsets ``[B]`` in ``[0, 2 * padding]``: image ``b`` of the result is rows
            ``dy[b] : dy[b] + H`` and columns ``dx[b] : dx[b] + W`` of the padded image ``[H + 2p, W + 2p]``.
            ``dy = dx = padding`` returns the image unchanged.

    Returns:
        ``[B, C, H, W]`` crops, same dtype and device as ``x``.

    Source: the pad-and-crop augmentation of He et al. (2016), Section 4.2, as one batched gather.
    """
    if padding == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = dy.to(x.device).long()[:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = dx.to(x.device).long()[:, None] + torch.arange(w, device=x.device)  # [B, W]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def flip_where(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror (left-right) the images of ``x [B, C, H, W]`` where the bool ``mask [B]`` is True."""
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(-1), x)


def cutout(x: Tensor, cy: Tensor, cx: Tensor, size: int, value: float = 0.0) -> Tensor:
    """Set one ``size`` x ``size`` square per image to ``value``, clipped at the borders.

    Args:
        x: images ``[B, C, H, W]``.
        cy, cx: integer centres ``[B]``; image ``b`` gets rows ``cy - size // 2 : cy - size // 2 + size``
            and columns likewise, intersected with the image (all channels).
        size: side of the square in pixels (>= 0; 0 changes nothing).
        value: the fill value (0 after normalisation = the data-set mean).

    Returns:
        A new tensor like ``x``.

    Source: Cutout, DeVries & Taylor (2017), Section 3 (centre uniform over the image, square may be
    partly outside).
    """
    _, _, h, w = x.shape
    y0 = cy.to(x.device).long() - size // 2
    x0 = cx.to(x.device).long() - size // 2
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= y0[:, None]) & (ys < y0[:, None] + size)  # [B, H]
    in_x = (xs >= x0[:, None]) & (xs < x0[:, None] + size)  # [B, W]
    mask = in_y[:, :, None] & in_x[:, None, :]  # [B, H, W]
    return x.masked_fill(mask[:, None], value)


class DeviceLoader:
    """Iterate shuffled, augmented ``(x, y)`` batches of a data set held as one tensor on a device.

    Args:
        images: ``[N, C, H, W]`` uint8 (pixel values 0..255, divided by 255) or float (used as given).
        labels: ``[N]`` integer class labels.
        batch_size: images per batch (> 0).
        shuffle: a new random order every epoch (else the stored order).
        augment: ``"none"``, ``"basic"`` (pad-and-crop + flip) or ``"cutout"`` (basic + Cutout).
        cutout_size: side of the Cutout square in pixels (16 for CIFAR-10, 8 for CIFAR-100 in DeVries &
            Taylor 2017).
        padding: zero padding of the random crop, pixels each side (4).
        flip: random horizontal flips in ``"basic"`` / ``"cutout"``.
        mean, std: per-channel normalisation in the units of the float images (``[0, 1]`` for uint8
            input); None: mean 0 / std 1 (no normalisation).
        device: where the data set lives and batches come out (default: CUDA when available, else CPU).
        generator: the source of every random draw (its device may differ from ``device``); None uses
            torch's global generator of ``device``.
        drop_last: drop the last incomplete batch.
        dtype: floating dtype of the batches (e.g. ``torch.bfloat16``).
        channels_last: return batches in ``torch.channels_last`` memory format.

    Yields:
        ``x [B, C, H, W]`` of ``dtype`` and ``y [B]`` int64 on ``device``; each sample exactly once per
        epoch (``drop_last`` aside).

    Raises:
        ValueError: bad shapes, unknown ``augment``, non-positive ``batch_size``, negative sizes, or
            ``mean`` / ``std`` of the wrong length or with a zero ``std``.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool = True,
                 augment: str = "none", cutout_size: int = 16, padding: int = 4, flip: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 device: str | torch.device | None = None, generator: torch.Generator | None = None,
                 drop_last: bool = False, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        if images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be [N] with N = {images.shape[0]}, got shape {tuple(labels.shape)}")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if cutout_size < 0 or padding < 0:
            raise ValueError(f"cutout_size and padding must be >= 0, got {cutout_size} and {padding}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        c = images.shape[1]
        self.mean = self._channel_vector(mean, 0.0, c, "mean")
        self.std = self._channel_vector(std, 1.0, c, "std")
        if bool((self.std == 0).any()):
            raise ValueError("std must be non-zero in every channel")
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, dtype=torch.long)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.cutout_size = int(cutout_size)
        self.padding = int(padding)
        self.flip = flip
        self.generator = generator
        self.drop_last = drop_last
        self.dtype = dtype
        self.channels_last = channels_last

    def _channel_vector(self, v, default: float, c: int, name: str) -> Tensor:
        t = torch.full((c,), default) if v is None else torch.as_tensor(v, dtype=torch.float32).flatten()
        if t.numel() == 1:
            t = t.expand(c)
        if t.numel() != c:
            raise ValueError(f"{name} must have 1 or {c} values (one per channel), got {t.numel()}")
        return t.to(self.device, torch.float32).view(1, c, 1, 1)

    @property
    def num_samples(self) -> int:
        """N, the number of samples in the data set."""
        return int(self.images.shape[0])

    def __len__(self) -> int:
        """Batches per epoch: ``ceil(N / batch_size)``, or ``floor`` with ``drop_last``."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    # random draws on the generator's device, moved to the data device
    def _gen_device(self) -> torch.device:
        return self.generator.device if self.generator is not None else self.device

    def _randint(self, high: int, n: int) -> Tensor:
        return torch.randint(high, (n,), generator=self.generator, device=self._gen_device()).to(self.device)

    def _order(self) -> Tensor:
        n = self.num_samples
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        return torch.randperm(n, generator=self.generator, device=self._gen_device()).to(self.device)

    def to_float(self, x: Tensor) -> Tensor:
        """Stored images ``[B, C, H, W]`` -> float32 (uint8 divided by 255)."""
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def transform(self, x: Tensor) -> Tensor:
        """Augment and normalise one batch of stored images ``[B, C, H, W]``; returns ``dtype`` images.

        Draws crop offsets, flips and cutout centres from the loader's generator (see the module text for
        the order of operations).
        """
        x = self.to_float(x)
        b, _, h, w = x.shape
        if self.augment in ("basic", "cutout"):
            if self.padding > 0:
                span = 2 * self.padding + 1
                x = pad_crop(x, self.padding, self._randint(span, b), self._randint(span, b))
            if self.flip:
                x = flip_where(x, self._randint(2, b).bool())
        x = (x - self.mean) / self.std
        if self.augment == "cutout" and self.cutout_size > 0:
            x = cutout(x, self._randint(h, b), self._randint(w, b), self.cutout_size, 0.0)
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        n, bs = self.num_samples, self.batch_size
        stop = (n // bs) * bs if self.drop_last else n
        for i in range(0, stop, bs):
            idx = order[i:i + bs]
            yield self.transform(self.images[idx]), self.labels[idx]


def _to_chw_tensor(x) -> Tensor:
    """One image (tensor ``[C, H, W]`` / ``[H, W]``, PIL image, or ``[H, W, C]`` array) -> tensor CHW."""
    if isinstance(x, Tensor):
        return x if x.ndim == 3 else x.unsqueeze(0)
    try:
        from PIL import Image

        if isinstance(x, Image.Image):
            from torchvision.transforms.functional import pil_to_tensor

            return pil_to_tensor(x)
    except ImportError:  # pragma: no cover
        pass
    t = torch.as_tensor(x)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def _raw_arrays(dataset, indices=None) -> tuple[Tensor, Tensor] | None:
    """(images NCHW, labels) from a data set's own arrays, following Subset; None when it has none."""
    from torch.utils.data import Subset, TensorDataset

    if isinstance(dataset, Subset):
        idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        if indices is not None:
            idx = idx[indices]
        return _raw_arrays(dataset.dataset, idx)
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        images, labels = dataset.tensors[0], dataset.tensors[1]
    elif hasattr(dataset, "data") and hasattr(dataset, "targets"):
        images = torch.as_tensor(dataset.data)
        labels = torch.as_tensor(dataset.targets)
        if images.ndim == 3:  # [N, H, W] (MNIST-like)
            images = images.unsqueeze(1)
        elif images.ndim == 4 and images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
            images = images.permute(0, 3, 1, 2)  # NHWC (CIFAR's numpy array) -> NCHW
    else:
        return None
    if indices is not None:
        images, labels = images[indices], labels[indices]
    return images.contiguous(), labels


def from_dataset(dataset, batch_size: int, *, raw: bool = True, **loader_kwargs) -> DeviceLoader:
    """Materialise a map-style torch ``Dataset`` into a :class:`DeviceLoader`.

    Args:
        dataset: a ``Dataset`` of ``(image, label)`` pairs; a ``TensorDataset``, a ``Subset`` of one, or a
            torchvision-style set with ``.data`` (``[N, H, W, C]`` / ``[N, H, W]`` pixels) and ``.targets``.
        batch_size: images per batch.
        raw: take a data set's own arrays (``TensorDataset`` tensors, or ``.data`` / ``.targets``, which
            skips its ``transform``: the loader augments and normalises) when it has them; otherwise, or
            with ``raw=False``, stack ``dataset[i]`` for every ``i`` (its transform applied once, so random
            transforms are frozen: give ``augment`` to the loader instead).
        **loader_kwargs: passed to :class:`DeviceLoader` (``shuffle``, ``augment``, ``mean``, ``std``,
            ``device``, ``generator``, ...).

    Returns:
        The loader, its data set already on the device.

    Raises:
        ValueError: an empty data set, or images of different shapes.
    """
    arrays = _raw_arrays(dataset) if raw else None
    if arrays is None:
        n = len(dataset)
        if n == 0:
            raise ValueError("cannot build a DeviceLoader from an empty data set")
        xs, ys = [], []
        for i in range(n):
            x, y = dataset[i]
            xs.append(_to_chw_tensor(x))
            ys.append(int(y))
        shapes = {tuple(x.shape) for x in xs}
        if len(shapes) != 1:
            raise ValueError(f"all images must have one shape to be stacked, got {sorted(shapes)[:3]}...")
        arrays = torch.stack(xs), torch.tensor(ys, dtype=torch.long)
    images, labels = arrays
    if images.shape[0] == 0:
        raise ValueError("cannot build a DeviceLoader from an empty data set")
    return DeviceLoader(images, labels, batch_size, **loader_kwargs)
