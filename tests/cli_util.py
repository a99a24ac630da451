"""Running the ``pyvmm`` command from tests, as a user would."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from typing import AnyStr

import pytest

#: Capabilities that let root ignore file permissions (<linux/capability.h>).
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
PR_CAPBSET_DROP = 24  # <linux/prctl.h>
#: How long a pyvmm that overran its time gets to end after SIGTERM.
TERMINATE_GRACE = 10

#: Runs the command line with the KVM device path replaced by argv[1].
_WITH_KVM_DEVICE = (
    "import sys; from pyvmm import cli; from pyvmm.vmm import builder; "
    "builder.KVM_DEVICE = sys.argv.pop(1); sys.exit(cli.main(sys.argv[1:]))"
)


def _drop_file_permission_override() -> None:
    """In the child before exec: take the capabilities that bypass file
    permissions out of the bounding set, so the exec'd pyvmm, even as root,
    is refused a file it has no permission for."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def pyvmm(
    *args: str | os.PathLike[str],
    timeout: float = 60,
    obey_file_permissions: bool = False,
    kvm_device: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m pyvmm ARGS``, capturing output; a hang fails after ``timeout``.

    ``obey_file_permissions``: even when the tests run as root, pyvmm gets
    EACCES for files its user may not read. ``kvm_device``: pyvmm opens this
    path instead of /dev/kvm.
    """
    if kvm_device is None:
        command = [sys.executable, "-m", "pyvmm"]
    else:
        command = [sys.executable, "-c", _WITH_KVM_DEVICE, str(kvm_device)]
    as_root = os.geteuid() == 0
    with subprocess.Popen(
        [*command, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_drop_file_permission_override if obey_file_permissions and as_root else None,
    ) as process:
        out, err = finish(process, timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def finish(
    process: subprocess.Popen[AnyStr], timeout: float, stdin: AnyStr | None = None
) -> tuple[AnyStr, AnyStr]:
    """A pyvmm process's output once it ends, ``stdin`` given to it; a hang
    fails the test after ``timeout``. The hung pyvmm is asked to end as a
    user would (SIGTERM), so what it says about itself (--stats, the last
    exits) is in the failure; then it is killed."""
    try:
        return process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            out, err = process.communicate(timeout=TERMINATE_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        pytest.fail(
            f"pyvmm did not end within {timeout} s; after SIGTERM its status was "
            f"{process.returncode}; its last output:\n{_text(out)[-3000:]}\n"
            f"its standard error:\n{_text(err)[-3000:]}"
        )


def _text(output: str | bytes) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output


def one_line_error(r: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """pyvmm refused bad input as it should: status 2, nothing on standard
    output, one ``pyvmm: `` line on standard error holding each fragment."""
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyvmm: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0]
