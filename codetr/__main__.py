"""Command line: ``python -m codetr infer ...``."""

from __future__ import annotations

import argparse
import logging
import sys

from codetr import infer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codetr", description="Co-DETR tools")
    commands = parser.add_subparsers(dest="command", required=True)
    infer.add_arguments(commands.add_parser("infer", help="detect objects in images, draw them, write COCO JSON"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return infer.run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
