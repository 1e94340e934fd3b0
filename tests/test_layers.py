"""The package's import rules (developers' guide): imports point down the layers, never up,
export and runtime never import each other, and no module imports itself through a circle.

Every module under codetr/ is parsed with ``ast`` (nothing is imported), including imports inside
functions: a lazy import is still a dependency.

Layers, lowest first::

    0  contract, atomic, interrupt  (what every layer agrees on)
    1  ops                       (and codetr/__init__, which registers the ops)
    2  config, models, checkpoint, preprocess, postprocess, data
    3  tensorrt, quantization
    4  export | runtime          (siblings: a deployed runtime must not load the exporter)
    5  evaluation, training, benchmark
    6  cli                       (and codetr/__main__)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "codetr"
LAYERS = {
    "contract": 0, "atomic": 0, "interrupt": 0,
    "ops": 1, "_C": 1, "__init__": 1,
    "config": 2, "models": 2, "checkpoint": 2, "preprocess": 2, "postprocess": 2, "data": 2,
    "tensorrt": 3, "quantization": 3,
    "export": 4, "runtime": 4,
    "evaluation": 5, "training": 5, "benchmark": 5,
    "cli": 6, "__main__": 6,
}
SIBLINGS = {("export", "runtime"), ("runtime", "export")}


def module_name(path: Path) -> str:
    parts = ["codetr", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def part_of(module: str) -> str:
    """The top-level part of codetr a module belongs to (``codetr`` itself: ``__init__``)."""
    parts = module.split(".")
    return parts[1].removesuffix(".py") if len(parts) > 1 else "__init__"


def is_module(name: str) -> bool:
    """A Python module of the package, or a compiled extension (codetr._C)."""
    if name in MODULES:
        return True
    folder, _, stem = name.replace(".", "/").rpartition("/")
    return any((PACKAGE.parent / folder).glob(f"{stem}.*.so"))


def resolve(target: str) -> str:
    """The codetr module an import names: the longest prefix that is a module of the package."""
    parts = target.split(".")
    while parts and not is_module(".".join(parts)):
        parts.pop()
    return ".".join(parts) if parts else target


def imports_of(module: str) -> set[str]:
    """codetr modules ``module`` imports (``from package import submodule`` names the submodule)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "codetr"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "codetr":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if resolve(candidate) == candidate else base)
    return {resolve(target) for target in found} - {module}


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    unknown = sorted({part_of(module) for module in MODULES} - set(LAYERS))
    assert not unknown, f"add these parts of codetr to LAYERS (and the developers' guide): {unknown}"


def violations() -> list[str]:
    found = []
    for module, targets in sorted(GRAPH.items()):
        source = part_of(module)
        if module == "codetr.__main__":
            source = "__main__"
        for target in sorted(targets):
            destination = part_of(target)
            if source == destination:
                continue
            if (source, destination) in SIBLINGS:
                found.append(f"{module} -> {target}: {source} and {destination} are siblings")
            elif LAYERS[destination] > LAYERS[source]:
                found.append(f"{module} -> {target}: layer {LAYERS[source]} ({source}) imports layer "
                             f"{LAYERS[destination]} ({destination})")
    return found


def test_imports_point_down() -> None:
    assert violations() == []


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH.get(module, ()):
            if target not in GRAPH:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return components


def test_no_import_cycles() -> None:
    assert cycles() == []


@pytest.mark.parametrize(("source", "expected"), [
    ("from codetr.contract import plugin as contract", {"codetr.contract.plugin"}),
    ("from codetr.export.options import DimRange", {"codetr.export.options"}),
    ("import codetr.ops", {"codetr.ops"}),
    ("from . import metadata", {"codetr.contract.metadata"}),
    ("from codetr import _C", {"codetr._C"}),
    ("def load():\n    from codetr.runtime import load_runtime", {"codetr.runtime"}),
])
def test_imports_are_resolved_to_modules(tmp_path: Path, monkeypatch, source: str, expected: set[str]) -> None:
    """The parser itself, on hand-written import lines (a module of codetr.contract)."""
    monkeypatch.setitem(MODULES, "codetr.contract.probe", tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text(source + "\n")
    assert imports_of("codetr.contract.probe") == expected
