"""``python -m launcher`` runs the command line."""

import sys

from launcher.cli import main

sys.exit(main())
