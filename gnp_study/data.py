"""Data-set registry, augmentations and on-disk readers for the paper's experiments (Section 4).

Use :func:`build_datasets`::

    bundle = build_datasets("cifar10", root="/data/cifar10", augmentation="cutout", train_subset=5000)
    loader = DataLoader(bundle.train, batch_size=128, shuffle=True)
    for x, y in loader:                      # x: (B, 3, 32, 32) float, normalised; y: (B,) int64
        if bundle.batch_transform is not None:
            x, y = bundle.batch_transform(x, y)  # CutMix: y becomes (B, num_classes) soft labels

Data sets (:data:`DATASETS`) and the layouts read from ``root`` (nothing is ever downloaded):

============== ======================================================================================
``digits``     scikit-learn's bundled 8x8 digits (no root); fixed stratified 80/20 split, random_state 0
``cifar10``    ``python``: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
               (torchvision's ``CIFAR10``), or ``imagefolder``: ``root/train/<class>/*``,
               ``root/test/<class>/*`` (torchvision's ``ImageFolder``)
``cifar100``   ``python``: ``root/cifar-100-python/{train, test, meta}``, or the same ImageFolder layout
``svhn``       ``root/train_32x32.mat``, ``root/test_32x32.mat`` (torchvision's ``SVHN``; needs scipy)
``mnist``      ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (torchvision's
``fashion_``   ``MNIST``/``FashionMNIST``; ``FashionMNIST/raw/...``); the files may also lie directly
``mnist``      in ``root``
``imagenet``   ``root/train/<wnid>/*.JPEG``, ``root/val/<wnid>/*.JPEG`` (ImageFolder)
============== ======================================================================================

torchvision's CIFAR and SVHN readers compare MD5 sums of the official archives' files; the readers here
only check that the files exist (so re-encoded copies and the tests' tiny files load) and turn a
malformed file into a :class:`DataError`. torchvision's MNIST reader needs unpacked IDX files; here the
``.gz`` files are read as well.

Augmentations (:data:`AUGMENTATIONS`; Section 4 of the paper):

- ``none``: tensor conversion and normalisation only (ImageNet: resize 256, centre crop 224).
- ``basic``: pad 4 pixels, random crop back to the image size, horizontal flip (Section 4.1; the flip is
  left out for digit data sets, SVHN and MNIST, where mirroring changes the class).
- ``cutout``: ``basic`` plus a zeroed square after normalisation, 16x16 on CIFAR-10 and 8x8 on CIFAR-100
  (DeVries & Taylor 2017, Sec. 4.1 and 4.2), see :class:`Cutout`.
- ``autoaugment_cutmix``: ``basic`` then torchvision's AutoAugment with the CIFAR-10 policy (Cubuk et al.
  2019), and CutMix (Yun et al. 2019; beta(1, 1) area, applied with probability 0.5 as in their
  PyramidNet recipe) as ``batch_transform`` (PyramidNet-SD in Table 1).
- ``vit_heavy``: resize 72, horizontal flip, rotation (+-7.2 degrees, i.e. factor 0.02 of a turn as in
  the Keras ViT example the pipeline follows), zoom (scale 0.8-1.2), random crop 64, resize 48; test
  images are resized to 48 (Section 4.1, ViT heavy). The paper gives no rotation, zoom or crop sizes;
  these are the choices here. Label smoothing and drop path, which the paper uses with this pipeline,
  belong to the trainer's loss and to the model (``build_model(..., drop_path_rate=...)``).
- ``imagenet``: RandomResizedCrop 224 and horizontal flip; evaluation resize 256, centre crop 224
  (He et al. 2016; Simonyan & Zisserman 2015).

Study data options (all fixed by their own seeds, never by a trial's): ``train_subset`` (a class-balanced
subset, :func:`class_balanced_indices`), a validation split carved out of the training data
(:func:`validation_split`; test transforms, clean labels; ``bundle.val``) and training-label noise
(:func:`noisy_labels`, served by :class:`NoisyLabels`; applied after the subset, never to validation or
test labels).
"""

from __future__ import annotations

import copy
import gzip
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

__all__ = [
    "AUGMENTATIONS", "DATASETS", "LABEL_NOISE_KINDS", "DataBundle", "DataError", "DatasetSpec", "Cutout",
    "NoisyLabels", "RandomCutMix", "build_datasets", "build_transforms", "check_data", "check_split_sizes",
    "class_balanced_indices", "noisy_labels", "validation_split",
]

