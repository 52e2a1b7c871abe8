"""The data: scikit-learn's 8x8 digits as a table of 64 pixel features, named ``digits_loop.data:pixels``."""

import torch
from torch.utils.data import TensorDataset


def pixels(test_fraction: float = 0.3, seed: int = 0):
    """A stratified split of scikit-learn's digits (1,797 images, 10 classes), pixels scaled to [0, 1].

    Returns:
        ``(train, test)`` ``TensorDataset``s of ``(features (64,) float32, label int64)`` with a
        ``targets`` attribute (the labels), which gnp-study reads to count the classes.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=test_fraction, stratify=y, random_state=seed)
    out = []
    for xs, ys in ((x_tr, y_tr), (x_te, y_te)):
        ds = TensorDataset(torch.as_tensor(xs, dtype=torch.float32), torch.as_tensor(ys, dtype=torch.int64))
        ds.targets = ds.tensors[1]
        out.append(ds)
    return tuple(out)
