#!/usr/bin/env python3
"""Export a Co-DINO model: ``python export.py --dtype float16 --height 768 --width 1152 --output out/``.

See ``python export.py --help`` and :mod:`codetr.export`.
"""

import sys

from codetr.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
