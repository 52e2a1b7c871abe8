"""The data: a function the study names as ``tabular_gnp.data:breast_cancer``."""

import torch
from torch.utils.data import Dataset


class Table(Dataset):
    """Rows of a feature table: items ``(features (F,) float32, int label)``; ``targets`` holds the labels
    (gnp-study reads it for class-balanced subsets, validation splits and label noise)."""

    def __init__(self, x, y):
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.targets = torch.as_tensor(y, dtype=torch.int64)
        self.classes = ["malignant", "benign"]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])


def breast_cancer(test_fraction: float = 0.3, seed: int = 0):
    """scikit-learn's breast-cancer table split into a stratified training and test set, each feature
    standardised with the training set's mean and standard deviation.

    Returns:
        ``(train, test)`` :class:`Table` data sets.
    """
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(x_tr)
    return Table(scaler.transform(x_tr), y_tr), Table(scaler.transform(x_te), y_te)
