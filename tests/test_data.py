"""Data sets, augmentations and readers: tiny files in each real on-disk format, read through
``build_datasets`` (the path users take)."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from gnp_study.data import (
    AUGMENTATIONS, DATASETS, Cutout, DataError, RandomCutMix, build_datasets, check_data,
    class_balanced_indices, split_sizes,
)

torch.set_num_threads(1)

C10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(n: int, seed: int, size: int = 32, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def _normalised(img_hwc: np.ndarray, name: str) -> torch.Tensor:
    """Independent reference: uint8 HWC -> CHW float, /255, minus mean, over std."""
    spec = DATASETS[name]
    x = torch.from_numpy(img_hwc.astype(np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]


# ------------------------------------------------------------------------------------------ writers


def write_cifar_python(root, name: str, n_per_file: int = 4, seed: int = 0):
    """Write CIFAR-10 (5 training batches + test_batch + batches.meta) or CIFAR-100 (train, test, meta)
    pickles with the real keys; returns {file: (images NHWC, labels)}."""
    rng = np.random.default_rng(seed)
    out = {}
    if name == "cifar10":
        d = root / "cifar-10-batches-py"
        files, key, k = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", 10
        meta_name, meta = "batches.meta", {"label_names": C10, "num_cases_per_batch": n_per_file, "num_vis": 3072}
    else:
        d = root / "cifar-100-python"
        files, key, k = ["train", "test"], "fine_labels", 100
        meta_name, meta = "meta", {"fine_label_names": [f"c{i:03d}" for i in range(100)],
                                   "coarse_label_names": [f"s{i:02d}" for i in range(20)]}
    d.mkdir(parents=True)
    for j, f in enumerate(files):
        n = n_per_file if name == "cifar10" else n_per_file * (5 if f == "train" else 1)
        imgs = _images(n, seed + j)
        labels = [int(v) for v in rng.integers(0, k, n)]
        entry = {"data": imgs.transpose(0, 3, 1, 2).reshape(n, 3072), key: labels, "batch_label": f}
        if name == "cifar100":
            entry["coarse_labels"] = [v // 5 for v in labels]
        with open(d / f, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
        out[f] = (imgs, labels)
    with open(d / meta_name, "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return out


def write_imagefolder(root, splits, classes, per_class: int, ext: str, size=(32, 32), seed: int = 0):
    """Write ``root/<split>/<class>/<i>.<ext>``; returns {path: uint8 HWC array written}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                if ext == "jpg":  # smooth ramps survive JPEG; noise would not
                    yy, xx = np.mgrid[0:size[1], 0:size[0]]
                    arr = np.stack([(xx * 2 + yy * 2 + 40 * ch + int(rng.integers(0, 40))) % 256
                                    for ch in range(3)], -1).astype(np.uint8)
                else:
                    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                p = d / f"{i:04d}.{ext}"
                if ext == "jpg":
                    Image.fromarray(arr).save(p, quality=95, subsampling=0)
                else:
                    Image.fromarray(arr).save(p)
                written[str(p)] = arr
    return written


