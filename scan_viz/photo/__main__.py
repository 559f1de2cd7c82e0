import sys

from scan_viz.photo.build import main

sys.exit(main())
