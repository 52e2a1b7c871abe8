"""The user's own data: any ImageFolder, or a function of theirs returning ``torch.utils.data.Dataset``s.

A study's ``data.dataset`` may be, besides a registry name (:data:`gnp_study.data.DATASETS`):

- ``imagefolder``: a generic image folder ``root/train/<class>/*``, ``root/test/<class>/*`` with any
  number of classes (torchvision's ``ImageFolder``; the test split must have the training split's class
  folders). Images are read as RGB, resized to ``data.image_size`` (default 32) and normalised to
  [-1, 1] (mean = std = 0.5 per channel); ``augmentation: basic`` adds a 4-pixel padded random crop and
  a horizontal flip (Section 4.1 of the paper).
- an import path ``package.module:function`` (see :mod:`gnp_study.user_code`): the function gets
  ``data.kwargs`` (and ``root=data.root`` when its signature names ``root``) and returns the training and
  test sets, and optionally a validation set: a tuple ``(train, test)`` / ``(train, test, val)`` or a
  mapping with keys ``train``, ``test`` and optionally ``val``. Items are ``(input tensor, int label)``.
  The function applies its own transforms (``augmentation`` must be ``none``).

The study's data options work on these too: ``train_subset``/``test_subset`` (class-balanced),
``validation.size`` (a split carved from the training set, served as the training set serves it) and ``label_noise`` need the labels, read from
a ``targets`` (or ``labels``) attribute of the data set; without one they are refused with a message that
says so. The number of classes is ``data.num_classes`` when given, else the length of a ``classes``
attribute, else one more than the largest label in ``targets``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gnp_study import user_code
from gnp_study.data import DataBundle, DataError, apply_options, _targets

#: ``data.dataset`` of a generic image folder.
IMAGEFOLDER = "imagefolder"
#: Splits of a generic image folder.
_SPLITS = ("train", "test")


def is_own(dataset: str) -> bool:
    """Whether ``data.dataset`` names the user's data (``imagefolder`` or an import path)."""
    return dataset == IMAGEFOLDER or user_code.is_target(dataset)


def _imagefolder(root: str | None, augmentation: str, image_size: int) -> tuple[Dataset, Dataset]:
    """The two splits of a generic image folder (see the module docstring); raises DataError."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    if root is None:
        raise DataError("data.root: a generic image folder (dataset: imagefolder) needs root: a folder with "
                        "train/<class>/* and test/<class>/*")
    root = os.path.abspath(os.path.expanduser(root))
    classes = {}
    for split in _SPLITS:
        d = os.path.join(root, split)
        if not os.path.isdir(d):
            raise DataError(f"data.root: missing folder {d}; expected {root}/train/<class>/* and "
                            f"{root}/test/<class>/* (ImageFolder layout)")
        classes[split] = sorted(e.name for e in os.scandir(d) if e.is_dir())
        if not classes[split]:
            raise DataError(f"data.root: {d} has no class folders (expected {d}/<class>/*.jpg|png)")
    if classes["train"] != classes["test"]:
        raise DataError(f"data.root: the test classes {classes['test']} differ from the training classes "
                        f"{classes['train']}")
    finish = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3),
              v2.ToPureTensor()]
    size = [v2.Resize((image_size, image_size))]
    test_tf = v2.Compose(size + finish)
    train_tf = (v2.Compose(size + [v2.RandomCrop(image_size, padding=4), v2.RandomHorizontalFlip()] + finish)
                if augmentation == "basic" else test_tf)
    try:
        return (ImageFolder(os.path.join(root, "train"), transform=train_tf),
                ImageFolder(os.path.join(root, "test"), transform=test_tf))
    except Exception as e:  # noqa: BLE001 - e.g. a class folder without any image file
        raise DataError(f"data.root: {root} is not a readable image folder: {e}") from None


def _function_splits(target: str, root: str | None, kwargs: dict) -> tuple[Dataset, Dataset, Dataset | None]:
    """Call the user's data function and check the shape of what it returns."""
    fn = user_code.load(target, "data.dataset")
    out = user_code.call(fn, "data.dataset", kwargs, {"root": root})
    if isinstance(out, dict):
        unknown = set(out) - {"train", "test", "val"}
        if unknown or not {"train", "test"} <= set(out):
            raise user_code.UserCodeError(f"data.dataset: {target} returned a mapping with keys {sorted(out)}; "
                                          f"expected train, test and optionally val")
        parts = (out["train"], out["test"], out.get("val"))
    elif isinstance(out, (tuple, list)) and len(out) in (2, 3):
        parts = (out[0], out[1], out[2] if len(out) == 3 else None)
    else:
        raise user_code.UserCodeError(f"data.dataset: {target} returned a {type(out).__name__}; expected "
                                      f"(train, test) or (train, test, val) torch Datasets, or a mapping")
    for name, ds in zip(("train", "test", "val"), parts):
        if ds is None:
            continue
        if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
            raise user_code.UserCodeError(f"data.dataset: the {name} set of {target} is a {type(ds).__name__}, "
                                          f"not a torch.utils.data.Dataset (needs __len__ and __getitem__)")
        if len(ds) == 0:
            raise user_code.UserCodeError(f"data.dataset: the {name} set of {target} has no samples")
    return parts