AUGMENTATIONS: tuple[str, ...] = ("none", "basic", "cutout", "autoaugment_cutmix", "vit_heavy", "imagenet")
FORMATS: tuple[str, ...] = ("auto", "sklearn", "python", "imagefolder", "idx", "mat")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data folder is missing, incomplete or malformed; the message names the files expected where."""


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one registered data set.

    Attributes:
        name: registry key.
        num_classes, in_channels, image_size: label count, channels and native side length in pixels.
        mean, std: per-channel normalisation constants of the training images scaled to [0, 1].
        formats: accepted on-disk formats (the first is the preferred one for ``format="auto"``).
        augmentations: accepted augmentation names.
        hflip: whether a horizontal flip keeps the label (False for digits).
        cutout_size: side of the Cutout square, or None where cutout is not defined.
        source: where the constants come from.
        fixed_classes: whether an ImageFolder copy must have exactly ``num_classes`` class folders
            (False for ImageNet, so class subsets such as Imagenette load; the bundle then reports the
            number of folders found).
        n_train: images in the official training split (digits: the 80% split), or None where copies
            vary in size (ImageNet subsets). Used to reject subset and validation sizes before a trial
            starts (:func:`check_split_sizes`); a smaller local copy is checked when it is loaded.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    formats: tuple[str, ...]
    augmentations: tuple[str, ...]
    hflip: bool = True
    cutout_size: int | None = None
    source: str = ""
    fixed_classes: bool = True
    n_train: int | None = None


_CIFAR_AUGS = ("none", "basic", "cutout", "autoaugment_cutmix", "vit_heavy")

DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        "digits", 10, 1, 8, (0.3054,), (0.3761,), ("sklearn",), ("none",), hflip=False,
        n_train=1437, source="sklearn.datasets.load_digits; mean/std of the 80% training split scaled by 1/16"),
    "cifar10": DatasetSpec(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), ("python", "imagefolder"),
        _CIFAR_AUGS, cutout_size=16, n_train=50000,
        source="Krizhevsky 2009; per-channel mean/std of the 50,000 training images; cutout 16 (DeVries & Taylor 2017)"),
    "cifar100": DatasetSpec(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), ("python", "imagefolder"),
        _CIFAR_AUGS, cutout_size=8, n_train=50000,
        source="Krizhevsky 2009; per-channel mean/std of the 50,000 training images; cutout 8 (DeVries & Taylor 2017)"),
    "svhn": DatasetSpec(
        "svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), ("mat",), ("none", "basic"),
        hflip=False, n_train=73257,
        source="Netzer et al. 2011; per-channel mean/std of the 73,257 training images"),
    "mnist": DatasetSpec(
        "mnist", 10, 1, 28, (0.1307,), (0.3081,), ("idx",), ("none", "basic"), hflip=False,
        n_train=60000, source="LeCun et al. 1998; mean/std of the 60,000 training images"),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,), ("idx",), ("none", "basic"), n_train=60000,
        source="Xiao et al. 2017; mean/std of the 60,000 training images"),
    "imagenet": DatasetSpec(
        "imagenet", 1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), ("imagefolder",),
        ("none", "imagenet"), source="ILSVRC-2012; the usual torchvision constants", fixed_classes=False),
}


@dataclass
class DataBundle:
    """What :func:`build_datasets` returns.

    Attributes:
        train, test: datasets whose items are ``(image, label)``: a float tensor ``(C, H, W)``,
            normalised, and an ``int`` label in ``[0, num_classes)``.
        num_classes, in_channels: label count and image channels.
        image_size: H = W of the images the model sees after the transforms (e.g. 48 for ``vit_heavy``,
            224 for ImageNet).
        batch_transform: callable ``(images (B,C,H,W), labels (B,)) -> (images, labels)`` to apply to each
            training batch (CutMix; labels become ``(B, num_classes)`` float), or None.
        info: JSON-friendly facts: dataset, root, format, augmentation, n_train, n_test, n_val, mean, std,
            validation_size/seed, label_noise (fraction, kind, seed, n_changed), ...
        val: the validation split carved out of the training data (test transforms, clean labels), or
            None when the study has none (the paper's protocol).
        in_features: the length of a sample that is a vector (the user's tabular data, see
            :mod:`gnp_study.own_data`), None for images.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    batch_transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None
    info: dict = field(default_factory=dict)
    val: Dataset | None = None
    in_features: int | None = None


# ---------------------------------------------------------------------------------------------------------
# transforms


class Cutout(torch.nn.Module):
    """Zero a ``size x size`` square centred on a uniformly drawn pixel of a ``(C, H, W)`` tensor.

    The square is clipped at the image border, so near the edges less than ``size**2`` pixels are
    zeroed, exactly as in DeVries & Taylor 2017 ("Improved regularization of convolutional neural
    networks with cutout", Sec. 3, and their code, which applies it after normalisation so the zeroed
    square has the data set's mean colour). torchvision's RandomErasing instead draws the area and aspect
    ratio and keeps the box inside the image, so it is not this transform. Randomness comes from torch's
    global generator (seeded per DataLoader worker by PyTorch).

    Args:
        size: side length in pixels (16 for CIFAR-10, 8 for CIFAR-100 in DeVries & Taylor).
    """

    def __init__(self, size: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"Cutout size must be >= 1, got {size}")
        self.size = int(size)

    def forward(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        cy = int(torch.randint(h, ()))
        cx = int(torch.randint(w, ()))
        y0, x0 = cy - self.size // 2, cx - self.size // 2
        out = img.clone()
        out[..., max(y0, 0):max(min(y0 + self.size, h), 0), max(x0, 0):max(min(x0 + self.size, w), 0)] = 0
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}"


class RandomCutMix:
    """CutMix on a training batch with probability ``p`` (Yun et al. 2019; their CIFAR PyramidNet recipe
    uses beta(1, 1) and ``p = 0.5``), built on ``torchvision.transforms.v2.CutMix``.

    Call with ``images (B, C, H, W)`` float and ``labels (B,)`` int64; returns images and float soft labels
    ``(B, num_classes)`` in both branches (one-hot when CutMix is skipped), so the loss always sees the
    same label shape.
    """

    def __init__(self, num_classes: int, alpha: float = 1.0, p: float = 0.5):
        from torchvision.transforms import v2

        if not 0.0 <= p <= 1.0:
            raise ValueError(f"CutMix probability must be in [0, 1], got {p}")
        self.num_classes, self.alpha, self.p = int(num_classes), float(alpha), float(p)
        self.cutmix = v2.CutMix(num_classes=self.num_classes, alpha=self.alpha)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if self.p > 0 and float(torch.rand(())) < self.p:
            return self.cutmix(images, labels)
        return images, F.one_hot(labels.long(), self.num_classes).to(images.dtype)

    def __repr__(self) -> str:
        return f"RandomCutMix(num_classes={self.num_classes}, alpha={self.alpha}, p={self.p})"


def _finish(spec: DatasetSpec) -> list:
    from torchvision.transforms import v2

    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std)),
            v2.ToPureTensor()]  # plain tensors, not tv_tensors.Image, reach the DataLoader and the model


