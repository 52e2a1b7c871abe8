"""The study's data options: the validation split and training-label noise
(docs/studies.md, "The two data options that change what a study measures").

Expected values are worked out here from the definitions (counts, set algebra, the normalisation
formula, a chi-square test of uniformity from scipy), not read back from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from gnp_study.data import (
    DATASETS, NoisyLabels, build_datasets, check_split_sizes, class_balanced_indices, noisy_labels,
    validation_split,
)
from test_data import _normalised, write_cifar_python

torch.set_num_threads(1)


def labels(ds) -> np.ndarray:
    return np.array([ds[i][1] for i in range(len(ds))])


# ------------------------------------------------------------------------------------- validation split


def test_digits_validation_split_is_disjoint_balanced_and_keeps_the_training_subset():
    paper = build_datasets("digits", train_subset=300, subset_seed=0)
    b = build_datasets("digits", train_subset=300, subset_seed=0, validation_size=1000, validation_seed=0)
    assert b.val is not None and paper.val is None
    # the images trained on are exactly those of the same study without a split (paired with paper mode)
    assert list(b.train.indices) == list(paper.train.indices)
    tr, va = set(b.train.indices), set(b.val.indices)
    assert len(tr) == 300 and len(va) == 1000 and not tr & va
    assert (b.info["n_train"], b.info["n_val"], b.info["n_test"]) == (300, 1000, 360)
    # class-balanced: 1,000 images over 10 classes are 100 per class (every class has >= 143 - 30 left)
    assert np.all(np.bincount(labels(b.val), minlength=10) == 100)
    # the validation images are training images, not test images: their pixels come from the train split
    full = build_datasets("digits")
    i = sorted(va)[0]
    x, y = b.val[sorted(va).index(i)]
    assert torch.equal(x, full.train[i][0]) and y == full.train[i][1]
    # fixed: the same arguments give the same split; another validation seed another one
    again = build_datasets("digits", train_subset=300, validation_size=1000, validation_seed=0)
    other = build_datasets("digits", train_subset=300, validation_size=1000, validation_seed=1)
    assert list(again.val.indices) == list(b.val.indices) and list(other.val.indices) != list(b.val.indices)
    assert list(other.train.indices) == list(b.train.indices)


def test_validation_without_subset_shrinks_the_training_set():
    b = build_datasets("digits", validation_size=437, validation_seed=3)
    tr, va = set(b.train.indices), set(b.val.indices)
    assert len(tr) == 1000 and len(va) == 437 and not tr & va and tr | va == set(range(1437))


def test_validation_split_on_labels_directly():
    y = np.repeat(np.arange(4), 25)  # 100 labels, 25 per class
    train, val = validation_split(y, 40, seed=2, train_subset=20, subset_seed=5)
    assert train == class_balanced_indices(y, 20, 5)  # the subset is chosen first, as without a split
    assert len(val) == 40 and not set(train) & set(val) and val == sorted(val)
    assert np.all(np.bincount(y[val], minlength=4) == 10)
    # everything left fits; one more does not, and the message names the field
    assert len(validation_split(y, 80, train_subset=20)[1]) == 80
    with pytest.raises(ValueError, match=r"data\.validation\.size: must be in \[1, 80\]"):
        validation_split(y, 81, train_subset=20)
    with pytest.raises(ValueError, match=r"data\.validation\.size: must be in \[1, 99\]"):
        validation_split(y, 100)  # without a subset at least one training image must remain


def test_split_sizes_checked_against_the_data_set():
    assert DATASETS["digits"].n_train == len(build_datasets("digits").train) == 1437  # 80% of 1,797
    check_split_sizes("digits", 300, 1137)  # 1,437 - 300 = 1,137 fit exactly
    with pytest.raises(ValueError, match=r"data\.validation\.size: 1138 .* 1437 training images, 300 taken"):
        check_split_sizes("digits", 300, 1138)
    with pytest.raises(ValueError, match=r"data\.train_subset: 2000"):
        check_split_sizes("digits", 2000, None)
    check_split_sizes("imagenet", 10**9, 10**9)  # copies vary in size: checked when loaded
    with pytest.raises(ValueError, match=r"data\.validation\.size"):
        build_datasets("digits", train_subset=300, validation_size=1138)


def test_validation_images_use_the_test_transforms(tmp_path):
    written = write_cifar_python(tmp_path, "cifar10", n_per_file=8)
    imgs = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])  # the 40 training images
    ys = np.concatenate([written[f"data_batch_{k}"][1] for k in range(1, 6)])
    b = build_datasets("cifar10", root=tmp_path, augmentation="basic", train_subset=20, validation_size=10)
    assert len(b.train) == 20 and len(b.val) == 10 and not set(b.train.indices) & set(b.val.indices)
    torch.manual_seed(0)
    for j, i in enumerate(b.val.indices):  # no crop, no flip: exactly the normalised image, every time
        for _ in range(3):
            x, y = b.val[j]
            assert torch.allclose(x, _normalised(imgs[i], "cifar10"), atol=1e-5) and y == ys[i]
    # the training images keep their augmentation: some draw differs from the plain normalised image
    i0 = b.train.indices[0]
    draws = [b.train[0][0] for _ in range(20)]
    assert any(not torch.allclose(d, _normalised(imgs[i0], "cifar10"), atol=1e-5) for d in draws)


# ------------------------------------------------------------------------------------------ label noise


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.4, 0.8])
def test_symmetric_noise_changes_exactly_the_fraction_to_uniform_other_classes(fraction):
    rng = np.random.default_rng(123)
    y = rng.integers(0, 10, size=10_000)
    noisy = noisy_labels(y, fraction, "symmetric", 10, seed=7)
    changed = noisy != y
    assert changed.sum() == round(fraction * 10_000)  # exactly: 0, 2000, 4000, 8000
    assert noisy.min() >= 0 and noisy.max() <= 9 and noisy.dtype == np.int64
    if fraction:
        # the offset (new - old) mod 10 of a changed label is uniform on 1..9 (chi-square, 9 cells)
        offsets = (noisy[changed] - y[changed]) % 10
        counts = np.bincount(offsets, minlength=10)
        assert counts[0] == 0
        assert scipy.stats.chisquare(counts[1:]).pvalue > 1e-3
        # the chosen images are spread over the classes: each class loses its share within sampling error
        per_class = np.array([changed[y == c].mean() for c in range(10)])
        se = np.sqrt(fraction * (1 - fraction) / np.bincount(y, minlength=10))
        assert np.all(np.abs(per_class - fraction) < 5 * se)


def test_noise_is_reproducible_from_its_seed_alone():
    y = np.arange(1000) % 10
    a = noisy_labels(y, 0.4, "symmetric", 10, seed=0)
    torch.manual_seed(99)
    np.random.seed(99)  # the global generators (the trial seed's) play no part
    b = noisy_labels(y, 0.4, "symmetric", 10, seed=0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, noisy_labels(y, 0.4, "symmetric", 10, seed=1))


def test_pairflip_maps_each_chosen_label_to_the_next_class():
    y = np.arange(500) % 5
    noisy = noisy_labels(y, 0.3, "pairflip", 5, seed=4)
    changed = noisy != y
    assert changed.sum() == 150
    assert np.array_equal(noisy[changed], (y[changed] + 1) % 5)
    assert set(noisy[(y == 4) & changed]) == {0}  # the last class wraps around


@pytest.mark.parametrize("fraction, kind, match", [
    (1.0, "symmetric", "fraction"), (-0.1, "symmetric", "fraction"), (True, "symmetric", "fraction"),
    (0.2, "uniform", "kind"),
])
def test_bad_noise_values(fraction, kind, match):
    with pytest.raises(ValueError, match=rf"data\.label_noise\.{match}"):
        noisy_labels([0, 1, 2], fraction, kind, 3)


def test_build_datasets_corrupts_training_labels_only():
    clean = build_datasets("digits", train_subset=300, validation_size=500)
    torch.manual_seed(5)
    b = build_datasets("digits", train_subset=300, validation_size=500, label_noise_fraction=0.4,
                       label_noise_kind="symmetric", label_noise_seed=0)
    assert isinstance(b.train, NoisyLabels) and len(b.train) == 300
    y_clean, y_noisy = labels(clean.train), labels(b.train)
    assert (y_noisy != y_clean).sum() == 120 == b.info["label_noise"]["n_changed"]  # 40% of 300
    assert b.info["label_noise"] == {"fraction": 0.4, "kind": "symmetric", "seed": 0, "n_changed": 120}
    # the images are untouched, only the labels differ
    assert all(torch.equal(b.train[i][0], clean.train[i][0]) for i in range(300))
    # test and validation labels (and images) bit-for-bit the clean ones
    assert torch.equal(b.test.targets, clean.test.targets) and torch.equal(b.test.data, clean.test.data)
    assert list(b.val.indices) == list(clean.val.indices) and np.array_equal(labels(b.val), labels(clean.val))
    # the same noise again, whatever the global generators hold (a trial seeds them before building data)
    torch.manual_seed(6)
    np.random.seed(6)
    again = build_datasets("digits", train_subset=300, validation_size=500, label_noise_fraction=0.4)
    assert np.array_equal(labels(again.train), y_noisy)
    assert clean.info["label_noise"] is None
