"""codetr.atomic: check_replaceable_dir, the one check of an output folder that atomic_dir replaces
whole (used by export, infer, eval and data synthetic). Each case checks that nothing was created."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from codetr.atomic import atomic_dir, check_replaceable_dir, check_writable_file

OVERWRITE_HINT = "choose a new or empty folder, or pass --overwrite to replace that folder and everything in it"


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_missing_and_empty_folders_are_accepted_and_nothing_is_created(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_replaceable_dir(Path("a/b/out"), False, argument="--output") == tmp_path / "a" / "b" / "out"
    (tmp_path / "empty").mkdir()
    assert check_replaceable_dir(Path("empty"), False, argument="--output") == tmp_path / "empty"
    assert tree(tmp_path) == ["empty"]


def test_a_non_empty_folder_needs_overwrite_and_the_refusal_lists_it(tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    for name in ("f", "e", "d", "c", "b", "a"):
        (output / name).write_text("")
    with pytest.raises(FileExistsError) as caught:
        check_replaceable_dir(output, False, argument="--output")
    assert str(caught.value) == f"--output {output} is not empty (holds a, b, c, d, e, ...); {OVERWRITE_HINT}"
    assert check_replaceable_dir(output, True, argument="--output") == output
    assert tree(output) == ["a", "b", "c", "d", "e", "f"]


def test_a_replaceable_folder_needs_no_overwrite(tmp_path: Path) -> None:
    """The predicate sees the absolute folder; a refused folder is described by its name."""
    output = tmp_path / "out"
    output.mkdir()
    (output / "model.onnx").write_text("")
    seen = []

    def holds_only_onnx(folder: Path) -> bool:
        seen.append(folder)
        return all(entry.suffix == ".onnx" for entry in folder.iterdir())

    assert check_replaceable_dir(output, False, argument="output", replaceable=holds_only_onnx,
                                 replaceable_name="an ONNX folder") == output
    assert seen == [output]
    (output / "notes.txt").write_text("")
    with pytest.raises(FileExistsError) as caught:
        check_replaceable_dir(output, False, argument="output", replaceable=holds_only_onnx,
                              replaceable_name="an ONNX folder", overwrite_replaces="an ONNX folder")
    assert str(caught.value) == (f"output {output} is not empty and is not an ONNX folder (holds model.onnx, notes.txt); "
                                 "choose a new or empty folder, or pass --overwrite to replace an ONNX folder")


def test_a_file_is_refused(tmp_path: Path) -> None:
    existing = tmp_path / "results.json"
    existing.write_text("keep")
    with pytest.raises(NotADirectoryError, match=re.escape(f"--output {existing} exists and is not a directory; give a folder")):
        check_replaceable_dir(existing, True, argument="--output")
    below = existing / "out"
    with pytest.raises(NotADirectoryError, match=re.escape(f"--output: cannot create directory {below}: {existing} is not a directory")):
        check_replaceable_dir(below, True, argument="--output")
    assert existing.read_text() == "keep"


@pytest.mark.parametrize("given", [".", "..", "../inside"])
def test_a_folder_holding_the_current_folder_is_refused_even_with_overwrite(tmp_path: Path, monkeypatch, given: str) -> None:
    """Swapping it out would pull the folder the process (and the user's shell) is in away."""
    (tmp_path / "out" / "inside").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "out" / "inside")
    expected = f"--output {given} holds the current folder; a finished run replaces {given} whole, so choose a folder outside it"
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_replaceable_dir(Path(given), True, argument="--output")
    assert tree(tmp_path) == ["out", "out/inside"]


def test_a_folder_holding_an_input_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    output = tmp_path / "out"
    images = output / "images"
    images.mkdir(parents=True)
    other = tmp_path / "other.json"
    for inputs in ([other, images], [output]):
        with pytest.raises(ValueError, match=re.escape(f"holds the input {inputs[-1]}; a finished run replaces")):
            check_replaceable_dir(output, True, argument="--output", inputs=inputs)
    assert check_replaceable_dir(output, True, argument="--output", inputs=[other]) == output  # a sibling is fine


