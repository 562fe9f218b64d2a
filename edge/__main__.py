"""``python -m edge`` runs the edge CLI."""

import sys

from .cli import main

sys.exit(main())
