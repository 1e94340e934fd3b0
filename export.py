#!/usr/bin/env python3
"""``python export.py ...`` is ``codetr export ...``; see ``codetr export --help``."""

import sys

from codetr.cli import main

if __name__ == "__main__":
    sys.argv.insert(1, "export")
    sys.exit(main())