def build_transforms(name: str, augmentation: str) -> tuple[Callable, Callable, Callable | None, int]:
    """Train and test transforms of one data set and augmentation (see the module docstring).

    Args:
        name: a key of :data:`DATASETS` other than ``digits`` (whose tensors need no transform).
        augmentation: one of the data set's ``augmentations``.
    Returns:
        ``(train_transform, test_transform, batch_transform or None, image_size)``: the two per-image
        transforms map a PIL image to a normalised ``(C, image_size, image_size)`` float tensor.
    Raises:
        ValueError: unknown name or an augmentation the data set does not accept.
    """
    from torchvision.transforms import v2

    spec = _spec(name)
    _check_augmentation(spec, augmentation)
    size = spec.image_size
    finish = _finish(spec)
    flip = [v2.RandomHorizontalFlip()] if spec.hflip else []
    basic = [v2.RandomCrop(size, padding=4)] + flip
    batch = None
    if name == "imagenet":
        test = v2.Compose([v2.Resize(256), v2.CenterCrop(224)] + finish)
        train = v2.Compose([v2.RandomResizedCrop(224), v2.RandomHorizontalFlip()] + finish) \
            if augmentation == "imagenet" else test
        return train, test, None, 224
    test = v2.Compose(list(finish))
    if augmentation == "none":
        train = test
    elif augmentation == "basic":
        train = v2.Compose(basic + finish)
    elif augmentation == "cutout":
        assert spec.cutout_size is not None
        train = v2.Compose(basic + finish + [Cutout(spec.cutout_size)])
    elif augmentation == "autoaugment_cutmix":
        train = v2.Compose(basic + [v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)] + finish)
        batch = RandomCutMix(spec.num_classes, alpha=1.0, p=0.5)
    elif augmentation == "vit_heavy":
        size = 48
        train = v2.Compose([
            v2.Resize((72, 72)), v2.RandomHorizontalFlip(), v2.RandomRotation(7.2),
            v2.RandomAffine(degrees=0, scale=(0.8, 1.2)), v2.RandomCrop(64), v2.Resize((48, 48)),
        ] + finish)
        test = v2.Compose([v2.Resize((48, 48))] + finish)
    else:  # pragma: no cover - guarded by _check_augmentation
        raise ValueError(augmentation)
    return train, test, batch, size


# ---------------------------------------------------------------------------------------------------------
# readers


class TensorImageDataset(Dataset):
    """In-memory images ``data (N, C, H, W)`` float and ``targets (N,)`` int64; items ``(image, int)``."""

    def __init__(self, data: Tensor, targets: Tensor):
        if len(data) != len(targets):
            raise ValueError(f"{len(data)} images but {len(targets)} labels")
        self.data, self.targets = data, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.data[i], int(self.targets[i])


#: The digits split as :func:`digits_arrays` returns it, when a Ray trial worker received it from the driver
#: (``gnp_study.trainable`` sets it); ``None``: :func:`_digits` loads it with scikit-learn.
DIGITS_ARRAYS: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, split 80/20 stratified with ``random_state=0`` (``train_test_split``).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: ``x`` float64 ``(1437, 64)`` / ``(360, 64)``, pixel values
        0-16 (8x8 images, row-major); ``y`` int64 class labels 0-9.

    The driver of a study computes it for each Tune experiment it starts and hands it to the trial workers
    through Ray's object store: a worker then builds the digits data sets without importing scikit-learn (with the scipy modules
    it loads, about 0.8 s for each new worker, with the trials waiting).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return xtr, ytr, xte, yte


def _digits() -> tuple[Dataset, Dataset]:
    """scikit-learn digits (:func:`digits_arrays`, or :data:`DIGITS_ARRAYS` when set), pixels /16 then
    normalised: ``(train, test)`` :class:`TensorImageDataset` of 1437 and 360 images ``(1, 8, 8)`` float32
    with int64 labels."""
    xtr, ytr, xte, yte = DIGITS_ARRAYS if DIGITS_ARRAYS is not None else digits_arrays()
    spec = DATASETS["digits"]

    def make(a: np.ndarray, b: np.ndarray) -> TensorImageDataset:
        t = (torch.as_tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0 - spec.mean[0]) / spec.std[0]
        return TensorImageDataset(t, torch.as_tensor(b, dtype=torch.int64))

    return make(xtr, ytr), make(xte, yte)


def _cifar_classes():
    from torchvision.datasets import CIFAR10, CIFAR100

    class _NoMD5:
        """Existence check instead of torchvision's MD5 comparison (see the module docstring)."""

        def _check_integrity(self) -> bool:
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f))
                       for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    class LocalCIFAR10(_NoMD5, CIFAR10):
        """torchvision ``CIFAR10`` reading ``root/cifar-10-batches-py`` without MD5 checks."""

    class LocalCIFAR100(_NoMD5, CIFAR100):
        """torchvision ``CIFAR100`` reading ``root/cifar-100-python`` without MD5 checks."""

    return LocalCIFAR10, LocalCIFAR100


_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", ["train", "test"], "meta", "fine_label_names"),
}
_MNIST_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")
_SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
_IMAGEFOLDER_SPLITS = {"cifar10": ("train", "test"), "cifar100": ("train", "test"), "imagenet": ("train", "val")}


def _read_idx(path: str) -> Tensor:
    """Read an IDX file (LeCun's MNIST format: magic 0x0000 08 ndim, big-endian int32 sizes, uint8
    data), raw or gzip-compressed, into a uint8 tensor. Raises DataError when malformed."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    n = int(np.prod(dims))
    body = raw[4 + 4 * ndim:]
    if len(body) != n:
        raise DataError(f"{path}: header says {dims} ({n} bytes) but the file holds {len(body)} data bytes")
    return torch.from_numpy(np.frombuffer(body, dtype=np.uint8).copy()).reshape(dims)


def _idx_dir(name: str, root: str) -> str | None:
    """The folder holding all four IDX files (raw or .gz): torchvision's ``root/<Folder>/raw`` or root."""
    for d in (os.path.join(root, _MNIST_FOLDER[name], "raw"), root):
        if all(_idx_path(d, f) for f in _IDX_FILES):
            return d
    return None


def _idx_path(d: str, stem: str) -> str | None:
    for p in (os.path.join(d, stem), os.path.join(d, stem + ".gz")):
        if os.path.isfile(p):
            return p
    return None


