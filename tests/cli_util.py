"""Running the ``pyvmm`` command from tests, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


def pyvmm(*args: str | os.PathLike[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m pyvmm ARGS``, capturing output; a hang fails after ``timeout``."""
    return subprocess.run(
        [sys.executable, "-m", "pyvmm", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
