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
