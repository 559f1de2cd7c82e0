"""``python -m scan_viz.cli``: the ``scan-viz`` command."""
import sys

from scan_viz.cli import main

sys.exit(main())
