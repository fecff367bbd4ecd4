"""``python -m activestorage.server [flags]``: same as ``activestorage serve``."""

import sys

from .serve import serve_main

if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
