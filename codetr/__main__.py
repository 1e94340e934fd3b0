"""``python -m codetr``: the same as the ``codetr`` command."""

import sys

from codetr.cli import main

if __name__ == "__main__":
    sys.exit(main())
