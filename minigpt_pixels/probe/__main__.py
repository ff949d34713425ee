"""`python -m minigpt_pixels.probe`: see cli.py."""

import sys

from .cli import main

sys.exit(main())
