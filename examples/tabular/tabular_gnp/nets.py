"""The model: a plain ``nn.Module`` the study names as ``tabular_gnp.nets:MLP``."""

from torch import nn


class MLP(nn.Module):
    """Two hidden layers with ReLU; maps ``(B, in_features)`` floats to ``(B, num_classes)`` logits.

    gnp-study passes ``in_features`` (the length of one sample) and ``num_classes`` because the signature
    names them; ``hidden`` comes from the study's ``model.kwargs``.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)
