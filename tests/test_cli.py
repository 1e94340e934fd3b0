"""The front door (codetr/cli/__init__.py, codetr/__main__.py): Ctrl-C at any point, even while
the libraries are still importing, prints ``interrupted`` and exits 130 without a traceback.

A stand-in module that raises KeyboardInterrupt when imported, put first on the path, plays the
Ctrl-C at that import: deterministic, unlike a timed SIGINT.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_with_interrupted_import(tmp_path: Path, module: str, command: list[str]) -> subprocess.CompletedProcess:
    stand_ins = tmp_path / "stand_ins"
    stand_ins.mkdir(exist_ok=True)
    (stand_ins / f"{module}.py").write_text("raise KeyboardInterrupt\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stand_ins), str(ROOT)])}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["torch", "onnx"])  # torch: while importing codetr; onnx: a subcommand's module
def test_ctrl_c_while_importing_prints_interrupted(tmp_path: Path, module: str) -> None:
    done = run_with_interrupted_import(tmp_path, module, [sys.executable, "-m", "codetr", "export", "--help"])
    assert (done.returncode, done.stderr, done.stdout) == (130, "interrupted\n", "")


def test_ctrl_c_while_importing_in_the_console_script(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "codetr"  # what pip writes for [project.scripts] codetr = "codetr.cli:main"
    script.parent.mkdir()
    script.write_text("import sys\nfrom codetr.cli import main\nsys.exit(main())\n")
    done = run_with_interrupted_import(tmp_path, "torch", [sys.executable, str(script), "--help"])
    assert (done.returncode, done.stderr) == (130, "interrupted\n")


def test_a_library_import_keeps_its_keyboard_interrupt(tmp_path: Path) -> None:
    """Only the codetr command turns Ctrl-C into an exit: a program importing codetr gets the exception."""
    done = run_with_interrupted_import(tmp_path, "torch", [sys.executable, "-c", "import codetr"])
    assert done.returncode != 130 and "KeyboardInterrupt" in done.stderr


def test_sigterm_inside_terminate_as_interrupt_is_a_keyboard_interrupt() -> None:
    import os
    import signal

    from codetr.interrupt import terminate_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_while_a_command_runs_ends_it_like_ctrl_c(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Every command, not only train: export/infer/eval then clean up as they do for Ctrl-C."""
    import os
    import signal
    import time

    import codetr.cli.data as data_command
    from codetr.cli import main

    def terminated(args) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        return 0

    monkeypatch.setattr(data_command, "run", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["data", "synthetic", "--output", "unused"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_no_option_states_its_default_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """An option whose help says its default gets no second "(default: ...)" from the formatter."""
    from codetr.cli import build_parser

    monkeypatch.setenv("COLUMNS", "1000")  # argparse's width: each option's help on one line
    commands = build_parser()._subparsers._group_actions[0].choices
    assert "train" in commands
    for name, command in commands.items():
        for line in command.format_help().splitlines():
            assert line.count("default:") <= 1, f"codetr {name} --help: {line.strip()}"
            assert "(default: None)" not in line, f"codetr {name} --help: {line.strip()}"


@pytest.mark.parametrize("command", ["infer", "eval", "bench", "compare"])
def test_a_truncated_model_is_an_error_line_not_a_traceback(tmp_path: Path, tiny_coco, metadata_document, capsys,
                                                            command: str) -> None:
    """Every command that loads an artifact: ``error: <file> is not a readable ONNX model ...``, exit 2."""
    import onnx

    from codetr.cli import main
    from codetr.contract.metadata import write_metadata

    write_metadata(metadata_document(), tmp_path / "metadata.json")

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["images"], ["boxes"])], "g",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 64, 64])],
        [onnx.helper.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, [1, 3, 64, 64])],
        [onnx.helper.make_tensor("weights", onnx.TensorProto.FLOAT, [256], [0.5] * 256)],
    )
    whole = onnx.helper.make_model(graph).SerializeToString()
    model = tmp_path / "model.onnx"
    model.write_bytes(whole[: len(whole) // 2])
    annotation_file, image_dir = tiny_coco
    arguments = {
        "infer": ["--model", str(model), "--input", str(image_dir), "--output", str(tmp_path / "out"), "--workers", "0"],
        "eval": ["--model", str(model), "--annotations", str(annotation_file), "--images", str(image_dir),
                 "--workers", "0"],
        "bench": [str(model), "--iterations", "1", "--warmup", "0", "--device", "cpu"],
        "compare": [str(model), "tiny", "--images", str(image_dir)],
    }[command]
    assert main([command, *arguments]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"error: {model} is not a readable ONNX model (truncated or damaged?): Error parsing message")
    assert not (tmp_path / "out").exists()