def _labels(ds: Dataset) -> np.ndarray | None:
    try:
        return _targets(ds).astype(np.int64).ravel()
    except (TypeError, ValueError):
        return None


def _num_classes(train: Dataset, test: Dataset, given: int | None, key: str) -> int:
    if given is not None:
        return given
    classes = getattr(train, "classes", None)
    if classes is not None:
        return len(classes)
    ys = [y for y in (_labels(train), _labels(test)) if y is not None and len(y)]
    if not ys:
        raise user_code.UserCodeError(f"{key}: the number of classes is unknown: set data.num_classes, or give "
                                      f"the training set a `classes` or `targets` attribute")
    return int(max(int(y.max()) for y in ys)) + 1


def _sample_facts(ds: Dataset, num_classes: int, key: str) -> dict[str, Any]:
    """Check one sample ``(input tensor, int label)``; its shape gives the model's input facts."""
    item = ds[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise user_code.UserCodeError(f"{key}: a sample must be a pair (input, label), got a "
                                      f"{type(item).__name__}")
    x, y = item
    if not isinstance(x, torch.Tensor):
        raise user_code.UserCodeError(f"{key}: a sample's input must be a torch.Tensor, got {type(x).__name__}")
    try:
        label = int(y)
    except (TypeError, ValueError):
        raise user_code.UserCodeError(f"{key}: a sample's label must be an int, got {y!r}") from None
    if not 0 <= label < num_classes:
        raise user_code.UserCodeError(f"{key}: label {label} is out of range for {num_classes} classes")
    shape = tuple(x.shape)
    facts: dict[str, Any] = {"sample_shape": list(shape), "sample_dtype": str(x.dtype).replace("torch.", "")}
    if len(shape) == 3:
        facts.update(in_channels=shape[0], image_size=shape[1])
    elif len(shape) == 1:
        facts["in_features"] = shape[0]
    return facts


def _check_labels(parts: dict[str, Dataset], num_classes: int, key: str) -> None:
    for name, ds in parts.items():
        y = _labels(ds)
        if y is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise user_code.UserCodeError(f"{key}: the {name} set has label {bad}, out of range for "
                                          f"{num_classes} classes (data.num_classes or the classes attribute)")


def build_own_datasets(dataset: str, *, root: str | None = None, augmentation: str = "none",
                       kwargs: dict | None = None, image_size: int | None = None, num_classes: int | None = None,
                       train_subset: int | None = None, test_subset: int | None = None, subset_seed: int = 0,
                       validation_size: int | None = None, validation_seed: int = 0,
                       validation_given: bool = False, label_noise_fraction: float = 0.0,
                       label_noise_kind: str = "symmetric", label_noise_seed: int = 0) -> DataBundle:
    """The user's data sets with the study's data options, as a :class:`gnp_study.data.DataBundle`.

    Args:
        dataset: ``imagefolder`` or an import path (module docstring).
        root: the image folder, or what the user's function gets as ``root``.
        augmentation: ``none`` or ``basic`` for an image folder; ``none`` for the user's function.
        kwargs: the function's keyword arguments (``data.kwargs``).
        image_size: an image folder's side after resizing (default 32).
        num_classes: the label count, when the data cannot tell it (module docstring).
        validation_given: the study decides on a validation set (``data.validation`` set); with
            ``validation_size`` None, the one the user's function returns.
        The other arguments: as :func:`gnp_study.data.build_datasets`.
    Returns:
        The bundle; ``info`` also has ``sample_shape`` and ``sample_dtype`` of one training sample.
    Raises:
        gnp_study.user_code.UserCodeError: the function does not import, raises, returns the wrong kind of
            object, an empty data set, a sample that is not ``(tensor, int)``, or labels out of range.
        DataError: a missing or malformed image folder.
        ValueError: an option the data cannot take (an augmentation, a validation set given twice or not
            at all, subset sizes), or an option that needs labels on a data set without ``targets``.
    """
    kwargs = dict(kwargs or {})
    key = "data.dataset"
    if dataset == IMAGEFOLDER:
        if augmentation not in ("none", "basic"):
            raise ValueError(f"data.augmentation: a generic image folder takes none or basic, not {augmentation!r}")
        train, test = _imagefolder(root, augmentation, image_size or 32)
        val = None
    else:
        if augmentation != "none":
            raise ValueError(f"data.augmentation: your data function applies its own transforms; set "
                             f"augmentation: none (got {augmentation!r})")
        train, test, val = _function_splits(dataset, root, kwargs)
    if val is not None and validation_size is not None:
        raise ValueError(f"data.validation.size carves a validation split out of the training set, but {dataset} "
                         f"also returns a validation set: remove data.validation.size to decide on yours")
    if validation_given and validation_size is None and val is None:
        raise ValueError(f"data.validation has no size and {dataset} returns no validation set: give "
                         f"data.validation.size, or return (train, test, val)")
    if val is not None and not validation_given:
        val = None  # returned but not asked for: the paper's protocol (best test error) decides
    n = num_classes if num_classes is not None else _num_classes(train, test, None, key)
    needs = [name for name, on in (("data.train_subset", train_subset), ("data.test_subset", test_subset),
                                   ("data.validation.size", validation_size),
                                   ("data.label_noise", label_noise_fraction)) if on]
    for name in needs:
        ds = test if name == "data.test_subset" else train
        if _labels(ds) is None:
            raise ValueError(f"{name} needs the labels of the {'test' if ds is test else 'training'} set: give "
                             f"your Dataset a `targets` attribute (a sequence of int labels)")
    _check_labels({"train": train, "test": test, **({"val": val} if val is not None else {})}, n, key)
    facts = _sample_facts(train, n, key)
    n_train_full, n_test_full = len(train), len(test)
    train, test, val_split, noise = apply_options(
        train, test, n, train_subset=train_subset, test_subset=test_subset, subset_seed=subset_seed,
        validation_size=validation_size, validation_seed=validation_seed,
        label_noise_fraction=label_noise_fraction, label_noise_kind=label_noise_kind,
        label_noise_seed=label_noise_seed)
    val = val if val is not None else val_split
    info: dict[str, Any] = {
        "dataset": dataset, "root": root, "format": "imagefolder" if dataset == IMAGEFOLDER else "function",
        "augmentation": augmentation, "n_train": len(train), "n_test": len(test),
        "n_val": len(val) if val is not None else 0, "n_train_full": n_train_full, "n_test_full": n_test_full,
        "train_subset": train_subset, "test_subset": test_subset, "subset_seed": subset_seed,
        "validation_size": validation_size, "validation_seed": validation_seed if validation_size else None,
        "label_noise": noise, "num_classes": n, **facts,
    }
    return DataBundle(train, test, n, facts.get("in_channels", 1), facts.get("image_size", 1), None, info, val,
                      in_features=facts.get("in_features"))


def build_for(d: Any) -> DataBundle:
    """:func:`build_own_datasets` with the options of a study's ``data`` section.

    Args:
        d: a :class:`gnp_study.spec.DataSpec` (read by attribute, so this module needs no spec import).
    Returns / Raises: as :func:`build_own_datasets`.
    """
    val, noise = d.validation, d.label_noise
    return build_own_datasets(
        d.dataset, root=d.root, augmentation=d.augmentation, kwargs=d.kwargs, image_size=d.image_size,
        num_classes=d.num_classes, train_subset=d.train_subset, test_subset=d.test_subset,
        subset_seed=d.subset_seed, validation_size=val.size if val else None,
        validation_seed=val.seed if val else 0, validation_given=val is not None,
        label_noise_fraction=noise.fraction if noise else 0.0,
        label_noise_kind=noise.kind if noise else "symmetric", label_noise_seed=noise.seed if noise else 0)
