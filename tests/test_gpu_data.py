"""gnp_study.gpu_data on CPU tensors, checked against independent NumPy computations; one CUDA test
(skipped without a GPU) checks that the device loader gives the CPU loader's batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from gnp_study.gpu_data import DeviceLoader, cutout, flip_where, from_dataset, pad_crop

torch.set_num_threads(1)


def _images(n=12, c=3, h=8, w=8, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def _unique_images(n=10, c=2, h=6, w=7) -> torch.Tensor:
    """Float images whose every pixel value is distinct and > 0 (so zero padding / cutout are visible)."""
    return (torch.arange(n * c * h * w, dtype=torch.float32) + 1).view(n, c, h, w)


def _epoch(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def test_no_flip_no_padding_is_the_normalised_data():
    imgs = _images()
    labels = torch.arange(12)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    loader = DeviceLoader(imgs, labels, 5, shuffle=False, augment="basic", padding=0, flip=False,
                          mean=mean, std=std, device="cpu")
    x, y = _epoch(loader)
    expected = (imgs.numpy().astype(np.float64) / 255.0 - np.array(mean)[None, :, None, None]) \
        / np.array(std)[None, :, None, None]
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-5)
    assert y.tolist() == list(range(12))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    # "none" gives the same
    x2, _ = _epoch(DeviceLoader(imgs, labels, 5, shuffle=False, augment="none", mean=mean, std=std, device="cpu"))
    assert torch.equal(x, x2)


def test_pad_crop_matches_numpy_windows():
    x = torch.randn(6, 3, 5, 4)
    p = 2
    dy = torch.tensor([0, 1, 2, 3, 4, 2])
    dx = torch.tensor([4, 0, 2, 1, 3, 2])
    out = pad_crop(x, p, dy, dx)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (p, p), (p, p)))
    for b in range(6):
        np.testing.assert_array_equal(out[b].numpy(), padded[b, :, dy[b]:dy[b] + 5, dx[b]:dx[b] + 4])
    assert torch.equal(out[5], x[5])  # offset == padding: unchanged


def test_flip_where_matches_numpy():
    x = torch.randn(4, 2, 3, 5)
    mask = torch.tensor([True, False, True, False])
    out = flip_where(x, mask)
    for b in range(4):
        exp = x[b].numpy()[:, :, ::-1] if mask[b] else x[b].numpy()
        np.testing.assert_array_equal(out[b].numpy(), exp)


@pytest.mark.parametrize("size", [1, 3, 4, 7])
def test_cutout_matches_clipped_square(size):
    h, w = 6, 7
    centres = [(0, 0), (5, 6), (3, 3), (0, 6), (5, 0), (2, 5)]
    x = torch.randn(len(centres), 3, h, w) + 10.0
    cy = torch.tensor([c[0] for c in centres])
    cx = torch.tensor([c[1] for c in centres])
    out = cutout(x, cy, cx, size, value=-1.5)
    for b, (yc, xc) in enumerate(centres):
        exp = x[b].numpy().copy()
        y0, x0 = yc - size // 2, xc - size // 2
        exp[:, max(y0, 0):min(y0 + size, h), max(x0, 0):min(x0 + size, w)] = -1.5
        np.testing.assert_array_equal(out[b].numpy(), exp)
        n_rows = min(y0 + size, h) - max(y0, 0)
        n_cols = min(x0 + size, w) - max(x0, 0)
        assert int((out[b, 0] == -1.5).sum()) == n_rows * n_cols
    assert torch.equal(cutout(x, cy, cx, 0), x)


def test_loader_crop_is_a_shifted_window_of_the_zero_padded_image():
    imgs = _unique_images()
    labels = torch.arange(len(imgs))
    p = 2
    loader = DeviceLoader(imgs, labels, 4, shuffle=True, augment="basic", padding=p, flip=False,
                          device="cpu", generator=torch.Generator().manual_seed(3))
    seen = set()
    for _ in range(3):
        x, y = _epoch(loader)
        for xb, yb in zip(x, y):
            padded = np.pad(imgs[yb].numpy(), ((0, 0), (p, p), (p, p)))
            hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                    if np.array_equal(xb.numpy(), padded[:, dy:dy + 6, dx:dx + 7])]
            assert len(hits) == 1, "each sample is exactly one window of its padded image"
            seen.add(hits[0])
    assert len(seen) > 5, f"offsets should vary, saw {seen}"


def test_loader_flip_is_identity_or_mirror_both_seen():
    imgs = _unique_images(n=20)
    loader = DeviceLoader(imgs, torch.arange(20), 20, augment="basic", padding=0, flip=True, device="cpu",
                          generator=torch.Generator().manual_seed(0))
    x, y = _epoch(loader)
    flipped = 0
    for xb, yb in zip(x, y):
        if torch.equal(xb, imgs[yb]):
            continue
        assert torch.equal(xb, imgs[yb].flip(-1))
        flipped += 1
    assert 0 < flipped < 20


def test_loader_cutout_zeroes_one_clipped_square_after_normalisation():
    imgs = _unique_images(n=40, c=3, h=8, w=8)
    s = 4
    mean, std = [0.25, 0.5, 0.75], [2.0, 3.0, 4.0]  # pixel values are integers >= 1: none maps to 0
    loader = DeviceLoader(imgs, torch.arange(40), 16, augment="cutout", cutout_size=s, padding=0, flip=False,
                          mean=mean, std=std, device="cpu", generator=torch.Generator().manual_seed(1))
    x, y = _epoch(loader)
    norm = (imgs - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert not (norm == 0).any()  # so every zero in the batch comes from cutout
    inside = 0
    for xb, yb in zip(x, y):
        zero = (xb == 0)
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2]), "all channels cut"
        rows = torch.nonzero(zero[0].any(1)).flatten()
        cols = torch.nonzero(zero[0].any(0)).flatten()
        assert len(rows) > 0
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert int(zero[0].sum()) == (r1 - r0) * (c1 - c0), "the cut is one full rectangle"
        assert (r1 - r0) <= s and (c1 - c0) <= s
        if r0 > 0 and r1 < 8 and c0 > 0 and c1 < 8:
            assert (r1 - r0, c1 - c0) == (s, s)
            inside += 1
        # untouched pixels are the normalised data
        assert torch.equal(xb[~zero], norm[yb][~zero])
    assert inside > 0


def test_every_sample_once_per_epoch_and_reproducible():
    n, bs = 103, 10
    imgs = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    labels = torch.arange(n)
    mk = lambda seed, **kw: DeviceLoader(imgs, labels, bs, shuffle=True, device="cpu",  # noqa: E731
                                         generator=torch.Generator().manual_seed(seed), **kw)
    loader = mk(0)
    assert len(loader) == 11
    x1, y1 = _epoch(loader)
    x2, y2 = _epoch(loader)
    assert sorted(y1.tolist()) == list(range(n)) and sorted(y2.tolist()) == list(range(n))
    assert torch.equal(x1[:, 0, 0, 0], y1.float()), "images travel with their labels"
    assert not torch.equal(y1, y2), "a new order each epoch"
    assert [len(b) for _, b in mk(0)] == [10] * 10 + [3]
    x1b, y1b = _epoch(mk(0))
    assert torch.equal(y1, y1b) and torch.equal(x1, x1b), "same seed, same epoch"
    dl = mk(0, drop_last=True)
    assert len(dl) == 10
    _, yd = _epoch(dl)
    assert len(yd) == 100 and len(set(yd.tolist())) == 100


def test_dtype_channels_last_and_errors():
    imgs = _images(n=4, h=6, w=6)
    x, _ = next(iter(DeviceLoader(imgs, torch.arange(4), 4, dtype=torch.bfloat16, channels_last=True,
                                  device="cpu")))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="augment"):
        DeviceLoader(imgs, torch.arange(4), 2, augment="mixup", device="cpu")
    with pytest.raises(ValueError, match="labels"):
        DeviceLoader(imgs, torch.arange(3), 2, device="cpu")
    with pytest.raises(ValueError, match="mean"):
        DeviceLoader(imgs, torch.arange(4), 2, mean=[0.1, 0.2], device="cpu")
    with pytest.raises(ValueError, match="std"):
        DeviceLoader(imgs, torch.arange(4), 2, std=[1.0, 0.0, 1.0], device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(imgs, torch.arange(4), 0, device="cpu")


class _CifarLike(Dataset):
    """Like torchvision's CIFAR10: ``data`` NHWC uint8 NumPy, ``targets`` list, PIL items via transform."""

    def __init__(self, n=6):
        rng = np.random.default_rng(0)
        self.data = rng.integers(0, 256, (n, 5, 4, 3), dtype=np.uint8)
        self.targets = [int(t) for t in rng.integers(0, 10, n)]
        self.transform = lambda img: torch.full((3, 5, 4), -99.0)  # ignored in raw mode

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        from PIL import Image

        return Image.fromarray(self.data[i]), self.targets[i]