def _mnist_class(name: str):
    from torchvision.datasets import MNIST, FashionMNIST

    base = MNIST if name == "mnist" else FashionMNIST

    class LocalIDX(base):  # type: ignore[misc, valid-type]
        """torchvision ``MNIST``/``FashionMNIST`` reading raw or gzipped IDX files from ``raw_dir``."""

        def __init__(self, raw_dir: str, train: bool, transform: Callable | None):
            self._raw_dir = raw_dir
            super().__init__(raw_dir, train=train, transform=transform, download=False)

        @property
        def raw_folder(self) -> str:
            return self._raw_dir

        @property
        def processed_folder(self) -> str:  # no legacy .pt files
            return os.path.join(self._raw_dir, "__none__")

        def _check_exists(self) -> bool:
            return all(_idx_path(self._raw_dir, f) for f in _IDX_FILES)

        def _load_data(self):
            pre = "train" if self.train else "t10k"
            data = _read_idx(_idx_path(self._raw_dir, f"{pre}-images-idx3-ubyte"))  # type: ignore[arg-type]
            targets = _read_idx(_idx_path(self._raw_dir, f"{pre}-labels-idx1-ubyte")).long()  # type: ignore[arg-type]
            if data.ndim != 3 or targets.ndim != 1 or len(data) != len(targets):
                raise DataError(f"{self._raw_dir}: {pre} images {tuple(data.shape)} and labels "
                                f"{tuple(targets.shape)} do not match (expected (N, H, W) and (N,))")
            return data, targets

    return LocalIDX


def _svhn_class():
    from torchvision.datasets import SVHN

    class LocalSVHN(SVHN):
        """torchvision ``SVHN`` reading ``root/{train,test}_32x32.mat`` without MD5 checks."""

        def _check_integrity(self) -> bool:
            return os.path.isfile(os.path.join(self.root, self.filename))

    return LocalSVHN


# ---------------------------------------------------------------------------------------------------------
# checks


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; accepted names: {', '.join(DATASETS)}")
    return DATASETS[name]


def _check_augmentation(spec: DatasetSpec, augmentation: str) -> None:
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; accepted names: {', '.join(AUGMENTATIONS)}")
    if augmentation not in spec.augmentations:
        raise ValueError(f"augmentation {augmentation!r} is not defined for {spec.name}; "
                         f"accepted for {spec.name}: {', '.join(spec.augmentations)}")


def _expected(name: str, root: str, fmt: str) -> str:
    """Human-readable description of the files ``name`` in format ``fmt`` needs under ``root``."""
    spec = DATASETS[name]
    if fmt == "python":
        folder, files, meta, _ = _CIFAR_FILES[name]
        return f"{os.path.join(root, folder)}/{{{', '.join(files + [meta])}}} (the python pickle batches)"
    if fmt == "imagefolder":
        tr, te = _IMAGEFOLDER_SPLITS[name]
        return (f"{os.path.join(root, tr)}/<class>/*.jpg|png and {os.path.join(root, te)}/<class>/*.jpg|png "
                f"with {spec.num_classes if spec.fixed_classes else 'the same'} class folders each "
                f"(ImageFolder layout)")
    if fmt == "idx":
        d = os.path.join(root, _MNIST_FOLDER[name], "raw")
        return f"{d}/{{{', '.join(_IDX_FILES)}}} (each may be .gz; the folder may also be {root} itself)"
    if fmt == "mat":
        return f"{root}/{{{', '.join(_SVHN_FILES)}}}"
    return "nothing (bundled with scikit-learn)"


def _resolve_format(name: str, root: str | None, fmt: str) -> tuple[str, str | None]:
    """Validate ``fmt`` and, for ``auto``, pick the format whose files are present. Returns (format, root).

    For CIFAR, ``root`` may also be the python batch folder itself; the returned root is then its parent.
    Raises ValueError (unknown format) or DataError (no root / nothing found).
    """
    spec = _spec(name)
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; accepted: {', '.join(FORMATS)}")
    if fmt != "auto" and fmt not in spec.formats:
        raise ValueError(f"format {fmt!r} is not available for {name}; accepted: auto, {', '.join(spec.formats)}")
    if name == "digits":
        return "sklearn", None
    if root is None:
        alts = " or ".join(_expected(name, "<root>", f) for f in spec.formats)
        raise DataError(f"{name} needs a data folder (root=...); expected {alts}")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if name in _CIFAR_FILES:
        folder = _CIFAR_FILES[name][0]
        if os.path.basename(root) == folder and not os.path.isdir(os.path.join(root, folder)):
            root = os.path.dirname(root)
    if not os.path.isdir(root):
        alts = " or ".join(_expected(name, root, f) for f in spec.formats)
        raise DataError(f"{name}: data folder {root} does not exist; expected {alts}")
    if fmt != "auto":
        return fmt, root
    if name in _CIFAR_FILES:
        if os.path.isdir(os.path.join(root, _CIFAR_FILES[name][0])):
            return "python", root
        if os.path.isdir(os.path.join(root, "train")):
            return "imagefolder", root
        raise DataError(f"{name}: no data found in {root}; expected either {_expected(name, root, 'python')} "
                        f"or {_expected(name, root, 'imagefolder')}")
    return spec.formats[0], root


def _list_classes(split_dir: str) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _check_imagefolder(name: str, root: str) -> None:
    spec = DATASETS[name]
    expected = _expected(name, root, "imagefolder")
    classes = {}
    for split in _IMAGEFOLDER_SPLITS[name]:
        d = os.path.join(root, split)
        if not os.path.isdir(d):
            raise DataError(f"{name}: missing folder {d}; expected {expected}")
        cls = _list_classes(d)
        if not cls:
            raise DataError(f"{name}: {d} has no class folders; expected {expected}")
        for c in cls:
            with os.scandir(os.path.join(d, c)) as it:
                if not any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in it):
                    raise DataError(f"{name}: class folder {os.path.join(d, c)} holds no image file "
                                    f"({', '.join(IMAGE_EXTENSIONS)}); expected {expected}")
        classes[split] = cls
    tr, te = _IMAGEFOLDER_SPLITS[name]
    if classes[tr] != classes[te]:
        diff = sorted(set(classes[tr]) ^ set(classes[te]))
        raise DataError(f"{name}: {os.path.join(root, tr)} and {os.path.join(root, te)} have different class "
                        f"folders (differing: {diff[:10]})")
    if spec.fixed_classes and len(classes[tr]) != spec.num_classes:
        raise DataError(f"{name}: found {len(classes[tr])} class folders in {os.path.join(root, tr)}, "
                        f"expected {spec.num_classes}; expected {expected}")


