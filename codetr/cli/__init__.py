"""The ``codetr`` command (also ``python -m codetr``): one front door to every tool.

Each subcommand is a module of this package with ``add_parser(subparsers)``, which declares its
options, and ``run(args) -> int``. Errors a user can act on (ValueError, OSError, ImportError and
their subclasses: a missing file, a bad option value, an optional package not installed) print one
``error: ...`` line and exit
with status 2; Ctrl-C prints ``interrupted`` and exits with 130; neither shows a traceback.
That holds from the first import on: ``import codetr`` (torch, the compiled ops) runs before
:func:`main`, so the package imports them inside :func:`interrupt_exits`. This module imports
nothing heavy at its top.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every subcommand's libraries
        args = parser.parse_args(argv)
        # A command may restart the process with a changed environment (export does, for
        # TensorRT-RTX's parser); only when it owns the process, not when called as a function.
        args.process_argv = list(sys.argv[1:]) if argv is None else None
        configure_logging(args.verbose)
        return args.run(args)
    except (ValueError, OSError, ImportError) as error:  # ImportError: an optional package is missing
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def interrupt_exits() -> Iterator[None]:
    """When this process is the ``codetr`` command (the console script or ``python -m codetr``),
    Ctrl-C inside the block prints ``interrupted`` and exits with 130, as :func:`main` does; in
    any other program (a library import) the KeyboardInterrupt goes on as usual."""
    try:
        yield
    except KeyboardInterrupt:
        if not _is_codetr_command():
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _is_codetr_command() -> bool:
    # While ``python -m codetr`` imports the package, sys.argv[0] is still "-m": the interpreter's
    # own options (sys.orig_argv, up to the script or module) tell.
    options = iter(sys.orig_argv[1:])
    for option in options:
        if option == "-m":
            return next(options, None) == "codetr"
        if option in ("-X", "-W"):  # options whose value is the next argument
            next(options, None)
        elif option == "-c" or not option.startswith("-"):  # a command string or a script: its own arguments follow
            break
    return Path(sys.argv[0]).stem == "codetr"
