"""The ``codetr`` command (also ``python -m codetr``): one front door to every tool.

Each subcommand is a module of this package with ``add_parser(subparsers)``, which declares its
options, and ``run(args) -> int``. Errors a user can act on (ValueError, OSError, ImportError and
their subclasses: a missing file, a bad option value, an optional package not installed) print one
``error: ...`` line and exit with status 2; Ctrl-C, and SIGTERM while a command runs, print
``interrupted`` and exit with 130; neither shows a traceback. That holds from the first import on: ``import codetr`` (torch, the
compiled ops) runs before :func:`main`, inside :func:`codetr.interrupt.interrupt_exits`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from codetr.interrupt import terminate_as_interrupt

SUBCOMMANDS = ("export", "infer", "eval", "compare", "bench", "train", "quantize_sensitivity", "data")
"""Module names under codetr.cli, in the order ``codetr --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codetr",
        description="Co-DETR (Co-DINO) from PyTorch to deployment: export, run, evaluate, benchmark, train.",
    )
    parser.add_argument("--verbose", action="store_true", help="also log the libraries' details")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"codetr.cli.{name}")
        subparser = module.add_parser(subparsers)
        subparser.set_defaults(run=module.run)
    return parser


def configure_logging(verbose: bool) -> None:
    """codetr's progress at INFO; other libraries only warn unless ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("codetr").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        logging.getLogger("onnxscript").setLevel(logging.ERROR)  # warns about every constant it declines to fold
        # Imported by every AOTInductor load; on a machine without a GPU it warns that it found none.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every subcommand's libraries
        args = parser.parse_args(argv)
        # A command may restart the process with a changed environment (export does, for
        # TensorRT-RTX's parser); only when it owns the process, not when called as a function.
        args.process_argv = list(sys.argv[1:]) if argv is None else None
        configure_logging(args.verbose)
        # SIGTERM (a scheduler's or `timeout`'s stop) ends a command like Ctrl-C: training saves
        # its run, export/infer/eval leave --output as it was and remove their staging folder.
        with terminate_as_interrupt():
            return args.run(args)
    except (ValueError, OSError, ImportError) as error:  # ImportError: an optional package is missing
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
