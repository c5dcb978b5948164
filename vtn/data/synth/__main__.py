"""``python -m vtn.data.synth``: ``vtn make-embedded``."""

import sys

from vtn.data.synth.generator import cli

sys.exit(cli())
