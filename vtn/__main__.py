"""``python -m vtn <command>`` = the ``vtn`` console script."""
import sys

from vtn.cli import main

sys.exit(main())
