"""Ctrl-C while the ``codetr`` command starts: the package's heavy imports (torch, the compiled
ops) run inside :func:`interrupt_exits`, so an interrupt there ends the command as ``codetr``'s
front door does (``interrupted``, exit status 130) instead of with a traceback. Imports only the
standard library, so it can guard the package's first import.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path


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


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM (what Slurm, Kubernetes and ``timeout`` send) raises
    KeyboardInterrupt like Ctrl-C, so a long run saves its work the same way; the previous
    handler comes back afterwards. In another thread the block runs unchanged (only the main
    thread can set a signal handler)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():  # signal.signal would raise
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
