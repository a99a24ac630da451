"""The structure stays as docs/how-it-boots.md draws it: every import goes
from a higher layer to a lower one (or within a layer), and no module grows
past about 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pyvmm"

#: Layer of each top-level part of the package, lowest first.
LAYERS = {
    "errors": 0,
    "kvm": 0,
    "memory": 1,
    "arch": 2,
    "boot": 2,
    "devices": 3,
    "vmm": 4,
    "console": 5,
    "images": 5,
    "launch": 5,
    "run": 5,
    "snapshot_trigger": 5,
    "snapshot_cache": 6,
    "control": 5,
    "snapshot": 4,
    "migration": 4,
    "sockets": 0,
    "shell": 6,
    "cli": 6,
    "command": 6,
    "api": 6,
    "api_console": 6,
    "pytest_plugin": 7,
    "__main__": 7,
    "__init__": 7,
}
MAX_LINES = 400


def _layer(module: str) -> int:
    """The layer of ``pyvmm.<part>...``."""
    part = module.split(".")[1] if "." in module else "__init__"
    assert part in LAYERS, f"{module}: add its part to LAYERS"
    return LAYERS[part]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = path
    return out


def _imports(path: Path) -> list[str]:
    """Every pyvmm module ``path`` imports, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyvmm"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("pyvmm")]
    return found


def test_imports_go_downwards() -> None:
    wrong = []
    for name, path in _modules().items():
        if name == "pyvmm":
            continue
        for target in _imports(path):
            if target != "pyvmm" and _layer(target) > _layer(name):
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_module_is_too_long() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
