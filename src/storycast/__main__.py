"""``python -m storycast``: the command line (what ``torchrun -m storycast train ...`` starts)."""

import sys

from storycast.cli.main import main

sys.exit(main())
