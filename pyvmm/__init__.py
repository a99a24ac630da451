"""pyvmm: a small virtual machine monitor for Linux KVM.

``pyvmm.Machine`` drives a guest from Python (see :mod:`pyvmm.api`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["GuestExited", "GuestTimeout", "Machine", "MigrationError", "RunResult"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that "import pyvmm" stays cheap.
    if name == "MigrationError":
        from pyvmm.migration.protocol import MigrationError

        return MigrationError
    if name in __all__:
        from pyvmm import api

        return getattr(api, name)
    raise AttributeError(f"module 'pyvmm' has no attribute {name!r}")
