"""The CPU instruction sets every test process computes with, so that a trial trains to the same floats
on most x86-64 machines, whatever wider instructions they also have.

PyTorch picks its CPU kernels at run time from what the processor offers: ATen's vectorised kernels
(``ATEN_CPU_CAPABILITY``, PyTorch's "CPU capability" in ``torch.__config__.show()``), oneDNN's convolution
and matrix kernels (``ONEDNN_MAX_CPU_ISA``, oneDNN's "CPU dispatcher control") and MKL's BLAS
(``MKL_CBWR``, MKL's "Conditional Numerical Reproducibility"). An AVX-512 kernel sums in another order than
an AVX2 one, so an AVX-512 machine trains a trial to other floats in the 6th digit, and a few epochs of SGD
make that a different test error. With these pins the stored old study folder
(``tests/data/old_study_folder.tar.gz``) trains on AVX-512 machines as on the one that made it. Not on
every CPU: oneDNN also chooses its blocking from the processor (seen: a CPU with AMX differs), which is why
the bit-for-bit tests train the old code beside today's on the same machine (``tests/oldcode.py``).
Every process the tests start, Ray workers included (they inherit the environment), uses these settings;
``tests/make_reference_trials.py`` and ``tests/make_old_study_folder.py`` pin them too.

The variables are read when torch loads its kernels: :func:`pin` must run before ``import torch``.
"""

from __future__ import annotations

import os
import sys

#: Environment variable -> value. Every x86-64 CPU of the last decade has AVX2.
PINNED_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def pin() -> None:
    """Set :data:`PINNED_ISA` in this process's environment (children inherit it).

    Raises:
        RuntimeError: torch was imported already, so its kernels were chosen without the pins.
    """
    if "torch" in sys.modules and any(os.environ.get(k) != v for k, v in PINNED_ISA.items()):
        raise RuntimeError("tests/numerics.pin() must run before torch is imported")
    os.environ.update(PINNED_ISA)

