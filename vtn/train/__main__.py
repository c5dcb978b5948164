"""``python -m vtn.train``: ``vtn train``."""

import sys

from vtn.train.loop import cli

sys.exit(cli())
