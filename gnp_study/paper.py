"""The paper's reference numbers (Tables 1-4 of Zhao, Zhang & Hu, ICML 2022) as a table.

The numbers live in ``gnp_study/paper_results.csv``, one row per (table, model, data set, augmentation,
scheme, metric). Columns:

- ``table``: 1-4. ``model``: the :data:`gnp_study.models.MODELS` name; ``paper_model``: the paper's label.
- ``dataset`` (cifar10 / cifar100 / imagenet) and ``augmentation`` (:data:`gnp_study.data.AUGMENTATIONS`
  names: basic, cutout, autoaugment_cutmix, vit_heavy, imagenet).
- ``scheme``: standard (alpha = 0), sam (alpha = 1) or gnp (the paper's "Ours").
- ``metric``: ``error`` (test error rate, Tables 1-3) or ``top1_error`` / ``top5_error`` (Table 4).
- ``mean``, ``std``: percent; ``std`` is empty (NaN) where the paper gives none (VGG16, single best runs).
- ``n_seeds``: runs behind the number (5; 3 for PyramidNet-SD and ImageNet; 1 for VGG16).
- ``epochs``: where the paper states it (ViT 200 basic / 1200 heavy; ImageNet 100).
- ``note``: caveats, including the two misprints: Table 3's last cell is printed "6.59" and stored as
  36.59; Table 4's headers say "Accuray" but its values are error rates.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

__all__ = ["SCHEMES", "load_paper_results", "paper_reference"]

SCHEMES = ("standard", "sam", "gnp")

# registry names whose paper experiment is reported under another registry name
_ALIASES = {"pyramidnet272_200_sd": "pyramidnet164_270_sd"}


@lru_cache(maxsize=1)
def _load() -> pd.DataFrame:
    with resources.files("gnp_study").joinpath("paper_results.csv").open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, dtype={"table": "int64", "n_seeds": "int64"}, keep_default_na=False,
                         na_values={"std": [""], "epochs": [""], "mean": [""]})
    df["note"] = df["note"].astype(str)
    df["epochs"] = df["epochs"].astype("Int64")
    return df


def load_paper_results() -> pd.DataFrame:
    """All reference numbers of the paper's Tables 1-4.

    Returns:
        a fresh ``pandas.DataFrame`` (a copy, safe to modify) with the columns described in the module
        docstring: 96 rows (Table 1: 54, Table 2: 12, Table 3: 12, Table 4: 18); ``mean``/``std`` in
        percent, ``std`` NaN where the paper gives none.
    Source: Zhao, Zhang & Hu 2022, Tables 1-4 (two misprints corrected, see ``note``).
    """
    return _load().copy()


def paper_reference(model: str, dataset: str, augmentation: str) -> pd.DataFrame | None:
    """The paper's numbers for one experiment, to show beside measured results.

    Args:
        model: a registry model name (e.g. ``"wrn28_10"``). ``pyramidnet272_200_sd`` maps to the paper's
            PyramidNet-SD row (stored as ``pyramidnet164_270_sd``, the depth the paper names), with the
            ``note`` saying so.
        dataset: ``cifar10``, ``cifar100`` or ``imagenet``.
        augmentation: ``basic``, ``cutout``, ``autoaugment_cutmix``, ``vit_heavy`` or ``imagenet``.
    Returns:
        rows ordered standard, sam, gnp (for ImageNet: each scheme's top-1 then top-5 row), index reset;
        None when the paper has no such experiment.
    """
    df = _load()
    key = _ALIASES.get(model, model)
    sel = df[(df["model"] == key) & (df["dataset"] == dataset) & (df["augmentation"] == augmentation)]
    if sel.empty:
        return None
    out = sel.copy()
    out["_order"] = out["scheme"].map({s: i for i, s in enumerate(SCHEMES)})
    out = out.sort_values(["_order", "metric"], kind="stable").drop(columns="_order").reset_index(drop=True)
    if key != model:
        out["note"] = out["note"] + f"; requested as {model}"
    return out
