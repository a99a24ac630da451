"""The teaching material stays true: the memory-map picture matches the
layout module, every function docs/how-it-boots.md names exists, and the
smallest example runs (KVM)."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import pyvmm

ROOT = Path(__file__).resolve().parent.parent


def test_memory_map_picture_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "memory_map.py"), str(tmp_path / "map.svg")],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "map.svg").read_text() == (ROOT / "docs" / "memory-map.svg").read_text(), (
        "run python scripts/memory_map.py"
    )


def _modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(pyvmm.__path__, "pyvmm.")]
    skip = ("._kvm", ".__main__")  # the compiled bindings; the command itself
    return [pyvmm] + [importlib.import_module(n) for n in names if not n.endswith(skip)]


def _resolves(name: str, modules: list[ModuleType]) -> bool:
    """Whether a dotted name from the docs (``boot.loader.load``,
    ``Machine._build``, ``kvm.Vm``) is a module, or an attribute path
    starting in a pyvmm module."""
    parts = name.split(".")
    for module in modules:
        dotted = module.__name__.split(".")
        for k in range(len(parts) + 1):  # parts[:k] names the module, the rest attributes
            if k and dotted[-k:] != parts[:k]:
                continue
            obj: object = module
            try:
                for attr in parts[k:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                continue
            return True
    return False


@pytest.mark.parametrize(
    ("doc", "least"),
    [
        ("how-it-boots.md", 40),
        ("snapshots.md", 20),
        ("migration.md", 15),
        ("virtio.md", 15),
        ("commands-and-shares.md", 8),
    ],
)
def test_every_name_in_the_docs_exists(doc: str, least: int) -> None:
    text = (ROOT / "docs" / doc).read_text()
    names = set(re.findall(r"`([A-Za-z_]\w*(?:\.\w+)+)`", text))
    names = {n for n in names if not n.endswith((".py", ".md", ".svg", ".h", ".json", ".sha256"))}
    assert len(names) > least
    modules = _modules()
    missing = sorted(n for n in names if not _resolves(n, modules))
    assert missing == []


@pytest.mark.usefixtures("kvm")
def test_hello_example() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "hello.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "exit: hlt. The guest printed: hello"
    sent = b"".join(
        eval(m.group(1))  # the bytes literal the example printed
        for m in re.finditer(r"^exit: out to port 0x3f8, \d+ byte\(s\): (b'.*')$", r.stdout, re.M)
    )
    assert sent == b"hello\n"
    assert len((ROOT / "examples" / "hello.py").read_text().splitlines()) < 60
