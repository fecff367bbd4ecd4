"""``python -m activestorage``: the same command line as ``activestorage``."""

import sys

from .cli import main

sys.exit(main())
