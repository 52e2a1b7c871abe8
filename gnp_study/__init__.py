"""gnp-study: the gradient-norm-penalty optimizer (Zhao, Zhang & Hu, ICML 2022) and its parameter study.

Modules: ``optim`` (the GNP optimizer, Algorithm 1), ``spec`` (validated study files), ``protocol``
(the greedy stages as plain functions), ``train`` (one trial), ``runner`` (the Ray Tune adapter) and
``trainable`` (the function a trial worker runs), ``results`` and ``report`` (tables, Figures 2-3, HTML),
``cli`` (the ``gnp-study`` command).
"""

__version__ = "0.1.0"
