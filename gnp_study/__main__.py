"""``python -m gnp_study`` runs the ``gnp-study`` command line."""

import sys

from gnp_study.cli import main

sys.exit(main())