def _check_python(name: str, root: str) -> None:
    folder, files, meta, key = _CIFAR_FILES[name]
    d = os.path.join(root, folder)
    expected = _expected(name, root, "python")
    missing = [f for f in files + [meta] if not os.path.isfile(os.path.join(d, f))]
    if missing:
        raise DataError(f"{name}: missing {', '.join(os.path.join(d, f) for f in missing)}; expected {expected}")
    try:
        with open(os.path.join(d, meta), "rb") as f:
            names = pickle.load(f, encoding="latin1")[key]
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise DataError(f"{name}: {os.path.join(d, meta)} is not a CIFAR meta pickle with {key!r} ({e})") from e
    if len(names) != DATASETS[name].num_classes:
        raise DataError(f"{name}: {os.path.join(d, meta)} lists {len(names)} classes, expected "
                        f"{DATASETS[name].num_classes}")


def _check_idx(name: str, root: str) -> str:
    d = _idx_dir(name, root)
    if d is None:
        raise DataError(f"{name}: IDX files not found; expected {_expected(name, root, 'idx')}")
    counts = {}
    for stem in _IDX_FILES:
        p = _idx_path(d, stem)
        assert p is not None
        opener = gzip.open if p.endswith(".gz") else open
        try:
            with opener(p, "rb") as f:
                head = f.read(8)
        except (OSError, EOFError) as e:
            raise DataError(f"{name}: cannot read {p}: {e}") from e
        want = 3 if "images" in stem else 1
        if len(head) < 8 or head[:3] != b"\x00\x00\x08" or head[3] != want:
            raise DataError(f"{name}: {p} is not an IDX file with {want} dimension(s) (header {head.hex()})")
        counts[stem] = int.from_bytes(head[4:8], "big")
    for pre in ("train", "t10k"):
        if counts[f"{pre}-images-idx3-ubyte"] != counts[f"{pre}-labels-idx1-ubyte"]:
            raise DataError(f"{name}: {pre} images and labels in {d} hold different counts "
                            f"({counts[f'{pre}-images-idx3-ubyte']} vs {counts[f'{pre}-labels-idx1-ubyte']})")
    return d


def _check_mat(name: str, root: str) -> None:
    for f in _SVHN_FILES:
        p = os.path.join(root, f)
        if not os.path.isfile(p):
            raise DataError(f"{name}: missing {p}; expected {_expected(name, root, 'mat')}")
        with open(p, "rb") as fh:
            head = fh.read(6)
        if head != b"MATLAB":
            raise DataError(f"{name}: {p} is not a MATLAB 5 .mat file (as scipy.io.savemat writes)")


def check_data(name: str, root: str | os.PathLike | None, format: str = "auto", *,
               train_subset: int | None = None, test_subset: int | None = None) -> None:
    """Check cheaply (folder listings and file headers, no image decoding) that ``name`` can be read.

    Meant for validating a study before any trial starts.

    Args:
        name: a key of :data:`DATASETS`.
        root: the data folder (ignored for ``digits``).
        format: ``auto`` or one of the data set's formats (see the module docstring).
        train_subset, test_subset: subset sizes the study asks for (``data.train_subset`` /
            ``data.test_subset``); when given, the split's size is read (:func:`split_sizes`) and a
            larger subset is refused.
    Raises:
        ValueError: unknown name or format.
        DataError: missing or malformed files (the message says which files were expected where), or a
            subset larger than its split (the message names the field and the split's size).
    """
    fmt, r = _resolve_format(name, None if root is None else os.fspath(root), format)
    if fmt == "python":
        _check_python(name, r)
    elif fmt == "imagefolder":
        _check_imagefolder(name, r)
    elif fmt == "idx":
        _check_idx(name, r)
    elif fmt == "mat":
        _check_mat(name, r)
    if train_subset is None and test_subset is None:
        return
    n_train, n_test = _split_sizes(name, fmt, r)
    for field, n, split, size in (("train_subset", train_subset, "training", n_train),
                                  ("test_subset", test_subset, "test", n_test)):
        if n is not None and n > size:
            where = f" in {r}" if r is not None else ""
            raise DataError(f"data.{field}: {n} is larger than the {split} set of {name}{where}, which "
                            f"holds {size} examples; use at most {size}")


def split_sizes(name: str, root: str | os.PathLike | None, format: str = "auto") -> tuple[int, int]:
    """The number of examples of the training and of the test split, read cheaply (no image decoding).

    Args:
        name, root, format: as for :func:`check_data`.
    Returns:
        ``(n_train, n_test)``, the lengths :func:`build_datasets` gives before any subset (digits: 1437 and
        360, the 80/20 split of scikit-learn's 1,797 images).
    Raises:
        ValueError, DataError: as :func:`check_data`.

    Source: the counts come from the files: CIFAR pickle batches (their ``data`` arrays), the image files
    torchvision's ``ImageFolder`` would list, the IDX headers, and the ``X`` shape of each SVHN ``.mat``
    file (``scipy.io.whosmat``, which reads no image data).
    """
    fmt, r = _resolve_format(name, None if root is None else os.fspath(root), format)
    check_data(name, r, fmt)
    return _split_sizes(name, fmt, r)


