"""``python -m gnp_study`` runs the ``gnp-study`` command line."""

from gnp_study.cli import entry

entry()
