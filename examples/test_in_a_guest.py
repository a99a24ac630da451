"""A complete example: testing code inside a pyvmm guest with pytest.

Copy this file into a project that has pyvmm installed (pip install
pyvmm-kvm) and run ``pytest test_in_a_guest.py``. The first run builds the
default guest's images (a few minutes); later runs use the cache. Options:
``--pyvmm-kernel PATH``, ``--pyvmm-initrd PATH``, ``--pyvmm-memory 1G``.
If a test fails, the guest's console is shown in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyvmm


def test_kernel_and_shell(pyvmm_machine: pyvmm.Machine) -> None:
    """``pyvmm_machine`` is a booted default guest, its shell ready."""
    result = pyvmm_machine.run("uname -s; echo $((6*7))", timeout=120)
    assert result.output == "Linux\n42\n"
    assert result.status == 0
    assert pyvmm_machine.run("test -d /nonexistent", timeout=120).status == 1


def test_ship_a_script_into_the_guest(
    pyvmm_factory: Callable[..., pyvmm.Machine], tmp_path: Path
) -> None:
    """``pyvmm_factory`` makes machines with any pyvmm.Machine arguments."""
    script = tmp_path / "check.sh"
    script.write_text('#!/bin/sh\necho "running on $(uname -m)"\nexit 4\n')
    script.chmod(0o755)
    guest = pyvmm_factory(memory="256M", extra_files={script: "/usr/local/bin/check"})
    guest.start()
    # The default guest's PATH is /bin:/sbin, so call it by its full path.
    result = guest.run("/usr/local/bin/check", timeout=600)  # the timeout covers the boot too
    assert result.output == "running on x86_64\n"
    assert result.status == 4
    assert guest.shutdown(timeout=120) == 0  # poweroff: exit status 0