def _split_sizes(name: str, fmt: str, root: str | None) -> tuple[int, int]:
    """:func:`split_sizes` for a resolved and checked format and root."""
    if fmt == "sklearn":
        train, test = _digits()
        return len(train), len(test)
    assert root is not None
    try:
        if fmt == "python":
            folder, files, _, _ = _CIFAR_FILES[name]
            counts = []
            for f in files:
                with open(os.path.join(root, folder, f), "rb") as fh:
                    counts.append(len(pickle.load(fh, encoding="latin1")["data"]))
            return sum(counts[:-1]), counts[-1]
        if fmt == "imagefolder":
            from torchvision.datasets.folder import IMG_EXTENSIONS

            def count(split_dir: str) -> int:
                n = 0
                for cls in _list_classes(split_dir):
                    for _, _, names in os.walk(os.path.join(split_dir, cls), followlinks=True):
                        n += sum(f.lower().endswith(IMG_EXTENSIONS) for f in names)
                return n

            tr, te = _IMAGEFOLDER_SPLITS[name]
            return count(os.path.join(root, tr)), count(os.path.join(root, te))
        if fmt == "idx":
            d = _check_idx(name, root)
            sizes = []
            for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
                p = _idx_path(d, stem)
                assert p is not None
                with (gzip.open if p.endswith(".gz") else open)(p, "rb") as fh:
                    sizes.append(int.from_bytes(fh.read(8)[4:8], "big"))
            return sizes[0], sizes[1]
        if fmt == "mat":
            from scipy.io import whosmat

            sizes = []
            for f in _SVHN_FILES:
                shapes = {v[0]: v[1] for v in whosmat(os.path.join(root, f))}
                sizes.append(int(shapes["X"][-1]))
            return sizes[0], sizes[1]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - unpickling/header errors all mean malformed files
        raise DataError(f"{name}: cannot count the examples under {root} ({type(e).__name__}: {e}); "
                        f"expected {_expected(name, root, fmt)}") from e
    raise AssertionError(fmt)  # pragma: no cover


# ---------------------------------------------------------------------------------------------------------
# subsets


def class_balanced_indices(targets: Sequence[int] | np.ndarray | Tensor, n: int, seed: int = 0) -> list[int]:
    """Indices of a deterministic, class-balanced subset of size ``n``.

    Each class's indices are shuffled with ``numpy.random.default_rng(seed)``, the class order is
    shuffled too, and indices are taken round-robin over the classes, so class counts differ by at most
    one while every class has enough examples (a class that runs out leaves the rest to the others).

    Args:
        targets: integer labels of the whole data set, length N.
        n: subset size, 1 <= n <= N.
        seed: the subset seed.
    Returns:
        sorted list of ``n`` distinct indices into ``targets``.
    Raises:
        ValueError: n outside [1, N].
    """
    y = np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets).astype(np.int64).ravel()
    if not 1 <= n <= len(y):
        raise ValueError(f"subset size must be in [1, {len(y)}], got {n}")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    order = rng.permutation(len(classes))
    out: list[int] = []
    rnd = 0
    while len(out) < n:
        for k in order:
            if rnd < len(per[k]):
                out.append(int(per[k][rnd]))
                if len(out) == n:
                    break
        rnd += 1
    return sorted(out)


def validation_split(targets: Sequence[int] | np.ndarray | Tensor, size: int, seed: int = 0,
                     train_subset: int | None = None, subset_seed: int = 0) -> tuple[list[int], list[int]]:
    """Split a training set into the images trained on and a fixed, class-balanced validation split.

    The training images are chosen first and exactly as without a validation split (the
    ``train_subset`` images of :func:`class_balanced_indices` with ``subset_seed``, or every image), so
    a study with a validation split trains on the same images as the same study without one; the
    validation images are then a class-balanced draw (:func:`class_balanced_indices` with ``seed``)
    from the images left over. Without ``train_subset`` the training set shrinks by ``size`` images.
    The split depends only on the labels and the seeds, never on a trial, so every configuration and
    every trial seed of a study sees the same split (hold-out validation, e.g. Hastie, Tibshirani &
    Friedman 2009, Sec. 7.2).

    Args:
        targets: integer labels of the whole training set, length N.
        size: validation images, >= 1.
        seed: the validation split's seed.
        train_subset: training images kept (None: all images not taken for validation).
        subset_seed: seed of the training subset.
    Returns:
        ``(train_indices, val_indices)``: sorted, disjoint lists of indices into ``targets``.
    Raises:
        ValueError: ``size`` < 1 or more than the images left after the training subset (the message
            names ``data.validation.size``), or ``train_subset`` outside [1, N].
    """
    y = np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets).astype(np.int64).ravel()
    n = len(y)
    if train_subset is not None:
        if not 1 <= train_subset <= n:
            raise ValueError(f"data.train_subset: must be in [1, {n}] (the training images), got {train_subset}")
        train = class_balanced_indices(y, train_subset, subset_seed)
        left = np.setdiff1d(np.arange(n), train)
    else:
        train, left = [], np.arange(n)
    room = len(left) - (0 if train_subset is not None else 1)  # without a subset keep >= 1 training image
    if not 1 <= size <= room:
        raise ValueError(f"data.validation.size: must be in [1, {room}] ({n} training images"
                         f"{f', {train_subset} taken by data.train_subset' if train_subset is not None else ''}), "
                         f"got {size}")
    val = sorted(int(left[i]) for i in class_balanced_indices(y[left], size, seed))
    if train_subset is None:
        train = sorted(set(range(n)) - set(val))
    return list(train), val


def check_split_sizes(name: str, train_subset: int | None, validation_size: int | None,
                      n_train: int | None = None) -> None:
    """Check that the training subset and the validation split fit the training set, before any trial.

    Args:
        name: a key of :data:`DATASETS`.
        train_subset, validation_size: the study's ``data.train_subset`` and ``data.validation.size``
            (None: not set).
        n_train: training images of the copy at hand; default the data set's official count
            (:attr:`DatasetSpec.n_train`; nothing is checked when that is unknown).
    Raises:
        ValueError: a size that does not fit; the message names the field (``data.train_subset`` or
            ``data.validation.size``) and the numbers.
    """
    n = DATASETS[name].n_train if n_train is None else n_train
    if n is None:
        return
    if train_subset is not None and train_subset > n:
        raise ValueError(f"data.train_subset: {train_subset} is more than the {n} training images of {name}")
    if validation_size is not None:
        room = n - train_subset if train_subset is not None else n - 1
        if validation_size > room:
            taken = f", {train_subset} taken by data.train_subset" if train_subset is not None else ""
            raise ValueError(f"data.validation.size: {validation_size} validation images do not fit: {name} has "
                             f"{n} training images{taken}, leaving at most {room}")


#: Kinds of training-label noise (see :func:`noisy_labels`).
LABEL_NOISE_KINDS: tuple[str, ...] = ("symmetric", "pairflip")