def test_a_read_only_parent_is_refused(tmp_path: Path, monkeypatch) -> None:
    read_only = tmp_path / "read_only"
    (read_only / "old").mkdir(parents=True)
    # Root may write into a chmod 555 folder, so os.access is what says the folder is read-only here.
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only)
    new = read_only / "new" / "out"
    with pytest.raises(PermissionError, match=re.escape(f"--output: cannot create directory {new}: {read_only} is not writable")):
        check_replaceable_dir(new, False, argument="--output")
    with pytest.raises(PermissionError, match=re.escape(f"--output: cannot replace {read_only / 'old'}: its folder "
                                                         f"{read_only} is not writable")):
        check_replaceable_dir(read_only / "old", True, argument="--output")
    assert tree(tmp_path) == ["read_only", "read_only/old"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_a_folder_no_one_can_write_into_is_refused_before_any_work() -> None:
    # /proc passes os.access for root yet refuses new entries: only trying to create one tells.
    with pytest.raises(PermissionError, match=re.escape("--output: cannot create directory /proc/codetr-run: /proc is not "
                                                        "writable (")):
        check_replaceable_dir(Path("/proc/codetr-run"), False, argument="--output")
    with pytest.raises(PermissionError, match=re.escape("--json /proc/results.json: folder /proc is not writable (")):
        check_writable_file(Path("/proc/results.json"), argument="--json")


def test_the_write_check_leaves_nothing_behind(tmp_path: Path) -> None:
    check_replaceable_dir(tmp_path / "new" / "out", False, argument="--output")
    check_writable_file(tmp_path / "results.json", argument="--json")
    assert tree(tmp_path) == []


def test_a_folder_that_cannot_be_moved_aside_is_named_and_left_as_it_was(tmp_path: Path, monkeypatch) -> None:
    # What an immutable folder (chattr +i) does at the swap; no permission bit shows it before.
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    replace = os.replace

    def refuse_to_move_output(source, target):
        if Path(source) == output:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        replace(source, target)

    monkeypatch.setattr(os, "replace", refuse_to_move_output)
    with pytest.raises(OSError, match=re.escape(f"cannot replace {output} with the finished run (Operation not "
                                                f"permitted); {output} was left as it was and the new run discarded")):
        with atomic_dir(output) as staging:
            (staging / "new.txt").write_text("new")
    assert tree(tmp_path) == ["out", "out/old.txt"]


def test_writable_file_checks_name_the_option(tmp_path: Path) -> None:
    (tmp_path / "exp").mkdir()
    (tmp_path / "a_file").write_text("")
    (tmp_path / "model.onnx").write_text("keep")
    cases = [
        (tmp_path / "exp", (".json",), IsADirectoryError, f"--json {tmp_path / 'exp'} is a folder; give a file name, e.g. "
                                                  f"--json {tmp_path / 'exp' / 'results.json'}"),
        (tmp_path / "plot.txt", (".json",), ValueError, "expected a file name ending in .json"),
        (tmp_path / "model.onnx", (), ValueError, f"is the input {tmp_path / 'model.onnx'}; writing it would replace it"),
        (tmp_path / "missing" / "b.json", (), FileNotFoundError, f"folder {tmp_path / 'missing'} does not exist"),
        (tmp_path / "a_file" / "b.json", (), NotADirectoryError, f"{tmp_path / 'a_file'} is not a folder"),
    ]
    for path, suffixes, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            check_writable_file(path, argument="--json", suffixes=suffixes, inputs=[tmp_path / "model.onnx"])
    assert check_writable_file(tmp_path / "new.json", argument="--json", suffixes=(".json",)) == tmp_path / "new.json"
    assert (tmp_path / "model.onnx").read_text() == "keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_writable_file_in_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "read_only").mkdir(mode=0o555)
    with pytest.raises(PermissionError, match="folder .*read_only is not writable"):
        check_writable_file(tmp_path / "read_only" / "b.json", argument="--json")


def test_a_file_output_inside_an_input_folder_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    annotation_file = data / "annotations" / "instances_val.json"
    annotation_file.write_text("{}")
    with pytest.raises(ValueError, match="inside the input folder"):
        check_writable_file(annotation_file, argument="--output", suffixes=(".json",), inputs=[data])
    with pytest.raises(ValueError, match="inside the input folder"):
        check_writable_file(data / "annotations" / "new.json", argument="--output", inputs=[data])
    assert check_writable_file(tmp_path / "sens.json", argument="--output", inputs=[data]) == tmp_path / "sens.json"
