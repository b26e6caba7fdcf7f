"""`python -m edge_export` runs the CLI."""

import sys

from edge_export.cli import main

sys.exit(main())