def noisy_labels(targets: Sequence[int] | np.ndarray | Tensor, fraction: float, kind: str, num_classes: int,
                 seed: int = 0) -> np.ndarray:
    """Corrupt a fixed fraction of labels, reproducibly from ``seed`` alone.

    Exactly ``k = floor(fraction * N + 0.5)`` images (the nearest integer, halves up), drawn uniformly
    without replacement with ``numpy.random.default_rng(seed)``, get a WRONG label; the others keep
    theirs, so ``fraction`` is the fraction of wrong labels.

    - ``symmetric``: the new label is uniform over the ``num_classes - 1`` other classes, never the true
      one. (The convention of Zhang et al. 2017 and of Foret et al. 2021, Sec. 3.3 draws from all classes,
      so a drawn label may be right by chance: their fraction f corresponds to f (K - 1) / K here.)
    - ``pairflip``: label c becomes (c + 1) mod ``num_classes`` (the "pair flipping" noise of Han et al.
      2018, Co-teaching).

    Args:
        targets: clean integer labels in ``[0, num_classes)``, length N.
        fraction: in [0, 1).
        kind: one of :data:`LABEL_NOISE_KINDS`.
        num_classes: K >= 2.
        seed: the noise seed (independent of any trial seed).
    Returns:
        int64 array of N labels; ``(result != targets).sum() == k``.
    Raises:
        ValueError: fraction outside [0, 1), unknown kind, K < 2, or labels outside [0, K).
    """
    y = np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets).astype(np.int64).ravel()
    if isinstance(fraction, bool) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.label_noise.fraction: must be in [0, 1), got {fraction!r}")
    if kind not in LABEL_NOISE_KINDS:
        raise ValueError(f"data.label_noise.kind: unknown kind {kind!r}; accepted: {', '.join(LABEL_NOISE_KINDS)}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), found {y.min()}..{y.max()}")
    rng = np.random.default_rng(seed)
    k = int(np.floor(fraction * len(y) + 0.5))
    chosen = rng.choice(len(y), size=k, replace=False)
    out = y.copy()
    if kind == "symmetric":
        out[chosen] = (y[chosen] + rng.integers(1, num_classes, size=k)) % num_classes
    else:
        out[chosen] = (y[chosen] + 1) % num_classes
    return out


class NoisyLabels(Dataset):
    """A data set whose labels are replaced by a fixed array (training-label noise, Foret et al. 2021,
    Sec. 3.3); images come unchanged from the wrapped data set, with its transform.

    Attributes:
        dataset: the wrapped data set (items ``(image, clean label)``).
        targets: int64 tensor ``(N,)`` of the labels served; ``clean_targets`` the wrapped set's labels.
        changed: bool tensor ``(N,)``, True where the served label differs from the clean one.
    """

    def __init__(self, dataset: Dataset, targets: np.ndarray | Tensor):
        clean = torch.as_tensor(_labels_of(dataset), dtype=torch.int64)
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        if len(targets) != len(clean):
            raise ValueError(f"{len(clean)} images but {len(targets)} labels")
        self.dataset, self.targets, self.clean_targets = dataset, targets, clean
        self.changed = targets != clean

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.dataset[i][0], int(self.targets[i])


