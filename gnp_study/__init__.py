"""gnp-study: the gradient-norm-penalty optimizer (Zhao, Zhang & Hu, ICML 2022) and its parameter study.

Exports ``GNP`` (``gnp_study.optim.GNP``), ``frozen_bn_stats`` and ``run_study`` (``gnp_study.api.run_study``: a
study run from a notebook or script, as ``gnp-study run greedy``), each loaded on first use. The rest is imported
from its module. The modules by layer, lowest first (each imports only its own layer and lower ones; the map and
the rules are in ``docs/architecture.md``, checked by ``tests/test_architecture.py``):

- optimizer: ``optim`` (Algorithm 1, the amortised second pass, batch-norm handling).
- training parts: ``models`` (the paper's architectures by name), ``data`` (data sets, augmentations,
  subsets, validation split, label noise), ``gpu_data`` (the on-device loader).
- study description: ``spec`` (the study file's schema, ``config_key``), ``study_folder`` (the study
  folder's file names, columns, writers, readers, ``StudyFolderError``).
- statistics: ``stats`` (paired differences, CIs, seeds needed, Fieller's ratio, the choice rule),
  ``shrinkage`` (the calibrated probability of being best).
- study logic: ``protocol`` (plan and decide the greedy stages), ``racing`` (racing stages 2-3),
  ``results`` (tables and verdicts from a study folder), ``cost`` (the cost stage's comparisons).
- training loop: ``train`` (``train_trial``: one trial, no Ray), ``faults`` (the tests' fault-injection seam).
- outputs: ``report`` (Figures 2-3, results page, HTML report), ``cost_figure``, ``paper`` (the paper's
  numbers).
- Ray adapter: ``runner`` (stages as Tune experiments, resume), ``trainable`` (what a Ray worker runs),
  ``tune_state`` (Tune's saved state checked and repaired before a resume),
  ``race_search`` (the race's Tune searcher, TensorBoard and MLflow callbacks), ``jobs`` (Ray Jobs).
- interface: ``api`` (``run_study``, ``load_study``: the command line's study checks and run, for notebooks and
  scripts), ``cli`` (the ``gnp-study`` command, calling ``api``).
"""

__all__ = ["GNP", "frozen_bn_stats", "run_study", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``gnp_study.GNP`` and ``gnp_study.frozen_bn_stats`` import torch, ``gnp_study.run_study`` its module, on
    first use only (PEP 562), so the modules that need no torch (statistics, study logic, the command line's
    help) load without it."""
    if name in ("GNP", "frozen_bn_stats"):
        from gnp_study import optim

        return getattr(optim, name)
    if name == "run_study":
        from gnp_study import api

        return api.run_study
    raise AttributeError(f"module 'gnp_study' has no attribute {name!r}")