def _idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_idx(d, n_train=6, n_test=4, gz=False, seed=0):
    """MNIST-style IDX files in folder ``d``; returns the arrays."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, a in arrays.items():
        data = _idx_bytes(a)
        if gz:
            with gzip.open(d / (stem + ".gz"), "wb") as fh:
                fh.write(data)
        else:
            (d / stem).write_bytes(data)
    return arrays


# ------------------------------------------------------------------------------------------ registry


def test_registry_names_and_errors():
    assert set(DATASETS) == {"digits", "cifar10", "cifar100", "svhn", "mnist", "fashion_mnist", "imagenet"}
    assert set(AUGMENTATIONS) == {"none", "basic", "cutout", "autoaugment_cutmix", "vit_heavy", "imagenet"}
    with pytest.raises(ValueError, match="accepted names: digits, cifar10"):
        build_datasets("cifar1000")
    with pytest.raises(ValueError, match="accepted names: none, basic, cutout"):
        build_datasets("digits", augmentation="mixup")
    with pytest.raises(ValueError, match="accepted for digits: none"):
        build_datasets("digits", augmentation="cutout")
    with pytest.raises(ValueError, match="accepted: auto, python, imagefolder"):
        build_datasets("cifar10", root="/nonexistent", format="idx")
    assert DATASETS["cifar10"].cutout_size == 16 and DATASETS["cifar100"].cutout_size == 8
    assert issubclass(DataError, ValueError)


# ------------------------------------------------------------------------------------------ digits


def test_digits_split_and_normalisation():
    from sklearn.datasets import load_digits

    b = build_datasets("digits")
    assert (b.num_classes, b.in_channels, b.image_size, b.batch_transform) == (10, 1, 8, None)
    assert (len(b.train), len(b.test)) == (1437, 360) == (b.info["n_train"], b.info["n_test"])
    x, y = b.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    # the constants are the training split's pooled mean/std: normalised training pixels ~ N(0, 1)
    assert abs(float(b.train.data.mean())) < 1e-3 and abs(float(b.train.data.std()) - 1) < 1e-3
    # stratified 20% test split: every class has its share (counts within 1 of 20% of the class size)
    _, yall = load_digits(return_X_y=True)
    test_counts = np.bincount(b.test.targets.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * np.bincount(yall)) <= 1)
    # undoing the normalisation gives the original 0..16 pixel values /16 of some digits image
    raw = (b.test.data * 0.3761 + 0.3054) * 16
    assert torch.allclose(raw, raw.round(), atol=2e-3) and raw.min() > -0.01 and raw.max() < 16.01
    # deterministic
    assert torch.equal(build_datasets("digits").test.data, b.test.data)


def test_digits_balanced_subset():
    b = build_datasets("digits", train_subset=100, test_subset=50, subset_seed=3)
    ytr = np.array([b.train[i][1] for i in range(len(b.train))])
    assert len(b.train) == 100 and np.all(np.bincount(ytr, minlength=10) == 10)
    assert len(b.test) == 50 and np.all(np.bincount([b.test[i][1] for i in range(50)], minlength=10) == 5)
    again = build_datasets("digits", train_subset=100, subset_seed=3)
    other = build_datasets("digits", train_subset=100, subset_seed=4)
    assert again.train.indices == b.train.indices and other.train.indices != b.train.indices
    assert b.info["n_train_full"] == 1437


def test_class_balanced_indices():
    y = np.array([0] * 50 + [1] * 30 + [2] * 3)
    idx = class_balanced_indices(y, 20, seed=1)
    assert len(idx) == len(set(idx)) == 20 and idx == sorted(idx)
    counts = np.bincount(y[idx], minlength=3)
    assert counts[2] == 3 and abs(counts[0] - counts[1]) <= 1  # a scarce class gives what it has
    assert class_balanced_indices(y, 20, seed=1) == idx
    assert sorted(class_balanced_indices(y, len(y))) == list(range(len(y)))
    counts = np.bincount(y[class_balanced_indices(y, 7, seed=5)], minlength=3)
    assert counts.max() - counts.min() <= 1
    with pytest.raises(ValueError, match=r"\[1, 83\]"):
        class_balanced_indices(y, 84)


# ------------------------------------------------------------------------------------------ CIFAR


def test_cifar10_python_batches(tmp_path):
    written = write_cifar_python(tmp_path, "cifar10")
    check_data("cifar10", tmp_path)
    b = build_datasets("cifar10", root=tmp_path)
    assert b.info["format"] == "python" and (len(b.train), len(b.test)) == (20, 4)
    assert (b.num_classes, b.in_channels, b.image_size) == (10, 3, 32)
    imgs, labels = written["data_batch_2"]
    x, y = b.train[4]  # first image of the second batch
    assert y == labels[0] and type(x) is torch.Tensor and x.dtype == torch.float32
    assert torch.allclose(x, _normalised(imgs[0], "cifar10"), atol=1e-5)
    x, y = b.test[3]
    assert y == written["test_batch"][1][3]
    assert torch.allclose(x, _normalised(written["test_batch"][0][3], "cifar10"), atol=1e-5)
    # root may also name the batch folder itself; explicit format works too
    b2 = build_datasets("cifar10", root=tmp_path / "cifar-10-batches-py", format="python")
    assert torch.equal(b2.test[0][0], b.test[0][0])


def test_cifar100_python_batches(tmp_path):
    written = write_cifar_python(tmp_path, "cifar100", n_per_file=3)
    b = build_datasets("cifar100", root=tmp_path, augmentation="cutout")
    assert b.num_classes == 100 and (len(b.train), len(b.test)) == (15, 3)
    x, y = b.test[1]
    assert y == written["test"][1][1]
    assert torch.allclose(x, _normalised(written["test"][0][1], "cifar100"), atol=1e-5)
    torch.manual_seed(0)
    x, y = b.train[0]
    assert x.shape == (3, 32, 32) and y == written["train"][1][0]


def test_cifar_python_missing_and_malformed(tmp_path):
    with pytest.raises(DataError) as e:
        check_data("cifar10", tmp_path)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "batches.meta" in msg
    assert os.path.join(str(tmp_path), "train") in msg and "ImageFolder" in msg
    with pytest.raises(DataError, match="needs a data folder"):
        build_datasets("cifar10")
    with pytest.raises(DataError, match="does not exist"):
        build_datasets("cifar10", root=tmp_path / "nope")
    write_cifar_python(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"missing .*cifar-10-batches-py.data_batch_3"):
        build_datasets("cifar10", root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    check_data("cifar10", tmp_path)  # the cheap check only reads the meta file
    with pytest.raises(DataError, match="malformed data"):
        build_datasets("cifar10", root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(b"junk")
    with pytest.raises(DataError, match="batches.meta"):
        check_data("cifar10", tmp_path)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_cifar10_imagefolder(tmp_path, ext):
    written = write_imagefolder(tmp_path, ["train", "test"], C10, 2, ext)
    check_data("cifar10", tmp_path)
    b = build_datasets("cifar10", root=tmp_path, augmentation="basic")
    assert b.info["format"] == "imagefolder" and (len(b.train), len(b.test)) == (20, 20)
    assert b.test.classes == C10
    x, y = b.test[5]  # class index 2 ("bird"), image 1
    path = str(tmp_path / "test" / "bird" / f"0001.{ext}")
    assert y == 2 and b.test.samples[5][0] == path
    ref = _normalised(written[path], "cifar10")
    if ext == "png":  # lossless
        assert torch.allclose(x, ref, atol=1e-5)
    else:  # JPEG quality 95 of smooth ramps: within a few grey levels
        assert (x - ref).abs().mean() < 0.05 and not torch.allclose(x, ref, atol=1e-5)
    assert b.train[0][0].shape == (3, 32, 32)


def test_cifar100_imagefolder_and_class_checks(tmp_path):
    classes = [f"c{i:03d}" for i in range(100)]
    write_imagefolder(tmp_path, ["train", "test"], classes, 1, "png", size=(8, 8))
    b = build_datasets("cifar100", root=tmp_path, format="imagefolder", train_subset=100)
    assert b.num_classes == 100 and len(b.train) == 100
    assert sorted(b.train.dataset.targets[i] for i in b.train.indices) == list(range(100))
    # 100 classes expected but 10 given -> DataError naming the count and layout
    with pytest.raises(DataError, match="found 100 class folders.*expected 10"):
        check_data("cifar10", tmp_path)
    (tmp_path / "test" / "c042" / "0000.png").unlink()
    with pytest.raises(DataError, match="c042 holds no image file"):
        check_data("cifar100", tmp_path)
    os.rmdir(tmp_path / "test" / "c042")
    with pytest.raises(DataError, match="different class folders.*c042"):
        build_datasets("cifar100", root=tmp_path)


def test_imagefolder_missing_test_split(tmp_path):
    write_imagefolder(tmp_path, ["train"], C10, 1, "png")
    with pytest.raises(DataError) as e:
        build_datasets("cifar10", root=tmp_path)
    assert "missing folder" in str(e.value) and str(tmp_path / "test") in str(e.value)


# ------------------------------------------------------------------------------------------ augmentations


def _unnormalise(x, name):
    spec = DATASETS[name]
    return x * torch.tensor(spec.std)[:, None, None] + torch.tensor(spec.mean)[:, None, None]


def test_basic_is_a_padded_crop_with_optional_flip(tmp_path):
    written = write_cifar_python(tmp_path, "cifar10", n_per_file=1)
    b = build_datasets("cifar10", root=tmp_path, augmentation="basic")
    orig = torch.from_numpy(written["data_batch_1"][0][0].astype(np.float32) / 255).permute(2, 0, 1)
    padded = torch.nn.functional.pad(orig, (4, 4, 4, 4))
    seen = set()
    torch.manual_seed(0)
    for _ in range(30):
        x = _unnormalise(b.train[0][0], "cifar10")
        match = [(dy, dx, fl) for dy in range(9) for dx in range(9) for fl in (0, 1)
                 if torch.allclose(x, (padded.flip(-1) if fl else padded)[:, dy:dy + 32, dx:dx + 32], atol=1e-5)]
        assert match, "output is not a 32x32 crop of the 4-pixel zero-padded (flipped) image"
        seen.update((m[0], m[1]) for m in match)
        seen.update(("flip", m[2]) for m in match)
    assert ("flip", 0) in seen and ("flip", 1) in seen and len(seen) > 10


def test_cutout_square():
    torch.manual_seed(0)
    cut = Cutout(16)
    full_inside = 0
    for _ in range(200):
        out = cut(torch.ones(3, 32, 32))
        zero = out[0] == 0
        assert torch.equal(zero, out[1] == 0) and torch.equal(zero, out[2] == 0)
        rows, cols = torch.nonzero(zero.any(1)).flatten(), torch.nonzero(zero.any(0)).flatten()
        assert len(rows) > 0
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert zero[r0:r1, c0:c1].all() and int(zero.sum()) == (r1 - r0) * (c1 - c0)  # one rectangle
        for lo, hi in ((r0, r1), (c0, c1)):  # side 16 unless clipped by the border
            assert hi - lo == 16 or (lo == 0 or hi == 32) and hi - lo < 16
        full_inside += int(zero.sum()) == 256
    assert 50 < full_inside < 200  # centres near the border are clipped (P(inside) = (17/32)^2 ~ 0.28)


def test_cutout_pipeline_sizes(tmp_path):
    write_cifar_python(tmp_path / "a", "cifar10", n_per_file=1)
    write_cifar_python(tmp_path / "b", "cifar100", n_per_file=1)
    for name, root, size in (("cifar10", tmp_path / "a", 16), ("cifar100", tmp_path / "b", 8)):
        b = build_datasets(name, root=root, augmentation="cutout")
        cut = [t for t in b.train.transform.transforms if isinstance(t, Cutout)]
        assert len(cut) == 1 and cut[0].size == size
        assert b.train.transform.transforms[-1] is cut[0]  # after normalisation, as in DeVries & Taylor
        torch.manual_seed(0)
        x = b.train[0][0]
        assert type(x) is torch.Tensor and x.shape == (3, 32, 32) and (x == 0).all(0).sum() >= size // 2 * size // 2


def test_autoaugment_cutmix(tmp_path):
    write_cifar_python(tmp_path, "cifar10", n_per_file=2)
    b = build_datasets("cifar10", root=tmp_path, augmentation="autoaugment_cutmix")
    assert isinstance(b.batch_transform, RandomCutMix) and b.batch_transform.p == 0.5
    names = [type(t).__name__ for t in b.train.transform.transforms]
    assert "AutoAugment" in names and names.index("AutoAugment") < names.index("Normalize")
    x = torch.stack([b.train[i][0] for i in range(8)])
    y = torch.tensor([b.train[i][1] for i in range(8)])
    torch.manual_seed(0)
    outcomes = set()
    for _ in range(20):
        xb, yb = b.batch_transform(x, y)
        assert xb.shape == x.shape and yb.shape == (8, 10) and yb.dtype == torch.float32
        assert torch.allclose(yb.sum(1), torch.ones(8))
        outcomes.add(bool((yb.max(1).values < 1).any()))
    assert outcomes == {True, False}  # sometimes mixed, sometimes plain one-hot
    always = RandomCutMix(10, p=1.0)
    xa = torch.zeros(2, 3, 32, 32)
    xa[1] = 1.0
    torch.manual_seed(1)
    xm, ym = always(xa, torch.tensor([3, 7]))
    lam = float(ym[0, 3])  # share of image 0's own pixels = the label weight (CutMix Eq. 1)
    if 0 < lam < 1:
        assert abs(float((xm[0] == 0).float().mean()) - lam) < 1e-6
    never = RandomCutMix(10, p=0.0)
    xn, yn = never(xa, torch.tensor([3, 7]))
    assert torch.equal(xn, xa) and torch.equal(yn.argmax(1), torch.tensor([3, 7])) and yn.max() == 1


def test_vit_heavy_sizes(tmp_path):
    write_cifar_python(tmp_path, "cifar10", n_per_file=1)
    b = build_datasets("cifar10", root=tmp_path, augmentation="vit_heavy")
    assert b.image_size == 48 == b.info["image_size"]
    torch.manual_seed(0)
    assert b.train[0][0].shape == (3, 48, 48) and b.test[0][0].shape == (3, 48, 48)
    names = [type(t).__name__ for t in b.train.transform.transforms]
    assert names[:6] == ["Resize", "RandomHorizontalFlip", "RandomRotation", "RandomAffine", "RandomCrop", "Resize"]


# ------------------------------------------------------------------------------------------ MNIST / SVHN / ImageNet


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx(tmp_path, gz, name, folder):
    arrays = write_idx(tmp_path / folder / "raw", gz=gz)
    check_data(name, tmp_path)
    b = build_datasets(name, root=tmp_path, augmentation="basic")
    assert (b.in_channels, b.image_size, len(b.train), len(b.test)) == (1, 28, 6, 4)
    x, y = b.test[2]
    spec = DATASETS[name]
    ref = (torch.from_numpy(arrays["t10k-images-idx3-ubyte"][2].astype(np.float32) / 255) - spec.mean[0]) / spec.std[0]
    assert x.shape == (1, 28, 28) and torch.allclose(x[0], ref, atol=1e-5)
    assert y == int(arrays["t10k-labels-idx1-ubyte"][2])
    flips = [t for t in b.train.transform.transforms if type(t).__name__ == "RandomHorizontalFlip"]
    assert len(flips) == (1 if name == "fashion_mnist" else 0)


def test_mnist_flat_folder_and_errors(tmp_path):
    write_idx(tmp_path)  # files directly in root
    assert len(build_datasets("mnist", root=tmp_path).train) == 6
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        check_data("mnist", empty)
    assert os.path.join(str(empty), "MNIST", "raw") in str(e.value) and "train-images-idx3-ubyte" in str(e.value)
    bad = tmp_path / "bad"
    write_idx(bad)
    (bad / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0c\x01" + (4).to_bytes(4, "big") + bytes(4))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is not an IDX file"):
        build_datasets("mnist", root=bad)
    short = tmp_path / "short"
    arrays = write_idx(short)
    (short / "train-images-idx3-ubyte").write_bytes(_idx_bytes(arrays["train-images-idx3-ubyte"])[:-5])
    with pytest.raises(DataError, match="data bytes"):
        build_datasets("mnist", root=short)


def test_svhn_mat(tmp_path):
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 5), ("test", 3)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [3], [9]][:n], dtype=np.uint8)  # SVHN stores digit 0 as label 10
        sio.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        arrays[split] = (x, y)
    check_data("svhn", tmp_path)
    b = build_datasets("svhn", root=tmp_path, augmentation="basic")
    assert (len(b.train), len(b.test), b.num_classes) == (5, 3, 10)
    assert [b.test[i][1] for i in range(3)] == [0, 1, 2]
    x, _ = b.test[1]
    assert torch.allclose(x, _normalised(arrays["test"][0][:, :, :, 1], "svhn"), atol=1e-5)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match=r"missing .*test_32x32.mat"):
        build_datasets("svhn", root=tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a MATLAB"):
        check_data("svhn", tmp_path)


def test_imagenet_imagefolder(tmp_path):
    write_imagefolder(tmp_path, ["train", "val"], ["n01440764", "n01443537", "n01484850"], 2, "jpg",
                      size=(40, 30))
    check_data("imagenet", tmp_path)
    b = build_datasets("imagenet", root=tmp_path, augmentation="imagenet")
    assert (b.num_classes, b.image_size, len(b.train), len(b.test)) == (3, 224, 6, 6)
    torch.manual_seed(0)
    assert b.train[0][0].shape == (3, 224, 224) and b.test[0][0].shape == (3, 224, 224)
    names = [type(t).__name__ for t in b.train.transform.transforms]
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    test_names = [type(t).__name__ for t in b.test.transform.transforms]
    assert test_names[:2] == ["Resize", "CenterCrop"] and b.test.transform.transforms[0].size == [256]
    (tmp_path / "val").rename(tmp_path / "test")
    with pytest.raises(DataError, match=r"missing folder .*val"):
        build_datasets("imagenet", root=tmp_path)


# ------------------------------------------------------------------------------------------ subset sizes


def _write_mat(root, n_train: int, n_test: int) -> None:
    sio = pytest.importorskip("scipy.io")
    for split, n in (("train", n_train), ("test", n_test)):
        sio.savemat(root / f"{split}_32x32.mat", {"X": np.zeros((32, 32, 3, n), np.uint8),
                                                  "y": np.ones((n, 1), np.uint8)})


@pytest.mark.parametrize("name, write, sizes", [
    # (data set, writer of tiny files, the (train, test) counts the writer put on disk)
    ("digits", lambda root: None, (1437, 360)),  # scikit-learn's 1,797 images split 80/20
    ("cifar10", lambda root: write_cifar_python(root, "cifar10", n_per_file=3), (5 * 3, 3)),
    ("cifar100", lambda root: write_cifar_python(root, "cifar100", n_per_file=2), (5 * 2, 2)),
    ("cifar10", lambda root: write_imagefolder(root, ["train", "test"], C10, 2, "png", size=(8, 8)), (20, 20)),
    ("mnist", lambda root: write_idx(root / "MNIST" / "raw", n_train=7, n_test=3, gz=True), (7, 3)),
    ("svhn", lambda root: _write_mat(root, 6, 4), (6, 4)),
], ids=["digits", "cifar10-python", "cifar100-python", "cifar10-imagefolder", "mnist-idx", "svhn-mat"])
def test_split_sizes_and_subsets_larger_than_the_data(tmp_path, name, write, sizes):
    write(tmp_path)
    root = None if name == "digits" else tmp_path
    assert split_sizes(name, root) == sizes
    b = build_datasets(name, root=root)
    assert (len(b.train), len(b.test)) == sizes, "split_sizes agrees with the data sets the trials build"
    n_train, n_test = sizes
    check_data(name, root, train_subset=n_train, test_subset=n_test)  # the whole split is a valid subset
    with pytest.raises(DataError, match=rf"^data\.train_subset: {n_train + 1} is larger than the training set "
                                        rf"of {name}.* holds {n_train} examples"):
        check_data(name, root, train_subset=n_train + 1)
    with pytest.raises(DataError, match=rf"^data\.test_subset: {n_test + 1} is larger .* holds {n_test} examples"):
        check_data(name, root, train_subset=1, test_subset=n_test + 1)
