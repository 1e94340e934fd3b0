"""Writing files and folders so that nobody ever sees a half-written one."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

logger = logging.getLogger("codetr")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Readers never see a half-written file: ``os.replace`` within one directory is atomic, and
    on failure the temporary file is removed.
    """
    # Same suffix as the target: some writers (torch.export.save, torch_tensorrt.save) check it.
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"nothing was written to {temporary}")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def check_writable_file(
    path: Path, *, argument: str, suffixes: Sequence[str] = (), inputs: Sequence[Path] = (),
) -> Path:
    """Raise, writing nothing, unless :func:`atomic_path` can later write the file ``path`` (so a
    long run never ends in "Is a directory"): ``path`` is not a folder, ends in one of
    ``suffixes`` (lower case, with the dot; any when empty), is none of ``inputs`` and inside none
    of the folders among them (writing it could replace a file the command reads), and its folder
    exists and is writable. Messages
    name the option as ``argument``. Returns ``path``.

    Raises IsADirectoryError, ValueError, FileNotFoundError, NotADirectoryError or PermissionError.
    """
    path = Path(path)
    if path.is_dir():
        example = path / f"results{suffixes[0] if suffixes else ''}"
        raise IsADirectoryError(f"{argument} {path} is a folder; give a file name, e.g. {argument} {example}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{argument} {path}: expected a file name ending in {', '.join(suffixes)}")
    for given in inputs:
        if path.resolve() == Path(given).resolve():
            raise ValueError(f"{argument} {path} is the input {given}; writing it would replace it, so choose another name")
        if Path(given).is_dir() and path.resolve().is_relative_to(Path(given).resolve()):
            raise ValueError(f"{argument} {path} is inside the input folder {given}, which this command reads; write it "
                             "outside that folder")
    folder = path.parent
    if not folder.exists():
        raise FileNotFoundError(f"{argument} {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{argument} {path}: {folder} is not a folder")
    refusal = _write_refusal(folder)
    if refusal is not None:
        raise PermissionError(f"{argument} {path}: folder {folder} is not writable{refusal}")
    return path


def _write_refusal(folder: Path) -> str | None:
    """None if a new entry can be made in the existing folder ``folder``; else the reason, as a
    message suffix ("" for what the permission bits say, " (<OS error>)" for what a try found).

    The permission bits alone miss what root meets: root passes ``os.access`` everywhere, yet
    cannot create files in /proc, /sys or on a read-only mount. So an empty folder is made and
    removed at once, and its failure named here rather than after a long run.
    """
    if not os.access(folder, os.W_OK | os.X_OK):
        return ""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".codetr-write-check-", dir=folder))
    except OSError as error:
        return f" ({error.strerror or error})"
    return None


def check_replaceable_dir(
    path: Path,
    overwrite: bool,
    *,
    argument: str,
    inputs: Sequence[Path] = (),
    replaceable: Callable[[Path], bool] | None = None,
    replaceable_name: str = "",
    overwrite_replaces: str = "that folder and everything in it",
) -> Path:
    """Raise, creating nothing (an empty folder tried in the nearest existing parent is removed at
    once), unless :func:`atomic_dir` can write a run to ``path`` and swap it in whole; return
    ``path`` made absolute.

    ``path`` must be missing or an empty folder, or a non-empty one that ``replaceable`` accepts
    (what the command itself writes, e.g. an earlier export; described as ``replaceable_name`` in
    the refusal), or any folder with ``overwrite``. Never a file, a folder holding the current
    folder or one of ``inputs`` (the swap would remove them), or a path whose nearest existing
    parent is not a writable folder. Messages name the option as ``argument`` (e.g. ``--output``)
    and say what is expected; the --overwrite hint says what it replaces (``overwrite_replaces``).

    Raises NotADirectoryError, ValueError, FileExistsError or PermissionError.
    """
    absolute = Path(path).absolute()
    if absolute.exists() and not absolute.is_dir():
        raise NotADirectoryError(f"{argument} {path} exists and is not a directory; give a folder (created if missing)")
    resolved = absolute.resolve()
    for held, what in ((Path.cwd(), "the current folder"), *((given, f"the input {given}") for given in inputs)):
        if Path(held).resolve().is_relative_to(resolved):
            raise ValueError(f"{argument} {path} holds {what}; a finished run replaces {path} whole, so choose a "
                             "folder outside it")
    if absolute.is_dir() and not overwrite:
        found = sorted(entry.name for entry in absolute.iterdir())
        if found and not (replaceable is not None and replaceable(absolute)):
            listing = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            not_replaceable = f" and is not {replaceable_name}" if replaceable is not None else ""
            raise FileExistsError(
                f"{argument} {path} is not empty{not_replaceable} (holds {listing}); choose a new or empty folder, "
                f"or pass --overwrite to replace {overwrite_replaces}"
            )
    existing = next(folder for folder in absolute.parents if folder.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{argument}: cannot create directory {path}: {existing} is not a directory")
    refusal = _write_refusal(existing)
    if refusal is not None:
        if absolute.exists():  # the new run is built beside it and swapped in
            raise PermissionError(f"{argument}: cannot replace {path}: its folder {existing} is not writable{refusal}")
        raise PermissionError(f"{argument}: cannot create directory {path}: {existing} is not writable{refusal}")
    return absolute


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``path`` (``.<name>.partial-<pid>``) to write a whole run into;
    only if the block succeeds does it replace ``path`` whole.

    Whatever was at ``path`` is removed only after the new folder is in place (and restored if
    that move fails), so ``path`` always holds one complete run, never a mix of two. On failure
    or KeyboardInterrupt the staging folder, and the parent folders created for it, are removed
    and ``path`` is left as it was. Staging and replaced folders that a killed process (SIGKILL,
    power loss) left beside ``path`` are removed first. The caller checks beforehand that
    ``path`` may be replaced.
    """
    path = Path(path).absolute()
    created = [folder for folder in path.parents if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path)
    staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        staging.mkdir()
        yield staging
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first: the folders created for nothing
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _remove_stale_siblings(path: Path) -> None:
    """Remove staging and replaced folders beside ``path`` whose process no longer runs, and this
    process's own."""
    for sibling in path.parent.glob(f".{path.name}.*-*"):
        kind, _, pid = sibling.name.removeprefix(f".{path.name}.").partition("-")
        mine_or_dead = pid.isdigit() and (int(pid) == os.getpid() or not _process_alive(int(pid)))
        if kind in ("partial", "replaced") and mine_or_dead:
            shutil.rmtree(sibling, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _swap_in(staging: Path, path: Path) -> None:
    """Put the finished ``staging`` folder at ``path``; what was there is removed only after the
    new folder is in place, and restored if the move fails."""
    if not path.exists():
        os.replace(staging, path)
        return
    replaced = path.with_name(f".{path.name}.replaced-{os.getpid()}")
    try:
        os.replace(path, replaced)
    except OSError as error:  # e.g. an immutable folder (chattr +i), which no permission bit shows
        raise OSError(error.errno, f"cannot replace {path} with the finished run ({error.strerror}); "
                                   f"{path} was left as it was and the new run discarded") from error
    try:
        os.replace(staging, path)
    except BaseException:
        os.replace(replaced, path)
        raise
    shutil.rmtree(replaced, ignore_errors=True)
    logger.info("replaced the previous contents of %s", path)