def _labels_of(ds: Dataset) -> np.ndarray:
    """Integer labels of any data set built here (following Subset and NoisyLabels), without images."""
    if isinstance(ds, Subset):
        return _labels_of(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    return _targets(ds).astype(np.int64)


def _with_transform(ds: Dataset, transform: Callable | None) -> Dataset:
    """A shallow copy of a torchvision data set that applies ``transform`` (the images are shared)."""
    if not hasattr(ds, "transform"):
        return ds  # in-memory tensors (digits) have no transform
    out = copy.copy(ds)
    out.transform = transform
    if hasattr(out, "transforms"):
        from torchvision.datasets.vision import StandardTransform

        out.transforms = StandardTransform(transform, getattr(out, "target_transform", None))
    return out


def _targets(ds: Dataset) -> np.ndarray:
    for attr in ("targets", "labels"):
        t = getattr(ds, attr, None)
        if t is not None:
            return np.asarray(t.cpu() if isinstance(t, Tensor) else t)
    raise TypeError(f"{type(ds).__name__} exposes no targets/labels")


# ---------------------------------------------------------------------------------------------------------
# entry point


def build_datasets(name: str, *, root: str | os.PathLike | None = None, augmentation: str = "none",
                   train_subset: int | None = None, test_subset: int | None = None, subset_seed: int = 0,
                   format: str = "auto", validation_size: int | None = None, validation_seed: int = 0,
                   label_noise_fraction: float = 0.0, label_noise_kind: str = "symmetric",
                   label_noise_seed: int = 0) -> DataBundle:
    """Build the training, test and (optionally) validation sets of a registered data set.

    Args:
        name: a key of :data:`DATASETS` (digits, cifar10, cifar100, svhn, mnist, fashion_mnist, imagenet).
        root: the data folder (layouts in the module docstring); ignored for ``digits``.
        augmentation: one of :data:`AUGMENTATIONS` that the data set accepts.
        train_subset, test_subset: if given, keep a deterministic class-balanced subset of that many
            examples (:func:`class_balanced_indices` with ``subset_seed``), e.g. for CPU-sized studies.
        subset_seed: seed of the subsets.
        format: ``auto`` (detect from the files) or one of the data set's formats: ``python`` /
            ``imagefolder`` for CIFAR, ``idx`` for MNIST, ``mat`` for SVHN, ``imagefolder`` for ImageNet.
        validation_size, validation_seed: if a size is given, a fixed class-balanced validation split of
            that many training images, disjoint from the images trained on (:func:`validation_split`);
            it uses the test transforms (no augmentation) and keeps its clean labels.
        label_noise_fraction, label_noise_kind, label_noise_seed: training-label noise
            (:func:`noisy_labels`) applied to the training images after the subset is taken; 0 leaves
            the labels alone. Test and validation labels never change.
    Returns:
        :class:`DataBundle`; items are ``(float tensor (C, H, W), int label)``.
    Raises:
        ValueError: unknown name, augmentation or format, a subset or validation size out of range, or
            bad label-noise values (messages name the study field).
        DataError: missing or malformed data; the message says which files were expected where.
    """
    spec = _spec(name)
    _check_augmentation(spec, augmentation)
    fmt, r = _resolve_format(name, None if root is None else os.fspath(root), format)
    batch = None
    image_size = spec.image_size
    if fmt == "sklearn":
        train, test = _digits()
        test_tf = None
    else:
        assert r is not None
        train_tf, test_tf, batch, image_size = build_transforms(name, augmentation)
        train, test = _load(name, fmt, r, train_tf, test_tf)
    n_train_full, n_test_full = len(train), len(test)  # type: ignore[arg-type]
    if validation_size is not None:
        check_split_sizes(name, train_subset, validation_size, n_train=n_train_full)
    num_classes = spec.num_classes
    if not spec.fixed_classes and fmt == "imagefolder":
        num_classes = len(getattr(_base(train), "classes"))
        if batch is not None:
            batch = RandomCutMix(num_classes, alpha=batch.alpha, p=batch.p)
    train, test, val, noise = apply_options(
        train, test, num_classes, val_view=_with_transform(train, test_tf), train_subset=train_subset,
        test_subset=test_subset, subset_seed=subset_seed, validation_size=validation_size,
        validation_seed=validation_seed, label_noise_fraction=label_noise_fraction,
        label_noise_kind=label_noise_kind, label_noise_seed=label_noise_seed)
    info: dict[str, Any] = {
        "dataset": name, "root": r, "format": fmt, "augmentation": augmentation,
        "n_train": len(train), "n_test": len(test),  # type: ignore[arg-type]
        "n_val": len(val) if val is not None else 0,  # type: ignore[arg-type]
        "n_train_full": n_train_full, "n_test_full": n_test_full,
        "train_subset": train_subset, "test_subset": test_subset, "subset_seed": subset_seed,
        "validation_size": validation_size, "validation_seed": validation_seed if validation_size else None,
        "label_noise": noise,
        "image_size": image_size, "mean": list(spec.mean), "std": list(spec.std),
    }
    info["num_classes"] = num_classes
    return DataBundle(train, test, num_classes, spec.in_channels, image_size, batch, info, val)


def apply_options(train: Dataset, test: Dataset, num_classes: int, *, val_view: Dataset | None = None,
                  train_subset: int | None = None, test_subset: int | None = None, subset_seed: int = 0,
                  validation_size: int | None = None, validation_seed: int = 0,
                  label_noise_fraction: float = 0.0, label_noise_kind: str = "symmetric",
                  label_noise_seed: int = 0) -> tuple[Dataset, Dataset, Dataset | None, dict | None]:
    """A study's data options on a training and a test set: the validation split, the class-balanced
    subsets and the training-label noise (see :func:`build_datasets` for each option).

    Args:
        train, test: the full splits; their labels are read from a ``targets`` (or ``labels``) attribute.
        num_classes: the label count (label noise draws wrong labels from it).
        val_view: the training set with the test transforms, from which the validation split is served
            (default ``train`` itself).
        The other arguments: as :func:`build_datasets`.
    Returns:
        ``(train, test, val or None, label-noise facts or None)``.
    Raises:
        ValueError: a size out of range or bad label-noise values. TypeError: an option needs labels and a
            data set has no ``targets``/``labels`` attribute.
    """
    val: Dataset | None = None
    if validation_size is not None:
        train_idx, val_idx = validation_split(_targets(train), validation_size, validation_seed,
                                              train_subset, subset_seed)
        val = Subset(train if val_view is None else val_view, val_idx)
        train = Subset(train, train_idx)
    elif train_subset is not None:
        train = Subset(train, class_balanced_indices(_targets(train), train_subset, subset_seed))
    if test_subset is not None:
        test = Subset(test, class_balanced_indices(_targets(test), test_subset, subset_seed))
    noise: dict[str, Any] | None = None
    if label_noise_fraction or label_noise_kind not in LABEL_NOISE_KINDS:
        labels = noisy_labels(_labels_of(train), label_noise_fraction, label_noise_kind, num_classes,
                              label_noise_seed)
        train = NoisyLabels(train, labels)
        noise = {"fraction": float(label_noise_fraction), "kind": label_noise_kind, "seed": int(label_noise_seed),
                 "n_changed": int(train.changed.sum())}
    return train, test, val, noise


def _base(ds: Dataset) -> Dataset:
    while isinstance(ds, (Subset, NoisyLabels)):
        ds = ds.dataset
    return ds


def _load(name: str, fmt: str, root: str, train_tf: Callable, test_tf: Callable) -> tuple[Dataset, Dataset]:
    """Open the two splits through the torchvision readers; malformed files become DataError."""
    check_data(name, root, fmt)
    try:
        if fmt == "python":
            c10, c100 = _cifar_classes()
            cls = c10 if name == "cifar10" else c100
            return cls(root, train=True, transform=train_tf), cls(root, train=False, transform=test_tf)
        if fmt == "imagefolder":
            from torchvision.datasets import ImageFolder

            tr, te = _IMAGEFOLDER_SPLITS[name]
            return (ImageFolder(os.path.join(root, tr), transform=train_tf),
                    ImageFolder(os.path.join(root, te), transform=test_tf))
        if fmt == "idx":
            d = _idx_dir(name, root)
            cls = _mnist_class(name)
            return cls(d, True, train_tf), cls(d, False, test_tf)
        if fmt == "mat":
            cls = _svhn_class()
            return cls(root, split="train", transform=train_tf), cls(root, split="test", transform=test_tf)
    except DataError:
        raise
    except ImportError as e:
        raise DataError(f"{name}: reading the {fmt} format needs a missing package ({e})") from e
    except Exception as e:  # noqa: BLE001 - unpickling/reshape/loadmat errors all mean malformed files
        raise DataError(f"{name}: malformed data under {root} ({type(e).__name__}: {e}); expected "
                        f"{_expected(name, root, fmt)}") from e
    raise AssertionError(fmt)  # pragma: no cover