def test_from_dataset_variants():
    ds = _CifarLike()
    expected = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
    loader = from_dataset(ds, 4, shuffle=False, device="cpu")
    assert torch.equal(loader.images, expected) and loader.labels.tolist() == ds.targets
    # items path (PIL -> uint8 CHW) gives the same tensor
    items = from_dataset(ds, 4, raw=False, shuffle=False, device="cpu")
    assert torch.equal(items.images, expected)
    # Subset follows indices
    sub = from_dataset(Subset(ds, [4, 1]), 2, shuffle=False, device="cpu")
    assert torch.equal(sub.images, expected[[4, 1]]) and sub.labels.tolist() == [ds.targets[4], ds.targets[1]]
    # TensorDataset
    t = TensorDataset(torch.rand(5, 1, 3, 3), torch.arange(5))
    tl = from_dataset(t, 2, shuffle=False, device="cpu")
    assert torch.equal(tl.images, t.tensors[0])
    with pytest.raises(ValueError, match="empty"):
        from_dataset(TensorDataset(torch.zeros(0, 1, 2, 2), torch.zeros(0)), 2, device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_loader_equals_cpu_loader():
    imgs = _images(n=64, h=32, w=32)
    labels = torch.arange(64)
    kw = dict(batch_size=16, augment="cutout", cutout_size=8, mean=[0.5] * 3, std=[0.25] * 3)
    cpu = DeviceLoader(imgs, labels, device="cpu", generator=torch.Generator().manual_seed(7), **kw)
    gpu = DeviceLoader(imgs, labels, device="cuda", generator=torch.Generator().manual_seed(7), **kw)
    assert gpu.images.is_cuda
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)
    # a CUDA generator works too and every sample still appears once
    g = torch.Generator(device="cuda").manual_seed(0)
    _, y = _epoch(DeviceLoader(imgs, labels, device="cuda", generator=g, **kw))
    assert sorted(y.tolist()) == list(range(64))
