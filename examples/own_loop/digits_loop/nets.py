"""The model: a small MLP, named ``digits_loop.nets:MLP``."""

from torch import nn


class MLP(nn.Module):
    """``(B, in_features)`` floats -> ``(B, num_classes)`` logits, one hidden layer with dropout."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)
